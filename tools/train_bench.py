"""Throughput of a network configuration: training and inference images per second.

Random input, no data loading: the compute ceiling the data pipeline has to feed.

    python -m tools bench-train --config train/configs/A.yaml --config train/configs/B.yaml

prints one JSON line per configuration (``make bench`` runs it). With ``--shards RUN`` it also
trains through the trainer's own data path (``train.trainer.Trainer``: samples of the stage-1
run, or of the manifest for a config that trains on it, its sampler and DataLoader workers) and
reports images/s with the share of time the step waited for data (:func:`measure_training`).
``--docs-table`` writes both, with the minutes one run's epochs take at the measured rate
(:func:`speed_table`: docs/figures/tables/train_speed.md).
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Iterator

# Same OpenMP policy as ``python -m train`` (see train/__main__.py): set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import click  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from eval.tables import to_markdown  # noqa: E402
from tools import docs_tables  # noqa: E402
from train.checkpoint import resolve_device  # noqa: E402
from train.config import ConfigError, TrainConfig, load_config, with_overrides  # noqa: E402
from train.model import NetSpec, build_model, count_parameters  # noqa: E402
from train.targets import pose_loss  # noqa: E402
from train.trainer import RunOptions, Trainer, train_step  # noqa: E402


def benchmark_model(spec: NetSpec, batch_size: int = 32, steps: int = 5, threads: int = 2,
                    device: str = "auto", warmup: int = 2, train: bool = True) -> dict[str, Any]:
    """Time ``steps`` training steps (forward, loss, backward, Adam; skipped when not
    ``train``) and as many inference batches after ``warmup`` untimed ones. Returns images/s
    (``infer_ms_per_img`` too: the cost of one image as stage 1's detector), parameters and
    peak RSS (MiB)."""
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build_model(spec, dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.zeros(batch_size, spec.num_joints, 3, device=dev)
    weight = torch.ones(batch_size, spec.num_joints, device=dev)

    def train_once() -> None:
        with torch.autocast(dev.type, torch.float16, enabled=dev.type == "cuda"):
            out = model(x)
        loss = pose_loss(out["coords"], target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer_once() -> None:
        with torch.autocast(dev.type, torch.float16, enabled=dev.type == "cuda"):
            model(x)

    def timed(fn: Any, n: int) -> float:
        for _ in range(warmup):
            fn()
        _sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        return batch_size * n / (time.perf_counter() - t)

    model.train()
    train_ips = timed(train_once, steps) if train else float("nan")
    model.eval()
    infer_ips = timed(infer_once, steps)
    return {"device": str(dev), "threads": threads, "batch_size": batch_size,
            "input_size": spec.input_size, "depth": spec.depth, "width": spec.width,
            "depth_bins": spec.depth_bins, "params_m": round(count_parameters(model) / 1e6, 2),
            "train_img_s": round(train_ips, 1), "infer_img_s": round(infer_ips, 1),
            "infer_ms_per_img": round(1e3 / infer_ips, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure_training(cfg: TrainConfig, out: str, steps: int = 30, warmup: int = 3,
                     device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Train ``steps`` steps through the trainer's data path after ``warmup`` untimed ones.

    Returns images/s, the share of wall time spent waiting for the next batch (the trainer's
    ``data_time_share``), the loader's own images/s (no model), row groups read per crop shard
    sample in the main process, and peak GPU memory (MiB, CUDA only)."""
    trainer = Trainer(cfg, RunOptions(out=Path(out), device=device, threads=threads,
                                      progress=False))
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    it = _batches(trainer)
    for _ in range(warmup):
        train_step(trainer.net, next(it), trainer.optimizer, trainer.scaler, cfg, dev)
    _sync(dev)
    wait = 0.0
    t_begin = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        train_step(trainer.net, batch, trainer.optimizer, trainer.scaler, cfg, dev)
        _sync(dev)
    wall = time.perf_counter() - t_begin
    bs = cfg.data.batch_size
    for _ in range(4 * cfg.data.workers):  # the batches prefetched while the model ran
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_ips = bs * steps / (time.perf_counter() - t)
    del it
    return {"config": cfg.name, "device": str(dev), "batch_size": bs,
            "workers": cfg.data.workers, "samples": len(trainer.train_set),
            "train_img_s": round(bs * steps / wall, 1), "data_wait_share": round(wait / wall, 4),
            "loader_only_img_s": round(loader_ips, 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
            if dev.type == "cuda" else None}


def _batches(trainer: Trainer) -> Iterator[dict[str, Any]]:
    """The trainer's batches, epoch after epoch (a small split runs out of batches)."""
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch)
        yield from trainer.loader
        epoch += 1


def speed_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``rows`` (one per configuration: ``config``, ``epochs``, the
    :func:`benchmark_model` keys and, where measured, ``data_path``: :func:`measure_training`'s),
    with the minutes of one run's training steps at the data path's rate (validation excluded)."""
    table = []
    for r in rows:
        d = r.get("data_path") or {}
        minutes = (r["epochs"] * d["samples"] / d["train_img_s"] / 60
                   if d.get("train_img_s") else float("nan"))
        table.append({"configuration": f"`{Path(r['config']).stem}`",
                      "parameters (M)": r["params_m"],
                      "train images/s, random input": r["train_img_s"],
                      "train images/s, trainer's data path": d.get("train_img_s", float("nan")),
                      "data-wait share": d.get("data_wait_share", float("nan")),
                      "epochs x samples": f"{r['epochs']} x {d['samples']:,}" if d else "–",
                      "training minutes at that rate": minutes,
                      "inference images/s": r["infer_img_s"],
                      "peak RSS (GiB)": r["peak_rss_mib"] / 1024})
    threads = {r["threads"] for r in rows}
    return (f"Batch of each configuration, {', '.join(map(str, sorted(threads)))} torch "
            f"thread(s), device {rows[0]['device'] if rows else '?'}; random input: the "
            "network alone; the trainer's data path: its samples, sampler and DataLoader "
            "workers (`--shards`); training minutes: epochs x samples / that rate.\n\n"
            + to_markdown(pd.DataFrame(table).set_index("configuration"), 1,
                          digits_by_column={"parameters (M)": 2, "data-wait share": 3}))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@click.command()
@click.option("--config", "config_paths", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False), help="Config(s) to measure.")
@click.option("--batch-size", type=int, default=None, help="Default: the config's.")
@click.option("--steps", type=int, default=5, show_default=True, help="Timed steps.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--shards", default=None, help="Stage-1 run folder: also train from its shards "
              "through the trainer's data path (images/s, data-wait share).")
@click.option("--workers", type=int, default=None, help="DataLoader workers with --shards "
              "(default: the config's).")
@click.option("--out", default="outputs/bench/train_data", show_default=True,
              help="Scratch run folder of --shards.")
@click.option("--model", "model_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override the configs' model section (repeatable), e.g. --model width=64 "
                   "--model input_size=128: what another network would cost.")
@click.option("--train/--inference-only", default=True, show_default=True,
              help="--inference-only: only inference images/s (ms per image: a 2D network's "
                   "cost as stage 1's detector, e.g. with --threads 1 as in a Dask worker).")
@docs_tables.docs_table_option("train_speed")
def main(config_paths: tuple[str, ...], batch_size: int | None, steps: int, threads: int,
         device: str, shards: str | None, workers: int | None, out: str,
         model_overrides: tuple[str, ...], train: bool, docs_table: Path | None) -> None:
    """Forward+backward images/s of each config's network on random input (no data loading);
    with --shards also through the real data path (crop shards, sampler, DataLoader; a config
    that trains on its manifest reads the manifest)."""
    model = {}
    rows: list[dict[str, Any]] = []
    for item in model_overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--model")
        model[key.strip()] = yaml.safe_load(value)
    for p in config_paths:
        cfg = load_config(p)
        try:
            cfg = with_overrides(cfg, model=model) if model else cfg
        except ConfigError as e:
            raise click.BadParameter(str(e), param_hint="--model") from None
        r = benchmark_model(cfg.model, batch_size or cfg.data.batch_size, steps, threads, device,
                            train=train)
        click.echo(json.dumps({"config": p, **r}))
        rows.append({"config": p, "epochs": cfg.optim.epochs, **r})
        if shards:
            data = {"shards": shards, **({"workers": workers} if workers is not None else {}),
                    **({"batch_size": batch_size} if batch_size else {})}
            d = measure_training(with_overrides(cfg, data=data), out, steps, device=device,
                                 threads=threads)
            click.echo(json.dumps({"config": p, "shards": shards, **d}))
            rows[-1]["data_path"] = d
    if docs_table is not None:
        table = speed_table(rows)
        click.echo(table)
        docs_tables.write(docs_table, table)


if __name__ == "__main__":
    main()

"""Command line of stage 2: ``python -m train fit ...`` (thin; the work is in train/).

The throughput benchmark is a tool beside the product: ``python -m tools.train_bench``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Idle OpenMP threads spin briefly, then sleep. The default long spin loses an order of
# magnitude of throughput on a shared CPU (2D demo net, 2 threads, loaded 2-core box: 5 images/s
# instead of 55); pure PASSIVE costs ~20% on a quiet one (92 vs 115). A short spin keeps both
# (quiet 104, loaded like PASSIVE). Set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import click  # noqa: E402

from train.checkpoint import CheckpointError  # noqa: E402
from train.config import load_config, with_overrides  # noqa: E402
from train.trainer import RunOptions, Trainer  # noqa: E402


@click.group()
def cli() -> None:
    """Stage 2 of EpipolarPose: train the 2D and the volumetric 3D pose networks."""


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Experiment YAML (train/configs/*.yaml). With --resume it may be omitted: "
                   "the run folder's config.yaml is used.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: config.yaml, metrics.jsonl, last.pt, best.pt, curves.png.")
@click.option("--shards", default=None,
              help="Stage-1 run folder (holding shards/) overriding data.shards.")
@click.option("--manifest", default=None, help="Dataset manifest overriding data.manifest.")
@click.option("--data-root", default=None, help="Override the manifest's data root.")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto (CUDA when present).")
@click.option("--workers", type=int, default=None, help="DataLoader workers (data.workers).")
@click.option("--threads", type=int, default=None,
              help="torch CPU threads (default: torch's choice).")
@click.option("--epochs", type=int, default=None,
              help="Override optim.epochs (quick runs; recorded in the resolved config).")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many optimiser steps in total; last.pt keeps the exact state.")
@click.option("--val-samples", type=int, default=None,
              help="Override val.max_samples (0 = the whole validation split).")
@click.option("--resume", is_flag=True,
              help="Continue exactly from OUT/last.pt (same weights, optimiser, RNG and data order).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI).")
def fit(config_path: str | None, out: str, shards: str | None, manifest: str | None,
        data_root: str | None, device: str,
        workers: int | None, threads: int | None, epochs: int | None, max_steps: int | None,
        val_samples: int | None, resume: bool, no_progress: bool) -> None:
    """Train one network; print where its checkpoints, metrics and curves are.

    The experiment is the YAML file (network, data source, augmentation, schedule); the options
    only set run-time knobs. model.depth_bins = 1 makes the 2D network (trained on a manifest's
    2D ground truth: stage 1's detector), > 1 the volumetric 3D network (trained on stage-1
    shards, or on the ground truth for the supervised upper bound). Every epoch validates on
    the manifest's validation split (val.split: held-out subjects, never the test split)
    against labels of the training labels' kind: a shards run against the validation subjects'
    pseudo-labels (val_pseudo_*: px error, PCK; 3D: MPJPE, N-MPJPE, PA-MPJPE in label units),
    reading no ground truth; a manifest run against their ground truth (val_gt_*). best.pt is
    the epoch with the lowest selection_metric (val_pseudo_n_mpjpe, val_gt_n_mpjpe or
    val_gt_px_error). Writes OUT/metrics.jsonl, OUT/last.pt, OUT/best.pt and OUT/curves.png;
    the test split is scored by `python -m eval metrics` (make eval) only.

    \b
    Examples:
      python -m train fit --config train/configs/demo2d_r18w32_96px.yaml --out outputs/runs/pose2d
      python -m train fit --config train/configs/demo_r18w32_96px_d24_pseudo.yaml \\
          --shards outputs/pseudolabels/synthetic_pooled_net --out outputs/runs/pose3d_pseudo
      python -m train fit --out outputs/runs/pose3d_pseudo --resume
    """
    if config_path is None:
        if not resume:
            raise click.UsageError("--config is required (unless --resume)")
        config_path = str(Path(out) / "config.yaml")
    try:  # bad input (config, manifest, shards, checkpoint) is refused here, before training
        cfg = load_config(config_path)
        data = {k: v for k, v in (("shards", shards), ("manifest", manifest),
                                  ("data_root", data_root), ("workers", workers)) if v is not None}
        optim = {"epochs": epochs} if epochs is not None else {}
        val = {"max_samples": val_samples} if val_samples is not None else {}
        cfg = with_overrides(cfg, data=data, optim=optim, val=val)
        trainer = Trainer(cfg, RunOptions(out=Path(out), device=device, resume=resume,
                                          max_steps=max_steps, threads=threads,
                                          progress=not no_progress))
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    summary = trainer.fit()
    if os.environ.get("RANK", "0") != "0":  # torchrun: one report, from rank 0
        return
    last = summary["last_metrics"]
    click.echo(f"run folder:  {summary['out']}")
    click.echo(f"checkpoints: {summary['last']}" + (f", {summary['best']}" if summary["best"]
                                                      else ""))
    click.echo(f"metrics:     {summary['metrics']}")
    click.echo(f"curves:      {summary['curves']}")
    click.echo(f"best.pt by:  lowest {summary['selection_metric']} ({summary['best_metric']})")
    if last:
        click.echo("last evaluation: " + json.dumps(
            {k: v for k, v in last.items() if k.startswith("val_") or k in ("epoch", "train_loss")}))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The 3D network's checkpoint (e.g. OUT/best.pt of `fit`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The refiner checkpoint to write (e.g. outputs/runs/pose3d_pseudo/refiner.pt).")
@click.option("--steps", type=int, default=3000, show_default=True, help="Optimiser steps.")
@click.option("--hidden", type=int, default=512, show_default=True, help="Width of the blocks.")
@click.option("--blocks", type=int, default=2, show_default=True, help="Residual blocks.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-samples", type=int, default=0, show_default=True,
              help="Validation samples the noise model is estimated from (0 = all).")
@click.option("--bvh", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Also train on this CMU BVH clip's poses, seen from random cameras (repeat).")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def refiner(checkpoint: str, out: str, steps: int, hidden: int, blocks: int, seed: int,
            val_samples: int, bvh: tuple[str, ...], threads: int | None,
            no_progress: bool) -> None:
    """Train the refinement unit of a 3D network (the paper's last step).

    A residual MLP refines the network's root-relative poses. It is trained on unpaired poses
    only: the training split's labels (pseudo-labels for a self-supervised network; plus --bvh
    motion capture seen from random cameras) corrupted
    by a Gaussian model of the network's own errors, estimated on the validation split against
    that split's labels (no ground truth for a self-supervised network; never the test split).
    Use it with `python -m eval metrics --checkpoint CKPT --refiner OUT` (make eval
    EVAL_OPTS="--refiner OUT"), which reports checkpoint and checkpoint_refined.

    \b
    Example:
      python -m train refiner --checkpoint outputs/runs/pose3d_pseudo/best.pt \\
          --out outputs/runs/pose3d_pseudo/refiner.pt
    """
    import torch

    from train.refiner import RefinerSpec
    from train.refiner_fit import fit_refiner

    if threads:
        torch.set_num_threads(threads)
    try:
        metrics = fit_refiner(checkpoint, out, RefinerSpec(steps=steps, hidden=hidden,
                                                           blocks=blocks, seed=seed),
                              val_samples=val_samples, progress=not no_progress, bvh=bvh)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"refiner: {out}")
    click.echo(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    cli()

"""Why stage 2 learns less than its labels hold (issue 23): learning curves and one-factor runs.

``python -m tools stage2-run``: one training run of a configuration, epoch by epoch (the trainer's
exact resume between epochs), with after each epoch the error on a fixed probe of the training
labels (``val.train_samples``, written by the trainer), on the validation subject (S8, the
trainer's own validation) and on the test subjects (evenly spaced frame-views of the base
manifest's test split, read here and never by the trainer's model selection). At the end
``best.pt`` (chosen on S8) is scored on every test frame-view: ``result.json``. Resumable: a
rerun continues where the run folder stopped.

``python -m tools stage2-variant``: a training-data variant, rendered into its own folder, with the
base manifest's validation and test subjects linked from the base data root (the same S8, S9,
S11 images and ground truth), so that only the training side changes and the split stays by
subject.

``python -m tools stage2-table``: mean ± sample standard deviation over seeds of the results, and
the learning-curve figure.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from eval import ablation_table
from pipeline.store.manifest import load_manifest
from pipeline.synthetic.generate import generate_dataset
from pipeline.synthetic.motion import ACTIONS
from tools import docs_tables
from tools.docs_tables import docs_table_option
from train.checkpoint import load_model
from train.config import TrainConfig, config_from_dict, load_config, with_overrides
from train.evaluation import evaluate_samples, model_predictor
from train.samples import Samples, load_manifest_samples
from train.trainer import RunOptions, Trainer

TEST_SPLIT = "test"
CURVE_FILE = "test_curve.jsonl"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class StudyRun:
    """One run of the study.

    Attributes:
        config: trainer YAML. out: run folder. seed: training seed.
        epochs, milestones: schedule (None: the configuration's).
        base_manifest: the manifest whose test split scores every run (the base data root).
        manifest, data_root: the training data (default: the configuration's / base manifest).
        test_probe: evenly spaced test frame-views scored after each epoch (0 = all).
        train_probe: training samples scored by the trainer after each epoch.
        overrides: extra config values, ``{"model": {"input_size": 128}, ...}``.
        threads: torch CPU threads.
    """

    config: str
    out: Path
    seed: int = 0
    epochs: int | None = None
    milestones: tuple[int, ...] | None = None
    base_manifest: str = "data_manifests/synthetic.yaml"
    manifest: str | None = None
    data_root: str | None = None
    test_probe: int = 1000
    train_probe: int = 400
    overrides: dict[str, dict[str, Any]] | None = None
    threads: int | None = None


def study_config(run: StudyRun) -> TrainConfig:
    """The configuration of ``run``: the YAML with the seed, schedule, data and overrides."""
    cfg = load_config(run.config)
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (run.overrides or {}).items()}
    optim = sections.setdefault("optim", {})
    if run.epochs is not None:
        optim["epochs"] = run.epochs
    if run.milestones is not None:
        optim["milestones"] = list(run.milestones)
    data = sections.setdefault("data", {})
    if run.manifest:
        data["manifest"] = run.manifest
    if run.data_root:
        data["data_root"] = run.data_root
    sections.setdefault("val", {})["train_samples"] = run.train_probe
    cfg = with_overrides(cfg, **sections)
    return config_from_dict(replace(cfg, seed=run.seed).to_dict(), f"{run.config} (study)")


def split_samples(base_manifest: str, box_margin: float, probe: int) -> Samples:
    """``probe`` evenly spaced samples (0 = all) of the test split of ``base_manifest``."""
    m = load_manifest(base_manifest)
    return load_manifest_samples(m, TEST_SPLIT, box_margin, need_2d=False).evenly_spaced(probe)


def score_checkpoint(path: Path, samples: Samples) -> dict[str, float]:
    """N-MPJPE, PA-MPJPE and MPJPE (mm) of a checkpoint on ``samples`` through the one
    evaluation protocol (the same function `make eval` scores with)."""
    model, cfg = load_model(path)
    result = evaluate_samples(model_predictor(model, 64), samples, cfg["model"]["input_size"],
                              cfg["data"]["depth_range_mm"], chunk=256)
    means = result.means()
    return {k: float(means[k]) for k in ("n_mpjpe", "pa_mpjpe", "mpjpe")} | {"n": len(samples)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_study(run: StudyRun, progress: bool = False) -> dict[str, Any]:
    """Train ``run`` epoch by epoch, scoring the test probe after each; then best.pt on every
    test frame-view (module docstring). Returns the result record."""
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / RESULT_FILE).exists():
        return json.loads((out / RESULT_FILE).read_text())
    cfg = study_config(run)
    probe = split_samples(run.base_manifest, cfg.data.box_margin, run.test_probe)
    done = {r["epoch"] for r in _read_jsonl(out / CURVE_FILE)}
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(1, cfg.optim.epochs + 1):
        resume = (out / "last.pt").exists()
        trainer = Trainer(cfg, RunOptions(out=out, device="cpu", resume=resume,
                                          threads=run.threads, progress=progress,
                                          max_steps=None))
        spe = trainer.steps_per_epoch
        if trainer.step < epoch * spe:
            trainer.opts = replace(trainer.opts, max_steps=epoch * spe)
            t1 = time.perf_counter()
            trainer.fit()
            train_s += time.perf_counter() - t1
        if epoch not in done:
            _append_jsonl(out / CURVE_FILE, {"epoch": epoch, "step": epoch * spe,
                                             **{f"test_{k}": v for k, v in
                                                score_checkpoint(out / "last.pt",
                                                                 probe).items()}})
    history = _read_jsonl(out / "metrics.jsonl")
    best_epoch = min(history, key=lambda h: h.get("val_gt_n_mpjpe", h.get(
        "val_pseudo_n_mpjpe", np.inf)))["epoch"]
    full = split_samples(run.base_manifest, cfg.data.box_margin, 0)
    result = {"config": cfg.name, "seed": run.seed, "out": str(out), "best_epoch": best_epoch,
              "epochs": cfg.optim.epochs, "train_samples_per_s": float(np.median(
                  [h["samples_per_s"] for h in history])),
              "wall_s": round(time.perf_counter() - t0, 1),
              **{f"test_{k}": v for k, v in score_checkpoint(out / "best.pt", full).items()}}
    tmp = out / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / RESULT_FILE)
    return result


# --- training-data variants ---------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """A training-data variant of the base manifest (same cameras, same val/test subjects).

    Attributes:
        name: folder name. extra_subjects: new training subjects (body, clothes) added to the
            base's, each with the extrinsics of a base training subject in turn.
        subactions: sequences per (subject, action) (new random motion parameters and room).
        frames: frames per training sequence. frame_stride: the training split's
            ``frame_stride`` (motion time between rendered frames, in 1/50 s). None: the base's
            (``synthetic.splits.train``).
        keep_base_subjects: train on the base training subjects too.
        extra_actions: actions added to the base's (e.g. ``Random``, poses within the joint
            limits: :data:`pipeline.synthetic.motion.ACTIONS`).
    """

    name: str
    extra_subjects: int = 0
    subactions: int = 1
    frames: int | None = None
    frame_stride: int | None = None
    keep_base_subjects: bool = True
    extra_actions: tuple[str, ...] = ()


def variant_manifest(base: str, variant: Variant, folder: Path) -> Path:
    """Write ``folder/manifest.yaml`` for ``variant`` (data under ``folder/data``) and link the
    base's validation and test subjects' images and ground truth into it."""
    raw = yaml.safe_load(Path(base).read_text())
    m = load_manifest(base)
    train = list(m.splits["train"])
    held = [s for split, subj in m.splits.items() if split != "train" for s in subj]
    free = (f"X{i:02d}" for i in range(1, 1000) if f"X{i:02d}" not in raw["extrinsics"])
    new = [next(free) for _ in range(variant.extra_subjects)]
    subjects = (train if variant.keep_base_subjects else []) + new
    for i, s in enumerate(new):
        raw["extrinsics"][s] = raw["extrinsics"][train[i % len(train)]]
    actions = list(dict.fromkeys([q.action for q in m.sequences] + list(variant.extra_actions)))
    seqs = [{"subject": s, "action": a, "subaction": k + 1}
            for s in subjects for a in actions for k in range(variant.subactions)]
    seqs += [q for q in raw["sequences"] if q["subject"] in held]
    data = (folder / "data").resolve()
    raw.update(root=str(data), sequences=seqs, splits={**raw["splits"], "train": subjects})
    synthetic = raw.setdefault("synthetic", {})
    own = {k: v for k, v in (("frames_per_sequence", variant.frames),
                             ("frame_stride", variant.frame_stride)) if v is not None}
    per = synthetic.setdefault("splits", {})
    per["train"] = {**per.get("train", {}), **own}
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("gt", "images"):
        for s in held:
            link = data / sub / s
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((m.root / sub / s).resolve(), target_is_directory=True)
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def render_variant(base: str, variant: Variant, folder: Path, workers: int = 2) -> Path:
    """The variant's manifest, with its training subjects rendered (resumable)."""
    path = variant_manifest(base, variant, folder)
    subjects = load_manifest(str(path)).splits["train"]
    generate_dataset(path, workers=workers, subjects=list(subjects), progress=False)
    return path


# --- how far the test poses are from the training poses ------------------------------------------

def nearest_pose_errors(train: np.ndarray, test: np.ndarray, chunk: int = 512) -> dict[str, float]:
    """For every test pose (root-relative, camera frame, (N, J, 3) mm) the training pose
    nearest to it (least squared distance): the N-MPJPE and MPJPE of that pose as the
    prediction, averaged (a lookup "network" that knew every training pose exactly); also the
    number of training poses."""
    a = train.reshape(len(train), -1)
    a_sq = (a ** 2).sum(1)
    nn_idx = np.empty(len(test), np.int64)
    for i in range(0, len(test), chunk):
        b = test[i:i + chunk].reshape(-1, a.shape[1])
        d = a_sq[None] - 2 * b @ a.T
        nn_idx[i:i + chunk] = d.argmin(1)
    pred = train[nn_idx]
    scale = (pred * test).sum((1, 2)) / np.maximum((pred * pred).sum((1, 2)), 1e-9)
    n = np.linalg.norm(scale[:, None, None] * pred - test, axis=-1).mean()
    raw = np.linalg.norm(pred - test, axis=-1).mean()
    return {"nn_n_mpjpe": float(n), "nn_mpjpe": float(raw), "train_poses": len(train)}


def pose_coverage(train_manifest: str, base_manifest: str) -> dict[str, float]:
    """:func:`nearest_pose_errors` of the base manifest's test split against the training split
    of ``train_manifest`` (camera-frame poses of every training frame-view)."""
    train = load_manifest_samples(load_manifest(train_manifest), "train", need_2d=False)
    test = split_samples(base_manifest, 0.15, 0)
    return nearest_pose_errors(train.gt_3d, test.gt_3d)


def simulated_train_poses(manifest: str, frames: int | None = None) -> np.ndarray:
    """Root-relative camera-frame poses (N, J, 3) of every training frame-view that ``make data``
    would render for ``manifest`` (its motion, bodies and cameras, without rendering a pixel)."""
    from pipeline.synthetic.generate import frames_per_sequence, project_all, simulate_sequence

    m = load_manifest(manifest)
    n = frames_per_sequence(m, 1.0, frames, "train")
    poses = []
    for seq in m.sequences_in("train"):
        sim = simulate_sequence(m, seq, n)
        Xc, _ = project_all(sim.cams, sim.joints_world)
        Xc = Xc.reshape(-1, *Xc.shape[2:])
        poses.append(Xc - Xc[:, m.joint_set.root:m.joint_set.root + 1])
    return np.concatenate(poses)


# --- the table and the figure ---------------------------------------------------------------------

def mean_std(values: list[float]) -> str:
    """``mean ± sample std (n=k)`` over the finite values (the ablation table's
    :func:`eval.ablation_table.mean_std`, with the count)."""
    n = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    return f"{ablation_table.mean_std(values)} (n={n})"


def study_table(groups: dict[str, list[Path]]) -> str:
    """A markdown table: per condition, test N-MPJPE / PA-MPJPE of best.pt, the training probe's
    and S8's N-MPJPE at the last epoch, images/s; each mean ± sample std over its seeds."""
    lines = ["| condition | seeds | test N-MPJPE | test PA-MPJPE | train-probe N-MPJPE (last "
             "epoch) | S8 N-MPJPE (last epoch) | images/s |", "|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        res = [json.loads((r / RESULT_FILE).read_text()) for r in runs
               if (r / RESULT_FILE).exists()]
        if not res:
            continue
        last = [_read_jsonl(Path(x["out"]) / "metrics.jsonl")[-1] for x in res]
        cols = [mean_std([x["test_n_mpjpe"] for x in res]),
                mean_std([x["test_pa_mpjpe"] for x in res]),
                mean_std([h.get("train_gt_n_mpjpe", np.nan) for h in last]),
                mean_std([h.get("val_gt_n_mpjpe", np.nan) for h in last]),
                mean_std([x["train_samples_per_s"] for x in res])]
        seeds = ",".join(str(x["seed"]) for x in res)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def epoch_table(groups: dict[str, list[Path]]) -> str:
    """A markdown table per (condition, epoch) over the runs that reached that epoch: the
    training probe's, S8's and the test probe's N-MPJPE (mean ± sample std, n runs) and the
    training and S8 2D errors (px, original image)."""
    lines = ["| condition | epoch (steps) | seeds | train-probe N-MPJPE | S8 N-MPJPE | test-probe "
             "N-MPJPE | train-probe 2D px | S8 2D px |", "|---|---|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        rows: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for run in runs:
            test = {r["epoch"]: r for r in _read_jsonl(run / CURVE_FILE)}
            seed = int(run.name.removeprefix("seed")) if run.name.startswith("seed") else -1
            for h in _read_jsonl(run / "metrics.jsonl"):
                if h["epoch"] in test:
                    rows.setdefault(h["epoch"], []).append((seed, {**h, **test[h["epoch"]]}))
        for epoch in sorted(rows):
            got = rows[epoch]
            cols = [mean_std([r[k] for _, r in got]) for k in (
                "train_gt_n_mpjpe", "val_gt_n_mpjpe", "test_n_mpjpe", "train_gt_px_error",
                "val_gt_px_error")]
            steps = got[0][1]["step"]
            lines.append(f"| {name} | {epoch} ({steps}) | {','.join(str(s) for s, _ in got)} | "
                         + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot_study(groups: dict[str, list[Path]], path: Path) -> None:
    """Learning curves, one panel per condition: training probe, S8 and test N-MPJPE per epoch
    (one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.8), squeeze=False)
    names = {"train_gt_n_mpjpe": "training probe", "val_gt_n_mpjpe": "S8 (validation)",
             "test_n_mpjpe": "S9+S11 (test probe)"}
    for ax, (name, runs) in zip(axes[0], groups.items()):
        for i, run in enumerate(runs):
            rows = {"train_gt_n_mpjpe": _read_jsonl(run / "metrics.jsonl"),
                    "test_n_mpjpe": _read_jsonl(run / CURVE_FILE)}
            rows["val_gt_n_mpjpe"] = rows["train_gt_n_mpjpe"]
            for c, key in enumerate(names):
                pts = [(h["epoch"], h[key]) for h in rows[key] if key in h]
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=f"C{c}", ls=("-", "--", ":")[i % 3],
                            label=f"{names[key]}, {run.name}")
        ax.axhline(212.7, color="grey", lw=0.8, ls="-.", label="mean training pose (test)")
        ax.set(title=name, xlabel="epoch (250 steps of 32)", ylabel="N-MPJPE (mm)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def twod_row(name: str, run: Path, base_manifest: str, frame_step: int) -> dict[str, Any]:
    """One 2D network (a ``train fit`` folder): its training set and schedule, and its mean pixel
    error on every split of the base manifest (every ``frame_step``-th frame; the train split's
    frames are the very images the base network trained on, a variant's network never saw them).
    Each split's tables are written to ``eval2d_<split>/`` in the run folder."""
    from eval.evaluate import evaluate_2d

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    history = _read_jsonl(run / "metrics.jsonl")
    scored = [h for h in history if "val_gt_px_error" in h]
    best = min(scored, key=lambda h: h["val_gt_px_error"]) if scored else {}
    row: dict[str, Any] = {"name": name, "run": str(run),
                           "manifest": cfg["data"].get("manifest"),
                           "epochs": cfg["optim"]["epochs"], "best_epoch": best.get("epoch"),
                           "steps": history[-1]["step"] if history else 0}
    for split in ("train", "val", "test"):
        table = evaluate_2d(base_manifest, run / f"eval2d_{split}", run / "best.pt", split,
                            frame_step)
        row[f"{split}_px"] = float(table.loc["overall", "px_error"])
        row[f"{split}_n"] = int(table.loc["overall", "n"])
    return row


def twod_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per 2D network, its training data and schedule, and px error per split."""
    lines = [("| 2D network | trained on | epochs (best) | steps | train subjects (px) | "
              "S8 (px) | S9 + S11 (px) |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | `{r['manifest']}` | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['steps']:,} | {r['train_px']:.2f} | {r['val_px']:.2f} | "
                     f"{r['test_px']:.2f} |")
    n = {k: rows[0][f"{k}_n"] for k in ("train", "val", "test")} if rows else {}
    return ("\n".join(lines) + "\n\nMean 2D error in pixels of the 250-pixel images against "
            f"the ground truth, every split of the base manifest ({n.get('train')} / "
            f"{n.get('val')} / {n.get('test')} frame-views); best.pt chosen on S8. The train "
            "subjects' frames are the images the base network trained on; a variant trained on "
            "other frames of those subjects never saw them.\n")


# --- command line ---------------------------------------------------------------------------------

def _parse_sets(items: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("model.input_size=128", "augment.flip_prob=0")`` -> nested overrides (YAML values)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise click.BadParameter(f"{item!r}: expected section.key=value")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


@click.group("stage2-study")
def cli() -> None:
    """Issue 23: learning curves and one-factor runs of the 3D network (docs/stage2.md)."""


@cli.command("run")
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
@click.option("--epochs", type=int, default=None)
@click.option("--milestones", default=None, help="Comma-separated epochs (x gamma).")
@click.option("--manifest", default=None, help="Training manifest (a variant's).")
@click.option("--base-manifest", default="data_manifests/synthetic.yaml", show_default=True,
              help="Its test split scores every run.")
@click.option("--test-probe", default=1000, show_default=True,
              help="Test frame-views scored after each epoch (0 = all).")
@click.option("--train-probe", default=400, show_default=True)
@click.option("--set", "sets", multiple=True, help="Config override section.key=value.")
@click.option("--threads", type=int, default=2, show_default=True)
def run_cmd(config, out, seed, epochs, milestones, manifest, base_manifest, test_probe,
            train_probe, sets, threads) -> None:
    """One run with per-epoch train-probe, S8 and test errors; result.json at the end."""
    ms = tuple(int(x) for x in milestones.split(",")) if milestones else None
    run = StudyRun(config=config, out=out, seed=seed, epochs=epochs, milestones=ms,
                   base_manifest=base_manifest, manifest=manifest, test_probe=test_probe,
                   train_probe=train_probe, overrides=_parse_sets(sets), threads=threads)
    click.echo(json.dumps(run_study(run), indent=2))


@cli.command("variant")
@click.option("--name", required=True)
@click.option("--out-root", default="outputs/stage2/data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--base-manifest", default="data_manifests/synthetic.yaml", show_default=True)
@click.option("--extra-subjects", default=0, show_default=True)
@click.option("--subactions", default=1, show_default=True)
@click.option("--frames", type=int, default=None,
              help="Frames per training sequence (default: the base manifest's).")
@click.option("--frame-stride", type=int, default=None,
              help="Motion steps between training frames (default: the base manifest's).")
@click.option("--extra-action", "extra_actions", multiple=True,
              type=click.Choice(sorted(ACTIONS)), help="An action added to the base's.")
@click.option("--workers", default=2, show_default=True)
def variant_cmd(name, out_root, base_manifest, extra_subjects, subactions, frames,
                frame_stride, extra_actions, workers) -> None:
    """Render a training-data variant (val/test subjects linked from the base data root)."""
    v = Variant(name, extra_subjects, subactions, frames, frame_stride,
                extra_actions=tuple(extra_actions))
    click.echo(render_variant(base_manifest, v, out_root / name, workers))


@cli.command("coverage")
@click.option("--manifest", "manifests", multiple=True, required=True,
              help="Training manifest (the base's or a variant's); repeat to compare.")
@click.option("--base-manifest", default="data_manifests/synthetic.yaml", show_default=True)
@click.option("--simulate", is_flag=True,
              help="Simulate the training poses (no rendering needed) instead of reading the "
                   "rendered ground truth.")
def coverage_cmd(manifests, base_manifest, simulate) -> None:
    """Nearest training pose to each test pose: its N-MPJPE / MPJPE (mm), per manifest."""
    test = split_samples(base_manifest, 0.15, 0).gt_3d
    for path in manifests:
        r = (nearest_pose_errors(simulated_train_poses(path), test) if simulate
             else pose_coverage(path, base_manifest))
        click.echo(json.dumps({"manifest": path, **r}))


@cli.command("table")
@click.option("--group", "groups", multiple=True, required=True,
              help="NAME=run folder glob (e.g. base=outputs/stage2/runs/base/seed*).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), default=None)
def table_cmd(groups, out, figure) -> None:
    """The study table (mean ± sample std over seeds) and, optionally, the curves figure."""
    parsed = {}
    for g in groups:
        name, _, pattern = g.partition("=")
        parsed[name] = sorted(Path().glob(pattern))
    text = study_table(parsed) + "\n" + epoch_table(parsed)
    click.echo(text)
    if out:
        out.write_text(text)
    if figure:
        plot_study(parsed, figure)


@cli.command("twod")
@click.option("--run", "runs", multiple=True, required=True,
              help="NAME=2D network run folder (train fit --out), e.g. base=outputs/runs/pose2d.")
@click.option("--base-manifest", default="data_manifests/synthetic.yaml", show_default=True)
@click.option("--frame-step", default=4, show_default=True,
              help="Every n-th ground-truth frame of each split.")
@docs_table_option("twod_networks")
def twod_cmd(runs, base_manifest, frame_step, docs_table) -> None:
    """The 2D network (stage 1's detector) of each run on the train, validation and test
    subjects: does it generalise to people and frames it never saw?"""
    rows = []
    for item in runs:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "best.pt").exists():
            raise click.BadParameter(f"{item!r}: expected NAME=run folder holding best.pt")
        rows.append(twod_row(name, Path(folder), base_manifest, frame_step))
    body = twod_table(rows)
    click.echo(body)
    docs_tables.write(docs_table, body)

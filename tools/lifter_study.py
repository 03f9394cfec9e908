"""The keypoint lifter on the synthetic test split (issue 24): variants x seeds, one table.

``python -m tools lifter-study run``: for every variant of :data:`VARIANTS` and seed, train the
lifter on a stage-1 run's shards (the configuration's, with the variant's overrides; best.pt
chosen on the validation subject S8 as the trainer does: its pseudo-labels, or its ground truth
for the supervised row), then score best.pt on every test frame-view (S9, S11; all cameras)
lifted from the 2D that stage-1 run detected (``eval metrics --detections``). Resumable: a
finished run (``eval/eval.json``) is not trained again, an interrupted one resumes.

``python -m tools lifter-study table``: mean ± sample std over seeds per variant, beside the
label quality of the run (N-MPJPE of its pseudo-labels on the test subjects), the mean pose and
the training time, as a Markdown table for the docs (``--docs-table``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from eval.ablation_table import mean_std
from eval.evaluate import EvalSettings, evaluate
from train.config import load_config, with_overrides
from train.trainer import RunOptions, fit

VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "mlp": {},
    "mlp_no_virtual": {"lifter": {"virtual_prob": 0.0}},
    "t9": {"lifter": {"window": 9}},
    "t27": {"lifter": {"window": 27}},
    "mlp_supervised": {"data": {"target_column": "gt_joints_3d"}},
    "mlp_noise3": {"lifter": {"input_noise_px": 3.0}},
    "mlp_mediapipe": {"lifter": {"input_noise_px": 3.0, "ignore_joints": ["neck", "head"]}},
}
"""Overrides of the base configuration per variant: the single-frame MLP on the pseudo-labels
(the default), without virtual cameras, temporal windows of 9 and 27 frames, and the MLP on
the ground truth stage 1 copied beside the labels (the supervised upper bound), with 3 px of
extra 2D noise on the real detections, and the shipped lifter's recipe (that noise, neck and
head not read: train/configs/lifter_w1_h512_mediapipe.yaml)."""
LABELS = {"mlp": "MLP (1 frame), pseudo-labels", "mlp_no_virtual": "MLP, no virtual cameras",
          "t9": "temporal, 9 frames", "t27": "temporal, 27 frames",
          "mlp_supervised": "MLP, 3D ground truth (supervised)",
          "mlp_noise3": "MLP, +3 px noise on the detections",
          "mlp_mediapipe": "MLP, +3 px noise, neck and head not read (shipped recipe)"}


def run_variant(config: str, shards: str, manifest: str, name: str, seed: int, out: Path,
                threads: int = 2) -> dict[str, Any]:
    """Train (or resume, or skip when done) one variant and seed; returns its result."""
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    cfg = load_config(config)
    sections = {sec: dict(v) for sec, v in VARIANTS[name].items()}
    sections.setdefault("data", {}).update(shards=shards, manifest=manifest)
    cfg = with_overrides(cfg, **sections)
    cfg = type(cfg)(**{**cfg.__dict__, "seed": seed, "name": f"{cfg.name}_{name}_s{seed}"})
    t0 = time.perf_counter()
    summary = fit(cfg, RunOptions(out=out, device="cpu", resume=(out / "last.pt").exists(),
                                  threads=threads, progress=False))
    seconds = time.perf_counter() - t0
    tables = evaluate(manifest, out / "eval", summary["best"], ("mean-pose",),
                      EvalSettings(pss_restarts=1), detections=shards)
    best = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best_epoch = min((r for r in best if summary["selection_metric"] in r),
                     key=lambda r: r[summary["selection_metric"]])["epoch"]
    result = {"variant": name, "seed": seed, "train_seconds": seconds, "best_epoch": best_epoch,
              "epochs": cfg.optim.epochs, "selection": summary["best_metric"],
              "test": {k: float(v) for k, v in tables["checkpoint"].loc["overall"].items()},
              "mean_pose": {k: float(v) for k, v in tables["mean_pose"].loc["overall"].items()}}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def subject_table(shards: str) -> str:
    """Per subject of a stage-1 run: its labels against the ground truth beside them, and the
    2D detections' spread about the labels' projections (:func:`train.lifter.detector_noise_px`):
    how the labels of subjects the 2D network was trained on compare with the others'."""
    from pipeline.joints import H36M17
    from pipeline.store.manifest import load_manifest
    from pipeline.store.run_folder import RunFolder
    from pipeline.store.shards import read_shards
    from train.lifter import (
        LifterSpec,
        detector_noise_px,
        normalized_joints,
        present_joints,
    )
    from train.samples import load_shard_samples

    run = RunFolder(shards).config()
    manifest = load_manifest(run.get("manifest_path") or run["manifest"], root=run.get("root"))
    split = {s: name for name, subs in manifest.splits.items() for s in subs}
    subjects = sorted(set(read_shards(shards, columns=["subject"]).column("subject")
                          .to_pylist()), key=lambda s: (len(s), s))
    out = ["| subject | split | labels: N-MPJPE (mm) | labels: PA-MPJPE (mm) | detections about "
           "the labels (px, robust sigma) |", "|---|---|---|---|---|"]
    for subj in subjects:
        q = label_quality(shards, (subj,))
        s = load_shard_samples(shards, H36M17, manifest=manifest, subjects=(subj,))
        noise = detector_noise_px(s, normalized_joints(s.joints_2d, s.K, s.dist),
                                  present_joints(s.joints_2d, s.conf, LifterSpec(), H36M17),
                                  H36M17)
        out.append(f"| {subj} | {split.get(subj, '–')} | {q['n_mpjpe']:.1f} | "
                   f"{q['pa_mpjpe']:.1f} | {noise:.2f} |")
    return "\n".join(out) + (
        f"\n\nRun `{shards}`. The 2D network that detected these joints was trained on the "
        "ground-truth 2D of the train split's subjects.")


def label_quality(shards: str, subjects: tuple[str, ...] = ("S9", "S11")) -> dict[str, float]:
    """N-MPJPE / PA-MPJPE of a run's pseudo-labels against the ground truth beside them, on the
    test subjects (what the lifter's test error is compared with)."""
    from eval.metrics import mpjpe
    from pipeline.joints import H36M17
    from train.samples import load_shard_samples

    pseudo = load_shard_samples(shards, H36M17, "joints_3d", subjects=subjects)
    gt = load_shard_samples(shards, H36M17, "gt_joints_3d", subjects=subjects)
    mask = pseudo.label_mask & gt.label_mask
    return {k: float(np.nanmean(mpjpe(np.nan_to_num(pseudo.label_3d), gt.label_3d, mask, a)))
            for k, a in (("n_mpjpe", "scale"), ("pa_mpjpe", "procrustes"))}


def study_table(root: Path, shards: str) -> str:
    rows = {}
    for path in sorted(root.glob("*/seed*/result.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["variant"], []).append(r)
    labels = label_quality(shards)
    speed = {name: inference_speed(root / name / "seed0" / "best.pt") for name in ("mlp", "t27")
             if (root / name / "seed0" / "best.pt").exists()}
    out = ["| lifter | seeds | N-MPJPE (mm) | PA-MPJPE (mm) | MPJPE (mm) | vs its labels | "
           "best epoch / epochs | training (s, 2 cores shared with other jobs) |", "|---|---|---|---|---|---|---|---|"]
    for name in [v for v in VARIANTS if v in rows]:
        rs = rows[name]
        n = [r["test"]["n_mpjpe"] for r in rs]
        ratio = np.mean(n) / labels["n_mpjpe"]
        out.append(f"| {LABELS[name]} | {len(rs)} | {mean_std(n)} | "
                   f"{mean_std([r['test']['pa_mpjpe'] for r in rs])} | "
                   f"{mean_std([r['test']['mpjpe'] for r in rs])} | "
                   f"{ratio:.2f}x | {mean_std([r['best_epoch'] for r in rs], 0)} / "
                   f"{rs[0]['epochs']} | {mean_std([r['train_seconds'] for r in rs], 0)} |")
    any_run = next(iter(rows.values()))[0]
    mp = any_run["mean_pose"]
    out.append(f"| mean training pose | – | {mp['n_mpjpe']:.1f} | {mp['pa_mpjpe']:.1f} | "
               f"{mp['mpjpe']:.1f} | – | – | – |")
    out.append(f"| *the labels themselves (`{shards}`, S9 + S11)* | – | "
               f"{labels['n_mpjpe']:.1f} | {labels['pa_mpjpe']:.1f} | – | 1.00x | – | – |")
    out.append(
        f"\nTest split: every frame-view of S9 and S11 ({int(any_run['test']['n'])} "
        "samples), each lifted from the 2D the stage-1 run detected; best.pt chosen on S8 "
        "(its pseudo-labels; its ground truth for the supervised row); mean ± sample std over "
        "seeds. 'vs its labels': mean N-MPJPE / the labels' own N-MPJPE on the same subjects.")
    if speed:
        out += ["", "| inference, 2 cores (frames/s) | PyTorch, batches of 1024 | PyTorch, one "
                "frame at a time | ONNX Runtime, batches of 1024 |", "|---|---|---|---|"]
        out += [f"| {LABELS[n]} | {v['pytorch_batch1024']:,.0f} | {v['pytorch_batch1']:,.0f} | "
                f"{v.get('onnx_batch1024', float('nan')):,.0f} |" for n, v in speed.items()]
    return "\n".join(out)


def inference_speed(checkpoint: Path, frames: int = 4000, repeats: int = 3) -> dict[str, float]:
    """Frames per second of a lifter's network on ``frames`` random inputs of its signature:
    PyTorch in batches of 1024 and one frame at a time (a live stream), and ONNX Runtime in
    batches of 1024 where onnx and onnxruntime import (``make onnx``'s outputs/onnx-site on
    PYTHONPATH); the best of ``repeats``. The inputs are features: computing them from the 2D
    (numpy) is part of predict's own frames/s."""
    import importlib.util
    import tempfile

    from train.checkpoint import load_model
    from train.lifter import feature_size, lift

    model, cfg = load_model(str(checkpoint))
    shape = (feature_size(int(cfg["model"]["num_joints"])), int(cfg["lifter"]["window"]))
    x = np.random.default_rng(0).normal(size=(frames,) + shape).astype(np.float32)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {"pytorch_batch1024": frames / best(lambda: lift(model, x, 1024)),
           "pytorch_batch1": 200 / best(lambda: [lift(model, x[i:i + 1], 1) for i in range(200)])}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        import onnxruntime as ort

        from train.export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(checkpoint, Path(tmp) / "lifter.onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out["onnx_batch1024"] = frames / best(
                lambda: [sess.run(None, {"features": x[i:i + 1024]})
                         for i in range(0, frames, 1024)])
    return out


@click.group("lifter-study")
def cli() -> None:
    """The keypoint lifter's figures on the synthetic test split (issue 24)."""


@cli.command("run")
@click.option("--config", default="train/configs/lifter_w1_h512_pseudo.yaml", show_default=True,
              type=click.Path(exists=True, dir_okay=False))
@click.option("--shards", default="outputs/pseudolabels/synthetic_multiview_auto",
              show_default=True, help="stage-1 run: labels, and the 2D the test frames lift.")
@click.option("--manifest", default="data_manifests/synthetic.yaml", show_default=True)
@click.option("--variant", "variants", multiple=True, type=click.Choice(list(VARIANTS)),
              help="variants to run (default: all).")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--out", default="outputs/lifter_study", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.option("--threads", default=2, show_default=True)
def run_cmd(config, shards, manifest, variants, seeds, out, threads) -> None:
    """Train and score every variant x seed (resumable)."""
    for seed in [int(s) for s in seeds.split(",")]:  # every variant's first seed first
        for name in variants or list(VARIANTS):
            r = run_variant(config, shards, manifest, name, seed, out / name / f"seed{seed}",
                            threads)
            click.echo(f"{name} seed {seed}: test N-MPJPE {r['test']['n_mpjpe']:.1f} mm "
                       f"(best epoch {r['best_epoch']}, {r['train_seconds']:.0f} s)")


@cli.command("table")
@click.option("--out", default="outputs/lifter_study", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--shards", default="outputs/pseudolabels/synthetic_multiview_auto",
              show_default=True)
@click.option("--docs-table", default=None, type=click.Path(dir_okay=False),
              help="also write the table for the docs (e.g. docs/figures/tables/lifter.md).")
def table_cmd(out, shards, docs_table) -> None:
    """The study's table (Markdown)."""
    from eval.tables import write_docs_table

    body = study_table(out, shards)
    click.echo(body)
    if docs_table:
        write_docs_table(docs_table, f"python -m tools lifter-study table --out {out}", body)


@cli.command("labels")
@click.option("--shards", default="outputs/pseudolabels/synthetic_multiview_auto",
              show_default=True)
@click.option("--docs-table", default=None, type=click.Path(dir_okay=False),
              help="also write the table for the docs (docs/figures/tables/label_subjects.md).")
def labels_cmd(shards, docs_table) -> None:
    """The labels' error per subject (the test subjects' labels are what a student's test
    error compares with)."""
    from eval.tables import write_docs_table

    body = subject_table(shards)
    click.echo(body)
    if docs_table:
        write_docs_table(docs_table, f"python -m tools lifter-study labels --shards {shards}",
                         body)

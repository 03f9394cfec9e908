"""Command line of stage 2: ``python -m train fit ...`` (thin; the work is in train/).

The throughput benchmark is a tool beside the product: ``python -m tools.train_bench``.
"""
from __future__ import annotations

import json
import os
import dataclasses
import sys
from pathlib import Path

# Idle OpenMP threads spin briefly, then sleep. The default long spin loses an order of
# magnitude of throughput on a shared CPU (2D demo net, 2 threads, loaded 2-core box: 5 images/s
# instead of 55); pure PASSIVE costs ~20% on a quiet one (92 vs 115). A short spin keeps both
# (quiet 104, loaded like PASSIVE). Set before torch loads OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import click  # noqa: E402

from pipeline.detect.network import DetectorUnavailable  # noqa: E402
from pipeline.detect.registry import DETECTOR_CHOICES, detectors_help  # noqa: E402
from pipeline.store.manifest import ManifestError  # noqa: E402
from train.checkpoint import CheckpointError  # noqa: E402
from train.config import load_config, with_overrides  # noqa: E402
from train.export import EXPORTERS, ONNX_TOLERANCE, check_onnx, export_onnx, export_predictions  # noqa: E402,E501
from train.footage import InputError, default_out, open_input  # noqa: E402
from train.predict import BOX_SOURCES, PredictOptions, run_predict  # noqa: E402


@click.group()
def cli() -> None:
    """Stage 2 of EpipolarPose: train the 2D and the volumetric 3D pose networks, and use them.

    \b
    fit          train one network (make train, make train-2d)
    predict      the 3D network on a video, an image folder or a manifest (make predict)
    export       BVH, VideoPose3D npz and CSV of a predict folder (make export)
    export-onnx  the 3D network as ONNX, checked against ONNX Runtime (make onnx)
    refiner      the refinement unit of a 3D network, trained on unpaired poses
    """


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
@click.option("--milestones", default=None, metavar="E1,E2,...",
              help="Override optim.milestones: the epochs after which the learning rate is "
                   "multiplied by optim.gamma ('' for none); with --epochs, another schedule "
                   "(e.g. --epochs 12 --milestones 10). Recorded in the resolved config.")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many optimiser steps in total; last.pt keeps the exact state.")
@click.option("--val-samples", type=int, default=None,
              help="Override val.max_samples (0 = the whole validation split).")
@click.option("--seed", type=int, default=None,
              help="Override the configuration's seed (seed sweeps; recorded in the run's config).")
@click.option("--init-from", default=None, type=click.Path(dir_okay=False),
              help="Start from this checkpoint's network weights (fine-tuning; fresh optimiser "
                   "and schedule); overrides optim.init_from, recorded in the run's config.")
@click.option("--init-2d-from", default=None, type=click.Path(dir_okay=False),
              help="Start a 3D network from this 2D network's checkpoint (every layer, the last "
                   "one repeated over the depth bins); overrides optim.init_2d_from.")
@click.option("--resume", is_flag=True,
              help="Continue exactly from OUT/last.pt (same weights, optimiser, RNG and data order).")
@click.option("--allow-inconsistent-labels", is_flag=True,
              help="Train on a stage-1 run whose summary.json flags its detections as "
                   "inconsistent across views (stage 1's exit 3); refused otherwise.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI).")
def fit(config_path: str | None, out: str, shards: str | None, manifest: str | None,
        data_root: str | None, device: str,
        workers: int | None, threads: int | None, epochs: int | None, milestones: str | None,
        max_steps: int | None,
        val_samples: int | None, seed: int | None, init_from: str | None,
        init_2d_from: str | None, resume: bool,
        allow_inconsistent_labels: bool, no_progress: bool) -> None:
    """Train one network; print where its checkpoints, metrics and curves are.

    The experiment is the YAML file (network, data source, augmentation, schedule); the options
    only set run-time knobs. model.depth_bins = 1 makes the 2D network (trained on a manifest's
    2D ground truth: stage 1's detector), > 1 the volumetric 3D network (trained on stage-1
    shards, or on the ground truth for the supervised upper bound). Every epoch validates on
    the manifest's validation split (val.split: held-out subjects, never the test split; or,
    with val.frame_holdout, the last frames of the training sequences, never trained on)
    against labels of the training labels' kind: a shards run against the validation subjects'
    pseudo-labels (val_pseudo_*: px error, PCK; 3D: MPJPE, N-MPJPE, PA-MPJPE in label units),
    reading no ground truth; a manifest run, or a shards run with data.target_column
    gt_joints_3d (supervised), against their ground truth (val_gt_*). best.pt is
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
    from train.trainer import RunOptions, Trainer  # not for predict: inference never loads it

    if config_path is None:
        if not resume:
            raise click.UsageError("--config is required (unless --resume)")
        config_path = str(Path(out) / "config.yaml")
    try:  # bad input (config, manifest, shards, checkpoint) is refused here, before training
        cfg = load_config(config_path)
        data = {k: v for k, v in (("shards", shards), ("manifest", manifest),
                                  ("data_root", data_root), ("workers", workers)) if v is not None}
        optim = {k: v for k, v in (("epochs", epochs), ("init_from", init_from),
                                   ("init_2d_from", init_2d_from),
                                   ("milestones", _epoch_list(milestones))) if v is not None}
        val = {"max_samples": val_samples} if val_samples is not None else {}
        cfg = with_overrides(cfg, data=data, optim=optim, val=val)
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        trainer = Trainer(cfg, RunOptions(out=Path(out), device=device, resume=resume,
                                          max_steps=max_steps, threads=threads,
                                          progress=not no_progress,
                                          allow_inconsistent_labels=allow_inconsistent_labels))
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    summary = trainer.fit()
    if os.environ.get("RANK", "0") == "0":  # torchrun: one report, from rank 0
        _report_fit(summary)


def _epoch_list(text: str | None) -> tuple[int, ...] | None:
    """``--milestones``: "10" or "5,8" -> epochs; "" -> none; None -> not given."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated epochs, e.g. 10 or 5,8",
                                 param_hint="--milestones") from None


def _report_fit(summary: dict) -> None:
    """Where a finished ``fit`` wrote its files, and its last evaluation."""
    last = summary["last_metrics"]
    click.echo(f"run folder:  {summary['out']}")
    click.echo(f"checkpoints: {summary['last']}" + (f", {summary['best']}" if summary["best"]
                                                      else ""))
    for what in ("metrics", "curves"):
        if Path(summary[what]).exists():
            click.echo(f"{what + ':':<12} {summary[what]}")
    if summary["best"]:
        click.echo(f"best.pt by:  lowest {summary['selection_metric']} ({summary['best_metric']})")
    else:
        click.echo(f"best.pt:     not written: stopped at step {summary['step']} before any "
                   f"validation (the first is at the end of epoch 1, step "
                   f"{summary['steps_per_epoch']}); last.pt holds the state, --resume continues it")
    if last:
        click.echo("last evaluation: " + json.dumps(
            {k: v for k, v in last.items() if k.startswith("val_") or k in ("epoch", "train_loss")}))


@cli.command("predict")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--checkpoint", default="outputs/runs/pose3d_pseudo/best.pt", show_default=True,
              help="The 3D network (a checkpoint of `make train`).")
@click.option("--out", default=None,
              help="Output folder [default: outputs/predict/<INPUT stem> for an input in the "
                   "working directory, else outputs/predict/<parent folder>_<INPUT stem> (a "
                   "manifest.yaml: its folder); files of an earlier run there are replaced, "
                   "its export/ removed].")
@click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default="auto",
              show_default=True, help="Person finder / 2D detector: " + detectors_help() + ".")
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True,
              help="The 2D network (--detector net/auto).")
@click.option("--detections", default=None,
              help="Detections file for --detector file (pipeline.detect.registry layouts).")
@click.option("--allow-foreign-detector", is_flag=True,
              help="Run the 2D network on a dataset it was not trained on.")
@click.option("--boxes", type=click.Choice(list(BOX_SOURCES)), default="detected",
              show_default=True, help="The 3D crop: around the detected joints, or the dataset's "
                                      "person box (the evaluation protocol's crop).")
@click.option("--split", default=None, help="Manifest input: only this split's sequences.")
@click.option("--camera", "cameras", multiple=True, help="Manifest input: only these cameras.")
@click.option("--focal-px", type=float, default=None,
              help="Video/image input: focal length in pixels [default: the longer side].")
@click.option("--fps", type=float, default=None,
              help="Video/image input: frames per second, for time_s and --smooth [default: a "
                   "video's own rate; an image folder's is unknown: time_s null].")
@click.option("--smooth", is_flag=True, help="One-Euro filter on the 3D joints (off by default).")
@click.option("--min-cutoff-hz", type=float, default=1.0, show_default=True,
              help="One-Euro cut-off at rest (lower: smoother).")
@click.option("--beta", type=float, default=0.01, show_default=True,
              help="One-Euro speed coefficient (higher: less lag in fast motion).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (GPU when present), cpu, cuda:N.")
@click.option("--max-frames", type=int, default=None, help="At most this many frames per clip.")
@click.option("--reference", default=None, metavar="ground-truth|RUN",
              help="Score the predictions (metrics.json): 'ground-truth' against the manifest's "
                   "3D ground truth (make eval's protocol), or a stage-1 run folder's labels "
                   "(e.g. a calibrated triangulation of the recording). Without it nothing is "
                   "scored and no ground truth is read.")
@click.option("--no-video", is_flag=True, help="No overlay MP4 (faster).")
@click.option("--overlay-height", type=click.IntRange(min=16), default=None,
              help="Overlay video height in pixels [default: the input's own, at least 480, at "
                   "most 1080].")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def predict_cmd(input_path: str, checkpoint: str, out: str | None, detector: str,
                checkpoint_2d: str, detections: str | None, allow_foreign_detector: bool,
                boxes: str, split: str | None, cameras: tuple[str, ...], focal_px: float | None,
                fps: float | None, smooth: bool, min_cutoff_hz: float, beta: float,
                batch_size: int, device: str, max_frames: int | None, reference: str | None,
                no_video: bool, overlay_height: int | None, no_progress: bool) -> None:
    """Run the 3D network on INPUT: a video file, a folder of images, or a dataset manifest.

    Writes OUT/poses.parquet (one row per frame and person: root-relative camera-frame 3D joints
    in mm of the reference skeleton, the 2D joints, confidences, box, status; with a
    multi-person detector, e.g. --detector mediapipe-people or a detections file with a person
    column, `person` is a track id over the clip), OUT/overlay*.mp4
    (2D skeleton and a 3D side panel), OUT/contact_sheet.png, OUT/predict.json and, with
    --reference, OUT/metrics.json (N-MPJPE etc.; with --reference ground-truth, `protocol` =
    make eval's numbers on the same frames). Frames without a readable image or a person get a row with
    an empty pose and the reason in `status`.

    A lone video or image folder is keyed dataset=footage, subject=<the folder holding it>,
    action=<its file or folder name>, subaction=1, camera=cam0 (clips/jump.mp4:
    subject clips, action jump); image-folder rows keep their file name (image_file).

    \b
    Examples:
      python -m train predict my_video.mp4 --out outputs/predict/mine
      python -m pipeline test-video --out outputs/data/test_video
      python -m train predict outputs/data/test_video/manifest.yaml --reference ground-truth
    """
    out = out or str(default_out(input_path))
    opts = PredictOptions(detector=detector, checkpoint_2d=checkpoint_2d, detections=detections,
                          allow_foreign_detector=allow_foreign_detector, device=device,
                          batch_size=batch_size, boxes=boxes, smoothing=smooth,
                          min_cutoff_hz=min_cutoff_hz, beta=beta, video=not no_video,
                          overlay_height=overlay_height,
                          max_frames=max_frames, progress=not no_progress, reference=reference)
    try:
        clips = open_input(input_path, focal_px=focal_px, split=split, cameras=cameras or None,
                           fps=fps)
        report = run_predict(clips, checkpoint, out, opts, input_name=str(input_path),
                             log=lambda line: click.echo(line, err=True))
    except (InputError, ManifestError, CheckpointError, DetectorUnavailable, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"{report.frames} frames: {report.predicted} poses of {report.people} "
               f"{'person' if report.people == 1 else 'people'} in {report.frames_with_people} "
               f"frames, {report.no_person} without "
               f"a person, {report.unreadable} unreadable; {report.frames_per_s:.1f} frames/s "
               f"in all, detector {report.detector} {report.detector_frames_per_s:.1f} frames/s, "
               f"3D network {report.network_images_per_s:.1f} images/s")
    for what, path in report.files.items():
        click.echo(f"{what}: {path}")
    for name, means in report.metrics.items():
        click.echo(f"metrics ({name}): " + ", ".join(f"{k} {v:.1f}" for k, v in means.items()))



@cli.command("export")
@click.argument("pred_dir", type=click.Path(file_okay=False))
@click.option("--format", "formats", type=click.Choice(list(EXPORTERS)), multiple=True,
              default=tuple(EXPORTERS), show_default=True, help="Repeatable.")
@click.option("--out", default=None, help="Output folder [default: PRED_DIR/export].")
def export_cmd(pred_dir: str, formats: tuple[str, ...], out: str | None) -> None:
    """Export a predict folder's poses.parquet: BVH (one skeleton animation per clip, rotations
    fitted to the predicted positions, cm, y up), VideoPose3D's npz layout (positions_2d.npz,
    positions_3d.npz) and CSV (poses.csv)."""
    try:
        paths = export_predictions(pred_dir, formats, out)
    except (FileNotFoundError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"{len(paths)} files in {paths[0].parent if paths else out}")


@cli.command("slim")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A training checkpoint (e.g. OUT/best.pt of `fit`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the inference-only copy.")
def slim_cmd(checkpoint: str, out: str) -> None:
    """An inference-only copy of a checkpoint: the network's weights (the averaged ones of a run
    with optim.ema_decay) and records, without the optimiser's state or the training weights
    (a third of the size of an Adam checkpoint); how the shipped lifter (train/weights/) is
    made: `make lifter-model`."""
    from train.checkpoint import slim_checkpoint

    try:
        path = slim_checkpoint(checkpoint, out)
    except CheckpointError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")


@cli.command("export-onnx")
@click.option("--checkpoint", default="outputs/runs/pose3d_pseudo/best.pt", show_default=True,
              help="The 3D network.")
@click.option("--out", default="outputs/onnx/pose3d.onnx", show_default=True)
@click.option("--tolerance", type=float, default=ONNX_TOLERANCE, show_default=True,
              help="Largest |ONNX Runtime - PyTorch| allowed on coords (crop units) and conf; "
                   "above it the command fails (exit 1).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check the file against ONNX Runtime (needs onnxruntime; without it --check "
                   "fails).")
def export_onnx_cmd(checkpoint: str, out: str, tolerance: float, check: bool) -> None:
    """Write the 3D network as ONNX (input `images` (N, 3, S, S) normalised like training;
    outputs `coords` (N, J, 3), `conf` (N, J)) and check it: ONNX Runtime and PyTorch on the
    same random input must agree within --tolerance, else exit 1. Needs requirements-onnx.txt
    (`make onnx` installs it into its own folder)."""
    try:
        path = export_onnx(checkpoint, out)
        click.echo(f"onnx: {path}")
        if not check:
            return
        diff = check_onnx(path, checkpoint, tolerance)
    except ImportError as e:
        click.echo(f"error: onnxruntime is not installed ({e}): no agreement check of {out} "
                   "(make onnx installs requirements-onnx.txt; --no-check skips the check)",
                   err=True)
        sys.exit(1)
    except (CheckpointError, RuntimeError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo("largest |ONNX Runtime - PyTorch|: " + ", ".join(
        f"{k} {v:.2e}" for k, v in diff.items()) + f" (within tolerance {tolerance:g})")


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

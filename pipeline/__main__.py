"""Stage 1 command line: ``python -m pipeline --help``.

Thin click commands; the work lives in pipeline.job.plan, pipeline.synthetic and friends.
Benchmarks, the real-footage demo and the overlay tool are in ``tools/`` (``python -m tools``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from pipeline.people.association import AssociationSettings
from pipeline.detect.network import DetectorUnavailable
from pipeline.detect.registry import AUTO, DETECTOR_CHOICES, DetectorOptions, detectors_help, \
    resolve_detector
from pipeline.geometry.modes import JOB_MODES, PAIR_CHOICES, modes_help
from pipeline.job.plan import (JobSummary, local_client, preflight, resolve_job, run_job,
                               shards_hint)
from pipeline.job.config import JobConfig, threshold_options
from pipeline.store.manifest import ManifestError

DEFAULT_MANIFEST = "data_manifests/synthetic.yaml"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Stage 1 of EpipolarPose: multi-view frames in, pseudo-3D Parquet shards out.

    \b
    data          render the embedded synthetic multi-view dataset (the default input)
    pseudolabels  detect 2D, fit camera geometry, triangulate, write shards (a Dask job)
    test-video    write a split's frames as MP4 videos with their ground truth (make predict)
    """


@cli.command()
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True,
              help="Manifest of the synthetic dataset (its 'synthetic:' block has the settings).")
@click.option("--size", default=1.0, show_default=True,
              help="Multiplies frames_per_sequence (SIZE=4 gives 4x the frames).")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True,
              help="Processes rendering sequences in parallel.")
@click.option("--root", default=None, help="Write somewhere other than the manifest's root.")
@click.option("--subjects", default=None,
              help="Comma-separated subjects to render (default: all), e.g. a benchmark's "
                   "workload: --size 4 --subjects S1,S9,S11 --root outputs/data/synthetic_x4.")
@click.option("--sheet/--no-sheet", default=True, show_default=True,
              help="Also write contact_sheet.png (a few frames of all views, skeleton drawn).")
@click.option("--people", default=1, show_default=True,
              help="2 or more: render the multi-person variant instead (one subject's "
                   "Gestures sequence, people hiding each other) into --root, with "
                   "people.yaml, detections.parquet (a person column) and people_truth.npz.")
@click.option("--frames", default=100, show_default=True, help="Frames of the --people variant.")
@click.option("--subject", default="S1", show_default=True, help="Room and cameras of --people.")
@click.option("--noise-px", default=1.0, show_default=True,
              help="2D noise of the --people variant's detections (3x on hidden joints).")
def data(manifest: str, size: float, workers: int, root: str | None, subjects: str | None,
         sheet: bool, people: int, frames: int, subject: str, noise_px: float) -> None:
    """Render the synthetic dataset: images, ground truth and a contact sheet.

    Deterministic from the manifest's seed; sequences already complete are skipped, so an
    interrupted run resumes. With --people N (needs --root) the multi-person variant: run
    stage 1 on ROOT/people.yaml with --detector file --detections ROOT/detections.parquet,
    then score it with python -m tools people-score RUN ROOT.
    """
    from pipeline.synthetic import generate_dataset, write_contact_sheet

    if people > 1:
        from pipeline.synthetic.people_scene import generate_people

        if root is None:
            raise click.UsageError("--people needs --root (the embedded set stays one person)")
        out = generate_people(manifest, root, people, frames, subject, noise_px)
        click.echo(f"multi-person variant: {out}")
        return
    t0 = time.perf_counter()
    try:
        out = generate_dataset(manifest, size=size, workers=workers, root=root,
                               subjects=subjects.split(",") if subjects else None)
    except (ManifestError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"dataset: {out} ({time.perf_counter() - t0:.0f} s)")
    if sheet:
        png = Path(out) / "contact_sheet.png"
        write_contact_sheet(manifest, png, root=root)
        click.echo(f"contact sheet: {png}")


@cli.command()
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True, help="Dataset manifest.")
@click.option("--out", default="outputs/pseudolabels/synthetic_pooled_net", show_default=True,
              help="Run folder: shards/, detections/, crops/, geometry.parquet, config.json ...")
@click.option("--geometry", type=click.Choice(JOB_MODES), default="pooled", show_default=True,
              help=modes_help())
@click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default=AUTO,
              show_default=True, help=detectors_help())
@click.option("--allow-foreign-detector", is_flag=True, default=False,
              help="Run the 2D network on a dataset its checkpoint was not trained on (refused "
                   "otherwise; recorded in config.json).")
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True,
              help="2D network checkpoint for --detector net.")
@click.option("--device", default="auto", show_default=True,
              help="Where --detector net runs: auto (the GPU when torch sees one), cpu, cuda:0 ...")
@click.option("--detections", default=None, help="Detections file or folder for --detector file.")
@click.option("--noise-px", default=0.0, show_default=True,
              help="Oracle (--detector gt): 2D Gaussian noise in pixels.")
@click.option("--outlier-rate", default=0.0, show_default=True,
              help="Oracle (--detector gt): share of joints moved to random places in the box.")
@click.option("--pairs", type=click.Choice(PAIR_CHOICES), default="nearest", show_default=True,
              help="Camera pairs the pair modes label: each camera with its nearest partner (by "
                   "estimated rotation), or every usable pair.")
@threshold_options
@click.option("--conf-threshold", default=0.3, show_default=True,
              help="Joints below this detector confidence are neither fitted nor labelled.")
@click.option("--crop-size", default=256, show_default=True, help="Saved person crops (pixels).")
@click.option("--crops/--no-crops", default=True, show_default=True,
              help="Save the person crops (stage 2 trains on them) into crop shards, one "
                   "Parquet file per sequence and camera (image_path = <file>#<row>). "
                   "--no-crops with --detector "
                   "file reads no frame at all: labels from a detections file without images "
                   "(sequences then need num_frames in the manifest; shards' image_path is "
                   "empty).")
@click.option("--subjects", default=None, help="Comma-separated subjects (default: all).")
@click.option("--max-frames", default=None, type=int, help="First frames of each sequence only.")
@click.option("--chunk-frames", default=250, show_default=True, help="Frames per detection task.")
@click.option("--seed", default=0, show_default=True, help="RANSAC and oracle-noise seed.")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True,
              help="LocalCluster worker processes (ignored with --scheduler).")
@click.option("--scheduler", default=None,
              help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--dashboard-address", default=None,
              help="Serve the LocalCluster's Dask dashboard here (e.g. :8787); off by default.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress bars of the detection and labelling tasks.")
@click.option("--max-people", default=AssociationSettings.max_people, show_default=True,
              help="Several people per frame: a view holding more people in a frame is left out "
                   "of that frame's association (recorded in failures.parquet).")
@click.option("--association-gate", default=AssociationSettings.gate, show_default=True,
              help="Several people per frame: two views' detections are one person only if "
                   "their joints' mean symmetric epipolar distance is below this, in person "
                   "sizes (the RMS distance of the person's joints from their centroid in the "
                   "image, about 0.3 of its height), so it holds for any image size.")
@click.option("--association-calibration-gate", default=AssociationSettings.calibration_gate,
              show_default=True,
              help="Several people per frame, self-supervised modes: the RANSAC over people "
                   "that self-calibrates the association's cameras scores a hypothesis by the "
                   "matches closer than this to their epipolar lines (person sizes).")
@click.option("--track-gate", default=AssociationSettings.track_gate, show_default=True,
              help="Several people per frame: farthest a person may be from its track's "
                   "predicted 3D position, in person sizes.")
@click.option("--track-max-gap", default=AssociationSettings.max_gap, show_default=True,
              help="Several people per frame: frames a track may go unseen before it ends.")
def pseudolabels(manifest, out, geometry, detector, allow_foreign_detector, checkpoint_2d, device,
                 detections, noise_px, outlier_rate, pairs, ransac_threshold_px,
                 reproj_threshold_px, conf_threshold, crop_size, crops, subjects, max_frames,
                 chunk_frames, seed, root, workers, scheduler, dashboard_address, progress,
                 max_people, association_gate, association_calibration_gate, track_gate,
                 track_max_gap) -> None:
    """Detect 2D, fit camera geometry, triangulate and write pseudo-3D Parquet shards.

    Reruns resume: finished detection files and shards are kept. Exit status 0 when no frame
    lost its labels (a failed camera pair whose cameras are labelled through other pairs is a
    warning, as is a pair labelled although its rotation is uncertain because nothing else
    labels its camera, e.g. in a two-camera rig), 2 when some frames, or camera pairs with a camera left without labels, failed
    (listed in failures.parquet with their severity, and geometry.parquet; a run whose geometry
    refused every pair says so, naming each pair and why), 3 when the detections disagree
    across views (summary.json 'inconsistent': labels written, detector suspect), 1 on an
    error.
    """
    try:
        cfg = JobConfig(manifest=manifest, out=out, geometry=geometry, detector=detector,
                        allow_foreign_detector=allow_foreign_detector,
                        checkpoint_2d=checkpoint_2d, detections=detections, noise_px=noise_px,
                        outlier_rate=outlier_rate, device=device, seed=seed, pairs=pairs,
                        conf_threshold=conf_threshold, ransac_threshold_px=ransac_threshold_px,
                        reproj_threshold_px=reproj_threshold_px, crop_size=crop_size,
                        write_crops=crops, chunk_frames=chunk_frames,
                        subjects=tuple(subjects.split(",")) if subjects else None,
                        max_frames=max_frames, root=root, max_people=max_people,
                        association_gate=association_gate,
                        association_calibration_gate=association_calibration_gate,
                        track_gate=track_gate, track_max_gap=track_max_gap)
        cfg, choice = resolve_job(cfg)
        click.echo(choice.line(), err=True)
        summary = run_stage1(cfg, workers, scheduler, dashboard_address, progress)
    except (ManifestError, DetectorUnavailable, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps({"out": out, **summary.__dict__}, indent=1, default=float))
    click.echo(shards_hint(cfg))
    if summary.failed_frames or summary.failed_pairs:
        warned = summary.failed_pairs - summary.pairs_losing_labels
        click.echo(f"{summary.failed_frames} frame-views and {summary.pairs_losing_labels} "
                   f"camera pairs failed, {warned} failed pairs are warnings (their cameras are "
                   f"labelled through other pairs): see {cfg.run.failures_file}", err=True)
    if summary.uncertain_pairs:
        click.echo(f"warning: {summary.uncertain_pairs} camera pairs are labelled although their "
                   "rotation is uncertain (no other pair labels their camera; the labels may be "
                   f"several degrees off): see {cfg.run.failures_file}", err=True)
    if summary.refused_geometry:
        click.echo(f"error: {summary.refused_geometry}. See {cfg.run.geometry_file} "
                   "(cost_margin, rotation_se_deg, loop_err_deg per pair).", err=True)
    if summary.inconsistent:
        click.echo(summary.inconsistency_warning(cfg), err=True)
    sys.exit(summary.exit_code)


@cli.command("which-detector")
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True, help="Dataset manifest.")
@click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default=AUTO, show_default=True)
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True)
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
def which_detector(manifest, detector, checkpoint_2d, root) -> None:
    """Print the back-end --detector stands for on this manifest (auto resolved; the reason on
    stderr). The Makefile asks it whether to train the 2D network first."""
    from pipeline.store.manifest import load_manifest

    try:
        choice = resolve_detector(detector, load_manifest(manifest, root=root),
                                  DetectorOptions(checkpoint=checkpoint_2d))
    except (ManifestError, DetectorUnavailable, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(choice.line(), err=True)
    click.echo(choice.name)


@cli.command("test-video")
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True,
              help="Dataset manifest whose frames become videos (rendered by `make data`).")
@click.option("--out", default="outputs/data/test_video", show_default=True,
              help="Folder for manifest.yaml, videos/ and gt/.")
@click.option("--split", default="test", show_default=True, help="The split to write.")
@click.option("--subject", "subjects", multiple=True, help="Only these subjects (repeatable).")
@click.option("--max-frames", type=int, default=None, help="At most this many frames per sequence.")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
def test_video(manifest, out, split, subjects, max_frames, root) -> None:
    """Write a split's frames as MP4 videos (one per sequence and camera) with their ground truth
    and a manifest that reads them: footage with known 3D for `make predict`, which `make eval
    MANIFEST=OUT/manifest.yaml` scores on the same decoded frames."""
    from pipeline.store.manifest import load_manifest
    from pipeline.store.video_export import write_video_set

    try:
        vs = write_video_set(load_manifest(manifest, root=root), out, split, max_frames,
                             tuple(subjects) or None)
    except (ManifestError, FileNotFoundError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(f"{len(vs.videos)} videos, {vs.frames} frames: {vs.manifest}")


def run_stage1(cfg: JobConfig, workers: int, scheduler: str | None,
               dashboard_address: str | None, progress: bool) -> JobSummary:
    """Preflight (bad input fails here: no cluster started, nothing written), then the job on a
    LocalCluster or ``scheduler``, with Dask's performance report in the run folder."""
    from distributed import performance_report

    preflight(cfg)
    cfg.run.path.mkdir(parents=True, exist_ok=True)
    with local_client(workers, scheduler=scheduler, dashboard=dashboard_address is not None,
                      dashboard_address=dashboard_address or ":0") as client:
        with performance_report(filename=str(cfg.run.dask_report_file)):
            return run_job(cfg, client, progress=progress)


if __name__ == "__main__":
    cli()

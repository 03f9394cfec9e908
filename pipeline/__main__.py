"""Stage 1 command line: ``python -m pipeline --help``.

Thin click commands; the work lives in pipeline.job, pipeline.synthetic and friends.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

DEFAULT_MANIFEST = "data_manifests/synthetic.yaml"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Stage 1 of EpipolarPose: multi-view frames in, pseudo-3D Parquet shards out.

    \b
    data          render the embedded synthetic multi-view dataset (the default input)
    pseudolabels  detect 2D, fit camera geometry, triangulate, write shards (a Dask job)
    """


@cli.command()
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True,
              help="Manifest of the synthetic dataset (its 'synthetic:' block has the settings).")
@click.option("--size", default=1.0, show_default=True,
              help="Multiplies frames_per_sequence (SIZE=4 gives 4x the frames).")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True,
              help="Processes rendering sequences in parallel.")
@click.option("--root", default=None, help="Write somewhere other than the manifest's root.")
@click.option("--sheet/--no-sheet", default=True, show_default=True,
              help="Also write contact_sheet.png (a few frames of all views, skeleton drawn).")
def data(manifest: str, size: float, workers: int, root: str | None, sheet: bool) -> None:
    """Render the synthetic dataset: images, ground truth and a contact sheet.

    Deterministic from the manifest's seed; sequences already complete are skipped, so an
    interrupted run resumes.
    """
    from pipeline.synthetic import generate_dataset, write_contact_sheet

    t0 = time.perf_counter()
    out = generate_dataset(manifest, size=size, workers=workers, root=root)
    click.echo(f"dataset: {out} ({time.perf_counter() - t0:.0f} s)")
    if sheet:
        png = Path(out) / "contact_sheet.png"
        write_contact_sheet(manifest, png, root=root)
        click.echo(f"contact sheet: {png}")


@cli.command()
@click.option("--manifest", default=DEFAULT_MANIFEST, show_default=True, help="Dataset manifest.")
@click.option("--out", default="outputs/pseudolabels/synthetic_pooled_net", show_default=True,
              help="Run folder: shards/, detections/, crops/, geometry.parquet, config.json ...")
@click.option("--geometry", type=click.Choice(["per-frame", "pooled", "multiview", "calibrated"]),
              default="pooled", show_default=True,
              help="per-frame: the paper's one essential matrix per frame; pooled: one per subject "
                   "and camera pair from many frames; multiview: all cameras registered and "
                   "bundle-adjusted; calibrated: the manifest's extrinsics (metric labels).")
@click.option("--detector", type=click.Choice(["net", "gt", "file", "mediapipe"]), default="net",
              show_default=True,
              help="net: the project's 2D network (make train-2d); gt: ground truth + noise "
                   "(oracle, for ablations); file: precomputed detections; mediapipe: BlazePose.")
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True,
              help="2D network checkpoint for --detector net.")
@click.option("--detections", default=None, help="Detections file for --detector file.")
@click.option("--noise-px", default=0.0, show_default=True, help="Oracle: 2D Gaussian noise (px).")
@click.option("--outlier-rate", default=0.0, show_default=True,
              help="Oracle: share of joints replaced by outliers.")
@click.option("--pairs", type=click.Choice(["nearest", "all"]), default="nearest",
              show_default=True, help="Camera pairs to label.")
@click.option("--ransac-threshold-px", default=1.0, show_default=True)
@click.option("--reproj-threshold-px", default=10.0, show_default=True,
              help="Joints reprojecting worse than this in either view are not labels.")
@click.option("--conf-threshold", default=0.3, show_default=True)
@click.option("--crop-size", default=256, show_default=True, help="Saved person crops (pixels).")
@click.option("--subjects", default=None, help="Comma-separated subjects (default: all).")
@click.option("--max-frames", default=None, type=int, help="First frames of each sequence only.")
@click.option("--chunk-frames", default=250, show_default=True, help="Frames per detection task.")
@click.option("--seed", default=0, show_default=True)
@click.option("--root", default=None, help="Override the manifest's data root.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True,
              help="LocalCluster worker processes (ignored with --scheduler).")
@click.option("--scheduler", default=None,
              help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def pseudolabels(manifest, out, geometry, detector, checkpoint_2d, detections, noise_px,
                 outlier_rate, pairs, ransac_threshold_px, reproj_threshold_px, conf_threshold,
                 crop_size, subjects, max_frames, chunk_frames, seed, root, workers, scheduler,
                 progress) -> None:
    """Detect 2D, fit camera geometry, triangulate and write pseudo-3D Parquet shards.

    Reruns resume: finished detection files and shards are kept. Exit status 0 when every frame
    was labelled, 2 when some frames or camera pairs failed (listed in failures.parquet and
    geometry.parquet), 1 on an error.
    """
    from distributed import performance_report

    from pipeline.detect import DetectorUnavailable
    from pipeline.job import JobConfig, local_client, preflight, run_job
    from pipeline.manifest import ManifestError

    try:
        cfg = JobConfig(manifest=manifest, out=out, geometry=geometry, detector=detector,
                        checkpoint_2d=checkpoint_2d, detections=detections, noise_px=noise_px,
                        outlier_rate=outlier_rate, seed=seed, pairs=pairs,
                        conf_threshold=conf_threshold, ransac_threshold_px=ransac_threshold_px,
                        reproj_threshold_px=reproj_threshold_px, crop_size=crop_size,
                        chunk_frames=chunk_frames,
                        subjects=tuple(subjects.split(",")) if subjects else None,
                        max_frames=max_frames, root=root)
        preflight(cfg)  # bad input fails here: no cluster started, nothing written
        Path(out).mkdir(parents=True, exist_ok=True)
        with local_client(workers, scheduler=scheduler) as client:
            with performance_report(filename=str(Path(out) / "dask-report.html")):
                summary = run_job(cfg, client, progress=progress)
    except (ManifestError, DetectorUnavailable, ValueError, FileNotFoundError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps({"out": out, **summary.__dict__}, indent=1, default=float))
    click.echo(f"shards: {Path(out) / 'shards'}  (pandas.read_parquet(path, filters=[('subject', "
               f"'==', 'S9')]))")
    if summary.failed_frames or summary.failed_pairs:
        click.echo(f"{summary.failed_frames} frames and {summary.failed_pairs} camera pairs "
                   f"failed: see {Path(out) / 'failures.parquet'}", err=True)
    sys.exit(summary.exit_code)


@cli.command()
@click.option("--out", default="outputs/bench", show_default=True)
@click.option("--subjects", default="S9,S11", show_default=True,
              help="Synthetic subjects forming the fixed workload.")
@click.option("--detector", type=click.Choice(["net", "gt"]), default="net", show_default=True)
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True)
@click.option("--repeats", default=1, show_default=True, help="Runs per setting (median kept).")
@click.option("--geometry/--no-geometry", default=True, show_default=True,
              help="Also run the geometry benchmark (per-frame vs pooled vs multiview).")
@click.option("--sweep/--no-sweep", default=True, show_default=True,
              help="Also run stage 1 per geometry mode at 0/2/5/10 px oracle noise and 10% "
                   "outliers on the synthetic test subjects (pseudo-label accuracy table).")
def bench(out, subjects, detector, checkpoint_2d, repeats, geometry, sweep) -> None:
    """Measure stage 1: time per step, detector share, Dask scaling 1 -> 2 workers, worker
    memory, a cluster model for a Human3.6M-sized job; and the geometry accuracy/speed sweep."""
    from pipeline import bench as B

    if geometry:
        from pipeline import geometry_bench

        geometry_bench.main(out=out)
    if sweep:
        df = B.pseudolabel_sweep(out=f"{out}/sweep")
        click.echo(df.round(2).to_string(index=False))
    r = B.main(out=out, subjects=tuple(subjects.split(",")), checkpoint_2d=checkpoint_2d,
               detector=detector, repeats=repeats)
    click.echo(B.format_table(r))


if __name__ == "__main__":
    cli()

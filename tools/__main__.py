"""``python -m tools --help``: benchmarks, the real-footage demo and the overlay, one click group."""
from __future__ import annotations

from tools import cap_blas_threads

# Benchmarks report per-core figures and Dask workers are the parallelism: one BLAS thread per
# process unless the caller says otherwise (set before numpy is imported).
cap_blas_threads()

from pathlib import Path  # noqa: E402

import click  # noqa: E402

from tools import (association_bench, detector_check, docs_reference, docs_tables,  # noqa: E402
                   export_calibration, flip_sweep, geometry_bench, gpu_bench, overlay, peer_bench,
                   lifter_study, people_check, people_score, real_demo, real_demo_people,
                   real_finetune, stage1_bench, stage2_study, threshold_bench, train_bench,
                   train_timing)
from tools.docs_tables import docs_table_option  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Tools beside the product (they call its public functions and registries).

    \b
    bench-geometry  pseudo-label accuracy and speed of every geometry mode (mocap through a rig)
    bench-stage1    stage 1 end to end: time split, Dask scaling, memory, accuracy sweep
    flip-sweep      do pooled camera pairs ever flip silently? (H36M rigs, noise, thresholds)
    bench-peer      the geometry against aniposelib 0.8.0 on the same 2D (accuracy, speed)
    bench-thresholds  all-view labels with thresholds from the noise vs fixed pixels vs plain DLT
    bench-train     trainer images/s and memory of training configurations
    time-make-train  `make train` on a fresh clone, step by step (the docs' timing table)
    bench-gpu       stage 1 and the paper config's training on a GPU (AMP, DDP, resume on CPU)
    bench-association  several people: association ms/frame and accuracy, 2-16 cameras, 1-10 people
    people-check    a multi-person detector over a calibrated recording: people, duplicates, merged
    overlay         detected 2D and reprojected pseudo-3D of a stage-1 run, as a PNG grid
    real-demo       the Pose2Sim recording and checks of a run against its calibration
    real-finetune   stage 2 on a real recording: a manifest without one camera, before/after table
    detector-check  is a 2D detector fit for labelling a dataset (error, confidence, consistency)
    export-calibration  a run's self-calibrated cameras as Pose2Sim / anipose / OpenCV files
    docs-reference  the docs site's generated pages: every command's --help, Parquet schemas
    stage2-study    why the 3D network learns less than its labels: curves, one-factor runs
    lifter-study    the keypoint lifter on the synthetic test split: variants x seeds, one table
    """


def mocap_options(result_file: str):
    """The options shared by the benches on motion through the Human3.6M S1 cameras: --out
    (the folder of ``result_file``), --bvh, --step, --seed."""
    def apply(fn):
        for option in reversed((
                click.option("--out", default="outputs/bench", show_default=True,
                             help=f"Folder for {result_file}."),
                click.option("--bvh", type=click.Path(exists=True, dir_okay=False,
                                                      path_type=Path), default=None,
                             help="Motion clip (BVH, e.g. CMU 131_01); default: the procedural "
                                  "synthetic motion."),
                click.option("--step", default=2, show_default=True,
                             help="Use every step-th BVH frame."),
                click.option("--seed", default=0, show_default=True))):
            fn = option(fn)
        return fn
    return apply


@cli.command("bench-thresholds")
@mocap_options("thresholds.json")
@docs_table_option("thresholds")
def bench_thresholds(out: str, bvh: Path | None, step: int, seed: int,
                     docs_table: Path | None) -> None:
    """All-view labels (calibrated-multiview, multiview) with the default thresholds from the
    measured 2D noise and with the former fixed 1 / 10 px, beside plain DLT: error, valid
    share, good joints refused, at 2/5/10 px and 5 px with 10 % outliers (H36M S1, 1000 px)."""
    result = threshold_bench.run(out=out, bvh=bvh, step=step, seed=seed)
    docs_tables.write(docs_table, f"Motion: {result['motion']}.\n\n{result['table']}")


@cli.command("bench-geometry")
@mocap_options("geometry.json")
@docs_table_option("geometry")
def bench_geometry(out: str, bvh: Path | None, step: int, seed: int,
                   docs_table: Path | None) -> None:
    """Every geometry mode of the registry on mocap through the Human3.6M S1 cameras (1000 px):
    N-/PA-MPJPE at 0/2/5/10 px and with outliers, camera rotation error, throughput."""
    result = geometry_bench.run(out=out, bvh=bvh, step=step, seed=seed)
    docs_tables.write(docs_table, docs_tables.geometry_body(result))


@cli.command("bench-stage1")
@click.option("--out", default="outputs/bench", show_default=True)
@click.option("--subjects", default=",".join(stage1_bench.ALL_SUBJECTS), show_default=True,
              help="Synthetic subjects forming the breakdown's workload (all: 14,000 "
                   "frame-views of the embedded set; make bench uses S1,S9,S11 rendered at "
                   "4x the frames, --root outputs/data/synthetic_x4: 24,000).")
@click.option("--scaling", default="S9;S9,S11", show_default=True,
              help="Smaller subject sets of the scaling table (';' between sets).")
@click.option("--detector", type=click.Choice(["net", "gt"]), default="net", show_default=True)
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True)
@click.option("--repeats", default=1, show_default=True, help="Runs per setting (median kept).")
@click.option("--sweep/--no-sweep", default=True, show_default=True,
              help="Also run stage 1 per geometry mode at 0/2/5/10 px oracle noise and 10% "
                   "outliers on the synthetic test subjects (pseudo-label accuracy table).")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Data root overriding the manifest's (relative to the working directory).")
@click.option("--cpu-only", "cpu_workers", default=None,
              help="Only the CPU-time breakdown, one run per worker count given (e.g. 1 or "
                   "1,2): no sweep, scaling table or cluster model.")
@docs_table_option("stage1")
def bench_stage1(out, subjects, scaling, detector, checkpoint_2d, repeats, sweep, root,
                 cpu_workers, docs_table) -> None:
    """Stage 1 through make pseudolabels' code path: time per step, detector share, the
    non-detector breakdown (start-up, reading, crops, Parquet, geometry, scheduling) as a share
    of detector time, scaling with sequences and workers (1, 2), worker memory, a cluster model
    for a Human3.6M-sized job."""
    if cpu_workers:
        r = stage1_bench.cpu_main(out=out, subjects=tuple(subjects.split(",")),
                                  checkpoint_2d=checkpoint_2d, detector=detector, root=root,
                                  workers=tuple(int(w) for w in cpu_workers.split(",")))
        printed = (f"stage 1 on {r['machine']}; {r['workload']}\n"
                   f"{stage1_bench.format_cpu_breakdown(r)}")
        click.echo(printed)
        docs_tables.write(docs_table, docs_tables.stage1_body(printed))
        return
    if sweep:
        df = stage1_bench.pseudolabel_sweep(out=f"{out}/sweep")
        click.echo(df.round(2).to_string(index=False))
        if docs_table is not None:  # the sweep beside the breakdown: <name>_sweep.md
            docs_tables.write(docs_table.with_name(f"{docs_table.stem}_sweep.md"),
                              docs_tables.to_markdown(df, 2, index=False))
    r = stage1_bench.main(out=out, subjects=tuple(subjects.split(",")), checkpoint_2d=checkpoint_2d,
                          detector=detector, repeats=repeats, root=root,
                          scaling=tuple(tuple(s.split(",")) for s in scaling.split(";") if s))
    click.echo(stage1_bench.format_table(r))
    docs_tables.write(docs_table, docs_tables.stage1_body(stage1_bench.format_table(r)))


@cli.command("bench-gpu")
@click.option("--out", default="outputs/bench/gpu", show_default=True, type=Path)
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True,
              help="2D network for stage 1 on the GPU (trained briefly there when absent).")
@click.option("--workers", default=8, show_default=True, help="DataLoader workers.")
@click.option("--tiny", is_flag=True, help="The CPU fallback at toy size (automatic without "
              "CUDA); needs --root and --manifest of a tiny rendered set with S1 and S8.")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Data root overriding the manifest's (relative to the working directory).")
@click.option("--manifest", default="data_manifests/synthetic.yaml", show_default=True)
def bench_gpu(out: Path, checkpoint_2d: str, workers: int, tiny: bool, root: str | None,
              manifest: str) -> None:
    """One short prepared script for a CUDA machine: stage 1 with the 2D network on the GPU,
    the paper configuration's training throughput with AMP and channels-last at batch
    32/64/128 (images/s, data-wait share, peak GPU memory), a short torchrun DDP run, and its
    GPU checkpoint resumed on the CPU. Writes OUT/gpu.json; prints a Markdown table."""
    import torch

    if tiny or not torch.cuda.is_available():
        if root is None:
            raise click.UsageError("no CUDA here: the tiny CPU fallback needs --root (a tiny "
                                   "rendered set with subjects S1 and S8) and its --manifest")
        b = gpu_bench.tiny(out, root, manifest)
    else:
        b = gpu_bench.GpuBench(out=out, manifest=manifest, root=root,
                               checkpoint_2d=checkpoint_2d, workers=workers)
    click.echo(gpu_bench.format_table(gpu_bench.run(b)))


cli.add_command(train_bench.main, "bench-train")
cli.add_command(train_timing.main, "time-make-train")
cli.add_command(association_bench.main, "bench-association")
cli.add_command(people_score.main, "people-score")
cli.add_command(people_check.main, "people-check")
cli.add_command(overlay.main, "overlay")
cli.add_command(peer_bench.main, "bench-peer")
cli.add_command(flip_sweep.main, "flip-sweep")
real_demo.main.add_command(real_demo_people.people_cmd, "people")
cli.add_command(real_demo.main, "real-demo")
cli.add_command(real_finetune.cli, "real-finetune")
cli.add_command(detector_check.main, "detector-check")
cli.add_command(export_calibration.main, "export-calibration")
cli.add_command(docs_reference.main, "docs-reference")
cli.add_command(stage2_study.cli, "stage2-study")
cli.add_command(lifter_study.cli, "lifter-study")

if __name__ == "__main__":
    cli()

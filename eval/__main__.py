"""Command line of the evaluation: ``python -m eval metrics ...`` and ``python -m eval report ...``.

Thin click wrappers; the work is in eval.evaluate and eval.report.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# As in train/__main__.py: a short OpenMP spin (the ablation trains in this process; the default
# long spin costs an order of magnitude on a shared CPU). Set before torch loads; an explicit
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import click  # noqa: E402


@click.group(help="""Evaluation of EpipolarPose models and pseudo-labels.

\b
  metrics  MPJPE, N-MPJPE, PA-MPJPE, PSS@50/100, PCK3D and AUC of a 3D checkpoint (and/or the
           mean-pose baseline) on a manifest's test split, per action and overall.
  metrics-2d  mean pixel error and PCK of the 2D network (stage 1's detector) on a split's
           2D ground truth.
  report   pseudo-label quality of one or more stage-1 run folders: errors against ground
           truth per camera pair and per joint, reprojection error, valid share, camera
           rotation error; Markdown + CSV tables and PNG plots.
  summary  one table of several `metrics` folders, seeds grouped (mean ± std).

Which alignment each metric uses is eval.metrics.ALIGNMENTS (mpjpe: none, n_mpjpe: scale,
pa_mpjpe: procrustes); every table states it.""")
def cli() -> None:
    pass


@cli.command("metrics-2d")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), required=True,
              help="2D network checkpoint (make train-2d: outputs/runs/pose2d/best.pt).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), required=True,
              help="dataset manifest with 2D ground truth.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="output folder.")
@click.option("--split", default="test", show_default=True, help="manifest split evaluated.")
@click.option("--frame-step", default=1, show_default=True, type=click.IntRange(min=1),
              help="use every n-th ground-truth frame (after the manifest's own step).")
@click.option("--pck-px", default=5.0, show_default=True, help="PCK threshold, image pixels.")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
def metrics_2d(checkpoint: str, manifest: str, out: str, split: str, frame_step: int,
               pck_px: float, root: str | None) -> None:
    """The 2D network on a split's 2D ground truth: mean pixel error and PCK, per action."""
    from eval.evaluate import evaluate_2d
    from eval.tables import to_markdown

    table = evaluate_2d(manifest, out, checkpoint, split, frame_step, pck_threshold_px=pck_px,
                        root=root)
    click.echo(to_markdown(table, 2))


@cli.command(help="""Evaluate a 3D checkpoint on the manifest's test split.

Crops are cut around the ground-truth boxes, predictions are decoded to camera-frame mm with
the ground-truth root depth (the paper's protocol). PSS cluster models are fitted on the train
split's ground truth and cached in OUT, or in --pss-dir (pss_k50.npz, pss_k100.npz), and reused
while the training ground truth is unchanged, so that runs sharing the cache are comparable. Writes checkpoint.md/.csv,
mean_pose.md/.csv (with --baseline mean-pose), checkpoint_refined.md/.csv (with --refiner), per-sample Parquet files and eval.json.

\b
Examples:
  python -m eval metrics --checkpoint outputs/runs/pose3d_pseudo/best.pt \\
      --manifest data_manifests/synthetic.yaml --out outputs/eval/pose3d_pseudo
  python -m eval metrics --baseline mean-pose --manifest data_manifests/synthetic.yaml \\
      --out outputs/eval/mean_pose""")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="3D checkpoint (train/checkpoint.py load_model): the volumetric network or a "
                   "keypoint lifter (needs --detections). Optional with --baseline.")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), required=True,
              help="dataset manifest (data_manifests/*.yaml).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="output folder for tables, per-sample metrics and the PSS cache.")
@click.option("--detections", type=click.Path(exists=True, file_okay=False), default=None,
              help="a keypoint lifter's input: the stage-1 run folder whose kept 2D detections "
                   "of the test frames it lifts (e.g. outputs/pseudolabels/"
                   "synthetic_multiview_auto).")
@click.option("--baseline", "baselines", type=click.Choice(["mean-pose"]), multiple=True,
              help="also evaluate a baseline: mean-pose = the mean training pose for every "
                   "sample.")
@click.option("--refiner", type=click.Path(exists=True, dir_okay=False), default=None,
              help="refinement unit checkpoint (python -m train refiner): also report the "
                   "checkpoint's poses after refinement (checkpoint_refined).")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
@click.option("--split", default="test", show_default=True, help="manifest split evaluated.")
@click.option("--train-split", default="train", show_default=True,
              help="split whose ground truth fits PSS and the mean pose.")
@click.option("--frame-step", default=1, show_default=True, type=click.IntRange(min=1),
              help="use every n-th ground-truth frame (after the manifest's own step).")
@click.option("--max-frames", default=None, type=click.IntRange(min=1),
              help="at most this many frames per test sequence and camera (quick runs).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--pss-seed", default=0, show_default=True, help="k-means seed of PSS.")
@click.option("--pss-restarts", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--pss-dir", default=None, type=click.Path(file_okay=False),
              help="folder of the cached PSS models (default: OUT); share it between runs to "
                   "compare their PSS on the same clusters.")
def metrics(checkpoint: str | None, manifest: str, out: str, detections: str | None,
            baselines: tuple[str, ...],
            refiner: str | None, root: str | None, split: str, train_split: str, frame_step: int,
            max_frames: int | None, batch_size: int, pss_seed: int, pss_restarts: int,
            pss_dir: str | None) -> None:
    from eval.evaluate import EvalSettings, evaluate
    from eval.tables import to_markdown
    from train.checkpoint import CheckpointError

    if checkpoint is None and not baselines:
        raise click.UsageError("give --checkpoint, --baseline mean-pose, or both")
    settings = EvalSettings(split=split, train_split=train_split, frame_step=frame_step,
                            max_frames=max_frames, batch_size=batch_size, pss_seed=pss_seed,
                            pss_restarts=pss_restarts, pss_dir=pss_dir)
    try:
        results = evaluate(manifest, out, checkpoint, baselines, settings, root=root,
                           refiner=refiner, detections=detections)
    except (CheckpointError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for name, table in results.items():
        click.echo(f"\n{name} ({Path(out) / name}.md)\n")
        click.echo(to_markdown(table, 1, digits_by_column={c: 3 for c in table.columns
                                                           if not c.endswith("mpjpe")}))


@cli.command(help="""One table of several `python -m eval metrics` folders: per group (a name and
the folders of its seeds) MPJPE, N-MPJPE, PA-MPJPE, PCK3D and AUC as mean ± sample std.

\b
Example:
  python -m eval summary --group 'make train=outputs/eval/pose3d_pseudo' \\
      --group 'supervised=outputs/eval/sup_s0,outputs/eval/sup_s1'""")
@click.option("--group", "groups", multiple=True, required=True,
              help="NAME=DIR[,DIR...]: eval folders (one per seed) shown as one row.")
@click.option("--docs-table", type=click.Path(dir_okay=False), default=None,
              help="also write the table, headed by this command, the machine and the date, "
                   "to this Markdown file (docs/figures/tables/).")
def summary(groups: tuple[str, ...], docs_table: str | None) -> None:
    from eval.summary import summary_table

    parsed = {}
    for g in groups:
        name, sep, dirs = g.partition("=")
        if not sep or not name.strip() or not dirs.strip():
            raise click.BadParameter(f"{g!r}: expected NAME=DIR[,DIR...]", param_hint="--group")
        parsed[name.strip()] = [Path(d.strip()) for d in dirs.split(",") if d.strip()]
    try:
        table = summary_table(parsed)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(table)
    if docs_table:
        from eval.tables import invocation, write_docs_table

        click.echo(f"docs table: {write_docs_table(docs_table, invocation('eval'), table)}")


@cli.command(help="""Pseudo-label quality report of stage-1 run folders.

Each RUN folder holds shards/, config.json and geometry.parquet. With several runs (e.g. one
per geometry mode and 2D noise level) the report adds a summary row per run and a plot of the
error against 2D noise per geometry mode. Writes OUT/report.md, OUT/summary.csv and, per run,
OUT/<run>/per_pair.{md,csv}, per_joint.{md,csv}, error_hist.png, per_joint.png, skeletons.png.

\b
Example:
  python -m eval report --run outputs/pseudolabels/synthetic_pooled_net \\
      --run outputs/pseudolabels/synthetic_per-frame_net --out outputs/eval/labels""")
@click.option("--run", "runs", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False), help="stage-1 run folder (repeat).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="output folder.")
def report(runs: tuple[str, ...], out: str) -> None:
    from eval.report import write_report
    from eval.tables import to_markdown

    summary = write_report(list(runs), out)
    cols = [c for c in ("geometry", "noise_px", "outlier_rate", "n_mpjpe", "pa_mpjpe",
                        "valid_share", "reproj_px", "rot_err_deg_median") if c in summary]
    click.echo(to_markdown(summary[cols], 1, digits_by_column={"valid_share": 3}))
    click.echo(f"\nreport: {Path(out) / 'report.md'}")


@cli.command(help="""The ablation table of issue 12: the same 3D network and budget trained on
labels of every kind (per-frame, pooled, multiview, calibrated, oracle 2D, ground truth), the
refinement unit and the mean pose, several seeds each, scored on the test split.

Resumable: each (row, seed) writes OUT/<budget>/results/<row>/seed<k>.json atomically when it
finishes and a rerun skips those; interrupted training resumes from its last.pt. Stage-1 label
runs go to OUT/labels/ (made when missing, sharing one detection pass per detector). The table
(OUT/<budget>/table.md, .csv, ablation.png) is rendered after every result from whatever exists,
missing rows marked.

\b
Examples:
  make ablation                                   # the default: budget cpu-from2d, seeds 0,1,2
  python -m eval ablation --rows multiview,mean-pose --seeds 0 --epochs 1
  python -m eval ablation --table-only            # re-render the table only""")
@click.option("--manifest", default="data_manifests/synthetic.yaml", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="dataset manifest.")
@click.option("--out", default="outputs/ablation", show_default=True,
              type=click.Path(file_okay=False), help="ablation folder.")
@click.option("--budget", "budget_name", default="cpu-from2d", show_default=True,
              help="training budget preset of eval.ablation.BUDGETS: cpu-from2d (6 epochs from "
                   "the 2D network, make train's 3D recipe until session 7, 11-22 min a run on 2 "
                   "cores), cpu-make-train (3 epochs from it, make train's recipe since, 7-10 min "
                   "a run), cpu-2h (the former from-scratch 4 epochs) or gpu.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="override the budget's epochs (results go to a folder named after it).")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma-separated seeds.")
@click.option("--rows", default="", help="comma-separated rows (default: all, in table order).")
@click.option("--refine-base", default="multiview", show_default=True,
              help="the self-supervised row the refinement unit refines.")
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True,
              help="2D network of the net detector (make train-2d).")
@click.option("--device", default="auto", show_default=True, help="trainer device.")
@click.option("--workers", default=2, show_default=True, help="stage-1 Dask workers.")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
@click.option("--table-only", is_flag=True, help="only render the table from the results.")
@click.option("--docs-table", type=click.Path(dir_okay=False), default=None,
              help="also write the table, headed by this command, the machine and the date, "
                   "to this Markdown file (the docs site's docs/figures/tables/ablation.md).")
@click.option("--no-progress", is_flag=True, help="no progress bars (logs).")
def ablation(manifest: str, out: str, budget_name: str, epochs: int | None, seeds: str,
             rows: str, refine_base: str, checkpoint_2d: str, device: str, workers: int,
             threads: int | None, root: str | None, table_only: bool, docs_table: str | None,
             no_progress: bool) -> None:
    import dataclasses

    from eval.ablation import BUDGETS, Plan, render, run_ablation

    if budget_name not in BUDGETS:
        raise click.BadParameter(f"{budget_name!r}: choose one of {sorted(BUDGETS)}",
                                 param_hint="--budget")
    budget = BUDGETS[budget_name]
    if epochs is not None and epochs != budget.epochs:
        budget = dataclasses.replace(budget, name=f"{budget.name}-{epochs}ep", epochs=epochs,
                                     milestones=tuple(m for m in budget.milestones if m < epochs))
    budget = dataclasses.replace(budget, threads=threads)
    plan = Plan(out=Path(out), manifest=manifest, budget=budget,
                seeds=tuple(int(x) for x in seeds.split(",") if x.strip()),
                rows=tuple(r.strip() for r in rows.split(",") if r.strip()),
                refine_base=refine_base, checkpoint_2d=checkpoint_2d, device=device,
                stage1_workers=workers, data_root=root, progress=not no_progress)
    if not table_only:
        try:
            progress = run_ablation(plan)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"done {len(progress.done)}, skipped (finished before) "
                   f"{len(progress.skipped)}, failed {len(progress.failed)} {progress.failed}")
    table = render(plan)
    click.echo(f"table: {table}")
    if docs_table:
        from eval.tables import invocation, write_docs_table

        body = "\n".join(line for line in table.read_text().splitlines()
                         if not line.startswith("!["))  # the plot stays beside table.md
        click.echo(f"docs table: {write_docs_table(docs_table, invocation('eval'), body)}")
    if not table_only and progress.failed:
        sys.exit(1)


if __name__ == "__main__":
    cli()

"""The ablation table (issue 12): one 3D network and budget, trained on labels of every kind,
several seeds, scored on the test split; resumable.

Rows (:data:`ROWS`, one class per kind, in table order):

    per-frame    the paper's per-frame pair geometry at its strongest: ``per-frame-refit``
                 (RANSAC then a least-squares refit) when the geometry registry has it, else
                 ``per-frame`` (decided when the row runs)
    pooled       pair geometry pooled over all frames of a subject
    multiview    every view registered into one frame, bundle-adjusted (``make train``'s)
    calibrated   pair triangulation with the manifest's extrinsics (metric labels)
    oracle-2d    the ground-truth 2D (the oracle detector) triangulated by ``multiview``
    supervised   the ground-truth 3D of the training subjects (the upper bound)
    refined      the refinement unit (:mod:`train.refiner`) on a self-supervised row's
                 networks (``multiview`` by default, chosen before any result: the project's
                 default and best label source)
    mean-pose    the training subjects' mean pose for every test sample (no training, no seed)

Every trained row uses the same configuration (``demo_r18w32_96px_d24_*``) with the budget's
epochs; each run picks ``best.pt`` on the validation split against labels of its own kind
(pseudo-labels for self-supervised rows), and only then is the test split read
(:func:`eval.evaluate.evaluate`, PSS clusters shared by all runs).

Folders under ``out``::

    labels/<geometry>_<detector>/        stage-1 runs (``python -m pipeline pseudolabels``); a
                                         new one reuses a sibling's detections and crops
    <budget>/runs/<row>/seed<k>/          trainer run folders (best.pt, eval/, refiner.pt)
    <budget>/results/<row>/seed<k>.json   one result per (row, seed), written atomically;
                                         a rerun skips those that exist
    <budget>/pss/                         the PSS models every run is scored with
    <budget>/table.md, table.csv, ablation.png   rendered from whatever results exist
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eval.ablation_table import render_table
from eval.evaluate import EvalSettings, evaluate
from eval.report import label_errors, load_run, run_joint_set
from pipeline.geometry.modes import GEOMETRY_MODES, JOB_MODES
from pipeline.store.manifest import load_manifest
from pipeline.store.run_folder import RunFolder
from pipeline.store.shards import write_json_atomic
from train.config import config_from_dict, load_config
from train.refiner import RefinerSpec
from train.refiner_fit import fit_refiner
from train.trainer import RunOptions, fit

TABLE_METRICS = ("n_mpjpe", "pa_mpjpe", "mpjpe", "pss@50", "pss@100", "pck3d", "auc")
"""Test-split metrics kept per result (``eval.evaluate.COLUMNS``, overall row)."""


@dataclass(frozen=True)
class Budget:
    """The training budget every trained row gets (the same for all rows).

    Attributes:
        name: folder name of the budget's runs and results.
        epochs: passes over the row's training labels; milestones: learning-rate steps (x0.1).
        val_samples: validation samples per epoch (evenly spaced; 0 = all).
        refiner_steps, refiner_hidden: optimiser steps and width of the refinement unit.
        eval_frame_step, eval_max_frames: test-split subsampling (1 / None = every sample).
        threads: torch CPU threads (None: torch's choice).
        init_2d: start every trained row from the plan's 2D network (``optim.init_2d_from``,
            as ``make train`` does) instead of from scratch.
    """

    name: str = "cpu-2h"
    epochs: int = 4
    milestones: tuple[int, ...] = (3,)
    val_samples: int = 600
    refiner_steps: int = 3000
    refiner_hidden: int = 512
    eval_frame_step: int = 1
    eval_max_frames: int | None = None
    threads: int | None = None
    init_2d: bool = False


BUDGETS: dict[str, Budget] = {
    # make train's 3D recipe of session 6 (it trains 3 epochs since: docs/stage2.md 4f): 6 epochs
    # started from the 2D network (measured on 2 cores: 11-18 min a run on 8,000 training rows,
    # 14-22 on the pair modes' ~10,300; ~1.5-2 h per seed of the six trained rows,
    # docs/figures/ablation.md)
    "cpu-from2d": Budget(name="cpu-from2d", epochs=6, milestones=(5,), init_2d=True),
    # make train's 3D recipe since session 7: 3 epochs from the 2D network, lr x0.1 after 2
    # (7-10 min a run on 2 cores)
    "cpu-make-train": Budget(name="cpu-make-train", epochs=3, milestones=(2,), init_2d=True),
    # the former recipe, from scratch: ~2 h for the whole table on an idle 2-core CPU (four
    # epochs; far from converged, see docs/stage2.md)
    "cpu-2h": Budget(),
    # a CUDA machine: the demo configuration's full schedule and more
    "gpu": Budget(name="gpu", epochs=20, milestones=(15,), val_samples=0, refiner_steps=6000),
}


@dataclass(frozen=True)
class Plan:
    """What one ``make ablation`` runs.

    Attributes:
        out: the ablation folder (module docstring). manifest: the dataset manifest.
        seeds: training seeds of every seeded row. budget: :class:`Budget`.
        rows: row names (:data:`ROWS`) in table order.
        pseudo_config, supervised_config: the trainer configurations (labels from shards /
            from the manifest's ground truth); only budget, seed, shards and manifest change.
        checkpoint_2d: the 2D network of the ``net`` detector (``make train-2d``).
        refine_base: the self-supervised row the refinement unit refines.
        device: trainer device. stage1_workers: Dask workers of stage 1.
        stage1_args: extra ``python -m pipeline pseudolabels`` arguments (e.g. ``--max-frames``).
        data_root: overrides the manifest's data root. progress: progress bars.
    """

    out: Path
    manifest: str = "data_manifests/synthetic.yaml"
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = Budget()
    rows: tuple[str, ...] = ()
    pseudo_config: str = "train/configs/demo_r18w32_96px_d24_pseudo.yaml"
    supervised_config: str = "train/configs/demo_r18w32_96px_d24_supervised.yaml"
    checkpoint_2d: str = "outputs/runs/pose2d/best.pt"
    refine_base: str = "multiview"
    device: str = "auto"
    stage1_workers: int = 2
    stage1_args: tuple[str, ...] = ()
    data_root: str | None = None
    progress: bool = True

    @property
    def budget_dir(self) -> Path:
        return Path(self.out) / self.budget.name

    def labels_dir(self, geometry: str, detector: str) -> Path:
        return Path(self.out) / "labels" / f"{geometry}_{detector}"

    def run_dir(self, row: str, seed: int) -> Path:
        return self.budget_dir / "runs" / row / f"seed{seed}"

    def result_file(self, row: str, seed: int) -> Path:
        return self.budget_dir / "results" / row / f"seed{seed}.json"

    def row_names(self) -> tuple[str, ...]:
        return self.rows or tuple(ROWS)


# --- steps shared by the rows ----------------------------------------------------------------------

def per_frame_geometry() -> str:
    """The strongest per-frame geometry the registry offers to the job."""
    return "per-frame-refit" if "per-frame-refit" in GEOMETRY_MODES and \
        "per-frame-refit" in JOB_MODES else "per-frame"


def _reuse_detections(plan: Plan, folder: Path, detector: str) -> None:
    """Seed a new stage-1 folder with a finished sibling's detections (copied) and crops
    (linked) of the same detector: the job then skips detection (its files exist)."""
    for sibling in sorted((Path(plan.out) / "labels").glob(f"*_{detector}")):
        src = RunFolder(sibling)
        if sibling == folder or not src.summary_file.exists() or not src.detections_dir.is_dir():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not RunFolder(folder).detections_dir.exists():
            shutil.copytree(src.detections_dir, RunFolder(folder).detections_dir)
        if (sibling / "crops").is_dir() and not (folder / "crops").exists():
            os.symlink((sibling / "crops").resolve(), folder / "crops")
        return


def ensure_labels(plan: Plan, geometry: str, detector: str) -> Path:
    """The stage-1 run folder of (geometry, detector), made by ``python -m pipeline
    pseudolabels`` unless finished (its summary.json exists). Exit 2 (some frames or pairs
    failed, recorded) is accepted; anything else raises, naming the command. A finished run
    whose summary.json flags its detections as inconsistent (exit 3) is never reused: it
    raises, naming the folder and the reasons."""
    folder = plan.labels_dir(geometry, detector)
    if RunFolder(folder).summary_file.exists():
        _refuse_inconsistent(folder)
        return folder
    _reuse_detections(plan, folder, detector)
    cmd = [sys.executable, "-m", "pipeline", "pseudolabels", "--manifest", plan.manifest,
           "--out", str(folder), "--geometry", geometry, "--detector", detector,
           "--checkpoint-2d", plan.checkpoint_2d, "--workers", str(plan.stage1_workers),
           "--progress" if plan.progress else "--no-progress", *plan.stage1_args]
    if plan.data_root:
        cmd += ["--root", plan.data_root]
    rc = subprocess.run(cmd).returncode
    if rc == 3:
        _refuse_inconsistent(folder)
    if rc not in (0, 2):
        raise RuntimeError(f"stage 1 failed (exit {rc}): {' '.join(cmd)}")
    return folder


def _refuse_inconsistent(folder: Path) -> None:
    reasons = RunFolder(folder).inconsistency()
    if reasons:
        raise RuntimeError(f"{RunFolder(folder).summary_file}: 'inconsistent': true "
                           f"({'; '.join(reasons)}); the ablation trains on no flagged labels: "
                           "check the detector (make detector-check) and delete the folder to "
                           "label again")


def label_quality(plan: Plan, folder: Path) -> dict[str, Any]:
    """The pseudo-labels' own error against the ground truth on the training subjects' rows
    (what the network is trained on): mean per-pose N-MPJPE, PA-MPJPE (and MPJPE when metric)
    over the rows with ground truth, and the valid-joint share. Cached in the run folder."""
    cache = folder / "ablation_label_quality.json"
    if cache.exists():
        return json.loads(cache.read_text())
    run = load_run(folder)
    le = label_errors(run.table, run.metric_scale, joint_set=run_joint_set(run))
    train = set(load_manifest(plan.manifest, root=plan.data_root).splits["train"])
    rows = le.rows[le.rows["subject"].isin(train)]
    out: dict[str, Any] = {"rows": int(len(rows)), "metric_scale": bool(run.metric_scale),
                           "valid_share": float(le.valid[rows.index.to_numpy()].mean())}
    for k in ("n_mpjpe", "pa_mpjpe", "mpjpe"):
        if k in rows.columns and rows[k].notna().any():
            out[k] = float(rows[k].mean())
    write_json_atomic(cache, out)
    return out


def train_run(plan: Plan, row: str, seed: int, config_path: str, data: dict[str, Any]) -> Path:
    """Train (or finish, or reuse) the run of ``row`` at ``seed``; returns its best.pt. The
    configuration is ``config_path``'s with the budget, the seed and ``data`` overrides."""
    b = plan.budget
    d = load_config(config_path).to_dict()
    d["name"], d["seed"] = f"ablation_{row}_{b.name}_seed{seed}", seed
    d["data"].update({"manifest": plan.manifest, "data_root": plan.data_root or "", **data})
    d["optim"].update({"epochs": b.epochs, "milestones": list(b.milestones)})
    d["val"]["max_samples"] = b.val_samples
    d["optim"]["init_2d_from"] = plan.checkpoint_2d if b.init_2d else ""
    cfg = config_from_dict(d, f"{config_path} (ablation {row}, seed {seed})")
    out = plan.run_dir(row, seed)
    fit(cfg, RunOptions(out=out, device=plan.device, resume=(out / "last.pt").exists(),
                        threads=b.threads, progress=plan.progress))
    if not (out / "best.pt").exists():
        raise RuntimeError(f"{out}: training finished without a best.pt")
    return out / "best.pt"


def eval_settings(plan: Plan) -> EvalSettings:
    b = plan.budget
    return EvalSettings(frame_step=b.eval_frame_step, max_frames=b.eval_max_frames,
                        pss_dir=str(plan.budget_dir / "pss"))


def overall(table: Any) -> dict[str, float]:
    """The ``overall`` row of an evaluation table, :data:`TABLE_METRICS` and n."""
    row = table.loc["overall"]
    return {k: float(row[k]) for k in (*TABLE_METRICS, "n") if k in row.index}


def _best_val(run_dir: Path) -> dict[str, float]:
    """The selection metric's best value and epoch from the run's metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    key = lines[-1]["selection_metric"]
    best = min((r for r in lines if key in r), key=lambda r: r[key])
    return {"selection_metric": key, "value": float(best[key]), "epoch": int(best["epoch"])}


# --- the rows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """A row of the table. ``run(plan, seed)`` returns the result payload (test metrics,
    label quality, what was trained)."""

    name: str
    what: str
    paper: str = "–"
    seeded: ClassVar[bool] = True
    metric: ClassVar[bool | None] = None  # None: as the labels say

    def run(self, plan: Plan, seed: int) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class LabelsRow(Row):
    """The network trained on stage-1 labels of a geometry mode and detector."""

    geometry: str = "multiview"
    detector: str = "net"

    def resolved_geometry(self) -> str:
        return self.geometry

    def checkpoint(self, plan: Plan, seed: int) -> tuple[Path, Path]:
        """(best.pt, the labels' run folder), training if needed."""
        folder = ensure_labels(plan, self.resolved_geometry(), self.detector)
        return train_run(plan, self.name, seed, plan.pseudo_config,
                         {"source": "shards", "shards": str(folder)}), folder

    def run(self, plan: Plan, seed: int) -> dict[str, Any]:
        ckpt, folder = self.checkpoint(plan, seed)
        tables = evaluate(plan.manifest, ckpt.parent / "eval", ckpt, settings=eval_settings(plan),
                          root=plan.data_root)
        quality = label_quality(plan, folder)
        return {"metrics": overall(tables["checkpoint"]), "labels": quality,
                "metric_scale": quality["metric_scale"], "checkpoint": str(ckpt),
                "geometry": self.resolved_geometry(), "detector": self.detector,
                "val": _best_val(ckpt.parent)}


@dataclass(frozen=True)
class PerFrameRow(LabelsRow):
    """:class:`LabelsRow` of the strongest per-frame geometry registered when the row runs
    (:func:`per_frame_geometry`)."""

    def resolved_geometry(self) -> str:
        return per_frame_geometry()


@dataclass(frozen=True)
class SupervisedRow(Row):
    """The network trained on the ground truth of the training subjects."""

    def checkpoint(self, plan: Plan, seed: int) -> tuple[Path, None]:
        return train_run(plan, self.name, seed, plan.supervised_config,
                         {"source": "manifest"}), None

    def run(self, plan: Plan, seed: int) -> dict[str, Any]:
        ckpt, _ = self.checkpoint(plan, seed)
        tables = evaluate(plan.manifest, ckpt.parent / "eval", ckpt, settings=eval_settings(plan),
                          root=plan.data_root)
        return {"metrics": overall(tables["checkpoint"]), "metric_scale": True,
                "labels": {"n_mpjpe": 0.0, "pa_mpjpe": 0.0, "mpjpe": 0.0, "metric_scale": True},
                "checkpoint": str(ckpt), "val": _best_val(ckpt.parent)}


@dataclass(frozen=True)
class RefinedRow(Row):
    """The refinement unit on the networks of ``plan.refine_base`` (same seed): trained on
    that row's training labels with a noise model from its whole validation split (complete
    pseudo-labels are a minority of its rows)."""

    def run(self, plan: Plan, seed: int) -> dict[str, Any]:
        base = ROWS[plan.refine_base]
        if not hasattr(base, "checkpoint") or isinstance(base, SupervisedRow):
            raise ValueError(f"refine_base {plan.refine_base!r} is not a self-supervised row")
        ckpt, folder = base.checkpoint(plan, seed)
        out = plan.run_dir(self.name, seed)
        refiner = out / "refiner.pt"
        fit_info = fit_refiner(ckpt, refiner, RefinerSpec(steps=plan.budget.refiner_steps,
                                                          hidden=plan.budget.refiner_hidden,
                                                          seed=seed),
                               val_samples=0, progress=plan.progress)
        tables = evaluate(plan.manifest, out / "eval", ckpt, settings=eval_settings(plan),
                          root=plan.data_root, refiner=refiner)
        quality = label_quality(plan, folder)
        return {"metrics": overall(tables["checkpoint_refined"]),
                "unrefined": overall(tables["checkpoint"]), "labels": quality,
                "metric_scale": quality["metric_scale"], "base": plan.refine_base,
                "checkpoint": str(ckpt), "refiner": str(refiner), "refiner_fit": fit_info}


@dataclass(frozen=True)
class MeanPoseRow(Row):
    """The training subjects' mean root-relative pose predicted for every test sample."""

    seeded: ClassVar[bool] = False

    def run(self, plan: Plan, seed: int) -> dict[str, Any]:
        tables = evaluate(plan.manifest, plan.run_dir(self.name, seed) / "eval",
                          baselines=("mean-pose",), settings=eval_settings(plan),
                          root=plan.data_root)
        return {"metrics": overall(tables["mean_pose"]), "metric_scale": True, "labels": None}


ROWS: dict[str, Row] = {r.name: r for r in (
    PerFrameRow("per-frame", "per-frame pairs (the paper's; RANSAC + refit when registered)",
                "78.8 (N-MPJPE, no R/t)"),
    LabelsRow("pooled", "pooled pairs", geometry="pooled"),
    LabelsRow("multiview", "all views + bundle adjustment", geometry="multiview"),
    LabelsRow("calibrated", "pairs with known extrinsics (metric)", "76.6 (MPJPE, with R/t)",
              geometry="calibrated"),
    LabelsRow("oracle-2d", "ground-truth 2D, all views", "55.0 (2D GT)", geometry="multiview",
              detector="gt"),
    SupervisedRow("supervised", "ground-truth 3D (fully supervised)", "51.8 (MPJPE)"),
    RefinedRow("refined", "refinement unit on the base row's networks (see above)",
               "60.5 (+ refinement)"),
    MeanPoseRow("mean-pose", "mean training pose (no image)"),
)}
"""Every row of the table by name, in table order. ``paper``: the authors' Human3.6M figure
(ResNet-50, their README's table of released models); '–': no such row in the paper."""


# --- running -------------------------------------------------------------------------------------

def header(plan: Plan) -> str:
    """The text above the table: what was run, how it was selected and scored."""
    b = plan.budget
    m = load_manifest(plan.manifest, root=plan.data_root)
    split = {k: ", ".join(v) for k, v in m.splits.items()}
    start = (f"every network started from the 2D network `{plan.checkpoint_2d}` as `make train`'s "
             "is" if b.init_2d else "from scratch")
    return (
        f"## Ablation on {m.dataset}: budget `{b.name}` ({b.epochs} epochs, lr steps at "
        f"{list(b.milestones)}), seeds {list(plan.seeds)}\n\n"
        f"Every trained row: the same network and schedule (`{Path(plan.pseudo_config).name}` / "
        f"`{Path(plan.supervised_config).name}` with this budget, {start}); `best.pt` chosen on "
        f"the validation split ({split.get('val', '?')}) against labels of the row's own kind "
        f"(pseudo-labels for self-supervised rows: no ground truth); results on the test split "
        f"({split.get('test', '?')}), predictions decoded with the ground-truth root depth, "
        f"PSS clusters shared by all rows. Cells: mean ± std over seeds (n - 1). Label error: "
        f"the pseudo-labels' own N-MPJPE / PA-MPJPE on the training subjects "
        f"({split.get('train', '?')}), mm. The refinement unit refines `{plan.refine_base}`'s "
        f"networks (same seeds); its last column is the paired change. Paper column: the "
        f"authors' Human3.6M figures (ResNet-50, their README's released models), not "
        f"comparable in absolute terms with this synthetic set; '–' = no such row.")


def render(plan: Plan) -> Path:
    """Render the table of ``plan`` from the results present (:mod:`eval.ablation_table`)."""
    return render_table(plan.budget_dir, [ROWS[n] for n in plan.row_names()], len(plan.seeds),
                        header(plan))


@dataclass
class Progress:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def run_ablation(plan: Plan, log: Any = print) -> Progress:
    """Run every (row, seed) of the plan that has no result yet, seed by seed (so that a
    partial run has every row at the first seed), rendering the table after each result. A
    failing (row, seed) is recorded (``seed<k>.failed.txt``) and the others still run."""
    unknown = [r for r in plan.row_names() if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(ROWS)}")
    progress = Progress()
    for seed in plan.seeds:
        for name in plan.row_names():
            row = ROWS[name]
            if not row.seeded and seed != plan.seeds[0]:
                continue
            key = f"{name}/seed{seed}"
            path = plan.result_file(name, seed)
            if path.exists():
                progress.skipped.append(key)
                continue
            log(f"[ablation] {key}: running ({time.strftime('%H:%M:%S')})")
            t0 = time.perf_counter()
            try:
                payload = row.run(plan, seed)
            except Exception:  # noqa: BLE001 - one failed run must not stop the table
                failure = path.with_name(f"seed{seed}.failed.txt")
                failure.parent.mkdir(parents=True, exist_ok=True)
                failure.write_text(traceback.format_exc())
                log(f"[ablation] {key}: FAILED, see {failure}")
                progress.failed.append(key)
                continue
            payload.update({"row": name, "seed": seed, "budget": asdict(plan.budget),
                            "seconds": round(time.perf_counter() - t0, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            write_json_atomic(path, payload)
            progress.done.append(key)
            log(f"[ablation] {key}: N-MPJPE {payload['metrics'].get('n_mpjpe', np.nan):.1f} "
                f"in {payload['seconds']:.0f} s")
            render(plan)
    render(plan)
    return progress

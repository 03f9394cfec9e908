"""Evaluate a 3D checkpoint (or the mean-pose baseline) on a manifest's test split.

The protocol (samples, crops, decoding with the ground-truth root depth, the per-sample metrics
of :data:`eval.metrics.ALIGNMENTS`) is :mod:`train.evaluation`'s, the one the trainer validates
with; samples are :func:`train.samples.load_manifest_samples`'s. This module adds what only the
final evaluation reports:

    - PSS@50 / PSS@100 (:mod:`eval.pss`) with cluster models fitted on the train split's
      root-relative camera-frame GT, cached in the output folder;
    - per action and overall (mean over samples; ``mean_of_actions`` is the unweighted mean
      of the action rows);
    - the mean-pose baseline: the mean root-relative camera-frame training pose predicted for
      every test sample, measured the same way;
    - the refinement unit (``refiner``, :mod:`train.refiner`): the checkpoint's poses refined,
      measured the same way as ``checkpoint_refined`` beside the unrefined ``checkpoint``;
    - the files: tables (Markdown, CSV), per-sample Parquet, ``eval.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import ALIGNMENTS, PCK_THRESHOLD_MM, aggregate
from eval.pss import PSS_KS, PSSModel, load_or_fit, pss_hits
from eval.tables import write_table
from pipeline.store.manifest import load_manifest
from train.checkpoint import CheckpointError, load_checkpoint, load_model, network_settings
from train.lifter import predict_samples, with_detections
from train.evaluation import (PredictFn, evaluate_samples, model_predictor, pose_metric_table,
                              refined)
from train.refiner import load_refiner
from train.samples import DEFAULT_BOX_MARGIN, Samples, load_manifest_samples

COLUMNS = ("mpjpe", "n_mpjpe", "pa_mpjpe", "pss@50", "pss@100", "pck3d", "auc")
"""Column order of the results table (the paper's layout), then ``n``."""


def _cfg_get(cfg: Any, *keys: str, default: Any = None) -> Any:
    """A nested setting of a config given as a dataclass or a plain dict."""
    v = cfg
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        else:
            v = getattr(v, k, None)
        if v is None:
            return default
    return v


def is_lifter(path: str | Path) -> bool:
    """True when the checkpoint holds a keypoint lifter (``student: lifter``)."""
    return load_checkpoint(path)["config"].get("student") == "lifter"


def _lifter_predictions(checkpoint: str | Path, detections: str | Path | None, test: Samples,
                        info: dict[str, Any], refine: Any = None,
                        refiner: str | Path | None = None) -> dict[str, _Prediction]:
    """A keypoint lifter's poses of ``test`` from the 2D a stage-1 run detected on the same
    frames (:func:`train.lifter.with_detections`), and with a refiner the same poses refined
    (``checkpoint_refined``)."""
    if detections is None:
        raise ValueError(f"{checkpoint} is a keypoint lifter: it reads 2D detections, so give "
                         "the stage-1 run folder whose detections it lifts (--detections RUN; "
                         "make eval: EVAL_OPTS='--detections RUN')")
    model, cfg = load_model(str(checkpoint))
    t0 = time.perf_counter()
    samples = with_detections(test, detections)
    poses = predict_samples(model, samples, test.manifest.joint_set)
    info["predict_seconds"] = time.perf_counter() - t0
    info["model"] = {"checkpoint": str(checkpoint), "student": "lifter",
                     "lifter": cfg["lifter"], "detections": str(detections)}
    what = (f"Keypoint lifter `{checkpoint}` on the 2D detections of `{detections}`, "
            "root-relative, in its labels' units")
    out = {"checkpoint": (poses, what, None)}
    if refine is not None:
        info["refiner"] = str(refiner)
        out["checkpoint_refined"] = (refine(poses), f"{what}, refined by `{refiner}`", None)
    return out


def checkpoint_predictor(path: str | Path, batch_size: int) -> tuple[PredictFn, dict[str, Any]]:
    """Load a 3D checkpoint with :func:`train.checkpoint.load_model`; returns the predict
    function ((B, S, S, 3) crops -> (B, J, 3) coordinates) and the settings evaluation needs
    (:func:`train.checkpoint.network_settings`: input_size, depth_range_mm, box_margin)."""
    model, cfg = load_model(str(path))
    try:
        settings = network_settings(cfg, str(path))
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    settings.pop("depth_bins")
    return model_predictor(model, batch_size), settings


# --- metrics over samples --------------------------------------------------------------------------

def mean_pose(samples: Samples) -> np.ndarray:
    """(J, 3) mean root-relative camera-frame pose over the valid joints of ``samples``."""
    w = samples.gt_mask[..., None]
    n = w.sum(0)
    if np.any(n == 0):
        raise ValueError("a joint has no valid training sample; no mean pose")
    return np.where(w, samples.gt_3d, 0.0).sum(0) / n


def pss_models(train: Samples, cache_dir: Path, ks: tuple[int, ...] = PSS_KS, seed: int = 0,
               restarts: int = 5) -> dict[int, PSSModel]:
    """PSS cluster models fitted on the train split's GT (cached as ``pss_k{k}.npz``)."""
    poses = train.gt_3d[train.gt_mask.all(1)]
    models = {}
    for k in ks:
        models[k], _ = load_or_fit(Path(cache_dir) / f"pss_k{k}.npz", poses, k, seed=seed,
                                   restarts=restarts, root=0)
    return models


def per_sample_metrics(pred: np.ndarray, samples: Samples, models: dict[int, PSSModel]
                       ) -> dict[str, np.ndarray]:
    """Every metric per sample: (N,) each, the protocol's ALIGNMENTS metrics
    (:func:`train.evaluation.pose_metric_table`) and ``pss@k`` (1.0 hit, 0.0 miss); NaN for
    samples without a prediction (unreadable frame) or without a complete GT (PSS).

    Args:
        pred: (N, J, 3) root-relative camera-frame predictions, mm (NaN rows: none).
    """
    return {**pose_metric_table(pred, samples), **pss_table(pred, samples, models)}


def pss_table(pred: np.ndarray, samples: Samples, models: dict[int, PSSModel]
              ) -> dict[str, np.ndarray]:
    """``pss@k`` -> (N,) per sample (1.0 hit, 0.0 miss), NaN for samples without a prediction
    or without a complete GT; ``pred`` (N, J, 3) root-relative camera-frame mm."""
    out: dict[str, np.ndarray] = {}
    full = np.isfinite(pred).all(axis=(1, 2)) & samples.gt_mask.all(1)
    for k, model in models.items():
        hits = np.full(len(pred), np.nan)
        if full.any():
            hits[full] = pss_hits(model, pred[full], samples.gt_3d[full])
        out[f"pss@{k}"] = hits
    return out


def results_table(per_sample: dict[str, np.ndarray], samples: Samples) -> pd.DataFrame:
    """Per action, overall and mean-of-actions rows; columns in :data:`COLUMNS` order (other
    metrics, e.g. PSS at another k, after them), then n."""
    table = aggregate(per_sample, samples.action)
    cols = [c for c in COLUMNS if c in table.columns]
    cols += [c for c in table.columns if c not in cols and c != "n"]
    return table[cols + ["n"]]


def table_note(models: dict[int, PSSModel], what: str, failed: int = 0) -> str:
    """The sentence under every results table: what was predicted, against which ground truth,
    with which alignment."""
    align = ", ".join(f"{k}: {v}" for k, v in ALIGNMENTS.items())
    pss = "; ".join(f"PSS@{k}: {m.k} k-means clusters of {m.num_train} unit-norm train GT poses "
                    f"(seed {m.seed}, {m.restarts} restarts)" for k, m in models.items())
    note = (f"{what}. Ground truth: root-relative camera-frame `joints_3d_cam` of the manifest "
            f"(mm). Alignment of the prediction before each metric ({align}); errors in mm, "
            f"PCK3D at {PCK_THRESHOLD_MM:g} mm, AUC over 0-150 mm and PSS are shares in [0, 1]. "
            f"{pss}. Rows: one per action, `overall` = mean over all samples, "
            f"`mean_of_actions` = unweighted mean of the action rows; n = samples.")
    if failed:
        note += f" {failed} samples had no readable frame and are left out."
    return note


def write_result(name: str, pred: np.ndarray, what: str, samples: Samples,
                 models: dict[int, PSSModel], out: Path, title: str,
                 per: dict[str, np.ndarray] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measure (N, J, 3) predictions; write ``out/<name>.md``/``.csv`` and
    ``out/per_sample_<name>.parquet``. ``per``: the per-sample metrics when already measured
    (:func:`per_sample_metrics`). Returns the table and a summary for eval.json."""
    per = per_sample_metrics(pred, samples, models) if per is None else per
    failed = int((~np.isfinite(pred).all(axis=(1, 2))).sum())
    table = results_table(per, samples)
    write_table(table, out / name, title=title, note=table_note(models, what, failed),
                digits_by_column={c: 3 for c in table.columns if not c.endswith("mpjpe")})
    pd.DataFrame({"subject": samples.subject, "action": samples.action,
                  "camera": samples.camera, "frame": samples.frame, **per}
                 ).to_parquet(out / f"per_sample_{name}.parquet")
    return table, {"failed_samples": failed,
                   "overall": {k: float(v) for k, v in table.loc["overall"].items()}}


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    train_split: str = "train"
    frame_step: int = 1
    max_frames: int | None = None
    batch_size: int = 64
    pss_seed: int = 0
    pss_restarts: int = 5
    pss_dir: str | None = None
    """Folder of the cached PSS models (default: the output folder). Share it between runs so
    that their PSS numbers use the same clusters."""


_Prediction = tuple[np.ndarray, str, dict[str, np.ndarray] | None]
"""(poses (N, J, 3), what they are, per-sample metrics when already measured)."""


def _checkpoint_predictions(predictor: PredictFn, model_settings: dict[str, Any],
                            checkpoint: str | Path, test: Samples, models: dict[int, PSSModel],
                            settings: EvalSettings, info: dict[str, Any],
                            refine: Any = None, refiner: str | Path | None = None
                            ) -> dict[str, _Prediction]:
    """The checkpoint's predictions on ``test`` through the protocol (``checkpoint``) and, with
    a refiner, the same poses refined (``checkpoint_refined``); timings and settings go into
    ``info``."""
    t0 = time.perf_counter()
    result = evaluate_samples(predictor, test, model_settings["input_size"],
                              model_settings["depth_range_mm"], chunk=settings.batch_size * 4)
    info["predict_seconds"] = time.perf_counter() - t0
    info["model"] = dict(model_settings, checkpoint=str(checkpoint))
    out = {"checkpoint": (
        result.poses, f"Checkpoint `{checkpoint}`: predictions decoded with the ground-truth "
        "root depth and the intrinsics", {**result.metrics, **pss_table(result.poses, test,
                                                                        models)})}
    if refine is not None:
        better = refined(result, refine, test)
        info["refiner"] = str(refiner)
        out["checkpoint_refined"] = (
            better.poses, f"Checkpoint `{checkpoint}` refined by `{refiner}` (refinement unit "
            "trained on unpaired poses, noise model from the validation split)",
            {**better.metrics, **pss_table(better.poses, test, models)})
    return out


def _check_request(checkpoint: str | Path | None, baselines: tuple[str, ...],
                   refiner: str | Path | None) -> None:
    if checkpoint is None and not baselines:
        raise ValueError("nothing to evaluate: give a checkpoint or a baseline")
    if refiner is not None and checkpoint is None:
        raise ValueError("a refiner refines a checkpoint's predictions: give the checkpoint")
    unknown = set(baselines) - {"mean-pose"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: mean-pose")


def evaluate(manifest_path: str | Path, out: str | Path, checkpoint: str | Path | None = None,
             baselines: tuple[str, ...] = (), settings: EvalSettings = EvalSettings(),
             root: str | None = None, refiner: str | Path | None = None,
             detections: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """Evaluate a checkpoint and/or baselines; writes ``<name>.md``/``.csv`` per result,
    ``per_sample_<name>.parquet``, the PSS models and ``eval.json`` under ``out``. With
    ``refiner`` (a refinement unit's checkpoint, :mod:`train.refiner`) the checkpoint's poses
    are also measured after refinement (``checkpoint_refined``). A keypoint lifter's checkpoint
    reads the 2D that the stage-1 run folder ``detections`` detected on the test frames.

    Returns name -> results table (``checkpoint``, ``checkpoint_refined``, ``mean_pose``).
    """
    _check_request(checkpoint, baselines, refiner)
    refine = load_refiner(refiner) if refiner is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_manifest(manifest_path, root=root)
    lifter = checkpoint is not None and is_lifter(checkpoint)
    predictor, model_settings = (checkpoint_predictor(checkpoint, settings.batch_size)
                                 if checkpoint is not None and not lifter else (None, {}))
    margin = model_settings.get("box_margin", DEFAULT_BOX_MARGIN)
    test = load_manifest_samples(m, settings.split, margin, settings.frame_step,
                                 settings.max_frames, need_2d=False)
    # Every training frame, whatever --frame-step: the PSS models and the mean pose then do
    # not depend on how densely the test split is sampled. A manifest without the train split
    # (e.g. the test-subject videos of `python -m pipeline test-video`) gets no PSS columns.
    train = (load_manifest_samples(m, settings.train_split, margin, need_2d=False)
             if settings.train_split in m.splits else None)
    if train is None and "mean-pose" in baselines:
        raise ValueError(f"{manifest_path}: the mean-pose baseline needs the split "
                         f"{settings.train_split!r}, which the manifest does not have")
    models = {} if train is None else pss_models(
        train, Path(settings.pss_dir) if settings.pss_dir else out, seed=settings.pss_seed,
        restarts=settings.pss_restarts)
    info: dict[str, Any] = {"manifest": str(manifest_path), "split": settings.split,
                            "samples": len(test),
                            "train_samples": 0 if train is None else len(train),
                            "settings": settings.__dict__, "alignments": ALIGNMENTS}
    predictions: dict[str, _Prediction] = {}
    if "mean-pose" in baselines and train is not None:
        pred = np.broadcast_to(mean_pose(train), test.gt_3d.shape).copy()
        predictions["mean_pose"] = (pred, f"Mean-pose baseline: the mean root-relative "
                                    f"camera-frame pose of the {settings.train_split} split "
                                    f"predicted for every sample", None)
    if lifter:
        predictions.update(_lifter_predictions(checkpoint, detections, test, info, refine,
                                               refiner))
    if predictor is not None:
        predictions.update(_checkpoint_predictions(predictor, model_settings, checkpoint, test,
                                                   models, settings, info, refine, refiner))
    results: dict[str, pd.DataFrame] = {}
    for name, (pred, what, per) in predictions.items():
        results[name], info[name] = write_result(name, pred, what, test, models, out,
                                                 f"{name} on {m.dataset} / {settings.split}", per)
    (out / "eval.json").write_text(json.dumps(info, indent=2, default=str))
    return results


def evaluate_2d(manifest_path: str | Path, out: str | Path, checkpoint: str | Path,
                split: str = "test", frame_step: int = 1, max_frames: int | None = None,
                pck_threshold_px: float = 5.0, batch_size: int = 64, root: str | None = None
                ) -> pd.DataFrame:
    """The 2D network (stage 1's detector) on a split's 2D ground truth, through the one
    protocol (:func:`train.evaluation.evaluate_samples`, 2D metrics): mean pixel error and
    PCK at ``pck_threshold_px`` in original-image pixels, per action and overall. Writes
    ``checkpoint_2d.md``/``.csv`` and ``eval_2d.json`` under ``out``; returns the table."""
    model, cfg = load_model(str(checkpoint))
    size = _cfg_get(cfg, "model", "input_size")
    margin = float(_cfg_get(cfg, "data", "box_margin", default=DEFAULT_BOX_MARGIN))
    m = load_manifest(manifest_path, root=root)
    samples = load_manifest_samples(m, split, margin, frame_step, max_frames, need_2d=True)
    result = evaluate_samples(model_predictor(model, batch_size), samples, int(size), 1.0,
                              with_3d=False, pck_threshold_px=pck_threshold_px,
                              chunk=batch_size * 4)
    per = pd.DataFrame({"action": samples.action, "px_error": result.metrics["px_error"],
                        "pck_px": result.metrics["pck_px"]})
    table = per.groupby("action").mean().assign(n=per.groupby("action").size())
    table.loc["overall"] = [per["px_error"].mean(), per["pck_px"].mean(), len(per)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "checkpoint_2d", f"2D network `{checkpoint}` on {m.dataset} / "
                f"{split}: mean error (px, original images) and PCK@{pck_threshold_px:g} px")
    (out / "eval_2d.json").write_text(json.dumps({
        "checkpoint": str(checkpoint), "split": split, "samples": len(samples),
        "px_error": float(per["px_error"].mean()), "pck_px": float(per["pck_px"].mean()),
        "pck_threshold_px": pck_threshold_px}, indent=2))
    return table

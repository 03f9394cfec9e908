"""3D pose metrics: one pure function per quantity, one table saying which alignment each uses.

Conventions:
    pred, gt: (N, J, 3) **root-relative** poses in the same frame and unit (mm for the paper's
        numbers). Nothing here subtracts the root: do it first (:func:`root_relative`), so that
        a pose whose root joint is masked is still handled the way the caller chose.
    mask: (N, J) bool or None; True = the joint counts. A masked joint is excluded everywhere:
        from the error means, from the PCK denominators and from the alignment fits.

Alignments (applied to ``pred`` before the per-joint Euclidean distance):
    "none"        the raw root-relative error (MPJPE).
    "scale"       pred * s with the least-squares scale s = <pred, gt> / <pred, pred> over the
                  valid joints, i.e. the s minimising sum_j ||s * pred_j - gt_j||^2 (N-MPJPE,
                  Rhodin et al. 2018). No rotation, no translation.
    "procrustes"  similarity transform s * R @ pred + t (rotation with the reflection fix,
                  scale, translation) minimising the same squared error (PA-MPJPE, Umeyama).

``ALIGNMENTS`` is the single source of truth for which alignment a metric uses; reports and
tables read it instead of restating it.

A pose with no valid joint gets NaN for every per-pose metric (no warning is raised); the
aggregation helpers skip NaNs.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

Alignment = Literal["none", "scale", "procrustes"]

ALIGNMENTS: dict[str, Alignment] = {
    "mpjpe": "none",
    "n_mpjpe": "scale",
    "pa_mpjpe": "procrustes",
    "pck3d": "none",
    "auc": "none",
}
"""Metric name -> alignment applied to the prediction before the error is measured."""

ERROR_METRICS: tuple[str, ...] = ("mpjpe", "n_mpjpe", "pa_mpjpe")
"""Metrics in mm (lower is better); the others are shares in [0, 1] (higher is better)."""

PCK_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM = np.linspace(0.0, 150.0, 31)
"""0, 5, ..., 150 mm: the thresholds of MPI-INF-3DHP's AUC (Mehta et al. 2017)."""

_EPS = 1e-12


# --- input checks ------------------------------------------------------------------------------

def _check(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"pred must be (N, J, 3), got {pred.shape}")
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} differs from pred shape {pred.shape}")
    if mask is None:
        mask = np.ones(pred.shape[:2], dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (N, J) = {pred.shape[:2]}, got {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"mask must be boolean, got {mask.dtype}")
    # A masked joint may hold NaN (an undetected joint): zero it so it cannot leak into sums.
    pred = np.where(mask[..., None], pred, 0.0)
    gt = np.where(mask[..., None], gt, 0.0)
    return pred, gt, mask


def _alignment(alignment: str) -> Alignment:
    if alignment not in ("none", "scale", "procrustes"):
        raise ValueError(f"unknown alignment {alignment!r}; known: none, scale, procrustes")
    return alignment  # type: ignore[return-value]


def root_relative(poses: np.ndarray, root: int = 0) -> np.ndarray:
    """(..., J, 3) poses -> the same poses minus their joint ``root`` (H36M17's pelvis is 0)."""
    poses = np.asarray(poses)
    return poses - poses[..., root:root + 1, :]


# --- alignments --------------------------------------------------------------------------------

def scale_factor(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N,) least-squares scales s = <pred, gt> / <pred, pred> over the valid joints.

    s minimises sum_j mask_j * ||s * pred_j - gt_j||^2. A pose whose valid joints are all zero
    gets s = 1.
    """
    pred, gt, mask = _check(pred, gt, mask)
    num = (pred * gt).sum(axis=(1, 2))
    den = (pred * pred).sum(axis=(1, 2))
    return np.where(den > _EPS, num / np.maximum(den, _EPS), 1.0)


def procrustes_transform(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched similarity transform (Umeyama) taking ``pred`` onto ``gt`` over the valid joints.

    Returns:
        s (N,), R (N, 3, 3) proper rotations (det +1: a reflection is never used), t (N, 3),
        such that ``s[:, None, None] * pred @ R.transpose(0, 2, 1) + t[:, None]`` is the
        least-squares fit. Poses with no valid joint get the identity.
    """
    pred, gt, mask = _check(pred, gt, mask)
    w = mask.astype(np.float64)[..., None]                      # (N, J, 1)
    n = np.maximum(w.sum(axis=1), 1.0)                          # (N, 1)
    mu_p = (pred * w).sum(axis=1) / n                           # (N, 3)
    mu_g = (gt * w).sum(axis=1) / n
    X = (pred - mu_p[:, None]) * w                              # centred, masked joints zero
    Y = (gt - mu_g[:, None]) * w
    H = np.swapaxes(X, 1, 2) @ Y                                # (N, 3, 3) = sum_j x_j y_j^T
    U, S, Vt = np.linalg.svd(H)
    # Reflection fix: flip the axis of the smallest singular value when det(V U^T) < 0.
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))
    d = np.where(d == 0, 1.0, d)
    D = np.ones_like(S)
    D[:, 2] = d
    R = np.swapaxes(Vt, 1, 2) @ (D[:, :, None] * np.swapaxes(U, 1, 2))   # V D U^T
    var_p = (X * X).sum(axis=(1, 2))
    s = np.where(var_p > _EPS, (S * D).sum(axis=1) / np.maximum(var_p, _EPS), 1.0)
    t = mu_g - s[:, None] * (mu_p[:, None] @ np.swapaxes(R, 1, 2))[:, 0]
    return s, R, t


def align(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
          alignment: str = "none") -> np.ndarray:
    """(N, J, 3) ``pred`` after the ``alignment`` onto ``gt`` (fitted on the valid joints only;
    the transform is then applied to every joint, masked ones included)."""
    alignment = _alignment(alignment)
    raw = np.asarray(pred, dtype=np.float64)
    if alignment == "none":
        return raw.copy()
    if alignment == "scale":
        return raw * scale_factor(pred, gt, mask)[:, None, None]
    s, R, t = procrustes_transform(pred, gt, mask)
    return s[:, None, None] * (raw @ np.swapaxes(R, 1, 2)) + t[:, None]


# --- per-joint and per-pose metrics ------------------------------------------------------------

def joint_errors(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                 alignment: str = "none") -> np.ndarray:
    """(N, J) Euclidean error of every joint after ``alignment``; NaN where the mask is False."""
    aligned = align(pred, gt, mask, alignment)
    _, gt64, mask = _check(pred, gt, mask)
    err = np.linalg.norm(np.where(mask[..., None], aligned, 0.0) - gt64, axis=-1)
    return np.where(mask, err, np.nan)


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, J) values, (N, J) mask -> (N,) mean over the valid joints, NaN where there is none."""
    n = mask.sum(axis=1)
    total = np.where(mask, x, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _mask_or_all(pred: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return np.ones(np.shape(pred)[:2], dtype=bool) if mask is None else np.asarray(mask)


def mpjpe(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
          alignment: str = "none") -> np.ndarray:
    """(N,) mean per-joint position error of each root-relative pose after ``alignment``
    ("none" = MPJPE, "scale" = N-MPJPE, "procrustes" = PA-MPJPE), over the valid joints."""
    err = joint_errors(pred, gt, mask, alignment)
    return _masked_mean(np.nan_to_num(err), _mask_or_all(pred, mask))


def pck3d(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
          threshold: float = PCK_THRESHOLD_MM, alignment: str = ALIGNMENTS["pck3d"]) -> np.ndarray:
    """(N,) share of each pose's valid joints whose error is at most ``threshold`` (mm)."""
    err = joint_errors(pred, gt, mask, alignment)
    m = _mask_or_all(pred, mask)
    return _masked_mean((np.nan_to_num(err, nan=np.inf) <= threshold).astype(np.float64), m)


def auc(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
        thresholds: np.ndarray = AUC_THRESHOLDS_MM, alignment: str = ALIGNMENTS["auc"]
        ) -> np.ndarray:
    """(N,) area under the PCK curve: the mean of PCK over ``thresholds`` (default 0..150 mm in
    5 mm steps), a share in [0, 1]."""
    err = joint_errors(pred, gt, mask, alignment)                       # (N, J)
    m = _mask_or_all(pred, mask)
    th = np.asarray(thresholds, dtype=np.float64)
    hit = np.nan_to_num(err, nan=np.inf)[:, :, None] <= th              # (N, J, T)
    n = m.sum(axis=1)
    share = np.where(m[:, :, None], hit, False).sum(axis=1) / np.maximum(n, 1)[:, None]  # (N, T)
    return np.where(n > 0, share.mean(axis=1), np.nan)


def pose_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
    """Every metric of ``ALIGNMENTS`` for each pose: name -> (N,), with its table alignment."""
    out: dict[str, np.ndarray] = {}
    for name, alignment in ALIGNMENTS.items():
        if name in ERROR_METRICS:
            out[name] = mpjpe(pred, gt, mask, alignment)
        elif name == "pck3d":
            out[name] = pck3d(pred, gt, mask, alignment=alignment)
        elif name == "auc":
            out[name] = auc(pred, gt, mask, alignment=alignment)
        else:  # a new table entry without a function is a programming error
            raise KeyError(f"metric {name!r} in ALIGNMENTS has no implementation")
    return out


# --- aggregation --------------------------------------------------------------------------------

OVERALL = "overall"
"""Row label of the mean over all samples."""
MEAN_OF_ACTIONS = "mean_of_actions"
"""Row label of the unweighted mean of the per-action means (the H36M papers' 'Avg')."""


def aggregate(per_pose: dict[str, np.ndarray], groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per-group and overall means of per-pose metrics.

    Args:
        per_pose: metric name -> (N,) values (NaN = not measurable, skipped).
        groups: (N,) labels (e.g. action names) or None for the overall row only.
    Returns:
        A DataFrame indexed by group (sorted), then ``overall`` (mean over all samples) and,
        with more than one group, ``mean_of_actions`` (unweighted mean of the group rows);
        one column per metric plus ``n`` (samples of the row with at least one finite metric;
        for ``mean_of_actions`` the total).
    """
    if not per_pose:
        raise ValueError("aggregate needs at least one metric")
    n = len(next(iter(per_pose.values())))
    for k, v in per_pose.items():
        if np.shape(v) != (n,):
            raise ValueError(f"metric {k!r} has shape {np.shape(v)}, expected ({n},)")
    df = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in per_pose.items()})
    counted = df.notna().any(axis=1)
    overall = df.mean(axis=0, skipna=True).to_frame(OVERALL).T
    overall["n"] = int(counted.sum())
    if groups is None:
        return overall
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n},)")
    by = df.groupby(groups, sort=True)
    table = by.mean()
    table["n"] = counted.groupby(groups, sort=True).sum()
    rows = [table, overall]
    if len(table) > 1:
        moa = table.drop(columns="n").mean(axis=0).to_frame(MEAN_OF_ACTIONS).T
        moa["n"] = int(counted.sum())
        rows.append(moa)
    out = pd.concat(rows)
    out["n"] = out["n"].astype(np.int64)
    out.index.name = "group"
    return out

"""Cross-view consistency of a finished stage-1 run: the label-free sign of bad 2D detections.

Detections that are wrong in some views do not agree with one 3D point: after the geometry fit
the confident joints reproject far from where the detector put them, and few of them pass
``reproj_threshold_px`` to become labels. A run is flagged *inconsistent* when

* the median reprojection error of its confident joints (``joints_2d_conf >= conf_threshold``,
  over every shard row) exceeds ``MEDIAN_REPROJ_FACTOR x reproj_threshold_px``, or
* the share of its confident joints that became labels (``valid``) is below ``MIN_VALID_SHARE``,
* or no confident joint was labelled at all.

``pipeline.job.plan.run_job`` records the result in ``summary.json`` (``consistency``,
``inconsistent``) and the command line warns and exits with status 3; ``tools/detector_check.py``
reports the same figures per camera.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.store import shards as S
from pipeline.store.run_folder import RunFolder

MEDIAN_REPROJ_FACTOR = 1.0
"""Flag when the confident joints' median reprojection error exceeds this x reproj_threshold_px
(for consistent detections it is a small fraction of the threshold: noise level)."""
MIN_VALID_SHARE = 0.5
"""Flag when fewer than this share of the confident joints became labels."""


@dataclass
class Consistency:
    """Cross-view consistency of a run's labels (all cameras, and ``per_camera``);
    ``label_rows`` counts the shard rows it read (0: nothing to judge the detections by)."""

    label_rows: int = 0
    confident_joints: int = 0
    median_reproj_px: float = float("nan")
    valid_share: float = float("nan")
    per_camera: dict[str, dict[str, float]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    inconsistent: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figures(err: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    return {"confident_joints": int(err.size),
            "median_reproj_px": float(np.median(err)) if err.size else float("nan"),
            "valid_share": float(valid.mean()) if valid.size else float("nan")}


def run_consistency(run: RunFolder, conf_threshold: float, reproj_threshold_px: float
                    ) -> Consistency:
    """The consistency figures and flag of the finished shards of ``run``."""
    limit = MEDIAN_REPROJ_FACTOR * reproj_threshold_px
    out = Consistency(thresholds={"median_reproj_px_max": limit,
                                  "valid_share_min": MIN_VALID_SHARE,
                                  "conf_threshold": conf_threshold})
    try:
        t = S.read_shards(run.path, columns=["camera", "joints_2d_conf", "valid",
                                             "reproj_error_px"])
    except FileNotFoundError:
        t = None
    if t is None or t.num_rows == 0:
        out.inconsistent, out.reasons = True, [f"{run.shards_dir}: no label rows"]
        return out
    out.label_rows = t.num_rows
    cams = np.asarray(t.column("camera").to_pylist(), dtype=object)
    conf = S.column_array(t, "joints_2d_conf")
    confident = conf >= conf_threshold
    err = S.column_array(t, "reproj_error_px").astype(np.float64)
    valid = S.column_array(t, "valid").astype(bool)
    for c in sorted(set(cams)):
        rows = cams == c
        out.per_camera[str(c)] = _figures(err[rows][confident[rows]], valid[rows][confident[rows]])
    whole = _figures(err[confident], valid[confident])
    out.confident_joints = whole["confident_joints"]
    out.median_reproj_px, out.valid_share = whole["median_reproj_px"], whole["valid_share"]
    if out.confident_joints == 0:
        out.reasons.append(f"no joint reached conf_threshold {conf_threshold}")
    else:
        if out.median_reproj_px > limit:
            out.reasons.append(f"median reprojection error of the confident joints "
                               f"{out.median_reproj_px:.1f} px > {limit:.1f} px")
        if out.valid_share < MIN_VALID_SHARE:
            out.reasons.append(f"only {out.valid_share:.0%} of the confident joints became "
                               f"labels (< {MIN_VALID_SHARE:.0%})")
    out.inconsistent = bool(out.reasons)
    return out

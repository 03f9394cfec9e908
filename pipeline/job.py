"""Stage 1 as a Dask job: detect 2D -> fit camera geometry -> triangulate -> Parquet shards.

Three waves of tasks, each a plain function of (config, keys) that tests call directly:

1. ``detect_chunk``: one task per (sequence, camera, chunk of frames): read frames, detect 2D
   (detector loaded once per worker), cut and save the person crops, write the detections as a
   Parquet file. Never one task per frame: a Dask task costs milliseconds.
2. ``fit_subject``: one task per subject (cameras are static per subject): pool every
   sequence's confident joints and fit the camera geometry of the chosen mode.
3. ``label_sequence``: one task per sequence: triangulate every chosen camera pair (or all views),
   validate, normalise scale, write one shard per camera pair.

Every output is written to a temporary name and renamed; a rerun skips finished detection files
and shards (their stats file exists), so a killed job resumes. Frames that fail (unreadable, no
person, non-finite joints) are kept in ``failures.parquet`` with their reason; pairs whose
geometry is degenerate are kept in ``geometry.parquet`` with ``ok = False`` and get no labels.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import geometry as G
from pipeline import shards as S
from pipeline.cameras import (angle_between_deg, box_from_points, box_to_square, crop_affine,
                              pixels_to_normalized, relative_pose, rotation_error_deg)
from pipeline.detect import FrameKey, camera_ground_truth, load_ground_truth, make_detector
from pipeline.frames import read_frames
from pipeline.manifest import Manifest, ManifestError, Sequence, load_manifest

GEOMETRY_MODES = ("per-frame", "pooled", "multiview", "calibrated")
MIN_CONFIDENT_JOINTS = 2
"""A frame with fewer joints at ``conf_threshold`` is recorded as failed (a root-relative label
needs two joints), so that a frame without labels always has a recorded reason."""
DETECTORS = ("net", "gt", "file", "mediapipe")


@dataclass(frozen=True)
class JobConfig:
    """Everything that decides a stage-1 run's outputs (saved as ``config.json``).

    Attributes:
        manifest: dataset manifest (data_manifests/*.yaml).
        out: run folder (shards/, detections/, crops/, geometry.parquet, failures.parquet ...).
        geometry: per-frame (the paper's setting), pooled (default: one essential matrix per
            subject and camera pair from many frames), multiview (all cameras registered and
            bundle-adjusted), calibrated (the manifest's extrinsics: metric labels).
        detector: net (the project's 2D network), gt (oracle + noise), file, mediapipe.
        noise_px, outlier_rate: oracle detector's 2D noise and share of outlier joints.
        pairs: nearest (each camera with its closest partner by estimated rotation) or all.
        conf_threshold: joints below it in either view are neither used for geometry nor labelled.
        ransac_threshold_px: RANSAC inlier threshold in pixels (converted with the focal length).
        reproj_threshold_px: joints reprojecting worse than this (either view) are not labels.
        crop_size, crop_margin: saved person crops (square box grown by the margin).
        chunk_frames: frames per detection task.
        subjects: restrict to these subjects (None: every sequence of the manifest).
        max_frames: use only the first frames of each sequence (quick runs, tests).
        root: overrides the manifest's data root.
        write_crops: save the person crops (the trainer needs them; sweeps do not).
    """

    manifest: str
    out: str
    geometry: str = "pooled"
    detector: str = "net"
    checkpoint_2d: str = "outputs/runs/pose2d/best.pt"
    detections: str | None = None
    noise_px: float = 0.0
    outlier_rate: float = 0.0
    seed: int = 0
    pairs: str = "nearest"
    conf_threshold: float = 0.3
    ransac_threshold_px: float = 1.0
    reproj_threshold_px: float = 10.0
    crop_size: int = 256
    crop_margin: float = 0.15
    chunk_frames: int = 250
    subjects: tuple[str, ...] | None = None
    max_frames: int | None = None
    root: str | None = None
    write_crops: bool = True

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRY_MODES:
            raise ValueError(f"geometry {self.geometry!r}: choose one of {GEOMETRY_MODES}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector {self.detector!r}: choose one of {DETECTORS}")
        if self.pairs not in ("nearest", "all"):
            raise ValueError(f"pairs {self.pairs!r}: choose nearest or all")
        if not 0 <= self.outlier_rate < 1 or self.noise_px < 0:
            raise ValueError("noise_px must be >= 0 and outlier_rate in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subjects"] = list(self.subjects) if self.subjects else None
        return d

    @property
    def out_path(self) -> Path:
        return Path(self.out)


# --- per-worker caches ---------------------------------------------------------------------------

_MANIFESTS: dict[tuple[str, str | None], Manifest] = {}
_DETECTORS: dict[tuple, Any] = {}


def _manifest(cfg: JobConfig) -> Manifest:
    key = (str(Path(cfg.manifest).resolve()), cfg.root)
    if key not in _MANIFESTS:
        _MANIFESTS[key] = load_manifest(cfg.manifest, root=cfg.root)
    return _MANIFESTS[key]


def _detector(cfg: JobConfig):
    """The detector, built once per worker process and reused by every chunk."""
    key = (cfg.detector, cfg.manifest, cfg.root, cfg.noise_px, cfg.outlier_rate, cfg.seed,
           cfg.checkpoint_2d, cfg.detections)
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(cfg.detector, _manifest(cfg), noise_px=cfg.noise_px,
                                        outlier_rate=cfg.outlier_rate, seed=cfg.seed,
                                        checkpoint=cfg.checkpoint_2d, detections=cfg.detections)
    return _DETECTORS[key]


def _sequence(m: Manifest, key: str) -> Sequence:
    for s in m.sequences:
        if s.key == key:
            return s
    raise KeyError(f"{m.path}: no sequence {key}")


def selected_sequences(cfg: JobConfig) -> list[Sequence]:
    m = _manifest(cfg)
    return m.sequences_in(subjects=cfg.subjects) if cfg.subjects else list(m.sequences)


def frame_indices(cfg: JobConfig, seq: Sequence) -> np.ndarray:
    idx = _manifest(cfg).frame_indices(seq)
    return idx[: cfg.max_frames] if cfg.max_frames else idx


# --- wave 1: detection ---------------------------------------------------------------------------

def detection_path(cfg: JobConfig, seq: Sequence, camera: str, start: int) -> Path:
    # Plain folder names (not hive style): the files hold subject and action as columns.
    return (cfg.out_path / "detections" / seq.subject / seq.action
            / f"{seq.subject}__{seq.action}__{seq.subaction}__{camera}__{start:06d}.parquet")


def crop_path(seq: Sequence, camera: str, frame: int) -> str:
    """Crop location relative to the run folder (the shard's ``image_path``)."""
    return f"crops/{seq.subject}/{seq.action}_{seq.subaction}/{camera}/{frame:06d}.jpg"


def dataset_boxes(m: Manifest, seq: Sequence, camera: str) -> np.ndarray | None:
    """(F, 4) tight person boxes from the dataset's ground-truth file, where it has them."""
    return camera_ground_truth(m, seq, camera, "bbox")


def _square(box: np.ndarray, margin: float) -> np.ndarray:
    c, side = box_to_square(box, margin)
    return np.concatenate([c - side[..., None] / 2, c + side[..., None] / 2], axis=-1)


def detect_chunk(cfg: JobConfig, seq_key: str, camera: str, frames: list[int]) -> dict[str, Any]:
    """Detect one chunk of frames of one camera; write crops and the detection file.

    Returns a small summary (rows, failed, seconds by step). Skips work already on disk.
    """
    m = _manifest(cfg)
    seq = _sequence(m, seq_key)
    path = detection_path(cfg, seq, camera, frames[0])
    if path.exists():
        status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
        return {"rows": len(status), "failed": sum(bool(s) for s in status), "skipped": True}
    t0 = time.perf_counter()
    images, status = [], []
    cam = m.camera(camera)
    # A frame of another size than the manifest's would not match the camera's intrinsics.
    for fr in read_frames(m, seq, camera, frames, expected_size=(cam.width, cam.height)):
        images.append(fr.image)
        status.append(fr.error or "")
    t_read = time.perf_counter() - t0

    full = np.array([[0, 0, cam.width - 1, cam.height - 1]], np.float64)
    gt_boxes = dataset_boxes(m, seq, camera)
    if gt_boxes is not None and len(gt_boxes) > max(frames):
        boxes = _square(gt_boxes[np.asarray(frames)].astype(np.float64), cfg.crop_margin)
    else:
        boxes = np.repeat(_square(full, 0.0), len(frames), axis=0)

    t0 = time.perf_counter()
    keys = [FrameKey(m.dataset, seq.subject, seq.action, seq.subaction, camera, int(f))
            for f in frames]
    joints, conf = _detector(cfg).detect(images, boxes, keys)
    joints = np.asarray(joints, np.float32)
    conf = np.asarray(conf, np.float32)
    t_detect = time.perf_counter() - t0

    t0 = time.perf_counter()
    paths = []
    for i, f in enumerate(frames):
        bad = ~np.isfinite(joints[i]).all(-1)
        # Non-finite joints (or confidences) are not labels: zero their confidence.
        conf[i, bad | ~np.isfinite(conf[i])] = 0.0
        n_confident = int((conf[i] >= cfg.conf_threshold).sum())
        if not status[i]:
            if bad.all() or (conf[i] <= 0).all():
                status[i] = f"no person detected in frame {f}"
            elif n_confident < MIN_CONFIDENT_JOINTS:
                status[i] = (f"too few confident joints in frame {f}: {n_confident} at "
                             f"confidence >= {cfg.conf_threshold:g}, need {MIN_CONFIDENT_JOINTS}")
        if status[i]:
            joints[i] = np.nan
            conf[i] = 0.0
        elif gt_boxes is None:
            # No dataset box: crop around what the detector found.
            boxes[i] = _square(box_from_points(joints[i][conf[i] > 0][None])[0], cfg.crop_margin)
        rel = crop_path(seq, camera, int(f))
        paths.append(rel)
        if not status[i] and cfg.write_crops:
            _write_crop(cfg.out_path / rel, images[i], boxes[i], cfg.crop_size)
    t_crops = time.perf_counter() - t0

    n = len(frames)
    table = S.to_table({
        "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
        "subaction": seq.subaction, "camera": camera, "frame": np.asarray(frames, np.int32),
        "image_path": paths, "bbox": boxes.astype(np.float32), "joints_2d": joints,
        "joints_2d_conf": conf, "status": status}, S.DETECTION_SCHEMA)
    S.write_table_atomic(table, path)
    return {"rows": n, "failed": sum(bool(s) for s in status), "skipped": False,
            "t_read": t_read, "t_detect": t_detect, "t_crops": t_crops}


def _write_crop(path: Path, image: np.ndarray, box: np.ndarray, size: int) -> None:
    A = crop_affine((box[:2] + box[2:]) / 2, box[2] - box[0], size)
    crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"could not encode crop {path}")
    S.atomic_write_bytes(path, buf.tobytes())


# --- loading detections --------------------------------------------------------------------------

@dataclass
class SequenceDetections:
    """One sequence's detections, aligned on a common frame axis across cameras.

    Attributes:
        frames: (F,) source frame indices (union over cameras).
        joints: camera -> (F, J, 2) pixels (NaN where missing).
        conf: camera -> (F, J) (0 where missing or failed).
        boxes: camera -> (F, 4) square crop boxes.
        paths: camera -> (F,) crop paths relative to the run folder.
    """

    frames: np.ndarray
    joints: dict[str, np.ndarray] = field(default_factory=dict)
    conf: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, np.ndarray] = field(default_factory=dict)


def load_sequence_detections(cfg: JobConfig, seq: Sequence) -> SequenceDetections:
    folder = cfg.out_path / "detections" / seq.subject / seq.action
    prefix = f"{seq.subject}__{seq.action}__{seq.subaction}__"
    per_cam = {}
    for cam in seq.cameras:
        files = sorted(folder.glob(f"{prefix}{cam}__*.parquet"))
        if not files:
            raise FileNotFoundError(f"no detections for sequence {seq.key} camera {cam} in {folder}")
        per_cam[cam] = pa.concat_tables([pq.read_table(f) for f in files])
    frames = np.unique(np.concatenate([t.column("frame").to_numpy() for t in per_cam.values()]))
    out = SequenceDetections(frames=frames)
    J = _manifest(cfg).joint_set.num_joints
    for cam, t in per_cam.items():
        pos = np.searchsorted(frames, t.column("frame").to_numpy())
        F = len(frames)
        out.joints[cam] = np.full((F, J, 2), np.nan, np.float64)
        out.conf[cam] = np.zeros((F, J), np.float64)
        out.boxes[cam] = np.full((F, 4), np.nan, np.float64)
        out.paths[cam] = np.full(F, "", dtype=object)
        out.joints[cam][pos] = S.column_array(t, "joints_2d")
        out.conf[cam][pos] = S.column_array(t, "joints_2d_conf")
        out.boxes[cam][pos] = S.column_array(t, "bbox")
        out.paths[cam][pos] = np.array(t.column("image_path").to_pylist(), dtype=object)
    return out


# --- wave 2: camera geometry per subject ---------------------------------------------------------

def _normalized(m: Manifest, det: SequenceDetections, cam: str) -> np.ndarray:
    c = m.camera(cam)
    return pixels_to_normalized(det.joints[cam], c.K, c.dist)


def _usable(cfg: JobConfig, det: SequenceDetections, cam: str) -> np.ndarray:
    return (det.conf[cam] >= cfg.conf_threshold) & np.isfinite(det.joints[cam]).all(-1)


def _gt_relative(m: Manifest, subject: str, a: str, b: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not m.has_extrinsics(subject, (a, b)):
        return None
    ca, cb = m.camera(a, subject), m.camera(b, subject)
    return relative_pose(ca.R, ca.t, cb.R, cb.t)


def fit_subject(cfg: JobConfig, subject: str, after: Any = None) -> dict[str, Any]:
    """Fit the camera geometry of one subject from all its sequences' detections.

    Returns ``{"pairs": [PairGeometry rows], "chosen": [(a, b), ...], "cameras": {cam: (R, t)}}``
    (cameras only in multiview mode). Pair choice: with ``pairs=nearest`` each camera is paired
    with the partner of smallest relative rotation (from the extrinsics in calibrated mode, else
    from the pooled fit of every pair), so the pair modes label the same pairs. With more than
    two cameras, the pooled pairs are checked against each other: a decomposition of E that
    leaves a camera loop open is replaced by the one that closes it. ``after`` (ignored) carries
    the subject's detection results, so that Dask runs the fit once they are on disk.
    """
    m = _manifest(cfg)
    seqs = [s for s in selected_sequences(cfg) if s.subject == subject]
    dets = [load_sequence_detections(cfg, s) for s in seqs]
    cams = list(seqs[0].cameras)
    focal = {c: float(m.camera(c).K[0, 0]) for c in cams}
    x = {c: np.concatenate([_normalized(m, d, c) for d in dets]) for c in cams}
    mask = {c: np.concatenate([_usable(cfg, d, c) for d in dets]) for c in cams}
    fits = []
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            if cfg.geometry == "calibrated":
                gt = _gt_relative(m, subject, a, b)
                if gt is None:
                    raise ValueError(f"{m.path}: GEOMETRY=calibrated needs extrinsics of subject "
                                     f"{subject} cameras {a} and {b}")
                R, t = gt
                fits.append(G.PairGeometry(cam_a=a, cam_b=b, R=R, t=t / np.linalg.norm(t),
                                           E=G.essential_from_pose(R, t / np.linalg.norm(t)),
                                           n_points=0, n_inliers=0, inlier_ratio=1.0, ok=True,
                                           method="extrinsics"))
            else:
                fits.append(G.fit_pair_pooled(x[a], x[b], mask[a] & mask[b],
                                              cfg.ransac_threshold_px, (focal[a] + focal[b]) / 2,
                                              seed=cfg.seed, cam_a=a, cam_b=b))
    if cfg.geometry != "calibrated" and len(cams) > 2:
        # A wrong decomposition of one E shows as a camera loop that does not close.
        fits = G.resolve_loops(fits, x, mask)
        fits = flag_loop_outliers(fits, LOOP_TOL_DEG)
    rows = []
    for g in fits:
        gt = _gt_relative(m, subject, g.cam_a, g.cam_b)
        row = {"subject": subject, **g.to_row()}
        row["rot_deg"] = float(np.degrees(np.arccos(np.clip((np.trace(g.R) - 1) / 2, -1, 1))))
        row["rot_err_deg"] = float(rotation_error_deg(g.R, gt[0])) if gt and g.ok else np.nan
        # Direction of the estimated unit t against the ground-truth relative translation.
        row["t_err_deg"] = float(angle_between_deg(g.t, gt[1])) if gt and g.ok else np.nan
        rows.append(row)
    chosen = _choose_pairs(cfg, cams, {(g.cam_a, g.cam_b): g for g in fits})
    result: dict[str, Any] = {"subject": subject, "pairs": rows, "chosen": chosen, "cameras": {}}
    if cfg.geometry == "multiview":
        from pipeline import multiview as MV

        reg = MV.register_cameras_detailed(x, mask, cfg.ransac_threshold_px, focal,
                                           seed=cfg.seed, pairs=fits)
        cameras, _, ba = MV.bundle_adjust(x, reg.cameras, mask, focal, reference=cams[0],
                                          seed=cfg.seed)
        result["cameras"] = {c: (np.asarray(R), np.asarray(t)) for c, (R, t) in cameras.items()}
        result["multiview"] = {c: {"rot_err_deg": _cam_rot_err(m, subject, cams[0], c, R)}
                               for c, (R, t) in result["cameras"].items()}
        result["bundle_adjustment"] = {k: v for k, v in ba.items()
                                       if isinstance(v, (int, float, str, bool))}
        for c in cams:
            if c not in cameras:
                rows.append({"subject": subject, "cam_a": cams[0], "cam_b": c, "ok": False,
                             "reason": reg.reasons.get(c, "not registered")})
    return result


LOOP_TOL_DEG = 10.0


def flag_loop_outliers(fits: list, tol_deg: float = LOOP_TOL_DEG) -> list:
    """Mark pairs not ok, worst first, while some pair is contradicted by all its loops.

    For pair (a, b) and each third camera c with usable pairs (a, c) and (c, b), the composed
    rotation R_cb R_ac should equal R_ab. The pair whose best two-hop path disagrees most (by
    more than ``tol_deg``, with at least two paths) is marked not ok; the check repeats on the
    remaining pairs. This catches a bad E (not only a bad choice among its four decompositions,
    which ``resolve_loops`` handles); a good pair beside one bad pair keeps a consistent path.
    """
    out = list(fits)
    while True:
        rot = {}
        for g in out:
            if g.ok:
                rot[(g.cam_a, g.cam_b)] = g.R
                rot[(g.cam_b, g.cam_a)] = g.R.T
        cams = sorted({c for k in rot for c in k})
        worst, worst_err = None, tol_deg
        for n, g in enumerate(out):
            errs = [float(rotation_error_deg(rot[(c, g.cam_b)] @ rot[(g.cam_a, c)], g.R))
                    for c in cams if c not in (g.cam_a, g.cam_b)
                    and (g.cam_a, c) in rot and (c, g.cam_b) in rot]
            if g.ok and len(errs) >= 2 and min(errs) > worst_err:
                worst, worst_err = n, min(errs)
        if worst is None:
            return out
        out[worst] = dataclasses.replace(out[worst], ok=False, reason=(
            f"camera loops do not close: every path through a third camera disagrees by more "
            f"than {tol_deg:g} deg (best {worst_err:.1f} deg)"))


def _cam_rot_err(m: Manifest, subject: str, ref: str, cam: str, R: np.ndarray) -> float:
    gt = _gt_relative(m, subject, ref, cam)
    return float(rotation_error_deg(R, gt[0])) if gt is not None else float("nan")


def _choose_pairs(cfg: JobConfig, cams: list[str], fits: dict) -> list[tuple[str, str]]:
    ok = {k: g for k, g in fits.items() if g.ok}
    if cfg.pairs == "all":
        return sorted(ok)
    chosen = set()
    for c in cams:
        cand = [(np.trace(g.R), k) for k, g in ok.items() if c in k]
        if cand:
            chosen.add(max(cand)[1])  # largest trace = smallest rotation angle
    return sorted(chosen)


# --- wave 3: labels per sequence -----------------------------------------------------------------

def shard_path(cfg: JobConfig, seq: Sequence, a: str, b: str) -> Path:
    return S.shard_dir(cfg.out_path, seq.subject, seq.action) / (
        S.shard_name(seq.subject, seq.action, seq.subaction, a, b) + ".parquet")


def _gt_camera_frame(m: Manifest, seq: Sequence, cam: str, frames: np.ndarray) -> np.ndarray | None:
    """(F, J, 3) ground truth in ``cam``'s frame, root-relative mm, or None."""
    p = m.gt_path(seq)
    if p is None or not p.exists() or not m.has_extrinsics(seq.subject, (cam,)):
        return None
    gt = load_ground_truth(str(p))["joints_3d_world"]
    if frames.max() >= len(gt):
        return None
    Xc = m.camera(cam, seq.subject).world_to_camera(gt[frames].astype(np.float64))
    return Xc - Xc[:, m.joint_set.root: m.joint_set.root + 1]


def label_sequence(cfg: JobConfig, seq_key: str, fit: dict[str, Any]) -> dict[str, Any]:
    """Triangulate one sequence with its subject's geometry and write its shards."""
    m = _manifest(cfg)
    seq = _sequence(m, seq_key)
    det = load_sequence_detections(cfg, seq)
    written, skipped, rows = 0, 0, 0
    if cfg.geometry == "multiview":
        targets = [("all", "all")]
    else:
        targets = list(fit["chosen"])
    pair_info = {(r["cam_a"], r["cam_b"]): r for r in fit["pairs"]}
    for a, b in targets:
        path = shard_path(cfg, seq, a, b)
        if S.is_finished(path):
            skipped += 1
            continue
        if cfg.geometry == "multiview":
            tables = _label_multiview(cfg, m, seq, det, fit)
        else:
            tables = _label_pair(cfg, m, seq, det, a, b, pair_info[(a, b)])
        table = pa.concat_tables(tables) if tables else S.to_table(_empty_cols(m, seq))
        valid = S.column_array(table, "valid") if table.num_rows else np.zeros((0, 17), bool)
        S.write_shard(table, path, {
            "rows": table.num_rows, "valid_joint_share": float(valid.mean()) if valid.size else 0.0,
            "geometry": cfg.geometry, "detector": cfg.detector, "pair": [a, b]})
        written += 1
        rows += table.num_rows
    return {"sequence": seq_key, "written": written, "skipped": skipped, "rows": rows}


def _empty_cols(m: Manifest, seq: Sequence) -> dict[str, Any]:
    J = m.joint_set.num_joints
    return {"dataset": m.dataset, "subject": seq.subject, "action": seq.action,
            "subaction": seq.subaction, "frame": np.zeros(0, np.int32), "camera": [],
            "partner_camera": [], "image_path": [], "bbox": np.zeros((0, 4)),
            "joints_2d": np.zeros((0, J, 2)), "joints_2d_conf": np.zeros((0, J)),
            "joints_3d": np.zeros((0, J, 3)), "valid": np.zeros((0, J), bool),
            "reproj_error_px": np.zeros((0, J)), "pair_inlier_ratio": np.zeros(0),
            "pair_rot_deg_to_gt": np.zeros(0), "gt_joints_3d": None}


def _rows(m: Manifest, seq: Sequence, det: SequenceDetections, cam: str, partner: str,
          keep: np.ndarray, X: np.ndarray, valid: np.ndarray, reproj: np.ndarray,
          inlier_ratio: np.ndarray | float, rot_err: np.ndarray | float) -> pa.Table:
    """Shard rows labelling ``cam`` (frames ``keep``) with camera-frame pseudo-3D ``X``.

    ``inlier_ratio`` and ``rot_err`` are per row (per-frame geometry) or one value (NaN: null)."""
    root = m.joint_set.root
    frames = det.frames[keep]
    valid = valid & valid[:, root: root + 1]  # root-relative labels need the root
    Xr = X - X[:, root: root + 1]
    Xr = np.where(valid[..., None] & np.isfinite(Xr), Xr, 0.0)  # invalid joints carry no number, only valid=False
    gt = _gt_camera_frame(m, seq, cam, frames)
    return S.to_table({
        "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
        "subaction": seq.subaction, "frame": frames.astype(np.int32), "camera": cam,
        "partner_camera": partner, "image_path": list(det.paths[cam][keep]),
        "bbox": det.boxes[cam][keep], "joints_2d": det.joints[cam][keep],
        "joints_2d_conf": det.conf[cam][keep], "joints_3d": Xr, "valid": valid,
        "reproj_error_px": np.nan_to_num(reproj, nan=1e6, posinf=1e6), "pair_inlier_ratio": inlier_ratio,
        "pair_rot_deg_to_gt": rot_err, "gt_joints_3d": gt})


def _label_pair(cfg: JobConfig, m: Manifest, seq: Sequence, det: SequenceDetections, a: str,
                b: str, info: dict[str, Any]) -> list[pa.Table]:
    ua, ub = _usable(cfg, det, a), _usable(cfg, det, b)
    keep = ua.any(-1) & ub.any(-1)  # frames where both views found the person
    if not keep.any():
        return []
    xa = _normalized(m, det, a)[keep]
    xb = _normalized(m, det, b)[keep]
    mask = (ua & ub)[keep]
    fa, fb = float(m.camera(a).K[0, 0]), float(m.camera(b).K[0, 0])
    if cfg.geometry == "per-frame":
        R, t, ok, ratio = G.fit_pair_per_frame(xa, xb, mask, cfg.ransac_threshold_px, (fa + fb) / 2)
        gt = _gt_relative(m, seq.subject, a, b)
        rot_err = np.where(ok, rotation_error_deg(R, gt[0]), np.nan) if gt else np.nan
        inlier = ratio.astype(np.float64)
    else:
        if cfg.geometry == "calibrated":
            R, t = _gt_relative(m, seq.subject, a, b)  # metric baseline, mm
        else:
            R, t = _pair_from_row(info)
        ok = np.full(len(xa), bool(info["ok"]))
        rot_err, inlier = float(info["rot_err_deg"]), float(info["inlier_ratio"])
    X = G.triangulate(xa, xb, R, t)
    reproj = G.reprojection_error_px(X, xa, xb, R, t, fa, fb)
    valid = G.label_validity(det.conf[a][keep], det.conf[b][keep], X, R, t, reproj,
                             cfg.conf_threshold, cfg.reproj_threshold_px) & mask & ok[:, None]
    Xb = np.einsum("...ij,...kj->...ki", np.broadcast_to(R, (len(X), 3, 3)), X) + (
        np.broadcast_to(t, (len(X), 3))[:, None, :])
    if cfg.geometry != "calibrated":
        X, scale = G.normalize_scale(X, valid, per_frame=cfg.geometry == "per-frame")
        Xb, _ = G.normalize_scale(Xb, valid, per_frame=cfg.geometry == "per-frame")
        valid = G.normalized_validity(valid, scale)
    out = []
    for cam, partner, Xc in ((a, b, X), (b, a, Xb)):
        out.append(_rows(m, seq, det, cam, partner, keep, Xc, valid, reproj, inlier, rot_err))
    return out


def _pair_from_row(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(info["R"], np.float64).reshape(3, 3), np.asarray(info["t"], np.float64)


def _label_multiview(cfg: JobConfig, m: Manifest, seq: Sequence, det: SequenceDetections,
                     fit: dict[str, Any]) -> list[pa.Table]:
    from pipeline import multiview as MV

    cams = [c for c in seq.cameras if c in fit["cameras"]]
    x = {c: _normalized(m, det, c) for c in cams}
    mask = {c: _usable(cfg, det, c) for c in cams}
    focal = {c: float(m.camera(c).K[0, 0]) for c in cams}
    # All-view triangulation: consensus views per joint, worst views dropped while they
    # reproject badly; valid = seen by >= 2 consistent views, in front of all of them.
    X, valid_all, reproj = MV.multiview_labels(x, fit["cameras"], mask, focal,
                                               cfg.reproj_threshold_px)
    out = []
    for c in cams:
        R, t = fit["cameras"][c]
        Xc = X @ R.T + t
        keep = mask[c].any(-1)
        if not keep.any():
            continue
        valid = valid_all[keep] & mask[c][keep]
        Xn, scale = G.normalize_scale(Xc[keep], valid, per_frame=False)
        valid = G.normalized_validity(valid, scale)
        rot = fit.get("multiview", {}).get(c, {}).get("rot_err_deg", np.nan)
        out.append(_rows(m, seq, det, c, "all", keep, Xn, valid, reproj[keep], 1.0, rot))
    return out


# --- the job -------------------------------------------------------------------------------------

def plan_chunks(cfg: JobConfig) -> list[tuple[str, str, list[int]]]:
    out = []
    for seq in selected_sequences(cfg):
        idx = [int(i) for i in frame_indices(cfg, seq)]
        for cam in seq.cameras:
            for s in range(0, len(idx), cfg.chunk_frames):
                out.append((seq.key, cam, idx[s: s + cfg.chunk_frames]))
    return out


def failures_table(cfg: JobConfig, fits: list[dict[str, Any]]) -> pd.DataFrame:
    """Every failed frame (from the detection files) and every failed camera pair, with reasons."""
    frames = []
    for p in sorted((cfg.out_path / "detections").rglob("*.parquet")):
        t = pq.read_table(p, columns=["subject", "action", "subaction", "camera", "frame", "status"])
        df = t.to_pandas()
        frames.append(df[df["status"] != ""])
    df = pd.concat(frames) if frames else pd.DataFrame()
    df = df.rename(columns={"status": "reason"}).assign(stage="detect")
    pairs = [{"subject": f["subject"], "camera": f"{r['cam_a']}-{r['cam_b']}", "stage": "geometry",
              "reason": r["reason"]} for f in fits for r in f["pairs"] if not r["ok"]]
    return pd.concat([df, pd.DataFrame(pairs)], ignore_index=True)


@dataclass
class JobSummary:
    frames: int = 0
    failed_frames: int = 0
    failed_pairs: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when everything was labelled, 2 when some frames or pairs failed (recorded)."""
        return 2 if (self.failed_frames or self.failed_pairs) else 0


def _progress(futures, desc: str, show: bool):
    """Yield results as tasks finish, with a progress bar."""
    from distributed import as_completed
    from tqdm import tqdm

    with tqdm(total=len(futures), desc=desc, unit="task", disable=not show) as bar:
        for fut in as_completed(futures):
            yield fut.result()
            bar.update()


def geometry_table(fits: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for f in fits:
        chosen = {tuple(p) for p in f["chosen"]}
        for r in f["pairs"]:
            r = dict(r)
            r["chosen"] = (r["cam_a"], r["cam_b"]) in chosen
            for k, n in (("R", 9), ("t", 3), ("E", 9)):
                r[k] = np.asarray(r.get(k, np.full(n, np.nan)), np.float64).reshape(-1).tolist()
            rows.append(r)
    return pd.DataFrame(rows)


def preflight(cfg: JobConfig) -> Manifest:
    """Every check that can fail before any work starts (nothing is written): the manifest, the
    requested subjects, every sequence's frame source, the detector. Returns the manifest."""
    m = _manifest(cfg)
    if cfg.subjects:
        unknown = sorted(set(cfg.subjects) - {s.subject for s in m.sequences})
        if unknown:
            raise ManifestError(f"{m.path}: subjects {unknown} have no sequence (known: "
                                f"{sorted({s.subject for s in m.sequences})})")
    m.check_sources(selected_sequences(cfg))
    check_same_configuration(cfg, m)
    _detector(cfg)  # missing checkpoint, optional package
    return m


# Keys of config.json that may change between runs into the same folder (more subjects extend
# a run; paths may be spelled differently). Every other key decides what the files hold.
_EXTENDABLE_KEYS = {"subjects", "out", "manifest", "root", "manifest_path", "checkpoint_2d"}


def run_record(cfg: JobConfig, m: Manifest) -> dict[str, Any]:
    """What config.json holds: the configuration, resolved paths and the label scale."""
    return {**cfg.to_dict(), "dataset": m.dataset, "manifest_path": str(m.path.resolve()),
            "root": str(m.root), "scale": _scale_doc(cfg)}


def check_same_configuration(cfg: JobConfig, m: Manifest) -> None:
    """A rerun into a folder made with another configuration would mix outputs (finished files
    are skipped by name): refuse it, naming the keys that differ."""
    path = cfg.out_path / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(run_record(cfg, m), default=str))
    differ = sorted(k for k in set(old) | set(new)
                    if k not in _EXTENDABLE_KEYS and old.get(k) != new.get(k))
    if differ:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ValueError(f"{cfg.out}: made with another configuration ({changes}); choose a new "
                         "--out or delete the folder")


def run_job(cfg: JobConfig, client, progress: bool = True) -> JobSummary:
    """Run stage 1 on a Dask ``client``; returns counts and per-wave wall times.

    Fails before any work if the manifest's sources are missing or the detector cannot run here.
    """
    m = preflight(cfg)
    out = cfg.out_path
    out.mkdir(parents=True, exist_ok=True)
    S.write_json_atomic(out / "config.json", run_record(cfg, m))
    summary = JobSummary()
    # Task keys unique to this call: a client reused for another run (or a rerun) must not hand
    # back results the scheduler still holds under the same key.
    run = uuid.uuid4().hex[:8]
    # All three waves are submitted at once, linked by dependencies: a subject's geometry fit
    # starts as soon as its own detections are written, and a sequence's labels as soon as its
    # subject's fit is done, so workers do not idle at wave barriers.
    t0 = time.perf_counter()
    chunks = plan_chunks(cfg)
    seq_subject = {s.key: s.subject for s in selected_sequences(cfg)}
    futs, by_subject_det = [], {}
    for k, c, f in chunks:
        fut = client.submit(detect_chunk, cfg, k, c, f, key=f"detect-{run}-{k}-{c}-{f[0]}",
                            retries=2, pure=False)
        futs.append(fut)
        by_subject_det.setdefault(seq_subject[k], []).append(fut)
    subjects = sorted(by_subject_det)
    fit_futs = {s: client.submit(fit_subject, cfg, s, by_subject_det[s], key=f"fit-{run}-{s}",
                                 retries=2, pure=False) for s in subjects}
    lab_futs = [client.submit(label_sequence, cfg, s.key, fit_futs[s.subject],
                              key=f"label-{run}-{s.key}", retries=2, pure=False)
                for s in selected_sequences(cfg)]
    t_read = t_det = t_crop = 0.0
    for r in _progress(futs, "detect 2D", progress):
        summary.frames += r["rows"]
        summary.failed_frames += r["failed"]
        t_read += r.get("t_read", 0.0)
        t_det += r.get("t_detect", 0.0)
        t_crop += r.get("t_crops", 0.0)
    summary.seconds.update(detect_wall=time.perf_counter() - t0, read_cpu=t_read,
                           detector_cpu=t_det, crops_cpu=t_crop)

    t0 = time.perf_counter()
    fits = list(_progress(list(fit_futs.values()), "fit geometry", progress))
    fits.sort(key=lambda f: f["subject"])
    geo = geometry_table(fits)
    S.write_table_atomic(pa.Table.from_pandas(geo, preserve_index=False), out / "geometry.parquet")
    summary.failed_pairs = int((~geo["ok"]).sum()) if len(geo) else 0
    # Multiview cameras (reference frame = first camera, up to scale) for overlays and checks.
    S.write_json_atomic(out / "cameras.json", {f["subject"]: {c: {"R": R, "t": t} for c, (R, t)
                                                              in f["cameras"].items()}
                                               for f in fits})
    summary.seconds["geometry_fit_wall"] = time.perf_counter() - t0  # beyond detection

    t0 = time.perf_counter()
    for r in _progress(lab_futs, "triangulate + shards", progress):
        summary.shards_written += r["written"]
        summary.shards_skipped += r["skipped"]
        summary.rows += r["rows"]
    summary.seconds["label_wall"] = time.perf_counter() - t0  # beyond the fits

    fail = failures_table(cfg, fits)
    S.write_table_atomic(pa.Table.from_pandas(fail.astype(str), preserve_index=False),
                         out / "failures.parquet")
    S.write_json_atomic(out / "summary.json", dataclasses.asdict(summary))
    return summary


def _scale_doc(cfg: JobConfig) -> str:
    if cfg.geometry == "calibrated":
        return "metric: millimetres, from the manifest's extrinsics"
    per = "each frame" if cfg.geometry == "per-frame" else "one scale per sequence and camera pair"
    return (f"canonical: poses scaled so that the sum of bone lengths equals "
            f"pipeline.geometry.REFERENCE_BONE_SUM_MM ({per})")


def local_client(workers: int, threads_per_worker: int = 1, scheduler: str | None = None,
                 dashboard: bool = False):
    """A Dask client: on ``scheduler`` (an existing cluster) or on a new LocalCluster."""
    from distributed import Client, LocalCluster

    # One BLAS/OpenMP thread per worker process: the workers are the parallelism, and
    # oversubscribed BLAS threads slow scipy's least squares about 4x on a loaded machine.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads_per_worker))
    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=True, dashboard_address=":0" if dashboard else None,
                           silence_logs=40)
    return Client(cluster)

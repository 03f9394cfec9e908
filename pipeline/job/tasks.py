"""The tasks of stage 1, each a plain function of (configuration, keys) that tests call directly.

``pipeline/job/plan.py`` plans and submits them on Dask; every path they read or write belongs to
the run folder (``pipeline.store.run_folder.RunFolder``).

1. :func:`detect_chunk`, one per (sequence, camera, chunk of frames): read frames, detect 2D
   (detector built once per worker), cut the person crops into a crop part
   (``pipeline/store/crop_shards.py``), write the detections as a Parquet file. Never one task per frame: a Dask task costs milliseconds. With crops off and
   a detector that needs no images (``DetectorSpec.needs_images``, e.g. ``file``) no frame is
   read at all; rows without crops have an empty ``image_path``.
   :func:`pack_crops`, one per (sequence, camera) once its chunks are done, packs the parts into
   one crop shard: a run's crop files grow with sequences x cameras, not with frames.
2. :func:`label_subject`, one per subject (cameras are static per subject): read the subject's
   detections once, fit the geometry of the chosen mode (``pipeline.geometry.modes``) on all its
   sequences, then label every sequence with that fit and write one shard per mode shard key.

Every output is written to a temporary name and renamed; a rerun skips finished detection
files and shards (their stats file exists), so a killed job resumes. Frames that fail
(unreadable, no person, non-finite joints) are kept in ``failures.parquet`` with their reason;
pairs whose geometry is degenerate are kept in ``geometry.parquet`` with ``ok = False`` and get
no labels.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import crop_shards as CS
from pipeline.geometry import epipolar as epi
from pipeline.geometry import noise
from pipeline.people import tracks as P
from pipeline.store import shards as S
from pipeline.geometry.cameras import (angle_between_deg, box_from_points, box_to_square,
                              pixels_to_normalized, rotation_angle_deg, rotation_error_deg)
from pipeline.detect.network import FrameKey
from pipeline.detect.registry import NO_PERSON, make_detector
from pipeline.store.frames import read_frames
from pipeline.geometry.modes import (CameraLabels, SubjectGeometry, Views, share_frames,
                                     subject_thresholds)
from pipeline.store.ground_truth import SequenceGroundTruth, camera_ground_truth
from pipeline.job.config import JobConfig
from pipeline.store.manifest import Manifest, Sequence, load_manifest
from pipeline.geometry.rig import CameraRig
from pipeline.store.run_folder import RunFolder

MIN_CONFIDENT_JOINTS = 2
"""A frame with fewer joints at ``conf_threshold`` is recorded as failed (a root-relative label
needs two joints), so that a frame without labels always has a recorded reason."""

# --- per-worker caches ----------------------------------------------------------------------------

_MANIFESTS: dict[tuple[str, str | None], Manifest] = {}
_DETECTORS: dict[tuple, Any] = {}


def manifest_of(cfg: JobConfig) -> Manifest:
    """The run's manifest, loaded once per process."""
    key = (str(Path(cfg.manifest).resolve()), cfg.root)
    if key not in _MANIFESTS:
        _MANIFESTS[key] = load_manifest(cfg.manifest, root=cfg.root)
    return _MANIFESTS[key]


def detector_of(cfg: JobConfig) -> Any:
    """The detector, built once per worker process and reused by every chunk."""
    key = (cfg.detector, cfg.manifest, cfg.root, cfg.detector_options())
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(cfg.detector, manifest_of(cfg), cfg.detector_options())
    return _DETECTORS[key]


def sequence_of(m: Manifest, key: str) -> Sequence:
    for s in m.sequences:
        if s.key == key:
            return s
    raise KeyError(f"{m.path}: no sequence {key}")


def selected_sequences(cfg: JobConfig) -> list[Sequence]:
    m = manifest_of(cfg)
    return m.sequences_in(subjects=cfg.subjects) if cfg.subjects else list(m.sequences)


def frame_indices(cfg: JobConfig, seq: Sequence) -> np.ndarray:
    idx = manifest_of(cfg).frame_indices(seq)
    return idx[: cfg.max_frames] if cfg.max_frames else idx


# --- task 1: detection ----------------------------------------------------------------------------

class Clock:
    """Wall seconds (``time.perf_counter``) and CPU seconds of the calling thread
    (``time.thread_time``) since the last :meth:`lap`. A Dask worker runs a task in one thread,
    with one BLAS, torch and OpenCV thread (``pipeline.job.plan.local_client``), so the thread's CPU
    time is the step's own work, whatever else the machine runs; wall time also counts waiting
    for a core on a busy machine."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def lap(self) -> tuple[float, float]:
        """(wall, CPU) seconds since the last lap (or the clock's start); restarts the lap."""
        wall, cpu = time.perf_counter(), time.thread_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


@dataclass
class DetectResult:
    """What one detection task reports: rows written, failed frames, seconds by step: ``t_*``
    wall, ``c_*`` CPU of the task's thread (:class:`Clock`)."""

    rows: int
    failed: int
    empty: int = 0  # views where a detector of several people found nobody (not a failure)
    skipped: bool = False
    t_read: float = 0.0
    t_detect: float = 0.0
    t_crops: float = 0.0
    t_setup: float = 0.0  # building the detector (model load), first task of a worker only
    t_write: float = 0.0  # the detection file (Parquet)
    t_task: float = 0.0  # the whole task
    c_read: float = 0.0
    c_detect: float = 0.0
    c_crops: float = 0.0
    c_setup: float = 0.0
    c_write: float = 0.0
    c_task: float = 0.0

    def timed(self, **steps: tuple[float, float]) -> "DetectResult":
        """This result with ``step=(wall, cpu)`` for each of read, detect, crops, setup, write,
        task."""
        for k, (wall, cpu) in steps.items():
            setattr(self, f"t_{k}", wall)
            setattr(self, f"c_{k}", cpu)
        return self


def _square(box: np.ndarray, margin: float) -> np.ndarray:
    c, side = box_to_square(box, margin)
    return np.concatenate([c - side[..., None] / 2, c + side[..., None] / 2], axis=-1)


def crop_boxes(cfg: JobConfig, m: Manifest, seq: Sequence, camera: str, frames: list[int]
               ) -> tuple[np.ndarray, bool]:
    """(N, 4) square crop boxes: the dataset's person boxes where it has them (True), else the
    whole frame (False; the detections then decide the crop)."""
    gt_boxes = camera_ground_truth(m, seq, camera, "bbox")
    if gt_boxes is not None and len(gt_boxes) > max(frames):
        return _square(gt_boxes[np.asarray(frames)].astype(np.float64), cfg.crop_margin), True
    cam = m.camera(camera)
    full = np.array([[0, 0, cam.width - 1, cam.height - 1]], np.float64)
    return np.repeat(_square(full, 0.0), len(frames), axis=0), False


def frame_status(cfg: JobConfig, frame: int, joints: np.ndarray, conf: np.ndarray) -> str:
    """Why a frame's detection is unusable ("" when usable); zeroes non-finite confidences."""
    bad = ~np.isfinite(joints).all(-1)
    conf[bad | ~np.isfinite(conf)] = 0.0  # non-finite joints are not labels
    n_confident = int((conf >= cfg.conf_threshold).sum())
    if bad.all() or (conf <= 0).all():
        return f"{NO_PERSON} in frame {frame}"
    if n_confident < MIN_CONFIDENT_JOINTS:
        return (f"too few confident joints in frame {frame}: {n_confident} at confidence >= "
                f"{cfg.conf_threshold:g}, need {MIN_CONFIDENT_JOINTS}")
    return ""


def empty_views(table: pa.Table) -> np.ndarray:
    """(rows,) bool: a detection row of a view where a detector of several people found nobody
    (person -1, status :data:`NO_PERSON`): a fact of the footage, not a failure. Always False
    for one person per frame, where an empty view loses that person's label."""
    if "person" not in table.column_names:
        return np.zeros(table.num_rows, bool)
    person = np.asarray(table.column("person").to_numpy(zero_copy_only=False))
    status = table.column("status").to_pylist()
    return (person == -1) & np.array([s.startswith(NO_PERSON) for s in status], bool)


def detection_counts(table: pa.Table) -> tuple[int, int, int]:
    """(rows, failed rows, empty views) of a detection table (:func:`empty_views`)."""
    empty = empty_views(table)
    failed = np.array([bool(s) for s in table.column("status").to_pylist()], bool) & ~empty
    return table.num_rows, int(failed.sum()), int(empty.sum())


def detect_chunk(cfg: JobConfig, seq_key: str, camera: str, frames: list[int]) -> DetectResult:
    """Detect one chunk of frames of one camera; write crops and the detection file.

    Skips work already on disk (the detection file exists)."""
    m = manifest_of(cfg)
    seq = sequence_of(m, seq_key)
    run = cfg.run
    path = run.detection_file(seq, camera, frames[0])
    if path.exists():
        return DetectResult(*detection_counts(run.detection_status(path)), skipped=True)
    task, clock = Clock(), Clock()
    detector = detector_of(cfg)
    setup = clock.lap()
    if cfg.reads_frames:
        images, status = _read(m, seq, camera, frames)
    else:  # a detector without images and no crops: no frame is opened or decoded
        images, status = [None] * len(frames), [""] * len(frames)
    read = clock.lap()
    boxes, from_dataset = crop_boxes(cfg, m, seq, camera, frames)
    keys = [FrameKey(m.dataset, seq.subject, seq.action, seq.subaction, camera, int(f))
            for f in frames]
    if getattr(detector, "multi_person", False):  # several people: pipeline/people/tracks.py
        return _detect_people(cfg, m, seq, camera, frames, keys, images, status, task,
                              setup=setup, read=read)
    clock.lap()  # boxes and keys: task overhead (the task's time beyond its steps)
    joints, conf = detector.detect(images, boxes, keys)
    joints, conf = np.asarray(joints, np.float32), np.asarray(conf, np.float32)
    detect = clock.lap()
    for i, f in enumerate(frames):
        status[i] = status[i] or frame_status(cfg, f, joints[i], conf[i])
        if status[i]:
            joints[i], conf[i] = np.nan, 0.0
        elif not from_dataset:  # no dataset box: crop around what the detector found
            boxes[i] = _square(box_from_points(joints[i][conf[i] > 0][None])[0], cfg.crop_margin)
    # Without crops the row has no image of its own: image_path is "" (the frame is found from
    # the row's sequence, camera and frame through the manifest).
    paths = (_write_crops(cfg, seq, camera, frames, images, boxes, status) if cfg.write_crops
             else [""] * len(frames))
    crops = clock.lap()
    table = S.to_table({
        "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
        "subaction": seq.subaction, "camera": camera, "frame": np.asarray(frames, np.int32),
        "image_path": paths, "bbox": boxes.astype(np.float32), "joints_2d": joints,
        "joints_2d_conf": conf, "status": status}, S.detection_schema(m.joint_set.num_joints))
    clock.lap()
    S.write_table_atomic(table, path)
    write = clock.lap()
    return DetectResult(*detection_counts(table)).timed(
        setup=setup, read=read, detect=detect, crops=crops, write=write, task=task.lap())


def _detect_people(cfg: JobConfig, m: Manifest, seq: Sequence, camera: str, frames: list[int],
                   keys: list[FrameKey], images: list, status: list[str], task: Clock,
                   **steps: tuple[float, float]) -> DetectResult:
    """``detect_chunk`` for a detector of several people per frame: one row per person, the
    person crops in the chunk's crop part, :func:`crop_slots` rows per frame."""
    clock = Clock()
    rows = detector_of(cfg).detect_people(images, None, keys)
    detect = clock.lap()
    jpegs: dict[tuple[int, int], bytes] = {}
    slots = crop_slots(cfg)

    def crop(i: int, slot: int, image: Any, box: np.ndarray) -> str:
        jpegs[i, slot] = CS.encode_crop(image, box, cfg.crop_size)
        return CS.crop_ref(RunFolder.crop_shard_name(seq, camera), planned[i] * slots + slot)

    planned = _planned_rows(cfg, seq, camera, frames) if cfg.write_crops else None
    table = P.people_table(m, seq, camera, frames, status, rows, images,
                           lambda f, j, c: frame_status(cfg, f, j, c),
                           crop if cfg.write_crops else None, cfg.crop_margin, slots)
    if cfg.write_crops:  # the crop part before the detection file, as for one person
        grid = [(i, s) for i in range(len(frames)) for s in range(slots)]
        CS.write_crops(cfg.run.crop_part(seq, camera, frames[0]), CS.crop_table(
            [planned[i] * slots + s for i, s in grid], [frames[i] for i, _ in grid],
            [jpegs.get(k, b"") for k in grid]))
    crops = clock.lap()
    S.write_table_atomic(table, cfg.run.detection_file(seq, camera, frames[0]))
    write = clock.lap()
    return DetectResult(*detection_counts(table)).timed(detect=detect, crops=crops, write=write,
                                                      task=task.lap(), **steps)


def crop_slots(cfg: JobConfig) -> int:
    """Crop-shard rows per planned frame: 1, or for a detector of several people the most
    people a view may hold (``JobConfig.max_people``; the association leaves a more
    crowded view out, so its extra people need no crop)."""
    return cfg.max_people if getattr(detector_of(cfg), "multi_person", False) else 1


def _read(m: Manifest, seq: Sequence, camera: str, frames: list[int]
          ) -> tuple[list[np.ndarray | None], list[str]]:
    cam = m.camera(camera)
    images, status = [], []
    # A frame of another size than the manifest's would not match the camera's intrinsics.
    for fr in read_frames(m, seq, camera, frames, expected_size=(cam.width, cam.height)):
        images.append(fr.image)
        status.append(fr.error or "")
    return images, status


def _write_crops(cfg: JobConfig, seq: Sequence, camera: str, frames: list[int],
                 images: list[np.ndarray | None], boxes: np.ndarray, status: list[str]
                 ) -> list[str]:
    """Encode the chunk's crops into its crop part (written before the detection file, so a
    finished detection file has its crops); returns each frame's ``image_path``, a reference
    into the (sequence, camera) crop shard that :func:`pack_crops` makes."""
    rows = _planned_rows(cfg, seq, camera, frames)
    jpegs = [b"" if status[i] else CS.encode_crop(images[i], boxes[i], cfg.crop_size)
             for i in range(len(frames))]
    CS.write_crops(cfg.run.crop_part(seq, camera, frames[0]), CS.crop_table(rows, frames, jpegs))
    name = RunFolder.crop_shard_name(seq, camera)
    return [CS.crop_ref(name, r) if not status[i] else "" for i, r in enumerate(rows)]


def _planned_rows(cfg: JobConfig, seq: Sequence, camera: str, frames: list[int]) -> np.ndarray:
    """Each chunk frame's position among the sequence's planned frames (its crop-shard row)."""
    planned = frame_indices(cfg, seq)
    rows = np.minimum(np.searchsorted(planned, frames), len(planned) - 1)
    if (planned[rows] != frames).any():
        raise ValueError(f"sequence {seq.key} camera {camera}: frames {frames[:3]}... are not "
                         "among the run's planned frames")
    return rows


@dataclass
class PackResult:
    """What one crop-packing task reports: its wall and CPU seconds."""

    wall: float
    cpu: float


def pack_crops(cfg: JobConfig, seq_key: str, camera: str, after: Any = None) -> PackResult:
    """Pack one (sequence, camera)'s crop parts into its crop shard (``after``, ignored, carries
    its detection results so that Dask runs this once they are on disk)."""
    clock = Clock()
    seq = sequence_of(manifest_of(cfg), seq_key)
    CS.pack(cfg.run.crop_shard(seq, camera), cfg.run.crop_parts(seq, camera),
            np.repeat(frame_indices(cfg, seq), crop_slots(cfg)))
    for tmp in cfg.run.crop_part_temporaries(seq, camera):  # a killed task's half-written part
        tmp.unlink(missing_ok=True)
    return PackResult(*clock.lap())


# --- reading detections back ----------------------------------------------------------------------

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

    def views(self, m: Manifest, subject: str) -> Views:
        """The geometry modes' input: normalised joints, confidences, focal lengths and the
        subject's extrinsics where the manifest has them."""
        x, known = {}, {}
        for c in self.joints:
            cam = m.camera(c, subject)
            x[c] = pixels_to_normalized(self.joints[c], cam.K, cam.dist)
            if cam.has_extrinsics:
                known[c] = (cam.R, cam.t)
        focal = {c: float(m.camera(c).K[0, 0]) for c in self.joints}
        return Views(x, dict(self.conf), focal, known)


def load_sequence_detections(cfg: JobConfig, seq: Sequence) -> SequenceDetections:
    """Every camera's detection files of ``seq``, on the union of their frames."""
    run = cfg.run
    per_cam = {}
    for cam in seq.cameras:
        per_cam[cam] = run.detection_table(seq, cam)
    frames = np.unique(np.concatenate([t.column("frame").to_numpy() for t in per_cam.values()]))
    out = SequenceDetections(frames=frames)
    J, F = manifest_of(cfg).joint_set.num_joints, len(frames)
    for cam, t in per_cam.items():
        pos = np.searchsorted(frames, t.column("frame").to_numpy())
        out.joints[cam] = np.full((F, J, 2), np.nan, np.float64)
        out.conf[cam] = np.zeros((F, J), np.float64)
        out.boxes[cam] = np.full((F, 4), np.nan, np.float64)
        out.paths[cam] = np.full(F, "", dtype=object)
        out.joints[cam][pos] = S.column_array(t, "joints_2d")
        out.conf[cam][pos] = S.column_array(t, "joints_2d_conf")
        out.boxes[cam][pos] = S.column_array(t, "bbox")
        out.paths[cam][pos] = np.array(t.column("image_path").to_pylist(), dtype=object)
    return out


def concat_views(views: list[Views]) -> Views:
    """Several sequences' (or tracked people's) views on one frame axis (the input of a
    subject's fit); ``group`` numbers the part each row comes from."""
    cams = views[0].cameras
    group = np.concatenate([np.full(len(v.x[cams[0]]), i) for i, v in enumerate(views)])
    return Views({c: np.concatenate([v.x[c] for v in views]) for c in cams},
                 {c: np.concatenate([v.conf[c] for v in views]) for c in cams},
                 views[0].focal, views[0].known, group=group)


# --- task 2: geometry and labels per subject ------------------------------------------------------

@dataclass
class SubjectResult:
    """What one subject's task reports to the job.

    Attributes:
        subject: the subject id.
        pair_rows: one ``geometry.parquet`` row per camera pair (and per unregistered camera).
        rig: ``cameras.json``'s entry of the subject ({} for pair modes). Only these small
            tables travel back to the client, not the fit's per-correspondence masks.
        written, skipped, rows: shards written, shards already finished, label rows written.
        labelled: cameras that got at least one valid label (a failed pair of two labelled
            cameras costs no labels: a warning, not an error).
        t_fit, t_label: wall seconds of the fit and of labelling + writing; c_fit, c_label
            their CPU seconds (:class:`Clock`).
        thresholds: the subject's measured 2D noise and the pixel thresholds its fit and labels
            used (``pipeline.geometry.noise.Thresholds.to_json``; {} when nothing was fitted).
    """

    subject: str
    pair_rows: list[dict[str, Any]]
    rig: dict[str, Any]
    written: int = 0
    skipped: int = 0
    rows: int = 0
    t_fit: float = 0.0
    t_label: float = 0.0
    c_fit: float = 0.0
    c_label: float = 0.0
    labelled: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)


def label_subject(cfg: JobConfig, subject: str, after: Any = None) -> SubjectResult:
    """Fit one subject's geometry from all its sequences' detections, then label each sequence
    and write its shards. ``after`` (ignored) carries the subject's detection results, so that
    Dask runs this task once they are on disk."""
    m = manifest_of(cfg)
    mode, settings = cfg.mode, cfg.settings(m.joint_set)
    seqs = [s for s in selected_sequences(cfg) if s.subject == subject]
    clock = Clock()
    people = subject_detections(cfg, m, subject, seqs)
    views = [[(p, d, v) for (p, d), v in zip(seq_people, share_frames(
        [d.views(m, subject) for _, d in seq_people]))] for seq_people in people]
    fit_views = [v for seq_views in views for _, _, v in seq_views]
    if not fit_views:  # several people per frame and none associated (association/ says why)
        return SubjectResult(subject, [], {})
    geometry = mode.fit(subject, concat_views(fit_views), settings)
    result = SubjectResult(subject, pair_rows(geometry, fit_views[0]),
                           geometry.rig.to_json() if geometry.rig is not None else {})
    if geometry.thresholds is not None:
        result.thresholds = geometry.thresholds.to_json()
    result.t_fit, result.c_fit = clock.lap()
    for seq, seq_views in zip(seqs, views):
        for shard in mode.shards(geometry):
            path = cfg.run.shard_file(seq, *shard)
            if S.is_finished(path):  # a rerun: the shard's stats say which cameras it labels
                result.skipped += 1
                labelled = set(labelled_cameras(path))
            else:
                table = people_labels_table(m, seq, [
                    (p, d, v, mode.label(v, geometry, settings, shard)) for p, d, v in seq_views])
                stats = shard_stats(cfg, table, shard)
                S.write_shard(table, path, stats)
                result.written += 1
                result.rows += table.num_rows
                labelled = set(stats["labelled_cameras"])
            result.labelled = sorted(set(result.labelled) | labelled)
    result.t_label, result.c_label = clock.lap()
    return result


def subject_detections(cfg: JobConfig, m: Manifest, subject: str, seqs: list[Sequence]
                       ) -> list[list[tuple[int | None, SequenceDetections]]]:
    """Per sequence, (person, detections) of each person to label: the one person of a
    single-person run (person None), else every track of the association (pipeline/people/tracks.py)."""
    if not P.has_people(cfg.run, seqs):
        return [[(None, load_sequence_detections(cfg, s))] for s in seqs]
    tracks = P.subject_people(cfg.run, m, subject, seqs, cfg.settings(m.joint_set),
                              use_extrinsics=cfg.mode.needs_extrinsics,
                              a=cfg.association_settings())
    return [[(t.person, SequenceDetections(t.frames, t.joints, t.conf, t.boxes, t.paths))
             for t in seq_tracks] for seq_tracks in tracks]


def people_labels_table(m: Manifest, seq: Sequence, people: list[tuple[
        int | None, SequenceDetections, Views, list[CameraLabels]]]) -> pa.Table:
    """Shard rows of a sequence's people: one person (None) exactly as ``labels_table``;
    several, each person's rows with its track id in ``person``."""
    if len(people) == 1 and people[0][0] is None:
        return labels_table(m, seq, *people[0][1:])
    schema = S.shard_schema(m.joint_set.num_joints, people=True)
    tables = [S.to_table({**_label_columns(m, seq, d, v, lab, gt=False), "person": p}, schema)
              for p, d, v, labs in people for lab in labs]
    return pa.concat_tables(tables) if tables else S.to_table(_empty_columns(m, seq), schema)


def shard_stats(cfg: JobConfig, table: pa.Table, shard: tuple[str, str]) -> dict[str, Any]:
    """The shard's ``_stats.json``: rows, valid share, run settings, and the cameras with at
    least one valid label (a rerun that skips the shard reads them back)."""
    valid = S.column_array(table, "valid") if table.num_rows else np.zeros((0, 1), bool)
    cams = np.asarray(table.column("camera").to_pylist(), dtype=object)
    labelled = sorted({str(c) for c in cams[valid.any(-1)]}) if table.num_rows else []
    return {"rows": table.num_rows, "valid_joint_share": float(valid.mean()) if valid.size else 0.0,
            "geometry": cfg.geometry, "detector": cfg.detector, "pair": list(shard),
            "labelled_cameras": labelled}


def labelled_cameras(shard: Path) -> list[str]:
    """Cameras with at least one valid label in a finished shard (its stats file, or the shard
    itself for stats written before they recorded them)."""
    stats = json.loads(S.stats_path(shard).read_text())
    if "labelled_cameras" in stats:
        return list(stats["labelled_cameras"])
    t = pq.read_table(shard, columns=["camera", "valid"])
    cams = np.asarray(t.column("camera").to_pylist(), dtype=object)
    return sorted({str(c) for c in cams[S.column_array(t, "valid").any(-1)]}) if t.num_rows else []


def labels_table(m: Manifest, seq: Sequence, det: SequenceDetections, views: Views,
                 labels: list[CameraLabels]) -> pa.Table:
    """Shard rows of a sequence's labels (root-relative; invalid joints carry 0, valid=False)."""
    cols = [_label_columns(m, seq, det, views, lab) for lab in labels]
    schema = S.shard_schema(m.joint_set.num_joints, people=False)
    if not cols:
        return S.to_table(_empty_columns(m, seq), schema)
    return pa.concat_tables([S.to_table(c, schema) for c in cols])


def _label_columns(m: Manifest, seq: Sequence, det: SequenceDetections, views: Views,
                   lab: CameraLabels, gt: bool = True) -> dict[str, Any]:
    """One camera's label columns (``gt``: attach the sequence's ground truth, which belongs
    to its one person: not for the tracks of several people)."""
    cam, keep = lab.camera, lab.frames
    frames = det.frames[keep]
    # Root-relative labels need a root: the joint set's first root where valid, else its first
    # valid fallback (JointSet.frame_roots; the rule can be read back from ``valid``).
    Xr, valid = m.joint_set.root_relative(lab.X, lab.valid)
    Xr = np.where(valid[..., None] & np.isfinite(Xr), Xr, 0.0)
    truth = SequenceGroundTruth.find(m, seq) if gt else None
    gt_3d = truth.root_relative_3d(cam, frames) if truth is not None else None
    if gt_3d is not None:  # measured from the same root as the label
        gt_3d, _ = m.joint_set.root_relative(gt_3d, valid)
    return {
        "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
        "subaction": seq.subaction, "frame": frames.astype(np.int32), "camera": cam,
        "partner_camera": lab.partner, "image_path": list(det.paths[cam][keep]),
        "bbox": det.boxes[cam][keep], "joints_2d": det.joints[cam][keep],
        "joints_2d_conf": det.conf[cam][keep], "joints_3d": Xr, "valid": valid,
        "reproj_error_px": np.nan_to_num(lab.reproj_px, nan=1e6, posinf=1e6),
        "pair_inlier_ratio": lab.inlier_ratio,
        "pair_rot_deg_to_gt": _rotation_error(views, lab.pose_from, cam, lab.R),
        "gt_joints_3d": gt_3d}


def _rotation_error(views: Views, a: str, b: str, R: np.ndarray) -> np.ndarray | float:
    """Degrees between an estimated rotation of ``b`` relative to ``a`` (one or per frame) and
    the extrinsics' (NaN without them or where the estimate is NaN)."""
    known = views.known_relative(a, b)
    if known is None:
        return np.nan
    with np.errstate(invalid="ignore"):
        err = rotation_error_deg(R, known[0])
    return float(err) if np.ndim(err) == 0 else err


def _empty_columns(m: Manifest, seq: Sequence) -> dict[str, Any]:
    J = m.joint_set.num_joints
    return {"dataset": m.dataset, "subject": seq.subject, "action": seq.action,
            "subaction": seq.subaction, "frame": np.zeros(0, np.int32), "camera": [],
            "partner_camera": [], "image_path": [], "bbox": np.zeros((0, 4)),
            "joints_2d": np.zeros((0, J, 2)), "joints_2d_conf": np.zeros((0, J)),
            "joints_3d": np.zeros((0, J, 3)), "valid": np.zeros((0, J), bool),
            "reproj_error_px": np.zeros((0, J)), "pair_inlier_ratio": np.zeros(0),
            "pair_rot_deg_to_gt": np.zeros(0), "gt_joints_3d": None}


# --- run-level tables -----------------------------------------------------------------------------

def pair_rows(g: SubjectGeometry, views: Views) -> list[dict[str, Any]]:
    """``geometry.parquet`` rows of one subject: every pair (with its rotation, and errors
    against the extrinsics where known), then every camera the all-view rig could not hold."""
    chosen = set(g.chosen)
    rows = []
    for p in g.pairs:
        known = views.known_relative(p.cam_a, p.cam_b)
        row = {"subject": g.subject, "kind": "pair", **p.to_row(),
               "chosen": (p.cam_a, p.cam_b) in chosen, "rot_deg": float(rotation_angle_deg(p.R))}
        # An ambiguous pair keeps its best pose (not labelled): its errors say what it would have
        # cost. Direction of the estimated unit t against the ground-truth relative translation.
        scored = known is not None and (p.ok or p.ambiguous)
        row["rot_err_deg"] = float(rotation_error_deg(p.R, known[0])) if scored else np.nan
        row["t_err_deg"] = float(angle_between_deg(p.t, known[1])) if scored else np.nan
        rows.append(row)
    ref = g.rig.reference if g.rig is not None else views.cameras[0]
    for c, reason in g.unregistered.items():
        rows.append({"subject": g.subject, "kind": "rig camera", "cam_a": ref, "cam_b": c,
                     "ok": False, "reason": reason, "chosen": False})
    return rows


def geometry_table(results: list[SubjectResult]) -> pd.DataFrame:
    """Every subject's pair rows, matrices flattened to lists (NaN where absent)."""
    rows = []
    for r in results:
        for row in r.pair_rows:
            row = dict(row)
            for k, n in (("R", 9), ("t", 3), ("E", 9)):
                row[k] = np.asarray(row.get(k, np.full(n, np.nan)), np.float64).reshape(-1).tolist()
            rows.append(row)
    return pd.DataFrame(rows)


def rigs_json(results: list[SubjectResult]) -> dict[str, Any]:
    """subject -> camera -> {R, t} of the all-view rigs (``cameras.json``)."""
    return {r.subject: r.rig for r in results}


def failures_table(run: RunFolder, geometry: pd.DataFrame,
                   labelled: dict[str, set[str]] | None = None) -> pd.DataFrame:
    """Every failed frame (from the detection files) and every failed camera pair, with reasons
    and a ``severity``: "error" where labels were lost (a failed frame; a failed pair or rig
    camera with a camera that got no label), "warning" where both cameras of a failed pair are
    labelled through other pairs (``labelled``: subject -> cameras with labels; None: every
    failed pair is an error), and "warning" for a pair labelled although uncertain
    (:func:`uncertain_pairs`)."""
    frames = []
    for p in run.all_detection_files():
        cols = ["subject", "action", "subaction", "camera", "frame", "status"]
        t = run.detection_status(p, tuple(cols[:-1]))
        df = t.select(cols).to_pandas()
        frames.append(df[(df["status"] != "") & ~empty_views(t)])
    df = pd.concat(frames) if frames else pd.DataFrame()
    df = df.rename(columns={"status": "reason"}).assign(stage="detect", severity="error")
    bad = geometry[~geometry["ok"].astype(bool)] if len(geometry) else geometry
    pairs = [{"subject": r.subject, "camera": f"{r.cam_a}-{r.cam_b}", "stage": "geometry",
              "reason": r.reason, "severity": _pair_severity(r, labelled)}
             for r in bad.itertuples()]
    pairs += [{"subject": r.subject, "camera": f"{r.cam_a}-{r.cam_b}", "stage": "geometry",
               "reason": r.reason, "severity": "warning"}
              for r in uncertain_pairs(geometry).itertuples()]
    out = pd.concat([df, pd.DataFrame(pairs), P.association_failures(run)], ignore_index=True)
    return out if len(out) else pd.DataFrame(columns=["stage", "severity", "reason"])


FAILURE_SCHEMA = pa.schema([("stage", pa.string()), ("severity", pa.string()),
                            ("dataset", pa.string()), ("subject", pa.string()),
                            ("action", pa.string()), ("subaction", pa.string()),
                            ("camera", pa.string()), ("frame", pa.int32()),
                            ("person", pa.int32()), ("reason", pa.string())])
"""failures.parquet: one row per failed frame (stage "detect"), camera pair ("geometry", camera
"a-b") or unlinked person ("associate"); a column a row has no value for is null."""


def typed_failures(fail: pd.DataFrame) -> pa.Table:
    """:func:`failures_table`'s rows in :data:`FAILURE_SCHEMA` (every column, typed)."""
    fail = fail.reindex(columns=FAILURE_SCHEMA.names)  # a column no row has: all null
    cols = [pa.array(pd.to_numeric(fail[f.name], errors="coerce").astype("Int32")
                     if pa.types.is_integer(f.type) else fail[f.name].astype("string"),
                     type=f.type) for f in FAILURE_SCHEMA]
    return pa.Table.from_arrays(cols, schema=FAILURE_SCHEMA)


def uncertain_pairs(geometry: pd.DataFrame) -> pd.DataFrame:
    """The rows of geometry.parquet labelled although uncertain (``flagged``,
    :func:`pipeline.geometry.loops.label_last_uncertain`)."""
    if not len(geometry) or "flagged" not in geometry:
        return geometry.iloc[:0]
    return geometry[geometry["flagged"].fillna(False).astype(bool)]


def _pair_severity(row: Any, labelled: dict[str, set[str]] | None) -> str:
    if labelled is None:
        return "error"
    cams = labelled.get(row.subject, set())
    return "warning" if row.cam_a in cams and row.cam_b in cams else "error"


# --- reading a finished run back ------------------------------------------------------------------

def subject_geometry(cfg: JobConfig, subject: str, views: Views) -> SubjectGeometry:
    """A finished run's fit of one subject, read back from ``geometry.parquet`` (pairs, chosen),
    ``cameras.json`` (the all-view rig) and ``summary.json`` (the thresholds used; measured
    again on ``views`` for a run that predates that record), for overlays and checks that re-run
    the mode's labelling exactly as the job did."""
    run = cfg.run
    g = run.geometry()
    if g is None:
        raise FileNotFoundError(f"{run.geometry_file} is missing (the run did not fit geometry)")
    g = g[(g["subject"] == subject) & (g.get("kind", "pair") == "pair")]
    pairs = [epi.PairGeometry(r.cam_a, r.cam_b, r.R, r.t, r.E, int(r.n_points), int(r.n_inliers),
                              float(r.inlier_ratio), bool(r.ok), str(r.reason), str(r.method),
                              float(r.threshold_px)) for r in g.itertuples()]
    chosen = [(r.cam_a, r.cam_b) for r in g.itertuples() if bool(r.chosen)]
    rig = None
    rigs = run.rigs()
    if rigs.get(subject):
        rig = CameraRig.from_json(rigs[subject], views.focal)
    return SubjectGeometry(subject, pairs, chosen, rig, thresholds=_thresholds_of(
        cfg, subject, views))


def _thresholds_of(cfg: JobConfig, subject: str, views: Views) -> noise.Thresholds:
    """The thresholds a finished run recorded for ``subject`` (summary.json), else measured."""
    rec = cfg.run.recorded_thresholds().get(subject)
    if rec:
        return noise.Thresholds.from_json(rec)
    mode = cfg.mode
    return subject_thresholds(views, cfg.settings(manifest_of(cfg).joint_set),
                              known=mode.needs_extrinsics)


def relabel_sequence(cfg: JobConfig, seq: Sequence) -> tuple[SequenceDetections, Views,
                                                             list[CameraLabels]]:
    """A finished run's labels of one sequence, recomputed from its detections and its saved
    geometry with the run's own mode and settings (``X_camera`` reprojects into the images)."""
    m = manifest_of(cfg)
    det = load_sequence_detections(cfg, seq)
    views = det.views(m, seq.subject)
    geometry = subject_geometry(cfg, seq.subject, views)
    settings = cfg.settings(m.joint_set)
    labels = [lab for shard in cfg.mode.shards(geometry)
              for lab in cfg.mode.label(views, geometry, settings, shard)]
    return det, views, labels

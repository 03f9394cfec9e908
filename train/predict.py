"""``predict``: the trained 3D network on a video, an image folder or a manifest.

    clips (train.footage) --> frames --> 2D detector (pipeline.detect.registry registry) --> person box
      --> crop --> 3D network (batched, GPU when present) --> metric root-relative 3D pose
      --> poses.parquet, overlay MP4, contact sheet PNG (and metrics.json with ground truth)

One row of :func:`poses_schema` per frame and person. A single-person detector gives one
person per frame (``person`` 0). A multi-person detector (``mediapipe-people``, or a detections
file with a ``person`` column: ``pipeline.detect.registry``) gives every person it finds in the whole
frame; each gets its own crop and 3D pose, and ``person`` is a track id over the clip
(``train.tracking.BoxTracker``: Hungarian matching of the boxes' IoU between frames), so one
person keeps one id while the boxes overlap from frame to frame. A frame that cannot be read, or
where the detector finds nobody, gets one row too (``person`` -1), with NaN arrays and
``status`` saying why; nothing is skipped silently. Smoothing runs per track.

**The person box** (:data:`BOX_SOURCES`): ``detected`` (default): the square box around the
detector's confident joints, grown by the 3D network's training margin; the detector itself
looks at the whole frame and then once more at the box around what it found (never at the
dataset's ground-truth box, even where the input has one: these are the crops a user's footage
gets). ``dataset``: the dataset's own person box, the crop of the evaluation protocol
(``train.evaluation``), for inputs with ground truth, asked for explicitly.

**The 3D pose** (:func:`metric_poses`): the network gives x, y in the crop and the root-relative
depth z in mm; turning x, y into mm needs the root's depth, which a single image does not give.
It is chosen per frame so that the skeleton's bones that have a reference length sum to the sum
of those lengths (``pipeline.geometry.triangulation.reference_lengths``: the joint set's declared
lengths, 4150 mm in all for H36M-17; for a set that declares none, the H36M-17 bones it
contains), the canonical size of the pseudo-labels the network learned from, which stage 1
scales with the same function (``normalize_scale``): ``joints_3d`` is root-relative, in the
camera frame, in mm of the reference skeleton.

**Scoring** (``reference``, ``--reference``): nothing is read from the 3D ground truth unless it
is asked for. ``--reference ground-truth`` (:data:`GROUND_TRUTH_REFERENCE`) scores against the
manifest's 3D ground truth, exactly as ``make eval`` does (decoded with the ground-truth root
depth); ``--reference RUN`` against a stage-1 run's labels; ``metrics.json`` holds the figures.

**Safety**: rows are written in parts as chunks finish (``.poses-parts/``) and gathered into
``poses.parquet`` at the end, also when the run stops on an error or Ctrl-C; the overlay video is
closed and renamed in the same way.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.store import shards as S
from pipeline.geometry.cameras import box_from_points, box_to_square, crop_affine, pixels_to_normalized
from pipeline.detect.registry import (DetectorChoice, DetectorOptions, make_detector,
                                      resolve_detector)
from pipeline.store.frames import Frame
from pipeline.geometry.triangulation import reference_lengths
from pipeline.store.ground_truth import SequenceGroundTruth
from pipeline.joints import JointSet
from train.checkpoint import (CheckpointError, load_checkpoint, model_from_state,
                              network_settings, resolve_device)
from train.evaluation import cut_crop
from train.footage import Clip, InputError
from train.infer import predict
from train.model import PoseNet
from train.pose_video import OverlayVideo, overlay_frame, write_contact_sheet
from train.predict_lift import LiftingNetwork, load_lifter_network
from train.predict_score import check_reference, score_predictions
from train.smoothing import OneEuroFilter
from train.tracking import BoxTracker
from train.targets import coords_to_image_pixels, decode

MIN_CONFIDENT_JOINTS = 6
"""A frame with fewer detected joints at ``conf_threshold`` has no person (stage 1's rule)."""
DETECTOR_BOX_MARGIN = 0.15
"""Margin of the square box the detector looks at, per side (stage 1's ``JobConfig.crop_margin``
default)."""
MIN_CHUNK = 16
"""Frames per chunk: at least this many, else the batch size (rows are written per chunk)."""
MIN_BOX_PX = 8.0
"""Nor does one whose confident joints span less than this (a detector's collapsed output)."""


def poses_schema(num_joints: int) -> pa.Schema:
    """The ``poses.parquet`` contract: one row per frame and person."""
    J, f32 = num_joints, pa.float32()
    fx = S._fixed  # the shard module's fixed-size list type: one definition of the layout
    return pa.schema([
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("subaction", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("time_s", pa.float64(), nullable=True),
        pa.field("person", pa.int16(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("bbox", fx(f32, 4), nullable=False),
        pa.field("joints_3d", fx(f32, J, 3), nullable=False),
        pa.field("joints_2d", fx(f32, J, 2), nullable=False),
        pa.field("joints_conf", fx(f32, J), nullable=False),
        pa.field("detector_joints_2d", fx(f32, J, 2), nullable=False),
        pa.field("detector_conf", fx(f32, J), nullable=False),
        pa.field("coords", fx(f32, J, 3), nullable=False),
        pa.field("root_depth_mm", f32, nullable=False),
        pa.field("image_file", pa.string(), nullable=True),
    ], metadata={
        "contract": "epipolar-pose predictions v1",
        "joints_3d": "camera frame (x right, y down, z forward), root-relative, mm of the "
                     "reference skeleton (bone lengths sum to the joint set's reference)",
        "joints_2d": "the 3D network's joints in the original image, pixels",
        "bbox": "square person crop x_min,y_min,x_max,y_max, pixels",
        "coords": "the network's crop-normalised output (train.targets)",
        "status": "'' when predicted, else why not (unreadable frame, no person)",
        "time_s": "frame / frame rate; null where the rate is unknown (an image folder without "
                  "--fps)",
        "image_file": "the frame's file name (image-folder input), else null"})


# --- the 3D network -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Pose3DNetwork:
    """A 3D network ready for inference and the settings of its training crops."""

    model: PoseNet
    input_size: int
    depth_range_mm: float
    box_margin: float
    path: str
    reads_images = True

    @property
    def num_joints(self) -> int:
        return int(self.model.spec.num_joints)

    def start_clip(self) -> None:
        """Nothing is carried from frame to frame."""

    def observe(self, clip: Clip, frames: list[Frame], cols: dict[str, np.ndarray],
                opts: "PredictOptions") -> None:
        """Nothing to remember: each crop is estimated on its own."""

    def ready(self, frames_after: int) -> bool:
        return True

    def estimate(self, clip: Clip, frames: list[Frame], cols: dict[str, np.ndarray],
                 opts: "PredictOptions", timing: dict[str, float]) -> None:
        """Fill the 3D columns of a chunk's rows with a person box: crop, network, metric pose
        (:func:`metric_poses`)."""
        rows = np.flatnonzero(cols["status"] == "")
        if not len(rows):
            return
        S_ = self.input_size
        centre, side = box_to_square(cols["bbox"][rows])
        crops = [cut_crop(frames[cols["index"][r]].image, centre[k], float(side[k]), S_)[0]
                 for k, r in enumerate(rows)]
        t0 = time.perf_counter()
        coords, conf = predict(self.model, np.stack(crops), opts.batch_size)
        timing["network_s"] = timing.get("network_s", 0.0) + time.perf_counter() - t0
        A = crop_affine(centre, side, S_)
        cam = clip.manifest.camera(clip.camera)
        pose, z = metric_poses(coords, A, cam.K, cam.dist, S_, self.depth_range_mm,
                               clip.manifest.joint_set)
        cols["coords"][rows] = coords
        cols["joints_conf"][rows] = conf
        cols["joints_2d"][rows] = coords_to_image_pixels(coords[..., :2], A, S_)
        cols["joints_3d"][rows], cols["root_depth_mm"][rows] = pose, z


def load_pose3d(path: str | Path, device: str = "auto") -> Pose3DNetwork:
    """The 3D network of a training checkpoint; CheckpointError (NotA3DNetwork for the 2D
    network's checkpoint) naming the file, and for a missing one the command that makes it."""
    if not Path(path).is_file():
        raise CheckpointError(f"no 3D network checkpoint at {path}: `make train` makes one "
                              "(or pass --checkpoint PATH; make: CHECKPOINT=path)")
    state = load_checkpoint(path, map_location="cpu")
    settings = network_settings(state["config"], str(path))
    model, _ = model_from_state(state, str(path), str(resolve_device(device)))
    return Pose3DNetwork(model, settings["input_size"], settings["depth_range_mm"],
                         settings["box_margin"], str(path))


def load_network(path: str | Path, device: str = "auto") -> "Pose3DNetwork | LiftingNetwork":
    """The 3D network of a checkpoint, whichever student it holds (``config.student``): the
    volumetric network (:func:`load_pose3d`) or a keypoint lifter
    (:func:`train.predict_lift.load_lifter_network`). A missing file names the command that
    makes one."""
    if not Path(path).is_file():
        raise CheckpointError(f"no 3D network checkpoint at {path}: `make train` makes the "
                              "volumetric network's, `make train STUDENT=lifter` a keypoint "
                              "lifter's (or pass --checkpoint PATH; make: CHECKPOINT=path)")
    student = load_checkpoint(path, map_location="cpu")["config"].get("student", "volumetric")
    return NETWORK_LOADERS[student](path, device)


def metric_poses(coords: np.ndarray, affine: np.ndarray, K: np.ndarray, dist: np.ndarray | None,
                 size: int, depth_range: float, joint_set: JointSet
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, 3) crop-normalised predictions -> (N, J, 3) root-relative camera-frame poses in mm
    of the reference skeleton, and (N,) the root depth (mm) that gives them.

    :func:`train.targets.decode` is affine in the root depth Z: pose(Z) = Z a + b. The sum of
    bone lengths sum_b |Z u_b + v_b| is convex in Z; Z is found by bisection where it equals the
    reference sum (Z >= 0), and the pose is then scaled to the reference sum exactly (which only
    matters where even Z = 0 gives a larger skeleton: a depth spread beyond a body's). The
    bones and their reference are stage 1's
    (:func:`pipeline.geometry.triangulation.reference_lengths`): a set without declared lengths
    is sized by the H36M-17 bones it contains, its other bones keep the network's proportions,
    as its labels were (``normalize_scale``)."""
    n = len(coords)
    ref = reference_lengths(joint_set)
    have = np.isfinite(ref)
    target = float(ref[have].sum())
    root = joint_set.root
    b = decode(coords, affine, K, dist, np.zeros(n), size, depth_range, root)
    a = decode(coords, affine, K, dist, np.ones(n), size, depth_range, root) - b
    bones = joint_set.bones[have]
    u = a[:, bones[:, 1]] - a[:, bones[:, 0]]
    v = b[:, bones[:, 1]] - b[:, bones[:, 0]]

    def total(z: np.ndarray) -> np.ndarray:
        return np.linalg.norm(z[:, None, None] * u + v, axis=-1).sum(-1)

    lo, hi = np.zeros(n), np.full(n, 1e3)
    while n and (grow := total(hi) < target).any() and hi.max() < 1e9:
        hi = np.where(grow, hi * 4, hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = total(mid) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    z = (lo + hi) / 2
    pose = z[:, None, None] * a + b
    scale = target / np.maximum(total(z), 1e-9)
    return pose * scale[:, None, None], z * scale


NETWORK_LOADERS = {"volumetric": load_pose3d, "lifter": load_lifter_network}
"""``config.student`` of a checkpoint -> its loader for ``predict``."""
Network = Pose3DNetwork | LiftingNetwork
"""What ``predict`` runs: ``reads_images``, ``box_margin``, ``num_joints``, ``start_clip``,
``observe``, ``ready`` and ``estimate`` (the volumetric network's or the lifter's 3D step)."""


# --- person boxes -------------------------------------------------------------------------------

def square_box(box: np.ndarray, margin: float) -> np.ndarray:
    """(..., 4) boxes -> (..., 4) the enclosing squares grown by ``margin`` per side."""
    c, side = box_to_square(np.asarray(box, np.float64), margin)
    return np.concatenate([c - side[..., None] / 2, c + side[..., None] / 2], axis=-1)


def dataset_boxes(clip: Clip, frames: np.ndarray) -> np.ndarray | None:
    """(N, 4) the dataset's tight person boxes of ``frames`` (NaN beyond its ground truth), or
    None when the input has none."""
    gt = SequenceGroundTruth.find(clip.manifest, clip.seq)
    box = gt.camera_array(clip.camera, "bbox") if gt is not None else None
    if box is None:
        return None
    out = np.full((len(frames), 4), np.nan)
    ok = frames < len(box)
    out[ok] = box[frames[ok]]
    return out


def person_boxes(joints: np.ndarray, conf: np.ndarray, threshold: float) -> np.ndarray:
    """(N, 4) tight boxes of the joints at ``threshold`` or above; NaN rows where fewer than
    :data:`MIN_CONFIDENT_JOINTS` are, or where they span less than :data:`MIN_BOX_PX`
    (no person)."""
    ok = (conf >= threshold) & np.isfinite(joints).all(-1)
    out = np.full((len(joints), 4), np.nan)
    have = ok.sum(-1) >= MIN_CONFIDENT_JOINTS
    if have.any():
        pts = np.where(ok[have][..., None], joints[have], np.nan)
        out[have] = box_from_points(pts)
    small = (out[:, 2:] - out[:, :2]).max(-1) < MIN_BOX_PX
    out[small] = np.nan
    return out


def _detected(clip: Clip, frames: np.ndarray, det: "Detections", margin: float) -> np.ndarray:
    return square_box(det.person_box, margin)


def _dataset(clip: Clip, frames: np.ndarray, det: "Detections", margin: float) -> np.ndarray:
    box = dataset_boxes(clip, frames)
    if box is None:
        raise InputError(f"{clip.manifest.path}: --boxes dataset needs the dataset's person "
                         f"boxes (ground truth 'bbox'), which {clip.name} does not have")
    return square_box(box, margin)


BOX_SOURCES: dict[str, Callable[[Clip, np.ndarray, "Detections", float], np.ndarray]] = {
    "detected": _detected,
    "dataset": _dataset,
}
"""Where the 3D network's crop comes from (module docstring); called with the frame of every
detection row."""


# --- one chunk of frames ------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictOptions:
    """Settings of a run (the command line's options)."""

    detector: str = "auto"
    checkpoint_2d: str = "outputs/runs/pose2d/best.pt"
    detections: str | None = None
    allow_foreign_detector: bool = False
    device: str = "auto"
    batch_size: int = 32
    boxes: str = "detected"
    conf_threshold: float = 0.3
    smoothing: bool = False
    min_cutoff_hz: float = 1.0
    beta: float = 0.01
    video: bool = True
    overlay_height: int | None = None
    """Height of the overlay video's frames in pixels (None: the input's own, within
    ``train.pose_video.OVERLAY_HEIGHT_PX``)."""
    sheet_frames: int = 12
    max_frames: int | None = None
    progress: bool = True
    reference: str | None = None
    """What ``metrics.json`` scores against (``train.predict_score``): None (nothing, the default;
    the ground truth is not read), ``"ground-truth"`` or a stage-1 run folder."""


@dataclass
class Detections:
    """The detector's people of a chunk, one row per (frame, person), rows in frame order.

    Attributes:
        index: (M,) position of the row's frame in the chunk (every frame has a row).
        joints: (M, J, 2) pixels; conf: (M, J).
        person_box: (M, 4) tight box of the confident joints; NaN for a frame's only row when
            nobody was found there (:func:`person_boxes`).
    """

    index: np.ndarray
    joints: np.ndarray
    conf: np.ndarray
    person_box: np.ndarray


def detect_people(detector: Any, clip: Clip, frames: list[Frame], threshold: float
                  ) -> Detections:
    """People of a chunk: :func:`detect_several` for a multi-person detector (one that says
    ``multi_person``: ``mediapipe-people``, a detections file with a ``person`` column), else
    :func:`detect_one` (one row per frame)."""
    if getattr(detector, "multi_person", False):
        return detect_several(detector, clip, frames, threshold)
    return detect_one(detector, clip, frames, threshold)


def detect_one(detector: Any, clip: Clip, frames: list[Frame], threshold: float) -> Detections:
    """One person per frame from a single-person detector: first on the whole frame, then,
    where it found someone, once more on that person's box (grown by
    :data:`DETECTOR_BOX_MARGIN`). The dataset's ground-truth boxes are never read here: the
    crops of ``--boxes detected`` come from what the detector finds on its own."""
    idx = np.array([f.index for f in frames])
    images = [f.image for f in frames]
    keys = [clip.key(i) for i in idx]
    cam = clip.manifest.camera(clip.camera)
    whole = np.array([0.0, 0.0, cam.width - 1.0, cam.height - 1.0])
    joints, conf = detector.detect(images, square_box(np.repeat(whole[None], len(idx), 0), 0.0),
                                   keys)
    box = person_boxes(joints, conf, threshold)
    again = np.flatnonzero(np.isfinite(box).all(-1))
    if len(again):
        j2, c2 = detector.detect([images[i] for i in again],
                                 square_box(box[again], DETECTOR_BOX_MARGIN),
                                 [keys[i] for i in again])
        b2 = person_boxes(j2, c2, threshold)
        keep = np.isfinite(b2).all(-1)
        joints[again[keep]], conf[again[keep]], box[again[keep]] = j2[keep], c2[keep], b2[keep]
    return Detections(np.arange(len(frames)), np.asarray(joints, np.float64),
                      np.asarray(conf, np.float64), box)


def detect_several(detector: Any, clip: Clip, frames: list[Frame], threshold: float
                   ) -> Detections:
    """Every person the detector's ``detect_people`` finds in each whole frame (a person needs
    the joints :func:`person_boxes` asks for); a frame with nobody usable, or that could not be
    read, keeps one row with no box."""
    keys = [clip.key(f.index) for f in frames]
    found = detector.detect_people([f.image for f in frames], None, keys)
    box = person_boxes(np.asarray(found.joints, np.float64), np.asarray(found.conf, np.float64),
                       threshold)
    pixels = getattr(detector, "reads_images", True)  # precomputed 2D needs no frame
    readable = np.array([f.image is not None or not f.error or not pixels for f in frames], bool)
    usable = np.isfinite(box).all(-1) & (found.status == "") & (found.person >= 0) & \
        readable[found.index]
    someone = np.bincount(found.index[usable], minlength=len(frames)) > 0
    empty = np.flatnonzero(~someone)
    J = np.asarray(found.joints).shape[1]
    index = np.concatenate([found.index[usable], empty])
    order = np.argsort(index, kind="stable")
    cat = lambda a, fill: np.concatenate([np.asarray(a, np.float64)[usable], fill])  # noqa
    return Detections(index[order],
                      cat(found.joints, np.full((len(empty), J, 2), np.nan))[order],
                      cat(found.conf, np.zeros((len(empty), J)))[order],
                      cat(box, np.full((len(empty), 4), np.nan))[order])


def predict_chunk(clip: Clip, frames: list[Frame], detector: Any, net: "Network",
                  opts: PredictOptions, timing: dict[str, float] | None = None,
                  tracker: BoxTracker | None = None) -> dict[str, np.ndarray]:
    """Columns of :func:`poses_schema` for a chunk of frames of one clip, one row per frame and
    person found (at least one per frame), rows sorted by (frame, person) with ``person`` the
    track id (:func:`assign_tracks`); ``index`` is each row's position in ``frames``. The 3D
    columns are still NaN: ``net.estimate`` fills them (when ``net.ready``: a temporal lifter
    waits for the frames after the chunk). Adds the seconds spent in the detector to
    ``timing["detector_s"]``."""
    timing = {} if timing is None else timing
    J = net.num_joints
    t0 = time.perf_counter()
    det = detect_people(detector, clip, frames, opts.conf_threshold)
    timing["detector_s"] = timing.get("detector_s", 0.0) + time.perf_counter() - t0
    n = len(det.index)
    idx = np.array([frames[i].index for i in det.index], np.int64).reshape(n)
    box = BOX_SOURCES[opts.boxes](clip, idx, det, net.box_margin)
    # a network that reads no pixels (the lifter) does not need the frame where the detector
    # did not either (precomputed 2D)
    pixels = net.reads_images or getattr(detector, "reads_images", True)
    status = np.array([(frames[i].error or "") if pixels else "" for i in det.index],
                      dtype=object).reshape(n)
    nobody = (status == "") & ~np.isfinite(box).all(-1)
    status[nobody] = [f"no person detected in frame {i}" for i in idx[nobody]]
    cols = _empty_columns(n, J)
    cols.update(frame=idx, index=det.index, status=status, detector_joints_2d=det.joints,
                detector_conf=det.conf)
    rows = np.flatnonzero(status == "")
    cols["bbox"][rows] = box[rows]
    return assign_tracks(cols, tracker)


def assign_tracks(cols: dict[str, np.ndarray], tracker: BoxTracker | None) -> dict[str, np.ndarray]:
    """``cols`` (rows in frame order) with ``person`` set and rows sorted by (frame, person):
    the track id of :class:`train.tracking.BoxTracker` for each person's box (several people
    per frame), 0 for a single-person detector's pose (``tracker`` None), -1 for a row without
    a pose."""
    ok = cols["status"] == ""
    person = np.where(ok, 0, -1).astype(np.int64)
    if tracker is not None:
        for f in dict.fromkeys(cols["frame"][ok].tolist()):
            rows = np.flatnonzero(ok & (cols["frame"] == f))
            person[rows] = tracker.update(int(f), cols["bbox"][rows])
    order = np.lexsort((person, cols["frame"]))
    return {k: (v[order] if isinstance(v, np.ndarray) and v.shape[:1] == order.shape else v)
            for k, v in dict(cols, person=person).items()}


def _empty_columns(n: int, J: int) -> dict[str, np.ndarray]:
    nan = np.nan
    return {"bbox": np.full((n, 4), nan), "joints_3d": np.full((n, J, 3), nan),
            "joints_2d": np.full((n, J, 2), nan), "joints_conf": np.zeros((n, J)),
            "coords": np.full((n, J, 3), nan), "root_depth_mm": np.full(n, nan)}


# --- writing ------------------------------------------------------------------------------------

class PoseTable:
    """``poses.parquet`` written in parts (one per chunk, each renamed into place) and gathered
    into one file by :meth:`close`, also after an error: what was predicted is never lost."""

    def __init__(self, out: Path, num_joints: int) -> None:
        self.path = out / "poses.parquet"
        self.parts = out / ".poses-parts"
        shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True)
        self.schema = poses_schema(num_joints)
        self.rows = 0

    def append(self, clip: Clip, cols: dict[str, np.ndarray]) -> None:
        s = clip.seq
        cols = dict(cols, dataset=clip.manifest.dataset, subject=s.subject, action=s.action,
                    subaction=s.subaction, camera=clip.camera,
                    person=cols.get("person", np.zeros(len(cols["frame"]), np.int64)),
                    time_s=clip.time_s(cols["frame"]), image_file=clip.file_names(cols["frame"]))
        table = S.to_table(cols, self.schema)
        S.write_table_atomic(table, self.parts / f"part-{self.rows:09d}.parquet")
        self.rows += table.num_rows

    def close(self) -> Path:
        files = sorted(self.parts.glob("part-*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files]) if files else \
            self.schema.empty_table()
        S.write_table_atomic(table.cast(self.schema), self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path


@dataclass
class RunReport:
    """What a run wrote and measured (also ``out/predict.json``)."""

    out: str
    input: str
    detector: str
    checkpoint: str
    detector_reason: str = ""
    frames: int = 0
    predicted: int = 0
    frames_with_people: int = 0
    people: int = 0
    no_person: int = 0
    unreadable: int = 0
    seconds: float = 0.0
    frames_per_s: float = 0.0
    detector_frames_per_s: float = 0.0
    network_images_per_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None


def _sheet_frames(frames: np.ndarray, count: int) -> set[int]:
    return set(frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round()
                      .astype(int)].tolist()) if len(frames) else set()


# --- the run ------------------------------------------------------------------------------------

PREVIOUS_RUN_FILES = ("poses.parquet", "predict.json", "metrics.json", "contact_sheet.png",
                      "overlay*.mp4", "export")
"""What a run writes into its folder (``export/``: ``make export``'s): removed from an earlier
run before a new one writes, so nothing stale (another input's overlays, old exports or
metrics) is left beside the new results. Nothing else in the folder is touched."""


def clear_previous_run(out: Path) -> None:
    """Remove :data:`PREVIOUS_RUN_FILES` from ``out``."""
    for pattern in PREVIOUS_RUN_FILES:
        for path in out.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def build_detector(clips: list[Clip], opts: PredictOptions) -> tuple[Any, DetectorChoice]:
    """The 2D detector of the registry for the input (``auto`` resolved on its manifest) and
    the choice (its name and why ``auto`` chose it)."""
    m = clips[0].manifest
    dopts = DetectorOptions(checkpoint=opts.checkpoint_2d, detections=opts.detections,
                            device=opts.device, allow_foreign=opts.allow_foreign_detector)
    choice = resolve_detector(opts.detector, m, dopts)
    return make_detector(choice.name, m, dopts), choice


def check_joints(net: Any, checkpoint: str | Path, js: Any) -> None:
    """CheckpointError unless ``net`` predicts the input's joint set ``js``: as many joints and,
    for a lifter (which records the joints it reads), the same names in the same order."""
    if net.num_joints != js.num_joints:
        raise CheckpointError(f"{checkpoint}: the network predicts {net.num_joints} joints, the "
                              f"input's joint set {js.name} has {js.num_joints}")
    trained = getattr(net, "joint_names", ())
    if trained and tuple(trained) != tuple(js.names):
        raise CheckpointError(f"{checkpoint}: the lifter reads the joints {list(trained)}, the "
                              f"input's joint set {js.name} is {list(js.names)}")


def run_predict(clips: list[Clip], checkpoint: str | Path, out: str | Path,
                opts: PredictOptions = PredictOptions(), input_name: str = "",
                log: Callable[[str], None] | None = None) -> RunReport:
    """Predict on every clip; write ``poses.parquet``, the overlay video(s), ``contact_sheet.png``,
    ``predict.json`` (and ``metrics.json`` with ``opts.reference``: the manifest's 3D ground
    truth or a stage-1 run's labels, ``train.predict_score``) under ``out``.

    ``log`` receives the detector line (``detector: auto -> net: <why>``) before any frame is
    read; an earlier run's files in ``out`` are removed then (:func:`clear_previous_run`).
    Raises CheckpointError (wrong or damaged checkpoint), DetectorUnavailable or InputError (a
    reference that cannot be read) before any frame is read; an error while predicting is
    re-raised after everything predicted so far is written (``predict.json`` records it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.boxes not in BOX_SOURCES:
        raise ValueError(f"unknown box source {opts.boxes!r}; choose one of {list(BOX_SOURCES)}")
    check_reference(clips, opts.reference)
    unknown = [c.name for c in clips if not c.rate_known]
    if opts.smoothing and unknown:
        raise InputError(f"--smooth filters in Hz, and the frame rate of {unknown[0]} is not "
                         "known: pass --fps")
    net = load_network(checkpoint, opts.device)
    js = clips[0].manifest.joint_set
    check_joints(net, checkpoint, js)
    detector, choice = build_detector(clips, opts)
    det_name = choice.name
    if log is not None:
        log(choice.line())
    if opts.boxes == "dataset" and getattr(detector, "multi_person", False):
        raise ValueError(f"--boxes dataset is one box per frame; detector {det_name} finds "
                         "several people: use --boxes detected")
    clear_previous_run(out)
    report = RunReport(str(out), input_name, det_name, str(checkpoint), choice.reason)
    table, tiles = PoseTable(out, js.num_joints), []
    timing = {"images": 0, "detector_s": 0.0, "network_s": 0.0}
    t0 = time.perf_counter()
    try:
        for clip in clips:
            _run_clip(clip, detector, net, opts, table, tiles, report, timing, len(clips))
    except BaseException as e:
        report.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        report.seconds = time.perf_counter() - t0
        report.frames_per_s = report.frames / max(report.seconds, 1e-9)
        report.detector_frames_per_s = report.frames / max(timing["detector_s"], 1e-9)
        report.network_images_per_s = timing["images"] / max(timing["network_s"], 1e-9)
        report.files["poses"] = str(table.close())
        keep = np.linspace(0, len(tiles) - 1, min(len(tiles), opts.sheet_frames)).round()
        sheet = write_contact_sheet([tiles[int(i)] for i in keep], out / "contact_sheet.png")
        if sheet is not None:
            report.files["contact_sheet"] = str(sheet)
        if report.error is None:
            report.metrics = score_predictions(report.files["poses"], clips, net, out,
                                               opts.reference)
        (out / "predict.json").write_text(json.dumps(asdict(report), indent=2, default=str))
    return report


def _chunks(clip: Clip, frames: np.ndarray, size: int):
    buf: list[Frame] = []
    for fr in clip.read(frames.tolist()):
        buf.append(fr)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _run_clip(clip: Clip, detector: Any, net: "Network", opts: PredictOptions,
              table: PoseTable, tiles: list[np.ndarray], report: RunReport,
              timing: dict[str, float], n_clips: int) -> None:
    frames = clip.frames[:opts.max_frames]
    s = clip.seq
    name = "overlay.mp4" if n_clips == 1 else \
        f"overlay_{s.subject}_{s.action}_{s.subaction}_{clip.camera}.mp4"
    writer = _ClipWriter(clip, net, opts, table, tiles, report, timing,
                         OverlayVideo(Path(report.out) / name, clip.fps) if opts.video else None,
                         BoxTracker() if getattr(detector, "multi_person", False) else None,
                         _sheet_frames(frames, max(1, -(-opts.sheet_frames // n_clips))))
    net.start_clip()
    bar = tqdm(total=len(frames), unit="frame", desc=clip.name, disable=not opts.progress,
               dynamic_ncols=True)
    poses_before = report.predicted
    pending: list[tuple[list[Frame], dict[str, np.ndarray]]] = []
    try:
        for chunk in _chunks(clip, frames, max(opts.batch_size, MIN_CHUNK)):
            cols = predict_chunk(clip, chunk, detector, net, opts, timing, writer.tracker)
            net.observe(clip, chunk, cols, opts)
            pending.append((chunk, cols))
            while pending and net.ready(sum(len(c) for c, _ in pending[1:])):
                writer.write(*pending.pop(0))
                bar.update(len(writer.last))
        while pending:  # the clip's end: the last chunks' windows repeat their last frame
            writer.write(*pending.pop(0))
            bar.update(len(writer.last))
    finally:
        bar.close()
        report.people += writer.tracker.next_id if writer.tracker is not None else \
            int(report.predicted > poses_before)
        if writer.video is not None and (path := writer.video.close()) is not None:
            report.files[name] = str(path)


@dataclass
class _ClipWriter:
    """Estimates, smooths, writes and draws the chunks of one clip, in order."""

    clip: Clip
    net: "Network"
    opts: PredictOptions
    table: PoseTable
    tiles: list[np.ndarray]
    report: RunReport
    timing: dict[str, float]
    video: OverlayVideo | None
    tracker: BoxTracker | None
    sheet: set[int]
    smoothers: dict[int, OneEuroFilter] = field(default_factory=dict)
    last: list[Frame] = field(default_factory=list)

    def write(self, chunk: list[Frame], cols: dict[str, np.ndarray]) -> None:
        clip, opts = self.clip, self.opts
        self.net.estimate(clip, chunk, cols, opts, self.timing)
        cols.pop("_lift_pos", None)
        ok = cols["status"] == ""
        self.timing["images"] += int(ok.sum())
        if opts.smoothing:
            cols["joints_3d"] = smooth_tracks(cols, self.smoothers, clip.fps, opts)
        self.table.append(clip, cols)
        _count(self.report, chunk, ok, cols["index"])
        cam = clip.manifest.camera(clip.camera)
        for k, fr in enumerate(chunk):
            if self.video is None and fr.index not in self.sheet:
                continue
            img = _overlay(fr, cols, cols["index"] == k, clip, cam, self.tracker is not None,
                           opts.overlay_height)
            if self.video is not None:
                self.video.write(img)
            if fr.index in self.sheet:
                self.tiles.append(img)
        self.last = chunk


def smooth_tracks(cols: dict[str, np.ndarray], smoothers: dict[int, OneEuroFilter], fps: float,
                  opts: PredictOptions) -> np.ndarray:
    """``joints_3d`` of a chunk (rows in frame order) One-Euro filtered per track: each track
    id keeps its own filter in ``smoothers`` across chunks; rows without a pose pass as they
    are."""
    out = np.array(cols["joints_3d"], np.float64)
    for r in np.flatnonzero(cols["person"] >= 0):
        t = int(cols["person"][r])
        f = smoothers.setdefault(t, OneEuroFilter(fps, opts.min_cutoff_hz, opts.beta))
        out[r] = f(out[r])
    return out


def root_positions(cols: dict[str, np.ndarray], rows: np.ndarray, cam: Any, root: int
                   ) -> np.ndarray:
    """(len(rows), 3) camera-frame root positions (mm of the reference skeleton) of ``rows``:
    the root's depth along the ray through the network's 2D root."""
    uv = cols["joints_2d"][rows, root]
    ok = np.isfinite(uv).all(-1)
    m = np.full((len(rows), 2), np.nan)
    if ok.any():
        m[ok] = pixels_to_normalized(uv[ok], cam.K, cam.dist)
    z = cols["root_depth_mm"][rows]
    return np.concatenate([m * z[:, None], z[:, None]], axis=1)


def _overlay(fr: Frame, cols: dict[str, np.ndarray], rows: np.ndarray, clip: Clip, cam: Any,
             several: bool, height: int | None) -> np.ndarray:
    rows = np.flatnonzero(rows)
    js = clip.manifest.joint_set
    label = f"{clip.name} frame {fr.index}"
    if not several:  # one person: the single-person picture
        r = rows[0]
        return overlay_frame(fr.image, cols["joints_2d"][r], cols["bbox"][r],
                             cols["joints_3d"][r], js, label, (cam.width, cam.height),
                             height=height)
    rows = rows[cols["person"][rows] >= 0]
    return overlay_frame(fr.image, cols["joints_2d"][rows], cols["bbox"][rows],
                         cols["joints_3d"][rows], js, label + f", {len(rows)} people",
                         (cam.width, cam.height), root_positions(cols, rows, cam, js.root),
                         cols["person"][rows], height)


def _count(report: RunReport, chunk: list[Frame], ok: np.ndarray, index: np.ndarray) -> None:
    """Frames and people: ``predicted`` counts poses (rows), ``no_person`` and ``unreadable``
    frames."""
    posed = set(index[ok].tolist())
    unreadable = sum(f.image is None and k not in posed for k, f in enumerate(chunk))
    with_pose = len(posed)
    report.frames += len(chunk)
    report.predicted += int(ok.sum())
    report.frames_with_people += with_pose
    report.unreadable += unreadable
    report.no_person += len(chunk) - with_pose - unreadable

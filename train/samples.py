"""Samples: every labelled (sequence, camera, frame) of a split as arrays, loaded once.

One type, :class:`Samples`, serves training (:class:`train.data.PoseDataset` cuts augmented crops
from it), the trainer's validation and ``make eval`` (:mod:`train.evaluation` predicts on it and
measures the predictions). Two loaders fill it:

* :func:`load_manifest_samples`: a dataset's ground truth, read through
  :class:`pipeline.store.ground_truth.SequenceGroundTruth` (the one reader of the npz). Stored images are
  the original frames; the crop box is ``box_to_square(bbox, box_margin)`` of the tight GT box.
* :func:`load_shard_samples`: stage 1's pseudo-label Parquet shards. Each row's ``image_path`` is a
  crop reference ``crops/....parquet#<row>`` into a crop shard (``pipeline/store/crop_shards.py``; or
  a crop JPEG), relative to the run folder or absolute, cut from the square ``bbox`` by
  ``crop_affine(center, side, jpeg_size)``; ``joints_2d`` gives x, y, ``joints_3d`` (or the
  ``target_column``) gives z, ``valid`` weights the loss. No ground truth (unless the
  ``target_column`` is ``gt_joints_3d``: then the samples are ground truth, ``label_source``
  "gt"), no source frames.

Both carry the pose the labels stand for, ``label_3d`` (the ground truth, or the pseudo-label),
and its root depth, so that the trainer's validation measures a network against the labels of
its own kind (``label_source``: "gt" or "pseudo") through the one protocol of
:mod:`train.evaluation`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from pipeline.geometry.cameras import box_to_square, pixels_to_normalized
from pipeline.store.ground_truth import SequenceGroundTruth
from pipeline.joints import JointSet
from pipeline.store.manifest import Manifest, ManifestError, Sequence
from pipeline.store.shards import column_array, read_shards

DEFAULT_BOX_MARGIN = 0.15
"""Share of the tight box's longer side added on each side before squaring (the paper's crop)."""


@dataclass(frozen=True)
class Samples:
    """Every sample of a split, one row per sample (N rows, J joints).

    Row attributes (arrays with N rows):
        image_paths: (N,) str, absolute paths of the stored images (image files, or crop
            references ``<crop shard>#<row>``, read by ``pipeline.store.crop_shards.StoredImages``).
        center: (N, 2) square crop box centre, original-image pixels; side: (N,) its side.
        joints_2d: (N, J, 2) label positions, original-image pixels (NaN when unknown).
        conf: (N, J) the 2D detector's confidence of ``joints_2d`` (shards), 1 for ground truth
            2D, 0 where unknown: what the keypoint-lifting student reads beside the 2D.
        z_rel: (N, J) root-relative depth label, mm (canonical units for pseudo-labels).
        valid: (N, J) bool, label usable for training.
        K: (N, 3, 3), dist: (N, 5) camera intrinsics (NaN when unknown).
        root_depth: (N,) root depth of the label in the camera frame: the ground truth's (mm)
            for manifest rows; for shard rows the depth at which the pseudo-label's 3D matches
            its 2D (:func:`label_root_depth`, label units). NaN when unknown.
        gt_3d: (N, J, 3) float64 ground-truth root-relative camera-frame pose, mm (NaN when
            unknown: always for shard rows).
        label_3d: (N, J, 3) float64 root-relative camera-frame pose of the label: ``gt_3d`` for
            manifest rows, the pseudo-label (``joints_3d``, NaN where not valid) for shard rows.
        subject, action, camera: (N,) str. frame: (N,) int64 source frame index.
        sequence: (N,) str, the continuous sequence a row belongs to (subject, action,
            subaction, camera; for shards also the partner camera and the person): rows of one
            sequence in frame order are a video (the temporal lifter's windows).
        seq_index: (N,) int64 index into ``sequences`` (-1 for shard rows).

    Shared attributes:
        stored_as_crop: True when each stored image is the crop of its square box (shards),
            False when it is the original frame (manifest).
        manifest: where the frames come from (None for shards).
        sequences: the manifest sequences ``seq_index`` points into.
        label_source: "gt" (manifest) or "pseudo" (shards): what ``label_3d`` is.
    """

    image_paths: np.ndarray
    center: np.ndarray
    side: np.ndarray
    joints_2d: np.ndarray
    conf: np.ndarray
    z_rel: np.ndarray
    valid: np.ndarray
    K: np.ndarray
    dist: np.ndarray
    root_depth: np.ndarray
    gt_3d: np.ndarray
    label_3d: np.ndarray
    subject: np.ndarray
    action: np.ndarray
    camera: np.ndarray
    frame: np.ndarray
    sequence: np.ndarray
    seq_index: np.ndarray
    stored_as_crop: bool = False
    manifest: Manifest | None = None
    sequences: tuple[Sequence, ...] = ()
    label_source: str = "gt"

    _SHARED = ("stored_as_crop", "manifest", "sequences", "label_source")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def gt_mask(self) -> np.ndarray:
        """(N, J) bool: joints with a finite ground truth (the evaluation mask)."""
        return np.isfinite(self.gt_3d).all(-1)

    @property
    def label_mask(self) -> np.ndarray:
        """(N, J) bool: joints with a finite label pose (the validation mask)."""
        return np.isfinite(self.label_3d).all(-1)

    def subset(self, idx: np.ndarray) -> "Samples":
        """The rows ``idx`` (an index or boolean array)."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if f.name not in self._SHARED})

    def evenly_spaced(self, max_samples: int) -> "Samples":
        """At most ``max_samples`` rows spread evenly over the split (0 = all)."""
        if max_samples <= 0 or max_samples >= len(self):
            return self
        return self.subset(np.linspace(0, len(self) - 1, max_samples).round().astype(np.int64))

    def holdout_starts(self, share: float) -> dict[tuple[str, str], int]:
        """First held-out frame of each sequence (subject, action): the last ``share`` of its
        frames, at least one frame, at most all but one. A validation split for a recording of
        one subject (:meth:`from_frames` gives the rows; every camera of a frame lands on the
        same side). ValueError naming the sequence when it has a single frame."""
        if not 0 < share < 1:
            raise ValueError(f"frame hold-out share must be in (0, 1), got {share}")
        starts = {}
        for subject, action in sorted({(str(a), str(b)) for a, b in zip(self.subject,
                                                                        self.action)}):
            rows = (self.subject == subject) & (self.action == action)
            frames = np.unique(self.frame[rows])
            if len(frames) < 2:
                raise ValueError(f"sequence {subject} {action}: {len(frames)} frame(s), too few "
                                 "to hold frames out for validation")
            n_held = min(len(frames) - 1, max(1, int(np.ceil(len(frames) * share))))
            starts[subject, action] = int(frames[len(frames) - n_held])
        return starts

    def from_frames(self, starts: dict[tuple[str, str], int]) -> np.ndarray:
        """(N,) bool: rows at or after their sequence's frame in ``starts`` (absent: none)."""
        first = np.array([starts.get((str(a), str(b)), np.iinfo(np.int64).max)
                          for a, b in zip(self.subject, self.action)], np.int64)
        return self.frame >= first


# --- from a manifest's ground truth ----------------------------------------------------------------

def load_manifest_samples(manifest: Manifest, split: str, box_margin: float = DEFAULT_BOX_MARGIN,
                          frame_step: int = 1, max_frames: int | None = None,
                          need_2d: bool = True) -> Samples:
    """Ground-truth samples of every (sequence, camera, frame) of a manifest split.

    Frames: the ground truth's frame axis, every ``seq.frames.step * frame_step``-th, at most
    ``max_frames`` per sequence and camera. Needs ``bbox``, ``cameras`` and 3D (``joints_3d_cam``
    or world joints with extrinsics) in each npz, and ``joints_2d`` when ``need_2d`` (training
    labels; evaluation does without: its ``joints_2d`` is then NaN).
    """
    if frame_step < 1:
        raise ValueError("frame_step must be >= 1")
    seqs = manifest.sequences_in(split)
    if not seqs:
        raise ManifestError(f"{manifest.path}: split {split!r} has no sequences")
    keys = ("bbox", "cameras") + (("joints_2d",) if need_2d else ())
    blocks = [_camera_block(manifest, SequenceGroundTruth.require(manifest, seq, *keys), s, cam,
                            frame_step, max_frames)
              for s, seq in enumerate(seqs) for cam in seq.cameras]
    cat = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    j3d, j2d = cat.pop("j3d"), cat.pop("j2d")
    r = manifest.joint_set.root
    center, side = box_to_square(cat.pop("bbox"), box_margin)
    gt_3d = j3d - j3d[:, r:r + 1]
    return Samples(
        center=center, side=side, joints_2d=j2d, conf=np.isfinite(j2d).all(-1).astype(np.float64),
        z_rel=j3d[..., 2] - j3d[:, r:r + 1, 2],
        valid=np.isfinite(j2d).all(-1) & np.isfinite(j3d).all(-1), root_depth=j3d[:, r, 2].copy(),
        gt_3d=gt_3d, label_3d=gt_3d, stored_as_crop=False, manifest=manifest,
        sequences=tuple(seqs), label_source="gt", **cat)


def _camera_block(manifest: Manifest, gt: SequenceGroundTruth, s: int, cam: str,
                  frame_step: int, max_frames: int | None) -> dict[str, np.ndarray]:
    """The rows of one (sequence, camera): arrays of length F' keyed like :class:`Samples`,
    plus ``bbox`` (F', 4), ``j2d`` (F', J, 2) and ``j3d`` (F', J, 3) camera-frame mm."""
    seq = gt.seq
    c = gt.require_camera(cam)
    frames = np.arange(0, gt.num_frames, seq.frames.step * frame_step)[:max_frames]
    n, J = len(frames), manifest.joint_set.num_joints
    camera = manifest.camera(cam, seq.subject)
    j2d = gt.arrays["joints_2d"][c, frames] if "joints_2d" in gt.arrays else np.full((n, J, 2),
                                                                                     np.nan)
    return {
        "image_paths": np.array([str(manifest.frame_path(seq, cam, int(f))) for f in frames],
                                dtype=object),
        "bbox": gt.arrays["bbox"][c, frames].astype(np.float64),
        "j2d": np.asarray(j2d, np.float64), "j3d": gt.camera_joints_3d(cam, frames),
        "K": np.broadcast_to(camera.K, (n, 3, 3)).astype(np.float64),
        "dist": np.broadcast_to(camera.dist[:5], (n, 5)).astype(np.float64),
        "subject": np.full(n, seq.subject).astype(str), "action": np.full(n, seq.action).astype(str),
        "camera": np.full(n, cam).astype(str), "frame": frames.astype(np.int64),
        "sequence": np.full(n, f"{seq.subject}|{seq.action}|{seq.subaction}|{cam}").astype(str),
        "seq_index": np.full(n, s, np.int64)}


# --- from stage-1 shards ---------------------------------------------------------------------------

_SHARD_COLUMNS = ["subject", "action", "subaction", "camera", "partner_camera", "frame",
                  "image_path", "bbox", "joints_2d", "joints_2d_conf", "valid", "person"]

TARGET_COLUMNS = {"joints_3d": "pseudo", "gt_joints_3d": "gt"}
"""Shard column giving the 3D label -> what the labels are (``Samples.label_source``): stage
1's pseudo-labels, or the ground truth stage 1 copied beside them (a supervised run)."""


def load_shard_samples(shards: str | os.PathLike, joint_set: JointSet,
                       target_column: str = "joints_3d", manifest: Manifest | None = None,
                       subjects: tuple[str, ...] | None = None) -> Samples:
    """Pseudo-labels of a stage-1 run (its folder or its ``shards/`` folder) as samples.

    Args:
        shards: run folder (holding ``shards/``) or the ``shards`` folder itself.
        joint_set: the joint order of the shards (its root gives the depth reference).
        target_column: column giving z and ``label_3d``, ``joints_3d`` (pseudo-labels,
            ``label_source`` "pseudo") or ``gt_joints_3d`` (the ground truth: "gt").
        manifest: optional; fills K and dist from the rows' camera ids.
        subjects: optional subject filter.
    """
    if target_column not in TARGET_COLUMNS:
        raise ValueError(f"target_column must be one of {list(TARGET_COLUMNS)}, got "
                         f"{target_column!r}")
    root = Path(shards)
    run_dir = root.parent if root.name == "shards" else root
    filters = [("subject", "in", list(subjects))] if subjects else None
    table = read_shards(root, filters=filters, columns=_SHARD_COLUMNS + [target_column])
    if table.num_rows == 0:
        raise ValueError(f"{root}: no shard rows" + (f" for subjects {subjects}" if subjects else ""))
    if table.column(target_column).null_count:
        raise ValueError(f"{root}: column {target_column!r} has nulls (no ground truth in these "
                         "shards); use target_column: joints_3d")
    bbox = column_array(table, "bbox").astype(np.float64)
    j2d = column_array(table, "joints_2d").astype(np.float64)
    j3d = column_array(table, target_column).astype(np.float64)
    J, r = joint_set.num_joints, joint_set.root
    if j2d.shape[1] != J:
        raise ValueError(f"{root}: shards hold {j2d.shape[1]} joints, joint set {joint_set.name} "
                         f"has {J}")
    z_rel = j3d[..., 2] - j3d[:, r:r + 1, 2]
    labelled = column_array(table, "valid").astype(bool)
    # A row whose first root was hidden is measured from a fallback root (JointSet.root_names,
    # stage 1): the trainer measures from the first root only, so such rows carry no label.
    valid = (labelled & labelled[:, [r]] & np.isfinite(j2d).all(-1)
             & np.isfinite(z_rel) & np.isfinite(z_rel[:, [r]]))
    text = {k: np.array(table.column(k).to_pylist()).astype(str)
            for k in ("subject", "action", "camera")}
    person = np.array(table.column("person").fill_null(-1).to_pylist(), np.int64)
    sequence = np.array(["|".join(map(str, key)) for key in zip(
        text["subject"], text["action"], table.column("subaction").to_pylist(), text["camera"],
        table.column("partner_camera").to_pylist(), person)]).astype(str)
    conf = np.nan_to_num(column_array(table, "joints_2d_conf").astype(np.float64))
    K, dist = _intrinsics(manifest, text["camera"])
    n = len(j2d)
    label = np.where(valid[..., None], j3d - j3d[:, r:r + 1], np.nan)
    return Samples(
        image_paths=np.array([p if os.path.isabs(p) else str(run_dir / p)
                              for p in table.column("image_path").to_pylist()], dtype=object),
        center=(bbox[:, :2] + bbox[:, 2:]) / 2, side=(bbox[:, 2:] - bbox[:, :2]).max(axis=1),
        joints_2d=j2d, conf=conf, z_rel=z_rel, valid=valid, K=K, dist=dist, sequence=sequence,
        root_depth=label_root_depth(j2d, label, K, dist, r), gt_3d=np.full((n, J, 3), np.nan),
        label_3d=label, frame=np.asarray(table.column("frame").to_numpy(), np.int64),
        seq_index=np.full(n, -1, np.int64), stored_as_crop=True,
        label_source=TARGET_COLUMNS[target_column], **text)


def label_root_depth(joints_2d: np.ndarray, rel_3d: np.ndarray, K: np.ndarray, dist: np.ndarray,
                     root: int = 0) -> np.ndarray:
    """(N,) root depth at which a root-relative camera-frame pose matches its 2D, label units.

    A pseudo-label stores its pose root-relative (no root depth) in its own units. With the
    joints' undistorted normalised coordinates ``m_j``, the pose put at root depth D has
    ``P_j - P_root = D (m_j - m_root) + m_j z_j``; D is the least-squares solution of that equal
    to the label's ``x, y`` over the finite non-root joints. Decoding a prediction with this D
    (:func:`train.targets.decode`) gives it in the label's frame and units. NaN where it is not
    determined (no intrinsics, no finite joint).

    Args:
        joints_2d: (N, J, 2) pixels; rel_3d: (N, J, 3) root-relative pose (NaN = unknown);
        K: (N, 3, 3), dist: (N, 5) intrinsics of each row's camera.
    """
    n = len(joints_2d)
    m = np.full(joints_2d.shape, np.nan)
    cams = np.concatenate([K.reshape(n, 9), dist], axis=1)
    for cam in np.unique(cams[np.isfinite(cams).all(1)], axis=0):
        sel = (cams == cam).all(1)
        m[sel] = pixels_to_normalized(np.nan_to_num(joints_2d[sel]), cam[:9].reshape(3, 3),
                                      cam[9:])
    m[~np.isfinite(joints_2d)] = np.nan
    a = m - m[:, root:root + 1]
    b = rel_3d[..., :2] - m * rel_3d[..., 2:3]
    ok = np.isfinite(a).all(-1) & np.isfinite(b).all(-1)
    ok[:, root] = False
    aa = np.where(ok[..., None], a * a, 0.0).sum((1, 2))
    ab = np.where(ok[..., None], a * b, 0.0).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(aa > 0, ab / aa, np.nan)


def _intrinsics(manifest: Manifest | None, cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 3) K and (N, 5) distortion of each row's camera id (NaN without a manifest)."""
    n = len(cameras)
    K, dist = np.full((n, 3, 3), np.nan), np.full((n, 5), np.nan)
    if manifest is not None:
        for cam in np.unique(cameras):
            c = manifest.camera(str(cam))
            K[cameras == cam], dist[cameras == cam] = c.K, c.dist[:5]
    return K, dist

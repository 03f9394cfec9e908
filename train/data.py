"""Training and validation samples: labels preloaded as arrays, crops cut and augmented on the fly.

Two sources fill one :class:`LabelArrays` (every label of a split as numpy arrays, loaded once):

* ``shards`` (:func:`load_shard_labels`): stage 1's pseudo-label Parquet shards. Each row's
  ``image_path`` is a crop JPEG (relative to the run folder holding ``shards/`` and
  ``config.json``, or absolute) cut from the original image's square ``bbox`` by
  ``crop_affine(center, side, jpeg_size)``; ``joints_2d`` gives x, y, ``joints_3d`` (or the
  ``target_column``) gives z, ``valid`` weights the loss.
* ``manifest`` (:func:`load_manifest_labels`): a dataset's ground truth (npz per sequence with
  ``joints_2d`` (C, F, J, 2), ``joints_3d_cam`` (C, F, J, 3) or ``joints_3d_world`` plus
  extrinsics, ``bbox`` (C, F, 4) tight, ``cameras`` (C,)), full frames cropped on the fly around
  ``box_to_square(bbox, margin)``.

:class:`PoseDataset` returns, for an index ``(epoch, i)`` (the epoch seeds the augmentation, so a
sample is a pure function of seed, epoch and index whatever the worker that makes it)::

    {"image":  float32 (3, S, S), BGR channels normalised by IMAGE_MEAN / IMAGE_STD,
     "target": float32 (J, 3) normalised (x, y, z) (train.targets), 0 where the weight is 0,
     "weight": float32 (J, 3) label weight (z weight 0 for 2D-only labels),
     "meta":   {"index": int64, "affine": float64 (2, 3) image -> crop pixels of the
                un-flipped crop, "flipped": bool, "depth_range": float64 mm,
                "K": float64 (3, 3), "dist": float64 (5,) (NaN when unknown),
                "root_depth": float64 mm, "joints_2d": float32 (J, 2) label in image pixels,
                "gt_3d": float32 (J, 3) root-relative camera-frame ground truth, mm (NaN when
                unknown), "box_side": float64 pixels}}

``decode(flip_coords(target) if flipped else target, affine, K, dist, root_depth, S,
depth_range)`` returns the label in mm (see tests/test_targets.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.cameras import box_to_square, crop_affine, invert_affine, world_to_camera
from pipeline.joints import JointSet
from pipeline.manifest import Manifest, ManifestError
from pipeline.shards import column_array, read_shards
from train.targets import encode, flip_affine, flip_coords

IMAGE_MEAN = np.array([0.406, 0.456, 0.485], np.float32) * 255.0  # BGR order
IMAGE_STD = np.array([0.225, 0.224, 0.229], np.float32) * 255.0


def normalize_images(images_bgr: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) or (S, S, 3) BGR uint8 -> (N, 3, S, S) or (3, S, S) float32 normalised."""
    x = (np.asarray(images_bgr, np.float32) - IMAGE_MEAN) / IMAGE_STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


# --- labels ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelArrays:
    """Every label of a split, one row per sample (N rows, J joints).

    Attributes:
        image_paths: (N,) str, absolute paths of the stored images.
        stored_as_crop: True when each stored image is the crop of its square box (shards),
            False when it is the original frame (manifest).
        center: (N, 2) square box centre, original-image pixels; side: (N,) its side.
        joints_2d: (N, J, 2) label positions, original-image pixels.
        z_rel: (N, J) root-relative depth, mm (canonical units for pseudo-labels).
        valid: (N, J) bool, label usable.
        K: (N, 3, 3), dist: (N, 5) camera intrinsics (NaN when unknown).
        root_depth: (N,) ground-truth root depth, mm (NaN when unknown).
        gt_3d: (N, J, 3) ground-truth root-relative camera-frame pose, mm (NaN when unknown).
        groups: (N,) str, the action of each sample (for per-action tables).
    """

    image_paths: np.ndarray
    stored_as_crop: bool
    center: np.ndarray
    side: np.ndarray
    joints_2d: np.ndarray
    z_rel: np.ndarray
    valid: np.ndarray
    K: np.ndarray
    dist: np.ndarray
    root_depth: np.ndarray
    gt_3d: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.image_paths)

    def subset(self, idx: np.ndarray) -> "LabelArrays":
        """The rows ``idx`` (an index or boolean array)."""
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self)
                                if f.name != "stored_as_crop"})

    def evenly_spaced(self, max_samples: int) -> "LabelArrays":
        """At most ``max_samples`` rows spread evenly over the split (0 = all)."""
        if max_samples <= 0 or max_samples >= len(self):
            return self
        return self.subset(np.linspace(0, len(self) - 1, max_samples).round().astype(np.int64))


def load_shard_labels(shards: str | os.PathLike, joint_set: JointSet,
                      target_column: str = "joints_3d", manifest: Manifest | None = None,
                      subjects: tuple[str, ...] | None = None) -> LabelArrays:
    """Pseudo-labels of a stage-1 run (its folder or its ``shards/`` folder) as arrays.

    Args:
        shards: run folder (holding ``shards/``) or the ``shards`` folder itself.
        joint_set: the joint order of the shards (its root gives the depth reference).
        target_column: column giving z, ``joints_3d`` (pseudo-labels) or ``gt_joints_3d``.
        manifest: optional; fills K and dist from the rows' camera ids.
        subjects: optional subject filter.
    """
    if target_column not in ("joints_3d", "gt_joints_3d"):
        raise ValueError(f"target_column must be joints_3d or gt_joints_3d, got {target_column!r}")
    root = Path(shards)
    run_dir = root.parent if root.name == "shards" else root
    filters = [("subject", "in", list(subjects))] if subjects else None
    cols = ["subject", "action", "camera", "image_path", "bbox", "joints_2d", target_column,
            "valid"]
    table = read_shards(root, filters=filters, columns=cols)
    if table.num_rows == 0:
        raise ValueError(f"{root}: no shard rows" + (f" for subjects {subjects}" if subjects else ""))
    if table.column(target_column).null_count:
        raise ValueError(f"{root}: column {target_column!r} has nulls (no ground truth in these "
                         "shards); use target_column: joints_3d")
    paths = np.array([p if os.path.isabs(p) else str(run_dir / p)
                      for p in table.column("image_path").to_pylist()], dtype=object)
    bbox = column_array(table, "bbox").astype(np.float64)
    center = (bbox[:, :2] + bbox[:, 2:]) / 2
    side = (bbox[:, 2:] - bbox[:, :2]).max(axis=1)
    j2d = column_array(table, "joints_2d").astype(np.float64)
    j3d = column_array(table, target_column).astype(np.float64)
    J = joint_set.num_joints
    if j2d.shape[1] != J:
        raise ValueError(f"{root}: shards hold {j2d.shape[1]} joints, joint set {joint_set.name} "
                         f"has {J}")
    valid = column_array(table, "valid").astype(bool)
    z_rel = j3d[..., 2] - j3d[:, joint_set.root:joint_set.root + 1, 2]
    valid &= np.isfinite(j2d).all(-1) & np.isfinite(z_rel) & np.isfinite(z_rel[:, [joint_set.root]])
    n = len(paths)
    K = np.full((n, 3, 3), np.nan)
    dist = np.full((n, 5), np.nan)
    if manifest is not None:
        cams = np.array(table.column("camera").to_pylist())
        for cam in np.unique(cams):
            c = manifest.camera(str(cam))
            K[cams == cam], dist[cams == cam] = c.K, c.dist[:5]
    return LabelArrays(
        image_paths=paths, stored_as_crop=True, center=center, side=side, joints_2d=j2d,
        z_rel=z_rel, valid=valid, K=K, dist=dist, root_depth=np.full(n, np.nan),
        gt_3d=np.full((n, J, 3), np.nan), groups=np.array(table.column("action").to_pylist()))


def load_manifest_labels(manifest: Manifest, split: str, box_margin: float = 0.15,
                         frame_step: int = 1) -> LabelArrays:
    """Ground-truth labels of every (sequence, camera, frame) of a manifest split.

    Frames are those of the ground-truth npz, every ``frame_step``-th frame after the
    sequence's own step. Needs ``ground_truth.joints_3d`` in the manifest.
    """
    js = manifest.joint_set
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "paths", "j2d", "j3d", "bbox", "K", "dist", "groups")}
    seqs = manifest.sequences_in(split)
    if not seqs:
        raise ManifestError(f"{manifest.path}: split {split!r} has no sequences")
    for seq in seqs:
        gt_path = manifest.gt_path(seq)
        if gt_path is None:
            raise ManifestError(f"{manifest.path}: ground_truth.joints_3d is needed for training "
                                "from a manifest")
        gt = _load_npz(gt_path)
        for key in ("joints_2d", "bbox", "cameras"):
            if key not in gt:
                raise ManifestError(f"{gt_path}: key {key!r} is missing (sequence {seq.key})")
        gt_cams = [str(c) for c in gt["cameras"]]
        num_frames = gt["joints_2d"].shape[1]
        frames = np.arange(0, num_frames, seq.frames.step * frame_step)
        for cam in seq.cameras:
            if cam not in gt_cams:
                raise ManifestError(f"{gt_path}: camera {cam} of sequence {seq.key} is not in "
                                    f"its 'cameras' {gt_cams}")
            c = gt_cams.index(cam)
            camera = manifest.camera(cam, seq.subject)
            parts["paths"].append(np.array([str(manifest.frame_path(seq, cam, int(f)))
                                            for f in frames], dtype=object))
            parts["j2d"].append(gt["joints_2d"][c, frames])
            parts["j3d"].append(_camera_frame_joints(gt, c, camera, frames, gt_path))
            parts["bbox"].append(gt["bbox"][c, frames])
            parts["K"].append(np.broadcast_to(camera.K, (len(frames), 3, 3)))
            parts["dist"].append(np.broadcast_to(camera.dist[:5], (len(frames), 5)))
            parts["groups"].append(np.full(len(frames), seq.action, dtype=object))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    j3d = cat["j3d"].astype(np.float64)
    r = js.root
    center, side = box_to_square(cat["bbox"].astype(np.float64), box_margin)
    j2d = cat["j2d"].astype(np.float64)
    valid = np.isfinite(j2d).all(-1) & np.isfinite(j3d).all(-1)
    return LabelArrays(
        image_paths=cat["paths"], stored_as_crop=False, center=center, side=side, joints_2d=j2d,
        z_rel=j3d[..., 2] - j3d[:, r:r + 1, 2], valid=valid, K=cat["K"].astype(np.float64),
        dist=cat["dist"].astype(np.float64), root_depth=j3d[:, r, 2].copy(),
        gt_3d=(j3d - j3d[:, r:r + 1]).astype(np.float32), groups=cat["groups"].astype(str))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ManifestError(f"ground-truth file {path} does not exist (run `make data`?)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _camera_frame_joints(gt: dict[str, np.ndarray], c: int, camera: Any, frames: np.ndarray,
                         path: Path) -> np.ndarray:
    """(F', J, 3) camera-frame joints: ``joints_3d_cam`` or world joints through extrinsics."""
    if "joints_3d_cam" in gt:
        return gt["joints_3d_cam"][c, frames]
    if "joints_3d_world" in gt and camera.has_extrinsics:
        return world_to_camera(gt["joints_3d_world"][frames], camera.R, camera.t)
    raise ManifestError(f"{path}: needs joints_3d_cam, or joints_3d_world and extrinsics for "
                        f"camera {camera.name}")


# --- augmentation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentSpec:
    """Random augmentation (the ``augment`` section of a training config).

    Attributes:
        scale: box side multiplied by a factor uniform in [1 - scale, 1 + scale].
        rotation_deg: in-plane rotation uniform in [-rotation_deg, rotation_deg] ...
        rotation_prob: ... applied with this probability.
        flip_prob: probability of a horizontal flip (joints swapped left/right).
        color: per-channel gain uniform in [1 - color, 1 + color].
        occluder_prob: probability of pasting 1-3 random rectangles (synthetic occluders).
        shift: box centre moved by up to this fraction of the side in x and y.
    """

    scale: float = 0.25
    rotation_deg: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    color: float = 0.2
    occluder_prob: float = 0.0
    shift: float = 0.0


@dataclass(frozen=True)
class Augmentation:
    scale: float = 1.0
    rotation_deg: float = 0.0
    flip: bool = False
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift: tuple[float, float] = (0.0, 0.0)
    occluders: int = 0


def sample_augmentation(rng: np.random.Generator, spec: AugmentSpec) -> Augmentation:
    rot = rng.uniform(-spec.rotation_deg, spec.rotation_deg)
    rot = rot if rng.uniform() < spec.rotation_prob else 0.0
    occ = int(rng.integers(1, 4)) if rng.uniform() < spec.occluder_prob else 0
    return Augmentation(
        scale=float(rng.uniform(1 - spec.scale, 1 + spec.scale)), rotation_deg=float(rot),
        flip=bool(rng.uniform() < spec.flip_prob),
        gain=tuple(rng.uniform(1 - spec.color, 1 + spec.color, 3).tolist()),
        shift=tuple(rng.uniform(-spec.shift, spec.shift, 2).tolist()), occluders=occ)


def paste_occluders(img: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Draw ``count`` random solid or noisy rectangles in place on a (S, S, 3) uint8 crop."""
    S = img.shape[0]
    for _ in range(count):
        w, h = (rng.uniform(0.1, 0.35, 2) * S).astype(int) + 1
        x0, y0 = rng.integers(0, S - w + 1), rng.integers(0, S - h + 1)
        if rng.uniform() < 0.5:
            img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
        else:
            img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- the dataset -------------------------------------------------------------------------------

class PoseDataset(Dataset):
    """Crops and targets of a :class:`LabelArrays`; indexed by ``(epoch, i)`` or plain ``i``.

    Args:
        labels: the preloaded labels.
        input_size: S, crop side in pixels.
        joint_set: gives the flip permutation.
        augment: None for evaluation (deterministic, centred crop).
        use_depth: False for 2D training (z weight 0).
        depth_range_mm: z normalisation at augmentation scale 1.
        seed: augmentation seed.
    """

    def __init__(self, labels: LabelArrays, input_size: int, joint_set: JointSet,
                 augment: AugmentSpec | None = None, use_depth: bool = True,
                 depth_range_mm: float = 2000.0, seed: int = 0) -> None:
        self.labels, self.S, self.joint_set = labels, int(input_size), joint_set
        self.augment, self.use_depth = augment, use_depth
        self.depth_range_mm, self.seed = float(depth_range_mm), int(seed)
        self.flip_perm = joint_set.flip_permutation

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        L = self.labels
        rng = np.random.default_rng((self.seed, int(epoch), int(i)))
        aug = sample_augmentation(rng, self.augment) if self.augment else Augmentation()
        stored = cv2.imread(L.image_paths[i], cv2.IMREAD_COLOR)
        if stored is None:
            raise FileNotFoundError(f"cannot read image {L.image_paths[i]} (sample {i})")
        center = L.center[i] + np.asarray(aug.shift) * L.side[i]
        A = crop_affine(center, L.side[i] * aug.scale, self.S, aug.rotation_deg)
        A_img = A
        if L.stored_as_crop:  # stored image = crop of the square box: compose with its inverse
            A0 = crop_affine(L.center[i], L.side[i], stored.shape[1])
            A_img = _compose(A, invert_affine(A0))
        A_warp = flip_affine(A_img, self.S) if aug.flip else A_img
        crop = cv2.warpAffine(stored, A_warp, (self.S, self.S), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        if aug.occluders:
            paste_occluders(crop, aug.occluders, rng)
        if aug.gain != (1.0, 1.0, 1.0):
            crop = np.clip(crop * np.asarray(aug.gain, np.float32), 0, 255)
        depth_range = self.depth_range_mm * aug.scale
        target = encode(L.joints_2d[i][None], L.z_rel[i][None], A[None], self.S, depth_range)[0]
        weight = np.repeat(L.valid[i][:, None].astype(np.float32), 3, axis=1)
        if not self.use_depth:
            weight[:, 2] = 0.0
        if aug.flip:
            target = flip_coords(target, self.flip_perm)
            weight = weight[self.flip_perm]
        target = np.where(weight > 0, target, 0.0).astype(np.float32)
        meta = {"index": np.int64(i), "affine": A, "flipped": aug.flip,
                "depth_range": np.float64(depth_range), "K": L.K[i], "dist": L.dist[i],
                "root_depth": np.float64(L.root_depth[i]),
                "joints_2d": L.joints_2d[i].astype(np.float32), "gt_3d": L.gt_3d[i],
                "box_side": np.float64(L.side[i] * aug.scale)}
        return {"image": normalize_images(crop), "target": torch.from_numpy(target),
                "weight": torch.from_numpy(weight), "meta": meta}


def _compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(2, 3) affines -> the affine of ``A`` after ``B``."""
    M = A[:, :2] @ B[:, :2]
    return np.concatenate([M, (A[:, :2] @ B[:, 2] + A[:, 2])[:, None]], axis=1)


# --- sampling and loading ------------------------------------------------------------------------

class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a seeded permutation per epoch (or the identity), this
    rank's share of it, starting at sample ``start`` (a resumed epoch skips what was seen).

    ``set_epoch`` is called by the trainer in the main process before each epoch, so the
    sampler works with persistent workers.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> np.ndarray:
        idx = (np.random.default_rng((self.seed, 7919, self.epoch)).permutation(self.n)
               if self.shuffle else np.arange(self.n))
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order()[self.start:]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.start)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_loader(dataset: PoseDataset, sampler: EpochSampler, batch_size: int, workers: int,
                device: torch.device, drop_last: bool) -> DataLoader:
    """A DataLoader over ``(epoch, index)`` keys; pinned memory on CUDA, persistent workers."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=workers > 0, worker_init_fn=_worker_init,
                      prefetch_factor=4 if workers > 0 else None)

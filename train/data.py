"""Training samples as network inputs: crops cut and augmented on the fly, targets, loaders.

:class:`PoseDataset` turns a :class:`train.samples.Samples` (every label of a split, loaded once
from stage-1 shards or from a manifest's ground truth) into, for an index ``(epoch, i)`` (the
epoch seeds the augmentation, so a sample is a pure function of seed, epoch and index whatever
the worker that makes it)::

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
depth_range)`` returns the label in mm (see tests/test_trainer.py, tests/test_targets.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.geometry.cameras import crop_affine, invert_affine
from pipeline.store.crop_shards import StoredImages
from pipeline.joints import JointSet
from train.samples import Samples
from train.targets import encode, flip_affine, flip_coords

IMAGE_MEAN = np.array([0.406, 0.456, 0.485], np.float32) * 255.0  # BGR order
IMAGE_STD = np.array([0.225, 0.224, 0.229], np.float32) * 255.0


def normalize_images(images_bgr: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) or (S, S, 3) BGR uint8 -> (N, 3, S, S) or (3, S, S) float32 normalised."""
    x = (np.asarray(images_bgr, np.float32) - IMAGE_MEAN) / IMAGE_STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


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
    """Crops and targets of a :class:`Samples`; indexed by ``(epoch, i)`` or plain ``i``.

    Args:
        labels: the preloaded samples.
        input_size: S, crop side in pixels.
        joint_set: gives the flip permutation.
        augment: None for evaluation (deterministic, centred crop).
        use_depth: False for 2D training (z weight 0).
        depth_range_mm: z normalisation at augmentation scale 1.
        seed: augmentation seed.
    """

    def __init__(self, labels: Samples, input_size: int, joint_set: JointSet,
                 augment: AugmentSpec | None = None, use_depth: bool = True,
                 depth_range_mm: float = 2000.0, seed: int = 0) -> None:
        self.labels, self.S, self.joint_set = labels, int(input_size), joint_set
        self.augment, self.use_depth = augment, use_depth
        self.depth_range_mm, self.seed = float(depth_range_mm), int(seed)
        self.flip_perm = joint_set.flip_permutation
        self._images: tuple[int, StoredImages] | None = None

    @property
    def images(self) -> StoredImages:
        """This process's reader of the stored images (crop shards or files): each DataLoader
        worker opens its own files and caches its own row groups."""
        if self._images is None or self._images[0] != os.getpid():
            self._images = (os.getpid(), StoredImages())
        return self._images[1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        L = self.labels
        rng = np.random.default_rng((self.seed, int(epoch), int(i)))
        aug = sample_augmentation(rng, self.augment) if self.augment else Augmentation()
        stored = self.images.read(L.image_paths[i])
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
                "joints_2d": L.joints_2d[i].astype(np.float32),
                "gt_3d": L.gt_3d[i].astype(np.float32),
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

    With ``blocks`` (each sample's read unit, :func:`pipeline.store.crop_shards.crop_blocks`: the
    crop row group it lies in) the permutation is local, as WebDataset's shard shuffle plus
    shuffle buffer: blocks in a random order, then samples shuffled within windows of
    ``window`` consecutive samples, so a batch draws from a few row groups and each group is
    read about once per epoch (sequential I/O) instead of once per sample.

    ``set_epoch`` is called by the trainer in the main process before each epoch, so the
    sampler works with persistent workers.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, blocks: np.ndarray | None = None,
                 window: int = 512) -> None:
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.blocks, self.window = blocks, int(window)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> np.ndarray:
        if not self.shuffle:
            idx = np.arange(self.n)
        else:
            rng = np.random.default_rng((self.seed, 7919, self.epoch))
            idx = rng.permutation(self.n)
            if self.blocks is not None:
                idx = _block_shuffle(rng, idx, self.blocks, self.window)
        return idx[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order()[self.start:]:
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.start)


def _block_shuffle(rng: np.random.Generator, idx: np.ndarray, blocks: np.ndarray, window: int
                   ) -> np.ndarray:
    """``idx`` (a permutation) regrouped by block in a random block order, then shuffled within
    windows of ``window`` samples."""
    rank = rng.permutation(int(blocks.max()) + 1)[blocks[idx]]
    idx = idx[np.argsort(rank, kind="stable")]
    for s in range(0, len(idx), window):
        idx[s:s + window] = rng.permutation(idx[s:s + window])
    return idx


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

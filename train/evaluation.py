"""The evaluation protocol: the one owner of "predict on samples, then measure".

Both the trainer's validation (:meth:`train.trainer.Trainer`, each epoch) and ``make eval``
(:mod:`eval.evaluate`, which adds PSS, per-action tables, baselines and files) call
:func:`evaluate_samples`; only the :class:`train.samples.Samples` they pass differ (the split).

Protocol (the paper's):
    - one sample per (sequence, camera, frame) of a manifest split
      (:func:`train.samples.load_manifest_samples`);
    - the crop: the square box of the sample (the ground-truth box grown by the margin), cut with
      ``cv2.warpAffine(img, crop_affine(center, side, S), (S, S))``, S = the model's input size;
    - the network's crop-normalised (x, y, z) are decoded to root-relative camera-frame mm by
      :func:`train.targets.decode`, with the **ground-truth root depth** and the intrinsics;
    - per sample: every metric of :data:`eval.metrics.ALIGNMENTS` against the root-relative
      camera-frame ground truth over its finite joints (:func:`pose_metric_table`) and,
      optionally, the 2D error in original-image pixels (:func:`image_metric_table`).
Frames that cannot be read give no prediction: NaN rows, left out of every mean.

The same protocol measures a network against **pseudo-labels** (the self-supervised run's
validation: samples of :func:`train.samples.load_shard_samples`, ``label_source == "pseudo"``):
the crop is re-cut from the stored crop JPEG through the same box, the prediction is decoded
with the root depth at which the pseudo-label's 3D matches its 2D
(:func:`train.samples.label_root_depth`), and the metrics are taken against the pseudo-label
(root-relative, its valid joints, its units) and its 2D. No ground truth is read.

Optionally the decoded poses pass through the refinement unit (:mod:`train.refiner`) before the
3D metrics (``refine``, :func:`refined`): the same samples, crops, decoding and metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from eval.metrics import pose_metrics
from pipeline.geometry.cameras import crop_affine, invert_affine
from pipeline.store.crop_shards import StoredImages
from pipeline.store.frames import read_frames
from train.infer import predict
from train.model import PoseNet
from train.samples import Samples
from train.targets import coords_to_image_pixels, decode

PredictFn = Callable[[np.ndarray], np.ndarray]
"""(B, S, S, 3) uint8 BGR crops -> (B, J, 3) crop-normalised (x, y, z) coordinates."""

RefineFn = Callable[[np.ndarray], np.ndarray]
"""(N, J, 3) root-relative camera-frame poses -> (N, J, 3) refined poses, same units (the
refinement unit, :class:`train.refiner.Refiner`); NaN rows stay NaN."""


def model_predictor(model: PoseNet, batch_size: int = 64) -> PredictFn:
    """The :data:`PredictFn` of a network (:func:`train.infer.predict`, eval mode, no grad)."""
    def fn(crops: np.ndarray) -> np.ndarray:
        coords, _ = predict(model, crops, batch_size)
        return np.asarray(coords)

    return fn


# --- crops ------------------------------------------------------------------------------------------

def cut_crop(image: np.ndarray, center: np.ndarray, side: float, size: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image -> (size, size, 3) crop of the square box and its (2, 3) affine."""
    A = crop_affine(center, side, size)
    crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop, A


def _compose(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The (2, 3) affine of ``A`` applied after ``B``."""
    return np.concatenate([A[:, :2] @ B[:, :2], (A[:, :2] @ B[:, 2] + A[:, 2])[:, None]], 1)


def cut_sample_crop(image: np.ndarray, samples: Samples, i: int, size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Crop of sample ``i``'s square box from its stored image (the original frame, or the crop
    of that box for shard rows) and the (2, 3) affine original-image pixels -> crop pixels."""
    center, side = samples.center[i], float(samples.side[i])
    if not samples.stored_as_crop:
        return cut_crop(image, center, side, size)
    A = crop_affine(center, side, size)
    warp = _compose(A, invert_affine(crop_affine(center, side, image.shape[1])))
    crop = cv2.warpAffine(image, warp, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop, A


def _stored_images(samples: Samples) -> Iterator[tuple[int, np.ndarray | None]]:
    """(sample index, stored image or None when unreadable) of every sample, in order: crop
    JPEGs for shard rows, the manifest's frames (image folders or videos) otherwise."""
    if samples.stored_as_crop:
        images = StoredImages()
        for i, path in enumerate(samples.image_paths):
            yield i, images.read(path)
        return
    if samples.manifest is None:
        raise ValueError("evaluation needs the samples' source frames (load_manifest_samples) "
                         "or their stored crops (load_shard_samples)")
    for start, stop in _runs(samples):
        seq = samples.sequences[int(samples.seq_index[start])]
        frames = samples.frame[start:stop].tolist()
        for i, fr in zip(range(start, stop), read_frames(samples.manifest, seq,
                                                         str(samples.camera[start]), frames)):
            yield i, fr.image


def _runs(samples: Samples) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of consecutive rows of one (sequence, camera)."""
    key = np.char.add(samples.seq_index.astype(str), np.char.add("|", samples.camera.astype(str)))
    bounds = np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1, [len(samples)]])
    yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())


def iter_crops(samples: Samples, size: int, chunk: int = 256
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (sample indices (B,), crops (B, size, size, 3) uint8 BGR, affines (B, 2, 3)) in
    chunks of at most ``chunk`` samples; images that cannot be read are left out (their
    samples never appear). Images: :func:`_stored_images`, cut by :func:`cut_sample_crop`."""
    idx_buf: list[int] = []
    crop_buf: list[np.ndarray] = []
    aff_buf: list[np.ndarray] = []
    for i, image in _stored_images(samples):
        if image is not None:
            crop, A = cut_sample_crop(image, samples, i, size)
            idx_buf.append(i)
            crop_buf.append(crop)
            aff_buf.append(A)
        if len(idx_buf) == chunk:
            yield np.array(idx_buf), np.stack(crop_buf), np.stack(aff_buf)
            idx_buf, crop_buf, aff_buf = [], [], []
    if idx_buf:
        yield np.array(idx_buf), np.stack(crop_buf), np.stack(aff_buf)


# --- predictions --------------------------------------------------------------------------------

def predict_coords(predict_fn: PredictFn, samples: Samples, size: int, chunk: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Crop-normalised predictions (N, J, 3) and the crops' affines (N, 2, 3), float64; NaN rows
    for samples whose frame could not be read."""
    J = samples.gt_3d.shape[1]
    coords = np.full((len(samples), J, 3), np.nan)
    affine = np.full((len(samples), 2, 3), np.nan)
    for idx, crops, A in iter_crops(samples, size, chunk):
        c = np.asarray(predict_fn(crops), dtype=np.float64)
        if c.shape != (len(idx), J, 3):
            raise ValueError(f"model returned {c.shape}, expected ({len(idx)}, {J}, 3)")
        coords[idx], affine[idx] = c, A
    return coords, affine


def decode_poses(coords: np.ndarray, affine: np.ndarray, samples: Samples, size: int,
                 depth_range: float) -> np.ndarray:
    """(N, J, 3) crop-normalised predictions -> (N, J, 3) root-relative camera-frame poses,
    decoded with each sample's label root depth (the ground truth's, mm; or the pseudo-label's,
    its units) and intrinsics (NaN rows stay NaN)."""
    out = np.full(coords.shape, np.nan)
    have = np.flatnonzero(np.isfinite(coords).all(axis=(1, 2)))
    if len(have):
        root = samples.manifest.joint_set.root if samples.manifest is not None else 0
        out[have] = decode(coords[have], affine[have], samples.K[have], samples.dist[have],
                           samples.root_depth[have], size, depth_range, root=root)
    return out


# --- metrics per sample ---------------------------------------------------------------------------

def pose_metric_table(poses: np.ndarray, samples: Samples) -> dict[str, np.ndarray]:
    """Every metric of :data:`eval.metrics.ALIGNMENTS` per sample: name -> (N,), against the
    samples' label pose ``label_3d`` (the ground truth, or the pseudo-label) over its finite
    joints; NaN for samples without a prediction or label.

    Args:
        poses: (N, J, 3) root-relative camera-frame predictions (NaN rows: none).
    """
    have = np.isfinite(poses).all(axis=(1, 2))
    return pose_metrics(np.nan_to_num(poses), samples.label_3d,
                        samples.label_mask & have[:, None])


def image_metric_table(coords: np.ndarray, affine: np.ndarray, samples: Samples, size: int,
                       pck_threshold_px: float) -> dict[str, np.ndarray]:
    """2D error per sample: ``px_error`` (N,) mean joint distance to ``joints_2d`` in
    original-image pixels, ``pck_px`` (N,) share of joints within ``pck_threshold_px``; over
    the joints with a finite 2D label, NaN for samples without a prediction."""
    uv = coords_to_image_pixels(coords[..., :2], affine, size)
    px = np.linalg.norm(uv - samples.joints_2d, axis=-1)                       # (N, J)
    ok = np.isfinite(px)
    n = ok.sum(1)
    mean = np.where(ok, px, 0.0).sum(1) / np.maximum(n, 1)
    pck = (ok & (np.where(ok, px, np.inf) <= pck_threshold_px)).sum(1) / np.maximum(n, 1)
    return {"px_error": np.where(n > 0, mean, np.nan), "pck_px": np.where(n > 0, pck, np.nan)}


@dataclass(frozen=True)
class SampleEvaluation:
    """What :func:`evaluate_samples` measured.

    Attributes:
        coords: (N, J, 3) crop-normalised predictions; affine: (N, 2, 3) their crops' affines.
        poses: (N, J, 3) root-relative camera-frame predictions, mm (None for a 2D network).
        metrics: metric name -> (N,) per-sample values (NaN where not measurable).
    """

    coords: np.ndarray
    affine: np.ndarray
    poses: np.ndarray | None
    metrics: dict[str, np.ndarray]

    @property
    def predicted(self) -> np.ndarray:
        """(N,) bool: samples with a prediction (their frame was read)."""
        return np.isfinite(self.coords).all(axis=(1, 2))

    def means(self) -> dict[str, float]:
        """Mean of each metric over the samples where it is finite, and ``n`` (predicted)."""
        out = {k: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")
               for k, v in self.metrics.items()}
        out["n"] = int(self.predicted.sum())
        return out


def refined(result: SampleEvaluation, refine: RefineFn, samples: Samples) -> SampleEvaluation:
    """``result`` with its poses passed through ``refine`` and its 3D metrics measured again
    (the 2D metrics, of the network's own coordinates, are kept)."""
    if result.poses is None:
        raise ValueError("refinement needs 3D poses (evaluate with with_3d=True)")
    poses = np.asarray(refine(result.poses), dtype=np.float64)
    if poses.shape != result.poses.shape:
        raise ValueError(f"refiner returned {poses.shape}, expected {result.poses.shape}")
    return SampleEvaluation(result.coords, result.affine, poses,
                            {**result.metrics, **pose_metric_table(poses, samples)})


def evaluate_samples(predict_fn: PredictFn, samples: Samples, size: int, depth_range: float,
                     with_3d: bool = True, pck_threshold_px: float | None = None,
                     chunk: int = 256, refine: RefineFn | None = None) -> SampleEvaluation:
    """Predict on ``samples`` and measure: the one evaluation protocol (module docstring).

    Args:
        predict_fn: crops -> crop-normalised coordinates (:func:`model_predictor`).
        samples: the split to measure: manifest samples (against the ground truth) or shard
            samples (against the pseudo-labels; ``samples.label_source``).
        size: S, the network's input side; depth_range: mm per unit of z (the config's).
        with_3d: decode to mm and add the :data:`eval.metrics.ALIGNMENTS` metrics.
        pck_threshold_px: add the 2D metrics (``px_error``, ``pck_px``) with this threshold.
        chunk: crops per call of ``predict_fn``.
        refine: refine the decoded poses before the 3D metrics (:func:`refined`).
    """
    coords, affine = predict_coords(predict_fn, samples, size, chunk)
    metrics: dict[str, np.ndarray] = {}
    if pck_threshold_px is not None:
        metrics.update(image_metric_table(coords, affine, samples, size, pck_threshold_px))
    poses = decode_poses(coords, affine, samples, size, depth_range) if with_3d else None
    if poses is not None:
        metrics.update(pose_metric_table(poses, samples))
    result = SampleEvaluation(coords, affine, poses, metrics)
    return refined(result, refine, samples) if refine is not None else result

"""2D detectors for stage 1: the interface, the oracle and the project's own 2D network.

A detector turns a batch of frames of one camera into 2D joints in the H36M-17 order:

    detect(images, boxes, keys) -> joints_2d (N, J, 2) distorted pixels, conf (N, J) in [0, 1]

``images`` are BGR uint8 frames (None for a frame that could not be read), ``boxes`` the square
person boxes [x_min, y_min, x_max, y_max] the job cut the crops from, ``keys`` identify each
frame. A detector that finds no person returns NaN joints and zero confidence for that frame.

Back-ends:
    gt   oracle: the dataset's ground-truth 2D plus Gaussian noise of ``noise_px`` pixels and a
         share ``outlier_rate`` of joints moved to random places in the person box (ablations,
         tests); needs the manifest's ground truth.
    net  the project's own 2D network (``make train-2d``), run on the person crop; confidence is
         the heatmap's.
    file, mediapipe  see pipeline/detect/registry.py, which also holds the registry of every back-end
         (``pipeline.detect.registry.DETECTORS``, ``make_detector``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.geometry.cameras import crop_affine
from pipeline.store.ground_truth import SequenceGroundTruth
from pipeline.store.manifest import Manifest, Sequence


@dataclass(frozen=True)
class FrameKey:
    dataset: str
    subject: str
    action: str
    subaction: str
    camera: str
    frame: int


class Detector(Protocol):
    """``num_joints``: the joint count it returns (the stage-1 preflight refuses a detector whose
    count differs from the manifest's joint set)."""

    name: str
    num_joints: int

    def detect(self, images: list[np.ndarray | None], boxes: np.ndarray, keys: list[FrameKey]
               ) -> tuple[np.ndarray, np.ndarray]:
        ...


class DetectorUnavailable(RuntimeError):
    """The requested detector cannot run here (missing checkpoint, optional package ...)."""


def ground_truth_2d(manifest: Manifest, seq: Sequence, camera: str) -> np.ndarray | None:
    """(F, J, 2) ground-truth 2D of one camera, or None where the dataset has none."""
    gt = SequenceGroundTruth.find(manifest, seq)
    return gt.camera_array(camera, "joints_2d") if gt is not None else None


def _stable_seed(*parts: object) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


class OracleDetector:
    """Ground-truth 2D with controlled noise and outliers (deterministic per frame and seed)."""

    name = "gt"

    def __init__(self, manifest: Manifest, noise_px: float = 0.0, outlier_rate: float = 0.0,
                 seed: int = 0):
        if manifest.gt_path(manifest.sequences[0]) is None:
            raise DetectorUnavailable(f"{manifest.path}: DETECTOR=gt needs ground_truth.joints_3d "
                                      "(with joints_2d) in the manifest")
        self.manifest, self.noise_px, self.outlier_rate, self.seed = (
            manifest, float(noise_px), float(outlier_rate), int(seed))
        self._seqs = {(s.subject, s.action, s.subaction): s for s in manifest.sequences}
        self.num_joints = manifest.joint_set.num_joints

    def detect(self, images, boxes, keys):
        J = self.manifest.joint_set.num_joints
        joints = np.full((len(keys), J, 2), np.nan, np.float32)
        conf = np.zeros((len(keys), J), np.float32)
        for i, k in enumerate(keys):
            gt = ground_truth_2d(self.manifest, self._seqs[(k.subject, k.action, k.subaction)],
                                 k.camera)
            if gt is None or k.frame >= len(gt) or images[i] is None:
                continue
            rng = np.random.default_rng(_stable_seed(self.seed, k.subject, k.action,
                                                     k.subaction, k.camera, k.frame))
            x = gt[k.frame].astype(np.float64)
            x = x + rng.normal(scale=self.noise_px, size=x.shape) if self.noise_px > 0 else x
            if self.outlier_rate > 0:
                out = rng.uniform(size=J) < self.outlier_rate
                lo, hi = boxes[i, :2], boxes[i, 2:]
                x[out] = rng.uniform(lo, hi, size=(int(out.sum()), 2))
            joints[i] = x
            conf[i] = 1.0
        return joints, conf


TRAIN_2D_SPLITS = ("train", "val")
"""The splits ``make train-2d`` reads (``data.split`` and ``val.split`` of
``train/configs/demo2d_r18w32_96px.yaml``)."""


def is_manifest_file(manifest: Manifest) -> bool:
    """Whether ``manifest`` was read from a manifest file (not built around footage, whose
    ``path`` is the video or image folder)."""
    return Path(manifest.path).suffix.lower() in (".yaml", ".yml")


def why_not_train_2d(manifest: Manifest) -> str | None:
    """Why ``make train-2d MANIFEST=<manifest>`` cannot train the 2D network on ``manifest``'s
    dataset (footage, no 2D ground truth, a missing split), or None where it can."""
    if not is_manifest_file(manifest):
        return f"{manifest.path} is footage, not a manifest with 2D ground truth"
    if manifest.synthetic:
        return None  # renderable: make train-2d renders its frames and ground truth first
    missing = [s for s in TRAIN_2D_SPLITS if s not in manifest.splits]
    if missing:
        return (f"{manifest.path} has no {' / '.join(map(repr, missing))} split (make train-2d "
                f"trains on {TRAIN_2D_SPLITS[0]!r} and validates on {TRAIN_2D_SPLITS[1]!r})")
    gt = manifest.gt_path(manifest.sequences[0]) if manifest.sequences else None
    if gt is None or not gt.exists():
        return f"{manifest.path} has no 2D ground truth (ground_truth.joints_3d files)"
    try:
        with np.load(gt) as z:
            names = z.files
    except (OSError, ValueError) as e:
        return f"its ground truth {gt} cannot be read ({type(e).__name__})"
    if "joints_2d" not in names:
        return f"{manifest.path} has no 2D ground truth ({gt} holds no 'joints_2d')"
    return None


def detector_alternatives(manifest: Manifest | None) -> str:
    """The detectors to choose instead of a 2D network that cannot run on ``manifest``'s
    dataset: ``make train-2d`` only where it can work (:func:`why_not_train_2d`), MediaPipe,
    a detections file; spelled for both ``predict``/``pipeline`` options and ``make``."""
    ways = ["--detector mediapipe (make: DETECTOR=mediapipe)",
            "precomputed detections, --detector file --detections PATH (make: DETECTOR=file "
            "DETECTIONS=path)"]
    why = why_not_train_2d(manifest) if manifest is not None else "the manifest is unknown"
    if why is None:
        ways.insert(0, "train it on this dataset's 2D ground truth (make train-2d "
                       f"MANIFEST={manifest.path})")
    text = "Choose one of: " + "; ".join(ways) + "."
    if why is not None:
        text += f" (make train-2d cannot help: {why}.)"
    if manifest is not None and is_manifest_file(manifest):
        text += " `make detector-check` measures a detector on a sample first."
    return text


def foreign_network_message(checkpoint: str | Path, trained_on: tuple[str, ...] | None,
                            dataset: str, manifest: Manifest | None = None) -> str:
    """Why the 2D network is refused on ``dataset``, and the alternatives (DetectorUnavailable)."""
    where = f" (input {manifest.path})" if manifest is not None else ""
    was = (f"was trained on dataset(s) {list(trained_on)}" if trained_on else
           "does not record the dataset it was trained on (written before issue 18)")
    return (f"2D network checkpoint {checkpoint} {was}, not on {dataset!r}{where}: a network "
            "trained on rendered frames is far off on other footage and its confidences do not "
            f"flag it. {detector_alternatives(manifest)} Or, knowingly, "
            "--allow-foreign-detector (JobConfig.allow_foreign_detector).")


def network_datasets(checkpoint: str | Path) -> tuple[str, ...] | None:
    """The datasets the 2D network checkpoint was trained on (None when it does not say);
    DetectorUnavailable when the file is missing or unreadable."""
    from train.checkpoint import CheckpointError, load_checkpoint, trained_datasets

    try:
        return trained_datasets(load_checkpoint(checkpoint, map_location="cpu"))
    except CheckpointError as e:
        raise DetectorUnavailable(str(e)) from None


class NetDetector:
    """The project's 2D network (train/, ``make train-2d``) on square person crops.

    Built for a manifest's ``dataset`` it refuses a checkpoint trained on other data (or one that
    does not say what it was trained on) unless ``allow_foreign``."""

    name = "net"

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 64,
                 threads: int | None = 1, dataset: str | None = None,
                 allow_foreign: bool = False, manifest: Manifest | None = None):
        """``device``: "auto" (the GPU when torch sees one, else the CPU), "cpu", "cuda:0" ...;
        ``threads``: CPU threads of this process (one per Dask worker by default);
        ``dataset``: the manifest's dataset name the detections are for (None: not checked)."""
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise DetectorUnavailable(
                f"2D network checkpoint {checkpoint} does not exist. "
                + detector_alternatives(manifest))
        import torch

        from train.checkpoint import (CheckpointError, load_checkpoint, model_from_state,
                                      trained_datasets)

        try:
            state = load_checkpoint(checkpoint, map_location="cpu")
        except CheckpointError as e:
            raise DetectorUnavailable(str(e)) from None
        self.trained_on = trained_datasets(state)
        if dataset is not None and not allow_foreign and dataset not in (self.trained_on or ()):
            raise DetectorUnavailable(foreign_network_message(checkpoint, self.trained_on,
                                                              dataset, manifest))
        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.config = model_from_state(state, str(checkpoint), device=device)
        self.num_joints = int(self.model.spec.num_joints)
        self.batch_size = batch_size
        self.crop_size = int(self.config["model"]["input_size"])

    def detect(self, images, boxes, keys):
        from train.infer import predict
        from train.targets import coords_to_image_pixels

        n = len(keys)
        J = self.model.spec.num_joints
        joints = np.full((n, J, 2), np.nan, np.float32)
        conf = np.zeros((n, J), np.float32)
        ok = [i for i in range(n) if images[i] is not None]
        if not ok:
            return joints, conf
        S = self.crop_size
        A = crop_affine((boxes[ok, :2] + boxes[ok, 2:]) / 2, boxes[ok, 2] - boxes[ok, 0], S)
        crops = np.stack([cv2.warpAffine(images[i], A[j], (S, S), flags=cv2.INTER_LINEAR)
                          for j, i in enumerate(ok)])
        coords, c = predict(self.model, crops, batch_size=self.batch_size)
        joints[ok] = coords_to_image_pixels(np.asarray(coords)[..., :2], A, S).astype(np.float32)
        conf[ok] = np.asarray(c, np.float32)
        return joints, conf

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
    file, mediapipe  see pipeline/detectors.py, which also holds the registry of every back-end
         (``pipeline.detectors.DETECTORS``, ``make_detector``).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.cameras import crop_affine
from pipeline.ground_truth import SequenceGroundTruth
from pipeline.manifest import Manifest, Sequence


@dataclass(frozen=True)
class FrameKey:
    dataset: str
    subject: str
    action: str
    subaction: str
    camera: str
    frame: int


class Detector(Protocol):
    name: str

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


class NetDetector:
    """The project's 2D network (train/, ``make train-2d``) on square person crops."""

    name = "net"

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 64,
                 threads: int | None = 1):
        """``device``: "auto" (the GPU when torch sees one, else the CPU), "cpu", "cuda:0" ...;
        ``threads``: CPU threads of this process (one per Dask worker by default)."""
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise DetectorUnavailable(
                f"2D network checkpoint {checkpoint} does not exist: run `make train-2d` first, or "
                "choose DETECTOR=gt (oracle, ablations) / DETECTOR=file / DETECTOR=mediapipe")
        import torch

        from train.infer import load_model

        if threads:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.config = load_model(str(checkpoint), device=device)
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

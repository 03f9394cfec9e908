"""The one reader of a sequence's ground-truth npz (layout: ``pipeline/store/manifest.py``).

Every consumer (the oracle detector, the dataset's person boxes in stage 1, the shards'
``gt_joints_3d`` column, the trainer's supervised and 2D labels, ``make eval``) reads ground
truth through :class:`SequenceGroundTruth`, so the layout and its error messages live here.

Arrays, all indexed by source frame:

- ``joints_3d_world`` (F, J, 3) mm, world frame of the manifest's extrinsics;
- optional ``joints_3d_cam`` (C, F, J, 3) mm, camera frames (used before world + extrinsics);
- optional ``joints_2d`` (C, F, J, 2) distorted pixels and ``bbox`` (C, F, 4) tight person box;
- ``cameras`` (C,) camera ids, the order of the per-camera arrays' first axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.geometry.cameras import world_to_camera
from pipeline.store.manifest import Manifest, ManifestError, Sequence


@lru_cache(maxsize=64)
def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of one ground-truth npz, cached per process (read-only use)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class SequenceGroundTruth:
    """Ground truth of one sequence.

    Attributes:
        manifest, seq: where it belongs (extrinsics come from the manifest).
        path: the npz file.
        arrays: its arrays (see the module docstring).
    """

    manifest: Manifest
    seq: Sequence
    path: Path
    arrays: dict[str, np.ndarray]

    @classmethod
    def find(cls, manifest: Manifest, seq: Sequence) -> "SequenceGroundTruth | None":
        """The sequence's ground truth, or None where the manifest declares none or the file is
        absent (stage 1 and self-supervised training run without it)."""
        path = manifest.gt_path(seq)
        if path is None or not path.exists():
            return None
        return cls(manifest, seq, path, read_npz(str(path)))

    @classmethod
    def require(cls, manifest: Manifest, seq: Sequence, *keys: str) -> "SequenceGroundTruth":
        """The sequence's ground truth with ``keys`` present, else a ManifestError naming the
        manifest, the file, the sequence and the key."""
        path = manifest.gt_path(seq)
        if path is None:
            raise ManifestError(f"{manifest.path}: sequence {seq.key} needs ground truth "
                                "(ground_truth.joints_3d is not set)")
        if not path.exists():
            raise ManifestError(f"ground-truth file {path} of sequence {seq.key} does not exist "
                                "(run `make data` for the synthetic set)")
        gt = cls(manifest, seq, path, read_npz(str(path)))
        for key in keys:
            if key not in gt.arrays:
                raise ManifestError(f"{path}: key {key!r} is missing (sequence {seq.key})")
        return gt

    # -- per camera ---------------------------------------------------------------------------------
    @property
    def cameras(self) -> list[str]:
        return [str(c) for c in self.arrays.get("cameras", ())]

    @property
    def num_frames(self) -> int:
        """Frames on the ground truth's frame axis."""
        if "joints_3d_world" in self.arrays:
            return int(self.arrays["joints_3d_world"].shape[0])
        for key in ("bbox", "joints_2d", "joints_3d_cam"):
            if key in self.arrays:
                return int(self.arrays[key].shape[1])
        return 0

    def has(self, camera: str, key: str) -> bool:
        return key in self.arrays and camera in self.cameras

    def camera_array(self, camera: str, key: str) -> np.ndarray | None:
        """One camera's slice of a per-camera array (``joints_2d``, ``bbox`` ...), or None."""
        if not self.has(camera, key):
            return None
        return self.arrays[key][self.cameras.index(camera)]

    def require_camera(self, camera: str) -> int:
        """Index of ``camera`` on the per-camera axis, or a ManifestError naming the file."""
        if camera not in self.cameras:
            raise ManifestError(f"{self.path}: camera {camera} of sequence {self.seq.key} is "
                                f"not in its 'cameras' {self.cameras}")
        return self.cameras.index(camera)

    # -- 3D ---------------------------------------------------------------------------------------
    def can_give_camera_3d(self, camera: str) -> bool:
        if self.has(camera, "joints_3d_cam"):
            return True
        return ("joints_3d_world" in self.arrays
                and self.manifest.has_extrinsics(self.seq.subject, (camera,)))

    def camera_joints_3d(self, camera: str, frames: np.ndarray) -> np.ndarray:
        """(F', J, 3) mm in ``camera``'s frame at source ``frames``: ``joints_3d_cam``, else the
        world joints through the subject's extrinsics; a ManifestError where neither exists."""
        frames = np.asarray(frames, np.int64)
        if self.has(camera, "joints_3d_cam"):
            return self.camera_array(camera, "joints_3d_cam")[frames].astype(np.float64)
        cam = self.manifest.camera(camera, self.seq.subject)
        if "joints_3d_world" not in self.arrays or not cam.has_extrinsics:
            raise ManifestError(f"{self.path}: needs joints_3d_cam, or joints_3d_world and "
                                f"extrinsics of {self.seq.subject} camera {camera}")
        world = self.arrays["joints_3d_world"][frames].astype(np.float64)
        return world_to_camera(world, cam.R, cam.t)

    def root_relative_3d(self, camera: str, frames: np.ndarray) -> np.ndarray | None:
        """(F', J, 3) root-relative camera-frame mm, or None where this ground truth cannot give
        it (no 3D for the camera, or ``frames`` past its end)."""
        frames = np.asarray(frames, np.int64)
        if not self.can_give_camera_3d(camera) or (len(frames) and frames.max() >= self.num_frames):
            return None
        X = self.camera_joints_3d(camera, frames)
        r = self.manifest.joint_set.root
        return X - X[:, r: r + 1]


def camera_ground_truth(manifest: Manifest, seq: Sequence, camera: str, key: str
                        ) -> np.ndarray | None:
    """One camera's ``key`` array of a sequence (e.g. ``bbox``), or None where there is none."""
    gt = SequenceGroundTruth.find(manifest, seq)
    return gt.camera_array(camera, key) if gt is not None else None

"""``predict`` with the keypoint-lifting student: the detector's 2D joints lifted to 3D.

The detector and the tracks are the volumetric network's (``train.predict``); what differs is
the 3D step. Each person's detections are lifted with the camera's intrinsics
(:func:`train.lifter.lift_features`); a temporal lifter sees the ``window`` detections of the
same track around the frame (earlier chunks' included), so a chunk is estimated only once
``window // 2`` frames after it have been detected (:meth:`LiftingNetwork.ready`), or at the end
of the clip, where the window repeats the track's last detection. Rows then hold:

* ``joints_3d``: the lifter's root-relative camera-frame pose, in its labels' units (mm of the
  reference skeleton for pseudo-labels at the canonical scale, as the volumetric network's);
* ``joints_2d``, ``joints_conf``: the detector's 2D and confidences that were lifted;
* ``root_depth_mm``: the depth at which the 3D pose matches its 2D
  (:func:`train.samples.label_root_depth`), for the overlay's root positions;
* ``coords``: NaN (no crop).

The lifter reads no pixels: with precomputed 2D (``--detections``, stage 1's file formats) the
frames need not exist (``reads_images`` False), and predict writes the same files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.store.frames import Frame
from train.checkpoint import CheckpointError, load_checkpoint, model_from_state, resolve_device
from train.config import config_from_dict
from train.lifter import (LifterNet, LifterSpec, lift, lift_features, normalized_joints,
                          present_joints)
from train.samples import label_root_depth

LIFTER_BOX_MARGIN = 0.15
"""Margin of the person box a lifter's rows record (its input is the detector's 2D)."""


@dataclass
class LiftingNetwork:
    """A keypoint lifter ready for ``predict``, and each track's lifted inputs of the clip."""

    model: LifterNet
    spec: LifterSpec
    path: str
    joint_names: tuple[str, ...] = ()
    box_margin: float = LIFTER_BOX_MARGIN
    reads_images = False
    tracks: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @property
    def num_joints(self) -> int:
        return int(self.model.num_joints)

    def start_clip(self) -> None:
        self.tracks = {}

    def observe(self, clip: Any, frames: list[Frame], cols: dict[str, np.ndarray],
                opts: Any) -> None:
        """Record a chunk's inputs (rows in frame order, ``person`` set) per track; each row
        gets ``_lift_pos``: its place in its track's sequence."""
        cam = clip.manifest.camera(clip.camera)
        n = len(cols["frame"])
        j2d = np.asarray(cols["detector_joints_2d"], np.float64)
        present = present_joints(j2d, cols["detector_conf"], self.spec,
                                 clip.manifest.joint_set)
        m = normalized_joints(np.where(present[..., None], j2d, np.nan),
                              np.broadcast_to(cam.K, (n, 3, 3)),
                              np.broadcast_to(np.asarray(cam.dist, np.float64)[:5], (n, 5)))
        feats = lift_features(m, present, clip.manifest.joint_set)
        pos = np.full(n, -1, np.int64)
        for r in np.flatnonzero((cols["status"] == "") & (cols["person"] >= 0)):
            seq = self.tracks.setdefault(int(cols["person"][r]), [])
            pos[r] = len(seq)
            seq.append(feats[r])
        cols["_lift_pos"] = pos

    def ready(self, frames_after: int) -> bool:
        """A chunk can be estimated once this many frames after it have been observed."""
        return frames_after >= self.spec.half

    def estimate(self, clip: Any, frames: list[Frame], cols: dict[str, np.ndarray],
                 opts: Any, timing: dict[str, float]) -> None:
        """Fill the 3D columns of a chunk's rows with a pose (module docstring)."""
        rows = np.flatnonzero(cols["_lift_pos"] >= 0)
        if not len(rows):
            return
        h = self.spec.half
        windows = []
        for r in rows:
            seq = self.tracks[int(cols["person"][r])]
            k = np.clip(np.arange(cols["_lift_pos"][r] - h, cols["_lift_pos"][r] + h + 1),
                        0, len(seq) - 1)
            windows.append(np.stack([seq[i] for i in k], axis=1))      # (C, T)
        t0 = time.perf_counter()
        pose = lift(self.model, np.stack(windows))
        timing["network_s"] = timing.get("network_s", 0.0) + time.perf_counter() - t0
        js = clip.manifest.joint_set
        pose = pose - pose[:, js.root:js.root + 1]
        cam = clip.manifest.camera(clip.camera)
        j2d = np.asarray(cols["detector_joints_2d"], np.float64)[rows]
        K = np.broadcast_to(cam.K, (len(rows), 3, 3))
        dist = np.broadcast_to(np.asarray(cam.dist, np.float64)[:5], (len(rows), 5))
        cols["joints_3d"][rows] = pose
        cols["joints_2d"][rows] = j2d
        cols["joints_conf"][rows] = cols["detector_conf"][rows]
        cols["root_depth_mm"][rows] = label_root_depth(j2d, pose, K, dist, js.root)


def load_lifter_network(path: str | Path, device: str = "auto") -> LiftingNetwork:
    """A keypoint lifter of a training checkpoint (``student: lifter``)."""
    state = load_checkpoint(path, map_location="cpu")
    cfg = config_from_dict(state["config"], str(path))
    if cfg.student != "lifter":
        raise CheckpointError(f"{path} is not a keypoint lifter (student: {cfg.student})")
    model, _ = model_from_state(state, str(path), str(resolve_device(device)))
    names = tuple((state.get("joint_set") or {}).get("names") or ())
    return LiftingNetwork(model, cfg.lifter, str(path), names)

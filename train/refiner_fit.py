"""Fitting the refinement unit (:mod:`train.refiner`) for a trained 3D network.

:func:`fit_refiner` reads the network's checkpoint and configuration, predicts its validation
split through the one evaluation protocol, estimates the :class:`train.refiner.PoseNoise` of its
errors there, and trains the refiner on the training split's labels (and optionally motion
capture, :func:`bvh_poses`). Kept apart from :mod:`train.refiner` because it needs the trainer's
label loading; applying a refiner does not.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.store.bvh import load_h36m17
from pipeline.store.manifest import load_manifest
from train.checkpoint import load_checkpoint, model_from_state
from train.config import config_from_dict, with_overrides
from train.evaluation import pose_metric_table
from train.refiner import PoseNoise, RefinerSpec, save_refiner, train_refiner
from train.students import STUDENTS
from train.trainer import load_labels


# --- motion capture as clean poses ------------------------------------------------------------

WORLD_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""A level camera's axes in the z-up world: x right, y down (-z), z forward (+y)."""


def camera_frame_poses(world: np.ndarray, rng: np.random.Generator,
                       pitch_deg: tuple[float, float] = (0.0, 25.0)) -> np.ndarray:
    """Root-relative world poses (F, J, 3), z up, seen by cameras at random yaw around the
    vertical and random downward pitch in ``pitch_deg``: (F, J, 3) camera-frame poses, the
    layout of the 3D network's predictions."""
    F = len(world)
    yaw = rng.uniform(-np.pi, np.pi, F)
    pitch = np.deg2rad(rng.uniform(*pitch_deg, F))
    Rz = np.zeros((F, 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = (
        np.cos(yaw), -np.sin(yaw), np.sin(yaw), np.cos(yaw), 1.0)
    Rx = np.zeros((F, 3, 3))
    Rx[:, 0, 0], Rx[:, 1, 1], Rx[:, 1, 2], Rx[:, 2, 1], Rx[:, 2, 2] = (
        1.0, np.cos(pitch), -np.sin(pitch), np.sin(pitch), np.cos(pitch))
    R = Rx @ WORLD_TO_CAMERA @ Rz
    return np.einsum("fij,fkj->fki", R, world)


def bvh_poses(paths: tuple[str | Path, ...], root: int, seed: int = 0) -> np.ndarray:
    """Clean camera-frame poses (N, 17, 3) from CMU BVH clips (:func:`pipeline.store.bvh.load_h36m17`,
    metres), each frame seen by a random camera (:func:`camera_frame_poses`)."""
    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        world = load_h36m17(path)
        out.append(camera_frame_poses(world - world[:, root:root + 1], rng))
    return np.concatenate(out) if out else np.zeros((0, 17, 3))


# --- a refiner for a trained 3D network ---------------------------------------------------------------

def fit_refiner(checkpoint: str | Path, out: str | Path, spec: RefinerSpec = RefinerSpec(),
                val_samples: int = 0, batch_size: int = 64, progress: bool = True,
                bvh: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """Train the refinement unit of a 3D network's checkpoint (either student: the volumetric
    network or a keypoint lifter) and write it to ``out``.

    The network predicts the validation split of its own configuration (``val.split``; at most
    ``val_samples`` evenly spaced samples, 0 = all) through the one evaluation protocol; the
    residuals against that split's labels (its kind: pseudo-labels for a shards run, no ground
    truth read) give the :class:`PoseNoise`; the clean poses are the training split's labels of
    the same kind, plus the frames of the ``bvh`` motion-capture clips (CMU skeletons, H36M-17
    joint sets only) seen from random cameras. The test split is never read. Returns the figures recorded in the
    checkpoint: the held-out synthetic check of :func:`train_refiner` and the validation
    split's N-MPJPE against its labels before and after refinement (``val_*``: in-sample for
    the noise model, so only a sanity check).
    """
    state = load_checkpoint(checkpoint)
    model, _ = model_from_state(state, str(checkpoint))
    cfg = with_overrides(config_from_dict(state["config"], str(checkpoint)),
                         val={"max_samples": val_samples})
    if not cfg.is_3d:
        raise ValueError(f"{checkpoint} is a 2D network; the refiner refines 3D poses")
    manifest = load_manifest(cfg.data.manifest, root=cfg.data.data_root or None)
    train, val = load_labels(cfg, manifest)
    js = manifest.joint_set
    cfg = with_overrides(cfg, val={"batch_size": batch_size})
    predicted = STUDENTS[cfg.student].poses(model, val, cfg, js)  # either student's
    noise = PoseNoise.estimate(predicted, val.label_3d)
    spec = replace(spec, num_joints=js.num_joints, root=js.root)
    clean = train.label_3d
    if bvh:
        if js.name != "h36m17":
            raise ValueError(f"--bvh gives H36M-17 poses; the manifest's joint set is {js.name}")
        clean = np.concatenate([clean, bvh_poses(tuple(bvh), js.root, spec.seed)])
    refiner, metrics = train_refiner(clean, noise, spec, js.flip_permutation, progress)

    def val_mean(poses: np.ndarray) -> float:
        v = pose_metric_table(poses, val)["n_mpjpe"]
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    metrics.update({"noise_poses": noise.count, "noise_rms": noise.rms,
                    "bvh": [str(p) for p in bvh],
                    "label_source": val.label_source, "val_split": cfg.val.split,
                    f"val_{val.label_source}_n_mpjpe_before": val_mean(predicted),
                    f"val_{val.label_source}_n_mpjpe_after": val_mean(refiner(predicted))})
    save_refiner(out, refiner, metrics, extra={"source_checkpoint": str(checkpoint)})
    return metrics

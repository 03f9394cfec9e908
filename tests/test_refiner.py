"""The refinement unit: noise model, training on unpaired poses, checkpoint, evaluation hook."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.joints import H36M17
from pipeline.synthetic.motion import ACTIONS, motion_for, pose_sequence
from pipeline.synthetic.skeleton import sample_body
from train.checkpoint import CheckpointError, save_checkpoint
from train.refiner import (PoseNoise, RefinerSpec, load_refiner, mirror, save_refiner,
                           train_refiner, unit_scale)

J = H36M17.num_joints


def _poses(seed: int, frames: int = 120) -> np.ndarray:
    """Root-relative poses (5 * frames, J, 3) mm of the synthetic motions, one random body."""
    rng = np.random.default_rng(seed)
    out = []
    for action in ACTIONS:
        P, _ = pose_sequence(sample_body(rng), motion_for(action, rng, np.arange(frames) / 25.0,
                                                          1000.0), np.zeros(2))
        out.append(P - P[:, :1])
    return np.concatenate(out)


class _Network:
    """A stand-in for a 3D network's errors: a fixed per-joint bias plus correlated noise, at
    unit pose scale."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.bias = rng.normal(size=(J, 3)) * 0.03
        self.mix = rng.normal(size=(3 * J, 3 * J)) * 0.012

    def __call__(self, unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = unit + self.bias + (rng.standard_normal((len(unit), 3 * J)) @ self.mix.T
                                ).reshape(-1, J, 3)
        return x - x[:, :1]


class _SquashingNetwork(_Network):
    """Errors that depend on the pose, as a real network's do: every joint's depth relative
    to the root compressed by ``squash`` before the bias and the noise. A Gaussian noise model
    estimated on its residuals (what the refiner trains on) only approximates them."""

    def __init__(self, seed: int, squash: float = 0.3) -> None:
        super().__init__(seed)
        self.squash = squash

    def __call__(self, unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        squashed = unit * np.array([1.0, 1.0, 1.0 - self.squash])
        return super().__call__(squashed, rng)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean())


@pytest.fixture(scope="module")
def trained():
    """A refiner trained on one body's poses with a noise model estimated on another body's
    (the 'validation split') predictions of a network whose errors depend on the pose."""
    net = _SquashingNetwork(5)
    val = unit_scale(_poses(2))[0]
    noise = PoseNoise.estimate(net(val, np.random.default_rng(3)) * 700.0, val * 700.0)
    spec = RefinerSpec(hidden=96, blocks=1, steps=300, batch_size=96, seed=0)
    refiner, metrics = train_refiner(_poses(0), noise, spec, H36M17.flip_permutation)
    return net, noise, refiner, metrics


def test_noise_model_matches_the_residuals_in_any_unit():
    net = _Network(5)
    val = unit_scale(_poses(2))[0]
    pred = net(val, np.random.default_rng(3))
    a = PoseNoise.estimate(pred, val)
    b = PoseNoise.estimate(pred * 1000.0, val * 1000.0)        # mm instead of unit scale
    np.testing.assert_allclose(a.mean, b.mean, atol=1e-9)
    true_rms = np.sqrt(np.mean(np.sum((pred - val) ** 2, -1)))
    assert abs(a.rms - true_rms) < 0.25 * true_rms
    draws = a.sample(4000, np.random.default_rng(0))
    np.testing.assert_allclose(draws.reshape(4000, -1).mean(0), a.mean, atol=0.01)
    pred[3, 4] = np.nan                                         # incomplete rows are left out
    assert PoseNoise.estimate(pred, val).count == len(val) - 1
    with pytest.raises(ValueError, match="complete"):
        PoseNoise.estimate(pred[3:4], val[3:4])


def test_training_reduces_the_networks_error_on_a_held_out_body(trained):
    """Not the noise it trained on: the network's own predictions of a body and motions it
    never saw (errors that depend on the pose, not Gaussian draws of the fitted model) come
    out closer to the truth (measured: 208 -> 120 mm mean joint error)."""
    net, noise, refiner, metrics = trained
    assert metrics["heldout_refined_rms"] < 0.8 * metrics["heldout_noisy_rms"]
    clean = _poses(7) * 1.3                                      # another body, another unit
    unit, scale = unit_scale(clean)
    noisy = net(unit, np.random.default_rng(11)) * scale[:, None, None]
    before, after = _err(noisy, clean), _err(refiner(noisy), clean)
    assert after < 0.7 * before, (before, after)
    # an untrained refiner is the identity (zero-initialised output layer)
    untrained, _ = train_refiner(clean, noise, RefinerSpec(hidden=16, blocks=1, steps=0))
    np.testing.assert_allclose(untrained(noisy), noisy, atol=1e-4)


def test_rows_that_are_not_finite_pass_through(trained):
    _, _, refiner, _ = trained
    poses = _poses(9)[:4].copy()
    poses[1, 3] = np.nan
    out = refiner(poses)
    assert np.isnan(out[1, 3]).all() and np.isfinite(out[[0, 2, 3]]).all()
    assert np.allclose(out[:, 0], 0.0)                           # the root stays put


def test_mirror_swaps_left_and_right():
    p = _poses(1)[:3]
    m = mirror(p, H36M17.flip_permutation)
    np.testing.assert_allclose(mirror(m, H36M17.flip_permutation), p)
    l, r = H36M17.index("l_wrist"), H36M17.index("r_wrist")
    np.testing.assert_allclose(m[:, l, 0], -p[:, r, 0])


def test_checkpoint_round_trip_and_refusals(trained, tmp_path):
    _, _, refiner, metrics = trained
    path = tmp_path / "refiner.pt"
    save_refiner(path, refiner, metrics)
    again = load_refiner(path)
    poses = _poses(4)[:20]
    np.testing.assert_allclose(again(poses), refiner(poses), atol=1e-6)
    assert again.noise is not None and again.noise.count == refiner.noise.count
    other = tmp_path / "net.pt"
    save_checkpoint(other, {"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {},
                            "epoch": 0, "step": 0, "rng": {}, "config": {"name": "x"},
                            "metrics": {}})
    with pytest.raises(CheckpointError, match="not a refiner"):
        load_refiner(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_refiner(tmp_path / "missing.pt")


def test_bvh_motion_becomes_upright_camera_frame_poses():
    """CMU motion as clean poses: root-relative, in a camera frame (y down: the head above the
    pelvis has a negative y), every bone length kept."""
    from pathlib import Path

    from train.refiner_fit import bvh_poses

    clip = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mocap" / \
        "scaled_131_01.bvh"
    if not clip.exists():
        pytest.skip(f"reference data {clip} is absent")
    poses = bvh_poses((clip,), H36M17.root)
    assert poses.shape[1:] == (J, 3) and np.allclose(poses[:, 0], 0)
    head = poses[:, H36M17.index("head")]
    assert (head[:, 1] < -300).mean() > 0.9            # upright, pitch at most 25 degrees
    from pipeline.store.bvh import load_h36m17

    world = load_h36m17(clip)
    b = H36M17.bones
    np.testing.assert_allclose(np.linalg.norm(poses[:, b[:, 0]] - poses[:, b[:, 1]], axis=-1),
                               np.linalg.norm(world[:, b[:, 0]] - world[:, b[:, 1]], axis=-1),
                               atol=1e-6)                  # rotations keep every bone

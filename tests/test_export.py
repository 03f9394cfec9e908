"""BVH written from positions and read back, and the exporters of a predict folder."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.store.bvh import forward_kinematics, format_bvh, motion_from_positions, parse_bvh
from pipeline.joints import H36M17

J = H36M17.num_joints


def _kinematic_motion(frames: int, seed: int) -> np.ndarray:
    """(F, J, 3) positions of a rigid skeleton (reference bone lengths, random rest directions)
    under random local rotations: a motion a BVH skeleton can hold exactly."""
    rng = np.random.default_rng(seed)
    rest = np.zeros((J, 3))
    for (p, c), length in zip(H36M17.bones, H36M17.reference_lengths):
        d = rng.normal(size=3)
        rest[c] = rest[p] + length * d / np.linalg.norm(d)
    local = Rotation.random(frames * J, random_state=seed).as_matrix().reshape(frames, J, 3, 3)
    X, R = np.zeros((frames, J, 3)), np.zeros((frames, J, 3, 3))
    for j, p in enumerate(H36M17.parents):  # parents precede children in H36M-17
        if p < 0:
            R[:, j] = local[:, j]
            continue
        R[:, j] = R[:, p] @ local[:, j]
        X[:, j] = X[:, p] + R[:, p] @ (rest[j] - rest[p])
    return X + rng.normal(size=(frames, 1, 3)) * 100.0  # the root moves too


def _back(text: str) -> np.ndarray:
    bvh = parse_bvh(text)
    P = forward_kinematics(bvh, unit_to_mm=1.0, z_up=False)
    return P[:, [bvh.names.index(n) for n in H36M17.names]]


def test_bvh_of_a_rigid_motion_gives_its_positions_back():
    X = _kinematic_motion(30, 0)
    motion = motion_from_positions(X, H36M17, 1 / 50)
    text = format_bvh(motion)
    assert text.startswith("HIERARCHY\nROOT pelvis") and "End Site" in text
    assert "Frames: 30" in text and "Frame Time: 0.020000" in text
    np.testing.assert_allclose(_back(text), X, atol=1e-3)
    bvh = parse_bvh(text)
    assert bvh.channels[0][:3] == ("Xposition", "Yposition", "Zposition")
    assert all(len(c) == 3 for n, c in zip(bvh.names[1:], bvh.channels[1:])
               if not n.endswith("_end"))


def test_bvh_of_a_noisy_motion_keeps_median_bones_and_stays_close():
    """Predictions are not rigid: the file holds each bone's median length and the best rigid
    fit of the hips and shoulders, so positions come back close, not exact."""
    X = _kinematic_motion(40, 1)
    noisy = X + np.random.default_rng(2).normal(scale=5.0, size=X.shape)
    back = _back(format_bvh(motion_from_positions(noisy, H36M17, 1 / 50)))
    err = np.linalg.norm(back - noisy, axis=-1)
    assert err.mean() < 20.0 and err.max() < 80.0
    assert np.linalg.norm(back - X, axis=-1).mean() < 25.0
    bones = np.linalg.norm(back[:, H36M17.bones[:, 1]] - back[:, H36M17.bones[:, 0]], axis=-1)
    assert np.ptp(bones, axis=0).max() < 1e-3  # one length per bone


def test_bvh_rejects_nothing_it_wrote_for_any_rotation_order_sign():
    """Half turns and aligned bones (the shortest arc's special cases) survive the round trip."""
    X = _kinematic_motion(4, 3)
    X[1] = X[0] @ np.diag([-1.0, -1.0, 1.0])  # a half turn about z
    X[2] = X[0]
    np.testing.assert_allclose(_back(format_bvh(motion_from_positions(X, H36M17, 0.04))), X,
                               atol=1e-3)


def test_onnx_export_agrees_with_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from train.checkpoint import save_checkpoint
    from train.config import config_from_dict
    from train.export import export_onnx, onnx_agreement
    from train.model import build_model

    cfg = config_from_dict({"name": "tiny", "model": {"depth": 18, "width": 8,
                                                      "deconv_channels": 16, "depth_bins": 8,
                                                      "input_size": 64}}, "<test>")
    torch.manual_seed(0)
    model = build_model(cfg.model, torch.device("cpu"))
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 0, "step": 0, "rng": {},
                           "config": cfg.to_dict(), "metrics": {}})
    onnx_path = export_onnx(path, tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).normal(size=(5, 3, 64, 64))  # another batch size than traced
    diff = onnx_agreement(onnx_path, path, x)
    assert diff["coords"] < 1e-4 and diff["conf"] < 1e-4, diff

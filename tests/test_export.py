"""BVH written from positions and read back, and the exporters of a predict folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.store.bvh import forward_kinematics, format_bvh, motion_from_positions, parse_bvh
from pipeline.joints import H36M17

J = H36M17.num_joints
REPO = Path(__file__).resolve().parents[1]


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


def _onnx_env() -> dict[str, str]:
    """An environment where onnx and onnxruntime import: ONNX_SITE on PYTHONPATH (`make test`
    sets it after installing requirements-onnx.txt there: then a failing import fails the
    test), else this interpreter's or outputs/onnx-site's; skips only outside `make test`."""
    site = os.environ.get("ONNX_SITE")
    env = {**os.environ, "PYTHONPATH": str(Path(site or REPO / "outputs/onnx-site").resolve())}
    probe = subprocess.run([sys.executable, "-c", "import onnx, onnxruntime"], env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        assert not site, f"ONNX_SITE={site}: {probe.stderr}"
        pytest.skip("onnx/onnxruntime not installed: `make test` installs requirements-onnx.txt")
    return env


def test_onnx_export_agrees_with_pytorch_and_fails_above_the_tolerance(tmp_path):
    """`python -m train export-onnx` (make onnx) checks the file against ONNX Runtime at a
    batch size other than the traced one, and exits 1 when the difference exceeds
    --tolerance (it printed the difference and exited 0 whatever it was)."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.config import config_from_dict
    from train.model import build_model

    env = _onnx_env()
    cfg = config_from_dict({"name": "tiny", "model": {"depth": 18, "width": 8,
                                                      "deconv_channels": 16, "depth_bins": 8,
                                                      "input_size": 64}}, "<test>")
    torch.manual_seed(0)
    model = build_model(cfg.model, torch.device("cpu"))
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 0, "step": 0, "rng": {},
                           "config": cfg.to_dict(), "metrics": {}})

    def export(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "train", "export-onnx", "--checkpoint",
                               str(path), "--out", str(tmp_path / "tiny.onnx"), *extra],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    ok = export()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "tiny.onnx").stat().st_size > 1000
    found = re.search(r"coords ([0-9.e+-]+), conf ([0-9.e+-]+) \(within tolerance 0.001\)",
                      ok.stdout)
    assert found, ok.stdout
    coords, conf = float(found[1]), float(found[2])
    assert coords < 1e-4 and conf < 1e-4
    tight = min(coords, conf) / 2 if min(coords, conf) > 0 else -1.0
    bad = export("--tolerance", f"{tight:g}")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"> tolerance {tight:g}: the export does not match the network" in bad.stderr


def test_lifter_exports_to_onnx_and_agrees_with_pytorch(tmp_path):
    """A temporal keypoint lifter through the same command: input ``features`` (N, C, T),
    output ``coords``; ONNX Runtime agrees with PyTorch on a batch other than the traced one
    (and with the features of real keypoints, not only random numbers)."""
    import numpy as np
    import torch

    from pipeline.joints import H36M17
    from train.checkpoint import save_checkpoint
    from train.config import config_from_dict
    from train.lifter import build_lifter, lift_features

    env = _onnx_env()
    cfg = config_from_dict({"name": "tiny_lifter", "student": "lifter",
                            "lifter": {"window": 9, "hidden": 32, "blocks": 2}}, "<test>")
    torch.manual_seed(0)
    model = build_lifter(cfg.lifter, 17).eval()
    path = tmp_path / "lifter.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 0, "step": 0, "rng": {},
                           "config": cfg.to_dict(), "metrics": {}})
    res = subprocess.run([sys.executable, "-m", "train", "export-onnx", "--checkpoint",
                          str(path), "--out", str(tmp_path / "lifter.onnx")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"coords ([0-9.e+-]+) \(within tolerance 0.001\)", res.stdout), res.stdout
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.2, (3 * 9, 17, 2))
    x = lift_features(m, np.ones((3 * 9, 17), bool), H36M17).reshape(3, 9, -1).transpose(0, 2, 1)
    np.save(tmp_path / "x.npy", x)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, numpy as np; from train.export import onnx_agreement; "
         "print(onnx_agreement(sys.argv[1], sys.argv[2], np.load(sys.argv[3]))['coords'])",
         str(tmp_path / "lifter.onnx"), str(path), str(tmp_path / "x.npy")], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert float(probe.stdout) < 1e-4


def _poses_folder(folder: Path, clips: dict[str, tuple[list[int], float]]) -> Path:
    """A predict folder's poses.parquet: camera -> (frames with a pose, fps); a rigid motion."""
    rows = []
    for cam, (frames, fps) in clips.items():
        X = _kinematic_motion(max(frames) + 1, 4)
        for f in frames:
            rows.append({"dataset": "clip", "subject": "S1", "action": "Walk", "subaction": "1",
                         "camera": cam, "frame": f, "time_s": f / fps, "person": 0,
                         "status": "", "joints_3d": (X[f] - X[f, :1]).tolist(),
                         "joints_2d": np.zeros((J, 2)).tolist()})
    folder.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame(rows).to_parquet(folder / "poses.parquet")
    return folder


def test_export_counts_every_file_and_one_frame_clips_keep_their_rate(tmp_path):
    """`train export` says how many files it wrote (bvh_fit.json was not counted: "4 files" for
    5), and a clip with a single pose takes its frame time from its frame rate, not 1/25."""
    import json

    from click.testing import CliRunner

    from pipeline.store.bvh import load_bvh
    from train.__main__ import cli

    pred = _poses_folder(tmp_path / "pred", {"c1": ([10], 50.0), "c2": ([0], 30.0),
                                             "c3": ([2, 3, 5], 10.0)})
    res = CliRunner().invoke(cli, ["export", str(pred)])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (pred / "export").iterdir())
    assert f"{len(written)} files in {pred / 'export'}" in res.output
    assert "bvh_fit.json" in written and len(written) == 3 + 1 + 2 + 1   # bvh, fit, npz, csv
    times = {c: load_bvh(pred / "export" / f"S1_Walk_1_{c}.bvh").frame_time
             for c in ("c1", "c2", "c3")}
    assert times["c1"] == pytest.approx(1 / 50) and times["c3"] == pytest.approx(1 / 10)
    assert times["c2"] == pytest.approx(1 / 25)          # frame 0 only: no rate to read
    fit = json.loads((pred / "export" / "bvh_fit.json").read_text())["joint_distance_mm"]
    assert fit["S1_Walk_1_c1.bvh"]["frame_time_s"] == pytest.approx(0.02)
    assert load_bvh(pred / "export" / "S1_Walk_1_c3.bvh").num_frames == 4   # frames 2-5

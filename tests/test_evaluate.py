"""Evaluation on a tiny manifest built here: samples, crops, decoding, baseline, tables, CLI."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from eval.__main__ import cli
from eval.evaluate import (COLUMNS, EvalSettings, evaluate, mean_pose, per_sample_metrics,
                           pss_models, results_table)
from pipeline.geometry.cameras import apply_affine, project
from pipeline.joints import H36M17
from pipeline.store.manifest import load_manifest
from train.evaluation import cut_crop, decode_poses, iter_crops, predict_coords
from train.samples import load_manifest_samples

J = H36M17.num_joints
K = np.array([[100.0, 0, 31.5], [0, 100.0, 31.5], [0, 0, 1]])
DIST = [-0.05, 0.01, 0.0, 0.0, 0.0]
FRAMES = 60
CAMS = ("cam0", "cam1")
SAMPLES = 2 * len(CAMS) * FRAMES   # per split: two actions


def _poses(n: int, seed: int) -> np.ndarray:
    """(n, J, 3) camera-frame poses ~1.7 m tall, 5 m in front of the camera, random yaw."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=(J, 3)) * [200, 400, 200]
    base[0] = 0
    yaw = rng.uniform(-np.pi, np.pi, n)
    c, s = np.cos(yaw), np.sin(yaw)
    R = np.zeros((n, 3, 3))
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = c, s, 1, -s, c
    x = base @ np.swapaxes(R, 1, 2) + rng.normal(size=(n, J, 3)) * 30
    return x + np.array([0.0, 0.0, 5000.0]) + rng.normal(size=(n, 1, 3)) * [100, 50, 200]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A manifest with one camera, train subject S1 and test subject S9 (two actions each);
    images (64 x 64 PNG) only for the first 5 test frames."""
    root = tmp_path_factory.mktemp("tiny")
    seqs = [("S1", "Walking"), ("S1", "Eating"), ("S9", "Walking"), ("S9", "Eating")]
    for i, (subj, act) in enumerate(seqs):
        j3d = np.stack([_poses(FRAMES, 10 * i + 1), _poses(FRAMES, 10 * i + 2)])  # (C, F, J, 3)
        uv = project(j3d, K, np.array(DIST))
        box = np.concatenate([uv.min(2), uv.max(2)], axis=-1)
        gt = root / "gt" / subj / f"{act}_1.npz"
        gt.parent.mkdir(parents=True, exist_ok=True)
        # camera order in the npz differs from the manifest's on purpose
        np.savez(gt, joints_3d_cam=j3d[::-1], joints_2d=uv[::-1], bbox=box[::-1],
                 cameras=np.array(["cam1", "cam0"]))
        for cam in CAMS if subj == "S9" else ():
            folder = root / "images" / subj / f"{act}_1" / cam
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(5):
                img = np.full((64, 64, 3), 40 + f, np.uint8)
                cv2.imwrite(str(folder / f"{f:06d}.png"), img)
    intr = {"fx": 100.0, "fy": 100.0, "cx": 31.5, "cy": 31.5, "width": 64, "height": 64,
            "distortion": DIST}
    manifest = {
        "dataset": "tiny", "root": str(root), "joint_set": "h36m17",
        "cameras": {c: intr for c in CAMS},
        "frames": {"kind": "images", "pattern": "images/{subject}/{action}_{subaction}/"
                                                "{camera}/{frame:06d}.png"},
        "ground_truth": {"joints_3d": "gt/{subject}/{action}_{subaction}.npz"},
        "sequences": [{"subject": s, "action": a, "subaction": 1, "num_frames": FRAMES}
                      for s, a in seqs],
        "splits": {"train": ["S1"], "test": ["S9"]}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def load_samples(m, split, **kw):
    """Evaluation samples: no 2D labels needed."""
    return load_manifest_samples(m, split, need_2d=False, **kw)


def test_load_samples_root_relative_and_boxes(tiny):
    m = load_manifest(tiny)
    s = load_samples(m, "test", frame_step=2, box_margin=0.15)
    assert len(s) == SAMPLES // 2
    raw = np.load(tiny.parent / "gt" / "S9" / "Eating_1.npz")
    j3d, box = raw["joints_3d_cam"][1, ::2], raw["bbox"][1, ::2]     # cam0 is second there
    eat = np.flatnonzero((s.action == "Eating") & (s.camera == "cam0"))
    assert len(eat) == FRAMES // 2
    np.testing.assert_allclose(s.gt_3d[eat], j3d - j3d[:, :1])
    np.testing.assert_allclose(s.root_depth[eat], j3d[:, 0, 2])
    np.testing.assert_allclose(s.center[eat], (box[:, :2] + box[:, 2:]) / 2)
    np.testing.assert_allclose(s.side[eat], (box[:, 2:] - box[:, :2]).max(1) * 1.3)
    assert s.gt_mask.all() and set(s.action) == {"Walking", "Eating"}
    np.testing.assert_allclose(s.joints_2d[eat], raw["joints_2d"][1, ::2])
    assert len(load_samples(m, "test", max_frames=7)) == 7 * 2 * len(CAMS)


def test_cut_crop_maps_a_pixel_where_the_affine_says():
    img = np.zeros((80, 100, 3), np.uint8)
    img[30, 20] = 255                                   # (x=20, y=30)
    crop, A = cut_crop(img, np.array([25.5, 35.5]), 32.0, 32)  # scale 1: shift by -10
    y, x = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    np.testing.assert_allclose(apply_affine(np.array([[20.0, 30.0]]), A)[0], [x, y])
    assert (x, y) == (10, 10)
    assert crop[y, x, 0] == 255


def _oracle(m, samples, size, depth_range, chunk):
    """A predictor that returns the encoded ground truth of each crop it is given, in the
    order iter_crops yields samples (it stands in for a perfect network)."""
    from train.targets import encode

    queue = []
    for idx, _, A in iter_crops(samples, size, chunk):
        gt = samples.gt_3d[idx]
        uv = project(gt + np.array([0, 0, 1.0]) * samples.root_depth[idx, None, None],
                     K, np.array(DIST))
        queue.append(encode(uv, gt[..., 2], A, size, depth_range))

    def fn(crops: np.ndarray) -> np.ndarray:
        out = queue.pop(0)
        assert len(out) == len(crops) and crops.shape[1:] == (size, size, 3)
        return out

    return fn


def test_predict_samples_decodes_to_ground_truth_and_skips_missing_frames(tiny):
    m = load_manifest(tiny)
    s = load_samples(m, "test", max_frames=6)           # frame 5 has no image
    coords, affine = predict_coords(_oracle(m, s, 48, 2000.0, 4), s, 48, chunk=4)
    pred = decode_poses(coords, affine, s, 48, 2000.0)
    have = s.frame < 5
    assert np.isnan(pred[~have]).all() and np.isfinite(pred[have]).all()
    np.testing.assert_allclose(pred[have], s.gt_3d[have], atol=0.5)   # float32 targets
    models = pss_models(load_samples(m, "train"), tiny.parent / "pss_cache", ks=(5,),
                        restarts=1)
    per = per_sample_metrics(pred, s, models)
    table = results_table(per, s)
    assert table.loc["overall", "n"] == have.sum()
    assert table.loc["overall", "mpjpe"] < 0.5 and table.loc["overall", "pss@5"] == 1.0
    assert table.loc["overall", "pck3d"] == 1.0


def test_mean_pose_baseline_end_to_end(tiny, tmp_path):
    results = evaluate(tiny, tmp_path, baselines=("mean-pose",),
                       settings=EvalSettings(pss_restarts=1))
    t = results["mean_pose"]
    assert list(t.columns) == list(COLUMNS) + ["n"]
    assert list(t.index) == ["Eating", "Walking", "overall", "mean_of_actions"]
    m = load_manifest(tiny)
    train, test = load_samples(m, "train"), load_samples(m, "test")
    mu = mean_pose(train)
    np.testing.assert_allclose(mu, train.gt_3d.mean(0))
    expected = np.linalg.norm(mu - test.gt_3d, axis=-1).mean()
    assert t.loc["overall", "mpjpe"] == pytest.approx(expected)
    assert t.loc["overall", "n"] == SAMPLES
    # the mean pose falls in one cluster: PSS = share of test GT in that cluster
    from eval.pss import assign, load_pss_model

    model = load_pss_model(tmp_path / "pss_k50.npz")
    share = (assign(model, test.gt_3d) == assign(model, mu[None])[0]).mean()
    assert t.loc["overall", "pss@50"] == pytest.approx(share)
    for f in ("mean_pose.md", "mean_pose.csv", "per_sample_mean_pose.parquet", "pss_k100.npz",
              "eval.json"):
        assert (tmp_path / f).is_file(), f
    md = (tmp_path / "mean_pose.md").read_text()
    assert "n_mpjpe: scale" in md and "pa_mpjpe: procrustes" in md and "joints_3d_cam" in md
    per = pd.read_parquet(tmp_path / "per_sample_mean_pose.parquet")
    assert len(per) == SAMPLES and per["mpjpe"].mean() == pytest.approx(expected)


def test_cli_metrics_and_help(tiny, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["metrics", "--help"])
    assert r.exit_code == 0 and "ground-truth root depth" in r.output
    r = runner.invoke(cli, ["metrics", "--manifest", str(tiny), "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--checkpoint" in r.output
    r = runner.invoke(cli, ["metrics", "--manifest", str(tiny), "--out", str(tmp_path),
                            "--baseline", "mean-pose", "--pss-restarts", "1", "--frame-step", "3",
                            "--pss-dir", str(tmp_path / "pss")])
    assert r.exit_code == 0, r.output
    assert "mean_of_actions" in r.output and (tmp_path / "mean_pose.csv").is_file()
    assert (tmp_path / "pss" / "pss_k50.npz").is_file()
    assert not (tmp_path / "pss_k50.npz").exists()


def test_nothing_to_evaluate_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(tiny, tmp_path)
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate(tiny, tmp_path, baselines=("median",))


def _checkpoint(path: Path, depth_bins: int) -> Path:
    """A real (untrained) network saved in the trainer's checkpoint format."""
    import torch

    from train.config import TrainConfig
    from train.model import NetSpec, build_model
    from train.checkpoint import save_checkpoint

    spec = NetSpec(depth=18, width=8, deconv_channels=16, deconv_layers=2,
                   depth_bins=depth_bins, num_joints=J, input_size=32)
    cfg = TrainConfig(name="tiny", model=spec)
    torch.manual_seed(0)
    model = build_model(spec, torch.device("cpu"))
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 0, "step": 0, "rng": {},
                           "config": cfg.to_dict(), "metrics": {}})
    return path


def test_checkpoint_end_to_end(tiny, tmp_path):
    ckpt = _checkpoint(tmp_path / "tiny.pt", depth_bins=8)
    results = evaluate(tiny, tmp_path / "out", checkpoint=ckpt, baselines=("mean-pose",),
                       settings=EvalSettings(max_frames=6, batch_size=4, pss_restarts=1))
    t = results["checkpoint"]
    assert t.loc["overall", "n"] == 5 * 2 * len(CAMS)     # frame 5 has no image
    assert np.isfinite(t.loc["overall", list(COLUMNS)].to_numpy(float)).all()
    assert t.loc["overall", "pa_mpjpe"] <= t.loc["overall", "mpjpe"]
    info = (tmp_path / "out" / "eval.json").read_text()
    assert '"failed_samples": 4' in info and '"input_size": 32' in info
    with pytest.raises(ValueError, match="2D network"):
        evaluate(tiny, tmp_path / "out2", checkpoint=_checkpoint(tmp_path / "2d.pt", 1))


def test_2d_network_end_to_end(tiny, tmp_path):
    """The 2D network's test-split error goes through the same protocol (2D metrics): every
    sample with an image is scored, per action and overall, and the CLI prints the table."""
    from eval.evaluate import evaluate_2d

    ckpt = _checkpoint(tmp_path / "2d.pt", depth_bins=1)
    t = evaluate_2d(tiny, tmp_path / "out", ckpt, frame_step=1, max_frames=5, batch_size=4)
    assert set(t.index) == {"Walking", "Eating", "overall"}
    assert t.loc["overall", "n"] == 5 * 2 * len(CAMS)
    # an untrained network is far off on 64-pixel images, but its error is a finite distance
    assert 0 < t.loc["overall", "px_error"] < 100 and 0 <= t.loc["overall", "pck_px"] <= 1
    assert (tmp_path / "out" / "checkpoint_2d.md").is_file()
    r = CliRunner().invoke(cli, ["metrics-2d", "--checkpoint", str(ckpt), "--manifest", str(tiny),
                                 "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "overall" in r.output


def test_refiner_plugs_into_the_protocol(tiny, tmp_path):
    """make eval --refiner: the checkpoint's poses are also measured after the refinement unit,
    on the same samples (checkpoint_refined beside checkpoint); a refiner without a checkpoint
    is refused."""
    from train.refiner import PoseNoise, RefinerSpec, save_refiner, train_refiner

    clean = _poses(300, 5) - _poses(300, 5)[:, :1]
    noise = PoseNoise.estimate(clean + np.random.default_rng(1).normal(size=clean.shape) * 40,
                               clean)
    refiner, metrics = train_refiner(clean, noise, RefinerSpec(hidden=16, blocks=1, steps=30))
    save_refiner(tmp_path / "refiner.pt", refiner, metrics)
    ckpt = _checkpoint(tmp_path / "tiny.pt", depth_bins=8)
    results = evaluate(tiny, tmp_path / "out", checkpoint=ckpt, refiner=tmp_path / "refiner.pt",
                       settings=EvalSettings(max_frames=6, batch_size=4, pss_restarts=1))
    raw, ref = results["checkpoint"], results["checkpoint_refined"]
    assert raw.loc["overall", "n"] == ref.loc["overall", "n"] == 5 * 2 * len(CAMS)
    assert np.isfinite(ref.loc["overall", list(COLUMNS)].to_numpy(float)).all()
    assert (tmp_path / "out" / "checkpoint_refined.md").exists()
    # per sample: the same samples in the same order, each pose changed by the refiner
    per_raw, per_ref = (pd.read_parquet(tmp_path / "out" / f"per_sample_{n}.parquet")
                        for n in ("checkpoint", "checkpoint_refined"))
    keys = ["subject", "action", "camera", "frame"]
    pd.testing.assert_frame_equal(per_raw[keys], per_ref[keys])
    assert (per_raw["mpjpe"] != per_ref["mpjpe"]).all()
    # an identity refiner (untrained: zero output layer) gives the checkpoint's own table back,
    # so checkpoint_refined measures the refined poses exactly as checkpoint measures its own
    identity, _ = train_refiner(clean, noise, RefinerSpec(hidden=16, blocks=1, steps=0))
    save_refiner(tmp_path / "identity.pt", identity, {})
    same = evaluate(tiny, tmp_path / "same", checkpoint=ckpt, refiner=tmp_path / "identity.pt",
                    settings=EvalSettings(max_frames=6, batch_size=4, pss_restarts=1))
    pd.testing.assert_frame_equal(same["checkpoint_refined"], raw, atol=1e-3)
    pd.testing.assert_frame_equal(same["checkpoint"], raw)
    with pytest.raises(ValueError, match="refiner refines"):
        evaluate(tiny, tmp_path / "o2", baselines=("mean-pose",), refiner=tmp_path / "refiner.pt")

"""The keypoint-lifting student: its inputs (intrinsics removed, derived joints, flips, virtual
cameras), its windows, training in the trainer on shards, evaluation from a stage-1 run's
detections, and predict on two people, on precomputed 2D without images and chunk by chunk."""
from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.joints import H36M17, MPII16
from pipeline.synthetic.people_scene import generate_people
from pipeline.store.run_folder import RunFolder
from pipeline.store.shards import (detection_schema, shard_dir, shard_name, shard_schema,
                                   to_table, write_shard)
from tests.test_trainer import SUBJECTS
from train.checkpoint import load_checkpoint
from train.config import config_from_dict
from train.footage import open_input
from train.lifter import (LifterNet, LifterSpec, LiftDataset, axis_rotation, derive_joints,
                          flip_inputs, flip_pose, lift_features, normalized_joints,
                          window_indices)
from train.predict import PredictOptions, run_predict
from train.samples import load_shard_samples
from train.trainer import RunOptions, fit
from pipeline.store.manifest import load_manifest


def _poses(n: int, joint_set, rng: np.random.Generator) -> np.ndarray:
    """(n, J, 3) random bodies 2-5 m in front of a camera, mm."""
    P = rng.normal(0, 300, (n, joint_set.num_joints, 3))
    return P + np.array([0.0, 0.0, 1.0]) * rng.uniform(2000, 5000, (n, 1, 1))


def _project(P: np.ndarray, K: np.ndarray) -> np.ndarray:
    uv = (P / P[..., 2:3]) @ K.T
    return uv[..., :2]


def test_features_do_not_depend_on_the_intrinsics_and_derive_joints_from_their_sources():
    """The same 3D through two cameras of different focal length and principal point gives the
    same features; a detector that puts the pelvis off the hips' midpoint reads like one that
    derives it; any joint set (MPII-16 has pelvis and thorax, no spine)."""
    rng = np.random.default_rng(0)
    for js in (H36M17, MPII16):
        P = _poses(5, js, rng)
        K1 = np.array([[1000.0, 0, 500], [0, 1000, 400], [0, 0, 1]])
        K2 = np.array([[1700.0, 0, 960], [0, 1700, 540], [0, 0, 1]])
        n, J = len(P), js.num_joints
        present = np.ones((n, J), bool)
        f = [lift_features(normalized_joints(_project(P, K), np.broadcast_to(K, (n, 3, 3)),
                                             np.zeros((n, 5))), present, js) for K in (K1, K2)]
        np.testing.assert_allclose(f[0], f[1], atol=1e-5)
        m = P[..., :2] / P[..., 2:3]
        moved = m.copy()
        moved[:, js.index("pelvis")] += 0.05
        np.testing.assert_allclose(lift_features(moved, present, js),
                                   lift_features(m, present, js), atol=1e-6)
        d, _ = derive_joints(m, present, js)
        np.testing.assert_allclose(d[:, js.index("pelvis")],
                                   m[:, [js.index("l_hip"), js.index("r_hip")]].mean(1))
    hidden = present.copy()
    hidden[:, 3] = False
    feats = lift_features(moved, hidden, MPII16)
    assert (feats[:, [6, 7]] == 0).all() and (feats[:, 2 * 16 + 3] == 0).all()


def test_flip_of_the_inputs_is_the_projection_of_the_flipped_pose():
    rng = np.random.default_rng(1)
    P = _poses(4, H36M17, rng)
    perm = H36M17.flip_permutation
    m = P[..., :2] / P[..., 2:3]
    present = rng.uniform(size=m.shape[:2]) > 0.2
    fm, fp = flip_inputs(m, present, perm)
    Q = flip_pose(P, perm)
    np.testing.assert_allclose(fm, Q[..., :2] / Q[..., 2:3])
    assert (fp == present[:, perm]).all()
    np.testing.assert_allclose(flip_pose(Q, perm), P)


def test_windows_follow_each_sequence_in_frame_order_and_repeat_its_edges():
    seq = np.array(["b", "a", "a", "b", "a", "a"])
    frame = np.array([5, 3, 1, 4, 2, 9])
    w = window_indices(seq, frame, 3)
    # sequence a in frame order: rows 2 (f1), 4 (f2), 1 (f3), 5 (f9); b: 3 (f4), 0 (f5)
    assert w[2].tolist() == [2, 2, 4] and w[4].tolist() == [2, 4, 1]
    assert w[5].tolist() == [1, 5, 5] and w[3].tolist() == [3, 3, 0] and w[0].tolist() == [3, 0, 0]
    assert (window_indices(seq, frame, 1)[:, 0] == np.arange(6)).all()


def test_network_sees_exactly_its_window():
    """A temporal lifter's output for the middle frame depends on every frame of its window
    (9 frames: two levels of kernel 3); it refuses windows of another length."""
    torch.manual_seed(0)
    net = LifterNet(LifterSpec(window=9, hidden=16, blocks=2, dropout=0.0), 5).eval()
    x = torch.randn(2, 18, 9)
    base = net(x)["coords"]
    assert base.shape == (2, 5, 3)
    for t in range(9):
        y = x.clone()
        y[0, :, t] += 1.0
        out = net(y)["coords"]
        assert not torch.allclose(out[0], base[0]) and torch.allclose(out[1], base[1]), t
    with pytest.raises(ValueError, match="windows of 9 frames, got 13"):
        net(torch.randn(1, 18, 13))


# --- training and evaluation on shards ------------------------------------------------------------

def build_lift_shards(root: Path, frames: int = 96, seed: int = 0, joint_set=H36M17
                      ) -> dict[str, Path]:
    """A learnable toy for the lifter: three fixed random bodies turned about the vertical axis
    (uniform +-60 deg) and moved, seen by one camera (one shard per subject, frame order =
    time: the yaw drifts slowly); labels = the camera-frame pose at half scale (canonical
    units), joint 5 without a label in every third frame; a manifest naming the splits and the camera."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    J = joint_set.num_joints
    bodies = rng.uniform(-500, 500, (3, J, 3))
    bodies -= bodies[:, :1]
    run = root / "run"
    for subject in SUBJECTS:
        yaw = np.deg2rad(np.clip(np.cumsum(rng.normal(0, 8, frames)), -60, 60))
        c, s_ = np.cos(yaw), np.sin(yaw)
        R = np.zeros((frames, 3, 3))
        R[:, 0, 0], R[:, 0, 2], R[:, 1, 1], R[:, 2, 0], R[:, 2, 2] = c, s_, 1, -s_, c
        body = bodies[np.arange(frames) // (frames // 3) % 3]
        X = np.einsum("fij,fkj->fki", R, body) + np.array([0, 0, 4000.0]) \
            + rng.uniform(-300, 300, (frames, 1, 3)) * np.array([1, 1, 0])
        uv = (X / X[..., 2:3]) @ K.T
        r = joint_set.root
        rel = (X - X[:, r:r + 1]) * 0.5
        valid = np.ones((frames, J), bool)
        valid[::3, 5], rel[::3, 5] = False, np.nan
        bbox = np.concatenate([uv[..., :2].min(1), uv[..., :2].max(1)], axis=1)
        cols = {"dataset": "lift", "subject": subject, "action": "Walk", "subaction": "1",
                "frame": np.arange(frames, dtype=np.int32), "camera": "c1",
                "partner_camera": "c2", "image_path": ["crops/none.jpg"] * frames,
                "bbox": bbox, "joints_2d": uv[..., :2], "joints_2d_conf": np.ones((frames, J)),
                "joints_3d": rel, "valid": valid, "reproj_error_px": np.zeros((frames, J)),
                "pair_inlier_ratio": 1.0, "pair_rot_deg_to_gt": None,
                "gt_joints_3d": X - X[:, r:r + 1]}
        name = shard_name(subject, "Walk", "1", "c1", "c2")
        write_shard(to_table(cols, shard_schema(J)),
                    shard_dir(run, subject, "Walk") / f"{name}.parquet", {"rows": frames})
        # the ground truth (both cameras see the same) and the detections stage 1 kept
        two = lambda a: np.stack([a, a])  # noqa: E731
        (root / "gt" / subject).mkdir(parents=True, exist_ok=True)
        np.savez(root / "gt" / subject / "Walk_1.npz", joints_3d_cam=two(X),
                 joints_2d=two(uv[..., :2]), bbox=two(bbox), cameras=np.array(["c1", "c2"]))
        seq = SimpleNamespace(subject=subject, action="Walk", subaction="1")
        for cam in ("c1", "c2"):
            det = {k: cols[k] for k in ("dataset", "subject", "action", "subaction", "frame",
                                        "image_path", "bbox", "joints_2d", "joints_2d_conf")}
            det.update(camera=cam, status="")
            path = RunFolder(run).detection_file(seq, cam, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(to_table(det, detection_schema(J)), path)
    (run / "config.json").write_text('{"detector": "file", "geometry": "multiview"}')
    cam = {"fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480,
           "distortion": [0.0] * 5}
    manifest = root / "lift.yaml"
    manifest.write_text(yaml.safe_dump({
        "dataset": "lift", "root": str(root), "joint_set": joint_set.name,
        "cameras": {"c1": cam, "c2": cam},
        "frames": {"kind": "images", "pattern": "images/{subject}/{camera}/{frame:06d}.jpg"},
        "ground_truth": {"joints_3d": "gt/{subject}/{action}_{subaction}.npz"},
        "sequences": [{"subject": s, "action": "Walk", "subaction": 1, "cameras": ["c1", "c2"],
                       "num_frames": frames} for s in SUBJECTS],
        "splits": {"train": ["S1"], "val": ["S8"], "test": ["S9"]}}))
    return {"manifest": manifest, "shards": run, "root": root}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    return build_lift_shards(tmp_path_factory.mktemp("lifter_toy"))


def _lifter_config(toy: dict[str, Path], **lifter) -> object:
    return config_from_dict({
        "name": "tiny_lifter", "seed": 1, "student": "lifter", "model": {"num_joints": 17},
        "lifter": {"hidden": 64, "blocks": 1, "dropout": 0.0, **lifter},
        "data": {"source": "shards", "shards": str(toy["shards"]),
                 "manifest": str(toy["manifest"]), "batch_size": 8, "workers": 0},
        "optim": {"epochs": 30, "milestones": [25], "lr": 0.003, "loss_beta": 0.01},
        "val": {"batch_size": 64, "every_epochs": 5}}, "<test>")


def test_virtual_camera_at_yaw_zero_without_noise_reproduces_the_detections(toy):
    """Labels consistent with their 2D (ground truth at half scale): the label pose
    put at its root depth projects onto the detections, so a virtual camera turned by 0 deg
    with no noise gives the sample's own inputs; turned by 90 deg the target turns with it."""
    m = load_manifest(toy["manifest"])
    samples = load_shard_samples(toy["shards"], H36M17, manifest=m)
    spec = LifterSpec(window=3, virtual_prob=1.0, virtual_yaw_deg=0.0, noise_px=0.0,
                      flip_prob=0.0, joint_dropout=0.0)
    plain = LiftDataset(samples, replace(spec, virtual_prob=0.0), H36M17, augment=True)
    virtual = LiftDataset(samples, spec, H36M17, augment=True)
    i = 7
    rows = virtual.window[i]
    m, ok, target = (a[0] for a in virtual._virtual(np.array([i]), rows[None], np.zeros(1),
                                                     np.zeros((1, 3, 17, 2))))
    assert (ok == samples.label_mask[rows]).all() and not ok.all()   # unlabelled: hidden
    np.testing.assert_allclose(m[ok], plain.m[rows][ok], atol=1e-6)   # float32 shards
    a = plain[(0, i)]
    np.testing.assert_allclose(target / 1000.0, a["target"].numpy(), atol=1e-6)
    turned = LiftDataset(samples, replace(spec, virtual_yaw_deg=90.0), H36M17, augment=True)
    t, t0 = turned[(0, i)]["target"].numpy(), a["target"].numpy()
    np.testing.assert_allclose(np.linalg.norm(t, axis=-1), np.linalg.norm(t0, axis=-1),
                               atol=1e-5)                                  # a rotation
    np.testing.assert_allclose(t[:, 1], t0[:, 1], atol=1e-5)               # about y
    assert not np.allclose(t, t0, atol=1e-3)


def test_virtual_cameras_turn_about_the_peoples_up_axis(toy):
    """Bodies standing along a known up direction in a pitched camera's frame: the up axis is
    recovered from the labels, and a turn about it keeps every joint's height along it."""
    m = load_manifest(toy["manifest"])
    samples = load_shard_samples(toy["shards"], H36M17, manifest=m)
    up = np.array([0.0, -np.cos(0.4), np.sin(0.4)])                    # a camera pitched 23 deg
    rng = np.random.default_rng(3)
    side = np.cross(up, [1.0, 0.0, 0.0])
    height = rng.uniform(0.2, 0.8, (len(samples), 17))
    height[:, 0] = 0.0
    poses = height[..., None] * 500 * up + rng.normal(0, 80, (len(samples), 17, 1)) * side
    poses[:, 0] = 0.0
    label = replace(samples, label_3d=np.where(samples.label_mask[..., None], poses, np.nan))
    ds = LiftDataset(label, LifterSpec(virtual_body_up=True), H36M17, augment=False)
    np.testing.assert_allclose(ds.up[0], up, atol=0.05)
    R = axis_rotation(ds.up[:4], np.array([0.3, 1.0, 2.0, -2.5]))
    turned = np.einsum("bij,bkj->bki", R, poses[:4])
    np.testing.assert_allclose(turned @ ds.up[0], poses[:4] @ ds.up[0], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=-1), np.linalg.norm(poses[:4], axis=-1))
    assert (LiftDataset(label, LifterSpec(), H36M17, augment=False).up == [0, -1, 0]).all()


@pytest.fixture(scope="module")
def lifter_run(toy, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lifter_run")
    return fit(_lifter_config(toy, window=3, virtual_prob=0.5),
               RunOptions(out=out, device="cpu", progress=False, threads=1))


def test_the_trainer_trains_a_lifter_that_learns_its_labels(toy, lifter_run):
    """Training in the shared trainer: validation on the pseudo-labels falls well below the
    first epoch's; the checkpoint records the student, the joint set and the label run."""
    val = pd.read_json(lifter_run["metrics"], lines=True)["val_pseudo_n_mpjpe"].dropna()
    first, best = val.iloc[0], lifter_run["best_metric"]
    print(val.tolist())
    assert best < 0.7 * first, (first, best)
    state = load_checkpoint(lifter_run["best"])
    assert state["config"]["student"] == "lifter" and state["config"]["lifter"]["window"] == 3
    assert state["joint_set"]["names"] == list(H36M17.names)
    assert state["labels"]["run"] == str(toy["shards"])


def test_eval_lifts_the_test_frames_from_a_runs_detections(lifter_run, toy, tmp_path):
    """``make eval`` of a lifter: the test subject's frames, every camera, lifted from the 2D
    the stage-1 run kept, measured against the ground truth; without the run it says what to
    pass."""
    from eval.evaluate import EvalSettings, evaluate

    settings = EvalSettings(pss_restarts=1)
    with pytest.raises(ValueError, match="--detections RUN"):
        evaluate(toy["manifest"], tmp_path / "e", lifter_run["best"], settings=settings)
    res = evaluate(toy["manifest"], tmp_path / "e", lifter_run["best"], ("mean-pose",),
                   settings, detections=toy["shards"])
    ours, mean = res["checkpoint"].loc["overall"], res["mean_pose"].loc["overall"]
    assert ours["n"] == mean["n"] == 2 * 96
    assert ours["n_mpjpe"] < mean["n_mpjpe"], (ours["n_mpjpe"], mean["n_mpjpe"])


def test_the_refinement_unit_fits_and_applies_to_a_lifter(lifter_run, toy, tmp_path):
    """``train refiner`` on a lifter's checkpoint (its noise model from the lifter's own
    validation poses), and ``eval --refiner`` measures the lifter's poses refined beside them."""
    from eval.evaluate import EvalSettings, evaluate
    from train.refiner import RefinerSpec
    from train.refiner_fit import fit_refiner

    metrics = fit_refiner(lifter_run["best"], tmp_path / "refiner.pt",
                          RefinerSpec(steps=30, hidden=32, blocks=1), progress=False)
    assert metrics["label_source"] == "pseudo" and metrics["noise_poses"] == 64  # complete labels
    assert np.isfinite(metrics["val_pseudo_n_mpjpe_before"])
    res = evaluate(toy["manifest"], tmp_path / "e", lifter_run["best"],
                   settings=EvalSettings(pss_restarts=1), refiner=tmp_path / "refiner.pt",
                   detections=toy["shards"])
    plain, refined = res["checkpoint"].loc["overall"], res["checkpoint_refined"].loc["overall"]
    assert plain["n"] == refined["n"] == 2 * 96
    assert plain["n_mpjpe"] != refined["n_mpjpe"]


# --- predict --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def people(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lifter_people")
    manifest = generate_people("data_manifests/synthetic.yaml", root / "people", people=2,
                               frames=8, noise_px=0.5, progress=False)
    return {"manifest": manifest, "detections": root / "people" / "detections.parquet",
            "root": root}


def _opts(people: dict[str, Path], **kw) -> PredictOptions:
    return PredictOptions(**{"detector": "file", "detections": str(people["detections"]),
                             "device": "cpu", "progress": False, "batch_size": 8, "video": False,
                             **kw})


def test_predict_lifts_two_people_the_same_chunk_by_chunk_and_without_images(
        people, lifter_run, tmp_path):
    """Two people per frame through the temporal lifter: every person of every frame gets a
    finite pose and keeps one track; the poses do not depend on the chunk size (the lifter
    waits for the frames after a chunk); deleting the images changes nothing (the lifter reads
    no pixels when the 2D is precomputed)."""
    clips = open_input(people["manifest"])[:1]
    a = run_predict(clips, lifter_run["best"], tmp_path / "a", _opts(people))
    df = pd.read_parquet(a.files["poses"])
    posed = df[df.status == ""]
    assert len(posed) == 2 * 8 and set(posed.person) == {0, 1}
    assert np.isfinite(np.stack(posed.joints_3d.map(np.stack))).all()
    assert np.isfinite(posed.root_depth_mm).all()
    np.testing.assert_allclose(np.stack(posed.joints_2d.map(np.stack)),
                               np.stack(posed.detector_joints_2d.map(np.stack)))
    b = run_predict(clips, lifter_run["best"], tmp_path / "b", _opts(people, batch_size=3))
    shutil.rmtree(people["root"] / "people" / "images")
    c = run_predict(open_input(people["manifest"])[:1], lifter_run["best"], tmp_path / "c",
                    _opts(people))
    ref = np.stack(df.joints_3d.map(np.stack))
    for other in (b, c):
        got = pd.read_parquet(other.files["poses"])
        assert got[["frame", "person", "status"]].equals(df[["frame", "person", "status"]])
        np.testing.assert_allclose(np.stack(got.joints_3d.map(np.stack)), ref, atol=1e-4)
    assert c.unreadable == 0 and c.predicted == 16


def test_another_joint_set_trains_and_predicts_from_precomputed_2d(tmp_path):
    """MPII-16 end to end: a lifter trained on its shards (16 joints in and out, the pelvis and
    thorax derived, the checkpoint naming the set), then predict on a manifest whose frames do
    not exist, from the 2D a stage-1 run kept (its detections folder as the file detector's
    input): a finite 16-joint pose in every frame."""
    toy16 = build_lift_shards(tmp_path / "toy16", frames=48, joint_set=MPII16)
    cfg = _lifter_config(toy16)
    cfg = replace(cfg, model=replace(cfg.model, num_joints=16),
                  optim=replace(cfg.optim, epochs=2, milestones=(1,)))
    run = fit(cfg, RunOptions(out=tmp_path / "run16", device="cpu", progress=False, threads=1))
    state = load_checkpoint(run["best"])
    assert state["joint_set"]["names"] == list(MPII16.names)
    clips = [c for c in open_input(toy16["manifest"]) if c.seq.subject == "S9"
             and c.camera == "c1"]
    rep = run_predict(clips, run["best"], tmp_path / "pred",
                      PredictOptions(detector="file", detections=str(toy16["shards"] / "detections"),
                                     device="cpu", progress=False, video=False, batch_size=16))
    df = pd.read_parquet(rep.files["poses"])
    assert len(df) == 48 and (df.status == "").all() and rep.unreadable == 0
    poses = np.stack(df.joints_3d.map(np.stack))
    assert poses.shape == (48, 16, 3) and np.isfinite(poses).all()
    np.testing.assert_allclose(poses[:, MPII16.root], 0.0, atol=1e-6)


def test_a_lifter_starts_a_run_whose_training_knobs_differ_but_not_another_network(
        lifter_run, toy):
    """optim.init_from: the shipped lifter can start a fine-tuning run with other augmentation
    (the real-footage configs), never a network of another shape."""
    from train.checkpoint import CheckpointError, build_network
    from train.trainer import init_weights

    cfg = _lifter_config(toy, window=3, virtual_prob=0.9, input_noise_px=2.0,
                         virtual_body_up=True)
    init_weights(build_network(cfg), cfg, Path(lifter_run["best"]))
    wider = _lifter_config(toy, window=3, hidden=32)
    with pytest.raises(CheckpointError, match=r"\['lifter.hidden'\]"):
        init_weights(build_network(wider), wider, Path(lifter_run["best"]))

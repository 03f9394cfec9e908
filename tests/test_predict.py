"""predict on a video dataset written here: agreement with make eval, outputs, bad input, the
metric pose from the reference skeleton, One-Euro smoothing."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from eval.evaluate import evaluate
from pipeline.geometry.cameras import crop_affine, project
from pipeline.geometry import triangulation as tri
from pipeline.joints import H36M17, JointSet
from pipeline.store.bvh import load_bvh
from pipeline.detect.network import DetectorUnavailable, FrameKey
from pipeline.detect.registry import FileDetector
from pipeline.store.manifest import load_manifest
from pipeline.store.shards import detection_schema, to_table
from pipeline.store.video_export import write_video_set
from eval.metrics import pose_metrics
from tests.test_trainer import build_toy_dataset, build_toy_shards, tiny_config
from train.__main__ import cli
from train.checkpoint import NotA3DNetwork
from train.export import export_predictions
from train.footage import FOOTAGE_DATASET, InputError, default_out, open_input
from train.predict import PredictOptions, metric_poses, run_predict
from train.predict_score import GROUND_TRUTH_REFERENCE
from train.smoothing import OneEuroFilter, smooth_sequence
from train.targets import encode
from train.trainer import RunOptions, fit

J = H36M17.num_joints
FRAMES = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """The toy dataset of the trainer tests, a tiny 3D network trained on its ground truth (and a
    2D one), and the test subject's frames written as MP4 videos with their ground truth."""
    root = tmp_path_factory.mktemp("predict")
    manifest = build_toy_dataset(root / "data", frames=FRAMES)
    toy = {"root": root, "manifest": manifest, "shards": root / "none"}
    run3d = fit(tiny_config(toy, optim={"epochs": 1}), RunOptions(
        out=root / "run3d", device="cpu", progress=False, threads=1, max_steps=3))
    run2d = fit(tiny_config(toy, model={"depth_bins": 1}, optim={"epochs": 1}), RunOptions(
        out=root / "run2d", device="cpu", progress=False, threads=1, max_steps=1))
    videos = write_video_set(load_manifest(manifest), root / "video", split="test")
    return {"root": root, "manifest": manifest, "ckpt3d": Path(run3d["last"]),
            "ckpt2d": Path(run2d["last"]),
            "video_manifest": videos.manifest, "videos": videos.videos}


def _opts(**kw) -> PredictOptions:
    return PredictOptions(**{"detector": "gt", "device": "cpu", "progress": False,
                             "batch_size": 4, **kw})


def test_video_set_holds_the_frames_and_the_truth(setup):
    m = load_manifest(setup["video_manifest"])
    assert [s.subject for s in m.sequences] == ["S9"] and m.splits == {"test": ("S9",)}
    for path in setup["videos"]:
        cap = cv2.VideoCapture(str(path))
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
        cap.release()
    with np.load(m.gt_path(m.sequences[0])) as z:
        assert z["joints_3d_cam"].shape == (2, FRAMES, J, 3)


def test_predict_matches_make_eval_on_the_same_frames(setup, tmp_path):
    """Through the video: the network decoded with the ground-truth root depth gives make eval's
    numbers; crops around the (oracle) joints are the dataset's boxes here, so they agree to
    rounding. The files are all written; the reference-scaled output has the reference size."""
    clips = open_input(setup["video_manifest"])
    report = run_predict(clips, setup["ckpt3d"], tmp_path / "pred",
                         _opts(reference=GROUND_TRUTH_REFERENCE))
    table = evaluate(setup["video_manifest"], tmp_path / "eval", setup["ckpt3d"])["checkpoint"]
    ref = table.loc["overall"]
    got = report.metrics["protocol"]
    for k in ("mpjpe", "n_mpjpe", "pa_mpjpe"):
        assert got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-6), k
    assert got["n"] == ref["n"] == 2 * FRAMES
    df = pd.read_parquet(tmp_path / "pred" / "poses.parquet")
    assert len(df) == 2 * FRAMES and (df.status == "").all()
    X = np.stack([np.stack(p) for p in df.joints_3d])
    bones = np.linalg.norm(X[:, H36M17.bones[:, 1]] - X[:, H36M17.bones[:, 0]], axis=-1)
    np.testing.assert_allclose(bones.sum(1), H36M17.reference_lengths.sum(), rtol=1e-4)
    assert np.abs(X[:, 0]).max() < 1e-3  # root-relative
    for name in ("overlay_S9_Walk_1_c1.mp4", "overlay_S9_Walk_1_c2.mp4", "contact_sheet.png",
                 "predict.json", "metrics.json"):
        assert (tmp_path / "pred" / name).stat().st_size > 0, name
    cap = cv2.VideoCapture(str(tmp_path / "pred" / "overlay_S9_Walk_1_c1.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    cap.release()
    assert not (tmp_path / "pred" / ".poses-parts").exists()


def test_ground_truth_is_read_only_when_asked_for(setup, tmp_path):
    """The default crops come from the 2D network alone: the same video set with its
    ground-truth boxes moved to a corner (and its 3D truth removed) gives the same detections
    and poses; nothing is scored without --reference, and --reference ground-truth on a
    manifest without 3D truth is refused before any frame is read."""
    import shutil

    import yaml

    src = setup["video_manifest"].parent
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    raw = yaml.safe_load((moved / "manifest.yaml").read_text())
    for npz in (moved / "gt").rglob("*.npz"):
        with np.load(npz) as z:
            arrays = dict(z)
        arrays["bbox"] = np.broadcast_to([0.0, 0.0, 6.0, 6.0], arrays["bbox"].shape).copy()
        np.savez(npz, **arrays)
    opts = _opts(detector="net", checkpoint_2d=str(setup["ckpt2d"]), video=False)
    a = run_predict(open_input(setup["video_manifest"]), setup["ckpt3d"], tmp_path / "a", opts)
    run_predict(open_input(moved / "manifest.yaml"), setup["ckpt3d"], tmp_path / "b", opts)
    da, db = (pd.read_parquet(tmp_path / k / "poses.parquet") for k in ("a", "b"))
    for col in ("detector_joints_2d", "bbox", "joints_3d"):
        np.testing.assert_array_equal(np.stack([np.stack(v) for v in da[col]]),
                                      np.stack([np.stack(v) for v in db[col]]), err_msg=col)
    assert a.metrics == {} and not (tmp_path / "a" / "metrics.json").exists()
    raw.pop("ground_truth")
    (moved / "manifest.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match="no 3D ground truth"):
        run_predict(open_input(moved / "manifest.yaml"), setup["ckpt3d"], tmp_path / "c",
                    _opts(reference=GROUND_TRUTH_REFERENCE))
    assert not (tmp_path / "c" / "poses.parquet").exists()


def test_detector_choice_is_printed_and_refusals_name_no_video_as_manifest(setup, tmp_path):
    """predict prints which detector auto chose and why (and records it); the 2D network
    refused on a lone video does not advise `make train-2d MANIFEST=<the video>`."""
    res = CliRunner().invoke(cli, ["predict", str(setup["video_manifest"]), "--out",
                                   str(tmp_path / "o"), "--checkpoint", str(setup["ckpt3d"]),
                                   "--checkpoint-2d", str(setup["ckpt2d"]), "--device", "cpu",
                                   "--max-frames", "1", "--no-video", "--no-progress"])
    assert res.exit_code == 0, res.output
    want = (f"detector: auto -> net: the 2D network's checkpoint {setup['ckpt2d']} was trained "
            f"on dataset '{load_manifest(setup['video_manifest']).dataset}'")
    assert want in res.output.splitlines()
    info = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert info["detector"] == "net" and "was trained on dataset" in info["detector_reason"]
    clips = open_input(setup["videos"][0])
    with pytest.raises(DetectorUnavailable) as e:
        run_predict(clips, setup["ckpt3d"], tmp_path / "v",
                    _opts(detector="net", checkpoint_2d=str(setup["ckpt2d"])))
    msg = str(e.value)
    assert "MANIFEST=" not in msg and "is footage" in msg and "--detector mediapipe" in msg, msg


def test_default_output_folders_do_not_collide_and_match_the_makefile(tmp_path, monkeypatch):
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # where make runs: an input there is named by its stem alone
    inputs = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", tmp_path / "frames",
              tmp_path / "test_video" / "manifest.yaml", repo / "my_video.mp4"]
    outs = [default_out(p) for p in inputs]
    assert [o.name for o in outs] == ["a_clip", "b_clip", f"{tmp_path.name}_frames",
                                      f"{tmp_path.name}_test_video", "my_video"]
    assert outs[0].parent == Path("outputs/predict")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for path, want in zip(inputs, outs):
        got = subprocess.run(["make", "-s", "--no-print-directory", "--eval",
                              "show-out: ; @echo $(PREDICT_OUT)", "show-out", f"INPUT={path}"],
                             cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        assert got == str(want), path


def test_a_rerun_leaves_nothing_of_the_previous_one(setup, tmp_path):
    """A manifest run (two overlays, metrics, an export) and then a lone video into the same
    folder: only the new run's files are there."""
    out = tmp_path / "p"
    run_predict(open_input(setup["video_manifest"]), setup["ckpt3d"], out,
                _opts(reference=GROUND_TRUTH_REFERENCE))
    export_predictions(out, ("csv",))
    (out / "notes.txt").write_text("mine")
    assert (out / "export" / "poses.csv").exists() and (out / "metrics.json").exists()
    opts = _opts(detector="file", detections=str(_footage_detections(setup, tmp_path)))
    run_predict(open_input(setup["videos"][0]), setup["ckpt3d"], out, opts)
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "notes.txt", "overlay.mp4", "poses.parquet", "predict.json"]
    assert len(pd.read_parquet(out / "poses.parquet")) == FRAMES


def test_metric_pose_recovers_a_reference_sized_pose_and_its_depth():
    """A pose with the reference bone lengths, seen at 4.2 m: decoding its exact network
    coordinates with the reference-skeleton depth gives the pose and the depth back."""
    rng = np.random.default_rng(0)
    ref = H36M17.reference_lengths
    X = np.zeros((J, 3))
    for (p, c), length in zip(H36M17.bones, ref):  # random directions, reference lengths
        d = rng.normal(size=3)
        X[c] = X[p] + length * d / np.linalg.norm(d)
    Xc = X + [150.0, -100.0, 4200.0]
    K = np.array([[900.0, 0, 640], [0, 900, 360], [0, 0, 1]])
    uv = project(Xc, K)
    c, side = uv.mean(0), 1.4 * np.ptp(uv, axis=0).max()
    A = crop_affine(c, side, 96)[None]
    coords = encode(uv[None], (Xc[:, 2] - Xc[0, 2])[None], A, 96)
    pose, z = metric_poses(coords.astype(np.float64), A, K, None, 96, 2000.0, H36M17)
    np.testing.assert_allclose(pose[0], X, atol=0.05)
    assert z[0] == pytest.approx(4200.0, rel=1e-5)


def test_metric_pose_of_a_set_without_lengths_is_sized_as_its_labels():
    """A 10-joint upper body that declares no bone lengths: predict sizes it exactly as stage 1
    sized its labels (one function, ``triangulation.reference_lengths``: the H36M-17 bones it
    contains take H36M-17's lengths, the others keep their proportions), not to the full-body
    4150 mm sum (which made such a pose about 1.5x too large here)."""
    names = ("neck", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow",
             "r_wrist", "l_hip", "r_hip")
    parents = (-1, 0, 0, 2, 3, 0, 5, 6, 0, 0)
    js = JointSet("upper10", names, parents, root_names=("neck",))
    ref = tri.reference_lengths(js)
    rng = np.random.default_rng(3)
    X = np.zeros((len(names), 3))
    for (p, c), length in zip(js.bones, np.where(np.isfinite(ref), ref, 260.0)):
        d = rng.normal(size=3)
        X[c] = X[p] + length * d / np.linalg.norm(d)
    Xc = X + [80.0, -50.0, 3800.0]
    K = np.array([[900.0, 0, 640], [0, 900, 360], [0, 0, 1]])
    uv = project(Xc, K)
    A = crop_affine(uv.mean(0), 1.4 * np.ptp(uv, axis=0).max(), 96)[None]
    coords = encode(uv[None], (Xc[:, 2] - Xc[0, 2])[None], A, 96)
    pose, z = metric_poses(coords.astype(np.float64), A, K, None, 96, 2000.0, js)
    np.testing.assert_allclose(pose[0], X, atol=0.05)
    assert z[0] == pytest.approx(3800.0, rel=1e-5)
    label, _ = tri.normalize_scale(X[None] * 0.0021, np.ones((1, len(names)), bool),
                                   per_frame=True, joint_set=js)
    np.testing.assert_allclose(pose, label, atol=0.05)


def test_one_euro_smooths_jitter_and_follows_steps():
    rng = np.random.default_rng(1)
    noisy = 100.0 + rng.normal(scale=5.0, size=(200, 3))
    out = smooth_sequence(noisy, fps=50, min_cutoff_hz=1.0, beta=0.0)
    assert out[50:].std(0).max() < 0.4 * noisy[50:].std(0).min()
    step = np.concatenate([np.zeros(50), np.full(100, 1000.0)])[:, None]
    out = smooth_sequence(step, fps=50, min_cutoff_hz=1.0, beta=0.05)
    assert out[-1, 0] == pytest.approx(1000.0, abs=1.0) and out[55, 0] < 1000.0
    f = OneEuroFilter(50)
    f(np.array([1.0, 2.0]))
    assert np.isnan(f(np.array([np.nan, 2.0]))[0])


def test_bad_input_is_refused_with_its_name(setup, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(InputError, match="broken.mp4"):
        open_input(bad)
    with pytest.raises(InputError, match="does not exist"):
        open_input(tmp_path / "missing.mp4")
    res = CliRunner().invoke(cli, ["predict", str(bad), "--out", str(tmp_path / "o"),
                                   "--checkpoint", str(setup["ckpt3d"])])
    assert res.exit_code == 1 and "broken.mp4" in res.output
    # the 2D network's checkpoint given as the 3D one: refused before any frame is read
    clips = open_input(setup["video_manifest"])
    with pytest.raises(NotA3DNetwork, match="2D network"):
        run_predict(clips, setup["ckpt2d"], tmp_path / "wrong", _opts())
    assert not (tmp_path / "wrong" / "poses.parquet").exists()


def test_missing_checkpoint_is_one_line_naming_it_and_make_train(setup, tmp_path):
    missing = tmp_path / "runs" / "best.pt"
    res = CliRunner().invoke(cli, ["predict", str(setup["videos"][0]), "--out",
                                   str(tmp_path / "o"), "--checkpoint", str(missing)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"error: no 3D network checkpoint at {missing}: `make train` makes the volumetric "
        "network's, `make train STUDENT=lifter` a keypoint lifter's (or pass --checkpoint "
        "PATH; make: CHECKPOINT=path)"]


def test_frames_without_a_person_or_a_picture_get_rows(setup, tmp_path):
    """An image folder (no ground truth, a made-up camera) with detections from a file for the
    odd frames only, and one file that is not an image: every frame gets a row, the odd ones a
    pose, the others NaN and the reason."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cap = cv2.VideoCapture(str(setup["videos"][0]))
    for i in range(FRAMES):
        ok, img = cap.read()
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), img)
    cap.release()
    (folder / "img_999.png").write_bytes(b"broken")
    m = load_manifest(setup["video_manifest"])
    with np.load(m.gt_path(m.sequences[0])) as z:
        uv = z["joints_2d"][0]
    odd = np.arange(1, FRAMES, 2)
    det = to_table({"dataset": FOOTAGE_DATASET, "subject": tmp_path.name, "action": "frames",
                    "subaction": "1", "camera": "cam0", "frame": odd.astype(np.int32),
                    "image_path": "", "bbox": np.zeros((len(odd), 4)), "joints_2d": uv[odd],
                    "joints_2d_conf": np.ones((len(odd), J)), "status": ""},
                   detection_schema(J))
    pq.write_table(det.drop(["bbox"]), tmp_path / "det.parquet")
    opts = _opts(detector="file", detections=str(tmp_path / "det.parquet"))
    report = run_predict(open_input(folder), setup["ckpt3d"], tmp_path / "out", opts)
    df = pd.read_parquet(tmp_path / "out" / "poses.parquet")
    assert len(df) == FRAMES + 1 == report.frames
    assert (report.predicted, report.no_person, report.unreadable) == (
        len(odd), FRAMES - len(odd), 1)
    assert "img_999.png" in df.status.iloc[-1]
    assert (df.status.iloc[odd] == "").all()
    assert df.status.iloc[0] == "no person detected in frame 0"
    for k, row in df.iterrows():
        X = np.stack(row.joints_3d)
        assert np.isfinite(X).all() == (row.status == ""), k
    assert not report.metrics and (tmp_path / "out" / "overlay.mp4").exists()
    info = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert info["frames"] == FRAMES + 1 and info["error"] is None
    # the frames keep their file names; the folder says no frame rate: time_s is null
    assert list(df.image_file) == [f"img_{i:03d}.png" for i in range(FRAMES)] + ["img_999.png"]
    assert df.time_s.isna().all()
    assert (df.subject.unique().tolist(), df.action.unique().tolist(),
            df.camera.unique().tolist()) == ([tmp_path.name], ["frames"], ["cam0"])
    with pytest.raises(InputError, match="--fps"):
        run_predict(open_input(folder), setup["ckpt3d"], tmp_path / "s", _opts(
            detector="file", detections=str(tmp_path / "det.parquet"), smoothing=True))
    run_predict(open_input(folder, fps=10.0), setup["ckpt3d"], tmp_path / "t",
                _opts(detector="file", detections=str(tmp_path / "det.parquet"), video=False,
                      smoothing=True))
    df = pd.read_parquet(tmp_path / "t" / "poses.parquet")
    np.testing.assert_allclose(df.time_s, df.frame / 10.0)


def test_exports_of_a_predict_folder(setup, tmp_path):
    """BVH per clip (parsed back, frame count, fit recorded), VideoPose3D's npz that stage 1's
    file detector reads back as the predicted 2D, and the CSV."""
    m = load_manifest(setup["video_manifest"])
    run_predict(open_input(setup["video_manifest"]), setup["ckpt3d"], tmp_path / "p",
                _opts(video=False))
    paths = export_predictions(tmp_path / "p", ("bvh", "npz", "csv"))
    names = sorted(p.name for p in paths)
    assert names == ["S9_Walk_1_c1.bvh", "S9_Walk_1_c2.bvh", "bvh_fit.json", "poses.csv",
                     "positions_2d.npz", "positions_3d.npz"]
    bvh = load_bvh(tmp_path / "p" / "export" / "S9_Walk_1_c1.bvh")
    assert bvh.num_frames == FRAMES and bvh.names[0] == "pelvis"
    fit = json.loads((tmp_path / "p" / "export" / "bvh_fit.json").read_text())
    assert set(fit["joint_distance_mm"]) == {"S9_Walk_1_c1.bvh", "S9_Walk_1_c2.bvh"}
    df = pd.read_parquet(tmp_path / "p" / "poses.parquet")
    det = FileDetector.from_npz(tmp_path / "p" / "export" / "positions_2d.npz", m)
    keys = [FrameKey(m.dataset, "S9", "Walk", "1", cam, f) for cam in ("c1", "c2")
            for f in range(FRAMES)]
    joints, conf = det.detect([None] * len(keys), None, keys)
    want = np.stack([np.stack(v) for v in df.sort_values(["camera", "frame"]).joints_2d])
    np.testing.assert_allclose(joints, want, atol=1e-3)
    with np.load(tmp_path / "p" / "export" / "positions_3d.npz", allow_pickle=True) as z:
        p3d = z["positions_3d"].item()["S9"]["Walk 1"]
    assert len(p3d) == 2 and p3d[0].shape == (FRAMES, J, 3)
    assert np.abs(p3d[0]).max() < 5.0  # metres
    csv = pd.read_csv(tmp_path / "p" / "export" / "poses.csv")
    assert len(csv) == 2 * FRAMES and {"pelvis_x", "r_wrist_v"} <= set(csv.columns)


def test_a_run_stopped_half_way_keeps_what_it_predicted(setup, tmp_path, monkeypatch):
    """A fault injected into the second chunk (as a crash or Ctrl-C would land): the error
    reaches the caller, and the first chunk's rows, its overlay frames and the error are on
    disk."""
    import train.predict as P

    real, calls = P.predict_chunk, []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(P, "predict_chunk", failing)
    clips = open_input(setup["videos"][0])  # a lone video: 8 frames, chunks of 16 -> use 4
    opts = _opts(detector="file", detections=str(_footage_detections(setup, tmp_path)),
                 batch_size=4)
    monkeypatch.setattr(P, "MIN_CHUNK", 4)
    with pytest.raises(KeyboardInterrupt):
        run_predict(clips, setup["ckpt3d"], tmp_path / "out", opts)
    df = pd.read_parquet(tmp_path / "out" / "poses.parquet")
    assert list(df.frame) == [0, 1, 2, 3] and (df.status == "").all()
    info = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert info["error"].startswith("KeyboardInterrupt") and info["frames"] == 4
    cap = cv2.VideoCapture(str(tmp_path / "out" / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()


def _footage_detections(setup, tmp_path) -> Path:
    """The test video's ground-truth 2D as a detections file keyed like a lone video."""
    m = load_manifest(setup["video_manifest"])
    with np.load(m.gt_path(m.sequences[0])) as z:
        uv = z["joints_2d"][0]
    video = setup["videos"][0]
    det = to_table({"dataset": FOOTAGE_DATASET, "subject": video.parent.name,
                    "action": video.stem, "subaction": "1", "camera": "cam0",
                    "frame": np.arange(FRAMES, dtype=np.int32),
                    "image_path": "", "bbox": np.zeros((FRAMES, 4)), "joints_2d": uv,
                    "joints_2d_conf": np.ones((FRAMES, J)), "status": ""}, detection_schema(J))
    path = tmp_path / "footage_det.parquet"
    pq.write_table(det, path)
    return path


def test_inference_modules_do_not_import_the_trainer():
    import subprocess
    import sys

    code = ("import sys, train.predict, train.export, train.footage, train.__main__; "
            "print('train.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scores_against_a_stage1_runs_labels(setup, tmp_path):
    """--reference: the labels of a stage-1 run (here: half-size ground truth of camera c1, one
    joint not labelled) instead of the ground truth; only labelled rows count, in label units."""
    run = build_toy_shards(setup["manifest"], tmp_path / "stage1")
    report = run_predict(open_input(setup["video_manifest"]), setup["ckpt3d"], tmp_path / "p",
                         _opts(video=False, reference=str(run)))
    assert report.metrics["output"]["n"] == FRAMES  # S9, camera c1
    df = pd.read_parquet(tmp_path / "p" / "poses.parquet")
    df = df[df.camera == "c1"].sort_values("frame")
    X = np.stack([np.stack(v) for v in df.joints_3d])
    m = load_manifest(setup["video_manifest"])
    with np.load(m.gt_path(m.sequences[0])) as z:
        gt = z["joints_3d_cam"][list(z["cameras"]).index("c1")]
    label = (gt - gt[:, :1]) * 0.5
    mask = np.ones(label.shape[:2], bool)
    mask[:, 5] = False
    want = pose_metrics(X, label, mask)
    for k in ("n_mpjpe", "pa_mpjpe"):
        assert report.metrics["output"][k] == pytest.approx(np.mean(want[k]), rel=1e-5), k
    info = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert str(run) in info["against"]

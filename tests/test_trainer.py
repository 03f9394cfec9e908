"""Stage 2 end to end on a tiny dataset built here: configs, samples, training, resume, inference."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.geometry.cameras import box_from_points, box_to_square, crop_affine, project
from pipeline.joints import H36M17
from pipeline.store.manifest import load_manifest
from pipeline.store.shards import shard_dir, shard_name, to_table, write_shard
from train.__main__ import cli
from train.config import ConfigError, config_from_dict, load_config, with_overrides
from train.checkpoint import CheckpointError, load_checkpoint
from train.data import AugmentSpec, EpochSampler, PoseDataset, make_loader
from train.infer import load_model, predict
from train.samples import load_manifest_samples, load_shard_samples
from train.targets import decode, flip_coords
from train.trainer import RunOptions, Trainer, fit, train_step

REPO = Path(__file__).resolve().parents[1]
IMG = 64
CAMS = ("c1", "c2")
J = H36M17.num_joints
COLOURS = np.array([cv2.applyColorMap(np.array([[int(255 * j / (J - 1))]], np.uint8),
                                      cv2.COLORMAP_HSV)[0, 0] for j in range(J)])


# --- a tiny dataset: coloured joint dots on grey, two cameras, S1 train, S8 val, S9 test -------

def _make_sequence(root: Path, subject: str, frames: int, rng: np.random.Generator) -> None:
    K = np.array([[80.0, 0, 31.5], [0, 80.0, 31.5], [0, 0, 1]])
    j2d = np.zeros((len(CAMS), frames, J, 2))
    j3d = np.zeros((len(CAMS), frames, J, 3))
    for c, cam in enumerate(CAMS):
        for f in range(frames):
            root_pos = np.array([rng.uniform(-200, 200), rng.uniform(-200, 200),
                                 rng.uniform(2800, 3200)])
            X = root_pos + np.concatenate([np.zeros((1, 3)), rng.uniform(-550, 550, (J - 1, 3))])
            uv = project(X, K)
            img = np.full((IMG, IMG, 3), 90, np.uint8)
            for j in np.argsort(-X[:, 2]):  # far joints first
                cv2.circle(img, tuple(int(round(v)) for v in uv[j]), 2, COLOURS[j].tolist(), -1)
            p = root / "images" / subject / "Walk_1" / cam / f"{f:06d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            j2d[c, f], j3d[c, f] = uv, X
    bbox = box_from_points(j2d)
    (root / "gt" / subject).mkdir(parents=True, exist_ok=True)
    np.savez(root / "gt" / subject / "Walk_1.npz", joints_2d=j2d, joints_3d_cam=j3d, bbox=bbox,
             cameras=np.array(CAMS))


SUBJECTS = ("S1", "S8", "S9")


def build_toy_dataset(root: Path, frames: int = 16, seed: int = 0) -> Path:
    """Write images, ground truth and a manifest under ``root``; returns the manifest path."""
    rng = np.random.default_rng(seed)
    for subject in SUBJECTS:
        _make_sequence(root, subject, frames, rng)
    cam = {"fx": 80.0, "fy": 80.0, "cx": 31.5, "cy": 31.5, "width": IMG, "height": IMG,
           "distortion": [0.0, 0.0, 0.0, 0.0, 0.0]}
    manifest = {
        "dataset": "toy", "root": str(root), "joint_set": "h36m17",
        "cameras": {c: cam for c in CAMS},
        "frames": {"kind": "images",
                   "pattern": "images/{subject}/{action}_{subaction}/{camera}/{frame:06d}.jpg"},
        "ground_truth": {"joints_3d": "gt/{subject}/{action}_{subaction}.npz"},
        "sequences": [{"subject": s, "action": "Walk", "subaction": 1} for s in SUBJECTS],
        "splits": {"train": ["S1"], "val": ["S8"], "test": ["S9"]},
    }
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def build_toy_shards(manifest_path: Path, run_dir: Path, crop_size: int = 48,
                     invalid_joint: int = 5, with_gt: bool = True) -> Path:
    """A stage-1-like run folder: crops of the square boxes and one shard per camera pair,
    labels = ground truth scaled to a canonical size; ``invalid_joint`` marked invalid with NaN;
    ``with_gt=False``: the ``gt_joints_3d`` column is null (a dataset without ground truth)."""
    m = load_manifest(manifest_path)
    for seq in m.sequences:
        gt = np.load(m.gt_path(seq))
        F = gt["joints_2d"].shape[1]
        center, side = box_to_square(gt["bbox"][0].astype(np.float64), 0.15)
        paths = []
        for f in range(F):
            img = cv2.imread(str(m.frame_path(seq, "c1", f)))
            A = crop_affine(center[f], side[f], crop_size)
            rel = f"crops/{seq.subject}/c1/{f:06d}.jpg"
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(run_dir / rel), cv2.warpAffine(img, A, (crop_size, crop_size)),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            paths.append(rel)
        X = gt["joints_3d_cam"][0]
        rel3d = (X - X[:, :1]) * 0.5                                  # canonical scale
        valid = np.ones((F, J), bool)
        rel3d[:, invalid_joint] = np.nan
        valid[:, invalid_joint] = False
        bbox = np.concatenate([center - side[:, None] / 2, center + side[:, None] / 2], axis=1)
        cols = {"dataset": "toy", "subject": seq.subject, "action": seq.action,
                "subaction": seq.subaction, "frame": np.arange(F, dtype=np.int32),
                "camera": "c1", "partner_camera": "c2", "image_path": paths, "bbox": bbox,
                "joints_2d": gt["joints_2d"][0], "joints_2d_conf": np.ones((F, J)),
                "joints_3d": rel3d, "valid": valid, "reproj_error_px": np.zeros((F, J)),
                "pair_inlier_ratio": 1.0, "pair_rot_deg_to_gt": 0.5,
                "gt_joints_3d": X - X[:, :1] if with_gt else None}
        name = shard_name(seq.subject, seq.action, seq.subaction, "c1", "c2")
        write_shard(to_table(cols), shard_dir(run_dir, seq.subject, seq.action) /
                    f"{name}.parquet", {"rows": F})
    (run_dir / "config.json").write_text("{}")
    return run_dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    manifest = build_toy_dataset(root / "data")
    shards = build_toy_shards(manifest, root / "stage1")
    return {"root": root, "manifest": manifest, "shards": shards}


def tiny_config(toy: dict[str, Path], **sections) -> "object":
    d = {"name": "tiny", "seed": 3,
         "model": {"depth": 18, "width": 8, "deconv_channels": 16, "depth_bins": 8,
                   "input_size": 64},
         "data": {"source": "manifest", "manifest": str(toy["manifest"]),
                  "shards": str(toy["shards"]), "batch_size": 8, "workers": 0},
         "optim": {"epochs": 2, "milestones": [1], "lr": 0.002},
         "val": {"batch_size": 16}}
    for k, v in sections.items():
        d.setdefault(k, {}).update(v)
    return config_from_dict(d, "<test>")


# --- configuration --------------------------------------------------------------------------

def test_shipped_configs_load_and_are_named_by_their_settings():
    paths = sorted((REPO / "train" / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for p in paths:
        cfg = load_config(p)
        assert cfg.name == p.stem, p
        if cfg.student == "lifter":
            assert f"w{cfg.lifter.window}_h{cfg.lifter.hidden}" in p.stem, p
            continue
        assert f"r{cfg.model.depth}" in p.stem and f"{cfg.model.input_size}px" in p.stem, p
    paper = load_config(REPO / "train/configs/paper_r50_256px_d64_adam1e-3_140ep_pseudo.yaml")
    assert (paper.model.depth, paper.model.input_size, paper.model.depth_bins,
            paper.model.deconv_channels) == (50, 256, 64, 256)
    assert (paper.optim.lr, paper.optim.milestones, paper.optim.epochs,
            paper.data.batch_size) == (1e-3, (90, 120), 140, 32)


def test_config_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {depth: 18, widht: 32}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.widht"):
        load_config(p)
    p.write_text("optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.lr.*expected float"):
        load_config(p)
    p.write_text("data: {batch_size: 3.5}\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size.*expected int"):
        load_config(p)
    p.write_text("optim: {milestones: 90}\n")
    with pytest.raises(ConfigError, match=r"optim\.milestones.*expected a list"):
        load_config(p)
    p.write_text("data: {source: video}\n")
    with pytest.raises(ConfigError, match=r"data\.source.*'video'"):
        load_config(p)
    p.write_text("colour: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'colour'"):
        load_config(p)
    cfg = load_config(REPO / "train/configs/paper_r50_256px_d64_adam1e-3_140ep_pseudo.yaml")
    assert with_overrides(cfg, data={"workers": 0}).data.workers == 0
    with pytest.raises(ConfigError, match="data.wokers"):
        with_overrides(cfg, data={"wokers": 0})


# --- samples --------------------------------------------------------------------------------

def test_manifest_samples_decode_to_ground_truth_through_augmentation(toy):
    m = load_manifest(toy["manifest"])
    labels = load_manifest_samples(m, "train")
    assert len(labels) == 2 * 16 and labels.valid.all()
    aug = AugmentSpec(scale=0.25, rotation_deg=30, rotation_prob=1.0, flip_prob=0.5, color=0.2)
    ds = PoseDataset(labels, 64, H36M17, aug, seed=1)
    flips = 0
    for i in range(12):
        s = ds[(0, i)]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert s["target"].shape == (J, 3) and s["weight"].shape == (J, 3)
        meta = s["meta"]
        t = s["target"].numpy()[None]
        if meta["flipped"]:
            flips += 1
            t = flip_coords(t, H36M17.flip_permutation)
        out = decode(t, meta["affine"][None], meta["K"], meta["dist"],
                     np.array([meta["root_depth"]]), 64, meta["depth_range"])
        np.testing.assert_allclose(out[0], meta["gt_3d"], atol=0.05)
    assert 0 < flips < 12
    # the same key gives the same sample; another epoch another augmentation
    torch.testing.assert_close(ds[(0, 3)]["image"], ds[(0, 3)]["image"])
    assert not torch.equal(ds[(0, 3)]["image"], ds[(1, 3)]["image"])


def test_sample_pixels_show_the_joint_where_the_target_says(toy):
    """The toy images draw joint j in colour j: the crop pixel at each target has that colour."""
    m = load_manifest(toy["manifest"])
    labels = load_manifest_samples(m, "train")
    aug = AugmentSpec(scale=0.2, rotation_deg=25, rotation_prob=1.0, flip_prob=1.0, color=0.0)
    ds = PoseDataset(labels, 128, H36M17, aug, seed=2)
    from train.data import IMAGE_MEAN, IMAGE_STD

    hits = total = 0
    for i in range(6):
        s = ds[(0, i)]
        img = s["image"].numpy().transpose(1, 2, 0) * IMAGE_STD + IMAGE_MEAN
        uv = (s["target"].numpy()[:, :2] + 0.5) * 128 - 0.5
        # joint j of the flipped sample is the mirror slot: its dot has colour of perm[j]
        for j in range(J):
            x, y = np.round(uv[j]).astype(int)
            if 0 <= x < 128 and 0 <= y < 128:
                src = H36M17.flip_permutation[j]
                hits += np.abs(img[y, x] - COLOURS[src]).max() < 60
                total += 1
    assert total > 50 and hits / total > 0.8


def test_shard_samples_match_manifest_samples(toy):
    """A stored crop re-cut through its box gives the frame's crop and the same targets."""
    m = load_manifest(toy["manifest"])
    sh = load_shard_samples(toy["shards"], H36M17, manifest=m, subjects=("S1",))
    assert len(sh) == 16 and not sh.valid[:, 5].any() and sh.valid[:, 6].all()
    assert Path(sh.image_paths[0]).is_absolute() and Path(sh.image_paths[0]).exists()
    gt = load_manifest_samples(m, "train").subset(np.arange(16))        # camera c1 of S1
    a = PoseDataset(sh, 32, H36M17, None)[(0, 4)]
    b = PoseDataset(gt, 32, H36M17, None)[(0, 4)]
    ok = np.arange(J) != 5
    np.testing.assert_allclose(a["target"][ok, :2], b["target"][ok, :2], atol=1e-5)
    np.testing.assert_allclose(a["target"][6, 2] * 2, b["target"][6, 2], atol=1e-5)  # 0.5 scale
    assert float(a["weight"][5].sum()) == 0 and float(a["target"][5].abs().sum()) == 0
    assert float((a["image"] - b["image"]).abs().mean()) < 0.15         # resampled, JPEG twice
    with pytest.raises(ValueError, match="nulls|no shard rows"):
        load_shard_samples(toy["shards"], H36M17, subjects=("S7",))


def test_workers_and_resumed_epochs_give_the_same_batches(toy):
    m = load_manifest(toy["manifest"])
    ds = PoseDataset(load_manifest_samples(m, "train"), 32, H36M17, AugmentSpec(), seed=0)
    sampler = EpochSampler(len(ds), seed=0)
    sampler.set_epoch(2)
    full = [b["image"] for b in make_loader(ds, sampler, 4, 0, torch.device("cpu"), True)]
    sampler.set_epoch(2, start=8)
    tail = [b["image"] for b in make_loader(ds, sampler, 4, 2, torch.device("cpu"), True)]
    assert len(tail) == len(full) - 2
    for x, y in zip(full[2:], tail):
        assert torch.equal(x, y)


# --- training -------------------------------------------------------------------------------

def test_a_few_steps_reduce_the_loss(toy):
    cfg = tiny_config(toy, augment={"scale": 0.0, "rotation_prob": 0.0, "flip_prob": 0.0,
                                    "color": 0.0}, optim={"lr": 0.01})
    tr = Trainer(cfg, RunOptions(out=toy["root"] / "steps", device="cpu", progress=False,
                                 threads=1))
    batch = next(iter(tr.loader))
    losses = [float(train_step(tr.model, batch, tr.optimizer, tr.scaler, cfg, tr.device))
              for _ in range(30)]
    assert losses[-1] < 0.75 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_is_bitwise_identical_and_outputs_are_written(toy):
    cfg = tiny_config(toy, data={"source": "shards"})
    a = fit(cfg, RunOptions(out=toy["root"] / "straight", device="cpu", progress=False,
                            threads=1))
    b_out = toy["root"] / "interrupted"
    fit(cfg, RunOptions(out=b_out, device="cpu", max_steps=3, progress=False, threads=1))
    assert load_checkpoint(b_out / "last.pt")["step"] == 3
    b = fit(cfg, RunOptions(out=b_out, device="cpu", resume=True, progress=False, threads=1))
    assert a["step"] == b["step"] == 2 * (16 // 8)
    wa, wb = _weights(Path(a["last"])), _weights(Path(b["last"]))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    lines = [json.loads(x) for x in (b_out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (toy["root"] / "straight/metrics.jsonl").read_text()
           .splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert [x["train_loss"] for x in lines] == [x["train_loss"] for x in ref]
    assert [x["loss_curve"] for x in lines] == [x["loss_curve"] for x in ref]
    assert [x["val_pseudo_n_mpjpe"] for x in lines] == [x["val_pseudo_n_mpjpe"] for x in ref]
    assert {x["selection_metric"] for x in lines} == {"val_pseudo_n_mpjpe"}
    for name in ("config.yaml", "best.pt", "curves.png"):
        assert (b_out / name).exists(), name
    state = torch.load(b_out / "best.pt", weights_only=True)
    assert state["config"]["model"]["depth_bins"] == 8 and state["epoch"] >= 1
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    # a fresh run in the folder replaces the previous run's files
    fit(cfg, RunOptions(out=b_out, device="cpu", max_steps=2, progress=False, threads=1))
    assert [json.loads(x)["epoch"] for x in (b_out / "metrics.jsonl").read_text().splitlines()
            ] == [1]
    # a different experiment cannot resume into this folder
    other = tiny_config(toy, data={"source": "shards"}, optim={"lr": 0.1})
    with pytest.raises(CheckpointError, match="optim.lr"):
        Trainer(other, RunOptions(out=b_out, resume=True, progress=False))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    p = tmp_path / "last.pt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupt"):
        load_checkpoint(p)
    torch.save({"model": {}}, p)
    with pytest.raises(CheckpointError, match="lacks keys"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_trains_a_2d_network_and_infer_predicts(toy, tmp_path):
    cfg = tiny_config(toy, model={"depth_bins": 1}, optim={"epochs": 1})
    cfg_path = tmp_path / "tiny2d.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "run2d"
    res = CliRunner().invoke(cli, ["fit", "--config", str(cfg_path), "--out", str(out),
                                   "--device", "cpu", "--no-progress", "--workers", "0",
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "best.pt" in res.output and "metrics.jsonl" in res.output
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_gt_px_error"] > 0 and "val_gt_n_mpjpe" not in rec
    assert rec["selection_metric"] == "val_gt_px_error" and rec["val_gt_n"] == 32  # S8, 2 cams
    assert "best.pt by:  lowest val_gt_px_error" in res.output
    model, config = load_model(str(out / "best.pt"))
    assert config["model"]["input_size"] == 64 and not model.training
    crops = np.random.default_rng(0).integers(0, 255, (3, 100, 100, 3), dtype=np.uint8)
    coords, conf = predict(model, crops, batch_size=2)
    assert coords.shape == (3, J, 3) and conf.shape == (3, J)
    assert np.all(coords[..., 2] == 0) and np.all((conf >= 0) & (conf <= 1))
    same, _ = predict(model, np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA)
                                       for c in crops]))
    np.testing.assert_allclose(coords, same, atol=1e-6)
    assert "--resume" in CliRunner().invoke(cli, ["fit", "--help"]).output

    # Stage 1's detector on this checkpoint: a crop of the box, the network, back to pixels.
    from pipeline.geometry.cameras import crop_affine
    from pipeline.detect.network import FrameKey, NetDetector
    from train.targets import coords_to_image_pixels

    det = NetDetector(out / "best.pt", threads=1)
    image = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    box = np.array([[30.0, 10.0, 110.0, 90.0]])
    keys = [FrameKey("toy", "S1", "A", "1", "c0", i) for i in range(2)]
    joints, conf = det.detect([image, None], np.repeat(box, 2, 0), keys)
    A = crop_affine(np.array([70.0, 50.0]), 80.0, 64)
    crop = cv2.warpAffine(image, A, (64, 64), flags=cv2.INTER_LINEAR)
    ref, ref_conf = predict(model, crop[None])
    np.testing.assert_allclose(joints[0], coords_to_image_pixels(ref[..., :2], A[None], 64)[0],
                               atol=1e-3)
    np.testing.assert_allclose(conf[0], ref_conf[0], atol=1e-6)
    assert np.isnan(joints[1]).all() and (conf[1] == 0).all()  # unreadable frame: no person


def test_two_process_torchrun_job_trains_and_writes_one_run(toy, tmp_path):
    """DistributedDataParallel on CPU (gloo): two ranks split each epoch, rank 0 writes."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    cfg = tiny_config(toy, data={"source": "shards", "batch_size": 4}, optim={"epochs": 1})
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "ddp"
    res = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train", "fit",
         "--config", str(cfg_path), "--out", str(out), "--device", "cpu", "--threads", "1",
         "--no-progress"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run folder:") == 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 16 // 2 // 4
    assert load_checkpoint(out / "best.pt")["step"] == 2
    shutil.rmtree(out)


def test_inference_does_not_import_the_trainer():
    """Stage 1's detector and make eval load checkpoints through train.checkpoint/train.infer;
    neither pulls in the training loop."""
    import subprocess
    import sys

    code = ("import sys, train.infer, train.evaluation, eval.evaluate; "
            "print('train.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# --- model selection: validation split, pseudo-labels, no test subjects -----------------------

def test_no_config_validates_on_the_test_split(tmp_path):
    """Shipped configs validate on held-out training-side subjects; a config that names the
    test split, or validates on its training split, is refused naming the file and key."""
    from train.trainer import check_splits

    for p in sorted((REPO / "train" / "configs").glob("*.yaml")):
        cfg = load_config(p)
        if cfg.val.frame_holdout > 0:  # one recording (make real-finetune): held-out frames;
            continue                   # tests/test_finetune.py checks that split
        m = load_manifest(REPO / cfg.data.manifest)
        train, val = check_splits(cfg, m)
        assert val and not set(val) & set(train) and not set(val) & set(m.splits["test"]), p
    bad = tmp_path / "bad.yaml"
    bad.write_text("val: {split: test}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: val\.split: 'test' is the test split"):
        load_config(bad)
    bad.write_text("data: {split: train}\nval: {split: train}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: val\.split: 'train' is also data\.split"):
        load_config(bad)


def test_validation_subjects_overlapping_training_or_test_are_refused(toy, tmp_path):
    from train.trainer import check_splits

    raw = yaml.safe_load(toy["manifest"].read_text())
    for splits, message in (({"train": ["S1", "S8"], "val": ["S8"], "test": ["S9"]},
                             r"val\.split 'val' shares subjects \['S8'\] with the training"),
                            ({"train": ["S1"], "val": ["S8", "S9"], "test": ["S9"]},
                             r"val\.split 'val' shares subjects \['S9'\] with the test"),
                            ({"train": ["S1"], "test": ["S9"]},
                             r"val\.split 'val' is not under 'splits'")):
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(dict(raw, splits=splits)))
        with pytest.raises(ValueError, match=message):
            check_splits(tiny_config(toy), load_manifest(path))


def _label_oracle(samples, size: int, depth_range: float, dz: float = 0.0):
    """A PredictFn answering each crop with its sample's own label target (in the order
    iter_crops asks), z shifted by ``dz``."""
    from pipeline.geometry.cameras import crop_affine as affine
    from train.targets import encode

    A = np.stack([affine(c, s, size) for c, s in zip(samples.center, samples.side)])
    target = encode(samples.joints_2d, samples.z_rel, A, size, depth_range).astype(np.float64)
    target[..., 2] += dz
    seen = [0]

    def fn(crops: np.ndarray) -> np.ndarray:
        out = np.nan_to_num(target[seen[0]:seen[0] + len(crops)])
        seen[0] += len(crops)
        return out

    return fn


def test_pseudo_label_validation_measures_against_the_pseudo_labels(toy):
    """Shard samples of the validation subject: crops re-cut from the stored JPEGs match the
    frame's crops, the label root depth matches the label's 2D, and the label itself scores 0."""
    from train.evaluation import evaluate_samples, iter_crops

    m = load_manifest(toy["manifest"])
    sh = load_shard_samples(toy["shards"], H36M17, manifest=m, subjects=("S8",))
    gt = load_manifest_samples(m, "val").subset(np.arange(16))          # camera c1 of S8
    assert sh.label_source == "pseudo" and gt.label_source == "gt" and len(sh) == 16
    assert np.isnan(sh.gt_3d).all() and not sh.label_mask[:, 5].any()
    np.testing.assert_allclose(sh.root_depth, 0.5 * gt.root_depth, rtol=1e-5)  # 0.5: canonical
    (_, a, Aa), (_, b, Ab) = next(iter_crops(sh, 32)), next(iter_crops(gt, 32))
    np.testing.assert_allclose(Aa, Ab, atol=1e-4)                       # float32 boxes
    assert np.abs(a.astype(float) - b.astype(float)).mean() < 12          # JPEG twice
    res = evaluate_samples(_label_oracle(sh, 32, 2000.0), sh, 32, 2000.0, pck_threshold_px=5.0)
    means = res.means()
    assert means["n"] == 16
    for k in ("mpjpe", "n_mpjpe", "pa_mpjpe", "px_error"):
        assert means[k] < 1e-3, (k, means[k])                           # float32 shards
    off = evaluate_samples(_label_oracle(sh, 32, 2000.0, dz=0.05), sh, 32, 2000.0).means()
    assert off["mpjpe"] > 10 and off["n_mpjpe"] > 1


def test_self_supervised_run_reads_no_ground_truth(toy, tmp_path):
    """A shards run on a manifest with no ground_truth and no extrinsics, its root an empty
    folder, shards without gt_joints_3d: it trains, validates on the val subject's
    pseudo-labels and picks best.pt on val_pseudo_n_mpjpe."""
    raw = yaml.safe_load(toy["manifest"].read_text())
    shards = build_toy_shards(toy["manifest"], tmp_path / "stage1", with_gt=False)
    del raw["ground_truth"]
    assert "extrinsics" not in raw
    (tmp_path / "empty").mkdir()
    raw["root"] = str(tmp_path / "empty")                  # no frames, no gt/ on this root
    path = tmp_path / "no_gt.yaml"
    path.write_text(yaml.safe_dump(raw))
    m = load_manifest(path)
    assert not m.ground_truth and not m.extrinsics
    cfg = tiny_config(toy, data={"source": "shards", "manifest": str(path),
                                 "shards": str(shards)}, optim={"epochs": 1})
    res = fit(cfg, RunOptions(out=tmp_path / "run", device="cpu", progress=False, threads=1))
    rec = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["selection_metric"] == res["selection_metric"] == "val_pseudo_n_mpjpe"
    assert np.isfinite(rec["val_pseudo_n_mpjpe"]) and rec["val_pseudo_n"] == 16
    assert np.isfinite(rec["val_pseudo_pa_mpjpe"]) and not any("_gt_" in k for k in rec)
    assert res["best"] and res["best_metric"] == rec["val_pseudo_n_mpjpe"]


def test_a_run_on_the_shards_ground_truth_is_named_supervised(toy, tmp_path):
    """data.target_column gt_joints_3d trains on the ground truth stage 1 copied into the
    shards: it validates against the validation subject's ground truth and names its metrics
    val_gt_* (it logged val_pseudo_* as if self-supervised). The test subject's rows are never
    read: here its ground truth is null, which any read of it refuses."""
    import shutil

    from train.trainer import load_labels

    shards = build_toy_shards(toy["manifest"], tmp_path / "stage1")
    no_gt = build_toy_shards(toy["manifest"], tmp_path / "stage1_no_gt", with_gt=False)
    test_rows = shard_dir(shards, "S9", "Walk")
    shutil.rmtree(test_rows)
    shutil.copytree(shard_dir(no_gt, "S9", "Walk"), test_rows)
    with pytest.raises(ValueError, match="'gt_joints_3d' has nulls"):
        load_shard_samples(shards, H36M17, "gt_joints_3d", subjects=("S9",))
    cfg = tiny_config(toy, data={"source": "shards", "shards": str(shards),
                                 "target_column": "gt_joints_3d"}, optim={"epochs": 1})
    m = load_manifest(toy["manifest"])
    train, val = load_labels(cfg, m)
    truth = load_manifest_samples(m, "val").subset(np.arange(16))          # camera c1 of S8
    assert train.label_source == val.label_source == "gt"
    assert set(train.subject) == {"S1"} and set(val.subject) == {"S8"}
    keep = np.arange(J) != 5                                                # the invalid joint
    np.testing.assert_allclose(val.label_3d[:, keep], truth.label_3d[:, keep], atol=0.05)  # mm
    res = fit(cfg, RunOptions(out=tmp_path / "run", device="cpu", progress=False, threads=1))
    rec = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["selection_metric"] == res["selection_metric"] == "val_gt_n_mpjpe"
    assert np.isfinite(rec["val_gt_n_mpjpe"]) and not any("_pseudo_" in k for k in rec)


def test_cli_milestones_set_the_schedule_and_bad_ones_are_usage_errors(toy, tmp_path):
    """--epochs with --milestones: another schedule (make train's TRAIN_2D_OPTS / TRAIN_OPTS),
    recorded in the run's resolved config; a malformed list is refused naming the option."""
    cfg = tiny_config(toy, model={"depth_bins": 1}, optim={"epochs": 1, "milestones": []})
    cfg_path = tmp_path / "tiny2d.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    base = ["fit", "--config", str(cfg_path), "--device", "cpu", "--no-progress", "--workers",
            "0", "--threads", "1", "--max-steps", "1", "--epochs", "3"]
    res = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "a"), "--milestones", "1,2"])
    assert res.exit_code == 0, res.output
    optim = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["optim"]
    assert (optim["epochs"], list(optim["milestones"])) == (3, [1, 2])
    bad = CliRunner().invoke(cli, base + ["--out", str(tmp_path / "b"), "--milestones", "2,x"])
    assert bad.exit_code == 2 and "--milestones" in bad.output and "'2,x'" in bad.output
    assert not (tmp_path / "b").exists()

"""Issue 23's instruments: the trainer's training-label probe, the study runner (per-epoch test
curve, resumable result), training-data variants and ``synthetic.frame_stride``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.store.manifest import ManifestError, load_manifest
from pipeline.synthetic import generate as G
from tests.test_trainer import build_toy_dataset, tiny_config
from tools.stage2_study import (StudyRun, Variant, mean_std, run_study, score_checkpoint,
                                study_table, split_samples, variant_manifest)
from train.checkpoint import load_model
from train.evaluation import evaluate_samples, model_predictor
from train.samples import load_manifest_samples
from train.trainer import RunOptions, fit

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "synthetic.yaml"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    return {"root": root, "manifest": build_toy_dataset(root / "data"), "shards": root}


def test_training_probe_measures_the_training_labels_each_epoch(toy):
    cfg = tiny_config(toy, val={"train_samples": 6})
    out = toy["root"] / "probe"
    fit(cfg, RunOptions(out=out, device="cpu", progress=False, threads=1))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all("train_gt_n_mpjpe" in x and "val_gt_n_mpjpe" in x for x in lines)
    # the last epoch's probe is the trained network on 6 evenly spaced training samples
    model, _ = load_model(out / "last.pt")
    probe = load_manifest_samples(load_manifest(toy["manifest"]), "train").evenly_spaced(6)
    again = evaluate_samples(model_predictor(model), probe, 64, cfg.data.depth_range_mm)
    assert lines[-1]["train_gt_n_mpjpe"] == pytest.approx(again.means()["n_mpjpe"], rel=1e-5)
    assert lines[-1]["train_gt_n_mpjpe"] != lines[-1]["val_gt_n_mpjpe"]


def test_probe_off_by_default(toy):
    out = toy["root"] / "noprobe"
    fit(tiny_config(toy), RunOptions(out=out, device="cpu", progress=False, threads=1,
                                     max_steps=4))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert not any(k.startswith("train_gt") for k in line)


def test_study_run_scores_the_test_split_per_epoch_and_resumes(toy, tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(toy).to_dict()))
    run = StudyRun(config=str(cfg_path), out=tmp_path / "run", seed=5, epochs=2,
                   milestones=(1,), base_manifest=str(toy["manifest"]), test_probe=8,
                   train_probe=4, threads=1)
    result = run_study(run)
    curve = [json.loads(x) for x in (run.out / "test_curve.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curve] == [1, 2] and all(c["test_n"] == 8 for c in curve)
    full = split_samples(str(toy["manifest"]), 0.15, 0)
    assert result["test_n"] == len(full) == 2 * 16  # every test frame-view, S9 only
    assert result["test_n_mpjpe"] == pytest.approx(
        score_checkpoint(run.out / "best.pt", full)["n_mpjpe"])
    assert result["seed"] == 5 and result["best_epoch"] in (1, 2)
    # a finished run is read back, not retrained
    mtime = (run.out / "last.pt").stat().st_mtime
    assert run_study(run) == result and (run.out / "last.pt").stat().st_mtime == mtime
    table = study_table({"tiny": [run.out]})
    assert "| tiny | 5 |" in table and "(n=1)" in table


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 3.0]) == "2.0 ± 1.4 (n=2)"
    assert mean_std([4.0]) == "4.0 (n=1)"


def test_variant_keeps_validation_and_test_subjects_and_links_them(tmp_path):
    path = variant_manifest(str(MANIFEST), Variant("v", extra_subjects=3, subactions=2,
                                                   frames=10, frame_stride=3), tmp_path / "v")
    base, m = load_manifest(MANIFEST), load_manifest(path)
    assert m.splits["val"] == base.splits["val"] and m.splits["test"] == base.splits["test"]
    n = len(base.splits["train"])
    assert m.splits["train"][:n] == base.splits["train"]
    new = m.splits["train"][n:]
    assert len(new) == 3 and not set(new) & set(base.extrinsics)     # new names, new people
    assert len(m.sequences_in("train")) == (n + 3) * 5 * 2
    assert [q.key for q in m.sequences_in("test")] == [q.key for q in base.sequences_in("test")]
    raw = yaml.safe_load(path.read_text())
    assert raw["extrinsics"][new[1]] == raw["extrinsics"][base.splits["train"][1]]
    assert raw["synthetic"]["splits"]["train"] == {"frames_per_sequence": 10, "frame_stride": 3}
    assert G.frames_per_sequence(m, split="train") == 10 and G.frame_stride(m, "train") == 3
    assert G.frames_per_sequence(m, split="test") == G.frames_per_sequence(base, split="test")
    same = variant_manifest(str(MANIFEST), Variant("w", extra_subjects=1), tmp_path / "w")
    assert G.frame_stride(load_manifest(same), "train") == G.frame_stride(base, "train")
    for s in ("S8", "S9", "S11"):
        link = tmp_path / "v" / "data" / "gt" / s
        assert link.is_symlink() and link.resolve() == (base.root / "gt" / s).resolve()


def _stride_manifest(tmp_path: Path, stride: object) -> Path:
    raw = yaml.safe_load(MANIFEST.read_text())
    raw["synthetic"]["frame_stride"] = stride
    raw["root"] = str(tmp_path / "data")
    path = tmp_path / f"stride_{stride}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_frame_stride_samples_the_same_motion_sparser(tmp_path):
    m1 = load_manifest(_stride_manifest(tmp_path, 1))
    m3 = load_manifest(_stride_manifest(tmp_path, 3))
    seq = next(q for q in m1.sequences_in("test") if q.action == "Gestures")
    dense = G.simulate_sequence(m1, seq, 10).joints_world
    sparse = G.simulate_sequence(m3, seq, 4).joints_world
    np.testing.assert_allclose(sparse, dense[[0, 3, 6, 9]], atol=1e-6)
    assert G.frame_stride(m1) == 1 and G.frame_stride(m3) == 3
    with pytest.raises(ManifestError, match="frame_stride"):
        G.frame_stride(load_manifest(_stride_manifest(tmp_path, 0)))


def test_random_poses_stay_within_the_limits_and_move_smoothly():
    from pipeline.synthetic.motion import RANDOM_RANGE, motion_for, pose_sequence
    from pipeline.synthetic.skeleton import LIMITS_DEG, sample_body

    t = np.arange(200) / 50.0
    a = motion_for("Random", np.random.default_rng(3), t, 1300.0)
    b = motion_for("Random", np.random.default_rng(3), t, 1300.0)
    other = motion_for("Random", np.random.default_rng(4), t, 1300.0)
    for bone, limits in LIMITS_DEG.items():
        lim = np.asarray(limits, dtype=float)
        mid, half = lim.mean(1), (lim[:, 1] - lim[:, 0]) / 2 * RANDOM_RANGE
        assert (a.semantic[bone] >= mid - half - 1e-9).all(), bone
        assert (a.semantic[bone] <= mid + half + 1e-9).all(), bone
        np.testing.assert_array_equal(a.semantic[bone], b.semantic[bone])
    # many distinct poses: the right shoulder's flexion spans most of its drawn range
    flex = a.semantic["r_elbow"][:, 0]
    assert np.ptp(flex) > 0.5 * (175 + 60) * RANDOM_RANGE
    assert not np.allclose(flex, other.semantic["r_elbow"][:, 0])
    P, _ = pose_sequence(sample_body(np.random.default_rng(0)), a, np.zeros(2))
    speed = np.linalg.norm(np.diff(P, axis=0), axis=-1).max()  # mm per 1/50 s
    assert speed < 150, speed
    assert P[..., 2].min() > 0  # on or above the floor


def test_nearest_pose_errors_find_the_closest_training_pose():
    from tools.stage2_study import nearest_pose_errors

    rng = np.random.default_rng(0)
    train = rng.normal(0, 300, (50, 17, 3))
    test = np.concatenate([train[[4, 9]], 2 * train[[7]], train[[1]] + 30.0])
    r = nearest_pose_errors(train, test, chunk=2)
    # exact copies: 0; twice a training pose: 0 after scale alignment; 30 mm offset per axis
    per = np.array([0.0, 0.0, 0.0, np.sqrt(3) * 30.0])
    assert r["nn_n_mpjpe"] == pytest.approx(per.mean(), rel=0.05)
    assert r["nn_mpjpe"] > r["nn_n_mpjpe"] and r["train_poses"] == 50


def test_twod_table_scores_a_2d_network_on_every_split(toy, tmp_path):
    from eval.evaluate import evaluate_2d
    from tools.stage2_study import twod_row, twod_table

    cfg = tiny_config(toy, model={"depth_bins": 1}, optim={"epochs": 1})
    out = tmp_path / "run2d"
    fit(cfg, RunOptions(out=out, device="cpu", progress=False, threads=1))
    row = twod_row("tiny", out, str(toy["manifest"]), frame_step=2)
    for split in ("train", "val", "test"):  # one subject each: 2 cameras x every 2nd of 16
        again = evaluate_2d(toy["manifest"], tmp_path / split, out / "best.pt", split, 2)
        assert row[f"{split}_px"] == pytest.approx(float(again.loc["overall", "px_error"]))
        assert row[f"{split}_n"] == 16
    assert row["epochs"] == 1 and row["best_epoch"] == 1 and row["steps"] > 0
    assert row["train_px"] != row["test_px"]
    table = twod_table([row])
    assert f"| tiny | `{toy['manifest']}` | 1 (1) |" in table
    assert f"{row['test_px']:.2f} |" in table

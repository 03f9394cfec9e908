"""Pseudo-label quality report on tiny shards built here with the shard contract."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval.metrics import mpjpe
from eval.report import label_errors, load_run, per_joint_table, per_pair_table, write_report
from pipeline.joints import H36M17
from pipeline.store.shards import shard_dir, shard_name, to_table, write_shard

J = H36M17.num_joints
WRIST = H36M17.index("r_wrist")


def _gt(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, J, 3)) * 250
    return x - x[:, :1]


def _write_pair(run: Path, cam: str, partner: str, labels: np.ndarray, gt: np.ndarray | None,
                valid: np.ndarray, reproj: np.ndarray, rot: float) -> None:
    n = len(labels)
    t = to_table({
        "dataset": "tiny", "subject": "S9", "action": "Walking", "subaction": "1",
        "frame": np.arange(n, dtype=np.int32), "camera": cam, "partner_camera": partner,
        "image_path": [f"crops/{cam}/{i}.jpg" for i in range(n)],
        "bbox": np.tile([0.0, 0, 100, 100], (n, 1)), "joints_2d": np.zeros((n, J, 2)),
        "joints_2d_conf": np.ones((n, J)), "joints_3d": labels, "valid": valid,
        "reproj_error_px": reproj, "pair_inlier_ratio": 0.9, "pair_rot_deg_to_gt": rot,
        "gt_joints_3d": gt})
    path = shard_dir(run, "S9", "Walking") / (shard_name("S9", "Walking", "1", cam, partner)
                                              + ".parquet")
    write_shard(t, path, {"rows": n})


def make_run(run: Path, noise_mm: float = 0.0, geometry: str = "pooled", noise_px: float = 0.0,
             seed: int = 0) -> dict[str, np.ndarray]:
    """Pair (A, B): labels = GT / 2 plus noise; the right wrist is never valid (garbage there).
    Pair (A, C): no ground truth. Pair (B, C): failed in geometry.parquet, no rows."""
    rng = np.random.default_rng(seed + 1000)
    gt = _gt(6, seed)
    labels = gt / 2 + rng.normal(size=gt.shape) * noise_mm
    labels -= labels[:, :1]
    valid = np.ones((6, J), bool)
    valid[:, WRIST] = False
    labels[:, WRIST] = 1e5
    reproj = np.where(valid, 2.0, 1e6)
    _write_pair(run, "A", "B", labels, gt, valid, reproj, 1.5)
    _write_pair(run, "B", "A", labels, gt, valid, reproj, 1.5)
    _write_pair(run, "A", "C", labels[:3], None, valid[:3], reproj[:3], float("nan"))
    pd.DataFrame({"subject": ["S9", "S9", "S9"], "cam_a": ["B", "A", "C"],
                  "cam_b": ["A", "C", "B"], "rot_err_deg": [1.25, np.nan, np.nan],
                  "inlier_ratio": [0.9, 0.8, 0.1], "ok": [True, True, False],
                  "reason": ["", "", "too few inliers"]}).to_parquet(run / "geometry.parquet")
    (run / "config.json").write_text(json.dumps(
        {"geometry": geometry, "detector": "gt", "noise_px": noise_px, "outlier_rate": 0.0,
         "metric_scale": geometry == "calibrated"}))
    return {"gt": gt, "labels": labels, "valid": valid}


def test_exact_labels_have_zero_error_and_masks_apply(tmp_path):
    make_run(tmp_path)
    run = load_run(tmp_path)
    le = label_errors(run.table)
    assert len(le.rows) == 15 and le.rows["has_gt"].sum() == 12
    gt_rows = le.rows[le.rows["has_gt"]]
    np.testing.assert_allclose(gt_rows["n_mpjpe"], 0.0, atol=1e-3)   # GT / 2: scale only
    np.testing.assert_allclose(gt_rows["pa_mpjpe"], 0.0, atol=1e-3)
    assert le.rows.loc[~le.rows["has_gt"], "n_mpjpe"].isna().all()
    np.testing.assert_allclose(le.rows["valid_share"], 16 / 17)
    np.testing.assert_allclose(le.rows["reproj_px"], 2.0)          # 1e6 of invalid excluded
    assert "mpjpe" not in le.rows                                   # canonical scale: no MPJPE


def test_per_pair_table_merges_geometry(tmp_path):
    make_run(tmp_path)
    run = load_run(tmp_path)
    pairs = per_pair_table(label_errors(run.table), run.geometry).set_index(["cam_a", "cam_b"])
    assert list(pairs.index) == [("A", "B"), ("A", "C"), ("B", "C")]
    ab, ac, bc = pairs.loc[("A", "B")], pairs.loc[("A", "C")], pairs.loc[("B", "C")]
    assert (ab["rows"], ab["gt_rows"]) == (12, 12)
    assert ab["geom_rot_err_deg"] == 1.25 and ab["rot_err_deg"] == pytest.approx(1.5)
    assert ab["valid_share"] == pytest.approx(16 / 17) and ab["reproj_px"] == pytest.approx(2.0)
    assert (ac["rows"], ac["gt_rows"]) == (3, 0) and np.isnan(ac["n_mpjpe"])
    assert bc["rows"] == 0 and not bc["ok"] and bc["reason"] == "too few inliers"


def test_noisy_labels_match_direct_metrics(tmp_path):
    arr = make_run(tmp_path, noise_mm=20.0)
    le = label_errors(load_run(tmp_path).table)
    direct = mpjpe(arr["labels"], arr["gt"], arr["valid"], "scale")
    rows = le.rows[le.rows["has_gt"] & (le.rows["camera"] == "A")].sort_values("frame")
    np.testing.assert_allclose(rows["n_mpjpe"], direct, rtol=1e-4)
    assert np.all(rows["pa_mpjpe"] <= rows["n_mpjpe"] + 1e-6)          # PA has more freedom
    joints = per_joint_table(le)
    assert np.isnan(joints.loc["r_wrist", "n_mpjpe"]) and joints.loc["r_wrist", "gt_samples"] == 0
    assert joints.loc["r_wrist", "valid_share"] == 0.0
    assert joints.loc["pelvis", "n_mpjpe"] == pytest.approx(0.0, abs=1e-3)   # root-relative
    assert joints.drop(["pelvis", "r_wrist"])["n_mpjpe"].gt(1.0).all()


def test_write_report_several_runs(tmp_path):
    runs = []
    for noise, mode in ((0.0, "pooled"), (5.0, "pooled"), (0.0, "per-frame"), (5.0, "per-frame")):
        r = tmp_path / f"{mode}_{noise:g}"
        r.mkdir()
        make_run(r, noise_mm=noise * 4 + (10 if mode == "per-frame" else 0), geometry=mode,
                 noise_px=noise)
        runs.append(r)
    summary = write_report(runs, tmp_path / "report")
    out = tmp_path / "report"
    assert list(summary.index) == [r.name for r in runs]
    assert summary.loc["pooled_0", "n_mpjpe"] < 1e-2
    assert summary.loc["pooled_5", "n_mpjpe"] > summary.loc["pooled_0", "n_mpjpe"]
    assert summary.loc["pooled_0", "pairs_ok"] == "2/3"
    for f in ("report.md", "summary.csv", "error_vs_noise.png", "pooled_5/per_pair.csv",
              "pooled_5/per_joint.md", "pooled_5/error_hist.png", "pooled_5/per_joint.png",
              "pooled_5/skeletons.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "n_mpjpe = scale" in md and "pa_mpjpe = procrustes" in md and "too few inliers" in md
    back = pd.read_csv(out / "summary.csv", index_col=0)
    np.testing.assert_allclose(back["n_mpjpe"], summary["n_mpjpe"])


def test_calibrated_run_reports_mpjpe(tmp_path):
    make_run(tmp_path, geometry="calibrated")
    run = load_run(tmp_path)
    le = label_errors(run.table, run.metric_scale)
    # labels are GT / 2: the metric MPJPE is half the GT's mean joint distance from the root
    gt = le.gt[le.rows["has_gt"].to_numpy()]
    v = le.valid[le.rows["has_gt"].to_numpy()]
    expected = np.where(v, np.linalg.norm(gt, axis=-1) / 2, 0).sum(1) / v.sum(1)
    np.testing.assert_allclose(le.rows.loc[le.rows["has_gt"], "mpjpe"], expected, rtol=1e-4)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_cli_report(tmp_path):
    from click.testing import CliRunner

    from eval.__main__ import cli

    make_run(tmp_path / "run", noise_mm=3.0)
    r = CliRunner().invoke(cli, ["report", "--run", str(tmp_path / "run"), "--out",
                                 str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "n_mpjpe" in r.output and (tmp_path / "rep" / "run" / "per_pair.md").is_file()
    assert not (tmp_path / "rep" / "error_vs_noise.png").exists()     # one run: no noise plot


def test_report_survives_ground_truth_gaps_and_invalid_joints(tmp_path):
    """Rows whose ground truth is NaN (all joints, or some), rows with a single valid joint and
    labels that are invalid everywhere: the report measures what it can and plots the rest
    (before: `LinAlgError: SVD did not converge`, and a crash in the skeleton plot)."""
    run = tmp_path / "gaps"
    gt = _gt(6, 3)
    gt[0] = np.nan                   # a frame without ground truth
    gt[1, 5:9] = np.nan              # missing ground-truth joints
    labels = gt / 2
    labels = np.where(np.isfinite(labels), labels, 0.0)
    valid = np.ones((6, J), bool)
    valid[2] = False
    valid[2, 0] = True               # only the root
    valid[3] = False                 # no label at all
    reproj = np.where(valid, 1.0, 1e6)
    _write_pair(run, "A", "B", labels, gt, valid, reproj, 0.5)
    (run / "config.json").write_text(json.dumps({"geometry": "pooled", "detector": "gt",
                                                 "metric_scale": False}))
    le = label_errors(load_run(run).table)
    measured = le.rows["n_mpjpe"]
    assert np.isfinite(measured.iloc[[1, 4, 5]]).all()          # partial GT rows are measured
    np.testing.assert_allclose(measured.iloc[[4, 5]], 0.0, atol=1e-3)
    assert measured.iloc[[0, 3]].isna().all()                     # nothing to measure: NaN
    assert measured.iloc[2] == 0.0                                # the root alone: 0 by definition
    summary = write_report([run], tmp_path / "report")
    assert np.isfinite(summary.loc["gaps", "n_mpjpe"])
    assert (tmp_path / "report" / "gaps" / "skeletons.png").is_file()

"""Two-view geometry on real camera rigs and real / random human motion (pipeline.geometry.epipolar)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.geometry import epipolar as epi

from pipeline.geometry import loops

from pipeline.geometry import triangulation as tri
from pipeline.geometry.cameras import (angle_between_deg, pixels_to_normalized, project, relative_pose,
                              rotation_error_deg, world_to_camera)
from pipeline.joints import H36M17
from pipeline.synthetic.crowd import look_at

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOCAL = 1145.0


# --- scenes built here --------------------------------------------------------------------------

def ring_rig() -> dict[str, dict]:
    """Four cameras on a 5 m ring at 1.6 m height (used when the H36M file is absent)."""
    K = np.array([[FOCAL, 0, 500.0], [0, FOCAL, 500.0], [0, 0, 1]])
    rig = {}
    for name, az in (("c0", 0.0), ("c1", 135.0), ("c2", 48.0), ("c3", 225.0)):
        a = np.radians(az)
        R, t = look_at(np.array([5000 * np.cos(a), 5000 * np.sin(a), 1600.0]),
                       np.array([0.0, 0.0, 1000.0]))
        rig[name] = {"K": K, "dist": np.array([-0.2, 0.24, -0.001, -0.001, 0.0]), "R": R, "t": t}
    return rig


def h36m_rig(subject: str = "S1") -> dict[str, dict]:
    """The real Human3.6M cameras of one subject (rotations re-orthonormalised), or the ring."""
    path = DATA / "h36m_cameras.json"
    if not path.exists():
        return ring_rig()
    d = json.loads(path.read_text())
    rig = {}
    for c in d["camera_ids"]:
        U, _, Vt = np.linalg.svd(np.array(d["extrinsics"][subject][c]["R_w2c"]))
        rig[c] = {"K": np.array(d["intrinsics"][c]["K"]),
                  "dist": np.array(d["intrinsics"][c]["distortion_opencv"]),
                  "R": U @ Vt, "t": np.array(d["extrinsics"][subject][c]["t_mm"])}
    return rig


def random_motion(F: int, seed: int) -> np.ndarray:
    """(F, 17, 3) world poses (mm): a random H36M-17 skeleton walking about the room centre.

    Bone lengths are the reference lengths; bone directions are a standing template plus random
    perturbations; the root wanders in a 2 m square with a random heading."""
    rng = np.random.default_rng(seed)
    template = {"r_hip": (-1, 0, 0), "l_hip": (1, 0, 0), "r_knee": (0, 0, -1),
                "r_ankle": (0, 0, -1), "l_knee": (0, 0, -1), "l_ankle": (0, 0, -1),
                "spine": (0, 0, 1), "thorax": (0, 0, 1), "neck": (0, 0.2, 1), "head": (0, 0, 1),
                "l_shoulder": (1, 0, 0), "r_shoulder": (-1, 0, 0), "l_elbow": (0.3, 0, -1),
                "r_elbow": (-0.3, 0, -1), "l_wrist": (0, 0.5, -1), "r_wrist": (0, 0.5, -1)}
    X = np.zeros((F, 17, 3))
    for j, p in enumerate(H36M17.parents):
        if p < 0:
            continue
        name = H36M17.names[j]
        d = np.array(template[name], dtype=float) + rng.normal(0, 0.35, (F, 3))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        X[:, j] = X[:, p] + d * tri.REFERENCE_BONE_LENGTHS_MM[name]
    yaw = rng.uniform(0, 2 * np.pi, F)
    c, s = np.cos(yaw), np.sin(yaw)
    Rz = np.stack([np.stack([c, -s, 0 * c], -1), np.stack([s, c, 0 * c], -1),
                   np.stack([0 * c, 0 * c, 1 + 0 * c], -1)], -2)
    root = np.concatenate([rng.uniform(-1000, 1000, (F, 2)), np.full((F, 1), 950.0)], -1)
    return (Rz[:, None] @ X[..., None])[..., 0] + root[:, None]


def cmu_motion(step: int = 2) -> np.ndarray:
    path = DATA / "cmu-mocap" / "scaled_131_01.bvh"
    if not path.exists():
        pytest.skip(f"reference data {path} is absent")
    from pipeline.store.bvh import load_h36m17
    X = load_h36m17(path)[::step]
    X[..., :2] -= X[:, 0, :2].mean(0)
    return X


def observe(X: np.ndarray, cam: dict, noise_px: float, rng: np.random.Generator) -> np.ndarray:
    """World poses -> noisy distorted pixels -> undistorted normalised coordinates (F, J, 2)."""
    uv = project(world_to_camera(X, cam["R"], cam["t"]), cam["K"], cam["dist"])
    uv = uv + rng.normal(0, noise_px, uv.shape) if noise_px > 0 else uv
    return pixels_to_normalized(uv, cam["K"], cam["dist"])


def pair_truth(rig: dict, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    return relative_pose(rig[a]["R"], rig[a]["t"], rig[b]["R"], rig[b]["t"])


def wide_pair(rig: dict) -> tuple[str, str]:
    """The first two cameras of the rig (a ~45 degree pair for H36M S1 cameras 1 and 3)."""
    ids = list(rig)
    return ids[0], ids[2]


@pytest.fixture(scope="module", params=["random", "cmu"])
def scene(request) -> dict:
    rig = h36m_rig()
    X = random_motion(150, seed=1) if request.param == "random" else cmu_motion(step=4)
    return {"rig": rig, "X": X, "kind": request.param}


# --- pooled and per-frame fits ------------------------------------------------------------------

def test_noise_free_pooled_recovers_pose_and_points(scene):
    rig, X = scene["rig"], scene["X"]
    a, b = wide_pair(rig)
    rng = np.random.default_rng(0)
    xa, xb = observe(X, rig[a], 0, rng), observe(X, rig[b], 0, rng)
    mask = np.ones(xa.shape[:2], dtype=bool)
    g = epi.fit_pair_pooled(xa, xb, mask, threshold_px=1.0, focal_px=FOCAL, cam_a=a, cam_b=b)
    R_true, t_true = pair_truth(rig, a, b)
    assert g.ok and g.reason == ""
    assert rotation_error_deg(g.R, R_true) < 0.1
    assert angle_between_deg(g.t, t_true) < 0.5
    assert abs(np.linalg.norm(g.t) - 1) < 1e-9
    assert g.inlier_ratio > 0.99 and g.inliers.shape == mask.shape
    Xt = tri.triangulate(xa, xb, g.R, g.t)
    X_cam = world_to_camera(X, rig[a]["R"], rig[a]["t"])
    rel = (np.linalg.norm(Xt * np.linalg.norm(t_true) - X_cam, axis=-1)
           / np.linalg.norm(X_cam, axis=-1))
    assert rel.max() < 1e-3
    # Cheirality: everything in front of both cameras.
    assert (Xt[..., 2] > 0).all() and (epi.transform(Xt, g.R, g.t)[..., 2] > 0).all()


def test_noise_free_per_frame_recovers_each_frame():
    rig, X = h36m_rig(), random_motion(20, seed=2)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(0)
    xa, xb = observe(X, rig[a], 0, rng), observe(X, rig[b], 0, rng)
    R, t, ok, ratio = epi.fit_pair_per_frame(xa, xb, np.ones(xa.shape[:2], bool), 1.0, FOCAL)
    R_true, t_true = pair_truth(rig, a, b)
    assert R.shape == (20, 3, 3) and t.shape == (20, 3) and ok.all() and (ratio > 0.9).all()
    assert np.median(rotation_error_deg(R, R_true)) < 0.1
    assert np.median(angle_between_deg(t, t_true)) < 0.5


def test_pooled_beats_per_frame_at_2px():
    rig, X = h36m_rig(), random_motion(80, seed=3)
    ids = list(rig)
    a, b = ids[0], ids[1]
    rng = np.random.default_rng(4)
    xa, xb = observe(X, rig[a], 2.0, rng), observe(X, rig[b], 2.0, rng)
    mask = np.ones(xa.shape[:2], dtype=bool)
    R_true, _ = pair_truth(rig, a, b)
    g = epi.fit_pair_pooled(xa, xb, mask, 5.0, FOCAL)
    R, _, ok, _ = epi.fit_pair_per_frame(xa, xb, mask, 5.0, FOCAL, method="usac_magsac")
    pooled = rotation_error_deg(g.R, R_true)
    per_frame = np.median(rotation_error_deg(R[ok], R_true))
    assert pooled < 0.5
    assert per_frame > 5 * pooled


def test_pooled_is_deterministic_for_a_seed():
    rig, X = h36m_rig(), random_motion(60, seed=5)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(0)
    xa, xb = observe(X, rig[a], 3.0, rng), observe(X, rig[b], 3.0, rng)
    mask = np.ones(xa.shape[:2], dtype=bool)
    g1 = epi.fit_pair_pooled(xa, xb, mask, 7.0, FOCAL, seed=7, max_points=500)
    g2 = epi.fit_pair_pooled(xa, xb, mask, 7.0, FOCAL, seed=7, max_points=500)
    np.testing.assert_array_equal(g1.R, g2.R)
    np.testing.assert_array_equal(g1.inliers, g2.inliers)
    row = g1.to_row()
    json.dumps(row)  # plain values only
    assert row["ok"] is True and isinstance(row["R"], list) and row["n_points"] == mask.size


def test_outlier_joints_are_rejected_as_outliers():
    rig, X = h36m_rig(), random_motion(100, seed=6)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(1)
    xa, xb = observe(X, rig[a], 1.0, rng), observe(X, rig[b], 1.0, rng)
    bad = rng.random(xa.shape[:2]) < 0.1
    xa = np.where(bad[..., None], xa + rng.uniform(-0.1, 0.1, xa.shape), xa)  # ~100 px jumps
    g = epi.fit_pair_pooled(xa, xb, np.ones(bad.shape, bool), 3.0, FOCAL)
    R_true, _ = pair_truth(rig, a, b)
    assert g.ok and rotation_error_deg(g.R, R_true) < 0.5
    assert 0.85 < g.inlier_ratio < 0.95
    assert g.inliers[bad].mean() < 0.2 and g.inliers[~bad].mean() > 0.95


# --- degenerate inputs --------------------------------------------------------------------------

def _degenerate_cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    rig, X = h36m_rig(), random_motion(10, seed=8)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(0)
    xa, xb = observe(X, rig[a], 0, rng), observe(X, rig[b], 0, rng)
    few = np.zeros(xa.shape[:2], dtype=bool)
    few[0, :5] = True
    s = np.linspace(-0.2, 0.2, 10 * 17).reshape(10, 17)
    line_a = np.stack([s, 0.5 * s + 0.01], -1)
    line_b = np.stack([0.8 * s + 0.05, -0.3 * s], -1)
    # Zero baseline: camera b is camera a rotated about its centre.
    Rrot = cv2.Rodrigues(np.array([0.1, 0.4, -0.05]))[0]
    Xa = world_to_camera(X, rig[a]["R"], rig[a]["t"])
    Xb = Xa @ Rrot.T
    xb_rot = Xb[..., :2] / Xb[..., 2:]
    nan_a = xa.copy()
    nan_a[:] = np.nan
    full = np.ones(xa.shape[:2], dtype=bool)
    return {"few": (xa, xb, few, "too few correspondences (5 < 8)"),
            "collinear": (line_a, line_b, full, "degenerate: points nearly collinear"),
            "zero_baseline": (Xa[..., :2] / Xa[..., 2:], xb_rot, full, "no baseline"),
            "all_nan": (nan_a, xb, full, "too few correspondences (0 < 8)")}


@pytest.mark.parametrize("case", ["few", "collinear", "zero_baseline", "all_nan"])
def test_degenerate_inputs_fail_with_reason(case):
    xa, xb, mask, reason = _degenerate_cases()[case]
    g = epi.fit_pair_pooled(xa, xb, mask, 2.0, FOCAL)
    assert not g.ok and reason in g.reason
    assert np.isfinite(g.R).all() and np.isfinite(g.t).all()
    # Labels from a failed geometry are all invalid and never NaN after normalisation.
    X = tri.triangulate(np.nan_to_num(xa), np.nan_to_num(xb), g.R, g.t)
    reproj = tri.reprojection_error_px(X, xa, xb, g.R, g.t, FOCAL, FOCAL)
    conf = np.ones(mask.shape)
    valid = tri.label_validity(conf, conf, X, g.R, g.t, reproj, 0.5, 10.0)
    assert not valid.any()
    Xn, _ = tri.normalize_scale(X, valid, per_frame=False)
    assert np.isfinite(Xn).all() and (Xn == 0).all()


def test_per_frame_failures_are_flagged_not_raised():
    rig, X = h36m_rig(), random_motion(6, seed=9)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(0)
    xa, xb = observe(X, rig[a], 0.5, rng), observe(X, rig[b], 0.5, rng)
    mask = np.ones(xa.shape[:2], dtype=bool)
    mask[2, 6:] = False          # 6 joints left in frame 2
    xa[4] = np.nan               # a frame with no detection
    R, t, ok, ratio = epi.fit_pair_per_frame(xa, xb, mask, 2.0, FOCAL)
    assert ok.tolist() == [True, True, False, True, False, True]
    assert np.isnan(R[~ok]).all() and (ratio[~ok] == 0).all()
    Xt = tri.triangulate(xa, xb, R, t)
    reproj = tri.reprojection_error_px(Xt, xa, xb, R, t, FOCAL, FOCAL)
    conf = np.ones(mask.shape)
    valid = tri.label_validity(conf, conf, Xt, R, t, reproj, 0.5, 10.0)
    assert not valid[~ok].any() and valid[ok].mean() > 0.9
    Xn, scale = tri.normalize_scale(Xt, valid, per_frame=True)
    assert np.isfinite(Xn).all() and np.isnan(scale[~ok]).all() and np.isfinite(scale[ok]).all()


# --- triangulation ------------------------------------------------------------------------------

def _noisy_pair(F: int = 40, noise: float = 3.0, seed: int = 10):
    rig, X = h36m_rig(), random_motion(F, seed=seed)
    a, b = wide_pair(rig)
    rng = np.random.default_rng(seed)
    R, t = pair_truth(rig, a, b)
    return observe(X, rig[a], noise, rng), observe(X, rig[b], noise, rng), R, t / np.linalg.norm(t)


def test_correction_matches_opencv_and_satisfies_epipolar_constraint():
    xa, xb, R, t = _noisy_pair()
    na, nb = tri.correct_matches(xa, xb, R, t)
    ca, cb = tri.correct_matches(xa, xb, R, t, backend="opencv")
    assert np.abs(na - ca).max() * FOCAL < 1e-6 and np.abs(nb - cb).max() * FOCAL < 1e-6
    E = epi.essential_from_pose(R, t)
    resid = (epi.homogeneous(nb) * (epi.homogeneous(na) @ E.T)).sum(-1)
    assert np.abs(resid).max() < 1e-12
    moved = np.hypot(np.linalg.norm(na - xa, axis=-1), np.linalg.norm(nb - xb, axis=-1))
    assert 0 < moved.mean() * FOCAL < 10  # a few pixels of noise -> a few pixels of correction


def test_triangulate_agrees_with_opencv_per_point():
    xa, xb, R, t = _noisy_pair()
    X = tri.triangulate(xa, xb, R, t)
    ca, cb = tri.correct_matches(xa, xb, R, t)
    Pa, Pb = np.eye(3, 4), np.concatenate([R, t[:, None]], 1)
    idx = np.random.default_rng(0).choice(xa.shape[0] * 17, 60, replace=False)
    fa, fb, fX = ca.reshape(-1, 2), cb.reshape(-1, 2), X.reshape(-1, 3)
    for i in idx:  # the reference, one point at a time
        Xh = cv2.triangulatePoints(Pa, Pb, fa[i].reshape(2, 1), fb[i].reshape(2, 1)).ravel()
        np.testing.assert_allclose(fX[i], Xh[:3] / Xh[3], rtol=1e-7, atol=1e-9)
    # The plain linear solution is OpenCV's DLT on the raw points.
    Xd = tri.triangulate(xa, xb, R, t, optimal=False).reshape(-1, 3)
    for i in idx[:20]:
        Xh = cv2.triangulatePoints(Pa, Pb, xa.reshape(-1, 2)[i].reshape(2, 1),
                                   xb.reshape(-1, 2)[i].reshape(2, 1)).ravel()
        np.testing.assert_allclose(Xd[i], Xh[:3] / Xh[3], rtol=1e-6)


def test_per_frame_poses_give_the_same_points_as_one_pose():
    xa, xb, R, t = _noisy_pair(F=12)
    X1 = tri.triangulate(xa, xb, R, t)
    X2 = tri.triangulate(xa, xb, np.repeat(R[None], 12, 0), np.repeat(t[None], 12, 0))
    np.testing.assert_allclose(X1, X2, rtol=1e-12)


def test_optimal_triangulation_beats_midpoint_like_dlt_in_reprojection():
    xa, xb, R, t = _noisy_pair(noise=4.0)
    eo = tri.reprojection_error_px(tri.triangulate(xa, xb, R, t), xa, xb, R, t, FOCAL, FOCAL)
    ed = tri.reprojection_error_px(tri.triangulate(xa, xb, R, t, optimal=False), xa, xb, R, t,
                                   FOCAL, FOCAL)
    assert eo.mean() <= ed.mean()


def test_parallel_rays_give_nan_not_garbage():
    x = np.array([[[0.1, 0.2], [0.0, 0.0]]])
    X = tri.triangulate(x, x, np.eye(3), np.array([1.0, 0.0, 0.0]))  # same ray, sideways baseline
    assert np.isnan(X).all()


# --- reprojection, validity, scale --------------------------------------------------------------

def test_reprojection_error_in_pixels():
    rig, X = h36m_rig(), random_motion(5, seed=11)
    a, b = wide_pair(rig)
    R, t = pair_truth(rig, a, b)
    Xa = world_to_camera(X, rig[a]["R"], rig[a]["t"])
    xa = Xa[..., :2] / Xa[..., 2:]
    Xb = Xa @ R.T + t
    xb = Xb[..., :2] / Xb[..., 2:]
    assert tri.reprojection_error_px(Xa, xa, xb, R, t, FOCAL, 500.0).max() < 1e-9
    shifted = xa + np.array([3.0, 4.0]) / FOCAL
    e = tri.reprojection_error_px(Xa, shifted, xb, R, t, FOCAL, 500.0)
    np.testing.assert_allclose(e, 5.0, rtol=1e-9)
    e = tri.reprojection_error_px(Xa, xa, xb + 0.01, R, t, FOCAL, 500.0)
    np.testing.assert_allclose(e, 500.0 * 0.01 * np.sqrt(2), rtol=1e-9)


def test_label_validity_drops_each_failure_kind():
    rig, X = h36m_rig(), random_motion(4, seed=12)
    a, b = wide_pair(rig)
    R, t = pair_truth(rig, a, b)
    Xa = world_to_camera(X, rig[a]["R"], rig[a]["t"])
    conf_a, conf_b = np.ones((4, 17)), np.ones((4, 17))
    reproj = np.zeros((4, 17))
    assert tri.label_validity(conf_a, conf_b, Xa, R, t, reproj, 0.5, 5.0).all()
    conf_b[0, 3] = 0.2
    reproj[1, 4] = 6.0
    Xa[2, 5] *= -1                 # behind camera a
    Xa[3, 6] = np.nan
    valid = tri.label_validity(conf_a, conf_b, Xa, R, t, reproj, 0.5, 5.0)
    assert (~valid).sum() == 4
    assert not valid[0, 3] and not valid[1, 4] and not valid[2, 5] and not valid[3, 6]
    Xbehind_b = Xa.copy()          # in front of a, behind b: a point beyond camera b's centre
    C_b = -R.T @ t
    Xbehind_b[0, 0] = C_b - 0.5 * (R.T @ np.array([0, 0, 1.0])) * np.linalg.norm(t) * 0.1
    assert Xbehind_b[0, 0, 2] > 0
    v = tri.label_validity(np.ones((4, 17)), np.ones((4, 17)), Xbehind_b, R, t,
                           np.zeros((4, 17)), 0.5, 5.0)
    assert not v[0, 0]


def test_reference_bone_sum_is_the_h36m_skeleton():
    assert len(tri.REFERENCE_BONE_LENGTHS_MM) == len(H36M17.bones) == 16
    assert 4100 < tri.REFERENCE_BONE_SUM_MM < 4200


def test_normalize_scale_sequence_and_per_frame():
    X = random_motion(30, seed=13)
    gt = X - X[:, :1]
    valid = np.ones((30, 17), dtype=bool)
    # One unknown scale for the sequence: recovered exactly, one factor for all frames.
    Xn, scale = tri.normalize_scale(X * 0.0021, valid, per_frame=False)
    np.testing.assert_allclose(Xn, gt, atol=1e-6)
    np.testing.assert_allclose(scale, 1 / 0.0021)
    bones = tri.bone_lengths(Xn).sum(-1)
    np.testing.assert_allclose(bones, tri.REFERENCE_BONE_SUM_MM, rtol=1e-9)
    # A scale per frame (per-frame geometry): each frame is rescaled.
    s = np.linspace(0.5, 2.0, 30)[:, None, None]
    Xn, scale = tri.normalize_scale(X * s, valid, per_frame=True)
    np.testing.assert_allclose(Xn, gt, atol=1e-6)
    # Invalid joints do not bias the scale and come back as 0.
    Xbad = X * 0.01
    Xbad[:, 13] = 1e6
    valid[:, 13] = False
    Xn, scale = tri.normalize_scale(Xbad, valid, per_frame=False)
    np.testing.assert_allclose(scale, 100.0, rtol=1e-9)
    assert (Xn[:, 13] == 0).all()
    np.testing.assert_allclose(Xn[:, :13], gt[:, :13], atol=1e-6)
    # A frame without a valid root carries no label.
    valid[5, 0] = False
    Xn, scale = tri.normalize_scale(Xbad, valid, per_frame=False)
    assert (Xn[5] == 0).all() and not tri.normalized_validity(valid, scale)[5].any()


# --- camera loops -------------------------------------------------------------------------------

def _all_pairs(rig: dict, X: np.ndarray, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    xs = {c: observe(X, rig[c], noise, rng) for c in rig}
    masks = {c: np.ones(X.shape[:2], dtype=bool) for c in rig}
    ids = list(rig)
    pairs = [epi.fit_pair_pooled(xs[a], xs[b], masks[a], max(2.5 * noise, 1.0), FOCAL,
                                 cam_a=a, cam_b=b)
             for i, a in enumerate(ids) for b in ids[i + 1:]]
    return xs, masks, pairs


def test_loops_close_and_a_wrong_decomposition_is_detected_and_repaired():
    rig, X = h36m_rig(), random_motion(60, seed=14)
    xs, masks, pairs = _all_pairs(rig, X, 1.0, seed=15)
    rep = loops.check_loops(pairs)
    assert len(rep.triangles) == 4 and rep.consistent and rep.max_rot_err_deg < 1.0
    # Swap one pair for the other rotation of its E (the "twisted pair"): loops break.
    Rs, ts = epi.pose_candidates(pairs[1].E)
    k = int(np.argmax([rotation_error_deg(R, pairs[1].R) for R in Rs]))
    bad = list(pairs)
    g = pairs[1]
    bad[1] = epi.PairGeometry(g.cam_a, g.cam_b, Rs[k], ts[k], g.E, g.n_points, g.n_inliers,
                              g.inlier_ratio, True, inliers=g.inliers)
    broken = loops.check_loops(bad)
    assert not broken.consistent and broken.max_rot_err_deg > 30
    fixed = loops.resolve_loops(bad, xs, masks, min_support=0.0)
    assert loops.check_loops(fixed).max_rot_err_deg < 1.0
    assert rotation_error_deg(fixed[1].R, pairs[1].R) < 1e-6
    assert fixed[1].method.endswith("+loop")


def test_closed_form_sampson_derivatives_match_finite_differences():
    rng = np.random.default_rng(3)
    a = epi.homogeneous(rng.normal(size=(50, 2)) * 0.3)
    b = epi.homogeneous(rng.normal(size=(50, 2)) * 0.3)
    R, t = epi._rotvec_to_matrix(np.array([0.1, 0.7, -0.2])), np.array([0.9, 0.1, 0.4])
    t /= np.linalg.norm(t)
    E, dE = epi.essential_from_pose(R, t), rng.normal(size=(4, 3, 3))
    d = epi.sampson_derivatives_px(a, b, E, dE, 1000.0)
    h = 1e-6

    def r(M):
        u, v = a @ M.T, b @ M
        return (b * u).sum(-1) / np.sqrt(u[:, 0] ** 2 + u[:, 1] ** 2 + v[:, 0] ** 2
                                         + v[:, 1] ** 2) * 1000.0

    assert np.allclose(r(E), epi.sampson_residuals_px(a, b, R, t, 1000.0))
    fd = np.stack([(r(E + h * m) - r(E - h * m)) / (2 * h) for m in dE], -1)
    assert d.shape == (50, 4) and np.allclose(d, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_refined_pose_is_the_optimum_of_finite_difference_refinement():
    """The closed-form Jacobian changes the cost of the refinement, not its answer: the same
    pose as scipy's finite differences of the residuals (the refinement before)."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)) * [0.5, 0.8, 0.3] + [0, 0, 5]
    R = epi._rotvec_to_matrix(np.array([0.0, np.radians(40), 0.0]))
    t = np.array([-3.0, 0.1, 1.0])
    Xb = X @ R.T + t
    xa = X[:, :2] / X[:, 2:] + rng.normal(size=(3000, 2)) * 2e-3
    xb = Xb[:, :2] / Xb[:, 2:] + rng.normal(size=(3000, 2)) * 2e-3
    xb[:300] = rng.uniform(-0.5, 0.5, size=(300, 2))  # outliers for the robust loss
    R0 = epi._rotvec_to_matrix(np.array([0.02, -0.01, 0.01])) @ R
    t0 = (t / np.linalg.norm(t) + [0.05, 0.05, 0.0])
    t0 /= np.linalg.norm(t0)
    R1, t1 = epi.refine_pose(xa, xb, R0, t0, 1000.0, f_scale_px=2.0)
    a, b, B = epi.homogeneous(xa), epi.homogeneous(xb), epi._tangent_basis(t0)

    def pose(p):
        tt = t0 + B @ p[3:]
        return epi._rotvec_to_matrix(p[:3]) @ R0, tt / np.linalg.norm(tt)

    fd = least_squares(lambda p: epi.sampson_residuals_px(a, b, *pose(p), 1000.0), np.zeros(5),
                       loss="cauchy", f_scale=2.0, x_scale=1e-3, method="trf")
    R2, t2 = pose(fd.x)
    assert rotation_error_deg(R1, R2) < 1e-3 and angle_between_deg(t1, t2) < 1e-3
    assert rotation_error_deg(R1, R) < 0.2  # and it is the right pose

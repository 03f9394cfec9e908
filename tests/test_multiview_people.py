"""The all-view geometry with several people (issue 25): bundle adjustment sampled from the frames
two views see, balanced over people and time; a rig its own checks call bad is refused; each
camera's reprojection figures are its own."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from eval.metrics import mpjpe
from pipeline.geometry import bundle as ba
from pipeline.geometry.cameras import rotation_error_deg
from pipeline.geometry.modes import (CalibratedMultiviewMode, GeometrySettings, MultiviewMode,
                                     Views)
from pipeline.geometry.rig import CameraRig
from pipeline.job.tasks import concat_views
from pipeline.joints import H36M17
from pipeline.synthetic.crowd import FOCAL_PX, IMAGE_PX, crowd_scene


# --- frames of the bundle problem -----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_sample_frames_takes_only_frames_two_views_see_balanced_over_groups(seed):
    rng = np.random.default_rng(seed)
    F, J, V = 400, 3, 3
    groups = np.sort(rng.integers(0, 1 + seed * 4, F))
    w = rng.random((F, J, V)) < rng.uniform(0.05, 0.6)
    usable = (w.sum(-1) >= 2).any(-1)
    m = int(rng.integers(5, 80))
    got = ba.sample_frames(w, m, seed, groups)
    assert len(np.unique(got)) == len(got) == min(m, usable.sum())
    assert usable[got].all() and (np.diff(got) > 0).all()
    count = np.bincount(groups[usable], minlength=groups.max() + 1)
    share = np.bincount(groups[got], minlength=groups.max() + 1)
    # water-filling: a group short of its usable frames has (nearly) the largest share
    short = share < count
    if short.any():
        assert share[short].min() >= share.max() - 1, (share, count)
    for g in np.flatnonzero(share > 1):  # spread over the group's time, not bunched
        rows = np.flatnonzero(usable & (groups == g))
        pos = np.searchsorted(rows, got[groups[got] == g])
        assert np.diff(pos).max() <= 2 * len(rows) / share[g] + 1


def test_sample_frames_with_more_groups_than_frames_and_with_none_usable():
    w = np.zeros((100, 2, 3), bool)
    w[::2, 0, :2] = True                       # every other frame: one joint in two views
    got = ba.sample_frames(w, 10, 0, np.arange(100) // 2)
    assert len(got) == 10 and len(np.unique(np.arange(100)[got] // 2)) == 10
    assert len(ba.sample_frames(np.zeros((5, 2, 3), bool), 10, 0)) == 0


def test_bundle_adjust_of_nothing_returns_the_cameras_without_a_numpy_warning():
    x = {c: np.full((5, 17, 2), np.nan) for c in "ab"}
    m = {c: np.zeros((5, 17), bool) for c in "ab"}
    start = {"a": (np.eye(3), np.zeros(3)), "b": (np.eye(3), np.array([1.0, 0, 0]))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cams, X, info = ba.bundle_adjust(x, start, m, 1000.0)
    assert info["n_points"] == 0 and info["status"] == 0 and np.isnan(info["reproj_px_final"])
    np.testing.assert_array_equal(cams["b"][1], start["b"][1])
    assert np.isnan(X).all()


# --- many short tracks ----------------------------------------------------------------------------

def short_tracks(people: int, frames: int, length: int, noise_px: float, seed: int
                 ) -> tuple[list[Views], CameraRig, np.ndarray]:
    """Views of ``people`` tracked people, each on the sequence's full frame axis (as
    ``pipeline.people.tracks.split_tracks`` gives them) but seen only during a short window of
    ``length`` frames; inside it each camera sees the person from a random start to a random
    end (people entering and leaving its field of view), so some rows have one view only.
    Returns the views (with the true extrinsics as ``known``), the rig and the world joints
    (people, frames, J, 3)."""
    scene = crowd_scene(people, 4, frames, seed=seed, circle_mm=1500.0)
    rng = np.random.default_rng(seed)
    uv = scene.project_px()
    out = []
    for n in range(people):
        s0 = int(rng.integers(0, frames - length))
        x, conf = {}, {}
        for c in scene.cameras:
            a, b = np.sort(rng.integers(0, length + 1, 2)) + s0
            b = max(b, a + length // 2)
            seen = np.zeros(frames, bool)
            seen[a:min(b, s0 + length)] = True
            xx = (uv[c][n] + rng.normal(0, noise_px, uv[c][n].shape) - IMAGE_PX / 2) / FOCAL_PX
            x[c] = np.where(seen[:, None, None], xx, np.nan)
            conf[c] = np.where(seen[:, None], 1.0, 0.0) * np.ones(xx.shape[:2])
        out.append(Views(x, conf, {c: FOCAL_PX for c in scene.cameras}, dict(scene.rig.poses)))
    return out, scene.rig, scene.joints


def test_multiview_with_many_short_tracks_recovers_every_rotation():
    """20 people, each seen 12 of 300 frames: 4 % of the concatenated rows hold a person, so a
    uniform draw of 150 rows holds about 5 of them. Before (uniform draw) the rotations ended
    0.6-1.7 deg off on such sets, or the adjustment diverged (pooled's pairs: 0.2-0.3 deg);
    with frames sampled from the rows two views see, balanced over the tracks, every rotation
    is within 0.2 deg of the truth (measured 0.06-0.07) and the labels at the calibrated
    floor."""
    tracks, truth, joints = short_tracks(20, 300, 12, 2.0, seed=3)
    views = concat_views(tracks)
    seen = np.stack([views.conf[c].any(-1) for c in views.cameras], -1).sum(-1) >= 2
    assert seen.mean() < 0.05
    s = GeometrySettings(joint_set=H36M17, ransac_threshold_px=2.0)
    g = MultiviewMode().fit("S1", views, s)
    assert g.rig is not None and not g.unregistered, g.unregistered
    info = g.bundle_adjustment
    assert info["n_frames"] == 150 and info["n_groups"] == 20
    assert info["n_points"] > 20 * 17
    ref = g.rig.reference
    for c in g.rig.cameras:
        err = rotation_error_deg(g.rig.relative(ref, c)[0], truth.relative(ref, c)[0])
        assert err < 0.2, (c, err)
    assert all(v < 3.0 for v in info["camera_reproj_px"].values()), info["camera_reproj_px"]
    # labels at the calibrated floor (measured 19.11 mm both; the old sampling: 19.14, and
    # 21.75 mm = 1.17x on seed 5)
    floor = CalibratedMultiviewMode()
    err = label_error(MultiviewMode(), g, tracks, truth, joints, s)
    assert err < 1.02 * label_error(floor, floor.fit("S1", views, s), tracks, truth, joints, s)


def label_error(mode, g, tracks: list[Views], rig: CameraRig, joints: np.ndarray,
                s: GeometrySettings) -> float:
    """Mean N-MPJPE (mm) of every track's labels against the truth, root-relative."""
    errs = []
    for n, v in enumerate(tracks):
        for lab in mode.label(v, g, s, mode.shards(g)[0]):
            X, valid = H36M17.root_relative(lab.X, lab.valid)
            gt, _ = H36M17.root_relative(rig.in_frame(joints[n][lab.frames], lab.camera), valid)
            errs.append(mpjpe(X, gt, valid, alignment="scale"))
    return float(np.nanmean(np.concatenate(errs)))


# --- a rig its own checks call bad ----------------------------------------------------------------

def test_rig_check_names_the_camera_that_does_not_fit_its_data():
    tracks, truth, _ = short_tracks(6, 60, 40, 1.0, seed=5)
    v = concat_views(tracks)
    mask = v.masks(0.3)
    rig = CameraRig({c: truth.relative("c0", c) for c in truth.cameras}, FOCAL_PX)
    good = rig.check(v.x, mask, [], 5.0, 10.0)
    assert not good.reasons and all(e < 2.0 for e in good.reproj_px.values())
    R, t = rig.poses["c2"]
    c, s_ = np.cos(np.radians(20)), np.sin(np.radians(20))
    turned = {**rig.poses, "c2": (np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]]) @ R, t)}
    bad = CameraRig(turned, FOCAL_PX).check(v.x, mask, [], 5.0, 10.0)
    assert "c2" in bad.reasons and "px" in bad.reasons["c2"]
    assert bad.reproj_px["c2"] > 5 * good.reproj_px["c2"]


def test_a_rig_that_fails_its_checks_is_refused_not_labelled():
    """A reprojection limit the data cannot meet: the fit refuses the rig, every camera is
    recorded with the reason and no shard is labelled."""
    from pipeline.job.tasks import pair_rows

    tracks, _, _ = short_tracks(6, 60, 40, 2.0, seed=5)
    views = concat_views(tracks)
    s = GeometrySettings(joint_set=H36M17, ransac_threshold_px=2.0, reproj_threshold_px=0.3)
    mode = MultiviewMode()
    g = mode.fit("S1", views, s)
    assert g.rig is None and mode.shards(g) == []
    assert set(g.unregistered) == set(views.cameras)
    assert all("refused" in r and "px" in r for r in g.unregistered.values())
    rows = [r for r in pair_rows(g, views) if r["kind"] == "rig camera"]
    assert len(rows) == 4 and not any(r["ok"] for r in rows)


# --- records --------------------------------------------------------------------------------------

def test_each_camera_of_an_all_view_label_carries_its_own_reprojection_error():
    """Camera c1's detections are 4x noisier: its rows' reprojection errors say so (before,
    every camera's rows carried the worst view's error, one figure for all)."""
    tracks, _, _ = short_tracks(4, 60, 50, 1.0, seed=8)
    rng = np.random.default_rng(0)
    for v in tracks:
        v.x["c1"] = v.x["c1"] + rng.normal(0, 3.0 / FOCAL_PX, v.x["c1"].shape)
    views = concat_views(tracks)
    s = GeometrySettings(joint_set=H36M17, ransac_threshold_px=3.0)
    mode = MultiviewMode()
    g = mode.fit("S1", views, s)
    labels = {lab.camera: lab for lab in mode.label(views, g, s, mode.shards(g)[0])}
    med = {c: float(np.median(lab.reproj_px[lab.valid])) for c, lab in labels.items()}
    assert med["c1"] > 1.5 * max(v for c, v in med.items() if c != "c1"), med  # 1.7 vs <= 1.0
    assert len(set(med.values())) == 4

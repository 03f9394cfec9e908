"""The geometry-mode registry (pipeline.geometry.modes): every mode, called as the job calls it,
gives back the poses it observed; the facts each mode declares hold for its labels."""
from __future__ import annotations

import numpy as np
import pytest

from eval.metrics import ALIGNMENTS, mpjpe
from pipeline.geometry.cameras import rotation_error_deg, world_to_camera
from pipeline.geometry.modes import (ALL_VIEWS, GEOMETRY_MODES, JOB_MODES, GeometrySettings, Views,
                                     get_mode)
from pipeline.job.config import JobConfig
from tests.test_geometry import FOCAL, h36m_rig, observe, random_motion


def scene(F: int = 60, noise_px: float = 0.0, seed: int = 4) -> tuple[dict, np.ndarray, Views]:
    rig, X = h36m_rig(), random_motion(F, seed=seed)
    rng = np.random.default_rng(seed)
    x = {c: observe(X, rig[c], noise_px, rng) for c in rig}
    views = Views(x, {c: np.ones(X.shape[:2]) for c in rig}, {c: FOCAL for c in rig},
                  {c: (rig[c]["R"], rig[c]["t"]) for c in rig})
    return rig, X, views


def run(name: str, views: Views, s: GeometrySettings):
    mode = get_mode(name)
    geometry = mode.fit("S1", views, s)
    return mode, geometry, [lab for shard in mode.shards(geometry)
                            for lab in mode.label(views, geometry, s, shard)]


@pytest.mark.parametrize("name", list(GEOMETRY_MODES))
def test_noise_free_labels_are_the_observed_poses(name):
    rig, X, views = scene()
    mode, geometry, labels = run(name, views, GeometrySettings(ransac_threshold_px=1.0,
                                                               reproj_threshold_px=3.0))
    assert labels, name
    assert {lab.camera for lab in labels} == set(rig)  # every camera of the rig is labelled
    alignment = ALIGNMENTS["mpjpe" if mode.metric else "n_mpjpe"]
    for lab in labels:
        gt = world_to_camera(X, rig[lab.camera]["R"], rig[lab.camera]["t"])[lab.frames]
        gt = gt - gt[:, :1]
        v = lab.valid & lab.valid[:, :1]
        assert v.mean() > 0.95, (name, lab.camera)
        err = mpjpe(lab.X - lab.X[:, :1], gt, v, alignment=alignment)
        # the paper's per-frame mode is ~0 too on noise-free 2D (its rows are per frame)
        assert np.median(err) < 0.5, (name, lab.camera, float(np.median(err)))
        if lab.X_camera is not None:  # the raw points reproject onto the observations
            uv = lab.X_camera[..., :2] / lab.X_camera[..., 2:3]
            ok = np.isfinite(uv).all(-1) & v
            # Plain per-frame RANSAC (the paper's) keeps the first pose whose consensus covers
            # every joint within the RANSAC threshold and is not refitted: in an unlucky frame
            # that pose is off and reprojects up to the threshold (per-frame-refit removes it).
            tol = 1.0 if name == "per-frame" else 0.5
            assert np.abs(uv[ok] - views.x[lab.camera][lab.frames][ok]).max() * FOCAL < tol


def test_declared_scale_holds():
    """Metric modes give millimetres; the others the canonical size (bone-length sum)."""
    from pipeline.geometry.triangulation import REFERENCE_BONE_SUM_MM, bone_lengths

    rig, X, views = scene()
    s = GeometrySettings()
    for name in ("pooled", "calibrated", "multiview", "calibrated-multiview"):
        mode, _, labels = run(name, views, s)
        lab = labels[0]
        ok = lab.valid.all(-1)
        size = bone_lengths(lab.X[ok]).sum(-1)
        true = bone_lengths(X[lab.frames][ok]).sum(-1)
        target = true if mode.metric else REFERENCE_BONE_SUM_MM
        assert np.allclose(np.median(size), np.median(target), rtol=1e-3), name


def test_rotations_the_labels_carry_match_the_rig():
    rig, X, views = scene(noise_px=1.0)
    for name in ("pooled", "multiview"):
        _, _, labels = run(name, views, GeometrySettings(ransac_threshold_px=2.0))
        for lab in labels:
            true = views.known_relative(lab.pose_from, lab.camera)[0]
            assert rotation_error_deg(lab.R, true) < 0.5, (name, lab.camera)


def test_pair_choice_nearest_and_all():
    _, _, views = scene()
    s_near, s_all = GeometrySettings(pairs="nearest"), GeometrySettings(pairs="all")
    near = get_mode("pooled").fit("S1", views, s_near)
    every = get_mode("pooled").fit("S1", views, s_all)
    assert len(every.chosen) == 6 and set(near.chosen) <= set(every.chosen)
    assert {c for p in near.chosen for c in p} == set(views.cameras)
    assert get_mode("multiview").shards(get_mode("multiview").fit("S1", views, s_near)) == [ALL_VIEWS]


def test_registry_names_and_job_modes():
    assert set(JOB_MODES) == {"per-frame", "per-frame-refit", "pooled", "multiview",
                              "calibrated", "calibrated-multiview"}
    assert {n for n, m in GEOMETRY_MODES.items() if m.needs_extrinsics} == {
        "calibrated", "calibrated-multiview"}
    with pytest.raises(ValueError, match="choose one of"):
        get_mode("triangles")
    with pytest.raises(ValueError, match="geometry 'vector-median'"):
        JobConfig(manifest="m.yaml", out="o", geometry="vector-median")
    with pytest.raises(ValueError, match="pairs"):
        GeometrySettings(pairs="some")


def test_calibrated_without_extrinsics_names_what_is_missing():
    _, _, views = scene()
    views.known.pop(views.cameras[1])
    with pytest.raises(ValueError, match="extrinsics of subject S1"):
        get_mode("calibrated").fit("S1", views, GeometrySettings())


def test_per_frame_refit_is_exact_on_noise_free_2d_in_every_frame():
    """The strongest per-frame variant gives ~0 mm in *every* frame on noise-free 2D; plain
    RANSAC (the paper's as published) stops at a pose explaining all 17 joints within its 1 px
    threshold, which in some frames is degrees off (the 6.7 mm of the README's noise-free row)."""
    rig, X, views = scene(F=60)
    s = GeometrySettings(ransac_threshold_px=1.0, reproj_threshold_px=3.0)
    worst = {}
    for name in ("per-frame", "per-frame-refit"):
        _, _, labels = run(name, views, s)
        errs = []
        for lab in labels:
            gt = world_to_camera(X, rig[lab.camera]["R"], rig[lab.camera]["t"])[lab.frames]
            v = lab.valid & lab.valid[:, :1]
            errs.append(mpjpe(lab.X - lab.X[:, :1], gt - gt[:, :1], v,
                              alignment=ALIGNMENTS["n_mpjpe"]))
        worst[name] = float(np.nanmax(np.concatenate(errs)))
        assert all(lab.valid.mean() > 0.95 for lab in labels), name
    assert worst["per-frame-refit"] < 0.01, worst
    assert worst["per-frame"] > 1.0, worst  # what the refit repairs

"""Metrics against hand-computed values on tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from eval.metrics import (ALIGNMENTS, MEAN_OF_ACTIONS, OVERALL, aggregate, align, auc,
                          joint_errors, mpjpe, pck3d, pose_metrics, procrustes_transform,
                          root_relative, scale_factor)


def _rot(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * Kx @ Kx


GT = np.array([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0]],
               [[0.0, 0, 0], [0, 0, 2], [2, 0, 0]]])           # (2, 3, 3)


def test_table_is_the_truth():
    assert ALIGNMENTS["mpjpe"] == "none"
    assert ALIGNMENTS["n_mpjpe"] == "scale"
    assert ALIGNMENTS["pa_mpjpe"] == "procrustes"
    assert set(pose_metrics(GT, GT)) == set(ALIGNMENTS)


def test_mpjpe_no_alignment_hand_values():
    pred = GT.copy()
    pred[0, 1] += [3.0, 4.0, 0.0]     # joint error 5 -> mean 5/3
    pred[1, 2] += [0.0, 0.0, 1.0]     # joint error 1 -> mean 1/3
    np.testing.assert_allclose(joint_errors(pred, GT), [[0, 5, 0], [0, 0, 1]])
    np.testing.assert_allclose(mpjpe(pred, GT), [5 / 3, 1 / 3])


def test_scale_alignment_hand_values():
    pred = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 0, 0]]])
    gt = np.array([[[3.0, 0, 0], [0, 1, 0], [0, 0, 0]]])
    # s = <p, g> / <p, p> = 3 / 1 -> aligned joint 0 = (3, 0, 0): errors [0, 1, 0]
    np.testing.assert_allclose(scale_factor(pred, gt), [3.0])
    np.testing.assert_allclose(mpjpe(pred, gt, alignment="scale"), [1 / 3])
    np.testing.assert_allclose(mpjpe(pred, gt, alignment="none"), [(2 + 1) / 3])
    # a uniformly scaled pose has zero N-MPJPE but not zero MPJPE
    np.testing.assert_allclose(mpjpe(GT * 0.01, GT, alignment="scale"), [0, 0], atol=1e-12)
    assert np.all(mpjpe(GT * 0.01, GT) > 0.5)


def test_scale_alignment_does_not_rotate():
    pred = GT @ _rot([0, 0, 1], 90).T
    assert np.all(mpjpe(pred, GT, alignment="scale") > 0.1)


def test_procrustes_recovers_similarity_transform():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(5, 17, 3)) * 300
    R = np.stack([_rot(rng.normal(size=3), d) for d in (10, 45, 90, 170, 179)])
    pred = 0.3 * gt @ np.swapaxes(R, 1, 2) + rng.normal(size=(5, 1, 3)) * 100
    np.testing.assert_allclose(mpjpe(pred, gt, alignment="procrustes"), 0, atol=1e-8)
    s, Rf, t = procrustes_transform(pred, gt)
    np.testing.assert_allclose(s, 1 / 0.3)
    np.testing.assert_allclose(Rf, np.swapaxes(R, 1, 2), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(Rf), 1.0)


def test_procrustes_reflection_fix_hand_value():
    # Points +-3 e1, +-2 e2, +-1 e3; the prediction mirrors z. H = diag(18, 8, -2): the best
    # proper rotation is the identity, s = (18 + 8 - 2) / 28 = 6/7; errors 3/7, 2/7, 13/7 (each
    # twice) -> PA-MPJPE = 36/42 = 6/7. A solver that allowed reflections would give 0.
    gt = np.array([[[3.0, 0, 0], [-3, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]]])
    pred = gt * np.array([1.0, 1.0, -1.0])
    s, R, _ = procrustes_transform(pred, gt)
    np.testing.assert_allclose(s, [6 / 7])
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(joint_errors(pred, gt, alignment="procrustes"),
                               [[3 / 7, 3 / 7, 2 / 7, 2 / 7, 13 / 7, 13 / 7]], atol=1e-12)
    np.testing.assert_allclose(mpjpe(pred, gt, alignment="procrustes"), [6 / 7])


def test_procrustes_hand_value_translation_and_scale():
    # pred is gt halved and shifted: PA aligns exactly, N-MPJPE (no translation) does not.
    pred = GT * 0.5 + np.array([10.0, 0, 0])
    np.testing.assert_allclose(mpjpe(pred, GT, alignment="procrustes"), [0, 0], atol=1e-12)
    assert np.all(mpjpe(pred, GT, alignment="scale") > 0.1)


def test_mask_excludes_joints_from_errors_and_fits():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(3, 6, 3))
    pred = 2.0 * gt @ _rot([1, 2, 3], 30).T + 5.0
    mask = np.ones((3, 6), bool)
    pred[:, 4] = [1e6, -1e6, np.nan]           # garbage (even NaN) in a masked joint
    mask[:, 4] = False
    np.testing.assert_allclose(mpjpe(pred, gt, mask, "procrustes"), 0, atol=1e-8)
    err = joint_errors(pred, gt, mask, "procrustes")
    assert np.all(np.isnan(err[:, 4])) and np.all(np.isfinite(np.delete(err, 4, axis=1)))
    # the masked joint is carried through the transform but does not affect the fit
    assert np.all(np.isfinite(align(pred, gt, mask, "scale")[:, :4]))


def test_mask_hand_values_none_and_scale():
    pred = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 0, 9]]])
    gt = np.array([[[3.0, 0, 0], [0, 1, 0], [0, 0, 0]]])
    mask = np.array([[True, True, False]])
    np.testing.assert_allclose(mpjpe(pred, gt, mask), [(2 + 1) / 2])
    # the masked joint (0, 0, 9) would pull s down; without it s = 3 -> errors [0, 1]
    np.testing.assert_allclose(scale_factor(pred, gt, mask), [3.0])
    np.testing.assert_allclose(mpjpe(pred, gt, mask, "scale"), [0.5])


def test_all_masked_pose_is_nan_and_skipped():
    mask = np.array([[True, True, True], [False, False, False]])
    for alignment in ("none", "scale", "procrustes"):
        v = mpjpe(GT + 1.0, GT, mask, alignment)
        assert np.isfinite(v[0]) and np.isnan(v[1])
    assert np.isnan(pck3d(GT, GT, mask)[1]) and np.isnan(auc(GT, GT, mask)[1])
    table = aggregate({"mpjpe": mpjpe(GT + 1.0, GT, mask)})
    np.testing.assert_allclose(table.loc[OVERALL, "mpjpe"], np.sqrt(3))
    assert table.loc[OVERALL, "n"] == 1            # the unmeasurable pose is not counted


def test_pck_and_auc_hand_values():
    gt = np.zeros((1, 3, 3))
    pred = np.array([[[0.0, 0, 0], [3, 4, 0], [0, 20, 0]]])     # errors 0, 5, 20
    np.testing.assert_allclose(pck3d(pred, gt, threshold=4.0), [1 / 3])
    np.testing.assert_allclose(pck3d(pred, gt, threshold=5.0), [2 / 3])   # inclusive
    # thresholds 0, 5, 10: PCK 1/3, 2/3, 2/3 -> mean 5/9
    np.testing.assert_allclose(auc(pred, gt, thresholds=np.array([0.0, 5, 10])), [5 / 9])
    mask = np.array([[True, True, False]])
    np.testing.assert_allclose(pck3d(pred, gt, mask, threshold=4.0), [1 / 2])
    np.testing.assert_allclose(auc(pred, gt, mask, thresholds=np.array([0.0, 5, 10])), [5 / 6])
    # default thresholds 0..150 mm: a perfect pose scores 1, a 200 mm error pose scores 0
    assert auc(gt, gt)[0] == 1.0 and auc(gt + 200.0, gt)[0] == 0.0


def test_aggregate_groups_overall_and_mean_of_actions():
    per = {"mpjpe": np.array([1.0, 3.0, 10.0]), "pck3d": np.array([1.0, 0.0, 0.5])}
    t = aggregate(per, np.array(["Walk", "Walk", "Eat"]))
    assert list(t.index) == ["Eat", "Walk", OVERALL, MEAN_OF_ACTIONS]
    assert t.loc["Walk", "mpjpe"] == 2.0 and t.loc["Walk", "n"] == 2
    assert t.loc[OVERALL, "mpjpe"] == pytest.approx(14 / 3) and t.loc[OVERALL, "n"] == 3
    assert t.loc[MEAN_OF_ACTIONS, "mpjpe"] == pytest.approx(6.0)
    assert t.loc[MEAN_OF_ACTIONS, "pck3d"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="groups"):
        aggregate(per, np.array(["a"]))


def test_input_errors_are_clear():
    with pytest.raises(ValueError, match="differs"):
        mpjpe(GT, GT[:, :2])
    with pytest.raises(ValueError, match="boolean"):
        mpjpe(GT, GT, np.ones((2, 3)))
    with pytest.raises(ValueError, match="unknown alignment"):
        mpjpe(GT, GT, alignment="rigid")


def test_root_relative():
    x = np.array([[[1.0, 2, 3], [2, 2, 2]]])
    np.testing.assert_allclose(root_relative(x), [[[0, 0, 0], [1, 0, -1]]])

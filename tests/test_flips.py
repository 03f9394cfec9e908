"""Left/right swaps found by epipolar consistency (pipeline/geometry/flips.py), on scenes built in code."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.geometry import epipolar as epi
from pipeline.geometry.flips import apply_flips, detect_flips, flip_groups
from pipeline.joints import H36M17
from tests.test_geometry import FOCAL, observe, pair_truth, random_motion, ring_rig

F = 30


def _scene(noise_px: float = 0.0, seed: int = 0):
    rig = ring_rig()
    X = random_motion(F, seed)
    rng = np.random.default_rng(seed)
    x = {c: observe(X, rig[c], noise_px, rng) for c in rig}
    mask = {c: np.ones((F, 17), bool) for c in rig}
    pairs = [epi.PairGeometry(a, b, *pair_truth(rig, a, b), np.zeros((3, 3)), 0, 0, 1.0, True)
             for a, b in itertools.combinations(rig, 2)]
    return rig, x, mask, pairs


def _swap(x: dict, cam: str, frames: np.ndarray, groups: list[int]) -> np.ndarray:
    """Swap ``groups`` of ``cam`` in ``frames``; returns the (F, G) truth."""
    truth = np.zeros((F, 2), bool)
    truth[np.ix_(frames, groups)] = True
    x[cam], _ = apply_flips(x[cam], np.ones((F, 17)), truth)
    return truth


def test_flip_groups_are_legs_and_arms():
    g = flip_groups(H36M17)
    names = lambda pairs: {(H36M17.names[a], H36M17.names[b]) for a, b in pairs}  # noqa: E731
    assert list(g) == ["pelvis", "thorax"]
    assert names(g["pelvis"]) == {("l_hip", "r_hip"), ("l_knee", "r_knee"),
                                  ("l_ankle", "r_ankle")}
    assert names(g["thorax"]) == {("l_shoulder", "r_shoulder"), ("l_elbow", "r_elbow"),
                                  ("l_wrist", "r_wrist")}


def test_apply_flips_swaps_only_flagged_groups_and_is_an_involution():
    rng = np.random.default_rng(1)
    j, c = rng.normal(size=(3, 17, 2)), rng.uniform(size=(3, 17))
    fl = np.array([[True, False], [False, True], [False, False]])
    j2, c2 = apply_flips(j, c, fl)
    li, ri = H36M17.index("l_knee"), H36M17.index("r_knee")
    ls, rs = H36M17.index("l_wrist"), H36M17.index("r_wrist")
    assert np.array_equal(j2[0, li], j[0, ri]) and np.array_equal(j2[0, ls], j[0, ls])
    assert np.array_equal(j2[1, ls], j[1, rs]) and c2[1, rs] == c[1, ls]
    assert np.array_equal(j2[2], j[2]) and np.array_equal(j2[:, 0], j[:, 0])  # pelvis untouched
    j3, c3 = apply_flips(j2, c2, fl)
    assert np.array_equal(j3, j) and np.array_equal(c3, c)
    with pytest.raises(ValueError, match="flipped must be"):
        apply_flips(j, c, fl[:2])


@pytest.mark.parametrize("noise_px", [0.0, 3.0])
def test_swapped_views_are_found_with_true_geometry(noise_px):
    _, x, mask, pairs = _scene(noise_px)
    truth = {c: np.zeros((F, 2), bool) for c in x}
    truth["c1"] = _swap(x, "c1", np.arange(5, 15), [0, 1])     # whole body
    truth["c3"] = _swap(x, "c3", np.arange(20, 26), [1])       # arms only
    found = detect_flips(x, mask, pairs, FOCAL)
    for c in x:
        assert np.array_equal(found[c], truth[c]), c


def test_swaps_are_found_with_geometry_fitted_from_the_swapped_detections():
    _, x, mask, _ = _scene(2.0, seed=3)
    truth = _swap(x, "c2", np.arange(0, 10), [0, 1])            # a third of one camera
    fits = [epi.fit_pair_pooled(x[a], x[b], mask[a] & mask[b], 4.0, FOCAL, cam_a=a, cam_b=b)
            for a, b in itertools.combinations(x, 2)]
    found = detect_flips(x, mask, fits, FOCAL)
    assert np.array_equal(found["c2"], truth)
    assert not any(found[c].any() for c in x if c != "c2")


def test_unseen_views_and_missing_joints_are_never_flagged():
    _, x, mask, pairs = _scene()
    mask["c0"][:] = False                                        # c0 sees nothing
    mask["c2"][:, [H36M17.index("l_wrist"), H36M17.index("r_wrist")]] = False
    truth = _swap(x, "c1", np.arange(3), [0, 1])
    found = detect_flips(x, mask, pairs, FOCAL)
    assert not found["c0"].any()
    assert np.array_equal(found["c1"], truth)
    # a camera in no usable pair is all False
    found = detect_flips(x, mask, [p for p in pairs if "c3" not in (p.cam_a, p.cam_b)], FOCAL)
    assert not found["c3"].any()


def test_two_views_cannot_tell_which_is_swapped_and_mark_the_later_one():
    _, x, mask, pairs = _scene()
    x2 = {c: x[c] for c in ("c0", "c1")}
    _swap(x2, "c0", np.arange(4), [0, 1])
    found = detect_flips(x2, {c: mask[c] for c in x2}, pairs, FOCAL)
    assert found["c1"][:4].all() and not found["c0"].any() and not found["c1"][4:].any()


def test_greedy_search_beyond_the_exact_limit(monkeypatch):
    import pipeline.geometry.flips as FL

    _, x, mask, pairs = _scene(3.0)
    truth = _swap(x, "c1", np.arange(5, 15), [0, 1])
    monkeypatch.setattr(FL, "EXACT_MAX_VIEWS", 2)
    found = FL.detect_flips(x, mask, pairs, FOCAL)
    assert np.array_equal(found["c1"], truth) and not found["c0"].any()

"""Left/right swaps of 2D detections, found by epipolar consistency across views.

Off-the-shelf 2D detectors sometimes label a person's left limbs as right ones, with full
confidence. BlazePose does it on Pose2Sim's demo in 34 of 100 frames of one camera. A swap is
invisible in one view but not across views: the swapped joints break the epipolar constraint
of every pair the view is in. Such joints poison the pooled essential-matrix fit (they are a
third of one camera's correspondences) and the triangulation, so they are fixed before either.

Limbs that hang off the same unpaired joint flip together (a *flip group*: for H36M17 the legs
below the pelvis and the arms below the thorax; see :func:`flip_groups`). Per frame and group,
each camera gets a state, kept or swapped. The cost of a pair of cameras is the mean truncated
Sampson error (pixels) of the group's joints under the pair's geometry, once with the joints
matched as labelled and once with one view's left and right exchanged; a state assignment
costs the sum over pairs. Swapping both views of a pair changes nothing, so only whether two
views agree matters, and the assignment and its complement cost the same: of the two, the one
that swaps fewer views is returned (the majority of views is taken to be right; with two views
the later camera of the pair is the one marked).

The minimum is exact up to EXACT_MAX_VIEWS views (every assignment tried, vectorised over
frames), greedy beyond (toggle the view that lowers the cost most, repeat). Pair geometry comes
from anywhere: the pooled fit of the swapped detections themselves is good enough (RANSAC
treats swapped frames as outliers). ``python -m tools real-demo fix-flips`` applies this to
a stage-1 run's detections.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.geometry import epipolar as epi
from pipeline.joints import H36M17, JointSet

EXACT_MAX_VIEWS = 10
"""Up to this many views every state assignment is tried (2**V per frame); beyond, a greedy
descent toggles the single view that lowers the cost most until none does."""


def flip_groups(joint_set: JointSet = H36M17) -> dict[str, np.ndarray]:
    """Flip pairs grouped by the first unpaired joint above them in the kinematic tree.

    Returns:
        anchor joint name -> (P, 2) int array of (left, right) joint indices. For H36M17:
        ``{"pelvis": hips, knees, ankles; "thorax": shoulders, elbows, wrists}``.
    """
    paired = {int(j) for p in joint_set.flip_pairs for j in p}
    groups: dict[str, list[tuple[int, int]]] = {}
    for a, b in joint_set.flip_pairs:
        k = int(a)
        while k in paired:
            k = joint_set.parents[k]
        groups.setdefault(joint_set.names[k], []).append((int(a), int(b)))
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}


def _pair_costs(xa: np.ndarray, xb: np.ndarray, ma: np.ndarray, mb: np.ndarray,
                E: np.ndarray, focal_px: float, idx: np.ndarray, swapped: np.ndarray,
                cap_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F,) mean truncated Sampson error (px) of joints ``idx`` matched as labelled and with
    view b's ``idx`` replaced by ``swapped``; 0 in both where either matching has < 2 joints
    (the third array, (F,) bool, says where both have enough)."""
    out = []
    for jb in (idx, swapped):
        e = np.abs(epi.sampson_error(xa[:, idx], xb[:, jb], E)) * focal_px
        ok = ma[:, idx] & mb[:, jb] & np.isfinite(e)
        n = ok.sum(-1)
        out.append((np.where(ok, np.minimum(e, cap_px), 0.0).sum(-1) / np.maximum(n, 1), n))
    (same, n_same), (diff, n_diff) = out
    informative = (n_same >= 2) & (n_diff >= 2)
    return np.where(informative, same, 0.0), np.where(informative, diff, 0.0), informative


def detect_flips(x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                 pairs: Iterable[epi.PairGeometry], focal_px: float | Mapping[str, float],
                 joint_set: JointSet = H36M17, cap_px: float = 50.0, max_steps: int = 4
                 ) -> dict[str, np.ndarray]:
    """Which views label which limbs mirrored.

    Args:
        x_norm: camera -> (F, J, 2) undistorted normalised coordinates (same frames in all).
        mask: camera -> (F, J) bool, joints usable (confident, finite).
        pairs: relative poses (``ok`` ones are used); camera ids as in ``x_norm``.
        focal_px: focal length(s) turning normalised errors into pixels.
        cap_px: Sampson errors are truncated here (an outlier joint costs at most this).
        max_steps: greedy search (more than EXACT_MAX_VIEWS views): at most max_steps * V
            toggles.
    Returns:
        camera -> (F, G) bool, True where group g (in :func:`flip_groups` order) of that view
        is swapped; all False for a camera in no usable pair.
    """
    cams = list(x_norm)
    V = len(cams)
    F = next(iter(x_norm.values())).shape[0]
    groups = list(flip_groups(joint_set).values())
    focal = {c: float(focal_px[c]) if isinstance(focal_px, Mapping) else float(focal_px)
             for c in cams}
    out = {c: np.zeros((F, len(groups)), dtype=bool) for c in cams}
    usable = [p for p in pairs if p.ok and p.cam_a in x_norm and p.cam_b in x_norm]
    for g, gp in enumerate(groups):
        idx = gp.reshape(-1)                       # l0, r0, l1, r1 ...
        swapped = gp[:, ::-1].reshape(-1)          # r0, l0, r1, l1 ...
        same = np.zeros((V, V, F))
        diff = np.zeros((V, V, F))
        seen = np.zeros((F, V), dtype=bool)        # the view takes part in a usable pair
        for p in usable:
            i, k = cams.index(p.cam_a), cams.index(p.cam_b)
            E = epi.essential_from_pose(p.R, p.t)
            f = (focal[p.cam_a] + focal[p.cam_b]) / 2
            s, d, inf = _pair_costs(x_norm[p.cam_a], x_norm[p.cam_b], mask[p.cam_a],
                                    mask[p.cam_b], E, f, idx, swapped, cap_px)
            same[i, k] = same[k, i] = s
            diff[i, k] = diff[k, i] = d
            seen[:, i] |= inf
            seen[:, k] |= inf
        state = _best_states(same, diff, seen, max_steps)
        for v, c in enumerate(cams):
            out[c][:, g] = state[:, v]
    return out


def _best_states(same: np.ndarray, diff: np.ndarray, seen: np.ndarray, max_steps: int
                 ) -> np.ndarray:
    """(F, V) bool states minimising sum over pairs of same[i, k] (states equal) or diff[i, k]
    (states differ); same, diff: (V, V, F) symmetric, zero diagonal; seen: (F, V). Views not
    seen stay False; of an assignment and its complement, the one swapping fewer seen views
    is kept."""
    V, F = same.shape[0], same.shape[2]
    if V <= EXACT_MAX_VIEWS:
        combos = np.array(list(itertools.product([False, True], repeat=V)))      # (C, V)
        cost = np.zeros((F, len(combos)))
        for i in range(V):
            for k in range(i + 1, V):
                differ = combos[:, i] != combos[:, k]
                cost += np.where(differ[None], diff[i, k][:, None], same[i, k][:, None])
        n_swapped = (combos[None] & seen[:, None]).sum(-1)                       # (F, C)
        # ties (an assignment and its complement) go to fewer swapped views
        cost += 1e-9 * n_swapped
        state = combos[np.argmin(cost, axis=1)]
    else:
        state = np.zeros((F, V), dtype=bool)
        rows = np.arange(F)
        for _ in range(max_steps * V):
            equal = state[:, :, None] == state[:, None, :]                       # (F, V, V)
            s, d = same.transpose(2, 0, 1), diff.transpose(2, 0, 1)              # (F, V, V)
            gain = (np.where(equal, s, d) - np.where(equal, d, s)).sum(-1)       # (F, V)
            best = np.argmax(gain, axis=1)
            go = gain[rows, best] > 1e-12
            if not go.any():
                break
            state[rows[go], best[go]] ^= True
    state &= seen
    return np.where(state.sum(1, keepdims=True) * 2 > seen.sum(1, keepdims=True),
                    ~state & seen, state)


def apply_flips(joints: np.ndarray, conf: np.ndarray, flipped: np.ndarray,
                joint_set: JointSet = H36M17) -> tuple[np.ndarray, np.ndarray]:
    """Swap left and right of the flagged groups.

    Args:
        joints: (F, J, D) joints; conf: (F, J); flipped: (F, G) bool (:func:`detect_flips`).
    Returns:
        new (joints, conf) arrays (inputs unchanged).
    """
    joints, conf = np.array(joints, copy=True), np.array(conf, copy=True)
    groups = list(flip_groups(joint_set).values())
    if flipped.shape != (len(joints), len(groups)):
        raise ValueError(f"flipped must be (F, G) = {(len(joints), len(groups))}, "
                         f"got {flipped.shape}")
    for g, gp in enumerate(groups):
        rows = np.flatnonzero(flipped[:, g])
        if not len(rows):
            continue
        src, dst = gp.reshape(-1), gp[:, ::-1].reshape(-1)
        joints[rows[:, None], src] = joints[rows[:, None], dst]
        conf[rows[:, None], src] = conf[rows[:, None], dst]
    return joints, conf

"""Loops of cameras: pair rotations must compose to the identity around every triangle.

:func:`check_loops` reports the loop errors of a set of pair fits, :func:`resolve_loops`
re-chooses each pair's decomposition of E so that the loops close, and
:func:`flag_loop_outliers` marks a pair that every path through a third camera contradicts, and
:func:`with_loop_errors` records each pair's typical disagreement with such paths (pair choice);
:func:`confirm_by_loops` labels an ambiguous pair that every certain path through a third camera
confirms; :func:`label_last_uncertain` labels, with a warning, the least uncertain pair of a
camera nothing else labels; :func:`check_rig` runs them on a rig's pair fits (what the job and
the flip sweep do).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.geometry.cameras import rotation_error_deg
from pipeline.geometry.epipolar import (PairGeometry, cheirality_counts, essential_from_pose,
                                        pose_candidates, valid_points)
from pipeline.geometry.hypotheses import FLAG_DEG, MAX_SE_DEG, MIN_MARGIN


# --- loops of cameras ---------------------------------------------------------------------------

@dataclass
class LoopReport:
    """Consistency of the pair rotations around every triangle of cameras.

    Attributes:
        triangles: list of (i, j, k) camera ids.
        rot_err_deg: (T,) angle of R_jk R_ij R_ik^T (0 for a consistent loop).
        trans_err_deg: (T,) how far t_ik is from the plane of R_jk t_ij and t_jk (degrees).
        max_rot_err_deg: worst rotation loop error (0 when there are no triangles).
        consistent: every loop error below the tolerance.
        tol_deg: the tolerance used.
    """

    triangles: list[tuple[str, str, str]]
    rot_err_deg: np.ndarray
    trans_err_deg: np.ndarray
    max_rot_err_deg: float
    consistent: bool
    tol_deg: float

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"cams": "-".join(tri), "rot_err_deg": float(r), "trans_err_deg": float(e)}
                for tri, r, e in zip(self.triangles, self.rot_err_deg, self.trans_err_deg)]


def pair_lookup(pairs: Iterable[PairGeometry]) -> dict[tuple[str, str], PairGeometry]:
    """Both directions of every usable pair, keyed (cam_a, cam_b)."""
    out: dict[tuple[str, str], PairGeometry] = {}
    for g in pairs:
        if g.ok:
            out[(g.cam_a, g.cam_b)] = g
            out[(g.cam_b, g.cam_a)] = g.inverted()
    return out


def _loop_errors(Rij: np.ndarray, tij: np.ndarray, Rjk: np.ndarray, tjk: np.ndarray,
                 Rik: np.ndarray, tik: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-coplanarity loop errors (degrees); broadcast over leading axes."""
    M = Rjk @ Rij @ np.swapaxes(Rik, -1, -2)
    rot = np.degrees(np.arccos(np.clip((np.trace(M, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    # Composing i -> j -> k gives t_ik = s1 * R_jk t_ij + s2 * t_jk (unknown scales s1, s2 > 0
    # of the unit translations), so t_ik must lie in the plane of R_jk t_ij and t_jk.
    u = (Rjk @ tij[..., None])[..., 0]
    n = np.cross(u, tjk)
    nn = np.linalg.norm(n, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.abs((n * tik).sum(-1)) / (nn * np.linalg.norm(tik, axis=-1))
    trans = np.degrees(np.arcsin(np.clip(np.where(nn > 1e-12, s, 0.0), 0, 1)))
    return rot, trans


def check_loops(pairs: Iterable[PairGeometry], tol_deg: float = 2.0) -> LoopReport:
    """Rotation (and translation-plane) consistency around every triangle of cameras whose three
    pairs are all ok. Pairs may be given in either direction."""
    look = pair_lookup(pairs)
    cams = sorted({c for key in look for c in key})
    tris, rots, trans = [], [], []
    for i, j, k in itertools.combinations(cams, 3):
        if (i, j) in look and (j, k) in look and (i, k) in look:
            gij, gjk, gik = look[(i, j)], look[(j, k)], look[(i, k)]
            r, e = _loop_errors(gij.R, gij.t, gjk.R, gjk.t, gik.R, gik.t)
            tris.append((i, j, k))
            rots.append(float(r))
            trans.append(float(e))
    rot_a, trans_a = np.array(rots), np.array(trans)
    worst = float(rot_a.max()) if len(rot_a) else 0.0
    return LoopReport(tris, rot_a, trans_a, worst, bool(worst <= tol_deg), tol_deg)


def resolve_loops(pairs: list[PairGeometry], xs: Mapping[str, np.ndarray],
                  masks: Mapping[str, np.ndarray], min_support: float = 0.5,
                  cap_deg: float = 30.0, sweeps: int = 3) -> list[PairGeometry]:
    """Re-choose, pair by pair, the decomposition of each E that makes the camera loops close.

    ``recoverPose`` picks one of the four decompositions of E by cheirality alone; with a few
    pixels of noise on a wide pair it can pick a wrong one. Every decomposition that keeps at
    least ``min_support`` of the best cheirality count is a candidate; coordinate descent over
    the pairs chooses the candidate minimising the sum of (capped) rotation + translation loop
    errors of the triangles through that pair, starting from recoverPose's choices.

    Args:
        pairs: ok/failed PairGeometry (cam_a, cam_b as in ``xs``).
        xs: camera -> (F, J, 2) normalised joints; masks: camera -> (F, J) bool.
    Returns:
        new list of PairGeometry (same order); changed pairs have ``reason`` "" and method
        suffixed "+loop".
    """
    out = list(pairs)
    cands: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n, g in enumerate(out):
        if not g.ok:
            continue
        m = valid_points(xs[g.cam_a], xs[g.cam_b], masks[g.cam_a] & masks[g.cam_b])
        if g.inliers is not None and g.inliers.shape == m.shape:
            m = m & g.inliers
        Rs, ts = pose_candidates(g.E)
        cnt = cheirality_counts(xs[g.cam_a][m], xs[g.cam_b][m], Rs, ts)
        keep = cnt >= min_support * cnt.max()
        cands[n] = (Rs[keep], ts[keep])
    if len(cands) < 3:
        return out
    for _ in range(sweeps):
        changed = False
        for n in cands:
            others = [g for m_, g in enumerate(out) if m_ != n]
            best, best_cost = None, np.inf
            for R, t in zip(*cands[n]):
                trial = PairGeometry(out[n].cam_a, out[n].cam_b, R, t, out[n].E, 0, 0, 0.0, True)
                rep = check_loops(others + [trial])
                mine = [q for q, tri in enumerate(rep.triangles)
                        if trial.cam_a in tri and trial.cam_b in tri]
                if not mine:
                    continue
                cost = float(np.minimum(rep.rot_err_deg[mine], cap_deg).sum()
                             + np.minimum(rep.trans_err_deg[mine], cap_deg).sum())
                if cost < best_cost - 1e-9:
                    best, best_cost = (R, t), cost
            if best is not None and not (np.allclose(best[0], out[n].R) and
                                         np.allclose(best[1], out[n].t)):
                g = out[n]
                R, t = best
                out[n] = replace(g, R=R, t=t, E=essential_from_pose(R, t), ok=True, reason="",
                                 method=g.method + "+loop")
                changed = True
        if not changed:
            break
    return out


LOOP_TOL_DEG = 10.0


def two_hop_errors(fits: Iterable[PairGeometry], ambiguous_legs: bool = False
                   ) -> dict[tuple[str, str], list[float]]:
    """(cam_a, cam_b) of every pair -> the rotation disagreements (degrees) of R_ab with each
    path R_cb R_ac through a third camera c whose two pairs are ok (with ``ambiguous_legs``,
    or ambiguous: refused for labels, their best poses still inform a loop)."""
    fits = list(fits)
    rot = {}
    for g in fits:
        if g.ok or (ambiguous_legs and g.ambiguous):
            rot[(g.cam_a, g.cam_b)] = g.R
            rot[(g.cam_b, g.cam_a)] = g.R.T
    cams = sorted({c for k in rot for c in k})
    return {(g.cam_a, g.cam_b): [
        float(rotation_error_deg(rot[(c, g.cam_b)] @ rot[(g.cam_a, c)], g.R))
        for c in cams if c not in (g.cam_a, g.cam_b)
        and (g.cam_a, c) in rot and (c, g.cam_b) in rot] for g in fits}


def with_loop_errors(fits: list[PairGeometry]) -> list[PairGeometry]:
    """Every pair with ``loop_err_deg``: the median of its disagreements with the paths through
    a third camera (:func:`two_hop_errors`, ambiguous pairs' best poses included as legs), NaN
    where no path exists. The median, not the best path: two pairs off in opposite directions
    can close one loop by chance, while a pair several degrees off disagrees with the typical
    path through it."""
    errs = two_hop_errors(fits, ambiguous_legs=True)
    return [replace(g, loop_err_deg=float(np.median(errs[(g.cam_a, g.cam_b)]))
                    if errs[(g.cam_a, g.cam_b)] else float("nan")) for g in fits]


def flag_loop_outliers(fits: list, tol_deg: float = LOOP_TOL_DEG) -> list:
    """Mark pairs not ok, worst first, while some pair is contradicted by all its loops.

    For pair (a, b) and each third camera c with usable pairs (a, c) and (c, b), the composed
    rotation R_cb R_ac should equal R_ab. The pair whose best two-hop path disagrees most (by
    more than ``tol_deg``, with at least two paths) is marked not ok; the check repeats on the
    remaining pairs. This catches a bad E (not only a bad choice among its four decompositions,
    which ``resolve_loops`` handles); a good pair beside one bad pair keeps a consistent path.
    """
    out = list(fits)
    while True:
        paths = two_hop_errors(out)
        worst, worst_err = None, tol_deg
        for n, g in enumerate(out):
            errs = paths[(g.cam_a, g.cam_b)]
            if g.ok and len(errs) >= 2 and min(errs) > worst_err:
                worst, worst_err = n, min(errs)
        if worst is None:
            return out
        out[worst] = replace(out[worst], ok=False, reason=(
            f"camera loops do not close: every path through a third camera disagrees by more "
            f"than {tol_deg:g} deg (best {worst_err:.1f} deg)"))


CONFIRM_DEG = FLAG_DEG
"""The accuracy a loop confirmation vouches for (degrees): the pair guard's ``FLAG_DEG``, what
the flip sweep calls off; see :func:`confirm_by_loops`."""


def confirm_by_loops(fits: list[PairGeometry], within_deg: float = CONFIRM_DEG
                     ) -> list[PairGeometry]:
    """Label an ambiguous pair whose best pose the rest of the rig confirms.

    The pair guard (:mod:`pipeline.geometry.hypotheses`) refuses a pair whose own
    correspondences cannot tell its pose from a distinct one, or leave its rotation uncertain.
    The other cameras are independent evidence: for a third camera c whose pairs (a, c) and
    (c, b) are labelled (ok), the path R_cb R_ac estimates R_ab with a standard error
    s = sqrt(se_ac^2 + se_cb^2) (their bootstrap ``rotation_se_deg``). If every such path
    agrees with the pair's best pose within ``within_deg - 2 s`` (a path at most two standard
    errors off), that pose is within ``within_deg`` of the truth: the pair is labelled
    (``ok``, no longer ``ambiguous``, method suffixed "+loop-confirmed"). Paths whose legs are
    too uncertain for that (``within_deg - 2 s <= 0``) or unmeasured do not count; a pair with
    no such path, or one path disagreeing, stays refused (a two-camera rig has none).
    """
    ok = {}
    for g in fits:
        if g.ok and np.isfinite(g.rotation_se_deg):
            ok[(g.cam_a, g.cam_b)] = (g.R, g.rotation_se_deg)
            ok[(g.cam_b, g.cam_a)] = (g.R.T, g.rotation_se_deg)
    cams = sorted({c for k in ok for c in k})
    out = list(fits)
    for n, g in enumerate(fits):
        if not g.ambiguous:
            continue
        agree = []
        for c in cams:
            if c in (g.cam_a, g.cam_b) or (g.cam_a, c) not in ok or (c, g.cam_b) not in ok:
                continue
            (R_ac, s_ac), (R_cb, s_cb) = ok[(g.cam_a, c)], ok[(c, g.cam_b)]
            tol = within_deg - 2.0 * float(np.hypot(s_ac, s_cb))
            if tol > 0:
                agree.append(float(rotation_error_deg(R_cb @ R_ac, g.R)) <= tol)
        if agree and all(agree):
            out[n] = replace(g, ok=True, ambiguous=False, reason="",
                             method=g.method + "+loop-confirmed")
    return out


def uncertain_only(g: PairGeometry) -> bool:
    """Refused by the pair guard for its rotation's standard error alone: no distinct pose fits
    nearly as well (a flat valley, not two hypotheses), and no loop contradicted it."""
    return bool(g.ambiguous and g.cost_margin >= MIN_MARGIN and g.rotation_se_deg > MAX_SE_DEG)


def label_last_uncertain(fits: list[PairGeometry]) -> list[PairGeometry]:
    """Label, with a warning, the pair of least standard error of each camera that no labelled
    pair covers, among that camera's pairs refused for their uncertainty alone
    (:func:`uncertain_only`).

    The guard refuses such a pair because its rotation may be several degrees off, not because
    a distinct pose rivals it. Where another pair labels the camera, or the rig's loops can
    judge the pair (:func:`confirm_by_loops`), refusing costs nothing; where nothing else labels
    the camera (a two-camera rig, or a camera whose every pair is uncertain), refusing costs
    all of its labels. So the pair is labelled (``ok``) but flagged: ``reason`` keeps why it is
    uncertain (the job records it as a warning in failures.parquet and counts it in
    summary.json ``uncertain_pairs``), ``method`` gains "+uncertain". A pair with a rival
    minimum stays refused: there the evidence is balanced between two poses.
    """
    out = list(fits)
    covered = {c for g in out if g.ok for c in (g.cam_a, g.cam_b)}
    for c in sorted({c for g in out for c in (g.cam_a, g.cam_b)}):
        cand = [(g.rotation_se_deg, n) for n, g in enumerate(out)
                if c in (g.cam_a, g.cam_b) and not g.ok and uncertain_only(g)]
        if c in covered or not cand:
            continue
        n = min(cand)[1]
        g = out[n]
        out[n] = replace(g, ok=True, ambiguous=False, method=g.method + "+uncertain", reason=(
            f"uncertain, labelled: the rotation's bootstrap standard error is "
            f"{g.rotation_se_deg:.1f} deg (> {MAX_SE_DEG:g}; no distinct pose rivals it) and no "
            f"other pair labels camera {c}; its labels may be several degrees off"))
        covered |= {g.cam_a, g.cam_b}
    return out


def check_rig(fits: list[PairGeometry], xs: Mapping[str, np.ndarray],
              masks: Mapping[str, np.ndarray]) -> list[PairGeometry]:
    """A rig's pair fits after the loop checks: with three or more cameras, decompositions
    re-chosen so the loops close (:func:`resolve_loops`), pairs every loop contradicts marked not
    ok (:func:`flag_loop_outliers`), ambiguous pairs that the certain loops confirm labelled
    (:func:`confirm_by_loops`) and each pair's ``loop_err_deg`` recorded
    (:func:`with_loop_errors`); then, in any rig, a camera that no pair labels gets its least
    uncertain pair refused for its standard error alone, labelled with a warning
    (:func:`label_last_uncertain`).

    Args: fits of every camera pair; xs camera -> (F, J, 2) normalised joints, masks camera ->
    (F, J) bool (as :func:`resolve_loops`).
    """
    if len({c for g in fits for c in (g.cam_a, g.cam_b)}) < 3:
        return label_last_uncertain(list(fits))
    fits = flag_loop_outliers(resolve_loops(list(fits), xs, masks))
    return with_loop_errors(label_last_uncertain(confirm_by_loops(fits)))

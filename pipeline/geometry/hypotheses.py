"""A pooled camera pair that never flips silently: several pose hypotheses, each refined on all
correspondences and compared by one robust cost; a pair whose best pose is not clearly better
than the next *distinct* one is flagged ambiguous and gets no labels.

Why: a pooled fit (:func:`pipeline.geometry.epipolar.fit_pair_pooled`) can settle on a pose tens of
degrees off that fits the 2D only slightly worse than the truth. Two shapes of this were
measured on CMU motion through the Human3.6M rigs (``python -m tools flip-sweep``): a second
local minimum of the cost (a different E, as from a near-planar body) and a long flat valley
(rotation traded against translation, the bas-relief ambiguity of a small, distant body), whose
minimum itself lies 5-20 degrees from the truth at 5-10 px noise. Loop checks catch both with
three or more cameras; a two-camera rig has no loop. So each pair compares:

* hypotheses: ``RANSAC_RUNS`` seeded five-point USAC-MAGSAC runs (each on its own random subset of
  the correspondences), all four decompositions of each E; every decomposition with at least
  half the best cheirality count is refined on all correspondences (the rest keep their
  unrefined cost, which their points behind the cameras already make large);
* profile probes: the best pose turned by ``DISTINCT_DEG`` along the rotation direction the data
  constrain least (the weakest eigenvector of the Gauss-Newton Hessian, translation profiled
  out), both signs, then refined with that turn held (only the two other rotation directions
  and the translation move): the best any pose at least ``DISTINCT_DEG`` away can do along the
  flattest direction;
* the cost (:func:`robust_cost`): the Cauchy negative log-likelihood of every correspondence's
  Sampson error at the noise scale estimated from the data (1.4826 x median absolute residual),
  truncated at ``CAP`` and ``CAP`` for a point behind either camera. Its differences read like
  chi-square differences (a Gaussian inlier's cost is about its squared normalised residual),
  whatever the RANSAC threshold.

``cost_margin`` = cost of the best distinct hypothesis (rotation more than ``DISTINCT_DEG``
away) minus the best's; below ``MIN_MARGIN`` the pair is ambiguous: ``ok`` False, a reason, and
the job records it in ``failures.parquet`` (an error, exit code 2, when a camera loses its labels
through it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.geometry import epipolar as epi
from pipeline.geometry.cameras import rotation_error_deg

RANSAC_RUNS = 3
"""Seeded five-point USAC-MAGSAC runs per pair (seed, seed + 1, ...), each on its own random
subset of at most ``RANSAC_POINTS`` correspondences (a hypothesis only needs to land in the right basin: the
refinement then uses every correspondence)."""

RANSAC_POINTS = 1000

SAME_DEG = 2.0
"""Hypotheses whose rotations (and translation directions) agree within this are one: they
refine to the same pose."""

DISTINCT_DEG = 3.0
"""Two poses are distinct when their rotations differ by more than this; the profile probes
turn the best pose by this much."""

FLAG_DEG = 5.0
FLAG_SIGMA = 4.0
MIN_MARGIN = (FLAG_SIGMA * DISTINCT_DEG / FLAG_DEG) ** 2
"""A pair is ambiguous when the next distinct pose's cost exceeds the best's by less than this
(about 5.8). Reading: along the flattest direction the cost rises roughly quadratically, so a
margin m at ``DISTINCT_DEG`` puts a pose ``FLAG_DEG`` away at m (FLAG_DEG / DISTINCT_DEG)^2
chi-square units; the pair is labelled only when that is at least ``FLAG_SIGMA``^2 (a 5 degree
error excluded at 4 sigma). Checked with ``python -m tools flip-sweep`` (README)."""

CAP = float(np.log1p(10.0 ** 2))
"""A correspondence's cost is at most that of a residual of 10 noise scales (an outlier), and
exactly this for a point behind either camera."""

MIN_SCALE_PX = 0.05
"""Floor of the estimated noise scale (noise-free data would give ~0)."""


@dataclass
class Hypothesis:
    """One candidate pose of a pair, its cost on all correspondences and its cheirality."""

    R: np.ndarray
    t: np.ndarray
    cost: float
    cheirality: float
    source: str


def noise_scale_px(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray,
                   focal_px: float) -> float:
    """Robust noise scale (pixels) of (N, 2) correspondences under a pose: 1.4826 x the median
    absolute Sampson error, at least ``MIN_SCALE_PX``."""
    r = epi.sampson_residuals_px(epi.homogeneous(xa), epi.homogeneous(xb), R, t, focal_px)
    return max(float(1.4826 * np.median(np.abs(r))), MIN_SCALE_PX)


def robust_cost(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray, focal_px: float,
                scale_px: float) -> tuple[float, float]:
    """(cost, cheirality) of a pose on (N, 2) correspondences: the sum of truncated Cauchy costs
    log(1 + (r / scale)^2) of the Sampson errors r, ``CAP`` for points behind either camera;
    cheirality is the share of points in front of both."""
    r = epi.sampson_residuals_px(epi.homogeneous(xa), epi.homogeneous(xb), R, t, focal_px)
    front = epi.front_of_both(xa, xb, R, t)
    c = np.where(front, np.minimum(np.log1p((r / scale_px) ** 2), CAP), CAP)
    return float(c.sum()), float(front.mean()) if len(front) else 0.0


def _refined(xa, xb, R, t, focal_px, scale_px, source, **constraint) -> Hypothesis:
    R, t = epi.refine_pose(xa, xb, R, t, focal_px, f_scale_px=scale_px, loss="cauchy",
                           **constraint)
    return Hypothesis(R, t, *robust_cost(xa, xb, R, t, focal_px, scale_px), source)


def weakest_rotation_axis(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray,
                          focal_px: float, scale_px: float, step: float = 1e-6) -> np.ndarray:
    """(3,) unit rotation direction (left increment of R) that the correspondences constrain
    least: the weakest eigenvector of the Cauchy-weighted Gauss-Newton Hessian, the translation
    (2 directions on its sphere) profiled out by the Schur complement."""
    a, b = epi.homogeneous(xa), epi.homogeneous(xb)
    B = epi._tangent_basis(t)

    def res(p):
        tt = t + B @ p[3:]
        return epi.sampson_residuals_px(a, b, epi._rotvec_to_matrix(p[:3]) @ R,
                                        tt / np.linalg.norm(tt), focal_px)

    r0 = res(np.zeros(5))
    J = np.stack([(res(step * e) - r0) / step for e in np.eye(5)], -1)      # (N, 5)
    w = 1.0 / (1.0 + (r0 / scale_px) ** 2)
    H = (J * w[:, None]).T @ J
    S = H[:3, :3] - H[:3, 3:] @ np.linalg.solve(H[3:, 3:] + 1e-12 * np.eye(2), H[3:, :3])
    _, V = np.linalg.eigh(S)
    return V[:, 0]


def _ransac_poses(xa, xb, start, threshold_px, focal_px, seed, runs, max_points
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``start`` and every decomposition of the E of ``runs`` seeded RANSAC runs (each on a
    random subset of at most ``max_points``), duplicates (``SAME_DEG``) dropped."""
    rng = np.random.default_rng(seed + 1)
    poses: list[tuple[np.ndarray, np.ndarray]] = [start]
    for k in range(runs):
        sub = np.arange(len(xa))
        if len(sub) > max_points:
            sub = np.sort(rng.choice(len(xa), max_points, replace=False))
        g = epi.fit_essential(xa[sub], xb[sub], threshold_px, focal_px, seed=seed + k)
        if not g.ok:
            continue
        Rs, ts = epi.pose_candidates(g.E)
        for R, t in zip(Rs, ts):
            if not any(rotation_error_deg(R, R2) < SAME_DEG
                       and t @ t2 > np.cos(np.radians(SAME_DEG)) for R2, t2 in poses):
                poses.append((R, t))
    return poses


def compare_hypotheses(xa: np.ndarray, xb: np.ndarray, start: tuple[np.ndarray, np.ndarray],
                       threshold_px: float, focal_px: float, seed: int = 0,
                       runs: int = RANSAC_RUNS, max_points: int = RANSAC_POINTS
                       ) -> tuple[Hypothesis, Hypothesis | None, int]:
    """The best pose of (N, 2) correspondences among ``start`` (a fitted pose), RANSAC's
    hypotheses and the profile probes, and the best hypothesis at least ``DISTINCT_DEG`` from it
    (None when there is none); the third value counts the hypotheses compared."""
    scale = noise_scale_px(xa, xb, *start, focal_px)
    poses = _ransac_poses(xa, xb, start, threshold_px, focal_px, seed, runs, max_points)
    counts = np.array([epi.front_of_both(xa, xb, R, t).sum() for R, t in poses])
    hyps = [_refined(xa, xb, R, t, focal_px, scale, "ransac") if n >= 0.5 * counts.max()
            else Hypothesis(R, t, *robust_cost(xa, xb, R, t, focal_px, scale), "unrefined")
            for (R, t), n in zip(poses, counts)]
    best = min(hyps, key=lambda h: h.cost)
    axis = weakest_rotation_axis(xa, xb, best.R, best.t, focal_px, scale)
    ortho = np.linalg.svd(axis[None])[2][1:].T                             # (3, 2) basis
    for sign in (1.0, -1.0):
        hyps.append(_refined(xa, xb, best.R, best.t, focal_px, scale, "profile",
                             rotation_offset=sign * np.radians(DISTINCT_DEG) * axis,
                             rotation_basis=ortho))
    best = min(hyps, key=lambda h: h.cost)
    others = [h for h in hyps if rotation_error_deg(h.R, best.R) > DISTINCT_DEG - 1e-6]
    return best, (min(others, key=lambda h: h.cost) if others else None), len(hyps)


def fit_pair_robust(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, threshold_px: float,
                    focal_px: float, seed: int = 0, min_margin: float = MIN_MARGIN,
                    runs: int = RANSAC_RUNS, max_points: int = 6000, cam_a: str = "a",
                    cam_b: str = "b") -> epi.PairGeometry:
    """A pooled pair fit (:func:`pipeline.geometry.epipolar.fit_pair_pooled`, its checks and failures),
    then the hypotheses compared on all correspondences (:func:`compare_hypotheses`): the best
    pose, its ``cheirality``, ``cost_margin`` and ``runner_up_deg``; ``ok`` False with
    ``ambiguous`` True and a reason when the margin is below ``min_margin``.

    Args: xa, xb (F, J, 2) normalised, mask (F, J), thresholds as ``fit_pair_pooled``.
    """
    g = epi.fit_pair_pooled(xa, xb, mask, threshold_px, focal_px, seed=seed,
                            max_points=max_points, cam_a=cam_a, cam_b=cam_b)
    if not g.ok:
        return g
    use = epi.valid_points(xa, xb, mask).reshape(-1)
    pa, pb = xa.reshape(-1, 2)[use], xb.reshape(-1, 2)[use]
    if len(pa) > max_points:  # the same seeded subset the pooled fit refined on
        keep = np.sort(np.random.default_rng(seed).choice(len(pa), max_points, replace=False))
        pa, pb = pa[keep], pb[keep]
    best, second, n = compare_hypotheses(pa, pb, (g.R, g.t), threshold_px, focal_px, seed, runs)
    g = _with_pose(g, best.R, best.t, xa, xb, use, threshold_px / focal_px)
    margin = second.cost - best.cost if second is not None else float("inf")
    apart = float(rotation_error_deg(second.R, best.R)) if second is not None else float("nan")
    g = replace(g, cheirality=float(epi.front_of_both(xa.reshape(-1, 2)[use],
                                                      xb.reshape(-1, 2)[use], g.R, g.t).mean()),
                cost_margin=float(margin), runner_up_deg=apart, n_hypotheses=n,
                method=g.method + f"+{n}hyp")
    if margin >= min_margin:
        return g
    return replace(g, ok=False, ambiguous=True, reason=(
        f"ambiguous: a pose {apart:.1f} deg away fits all correspondences almost as well "
        f"(cost margin {margin:.1f} < {min_margin:g}); not labelled"))


def _with_pose(g: epi.PairGeometry, R: np.ndarray, t: np.ndarray, xa: np.ndarray, xb: np.ndarray,
               use: np.ndarray, threshold: float) -> epi.PairGeometry:
    """``g`` with pose (R, t) and its inliers recounted on every offered correspondence."""
    fa, fb = xa.reshape(-1, 2), xb.reshape(-1, 2)
    E = epi.essential_from_pose(R, t)
    inl = np.zeros(use.shape, bool)
    inl[use] = (epi.sampson_error(fa[use], fb[use], E) <= threshold) & epi.front_of_both(
        fa[use], fb[use], R, t)
    n = int(inl.sum())
    return replace(g, R=R, t=t, E=E, inliers=inl.reshape(xa.shape[:-1]), n_inliers=n,
                   inlier_ratio=float(n / max(int(use.sum()), 1)))

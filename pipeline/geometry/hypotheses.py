"""A pooled camera pair that never flips silently: genuinely distinct pose hypotheses, each
refined on all correspondences and compared by one robust cost; a pair is refused when a
distinct pose fits nearly as well as the best, or when its rotation is too uncertain to be
trusted at the degree level. A pair that is merely uncertain is labelled, its uncertainty
recorded.

Why: a pooled fit (:func:`pipeline.geometry.epipolar.fit_pair_pooled`) can settle on a pose tens of
degrees off that fits the 2D only slightly worse than the truth. Two shapes of this were
measured on CMU motion through the Human3.6M rigs (``python -m tools flip-sweep``): a second
local minimum of the cost (a different E, as from a near-planar body, or the depth-reversed
"mirrored" pose of nearly affine views) and a long flat valley (rotation traded against
translation, the bas-relief ambiguity of a small, distant body), whose minimum itself lies 5-20
degrees from the truth at 5-10 px noise. Each pair therefore has:

* hypotheses (:func:`candidate_poses`): the fitted pose, every decomposition of the E of
  ``RANSAC_RUNS`` seeded five-point USAC-MAGSAC runs (the twisted pair and the reversed
  baseline included) and the mirrored pose of each (:func:`mirrored_pose`); those with at least
  half the best cheirality count are refined on all correspondences, and the local minima they
  reach are kept when they lie more than ``DISTINCT_DEG`` apart after a longer refinement
  (:func:`distinct_minima`): a point part-way down the valley of the best is not a rival;
* the cost (:func:`robust_cost`): the Cauchy negative log-likelihood of every correspondence's
  Sampson error at the noise scale estimated from the data (1.4826 x median absolute residual),
  truncated at ``CAP`` and ``CAP`` for a point behind either camera; its differences read like
  chi-square differences whatever the RANSAC threshold;
* the uncertainty (:func:`bootstrap_rotation_se`): the rotation's standard error from
  ``BOOTSTRAP_RUNS`` refits on frames drawn with replacement. It needs no noise model (real
  detectors' errors are biased per view and correlated within a frame, which the median residual
  does not describe) and it is large exactly along a flat valley.

``cost_margin`` = cost of the best distinct minimum minus the best's (inf when there is none);
``runner_up_deg`` its rotation away from the best; ``rotation_se_deg`` the bootstrap standard
error. A pair is ambiguous (``ok`` False, a reason, recorded in ``failures.parquet``; an error,
exit code 2, when a camera loses its labels through it) when the margin is below ``MIN_MARGIN``
or the standard error above ``MAX_SE_DEG``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.geometry import epipolar as epi
from pipeline.geometry.cameras import rotation_error_deg

RANSAC_RUNS = 3
"""Seeded five-point USAC-MAGSAC runs per pair (seed, seed + 1, ...), each on its own random
subset of at most ``RANSAC_POINTS`` correspondences (a hypothesis only needs to land in the
right basin: the refinement then uses every correspondence)."""

RANSAC_POINTS = 1000

SAME_DEG = 2.0
"""Hypotheses whose rotations (and translation directions) agree within this are one: they
refine to the same pose."""

DISTINCT_DEG = 3.0
"""Two local minima are distinct when their rotations differ by more than this after the
longer refinement (:func:`distinct_minima`)."""

CONFIRM_NFEV = 400
"""Evaluations of the longer refinement that decides whether a hypothesis is a minimum of its
own or part of the best's basin."""

MIN_MARGIN = 5.76
"""A pair is ambiguous when a distinct minimum's cost exceeds the best's by less than this
(chi-square-like units: a likelihood ratio below e^(5.76 / 2) ~ 18 between two separate poses)."""

FLAG_DEG = 5.0
MAX_SE_DEG = 3.5
"""A pair is ambiguous when its rotation's bootstrap standard error exceeds this. Measured
(``python -m tools flip-sweep``, 1,080 fits of CMU motion through the Human3.6M rigs, issue 25):
the pairs more than ``FLAG_DEG`` off (7.4-8.4 degrees, a flat valley at 10 px) have standard
errors of 4.4 and more, the labelled ones at most 3.1; one accurate pair (0.4 degrees off at
10 px) reaches 3.5-3.6 and is refused on its own, labelled where the rig's loops confirm it
(:func:`pipeline.geometry.loops.confirm_by_loops`); on the Pose2Sim recording 0.5-3.0 (accurate
pairs). Below it the pair is labelled and its standard error recorded (pair choice prefers the
more certain partner)."""

BOOTSTRAP_RUNS = 8
BOOTSTRAP_POINTS = 2000
BOOTSTRAP_NFEV = 30
"""Refits of the bootstrap, each on the correspondences of frames drawn with replacement (a
seeded random subset of at most ``BOOTSTRAP_POINTS`` of them), started at the pose of all of
them (``BOOTSTRAP_NFEV`` evaluations: a refit only moves by its standard error)."""

CAP = float(np.log1p(10.0 ** 2))
"""A correspondence's cost is at most that of a residual of 10 noise scales (an outlier), and
exactly this for a point behind either camera."""

MIN_SCALE_PX = 0.05
"""Floor of the estimated noise scale (noise-free data would give ~0)."""

MIRROR = np.diag([1.0, 1.0, -1.0])


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


def mirrored_pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The depth-reversed (Necker) pose of (R, t): the body mirrored through a plane facing
    camera a projects, in nearly affine views, to the same 2D in both cameras under
    (M R M, M t), M = diag(1, 1, -1). A seed for the refinement, not a fit."""
    return MIRROR @ R @ MIRROR, MIRROR @ t


def _refined(xa, xb, R, t, focal_px, scale_px, source, max_nfev=100) -> Hypothesis:
    R, t = epi.refine_pose(xa, xb, R, t, focal_px, f_scale_px=scale_px, loss="cauchy",
                           max_nfev=max_nfev)
    return Hypothesis(R, t, *robust_cost(xa, xb, R, t, focal_px, scale_px), source)


def _is_new(R: np.ndarray, t: np.ndarray, poses: list[tuple[np.ndarray, np.ndarray, str]],
            tol_deg: float = SAME_DEG) -> bool:
    return not any(rotation_error_deg(R, R2) < tol_deg and t @ t2 > np.cos(np.radians(tol_deg))
                   for R2, t2, _ in poses)


def candidate_poses(xa: np.ndarray, xb: np.ndarray, start: tuple[np.ndarray, np.ndarray],
                    threshold_px: float, focal_px: float, seed: int, runs: int,
                    max_points: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(R, t, source) seeds: ``start``, every decomposition of the E of ``runs`` seeded RANSAC
    runs (each on a random subset of at most ``max_points``), and the mirrored pose of each;
    duplicates (``SAME_DEG``) dropped."""
    rng = np.random.default_rng(seed + 1)
    poses = [(*start, "start")]
    for k in range(runs):
        sub = np.arange(len(xa))
        if len(sub) > max_points:
            sub = np.sort(rng.choice(len(xa), max_points, replace=False))
        g = epi.fit_essential(xa[sub], xb[sub], threshold_px, focal_px, seed=seed + k)
        if g.ok:
            poses += [(R, t, "ransac") for R, t in zip(*epi.pose_candidates(g.E))]
    poses += [(*mirrored_pose(R, t), "mirror") for R, t, _ in list(poses)]
    out: list[tuple[np.ndarray, np.ndarray, str]] = []
    for R, t, source in poses:
        if _is_new(R, t, out):
            out.append((R, t, source))
    return out


def distinct_minima(xa: np.ndarray, xb: np.ndarray, hyps: list[Hypothesis], focal_px: float,
                    scale_px: float, min_margin: float = MIN_MARGIN
                    ) -> tuple[Hypothesis, list[Hypothesis]]:
    """The best hypothesis and the local minima distinct from it, cheapest first. A hypothesis
    more than ``DISTINCT_DEG`` from the best that costs less than ``min_margin`` more (a rival)
    is refined further (``CONFIRM_NFEV``): one that then reaches a lower cost becomes the best,
    one that lands within ``DISTINCT_DEG`` of the best is part of its basin (a point part-way
    down a flat valley), not a rival. Hypotheses far costlier are distinct as they stand."""
    order = sorted(hyps, key=lambda h: h.cost)
    best, kept = order[0], []
    for h in order[1:]:
        if rotation_error_deg(h.R, best.R) <= DISTINCT_DEG:
            continue
        if h.cost - best.cost < min_margin:
            h = _refined(xa, xb, h.R, h.t, focal_px, scale_px, h.source, CONFIRM_NFEV)
            if h.cost < best.cost:
                best, h = h, best
        kept.append(h)
    kept = [k for k in kept if rotation_error_deg(k.R, best.R) > DISTINCT_DEG]
    return best, sorted(kept, key=lambda h: h.cost)


def compare_hypotheses(xa: np.ndarray, xb: np.ndarray, start: tuple[np.ndarray, np.ndarray],
                       threshold_px: float, focal_px: float, seed: int = 0,
                       runs: int = RANSAC_RUNS, max_points: int = RANSAC_POINTS
                       ) -> tuple[Hypothesis, Hypothesis | None, int]:
    """The best pose of (N, 2) correspondences among ``start`` (a fitted pose) and the
    refined :func:`candidate_poses`, and the best local minimum distinct from it
    (:func:`distinct_minima`; None when there is none); the third value counts the hypotheses
    compared. Seeds with less than half the best cheirality count keep their unrefined cost
    (their points behind a camera already make it large)."""
    scale = noise_scale_px(xa, xb, *start, focal_px)
    poses = candidate_poses(xa, xb, start, threshold_px, focal_px, seed, runs, max_points)
    counts = np.array([epi.front_of_both(xa, xb, R, t).sum() for R, t, _ in poses])
    hyps = [_refined(xa, xb, R, t, focal_px, scale, s) if n >= 0.5 * counts.max()
            else Hypothesis(R, t, *robust_cost(xa, xb, R, t, focal_px, scale), "unrefined")
            for (R, t, s), n in zip(poses, counts)]
    best, rivals = distinct_minima(xa, xb, hyps, focal_px, scale)
    return best, (rivals[0] if rivals else None), len(hyps)


def bootstrap_rotation_se(xa: np.ndarray, xb: np.ndarray, frame: np.ndarray, R: np.ndarray,
                          t: np.ndarray, focal_px: float, seed: int = 0,
                          runs: int = BOOTSTRAP_RUNS, max_points: int = BOOTSTRAP_POINTS
                          ) -> float:
    """Standard error (degrees) of the rotation of (N, 2) correspondences ``xa``, ``xb`` with
    frame indices ``frame`` (N,): the root mean square angle between (R, t) and its refits on
    the correspondences of frames drawn with replacement, each refit started at (R, t) with the
    noise scale of the full set. NaN with fewer than two frames."""
    frames, inv = np.unique(frame, return_inverse=True)
    if len(frames) < 2:
        return float("nan")
    scale = noise_scale_px(xa, xb, R, t, focal_px)
    rng = np.random.default_rng(seed + 7)
    by_frame = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    angles = []
    for _ in range(runs):
        idx = np.concatenate([by_frame[i] for i in rng.integers(0, len(frames), len(frames))])
        if len(idx) > max_points:
            idx = rng.choice(idx, max_points, replace=False)
        Rb, _ = epi.refine_pose(xa[idx], xb[idx], R, t, focal_px, f_scale_px=scale,
                                loss="cauchy", max_nfev=BOOTSTRAP_NFEV)
        angles.append(float(rotation_error_deg(Rb, R)))
    return float(np.sqrt(np.mean(np.square(angles))))


def fit_pair_robust(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, threshold_px: float,
                    focal_px: float, seed: int = 0, min_margin: float = MIN_MARGIN,
                    runs: int = RANSAC_RUNS, max_points: int = 6000, cam_a: str = "a",
                    cam_b: str = "b", max_se_deg: float = MAX_SE_DEG,
                    bootstrap_runs: int = BOOTSTRAP_RUNS) -> epi.PairGeometry:
    """A pooled pair fit (:func:`pipeline.geometry.epipolar.fit_pair_pooled`, its checks and
    failures), then the distinct hypotheses compared on all correspondences
    (:func:`compare_hypotheses`) and the rotation's bootstrap standard error
    (:func:`bootstrap_rotation_se`): the best pose, its ``cheirality``, ``cost_margin``,
    ``runner_up_deg`` and ``rotation_se_deg``; ``ok`` False with ``ambiguous`` True and a reason
    when the margin is below ``min_margin`` or the standard error above ``max_se_deg``.

    Args: xa, xb (F, J, 2) normalised, mask (F, J), thresholds as ``fit_pair_pooled``.
    """
    g = epi.fit_pair_pooled(xa, xb, mask, threshold_px, focal_px, seed=seed,
                            max_points=max_points, cam_a=cam_a, cam_b=cam_b)
    if not g.ok:
        return g
    use = epi.valid_points(xa, xb, mask).reshape(-1)
    pa, pb = xa.reshape(-1, 2)[use], xb.reshape(-1, 2)[use]
    frame = np.repeat(np.arange(xa.shape[0]), xa.shape[1])[use]
    if len(pa) > max_points:  # the same seeded subset the pooled fit refined on
        keep = np.sort(np.random.default_rng(seed).choice(len(pa), max_points, replace=False))
        pa, pb, frame = pa[keep], pb[keep], frame[keep]
    best, second, n = compare_hypotheses(pa, pb, (g.R, g.t), threshold_px, focal_px, seed, runs)
    se = bootstrap_rotation_se(pa, pb, frame, best.R, best.t, focal_px, seed, bootstrap_runs)
    g = _with_pose(g, best.R, best.t, xa, xb, use, threshold_px / focal_px)
    g = replace(g, cheirality=float(epi.front_of_both(xa.reshape(-1, 2)[use],
                                                      xb.reshape(-1, 2)[use], g.R, g.t).mean()),
                cost_margin=second.cost - best.cost if second is not None else float("inf"),
                runner_up_deg=float(rotation_error_deg(second.R, best.R)) if second is not None
                else float("nan"), rotation_se_deg=se, n_hypotheses=n,
                method=g.method + f"+{n}hyp")
    reason = ambiguity_reason(g, min_margin, max_se_deg)
    return replace(g, ok=False, ambiguous=True, reason=reason) if reason else g


def ambiguity_reason(g: epi.PairGeometry, min_margin: float = MIN_MARGIN,
                     max_se_deg: float = MAX_SE_DEG) -> str:
    """Why a fitted pair cannot be trusted ("" when it can): a distinct pose fits nearly as
    well, or the rotation's bootstrap standard error is too large."""
    if g.cost_margin < min_margin:
        return (f"ambiguous: a distinct pose {g.runner_up_deg:.1f} deg away fits all "
                f"correspondences almost as well (cost margin {g.cost_margin:.1f} < "
                f"{min_margin:g}); not labelled")
    if g.rotation_se_deg > max_se_deg:
        return (f"ambiguous: the rotation is uncertain (bootstrap standard error over frames "
                f"{g.rotation_se_deg:.1f} deg > {max_se_deg:g}); not labelled")
    return ""


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

"""Each camera's 2D noise, estimated from the data, and the pixel thresholds derived from it.

Stage 1 has two pixel thresholds: the RANSAC inlier threshold of the five-point fits (a Sampson
distance) and the validity threshold of a label (its reprojection error in a view). Fixed pixels
suit one detector at one resolution only: at 5 px of noise a 10 px validity threshold (2 sigma)
drops good views and refuses good joints, while 1 px of RANSAC threshold loses cameras of real
footage. By default (``GeometrySettings``' thresholds None) they follow the data:

1. a first pass fits every camera pair once (:func:`pipeline.geometry.epipolar.fit_pair_pooled`
   at ``PROVISIONAL_PX``; or the known extrinsics of a calibrated mode);
2. each pair's signed Sampson errors over all its correspondences give the pair's noise scale
   (:func:`robust_sigma`: 1.4826 x the median absolute residual, then refined on the residuals
   within ``TRIM_SIGMAS`` of it, so that a share of outlier joints hardly inflates it);
3. a Sampson error mixes the noise of both views, weighted by the epipolar gradient in each
   (E[d^2] = w_a sigma_a^2 + w_b sigma_b^2, :func:`pair_noise`): with three or more cameras the
   per-camera sigmas solve these equations over all pairs by non-negative least squares
   (:func:`camera_noise`); two cameras share the pair's sigma;
4. thresholds (:func:`estimate_thresholds`): a pair's RANSAC threshold is
   max(``RANSAC_FLOOR_PX``, ``RANSAC_SIGMAS`` x its sigma), a camera's validity threshold
   max(``REPROJ_FLOOR_PX``, ``REPROJ_SIGMAS`` x its sigma). A threshold the user gives wins
   (``given``); a camera without an estimate (no usable pair) gets the floors.

sigma is the standard deviation of the 2D noise per image coordinate, in pixels. The run's
``summary.json`` records every estimate and the thresholds used (``thresholds``, per subject).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls
from scipy.stats import norm

from pipeline.geometry import epipolar as epi

Pose = tuple[np.ndarray, np.ndarray]

RANSAC_SIGMAS = 3.0
"""A pair's RANSAC threshold in noise scales (a Sampson error is one-dimensional: 3 sigma keeps
99.7 % of the inliers)."""
REPROJ_SIGMAS = 4.0
"""A camera's validity (reprojection) threshold in noise scales; see ``docs/figures/labels.md``
("Thresholds from the data") for the measurement that chose it."""
RANSAC_FLOOR_PX = 1.0
"""Least automatic RANSAC threshold (noise-free 2D would give ~0; the former default)."""
REPROJ_FLOOR_PX = 3.0
"""Least automatic validity threshold."""
PROVISIONAL_PX = 8.0
"""RANSAC threshold of the first pass that the noise is measured on (USAC-MAGSAC treats it as
the largest noise scale it marginalises over, so a generous value costs little)."""
TRIM_SIGMAS = 2.0
""":func:`robust_sigma` refines its scale on the residuals within this many scales (and a
pair's view weights are averaged over them). Measured (``tests/test_noise_thresholds.py``,
CMU 131_01 through the Human3.6M cameras): 2.0 leaves the estimate within 1 % on clean 2D and
within 5-11 % with 10 % outlier joints; 2.5 let more outliers in (up to 15 %)."""
MIN_NOISE_PX = 0.01
_TRUNC = 1.0 - 2 * TRIM_SIGMAS * norm.pdf(TRIM_SIGMAS) / (2 * norm.cdf(TRIM_SIGMAS) - 1)
"""Variance of a unit normal truncated at +-TRIM_SIGMAS (corrects the trimmed estimate)."""
MAX_POINTS = 4000
"""Correspondences per pair the noise is measured on (a seeded random subset)."""


def robust_sigma(r: np.ndarray, iterations: int = 5) -> float:
    """Standard deviation of the Gaussian part of zero-centred residuals ``r`` (any shape),
    robust to gross outliers: 1.4826 x median |r|, then ``iterations`` times the root mean
    square of the residuals within ``TRIM_SIGMAS`` of the scale, corrected for the truncation
    (:data:`_TRUNC`). NaN without finite residuals."""
    r = np.abs(np.asarray(r, np.float64).reshape(-1))
    r = r[np.isfinite(r)]
    if not len(r):
        return float("nan")
    s = 1.4826 * float(np.median(r))
    for _ in range(iterations):
        keep = r[r <= TRIM_SIGMAS * s]
        if s <= 0 or not len(keep):
            break
        s = float(np.sqrt(np.mean(keep ** 2) / _TRUNC))
    return max(s, MIN_NOISE_PX)


@dataclass(frozen=True)
class PairNoise:
    """The noise of one camera pair: sigma_px its Sampson errors' robust scale; weight_a,
    weight_b the mean share of each view in their variance (E[d^2] = weight_a sigma_a^2 +
    weight_b sigma_b^2); n the correspondences measured."""

    sigma_px: float
    weight_a: float
    weight_b: float
    n: int


def pair_noise(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, R: np.ndarray, t: np.ndarray,
               focal_a: float, focal_b: float, seed: int = 0, max_points: int = MAX_POINTS
               ) -> PairNoise:
    """The noise of (F, J, 2) normalised correspondences (mask (F, J)) under the pose (R, t)
    (X_b = R X_a + t) of cameras with focal lengths ``focal_a``, ``focal_b`` (pixels)."""
    use = epi.valid_points(xa, xb, mask).reshape(-1)
    a, b = xa.reshape(-1, 2)[use], xb.reshape(-1, 2)[use]
    if len(a) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(a), max_points, replace=False))
        a, b = a[keep], b[keep]
    if len(a) < epi.MIN_CORRESPONDENCES:
        return PairNoise(float("nan"), 0.5, 0.5, int(len(a)))
    f = 0.5 * (focal_a + focal_b)
    ha, hb = epi.homogeneous(a), epi.homogeneous(b)
    d = epi.sampson_residuals_px(ha, hb, R, t, f)
    sigma = robust_sigma(d)
    E = epi.essential_from_pose(R, t)
    ga = ((hb @ E)[:, :2] ** 2).sum(-1)    # |d(b'Ea)/d xa|^2 (normalised units)
    gb = ((ha @ E.T)[:, :2] ** 2).sum(-1)  # |d(b'Ea)/d xb|^2
    inl = np.abs(d) <= TRIM_SIGMAS * sigma
    share = ga[inl] / np.maximum(ga[inl] + gb[inl], 1e-300)
    wa = float(np.mean(share)) if inl.any() else 0.5
    # pixel noise sigma_a in view a is sigma_a / focal_a in normalised units, read at f pixels
    return PairNoise(sigma, wa * (f / focal_a) ** 2, (1 - wa) * (f / focal_b) ** 2, int(len(a)))


def camera_noise(pairs: Mapping[tuple[str, str], PairNoise], cameras: list[str]
                 ) -> dict[str, float]:
    """camera -> sigma (pixels) from the pairs' noise (NaN for a camera in no measured pair).

    Three or more cameras with at least as many measured pairs: the non-negative least-squares
    solution of weight_a sigma_a^2 + weight_b sigma_b^2 = sigma_ab^2 over the pairs (each
    equation relative to its sigma_ab^2); fewer pairs than cameras: every measured camera gets
    the pooled sigma (sum sigma_ab^2 / sum of weights)."""
    got = {k: p for k, p in pairs.items() if np.isfinite(p.sigma_px)}
    seen = [c for c in cameras if any(c in k for k in got)]
    out = {c: float("nan") for c in cameras}
    if not got:
        return out
    if len(got) < len(seen):
        pooled = sum(p.sigma_px ** 2 for p in got.values()) / sum(
            p.weight_a + p.weight_b for p in got.values())
        return {**out, **{c: float(np.sqrt(pooled)) for c in seen}}
    col = {c: i for i, c in enumerate(seen)}
    A, y = np.zeros((len(got), len(seen))), np.zeros(len(got))
    for row, ((a, b), p) in enumerate(got.items()):
        s2 = max(p.sigma_px ** 2, MIN_NOISE_PX ** 2)
        A[row, col[a]], A[row, col[b]], y[row] = p.weight_a / s2, p.weight_b / s2, 1.0
    var, _ = nnls(A, y)
    return {**out, **{c: max(float(np.sqrt(var[col[c]])), MIN_NOISE_PX) for c in seen}}


def _key(a: str, b: str) -> str:
    return f"{a}-{b}"


@dataclass(frozen=True)
class Thresholds:
    """The pixel thresholds of one subject's fits and labels, and the noise they come from.

    Attributes:
        noise_px: camera -> estimated 2D noise sigma (pixels per coordinate; NaN: none).
        ransac_px: camera -> RANSAC threshold (the pairs' own are in ``pair_ransac_px``).
        reproj_px: camera -> validity threshold: a joint reprojecting worse in a view it uses
            is not a label.
        pair_noise_px, pair_ransac_px: "a-b" -> the pair's Sampson-error sigma and its RANSAC
            threshold.
        ransac_given, reproj_given: the user gave that threshold (it wins over the estimate).
    """

    noise_px: dict[str, float]
    ransac_px: dict[str, float]
    reproj_px: dict[str, float]
    pair_noise_px: dict[str, float] = field(default_factory=dict)
    pair_ransac_px: dict[str, float] = field(default_factory=dict)
    ransac_given: bool = False
    reproj_given: bool = False

    def ransac(self, a: str, b: str) -> float:
        """The RANSAC threshold (pixels) of pair (a, b)."""
        for k in (_key(a, b), _key(b, a)):
            if k in self.pair_ransac_px:
                return self.pair_ransac_px[k]
        return max(self.ransac_px[a], self.ransac_px[b])

    def reproj(self, a: str, b: str) -> float:
        """The validity threshold (pixels) of a pair's label, whose error is the worse of its
        two views: the larger of the two cameras' thresholds."""
        return max(self.reproj_px[a], self.reproj_px[b])

    def max_ransac(self) -> float:
        return max([*self.ransac_px.values(), *self.pair_ransac_px.values()])

    def max_reproj(self) -> float:
        return max(self.reproj_px.values())

    def to_json(self) -> dict[str, Any]:
        """The record of ``summary.json`` (NaN as None)."""
        num = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
        return {"ransac_threshold": "given" if self.ransac_given else "auto",
                "reproj_threshold": "given" if self.reproj_given else "auto",
                "cameras": {c: {"noise_px": num(self.noise_px[c]),
                                "ransac_threshold_px": num(self.ransac_px[c]),
                                "reproj_threshold_px": num(self.reproj_px[c])}
                            for c in self.noise_px},
                "pairs": {k: {"noise_px": num(self.pair_noise_px.get(k, np.nan)),
                              "ransac_threshold_px": num(v)}
                          for k, v in self.pair_ransac_px.items()}}

    @classmethod
    def given(cls, cameras: list[str], ransac_px: float, reproj_px: float) -> Thresholds:
        """The caller's pixels for every camera and pair, no noise measured (benchmarks that
        hand a mode its geometry)."""
        nan = {c: float("nan") for c in cameras}
        return cls(nan, {c: float(ransac_px) for c in cameras},
                   {c: float(reproj_px) for c in cameras}, ransac_given=True, reproj_given=True)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Thresholds:
        """The inverse of :meth:`to_json` (a finished run's record, read back to relabel)."""
        nan = lambda v: float("nan") if v is None else float(v)  # noqa: E731
        cams = d["cameras"]
        return cls({c: nan(v["noise_px"]) for c, v in cams.items()},
                   {c: nan(v["ransac_threshold_px"]) for c, v in cams.items()},
                   {c: nan(v["reproj_threshold_px"]) for c, v in cams.items()},
                   {k: nan(v["noise_px"]) for k, v in d.get("pairs", {}).items()},
                   {k: nan(v["ransac_threshold_px"]) for k, v in d.get("pairs", {}).items()},
                   d.get("ransac_threshold") == "given", d.get("reproj_threshold") == "given")


def first_pass_pose(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, focal_px: float,
                    seed: int = 0) -> Pose | None:
    """The pose the noise of a pair is measured under when no extrinsics are known: one pooled
    fit at ``PROVISIONAL_PX`` (None when it fails)."""
    g = epi.fit_pair_pooled(xa, xb, mask, PROVISIONAL_PX, focal_px, seed=seed,
                            max_points=MAX_POINTS)
    return (g.R, g.t) if g.ok else None


def estimate_thresholds(x: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                        focal: Mapping[str, float], ransac_px: float | None = None,
                        reproj_px: float | None = None, seed: int = 0,
                        known: Mapping[tuple[str, str], Pose] | None = None) -> Thresholds:
    """Every camera's noise and the thresholds of one subject (see the module's steps).

    Args:
        x: camera -> (F, J, 2) normalised; mask: camera -> (F, J) usable joints;
        focal: camera -> pixels; ransac_px, reproj_px: the user's thresholds (None: from the
            noise); known: (a, b) -> the pair's known relative pose, measured under instead of
            a first-pass fit (calibrated modes).
    """
    cams = list(x)
    pairs: dict[tuple[str, str], PairNoise] = {}
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            m = mask[a] & mask[b]
            pose = (known or {}).get((a, b))
            if pose is None:
                pose = first_pass_pose(x[a], x[b], m, 0.5 * (focal[a] + focal[b]), seed)
            if pose is not None:
                pairs[(a, b)] = pair_noise(x[a], x[b], m, *pose, focal[a], focal[b], seed)
    noise = camera_noise(pairs, cams)

    def rule(sigma: float, k: float, floor: float, given: float | None) -> float:
        if given is not None:
            return float(given)
        return max(floor, k * sigma) if np.isfinite(sigma) else floor

    pair_sigma = {_key(a, b): p.sigma_px for (a, b), p in pairs.items()}
    return Thresholds(
        noise, {c: rule(s, RANSAC_SIGMAS, RANSAC_FLOOR_PX, ransac_px) for c, s in noise.items()},
        {c: rule(s, REPROJ_SIGMAS, REPROJ_FLOOR_PX, reproj_px) for c, s in noise.items()},
        pair_sigma,
        {k: rule(s, RANSAC_SIGMAS, RANSAC_FLOOR_PX, ransac_px) for k, s in pair_sigma.items()},
        ransac_px is not None, reproj_px is not None)

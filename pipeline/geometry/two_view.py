"""Two-view epipolar geometry of stage 1: camera pairs from 2D joints, triangulation, validity.

Inputs are undistorted *normalised* image coordinates (the z = 1 plane): the caller converts
detected pixels with :func:`pipeline.geometry.cameras.pixels_to_normalized`. Thresholds are given in
pixels and converted with the focal length, so ``threshold_px / focal_px`` is the normalised
threshold.

Conventions (the same as :mod:`pipeline.geometry.cameras`):
    camera a is the reference frame of a pair:  X_b = R @ X_a + t,  |t| = 1 (up to scale)
    essential matrix E = [t]_x R, so that  x_b^T E x_a = 0  for homogeneous normalised points
    xa, xb: (F, J, 2) normalised coordinates of J joints in F frames; mask: (F, J) bool

Two ways to fit a pair (DESIGN.md §4):
    * :func:`fit_pair_pooled`: one E from the confident joints of all frames (static cameras),
      five-point solver inside RANSAC/USAC, then ``cv2.recoverPose`` with the cheirality check;
    * :func:`fit_pair_per_frame`: the paper's setting, one E per frame from its 17 joints.

Triangulation (:func:`triangulate`) applies the optimal (Hartley-Sturm) correction (Lindstrom's
closed-form iteration, checked against ``cv2.correctMatches``) and then the closed-form two-ray
intersection, vectorised over every frame and joint at once.

Scale (:func:`normalize_scale`): without extrinsics a pose is known up to scale. Labels are
made root-relative and scaled to the joint set's reference bone lengths (for H36M-17 the 16
bone lengths sum to ``REFERENCE_BONE_SUM_MM``, about 4150 mm, see
``REFERENCE_BONE_LENGTHS_MM``); a joint set that declares none is scaled by the recording's own
median bone lengths, their sum set to ``REFERENCE_BONE_SUM_MM``.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from pipeline.geometry.cameras import rotation_error_deg
from pipeline.joints import H36M17, H36M17_BONE_LENGTHS_MM, JointSet

MIN_CORRESPONDENCES = 8
"""Fewest correspondences a fit accepts (five-point needs 5; 8 leaves RANSAC some redundancy)."""

COLLINEAR_RATIO = 1e-2
"""Degenerate when the minor/major singular value ratio of the centred points is below this."""

MIN_INLIER_Z = 2.0
"""A pooled fit fails unless its inliers exceed, by this many binomial standard deviations, what
shuffled correspondences reach under the same E (:func:`inliers_over_chance_z`). RANSAC always
finds some consensus, even among unrelated points (3-30 % at 1-15 px on a body-sized point
cloud). Measured on the synthetic test set: unrelated views z <= 0.4; real views z >= 3.5 at
10 px noise with a 25 px threshold, z >= 4 at 10 px noise with a 1 px threshold, z > 9 else."""

RANSAC_METHODS: dict[str, int] = {
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_accurate": cv2.USAC_ACCURATE,
    "usac_default": cv2.USAC_DEFAULT,
    "ransac": cv2.RANSAC,
    "lmeds": cv2.LMEDS,
}

# Bone lengths of the Human3.6M skeleton (mm) by child joint: defined with the joint set
# (pipeline.joints.H36M17_BONE_LENGTHS_MM, where their source is documented).
REFERENCE_BONE_LENGTHS_MM: dict[str, float] = H36M17_BONE_LENGTHS_MM
REFERENCE_BONE_SUM_MM: float = float(sum(REFERENCE_BONE_LENGTHS_MM.values()))


# --- small helpers ------------------------------------------------------------------------------

def homogeneous(x: np.ndarray) -> np.ndarray:
    """(..., 2) -> (..., 3) by appending 1."""
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,), dtype=np.float64)], axis=-1)


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) vectors -> (..., 3, 3) cross-product matrices [v]_x."""
    v = np.asarray(v, dtype=np.float64)
    z = np.zeros(v.shape[:-1])
    return np.stack([
        np.stack([z, -v[..., 2], v[..., 1]], -1),
        np.stack([v[..., 2], z, -v[..., 0]], -1),
        np.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def essential_from_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """E = [t]_x R for (..., 3, 3) R and (..., 3) t."""
    return skew(t) @ R


def invert_pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose of a relative to b from that of b relative to a: X_a = R.T @ X_b - R.T @ t."""
    Rt = np.swapaxes(R, -1, -2)
    return Rt, -(Rt @ t[..., None])[..., 0]


def _per_frame_pose(R: np.ndarray, t: np.ndarray, batch_ndim: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable R (..., 1, 3, 3) and t (..., 1, 3) against points (F, J, 3).

    ``R`` is one pair (3, 3) or one per frame (F, 3, 3); ``batch_ndim`` is the number of leading
    axes of the points before the joint axis (1 for (F, J, 3), 0 for (J, 3)).
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if R.shape[-2:] != (3, 3) or t.shape[-1] != 3 or R.shape[:-2] != t.shape[:-1]:
        raise ValueError(f"R {R.shape} and t {t.shape} must be (3,3)/(3,) or (F,3,3)/(F,3)")
    if R.ndim == 2:
        return R, t
    if R.ndim - 2 != batch_ndim:
        raise ValueError(f"per-frame R {R.shape} does not match points with {batch_ndim} "
                         "batch axes")
    return R[..., None, :, :], t[..., None, :]


def transform(X: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(F, J, 3) points in camera a -> camera b, R/t one pair or per frame."""
    Rb, tb = _per_frame_pose(R, t, X.ndim - 2)
    if Rb.ndim == 2:
        return X @ Rb.T + tb
    return (Rb @ X[..., None])[..., 0] + tb


def _valid_points(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(F, J) mask of usable correspondences: given mask and finite in both views."""
    _check_pair_shapes(xa, xb, mask)
    return mask.astype(bool) & np.isfinite(xa).all(-1) & np.isfinite(xb).all(-1)


def _check_pair_shapes(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray | None) -> None:
    if xa.shape != xb.shape or xa.shape[-1] != 2:
        raise ValueError(f"xa {xa.shape} and xb {xb.shape} must both be (..., J, 2)")
    if mask is not None and mask.shape != xa.shape[:-1]:
        raise ValueError(f"mask {mask.shape} must be {xa.shape[:-1]}")


def sampson_error(xa: np.ndarray, xb: np.ndarray, E: np.ndarray) -> np.ndarray:
    """First-order geometric (Sampson) error of correspondences under E, normalised units.

    xa, xb: (..., 2); E: (3, 3) or broadcastable (..., 3, 3). Returns (...) distances whose
    square is the first-order sum of squared corrections in both images.
    """
    a, b = homogeneous(xa), homogeneous(xb)
    Ea = (E @ a[..., None])[..., 0]
    Etb = (np.swapaxes(E, -1, -2) @ b[..., None])[..., 0]
    num = (b * Ea).sum(-1)
    den = Ea[..., 0] ** 2 + Ea[..., 1] ** 2 + Etb[..., 0] ** 2 + Etb[..., 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(num) / np.sqrt(den)


def rotation_only_residual(xa: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best pure rotation between two views' bearings and each point's angular residual.

    xa, xb: (N, 2) normalised points. Returns R (3, 3) (Kabsch on unit rays) and (N,) residual
    angles in radians. A zero-baseline pair (a camera that only rotated) has residuals at the
    noise level: its E is undefined and nothing can be triangulated.
    """
    a = homogeneous(xa)
    b = homogeneous(xb)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    U, _, Vt = np.linalg.svd(b.T @ a)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    cos = np.clip(((a @ R.T) * b).sum(-1), -1.0, 1.0)
    return R, np.arccos(cos)


def _collinear(x: np.ndarray) -> bool:
    """True when (N, 2) points are nearly on one line (or one point)."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return bool(s[0] <= 0 or s[1] / s[0] < COLLINEAR_RATIO)


# --- the pair result ----------------------------------------------------------------------------

@dataclass
class PairGeometry:
    """Relative pose of camera b with respect to camera a (X_b = R @ X_a + t, |t| = 1).

    Attributes:
        cam_a, cam_b: camera ids; a is the reference frame.
        R: (3, 3) rotation; identity when not ok.
        t: (3,) unit translation direction; zeros when not ok.
        E: (3, 3) essential matrix [t]_x R; zeros when not ok.
        n_points: correspondences offered to the solver.
        n_inliers: correspondences within the threshold (Sampson error) that pass cheirality.
        inlier_ratio: n_inliers / n_points (0 when there were none).
        ok: the geometry is usable.
        reason: why not ok ("" when ok).
        method: robust estimator used.
        threshold_px: the inlier threshold in pixels.
        inliers: (F, J) bool inlier mask over the input correspondences, or None.
        cheirality: share of the offered correspondences whose rays meet in front of both
            cameras under (R, t) (NaN when not measured).
        cost_margin: how much worse (robust cost on all correspondences, chi-square-like units,
            :mod:`pipeline.geometry.hypotheses`) the next distinct pose fits than this one; NaN
            when not measured. runner_up_deg: that pose's rotation away from R.
        n_hypotheses: poses compared (RANSAC runs x decompositions, plus profile probes).
        ambiguous: the margin was below the threshold: the pair is not ok (never labelled).
    """

    cam_a: str
    cam_b: str
    R: np.ndarray
    t: np.ndarray
    E: np.ndarray
    n_points: int
    n_inliers: int
    inlier_ratio: float
    ok: bool
    reason: str = ""
    method: str = ""
    threshold_px: float = float("nan")
    inliers: np.ndarray | None = field(default=None, repr=False)
    cheirality: float = float("nan")
    cost_margin: float = float("nan")
    runner_up_deg: float = float("nan")
    n_hypotheses: int = 0
    ambiguous: bool = False

    def to_row(self) -> dict[str, Any]:
        """Plain Python values for a table row (no numpy types; matrices as nested lists)."""
        return {
            "cam_a": str(self.cam_a), "cam_b": str(self.cam_b),
            "R": np.asarray(self.R, dtype=float).tolist(),
            "t": np.asarray(self.t, dtype=float).tolist(),
            "E": np.asarray(self.E, dtype=float).tolist(),
            "n_points": int(self.n_points), "n_inliers": int(self.n_inliers),
            "inlier_ratio": float(self.inlier_ratio), "ok": bool(self.ok),
            "reason": str(self.reason), "method": str(self.method),
            "threshold_px": float(self.threshold_px),
            "cheirality": float(self.cheirality), "cost_margin": float(self.cost_margin),
            "runner_up_deg": float(self.runner_up_deg), "n_hypotheses": int(self.n_hypotheses),
            "ambiguous": bool(self.ambiguous),
        }

    def inverted(self) -> "PairGeometry":
        """The same geometry with b as the reference (X_a = R' X_b + t')."""
        R, t = invert_pose(self.R, self.t)
        return replace(self, cam_a=self.cam_b, cam_b=self.cam_a, R=R, t=t,
                       E=essential_from_pose(R, t))


def _failed(cam_a: str, cam_b: str, n_points: int, reason: str, method: str,
            threshold_px: float) -> PairGeometry:
    return PairGeometry(cam_a, cam_b, np.eye(3), np.zeros(3), np.zeros((3, 3)), int(n_points),
                        0, 0.0, False, reason, method, float(threshold_px), None)


# --- fitting ------------------------------------------------------------------------------------

def _select_essential(Es: np.ndarray, pa: np.ndarray, pb: np.ndarray, thr: float) -> np.ndarray:
    """findEssentialMat may stack several solutions (3k, 3): keep the one with most inliers."""
    cands = Es.reshape(-1, 3, 3)
    if len(cands) == 1:
        return cands[0]
    counts = (sampson_error(pa[None], pb[None], cands[:, None]) <= thr).sum(-1)
    return cands[int(np.argmax(counts))]


def fit_essential(pa: np.ndarray, pb: np.ndarray, threshold_px: float, focal_px: float,
                  method: str = "usac_magsac", prob: float = 0.999, seed: int = 0,
                  max_iters: int = 1000, cam_a: str = "a", cam_b: str = "b") -> PairGeometry:
    """Fit E and recover (R, t) from (N, 2) correspondences (normalised), never raising.

    Checks, in order: enough correspondences, not collinear in either view, not explained by a
    pure rotation (zero baseline), RANSAC/USAC success, cheirality. The returned ``inliers`` is
    an (N,) mask.
    """
    if method not in RANSAC_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(RANSAC_METHODS)}")
    if not focal_px > 0 or not threshold_px > 0:
        raise ValueError(f"focal_px ({focal_px}) and threshold_px ({threshold_px}) must be > 0")
    n = len(pa)
    fail = lambda why: _failed(cam_a, cam_b, n, why, method, threshold_px)  # noqa: E731
    if n < MIN_CORRESPONDENCES:
        return fail(f"too few correspondences ({n} < {MIN_CORRESPONDENCES})")
    if _collinear(pa) or _collinear(pb):
        return fail("degenerate: points nearly collinear")
    thr = threshold_px / focal_px
    _, rot_res = rotation_only_residual(pa, pb)
    if np.median(rot_res) < thr:
        return fail("degenerate: no baseline (a pure rotation explains the correspondences)")
    pa32 = np.ascontiguousarray(pa, dtype=np.float64).reshape(-1, 1, 2)
    pb32 = np.ascontiguousarray(pb, dtype=np.float64).reshape(-1, 1, 2)
    cv2.setRNGSeed(int(seed))
    try:
        Es, _ = cv2.findEssentialMat(pa32, pb32, np.eye(3), RANSAC_METHODS[method], prob, thr,
                                     max_iters)
    except cv2.error as exc:
        return fail(f"RANSAC failed: {str(exc).strip().splitlines()[-1]}")
    if Es is None or Es.size < 9 or Es.shape[-1] != 3 or not np.all(np.isfinite(Es)):
        return fail("RANSAC failed: no essential matrix")
    E = _select_essential(np.asarray(Es, np.float64), pa, pb, thr)
    inl = sampson_error(pa, pb, E) <= thr
    if inl.sum() < MIN_CORRESPONDENCES:
        return fail(f"RANSAC failed: too few inliers ({int(inl.sum())} < {MIN_CORRESPONDENCES})")
    try:
        n_good, R, t, chk = cv2.recoverPose(E, pa32, pb32, np.eye(3),
                                            mask=inl.astype(np.uint8).reshape(-1, 1))
    except cv2.error as exc:
        return fail(f"recoverPose failed: {str(exc).strip().splitlines()[-1]}")
    t = t.reshape(3) / np.linalg.norm(t)
    inl = inl & (chk.reshape(-1) > 0)
    if n_good < MIN_CORRESPONDENCES:
        return fail(f"cheirality: only {int(n_good)} inliers in front of both cameras")
    E = essential_from_pose(R, t)
    return PairGeometry(cam_a, cam_b, R, t, E, n, int(inl.sum()), float(inl.sum() / n), True,
                        "", method, float(threshold_px), inl)


def _rotvec_to_matrix(w: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices (Rodrigues, vectorised)."""
    th = np.linalg.norm(w, axis=-1)[..., None, None]
    K = skew(w / np.where(th[..., 0] > 0, th[..., 0], 1.0))
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane orthogonal to unit vector t."""
    helper = np.eye(3)[int(np.argmin(np.abs(t)))]
    u = np.cross(t, helper)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(t, u)], -1)


def sampson_residuals_px(a: np.ndarray, b: np.ndarray, R: np.ndarray, t: np.ndarray,
                         focal_px: float) -> np.ndarray:
    """(N,) signed Sampson errors in pixels of homogeneous (N, 3) points ``a``, ``b`` under the
    pose (R, t): the residuals every pose refinement and comparison of this package minimises."""
    E = essential_from_pose(R, t)
    Ea, Etb = a @ E.T, b @ E
    num = (b * Ea).sum(-1)
    den = np.sqrt(Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Etb[:, 0] ** 2 + Etb[:, 1] ** 2)
    return num / np.maximum(den, 1e-300) * focal_px


def sampson_derivatives_px(a: np.ndarray, b: np.ndarray, E: np.ndarray, dE: np.ndarray,
                           focal_px: float) -> np.ndarray:
    """(N, m) derivatives of the Sampson errors of :func:`sampson_residuals_px` (pixels) of
    homogeneous (N, 3) points under the essential matrix ``E`` along each of the (m, 3, 3)
    directions ``dE``, in closed form: r = f n / d with n = b' E a and
    d = sqrt(u0^2 + u1^2 + v0^2 + v1^2), u = E a, v = E' b, so
    r' = f (n' d - n d') / d^2, n' = b' dE a, d' = (u0 u0' + u1 u1' + v0 v0' + v1 v1') / d."""
    aT, bT = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)    # (3, N)
    u, v = E @ aT, E.T @ bT                                           # (3, N)
    num = (bT * u).sum(0)
    den = np.maximum(np.sqrt(u[0] ** 2 + u[1] ** 2 + v[0] ** 2 + v[1] ** 2), 1e-300)
    du = [dE[:, j, :] @ aT for j in range(3)]                  # (m, N): (dE_i a)_j
    dv = [dE[:, :, k] @ bT for k in range(2)]                  # (m, N): (dE_i' b)_k
    d_num = du[0] * bT[0] + du[1] * bT[1] + du[2] * bT[2]
    d_den = du[0] * u[0] + du[1] * u[1] + dv[0] * v[0] + dv[1] * v[1]
    # r' = f (n' d - n d') / d^2 with d' = d_den / d
    return ((d_num / den - (num / den ** 3) * d_den) * focal_px).T


def refine_pose(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray, focal_px: float,
                f_scale_px: float = 1.0, loss: str = "cauchy", max_nfev: int = 100,
                rotation_offset: np.ndarray | None = None,
                rotation_basis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Polish (R, t) by robust least squares on the Sampson errors (pixels) of (N, 2) matches.

    Five parameters: a rotation increment and a step of t on its unit sphere. RANSAC's answer
    comes from a minimal sample (plus local optimisation); this step uses every correspondence,
    which is what makes a pooled fit reach a small fraction of a degree. A constrained refit
    (the profile of :mod:`pipeline.geometry.hypotheses`): the rotation increment is
    ``rotation_offset + rotation_basis @ p`` ((3,) rotation vector, (3, k) basis; defaults 0 and
    the identity), so the rotation may move only in the basis' directions from the offset.

    The Jacobian is the closed-form derivative of the residuals along d E / d parameter
    (:func:`sampson_derivatives_px`; d E / d parameter by central differences of the 3 x 3
    matrix, exact to ~1e-10) instead of finite differences of the residuals (one more pass
    over every correspondence per parameter): the same optimum (rotations within 1e-4 degrees
    on the synthetic subjects), about half the CPU.
    """
    from scipy.optimize import least_squares

    a, b = homogeneous(xa), homogeneous(xb)
    B = _tangent_basis(t)
    w0 = np.zeros(3) if rotation_offset is None else np.asarray(rotation_offset, np.float64)
    W = np.eye(3) if rotation_basis is None else np.asarray(rotation_basis, np.float64)
    k = W.shape[1]
    n = k + 2
    step = 1e-6
    offsets = np.concatenate([step * np.eye(n), -step * np.eye(n)])        # (2n, n)

    def poses(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, n) parameter vectors -> (m, 3, 3) rotations, (m, 3) unit translations."""
        tt = t + P[:, k:] @ B.T
        return (_rotvec_to_matrix(w0 + P[:, :k] @ W.T) @ R,
                tt / np.linalg.norm(tt, axis=-1, keepdims=True))

    def residuals(p: np.ndarray) -> np.ndarray:
        Rp, tp = poses(p[None])
        return sampson_residuals_px(a, b, Rp[0], tp[0], focal_px)

    def jacobian(p: np.ndarray) -> np.ndarray:
        E = essential_from_pose(*poses(np.concatenate([p[None], p + offsets])))  # (2n + 1, 3, 3)
        return sampson_derivatives_px(a, b, E[0], (E[1:n + 1] - E[n + 1:]) / (2 * step),
                                      focal_px)

    res = least_squares(residuals, np.zeros(n), jac=jacobian, loss=loss, f_scale=f_scale_px,
                        max_nfev=max_nfev, x_scale=1e-3, method="trf")
    Rp, tp = poses(res.x[None])
    return Rp[0], tp[0]


def fit_pair_pooled(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, threshold_px: float,
                    focal_px: float, method: str = "usac_magsac", prob: float = 0.999,
                    seed: int = 0, max_points: int = 6000, max_iters: int = 1000,
                    refine: bool = True, cam_a: str = "a", cam_b: str = "b") -> PairGeometry:
    """One relative pose from the confident correspondences of all frames (static cameras).

    Args:
        xa, xb: (F, J, 2) normalised coordinates in cameras a and b.
        mask: (F, J) bool, correspondences to use (confident in both views).
        threshold_px: RANSAC inlier threshold in pixels; focal_px: focal length that converts it.
        method: one of ``RANSAC_METHODS`` (USAC variants add local optimisation).
        prob: RANSAC confidence. seed: OpenCV RNG seed (results are deterministic for a seed).
        max_points: at most this many correspondences (a seeded random subset) enter RANSAC;
            inliers and ``inliers`` are then counted on all of them.
        refine: polish R, t on all offered correspondences (:func:`refine_pose`, Cauchy loss
            of the Sampson error with scale threshold_px / 2).
    Returns:
        PairGeometry with ``inliers`` (F, J); never raises for bad data (ok=False, reason).
    """
    use = _valid_points(xa, xb, mask)
    idx = np.flatnonzero(use.reshape(-1))
    fa, fb = xa.reshape(-1, 2), xb.reshape(-1, 2)
    sub = idx
    if len(idx) > max_points:
        sub = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    g = fit_essential(fa[sub], fb[sub], threshold_px, focal_px, method, prob, seed, max_iters,
                      cam_a, cam_b)
    g.n_points = int(len(idx))
    if not g.ok:
        return g
    if refine:  # all offered points with a redescending loss: outliers fade, inliers all count
        g.R, g.t = refine_pose(fa[sub], fb[sub], g.R, g.t, focal_px,
                               f_scale_px=threshold_px / 2, loss="cauchy")
        g.E = essential_from_pose(g.R, g.t)
        g.method += "+refine"
    inl = np.zeros(use.size, dtype=bool)
    inl[idx] = sampson_error(fa[idx], fb[idx], g.E) <= threshold_px / focal_px
    inl[idx] &= front_of_both(fa[idx], fb[idx], g.R, g.t)
    g.inliers = inl.reshape(use.shape)
    g.n_inliers = int(inl.sum())
    g.inlier_ratio = float(g.n_inliers / max(len(idx), 1))
    chance = chance_inlier_ratio(fa[idx], fb[idx], g.E, threshold_px / focal_px, seed)
    z = inliers_over_chance_z(g.n_inliers, len(idx), chance)
    if z < MIN_INLIER_Z:
        return _failed(cam_a, cam_b, len(idx), f"RANSAC failed: {g.n_inliers} inliers of "
                       f"{len(idx)}, no more than unrelated points reach ({chance:.1%}; z = "
                       f"{z:.1f} < {MIN_INLIER_Z:g}): the views' detections do not share a "
                       "geometry", g.method, threshold_px)
    return g


def chance_inlier_ratio(xa: np.ndarray, xb: np.ndarray, E: np.ndarray, threshold: float,
                        seed: int = 0, shuffles: int = 8) -> float:
    """Share of *shuffled* (N, 2) correspondences, each point of a with a random point of b,
    within ``threshold`` (normalised Sampson error) of E, averaged over ``shuffles`` seeded
    permutations: the inlier ratio unrelated detections reach."""
    if len(xa) == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    return float(np.mean([np.mean(sampson_error(xa, xb[rng.permutation(len(xb))], E) <= threshold)
                          for _ in range(shuffles)]))


def inliers_over_chance_z(n_inliers: int, n_points: int, chance: float) -> float:
    """How many binomial standard deviations ``n_inliers`` of ``n_points`` lie above the count
    the ``chance`` ratio gives; the 5 points of the minimal sample fit any data and are not
    counted. +inf when chance is 0 and there are more inliers than the sample."""
    m = n_points - 5
    excess = n_inliers - 5 - chance * m
    sd = float(np.sqrt(chance * (1 - chance) * m)) if m > 0 else 0.0
    if sd == 0:
        return float("inf") if excess > 0 else float("-inf")
    return float(excess / sd)


def fit_pair_per_frame(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, threshold_px: float,
                       focal_px: float, method: str = "ransac", prob: float = 0.999,
                       seed: int = 0, max_iters: int = 1000
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The paper's setting: one E per frame from that frame's joints.

    Args: as :func:`fit_pair_pooled` (xa, xb (F, J, 2), mask (F, J)).
    Returns:
        R (F, 3, 3), t (F, 3) unit, ok (F,) bool, inlier_ratio (F,). Frames that fail (too few
        joints, degenerate, RANSAC failure) have ok False and NaN R and t, so that anything
        triangulated from them is non-finite and :func:`label_validity` drops it.
    """
    use = _valid_points(xa, xb, mask)
    F = xa.shape[0]
    R = np.full((F, 3, 3), np.nan)
    t = np.full((F, 3), np.nan)
    ok = np.zeros(F, dtype=bool)
    ratio = np.zeros(F)
    for f in range(F):  # one RANSAC per frame is the method itself; nothing to batch
        m = use[f]
        g = fit_essential(xa[f][m], xb[f][m], threshold_px, focal_px, method, prob, seed + f,
                          max_iters)
        if g.ok:
            R[f], t[f], ok[f] = g.R, g.t, True
            ratio[f] = g.n_inliers / max(int(m.sum()), 1)
    return R, t, ok, ratio


def refine_pose_per_frame(xa: np.ndarray, xb: np.ndarray, use: np.ndarray, R: np.ndarray,
                          t: np.ndarray, focal_px: float, max_nfev: int = 50
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares refit of one pose per frame on that frame's correspondences
    (:func:`refine_pose`, plain squared loss on the Sampson errors).

    xa, xb: (F, J, 2) normalised; use: (F, J) the correspondences each frame's fit uses (its
    inliers); R (F, 3, 3), t (F, 3) the starting poses. Frames with a NaN pose or fewer than 5
    correspondences stay NaN. Returns R (F, 3, 3), t (F, 3) unit.
    """
    R, t = R.copy(), t.copy()
    for f in range(len(R)):  # one small least-squares problem per frame, like RANSAC itself
        m = use[f]
        if m.sum() < 5 or not (np.isfinite(R[f]).all() and np.isfinite(t[f]).all()):
            R[f], t[f] = np.nan, np.nan
            continue
        R[f], t[f] = refine_pose(xa[f][m], xb[f][m], R[f], t[f], focal_px, loss="linear",
                                 max_nfev=max_nfev)
    return R, t


def truncated_cost(xa: np.ndarray, xb: np.ndarray, use: np.ndarray, R: np.ndarray,
                   t: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the MSAC cost sum(min(r^2, threshold^2)) of the Sampson errors (normalised
    units; a point behind either camera costs threshold^2) and the inlier mask (F, J) (within
    the threshold, in front of both cameras).
    xa, xb (F, J, 2), use (F, J), R (F, 3, 3), t (F, 3)."""
    E = essential_from_pose(R, t)[:, None]
    with np.errstate(invalid="ignore"):
        r = sampson_error(xa, xb, E)
        front = front_of_both(xa, xb, R[:, None], t[:, None])
    inl = use & front & (r <= threshold)
    c = np.where(inl, r ** 2, threshold ** 2)
    return np.where(use, c, 0.0).sum(-1), inl


def fit_pair_per_frame_refit(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray,
                             threshold_px: float, focal_px: float, seed: int = 0,
                             methods: tuple[str, ...] = ("ransac", "usac_accurate")
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The per-frame setting at its strongest: per frame, each robust estimator's pose
    (:func:`fit_pair_per_frame`: plain RANSAC, the paper's, and USAC) refitted by least squares
    on its inliers (:func:`refine_pose_per_frame`), and the refit of least truncated cost
    (:func:`truncated_cost`) kept.

    Why: with 17 joints and a pixel threshold RANSAC stops at the first pose that explains every
    joint within the threshold (OpenCV ends its loop once a sample's consensus is complete), and
    on a body's small depth relief that can be a pose degrees off even on noise-free 2D; the
    refit moves it to the least-squares pose of its inliers, and USAC (local optimisation inside
    the loop) supplies a second start where the refit lands in another local minimum.

    Returns as :func:`fit_pair_per_frame`: R (F, 3, 3), t (F, 3), ok (F,), inlier_ratio (F,).
    """
    use = _valid_points(xa, xb, mask)
    thr = threshold_px / focal_px
    best = None
    for method in methods:
        R0, t0, ok, _ = fit_pair_per_frame(xa, xb, mask, threshold_px, focal_px, method=method,
                                           seed=seed)
        with np.errstate(invalid="ignore"):
            inl = use & (sampson_error(xa, xb, essential_from_pose(R0, t0)[:, None]) <= thr)
        R, t = refine_pose_per_frame(xa, xb, inl & ok[:, None], R0, t0, focal_px)
        kept = ~np.isfinite(R).all((-1, -2))  # too few inliers to refit: RANSAC's pose
        R, t = np.where(kept[:, None, None], R0, R), np.where(kept[:, None], t0, t)
        cost, inl = truncated_cost(xa, xb, use, np.nan_to_num(R), np.nan_to_num(t), thr)
        cost = np.where(ok, cost, np.inf)
        if best is None:
            best = [R, t, ok, cost, inl]
            continue
        take = cost < best[3]
        for n, v in enumerate((R, t, ok, cost, inl)):
            best[n] = np.where(take.reshape((-1,) + (1,) * (v.ndim - 1)), v, best[n])
    R, t, ok, _, inl = best
    ratio = np.where(ok, inl.sum(-1) / np.maximum(use.sum(-1), 1), 0.0)
    return R, t, ok, ratio


# --- decompositions and cheirality --------------------------------------------------------------

def ray_depths(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Depths (z) of the closest-approach intersection of the two rays in both cameras.

    xa, xb: (..., 2) normalised; R, t broadcastable to (..., 3, 3), (..., 3). Returns depths in
    a and b (...). Solves d_a R a + t = d_b b in the least-squares sense, closed form.
    """
    a, b = homogeneous(xa), homogeneous(xb)
    Ra = (R @ a[..., None])[..., 0]
    # Normal equations of [Ra, -b] [d_a, d_b]^T = -t.
    A11, A12, A22 = (Ra * Ra).sum(-1), -(Ra * b).sum(-1), (b * b).sum(-1)
    r1, r2 = -(Ra * t).sum(-1), (b * t).sum(-1)
    det = A11 * A22 - A12 * A12
    with np.errstate(divide="ignore", invalid="ignore"):
        da = (A22 * r1 - A12 * r2) / det
        db = (A11 * r2 - A12 * r1) / det
    return da, db * b[..., 2]


def front_of_both(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(...) bool: the two rays meet in front of both cameras (cheirality)."""
    da, db = ray_depths(xa, xb, R, t)
    return (da > 0) & (db > 0)


def pose_candidates(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The four (R, t) decompositions of E: R (4, 3, 3), t (4, 3) unit, in the order
    (R1, t), (R1, -t), (R2, t), (R2, -t) of ``cv2.decomposeEssentialMat``."""
    R1, R2, t = cv2.decomposeEssentialMat(np.asarray(E, dtype=np.float64))
    t = t.reshape(3) / np.linalg.norm(t)
    return np.stack([R1, R1, R2, R2]), np.stack([t, -t, t, -t])


def cheirality_counts(xa: np.ndarray, xb: np.ndarray, Rs: np.ndarray, ts: np.ndarray
                      ) -> np.ndarray:
    """(C,) number of (N, 2) correspondences in front of both cameras for each of C poses."""
    return front_of_both(xa[None], xb[None], Rs[:, None], ts[:, None]).sum(-1)


# --- triangulation ------------------------------------------------------------------------------

def correct_matches(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray,
                    backend: str = "numpy", iterations: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Optimal correction: the closest pair of points satisfying the epipolar constraint.

    Minimises |xa' - xa|^2 + |xb' - xb|^2 (normalised units) subject to xb'^T E xa' = 0,
    E = [t]_x R (Hartley-Sturm optimal triangulation's correction step).

    backend "numpy" (default): Lindstrom's iterative solution (CVPR 2010, "niter"), vectorised
        over every frame and joint and over per-frame poses; 4 iterations agree with
        Hartley-Sturm to ~1e-9 px and run ~30x faster than OpenCV's per-point polynomial.
    backend "opencv": one ``cv2.correctMatches`` call on all points (single pose only), the
        reference the numpy version is tested against.

    xa, xb: (F, J, 2) (or (..., 2) with a single pose); R, t: (3, 3), (3,) or (F, 3, 3), (F, 3).
    Returns corrected (xa', xb') of the same shapes.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if backend == "opencv":
        if R.ndim != 2:
            raise ValueError("backend 'opencv' takes one pose (3, 3); use 'numpy' per frame")
        E = essential_from_pose(R, t)
        pa = np.ascontiguousarray(xa, dtype=np.float64).reshape(1, -1, 2)
        pb = np.ascontiguousarray(xb, dtype=np.float64).reshape(1, -1, 2)
        ca, cb = cv2.correctMatches(E, pa, pb)
        return ca.reshape(xa.shape), cb.reshape(xb.shape)
    if backend != "numpy":
        raise ValueError(f"unknown backend {backend!r}; known: numpy, opencv")
    Rb, tb = _per_frame_pose(R, t, xa.ndim - 2)
    return _correct_matches_iterative(xa, xb, essential_from_pose(Rb, tb), iterations)


def _entries(M: np.ndarray, point_batch_ndim: int) -> list[list[np.ndarray]]:
    """Entries M[i][j] of (3, 3) or per-frame (F, 3, 3) matrices, each broadcastable against
    (F, J) point arrays (elementwise arithmetic beats tiny batched matmuls by ~5x)."""
    if M.ndim == 2:
        return [[M[i, j] for j in range(3)] for i in range(3)]
    pad = (Ellipsis,) + (None,) * (point_batch_ndim + 1 - (M.ndim - 2))
    return [[M[..., i, j][pad] for j in range(3)] for i in range(3)]


def _correct_matches_iterative(xa: np.ndarray, xb: np.ndarray, E: np.ndarray, iterations: int
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Lindstrom's iterative optimal correction; xa, xb (..., 2); E (3, 3) or (F, 3, 3)."""
    e = _entries(E, xa.ndim - 2)
    ax, ay, bx, by = xa[..., 0], xa[..., 1], xb[..., 0], xb[..., 1]
    Ea = [e[i][0] * ax + e[i][1] * ay + e[i][2] for i in range(3)]       # E a
    na0 = e[0][0] * bx + e[1][0] * by + e[2][0]                          # (E^T b)_xy
    na1 = e[0][1] * bx + e[1][1] * by + e[2][1]
    nb0, nb1 = Ea[0], Ea[1]
    c = bx * Ea[0] + by * Ea[1] + Ea[2]                                  # b^T E a
    ma0, ma1, mb0, mb1 = na0, na1, nb0, nb1
    da0 = da1 = db0 = db1 = 0.0
    for _ in range(iterations):  # a fixed, tiny number of vectorised sweeps
        # Corrections -lam * m satisfy c - lam (n_a.m_a + n_b.m_b) + lam^2 m_b^T Et m_a = 0.
        q = mb0 * (e[0][0] * ma0 + e[0][1] * ma1) + mb1 * (e[1][0] * ma0 + e[1][1] * ma1)
        p = na0 * ma0 + na1 * ma1 + nb0 * mb0 + nb1 * mb1
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = 2 * c / (p + np.sqrt(np.maximum(p * p - 4 * q * c, 0.0)))
        lam = np.where(np.isfinite(lam), lam, 0.0)
        da0, da1, db0, db1 = -lam * ma0, -lam * ma1, -lam * mb0, -lam * mb1
        ma0 = na0 + e[0][0] * db0 + e[1][0] * db1
        ma1 = na1 + e[0][1] * db0 + e[1][1] * db1
        mb0 = nb0 + e[0][0] * da0 + e[0][1] * da1
        mb1 = nb1 + e[1][0] * da0 + e[1][1] * da1
    return (np.stack([ax + da0, ay + da1], -1).astype(np.float64),
            np.stack([bx + db0, by + db1], -1).astype(np.float64))


def triangulate(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray,
                optimal: bool = True) -> np.ndarray:
    """Triangulate correspondences into camera a's frame (units of |t|), vectorised.

    Args:
        xa, xb: (F, J, 2) normalised coordinates (any (..., 2) with a single pose).
        R, t: one pair (3, 3), (3,) or one per frame (F, 3, 3), (F, 3).
        optimal: apply the optimal correction first (then the two rays meet exactly and the
            closed-form intersection is the linear solution); else the plain linear (DLT)
            solution of the raw points.
    Returns:
        X (F, J, 3) in camera a. Points whose rays are parallel (or any input non-finite) are NaN.
    """
    _check_pair_shapes(xa, xb, None)
    if not optimal:
        return triangulate_dlt(xa, xb, R, t)
    ca, cb = correct_matches(xa, xb, R, t)
    _per_frame_pose(R, t, xa.ndim - 2)  # shape checks
    r = _entries(np.asarray(R, dtype=np.float64), xa.ndim - 2)
    t = np.asarray(t, dtype=np.float64)
    tv = [t[i] for i in range(3)] if t.ndim == 1 else [t[..., i, None] for i in range(3)]
    ax, ay, bx, by = ca[..., 0], ca[..., 1], cb[..., 0], cb[..., 1]
    # Exact intersection of the corrected rays: b x (d R a + t) = 0 -> d = -(c1.c2) / |c1|^2
    # with c1 = b x R a, c2 = b x t (elementwise).
    Ra = [r[i][0] * ax + r[i][1] * ay + r[i][2] for i in range(3)]
    c1 = (by * Ra[2] - Ra[1], Ra[0] - bx * Ra[2], bx * Ra[1] - by * Ra[0])
    c2 = (by * tv[2] - tv[1], tv[0] - bx * tv[2], bx * tv[1] - by * tv[0])
    nn = c1[0] * c1[0] + c1[1] * c1[1] + c1[2] * c1[2]
    dot = c1[0] * c2[0] + c1[1] * c2[1] + c1[2] * c2[2]
    tiny = nn <= 1e-18 * (1.0 + bx * bx + by * by)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(tiny, np.nan, -dot / np.where(tiny, 1.0, nn))
    return np.stack([ax * d, ay * d, d], -1)


def triangulate_dlt(xa: np.ndarray, xb: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation with P_a = [I|0], P_b = [R|t] (:func:`_dlt`); (F, J, 3)."""
    Rb, tb = _per_frame_pose(R, t, xa.ndim - 2)
    x = np.stack([xa, xb], -2)                                  # (..., 2, 2)
    if Rb.ndim == 2:  # one pose for every point: shared cameras
        P = np.stack([np.eye(3, 4), np.concatenate([Rb, tb[:, None]], -1)])
        return _dlt(x, P, np.ones(x.shape[:-1], dtype=bool))
    shape = np.broadcast_shapes(xa.shape[:-1], Rb.shape[:-2])
    Pa = np.broadcast_to(np.eye(3, 4), shape + (3, 4))
    Pb = np.broadcast_to(np.concatenate([Rb, tb[..., None]], -1), shape + (3, 4))
    P = np.stack([Pa, Pb], -3)                                  # (..., 2, 3, 4)
    x = np.broadcast_to(x, shape + (2, 2))
    return _dlt(x, P, np.ones(shape + (2,), dtype=bool))


def _dlt(x: np.ndarray, P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Batched DLT. x (..., V, 2), P (V, 3, 4) or (..., V, 3, 4), w (..., V) weights (0 = view
    unused). Returns (..., 3); NaN where fewer than two views are used or any used input is
    non-finite.

    The homogeneous DLT point (the right singular vector of the stacked 2V x 4 system with the
    least singular value, unnormalised rows, as OpenCV) without a batched SVD: the 4 x 4 normal
    matrix (:func:`dlt_normal`, one matrix product for shared cameras) and a closed-form solve
    (:func:`solve_dlt_normal`); the few points it cannot certify go to the SVD (:func:`_dlt_svd`).
    """
    w = np.where(np.isfinite(x).all(-1), np.asarray(w, dtype=np.float64), 0.0)
    return _dlt_finish(solve_dlt_normal(dlt_normal(x, P, w)), x, P, w)


def _dlt_finish(solved: tuple[np.ndarray, np.ndarray], x: np.ndarray, P: np.ndarray,
                w: np.ndarray) -> np.ndarray:
    """The closed-form points ``solved`` (X, certified), the uncertified ones re-solved by
    :func:`_dlt_svd` on their own rows, NaN where fewer than two views are used."""
    X, ok = solved
    enough = (w > 0).sum(-1) >= 2
    redo = enough & ~ok
    if redo.any():
        shape = redo.shape
        xb = np.broadcast_to(x, shape + x.shape[-2:])[redo]
        Pb = np.broadcast_to(P, shape + P.shape[-3:])[redo]
        X = X.copy()
        X[redo] = _dlt_svd(xb, Pb, np.broadcast_to(w, shape + w.shape[-1:])[redo])
    return np.where(enough[..., None], X, np.nan)


def _dlt_svd(x: np.ndarray, P: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The batched-SVD DLT (x (..., V, 2), P (..., V, 3, 4), w (..., V)); NaN where fewer than
    two views are used. :func:`_dlt`'s fallback for the points its closed form cannot certify."""
    w = np.where(np.isfinite(x).all(-1), w.astype(np.float64), 0.0)
    xs = np.where(w[..., None] > 0, x, 0.0)
    rows = np.concatenate([xs[..., 0, None, None] * P[..., 2:3, :] - P[..., 0:1, :],
                           xs[..., 1, None, None] * P[..., 2:3, :] - P[..., 1:2, :]], -2)
    rows = rows * w[..., None, None]  # unnormalised rows: the same algebraic error as OpenCV
    A = rows.reshape(rows.shape[:-3] + (-1, 4))
    A = np.where(np.isfinite(A), A, 0.0)
    _, _, Vt = np.linalg.svd(A)
    Xh = Vt[..., -1, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[..., :3] / Xh[..., 3:4]
    enough = (w > 0).sum(-1) >= 2
    return np.where(enough[..., None], X, np.nan)


def _dlt_view_terms(P: np.ndarray) -> np.ndarray:
    """(..., V, 4, 10): each view's normal-matrix terms of a DLT row pair.

    A view's rows are x P3 - P1 and y P3 - P2 (P_k the rows of its 3 x 4 matrix); their outer
    products sum to (x^2 + y^2) P3P3' - x (P3P1' + P1P3') - y (P3P2' + P2P3') + P1P1' + P2P2',
    so the normal matrix is [x^2 + y^2, x, y, 1] times these four terms (``_SYM`` entries)."""
    P = np.asarray(P, dtype=np.float64)
    p1, p2, p3 = P[..., 0, :], P[..., 1, :], P[..., 2, :]
    outer = lambda a, b: a[..., _SYM_I] * b[..., _SYM_J]  # noqa: E731
    return np.stack([outer(p3, p3), -(outer(p3, p1) + outer(p1, p3)),
                     -(outer(p3, p2) + outer(p2, p3)), outer(p1, p1) + outer(p2, p2)], -2)


_SYM_I = np.array([0, 0, 0, 1, 1, 2, 0, 1, 2, 3])
_SYM_J = np.array([0, 1, 2, 1, 2, 2, 3, 3, 3, 3])
"""The 10 entries of a symmetric 4 x 4 matrix, in the order C00 C01 C02 C11 C12 C22 (the 3 x 3
block of the point), d0 d1 d2 (the column of the homogeneous coordinate) and e (its diagonal)."""


def dlt_normal(x: np.ndarray, P: np.ndarray, w: np.ndarray, per_view: bool = False
               ) -> np.ndarray:
    """Normal matrices A'A of the weighted DLT systems, (..., 10) in ``_SYM_I/_SYM_J`` order.

    x (..., V, 2) normalised observations, P (V, 3, 4) shared cameras (one matrix product) or
    (..., V, 3, 4), w (..., V) weights (rows are multiplied by w, as the SVD DLT did). Views
    with a zero weight or non-finite x contribute nothing. ``per_view``: return each view's
    matrix (..., V, 10) instead of their sum, so that any subset of views is a weighted sum.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.where(np.isfinite(x[..., 0]) & np.isfinite(x[..., 1]), np.asarray(w, np.float64), 0.0)
    used = w > 0
    x0, x1 = np.where(used, x[..., 0], 0.0), np.where(used, x[..., 1], 0.0)
    w2 = w * w
    coef = np.empty(w.shape + (4,))
    coef[..., 0] = w2 * (x0 * x0 + x1 * x1)
    coef[..., 1] = w2 * x0
    coef[..., 2] = w2 * x1
    coef[..., 3] = w2
    T = _dlt_view_terms(P)                                                  # (V, 4, 10)
    if T.ndim == 3:
        # shared cameras: one 2-D GEMM over all points (a stacked matmul would loop over the
        # leading axes), (N, 4V) @ (4V, 10) for the sum, or with the block-diagonal (4V, 10V)
        # matrix of the views' terms for each view's matrix
        V = T.shape[0]
        if per_view:
            B = np.zeros((V, 4, V, 10))
            B[np.arange(V), :, np.arange(V)] = T
            out = coef.reshape(-1, 4 * V) @ B.reshape(4 * V, 10 * V)
            return out.reshape(coef.shape[:-1] + (10,))
        return (coef.reshape(-1, 4 * V) @ T.reshape(-1, 10)).reshape(coef.shape[:-2] + (10,))
    M = (coef[..., None] * T).sum(-2)                                       # (..., V, 10)
    return M if per_view else M.sum(-2)


def solve_dlt_normal(M: np.ndarray, iterations: int = 6, rtol: float = 1e-10
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) homogeneous DLT points of normal matrices M (..., 10) (:func:`dlt_normal`) and
    (...) bool: the solve is certified (else the caller falls back to the SVD, :func:`_dlt`).

    Partition A'A = [[C, d], [d', e]]. The DLT point is the eigenvector (X, 1) of the least
    eigenvalue lambda: (C - lambda I) X = -d. Starting from the inhomogeneous least-squares point
    X = -C^-1 d (lambda = 0), each step sets lambda to the Rayleigh quotient of (X, 1) and solves
    the shifted 3 x 3 system in closed form (adjugate); convergence is quadratic. The result is
    certified when the last step moved X by at most ``rtol`` |X| and C - lambda I is positive
    definite (then lambda is the least root of the secular equation, i.e. the least eigenvalue:
    the SVD's solution and not another eigenvector). Uncertified: rays nearly parallel or a
    point nearly at infinity (e.g. one view an outlier), a few percent of two-view hypotheses."""
    # contiguous entry arrays (the entries of M (..., 10) are strided): every step below is
    # elementwise over them. From step _FREEZE_AFTER on, the points that have converged to
    # machine precision (last step <= _FROZEN_RTOL |X|, C - lambda I positive definite: further
    # steps only move them by rounding) are set aside, certified, and only the rest iterate.
    Mc = np.ascontiguousarray(np.moveaxis(np.asarray(M, np.float64), -1, 0))
    shape = Mc.shape[1:]
    Mc = Mc.reshape(10, -1)
    X = np.empty((3, Mc.shape[1]))
    ok = np.zeros(Mc.shape[1], bool)
    act = None  # indices of the points still iterating; None: all of them
    c00, c01, c02, c11, c12, c22, d0, d1, d2, e = Mc
    lam = np.zeros(c00.shape)
    x0 = x1 = x2 = None
    step = pd = None
    frozen_rtol = min(_FROZEN_RTOL, rtol)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(iterations + 1):
            y0, y1, y2, s00, a22, det = _shifted_solve(c00, c01, c02, c11, c12, c22, d0, d1,
                                                       d2, lam)
            if x0 is not None:
                step = np.sqrt((y0 - x0) ** 2 + (y1 - x1) ** 2 + (y2 - x2) ** 2)
                pd = (s00 > 0) & (a22 > 0) & (det > 0)
            x0, x1, x2 = y0, y1, y2
            if k == iterations:
                break
            if k >= _FREEZE_AFTER:
                done = (step <= frozen_rtol * np.sqrt(x0 * x0 + x1 * x1 + x2 * x2)) & pd
                if done.any():
                    fi = np.flatnonzero(done)
                    g = fi if act is None else act[fi]
                    X[0, g], X[1, g], X[2, g] = x0[fi], x1[fi], x2[fi]
                    ok[g] = True
                    keep = np.flatnonzero(~done)
                    act = keep if act is None else act[keep]
                    c00, c01, c02, c11, c12, c22, d0, d1, d2, e, x0, x1, x2 = (
                        v[keep] for v in (c00, c01, c02, c11, c12, c22, d0, d1, d2, e,
                                          x0, x1, x2))
                    step, pd = step[keep], pd[keep]
                    if not len(keep):
                        break
            lam = _rayleigh(c00, c01, c02, c11, c12, c22, d0, d1, d2, e, x0, x1, x2)
        norm = np.sqrt(x0 * x0 + x1 * x1 + x2 * x2)
        g = slice(None) if act is None else act
        X[0, g], X[1, g], X[2, g] = x0, x1, x2
        ok[g] = np.isfinite(norm) & (step <= rtol * norm) & pd
    return X.T.reshape(shape + (3,)), ok.reshape(shape)


def _shifted_solve(c00, c01, c02, c11, c12, c22, d0, d1, d2, lam):
    """Closed-form (adjugate) solve of (C - lam I) y = -d for entry arrays of the symmetric C;
    returns y0, y1, y2 and s00, a22, det (positive definiteness of C - lam I: all three > 0)."""
    s00, s11, s22 = c00 - lam, c11 - lam, c22 - lam
    a00, a01, a02, a11, a12, a22, det = sym3_adjugate(s00, c01, c02, s11, c12, s22)
    y0 = -(a00 * d0 + a01 * d1 + a02 * d2) / det
    y1 = -(a01 * d0 + a11 * d1 + a12 * d2) / det
    y2 = -(a02 * d0 + a12 * d1 + a22 * d2) / det
    return y0, y1, y2, s00, a22, det


def sym3_adjugate(m00, m01, m02, m11, m12, m22):
    """Adjugate entries (a00, a01, a02, a11, a12, a22) and determinant of symmetric 3 x 3
    matrices given by their entry arrays (any broadcastable shapes): M^-1 = adj / det."""
    a00 = m11 * m22 - m12 * m12
    a01 = m02 * m12 - m01 * m22
    a02 = m01 * m12 - m02 * m11
    a11 = m00 * m22 - m02 * m02
    a12 = m01 * m02 - m00 * m12
    a22 = m00 * m11 - m01 * m01
    return a00, a01, a02, a11, a12, a22, m00 * a00 + m01 * a01 + m02 * a02


def _rayleigh(c00, c01, c02, c11, c12, c22, d0, d1, d2, e, x0, x1, x2):
    """Rayleigh quotient of (X, 1) under [[C, d], [d', e]]: (X'CX + 2 d.X + e) / (1 + |X|^2),
    clipped at 0 (the matrix is positive semi-definite)."""
    cx0 = c00 * x0 + c01 * x1 + c02 * x2
    cx1 = c01 * x0 + c11 * x1 + c12 * x2
    cx2 = c02 * x0 + c12 * x1 + c22 * x2
    num = x0 * cx0 + x1 * cx1 + x2 * cx2 + 2 * (d0 * x0 + d1 * x1 + d2 * x2) + e
    return np.maximum(num, 0.0) / (1.0 + x0 * x0 + x1 * x1 + x2 * x2)


_FREEZE_AFTER = 3
_FROZEN_RTOL = 1e-13
""":func:`solve_dlt_normal` iterates only the unconverged points after step ``_FREEZE_AFTER``;
converged: the last step moved X by at most ``_FROZEN_RTOL`` |X| (quadratic convergence: the
next step would be at rounding level)."""


# --- errors and validity ------------------------------------------------------------------------

def reprojection_error_px(X: np.ndarray, xa: np.ndarray, xb: np.ndarray, R: np.ndarray,
                          t: np.ndarray, focal_px_a: float, focal_px_b: float) -> np.ndarray:
    """(F, J) max over both views of the reprojection error in pixels (inf where non-finite).

    X: (F, J, 3) in camera a; xa, xb: (F, J, 2) normalised observations; R, t as in
    :func:`triangulate`. Normalised errors are converted with each camera's focal length.
    """
    Xb = transform(X, R, t)
    with np.errstate(divide="ignore", invalid="ignore"):
        ea = np.linalg.norm(X[..., :2] / X[..., 2:3] - xa, axis=-1) * focal_px_a
        eb = np.linalg.norm(Xb[..., :2] / Xb[..., 2:3] - xb, axis=-1) * focal_px_b
    e = np.maximum(ea, eb)
    return np.where(np.isfinite(e), e, np.inf)


def label_validity(conf_a: np.ndarray, conf_b: np.ndarray, X: np.ndarray, R: np.ndarray,
                   t: np.ndarray, reproj: np.ndarray, conf_threshold: float,
                   reproj_threshold_px: float) -> np.ndarray:
    """(F, J) bool: a joint is a usable label only when it is confident in both views (conf >=
    threshold), in front of both cameras, reprojects within the threshold and is finite.
    Invalid joints are dropped by the trainer, never guessed."""
    finite = np.isfinite(X).all(-1)
    Xs = np.where(finite[..., None], X, 0.0)
    zb = transform(Xs, R, t)[..., 2]
    ok = (conf_a >= conf_threshold) & (conf_b >= conf_threshold) & finite
    ok &= (Xs[..., 2] > 0) & (zb > 0) & np.isfinite(zb)
    ok &= np.isfinite(reproj) & (reproj <= reproj_threshold_px)
    return ok


# --- scale --------------------------------------------------------------------------------------

def _reference_bones(joint_set: JointSet, median: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(B, 2) bones of the joint set and (B,) reference lengths (mm): the joint set's declared
    ones, else the recording's per-bone ``median`` lengths scaled so that they sum to
    REFERENCE_BONE_SUM_MM (bones never measured: NaN, skipped). Never another set's lengths."""
    bones = joint_set.bones
    ref = joint_set.reference_lengths
    if ref is not None:
        if len(ref) != len(bones) or not np.isfinite(ref).all():
            raise ValueError(f"joint set {joint_set.name}: a bone has no reference length")
        return bones, ref
    if median is None:
        raise ValueError(f"joint set {joint_set.name} declares no reference bone lengths and no "
                         "recording's median bone lengths were given")
    have = np.isfinite(median) & (median > 0)
    if not have.any():
        return bones, np.full(len(bones), np.nan)
    return bones, np.where(have, median * REFERENCE_BONE_SUM_MM / median[have].sum(), np.nan)


def bone_lengths(X: np.ndarray, joint_set: JointSet = H36M17) -> np.ndarray:
    """(..., J, 3) -> (..., B) bone lengths in the joint set's bone order."""
    bones = joint_set.bones
    return np.linalg.norm(X[..., bones[:, 1], :] - X[..., bones[:, 0], :], axis=-1)


def normalize_scale(X: np.ndarray, valid: np.ndarray, per_frame: bool,
                    joint_set: JointSet = H36M17) -> tuple[np.ndarray, np.ndarray]:
    """Root-relative poses scaled to the joint set's canonical size.

    The scale is sum(reference lengths) / sum(measured lengths) over the bones whose two joints
    are valid, so missing bones do not bias it. The reference lengths are the joint set's
    (``JointSet.reference_mm``; H36M-17: REFERENCE_BONE_LENGTHS_MM); a set that declares none
    uses the recording's own per-bone median lengths, scaled to sum to REFERENCE_BONE_SUM_MM.
    ``per_frame=False`` (pooled or multiview geometry: one camera pair for the whole sequence)
    uses ONE scale for the sequence, from the per-bone median length over frames, so labels are
    temporally consistent; ``per_frame=True`` (the paper's per-frame geometry, whose scale
    changes every frame) scales each frame. Each frame's root is the first visible of the joint
    set's roots (``JointSet.frame_roots``).

    Args:
        X: (F, J, 3) triangulated poses (any unit). valid: (F, J) bool.
    Returns:
        X_norm (F, J, 3) in mm of the canonical skeleton, root at 0; joints that are invalid,
        or whose frame has no valid root or no measurable scale, are set to 0 (never NaN):
        use them only where :func:`normalized_validity` says so. scale (F,): the factor
        applied per frame (NaN where none).
    """
    if X.shape[:-1] != valid.shape or X.shape[-1] != 3:
        raise ValueError(f"X {X.shape} and valid {valid.shape} must be (F, J, 3) and (F, J)")
    valid = valid & np.isfinite(X).all(-1)
    Xr, _ = joint_set.root_relative(np.where(valid[..., None], X, 0.0), valid)
    lengths = bone_lengths(Xr, joint_set)                                   # (F, B)
    bones = joint_set.bones
    bone_ok = valid[..., bones[:, 0]] & valid[..., bones[:, 1]]
    with warnings.catch_warnings():  # a bone never valid has no median: NaN, skipped below
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(bone_ok, lengths, np.nan), axis=0)
    _, ref = _reference_bones(joint_set, med)
    bone_ok &= np.isfinite(ref)
    if per_frame:
        num = np.where(bone_ok, ref, 0.0).sum(-1)
        den = (lengths * bone_ok).sum(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(den > 0, num / den, np.nan)
    else:
        have = np.isfinite(med) & (med > 0) & np.isfinite(ref)
        s = ref[have].sum() / med[have].sum() if have.any() else np.nan
        scale = np.full(X.shape[0], s)
    usable = normalized_validity(valid, scale, joint_set)
    X_norm = np.where(usable[..., None], Xr * np.nan_to_num(scale)[:, None, None], 0.0)
    return X_norm, scale


def normalized_validity(valid: np.ndarray, scale: np.ndarray, joint_set: JointSet = H36M17
                        ) -> np.ndarray:
    """(F, J) joints usable after :func:`normalize_scale`: valid, with a valid root (or
    fallback root) in that frame and a finite scale."""
    return (valid & (joint_set.frame_roots(valid) >= 0)[..., None]
            & np.isfinite(scale)[..., None])


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


def _pair_lookup(pairs: Iterable[PairGeometry]) -> dict[tuple[str, str], PairGeometry]:
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
    look = _pair_lookup(pairs)
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
        m = _valid_points(xs[g.cam_a], xs[g.cam_b], masks[g.cam_a] & masks[g.cam_b])
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
        rot = {}
        for g in out:
            if g.ok:
                rot[(g.cam_a, g.cam_b)] = g.R
                rot[(g.cam_b, g.cam_a)] = g.R.T
        cams = sorted({c for k in rot for c in k})
        worst, worst_err = None, tol_deg
        for n, g in enumerate(out):
            errs = [float(rotation_error_deg(rot[(c, g.cam_b)] @ rot[(g.cam_a, c)], g.R))
                    for c in cams if c not in (g.cam_a, g.cam_b)
                    and (g.cam_a, c) in rot and (c, g.cam_b) in rot]
            if g.ok and len(errs) >= 2 and min(errs) > worst_err:
                worst, worst_err = n, min(errs)
        if worst is None:
            return out
        out[worst] = replace(out[worst], ok=False, reason=(
            f"camera loops do not close: every path through a third camera disagrees by more "
            f"than {tol_deg:g} deg (best {worst_err:.1f} deg)"))


"""Two-view epipolar geometry of stage 1: a camera pair's pose from 2D joints.

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

Triangulation and label validity are in :mod:`pipeline.geometry.triangulation`; the checks of
pairs against each other around loops of cameras in :mod:`pipeline.geometry.loops`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np


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


def per_frame_pose(R: np.ndarray, t: np.ndarray, batch_ndim: int
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
    Rb, tb = per_frame_pose(R, t, X.ndim - 2)
    if Rb.ndim == 2:
        return X @ Rb.T + tb
    return (Rb @ X[..., None])[..., 0] + tb


def valid_points(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(F, J) mask of usable correspondences: given mask and finite in both views."""
    check_pair_shapes(xa, xb, mask)
    return mask.astype(bool) & np.isfinite(xa).all(-1) & np.isfinite(xb).all(-1)


def check_pair_shapes(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray | None) -> None:
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
        reason: why not ok ("" when ok; for a pair labelled although uncertain, why it is:
            :func:`pipeline.geometry.loops.label_last_uncertain`).
        method: robust estimator used.
        threshold_px: the inlier threshold in pixels.
        inliers: (F, J) bool inlier mask over the input correspondences, or None.
        cheirality: share of the offered correspondences whose rays meet in front of both
            cameras under (R, t) (NaN when not measured).
        cost_margin: how much worse (robust cost on all correspondences, chi-square-like units,
            :mod:`pipeline.geometry.hypotheses`) the best distinct local minimum fits than this
            pose (inf when there is none); NaN when not measured. runner_up_deg: that minimum's
            rotation away from R.
        rotation_se_deg: the rotation's standard error (degrees) from a bootstrap over frames;
            NaN when not measured.
        loop_err_deg: the median disagreement (degrees) of R with the paths through a third
            camera (:func:`pipeline.geometry.loops.with_loop_errors`); NaN without one.
        n_hypotheses: poses compared (RANSAC runs x decompositions, and their mirrored poses).
        ambiguous: a distinct pose fits nearly as well, or the rotation is too uncertain: the
            pair is not ok (never labelled).
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
    rotation_se_deg: float = float("nan")
    loop_err_deg: float = float("nan")
    n_hypotheses: int = 0
    ambiguous: bool = False

    @property
    def flagged(self) -> bool:
        """Labelled with a warning: ok, yet with a reason (an uncertain pair labelled because
        nothing else labels its camera, :func:`pipeline.geometry.loops.label_last_uncertain`)."""
        return bool(self.ok and self.reason)

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
            "runner_up_deg": float(self.runner_up_deg),
            "rotation_se_deg": float(self.rotation_se_deg),
            "loop_err_deg": float(self.loop_err_deg), "n_hypotheses": int(self.n_hypotheses),
            "ambiguous": bool(self.ambiguous), "flagged": self.flagged,
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
    (a profile of the cost along one rotation): the rotation increment is
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
    use = valid_points(xa, xb, mask)
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
    use = valid_points(xa, xb, mask)
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
    use = valid_points(xa, xb, mask)
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

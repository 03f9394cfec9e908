"""Two-view triangulation of stage 1, label validity and the canonical scale of a pose.

Conventions as in :mod:`pipeline.geometry.epipolar` (``X_b = R @ X_a + t``; normalised
coordinates; thresholds in pixels converted with the focal length).

Triangulation (:func:`triangulate`) applies the optimal (Hartley-Sturm) correction (Lindstrom's
closed-form iteration, checked against ``cv2.correctMatches``) and then the closed-form two-ray
intersection, vectorised over every frame and joint at once. :func:`dlt_normal` and
:func:`solve_dlt_normal` are the closed-form DLT that the all-view triangulation
(:mod:`pipeline.geometry.multiview`) shares.

Scale (:func:`normalize_scale`): without extrinsics a pose is known up to scale. Labels are
made root-relative and scaled to the joint set's reference bone lengths (for H36M-17 the 16
bone lengths sum to ``REFERENCE_BONE_SUM_MM``, about 4150 mm, see
``REFERENCE_BONE_LENGTHS_MM``); a joint set that declares none is scaled by the H36M-17 bones it
contains (the same two joint names, :func:`pipeline.joints.lengths_by_name`), so a partial set
(an upper body, say) comes out at life size; never by the full-body sum.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np

from pipeline.geometry.epipolar import (check_pair_shapes, essential_from_pose, per_frame_pose,
                                        transform)
from pipeline.joints import H36M17, H36M17_BONE_LENGTHS_MM, JointSet, lengths_by_name


# Bone lengths of the Human3.6M skeleton (mm) by child joint: defined with the joint set
# (pipeline.joints.H36M17_BONE_LENGTHS_MM, where their source is documented).
REFERENCE_BONE_LENGTHS_MM: dict[str, float] = H36M17_BONE_LENGTHS_MM
REFERENCE_BONE_SUM_MM: float = float(sum(REFERENCE_BONE_LENGTHS_MM.values()))

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
    Rb, tb = per_frame_pose(R, t, xa.ndim - 2)
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
    check_pair_shapes(xa, xb, None)
    if not optimal:
        return triangulate_dlt(xa, xb, R, t)
    ca, cb = correct_matches(xa, xb, R, t)
    per_frame_pose(R, t, xa.ndim - 2)  # shape checks
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
    Rb, tb = per_frame_pose(R, t, xa.ndim - 2)
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
    _bracket_uncertified(Mc, X, ok, rtol)
    return X.T.reshape(shape + (3,)), ok.reshape(shape)


def _bracket_uncertified(Mc: np.ndarray, X: np.ndarray, ok: np.ndarray, rtol: float) -> None:
    """Re-solve the points ``ok`` leaves uncertified (overshoots past the pole) with
    :func:`_bracketed_solve`, in place (X (3, n), ok (n,)); what it cannot certify stays for
    the SVD."""
    redo = np.flatnonzero(~ok)
    if len(redo):
        Xr, okr = _bracketed_solve(Mc[:, redo], rtol)
        X[:, redo[okr]] = Xr[:, okr]
        ok[redo[okr]] = True


def _bracketed_solve(Mc: np.ndarray, rtol: float, iterations: int = 60
                     ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`solve_dlt_normal` of the points its plain iteration leaves uncertified (entry
    arrays Mc (10, n)): X (3, n) and ok (n,).

    The least eigenvalue lambda0 of A'A is the root below the least eigenvalue of C of the
    secular function f(l) = e - l + d.y(l), y(l) = -(C - l I)^-1 d, which decreases and is
    concave there; the Rayleigh step of the plain iteration is Newton's step on f. From the
    left of the root Newton overshoots, and where the root lies close to C's least eigenvalue
    (a pole of f) it lands past the pole and the iteration goes astray: these are the points
    that reach here (typically a two-view hypothesis with an outlier view). Here every solve
    updates a bracket [lo, hi] of lambda0 (C - l I positive definite and f > 0: l below the
    root; otherwise above it). From the left the step is the root of the one-pole model
    a - b / (mu - l) that matches f and f' (mu: C's least eigenvalue, in closed form), which
    lands between l and the pole; from the right of the root (and left of the pole) Newton
    converges monotonically; a step outside the bracket is replaced by bisection. Certified
    as in :func:`solve_dlt_normal`: the last step moved X by at most ``rtol`` |X| and C - l I is
    positive definite."""
    c00, c01, c02, c11, c12, c22, d0, d1, d2, e = Mc
    n = c00.shape[0]
    lo = np.zeros(n)
    hi = np.minimum(np.minimum(c00, c11), np.minimum(c22, e))  # lambda0 <= every diagonal entry
    mu = sym3_least_eigenvalue(c00, c01, c02, c11, c12, c22)  # the pole of f
    lam = np.zeros(n)
    prev = np.full((3, n), np.nan)
    act = np.arange(n)  # the points still iterating (the certified ones are set aside)
    ok = np.zeros(n, bool)
    X = np.full((3, n), np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(iterations):
            y0, y1, y2, s00, a22, det = _shifted_solve(c00, c01, c02, c11, c12, c22, d0, d1, d2,
                                                       lam)
            pd = (s00 > 0) & (a22 > 0) & (det > 0)
            y = np.stack([y0, y1, y2])
            norm = np.sqrt(y0 * y0 + y1 * y1 + y2 * y2)
            done = pd & np.isfinite(norm) & (np.sqrt(((y - prev) ** 2).sum(0)) <= rtol * norm)
            if done.any():
                X[:, act[done]] = y[:, done]
                ok[act[done]] = True
                keep = ~done
                act, y, prev, norm, pd, lam, lo, hi, mu = (v[..., keep] for v in (
                    act, y, prev, norm, pd, lam, lo, hi, mu))
                c00, c01, c02, c11, c12, c22, d0, d1, d2, e = (v[keep] for v in (
                    c00, c01, c02, c11, c12, c22, d0, d1, d2, e))
                if not len(act):
                    break
            prev = y
            f = e - lam + (d0 * y[0] + d1 * y[1] + d2 * y[2])
            left = pd & (f > 0)
            lo = np.where(left, lam, lo)
            hi = np.where(left, hi, np.minimum(hi, lam))
            slope, gap = 1.0 + norm * norm, mu - lam  # -f'(lam), distance to the pole
            # left of the root: the one-pole model's step (between lam and the pole), else Newton
            newton = np.where(left & (gap > 0), mu - slope * gap * gap / (f + slope * gap),
                              lam + f / slope)
            inside = pd & (newton >= lo) & (newton <= hi) & np.isfinite(newton)
            lam = np.where(inside, newton, 0.5 * (lo + hi))
    return X, ok


def _shifted_solve(c00, c01, c02, c11, c12, c22, d0, d1, d2, lam):
    """Closed-form (adjugate) solve of (C - lam I) y = -d for entry arrays of the symmetric C;
    returns y0, y1, y2 and s00, a22, det (positive definiteness of C - lam I: all three > 0)."""
    s00, s11, s22 = c00 - lam, c11 - lam, c22 - lam
    a00, a01, a02, a11, a12, a22, det = sym3_adjugate(s00, c01, c02, s11, c12, s22)
    y0 = -(a00 * d0 + a01 * d1 + a02 * d2) / det
    y1 = -(a01 * d0 + a11 * d1 + a12 * d2) / det
    y2 = -(a02 * d0 + a12 * d1 + a22 * d2) / det
    return y0, y1, y2, s00, a22, det


def sym3_least_eigenvalue(m00, m01, m02, m11, m12, m22):
    """Least eigenvalue of symmetric 3 x 3 matrices given by their entry arrays, in closed form
    (the trigonometric solution of the characteristic cubic)."""
    q = (m00 + m11 + m22) / 3.0
    b00, b11, b22 = m00 - q, m11 - q, m22 - q
    p2 = b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * (m01 * m01 + m02 * m02 + m12 * m12)
    p = np.sqrt(p2 / 6.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (b00 * (b11 * b22 - m12 * m12) - m01 * (m01 * b22 - m12 * m02)
             + m02 * (m01 * m12 - b11 * m02)) / (2.0 * p * p * p)
    phi = np.arccos(np.clip(np.nan_to_num(r), -1.0, 1.0)) / 3.0
    return q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)


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

def reference_lengths(joint_set: JointSet) -> np.ndarray:
    """(B,) the reference length (mm) of each bone of the joint set, the canonical size of its
    labels: its declared lengths (``JointSet.reference_mm``), else those of the H36M-17 bones
    joining the same two joint names (:func:`pipeline.joints.lengths_by_name`; NaN for a bone
    H36M-17 lacks, which then takes no part in the scale). A set without declared lengths and
    without any H36M-17 bone raises ValueError: its size is unknown, and the full-body sum
    would scale a partial set to the wrong size (a 10-joint upper body came out 2.5x life
    size that way)."""
    ref = joint_set.reference_lengths
    if ref is not None:
        if len(ref) != len(joint_set.bones) or not np.isfinite(ref).all():
            raise ValueError(f"joint set {joint_set.name}: a bone has no reference length")
        return ref
    ref = lengths_by_name(joint_set)
    if not np.isfinite(ref).any():
        raise ValueError(
            f"joint set {joint_set.name} declares no bone lengths and none of its bones joins "
            f"two joints of H36M-17's names ({', '.join(H36M17.names)}): declare "
            "joint_set.bone_lengths_mm in the manifest so the labels have a size")
    return ref


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
    uses the H36M-17 bones it contains (:func:`reference_lengths`), its other bones keep the
    recording's proportions.
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
    ref = reference_lengths(joint_set)
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

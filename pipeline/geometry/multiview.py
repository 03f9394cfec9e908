"""All cameras of a subject at once: registration, multi-view triangulation, bundle adjustment.

With more than two static cameras the pairs are not independent: their rotations compose around
loops and every joint is seen by all views. DESIGN.md §4 asks for an all-view solution that
beats the paper's vector-median fusion of pair triangulations; this module holds both.

Conventions: the first camera (or ``reference``) is the world frame, every camera pose maps it
to the camera: X_c = R_c @ X_ref + t_c (the reference has R = I, t = 0). The scale gauge is
|t| = 1 for one ``gauge`` camera, so everything is up to one global scale, exactly like a pair.
Inputs are dicts camera -> (F, J, 2) undistorted normalised coordinates and camera -> (F, J)
bool masks (confident joints), the same arrays :mod:`pipeline.geometry.two_view` takes.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import least_squares

from pipeline.geometry import two_view as geo
from pipeline.geometry.cameras import rotation_angle_deg

Pose = tuple[np.ndarray, np.ndarray]
"""(R (3, 3), t (3,)) of a camera: X_cam = R @ X_ref + t."""


# --- registration -------------------------------------------------------------------------------

@dataclass
class Registration:
    """Cameras in the reference frame and how they were obtained.

    Attributes:
        cameras: camera -> (R, t); reference first; the gauge camera has |t| = 1.
        reference, gauge: camera ids.
        pairs: every pooled pair fit (after loop resolution).
        loops: the loop report of those pairs.
        ok: every camera registered.
        reasons: camera -> why it could not be registered (absent when all ok).
    """

    cameras: dict[str, Pose]
    reference: str
    gauge: str
    pairs: list[geo.PairGeometry]
    loops: geo.LoopReport
    ok: bool
    reasons: dict[str, str] = field(default_factory=dict)


def _focal(focal_px: float | Mapping[str, float], cam: str) -> float:
    return float(focal_px[cam]) if isinstance(focal_px, Mapping) else float(focal_px)


def fit_all_pairs(x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                  threshold_px: float, focal_px: float | Mapping[str, float],
                  method: str = "usac_magsac", seed: int = 0) -> list[geo.PairGeometry]:
    """Pooled geometry of every camera pair (i < j in dict order); the threshold is converted
    with the mean focal length of the two cameras."""
    cams = list(x_norm)
    out = []
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            f = 0.5 * (_focal(focal_px, a) + _focal(focal_px, b))
            out.append(geo.fit_pair_pooled(x_norm[a], x_norm[b], mask[a] & mask[b], threshold_px,
                                           f, method=method, seed=seed, cam_a=a, cam_b=b))
    return out


def _rotation_medoid(Rs: np.ndarray, tol_deg: float = 5.0) -> np.ndarray:
    """Robust mean of (K, 3, 3) rotation estimates: the medoid (least summed geodesic distance),
    then the chordal mean of the estimates within ``tol_deg`` of it."""
    d = rotation_angle_deg(Rs[:, None] @ np.swapaxes(Rs[None], -1, -2))
    medoid = Rs[int(np.argmin(d.sum(1)))]
    close = rotation_angle_deg(Rs @ medoid.T) <= tol_deg
    U, _, Vt = np.linalg.svd(Rs[close].sum(0))
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


def _rotations(cams: Sequence[str], ref: str, look: Mapping[tuple[str, str], geo.PairGeometry]
               ) -> dict[str, np.ndarray]:
    """Rotation of every camera from the reference: the direct pair and every two-hop path
    ref -> k -> c, fused robustly (:func:`_rotation_medoid`)."""
    out = {ref: np.eye(3)}
    for c in cams:
        if c == ref:
            continue
        cands = []
        if (ref, c) in look:
            cands.append(look[(ref, c)].R)
        for k in cams:
            if k not in (ref, c) and (ref, k) in look and (k, c) in look:
                cands.append(look[(k, c)].R @ look[(ref, k)].R)
        if cands:
            out[c] = _rotation_medoid(np.stack(cands))
    return out


def _parallax_sin(xa: np.ndarray, xb: np.ndarray, R: np.ndarray) -> float:
    """Median |sin| of the angle between corresponding rays (triangulation conditioning)."""
    a = geo.homogeneous(xa) @ R.T
    b = geo.homogeneous(xb)
    c = np.linalg.norm(np.cross(a, b), axis=-1) / (np.linalg.norm(a, axis=-1) *
                                                  np.linalg.norm(b, axis=-1))
    return float(np.median(c)) if len(c) else 0.0


def translation_given_rotation(x: np.ndarray, X: np.ndarray, R: np.ndarray,
                               iterations: int = 4, trim: float = 3.0) -> np.ndarray:
    """Camera translation t from known 3D points and rotation (linear, robust).

    x: (N, 2) normalised observations of (N, 3) points X. Each point gives
    [x]_x (R X + t) = 0, linear in t; rows are re-weighted by 1/depth (so the algebraic error
    approximates the image error) and points beyond ``trim`` x the median residual dropped.
    """
    xh = geo.homogeneous(x)
    S = geo.skew(xh)                                          # (N, 3, 3)
    RX = X @ R.T
    w = np.ones(len(x))
    t = np.zeros(3)
    for _ in range(iterations):
        A = (S * w[:, None, None]).reshape(-1, 3)
        b = (-(S @ RX[..., None])[..., 0] * w[:, None]).reshape(-1)
        t = np.linalg.lstsq(A, b, rcond=None)[0]
        Y = RX + t
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.linalg.norm(Y[:, :2] / Y[:, 2:3] - x, axis=-1)
            med = np.median(r[np.isfinite(r)]) if np.isfinite(r).any() else 0.0
            keep = np.isfinite(r) & (r <= trim * max(med, 1e-12)) & (Y[:, 2] > 0)
            w = np.where(keep, 1.0 / np.abs(Y[:, 2]), 0.0)
    return t


def register_cameras_detailed(x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                              threshold_px: float, focal_px: float | Mapping[str, float],
                              reference: str | None = None, method: str = "usac_magsac",
                              seed: int = 0, pairs: list[geo.PairGeometry] | None = None
                              ) -> Registration:
    """Register every camera into the reference camera's frame (see :func:`register_cameras`)."""
    cams = list(x_norm)
    ref = reference if reference is not None else cams[0]
    if ref not in x_norm:
        raise KeyError(f"reference camera {ref!r} not among {cams}")
    if len(cams) < 2:
        raise ValueError(f"registration needs at least two cameras, got {cams}")
    if pairs is None:
        pairs = fit_all_pairs(x_norm, mask, threshold_px, focal_px, method, seed)
    pairs = geo.resolve_loops(pairs, x_norm, mask)
    loops = geo.check_loops(pairs)
    look = geo._pair_lookup(pairs)
    rots = _rotations(cams, ref, look)
    reasons = {c: f"no usable pair links {c} to {ref}" for c in cams if c not in rots}

    # Gauge: the camera whose pair with the reference triangulates best (largest parallax).
    linked = [c for c in cams if c != ref and (ref, c) in look]
    if not linked:
        cameras = {ref: (np.eye(3), np.zeros(3))}
        return Registration(cameras, ref, "", pairs, loops, False, reasons)
    both = {c: mask[ref] & mask[c] for c in linked}
    gauge = max(linked, key=lambda c: _parallax_sin(x_norm[ref][both[c]], x_norm[c][both[c]],
                                                    look[(ref, c)].R))
    g = look[(ref, gauge)]
    cameras: dict[str, Pose] = {ref: (np.eye(3), np.zeros(3)), gauge: (rots[gauge], g.t.copy())}

    # Shared points from the gauge pair fix the scale of every other camera.
    X = geo.triangulate(x_norm[ref], x_norm[gauge], rots[gauge], g.t)
    use = both[gauge] & np.isfinite(X).all(-1)
    if g.inliers is not None:
        use &= g.inliers
    for c in cams:
        if c in cameras or c not in rots:
            continue
        m = use & mask[c] & np.isfinite(x_norm[c]).all(-1)
        if m.sum() < geo.MIN_CORRESPONDENCES:
            reasons[c] = f"too few shared points with the gauge pair ({int(m.sum())})"
            continue
        cameras[c] = (rots[c], translation_given_rotation(x_norm[c][m], X[m], rots[c]))
    cameras = {c: cameras[c] for c in cams if c in cameras}
    return Registration(cameras, ref, gauge, pairs, loops, not reasons, reasons)


def register_cameras(x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                     threshold_px: float, focal_px: float | Mapping[str, float],
                     reference: str | None = None, method: str = "usac_magsac", seed: int = 0
                     ) -> dict[str, Pose]:
    """Every camera's pose in the first (or ``reference``) camera's frame, up to one scale.

    Steps: pooled geometry of every pair; wrong decompositions re-chosen so camera loops close
    (:func:`pipeline.geometry.two_view.resolve_loops`); each rotation fused from the direct pair and every
    two-hop path; the gauge camera (best-conditioned pair with the reference) gets |t| = 1;
    points triangulated from that pair fix every other camera's translation (and so its
    relative scale) by a linear, robust solve with the rotation known.

    Args:
        x_norm: camera -> (F, J, 2) normalised coordinates; mask: camera -> (F, J) bool.
        threshold_px, focal_px: RANSAC threshold in pixels and focal length(s) to convert it.
    Returns:
        camera -> (R (3, 3), t (3,)); cameras that could not be registered are absent (use
        :func:`register_cameras_detailed` for the reasons).
    """
    return register_cameras_detailed(x_norm, mask, threshold_px, focal_px, reference, method,
                                     seed).cameras


# --- multi-view triangulation -------------------------------------------------------------------

def _stack_views(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                 mask_by_cam: Mapping[str, np.ndarray] | None
                 ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Cameras present in both dicts, x (F, J, V, 2), P (V, 3, 4), w (F, J, V) bool."""
    cams = [c for c in x_norm_by_cam if c in R_t_by_cam]
    if not cams:
        raise ValueError(f"no camera has both observations and a pose: {list(x_norm_by_cam)} vs "
                         f"{list(R_t_by_cam)}")
    x = np.stack([np.asarray(x_norm_by_cam[c], dtype=np.float64) for c in cams], -2)
    P = np.stack([np.concatenate([R_t_by_cam[c][0], np.reshape(R_t_by_cam[c][1], (3, 1))], 1)
                  for c in cams])
    if mask_by_cam is None:
        w = np.ones(x.shape[:-1], dtype=bool)
    else:
        w = np.stack([np.asarray(mask_by_cam[c], dtype=bool) for c in cams], -1)
    return cams, x, P, w & np.isfinite(x).all(-1)


def triangulate_multiview(x_norm_by_cam: Mapping[str, np.ndarray],
                          R_t_by_cam: Mapping[str, Pose],
                          mask_by_cam: Mapping[str, np.ndarray] | None = None,
                          refine_iterations: int = 3) -> np.ndarray:
    """Triangulate every joint of every frame from all the views that see it, at once.

    Linear DLT (closed form over all frames and joints at once, views weighted by the mask), then
    ``refine_iterations`` vectorised Gauss-Newton steps on the image error (normalised units),
    so the result is the least-squares (maximum-likelihood under Gaussian noise) point.

    Args:
        x_norm_by_cam: camera -> (F, J, 2); R_t_by_cam: camera -> (R, t) in one frame;
        mask_by_cam: camera -> (F, J) bool, or None for all.
    Returns:
        (F, J, 3) in the cameras' common frame; NaN where fewer than two views see a joint.
    """
    _, x, P, w = _stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    X = geo._dlt(x, P, w)
    return refine_points(X, x, P, w, iterations=refine_iterations)


def refine_points(X: np.ndarray, x: np.ndarray, P: np.ndarray, w: np.ndarray,
                  iterations: int = 3, huber_scale: float | None = None) -> np.ndarray:
    """Vectorised Gauss-Newton on each point's reprojection error, cameras fixed.

    X: (..., 3) initial points; x: (..., V, 2) observations (normalised); P: (V, 3, 4);
    w: (..., V) bool. ``huber_scale`` (normalised units) turns on Huber re-weighting.
    Points with fewer than two views stay NaN. The 3 x 3 normal equations of every point are
    formed and solved in closed form (adjugate), elementwise over all points. Internally the
    points are flattened and every per-view quantity is a contiguous (V, N) array (one GEMM
    projects all points into all views), which is what makes it fast in numpy.
    """
    P = np.asarray(P, dtype=np.float64)
    V = P.shape[-3]
    shape = np.shape(X)[:-1]
    Xf = np.asarray(X, dtype=np.float64).reshape(-1, 3)
    wb = np.broadcast_to(np.asarray(w, dtype=bool), shape + (V,)).reshape(-1, V)
    xf = np.broadcast_to(np.asarray(x, dtype=np.float64), shape + (V, 2)).reshape(-1, V, 2)
    ok = np.isfinite(Xf).all(-1) & (wb.sum(-1) >= 2)
    out = np.full(Xf.shape, np.nan)
    for i in range(0, len(Xf), _BLOCK):  # blocks whose temporaries stay in cache
        sl = slice(i, i + _BLOCK)
        out[sl] = _refine_block(Xf[sl], xf[sl], P, wb[sl], ok[sl], iterations, huber_scale)
    return out.reshape(shape + (3,))


_BLOCK = 4096
"""Points per block in :func:`refine_points` (its (V, block) temporaries fit the L2 cache)."""


def _refine_block(Xf: np.ndarray, xf: np.ndarray, P: np.ndarray, wb: np.ndarray, ok: np.ndarray,
                  iterations: int, huber_scale: float | None) -> np.ndarray:
    """:func:`refine_points` of flat points Xf (N, 3), xf (N, V, 2), wb (N, V), ok (N,)."""
    V = P.shape[0]
    Xt = np.where(ok, Xf.T, 0.0)                                         # (3, N)
    wt0 = wb.T.astype(np.float64)                                        # (V, N)
    x0 = np.where(wb.T, xf[..., 0].T, 0.0)
    x1 = np.where(wb.T, xf[..., 1].T, 0.0)
    R, t = P[:, :, :3], P[:, :, 3]
    A = R.reshape(3 * V, 3)
    b = t.reshape(3 * V, 1)
    Ra, Rb, Rc = (R[:, 0, :, None], R[:, 1, :, None], R[:, 2, :, None])  # (V, 3, 1) each
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(iterations):
            Y = (A @ Xt + b).reshape(V, 3, -1)                           # (V, 3, N)
            z = Y[:, 2]
            z = np.where(np.abs(z) > 1e-12, z, 1e-12)
            iz = 1.0 / z
            u0 = Y[:, 0] / z
            u1 = Y[:, 1] / z
            r0 = u0 - x0
            r1 = u1 - x1
            if huber_scale is None:
                sw = wt0  # sqrt of 0/1 weights
            else:
                e = np.sqrt(r0 * r0 + r1 * r1)
                sw = np.sqrt(wt0 * np.where(e <= huber_scale, 1.0,
                                            huber_scale / np.maximum(e, 1e-300)))
            s = sw * iz
            # d u_k / d X = (R_k - u_k R_2) / z: rows J0, J1 (V, 3, N), weighted by sqrt(wt) / z
            J0 = (Ra - u0[:, None] * Rc) * s[:, None]
            J1 = (Rb - u1[:, None] * Rc) * s[:, None]
            r0 *= sw
            r1 *= sw
            h = lambda a, c: (J0[:, a] * J0[:, c] + J1[:, a] * J1[:, c]).sum(0)  # noqa: E731
            h00, h01, h02, h11, h12, h22 = (h(0, 0) + 1e-12, h(0, 1), h(0, 2), h(1, 1) + 1e-12,
                                            h(1, 2), h(2, 2) + 1e-12)
            g = (J0 * r0[:, None] + J1 * r1[:, None]).sum(0)            # (3, N)
            a00, a01, a02, a11, a12, a22, det = geo.sym3_adjugate(h00, h01, h02, h11, h12, h22)
            inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
            g0, g1, g2 = g[0] * inv, g[1] * inv, g[2] * inv
            Xt = Xt - np.stack([a00 * g0 + a01 * g1 + a02 * g2, a01 * g0 + a11 * g1 + a12 * g2,
                                a02 * g0 + a12 * g1 + a22 * g2])
    return np.where(ok[:, None], Xt.T, np.nan)


def _pair_index(V: int) -> tuple[np.ndarray, np.ndarray]:
    """The V(V-1)/2 pairs of views (i < j, in loop order) as two index arrays."""
    i, j = np.triu_indices(V, 1)
    return i, j


def _count(b: np.ndarray) -> np.ndarray:
    """(...) int: the number of true entries of b (..., V) along its last (short) axis, as
    column additions (a reduction over a short axis is slow in numpy)."""
    n = b[..., 0].astype(np.int64)
    for v in range(1, b.shape[-1]):
        n += b[..., v]
    return n


def _screen_pairs(P: np.ndarray, n: int = 3) -> list[tuple[int, int]]:
    """The ``n`` pairs of views whose optical axes are closest to perpendicular (stable order):
    the two-view hypotheses most likely to be supported by every view, tried first."""
    z = P[:, 2, :3]
    I, J = _pair_index(len(P))
    s = np.linalg.norm(np.cross(z[I], z[J]), axis=-1) / (
        np.linalg.norm(z[I], axis=-1) * np.linalg.norm(z[J], axis=-1))
    return [(int(I[k]), int(J[k])) for k in np.argsort(-s, kind="stable")[:n]]


def consensus_views(x: np.ndarray, P: np.ndarray, w: np.ndarray, focal: np.ndarray,
                    threshold_px: float, view_normal: np.ndarray | None = None) -> np.ndarray:
    """(..., V) bool: the views of each joint consistent with its best two-view hypothesis.

    Every pair of views triangulates a hypothesis (each pair's DLT normal matrix is the sum of
    its two views', :func:`geo.dlt_normal` with ``per_view``, which may be passed as
    ``view_normal`` (..., V, 10)); a view supports it when it sees the joint and reprojects
    within ``threshold_px``. Each joint keeps the support set of its best hypothesis (most
    views, then least clipped error, then the first pair): a RANSAC over view pairs, exhaustive
    because V is small.

    Fast path, same result: a hypothesis supported by every view that sees the joint is a best
    one, and every such hypothesis has the same support set (all those views). So a few
    well-conditioned pairs (:func:`_screen_pairs`) are tried in turn, each on the joints not yet
    settled that way; the rest (an outlier view, poorly conditioned pairs) go through all pairs
    (:func:`_consensus_all_pairs`).
    """
    V = x.shape[-2]
    P = np.asarray(P, dtype=np.float64)
    if V < 3 or P.ndim != 3:
        return _consensus_all_pairs(x, P, w, focal, threshold_px, view_normal)
    shape = w.shape[:-1]
    xf = np.asarray(x, dtype=np.float64).reshape(-1, V, 2)
    wb = np.asarray(w, dtype=bool).reshape(-1, V)
    seen = wb & np.isfinite(xf[..., 0]) & np.isfinite(xf[..., 1])
    wf = seen.astype(np.float64)
    vn = (geo.dlt_normal(xf, P, wf, per_view=True) if view_normal is None
          else np.asarray(view_normal).reshape(-1, V, 10))
    out = seen.copy()
    n_seen = _count(seen)
    rest = None  # None: every joint (no copies for the first pair); else the unsettled indices
    for a, b in _screen_pairs(P):
        if rest is not None and not len(rest):
            break
        sel = (lambda arr: arr) if rest is None else (lambda arr: arr[rest])  # noqa: E731
        wr, sr, xr, vr = sel(wf), sel(seen), sel(xf), sel(vn)
        wij = np.zeros_like(wr)
        wij[:, a], wij[:, b] = wr[:, a], wr[:, b]
        X = geo._dlt_finish(geo.solve_dlt_normal(vr[:, a] + vr[:, b]), xr, P, wij)
        e = _reprojection_px(X, xr, P, sel(wb), focal)
        with np.errstate(invalid="ignore"):
            done = sr[:, a] & sr[:, b] & (_count(e <= threshold_px) == sel(n_seen))
        rest = np.flatnonzero(~done) if rest is None else rest[~done]
    out[n_seen < 2] = False  # no pair: _consensus_all_pairs gives none
    if len(rest):
        out[rest] = _consensus_all_pairs(xf[rest], P, wb[rest], focal, threshold_px, vn[rest])
    return out.reshape(shape + (V,))


def _consensus_all_pairs(x: np.ndarray, P: np.ndarray, w: np.ndarray, focal: np.ndarray,
                    threshold_px: float, view_normal: np.ndarray | None = None) -> np.ndarray:
    """:func:`consensus_views` by evaluating every pair of views of every joint (the reference,
    and the path of the joints the screening pair does not settle).

    (..., V) bool: the views of each joint consistent with its best two-view hypothesis.

    Every pair of views triangulates a hypothesis (all V(V-1)/2 pairs of every joint in one
    pass: each pair's DLT normal matrix is the sum of its two views', :func:`geo.dlt_normal`
    with ``per_view``, which may be passed as ``view_normal`` (..., V, 10)); a view supports it
    when it sees the joint and reprojects within ``threshold_px``. Each joint keeps the support
    set of its best hypothesis (most views, then least clipped error, then the first pair): a
    RANSAC over view pairs, exhaustive because V is small.
    """
    V = x.shape[-2]
    wf = np.where(np.isfinite(x).all(-1), w.astype(np.float64), 0.0)
    if view_normal is None:
        view_normal = geo.dlt_normal(x, P, wf, per_view=True)
    I, J = _pair_index(V)
    wij = np.zeros(w.shape[:-1] + (len(I), V))                          # (..., K, V)
    wij[..., np.arange(len(I)), I] = wf[..., I]
    wij[..., np.arange(len(I)), J] = wf[..., J]
    M = view_normal[..., I, :] + view_normal[..., J, :]                  # (..., K, 10)
    X = geo._dlt_finish(geo.solve_dlt_normal(M), x[..., None, :, :], P, wij)  # (..., K, 3)
    wk = w[..., None, :]
    e = np.nan_to_num(_reprojection_px(X, x[..., None, :, :], P, wk, focal), nan=np.inf)
    sup = wk & (e <= threshold_px)                                       # (..., K, V)
    n = np.where((wij > 0).sum(-1) == 2, sup.sum(-1), -1)                # (..., K)
    cost = np.where(wk, np.minimum(e, threshold_px), 0).sum(-1)
    cost = np.where(n == n.max(-1, keepdims=True), cost, np.inf)
    k = np.argmin(cost, axis=-1)[..., None]
    best = np.take_along_axis(sup, k[..., None], axis=-2)[..., 0, :]
    return best & (np.take_along_axis(n, k, axis=-1) >= 0)


def _labels_pass(x: np.ndarray, P: np.ndarray, w: np.ndarray, view_normal: np.ndarray,
                 focal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DLT (from the views' normal matrices) + Gauss-Newton of the views ``w``; X (..., 3) and
    the reprojection error (..., V) in pixels (NaN where unused)."""
    wf = w.astype(np.float64)
    M = view_normal[..., 0, :] * wf[..., 0, None]
    for v in range(1, w.shape[-1]):
        M += view_normal[..., v, :] * wf[..., v, None]
    X = refine_points(geo._dlt_finish(geo.solve_dlt_normal(M), x, P, wf), x, P, w)
    return X, _reprojection_px(X, x, P, w, focal)


def multiview_labels(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                     mask_by_cam: Mapping[str, np.ndarray], focal_px: float | Mapping[str, float],
                     reproj_threshold_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-view triangulation robust to wrong detections, and label validity.

    Each joint's views are first reduced to the consensus set of its best two-view hypothesis
    (:func:`consensus_views`), then triangulated from all of them (DLT + Gauss-Newton); while
    the worst view still reprojects beyond ``reproj_threshold_px`` and three or more views
    remain, that view is dropped and the joint re-triangulated (only those joints). A joint is
    valid when at least two views remain, it lies in front of all of them and all reproject
    within the threshold.

    Returns:
        X (F, J, 3) in the common frame, valid (F, J) bool, reproj (F, J) worst used view (px).
    """
    cams, x, P, w = _stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([_focal(focal_px, c) for c in cams])
    n_seen = _count(w)
    view_normal = geo.dlt_normal(x, P, w, per_view=True)                 # (F, J, V, 10)
    cons = consensus_views(x, P, w, focal, reproj_threshold_px, view_normal)
    w = np.where((_count(cons) >= 2)[..., None], cons, w)
    X, e = _labels_pass(x, P, w, view_normal, focal)
    for _ in range(max(len(cams) - 2, 1)):
        em = np.where(w, np.nan_to_num(e, nan=np.inf), -np.inf)
        bad = (em.max(-1) > reproj_threshold_px) & (_count(w) >= 3)
        if not bad.any():
            break
        wb = w[bad]
        np.put_along_axis(wb, em[bad].argmax(-1)[..., None], False, axis=-1)
        w[bad] = wb
        X[bad], e[bad] = _labels_pass(x[bad], P, wb, view_normal[bad], focal)
    worst_e = np.max(np.where(w, np.nan_to_num(e, nan=np.inf), 0.0), axis=-1)
    depth = np.nan_to_num(X) @ P[:, 2, :3].T + P[:, 2, 3]
    front = _count(w & ~(depth > 0)) == 0
    n_used = _count(w)
    valid = (n_used >= 2) & np.isfinite(X).all(-1) & front & (worst_e <= reproj_threshold_px)
    valid &= 2 * n_used > n_seen  # a majority of the views agree; a tie is not guessed
    return X, valid, np.where(np.isfinite(worst_e), worst_e, np.inf)


# --- bundle adjustment --------------------------------------------------------------------------

def _reprojection_px(X: np.ndarray, x: np.ndarray, P: np.ndarray, w: np.ndarray,
                     focal: np.ndarray) -> np.ndarray:
    """(..., V) reprojection error in pixels (NaN where unobserved or X non-finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = _project(X, P) - x
        e = np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) * focal
    return np.where(w & np.isfinite(e), e, np.nan)


def _project(X: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(..., V, 2) normalised projections of points X (..., 3) by cameras P (V, 3, 4) (one
    matrix product) or (..., V, 3, 4)."""
    if P.ndim == 3:
        Y = (X @ P[:, :, :3].reshape(-1, 3).T + P[:, :, 3].reshape(-1)).reshape(
            X.shape[:-1] + P.shape[:1] + (3,))
    else:
        Y = (P[..., :3] @ X[..., None, :, None])[..., 0] + P[..., 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        return Y[..., :2] / Y[..., 2:3]


def project_multiview(X: np.ndarray, R_t_by_cam: Mapping[str, Pose]) -> dict[str, np.ndarray]:
    """camera -> (..., 2) normalised projection of points X (..., 3) given in the cameras'
    common frame (inf/NaN for a point on a camera's plane z = 0)."""
    cams = list(R_t_by_cam)
    P = np.stack([np.concatenate([R_t_by_cam[c][0], np.reshape(R_t_by_cam[c][1], (3, 1))], 1)
                  for c in cams])
    u = _project(np.asarray(X, dtype=np.float64), P)
    return {c: u[..., i, :] for i, c in enumerate(cams)}


def reprojection_errors_px(X: np.ndarray, x_norm_by_cam: Mapping[str, np.ndarray],
                           R_t_by_cam: Mapping[str, Pose],
                           mask_by_cam: Mapping[str, np.ndarray] | None,
                           focal_px: float | Mapping[str, float]) -> dict[str, np.ndarray]:
    """camera -> (F, J) reprojection error of X (F, J, 3) in pixels (NaN where not observed)."""
    cams, x, P, w = _stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([_focal(focal_px, c) for c in cams])
    e = _reprojection_px(X, x, P, w, focal)
    return {c: e[..., i] for i, c in enumerate(cams)}


@dataclass
class BundleLayout:
    """Where the cameras and the points lie in the parameter vector of bundle adjustment.

    The reference camera is fixed (no parameters). Every other camera has 6 parameters, a
    rotation-vector increment w (R = exp(w) R0) and a translation increment (t = t0 + dt),
    except the gauge camera: 5, w and 2 coordinates of t in the tangent plane of its sphere,
    renormalised to |t0| (so the global scale stays fixed). The points follow, 3 each. The
    parameters start at zero increments and the initial points (:meth:`pack`).

    Attributes:
        cams: every camera, in the order of the view axis; reference, gauge: camera ids (gauge
        None or "" when there is none); base_R (3, 3) / base_t (3,): the starting poses;
        sizes, offs: camera -> number of parameters / offset; n_cam: parameters of all cameras.
    """

    cams: list[str]
    reference: str
    gauge: str | None
    base_R: dict[str, np.ndarray]
    base_t: dict[str, np.ndarray]
    sizes: dict[str, int]
    offs: dict[str, int]
    n_cam: int
    gauge_norm: float
    basis: np.ndarray | None

    @classmethod
    def build(cls, cams: Sequence[str], R_t_by_cam: Mapping[str, Pose], reference: str,
              gauge: str | None) -> BundleLayout:
        """The layout of cameras ``cams`` starting at ``R_t_by_cam``."""
        base_R = {c: np.asarray(R_t_by_cam[c][0], dtype=np.float64) for c in cams}
        base_t = {c: np.asarray(R_t_by_cam[c][1], dtype=np.float64).reshape(3) for c in cams}
        free = [c for c in cams if c != reference]
        sizes = {c: (5 if c == gauge else 6) for c in free}
        offs, o = {}, 0
        for c in free:
            offs[c], o = o, o + sizes[c]
        gauge_norm = float(np.linalg.norm(base_t[gauge])) if gauge else 0.0
        basis = geo._tangent_basis(base_t[gauge] / gauge_norm) if gauge else None
        return cls(list(cams), reference, gauge, base_R, base_t, sizes, offs, o, gauge_norm,
                   basis)

    @property
    def free(self) -> list[str]:
        """The cameras with parameters (all but the reference), in view order."""
        return [c for c in self.cams if c != self.reference]

    def pack(self, points: np.ndarray) -> np.ndarray:
        """(n_cam + 3 N,) starting parameters: zero camera increments, then points (N, 3)."""
        return np.concatenate([np.zeros(self.n_cam), points.reshape(-1)])

    def points(self, p: np.ndarray) -> np.ndarray:
        """(N, 3) points of parameter vector ``p``."""
        return p[self.n_cam:].reshape(-1, 3)

    def poses(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every camera's (R (V, 3, 3), t (V, 3)) at parameters ``p``, in view order."""
        Rs, ts = [], []
        for c in self.cams:  # a handful of cameras
            if c == self.reference:
                Rs.append(self.base_R[c])
                ts.append(self.base_t[c])
                continue
            q = p[self.offs[c]:self.offs[c] + self.sizes[c]]
            Rs.append(geo._rotvec_to_matrix(q[:3]) @ self.base_R[c])
            if c == self.gauge:
                tt = self.base_t[c] + self.basis @ q[3:]
                ts.append(tt / np.linalg.norm(tt) * self.gauge_norm)
            else:
                ts.append(self.base_t[c] + q[3:])
        return np.stack(Rs), np.stack(ts)

    def gauge_translation_jacobian(self, p: np.ndarray) -> np.ndarray:
        """(3, 2) derivative of the gauge camera's t by its 2 tangent parameters."""
        o = self.offs[self.gauge]
        tt = self.base_t[self.gauge] + self.basis @ p[o + 3:o + 5]
        nrm = np.linalg.norm(tt)
        return self.gauge_norm / nrm * (np.eye(3) - np.outer(tt, tt) / nrm ** 2) @ self.basis


@dataclass
class BundleObservations:
    """The observations bundle adjustment fits: observation m sees point ``pi[m]`` in view
    ``vi[m]`` at ``obs[m]`` (normalised), with that view's focal length ``fpx[m]`` (pixels).
    Shapes (M,) and obs (M, 2)."""

    pi: np.ndarray
    vi: np.ndarray
    obs: np.ndarray
    fpx: np.ndarray


def bundle_project(p: np.ndarray, layout: BundleLayout, ob: BundleObservations
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every observation's projection at parameters ``p``.

    Returns:
        Rs (V, 3, 3) camera rotations, RX (M, 3) rotated points, u (M, 2) normalised
        projections, z (M,) depths (clamped away from 0).
    """
    Rs, ts = layout.poses(p)
    Xp = layout.points(p)
    RX = (Rs[ob.vi] @ Xp[ob.pi][..., None])[..., 0]
    Y = RX + ts[ob.vi]
    z = np.where(np.abs(Y[:, 2]) > 1e-12, Y[:, 2], 1e-12)
    return Rs, RX, Y[:, :2] / z[:, None], z


def bundle_residuals(p: np.ndarray, layout: BundleLayout, ob: BundleObservations) -> np.ndarray:
    """(2 M,) reprojection residuals in pixels (x, y of each observation in turn)."""
    _, _, u, _ = bundle_project(p, layout, ob)
    return ((u - ob.obs) * ob.fpx[:, None]).reshape(-1)


@dataclass
class JacobianPattern:
    """Sparsity of the bundle-adjustment Jacobian: residual pair m depends on its camera's
    parameters and its point's 3 coordinates. Entries (rows, cols) in the order
    :func:`bundle_jacobian` fills them; cam_obs: camera -> its observations (indices into M)."""

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    cam_obs: dict[str, np.ndarray]

    def matrix(self) -> sp.csr_matrix:
        """The pattern as a sparse 0/1 matrix (scipy's ``jac_sparsity``)."""
        return sp.csr_matrix((np.ones(len(self.rows), dtype=np.int8), (self.rows, self.cols)),
                             shape=self.shape)


def jacobian_pattern(layout: BundleLayout, ob: BundleObservations, n_points: int
                     ) -> JacobianPattern:
    """Non-zero entries of the (2 M, n_cam + 3 n_points) Jacobian (see :class:`JacobianPattern`)."""
    rows, cols = [], []
    M = len(ob.obs)
    r2 = np.repeat(np.arange(M) * 2, 2) + np.tile([0, 1], M)                 # (2M,)
    m_of_row = r2 // 2
    cam_obs = {}
    for c in layout.free:
        cam_obs[c] = np.flatnonzero(ob.vi == layout.cams.index(c))           # observations
        sel = np.flatnonzero(ob.vi[m_of_row] == layout.cams.index(c))        # their rows
        k = layout.sizes[c]
        rows.append(np.repeat(r2[sel], k))
        cols.append(np.tile(np.arange(layout.offs[c], layout.offs[c] + k), len(sel)))
    rows.append(np.repeat(r2, 3))
    cols.append((layout.n_cam + 3 * ob.pi[m_of_row][:, None] + np.arange(3)).reshape(-1))
    return JacobianPattern(np.concatenate(rows), np.concatenate(cols),
                           (2 * M, layout.n_cam + 3 * n_points), cam_obs)


def bundle_jacobian(p: np.ndarray, layout: BundleLayout, ob: BundleObservations,
                    pattern: JacobianPattern) -> sp.csr_matrix:
    """Analytic sparse (2 M, n_params) Jacobian of :func:`bundle_residuals` at ``p``."""
    Rs, RX, u, z = bundle_project(p, layout, ob)
    D = np.zeros((len(u), 2, 3))                          # d pixel / d Y
    D[:, 0, 0] = D[:, 1, 1] = ob.fpx / z
    D[:, :, 2] = -u * (ob.fpx / z)[:, None]
    data = []
    for c in layout.free:
        m = pattern.cam_obs[c]
        w = p[layout.offs[c]:layout.offs[c] + 3]
        # d(exp(w) R0 X)/dw = -[exp(w) R0 X]_x J_l(w)  (left Jacobian of SO(3))
        blocks = [D[m] @ (-geo.skew(RX[m]) @ _left_jacobian(w))]
        if c == layout.gauge:
            blocks.append(D[m] @ layout.gauge_translation_jacobian(p))
        else:
            blocks.append(D[m])
        data.append(np.concatenate(blocks, -1).reshape(-1))
    data.append((D @ Rs[ob.vi]).reshape(-1))
    return sp.csr_matrix((np.concatenate(data), (pattern.rows, pattern.cols)),
                         shape=pattern.shape)


def _left_jacobian(w: np.ndarray) -> np.ndarray:
    """(3, 3) left Jacobian of SO(3) at rotation vector w."""
    th = float(np.linalg.norm(w))
    K = geo.skew(w)
    if th < 1e-8:
        return np.eye(3) + 0.5 * K
    return np.eye(3) + (1 - np.cos(th)) / th ** 2 * K + (th - np.sin(th)) / th ** 3 * (K @ K)


def robust_cost(r: np.ndarray, loss: str, f_scale: float) -> float:
    """scipy's robust cost 0.5 f^2 sum rho((r / f)^2) of residual norms ``r`` (any shape)."""
    z = (r / f_scale) ** 2
    rho = {"linear": z, "soft_l1": 2 * (np.sqrt(1 + z) - 1), "huber":
           np.where(z <= 1, z, 2 * np.sqrt(z) - 1), "cauchy": np.log1p(z),
           "arctan": np.arctan(z)}[loss]
    return float(0.5 * f_scale ** 2 * rho.sum())


def _reference_and_gauge(cams: list[str], R_t_by_cam: Mapping[str, Pose],
                         reference: str | None, gauge: str | None) -> tuple[str, str | None]:
    """Defaults of :func:`bundle_adjust`: the reference is the camera with R = I, t = 0 (else
    the first); the gauge the non-reference camera with the largest |t|."""
    if reference is None:
        reference = next((c for c in cams if np.allclose(R_t_by_cam[c][0], np.eye(3)) and
                          np.allclose(R_t_by_cam[c][1], 0)), cams[0])
    free = [c for c in cams if c != reference]
    if gauge is None and free:
        gauge = max(free, key=lambda c: np.linalg.norm(R_t_by_cam[c][1]))
    return reference, gauge


def _bundle_problem(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                    mask_by_cam: Mapping[str, np.ndarray], focal_px: float | Mapping[str, float],
                    max_frames: int, seed: int
                    ) -> tuple[list[str], np.ndarray, np.ndarray, BundleObservations]:
    """The frames bundle adjustment uses (all, or ``max_frames`` drawn with ``seed``), their
    points triangulated with the starting cameras and the observations of those points.

    Returns:
        cams (view order), frames (Fs,), points (N, 3) seen by two views or more, observations.
    """
    cams, x, _, w = _stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([_focal(focal_px, c) for c in cams])
    F = x.shape[0]
    frames = np.arange(F)
    if F > max_frames:
        frames = np.sort(np.random.default_rng(seed).choice(F, max_frames, replace=False))
    X0 = triangulate_multiview({c: x_norm_by_cam[c][frames] for c in cams}, R_t_by_cam,
                               {c: mask_by_cam[c][frames] for c in cams})
    xf, wf = x[frames], w[frames]
    pts_ok = np.isfinite(X0).all(-1) & (wf.sum(-1) >= 2)                  # (Fs, J)
    obs_x, obs_w = xf[pts_ok], wf[pts_ok]                                # (N, V, 2), (N, V)
    pi, vi = np.nonzero(obs_w)                                           # observation index
    return cams, frames, X0[pts_ok], BundleObservations(pi, vi, obs_x[pi, vi], focal[vi])


def _jacobian_options(jac: str, layout: BundleLayout, ob: BundleObservations,
                      pattern: JacobianPattern) -> dict[str, Any]:
    """``least_squares`` keywords for ``jac`` (analytic, 2-point or 3-point)."""
    if jac == "analytic":
        return {"jac": partial(bundle_jacobian, layout=layout, ob=ob, pattern=pattern)}
    if jac in ("2-point", "3-point"):
        return {"jac": jac, "jac_sparsity": pattern.matrix()}
    raise ValueError(f"unknown jac {jac!r}; known: analytic, 2-point, 3-point")


def bundle_adjust(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                  mask_by_cam: Mapping[str, np.ndarray], focal_px: float | Mapping[str, float],
                  reference: str | None = None, gauge: str | None = None,
                  loss: str = "soft_l1", f_scale_px: float = 3.0, max_frames: int = 150,
                  max_nfev: int = 50, seed: int = 0, jac: str = "analytic"
                  ) -> tuple[dict[str, Pose], np.ndarray, dict[str, Any]]:
    """Robust bundle adjustment of cameras and points, then all frames triangulated.

    Cameras (except the reference, fixed at R = I, t = 0) and the points of up to ``max_frames``
    frames (an even, seeded subsample) are refined by ``scipy.optimize.least_squares`` on the
    reprojection error in pixels (:func:`bundle_residuals`) with a robust ``loss`` (soft_l1 /
    huber / cauchy, scale ``f_scale_px``) and a sparse Jacobian: analytic by default
    (:func:`bundle_jacobian`), or finite differences over the sparsity pattern
    (``jac="2-point"``, :func:`jacobian_pattern`), which the tests use to check the analytic
    one. The gauge camera's translation moves on its sphere (|t| fixed), so the global scale
    stays fixed (:class:`BundleLayout`). Then every frame is triangulated with the refined
    cameras (:func:`triangulate_multiview`).

    Args:
        x_norm_by_cam: camera -> (F, J, 2); R_t_by_cam: camera -> (R, t), e.g. from
        :func:`register_cameras`; mask_by_cam: camera -> (F, J); focal_px: float or per camera.
        reference: fixed camera (default: the one with R = I, t = 0, else the first);
        gauge: camera whose |t| is fixed (default: the non-reference camera with largest |t|).
    Returns:
        (cameras, X (F, J, 3), summary) with summary keys: initial_cost, final_cost,
        reproj_px_initial / reproj_px_final (median over observations of the BA frames),
        reproj_px_mean_initial / _final, n_frames, n_points, n_observations, nfev, seconds,
        status, message, reference, gauge.
    """
    t0 = time.perf_counter()
    cams, frames, pts, ob = _bundle_problem(x_norm_by_cam, R_t_by_cam, mask_by_cam, focal_px,
                                            max_frames, seed)
    reference, gauge = _reference_and_gauge(cams, R_t_by_cam, reference, gauge)
    layout = BundleLayout.build(cams, R_t_by_cam, reference, gauge)
    pattern = jacobian_pattern(layout, ob, len(pts))
    fun = partial(bundle_residuals, layout=layout, ob=ob)
    p0 = layout.pack(pts)
    r0 = fun(p0)
    res = least_squares(fun, p0, loss=loss, f_scale=f_scale_px, method="trf", x_scale="jac",
                        max_nfev=max_nfev, tr_solver="lsmr",
                        **_jacobian_options(jac, layout, ob, pattern))
    Rs, ts = layout.poses(res.x)
    cameras = {c: (Rs[i], ts[i]) for i, c in enumerate(cams)}
    X_all = triangulate_multiview(x_norm_by_cam, cameras, mask_by_cam)
    e0, e1 = np.hypot(r0[0::2], r0[1::2]), np.hypot(res.fun[0::2], res.fun[1::2])
    summary = {
        "initial_cost": robust_cost(e0, loss, f_scale_px), "final_cost": float(res.cost),
        "reproj_px_initial": float(np.median(e0)), "reproj_px_final": float(np.median(e1)),
        "reproj_px_mean_initial": float(e0.mean()), "reproj_px_mean_final": float(e1.mean()),
        "n_frames": int(len(frames)), "n_points": int(len(pts)),
        "n_observations": int(len(ob.obs)), "nfev": int(res.nfev),
        "seconds": time.perf_counter() - t0, "status": int(res.status),
        "message": str(res.message), "reference": reference, "gauge": gauge,
    }
    return cameras, X_all, summary


# --- the paper's fusion -------------------------------------------------------------------------

def fuse_pairs_vector_median(poses_by_pair: Mapping[Any, np.ndarray],
                             valid_by_pair: Mapping[Any, np.ndarray] | None = None
                             ) -> np.ndarray:
    """Fuse several pair triangulations of the same joints by the vector median (per joint).

    For every frame and joint, among the P candidate 3D points (one per camera pair, already in
    one frame and at one scale, e.g. root-relative and normalised), pick the candidate with the
    least summed Euclidean distance to the other candidates. Invalid or non-finite candidates
    take no part; with none left the result is NaN.

    Args:
        poses_by_pair: pair key -> (F, J, 3); valid_by_pair: pair key -> (F, J) bool or None.
    Returns:
        (F, J, 3).
    """
    keys = list(poses_by_pair)
    if not keys:
        raise ValueError("no pair poses to fuse")
    C = np.stack([np.asarray(poses_by_pair[k], dtype=np.float64) for k in keys])  # (P, F, J, 3)
    ok = np.isfinite(C).all(-1)
    if valid_by_pair is not None:
        ok &= np.stack([np.asarray(valid_by_pair[k], dtype=bool) for k in keys])
    Cz = np.where(ok[..., None], C, 0.0)
    D = np.linalg.norm(Cz[:, None] - Cz[None], axis=-1)                  # (P, P, F, J)
    D = np.where(ok[:, None] & ok[None], D, 0.0).sum(1)                  # (P, F, J)
    D = np.where(ok, D, np.inf)
    best = np.argmin(D, axis=0)                                          # (F, J)
    out = np.take_along_axis(Cz, best[None, ..., None], axis=0)[0]
    return np.where(ok.any(0)[..., None], out, np.nan)

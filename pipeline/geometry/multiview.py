"""All views of a subject at once: multi-view triangulation, consensus over views, and the paper's
vector-median fusion of pair triangulations.

With more than two static cameras every joint is seen by all views. DESIGN.md §4 asks for an
all-view solution that beats the paper's vector-median fusion of pair triangulations; this module
holds both. The cameras come from :mod:`pipeline.geometry.registration` and are refined by
:mod:`pipeline.geometry.bundle`.

Conventions: the first camera (or ``reference``) is the world frame, every camera pose maps it
to the camera: X_c = R_c @ X_ref + t_c (the reference has R = I, t = 0). The scale gauge is
|t| = 1 for one ``gauge`` camera, so everything is up to one global scale, exactly like a pair.
Inputs are dicts camera -> (F, J, 2) undistorted normalised coordinates and camera -> (F, J)
bool masks (confident joints), the same arrays :mod:`pipeline.geometry.epipolar` takes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.geometry import triangulation as tri

Pose = tuple[np.ndarray, np.ndarray]
"""(R (3, 3), t (3,)) of a camera: X_cam = R @ X_ref + t."""


# --- multi-view triangulation -------------------------------------------------------------------

def stack_views(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
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
    _, x, P, w = stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    X = tri._dlt(x, P, w)
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
            a00, a01, a02, a11, a12, a22, det = tri.sym3_adjugate(h00, h01, h02, h11, h12, h22)
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


def consensus_views(x: np.ndarray, P: np.ndarray, w: np.ndarray, focal: np.ndarray,
                    threshold_px: float | np.ndarray, view_normal: np.ndarray | None = None
                    ) -> np.ndarray:
    """(..., V) bool: the views of each joint consistent with its best two-view hypothesis
    (``threshold_px``: one, or (V,) one per view).

    Every pair of views triangulates a hypothesis (all V(V-1)/2 pairs of every joint in one
    pass: each pair's DLT normal matrix is the sum of its two views', :func:`tri.dlt_normal`
    with ``per_view``, which may be passed as ``view_normal`` (..., V, 10)); a view supports it
    when it sees the joint and reprojects within ``threshold_px``. Each joint keeps the support
    set of its best hypothesis (most views, then least clipped error, then the first pair): a
    RANSAC over view pairs, exhaustive because V is small. :func:`multiview_labels` runs it only
    on the joints whose all-view point does not already agree with every view.
    """
    V = x.shape[-2]
    wf = np.where(np.isfinite(x).all(-1), w.astype(np.float64), 0.0)
    if view_normal is None:
        view_normal = tri.dlt_normal(x, P, wf, per_view=True)
    I, J = _pair_index(V)
    K = len(I)
    wij = np.zeros(w.shape[:-1] + (K, V))                                # (..., K, V)
    wij[..., np.arange(K), I] = wf[..., I]
    wij[..., np.arange(K), J] = wf[..., J]
    M = view_normal[..., I, :] + view_normal[..., J, :]                  # (..., K, 10)
    X = tri._dlt_finish(tri.solve_dlt_normal(M), x[..., None, :, :], P, wij)  # (..., K, 3)
    wk = w[..., None, :]
    e = np.nan_to_num(reprojection_px(X, x[..., None, :, :], P, wk, focal), nan=np.inf)
    sup = wk & (e <= threshold_px)                                       # (..., K, V)
    pair_ok = (wf[..., I] > 0) & (wf[..., J] > 0)                        # (..., K)
    n = np.where(pair_ok, sup.sum(-1), -1)
    cost = np.where(wk, np.minimum(e, threshold_px), 0).sum(-1)
    cost = np.where(n == n.max(-1, keepdims=True), cost, np.inf)
    k = np.argmin(cost, axis=-1)[..., None]
    best = np.take_along_axis(sup, k[..., None], axis=-2)[..., 0, :]
    return best & (np.take_along_axis(n, k, axis=-1) >= 0)


def _dlt_of_views(x: np.ndarray, P: np.ndarray, w: np.ndarray, view_normal: np.ndarray
                  ) -> np.ndarray:
    """(..., 3) DLT points of the views ``w`` (..., V) from the views' normal matrices."""
    wf = w.astype(np.float64)
    M = view_normal[..., 0, :] * wf[..., 0, None]
    for v in range(1, w.shape[-1]):
        M += view_normal[..., v, :] * wf[..., v, None]
    return tri._dlt_finish(tri.solve_dlt_normal(M), x, P, wf)


def _labels_pass(x: np.ndarray, P: np.ndarray, w: np.ndarray, view_normal: np.ndarray,
                 focal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DLT (from the views' normal matrices) + Gauss-Newton of the views ``w``; X (..., 3) and
    the reprojection error (..., V) in pixels (NaN where unused)."""
    X = refine_points(_dlt_of_views(x, P, w, view_normal), x, P, w)
    return X, reprojection_px(X, x, P, w, focal)


def multiview_labels(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                     mask_by_cam: Mapping[str, np.ndarray], focal_px: float | Mapping[str, float],
                     reproj_threshold_px: float | Mapping[str, float]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All-view triangulation robust to wrong detections, and label validity.

    A joint whose all-view DLT point reprojects within ``reproj_threshold_px`` in every view
    that sees it keeps all those views (most joints: one DLT, no two-view hypotheses). The
    views of every other joint are reduced to the consensus set of its best two-view
    hypothesis (:func:`consensus_views`). Each joint is then triangulated from its views (DLT +
    Gauss-Newton, the all-view DLT point reused where the views are all it sees); while
    the worst view still reprojects beyond ``reproj_threshold_px`` and three or more views
    remain, that view is dropped and the joint re-triangulated (only those joints). A joint is
    valid when at least two views remain, it lies in front of all of them and all reproject
    within the threshold. ``reproj_threshold_px``: pixels, one for every view or camera ->
    its own (a view is then dropped, and judged, against its camera's threshold).

    Returns:
        X (F, J, 3) in the common frame, valid (F, J) bool, reproj (F, J) worst used view (px).
    """
    cams, x, P, w = stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([per_camera(focal_px, c) for c in cams])
    thr = np.array([per_camera(reproj_threshold_px, c) for c in cams])  # (V,)
    n_seen = _count(w)
    view_normal = tri.dlt_normal(x, P, w, per_view=True)                 # (F, J, V, 10)
    X0 = _dlt_of_views(x, P, w, view_normal)
    with np.errstate(invalid="ignore"):
        agree = (n_seen >= 2) & (_count(reprojection_px(X0, x, P, w, focal) <= thr) == n_seen)
    rest = ~agree & (n_seen >= 2)
    if rest.any():  # an outlier view (or a poorly conditioned all-view point): a RANSAC
        w_rest = w[rest]
        cons = consensus_views(x[rest], P, w_rest, focal, thr, view_normal[rest])
        w_rest = np.where((_count(cons) >= 2)[..., None], cons, w_rest)
        changed = (w_rest != w[rest]).any(-1)
        w[rest] = w_rest
        idx = tuple(i[changed] for i in np.nonzero(rest))
        X0[idx] = _dlt_of_views(x[idx], P, w[idx], view_normal[idx])
    X = refine_points(X0, x, P, w)
    e = reprojection_px(X, x, P, w, focal)
    for _ in range(max(len(cams) - 2, 1)):
        em = np.where(w, np.nan_to_num(e, nan=np.inf), -np.inf) / thr  # in thresholds
        bad = (em.max(-1) > 1.0) & (_count(w) >= 3)
        if not bad.any():
            break
        wb = w[bad]
        np.put_along_axis(wb, em[bad].argmax(-1)[..., None], False, axis=-1)
        w[bad] = wb
        X[bad], e[bad] = _labels_pass(x[bad], P, wb, view_normal[bad], focal)
    worst_e = np.max(np.where(w, np.nan_to_num(e, nan=np.inf), 0.0), axis=-1)
    within = _count(w & ~(np.nan_to_num(e, nan=np.inf) <= thr)) == 0
    depth = np.nan_to_num(X) @ P[:, 2, :3].T + P[:, 2, 3]
    front = _count(w & ~(depth > 0)) == 0
    n_used = _count(w)
    valid = (n_used >= 2) & np.isfinite(X).all(-1) & front & within
    valid &= 2 * n_used > n_seen  # a majority of the views agree; a tie is not guessed
    return X, valid, np.where(np.isfinite(worst_e), worst_e, np.inf)



# --- projection and reprojection -------------------------------------------------------------

def reprojection_px(X: np.ndarray, x: np.ndarray, P: np.ndarray, w: np.ndarray,
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
    cams, x, P, w = stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([per_camera(focal_px, c) for c in cams])
    e = reprojection_px(X, x, P, w, focal)
    return {c: e[..., i] for i, c in enumerate(cams)}



def per_camera(value: float | Mapping[str, float], cam: str) -> float:
    """Camera ``cam``'s value of a setting given once for every camera or as camera -> its own
    (focal lengths, validity thresholds)."""
    return float(value[cam]) if isinstance(value, Mapping) else float(value)


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

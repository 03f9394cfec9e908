"""Robust bundle adjustment of a registered rig: cameras and points refined together.

``scipy.optimize.least_squares`` over the camera poses (and focal lengths where asked) and the
points, with an analytic sparse Jacobian (:class:`BundleLayout` lays the parameters out,
:func:`bundle_residuals` and :func:`bundle_jacobian` are the problem, :func:`jacobian_pattern`
its sparsity). Conventions as in :mod:`pipeline.geometry.multiview`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import OptimizeResult, least_squares

from pipeline.geometry import epipolar as epi
from pipeline.geometry.multiview import Pose, per_camera, stack_views, triangulate_multiview


# --- bundle adjustment --------------------------------------------------------------------------

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
        basis = epi._tangent_basis(base_t[gauge] / gauge_norm) if gauge else None
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
            Rs.append(epi._rotvec_to_matrix(q[:3]) @ self.base_R[c])
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
        blocks = [D[m] @ (-epi.skew(RX[m]) @ _left_jacobian(w))]
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
    K = epi.skew(w)
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


def sample_frames(w: np.ndarray, max_frames: int, seed: int,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """(Fs,) sorted indices of the frames bundle adjustment fits: only frames with a joint that
    two views or more see (any other frame gives no point), at most ``max_frames`` of them,
    balanced over ``groups`` and over time within each group.

    Each group (a tracked person of a multi-person run, or a sequence: ``Views.group``) gets an
    equal share of ``max_frames`` (water-filling: a group with fewer usable frames gives its
    unused share to the others; with more groups than frames, a seeded choice of groups gets
    one frame each), taken evenly spaced over its usable frames with a seeded phase. Rows of
    several people concatenated on one frame axis are mostly empty (a short track is unseen
    on most of the sequence's frames), so a uniform draw over all rows could hold no person
    at all.

    Args:
        w: (F, J, V) bool, joint seen by view; groups: (F,) int, or None for one group.
    """
    usable = np.flatnonzero((w.sum(-1) >= 2).any(-1))
    if len(usable) <= max_frames:
        return usable
    g = np.zeros(len(w), np.int64) if groups is None else np.asarray(groups)
    _, inv = np.unique(g[usable], return_inverse=True)
    count = np.bincount(inv)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(count))
    order = order[np.argsort(count[order], kind="stable")]  # fewest usable frames first
    share, left = np.zeros(len(count), np.int64), max_frames
    for n, k in enumerate(order):
        share[k] = min(count[k], -(-left // (len(order) - n)))  # ceil: sum stays <= max_frames
        left -= share[k]
    picks = []
    for k in np.flatnonzero(share):
        rows = usable[inv == k]
        step = len(rows) / share[k]
        picks.append(rows[(rng.uniform(0, step) + step * np.arange(share[k])).astype(np.int64)])
    return np.sort(np.concatenate(picks))


def _bundle_problem(x_norm_by_cam: Mapping[str, np.ndarray], R_t_by_cam: Mapping[str, Pose],
                    mask_by_cam: Mapping[str, np.ndarray], focal_px: float | Mapping[str, float],
                    max_frames: int, seed: int, groups: np.ndarray | None = None
                    ) -> tuple[list[str], np.ndarray, np.ndarray, BundleObservations]:
    """The frames bundle adjustment uses (:func:`sample_frames`), their points triangulated
    with the starting cameras and the observations of those points.

    Returns:
        cams (view order), frames (Fs,), points (N, 3) seen by two views or more (N may be 0),
        observations.
    """
    cams, x, _, w = stack_views(x_norm_by_cam, R_t_by_cam, mask_by_cam)
    focal = np.array([per_camera(focal_px, c) for c in cams])
    frames = sample_frames(w, max_frames, seed, groups)
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
                  max_nfev: int = 100, seed: int = 0, jac: str = "analytic",
                  groups: np.ndarray | None = None
                  ) -> tuple[dict[str, Pose], np.ndarray, dict[str, Any]]:
    """Robust bundle adjustment of cameras and points, then all frames triangulated.

    Cameras (except the reference, fixed at R = I, t = 0) and the points of up to ``max_frames``
    frames (those two views see, balanced over ``groups`` and time: :func:`sample_frames`) are
    refined by ``scipy.optimize.least_squares`` on the reprojection error in pixels
    (:func:`bundle_residuals`) with a robust ``loss`` (soft_l1 / huber / cauchy, scale
    ``f_scale_px``) and a sparse Jacobian: analytic by default (:func:`bundle_jacobian`), or
    finite differences over the sparsity pattern (``jac="2-point"``, :func:`jacobian_pattern`),
    which the tests use to check the analytic one. The gauge camera's translation moves on its sphere (|t| fixed), so the global scale
    stays fixed (:class:`BundleLayout`). Then every frame is triangulated with the refined
    cameras (:func:`triangulate_multiview`). Without any joint that two views see there is
    nothing to adjust: the cameras come back as given, the figures NaN and ``status`` 0.

    Args:
        x_norm_by_cam: camera -> (F, J, 2); R_t_by_cam: camera -> (R, t), e.g. from
        :func:`register_cameras`; mask_by_cam: camera -> (F, J); focal_px: float or per camera.
        reference: fixed camera (default: the one with R = I, t = 0, else the first);
        gauge: camera whose |t| is fixed (default: the non-reference camera with largest |t|).
        groups: (F,) each frame row's person (track) or sequence (:func:`sample_frames`).
    Returns:
        (cameras, X (F, J, 3), summary) with summary keys: initial_cost, final_cost,
        reproj_px_initial / reproj_px_final (median over observations of the BA frames),
        reproj_px_mean_initial / _final, n_frames, n_groups (groups among them), n_points,
        n_observations, nfev, seconds, status, message, reference, gauge.
    """
    t0 = time.perf_counter()
    cams, frames, pts, ob = _bundle_problem(x_norm_by_cam, R_t_by_cam, mask_by_cam, focal_px,
                                            max_frames, seed, groups)
    reference, gauge = _reference_and_gauge(cams, R_t_by_cam, reference, gauge)
    layout = BundleLayout.build(cams, R_t_by_cam, reference, gauge)
    pattern = jacobian_pattern(layout, ob, len(pts))
    fun = partial(bundle_residuals, layout=layout, ob=ob)
    p0 = layout.pack(pts)
    r0 = fun(p0)
    if len(pts):
        res = least_squares(fun, p0, loss=loss, f_scale=f_scale_px, method="trf",
                            x_scale="jac", max_nfev=max_nfev, tr_solver="lsmr",
                            **_jacobian_options(jac, layout, ob, pattern))
    else:  # nothing to adjust: least_squares' own result of a converged problem, by hand
        res = OptimizeResult(x=p0, fun=r0, cost=0.0, nfev=0, status=0,
                             message="no joint seen by two views: nothing adjusted")
    Rs, ts = layout.poses(res.x)
    cameras = {c: (Rs[i], ts[i]) for i, c in enumerate(cams)}
    X_all = triangulate_multiview(x_norm_by_cam, cameras, mask_by_cam)
    e0, e1 = np.hypot(r0[0::2], r0[1::2]), np.hypot(res.fun[0::2], res.fun[1::2])
    n_groups = len(np.unique(np.asarray(groups)[frames])) if groups is not None else 1
    return cameras, X_all, {
        "initial_cost": robust_cost(e0, loss, f_scale_px), "final_cost": float(res.cost),
        **_figures(e0, "initial"), **_figures(e1, "final"),
        "n_frames": int(len(frames)), "n_groups": int(n_groups) if len(frames) else 0,
        "n_points": int(len(pts)), "n_observations": int(len(ob.obs)), "nfev": int(res.nfev),
        "seconds": time.perf_counter() - t0, "status": int(res.status),
        "message": str(res.message), "reference": reference, "gauge": gauge}


def _figures(e: np.ndarray, when: str) -> dict[str, float]:
    """reproj_px_<when> (median) and reproj_px_mean_<when> of residual norms ``e`` (pixels);
    NaN for none (no warning)."""
    if not len(e):
        return {f"reproj_px_{when}": float("nan"), f"reproj_px_mean_{when}": float("nan")}
    return {f"reproj_px_{when}": float(np.median(e)), f"reproj_px_mean_{when}": float(e.mean())}

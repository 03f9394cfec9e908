"""All cameras of a subject in one frame: registration from the pair geometries.

With more than two static cameras the pairs are not independent: their rotations compose around
loops (:mod:`pipeline.geometry.loops`). Registration chains the pair fits into one frame, fuses
each rotation over the direct pair and the two-hop paths, and fixes the relative scales of the
translations through shared triangulated points. Conventions as in
:mod:`pipeline.geometry.multiview` (``X_c = R_c @ X_ref + t_c``, scale gauge |t| = 1 for one camera).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.geometry import epipolar as epi
from pipeline.geometry import loops as cam_loops
from pipeline.geometry import triangulation as tri
from pipeline.geometry.cameras import rotation_angle_deg
from pipeline.geometry.multiview import Pose, per_camera


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
    pairs: list[epi.PairGeometry]
    loops: cam_loops.LoopReport
    ok: bool
    reasons: dict[str, str] = field(default_factory=dict)



def fit_all_pairs(x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                  threshold_px: float, focal_px: float | Mapping[str, float],
                  method: str = "usac_magsac", seed: int = 0) -> list[epi.PairGeometry]:
    """Pooled geometry of every camera pair (i < j in dict order); the threshold is converted
    with the mean focal length of the two cameras."""
    cams = list(x_norm)
    out = []
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            f = 0.5 * (per_camera(focal_px, a) + per_camera(focal_px, b))
            out.append(epi.fit_pair_pooled(x_norm[a], x_norm[b], mask[a] & mask[b], threshold_px,
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


def _rotations(cams: Sequence[str], ref: str, look: Mapping[tuple[str, str], epi.PairGeometry]
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
    a = epi.homogeneous(xa) @ R.T
    b = epi.homogeneous(xb)
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
    xh = epi.homogeneous(x)
    S = epi.skew(xh)                                          # (N, 3, 3)
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
                              seed: int = 0, pairs: list[epi.PairGeometry] | None = None
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
    pairs = cam_loops.resolve_loops(pairs, x_norm, mask)
    loops = cam_loops.check_loops(pairs)
    look = cam_loops.pair_lookup(pairs)
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
    X = tri.triangulate(x_norm[ref], x_norm[gauge], rots[gauge], g.t)
    use = both[gauge] & np.isfinite(X).all(-1)
    if g.inliers is not None:
        use &= g.inliers
    for c in cams:
        if c in cameras or c not in rots:
            continue
        m = use & mask[c] & np.isfinite(x_norm[c]).all(-1)
        if m.sum() < epi.MIN_CORRESPONDENCES:
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
    (:func:`pipeline.geometry.loops.resolve_loops`); each rotation fused from the direct pair and every
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

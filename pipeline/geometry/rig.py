"""One object for the cameras of one subject: :class:`CameraRig`.

In the manner of aniposelib's ``CameraGroup``: the poses and focal lengths travel together, so
callers stop passing parallel dicts (camera -> (R, t), camera -> focal) between modules. The
math is :mod:`pipeline.geometry.multiview`'s vectorised functions; every method here is a thin wrapper.

Conventions (those of :mod:`pipeline.geometry.multiview`): a pose maps the rig's common frame to the
camera, X_cam = R @ X + t; a self-calibrated rig's reference camera has R = I, t = 0 and the
whole rig is known up to one global scale (the gauge camera has |t| = 1). Observations are
dicts camera -> (..., J, 2) undistorted normalised coordinates and masks camera -> (..., J)
bool; cameras missing from the rig (or from the observations) take no part.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.geometry import bundle as ba
from pipeline.geometry import epipolar as epi
from pipeline.geometry import multiview as mv
from pipeline.geometry import registration
from pipeline.geometry.cameras import relative_pose, rotation_error_deg

Pose = mv.Pose
"""(R (3, 3), t (3,)): X_cam = R @ X + t."""


@dataclass
class RigCheck:
    """A fitted rig against its own data (:meth:`CameraRig.check`).

    Attributes:
        reproj_px: camera -> median reprojection error in pixels of the joints it sees, each
            triangulated from every view that sees it with the rig (every frame, not only the
            frames a bundle adjustment fitted); NaN where no joint it sees has another view.
        pair_deg: camera -> the smallest angle between the rig's rotation to a partner and
            that camera pair's own fit, over its usable pairs (NaN: none).
        reasons: camera -> why the rig fails it; empty when every camera passes.
    """

    reproj_px: dict[str, float]
    pair_deg: dict[str, float]
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CameraRig:
    """The cameras of one subject in one common frame.

    Attributes:
        poses: camera -> (R (3, 3), t (3,)), world (common frame) -> camera, in camera order.
        focal: camera -> focal length in pixels (residuals and thresholds are in pixels); one
            float is accepted for all cameras.
        gauge: the camera whose |t| fixes the scale of a self-calibrated rig ("" or None when
            none); only informative, :meth:`bundle_adjust` takes its gauge explicitly.
    """

    poses: dict[str, Pose]
    focal: dict[str, float]
    gauge: str | None = None

    def __post_init__(self) -> None:
        poses = {str(c): (np.asarray(R, np.float64).reshape(3, 3),
                          np.asarray(t, np.float64).reshape(3)) for c, (R, t) in self.poses.items()}
        object.__setattr__(self, "poses", poses)
        object.__setattr__(self, "focal", _focal_dict(self.focal, poses))

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def register(cls, x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                 threshold_px: float, focal: float | Mapping[str, float], seed: int = 0,
                 pairs: list[epi.PairGeometry] | None = None, reference: str | None = None,
                 method: str = "usac_magsac") -> tuple[CameraRig, dict[str, str]]:
        """Self-calibrate the rig from 2D observations
        (:func:`multiview.register_cameras_detailed`).

        Args:
            x_norm: camera -> (F, J, 2) normalised; mask: camera -> (F, J) bool;
            threshold_px: RANSAC threshold (pixels); focal: pixels, one or per camera;
            pairs: pooled pair fits to reuse (e.g. the job's), else fitted here.
        Returns:
            (rig of the registered cameras, reference first, up to scale; camera -> why it
            could not be registered, empty when all were).
        """
        reg = registration.register_cameras_detailed(x_norm, mask, threshold_px, focal, reference,
                                                     method, seed, pairs)
        return cls(reg.cameras, focal, reg.gauge), dict(reg.reasons)

    @classmethod
    def from_json(cls, d: Mapping[str, Mapping[str, Any]], focal: float | Mapping[str, float],
                  gauge: str | None = None) -> CameraRig:
        """A rig from ``{camera: {"R": 3x3 nested list, "t": [3]}}`` (one subject's entry of a
        run's ``cameras.json``) and focal length(s) in pixels."""
        poses = {str(c): (np.asarray(v["R"], np.float64).reshape(3, 3),
                          np.asarray(v["t"], np.float64).reshape(3)) for c, v in d.items()}
        return cls(poses, focal, gauge)

    def to_json(self) -> dict[str, dict[str, list]]:
        """``{camera: {"R": 3x3 nested list, "t": [3]}}``, the format of ``cameras.json``
        (floats round-trip exactly through JSON; focal lengths are not written)."""
        return {c: {"R": R.tolist(), "t": t.tolist()} for c, (R, t) in self.poses.items()}

    # --- cameras --------------------------------------------------------------------------------

    @property
    def cameras(self) -> tuple[str, ...]:
        """Camera ids in rig order (the reference first for a registered rig)."""
        return tuple(self.poses)

    @property
    def reference(self) -> str:
        """The camera whose frame is the rig's frame (R = I, t = 0), else the first camera."""
        return next((c for c, (R, t) in self.poses.items()
                     if np.allclose(R, np.eye(3)) and np.allclose(t, 0)), self.cameras[0])

    def __len__(self) -> int:
        return len(self.poses)

    def __contains__(self, cam: object) -> bool:
        return cam in self.poses

    def subset(self, names: Iterable[str]) -> CameraRig:
        """The rig of cameras ``names`` (in that order); an unknown name raises KeyError."""
        names = list(names)
        unknown = [c for c in names if c not in self.poses]
        if unknown:
            raise KeyError(f"cameras {unknown} not in the rig {list(self.cameras)}")
        gauge = self.gauge if self.gauge in names else None
        return CameraRig({c: self.poses[c] for c in names}, {c: self.focal[c] for c in names},
                         gauge)

    def relative(self, a: str, b: str) -> Pose:
        """Pose (R (3, 3), t (3,)) of camera ``b`` relative to camera ``a``: X_b = R X_a + t."""
        return relative_pose(*self.poses[a], *self.poses[b])

    def in_frame(self, X: np.ndarray, cam: str) -> np.ndarray:
        """(..., 3) points X (..., 3) of the rig's frame in camera ``cam``'s frame (X R^T + t)."""
        R, t = self.poses[cam]
        return np.asarray(X, np.float64) @ R.T + t

    # --- points ---------------------------------------------------------------------------------

    def project(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """camera -> (..., J, 2) normalised projections of X (..., J, 3) in the rig's frame."""
        return mv.project_multiview(X, self.poses)

    def triangulate(self, x_norm: Mapping[str, np.ndarray],
                    mask: Mapping[str, np.ndarray] | None = None,
                    refine_iterations: int = 3) -> np.ndarray:
        """(..., J, 3) points in the rig's frame from every view that sees them
        (:func:`multiview.triangulate_multiview`: batched DLT + Gauss-Newton on the image
        error); NaN where fewer than two views see a joint. x_norm: camera -> (..., J, 2);
        mask: camera -> (..., J) bool or None for all."""
        return mv.triangulate_multiview(x_norm, self.poses, mask, refine_iterations)

    def reprojection_error_px(self, X: np.ndarray, x_norm: Mapping[str, np.ndarray],
                              mask: Mapping[str, np.ndarray] | None = None
                              ) -> dict[str, np.ndarray]:
        """camera -> (..., J) reprojection error in pixels of X (..., J, 3) against the
        observations x_norm (camera -> (..., J, 2)); NaN where not observed."""
        return mv.reprojection_errors_px(X, x_norm, self.poses, mask, self.focal)

    def labels(self, x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
               reproj_threshold_px: float | Mapping[str, float]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pseudo-3D labels robust to wrong detections (:func:`multiview.multiview_labels`;
        the validity threshold in pixels, one or camera -> its own).

        Returns:
            X (F, J, 3) in the rig's frame, valid (F, J) bool, reproj (F, J) worst reprojection
            error of the views used (pixels; inf where none).
        """
        return mv.multiview_labels(x_norm, self.poses, mask, self.focal, reproj_threshold_px)

    def check(self, x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
              pairs: Iterable[epi.PairGeometry], max_reproj_px: float | Mapping[str, float],
              max_pair_deg: float, X: np.ndarray | None = None) -> RigCheck:
        """The rig's own reprojection and loop checks (:class:`RigCheck`): a camera fails when
        the median reprojection error of the joints it sees exceeds ``max_reproj_px`` (pixels,
        one or camera -> its own), or cannot be measured, or when its rotation disagrees by more
        than ``max_pair_deg`` with every usable pair fit (``pairs``, ok ones) that links it to
        another camera of the rig.

        Args:
            x_norm: camera -> (F, J, 2); mask: camera -> (F, J) bool; X: (F, J, 3) the points
                triangulated with this rig (e.g. :meth:`bundle_adjust`'s), else computed here.
        """
        cams = [c for c in self.cameras if c in x_norm]
        X = self.triangulate(x_norm, mask) if X is None else X
        err = self.reprojection_error_px(X, {c: x_norm[c] for c in cams}, mask)
        reproj = {c: float(np.median(e[np.isfinite(e)])) if np.isfinite(e).any()
                  else float("nan") for c, e in err.items()}
        fits = [g for g in pairs if g.ok and g.cam_a in self and g.cam_b in self]
        pair_deg = {}
        for c in cams:
            d = [float(rotation_error_deg(self.relative(g.cam_a, g.cam_b)[0], g.R))
                 for g in fits if c in (g.cam_a, g.cam_b)]
            pair_deg[c] = min(d) if d else float("nan")
        reasons = {}
        for c in cams:
            why = []
            limit = mv.per_camera(max_reproj_px, c)
            if not reproj[c] <= limit:
                why.append(f"median reprojection error {reproj[c]:.1f} px > {limit:g} px"
                           if np.isfinite(reproj[c]) else "no joint it sees has a second view")
            if pair_deg[c] > max_pair_deg:
                why.append(f"its rotation disagrees with every pair fit by more than "
                           f"{max_pair_deg:g} deg (best {pair_deg[c]:.1f} deg)")
            if why:
                reasons[c] = f"camera {c}: " + " and ".join(why)
        return RigCheck(reproj, pair_deg, reasons)

    def bundle_adjust(self, x_norm: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                      reference: str | None = None, seed: int = 0, gauge: str | None = None,
                      **options: Any) -> tuple[CameraRig, np.ndarray, dict[str, Any]]:
        """Refine the rig and the points by robust bundle adjustment
        (:func:`bundle.bundle_adjust`).

        Args:
            x_norm: camera -> (F, J, 2); mask: camera -> (F, J) bool;
            reference: fixed camera (default: the one with R = I, t = 0, else the first);
            gauge: camera whose |t| is kept (default: the non-reference one with largest |t|;
                pass ``rig.gauge`` to keep the registration's);
            options: loss, f_scale_px, max_frames, max_nfev, jac, groups of the function.
        Returns:
            (refined rig, X (F, J, 3) every frame triangulated with it, summary dict).
        """
        poses, X, info = ba.bundle_adjust(x_norm, self.poses, mask, self.focal,
                                          reference=reference, gauge=gauge, seed=seed, **options)
        return CameraRig(poses, {c: self.focal[c] for c in poses}, info["gauge"]), X, info


def _focal_dict(focal: float | Mapping[str, float], cams: Iterable[str]) -> dict[str, float]:
    """camera -> focal length from one value or a mapping (a camera missing from it raises)."""
    if not isinstance(focal, Mapping):
        return {c: float(focal) for c in cams}
    missing = [c for c in cams if c not in focal]
    if missing:
        raise KeyError(f"no focal length for cameras {missing} (have {list(focal)})")
    return {c: float(focal[c]) for c in cams}

"""Camera math: small, pure, batched numpy functions.

Conventions (the same as ``h36m_cameras.json``):
    X_cam = R @ X_world + t           R: (3, 3) world->camera rotation, t: (3,) in mm
    camera centre C = -R.T @ t
    pixels: x right, y down; K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    distortion: OpenCV order [k1, k2, p1, p2, k3]

Every function takes any leading batch shape ``(..., 3)`` or ``(..., 2)`` and works on the
last axis, so one call handles a point, a pose (J, 3) or a sequence (F, J, 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Camera:
    """One camera: intrinsics, distortion and (optionally) extrinsics.

    Attributes:
        name: camera id as in the manifest.
        K: (3, 3) intrinsic matrix.
        dist: (5,) distortion [k1, k2, p1, p2, k3].
        width, height: image size in pixels.
        R: (3, 3) world->camera rotation or None when uncalibrated.
        t: (3,) world->camera translation (mm) or None.
    """

    name: str
    K: np.ndarray
    dist: np.ndarray
    width: int
    height: int
    R: np.ndarray | None = None
    t: np.ndarray | None = None

    @property
    def has_extrinsics(self) -> bool:
        return self.R is not None and self.t is not None

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        self._need_extrinsics()
        return -self.R.T @ self.t

    def _need_extrinsics(self) -> None:
        if not self.has_extrinsics:
            raise ValueError(f"camera {self.name!r} has no extrinsics")

    def world_to_camera(self, X: np.ndarray) -> np.ndarray:
        self._need_extrinsics()
        return world_to_camera(X, self.R, self.t)

    def project_world(self, X: np.ndarray) -> np.ndarray:
        """(..., 3) world points -> (..., 2) distorted pixels."""
        return project(self.world_to_camera(X), self.K, self.dist)

    def scaled(self, s: float) -> "Camera":
        """The same camera with the image resized by ``s`` (intrinsics scaled, pose kept)."""
        return Camera(self.name, scale_intrinsics(self.K, s), self.dist.copy(),
                      int(round(self.width * s)), int(round(self.height * s)), self.R, self.t)


def intrinsic_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(K: np.ndarray, s: float) -> np.ndarray:
    """Intrinsics of the image resized by ``s``. Pixel centres follow OpenCV's resize:
    a pixel at u maps to (u + 0.5) * s - 0.5."""
    K2 = K.astype(np.float64).copy()
    K2[0, 0] *= s
    K2[1, 1] *= s
    K2[0, 2] = (K[0, 2] + 0.5) * s - 0.5
    K2[1, 2] = (K[1, 2] + 0.5) * s - 0.5
    return K2


def world_to_camera(X: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (..., 3) camera-frame points."""
    assert X.shape[-1] == 3
    return X @ np.asarray(R).T + np.asarray(t)


def camera_to_world(Xc: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 3) world points."""
    assert Xc.shape[-1] == 3
    return (Xc - np.asarray(t)) @ np.asarray(R)


def relative_pose(R1: np.ndarray, t1: np.ndarray, R2: np.ndarray, t2: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pose of camera 2 relative to camera 1: X_c2 = R @ X_c1 + t."""
    R = R2 @ R1.T
    return R, t2 - R @ t1


def distort_normalized(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Apply OpenCV's radial-tangential model to (..., 2) normalised coordinates."""
    k1, k2, p1, p2, k3 = (float(v) for v in np.asarray(dist, dtype=np.float64).reshape(-1)[:5])
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def project(Xc: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) pixels, OpenCV distortion model.

    Matches ``cv2.projectPoints(Xc, 0, 0, K, dist)`` for points in front of the camera.
    """
    assert Xc.shape[-1] == 3
    xy = Xc[..., :2] / Xc[..., 2:3]
    if dist is not None and np.any(np.asarray(dist) != 0):
        xy = distort_normalized(xy, dist)
    return xy @ K[:2, :2].T + K[:2, 2]


_EYE3 = np.eye(3)
"""Camera matrix of normalised coordinates (OpenCV undistorts already-normalised points)."""


def pixels_to_normalized(uv: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None
                         ) -> np.ndarray:
    """(..., 2) distorted pixels -> (..., 2) undistorted normalised coordinates (z = 1 plane).

    Distortion is inverted by OpenCV's ``cv2.undistortPoints`` at its default 5 fixed-point
    iterations (which alone leave up to ~1e-5 px towards the corners), then one Newton step on
    the radial-tangential model (:func:`_newton_undistort`), which brings the point within
    1e-9 px of the exact inverse (~1e-13 typically) at about three quarters of the cost of
    running OpenCV's iteration to convergence. Models with rational or thin-prism terms (more
    than 5 non-zero coefficients) run OpenCV's iteration to convergence. K's skew is honoured.
    """
    assert uv.shape[-1] == 2
    shape = uv.shape
    pts = np.asarray(uv, np.float64).reshape(-1, 2)
    K = np.asarray(K, np.float64)
    ty = (pts[:, 1] - K[1, 2]) / K[1, 1]
    tx = (pts[:, 0] - K[0, 2] - K[0, 1] * ty) / K[0, 0]  # distorted normalised, skew included
    d = np.asarray(dist if dist is not None else np.zeros(5), np.float64).reshape(-1)
    d = np.pad(d, (0, max(0, 5 - d.size)))  # (k1, k2, p1, p2) means k3 = 0
    if not np.any(d != 0):
        return np.stack([tx, ty], axis=-1).reshape(shape)
    target = np.stack([tx, ty], axis=-1).reshape(-1, 1, 2)
    if d.size > 5 and np.any(d[5:] != 0):
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        return cv2.undistortPoints(target, _EYE3, d, criteria=criteria).reshape(shape)
    start = cv2.undistortPoints(target, _EYE3, d[:5]).reshape(-1, 2)
    return _newton_undistort(start, tx, ty, d[:5]).reshape(shape)



def _newton_undistort(xy: np.ndarray, tx: np.ndarray, ty: np.ndarray, dist: np.ndarray
                      ) -> np.ndarray:
    """One Newton step towards ``distort_normalized(xy) == (tx, ty)`` from (N, 2) ``xy``
    (the 2x2 Jacobian of the radial-tangential model, solved in closed form per point)."""
    k1, k2, p1, p2, k3 = (float(v) for v in dist)
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
    ex = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - tx
    ey = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - ty
    a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x  # d xd / d x
    b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y  # d xd / d y = d yd / d x
    c = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x  # d yd / d y
    det = a * c - b * b
    return np.stack([x - (c * ex - b * ey) / det, y - (a * ey - b * ex) / det], axis=-1)


def undistort_pixels(uv: np.ndarray, K: np.ndarray, dist: np.ndarray | None) -> np.ndarray:
    """(..., 2) distorted pixels -> (..., 2) pixels of the ideal pinhole camera with the same K."""
    xy = pixels_to_normalized(uv, K, dist)
    return xy @ K[:2, :2].T + K[:2, 2]


def unproject(uv: np.ndarray, depth: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None
              ) -> np.ndarray:
    """(..., 2) pixels and (...) depths (z in camera frame) -> (..., 3) camera-frame points."""
    xy = pixels_to_normalized(uv, K, dist)
    return np.concatenate([xy * depth[..., None], depth[..., None]], axis=-1)


# --- crops -------------------------------------------------------------------------------------

def crop_affine(center: np.ndarray, box_size: float | np.ndarray, out_size: int,
                rotation_deg: float | np.ndarray = 0.0) -> np.ndarray:
    """(2, 3) affine (or (..., 2, 3) batched) mapping image pixels into an ``out_size`` square crop.

    The square of side ``box_size`` pixels centred at ``center`` (rotated by ``rotation_deg``
    counter-clockwise in the image) fills the crop. Pixel centres are mapped exactly: the box
    centre lands on ``(out_size - 1) / 2``.
    """
    center = np.asarray(center, dtype=np.float64)
    box = np.asarray(box_size, dtype=np.float64)
    rot = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    s = out_size / box
    c, sn = np.cos(rot) * s, np.sin(rot) * s
    A = np.zeros(np.broadcast_shapes(center.shape[:-1], box.shape, rot.shape) + (2, 3))
    A[..., 0, 0], A[..., 0, 1] = c, sn
    A[..., 1, 0], A[..., 1, 1] = -sn, c
    half = (out_size - 1) / 2.0
    A[..., 0, 2] = half - (A[..., 0, 0] * center[..., 0] + A[..., 0, 1] * center[..., 1])
    A[..., 1, 2] = half - (A[..., 1, 0] * center[..., 0] + A[..., 1, 1] * center[..., 1])
    return A


def apply_affine(pts: np.ndarray, A: np.ndarray) -> np.ndarray:
    """(..., N, 2) points through (..., 2, 3) affine(s) -> (..., N, 2)."""
    return pts @ np.swapaxes(A[..., :, :2], -1, -2) + A[..., None, :, 2]


def invert_affine(A: np.ndarray) -> np.ndarray:
    """Inverse of a (..., 2, 3) affine."""
    M = np.linalg.inv(A[..., :, :2])
    out = np.empty_like(A, dtype=np.float64)
    out[..., :, :2] = M
    out[..., :, 2] = -(M @ A[..., :, 2:3])[..., 0]
    return out


def box_from_points(uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """(..., J, 2) points -> (..., 4) box [x_min, y_min, x_max, y_max] grown by ``margin``
    (a fraction of the larger side) on every side. NaN points are ignored."""
    lo = np.nanmin(uv, axis=-2)
    hi = np.nanmax(uv, axis=-2)
    pad = (hi - lo).max(axis=-1, keepdims=True) * margin
    return np.concatenate([lo - pad, hi + pad], axis=-1)


def box_to_square(box: np.ndarray, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4) boxes -> centres (..., 2) and side lengths (...) of the enclosing square, grown
    by ``margin`` (fraction of the side)."""
    center = (box[..., :2] + box[..., 2:]) / 2
    side = (box[..., 2:] - box[..., :2]).max(axis=-1) * (1 + 2 * margin)
    return center, side


# --- rotations ----------------------------------------------------------------------------------

def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle of (..., 3, 3) rotation matrices, degrees.

    atan2 of the sine (from the skew part) and cosine (from the trace): unlike arccos of the
    trace alone it stays accurate near 0 and 180 degrees and for matrices a hair off orthonormal.
    """
    tr = np.trace(R, axis1=-2, axis2=-1)
    skew = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                     R[..., 1, 0] - R[..., 0, 1]], axis=-1)
    return np.degrees(np.arctan2(np.linalg.norm(skew, axis=-1) / 2, (tr - 1) / 2))


def rotation_error_deg(R_est: np.ndarray, R_true: np.ndarray) -> np.ndarray:
    """Angle of R_est @ R_true.T in degrees."""
    return rotation_angle_deg(R_est @ np.swapaxes(R_true, -1, -2))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between (..., 3) vectors in degrees."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))

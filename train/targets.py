"""Training targets of the volumetric network: encode labels, decode predictions, the loss.

Conventions (DESIGN.md §5, the same as :func:`train.model.soft_argmax`):

* A crop of side ``S`` is cut from the original image by a (2, 3) affine ``A`` (image pixels ->
  crop pixels, :func:`pipeline.geometry.cameras.crop_affine`, possibly composed with augmentation).
* x, y = position in the crop measured from the crop's outer edge, divided by ``S``, minus 0.5:
  a crop pixel centre ``u`` (pixel i at i) gives ``(u + 0.5) / S - 0.5``. The value does not
  depend on ``S``, so a crop may be resized (OpenCV pixel-centre convention) without changing it,
  and a horizontal flip of the crop is exactly ``x -> -x``.
* z = (Z_joint - Z_root) / depth_range, camera frame, mm; ``depth_range`` = 2000 mm x the
  augmentation scale (the crop's box side relative to the un-augmented box). Pseudo-labels are
  normalised to a mm-like canonical size, so the same range applies to them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.geometry.cameras import apply_affine, invert_affine, unproject

DEFAULT_DEPTH_RANGE_MM = 2000.0


def crop_pixels_to_coords(uv_crop: np.ndarray, crop_size: int) -> np.ndarray:
    """(..., 2) crop pixel positions -> (..., 2) normalised x, y."""
    return (np.asarray(uv_crop, dtype=np.float64) + 0.5) / crop_size - 0.5


def coords_to_crop_pixels(xy: np.ndarray, crop_size: int) -> np.ndarray:
    """(..., 2) normalised x, y -> (..., 2) pixel positions in a crop of side ``crop_size``."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * crop_size - 0.5


def coords_to_image_pixels(xy: np.ndarray, crop_affine: np.ndarray, crop_size: int) -> np.ndarray:
    """(N, J, 2) normalised x, y and (N, 2, 3) image->crop affines -> (N, J, 2) image pixels.

    This is how stage 1 turns the 2D network's output into detections in the original image.
    """
    return apply_affine(coords_to_crop_pixels(xy, crop_size), invert_affine(crop_affine))


def encode(uv_image: np.ndarray, z_rel: np.ndarray, crop_affine: np.ndarray, crop_size: int,
           depth_range: float | np.ndarray = DEFAULT_DEPTH_RANGE_MM) -> np.ndarray:
    """Labels -> network targets.

    Args:
        uv_image: (N, J, 2) joint positions in the original image, pixels.
        z_rel: (N, J) root-relative depth (camera frame), mm or canonical mm-like units.
        crop_affine: (N, 2, 3) image pixels -> crop pixels (augmentation included).
        crop_size: S, side of the crop in pixels.
        depth_range: scalar or (N,) depth normalisation, mm.
    Returns:
        (N, J, 3) float32 targets (x, y, z).
    """
    xy = crop_pixels_to_coords(apply_affine(np.asarray(uv_image, np.float64), crop_affine),
                               crop_size)
    dr = np.broadcast_to(np.asarray(depth_range, np.float64), xy.shape[:1])[:, None]
    z = np.asarray(z_rel, np.float64) / dr
    return np.concatenate([xy, z[..., None]], axis=-1).astype(np.float32)


def decode(coords: np.ndarray, crop_affine: np.ndarray, K: np.ndarray, dist: np.ndarray | None,
           root_depth: np.ndarray, crop_size: int,
           depth_range: float | np.ndarray = DEFAULT_DEPTH_RANGE_MM, root: int = 0) -> np.ndarray:
    """Network output -> root-relative camera-frame 3D pose (the paper's evaluation protocol).

    Each joint is back-projected through its image position with depth
    ``root_depth + z * depth_range``; the root depth is the ground truth's.

    Args:
        coords: (N, J, 3) normalised (x, y, z).
        crop_affine: (N, 2, 3) image -> crop pixels, the affine the crop was cut with.
        K: (N, 3, 3) or (3, 3) intrinsics; dist: (N, 5), (5,) or None (OpenCV distortion).
        root_depth: (N,) Z of the root joint in the camera frame, mm.
        crop_size: S of the crop the coordinates refer to (any S gives the same result for
            a crop cut by ``crop_affine``'s box).
        depth_range: scalar or (N,), mm.
        root: root joint index.
    Returns:
        (N, J, 3) float64 camera-frame positions minus the root's, mm.
    """
    coords = np.asarray(coords, np.float64)
    n, j, _ = coords.shape
    uv = coords_to_image_pixels(coords[..., :2], crop_affine, crop_size)
    dr = np.broadcast_to(np.asarray(depth_range, np.float64), (n,))
    depth = np.asarray(root_depth, np.float64)[:, None] + coords[..., 2] * dr[:, None]
    K = np.broadcast_to(np.asarray(K, np.float64), (n, 3, 3))
    dist = np.zeros((n, 5)) if dist is None else np.broadcast_to(
        np.asarray(dist, np.float64), (n, np.shape(dist)[-1]))
    out = np.empty((n, j, 3))
    # One vectorised unprojection per distinct camera (a dataset has a handful).
    cams, inverse = np.unique(np.concatenate([K.reshape(n, 9), dist], axis=1), axis=0,
                              return_inverse=True)
    for c in range(len(cams)):
        sel = inverse.reshape(-1) == c
        out[sel] = unproject(uv[sel], depth[sel], cams[c, :9].reshape(3, 3), cams[c, 9:])
    return out - out[:, root:root + 1]


def flip_coords(coords: np.ndarray | torch.Tensor, flip_permutation: np.ndarray
                ) -> np.ndarray | torch.Tensor:
    """Targets or predictions of a horizontally flipped crop <-> those of the crop itself.

    (..., J, 3) -> (..., J, 3): x negated, joints permuted (left <-> right). An involution.
    """
    out = coords[..., flip_permutation, :]
    sign = np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    if isinstance(out, torch.Tensor):
        return out * torch.as_tensor(sign, device=out.device, dtype=out.dtype)
    return out * sign.astype(out.dtype)


def flip_affine(crop_affine: np.ndarray, crop_size: int) -> np.ndarray:
    """(..., 2, 3) image->crop affine followed by a horizontal mirror of the crop."""
    out = np.array(crop_affine, dtype=np.float64, copy=True)
    out[..., 0, :] *= -1.0
    out[..., 0, 2] += crop_size - 1
    return out


def pose_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
              beta: float = 0.02) -> torch.Tensor:
    """Smooth-L1 on (x, y, z), weighted by label validity.

    Args:
        pred, target: (N, J, 3) normalised coordinates.
        weight: (N, J) or (N, J, 3) non-negative; 0 drops a label (a 2D label has z weight 0).
        beta: transition point from quadratic to linear, in normalised units.
    Returns:
        scalar: sum(w * smooth_l1) / sum(w), 0 when every weight is 0.
    """
    if weight.dim() == 2:
        weight = weight[..., None].expand_as(target)
    w = weight.to(pred.dtype)
    err = F.smooth_l1_loss(pred, target.to(pred.dtype), reduction="none", beta=beta)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def heatmap_nll(heatmap_xy: torch.Tensor, heatmap_z: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Negative log-likelihood of the labels under the network's own marginals.

    A proper scoring rule: added to the coordinate loss it makes the marginals concentrate where
    the network is sure and spread where it is not, so that ``conf`` (mass near the estimate)
    ranks joints by reliability; it also gives the soft-argmax a dense training signal early on.

    Args:
        heatmap_xy: (N, J, H, W) image-plane marginals; heatmap_z: (N, J, D) depth marginals.
        target: (N, J, 3) normalised labels; weight: (N, J) or (N, J, 3).
    Returns:
        scalar: weighted mean of -log p(x, y) (bilinear between cell centres) plus, where D > 1,
        of -log p(z); labels outside the crop are skipped.
    """
    n, j, h, w = heatmap_xy.shape
    if weight.dim() == 2:
        weight = weight[..., None].expand_as(target)
    t = target.to(heatmap_xy.dtype)
    inside = (t[..., :2].abs() < 0.5).all(-1)
    grid = (2.0 * t[..., :2]).reshape(n * j, 1, 1, 2)
    p = F.grid_sample(heatmap_xy.reshape(n * j, 1, h, w), grid, mode="bilinear",
                      padding_mode="border", align_corners=False).reshape(n, j)
    w_xy = weight[..., 0].to(p.dtype) * inside
    loss = (-torch.log(p + eps) * w_xy).sum() / w_xy.sum().clamp_min(1.0)
    d = heatmap_z.shape[-1]
    if d > 1:
        gz = torch.stack([2.0 * t[..., 2], torch.zeros_like(t[..., 2])], -1).reshape(n * j, 1, 1, 2)
        pz = F.grid_sample(heatmap_z.reshape(n * j, 1, 1, d), gz, mode="bilinear",
                           padding_mode="border", align_corners=False).reshape(n, j)
        w_z = weight[..., 2].to(pz.dtype) * (t[..., 2].abs() < 0.5)
        loss = loss + (-torch.log(pz + eps) * w_z).sum() / w_z.sum().clamp_min(1.0)
    return loss

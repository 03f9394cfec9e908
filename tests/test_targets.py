"""Targets: encode/decode round trip through augmentation (scale, rotation, flip), the loss."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import box_from_points, box_to_square, crop_affine, project
from pipeline.joints import H36M17
from pipeline.store.manifest import load_manifest
from tests.conftest import SYNTHETIC_MANIFEST
from train.model import soft_argmax
from train.targets import (coords_to_image_pixels, crop_pixels_to_coords, decode, encode,
                           flip_affine, flip_coords, heatmap_nll, pose_loss)

S = 128


def _poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 17, 3) camera-frame poses: a root about 4.5 m ahead, joints within +-0.8 m."""
    root = np.stack([rng.uniform(-600, 600, n), rng.uniform(-300, 300, n),
                     rng.uniform(3500, 5500, n)], axis=1)
    rel = rng.uniform(-800, 800, (n, 17, 3))
    rel[:, 0] = 0
    return root[:, None] + rel


@pytest.fixture(scope="module")
def camera():
    return load_manifest(SYNTHETIC_MANIFEST).camera("54138969")


@pytest.mark.parametrize("flip", [False, True])
def test_round_trip_through_augmentation(camera, flip):
    rng = np.random.default_rng(1)
    n = 40
    X = _poses(rng, n)
    uv = project(X, camera.K, camera.dist)                       # distorted pixels
    center, side = box_to_square(box_from_points(uv), 0.15)
    scale = rng.uniform(0.75, 1.25, n)
    rot = rng.uniform(-30, 30, n)
    A = crop_affine(center, side * scale, S, rot)                 # (n, 2, 3)
    depth_range = 2000.0 * scale
    target = encode(uv, X[..., 2] - X[:, :1, 2], A, S, depth_range)
    assert target.shape == (n, 17, 3) and target.dtype == np.float32
    if flip:
        # What the network learns on the mirrored crop: positions through the mirrored affine,
        # left/right slots swapped. Undo it with flip_coords before decoding with A.
        perm = H36M17.flip_permutation
        learned = encode(uv, X[..., 2] - X[:, :1, 2], flip_affine(A, S), S, depth_range)[:, perm]
        np.testing.assert_allclose(learned, flip_coords(target, perm), atol=1e-5)
        target = flip_coords(learned, perm)
    out = decode(target, A, np.broadcast_to(camera.K, (n, 3, 3)), camera.dist, X[:, 0, 2], S,
                 depth_range)
    # float32 targets: about 1e-7 relative, i.e. well below a millimetre at 5 m
    np.testing.assert_allclose(out, X - X[:, :1], atol=0.05)


def test_decode_is_independent_of_crop_pixel_size(camera):
    rng = np.random.default_rng(2)
    X = _poses(rng, 5)
    uv = project(X, camera.K, camera.dist)
    center, side = box_to_square(box_from_points(uv), 0.15)
    outs = []
    for size in (64, 256):
        A = crop_affine(center, side, size)
        t = encode(uv, X[..., 2] - X[:, :1, 2], A, size)
        np.testing.assert_allclose(t, encode(uv, X[..., 2] - X[:, :1, 2],
                                             crop_affine(center, side, 128), 128), atol=1e-6)
        outs.append(decode(t, A, camera.K, camera.dist, X[:, 0, 2], size))
    np.testing.assert_allclose(outs[0], outs[1], atol=0.05)
    np.testing.assert_allclose(outs[0], X - X[:, :1], atol=0.05)


def test_flipped_crop_pixels_match_flipped_targets():
    """A bright dot at joint j lands where the flipped target of joint perm[j] says."""
    image = np.zeros((300, 300, 3), np.uint8)
    uv = np.array([[[120.0, 90.0]] * 17])
    uv[0, 12] = (180.0, 200.0)                                    # l_elbow
    cv2.circle(image, (180, 200), 2, (255, 255, 255), -1)
    A = crop_affine(np.array([[150.0, 150.0]]), np.array([200.0]), S, np.array([20.0]))
    crop = cv2.warpAffine(image, flip_affine(A[0], S), (S, S))
    t = flip_coords(encode(uv, np.zeros((1, 17)), A, S), H36M17.flip_permutation)
    r_elbow = H36M17.index("r_elbow")                             # l_elbow's mirror slot
    yy, xx = np.nonzero(crop[..., 0] > 128)
    found = crop_pixels_to_coords(np.array([xx.mean(), yy.mean()]), S)
    np.testing.assert_allclose(found, t[0, r_elbow, :2], atol=0.5 / S)


def test_flip_is_an_involution_on_tensors_and_arrays():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 17, 3)).astype(np.float32)
    perm = H36M17.flip_permutation
    np.testing.assert_array_equal(flip_coords(flip_coords(x, perm), perm), x)
    t = flip_coords(torch.from_numpy(x), perm)
    np.testing.assert_allclose(t.numpy(), flip_coords(x, perm))
    assert not np.allclose(flip_coords(x, perm), x)


def test_image_pixels_round_trip():
    uv = np.random.default_rng(3).uniform(0, 250, (4, 17, 2))
    A = crop_affine(np.full((4, 2), 125.0), np.full(4, 180.0), 96, np.array([0, 10, -20, 5.0]))
    xy = encode(uv, np.zeros((4, 17)), A, 96)[..., :2]
    np.testing.assert_allclose(coords_to_image_pixels(xy, A, 96), uv, atol=1e-3)


def test_loss_is_weighted_by_validity():
    pred = torch.zeros(2, 17, 3)
    target = torch.zeros(2, 17, 3)
    target[0, 3] = 0.3                                            # wrong but invalid
    w = torch.ones(2, 17)
    w[0, 3] = 0
    assert float(pose_loss(pred, target, w)) == 0.0
    w[0, 3] = 1
    assert float(pose_loss(pred, target, w)) > 0
    # (N, J, 3) weights: a 2D label ignores z
    w3 = torch.ones(2, 17, 3)
    target2 = torch.zeros(2, 17, 3)
    target2[..., 2] = 0.4
    w3[..., 2] = 0
    assert float(pose_loss(pred, target2, w3)) == 0.0
    # smooth-L1: linear for large errors
    big = pose_loss(pred, torch.full((2, 17, 3), 0.5), torch.ones(2, 17), beta=0.02)
    assert abs(float(big) - (0.5 - 0.01)) < 1e-6


def test_heatmap_nll_prefers_marginals_concentrated_on_the_label():
    d, h, w = 4, 8, 8
    target = torch.tensor([[[(2 + 0.5) / w - 0.5, (5 + 0.5) / h - 0.5, (1 + 0.5) / d - 0.5]]])
    weight = torch.ones(1, 1)
    peaked = torch.full((1, 1, d, h, w), -1e4)
    peaked[0, 0, 1, 5, 2] = 0.0
    wrong = torch.full((1, 1, d, h, w), -1e4)
    wrong[0, 0, 2, 1, 6] = 0.0
    uniform = torch.zeros(1, 1, d, h, w)
    nll = {k: float(heatmap_nll(o["heatmap_xy"], o["heatmap_z"], target, weight))
           for k, o in (("peaked", soft_argmax(peaked)), ("wrong", soft_argmax(wrong)),
                        ("uniform", soft_argmax(uniform)))}
    assert nll["peaked"] < 1e-4
    np.testing.assert_allclose(nll["uniform"], np.log(h * w) + np.log(d), rtol=1e-4)
    assert nll["wrong"] > nll["uniform"]
    # an invalid label or one outside the crop contributes nothing
    o = soft_argmax(wrong)
    assert float(heatmap_nll(o["heatmap_xy"], o["heatmap_z"], target, torch.zeros(1, 1))) == 0
    outside = target.clone()
    outside[..., :2] = 0.7
    outside[..., 2] = 0.6
    assert float(heatmap_nll(o["heatmap_xy"], o["heatmap_z"], outside, weight)) == 0
    # the gradient reaches the logits
    logits = torch.zeros(1, 1, d, h, w, requires_grad=True)
    o = soft_argmax(logits)
    heatmap_nll(o["heatmap_xy"], o["heatmap_z"], target, weight).backward()
    assert float(logits.grad.abs().sum()) > 0

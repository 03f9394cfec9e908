"""The volumetric network: soft-argmax on hand-made volumes, output contract, ResNet variants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.model import NetSpec, PoseNet, soft_argmax


def _delta_volume(n: int, j: int, d: int, h: int, w: int, voxels: list[tuple[int, int, int]]
                  ) -> torch.Tensor:
    logits = torch.full((n, j, d, h, w), -1e4)
    for b in range(n):
        for k, (z, y, x) in enumerate(voxels):
            logits[b, k, z, y, x] = 0.0
    return logits


def test_delta_gives_its_voxel_coordinate():
    d, h, w = 8, 16, 12
    voxels = [(0, 0, 0), (7, 15, 11), (3, 5, 9)]
    out = soft_argmax(_delta_volume(2, 3, d, h, w, voxels))
    expect = np.array([[(x + 0.5) / w - 0.5, (y + 0.5) / h - 0.5, (z + 0.5) / d - 0.5]
                       for z, y, x in voxels])
    np.testing.assert_allclose(out["coords"][0].numpy(), expect, atol=1e-6)
    np.testing.assert_allclose(out["coords"][1].numpy(), expect, atol=1e-6)
    np.testing.assert_allclose(out["conf"].numpy(), 1.0, atol=1e-6)


def test_uniform_volume_gives_centre_and_low_confidence():
    out = soft_argmax(torch.zeros(1, 2, 4, 10, 10))
    np.testing.assert_allclose(out["coords"].numpy(), 0.0, atol=1e-6)
    # radius max(0.04, one cell = 0.1) around (0, 0): the 2 x 2 central cells of 100
    np.testing.assert_allclose(out["conf"].numpy(), 4 / 100, atol=1e-6)
    torch.testing.assert_close(out["heatmap_xy"].sum(dim=(2, 3)), torch.ones(1, 2))
    torch.testing.assert_close(out["heatmap_z"], torch.full((1, 2, 4), 0.25))


def test_two_deltas_average_and_2d_volume_has_zero_z():
    logits = torch.full((1, 2, 1, 8, 8), -1e4)
    logits[0, 0, 0, 2, 1] = 0.0                      # joint 0: two far modes
    logits[0, 0, 0, 6, 5] = 0.0
    logits[0, 1, 0, 4, 4] = 0.0                      # joint 1: two neighbouring cells
    logits[0, 1, 0, 4, 5] = 0.0
    out = soft_argmax(logits)
    x = ((1.5 + 5.5) / 2) / 8 - 0.5
    y = ((2.5 + 6.5) / 2) / 8 - 0.5
    np.testing.assert_allclose(out["coords"][0, 0].numpy(), [x, y, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["coords"][0, 1].numpy(), [5 / 8 - 0.5, 4.5 / 8 - 0.5, 0.0],
                               atol=1e-6)
    # the mean of two far modes is supported by neither; two adjacent cells are one estimate
    np.testing.assert_allclose(out["conf"][0].numpy(), [0.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("depth,bins", [(18, 4), (34, 1), (50, 4)])
def test_forward_contract(depth, bins):
    spec = NetSpec(depth=depth, width=8, deconv_channels=16, depth_bins=bins, input_size=64)
    model = PoseNet(spec).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"coords", "conf", "heatmap_xy", "heatmap_z"}
    assert out["heatmap_xy"].shape == (2, 17, 16, 16) and out["heatmap_z"].shape == (2, 17, bins)
    assert out["coords"].shape == (2, 17, 3) and out["conf"].shape == (2, 17)
    assert out["coords"].dtype == torch.float32
    c = out["coords"]
    assert bool(((c >= -0.5) & (c < 0.5)).all())
    assert bool(((out["conf"] >= 0) & (out["conf"] <= 1)).all())
    if bins == 1:
        assert bool((c[..., 2] == 0).all())
    assert spec.heatmap_size == 16
    logits = model.logits(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 17, bins, 16, 16)


def test_gradients_reach_the_backbone():
    model = PoseNet(NetSpec(depth=18, width=8, deconv_channels=16, depth_bins=4, input_size=64))
    out = model(torch.randn(2, 3, 64, 64))
    out["coords"].sum().backward()
    g = model.backbone.stem[0].weight.grad
    assert g is not None and float(g.abs().sum()) > 0


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        PoseNet(NetSpec(depth=18, width=8, input_size=100))
    with pytest.raises(ValueError, match="depth 20"):
        PoseNet(NetSpec(depth=20, width=8, input_size=64))

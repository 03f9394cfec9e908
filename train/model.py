"""The volumetric pose network: ResNet backbone, deconvolution head, integral soft-argmax.

One class serves both networks of the method (DESIGN.md §5):

* the 3D network: ``depth_bins = D`` (64 in the paper) gives a J x D x H x W volume per image;
* the 2D network: ``depth_bins = 1``; the volume is a J x H x W heatmap and z is 0.

Coordinates (the target convention of :mod:`train.targets`): voxel ``k`` of an axis with ``n``
cells has coordinate ``(k + 0.5) / n - 0.5``, so the soft-argmax lies in [-0.5, 0.5). In x and y
that is the position measured from the crop's outer edge divided by the crop size, minus 0.5:
a crop pixel centre ``u`` (OpenCV convention, pixel i at i) maps to ``(u + 0.5) / S - 0.5``.

``forward`` returns the same dict whatever the options::

    {"coords":     (N, J, 3)    float32 soft-argmax (x, y, z),
     "conf":       (N, J)       float32 in [0, 1], probability mass of the image-plane marginal
                                within CONF_RADIUS of the estimate,
     "heatmap_xy": (N, J, H, W) image-plane marginal of each joint's volume,
     "heatmap_z":  (N, J, D)    depth marginal (all ones for the 2D network, D = 1)}

The backbone (ResNet-18/34/50 with a ``width`` multiplier: the stem has ``width`` channels,
64 in the standard network) is written here; no pretrained weights are downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        out = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(in_ch, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x), inplace=True)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ResNet feature extractor, stride 32. (N, 3, S, S) -> (N, out_channels, S/32, S/32)."""

    def __init__(self, depth: int = 50, width: int = 64) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth {depth} not supported; choose from {sorted(RESNET_SPECS)}")
        block, counts = RESNET_SPECS[depth]
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1))
        layers, in_ch = [], width
        for i, n in enumerate(counts):
            ch = width * 2 ** i
            for b in range(n):
                layers.append(block(in_ch, ch, 2 if (b == 0 and i > 0) else 1))
                in_ch = ch * block.expansion
        self.layers = nn.Sequential(*layers)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


@dataclass(frozen=True)
class NetSpec:
    """Architecture knobs (the ``model`` section of a training config).

    Attributes:
        depth: ResNet depth, 18, 34 or 50.
        width: stem channels (64 = the standard ResNet; 32 = a quarter of the compute).
        deconv_channels: channels of each of the transposed convolutions (256 in the paper).
        deconv_layers: number of stride-2 transposed convolutions (3: output stride 4).
        depth_bins: D, cells of the depth axis; 1 makes the 2D network.
        num_joints: J.
        input_size: S, side of the square input crop in pixels (a multiple of 32).
    """

    depth: int = 50
    width: int = 64
    deconv_channels: int = 256
    deconv_layers: int = 3
    depth_bins: int = 64
    num_joints: int = 17
    input_size: int = 256

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 32 * 2 ** self.deconv_layers


class PoseNet(nn.Module):
    """ResNet + deconvolutions + 1x1 conv to J*D channels + integral soft-argmax."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        if spec.input_size % 32:
            raise ValueError(f"input_size {spec.input_size} must be a multiple of 32")
        if spec.depth_bins < 1:
            raise ValueError(f"depth_bins must be >= 1, got {spec.depth_bins}")
        self.spec = spec
        self.backbone = ResNet(spec.depth, spec.width)
        head, in_ch = [], self.backbone.out_channels
        for _ in range(spec.deconv_layers):
            head += [nn.ConvTranspose2d(in_ch, spec.deconv_channels, 4, 2, 1, bias=False),
                     nn.BatchNorm2d(spec.deconv_channels), nn.ReLU(inplace=True)]
            in_ch = spec.deconv_channels
        self.head = nn.Sequential(*head)
        self.final = nn.Conv2d(in_ch, spec.num_joints * spec.depth_bins, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)
        # Zero the last BN of each residual branch: every block starts as the identity, which
        # makes the narrow CPU demo networks train stably from scratch.
        for m in self.backbone.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else (
                getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
            if last is not None:
                nn.init.zeros_(last.weight)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, J, D, H, W) float32 logits."""
        y = self.final(self.head(self.backbone(images)))
        n, _, h, w = y.shape
        return y.float().reshape(n, self.spec.num_joints, self.spec.depth_bins, h, w)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return soft_argmax(self.logits(images))


CONF_RADIUS = 0.04
"""Radius of the confidence disc, crop-normalised units (0.04 = 5 px of a 128-px crop)."""


def soft_argmax(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Integral soft-argmax of per-joint volumes.

    Args:
        logits: (N, J, D, H, W); a global softmax runs over each joint's D*H*W cells.
    Returns:
        {"coords": (N, J, 3) expected (x, y, z), cell k of n at (k + 0.5) / n - 0.5, z = 0 when
         D = 1;
         "conf": (N, J) probability mass of the image-plane marginal within CONF_RADIUS (at
         least one cell) of the expected (x, y): the network's own probability that the joint
         lies that close to its estimate;
         "heatmap_xy": (N, J, H, W) image-plane marginal (sums to 1);
         "heatmap_z": (N, J, D) depth marginal (sums to 1)}.
    """
    n, j, d, h, w = logits.shape
    prob = torch.softmax(logits.float().reshape(n, j, -1), dim=-1).reshape(n, j, d, h, w)
    p_xy = prob.sum(dim=2)                                   # (N, J, H, W)
    px, py = p_xy.sum(dim=2), p_xy.sum(dim=3)                # (N, J, W), (N, J, H)
    pz = prob.sum(dim=(3, 4))                                # (N, J, D)
    cx, cy, cz = _centres(w, logits), _centres(h, logits), _centres(d, logits)
    x = (px * cx).sum(-1)
    y = (py * cy).sum(-1)
    z = (pz * cz).sum(-1) if d > 1 else torch.zeros_like(x)
    with torch.no_grad():
        r = max(CONF_RADIUS, 1.0 / max(h, w))
        d2 = ((cx.view(1, 1, 1, w) - x.detach()[..., None, None]) ** 2
              + (cy.view(1, 1, h, 1) - y.detach()[..., None, None]) ** 2)
        conf = (p_xy.detach() * (d2 <= r * r)).sum(dim=(2, 3)).clamp(0.0, 1.0)
    return {"coords": torch.stack([x, y, z], dim=-1), "conf": conf, "heatmap_xy": p_xy,
            "heatmap_z": pz}


def _centres(n: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.arange(n, device=like.device, dtype=torch.float32) + 0.5) / n - 0.5


def build_model(spec: NetSpec, device: str | torch.device = "cpu") -> PoseNet:
    """The network on ``device``; channels-last memory format on CUDA."""
    model = PoseNet(spec).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

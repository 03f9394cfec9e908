"""Inference with a trained checkpoint: what stage 1's 2D detector and eval/ call.

    model, config = load_model("outputs/runs/pose2d/best.pt")
    coords, conf = predict(model, crops_bgr)        # (N, J, 3), (N, J)

``coords`` are crop-normalised (train.targets): x, y = position from the crop's outer edge /
crop side - 0.5, independent of the crop's pixel size; z = root-relative depth / depth range.
Turn them into original-image pixels with ``train.targets.coords_to_image_pixels(coords[..., :2],
crop_affine, crop_size)`` and into millimetres with ``train.targets.decode``.

``load_model`` lives in :mod:`train.checkpoint` (re-exported here): inference never imports the
trainer.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from train.checkpoint import load_model
from train.data import normalize_images
from train.model import PoseNet

__all__ = ["load_model", "predict"]


@torch.no_grad()
def predict(model: PoseNet, crops_bgr: np.ndarray, batch_size: int = 64
            ) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on square BGR crops.

    Args:
        model: a :class:`PoseNet` (put in eval mode here).
        crops_bgr: (N, S, S, 3) uint8, any S (resized to the model's input size).
        batch_size: images per forward pass.
    Returns:
        coords (N, J, 3) float32 crop-normalised, conf (N, J) float32 in [0, 1].
    """
    crops = np.asarray(crops_bgr)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops must be (N, S, S, 3) BGR, got {crops.shape}")
    model.eval()
    size = model.spec.input_size
    device = next(model.parameters()).device
    J = model.spec.num_joints
    coords = np.zeros((len(crops), J, 3), np.float32)
    conf = np.zeros((len(crops), J), np.float32)
    for i in range(0, len(crops), batch_size):
        chunk = crops[i:i + batch_size]
        if chunk.shape[1] != size:
            interp = cv2.INTER_AREA if chunk.shape[1] > size else cv2.INTER_LINEAR
            chunk = np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in chunk])
        x = normalize_images(chunk).to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.float16,
                            enabled=device.type == "cuda"):
            out = model(x)
        coords[i:i + len(chunk)] = out["coords"].float().cpu().numpy()
        conf[i:i + len(chunk)] = out["conf"].float().cpu().numpy()
    return coords, conf

"""The overlay frame of predict: its height follows the input (within 480..1080 px) or the
option, the 3D panel stays square beside the frame."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.joints import H36M17
from train.pose_video import overlay_frame

J = H36M17.num_joints


@pytest.mark.parametrize("frame_h, frame_w, height, want_h", [
    (720, 1280, None, 720),      # its own height
    (2160, 3840, None, 1080),    # at most 1080
    (96, 128, None, 480),        # small frames enlarged to 480
    (720, 1280, 300, 300),       # the option wins
])
def test_overlay_height(frame_h, frame_w, height, want_h):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (frame_h, frame_w, 3), dtype=np.uint8)
    uv = rng.uniform([0, 0], [frame_w, frame_h], (J, 2))
    pose = rng.normal(scale=300.0, size=(J, 3))
    out = overlay_frame(image, uv, np.array([0.0, 0.0, frame_w / 2, frame_h / 2]), pose,
                        H36M17, "clip frame 0", (frame_w, frame_h), height=height)
    left = int(round(frame_w * want_h / frame_h))
    assert out.shape == (want_h, left + want_h, 3)
    assert out[:, left:].std() > 0  # the panel has the skeleton drawn
    # an unreadable frame stands in at the clip's size
    grey = overlay_frame(None, uv, np.full(4, np.nan), pose, H36M17, "x", (frame_w, frame_h),
                         height=height)
    assert grey.shape == out.shape

"""BVH parsing, forward kinematics and the CMU -> H36M-17 mapping (pipeline.store.bvh)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.store import bvh
from pipeline.geometry.triangulation import bone_lengths
from pipeline.joints import H36M17

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu-mocap" / "scaled_131_01.bvh"

TINY = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Spine
  {
    OFFSET 0 1 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 0 2
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
1 2 3 0 0 0 0 0 0
1 2 3 90 0 0 0 90 0
"""


def test_parse_tiny_file():
    m = bvh.parse_bvh(TINY)
    assert m.names == ("Hips", "Spine", "Spine_end")
    assert m.parents == (-1, 0, 1)
    assert m.channels[1] == ("Zrotation", "Xrotation", "Yrotation") and m.channels[2] == ()
    assert m.channel_start == (0, 6, 9)
    assert m.motion.shape == (2, 9) and m.frame_time == 0.5 and m.num_frames == 2


def test_forward_kinematics_by_hand():
    m = bvh.parse_bvh(TINY)
    P = bvh.forward_kinematics(m, unit_to_mm=1.0, z_up=False)
    # Frame 0: no rotation.
    np.testing.assert_allclose(P[0], [[1, 2, 3], [1, 3, 3], [1, 3, 5]], atol=1e-12)
    # Frame 1: root Rz(90) maps the spine offset (0,1,0) to (-1,0,0); the spine's own Rx(90)
    # then maps the end offset (0,0,2) to (0,-2,0), seen through Rz(90) as (2,0,0).
    np.testing.assert_allclose(P[1], [[1, 2, 3], [0, 2, 3], [2, 2, 3]], atol=1e-12)
    # y-up -> z-up is the proper rotation (x, y, z) -> (x, -z, y), and units scale.
    Pz = bvh.forward_kinematics(m, unit_to_mm=1000.0)
    np.testing.assert_allclose(Pz[0, 0], [1000, -3000, 2000], atol=1e-9)
    assert np.isclose(np.linalg.det(bvh.Y_UP_TO_Z_UP), 1.0)


def test_channel_order_is_respected():
    zyx = TINY.replace("CHANNELS 3 Zrotation Xrotation Yrotation",
                       "CHANNELS 3 Zrotation Yrotation Xrotation")
    line = "1 2 3 0 0 0 0 90 90\n"
    a = bvh.forward_kinematics(bvh.parse_bvh(TINY.rsplit("1 2 3 90", 1)[0] + line),
                               unit_to_mm=1.0, z_up=False)
    b = bvh.forward_kinematics(bvh.parse_bvh(zyx.rsplit("1 2 3 90", 1)[0] + line),
                               unit_to_mm=1.0, z_up=False)
    # Same numbers, different order of the X and Y rotations: different end positions.
    assert np.abs(a[1, 2] - b[1, 2]).max() > 0.5
    # Z X Y with X = Y = 90: R = Rx(90) Ry(90); (0,0,2) -> Ry -> (2,0,0) -> Rx -> (2,0,0).
    np.testing.assert_allclose(a[1, 2], [1 + 2, 3, 3], atol=1e-12)


@pytest.mark.parametrize("broken, message", [
    (TINY.replace("OFFSET 0 1 0", "OFFSET 0 one 0"), "expected a number"),
    (TINY.replace("Frames: 2", "Frames: 3"), "expected 3 frames"),
    (TINY.replace("ROOT Hips", "JOINT Hips"), "expected ROOT"),
    (TINY.replace("  JOINT Spine\n  {", "  JOINT Spine\n  ["), "expected '{'"),
])
def test_malformed_files_raise_clear_errors(broken, message):
    with pytest.raises(ValueError, match=message):
        bvh.parse_bvh(broken, "tiny.bvh")


@pytest.fixture(scope="module")
def cmu():
    if not CMU.exists():
        pytest.skip(f"reference data {CMU} is absent")
    m = bvh.load_bvh(CMU)
    return m, bvh.forward_kinematics(m)


def test_cmu_clip_loads_with_rigid_bones_and_z_up(cmu):
    m, P = cmu
    assert m.num_frames == 995 and abs(m.frame_time - 1 / 120) < 1e-5
    assert P.shape == (995, len(m.names), 3) and "Head_end" in m.names
    # Bones are rigid: every parent-child distance is constant over the clip.
    par = np.array(m.parents[1:])
    d = np.linalg.norm(P[:, 1:] - P[:, par], axis=-1)
    assert (d.std(0) < 1e-6).all()
    # z up: head above the hips above the feet; feet within 20 cm of the floor.
    head, hips, ankle = (P[:, m.index(n), 2] for n in ("Head_end", "Hips", "LeftAnkle"))
    assert (head > hips).all() and (hips > ankle).all()
    assert 0 < np.median(ankle) < 200


def test_cmu_to_h36m17(cmu):
    m, P = cmu
    X = bvh.bvh_to_h36m17(P, m.names)
    assert X.shape == (995, 17, 3)
    i = H36M17.index
    np.testing.assert_allclose(X[:, i("pelvis")], (X[:, i("l_hip")] + X[:, i("r_hip")]) / 2)
    np.testing.assert_allclose(X[:, i("spine")], (X[:, i("pelvis")] + X[:, i("thorax")]) / 2)
    np.testing.assert_array_equal(X[:, i("l_wrist")], P[:, m.index("LeftWrist")])
    # An adult: bone sum 3.3-4.2 m, left/right legs symmetric within 2 cm, head on top.
    bl = bone_lengths(X).mean(0)
    assert 3300 < bl.sum() < 4200
    names = [H36M17.names[c] for c in H36M17.bones[:, 1]]
    assert abs(bl[names.index("l_knee")] - bl[names.index("r_knee")]) < 20
    assert (X[:, i("head"), 2] > X[:, i("neck"), 2]).mean() > 0.99
    assert (X[:, i("neck"), 2] > X[:, i("thorax"), 2]).mean() > 0.99
    with pytest.raises(KeyError, match="LeftWrist"):
        bvh.bvh_to_h36m17(P[:, 1:], tuple(n if n != "LeftWrist" else "X" for n in m.names[1:]))

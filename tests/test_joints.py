import numpy as np
import pytest

from pipeline import joints
from pipeline.joints import H36M17, MPII16, JointSet, permutation


def test_h36m17_tree():
    assert H36M17.num_joints == 17
    assert H36M17.root == 0 and H36M17.names[0] == "pelvis"
    assert H36M17.bones.shape == (16, 2)
    # every bone's parent is the parent of its child
    for p, c in H36M17.bones:
        assert H36M17.parents[c] == p


def test_flip_permutation_is_an_involution_that_swaps_sides():
    perm = H36M17.flip_permutation
    assert np.array_equal(perm[perm], np.arange(17))
    for a, b in H36M17.flip_pairs:
        assert H36M17.names[a].startswith("l_") and H36M17.names[b].startswith("r_")
        assert perm[a] == b
    assert perm[H36M17.index("head")] == H36M17.index("head")


def test_permutation_built_from_names_round_trips():
    x = np.random.default_rng(0).normal(size=(5, 17, 3))
    to_mpii = permutation(H36M17.names, MPII16.names)
    x_mpii = x[:, to_mpii]
    assert np.array_equal(x_mpii[:, MPII16.index("l_wrist")], x[:, H36M17.index("l_wrist")])
    back = permutation(MPII16.names, tuple(n for n in H36M17.names if n in MPII16.names))
    kept = [H36M17.index(n) for n in H36M17.names if n in MPII16.names]
    assert np.array_equal(x_mpii[:, back], x[:, kept])
    with pytest.raises(KeyError, match="spine"):
        permutation(MPII16.names, H36M17.names)  # MPII has no spine


def test_mpii_parents_follow_names():
    assert MPII16.names[MPII16.parents[MPII16.index("l_knee")]] == "l_hip"
    assert MPII16.names[MPII16.root] == "pelvis"


def test_bad_joint_set_is_refused():
    with pytest.raises(ValueError, match="root"):
        JointSet("bad", ("a", "b"), (1, 0))
    with pytest.raises(KeyError, match="known"):
        joints.get_joint_set("smpl")


def test_mediapipe_mapping_direct_and_derived():
    rng = np.random.default_rng(1)
    lm = rng.normal(size=(4, 33, 2))
    conf = rng.uniform(0.5, 1, size=(4, 33))
    out, oc = joints.mediapipe33_to_h36m17(lm, conf)
    mp = joints.MEDIAPIPE33_ORDER
    assert np.allclose(out[:, H36M17.index("l_wrist")], lm[:, mp.index("l_wrist")])
    pelvis = (lm[:, mp.index("l_hip")] + lm[:, mp.index("r_hip")]) / 2
    assert np.allclose(out[:, H36M17.index("pelvis")], pelvis)
    assert np.allclose(oc[:, H36M17.index("pelvis")],
                       np.minimum(conf[:, mp.index("l_hip")], conf[:, mp.index("r_hip")]))


def test_coco_mapping_agrees_with_mediapipe_on_shared_joints():
    rng = np.random.default_rng(2)
    k = rng.normal(size=(3, 17, 2))
    c = np.ones((3, 17))
    out, _ = joints.coco17_to_h36m17(k, c)
    coco = joints.COCO17_ORDER
    assert np.allclose(out[:, H36M17.index("r_knee")], k[:, coco.index("r_knee")])
    thorax = (k[:, coco.index("l_shoulder")] + k[:, coco.index("r_shoulder")]) / 2
    assert np.allclose(out[:, H36M17.index("thorax")], thorax)

"""Several people per frame from BlazePose (``--detector mediapipe-people``,
``pipeline/detect/blazepose.py``) and MediaPipe's world landmarks.

The choice among candidate skeletons is checked on tiny arrays; the detector on Pose2Sim's
Demo_MultiPerson (issue 24: cam02 frames 36 and 90-97 had a merged skeleton or nobody), where
mediapipe and the demo are present (``python -m tools real-demo --demo multi --out
outputs/data/pose2sim_multi``, as ``make real-demo`` fetches it); skipped otherwise.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipeline.detect.blazepose import pick_people, search_tiles, shared_landmarks
from pipeline.joints import H36M17

REPO = Path(__file__).resolve().parents[1]
MULTI_DEMO = (REPO / "outputs" / "cache" / "real_footage" / "pose2sim-0.10.49-multi",
              REPO / "outputs" / "data" / "pose2sim_multi")
HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


def _person(x0: float, y0: float, n: int = 33) -> np.ndarray:
    """A 'skeleton' of n landmarks on a 100 x 300 px column at (x0, y0)."""
    t = np.linspace(0, 1, n)
    return np.stack([x0 + 100 * (t * 7 % 1), y0 + 300 * t], -1)


def test_search_tiles_cover_elongated_images_with_squares():
    assert search_tiles(480, 560) == [(0, 0, 560, 480)]  # near square: whole only
    tiles = search_tiles(1920, 1088)
    assert tiles[0] == (0, 0, 1088, 1920)
    assert tiles[1:] == [(0, 0, 1088, 1088), (0, 416, 1088, 1088), (0, 832, 1088, 1088)]
    assert search_tiles(100, 300)[1:] == [(0, 0, 100, 100), (100, 0, 100, 100),
                                          (200, 0, 100, 100)]


def test_pick_people_keeps_distinct_people_and_drops_duplicates_and_merged():
    a, b = _person(0, 0), _person(500, 0)
    merged = np.concatenate([a[:12], b[12:]])          # head of a, legs of b
    xy = np.stack([merged, a, a + 2.0, b, b - 1.0, _person(1000, 0)])
    vis = np.full((6, 33), 0.9)
    vis[5] = 0.3                                        # too faint: nobody
    shared = shared_landmarks(xy)
    assert shared[1, 2] == 33 and shared[1, 3] == 0 and shared[0, 1] == 12
    keep = pick_people(xy, vis)
    assert sorted(keep) in ([1, 3], [1, 4], [2, 3], [2, 4])
    assert pick_people(xy, vis, max_people=1) == keep[:1]
    assert pick_people(xy[:1], vis[:1]) == [0]          # alone, a skeleton is a person
    assert pick_people(np.zeros((0, 33, 2)), np.zeros((0, 33))) == []


def _multi_manifest() -> Path:
    if not HAS_MEDIAPIPE:
        pytest.skip("mediapipe is not installed (requirements-mediapipe.txt)")
    for folder in MULTI_DEMO:
        if (folder / "manifest.yaml").exists():
            return folder / "manifest.yaml"
    pytest.skip("Pose2Sim Demo_MultiPerson is not here: python -m tools real-demo --demo multi "
                "--out outputs/data/pose2sim_multi")


def test_both_people_found_once_and_whole_on_demo_multiperson():
    """cam02 frames 36 and 90-97: two people, one skeleton each (no duplicate box), each
    confirmed by another view through the calibration (a merged skeleton is not)."""
    from pipeline.store.manifest import load_manifest
    from tools.people_check import detect_recording, duplicates, epipolar_support

    m = load_manifest(_multi_manifest())
    frames = [36, 90, 93, 95, 97]
    people = detect_recording(m, "mediapipe-people", ["cam01", "cam02", "cam03", "cam04"],
                              frames)
    people["duplicates"] = duplicates(people, 0.5)
    people["support"] = epipolar_support(people, m, 20.0)
    cam02 = people[people["camera"] == "cam02"]
    assert cam02.groupby("frame").size().reindex(frames).tolist() == [2] * len(frames)
    assert (cam02["duplicates"] == 0).all()
    assert (cam02["support"] >= 0.7).all(), cam02[["frame", "person", "support"]]


def test_world_landmarks_are_root_relative_mm_with_plausible_bones():
    """MediaPipeDetector's world landmarks as H36M-17: (N, 17, 3) mm, pelvis at 0, finite
    where a person is found, adult bone lengths; its 2D is that of ``detect_with_boxes``."""
    from pipeline.detect.network import FrameKey
    from pipeline.detect.registry import MediaPipeDetector
    from pipeline.store.frames import read_frames
    from pipeline.store.manifest import load_manifest

    m = load_manifest(_multi_manifest())
    seq = m.sequences[0]
    images = [f.image for f in read_frames(m, seq, "cam01", [0, 50])] + [np.zeros((64, 64, 3),
                                                                                  np.uint8)]
    keys = [FrameKey(m.dataset, seq.subject, seq.action, seq.subaction, "cam01", f)
            for f in (0, 50, 51)]
    det = MediaPipeDetector()
    joints, conf, boxes, world = det.detect_with_world(images, None, keys)
    joints2, conf2, boxes2 = det.detect_with_boxes(images, None, keys)
    det.close()
    assert world.shape == (3, 17, 3) and world.dtype == np.float32
    assert np.isfinite(world[:2]).all() and np.isnan(world[2]).all()
    np.testing.assert_array_equal(joints[:2], joints2[:2])
    np.testing.assert_array_equal(conf, conf2)
    assert np.abs(world[:2, H36M17.index("pelvis")]).max() < 1e-3
    bones = {(a, b): np.linalg.norm(world[:2, H36M17.index(a)] - world[:2, H36M17.index(b)],
                                    axis=-1)
             for a, b in (("l_hip", "l_knee"), ("r_knee", "r_ankle"), ("l_shoulder", "l_elbow"))}
    for bone, mm in bones.items():
        assert ((mm > 150) & (mm < 650)).all(), (bone, mm)
    # y down: the head above (smaller y than) the pelvis, the ankles below it
    assert (world[:2, H36M17.index("head"), 1] < -300).all()
    assert (world[:2, H36M17.index("l_ankle"), 1] > 300).all()

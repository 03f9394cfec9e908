"""pipeline.detect.registry: the registry, replaying precomputed detections (npz, Parquet) and MediaPipe."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import shards as S
from pipeline.detect.network import DetectorUnavailable, FrameKey
from pipeline.detect.registry import (DETECTION_SCHEMA, DETECTORS, FileDetector, MediaPipeDetector, make_detector,
                                      npz_action_key)
from pipeline.joints import COCO17_ORDER, H36M17
from pipeline.store.manifest import Manifest, parse_manifest

CAM = {"fx": 500.0, "fy": 500.0, "cx": 320.0, "cy": 240.0, "width": 640, "height": 480,
       "distortion": [0.0, 0.0, 0.0, 0.0, 0.0]}
CAMS = ("c0", "c1")
HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


def manifest(tmp_path: Path) -> Manifest:
    raw = {"dataset": "tiny", "root": str(tmp_path), "joint_set": "h36m17",
           "cameras": {c: CAM for c in CAMS},
           "frames": {"kind": "video", "pattern": "{subject}/{name}.{camera}.mp4"},
           "sequences": [
               {"subject": "S1", "action": "Photo", "subaction": 1, "name": "TakingPhoto 1"},
               {"subject": "S1", "action": "Walking", "subaction": 2, "name": "Walking"},
               {"subject": "S5", "action": "Walking", "subaction": 1, "name": "Walking 1"}],
           "splits": {"train": ["S1", "S5"]}}
    return parse_manifest(raw, tmp_path / "tiny.yaml")


def poses(n: int, seed: int, d: int = 2) -> np.ndarray:
    """(n, 17, d) distinct, finite joint arrays."""
    return np.random.default_rng(seed).uniform(10, 400, size=(n, 17, d)).astype(np.float32)


def key(subject: str, action: str, sub: str, cam: str, frame: int) -> FrameKey:
    return FrameKey("tiny", subject, action, sub, cam, frame)


# --- npz ----------------------------------------------------------------------------------------

def write_npz(path: Path, positions: dict, layout: str | None = "h36m") -> Path:
    arrays = {"positions_2d": np.array(positions, dtype=object)}
    if layout is not None:
        arrays["metadata"] = np.array({"layout_name": layout, "num_joints": 17}, dtype=object)
    np.savez(path, **arrays)
    return path


def test_npz_action_key_spellings(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    photo, walking, walking1 = m.sequences
    assert npz_action_key(photo, ["Photo 1", "Photo"]) == "Photo 1"          # S1's rename
    assert npz_action_key(photo, ["TakingPhoto 1"]) == "TakingPhoto 1"       # as the file says
    assert npz_action_key(walking, ["Walking 1", "Walking"]) == "Walking"
    assert npz_action_key(walking1, ["Walking 2"]) is None


def test_npz_lookup_by_sequence_camera_and_frame(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    a0, a1, b0 = poses(5, 0), poses(5, 1), poses(7, 2)
    a1[2, 4] = np.nan                                 # one missing joint in one frame
    path = write_npz(tmp_path / "d.npz", {"S1": {"Photo 1": [a0, a1], "Walking": [b0, b0 + 1]},
                                          "S7": {"Walking 1": [b0, b0]}})
    det = FileDetector.from_npz(path, m)
    keys = [key("S1", "Photo", "1", "c0", 3), key("S1", "Photo", "1", "c1", 2),
            key("S1", "Walking", "2", "c1", 6), key("S1", "Photo", "1", "c0", 5),   # past end
            key("S5", "Walking", "1", "c0", 0)]                                     # not in file
    joints, conf = det.detect([None] * len(keys), None, keys)
    assert joints.shape == (5, 17, 2) and conf.shape == (5, 17)
    assert joints.dtype == np.float32 and conf.dtype == np.float32
    np.testing.assert_array_equal(joints[0], a0[3])
    np.testing.assert_array_equal(conf[0], np.ones(17))
    assert np.isnan(joints[1, 4]).all() and conf[1, 4] == 0 and (conf[1, np.arange(17) != 4] == 1).all()
    np.testing.assert_array_equal(joints[2], b0[6] + 1)
    for i in (3, 4):
        assert np.isnan(joints[i]).all() and (conf[i] == 0).all()
    assert det.misses == 2


def test_npz_confidence_channel_and_boxes(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    a = poses(3, 3, d=3)
    a[..., 2] = np.linspace(0, 1, 17)                 # joint 0 has confidence 0
    path = write_npz(tmp_path / "d.npz", {"S1": {"Walking": [a, a]}})
    joints, conf, boxes = FileDetector.from_npz(path, m).detect_with_boxes(
        [None], None, [key("S1", "Walking", "2", "c0", 1)])
    np.testing.assert_allclose(conf[0], np.linspace(0, 1, 17), atol=1e-6)
    assert np.isnan(joints[0, 0]).all()               # zero confidence -> not a joint
    seen = a[1, 1:, :2]
    np.testing.assert_allclose(boxes[0], [*seen.min(0), *seen.max(0)], rtol=1e-6)


def test_npz_coco_layout_is_mapped_to_h36m(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    a = poses(2, 4)
    path = write_npz(tmp_path / "d.npz", {"S1": {"Walking": [a, a]}}, layout="coco")
    joints, _ = FileDetector.from_npz(path, m).detect([None], None,
                                                      [key("S1", "Walking", "2", "c1", 0)])
    coco = {n: a[0, i] for i, n in enumerate(COCO17_ORDER)}
    np.testing.assert_allclose(joints[0, H36M17.index("l_knee")], coco["l_knee"])
    np.testing.assert_allclose(joints[0, H36M17.index("pelvis")],
                               (coco["l_hip"] + coco["r_hip"]) / 2, rtol=1e-6)


def test_npz_errors_name_the_file_and_key(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    bad = write_npz(tmp_path / "three.npz", {"S1": {"Walking": [poses(2, 0)] * 3}})
    with pytest.raises(ValueError, match=r"three\.npz.*'S1'.*'Walking'.*3 cameras"):
        FileDetector.from_npz(bad, m)
    shape = write_npz(tmp_path / "shape.npz", {"S1": {"Walking": [poses(2, 0)[:, :16]] * 2}})
    with pytest.raises(ValueError, match="expected \\(frames, 17"):
        FileDetector.from_npz(shape, m)
    nothing = write_npz(tmp_path / "none.npz", {"S9": {"Walking": [poses(2, 0)] * 2}})
    with pytest.raises(ValueError, match="no action key matches"):
        FileDetector.from_npz(nothing, m)
    bare = write_npz(tmp_path / "bare.npz", {"S1": {"Walking": [poses(2, 0)] * 2}}, layout=None)
    with pytest.warns(UserWarning, match="H36M-17"):
        FileDetector.from_npz(bare, m)


# --- Parquet ------------------------------------------------------------------------------------

def detection_table(subject: str, action: str, sub: str, cam: str, frames: list[int],
                    joints: np.ndarray, status: list[str]):
    n = len(frames)
    conf = np.where(np.array(status)[:, None] == "", 0.9, 0.0) * np.ones((n, 17))
    return S.to_table({
        "dataset": "tiny", "subject": subject, "action": action, "subaction": sub,
        "camera": cam, "frame": np.asarray(frames, np.int32),
        "image_path": [f"crops/{f}.jpg" for f in frames],
        "bbox": np.tile([1.0, 2.0, 300.0, 400.0], (n, 1)), "joints_2d": joints,
        "joints_2d_conf": conf, "status": status}, DETECTION_SCHEMA)


def test_parquet_file_and_folder(tmp_path: Path) -> None:
    j0, j1 = poses(3, 5), poses(2, 6)
    folder = tmp_path / "detections" / "S1" / "Walking"
    S.write_table_atomic(detection_table("S1", "Walking", "2", "c0", [10, 0, 5], j0,
                                         ["", "", "no person detected in frame 5"]),
                         folder / "a.parquet")
    S.write_table_atomic(detection_table("S1", "Walking", "2", "c1", [0, 5], j1, ["", ""]),
                         folder / "b.parquet")
    (folder / ".b.parquet.tmp-1").write_bytes(b"half-written")   # must be ignored
    det = FileDetector.from_parquet(tmp_path / "detections")
    keys = [key("S1", "Walking", "2", "c0", 10), key("S1", "Walking", "2", "c0", 5),
            key("S1", "Walking", "2", "c1", 5), key("S1", "Walking", "2", "c1", 7)]
    joints, conf, boxes = det.detect_with_boxes([None] * 4, None, keys)
    np.testing.assert_array_equal(joints[0], j0[0])
    np.testing.assert_allclose(conf[0], 0.9, rtol=1e-6)
    np.testing.assert_array_equal(boxes[0], [1, 2, 300, 400])
    assert np.isnan(joints[1]).all() and (conf[1] == 0).all() and np.isnan(boxes[1]).all()
    np.testing.assert_array_equal(joints[2], j1[1])
    assert np.isnan(joints[3]).all() and (conf[3] == 0).all()
    one = FileDetector.from_parquet(folder / "b.parquet")
    assert set(one.groups) == {("tiny", "S1", "Walking", "2", "c1")}


def test_parquet_errors(tmp_path: Path) -> None:
    dup = detection_table("S1", "Walking", "2", "c0", [3, 3], poses(2, 0), ["", ""])
    S.write_table_atomic(dup, tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="frame 3 appears more than once"):
        FileDetector.from_parquet(tmp_path / "dup.parquet")
    S.write_table_atomic(dup.drop_columns(["status"]), tmp_path / "nostatus.parquet")
    with pytest.raises(ValueError, match=r"nostatus\.parquet.*\['status'\]"):
        FileDetector.from_parquet(tmp_path / "nostatus.parquet")
    with pytest.raises(FileNotFoundError):
        FileDetector.from_parquet(tmp_path / "empty_dir_that_does_not_exist")


def test_registry_builds_file_detector(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    with pytest.raises(DetectorUnavailable, match="DETECTIONS"):
        make_detector("file", m)
    with pytest.raises(DetectorUnavailable, match="do not exist"):
        make_detector("file", m, detections=str(tmp_path / "nope.npz"))
    path = write_npz(tmp_path / "d.npz", {"S1": {"Walking": [poses(2, 0)] * 2}})
    det = make_detector("file", m, detections=str(path))
    assert isinstance(det, FileDetector) and det.name == "file"
    with pytest.raises(ValueError, match="choose one of"):
        make_detector("nope", m)
    assert set(DETECTORS) == {"net", "gt", "file", "mediapipe", "mediapipe-people"}


# --- MediaPipe ----------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_MEDIAPIPE, reason="mediapipe is installed")
def test_mediapipe_missing_is_a_clear_error() -> None:
    with pytest.raises(DetectorUnavailable, match="requirements-mediapipe.txt"):
        MediaPipeDetector()


@pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe (requirements-mediapipe.txt) absent")
def test_mediapipe_no_person_and_unreadable_frames() -> None:
    det = MediaPipeDetector()
    images = [np.zeros((300, 200, 3), np.uint8), None]
    boxes = np.array([[0, 0, 199, 299], [0, 0, 10, 10]], np.float64)
    joints, conf, out = det.detect_with_boxes(images, boxes, [None, None])
    assert joints.shape == (2, 17, 2) and conf.shape == (2, 17) and out.shape == (2, 4)
    assert np.isnan(joints).all() and (conf == 0).all() and np.isnan(out).all()
    det.close()

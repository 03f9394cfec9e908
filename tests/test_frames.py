"""pipeline.store.frames: reading frames by index from image folders and videos, with failures reported."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline.store.frames as frames_mod
from pipeline.store.frames import Frame, decode_image_file, read_frames
from pipeline.store.manifest import Manifest, parse_manifest

W, H, N = 64, 48, 40
CAM = {"fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0, "width": W, "height": H,
       "distortion": [0.0, 0.0, 0.0, 0.0, 0.0]}


def encode(i: int) -> np.ndarray:
    """A frame whose index survives lossy compression: 8 black/white 8x8 blocks are its bits."""
    img = np.full((H, W, 3), 90, np.uint8)
    for b in range(8):
        img[8:16, 8 * b:8 * b + 8] = 255 if (i >> b) & 1 else 0
    return img


def decode(img: np.ndarray) -> int:
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    return sum(int(img[12, 8 * b + 4].mean() > 128) << b for b in range(8))


def make_manifest(root: Path, kind: str, pattern: str, step: int = 1,
                  num_frames: int | None = None) -> Manifest:
    seq = {"subject": "S1", "action": "Walking", "subaction": 1}
    if num_frames is not None:
        seq["num_frames"] = num_frames
    raw = {"dataset": "tiny", "root": str(root), "joint_set": "h36m17",
           "cameras": {"c0": CAM, "c1": CAM},
           "frames": {"kind": kind, "pattern": pattern, "fps": 25, "step": step},
           "sequences": [seq], "splits": {"train": ["S1"]}}
    return parse_manifest(raw, root / "tiny.yaml")


def write_images(root: Path, n: int = 12) -> Manifest:
    m = make_manifest(root, "images", "img/{subject}/{camera}/{frame:05d}.jpg")
    for i in range(n):
        p = m.frame_path(m.sequences[0], "c0", i)
        p.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(p), encode(i))
    return m


def write_video(root: Path, fourcc: str, ext: str, step: int = 1) -> Manifest:
    m = make_manifest(root, "video", "vid/{subject}/{action}.{camera}." + ext, step=step)
    p = m.frame_path(m.sequences[0], "c0")
    p.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*fourcc), 25, (W, H))
    assert w.isOpened(), f"this OpenCV build cannot write {fourcc}"
    for i in range(N):
        w.write(encode(i))
    w.release()
    return m


def read(m: Manifest, indices, camera: str = "c0", **kw) -> list[Frame]:
    return list(read_frames(m, m.sequences[0], camera, indices, **kw))


# --- image folders ------------------------------------------------------------------------------

def test_images_read_requested_indices_in_order(tmp_path: Path) -> None:
    m = write_images(tmp_path)
    frames = read(m, [0, 3, 11, 2])
    assert [f.index for f in frames] == [0, 3, 11, 2]
    assert all(f.error is None for f in frames)
    assert [decode(f.image) for f in frames] == [0, 3, 11, 2]


def test_images_missing_and_corrupt_frames_are_reported_not_raised(tmp_path: Path) -> None:
    m = write_images(tmp_path)
    seq = m.sequences[0]
    m.frame_path(seq, "c0", 3).unlink()                                   # missing
    p4 = m.frame_path(seq, "c0", 4)
    data = p4.read_bytes()
    p4.write_bytes(data[: len(data) // 2])                                # truncated JPEG
    m.frame_path(seq, "c0", 5).write_bytes(b"\xff\xd8 not a jpeg \xff\xd9")  # garbage
    m.frame_path(seq, "c0", 6).write_bytes(b"")                           # empty
    frames = read(m, range(2, 9))
    assert [f.index for f in frames] == list(range(2, 9))
    ok = {f.index: decode(f.image) for f in frames if f.image is not None}
    assert ok == {2: 2, 7: 7, 8: 8}
    errors = {f.index: f.error for f in frames if f.image is None}
    assert set(errors) == {3, 4, 5, 6}
    for i, e in errors.items():
        assert f"frame {i}" in e and f"{i:05d}.jpg" in e and "S1/Walking/1" in e and "c0" in e
    assert "missing" in errors[3]
    assert "truncated" in errors[4]
    assert "decode" in errors[5]
    assert "empty" in errors[6]


def test_images_frame_step_from_manifest(tmp_path: Path) -> None:
    write_images(tmp_path)
    m = make_manifest(tmp_path, "images", "img/{subject}/{camera}/{frame:05d}.jpg", step=3)
    idx = m.frame_indices(m.sequences[0])          # counts the files on disk: 12
    assert idx.tolist() == [0, 3, 6, 9]
    assert [decode(f.image) for f in read(m, idx)] == [0, 3, 6, 9]


def test_png_decode_failure_and_grey_image_become_bgr(tmp_path: Path) -> None:
    grey = tmp_path / "g.png"
    cv2.imwrite(str(grey), np.full((5, 7), 200, np.uint8))
    img, err = decode_image_file(grey)
    assert err is None and img.shape == (5, 7, 3) and img.dtype == np.uint8
    bad = tmp_path / "b.png"
    bad.write_bytes(grey.read_bytes()[:20])
    img, err = decode_image_file(bad)
    assert img is None and str(bad) in err


def test_expected_size_mismatch_is_an_error(tmp_path: Path) -> None:
    m = write_images(tmp_path, n=2)
    assert all(f.error is None for f in read(m, [0, 1], expected_size=(W, H)))
    frames = read(m, [0, 1], expected_size=(W + 1, H))
    assert all(f.image is None and f"{W}x{H}" in f.error for f in frames)


# --- videos -------------------------------------------------------------------------------------

CODECS = [("MJPG", "avi"), ("mp4v", "mp4")]


@pytest.mark.parametrize("fourcc,ext", CODECS)
def test_video_sequential_with_frame_step(tmp_path: Path, fourcc: str, ext: str) -> None:
    m = write_video(tmp_path, fourcc, ext, step=3)
    idx = m.frame_indices(m.sequences[0])          # counts the video's frames
    assert idx.tolist() == list(range(0, N, 3))
    frames = read(m, idx)
    assert all(f.error is None for f in frames)
    assert [decode(f.image) for f in frames] == idx.tolist()


@pytest.mark.parametrize("fourcc,ext", CODECS)
@pytest.mark.parametrize("allow_seek", [True, False])
def test_video_jumps_backward_and_forward(tmp_path: Path, fourcc: str, ext: str,
                                          allow_seek: bool) -> None:
    m = write_video(tmp_path, fourcc, ext)
    order = [30, 5, 6, 8, 35, 0, 39, 20, 21]
    frames = read(m, order, max_skip=2, allow_seek=allow_seek)
    assert [f.error for f in frames] == [None] * len(order)
    assert [decode(f.image) for f in frames] == order


def test_video_seeks_only_when_jumping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = write_video(tmp_path, "MJPG", "avi")
    seeks: list[int] = []
    real_seek = frames_mod._Video.seek

    def counting_seek(self, index: int) -> bool:
        seeks.append(index)
        return real_seek(self, index)

    monkeypatch.setattr(frames_mod._Video, "seek", counting_seek)
    frames = read(m, [0, 2, 4, 30, 31, 10], max_skip=4)
    assert [decode(f.image) for f in frames] == [0, 2, 4, 30, 31, 10]
    assert seeks == [30, 10]


@pytest.mark.parametrize("allow_seek", [True, False])
def test_video_past_end_is_reported_and_reading_recovers(tmp_path: Path, allow_seek: bool) -> None:
    m = write_video(tmp_path, "MJPG", "avi")
    frames = read(m, [38, 39, 40, 100, 2, 41, 3], allow_seek=allow_seek)
    assert [f.index for f in frames] == [38, 39, 40, 100, 2, 41, 3]
    assert [f.image is None for f in frames] == [False, False, True, True, False, True, False]
    assert [decode(f.image) for f in frames if f.image is not None] == [38, 39, 2, 3]
    assert all("past the end" in f.error and str(m.frame_path(m.sequences[0], "c0")) in f.error
               for f in frames if f.image is None)


def test_missing_and_corrupt_video_yield_errors_for_every_index(tmp_path: Path) -> None:
    m = make_manifest(tmp_path, "video", "vid/{camera}.avi")
    frames = read(m, [0, 1, 2], camera="c1")
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.image is None and "missing video" in f.error and "c1.avi" in f.error
               for f in frames)
    bad = m.frame_path(m.sequences[0], "c0")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    frames = read(m, [0, 5])
    assert all(f.image is None and "frame" in f.error and str(bad) in f.error for f in frames)


def test_negative_index_is_an_error(tmp_path: Path) -> None:
    m = write_video(tmp_path, "MJPG", "avi")
    frames = read(m, [-1, 1])
    assert frames[0].image is None and "negative" in frames[0].error
    assert decode(frames[1].image) == 1

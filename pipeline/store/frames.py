"""Frame readers: one sequence's frames of one camera, by index, from image folders or a video.

``read_frames`` is the only entry point stage 1 needs. It yields one ``Frame`` per requested
index, in the order requested, and never raises half-way through a sequence: a missing,
truncated or undecodable frame comes back as ``Frame(index, None, reason)``, where the reason
names the sequence, camera, frame index and file, so the caller can log it and drop the frame.

Indices are *source* frame indices (``Manifest.frame_indices`` already applied the frame step).

* Image sources (``frames.kind: images``): each index is formatted into the manifest's pattern
  and decoded with OpenCV. A JPEG without its end-of-image marker (a file cut short by a crashed
  copy) is reported, not silently returned half grey.
* Video sources (``frames.kind: video``): one ``cv2.VideoCapture`` per call, read sequentially.
  Small forward gaps (a frame step of 2 to ``max_skip``) are skipped with ``grab()``, which
  decodes without converting; larger jumps and backward jumps seek with
  ``CAP_PROP_POS_FRAMES``. ``allow_seek=False`` never seeks (backward jumps reopen the file and
  grab forward): slower, for containers whose seeking is not frame-accurate.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from pipeline.store.manifest import Manifest, Sequence

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")
_JPEG_EOI = b"\xff\xd9"
_EOI_SEARCH_BYTES = 1024  # some writers pad after the end-of-image marker


class Frame(NamedTuple):
    """One requested frame: ``image`` is (H, W, 3) uint8 BGR, or None with ``error`` set."""

    index: int
    image: np.ndarray | None
    error: str | None


def read_frames(manifest: Manifest, seq: Sequence, camera: str, indices: Iterable[int], *,
                max_skip: int = 64, allow_seek: bool = True,
                expected_size: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Yield ``Frame(index, image_bgr, error)`` for each of ``indices``, in the given order.

    Args:
        manifest, seq, camera: what to read; the path comes from ``manifest.frame_path``.
        indices: source frame indices (ints >= 0), e.g. ``manifest.frame_indices(seq)``.
        max_skip: video only; forward gaps up to this many frames are read through rather than
            sought (seeking restarts decoding at a key frame, costly for short hops).
        allow_seek: video only; False never uses ``CAP_PROP_POS_FRAMES``.
        expected_size: (width, height); a decoded frame of another size is reported as an
            error (its pixels would not match the manifest's intrinsics).
    """
    label = f"{manifest.path.name}: sequence {seq.key} camera {camera}"
    if seq.frames.kind == "images":
        frames = _read_images(manifest, seq, camera, indices, label)
    elif seq.frames.kind == "video":
        frames = _read_video(manifest.frame_path(seq, camera), indices, label, max_skip,
                             allow_seek)
    else:  # the manifest validator rejects other kinds; guard against hand-built sequences
        raise ValueError(f"{label}: unknown frame source kind {seq.frames.kind!r}")
    want = None if expected_size is None else (int(expected_size[0]), int(expected_size[1]))
    for frame in frames:
        if want is not None and frame.image is not None:
            h, w = frame.image.shape[:2]
            if (w, h) != want:
                frame = Frame(frame.index, None, f"{label} frame {frame.index}: image is {w}x{h}, "
                                                 f"expected {want[0]}x{want[1]}")
        yield frame


# --- image folders ------------------------------------------------------------------------------

def _read_images(manifest: Manifest, seq: Sequence, camera: str, indices: Iterable[int],
                 label: str) -> Iterator[Frame]:
    for i in indices:
        i = int(i)
        if i < 0:
            yield Frame(i, None, f"{label} frame {i}: negative frame index")
            continue
        path = manifest.frame_path(seq, camera, i)
        image, error = decode_image_file(path)
        yield Frame(i, image, None if error is None else f"{label} frame {i}: {error}")


def decode_image_file(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Read one image file as (H, W, 3) uint8 BGR; on failure (None, reason naming the file)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        return None, f"{path}: missing file"
    except OSError as e:
        return None, f"{path}: cannot read ({e.strerror or e})"
    if data.size == 0:
        return None, f"{path}: empty file"
    tail = data[-_EOI_SEARCH_BYTES:].tobytes()
    if path.suffix.lower() in JPEG_SUFFIXES and _JPEG_EOI not in tail:
        return None, f"{path}: truncated JPEG (no end-of-image marker)"
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:
        return None, f"{path}: cannot decode ({str(e).strip().splitlines()[-1]})"
    if image is None:
        return None, f"{path}: cannot decode (corrupt or unsupported image)"
    return image, None


# --- video files --------------------------------------------------------------------------------

class _Video:
    """A ``cv2.VideoCapture`` that knows which frame ``read()`` returns next (``pos``).

    ``end`` is the first index found unreadable while reading through (None until then); the
    read-through fallback does not rescan the file for indices at or after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cap: cv2.VideoCapture | None = None
        self.pos: int | None = None  # None: unknown (after a failure)
        self.end: int | None = None
        self.open_error: str | None = None
        self.reopen()

    def reopen(self) -> bool:
        self.release()
        if not self.path.is_file():
            self.open_error = "missing video file"
            return False
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            self.open_error = "cannot open video (corrupt or unsupported codec)"
            return False
        self.cap, self.pos, self.open_error = cap, 0, None
        return True

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
        self.cap, self.pos = None, None

    def seek(self, index: int) -> bool:
        """Seek so that ``read()`` returns ``index``; False if refused or misplaced."""
        assert self.cap is not None
        ok = self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        self.pos = int(round(self.cap.get(cv2.CAP_PROP_POS_FRAMES))) if ok else None
        if self.pos != index:
            self.pos = None
            return False
        return True

    def skip_to(self, index: int) -> bool:
        """Grab (decode, no conversion) forward from ``pos`` until ``read()`` returns ``index``."""
        assert self.cap is not None and self.pos is not None and self.pos <= index
        while self.pos < index:
            if not self.cap.grab():
                self.end, self.pos = self.pos, None
                return False
            self.pos += 1
        return True

    def read(self) -> np.ndarray | None:
        assert self.cap is not None
        ok, image = self.cap.read()
        if not ok or image is None:
            if self.pos is not None:
                self.end = self.pos
            self.pos = None
            return None
        self.pos = None if self.pos is None else self.pos + 1
        return image


def _read_video(path: Path, indices: Iterable[int], label: str, max_skip: int,
                allow_seek: bool) -> Iterator[Frame]:
    video = _Video(path)
    try:
        for i in indices:
            i = int(i)
            if i < 0:
                yield Frame(i, None, f"{label} frame {i}: negative frame index")
                continue
            error = video.open_error if video.cap is None else _position(video, i, max_skip,
                                                                         allow_seek)
            image = None
            if error is None:
                image = video.read()
                if image is None:
                    error = "cannot decode (corrupt frame or past the end of the video)"
                elif image.ndim == 2:
                    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            yield Frame(i, image, None if error is None else f"{label} frame {i}: {path}: {error}")
    finally:
        video.release()


def _position(video: _Video, index: int, max_skip: int, allow_seek: bool) -> str | None:
    """Move ``video`` so that its next ``read()`` returns frame ``index``; an error or None."""
    pos = video.pos
    if pos is not None and pos <= index <= pos + max_skip:
        return None if video.skip_to(index) else "past the end of the video"
    if allow_seek and video.seek(index):
        return None
    # No seeking, or the backend refused or misplaced the seek: read through instead.
    if video.end is not None and index >= video.end:
        return f"past the end of the video ({video.end} readable frames)"
    if video.pos is None or index < video.pos:
        if not video.reopen():
            return video.open_error
    return None if video.skip_to(index) else "past the end of the video"

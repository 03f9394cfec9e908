"""What ``predict`` reads: a video file, a folder of images, or a dataset manifest, as clips.

A :class:`Clip` is one (sequence, camera) to run on: a manifest (real, or built here for a lone
video or image folder, so that the detector registry of ``pipeline.detect.registry`` and the frame
readers of ``pipeline.store.frames`` work unchanged), the frame indices, and how to read them.

Input kinds (:data:`INPUT_KINDS`, tried in order):

* ``manifest``: a ``.yaml``/``.yml`` dataset manifest (``pipeline.store.manifest``): every sequence of
  ``split`` (all sequences when None) and camera (or only ``cameras``); its intrinsics, its
  ground truth (boxes, scoring) where present.
* ``video``: any file OpenCV can open (``.mp4``, ``.avi``, ``.mov`` ...): one clip.
* ``images``: a folder of ``.jpg``/``.jpeg``/``.png``/``.bmp`` files, read in name order (frame
  index = position in that order; ``poses.parquet`` keeps each frame's file name).

Names of a lone video or image folder (the keys of its rows, and of a detections file for it):
dataset :data:`FOOTAGE_DATASET`, subject = the name of the folder that holds the input, as the
path names it (:data:`FOOTAGE_SUBJECT` for a bare file name), action = the video's file stem or the image
folder's name, subaction ``1``, camera :data:`FOOTAGE_CAMERA`. So ``clips/jump.mp4`` is
``subject=clips, action=jump, camera=cam0``.

Frame rate (``time_s``): a video's own (``--fps`` overrides it); an image folder's only from
``--fps``. Without a known rate ``time_s`` is null, the overlay video plays at
:data:`PLAYBACK_FPS`, and ``--smooth`` (a filter in Hz) is refused until ``--fps`` is given.

Footage without calibration gets a pinhole camera with the principal point at the image centre
and a focal length of ``focal_px`` (default: the longer image side, a 53-degree field of view):
only the metric 3D depends on it, weakly (the pose is root-relative and scaled to the reference
skeleton, :func:`train.predict.metric_poses`).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.detect.network import FrameKey
from pipeline.store.frames import Frame, decode_image_file, read_frames
from pipeline.joints import H36M17
from pipeline.store.manifest import FrameSource, Manifest, ManifestError, Sequence, load_manifest

FOOTAGE_DATASET = "footage"
"""The ``dataset`` of a lone video or image folder (so the 2D network trained on the synthetic
set is not taken for it: ``DETECTOR=auto`` then picks MediaPipe)."""
FOOTAGE_CAMERA = "cam0"
FOOTAGE_SUBJECT = "footage"
"""The subject of an input whose path, as given, names no folder (``jump.mp4``)."""
PLAYBACK_FPS = 25.0
"""The overlay video's rate for footage without a known frame rate (its ``time_s`` is null)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class InputError(ValueError):
    """The input cannot be read (missing, not a video, empty folder ...); names the path."""


@dataclass(frozen=True)
class Clip:
    """One (sequence, camera) to predict on.

    Attributes:
        manifest, seq, camera: where the frames come from (``manifest.camera(camera)`` gives K).
        frames: (F,) source frame indices to read.
        files: image-folder input only: the file of each frame index.
        rate_known: False where the frame rate is not known (an image folder without ``--fps``,
            a video that does not say): :meth:`time_s` is then None, :attr:`fps` only the
            overlay's playback rate.
    """

    manifest: Manifest
    seq: Sequence
    camera: str
    frames: np.ndarray
    files: tuple[Path, ...] = field(default=())
    rate_known: bool = True

    @property
    def name(self) -> str:
        return f"{self.seq.subject}/{self.seq.action}/{self.seq.subaction}/{self.camera}"

    @property
    def fps(self) -> float:
        return float(self.seq.frames.fps) / max(1, int(self.seq.frames.step))

    def time_s(self, frames: np.ndarray) -> np.ndarray | None:
        """Seconds of ``frames`` from the clip's start, or None where the rate is unknown."""
        return np.asarray(frames) / self.fps if self.rate_known else None

    def file_names(self, frames: np.ndarray) -> list[str] | None:
        """The image file name of each of ``frames`` (image-folder input), else None."""
        return [self.files[int(i)].name for i in frames] if self.files else None

    def read(self, indices: list[int]) -> Iterator[Frame]:
        """One :class:`pipeline.store.frames.Frame` per index (image None, an error when unreadable)."""
        if not self.files:
            yield from read_frames(self.manifest, self.seq, self.camera, indices)
            return
        for i in indices:
            image, error = decode_image_file(self.files[i])
            yield Frame(i, image, error)

    def key(self, frame: int) -> FrameKey:
        s = self.seq
        return FrameKey(self.manifest.dataset, s.subject, s.action, s.subaction, self.camera,
                        int(frame))


def _footage_manifest(path: Path, frames: FrameSource, width: int, height: int,
                      focal_px: float | None, num_frames: int) -> Manifest:
    f = float(focal_px) if focal_px else float(max(width, height))
    cam = {"fx": f, "fy": f, "cx": (width - 1) / 2, "cy": (height - 1) / 2, "width": width,
           "height": height, "distortion": [0.0] * 5}
    seq = Sequence(path.parent.name or FOOTAGE_SUBJECT, path.stem, "1", (FOOTAGE_CAMERA,),
                   frames, name=path.stem, num_frames=num_frames)
    return Manifest(path=path, dataset=FOOTAGE_DATASET, root=path.parent, joint_set=H36M17,
                    cameras={FOOTAGE_CAMERA: cam}, extrinsics={}, frames=frames,
                    sequences=(seq,), splits={})


def _video_clips(path: Path, focal_px: float | None, fps: float | None = None, **_: object
                 ) -> list[Clip]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: cannot open as a video (corrupt or unsupported codec)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = fps or float(cap.get(cv2.CAP_PROP_FPS)) or None
        ok, first = cap.read()
    finally:
        cap.release()
    if not ok or first is None:
        raise InputError(f"{path}: no frame can be decoded (corrupt or unsupported video)")
    h, w = first.shape[:2]
    m = _footage_manifest(path, FrameSource("video", path.name, fps or PLAYBACK_FPS), w, h,
                          focal_px, n)
    return [Clip(m, m.sequences[0], FOOTAGE_CAMERA, np.arange(max(n, 1)), rate_known=bool(fps))]


def _image_clips(path: Path, focal_px: float | None, fps: float | None = None, **_: object
                 ) -> list[Clip]:
    files = tuple(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise InputError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
    first = next((img for img, _ in map(decode_image_file, files) if img is not None), None)
    if first is None:
        raise InputError(f"{path}: none of its {len(files)} images can be decoded")
    h, w = first.shape[:2]
    m = _footage_manifest(path, FrameSource("images", "{frame}", fps or PLAYBACK_FPS), w, h,
                          focal_px, len(files))
    return [Clip(m, m.sequences[0], FOOTAGE_CAMERA, np.arange(len(files)), files,
                 rate_known=bool(fps))]


def _manifest_clips(path: Path, split: str | None = None,
                    cameras: tuple[str, ...] | None = None, **_: object) -> list[Clip]:
    m = load_manifest(path)
    seqs = m.sequences_in(split)
    if not seqs:
        raise InputError(f"{path}: split {split!r} has no sequences")
    clips = [Clip(m, s, c, m.frame_indices(s, c)) for s in seqs for c in s.cameras
             if not cameras or c in cameras]
    if not clips:
        raise InputError(f"{path}: no sequence has the cameras {list(cameras or ())}")
    return clips


@dataclass(frozen=True)
class InputKind:
    """One kind of input: whether a path is of this kind, and its clips."""

    name: str
    matches: Callable[[Path], bool]
    clips: Callable[..., list[Clip]]


INPUT_KINDS: tuple[InputKind, ...] = (
    InputKind("manifest", lambda p: p.is_file() and p.suffix.lower() in (".yaml", ".yml"),
              _manifest_clips),
    InputKind("images", lambda p: p.is_dir(), _image_clips),
    InputKind("video", lambda p: p.is_file(), _video_clips),
)
"""Input kinds by precedence (module docstring)."""


MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")


def default_out(path: str | Path, base: str | Path = "outputs/predict") -> Path:
    """``predict``'s default output folder for an input: ``base/<stem>`` for an input in the
    working directory, else ``base/<parent>_<stem>`` from the absolute path (a manifest named
    ``manifest.yaml`` stands for its folder), so two videos of one name in different folders do
    not share a folder. The Makefile's ``PREDICT_OUT`` spells the same rule (a test holds them
    together)."""
    p = Path(os.path.abspath(path))
    if p.name in MANIFEST_NAMES:
        p = p.parent
    here = p.parent == Path(os.getcwd()) or not p.parent.name
    return Path(base) / (p.stem if here else f"{p.parent.name}_{p.stem}")


def open_input(path: str | Path, *, focal_px: float | None = None, split: str | None = None,
               cameras: tuple[str, ...] | None = None, fps: float | None = None) -> list[Clip]:
    """The clips of an input path (module docstring); ``fps``: a video's or image folder's
    frame rate (a manifest's own rates stand). InputError naming the path when it cannot be
    read, ManifestError for a malformed manifest."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps {fps}: a frame rate must be positive")
    for kind in INPUT_KINDS:
        if kind.matches(p):
            try:
                return kind.clips(p, focal_px=focal_px, split=split, cameras=cameras, fps=fps)
            except ManifestError as e:
                raise InputError(str(e)) from None
    raise InputError(f"input {p} is neither a video, an image folder nor a manifest")

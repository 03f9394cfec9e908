"""A video dataset from the frames of a manifest: an MP4 per sequence and camera, the ground
truth and a manifest that reads the videos (``frames.kind: video``).

This is how the project makes "footage" with known 3D: ``python -m pipeline test-video`` writes
the synthetic test subjects' frames as MP4 files, so that ``make predict`` runs on a
real video file and ``make eval`` (``python -m eval metrics --manifest <folder>/manifest.yaml``)
scores the same decoded frames against the same ground truth.

Output folder::

    manifest.yaml                     the source's dataset name (the same frames: a 2D network
                                      trained on them is accepted), cameras, sequences
    videos/<subject>_<action>_<subaction>.<camera>.mp4
    gt/<subject>/<action>_<subaction>.npz   the source ground truth at the written frames
                                      (joints_3d_cam, joints_2d, bbox, visible: (C, F, J, ...))

The frames are those of the source's ``frame_indices`` (frame step applied), at most
``max_frames`` per sequence; frame k of the video is the k-th of them, and the ground truth is
re-indexed the same way. MP4 (``mp4v``) is lossy: the video's pixels differ slightly from the
source images, which is why evaluation reads the video, not the source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from pipeline.store.frames import read_frames
from pipeline.store.ground_truth import SequenceGroundTruth
from pipeline.store.manifest import Manifest, ManifestError, Sequence

VIDEO_FOURCC = "mp4v"
GT_KEYS = ("joints_3d_cam", "joints_2d", "bbox", "visible")


@dataclass(frozen=True)
class VideoSet:
    """What :func:`write_video_set` wrote: the manifest and one MP4 per sequence."""

    manifest: Path
    videos: tuple[Path, ...]
    frames: int


def _write_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """Frames (H, W, 3) BGR -> an MP4 file, written to a temporary name and renamed."""
    h, w = frames[0].shape[:2]
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {VIDEO_FOURCC} video to {tmp}")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()
    os.replace(tmp, path)


def _sequence_gt(m: Manifest, seq: Sequence, cameras: tuple[str, ...], idx: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """The ground-truth arrays of ``seq`` for ``cameras`` at source frames ``idx``, (C, F, ...)."""
    gt = SequenceGroundTruth.require(m, seq, "bbox", "cameras")
    out: dict[str, np.ndarray] = {"cameras": np.array(cameras)}
    for key in GT_KEYS:
        arrays = [gt.camera_array(c, key) for c in cameras]
        if all(a is not None for a in arrays):
            out[key] = np.stack([np.asarray(a)[idx] for a in arrays])
    if "joints_3d_cam" not in out:
        raise ManifestError(f"{m.gt_path(seq)}: no camera-frame 3D (joints_3d_cam)")
    return out


def write_video_set(m: Manifest, out: str | Path, split: str = "test",
                    max_frames: int | None = None, subjects: tuple[str, ...] | None = None
                    ) -> VideoSet:
    """Write the sequences of ``split`` (optionally only ``subjects``), every camera, as a video
    dataset in ``out`` (module docstring). Raises ManifestError naming the frame that cannot be
    read (a video with a hole would shift every later frame against its truth)."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    seqs = m.sequences_in(split, subjects)
    if not seqs:
        raise ManifestError(f"{m.path}: split {split!r} has no sequence"
                            + (f" of subjects {list(subjects)}" if subjects else ""))
    entries, videos, total = [], [], 0
    for seq in seqs:
        idx = m.frame_indices(seq)[:max_frames]
        name = f"{seq.subject}_{seq.action}_{seq.subaction}"
        for cam in seq.cameras:
            videos.append(out / "videos" / f"{name}.{cam}.mp4")
            _write_video(_read_all(m, seq, cam, idx), videos[-1], seq.frames.fps / seq.frames.step)
        gt_path = out / "gt" / seq.subject / f"{seq.action}_{seq.subaction}.npz"
        gt_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(gt_path, **_sequence_gt(m, seq, seq.cameras, idx))
        entries.append({"subject": seq.subject, "action": seq.action, "subaction": seq.subaction,
                        "name": name, "cameras": list(seq.cameras), "num_frames": len(idx)})
        total += len(idx) * len(seq.cameras)
    path = out / "manifest.yaml"
    path.write_text(yaml.safe_dump(_plain(_manifest_dict(m, seqs, entries, split)),
                                   sort_keys=False))
    return VideoSet(path, tuple(videos), total)


def _read_all(m: Manifest, seq: Sequence, camera: str, idx: np.ndarray) -> list[np.ndarray]:
    images = []
    for fr in read_frames(m, seq, camera, idx.tolist()):
        if fr.image is None:
            raise ManifestError(f"cannot write the video of {seq.key}: {fr.error}")
        images.append(fr.image)
    return images


def _manifest_dict(m: Manifest, seqs: list[Sequence], entries: list[dict], split: str) -> dict:
    subjects = sorted({e["subject"] for e in entries})
    cams = sorted({c for s in seqs for c in s.cameras}, key=list(m.cameras).index)
    extr = {s: {c: {"R": np.asarray(R).tolist(), "t": np.asarray(t).reshape(3).tolist()}
                for c, (R, t) in m.extrinsics.get(s, {}).items() if c in cams}
            for s in subjects if s in m.extrinsics}
    seq0 = seqs[0].frames
    return {"dataset": m.dataset, "root": ".", "joint_set": m.joint_set.name,
            "cameras": {c: dict(m.cameras[c]) for c in cams}, "extrinsics": extr,
            "frames": {"kind": "video", "pattern": "videos/{name}.{camera}.mp4",
                       "fps": seq0.fps / seq0.step, "step": 1},
            "ground_truth": {"joints_3d": "gt/{subject}/{action}_{subaction}.npz"},
            "sequences": entries, "splits": {split: subjects}}


def _plain(o):
    """numpy scalars and tuples -> plain YAML types."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o

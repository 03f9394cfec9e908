"""Pictures of predictions: the overlay video (MP4) and the contact sheet (PNG) of ``predict``.

Each overlay frame is the input frame with the 2D skeleton and the person box (left), and a side
panel with the 3D skeleton seen from a fixed viewpoint (right): the root-relative camera-frame
pose turned by :data:`VIEW_YAW_DEG` about the camera's vertical axis and tilted by
:data:`VIEW_PITCH_DEG`, drawn orthographically, :data:`PANEL_SPAN_MM` across the panel. One
person's bones are coloured by side (``pipeline.synthetic.contact_sheet.draw_pose``: left blue,
right red); with several people each is drawn in its track's colour (:func:`person_colour`),
box and id included, and the panel shows them side by side in the left-to-right order of their
roots as seen from the viewpoint.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.joints import JointSet
from pipeline.store.shards import atomic_write_bytes
from pipeline.synthetic.contact_sheet import draw_pose

VIEW_YAW_DEG = 60.0
VIEW_PITCH_DEG = 15.0
PANEL_SPAN_MM = 2400.0
OVERLAY_HEIGHT_PX = (480, 1080)
"""The overlay's default height: the input frame's own, kept within this range (a small frame
is enlarged so the labels and the 3D panel stay legible, a 4K one reduced); ``predict
--overlay-height`` sets it."""
LABEL_SCALE_PX = 480
"""Text and line widths are drawn for this height and scaled with the overlay's."""
FOURCC = "mp4v"


def view_rotation(yaw_deg: float = VIEW_YAW_DEG, pitch_deg: float = VIEW_PITCH_DEG
                  ) -> np.ndarray:
    """(3, 3) rotation of camera-frame points (x right, y down, z forward) into the panel's view."""
    y, p = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return Rx @ Ry


PERSON_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 128, 0), (0, 200, 255), (255, 0, 255), (0, 255, 0), (0, 128, 255), (255, 255, 0),
    (128, 0, 255), (0, 255, 192), (255, 64, 128), (160, 160, 255))
"""BGR colour of track ``t``: ``PERSON_COLOURS[t % len(PERSON_COLOURS)]``."""
PANEL_PEOPLE = 6
"""The 3D panel shows at most this many people (the lowest track ids)."""


def person_colour(track: int) -> tuple[int, int, int]:
    """The colour of a track id in the overlay and the 3D panel."""
    return PERSON_COLOURS[int(track) % len(PERSON_COLOURS)]


def overlay_height(frame_height: int, height: int | None = None) -> int:
    """The overlay's height in pixels: ``height`` where given, else the frame's own within
    :data:`OVERLAY_HEIGHT_PX`."""
    if height is not None:
        if height < 16:
            raise ValueError(f"overlay height {height} px is too small (16 at least)")
        return int(height)
    lo, hi = OVERLAY_HEIGHT_PX
    return int(np.clip(frame_height, lo, hi))


def _ink(height: int) -> tuple[float, int]:
    """Font scale and line width for an overlay ``height`` pixels high."""
    k = height / LABEL_SCALE_PX
    return 0.45 * k, max(1, int(round(k)))


def panel_3d(pose_mm: np.ndarray, side: int, joint_set: JointSet,
             roots_mm: np.ndarray | None = None,
             colours: list[tuple[int, int, int] | None] | None = None) -> np.ndarray:
    """(side, side, 3) dark panel with root-relative poses from the fixed viewpoint, at the scale
    of :data:`PANEL_SPAN_MM` across the panel: one (J, 3) pose in the middle, or (P, J, 3) poses
    of several people side by side, ordered left to right as their camera-frame roots
    ``roots_mm`` (P, 3) appear from the viewpoint, each in its colour (None: bones by side).
    Poses that are not finite are left out."""
    panel = np.full((side, side, 3), 32, np.uint8)
    font, width = _ink(side)
    cv2.putText(panel, f"3D, yaw {VIEW_YAW_DEG:g} deg", (6 * width, int(16 * font / 0.45)),
                cv2.FONT_HERSHEY_SIMPLEX, font, (200, 200, 200), width, cv2.LINE_AA)
    poses = np.asarray(pose_mm, np.float64)
    poses = poses[None] if poses.ndim == 2 else poses
    roots = np.zeros((len(poses), 3)) if roots_mm is None else \
        np.nan_to_num(np.asarray(roots_mm, np.float64).reshape(len(poses), 3))
    colours = [None] * len(poses) if colours is None else list(colours)
    ok = np.flatnonzero(np.isfinite(poses).all((1, 2)))
    if not len(ok):
        return panel
    R = view_rotation()
    ok = ok[np.argsort((roots[ok] @ R.T)[:, 0], kind="stable")]
    for k, i in enumerate(ok):
        v = poses[i] @ R.T
        uv = v[:, :2] * (side / PANEL_SPAN_MM)
        uv[:, 0] += side * (k + 0.5) / len(ok) - 0.5
        uv[:, 1] += (side - 1) / 2.0
        panel = draw_pose(panel, uv, js=joint_set, colour=colours[i], thickness=width)
    return panel


def overlay_frame(image: np.ndarray | None, joints_2d: np.ndarray, box: np.ndarray,
                  pose_mm: np.ndarray, joint_set: JointSet, label: str,
                  size: tuple[int, int], roots_mm: np.ndarray | None = None,
                  tracks: np.ndarray | None = None, height: int | None = None) -> np.ndarray:
    """One overlay frame, :func:`overlay_height` high (``height``, else the input's own within
    :data:`OVERLAY_HEIGHT_PX`): the (H, W) input frame resized to that height with the
    skeletons and boxes drawn, and the square 3D panel; ``size`` = (W, H) stands in for an
    unreadable frame (grey).

    One person: ``joints_2d`` (J, 2), ``box`` (4,), ``pose_mm`` (J, 3), bones coloured by side.
    Several: (P, J, 2), (P, 4), (P, J, 3), their ``tracks`` (P,) ids (each person in the colour
    of its track, :func:`person_colour`, with its id by the box) and ``roots_mm`` (P, 3), whose
    order the panel keeps; it shows the first :data:`PANEL_PEOPLE` of them."""
    w, h = size
    img = np.full((h, w, 3), 64, np.uint8) if image is None else image
    H = overlay_height(img.shape[0], height)
    font, width = _ink(H)
    s = H / img.shape[0]
    img = cv2.resize(img, (max(1, int(round(img.shape[1] * s))), H),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    several = np.asarray(joints_2d).ndim == 3
    joints_2d, box, pose_mm = (np.asarray(joints_2d), np.asarray(box, np.float64),
                               np.asarray(pose_mm)) if several else \
        (np.asarray(joints_2d)[None], np.asarray(box, np.float64)[None], np.asarray(pose_mm)[None])
    colours = [person_colour(t) for t in tracks] if tracks is not None and several else \
        [None] * len(joints_2d)
    left = img
    for k in range(len(joints_2d)):
        finite = np.isfinite(joints_2d[k]).all(-1)
        if not finite.any():
            continue
        uv = (np.nan_to_num(joints_2d[k]) + 0.5) * s - 0.5  # pixel centres: u' = (u + 0.5) s - 0.5
        b = (box[k] + 0.5) * s - 0.5 if np.isfinite(box[k]).all() else None
        if colours[k] is None:
            left = draw_pose(left, uv, finite, b, joint_set, thickness=width)
            continue
        left = draw_pose(left, uv, finite, None, joint_set, colour=colours[k], thickness=width)
        if b is not None:
            p = np.rint(b).astype(int)
            cv2.rectangle(left, (p[0], p[1]), (p[2], p[3]), colours[k], width)
            cv2.putText(left, str(int(tracks[k])), (p[0] + 3 * width, p[1] + 15 * width),
                        cv2.FONT_HERSHEY_SIMPLEX, font * 1.1, colours[k], width, cv2.LINE_AA)
    cv2.putText(left, label, (6 * width, left.shape[0] - 8 * width), cv2.FONT_HERSHEY_SIMPLEX,
                font, (255, 255, 255), width, cv2.LINE_AA)
    shown = slice(0, PANEL_PEOPLE)
    panel = panel_3d(pose_mm[shown], H, joint_set,
                     None if roots_mm is None else np.asarray(roots_mm).reshape(-1, 3)[shown],
                     colours[shown])
    return np.concatenate([left, panel], axis=1)


class OverlayVideo:
    """An MP4 written frame by frame to a hidden temporary name; :meth:`close` renames it into
    place, so a run that stops half-way still leaves a playable video of what it predicted."""

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC),
                                          self.fps, (w, h))
            if not self.writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write {FOURCC} video to {self.tmp}")
            self.size = (w, h)
        if (frame.shape[1], frame.shape[0]) != self.size:  # a frame of another size: fit it
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; the path, or None when no frame was written."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        os.replace(self.tmp, self.path)
        return self.path


def write_contact_sheet(tiles: list[np.ndarray], path: str | Path, columns: int = 3,
                        tile_height: int = 240) -> Path | None:
    """Overlay frames in a grid (``columns`` per row, each resized to ``tile_height``), written as
    PNG to a temporary name and renamed; None when there is no tile."""
    if not tiles:
        return None
    resized = [cv2.resize(t, (int(round(t.shape[1] * tile_height / t.shape[0])), tile_height),
                          interpolation=cv2.INTER_AREA) for t in tiles]
    width = max(t.shape[1] for t in resized)
    resized = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in resized]
    while len(resized) % columns:
        resized.append(np.zeros_like(resized[0]))
    rows = [np.concatenate(resized[i:i + columns], axis=1) for i in range(0, len(resized), columns)]
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.concatenate(rows, axis=0))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, buf.tobytes())
    return path

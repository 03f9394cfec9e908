"""Pictures of predictions: the overlay video (MP4) and the contact sheet (PNG) of ``predict``.

Each overlay frame is the input frame with the 2D skeleton and the person box (left), and a side
panel with the 3D skeleton seen from a fixed viewpoint (right): the root-relative camera-frame
pose turned by :data:`VIEW_YAW_DEG` about the camera's vertical axis and tilted by
:data:`VIEW_PITCH_DEG`, drawn orthographically, :data:`PANEL_SPAN_MM` across the panel. Bones are
coloured by side (``pipeline.synthetic.contact_sheet.draw_pose``: left blue, right red).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.joints import JointSet
from pipeline.synthetic.contact_sheet import draw_pose

VIEW_YAW_DEG = 60.0
VIEW_PITCH_DEG = 15.0
PANEL_SPAN_MM = 2400.0
FRAME_HEIGHT_PX = 480
FOURCC = "mp4v"


def view_rotation(yaw_deg: float = VIEW_YAW_DEG, pitch_deg: float = VIEW_PITCH_DEG
                  ) -> np.ndarray:
    """(3, 3) rotation of camera-frame points (x right, y down, z forward) into the panel's view."""
    y, p = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    Ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return Rx @ Ry


def panel_3d(pose_mm: np.ndarray, side: int, joint_set: JointSet) -> np.ndarray:
    """(side, side, 3) dark panel with the (J, 3) root-relative pose from the fixed viewpoint
    (an empty panel when the pose is not finite)."""
    panel = np.full((side, side, 3), 32, np.uint8)
    cv2.putText(panel, f"3D, yaw {VIEW_YAW_DEG:g} deg", (6, 16), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (200, 200, 200), 1, cv2.LINE_AA)
    if not np.isfinite(pose_mm).all():
        return panel
    v = np.asarray(pose_mm, np.float64) @ view_rotation().T
    uv = v[:, :2] * (side / PANEL_SPAN_MM) + (side - 1) / 2.0
    return draw_pose(panel, uv, js=joint_set)


def overlay_frame(image: np.ndarray | None, joints_2d: np.ndarray, box: np.ndarray,
                  pose_mm: np.ndarray, joint_set: JointSet, label: str,
                  size: tuple[int, int]) -> np.ndarray:
    """One overlay frame, :data:`FRAME_HEIGHT_PX` high: the (H, W) input frame resized to that
    height with the skeleton and box drawn, and the square 3D panel; ``size`` = (W, H) stands in
    for an unreadable frame (grey)."""
    w, h = size
    img = np.full((h, w, 3), 64, np.uint8) if image is None else image
    s = FRAME_HEIGHT_PX / img.shape[0]
    img = cv2.resize(img, (max(1, int(round(img.shape[1] * s))), FRAME_HEIGHT_PX),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    finite = np.isfinite(joints_2d).all(-1)
    left = img
    if finite.any():  # pixel centres: u' = (u + 0.5) s - 0.5
        uv = (np.nan_to_num(joints_2d) + 0.5) * s - 0.5
        b = (box + 0.5) * s - 0.5 if np.isfinite(box).all() else None
        left = draw_pose(img, uv, finite, b, joint_set)
    cv2.putText(left, label, (6, left.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([left, panel_3d(pose_mm, FRAME_HEIGHT_PX, joint_set)], axis=1)


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path

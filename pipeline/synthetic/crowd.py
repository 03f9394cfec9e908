"""Constructed multi-person scenes with exact identities: several synthetic people (the
dataset's bodies and motions) seen by a ring of cameras, projected to 2D detections.

The input of the association tests and of ``python -m tools bench-association``: a scene
says who every detection is (``CrowdDetections.identity``), and its detections come in a
shuffled order per frame and view, as a real detector's would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.people.association import CameraPeople
from pipeline.geometry.cameras import pixels_to_normalized
from pipeline.geometry.rig import CameraRig
from pipeline.synthetic.motion import gestures, pose_sequence
from pipeline.synthetic.skeleton import sample_body

FOCAL_PX = 1000.0
IMAGE_PX = 1000
RING_RADIUS_MM = 5000.0
CAMERA_HEIGHT_MM = 1600.0
FPS = 50.0


@dataclass
class CrowdScene:
    """People in a world frame (z up, mm) and the cameras that see them.

    Attributes:
        joints: (N, F, J, 3) world joints of N people over F frames.
        rig: world -> camera poses (mm) and focal lengths; K: the shared intrinsics.
    """

    joints: np.ndarray
    rig: CameraRig
    K: np.ndarray

    @property
    def cameras(self) -> list[str]:
        return list(self.rig.cameras)

    def project_px(self) -> dict[str, np.ndarray]:
        """camera -> (N, F, J, 2) pixel projections."""
        uv = self.rig.project(self.joints)
        return {c: u * self.K[0, 0] + self.K[:2, 2] for c, u in uv.items()}


def look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World -> camera pose of a camera at ``centre`` looking at ``target`` (image y down)."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ centre


def ring_rig(n_cameras: int, focal_px: float = FOCAL_PX) -> CameraRig:
    """``n_cameras`` cameras evenly on a ring around the origin, looking at its centre."""
    poses = {}
    for i in range(n_cameras):
        a = 2 * np.pi * i / n_cameras + 0.3
        centre = np.array([RING_RADIUS_MM * np.cos(a), RING_RADIUS_MM * np.sin(a),
                           CAMERA_HEIGHT_MM + 300 * (i % 2)])
        poses[f"c{i}"] = look_at(centre, np.array([0.0, 0.0, 900.0]))
    return CameraRig(poses, focal_px)


def crowd_scene(n_people: int, n_cameras: int, frames: int, seed: int = 0,
                crossing: bool = False, focal_px: float = FOCAL_PX,
                image_px: int = IMAGE_PX, circle_mm: float | None = None) -> CrowdScene:
    """People standing and gesturing at random spots at least 800 mm apart, or on a circle of
    radius ``circle_mm`` round the centre (evenly spaced, as the rendered multi-person set
    places them), or (``crossing``) walking past each other in opposite directions 500 mm
    apart (they swap sides mid-way). ``focal_px``, ``image_px``: every camera's focal length
    and (square) image size, the principal point at the centre."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    people = []
    spots = _spots(rng, n_people) if circle_mm is None else circle_mm * np.stack(
        [np.cos(2 * np.pi * np.arange(n_people) / n_people),
         np.sin(2 * np.pi * np.arange(n_people) / n_people)], -1)
    for n in range(n_people):
        body = sample_body(rng)
        P, _ = pose_sequence(body, gestures(rng, t, 0.0), np.zeros(2))
        P = P - P[:1, :1] * np.array([1, 1, 0])  # every person starts centred
        if crossing:
            side = 1.0 if n % 2 == 0 else -1.0
            x = side * np.linspace(-1500, 1500, frames)
            y = (n - (n_people - 1) / 2) * 500.0
            P = P + np.stack([x, np.full(frames, y), np.zeros(frames)], -1)[:, None]
        else:
            P = P + np.array([*spots[n], 0.0])
        people.append(P)
    K = np.array([[focal_px, 0, image_px / 2], [0, focal_px, image_px / 2], [0, 0, 1]])
    return CrowdScene(np.stack(people), ring_rig(n_cameras, focal_px), K)


def _spots(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` ground positions (mm) within 2 m of the centre, at least 800 mm apart."""
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform(-2000, 2000, 2)
        if all(np.linalg.norm(p - q) >= 800 for q in out):
            out.append(p)
    return np.array(out)


@dataclass
class CrowdDetections:
    """A scene's 2D detections as a detector would give them.

    Attributes:
        people: camera -> its rows (frame, normalised joints, mask), person order shuffled
            per frame.
        pixels: camera -> (M, J, 2) the same joints in pixels; person: camera -> (M,) the
            detector's person index (position in the frame's shuffled order).
        identity: camera -> (M,) the true person of each row.
    """

    people: dict[str, CameraPeople]
    pixels: dict[str, np.ndarray]
    person: dict[str, np.ndarray]
    identity: dict[str, np.ndarray]


def crowd_detections(scene: CrowdScene, noise_px: float = 1.0, seed: int = 0,
                     hidden: dict[str, list[int]] | None = None,
                     missing: list[tuple[str, int, int]] = ()) -> CrowdDetections:
    """2D detections of ``scene`` with Gaussian noise, in a shuffled order per frame and view.

    Args:
        hidden: camera -> people it never sees (a person seen by one camera only, ...).
        missing: (camera, frame, person) detections the detector misses.
    """
    rng = np.random.default_rng(seed)
    uv = scene.project_px()
    N, F, J, _ = scene.joints.shape
    out = CrowdDetections({}, {}, {}, {})
    gone = set(missing)
    for c in scene.cameras:
        rows = [(f, n) for f in range(F) for n in rng.permutation(N)
                if n not in (hidden or {}).get(c, []) and (c, f, int(n)) not in gone]
        f_idx = np.array([r[0] for r in rows], np.int64)
        ident = np.array([r[1] for r in rows], np.int64)
        px = uv[c][ident, f_idx] + rng.normal(0, noise_px, (len(rows), J, 2))
        _, rank = np.unique(f_idx, return_index=True)
        person = np.arange(len(rows)) - np.repeat(rank, np.diff(np.append(rank, len(rows))))
        x = pixels_to_normalized(px, scene.K, np.zeros(5))
        out.people[c] = CameraPeople(f_idx, x, np.ones((len(rows), J), bool))
        out.pixels[c], out.person[c], out.identity[c] = px, person, ident
    return out

"""``make data``: render the synthetic multi-view dataset that a manifest declares.

For every sequence of the manifest (subject, action, subaction) and every camera:

- images ``manifest.frame_path(seq, camera, frame)``, JPEG, frames ``0 .. F-1``;
- ground truth ``manifest.gt_path(seq)``, an npz with

  ==================  =====================  ==================================================
  joints_3d_world     (F, 17, 3) float32     mm, world frame of the manifest's extrinsics
  joints_3d_cam       (C, F, 17, 3) float32  mm, ``X_cam = R @ X_world + t``
  joints_2d           (C, F, 17, 2) float32  distorted pixels, ``cameras.project`` of the above
  bbox                (C, F, 4) float32      [x_min, y_min, x_max, y_max] of the rendered body
  visible             (C, F, 17) bool        joint not hidden behind another body part
  cameras             (C,) str               camera ids, manifest order (the first axis above)
  ==================  =====================  ==================================================

Everything is a deterministic function of the manifest (``synthetic.seed``): the same seed gives
byte-identical npz files and identical images. Files are written to a temporary name and
renamed; the npz is written last, so its presence (with the right frame count) marks a finished
sequence and a rerun skips it.
"""
from __future__ import annotations

import io
import os
import time
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.geometry.cameras import Camera, project
from pipeline.joints import H36M17
from pipeline.store.manifest import Manifest, ManifestError, Sequence, load_manifest
from pipeline.synthetic.motion import motion_for, pose_sequence
from pipeline.synthetic.render import (PARTS, Capsules, RenderCamera, Scene,
                                       body_capsules, canvas_project, compose, finish_image,
                                       make_render_camera, noise_bank, noise_window,
                                       joint_visibility, render_background,
                                       render_body, sample_look, sample_scene)
from pipeline.synthetic.skeleton import Body, sample_body

FPS = 50.0
WALK_RADIUS_MM = 1300.0
"""Half size of the walking area around the capture centre (shrunk per sequence if needed)."""
EDGE_MARGIN_PX = 8.0
"""Joints are kept this far inside every image so that the body around them is in view too."""
SUPERSAMPLING = 2
_SHADOW_JOINTS = np.array([H36M17.index(n) for n in ("pelvis", "l_knee", "r_knee", "l_ankle",
                                                     "r_ankle")])


# --- determinism ----------------------------------------------------------------------------------

def rng_for(seed: int, *key: str | int) -> np.random.Generator:
    """A generator that depends only on the manifest seed and ``key`` (stable across runs,
    processes and Python versions: strings are hashed with CRC-32, not ``hash``)."""
    words = [int(seed)] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed npz whose bytes depend only on ``arrays`` (fixed zip timestamps),
    atomically (temporary name, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- capture geometry -----------------------------------------------------------------------------

def capture_centre(cams: list[Camera]) -> np.ndarray:
    """(3,) world point closest (least squares) to the optical axes of ``cams``."""
    A = np.zeros((3, 3))
    rhs = np.zeros(3)
    for c in cams:
        d = c.R[2]  # optical axis in world coordinates
        P = np.eye(3) - np.outer(d, d)
        A += P
        rhs += P @ c.center
    return np.linalg.solve(A, rhs)


def subject_cameras(m: Manifest, seq: Sequence) -> list[Camera]:
    if not m.has_extrinsics(seq.subject, seq.cameras):
        raise ManifestError(f"{m.path}: sequence {seq.key}: the synthetic generator needs "
                            f"extrinsics for every camera of subject {seq.subject}")
    return [m.camera(c, seq.subject) for c in seq.cameras]


def project_all(cams: list[Camera], joints_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, J, 3) world -> camera-frame points (C, F, J, 3) and distorted pixels (C, F, J, 2)."""
    Xc = np.stack([c.world_to_camera(joints_world) for c in cams])
    uv = np.stack([project(Xc[i], c.K, c.dist) for i, c in enumerate(cams)])
    return Xc, uv


def _inside(uv: np.ndarray, cams: list[Camera], margin: float) -> np.ndarray:
    """(C, F, J, 2) pixels -> (C, F, J) whether each is at least ``margin`` inside its image."""
    size = np.array([[c.width, c.height] for c in cams], dtype=np.float64)[:, None, None]
    return np.all((uv >= margin) & (uv <= size - 1 - margin), axis=-1)


# --- one sequence ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SequenceSim:
    """The simulated content of one sequence (before rendering)."""

    cams: list[Camera]
    body: Body
    look: np.ndarray
    scene: Scene
    joints_world: np.ndarray  # (F, J, 3)
    capsules: Capsules


def simulate_sequence(m: Manifest, seq: Sequence, frames: int) -> SequenceSim:
    """Body, clothes, motion and room of one sequence; the whole body stays in every view."""
    seed = int(m.synthetic.get("seed", 0))
    cams = subject_cameras(m, seq)
    centre = capture_centre(cams)
    subj_rng = rng_for(seed, "subject", seq.subject)
    body = sample_body(subj_rng)
    look = sample_look(subj_rng)
    rng = rng_for(seed, "sequence", seq.key)
    t = np.arange(frames) * frame_stride(m, m.split_of(seq.subject)) / FPS
    motion = motion_for(seq.action, rng, t, WALK_RADIUS_MM)
    scene = sample_scene(rng_for(seed, "scene", seq.key), np.stack([c.center for c in cams]),
                         centre[:2])
    for attempt in range(12):  # shrink the path towards the centre until every view sees all
        joints, frames_rot = pose_sequence(body, motion, centre[:2])
        _, uv = project_all(cams, joints)
        ok = _inside(uv, cams, EDGE_MARGIN_PX)
        if ok.all():
            break
        motion = replace(motion, xy=motion.xy * 0.8)
    else:
        c, f, j = np.argwhere(~ok)[0]
        raise RuntimeError(f"sequence {seq.key}: joint {m.joint_set.names[j]} of frame {f} "
                           f"leaves camera {cams[c].name} at {uv[c, f, j]} even at the centre")
    return SequenceSim(cams, body, look, scene, joints, body_capsules(joints, frames_rot, body))


@lru_cache(maxsize=16)
def _render_camera_cached(name: str, K: tuple, dist: tuple, width: int, height: int, ss: int
                          ) -> RenderCamera:
    cam = Camera(name, np.array(K).reshape(3, 3), np.array(dist), width, height)
    return make_render_camera(cam, ss)


def render_camera(cam: Camera, ss: int = SUPERSAMPLING) -> RenderCamera:
    """The (cached) render camera of ``cam`` with ``cam``'s extrinsics."""
    rc = _render_camera_cached(cam.name, tuple(cam.K.ravel()), tuple(cam.dist.ravel()),
                               cam.width, cam.height, ss)
    return replace(rc, cam=cam)


def iter_view_frames(sim: SequenceSim, ci: int, rng: np.random.Generator
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Render the frames of camera ``ci`` one at a time (memory stays flat for long sequences).

    Yields:
        per frame: (H, W, 3) uint8 BGR image, (4,) bbox of the body, (J,) bool visibility.
    """
    cam = sim.cams[ci]
    rc = render_camera(cam)
    bg, floor_xy = render_background(rc, sim.scene)
    light = cam.R @ sim.scene.light
    caps = sim.capsules
    a_c, b_c = cam.world_to_camera(caps.a), cam.world_to_camera(caps.b)
    tone_c = caps.tone_dir @ cam.R.T
    joints_c = cam.world_to_camera(sim.joints_world)
    joint_px = np.rint(canvas_project(rc, joints_c)).astype(int)
    joint_dist = np.linalg.norm(joints_c, axis=-1)
    toes = np.flatnonzero(caps.part == PARTS.index("shoes"))
    bank = noise_bank(rng, cam.width, cam.height)
    for f in range(sim.joints_world.shape[0]):
        layer = render_body(rc, a_c[f], b_c[f], caps, tone_c[f], sim.look, light, sim.scene)
        shadow = np.concatenate([sim.joints_world[f, _SHADOW_JOINTS], caps.b[f, toes]])
        canvas = compose(bg, floor_xy, rc, layer, shadow)
        visible = joint_visibility(layer, joint_px[f], joint_dist[f])
        img, cover = finish_image(rc, canvas, sim.scene, sim.scene.gains[ci],
                                  noise_window(bank, rng, cam.width, cam.height))
        ys, xs = np.nonzero(cover > 0.25)
        if xs.size == 0:
            raise RuntimeError(f"camera {cam.name} frame {f}: the body is not in the image")
        bbox = np.array([xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5])
        yield img, bbox, visible


def _gt_complete(path: Path | None, frames: int, cameras: tuple[str, ...]) -> bool:
    if path is None or not path.exists():
        return False
    try:
        with np.load(path) as z:
            return (z["joints_3d_world"].shape[0] == frames
                    and tuple(str(c) for c in z["cameras"]) == tuple(cameras))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False


def _remove_stale_frames(m: Manifest, seq: Sequence, frames: int) -> None:
    """Delete frames numbered ``frames`` and above left by an earlier, longer run (the manifest
    counts frames on disk)."""
    for cam in seq.cameras:
        f = frames
        while (p := m.frame_path(seq, cam, f)).exists():
            p.unlink()
            f += 1


def generate_sequence(m: Manifest, seq: Sequence, frames: int) -> bool:
    """Render one sequence; False when it was already complete (skipped)."""
    gt = m.gt_path(seq)
    if gt is None:
        raise ManifestError(f"{m.path}: ground_truth.joints_3d is needed by the generator")
    if _gt_complete(gt, frames, seq.cameras):
        return False
    cv2.setNumThreads(1)
    seed = int(m.synthetic.get("seed", 0))
    quality = int(m.synthetic.get("jpeg_quality", 90))
    sim = simulate_sequence(m, seq, frames)
    Xc, uv = project_all(sim.cams, sim.joints_world)
    inside = _inside(uv, sim.cams, 0.0)
    if not inside.all():  # the contract: every joint of every frame is in every image
        c, f, j = np.argwhere(~inside)[0]
        raise AssertionError(f"sequence {seq.key}: joint {m.joint_set.names[j]} frame {f} "
                             f"camera {sim.cams[c].name} projects outside the image: {uv[c, f, j]}")
    C = len(sim.cams)
    bbox = np.zeros((C, frames, 4), np.float32)
    visible = np.zeros((C, frames, m.joint_set.num_joints), bool)
    for ci, cam in enumerate(sim.cams):
        rng = rng_for(seed, "noise", seq.key, cam.name)
        for f, (img, box, vis) in enumerate(iter_view_frames(sim, ci, rng)):
            bbox[ci, f], visible[ci, f] = box, vis
            path = m.frame_path(seq, cam.name, f)
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {path}")
            write_bytes_atomic(path, buf.tobytes())
    _remove_stale_frames(m, seq, frames)
    save_npz_deterministic(gt, {
        "joints_3d_world": sim.joints_world.astype(np.float32),
        "joints_3d_cam": Xc.astype(np.float32),
        "joints_2d": uv.astype(np.float32),
        "bbox": bbox,
        "visible": visible,
        "cameras": np.array(seq.cameras, dtype=str),
    })
    return True


def _worker(manifest_path: str, root: str | None, index: int, frames: int
            ) -> tuple[str, bool, float]:
    t0 = time.perf_counter()
    m = load_manifest(manifest_path, root=root)
    seq = m.sequences[index]
    try:
        done = generate_sequence(m, seq, frames)
    except Exception as e:
        raise RuntimeError(f"{manifest_path}: sequence {seq.key} failed: {e!r}") from e
    return seq.key, done, time.perf_counter() - t0


SPLIT_SETTINGS = ("frames_per_sequence", "frame_stride")
"""Generator settings a split may set for itself under ``synthetic.splits.<split>``."""


def split_setting(m: Manifest, key: str, split: str | None, default):
    """``synthetic.splits.<split>.<key>`` where that split sets it, else ``synthetic.<key>``,
    else ``default``. The embedded manifest renders its training split as many short, sparse
    sequences (more people and poses) and its validation and test splits as long ones."""
    per = m.synthetic.get("splits") or {}
    if not isinstance(per, dict):
        raise ManifestError(f"{m.path}: synthetic.splits must map split names to settings")
    for name, settings in per.items():
        if name not in m.splits:
            raise ManifestError(f"{m.path}: synthetic.splits.{name}: no such split "
                                f"(known: {list(m.splits)})")
        if not isinstance(settings, dict) or set(settings) - set(SPLIT_SETTINGS):
            raise ManifestError(f"{m.path}: synthetic.splits.{name} may set only "
                                f"{list(SPLIT_SETTINGS)}, got {settings!r}")
    if split is not None and key in (per.get(split) or {}):
        return per[split][key]
    return m.synthetic.get(key, default)


def frame_stride(m: Manifest, split: str | None = None) -> int:
    """``synthetic.frame_stride`` (default 1; a split may set its own): rendered frame f shows
    the motion at time ``f * stride / FPS``, so that a sequence of F frames spans ``stride``
    times more motion (more distinct poses for the same number of images; consecutive frames
    are then not 50 fps video)."""
    n = split_setting(m, "frame_stride", split, 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ManifestError(f"{m.path}: synthetic.frame_stride must be an integer >= 1, got {n!r}")
    return n


def frames_per_sequence(m: Manifest, size: float = 1.0, frames: int | None = None,
                        split: str | None = None) -> int:
    """Frames to render per sequence: ``frames`` if given, else ``synthetic.frames_per_sequence``
    (default 100; a split may set its own) times ``size``."""
    if frames is not None:
        n = int(frames)
    else:
        n = int(round(float(split_setting(m, "frames_per_sequence", split, 100)) * size))
    if n < 1:
        raise ValueError(f"{m.path}: at least one frame per sequence is needed, got {n}")
    return n


def generate_dataset(manifest_path: str | os.PathLike, size: float = 1.0, workers: int = 2,
                     progress: bool = True, subjects: list[str] | tuple[str, ...] | None = None,
                     frames: int | None = None, root: str | os.PathLike | None = None) -> Path:
    """Render the synthetic dataset that ``manifest_path`` declares; returns its root folder.

    Args:
        size: multiplies ``synthetic.frames_per_sequence`` (each split's).
        workers: processes rendering sequences in parallel (1: in this process).
        subjects: only these subjects (default: all).
        frames: frames per sequence, overrides ``size`` (tiny sets for tests).
        root: output folder instead of the manifest's ``root`` (relative to the working
            directory, unlike the manifest's own ``root``).
    """
    root_s = None if root is None else str(Path(root).resolve())
    m = load_manifest(manifest_path, root=root_s)
    if subjects is not None:
        unknown = set(subjects) - {s.subject for s in m.sequences}
        if unknown:
            raise ManifestError(f"{m.path}: subjects {sorted(unknown)} have no sequence")
    n = {i: frames_per_sequence(m, size, frames, m.split_of(s.subject))
         for i, s in enumerate(m.sequences) if subjects is None or s.subject in subjects}
    todo = [i for i, frames_i in n.items()
            if not _gt_complete(m.gt_path(m.sequences[i]), frames_i, m.sequences[i].cameras)]
    m.root.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), unit="seq", disable=not progress, desc="render synthetic")
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            generate_sequence(m, m.sequences[i], n[i])
            bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_worker, str(manifest_path), root_s, i, n[i]) for i in todo]
            try:
                for fut in as_completed(futures):
                    fut.result()
                    bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    bar.close()
    return m.root

"""A rendered multi-person variant of the synthetic dataset (issue 14): two or more people
stand and gesture close together in one subject's room, seen by its cameras, and hide each
other in some views (one z-buffer over every person's capsules).

``python -m pipeline data --people N --root DIR`` writes into DIR:

- the images (the embedded manifest's frame pattern) and ``people.yaml``, a manifest of the
  one sequence (no ``ground_truth`` block: the single-person ground truth does not apply);
- ``detections.parquet``: 2D detections with a ``person`` column, for ``--detector file``.
  They are the exact projections plus Gaussian noise (more on hidden joints); the
  person index is the row's place in a fresh random order per view and frame, so it says
  nothing about who is who across views;
- ``people_truth.npz``: per-person ground truth (world and camera-frame 3D, 2D, visibility)
  and the true identity of every detection row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from pipeline.store import shards as S
from pipeline.store.manifest import ManifestError, load_manifest
from pipeline.synthetic.generate import (_SHADOW_JOINTS, EDGE_MARGIN_PX, FPS, SequenceSim,
                                         _inside, capture_centre, project_all, render_camera,
                                         rng_for, save_npz_deterministic, subject_cameras,
                                         write_bytes_atomic)
from pipeline.synthetic.motion import gestures, pose_sequence
from pipeline.synthetic.render import (PARTS, Capsules, body_capsules, canvas_project, compose,
                                       finish_image, joint_visibility, noise_bank, noise_window,
                                       render_background, render_body, sample_look, sample_scene)
from pipeline.synthetic.skeleton import sample_body

SPOT_RADIUS_MM = 450.0
"""People stand on a circle of this radius round the capture centre: close enough that bodies
overlap in some views, apart enough that they do not touch."""
OCCLUDED_NOISE_FACTOR = 3.0
"""Detection noise on a hidden joint (by its own or another body), times the visible ones'."""
OCCLUDED_CONF = 0.5
MANIFEST_NAME, TRUTH_NAME, DETECTIONS_NAME = "people.yaml", "people_truth.npz", "detections.parquet"


def simulate_people(m, seq, frames: int, people: int) -> list[SequenceSim]:
    """``people`` bodies (own build, clothes and gestures) round the capture centre."""
    seed = int(m.synthetic.get("seed", 0))
    cams = subject_cameras(m, seq)
    centre = capture_centre(cams)
    scene = sample_scene(rng_for(seed, "scene", seq.key), np.stack([c.center for c in cams]),
                         centre[:2])
    t = np.arange(frames) / FPS
    sims = []
    for k in range(people):
        rng = rng_for(seed, "person", seq.key, k)
        body, look = sample_body(rng), sample_look(rng)
        a = 2 * np.pi * k / people + rng.uniform(0, 0.4)
        spot = centre[:2] + SPOT_RADIUS_MM * np.array([np.cos(a), np.sin(a)])
        joints, rot = pose_sequence(body, gestures(rng, t, 0.0), spot)
        ok = _inside(project_all(cams, joints)[1], cams, EDGE_MARGIN_PX)
        if not ok.all():
            c, f, _ = np.argwhere(~ok)[0]
            raise RuntimeError(f"sequence {seq.key}: person {k} leaves camera {cams[c].name} "
                               f"in frame {f}")
        sims.append(SequenceSim(cams, body, look, scene, joints, body_capsules(joints, rot, body)))
    return sims


def merged_capsules(sims: list[SequenceSim]) -> tuple[Capsules, np.ndarray]:
    """Every person's capsules in one list (person k's at k * C ...), and the looks stacked
    (person k's colour slots moved by k * len(PARTS))."""
    caps = [s.capsules for s in sims]
    shift = [k * len(PARTS) for k in range(len(sims))]
    cat = np.concatenate
    return Capsules(
        a=cat([c.a for c in caps], 1), b=cat([c.b for c in caps], 1),
        radius=cat([c.radius for c in caps]), part=cat([c.part + s for c, s in zip(caps, shift)]),
        tone_dir=cat([c.tone_dir for c in caps], 1), tone_thr=cat([c.tone_thr for c in caps]),
        tone_part=cat([c.tone_part + s for c, s in zip(caps, shift)]),
    ), cat([s.look for s in sims])


def iter_people_frames(sims: list[SequenceSim], ci: int, rng: np.random.Generator
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Render camera ``ci``'s frames of all people together.

    Yields:
        per frame: (H, W, 3) uint8 BGR image, (N, J) bool visibility of each person's joints.
    """
    cam, scene = sims[0].cams[ci], sims[0].scene
    rc = render_camera(cam)
    bg, floor_xy = render_background(rc, scene)
    caps, look = merged_capsules(sims)
    C = sims[0].capsules.radius.size
    a_c, b_c = cam.world_to_camera(caps.a), cam.world_to_camera(caps.b)
    tone_c = caps.tone_dir @ cam.R.T
    joints_c = np.stack([cam.world_to_camera(s.joints_world) for s in sims])  # (N, F, J, 3)
    joint_px = np.rint(canvas_project(rc, joints_c)).astype(int)
    joint_dist = np.linalg.norm(joints_c, axis=-1)
    bank = noise_bank(rng, cam.width, cam.height)
    for f in range(sims[0].joints_world.shape[0]):
        layer = render_body(rc, a_c[f], b_c[f], caps, tone_c[f], look, cam.R @ scene.light, scene)
        shadow = np.concatenate([s.joints_world[f, _SHADOW_JOINTS] for s in sims])
        canvas = compose(bg, floor_xy, rc, layer, shadow)
        visible = np.stack([joint_visibility(layer, joint_px[k, f], joint_dist[k, f],
                                             first_capsule=k * C) for k in range(len(sims))])
        img, _ = finish_image(rc, canvas, scene, scene.gains[ci],
                              noise_window(bank, rng, cam.width, cam.height))
        yield img, visible


@dataclass
class PeopleTruth:
    """Exact ground truth of a rendered multi-person sequence (``people_truth.npz``).

    Attributes:
        cameras: (C,) names; joints_3d_cam: (C, N, F, J, 3) mm; visible: (C, N, F, J).
        det_camera, det_frame, det_person, det_identity: (M,) each detection row's camera
            index, frame, detector person index and true person.
    """

    cameras: list[str]
    joints_3d_cam: np.ndarray
    visible: np.ndarray
    det_camera: np.ndarray
    det_frame: np.ndarray
    det_person: np.ndarray
    det_identity: np.ndarray

    @classmethod
    def load(cls, root: str | Path) -> "PeopleTruth":
        path = Path(root) / TRUTH_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path}: no multi-person ground truth (render it with "
                                    f"python -m pipeline data --people N --root {root})")
        with np.load(path) as z:
            return cls([str(c) for c in z["cameras"]], z["joints_3d_cam"], z["visible"],
                       z["det_camera"], z["det_frame"], z["det_person"], z["det_identity"])


def _dataset_name(source: str) -> str:
    return f"{source}_people"


def _detections(m, seq, sims, uv, visible, noise_px: float, rng: np.random.Generator
                ) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Detection rows of every view and frame, people in a fresh random order each time."""
    C, N, F, J, _ = uv.shape
    tables, rows = [], []
    for ci, cam in enumerate(sims[0].cams):
        order = np.stack([rng.permutation(N) for _ in range(F)])       # (F, N) who is row n
        ident, frame = order.ravel(), np.repeat(np.arange(F), N)
        vis = visible[ci, ident, frame]
        sigma = np.where(vis, noise_px, noise_px * OCCLUDED_NOISE_FACTOR)[..., None]
        px = uv[ci, ident, frame] + rng.normal(0, 1, (F * N, J, 2)) * sigma
        lo, hi = px.min(1), px.max(1)
        half = 0.6 * (hi - lo).max(1)
        mid = (lo + hi) / 2
        bbox = np.concatenate([mid - half[:, None], mid + half[:, None]], 1)
        paths = [str(m.frame_path(seq, cam.name, int(f))) for f in frame]
        cols = {"dataset": _dataset_name(m.dataset), "subject": seq.subject, "action": seq.action,
                "subaction": str(seq.subaction), "camera": cam.name,
                "frame": frame.astype(np.int32), "image_path": paths, "bbox": bbox,
                "joints_2d": px, "joints_2d_conf": np.where(vis, 0.9, OCCLUDED_CONF),
                "status": [""] * len(frame), "person": np.tile(np.arange(N), F).astype(np.int32)}
        tables.append(S.to_table(cols, S.detection_schema(J, people=True)))
        rows.append((np.full(F * N, ci), frame, cols["person"], ident))
    det = {k: np.concatenate([r[i] for r in rows]) for i, k in
           enumerate(("det_camera", "det_frame", "det_person", "det_identity"))}
    return pa.concat_tables(tables), det


def _write_manifest(manifest_path: str | Path, root: Path, seq, frames: int) -> Path:
    """``people.yaml``: the source manifest's cameras, the subject's extrinsics, one sequence."""
    raw = yaml.safe_load(Path(manifest_path).read_text())
    out = {"dataset": _dataset_name(raw["dataset"]), "root": ".", "joint_set": raw["joint_set"],
           "cameras": raw["cameras"],
           "extrinsics": {seq.subject: raw["extrinsics"][seq.subject]},
           "frames": raw["frames"],
           "sequences": [{"subject": seq.subject, "action": seq.action,
                          "subaction": seq.subaction, "num_frames": frames}],
           "splits": {"train": [seq.subject]}}
    path = root / MANIFEST_NAME
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path


def generate_people(manifest_path: str | Path, root: str | Path, people: int = 2,
                    frames: int = 100, subject: str = "S1", noise_px: float = 1.0,
                    progress: bool = True) -> Path:
    """Render the multi-person variant of ``manifest_path``'s Gestures sequence of ``subject``
    into ``root`` (images, ``people.yaml``, ``detections.parquet``, ``people_truth.npz``);
    returns the manifest path."""
    if people < 2:
        raise ValueError(f"--people must be at least 2 for the multi-person variant, got {people}")
    root = Path(root).resolve()
    m = load_manifest(manifest_path, root=str(root))
    seqs = [s for s in m.sequences if s.subject == subject]
    if not seqs:
        raise ManifestError(f"{m.path}: subject {subject!r} has no sequence")
    seq = next((s for s in seqs if s.action == "Gestures"), seqs[0])
    cv2.setNumThreads(1)
    seed = int(m.synthetic.get("seed", 0))
    sims = simulate_people(m, seq, frames, people)
    world = np.stack([s.joints_world for s in sims])                    # (N, F, J, 3)
    cams = sims[0].cams
    Xc, uv = project_all(cams, world)                                   # (C, N, F, J, .)
    visible = np.zeros(uv.shape[:-1], bool)
    bar = tqdm(total=len(cams) * frames, unit="img", disable=not progress, desc="render people")
    for ci, cam in enumerate(cams):
        rng = rng_for(seed, "people-noise", seq.key, cam.name)
        for f, (img, vis) in enumerate(iter_people_frames(sims, ci, rng)):
            visible[ci, :, f] = vis
            path = m.frame_path(seq, cam.name, f)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
                               .tobytes())
            bar.update(1)
    bar.close()
    table, det = _detections(m, seq, sims, uv, visible, noise_px,
                             rng_for(seed, "people-detections", seq.key))
    pq.write_table(table, root / DETECTIONS_NAME)
    save_npz_deterministic(root / TRUTH_NAME, {
        "cameras": np.array([c.name for c in cams], dtype=str),
        "joints_3d_world": world.astype(np.float32), "joints_3d_cam": Xc.astype(np.float32),
        "joints_2d": uv.astype(np.float32), "visible": visible, **det})
    return _write_manifest(manifest_path, root, seq, frames)

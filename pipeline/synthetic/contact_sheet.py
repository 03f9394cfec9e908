"""A contact sheet of a rendered dataset: rows of (sequence, frame), one column per view, with
the ground-truth skeleton, hidden joints (hollow) and the person box drawn on the images."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.joints import H36M17, JointSet
from pipeline.store.manifest import Manifest, Sequence, load_manifest

# BGR: left side blue, right side red, centre green (the usual convention).
_LEFT, _RIGHT, _CENTRE = (255, 140, 0), (0, 0, 255), (0, 200, 0)


def _side_colours(js: JointSet) -> list[tuple[int, int, int]]:
    return [_LEFT if n.startswith("l_") else _RIGHT if n.startswith("r_") else _CENTRE
            for n in js.names]


def draw_pose(img: np.ndarray, uv: np.ndarray, visible: np.ndarray | None = None,
              bbox: np.ndarray | None = None, js: JointSet = H36M17, scale: int = 1,
              colour: tuple[int, int, int] | None = None, thickness: int = 1) -> np.ndarray:
    """Draw bones (coloured by the child's side), joints and a box on a copy of ``img``.

    Args:
        img: (H, W, 3) uint8 BGR; uv: (J, 2) pixels in ``img`` before ``scale``;
        visible: (J,) bool, hidden joints are drawn hollow; bbox: (4,) or None;
        scale: the copy is resized by this integer factor first;
        colour: one BGR colour for the whole pose (e.g. one per person) instead of the sides';
        thickness: of the bones, pixels. Joints that are not finite are not drawn.
    """
    out = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    ok = np.isfinite(uv).all(-1)
    p = np.rint((np.nan_to_num(uv) + 0.5) * scale - 0.5).astype(int)
    col = _side_colours(js) if colour is None else [colour] * len(p)
    for parent, child in js.bones:
        if ok[parent] and ok[child]:
            cv2.line(out, tuple(p[parent]), tuple(p[child]), col[child], thickness, cv2.LINE_AA)
    vis = np.ones(len(p), bool) if visible is None else visible
    for j, q in enumerate(p):
        if ok[j]:
            cv2.circle(out, tuple(q), 1 + thickness, col[j], -1 if vis[j] else 1, cv2.LINE_AA)
    if bbox is not None:
        b = np.rint((np.asarray(bbox) + 0.5) * scale - 0.5).astype(int)
        cv2.rectangle(out, (b[0], b[1]), (b[2], b[3]), (0, 255, 255), 1)
    return out


def _pick_sequences(m: Manifest, count: int) -> list[Sequence]:
    """Finished sequences, one per action first, cycling through the subjects."""
    done = [s for s in m.sequences if (p := m.gt_path(s)) is not None and p.exists()]
    subjects = list(dict.fromkeys(s.subject for s in done))
    actions = list(dict.fromkeys(s.action for s in done))
    picked: list[Sequence] = []
    for i, action in enumerate(actions):
        wanted = subjects[i % len(subjects)]
        cands = [s for s in done if s.action == action]
        picked.append(next((s for s in cands if s.subject == wanted), cands[0]))
    picked += [s for s in done if s not in picked]
    return picked[:count]


def write_contact_sheet(manifest_path: str | os.PathLike, out_png: str | os.PathLike,
                        root: str | os.PathLike | None = None, sequences: int = 5,
                        frames_per_sequence: int = 1, scale: int = 2) -> Path:
    """Write a PNG grid: one row per (sequence, frame), one column per camera, skeleton on top.

    Args:
        sequences: how many finished sequences (one per action first).
        frames_per_sequence: frames per sequence, evenly spaced.
        scale: integer magnification of each tile.
    Returns:
        the PNG path. Raises FileNotFoundError when no sequence has been generated.
    """
    m = load_manifest(manifest_path, root=None if root is None else str(Path(root).resolve()))
    seqs = _pick_sequences(m, sequences)
    if not seqs:
        raise FileNotFoundError(f"no generated sequence under {m.root}; run `make data` first")
    rows = []
    for seq in seqs:
        with np.load(m.gt_path(seq)) as z:
            uv, vis, box, cams = z["joints_2d"], z["visible"], z["bbox"], list(z["cameras"])
        F = uv.shape[1]
        for f in np.linspace(0, F - 1, frames_per_sequence).round().astype(int):
            tiles = []
            for ci, cam in enumerate(cams):
                path = m.frame_path(seq, str(cam), int(f))
                img = cv2.imread(str(path))
                if img is None:
                    raise FileNotFoundError(f"sequence {seq.key}: cannot read {path}")
                tile = draw_pose(img, uv[ci, f], vis[ci, f], box[ci, f], m.joint_set, scale)
                label = f"{seq.subject} {seq.action} f{f} {cam}"
                cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255),
                            1, cv2.LINE_AA)
                tiles.append(tile)
            rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    sheet = np.concatenate(rows, axis=0)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {out}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, out)
    return out

"""Overlay PNG of a stage-1 run: detected 2D joints and the reprojected pseudo-3D pose.

One image per (frame, camera) in a grid (rows: frames, columns: cameras), each cropped around
the person. Green: the detector's 2D joints (confident ones; "L" marks its left wrist and
ankle, so a left/right swap shows). Magenta: the joints triangulated
with the run's own geometry and projected back into that camera, i.e. what the labels say.
Where the two skeletons part, the label is wrong in that view (a bad detection, a wrong camera,
a wrong triangulation), so this is the first thing to look at on new footage::

    python -m tools overlay outputs/pseudolabels/pose2sim_multiview_mediapipe \\
        --out outputs/figures/pose2sim_overlay.png --frames 10,50,90

What reprojects: the run's own mode relabels the sequence from its detections and its saved
geometry (``pipeline.job.tasks.relabel_sequence``: the code path and settings that made the
shards), and each camera's triangulated points (``CameraLabels.X_camera``, its first shard)
are projected into that camera. Every mode of ``pipeline.geometry.modes`` works, the
per-frame one included (its per-frame fits are deterministic for the run's seed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from pipeline.store import shards as S
from pipeline.geometry.cameras import project
from pipeline.store.frames import read_frames
from pipeline.job.config import JobConfig, load_run
from pipeline.joints import H36M17
from pipeline.store.manifest import Manifest, Sequence
from pipeline.job.tasks import SequenceDetections, relabel_sequence, selected_sequences

DETECTED_BGR = (60, 220, 60)
REPROJECTED_BGR = (230, 40, 230)
Pose = tuple[np.ndarray, np.ndarray]


# --- reading a run ------------------------------------------------------------------------------

def _sequence(cfg: JobConfig, m: Manifest, key: str | None) -> Sequence:
    seqs = selected_sequences(cfg)
    if key is None:
        return seqs[0]
    for s in seqs:
        if s.key == key:
            return s
    raise KeyError(f"{m.path}: no sequence {key!r} in the run (known: {[s.key for s in seqs]})")


def reprojected_joints(cfg: JobConfig, m: Manifest, seq: Sequence
                       ) -> tuple[SequenceDetections, dict[str, np.ndarray]]:
    """The sequence's detections, and camera -> (F, J, 2) pixels of the run's triangulated joints
    projected into that camera (NaN where the joint was not triangulated); F follows
    ``det.frames``."""
    det, _, labels = relabel_sequence(cfg, seq)
    out: dict[str, np.ndarray] = {}
    for lab in labels:
        if lab.camera in out or lab.X_camera is None:
            continue
        uv = np.full(det.joints[lab.camera].shape, np.nan)
        uv[lab.frames] = _project(lab.X_camera, m, lab.camera)
        out[lab.camera] = uv
    return det, out


def _project(Xc: np.ndarray, m: Manifest, cam: str) -> np.ndarray:
    c = m.camera(cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = project(Xc, c.K, c.dist)
    return np.where((Xc[..., 2:3] > 0) & np.isfinite(uv), uv, np.nan)


# --- drawing ------------------------------------------------------------------------------------

_LEFT_ENDS = tuple(H36M17.index(n) for n in ("l_wrist", "l_ankle"))


def draw_skeleton(img: np.ndarray, uv: np.ndarray, color: tuple[int, int, int],
                  thickness: int = 2, mark_left: bool = False) -> None:
    """Draw (J, 2) pixel joints (NaN = absent) and the H36M17 bones between present ones;
    ``mark_left`` writes an "L" beside the left wrist and ankle (a left/right swap shows)."""
    ok = np.isfinite(uv).all(-1)
    pts = np.round(np.where(ok[:, None], uv, 0.0) * 16).astype(np.int64)  # 4 fractional bits
    for p, c in H36M17.bones:
        if ok[p] and ok[c]:
            cv2.line(img, tuple(pts[p]), tuple(pts[c]), color, thickness, cv2.LINE_AA, shift=4)
    for j in np.flatnonzero(ok):
        cv2.circle(img, tuple(pts[j]), thickness + 1, color, -1, cv2.LINE_AA, shift=4)
    for j in _LEFT_ENDS if mark_left else ():
        if ok[j]:
            org = (int(uv[j, 0]) + 6, int(uv[j, 1]) - 6)
            cv2.putText(img, "L", org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, "L", org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)


def _tile_box(points: np.ndarray, width: int, height: int, aspect: float, margin: float = 0.25
              ) -> np.ndarray:
    """[x0, y0, x1, y1] around the finite points (or the whole image), grown by ``margin``
    and widened or heightened to ``aspect`` = width / height."""
    p = points[np.isfinite(points).all(-1)]
    if len(p) < 2:
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    else:
        (x0, y0), (x1, y1) = p.min(0), p.max(0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = max(x1 - x0, 16.0) * (1 + margin), max(y1 - y0, 16.0) * (1 + margin)
    w, h = max(w, h * aspect), max(h, w / aspect)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def render_tile(image: np.ndarray | None, detected: np.ndarray, reprojected: np.ndarray,
                label: str, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """One (height, width, 3) tile: the image cropped around the person, both skeletons drawn
    at tile resolution, ``label`` written at the top. A missing image gives a grey tile."""
    tw, th = size
    if image is None:
        tile = np.full((th, tw, 3), 90, np.uint8)
        box = _tile_box(np.concatenate([detected, reprojected]), tw, th, tw / th)
    else:
        h, w = image.shape[:2]
        box = _tile_box(np.concatenate([detected, reprojected]), w, h, tw / th)
    s = tw / (box[2] - box[0])
    A = np.array([[s, 0.0, -box[0] * s], [0.0, s, -box[1] * s]])
    if image is not None:
        tile = cv2.warpAffine(image, A, (tw, th), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(40, 40, 40))
    to_tile = lambda uv: uv @ A[:, :2].T + A[:, 2]  # noqa: E731
    draw_skeleton(tile, to_tile(detected), DETECTED_BGR, 3, mark_left=True)
    draw_skeleton(tile, to_tile(reprojected), REPROJECTED_BGR, 2)
    cv2.rectangle(tile, (0, 0), (tw, 22), (0, 0, 0), -1)
    cv2.putText(tile, label, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return tile


HEADER_PX = 48


def _header(width: int, title: str) -> np.ndarray:
    """Two lines: the title, then the legend."""
    bar = np.zeros((HEADER_PX, width, 3), np.uint8)
    cv2.putText(bar, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    x0 = 6
    for name, color in (("detected 2D", DETECTED_BGR), ("pseudo-3D reprojected",
                                                        REPROJECTED_BGR)):
        cv2.line(bar, (x0, 36), (x0 + 18, 36), color, 3, cv2.LINE_AA)
        cv2.putText(bar, name, (x0 + 24, 41), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
        x0 += 24 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 24
    cv2.putText(bar, "L: detected left wrist / ankle", (x0, 41), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                DETECTED_BGR, 1, cv2.LINE_AA)
    return bar


def write_overlay(run_dir: str | Path, out_png: str | Path, frames: list[int] | None = None,
                  sequence: str | None = None, cameras: list[str] | None = None,
                  tile_size: tuple[int, int] = (300, 400)) -> dict[str, Any]:
    """Write the overlay grid of a run to ``out_png`` (rows: frames, columns: cameras).

    Args:
        run_dir: a finished stage-1 run (config.json, detections/, geometry.parquet,
            cameras.json for multiview).
        frames: source frame indices (default: three spread over the sequence).
        sequence: sequence key (default: the run's first sequence).
        cameras: columns (default: every camera of the sequence).
        tile_size: (width, height) of each tile in pixels.
    Returns:
        {"png", "frames", "cameras", "reproj_px": camera -> median distance (pixels) between
        detected and reprojected joints over the drawn frames, "geometry"}.
    """
    cfg, m = load_run(run_dir)
    seq = _sequence(cfg, m, sequence)
    det, reproj = reprojected_joints(cfg, m, seq)
    cams = list(cameras or seq.cameras)
    unknown = [c for c in cams if c not in seq.cameras]
    if unknown:
        raise KeyError(f"cameras {unknown} are not in sequence {seq.key} ({list(seq.cameras)})")
    if frames is None:
        n = len(det.frames)
        frames = sorted({int(det.frames[i]) for i in np.linspace(0, n - 1, min(3, n)).round()
                         .astype(int)})
    missing = [f for f in frames if f not in set(det.frames.tolist())]
    if missing:
        raise KeyError(f"{run_dir}: frames {missing} have no detections in sequence {seq.key} "
                       f"(detected: {int(det.frames.min())}..{int(det.frames.max())})")
    rows = np.searchsorted(det.frames, frames)
    usable = {c: (det.conf[c] >= cfg.conf_threshold) & np.isfinite(det.joints[c]).all(-1)
              for c in cams}
    images = {c: {fr.index: fr.image for fr in read_frames(m, seq, c, sorted(frames))}
              for c in cams}
    grid, dists = [], {}
    for i, f in zip(rows, frames):
        tiles = []
        for c in cams:
            d = np.where(usable[c][i, :, None], det.joints[c][i], np.nan)
            r = reproj[c][i] if c in reproj else np.full_like(d, np.nan)
            e = np.linalg.norm(d - r, axis=-1)
            dists.setdefault(c, []).append(e[np.isfinite(e)])
            med = f"{np.median(e[np.isfinite(e)]):.1f} px" if np.isfinite(e).any() else "n/a"
            tiles.append(render_tile(images[c].get(f), d, r, f"{c}  frame {f}  |d-r| {med}",
                                     tile_size))
        grid.append(np.hstack(tiles))
    body = np.vstack(grid)
    title = f"{Path(run_dir).name}: {seq.key}, geometry {cfg.geometry}, detector {cfg.detector}"
    png = np.vstack([_header(body.shape[1], title), body])
    ok, buf = cv2.imencode(".png", png)
    if not ok:
        raise RuntimeError(f"could not encode {out_png}")
    out_png = Path(out_png)
    S.atomic_write_bytes(out_png, buf.tobytes())
    return {"png": str(out_png), "frames": list(frames), "cameras": cams,
            "geometry": cfg.geometry,
            "reproj_px": {c: float(np.median(np.concatenate(v))) if np.concatenate(v).size
                          else float("nan") for c, v in dists.items()}}


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_png", type=click.Path(path_type=Path), required=True,
              help="PNG to write.")
@click.option("--frames", default=None, help="Comma-separated frame indices (default: 3 spread).")
@click.option("--sequence", default=None, help="Sequence key (default: the run's first).")
@click.option("--tile", default="300x400", show_default=True, help="Tile size WIDTHxHEIGHT.")
def main(run_dir: Path, out_png: Path, frames: str | None, sequence: str | None,
         tile: str) -> None:
    """Overlay detected 2D joints and the reprojected pseudo-3D pose of a stage-1 run."""
    fr = [int(v) for v in frames.split(",")] if frames else None
    try:
        size = tuple(int(v) for v in tile.lower().split("x"))
        assert len(size) == 2 and min(size) >= 32
    except (ValueError, AssertionError):
        raise click.BadParameter(f"{tile!r}: expected WIDTHxHEIGHT, e.g. 300x400 (>= 32)",
                                 param_hint="--tile") from None
    r = write_overlay(run_dir, out_png, frames=fr, sequence=sequence, tile_size=size)
    click.echo(f"{r['png']}: frames {r['frames']}, cameras {r['cameras']}, geometry "
               f"{r['geometry']}; median |detected - reprojected| px: "
               + ", ".join(f"{c} {v:.1f}" for c, v in r["reproj_px"].items()))


if __name__ == "__main__":
    main()

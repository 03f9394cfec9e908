"""``python -m tools people-check MANIFEST``: a multi-person detector over a whole calibrated
recording, frame by frame (issue 24: Pose2Sim's Demo_MultiPerson with ``mediapipe-people``).

For every camera and frame it counts

- people: the skeletons the detector returns;
- duplicates: pairs of them in one frame whose boxes overlap by IoU >= ``--dup-iou``
  (``train.tracking.box_iou``; one person found twice makes two tracks);
- supported people: skeletons that another view confirms through the calibration: some person
  of the same frame in another camera with at least ``--min-share`` of the joints the two have
  confidently (>= 0.5) within ``--epipolar-px`` of their epipolar lines (Sampson error,
  ``pipeline.geometry.epipolar.sampson_error``; the partner's joint of either side). A skeleton
  merged from two people (the head of one, the legs of the other) has no such partner, nor has
  a person seen by one camera only; their count is ``unsupported``.

The table (one row per camera, and ``all``) gives frames, the frames with each count of
supported people, duplicates and unsupported skeletons; ``--out`` writes every skeleton's row.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd

from pipeline.detect.network import FrameKey
from pipeline.detect.registry import DETECTORS, make_detector
from pipeline.geometry.cameras import pixels_to_normalized, relative_pose
from pipeline.geometry.epipolar import essential_from_pose, sampson_error
from pipeline.joints import H36M17
from pipeline.store.frames import read_frames
from pipeline.store.manifest import Manifest, load_manifest
from train.tracking import box_iou

CONF = 0.5
"""A joint is compared across views where both detections give it this confidence."""
FLIP = H36M17.flip_permutation
"""H36M-17 with left and right swapped."""


def detect_recording(m: Manifest, detector: str, cameras: list[str] | None = None,
                     frames: range | None = None) -> pd.DataFrame:
    """Every skeleton ``detector`` (a multi-person back-end of the registry) finds in the first
    sequence of ``m``: one row per (camera, frame, person) with joints (J, 2), conf (J,) and
    box (4,); a frame with nobody has no row."""
    seq = m.sequences[0]
    det = make_detector(detector, m)
    if not getattr(det, "multi_person", False):
        raise click.ClickException(f"detector {detector!r} finds one person per frame")
    frames = frames if frames is not None else range(seq.num_frames or 0)
    rows = []
    for cam in cameras or list(seq.cameras):
        for fr in read_frames(m, seq, cam, list(frames)):
            if fr.image is None:
                raise click.ClickException(f"{seq.key} {cam} frame {fr.index}: {fr.error}")
            key = FrameKey(m.dataset, seq.subject, seq.action, seq.subaction, cam, fr.index)
            got = det.detect_people([fr.image], None, [key])
            for k in np.flatnonzero(got.status == ""):
                rows.append({"camera": cam, "frame": fr.index, "person": int(got.person[k]),
                             "joints": got.joints[k], "conf": got.conf[k], "box": got.boxes[k]})
    if hasattr(det, "close"):
        det.close()
    return pd.DataFrame(rows, columns=["camera", "frame", "person", "joints", "conf", "box"])


def duplicates(people: pd.DataFrame, min_iou: float) -> pd.Series:
    """Per row: how many other skeletons of its (camera, frame) overlap its box by ``min_iou``."""
    out = pd.Series(0, index=people.index)
    for _, g in people.groupby(["camera", "frame"]):
        iou = box_iou(np.stack(g["box"]), np.stack(g["box"]))
        np.fill_diagonal(iou, 0.0)
        out[g.index] = (iou >= min_iou).sum(1)
    return out


def epipolar_support(people: pd.DataFrame, m: Manifest, epipolar_px: float) -> pd.Series:
    """Per row: the largest share of its confident joints that lie within ``epipolar_px`` of
    the epipolar lines of some skeleton of the same frame in another camera (0 without one),
    each joint compared with that skeleton's joint of either side (BlazePose swaps the legs or
    the arms of a person seen from behind in some views, ``python -m tools real-demo
    fix-flips``: a swap is not a merge)."""
    subject = m.sequences[0].subject
    cams = {c: m.camera(c, subject) for c in people["camera"].unique()}
    norm = {i: pixels_to_normalized(np.asarray(r.joints, np.float64), cams[r.camera].K,
                                    cams[r.camera].dist) for i, r in people.iterrows()}
    out = pd.Series(0.0, index=people.index)
    for _, g in people.groupby("frame"):
        for i, a in g.iterrows():
            A = cams[a.camera]
            for j, b in g[g["camera"] != a.camera].iterrows():
                B = cams[b.camera]
                E = essential_from_pose(*relative_pose(A.R, A.t, B.R, B.t))
                focal = np.sqrt(A.K[0, 0] * B.K[0, 0])
                both = (a.conf >= CONF) & (b.conf >= CONF) & (b.conf[FLIP] >= CONF)
                if both.sum() < 4:
                    continue
                err = np.minimum(sampson_error(norm[i], norm[j], E),  # either side of b
                                 sampson_error(norm[i], norm[j][FLIP], E))[both] * focal
                out[i] = max(out[i], float((err < epipolar_px).mean()))
    return out


def summary(people: pd.DataFrame, frames: range, cameras: list[str], min_share: float
            ) -> pd.DataFrame:
    """One row per camera and ``all``: frames, frames with 0, 1, 2, 3+ supported people,
    duplicate skeletons, unsupported skeletons, people per frame (mean)."""
    rows = []
    for cam in [*cameras, "all"]:
        g = people if cam == "all" else people[people["camera"] == cam]
        n_cams = len(cameras) if cam == "all" else 1
        ok = g[g["support"] >= min_share]
        per = ok.groupby(["camera", "frame"]).size()
        counts = np.zeros(4, int)
        full = per.reindex(pd.MultiIndex.from_product(
            [cameras if cam == "all" else [cam], list(frames)]), fill_value=0)
        for v in full.to_numpy():
            counts[min(int(v), 3)] += 1
        rows.append({"camera": cam, "frames": len(frames) * n_cams,
                     **{f"supported={k}": int(counts[i]) for i, k in enumerate("0123")},
                     "duplicates": int((g["duplicates"] > 0).sum()),
                     "unsupported": int((g["support"] < min_share).sum()),
                     "people/frame": len(g) / max(1, len(frames) * n_cams)})
    return pd.DataFrame(rows).rename(columns={"supported=3": "supported>=3"})


@click.command("people-check")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--detector", type=click.Choice([n for n in DETECTORS if n != "file"]),
              default="mediapipe-people", show_default=True)
@click.option("--cameras", default=None, help="Comma-separated cameras (default: all).")
@click.option("--frames", "frame_range", default=None, help="START:STOP (default: all).")
@click.option("--dup-iou", default=0.5, show_default=True)
@click.option("--epipolar-px", default=20.0, show_default=True)
@click.option("--min-share", default=0.7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every skeleton's row (camera, frame, person, box, support) as CSV.")
def main(manifest: Path, detector: str, cameras: str | None, frame_range: str | None,
         dup_iou: float, epipolar_px: float, min_share: float, out: Path | None) -> None:
    """Count people, duplicate boxes and skeletons no other view confirms, per frame of a
    calibrated recording (its first sequence), for a multi-person detector."""
    m = load_manifest(manifest)
    cams = cameras.split(",") if cameras else list(m.sequences[0].cameras)
    n = m.sequences[0].num_frames or 0
    frames = range(*map(int, frame_range.split(":"))) if frame_range else range(n)
    people = detect_recording(m, detector, cams, frames)
    people["duplicates"] = duplicates(people, dup_iou)
    people["support"] = epipolar_support(people, m, epipolar_px)
    table = summary(people, frames, cams, min_share)
    with pd.option_context("display.width", 160, "display.float_format", "{:.2f}".format):
        click.echo(table.to_string(index=False))
    bad = people[(people["support"] < min_share) | (people["duplicates"] > 0)]
    if len(bad):
        click.echo("skeletons flagged (camera frame person support duplicates): " + "; ".join(
            f"{r.camera} {r.frame} {r.person} {r.support:.2f} {r.duplicates}"
            for r in bad.itertuples()))
    if out is not None:
        flat = people.drop(columns=["joints", "conf"]).assign(
            box=[" ".join(f"{v:.1f}" for v in b) for b in people["box"]])
        flat.to_csv(out, index=False)

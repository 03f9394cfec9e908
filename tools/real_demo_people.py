"""Several people on real footage: Pose2Sim's ``Demo_MultiPerson`` (``python -m tools
real-demo --demo multi``), checked against its shipped calibration.

``python -m tools real-demo people RUN`` on a stage-1 run of that recording (detections with a
``person`` column, e.g. ``--detector mediapipe-people``):

- the association the run's code path makes without the calibration (cameras self-calibrated
  by RANSAC over people, ``pipeline.people.tracks.association_rig``, with the run's association knobs)
  against the one it makes with the calibration's cameras, on the same detections: identity
  accuracy (each self-calibrated track mapped one-to-one to a calibrated one), per camera and
  overall, over the detections the calibrated association places;
- the self-calibrated cameras' rotation and translation-direction errors against the
  calibration, per camera pair;
- an overlay: a few frames of every view, each person's detected skeleton in the colour of
  its self-calibrated track (grey: no track).
"""
from __future__ import annotations

from pathlib import Path

import click
import cv2
import numpy as np
import pandas as pd

from pipeline.people import tracks as P
from pipeline.people.association import (associate_sequence, identity_accuracy,
                                         identity_mapping)
from pipeline.store.frames import read_frames
from pipeline.job.config import load_run
from pipeline.store.run_folder import RunFolder
from pipeline.synthetic.contact_sheet import draw_pose
from pipeline.job.tasks import selected_sequences
from tools.real_demo import pair_errors_from_cameras, reference_pairs

COLOURS = [(0, 90, 255), (255, 160, 0), (60, 200, 60), (220, 60, 220), (0, 220, 255),
           (255, 255, 255)]
GREY = (128, 128, 128)


def _tracks(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every usable detection with its self-calibrated and its calibrated track, and the
    self-calibrated cameras' pair errors against the calibration."""
    cfg, m = load_run(run_dir)
    run = RunFolder(run_dir)
    s = cfg.settings(m.joint_set)
    a = cfg.association_settings()
    rows, errors = [], []
    for subject in sorted({q.subject for q in selected_sequences(cfg)}):
        seqs = [q for q in selected_sequences(cfg) if q.subject == subject]
        raw, people = P.subject_rows(run, m, subject, seqs, s.conf_threshold)
        cams = list(raw[0])
        rigs = {k: P.association_rig(m, subject, cams, people, s, use_extrinsics=k == "calib",
                                     a=a)
                for k in ("self", "calib")}
        if rigs["self"][0] is None:
            raise RuntimeError(rigs["self"][1])
        errors.append(pair_errors_from_cameras(rigs["self"][0].poses,
                                               reference_pairs(m, subject, cams))
                      .assign(subject=subject))
        for q, r, p in zip(seqs, raw, people):
            assoc = {k: associate_sequence(rig, p, a) for k, (rig, _) in rigs.items()}
            for c, cr in r.items():
                use = (cr.status == "") & (cr.person >= 0)
                rows.append(pd.DataFrame({
                    "subject": subject, "sequence": q.key, "camera": c,
                    "frame": cr.frame[use], "person": cr.person[use],
                    "joints": list(cr.joints[use]),
                    "self": assoc["self"].track.get(c, np.full(use.sum(), -1)),
                    "calib": assoc["calib"].track.get(c, np.full(use.sum(), -1))}))
    return pd.concat(rows, ignore_index=True), pd.concat(errors, ignore_index=True)


def association_accuracy(tracks: pd.DataFrame) -> pd.DataFrame:
    """Identity accuracy of the self-calibrated association against the calibrated one, per
    camera and overall, over the detections the calibrated association places (the one-to-one
    map between their tracks is decided on the whole sequence)."""
    rows = []
    placed = tracks[tracks["calib"] >= 0]
    for seq, whole in placed.groupby("sequence"):
        mapping = identity_mapping(whole["self"].to_numpy(), whole["calib"].to_numpy())
        groups = list(whole.groupby("camera")) + [("all", whole)]
        for cam, g in groups:
            rows.append({"sequence": seq, "camera": cam, "detections": len(g),
                         "accuracy": identity_accuracy(g["self"].to_numpy(),
                                                       g["calib"].to_numpy(), mapping),
                         "tracks_self": int(g["self"][g["self"] >= 0].nunique()),
                         "tracks_calib": int(g["calib"].nunique())})
    return pd.DataFrame(rows)


def overlay(run_dir: str | Path, tracks: pd.DataFrame, out_png: str | Path,
            frames: tuple[int, ...] = (10, 50, 90), height: int = 480) -> Path:
    """A grid (rows: frames, columns: views) of the detected skeletons, one colour per
    self-calibrated track (grey: none), written to ``out_png``."""
    cfg, m = load_run(run_dir)
    seq = selected_sequences(cfg)[0]
    tiles = []
    for f in frames:
        row = []
        for cam in seq.cameras:
            img = next(iter(read_frames(m, seq, cam, [f]))).image
            scale = height / img.shape[0]
            img = cv2.resize(img, None, fx=scale, fy=scale)
            sel = tracks[(tracks["sequence"] == seq.key) & (tracks["camera"] == cam)
                         & (tracks["frame"] == f)]
            for j, t in zip(sel["joints"], sel["self"]):
                colour = COLOURS[t % len(COLOURS)] if t >= 0 else GREY
                img = draw_pose(img, np.asarray(j) * scale, js=m.joint_set, colour=colour,
                                thickness=2)
            cv2.putText(img, f"{cam} f{f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                        (255, 255, 255), 2, cv2.LINE_AA)
            row.append(img)
        tiles.append(np.hstack(row))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), np.vstack(tiles))
    return out_png


@click.command("people")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--overlay", "overlay_png", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the overlay here (default: RUN/people_overlay.png).")
def people_cmd(run_dir: Path, overlay_png: Path | None) -> None:
    """Several people: the association without the calibration against the one with it
    (identity accuracy), the self-calibrated cameras against the calibration, an overlay."""
    tracks, errors = _tracks(run_dir)
    acc = association_accuracy(tracks)
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        click.echo("association accuracy, self-calibrated vs calibrated cameras:")
        click.echo(acc.to_string(index=False))
        click.echo("self-calibrated cameras (association rig) vs the calibration:")
        click.echo(errors.to_string(index=False))
    png = overlay(run_dir, tracks, overlay_png or Path(run_dir) / "people_overlay.png")
    click.echo(f"overlay: {png}")

"""``python -m tools people-score RUN ROOT``: a stage-1 run of the rendered multi-person
synthetic set (``python -m pipeline data --people N --root ROOT``) scored against its exact
ground truth: association accuracy over the detections, and the label error (N-MPJPE,
root-relative and scale-aligned, mm) of each true person; for a self-calibrated run
(``--cameras``), also the association's self-calibrated cameras against the manifest's
extrinsics (which the run never read) and the CPU time of that self-calibration.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from eval.metrics import mpjpe
from pipeline.store import shards as S
from pipeline.people import tracks as P
from pipeline.people.association import identity_accuracy
from pipeline.job.config import load_run
from pipeline.store.run_folder import RunFolder
from pipeline.synthetic.people_scene import PeopleTruth
from pipeline.job.tasks import selected_sequences
from tools.real_demo import pair_errors_from_cameras, reference_pairs


def score_people(run_dir: str | Path, root: str | Path) -> dict:
    """{"association_accuracy", "associated_share", "tracks", "per_person": {true person:
    {"rows", "n_mpjpe_mm"}}} of the run in ``run_dir`` against ``root``'s ground truth."""
    truth = PeopleTruth.load(root)
    run = RunFolder(run_dir)
    files = run.all_association_files() if run.association_dir.exists() else []
    if not files:
        raise FileNotFoundError(f"{run.association_dir}: no association notes (a multi-person "
                                f"run of {root}/detections.parquet was expected)")
    notes = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    det = pd.DataFrame({"camera": np.array(truth.cameras)[truth.det_camera],
                        "frame": truth.det_frame, "person": truth.det_person,
                        "identity": truth.det_identity})
    notes = det.merge(notes[["camera", "frame", "person", "track"]], how="left",
                      on=["camera", "frame", "person"])
    notes["track"] = notes["track"].fillna(-1).astype(int)
    accuracy = identity_accuracy(notes["track"].to_numpy(), notes["identity"].to_numpy())
    tracked = notes[notes["track"] >= 0]
    who = tracked.groupby("track")["identity"].agg(lambda v: int(v.mode()[0])).to_dict()
    return {"association_accuracy": accuracy, "associated_share": len(tracked) / len(notes),
            "tracks": len(who), "per_person": _label_errors(run, truth, who)}


def association_cameras(run_dir: str | Path) -> dict:
    """The association's self-calibrated rig of every subject of a run, made again from the
    run's detections exactly as stage 1 made it (``pipeline.people.tracks.association_rig``), against
    the manifest's extrinsics: {subject: {"placed", "cameras", "cpu_s", "pairs": [{cam_a,
    cam_b, rot_err_deg, t_err_deg}]}}."""
    cfg, m = load_run(run_dir)
    run = RunFolder(run_dir)
    s = cfg.settings(m.joint_set)
    out = {}
    for subject in sorted({q.subject for q in selected_sequences(cfg)}):
        seqs = [q for q in selected_sequences(cfg) if q.subject == subject]
        raw, people = P.subject_rows(run, m, subject, seqs, s.conf_threshold)
        cams = list(raw[0])
        t0 = time.process_time()
        rig, why = P.association_rig(m, subject, cams, people, s, use_extrinsics=False,
                                     a=cfg.association_settings())
        cpu = time.process_time() - t0
        errors = pair_errors_from_cameras(rig.poses if rig is not None else {},
                                          reference_pairs(m, subject, cams))
        out[subject] = {"placed": len(rig) if rig is not None else 0, "cameras": len(cams),
                        "why_not": why, "cpu_s": cpu,
                        "pairs": errors[["cam_a", "cam_b", "rot_err_deg", "t_err_deg"]]
                        .to_dict("records")}
    return out


def _label_errors(run: RunFolder, truth: PeopleTruth, who: dict[int, int]) -> dict[int, dict]:
    t = run.shards()
    X, valid = S.column_array(t, "joints_3d"), S.column_array(t, "valid")
    track = t.column("person").to_numpy(zero_copy_only=False)
    ci = np.array([truth.cameras.index(c) for c in t.column("camera").to_pylist()], int)
    frame = t.column("frame").to_numpy()
    identity = np.array([who.get(int(k), -1) for k in track], int)
    gt = truth.joints_3d_cam[ci, np.maximum(identity, 0), frame].astype(np.float64)
    gt = gt - gt[:, :1]
    err = mpjpe(X, gt, valid, alignment="scale")
    out = {}
    for n in range(truth.joints_3d_cam.shape[1]):
        rows = identity == n
        out[n] = {"rows": int(rows.sum()),
                  "n_mpjpe_mm": float(np.nanmean(err[rows])) if rows.any() else float("nan")}
    return out


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--cameras", is_flag=True, default=False,
              help="Also self-calibrate the association's cameras again from the run's "
                   "detections (as stage 1 does in a self-supervised mode) and compare them "
                   "with the manifest's extrinsics.")
def main(run_dir: str, root: str, cameras: bool) -> None:
    """Score RUN_DIR (stage 1 on ROOT/people.yaml with --detector file --detections
    ROOT/detections.parquet) against ROOT's multi-person ground truth; prints JSON."""
    out = score_people(run_dir, root)
    if cameras:
        out["association_cameras"] = association_cameras(run_dir)
    click.echo(json.dumps(out, indent=1))

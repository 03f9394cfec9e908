"""Stage 1 with several people per frame: detection rows per person, the association of one
subject's people across views and over time, and one set of detections per tracked person.

When the detections carry a ``person`` column (``pipeline.detectors.FileDetector``: a Parquet
table with one row per frame, camera and person), ``pipeline.tasks``:

1. writes detection files with that column (:func:`people_table`, one crop per person, kept
   in the crop shard's rows of its frame);
2. per subject, reads them back (:func:`load_people`), gets the cameras the association needs
   (:func:`association_rig`: the manifest's extrinsics for a calibrated mode, else a rig
   self-calibrated from all candidate matches of people across views),
   associates every sequence (``pipeline.association.associate_sequence``) and splits it into
   one :class:`PersonDetections` per track (:func:`subject_people`); the subject's geometry is
   then fitted on all tracks' joints together and each track labelled as a single person would
   be; its shard rows carry the track id in ``person``;
3. keeps every detection's track, or the reason it has none, in the run folder's
   ``association/<subject>.parquet`` (:func:`association_notes`); rows with a reason go into
   ``failures.parquet`` (a crowded view, more than ``max_people``: error; a person seen by one
   camera only, too few joints, no cameras: warning).

Detections without the column never come here: the single-person path is unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import shards as S
from pipeline import geometry as G
from pipeline.association import (AssociationSettings, CameraPeople, SequenceAssociation,
                                  associate_sequence, cluster_sequence, cluster_views,
                                  epipolar_costs, pair_essentials)
from pipeline.cameras import box_from_points, box_to_square, pixels_to_normalized
from pipeline.detectors import PeopleRows
from pipeline.geometry_modes import GEOMETRY_MODES, GeometrySettings, Views
from pipeline.manifest import Manifest, Sequence
from pipeline.rig import CameraRig
from pipeline.run_folder import RunFolder

MIN_CALIBRATION_PEOPLE = 10
"""People (one per frame and group of views) matched across views needed to self-calibrate."""
SELF_CALIBRATION_MODE = "multiview"
"""The geometry mode (``GEOMETRY_MODES``) that self-calibrates the association's rig."""
NOTE_COLUMNS = ["dataset", "subject", "action", "subaction", "camera", "frame", "person",
                "track", "reason", "severity"]


# --- detection ------------------------------------------------------------------------------------

def people_table(m: Manifest, seq: Sequence, camera: str, frames: list[int],
                 read_status: list[str], rows: PeopleRows, images: list[Any],
                 usable: Callable[[int, np.ndarray, np.ndarray], str],
                 crop: Callable[[int, int, Any, np.ndarray], str] | None, margin: float,
                 slots: int = 1) -> pa.Table:
    """The detection table of one chunk with several people per frame: one row per
    (frame, person), ``person`` the detector's index, one crop per usable person.

    Args:
        read_status: per frame, why it could not be read ("" when read).
        usable: (frame, joints, conf) -> why a person's joints are unusable ("" when usable;
            ``pipeline.tasks.frame_status``, which zeroes non-finite confidences in place).
        crop: (chunk position of the frame, slot, image, square box) -> the crop's
            ``image_path`` (``pipeline.tasks`` stores it in the crop shard); None: no crops.
        slots: crops kept per frame: the frame's ``slots`` first people (in the detector's
            order) get one; more people than that make a view the association leaves out.
    """
    n = len(rows.index)
    status = rows.status.astype(object).copy()
    joints, conf = rows.joints.copy(), rows.conf.copy()
    boxes = np.full((n, 4), np.nan)
    paths = []
    rank = np.arange(n) - np.searchsorted(rows.index, rows.index)  # rows sorted by frame
    for r in range(n):
        i, f = int(rows.index[r]), int(frames[rows.index[r]])
        status[r] = read_status[i] or status[r] or usable(f, joints[r], conf[r])
        if status[r]:
            joints[r], conf[r] = np.nan, 0.0
        else:
            c, side = box_to_square(box_from_points(joints[r][conf[r] > 0][None])[0], margin)
            boxes[r] = np.concatenate([c - side / 2, c + side / 2])
        keep = crop is not None and not status[r] and rank[r] < slots
        paths.append(crop(i, int(rank[r]), images[i], boxes[r]) if keep else "")
    boxes = np.where(np.isfinite(boxes), boxes, 0.0)
    return S.to_table({
        "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
        "subaction": seq.subaction, "camera": camera,
        "frame": np.asarray(frames, np.int32)[rows.index], "image_path": paths,
        "bbox": boxes.astype(np.float32), "joints_2d": joints, "joints_2d_conf": conf,
        "status": list(status), "person": rows.person.astype(np.int32)},
        S.detection_schema(m.joint_set.num_joints, people=True))


# --- reading back ---------------------------------------------------------------------------------

def has_people(run: RunFolder, seqs: list[Sequence]) -> bool:
    """Whether the sequences' detection files carry a ``person`` column."""
    for seq in seqs:
        for cam in seq.cameras:
            files = run.detection_files(seq, cam)
            if files:
                return "person" in pq.read_schema(files[0]).names
    return False


@dataclass
class CameraRows:
    """One camera's detection rows of one sequence (several people per frame)."""

    frame: np.ndarray
    person: np.ndarray
    joints: np.ndarray
    conf: np.ndarray
    boxes: np.ndarray
    paths: np.ndarray
    status: np.ndarray


def load_people(run: RunFolder, seq: Sequence) -> dict[str, CameraRows]:
    """camera -> its detection rows of ``seq`` (every chunk's file)."""
    out = {}
    for cam in seq.cameras:
        t = run.detection_table(seq, cam)
        out[cam] = CameraRows(
            t.column("frame").to_numpy().astype(np.int64),
            t.column("person").to_numpy().astype(np.int64),
            S.column_array(t, "joints_2d").astype(np.float64),
            S.column_array(t, "joints_2d_conf").astype(np.float64),
            S.column_array(t, "bbox").astype(np.float64),
            np.array(t.column("image_path").to_pylist(), dtype=object),
            np.array(t.column("status").to_pylist(), dtype=object))
    return out


def camera_people(m: Manifest, subject: str, rows: dict[str, CameraRows], conf_threshold: float
                  ) -> dict[str, CameraPeople]:
    """The association's input: usable rows' normalised joints and masks per camera."""
    out = {}
    for c, r in rows.items():
        cam = m.camera(c, subject)
        use = (r.status == "") & (r.person >= 0)
        x = pixels_to_normalized(np.nan_to_num(r.joints[use]), cam.K, cam.dist)
        mask = (r.conf[use] >= conf_threshold) & np.isfinite(r.joints[use]).all(-1)
        out[c] = CameraPeople(r.frame[use], x, mask)
    return out


# --- cameras for the association ------------------------------------------------------------------

def association_rig(m: Manifest, subject: str, cams: list[str],
                    people: list[dict[str, CameraPeople]], s: GeometrySettings,
                    use_extrinsics: bool = False, a: AssociationSettings | None = None
                    ) -> tuple[CameraRig | None, str]:
    """The cameras the association uses: the manifest's extrinsics of every camera when
    ``use_extrinsics`` (a calibrated mode; a self-supervised run never reads them), else
    self-calibrated without knowing who is who:

    1. each camera pair's essential matrix from all candidate matches (every person of one
       view with every person of the other in the same frame; RANSAC keeps the consistent
       ones: :func:`candidate_pairs`);
    2. every frame's people grouped across views with those epipolar geometries
       (``association.cluster_sequence``);
    3. the grouped people, one at a time, self-calibrate the rig with ``SELF_CALIBRATION_MODE``.

    Returns (rig, "") or (None, why not)."""
    if use_extrinsics and m.has_extrinsics(subject, tuple(cams)):
        poses = {c: (m.camera(c, subject).R, m.camera(c, subject).t) for c in cams}
        return CameraRig(poses, {c: float(m.camera(c).K[0, 0]) for c in cams}), ""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    focal = {c: float(m.camera(c).K[0, 0]) for c in cams}
    E = pair_essentials(candidate_pairs(people, cams, s, focal, a), cams)
    xs, ms = [], []
    for seq_people in people:
        fc = cluster_sequence({c: seq_people[c] for c in cams}, E,
                              np.array([focal[c] for c in cams]), a)
        x, mask = cluster_views(fc)
        xs.append(x)
        ms.append(mask)
    x = {c: np.concatenate([v[c] for v in xs]) for c in cams}
    mask = {c: np.concatenate([v[c] for v in ms]) for c in cams}
    n = len(next(iter(x.values()))) if x else 0
    if n < MIN_CALIBRATION_PEOPLE:
        return None, (f"subject {subject}: {n} people matched across views by their epipolar "
                      f"geometry, {MIN_CALIBRATION_PEOPLE} needed to self-calibrate the cameras "
                      "for the association")
    views = Views(x, {c: v.astype(np.float64) for c, v in mask.items()}, focal)
    g = GEOMETRY_MODES[SELF_CALIBRATION_MODE].fit(subject, views, s)
    if g.rig is None or len(g.rig) < 2:
        return None, f"subject {subject}: self-calibration failed ({g.unregistered})"
    return g.rig, ""


def candidate_pairs(people: list[dict[str, CameraPeople]], cams: list[str],
                    s: GeometrySettings, focal: dict[str, float],
                    a: AssociationSettings | None = None) -> list[G.PairGeometry]:
    """Every camera pair's geometry without knowing who is who: RANSAC over people.

    The candidates are every person of one view with every person of the other in the same
    frame (of all sequences). A hypothesis is the essential matrix of a few candidates drawn at
    random (``SAMPLE_PEOPLE``, their joints pooled); it is scored by the candidates whose mean
    epipolar distance (``association.epipolar_costs``) is under the gate. The best
    hypothesis's candidates are then fitted together (``geometry.fit_pair_pooled``)."""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    fits = []
    for i, ca in enumerate(cams):
        for cb in cams[i + 1:]:
            xa, xb, ma, mb = [], [], [], []
            for sp in people:
                ia, ib = _same_frame(sp[ca].frame, sp[cb].frame)
                xa.append(sp[ca].x[ia])
                xb.append(sp[cb].x[ib])
                ma.append(sp[ca].mask[ia])
                mb.append(sp[cb].mask[ib])
            xa, xb = np.concatenate(xa), np.concatenate(xb)
            mask = np.concatenate(ma) & np.concatenate(mb)
            f = (focal[ca] + focal[cb]) / 2
            keep = _best_hypothesis(xa, xb, mask, f, s, a)
            fits.append(G.fit_pair_pooled(xa[keep], xb[keep], mask[keep], s.ransac_threshold_px,
                                          f, seed=s.seed, cam_a=ca, cam_b=cb))
    return fits


SAMPLE_PEOPLE = 3
"""Candidate matches per RANSAC-over-people hypothesis (with P people, a share P**-3 of the
samples are all right: 300 hypotheses find one for P up to about 5)."""
HYPOTHESES = 300


def _best_hypothesis(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, focal: float,
                     s: GeometrySettings, a: AssociationSettings) -> np.ndarray:
    """(K,) the candidates (rows of xa, xb: (K, J, 2)) consistent with the best hypothesis.

    Scored as MSAC does (each candidate adds 1 - cost / gate, 0 above the gate): people at
    similar heights of cameras at similar heights lie near each other's epipolar lines, so a
    wrong geometry can gather as many candidates under the gate as the right one, but not as
    close to their lines."""
    usable = np.flatnonzero(mask.sum(-1) >= a.min_joints)
    if len(usable) < SAMPLE_PEOPLE:
        return np.zeros(len(xa), bool)
    rng = np.random.default_rng(s.seed)
    best, best_cost = -1.0, np.full(len(xa), np.inf)
    for _ in range(HYPOTHESES):
        pick = rng.choice(usable, SAMPLE_PEOPLE, replace=False)
        sel = mask[pick]
        g = G.fit_essential(xa[pick][sel], xb[pick][sel], s.ransac_threshold_px, focal,
                            method="ransac", seed=s.seed)
        if not g.ok:
            continue
        cost = _candidate_costs(G.essential_from_pose(g.R, g.t), xa, xb, mask, focal, a)
        score = np.clip(1 - cost / a.gate_px, 0, 1).sum()
        if score > best:
            best, best_cost = score, cost
    return best_cost < a.gate_px


def _candidate_costs(E: np.ndarray, xa: np.ndarray, xb: np.ndarray, mask: np.ndarray,
                     focal: float, a: AssociationSettings) -> np.ndarray:
    """(K,) mean epipolar distance (pixels) of each candidate (a person of view a, (J, 2), with
    one of view b) under the essential matrix E of the pair."""
    E2 = np.zeros((2, 2, 3, 3))
    E2[0, 1], E2[1, 0] = E, E.T
    x = np.stack([xa, xb], 1)[:, :, None]                       # (K, 2 views, 1 person, J, 2)
    m = np.stack([mask, mask], 1)[:, :, None]
    return epipolar_costs(x, m, E2, np.full(2, focal), a)[:, 0, 1, 0, 0]


def _same_frame(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of every fa[i] == fb[j]."""
    order = np.argsort(fb, kind="stable")
    lo = np.searchsorted(fb[order], fa, "left")
    n = np.searchsorted(fb[order], fa, "right") - lo
    ia = np.repeat(np.arange(len(fa)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    return ia, order[np.repeat(lo, n) + np.arange(n.sum()) - start]


# --- tracks ---------------------------------------------------------------------------------------

@dataclass
class PersonDetections:
    """One tracked person of one sequence, on the sequence's frame axis (the fields of
    ``pipeline.tasks.SequenceDetections``, NaN / 0 / "" where the track is not seen)."""

    person: int
    frames: np.ndarray
    joints: dict[str, np.ndarray] = field(default_factory=dict)
    conf: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    paths: dict[str, np.ndarray] = field(default_factory=dict)


def split_tracks(rows: dict[str, CameraRows], usable: dict[str, np.ndarray],
                 a: SequenceAssociation) -> list[PersonDetections]:
    """One :class:`PersonDetections` per track of the association (``usable``: camera -> the
    rows the association saw, in its order)."""
    frames = np.unique(np.concatenate([r.frame for r in rows.values()]))
    F = len(frames)
    out = []
    for t in range(a.count):
        p = PersonDetections(t, frames)
        for c, r in rows.items():
            J = r.joints.shape[1]
            p.joints[c], p.conf[c] = np.full((F, J, 2), np.nan), np.zeros((F, J))
            p.boxes[c], p.paths[c] = np.full((F, 4), np.nan), np.full(F, "", dtype=object)
            if c not in a.track:
                continue
            sel = np.flatnonzero(usable[c])[a.track[c] == t]
            pos = np.searchsorted(frames, r.frame[sel])
            p.joints[c][pos], p.conf[c][pos] = r.joints[sel], r.conf[sel]
            p.boxes[c][pos], p.paths[c][pos] = r.boxes[sel], r.paths[sel]
        out.append(p)
    return out


def association_notes(m: Manifest, seq: Sequence, rows: dict[str, CameraRows],
                      usable: dict[str, np.ndarray], a: SequenceAssociation | None,
                      why_none: str = "") -> pd.DataFrame:
    """One row per usable detection: its track (-1: none), the reason it has none and the
    severity of that reason (``why_none``: every row's reason when no association ran)."""
    parts = []
    for c, r in rows.items():
        sel = np.flatnonzero(usable[c])
        n = len(sel)
        track, reason, crowded = np.full(n, -1), np.full(n, why_none, dtype=object), \
            np.zeros(n, bool)
        if a is not None and c in a.track:
            track, reason, crowded = a.track[c], a.reason[c], a.crowded[c]
        elif a is not None:
            reason = np.full(n, f"camera {c} is not in the association's rig", dtype=object)
        parts.append(pd.DataFrame({
            "dataset": m.dataset, "subject": seq.subject, "action": seq.action,
            "subaction": seq.subaction, "camera": c, "frame": r.frame[sel],
            "person": r.person[sel], "track": track, "reason": reason,
            "severity": np.where(crowded, "error", "warning")}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=NOTE_COLUMNS)


def subject_people(run: RunFolder, m: Manifest, subject: str, seqs: list[Sequence],
                   s: GeometrySettings, use_extrinsics: bool = False,
                   a: AssociationSettings | None = None) -> list[list[PersonDetections]]:
    """Associate a subject's people in every sequence (cameras: :func:`association_rig`);
    write ``association/<subject>.parquet`` and return, per sequence, one
    :class:`PersonDetections` per track."""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    rows = [load_people(run, seq) for seq in seqs]
    people = [camera_people(m, subject, r, s.conf_threshold) for r in rows]
    usable = [{c: (r.status == "") & (r.person >= 0) for c, r in seq_rows.items()}
              for seq_rows in rows]
    cams = list(rows[0]) if rows else []
    rig, why = association_rig(m, subject, cams, people, s, use_extrinsics, a) if cams \
        else (None, "no cameras")
    out, notes = [], []
    for seq, r, p, u in zip(seqs, rows, people, usable):
        assoc = associate_sequence(rig, p, a) if rig is not None else None
        out.append(split_tracks(r, u, assoc) if assoc is not None else [])
        notes.append(association_notes(m, seq, r, u, assoc, why))
    table = pd.concat(notes, ignore_index=True) if notes else pd.DataFrame(columns=NOTE_COLUMNS)
    S.write_table_atomic(pa.Table.from_pandas(table, preserve_index=False),
                         run.association_file(subject))
    return out


def association_failures(run: RunFolder) -> pd.DataFrame:
    """Every association note with a reason, as ``failures.parquet`` rows (stage
    "associate")."""
    parts = [pd.read_parquet(p) for p in run.all_association_files()]
    if not parts:  # a single-person run: failures.parquet exactly as before
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    df = df[df["reason"] != ""]
    return df.drop(columns=["track"]).assign(stage="associate")

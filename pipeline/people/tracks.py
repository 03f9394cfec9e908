"""Stage 1 with several people per frame: detection rows per person, the association of one
subject's people across views and over time, and one set of detections per tracked person.

When the detections carry a ``person`` column (``pipeline.detect.registry.FileDetector``: a Parquet
table with one row per frame, camera and person), ``pipeline.job.tasks``:

1. writes detection files with that column (:func:`people_table`, one crop per person, kept
   in the crop shard's rows of its frame);
2. per subject, reads them back (:func:`load_people`), gets the cameras the association needs
   (:func:`association_rig`: the manifest's extrinsics for a calibrated mode, else a rig
   self-calibrated from all candidate matches of people across views),
   associates every sequence (``pipeline.people.association.associate_sequence``) and splits it into
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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import shards as S
from pipeline.geometry import epipolar as epi
from pipeline.geometry import loops
from pipeline.people.association import (AssociationSettings, CameraPeople, SequenceAssociation,
                                         associate_sequence, cluster_sequence, cluster_views,
                                         joint_distances, mean_distances, pair_essentials,
                                         person_sizes)
from pipeline.geometry.cameras import box_from_points, box_to_square, pixels_to_normalized
from pipeline.detect.registry import PeopleRows
from pipeline.geometry.modes import (GeometrySettings, Views, fit_pooled_pairs,
                                     subject_thresholds)
from pipeline.geometry.noise import PROVISIONAL_PX
from pipeline.store.manifest import Manifest, Sequence
from pipeline.geometry.rig import CameraRig
from pipeline.store.run_folder import RunFolder

MIN_CALIBRATION_PEOPLE = 10
"""People (one per frame and group of views) matched across views needed to self-calibrate."""
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
            ``pipeline.job.tasks.frame_status``, which zeroes non-finite confidences in place).
        crop: (chunk position of the frame, slot, image, square box) -> the crop's
            ``image_path`` (``pipeline.job.tasks`` stores it in the crop shard); None: no crops.
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


def subject_rows(run: RunFolder, m: Manifest, subject: str, seqs: list[Sequence],
                 conf_threshold: float
                 ) -> tuple[list[dict[str, CameraRows]], list[dict[str, CameraPeople]]]:
    """Per sequence of ``seqs`` (one subject's): its detection rows (:func:`load_people`) and
    the association's input made from them (:func:`camera_people`)."""
    rows = [load_people(run, seq) for seq in seqs]
    return rows, [camera_people(m, subject, r, conf_threshold) for r in rows]


# --- cameras for the association ------------------------------------------------------------------

def association_rig(m: Manifest, subject: str, cams: list[str],
                    people: list[dict[str, CameraPeople]], s: GeometrySettings,
                    use_extrinsics: bool = False, a: AssociationSettings | None = None
                    ) -> tuple[CameraRig | None, str]:
    """The cameras the association uses: the manifest's extrinsics of every camera when
    ``use_extrinsics`` (a calibrated mode; a self-supervised run never reads them), else
    self-calibrated without knowing who is who:

    1. each camera pair's essential matrix from all candidate matches (every person of one
       view with every person of the other in the same frame; RANSAC over people keeps the
       consistent ones: :func:`candidate_pairs`);
    2. every frame's people grouped across views with those epipolar geometries
       (``association.cluster_sequence``);
    3. the grouped people, one at a time, self-calibrate the rig (:func:`self_calibrate`).

    Returns (rig, "") or (None, why not)."""
    if use_extrinsics and m.has_extrinsics(subject, tuple(cams)):
        poses = {c: (m.camera(c, subject).R, m.camera(c, subject).t) for c in cams}
        return CameraRig(poses, {c: float(m.camera(c).K[0, 0]) for c in cams}), ""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    focal = {c: float(m.camera(c).K[0, 0]) for c in cams}
    E = pair_essentials(candidate_pairs(people, cams, s, focal, a), cams)
    xs, ms = [], []
    for seq_people in people:
        fc = cluster_sequence({c: seq_people[c] for c in cams}, E, a)
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
    rig, unregistered = self_calibrate(x, mask, focal, s)
    if len(rig) < 2:
        return None, f"subject {subject}: self-calibration failed ({unregistered})"
    return rig, ""


def self_calibrate(x: dict[str, np.ndarray], mask: dict[str, np.ndarray],
                   focal: dict[str, float], s: GeometrySettings
                   ) -> tuple[CameraRig, dict[str, str]]:
    """The association's rig from people grouped across views (camera -> (K, J, 2) normalised
    joints and (K, J) masks, one row per person and frame), fitted as the ``multiview``
    geometry mode fits one (robust pooled pair fits, camera loops closed and a pair every loop
    contradicts dropped, every camera registered, bundle adjustment), except that a pair the
    mode refuses as ambiguous (a pose 3 degrees from the best fits almost as well, a guard of
    the labels) is kept unless the loops contradict it: telling people apart needs no better,
    and the bundle adjustment then uses every view. Returns the rig of the registered cameras
    and camera -> why one could not be registered."""
    views = Views(x, {c: v.astype(np.float64) for c, v in mask.items()}, focal)
    th = subject_thresholds(views, s)
    pairs = [replace(g, ok=True, reason="") if g.ambiguous else g
             for g in fit_pooled_pairs(views, s, th)]
    if len(x) > 2:
        pairs = loops.flag_loop_outliers(loops.resolve_loops(pairs, x, mask))
    rig, unregistered = CameraRig.register(x, mask, th.max_ransac(), focal, seed=s.seed,
                                           pairs=pairs)
    if len(rig) < 2:
        return rig, unregistered
    rig, _, _ = rig.bundle_adjust({c: x[c] for c in rig.cameras}, mask, reference=rig.reference,
                                  gauge=rig.gauge, f_scale_px=s.ba_f_scale_px, seed=s.seed)
    return rig, unregistered


@dataclass
class Candidates:
    """Every candidate match of one camera pair: a person of view a with a person of view b
    in the same frame (of any sequence), one row each.

    Attributes:
        xa, xb: (K, J, 2) normalised joints; mask: (K, J) joints both hold.
        size_a, size_b: (K,) the people's sizes (``association.person_sizes``).
        row_a, row_b: (K,) the detection each side is (numbered over all sequences).
        frame: (K,) the frame (numbered over all sequences).
        prior: (K,) the chance the candidate is right before any geometry: 1 / the most
            people either view holds in that frame (a frame with one person per view: 1).
    """

    xa: np.ndarray
    xb: np.ndarray
    mask: np.ndarray
    size_a: np.ndarray
    size_b: np.ndarray
    row_a: np.ndarray
    row_b: np.ndarray
    frame: np.ndarray
    prior: np.ndarray

    @classmethod
    def of(cls, people: list[dict[str, CameraPeople]], ca: str, cb: str) -> "Candidates":
        parts = []
        off_a = off_b = off_f = 0
        for sp in people:
            pa, pb = sp[ca], sp[cb]
            ia, ib = _same_frame(pa.frame, pb.frame)
            frames, f = np.unique(pa.frame[ia], return_inverse=True)
            na = np.bincount(np.searchsorted(frames, pa.frame[np.isin(pa.frame, frames)]),
                             minlength=len(frames))
            nb = np.bincount(np.searchsorted(frames, pb.frame[np.isin(pb.frame, frames)]),
                             minlength=len(frames))
            parts.append((pa.x[ia], pb.x[ib], pa.mask[ia] & pb.mask[ib],
                          person_sizes(pa.x[ia], pa.mask[ia]), person_sizes(pb.x[ib], pb.mask[ib]),
                          ia + off_a, ib + off_b, f + off_f,
                          1.0 / np.maximum(na, nb)[f]))
            off_a, off_b, off_f = off_a + len(pa.frame), off_b + len(pb.frame), off_f + len(frames)
        return cls(*[np.concatenate(v) for v in zip(*parts)])

    def costs(self, E: np.ndarray, a: AssociationSettings) -> np.ndarray:
        """(K,) each candidate's mean epipolar distance (person sizes) under E (3, 3)."""
        d = joint_distances(self.xa, self.xb, E[None], self.size_a, self.size_b)
        return mean_distances(d, self.mask, a)

    def mutual(self, cost: np.ndarray) -> np.ndarray:
        """(K,) candidates cheapest both for their person of view a and of view b (at most
        one match per person, as an assignment would give)."""
        best_a = np.full(int(self.row_a.max()) + 1 if len(cost) else 0, np.inf)
        best_b = np.full(int(self.row_b.max()) + 1 if len(cost) else 0, np.inf)
        np.minimum.at(best_a, self.row_a, cost)
        np.minimum.at(best_b, self.row_b, cost)
        return np.isfinite(cost) & (cost <= best_a[self.row_a]) & (cost <= best_b[self.row_b])


def candidate_pairs(people: list[dict[str, CameraPeople]], cams: list[str],
                    s: GeometrySettings, focal: dict[str, float],
                    a: AssociationSettings | None = None) -> list[epi.PairGeometry]:
    """Every camera pair's geometry without knowing who is who: RANSAC over people.

    The candidates are every person of one view with every person of the other in the same
    frame (of all sequences, :class:`Candidates`). A hypothesis is the essential matrix
    (five-point RANSAC, ``HYPOTHESIS_ITERATIONS``) of ``SAMPLE_PEOPLE`` candidates of
    different frames drawn at random (a frame holding fewer
    people more often: its candidates are more likely right), their joints pooled; its score
    is MSAC's over the candidates that are each other's best match and closer to their lines
    than ``a.calibration_gate`` (person sizes). Hypotheses stop when RANSAC's rule says one
    with the best one's support has been drawn with 99.9% probability (at most
    ``a.hypotheses``). The best hypothesis's mutual matches under ``a.gate`` are then fitted
    together (``geometry.fit_pair_pooled``), and once more with the refitted geometry's."""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    fits = []
    for i, ca in enumerate(cams):
        for cb in cams[i + 1:]:
            cand = Candidates.of(people, ca, cb)
            f = (focal[ca] + focal[cb]) / 2
            E = _best_hypothesis(cand, f, s, a)
            g = epi.fit_pair_pooled(cand.xa[:0], cand.xb[:0], cand.mask[:0], candidate_px(s),
                                    f, seed=s.seed, cam_a=ca, cam_b=cb)
            for _ in range(REFITS if E is not None else 0):
                cost = cand.costs(E, a)
                keep = cand.mutual(cost) & (cost < a.gate)
                refit = epi.fit_pair_pooled(cand.xa[keep], cand.xb[keep], cand.mask[keep],
                                            candidate_px(s), f, seed=s.seed, cam_a=ca,
                                            cam_b=cb)
                if not refit.ok:
                    g = g if g.ok else refit
                    break
                g, E = refit, refit.E
            fits.append(g)
    return fits


def candidate_px(s: GeometrySettings) -> float:
    """The RANSAC threshold of the fits over candidate matches, before any person is linked
    (so before any noise can be measured): the user's, else the noise measurement's first-pass
    threshold (``pipeline.geometry.noise.PROVISIONAL_PX``)."""
    return s.ransac_threshold_px if s.ransac_threshold_px is not None else PROVISIONAL_PX


SAMPLE_PEOPLE = 2
"""Candidate matches per RANSAC-over-people hypothesis: with P people per view a share P**-2 of
the samples are all right (2 people hold 34 joints at two places of the scene, enough for a
hypothesis that picks the right matches; the refits then use all of them)."""
HYPOTHESIS_ITERATIONS = 20
"""Five-point RANSAC iterations within one hypothesis's joints (all of one sample's people are
right or the hypothesis is wrong anyway: a few iterations suffice)."""
MIN_HYPOTHESES = 30
"""Hypotheses drawn at least, whatever RANSAC's stopping rule says."""
REFITS = 2
"""Pooled fits of the best hypothesis's matches, each on the matches of the one before."""


def _best_hypothesis(c: Candidates, focal: float, s: GeometrySettings,
                     a: AssociationSettings) -> np.ndarray | None:
    """The essential matrix of the best hypothesis of the RANSAC over people, or None.

    Scored as MSAC does (each mutual-best candidate adds 1 - cost / calibration_gate, 0 above
    it), only mutual-best candidates counting: people at similar heights seen by cameras at
    similar heights lie near each other's epipolar lines, so a wrong geometry can gather as
    many candidates under a loose gate as the right one, but not one-to-one and not as close
    to their lines."""
    usable = np.flatnonzero(c.mask.sum(-1) >= a.min_joints)
    if len(np.unique(c.frame[usable])) < SAMPLE_PEOPLE:
        return None
    p = c.prior[usable] / c.prior[usable].sum()
    rng = np.random.default_rng(s.seed)
    best, best_E, needed, h = 0.0, None, a.hypotheses, 0
    while h < needed:
        h += 1
        pick = rng.choice(usable, SAMPLE_PEOPLE, replace=False, p=p)
        if len(np.unique(c.frame[pick])) < SAMPLE_PEOPLE:
            continue                      # two people of one frame: one is wrong
        sel = c.mask[pick]
        g = epi.fit_essential(c.xa[pick][sel], c.xb[pick][sel], candidate_px(s), focal,
                              method="ransac", seed=s.seed, max_iters=HYPOTHESIS_ITERATIONS)
        if not g.ok:
            continue
        cost = c.costs(g.E, a)
        inlier = c.mutual(cost) & (cost < a.calibration_gate)
        score = float((1 - cost[inlier] / a.calibration_gate).sum())
        if score > best:
            best, best_E = score, g.E
            w = float(np.clip(c.prior[inlier].sum() / c.prior[usable].sum(), 1e-9, 1 - 1e-9))
            needed = min(a.hypotheses, max(MIN_HYPOTHESES, int(np.ceil(
                np.log(1e-3) / np.log1p(-w ** SAMPLE_PEOPLE)))))
    return best_E


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
    ``pipeline.job.tasks.SequenceDetections``, NaN / 0 / "" where the track is not seen)."""

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


def note_severity(reason: np.ndarray, crowded: np.ndarray) -> np.ndarray:
    """(N,) severity of association notes: "error" where a crowd left a person unlinked,
    "warning" where another reason did, "" for a linked detection (no reason)."""
    linked = np.asarray(reason, dtype=object) == ""
    return np.where(crowded, "error", np.where(linked, "", "warning"))


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
            "severity": note_severity(reason, crowded)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=NOTE_COLUMNS)


def subject_people(run: RunFolder, m: Manifest, subject: str, seqs: list[Sequence],
                   s: GeometrySettings, use_extrinsics: bool = False,
                   a: AssociationSettings | None = None) -> list[list[PersonDetections]]:
    """Associate a subject's people in every sequence (cameras: :func:`association_rig`);
    write ``association/<subject>.parquet`` and return, per sequence, one
    :class:`PersonDetections` per track."""
    a = a or AssociationSettings(conf_threshold=s.conf_threshold)
    rows, people = subject_rows(run, m, subject, seqs, s.conf_threshold)
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

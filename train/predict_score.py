"""Scoring ``predict``'s output (``poses.parquet``) against labels: the manifest's 3D ground
truth or a stage-1 run's labels, only where the user asks for it (``--reference``).

* ``--reference ground-truth`` (:data:`GROUND_TRUTH_REFERENCE`): the input manifest's 3D ground
  truth, all clips in one split; ``protocol`` then gives ``make eval``'s numbers on these frames.
* ``--reference RUN``: the labels of a stage-1 run folder (e.g. the calibrated triangulation of a
  recording).

Predicted people are paired with the labels of their frame by :func:`match_people`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment

from pipeline.geometry.cameras import box_to_square, crop_affine
from pipeline.store import shards as S
from pipeline.store.shards import read_shards
from train.evaluation import decode_poses, pose_metric_table
from train.footage import Clip, InputError
from train.samples import Samples, load_manifest_samples, load_shard_samples

if TYPE_CHECKING:
    from train.predict import Pose3DNetwork

GROUND_TRUTH_REFERENCE = "ground-truth"
"""The ``--reference`` that scores against the input manifest's own 3D ground truth."""


def _keys(subject, action, subaction, camera, frame) -> np.ndarray:
    return np.array(["|".join(map(str, k)) for k in zip(subject, action, subaction, camera, frame)])


@dataclass
class Reference:
    """What predictions are scored against: ``samples`` (one row per labelled person view), their
    row ``keys`` (subject|action|subaction|camera|frame) and ``person`` (N,) the label's person
    (a stage-1 run's track id; -1 where the labels have no person)."""

    samples: Samples
    keys: np.ndarray
    person: np.ndarray
    against: str


def check_reference(clips: list[Clip], reference: str | None) -> str | None:
    """The split whose ground truth ``--reference ground-truth`` reads (None for any other
    reference); InputError naming the input when there is none to read: a manifest without
    ``ground_truth.joints_3d``, footage, or clips of several splits (or of none). A stage-1 run
    folder that does not exist is refused the same way. Cheap: called before any frame is read."""
    if reference is None:
        return None
    m = clips[0].manifest
    if reference != GROUND_TRUTH_REFERENCE:
        if not Path(reference).is_dir():
            raise InputError(f"--reference {reference}: no such stage-1 run folder (or pass "
                             f"--reference {GROUND_TRUTH_REFERENCE} for the manifest's 3D "
                             "ground truth)")
        return None
    if not m.ground_truth:
        raise InputError(f"--reference {GROUND_TRUTH_REFERENCE}: {m.path} has no 3D ground truth "
                         "(ground_truth.joints_3d); pass a stage-1 run folder instead")
    splits = {m.split_of(c.seq.subject) for c in clips}
    if len(splits) != 1 or None in splits:
        raise InputError(f"--reference {GROUND_TRUTH_REFERENCE}: the clips of {m.path} lie in "
                         f"splits {sorted(map(str, splits))}; choose one with --split")
    return splits.pop()


def reference_samples(clips: list[Clip], net: Pose3DNetwork, reference: str | None
                      ) -> Reference | None:
    """What ``reference`` names (:func:`check_reference`): the labels of a stage-1 run folder,
    or, for :data:`GROUND_TRUTH_REFERENCE`, the input manifest's 3D ground truth; None without
    a reference (the ground truth is never read unasked)."""
    split = check_reference(clips, reference)
    if reference is None:
        return None
    m = clips[0].manifest
    if reference != GROUND_TRUTH_REFERENCE:
        samples = load_shard_samples(reference, m.joint_set, manifest=m)
        return Reference(samples, _keys(samples.subject, samples.action,
                                        np.full(len(samples), "*"), samples.camera,
                                        samples.frame),
                         shard_people(reference, samples), f"the labels of {reference}")
    samples = load_manifest_samples(m, split, net.box_margin, need_2d=False)
    sub = [samples.sequences[i].subaction for i in samples.seq_index]
    return Reference(samples, _keys(samples.subject, samples.action, sub, samples.camera,
                                    samples.frame), np.full(len(samples), -1, np.int64),
                     "the manifest's 3D ground truth")


def shard_people(reference: str, samples: Samples) -> np.ndarray:
    """(N,) the ``person`` of each row of ``load_shard_samples(reference)`` (-1 where null: a
    single-person run), read in the same order; ValueError if the rows do not line up."""
    t = read_shards(reference, columns=["subject", "camera", "frame", "person"])
    same = (t.num_rows == len(samples)
            and np.array_equal(t.column("frame").to_numpy().astype(np.int64), samples.frame)
            and np.array_equal(np.array(t.column("camera").to_pylist(), dtype=str),
                               samples.camera.astype(str)))
    if not same:
        raise ValueError(f"{reference}: shard rows changed while reading them")
    return t.column("person").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


MATCH_GATE = 0.5
"""Largest mean 2D joint distance, in units of the label's box side, of a predicted person and
the label it is scored against (several people in a frame)."""


def match_people(pred_keys: np.ndarray, pred_uv: np.ndarray, ref_keys: np.ndarray,
                 ref_uv: np.ndarray, ref_side: np.ndarray, gate: float = MATCH_GATE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (prediction row, label row) of equal key. A key with one prediction and one label
    pairs them (the single-person case); otherwise the Hungarian assignment of least mean joint
    distance (over joints finite in both, (N, J, 2) pixels) divided by the label's box side,
    pairs above ``gate`` dropped."""
    preds: dict[str, list[int]] = {}
    for i, k in enumerate(pred_keys):
        preds.setdefault(k, []).append(i)
    refs: dict[str, list[int]] = {}
    for i, k in enumerate(ref_keys):
        refs.setdefault(k, []).append(i)
    out_p, out_r = [], []
    for k, p in preds.items():
        r = refs.get(k)
        if not r:
            continue
        if len(p) == 1 and len(r) == 1:
            out_p.append(p[0])
            out_r.append(r[0])
            continue
        d = np.linalg.norm(pred_uv[p][:, None] - ref_uv[r][None], axis=-1)   # (P, R, J)
        fin = np.isfinite(d)
        cost = np.where(fin, d, 0).sum(-1) / np.maximum(fin.sum(-1), 1) / ref_side[r][None]
        cost = np.where(fin.any(-1), cost, np.inf)
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e9))
        for a, b in zip(rows, cols):
            if cost[a, b] <= gate:
                out_p.append(p[a])
                out_r.append(r[b])
    return np.array(out_p, np.int64), np.array(out_r, np.int64)


def score_predictions(poses_path: str | Path, clips: list[Clip], net: Pose3DNetwork,
                      out: Path, reference: str | None = None) -> dict[str, dict[str, float]]:
    """Every metric of ``eval.metrics.ALIGNMENTS`` over the predicted people that have a label
    (:func:`reference_samples`, paired by :func:`match_people`), twice: ``protocol`` = the
    network decoded with the label's root depth (a keypoint lifter: its pose as written) (with ground truth: exactly ``make eval``'s
    numbers on these frames, through ``train.evaluation``) and ``output`` = the written
    ``joints_3d`` (reference-skeleton scale). Labels with a person (a multi-person stage-1 run)
    are also scored per person (keys ``output/person P``, ``protocol/person P``), and
    ``metrics.json`` says which predicted tracks were paired with which person. Writes
    ``metrics.json``; {} where there is nothing to score against."""
    ref = reference_samples(clips, net, reference)
    if ref is None:
        return {}
    t = pq.read_table(poses_path)
    cols = [t.column(c).to_pylist() for c in ("subject", "action", "subaction", "camera",
                                              "frame")]
    if reference != GROUND_TRUTH_REFERENCE:
        cols[2] = ["*"] * t.num_rows  # shard rows do not carry the subaction
    ok = np.flatnonzero(np.array(t.column("status").to_pylist(), dtype=object) == "")
    keys = _keys(*cols)[ok]
    uv = S.column_array(t, "detector_joints_2d")[ok].astype(np.float64)
    uv = np.where(np.isfinite(uv), uv, S.column_array(t, "joints_2d")[ok])
    sm = ref.samples
    ref_uv = np.where(np.isfinite(sm.joints_2d), sm.joints_2d,
                      np.asarray(sm.center)[:, None, :])  # no 2D labels: the box centre
    pi, ri = match_people(keys, uv, ref.keys, ref_uv, np.asarray(sm.side, np.float64))
    if not len(pi):
        return {}
    rows = ok[pi]
    sel = sm.subset(ri)
    output = S.column_array(t, "joints_3d")[rows].astype(np.float64)
    protocol = output  # a keypoint lifter's pose is root-relative already: nothing to decode
    if net.reads_images:
        coords = S.column_array(t, "coords")[rows].astype(np.float64)
        centre, side = box_to_square(S.column_array(t, "bbox")[rows].astype(np.float64))
        affine = crop_affine(centre, side, net.input_size)
        protocol = decode_poses(coords, affine, sel, net.input_size, net.depth_range_mm)
    tables = {name: pose_metric_table(p, sel) for name, p in (("protocol", protocol),
                                                              ("output", output))}
    result = {name: _means(per) for name, per in tables.items()}
    person = ref.person[ri]
    tracks = t.column("person").to_numpy()[rows].astype(np.int64)
    pairing = {}
    if (person >= 0).any():
        for p in np.unique(person[person >= 0]):
            mine = person == p
            for name, per in tables.items():
                result[f"{name}/person {int(p)}"] = _means({k: v[mine] for k, v in per.items()})
            pairing[f"person {int(p)}"] = {f"track {int(k)}": int(n) for k, n in
                                           zip(*np.unique(tracks[mine], return_counts=True))}
    (out / "metrics.json").write_text(json.dumps(dict(result, against=ref.against, tracks=pairing,
        predicted_people=int(len(ok)), paired=int(len(rows)), note=(
        "protocol: the network decoded with the label's root depth (make eval's numbers on "
        "these frames); output: poses.parquet's joints_3d (reference-skeleton scale); mm. "
        "tracks: per labelled person, the predicted track ids paired with it (rows)")),
        indent=2))
    return result


def _means(per: dict[str, np.ndarray]) -> dict[str, float]:
    out = {k: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")
           for k, v in per.items()}
    out["n"] = int(np.isfinite(next(iter(per.values()))).sum()) if per else 0
    return out

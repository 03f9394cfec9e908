"""Stage 2 on real footage (``make real-finetune``): the helpers around the product's commands.

The Makefile target chains the product's own commands; this module adds the two steps they do
not have:

* :func:`manifest_without_camera`: a copy of a recording's manifest without one camera (its
  intrinsics and every subject's extrinsics), with the data root made absolute so the copy can
  live in the run's folder. Stage 1 on that copy labels the other cameras only: the left-out
  camera's pixels reach neither the pseudo-labels, nor training, nor model selection.
* :func:`merge_training_runs`: several recordings' stage-1 runs (e.g. Pose2Sim's single- and
  multi-person demos, each labelled by its own stage-1 path) as one training set for ``python -m
  train fit``: their label shards and crop shards copied into one run folder, and one manifest
  holding every sequence (:func:`merge_manifests`: the same camera ids must have the same
  intrinsics, the same subject the same extrinsics; each sequence keeps its own frame source).
* :func:`compare_predictions`: the ``metrics.json`` of ``python -m train predict --reference``
  before and after fine-tuning, side by side (``comparison.json`` and a printed table; with a
  multi-person reference, one row per labelled person too).
* :func:`score_world_landmarks`: MediaPipe's own monocular 3D (its world landmarks, the 3D a
  user gets for free) on the left-out camera, scored like predict's ``--reference``: against a
  stage-1 run's labels (the calibrated triangulation), people paired on their 2D
  (``train.predict_score.match_people``), the same metric table, per person.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from pipeline.detect.blazepose import (MediaPipeDetector, MediaPipePeopleDetector,
                                       world_to_h36m17)
from pipeline.detect.network import FrameKey
from pipeline.joints import mediapipe33_to_h36m17
from pipeline.store.frames import read_frames
from pipeline.store.manifest import Manifest, load_manifest
from pipeline.store.shards import read_shards
from train.evaluation import pose_metric_table
from train.predict_score import _means, match_people, shard_people
from train.samples import load_shard_samples

COMPARED = ("n_mpjpe", "pa_mpjpe", "mpjpe", "pck3d", "auc", "n")
"""Metrics of predict's ``metrics.json`` shown before/after (N-MPJPE and PA-MPJPE first)."""


def manifest_without_camera(src: str | Path, camera: str, out: str | Path) -> Path:
    """Write ``out``: the manifest ``src`` without ``camera``; its ``root`` absolute. Refuses
    (ValueError naming the file) a camera the manifest lacks or one that would leave fewer than
    two cameras (no multi-view geometry)."""
    src, out = Path(src), Path(out)
    manifest = load_manifest(src)  # validates the source, resolves its root
    if camera not in manifest.cameras:
        raise ValueError(f"{src}: no camera {camera!r} to leave out (known: "
                         f"{list(manifest.cameras)})")
    if len(manifest.cameras) < 3:
        raise ValueError(f"{src}: {len(manifest.cameras)} cameras; leaving {camera!r} out would "
                         "leave fewer than two for stage 1")
    raw = yaml.safe_load(src.read_text())
    raw["cameras"] = {k: v for k, v in raw["cameras"].items() if k != camera}
    raw["extrinsics"] = {subject: {k: v for k, v in cams.items() if k != camera}
                         for subject, cams in (raw.get("extrinsics") or {}).items()}
    raw["root"] = str(manifest.root.resolve())
    raw["description"] = (f"{raw.get('description', '')} -- camera {camera} left out "
                          f"(tools/real_finetune.py, from {src})").strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(out)
    load_manifest(out)  # the copy must read back
    return out


INTRINSICS = ("fx", "fy", "cx", "cy", "distortion")


def merge_manifests(sources: list[str | Path], out: str | Path) -> Path:
    """Write ``out``: one manifest with the sequences, cameras, extrinsics and training subjects
    of every manifest in ``sources`` (dataset names joined by ``+``). Each sequence keeps its
    own frame source (an absolute pattern); a camera id present in several manifests must have
    the same intrinsics (its size: the largest), a subject the same extrinsics, and a
    (subject, action, subaction) may appear once: ValueError naming the files otherwise."""
    out = Path(out)
    merged: dict[str, Any] = {"description": "", "dataset": "", "root": None, "joint_set": None,
                              "cameras": {}, "extrinsics": {}, "frames": None, "sequences": [],
                              "splits": {"train": []}}
    names, seen = [], {}
    for src in map(Path, sources):
        m = load_manifest(src)
        raw = yaml.safe_load(src.read_text())
        if merged["joint_set"] not in (None, raw["joint_set"]):
            raise ValueError(f"{src}: joint set {raw['joint_set']!r}, the others "
                             f"{merged['joint_set']!r}")
        merged["joint_set"] = raw["joint_set"]
        merged["root"] = merged["root"] or str(m.root.resolve())
        names.append(str(raw["dataset"]))
        for cam, c in raw["cameras"].items():
            have = merged["cameras"].get(cam)
            if have is not None:
                if any(not np.allclose(have[k], c[k], rtol=1e-9, atol=1e-9) for k in INTRINSICS):
                    raise ValueError(f"{src}: camera {cam!r} has other intrinsics than in "
                                     f"{seen[cam]}; rename one of them")
                c = dict(have, width=max(have["width"], c["width"]),
                         height=max(have["height"], c["height"]))
            merged["cameras"][cam], seen[cam] = c, seen.get(cam, src)
        for subject, cams in (raw.get("extrinsics") or {}).items():
            have = merged["extrinsics"].setdefault(subject, {})
            for cam, pose in cams.items():
                if cam in have and not all(np.allclose(have[cam][k], pose[k]) for k in ("R", "t")):
                    raise ValueError(f"{src}: subject {subject!r} camera {cam!r} has other "
                                     "extrinsics than in an earlier manifest")
                have[cam] = pose
        for seq in m.sequences:
            key = (seq.subject, seq.action, seq.subaction)
            if any((q["subject"], q["action"], str(q["subaction"])) == key
                   for q in merged["sequences"]):
                raise ValueError(f"{src}: sequence {'/'.join(key)} is in an earlier manifest")
            f = seq.frames
            pattern = f.pattern if Path(f.pattern).is_absolute() else str(m.root.resolve()
                                                                          / f.pattern)
            entry = {"subject": seq.subject, "action": seq.action, "subaction": seq.subaction,
                     "cameras": list(seq.cameras),
                     "frames": {"kind": f.kind, "pattern": pattern, "fps": f.fps, "step": f.step}}
            if seq.name:
                entry["name"] = seq.name
            if seq.num_frames is not None:
                entry["num_frames"] = int(seq.num_frames)
            merged["sequences"].append(entry)
            merged["frames"] = merged["frames"] or entry["frames"]
        for subject in m.splits.get("train", ()):
            if subject not in merged["splits"]["train"]:
                merged["splits"]["train"].append(subject)
    merged["dataset"] = "+".join(names)
    merged["description"] = ("training set of " + ", ".join(map(str, sources))
                             + " (tools/real_finetune.py merge)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(yaml.safe_dump(merged, sort_keys=False))
    tmp.replace(out)
    load_manifest(out)
    return out


def merge_training_runs(runs: list[str | Path], manifests: list[str | Path], out: str | Path
                        ) -> dict[str, Any]:
    """One run folder ``out`` holding the label shards (``shards/``) and crop shards
    (``crops/``) of every stage-1 run of ``runs``, and ``out/manifest.yaml`` merging
    ``manifests`` (:func:`merge_manifests`); ``out/merged.json`` lists the sources and their
    row counts. The runs' sequences must differ (a file in two runs: ValueError). Shard rows
    name their crops relative to the run folder, so the copies read as they did."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for run in map(Path, runs):
        for part in ("shards", "crops"):
            if not (run / part).is_dir():
                if part == "shards":
                    raise FileNotFoundError(f"{run}: no shards/ folder (run stage 1 first)")
                continue
            for f in sorted((run / part).rglob("*")):
                if f.is_dir() or "parts" in f.relative_to(run / part).parts:
                    continue
                dest = out / part / f.relative_to(run / part)
                if dest.exists():
                    raise ValueError(f"{f}: {dest} comes from an earlier run as well")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
        counts[str(run)] = read_shards(run, columns=["frame"]).num_rows
    manifest = merge_manifests(manifests, out / "manifest.yaml")
    info = {"runs": counts, "manifests": [str(m) for m in manifests], "manifest": str(manifest),
            "rows": read_shards(out, columns=["frame"]).num_rows}
    (out / "merged.json").write_text(json.dumps(info, indent=2))
    return info


def compare_predictions(before: str | Path, after: str | Path) -> dict[str, Any]:
    """Before/after rows of the ``output`` and ``protocol`` metrics of two predict folders."""
    rows = {}
    for name, folder in (("before", Path(before)), ("after", Path(after))):
        path = folder / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `python -m train predict ... "
                                    "--reference RUN` first")
        metrics = json.loads(path.read_text())
        rows[name] = {kind: {k: metrics[kind].get(k) for k in COMPARED}
                      for kind in metrics if kind.split("/")[0] in ("output", "protocol")
                      and isinstance(metrics[kind], dict)}
    return rows


def world_landmark_poses(m: Manifest, camera: str, people: bool
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe on every frame of ``camera`` (first sequence of ``m``): frame (M,), 2D
    joints (M, 17, 2) px and world landmarks (M, 17, 3) mm root-relative, one row per person
    found (``people``: ``MediaPipePeopleDetector``, else ``MediaPipeDetector`` on whole frames)."""
    seq = m.sequences[0]
    det = MediaPipePeopleDetector() if people else MediaPipeDetector()
    frames, uv, world = [], [], []
    for fr in read_frames(m, seq, camera, range(seq.num_frames or 0)):
        if fr.image is None:
            raise ValueError(f"{m.path}: {camera} frame {fr.index}: {fr.error}")
        if people:
            for p in det.people(fr.image):
                frames.append(fr.index)
                uv.append(mediapipe33_to_h36m17(p.xy, p.vis)[0])
                world.append(world_to_h36m17(p.world, p.vis)[0])
            continue
        key = FrameKey(m.dataset, seq.subject, seq.action, seq.subaction, camera, fr.index)
        j, _, _, w = det.detect_with_world([fr.image], None, [key])
        if np.isfinite(w).all():
            frames.append(fr.index)
            uv.append(j[0])
            world.append(w[0])
    det.close()
    return (np.array(frames, np.int64), np.array(uv, np.float64).reshape(-1, 17, 2),
            np.array(world, np.float64).reshape(-1, 17, 3))


def score_world_landmarks(manifest: str | Path, camera: str, reference: str | Path,
                          people: bool = False) -> dict[str, Any]:
    """MediaPipe's world landmarks of ``camera`` against the labels of the stage-1 run
    ``reference`` (e.g. the calibrated 4-view triangulation) in that camera: every metric of
    ``eval.metrics.ALIGNMENTS`` (N-MPJPE, PA-MPJPE ...; MPJPE too, the world landmarks being
    metric), ``world`` over all paired people and ``world/person P`` per labelled person."""
    m = load_manifest(manifest)
    seq = m.sequences[0]
    ref = load_shard_samples(reference, m.joint_set, manifest=m)
    person = shard_people(str(reference), ref)
    mine = np.flatnonzero((ref.camera == camera) & (ref.subject == seq.subject)
                          & (ref.action == seq.action))
    if not len(mine):
        raise ValueError(f"{reference}: no label of {seq.subject}/{seq.action} camera {camera}")
    ref, person = ref.subset(mine), person[mine]
    frames, uv, world = world_landmark_poses(m, camera, people)
    ref_uv = np.where(np.isfinite(ref.joints_2d), ref.joints_2d, ref.center[:, None, :])
    pi, ri = match_people(frames.astype(str), uv, ref.frame.astype(str), ref_uv,
                          np.asarray(ref.side, np.float64))
    sel, person = ref.subset(ri), person[ri]
    per = pose_metric_table(world[pi], sel)
    out = {"world": _means(per), "predicted_people": int(len(frames)), "paired": int(len(pi)),
           "labels": int(len(ref))}
    for p in np.unique(person[person >= 0]):
        out[f"world/person {int(p)}"] = _means({k: v[person == p] for k, v in per.items()})
    return out


def _table(rows: dict[str, Any]) -> str:
    lines = [f"{'':8}{'kind':20}" + "".join(f"{k:>10}" for k in COMPARED)]
    for name, kinds in rows.items():
        for kind, values in kinds.items():
            cells = "".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v!s:>10}"
                            for v in values.values())
            lines.append(f"{name:8}{kind:20}{cells}")
    return "\n".join(lines)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(results: list[dict[str, Any] | None], key: str, metric: str) -> str:
    from eval.ablation_table import mean_std

    values = [r[key][metric] for r in results if r and key in r and metric in r[key]]
    return mean_std(values) if values else "–"


def lifter_rows(lift_out: Path, finetune: Path | None) -> list[tuple[str, list, list, str]]:
    """(row name, single-person results, multi-person results, key prefix) of `make
    real-lifter`'s folder: MediaPipe's world landmarks, the volumetric network after `make
    real-finetune` (when run), the shipped lifter, and the lifters trained on the recordings'
    labels (every seed)."""
    pred = lift_out / "predict"

    def runs(kind: str, pattern: str) -> list:
        return [_read(p / "metrics.json") for p in sorted(pred.glob(f"{kind}_{pattern}"))]

    rows = [("MediaPipe's own 3D (world landmarks)", [_read(lift_out / "world_single.json")],
             [_read(lift_out / "world_multi.json")], "world")]
    after = [_read(finetune / "after" / "metrics.json"),
             _read(finetune / "multi" / "after" / "metrics.json")] if finetune else [None] * 2
    if any(after):  # only where make real-finetune has run
        rows.append(("volumetric network after `make real-finetune`", after[:1], after[1:],
                     "output"))
    rows += [("shipped lifter, no fine-tuning", runs("single", "lifter_w1_h512_mediapipe"),
              runs("multi", "lifter_w1_h512_mediapipe"), "output"),
             ("lifter trained on the recordings' labels, from scratch",
              runs("single", "scratch_s*"), runs("multi", "scratch_s*"), "output"),
             ("lifter trained on the recordings' labels, from the shipped one",
              runs("single", "shipped_s*"), runs("multi", "shipped_s*"), "output")]
    return rows


def lifter_table(lift_out: Path, finetune: Path | None) -> str:
    """N-MPJPE / PA-MPJPE (mm, mean ± std over seeds) on the left-out camera of both
    recordings, per person for the multi-person one."""
    head = ("| 3D from MediaPipe's 2D of the left-out camera | runs | single: N-MPJPE | "
            "single: PA-MPJPE | multi, all: N-MPJPE | multi, all: PA-MPJPE | "
            "person 0: N-MPJPE | person 1: N-MPJPE |")
    out = [head, "|---|---|---|---|---|---|---|---|"]
    for name, single, multi, key in lifter_rows(lift_out, finetune):
        n = sum(r is not None for r in single)
        out.append(f"| {name} | {n} | {_cell(single, key, 'n_mpjpe')} | "
                   f"{_cell(single, key, 'pa_mpjpe')} | {_cell(multi, key, 'n_mpjpe')} | "
                   f"{_cell(multi, key, 'pa_mpjpe')} | "
                   f"{_cell(multi, f'{key}/person 0', 'n_mpjpe')} | "
                   f"{_cell(multi, f'{key}/person 1', 'n_mpjpe')} |")
    return "\n".join(out) + (
        "\n\nPose2Sim Demo_SinglePerson and Demo_MultiPerson, camera left out of every label "
        "and of training (its pixels reach nothing), scored against each recording's "
        "calibrated 4-view triangulation in that camera (mm; people paired on their 2D). "
        "Every row reads MediaPipe's 2D of the left-out camera (the lifters through "
        "`python -m train predict --detector file`, the replayed detections of `make "
        "real-demo`). Trained rows: mean ± sample std over seeds.")


@click.group("real-finetune")
def cli() -> None:
    """Stage 2 on a real recording with one camera left out (see ``make real-finetune``)."""


@cli.command("manifest")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--leave-out", "camera", required=True, help="Camera to leave out (e.g. cam04).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def manifest_cmd(src: Path, camera: str, out: Path) -> None:
    """Copy the manifest SRC without one camera (absolute data root)."""
    try:
        print(manifest_without_camera(src, camera, out))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@cli.command("compare")
@click.argument("before", type=click.Path(file_okay=False, path_type=Path))
@click.argument("after", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the comparison here as JSON.")
def compare_cmd(before: Path, after: Path, out: Path | None) -> None:
    """Print predict's metrics (vs --reference) before and after fine-tuning."""
    try:
        rows = compare_predictions(before, after)
    except (FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    print(_table(rows))
    if out is not None:
        out.write_text(json.dumps(rows, indent=2))


@cli.command("world")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--camera", required=True, help="The left-out camera (e.g. cam04).")
@click.option("--reference", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A stage-1 run whose labels are the reference (the calibrated triangulation).")
@click.option("--people/--single", default=False, show_default=True,
              help="Several people per frame (mediapipe-people) or one (mediapipe).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics here as JSON.")
def world_cmd(manifest: Path, camera: str, reference: Path, people: bool, out: Path | None
              ) -> None:
    """MediaPipe's own 3D (world landmarks) of CAMERA against a stage-1 run's labels."""
    try:
        result = score_world_landmarks(manifest, camera, reference, people)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    rows = {"mp 3D": {k: {c: v.get(c) for c in COMPARED} for k, v in result.items()
                      if isinstance(v, dict)}}
    print(_table(rows))
    print({k: v for k, v in result.items() if not isinstance(v, dict)})
    if out is not None:
        out.write_text(json.dumps(result, indent=2))


@cli.command("merge")
@click.argument("runs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--manifest", "manifests", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The manifest of each run, in the same order (repeat).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def merge_cmd(runs: tuple[Path, ...], manifests: tuple[Path, ...], out: Path) -> None:
    """Several recordings' stage-1 RUNS as one training set: OUT/shards, OUT/crops,
    OUT/manifest.yaml (train with --shards OUT --manifest OUT/manifest.yaml)."""
    if len(runs) != len(manifests):
        raise click.ClickException(f"{len(runs)} runs but {len(manifests)} --manifest")
    try:
        info = merge_training_runs(list(runs), list(manifests), out)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    print(json.dumps(info, indent=2))


@cli.command("lifter-table")
@click.argument("lift_out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--finetune", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="make real-finetune's folder: adds the volumetric network after fine-tuning.")
@click.option("--docs-table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table for the docs (docs/figures/tables/real_lifter.md).")
def lifter_table_cmd(lift_out: Path, finetune: Path | None, docs_table: Path | None) -> None:
    """The keypoint lifter on the left-out camera (make real-lifter's folder LIFT_OUT)."""
    from eval.tables import write_docs_table

    body = lifter_table(lift_out, finetune if finetune and finetune.is_dir() else None)
    print(body)
    if docs_table is not None:
        write_docs_table(docs_table, "make real-lifter", body)

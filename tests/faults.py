"""Fault injection and shard checks: break data the way real data breaks, then check what a run
kept, lost, recorded and invented.

Everything here damages *files* (a copy of a dataset, a table of 2D detections), never code: the
pipeline runs unchanged on the damaged input, and the checks say whether the run

* lost nothing: every view (sequence, camera, frame) a clean run labels is labelled by the
  faulty run too, or the run records why not: that frame failed, in that camera or in the
  partner it is paired with, or every camera pair of that camera failed
  (:func:`unexplained_missing_views`);
* invented nothing and wrote no NaN: every shard row obeys :data:`SHARD_CONTRACT`
  (:func:`contract_violations`);
* is reproducible: two runs' shards have the same contents (:func:`shard_differences`).

Used by tests/test_reliability.py, tests/test_cluster.py and by hand::

    from tests import faults
    faults.corrupt_file(manifest.frame_path(seq, cam, 3))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eval.tables import machine_description
from pipeline.store import shards as S
from pipeline.geometry.cameras import Camera, pixels_to_normalized, project
from pipeline.joints import H36M17, JointSet
from pipeline.store.run_folder import RunFolder

# --- frames ------------------------------------------------------------------------------------


def corrupt_file(path: str | os.PathLike) -> None:
    """Overwrite a file, all but its last two bytes, with bytes no decoder accepts (same size;
    a JPEG keeps its end-of-image marker, so only decoding finds the damage)."""
    p = Path(path)
    data = p.read_bytes()
    n = max(len(data) - 2, 64)
    p.write_bytes((b"\x00\x13corrupt" * (n // 9 + 1))[:n] + data[-2:])


def truncate_file(path: str | os.PathLike, keep: float = 0.5) -> None:
    """Cut a file short, keeping the first ``keep`` share of its bytes (an interrupted copy)."""
    p = Path(path)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def make_unreadable(path: str | os.PathLike) -> None:
    """Replace a file by a folder of the same name: opening it for reading fails (as root too,
    which ignores permission bits)."""
    p = Path(path)
    p.unlink()
    p.mkdir()


def resize_image(path: str | os.PathLike, size: tuple[int, int]) -> None:
    """Rewrite an image at another (width, height): a frame whose pixels do not match the
    camera's intrinsics."""
    p = Path(path)
    img = cv2.imread(str(p))
    ok, buf = cv2.imencode(p.suffix, cv2.resize(img, size))
    assert ok, p
    p.write_bytes(buf.tobytes())


# --- detection tables (replayed by ``--detector file``) -------------------------------------------

KEY_COLUMNS = ("dataset", "subject", "action", "subaction", "camera")


@dataclass
class Detections:
    """A table of 2D detections (``shards.DETECTION_SCHEMA``) as arrays, to edit and write back.

    Attributes:
        keys: (N,) per key column (dataset, subject, action, subaction, camera), str.
        frame: (N,) int; image_path, status: (N,) str.
        bbox (N, 4), joints (N, J, 2), conf (N, J): float32 arrays.
    """

    keys: dict[str, np.ndarray]
    frame: np.ndarray
    image_path: np.ndarray
    bbox: np.ndarray
    joints: np.ndarray
    conf: np.ndarray
    status: np.ndarray

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "Detections":
        """Every detection file of a stage-1 run folder (its ``detections/``)."""
        files = sorted(p for p in (Path(run_dir) / "detections").rglob("*.parquet")
                       if not p.name.startswith("."))
        t = pa.concat_tables([pq.read_table(f) for f in files])
        return cls({k: np.array(t.column(k).to_pylist(), dtype=object) for k in KEY_COLUMNS},
                   t.column("frame").to_numpy().astype(np.int64),
                   np.array(t.column("image_path").to_pylist(), dtype=object),
                   S.column_array(t, "bbox").copy(), S.column_array(t, "joints_2d").copy(),
                   S.column_array(t, "joints_2d_conf").copy(),
                   np.array(t.column("status").to_pylist(), dtype=object))

    def __len__(self) -> int:
        return len(self.frame)

    def where(self, subject: str, camera: str, action: str | None = None,
              frames: list[int] | None = None) -> np.ndarray:
        """(N,) bool: rows of ``subject`` and ``camera`` (optionally one action, some frames)."""
        m = (self.keys["subject"] == subject) & (self.keys["camera"] == camera)
        if action is not None:
            m &= self.keys["action"] == action
        if frames is not None:
            m &= np.isin(self.frame, frames)
        return m

    def drop(self, mask: np.ndarray) -> "Detections":
        """The table without the rows ``mask``: the detector has nothing for those frames."""
        keep = ~mask
        return replace(self, keys={k: v[keep] for k, v in self.keys.items()},
                       frame=self.frame[keep], image_path=self.image_path[keep],
                       bbox=self.bbox[keep], joints=self.joints[keep], conf=self.conf[keep],
                       status=self.status[keep])

    def write(self, path: str | os.PathLike) -> Path:
        """Write one Parquet file in the detection schema; returns its path."""
        cols = {k: list(v) for k, v in self.keys.items()}
        cols.update(frame=self.frame.astype(np.int32), image_path=list(self.image_path),
                    bbox=self.bbox, joints_2d=self.joints, joints_2d_conf=self.conf,
                    status=list(self.status))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(S.to_table(cols, S.DETECTION_SCHEMA), path)
        return path


def rotated_view(joints_a: np.ndarray, cam_a: Camera, cam_b: Camera, angle_deg: float = 8.0
                 ) -> np.ndarray:
    """(..., J, 2) pixels of camera a -> the pixels camera b would see if it stood at camera a's
    centre, turned by ``angle_deg`` about the vertical axis: a pair with no baseline."""
    x = pixels_to_normalized(joints_a, cam_a.K, cam_a.dist)
    rays = np.concatenate([x, np.ones_like(x[..., :1])], axis=-1)
    th = np.radians(angle_deg)
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    return project(rays @ R.T, cam_b.K, cam_b.dist).astype(np.float32)


# --- shard checks --------------------------------------------------------------------------------

SHARD_CONTRACT = {
    "finite": "joints_3d, bbox, joints_2d_conf, reproj_error_px and pair_inlier_ratio are finite "
              "in every row (no NaN, no inf)",
    "joints_2d": "joints_2d is finite wherever valid (it is NaN only for a joint the detector "
                 "did not find, which is never valid)",
    "valid": "a valid joint has a valid root, confidence >= conf_threshold and reprojection "
             "error <= reproj_threshold_px",
    "no_number_without_label": "joints_3d is 0 at the root and at every invalid joint",
    "no_invented_label": "a valid joint other than the root is not at the root (norm > 0)",
    "bbox": "bbox has x_max > x_min and y_max > y_min",
    "unique": "one row per (subject, action, subaction, camera, partner_camera, frame)",
}
"""What every shard row guarantees (checked by :func:`contract_violations`)."""


def contract_violations(table: pa.Table, conf_threshold: float,
                        reproj_threshold_px: float | np.ndarray,
                        joint_set: JointSet = H36M17) -> dict[str, int]:
    """Rows breaking each rule of :data:`SHARD_CONTRACT` (only rules with violations appear);
    ``reproj_threshold_px``: one, or (rows, 1) each row's (thresholds measured per camera)."""
    if table.num_rows == 0:
        return {}
    out: dict[str, int] = {}

    def count(rule: str, bad: np.ndarray) -> None:
        n = int(np.asarray(bad).reshape(len(bad), -1).any(-1).sum())
        if n:
            out[rule] = out.get(rule, 0) + n

    arr = {c: S.column_array(table, c) for c in ("joints_3d", "bbox", "joints_2d_conf",
                                                 "reproj_error_px", "joints_2d", "valid")}
    ratio = table.column("pair_inlier_ratio").to_numpy(zero_copy_only=False).astype(np.float64)
    for c in ("joints_3d", "bbox", "joints_2d_conf", "reproj_error_px"):
        count("finite", ~np.isfinite(arr[c]))
    count("finite", ~np.isfinite(ratio))
    valid, root = arr["valid"], joint_set.root
    count("joints_2d", valid & ~np.isfinite(arr["joints_2d"]).all(-1))
    count("valid", valid & ~valid[:, root: root + 1])
    count("valid", valid & ~(arr["joints_2d_conf"] >= conf_threshold))
    count("valid", valid & ~(arr["reproj_error_px"] <= reproj_threshold_px))
    X = arr["joints_3d"]
    count("no_number_without_label", (X[:, root] != 0).any(-1))
    count("no_number_without_label", ~valid & (X != 0).any(-1))
    norm = np.linalg.norm(np.nan_to_num(X), axis=-1)
    nonroot = np.ones(valid.shape[1], bool)
    nonroot[root] = False
    count("no_invented_label", valid & nonroot & ~(norm > 0))
    b = arr["bbox"]
    count("bbox", ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])))
    keys = table.select(["subject", "action", "subaction", "camera", "partner_camera",
                         "frame"]).to_pandas()
    count("unique", keys.duplicated().to_numpy())
    return out


ROW_KEYS = ["subject", "action", "subaction", "camera", "partner_camera", "frame"]


def shard_keys(run_dir: str | os.PathLike) -> pd.DataFrame:
    """(subject, action, subaction, camera, partner_camera, frame) of every shard row of a run
    (empty when it has no finished shard)."""
    try:
        t = S.read_shards(run_dir, columns=ROW_KEYS)
    except FileNotFoundError:
        return pd.DataFrame(columns=ROW_KEYS)
    df = t.to_pandas()
    df["frame"] = df["frame"].astype(int)
    return df[ROW_KEYS].astype({c: str for c in ROW_KEYS[:-1]})


def failures(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The run's failures.parquet (stage detect: one frame of one camera; stage geometry: one
    camera pair ``a-b`` of a subject)."""
    return RunFolder(run_dir).failures()


def finished_shards(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Relative path -> path of every finished shard (its stats file exists) of a run."""
    root = Path(run_dir) / "shards"
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.parquet"))
            if S.is_finished(p)}


def tables_equal(a: pa.Table, b: pa.Table) -> bool:
    """Same schema and the same rows in any order (NaN equal to NaN, null to null)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    order = [(c, "ascending") for c in ("frame", "camera", "partner_camera") if c in a.column_names]
    a, b = a.sort_by(order), b.sort_by(order)
    if a.equals(b):
        return True
    return all(_same(x, y) for name in a.column_names
               for x, y in zip(a.column(name).to_pylist(), b.column(name).to_pylist()))


def _same(x: object, y: object) -> bool:
    if x is None or y is None:
        return x is None and y is None
    ax, ay = np.asarray(x), np.asarray(y)
    return bool(np.array_equal(ax, ay, equal_nan=ax.dtype.kind == "f" and ay.dtype.kind == "f"))


def shard_differences(run_a: str | os.PathLike, run_b: str | os.PathLike) -> list[str]:
    """Finished shards present in only one run or whose contents differ (empty: same shards)."""
    a, b = finished_shards(run_a), finished_shards(run_b)
    out = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        if a[name].read_bytes() != b[name].read_bytes() and not tables_equal(
                pq.read_table(a[name]), pq.read_table(b[name])):
            out.append(name)
    return out


def crop_differences(run_a: str | os.PathLike, run_b: str | os.PathLike) -> list[str]:
    """What differs between two runs' crops: crop shards present in only one run or with other
    rows (a lost, duplicated or changed crop), and any crop part or temporary file left over
    (a run that finished packs and removes them all). Empty: the same crops."""
    def shards(run: str | os.PathLike) -> dict[str, Path]:
        root = Path(run) / "crops"
        return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.parquet"))
                if p.parent.name != "parts" and not p.name.startswith(".")}

    a, b = shards(run_a), shards(run_b)
    out = sorted(set(a) ^ set(b))
    for name in sorted(set(a) & set(b)):
        if not pq.read_table(a[name]).equals(pq.read_table(b[name])):
            out.append(name)
    for run in (run_a, run_b):
        out += [f"left over: {p}" for p in sorted(Path(run, "crops").rglob("*"))
                if p.is_file() and (p.parent.name == "parts" or p.name.startswith("."))]
    return out


def unexplained_missing_views(clean_run: str | os.PathLike, run: str | os.PathLike
                              ) -> pd.DataFrame:
    """Frames of a camera labelled in ``clean_run`` that ``run`` does not label, with no reason.

    A view (sequence, camera c, frame f) labelled in the clean run is accounted for in ``run``
    when ``run`` labels it (in any pair), or records frame f of c as failed, or records every
    camera pair of c as failed, or records frame f as failed in a partner that ``run`` pairs c
    with (a pair needs both views). What this returns was lost silently: it must be empty.
    Unlike a row-by-row comparison it allows a run to pick other camera pairs.
    """
    view = ROW_KEYS[:4] + ["frame"]
    clean = shard_keys(clean_run)[view].drop_duplicates()
    got = shard_keys(run)
    merged = clean.merge(got[view].drop_duplicates(), on=view, how="left", indicator=True)
    missing = merged[merged["_merge"] == "left_only"].drop(columns="_merge")
    if missing.empty:
        return missing.reset_index(drop=True)
    fail = failures(run)
    det = fail[fail["stage"] == "detect"]
    bad_frames = set(zip(det["subject"], det["action"], det["subaction"], det["camera"],
                         det["frame"].astype(float).astype(int)))
    geo = pd.read_parquet(Path(run) / "geometry.parquet")
    pairs_ok: dict[tuple[str, str], bool] = {}
    for r in geo.itertuples():
        for c in (r.cam_a, r.cam_b):
            pairs_ok[(r.subject, c)] = pairs_ok.get((r.subject, c), False) or bool(r.ok)
    partners: dict[tuple[str, str], set[str]] = {}
    for r in got.itertuples():
        partners.setdefault((r.subject, r.camera), set()).add(r.partner_camera)

    def explained(r: pd.Series) -> bool:
        seq, cam, f = (r["subject"], r["action"], r["subaction"]), r["camera"], int(r["frame"])
        if (*seq, cam, f) in bad_frames or not pairs_ok.get((r["subject"], cam), False):
            return True
        return any((*seq, p, f) in bad_frames for p in partners.get((r["subject"], cam), ()))

    return missing[~missing.apply(explained, axis=1)].reset_index(drop=True)


# --- the reliability table -----------------------------------------------------------------------

REPORT_ENV = "RELIABILITY_REPORT"
"""Set to a Markdown path (e.g. outputs/reliability.md) and the reliability tests write their
observations there: one row per scenario of the latest test session (the rows are kept in a
.jsonl beside it)."""

REPORT_COLUMNS = ("scenario", "faults injected", "runs", "frames recorded failed",
                  "pairs recorded failed", "frames lost", "shards differing from clean run",
                  "exit status")


def record(scenario: str, **observed: object) -> None:
    """Add one scenario's observations to the reliability table (no-op unless $RELIABILITY_REPORT
    is set). Keys are the REPORT_COLUMNS with spaces as underscores, plus free-form ``note``."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    import json

    md = Path(target)
    rows_path = md.with_suffix(".jsonl")
    session = os.getpid()  # the test process: rows of earlier sessions are dropped
    rows = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if r.get("session") == session:
                rows[r["scenario"]] = r
    rows[scenario] = {"scenario": scenario, "session": session, **observed}
    md.parent.mkdir(parents=True, exist_ok=True)
    S.atomic_write_bytes(rows_path, "".join(json.dumps(r, default=str) + "\n"
                                            for r in rows.values()).encode())
    S.atomic_write_bytes(md, render_report(list(rows.values())).encode())


def render_report(rows: list[dict]) -> str:
    """The Markdown table of :func:`record`'s rows, with totals."""
    keys = [c.replace(" ", "_") for c in REPORT_COLUMNS]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["<!-- written by the reliability tests; the next run with "
             f"{REPORT_ENV}=<this file> rewrites it -->",
             "*Written by the reliability tests (tests/test_reliability.py, tests/test_cluster.py, "
             f"tests/test_trainer_reliability.py) with `{REPORT_ENV}=<this file> make test` on "
             f"{when}, {machine_description()}; every number is what a test observed and "
             "asserted.*",
             "",
             "| " + " | ".join(REPORT_COLUMNS) + " | note |",
             "|" + "---|" * (len(REPORT_COLUMNS) + 1)]
    for r in rows:
        cells = [str(r.get(k, "")) for k in keys] + [str(r.get("note", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    total = {k: sum(int(r[k]) for r in rows if isinstance(r.get(k), int)) for k in keys[1:6]}
    diff = [r.get("shards_differing_from_clean_run") for r in rows]
    lines.append("| **total** | " + " | ".join(str(total[k]) for k in keys[1:6])
                 + f" | {sum(d for d in diff if isinstance(d, int))} |  |  |")
    return "\n".join(lines) + "\n"

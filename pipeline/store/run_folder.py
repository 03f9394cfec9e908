"""One stage-1 run folder: every path and file a run writes or reads, in one object.

Layout (the job writes it; the report, the overlay, the trainer and the tools read it)::

    <run>/config.json          resolved configuration, label scale ("metric_scale": bool)
    <run>/summary.json         counts and wall times of the last run
    <run>/geometry.parquet     one row per subject and camera pair (E, R, t, inliers, errors)
    <run>/cameras.json         subject -> camera -> {R, t}: X_cam = R X_ref + t, the reference
                               camera's frame (R = I, t = 0), one global scale (multiview:
                               the labels' rig; pooled: its pair fits chained, a record)
    <run>/failures.parquet     every failed frame or camera pair, with its reason
    <run>/association/<subject>.parquet  several people per frame: each detection's track
                               (``person`` of the shards) or why it has none (pipeline.people.tracks)
    <run>/detections/<subject>/<action>/<subject>__<action>__<sub>__<camera>__<start>.parquet
    <run>/crops/<subject>/<action>/<subject>__<action>__<sub>__<camera>.parquet  (crop shards,
          pipeline/store/crop_shards.py; parts/ holds a detection task's crops until packed)
    <run>/shards/subject=<s>/action=<a>/<s>__<a>__<sub>__<cam_a>-<cam_b>.parquet (+ _stats.json)
    <run>/dask-report.html
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import shards as S
from pipeline.store.manifest import Sequence


@dataclass(frozen=True)
class RunFolder:
    """Paths and readers of one stage-1 run (``path`` need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- files ----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def inconsistency(self) -> list[str] | None:
        """Why ``summary.json`` flags the run's detections as disagreeing across views (its
        ``inconsistent``, stage 1's exit 3, :mod:`pipeline.detect.consistency`): the reasons
        (at least one), or None when the run is not flagged or has no summary.json."""
        if not self.summary_file.is_file():
            return None
        summary = json.loads(self.summary_file.read_text())
        if not summary.get("inconsistent"):
            return None
        reasons = list((summary.get("consistency") or {}).get("reasons") or [])
        return reasons or ["no reason recorded"]

    def recorded_thresholds(self) -> dict[str, Any]:
        """subject -> the measured noise and pixel thresholds the run used (``summary.json``'s
        ``thresholds``: ``pipeline.geometry.noise.Thresholds.to_json``); {} without summary.json
        or for a run that predates the record."""
        if not self.summary_file.is_file():
            return {}
        return dict(json.loads(self.summary_file.read_text()).get("thresholds") or {})

    @property
    def geometry_file(self) -> Path:
        return self.path / "geometry.parquet"

    @property
    def cameras_file(self) -> Path:
        return self.path / "cameras.json"

    @property
    def failures_file(self) -> Path:
        return self.path / "failures.parquet"

    @property
    def shards_dir(self) -> Path:
        return self.path / "shards"

    @property
    def detections_dir(self) -> Path:
        return self.path / "detections"

    @property
    def association_dir(self) -> Path:
        return self.path / "association"

    def association_file(self, subject: str) -> Path:
        """One subject's association of several people per frame (``pipeline.people.tracks``)."""
        return self.association_dir / f"{subject}.parquet"

    def all_association_files(self) -> list[Path]:
        return sorted(self.association_dir.glob("*.parquet"))

    @property
    def dask_report_file(self) -> Path:
        return self.path / "dask-report.html"

    def detection_file(self, seq: Sequence, camera: str, start: int) -> Path:
        """One detection task's output (plain folder names: subject and action are columns)."""
        return (self.detections_dir / seq.subject / seq.action
                / f"{seq.subject}__{seq.action}__{seq.subaction}__{camera}__{start:06d}.parquet")

    def detection_files(self, seq: Sequence, camera: str) -> list[Path]:
        folder = self.detections_dir / seq.subject / seq.action
        return sorted(folder.glob(f"{seq.subject}__{seq.action}__{seq.subaction}__{camera}__*.parquet"))

    def detection_table(self, seq: Sequence, camera: str) -> pa.Table:
        """Every detection file of (sequence, camera), concatenated; FileNotFoundError naming
        the folder when there is none."""
        files = self.detection_files(seq, camera)
        if not files:
            raise FileNotFoundError(f"no detections for sequence {seq.key} camera {camera} in "
                                    f"{self.detections_dir}")
        return pa.concat_tables([pq.read_table(f) for f in files])

    def all_detection_files(self) -> list[Path]:
        return sorted(self.detections_dir.rglob("*.parquet"))

    @property
    def crops_dir(self) -> Path:
        return self.path / "crops"

    @staticmethod
    def crop_shard_name(seq: Sequence, camera: str) -> str:
        """The crop shard of (sequence, camera), relative to the run folder (the file part of
        the label shards' ``image_path``, ``<this>#<row>``)."""
        return (f"crops/{seq.subject}/{seq.action}/"
                f"{seq.subject}__{seq.action}__{seq.subaction}__{camera}.parquet")

    def crop_shard(self, seq: Sequence, camera: str) -> Path:
        return self.path / self.crop_shard_name(seq, camera)

    def crop_part(self, seq: Sequence, camera: str, start: int) -> Path:
        """One detection task's crops, until packed into :meth:`crop_shard`."""
        final = self.crop_shard(seq, camera)
        return final.parent / "parts" / f"{final.stem}__{start:06d}.parquet"

    def crop_parts(self, seq: Sequence, camera: str) -> list[Path]:
        final = self.crop_shard(seq, camera)
        return sorted((final.parent / "parts").glob(f"{final.stem}__*.parquet"))

    def crop_part_temporaries(self, seq: Sequence, camera: str) -> list[Path]:
        """Temporary files of crop parts (``pipeline.store.shards.write_table_atomic``) that a killed
        detection task left behind; none is being written once all the (sequence, camera)'s
        detection tasks are done, when its packing removes them."""
        final = self.crop_shard(seq, camera)
        return S.temporaries(final.parent / "parts", f"{final.stem}__*.parquet")

    def shard_file(self, seq: Sequence, cam_a: str, cam_b: str) -> Path:
        return S.shard_dir(self.path, seq.subject, seq.action) / (
            S.shard_name(seq.subject, seq.action, seq.subaction, cam_a, cam_b) + ".parquet")

    # -- readers --------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """``config.json`` as a dict; FileNotFoundError naming the file when it is absent."""
        if not self.config_file.exists():
            raise FileNotFoundError(f"{self.config_file} not found: {self.path} is not a finished "
                                    "stage-1 run folder")
        return json.loads(self.config_file.read_text())

    def config_or_empty(self) -> dict[str, Any]:
        return self.config() if self.config_file.exists() else {}

    @property
    def metric_scale(self) -> bool:
        """Labels in millimetres (known extrinsics) rather than at the canonical scale."""
        return bool(self.config_or_empty().get("metric_scale", False))

    def shards(self, filters: Any = None, columns: list[str] | None = None) -> pa.Table:
        return S.read_shards(self.path, filters=filters, columns=columns)

    def geometry(self) -> pd.DataFrame | None:
        """``geometry.parquet`` with R (3, 3), t (3,) and E (3, 3) as arrays, or None."""
        if not self.geometry_file.exists():
            return None
        g = pd.read_parquet(self.geometry_file)
        for k, shape in (("R", (3, 3)), ("t", (3,)), ("E", (3, 3))):
            if k in g:
                g[k] = [np.asarray(v, np.float64).reshape(shape) if v is not None and len(v)
                        else np.full(shape, np.nan) for v in g[k]]
        return g

    def rigs(self) -> dict[str, dict[str, Any]]:
        """subject -> ``{camera: {"R", "t"}}`` of the fitted rigs (``cameras.json``; the
        all-view rig of multiview, pooled's pair fits chained into one frame; empty for the
        per-frame modes; reference camera first)."""
        if not self.cameras_file.exists():
            return {}
        return json.loads(self.cameras_file.read_text())

    def cameras(self, subject: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """camera -> (R, t) of a subject's rig (:meth:`rigs`); KeyError when the run has none."""
        rig = self.rigs().get(subject)
        if not rig:
            raise KeyError(f"{self.cameras_file}: no all-view cameras for subject {subject}")
        return {c: (np.asarray(v["R"], np.float64).reshape(3, 3), np.asarray(v["t"], np.float64))
                for c, v in rig.items()}

    def failures(self) -> pd.DataFrame:
        return pd.read_parquet(self.failures_file) if self.failures_file.exists() else pd.DataFrame()

    def detection_status(self, path: Path, columns: tuple[str, ...] = ()) -> pa.Table:
        """A detection file's ``status`` (and its ``person`` where it has one) plus ``columns``:
        what counting its failed rows and empty views needs, without the joints."""
        person = ["person"] if "person" in pq.read_schema(path).names else []
        return pq.read_table(path, columns=[*columns, "status", *person])

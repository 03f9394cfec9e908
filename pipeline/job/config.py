"""The configuration of a stage-1 run, and the record of it a run folder keeps (``config.json``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from pipeline.people.association import AssociationSettings
from pipeline.detect.registry import DETECTOR_CHOICES, DETECTORS, DetectorOptions
from pipeline.geometry.modes import JOB_MODES, PAIR_CHOICES, GeometrySettings, get_mode
from pipeline.joints import H36M17, JointSet, lengths_by_name
from pipeline.store.manifest import Manifest, load_manifest
from pipeline.store.run_folder import RunFolder


@dataclass(frozen=True)
class JobConfig:
    """Everything that decides a stage-1 run's outputs (saved as ``config.json``).

    Attributes:
        manifest: dataset manifest (data_manifests/*.yaml).
        out: run folder (``pipeline.store.run_folder.RunFolder`` lists what it holds).
        geometry: a job mode of ``pipeline.geometry.modes.GEOMETRY_MODES``.
        detector: a back-end of ``pipeline.detect.registry.DETECTORS``, or ``auto`` (resolved once by
            ``pipeline.job.plan.resolve_job`` with ``pipeline.detect.registry.resolve_detector``).
        detector_requested: what the user asked for when ``detector`` was resolved from it
            (``auto``); None when ``detector`` is what was asked.
        allow_foreign_detector: run the 2D network on a dataset its checkpoint was not trained
            on (refused otherwise: ``pipeline.detect.network.NetDetector``).
        checkpoint_2d, detections, noise_px, outlier_rate, device: the detector's options.
        seed: RANSAC, subsampling and oracle-noise seed.
        pairs: nearest (each camera with its closest partner by estimated rotation) or all.
        conf_threshold: joints below it in either view are neither used for geometry nor labelled.
        ransac_threshold_px: RANSAC inlier threshold in pixels (converted with the focal
            length); None (the default): each camera pair's from the 2D noise measured on it
            (``pipeline.geometry.noise``; recorded in summary.json's ``thresholds``).
        reproj_threshold_px: joints reprojecting worse than this (either view) are not labels;
            None (the default): each camera's from its measured 2D noise.
        crop_size, crop_margin: saved person crops (square box grown by the margin).
        chunk_frames: frames per detection task.
        subjects: restrict to these subjects (None: every sequence of the manifest).
        max_frames: use only the first frames of each sequence (quick runs, tests).
        root: overrides the manifest's data root.
        write_crops: save the person crops (the trainer needs them; sweeps do not). Off, the
            shards' ``image_path`` is empty, and with a detector that needs no images
            (``--detector file``) no frame is read: the image folders need not exist.
        max_people, association_gate, association_calibration_gate, track_gate, track_max_gap:
            the association of several people per frame (``pipeline.people.association.
            AssociationSettings``: max_people, gate, calibration_gate, track_gate, max_gap;
            the gates in person sizes); unused by a single-person run.
    """

    manifest: str
    out: str
    geometry: str = "pooled"
    detector: str = "net"
    detector_requested: str | None = None
    allow_foreign_detector: bool = False
    checkpoint_2d: str = "outputs/runs/pose2d/best.pt"
    detections: str | None = None
    noise_px: float = 0.0
    outlier_rate: float = 0.0
    device: str = "auto"
    seed: int = 0
    pairs: str = "nearest"
    conf_threshold: float = 0.3
    ransac_threshold_px: float | None = None
    reproj_threshold_px: float | None = None
    crop_size: int = 256
    crop_margin: float = 0.15
    chunk_frames: int = 250
    subjects: tuple[str, ...] | None = None
    max_frames: int | None = None
    root: str | None = None
    write_crops: bool = True
    max_people: int = AssociationSettings.max_people
    association_gate: float = AssociationSettings.gate
    association_calibration_gate: float = AssociationSettings.calibration_gate
    track_gate: float = AssociationSettings.track_gate
    track_max_gap: int = AssociationSettings.max_gap

    def __post_init__(self) -> None:
        if self.geometry not in JOB_MODES:
            raise ValueError(f"geometry {self.geometry!r}: choose one of {JOB_MODES}")
        if self.detector not in DETECTOR_CHOICES:
            raise ValueError(f"detector {self.detector!r}: choose one of {DETECTOR_CHOICES}")
        if not 0 <= self.outlier_rate < 1 or self.noise_px < 0:
            raise ValueError("noise_px must be >= 0 and outlier_rate in [0, 1)")
        for k in ("ransac_threshold_px", "reproj_threshold_px"):
            if getattr(self, k) is not None and not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0 pixels, or None to derive it from the noise")
        if self.pairs not in PAIR_CHOICES:
            raise ValueError(f"pairs {self.pairs!r}: choose one of {PAIR_CHOICES}")
        self.association_settings()  # out-of-range association knobs fail here, named

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.out)

    @property
    def reads_frames(self) -> bool:
        """Whether stage 1 opens the frames: to write crops, or for a detector that needs them
        (``DetectorSpec.needs_images``; an unresolved ``auto`` counts as needing them).
        Without, the frame sources need not exist."""
        spec = DETECTORS.get(self.detector)
        return self.write_crops or spec is None or spec.needs_images

    @property
    def mode(self):
        return get_mode(self.geometry)

    def settings(self, joint_set: JointSet) -> GeometrySettings:
        """The geometry settings of this run (``joint_set``: the manifest's)."""
        return GeometrySettings(conf_threshold=self.conf_threshold,
                                ransac_threshold_px=self.ransac_threshold_px,
                                reproj_threshold_px=self.reproj_threshold_px, pairs=self.pairs,
                                seed=self.seed, joint_set=joint_set)

    def association_settings(self) -> AssociationSettings:
        """The knobs of the association of several people per frame."""
        return AssociationSettings(gate=self.association_gate,
                                   calibration_gate=self.association_calibration_gate,
                                   max_people=self.max_people, track_gate=self.track_gate,
                                   max_gap=self.track_max_gap,
                                   conf_threshold=self.conf_threshold)

    def detector_options(self) -> DetectorOptions:
        return DetectorOptions(noise_px=self.noise_px, outlier_rate=self.outlier_rate,
                               seed=self.seed, checkpoint=self.checkpoint_2d,
                               detections=self.detections, device=self.device,
                               allow_foreign=self.allow_foreign_detector)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["subjects"] = list(self.subjects) if self.subjects else None
        return d


# Keys of config.json that may change between runs into the same folder (more subjects extend
# a run; paths may be spelled differently; the device changes no number). Every other key
# decides what the files hold.
EXTENDABLE_KEYS = {"subjects", "out", "manifest", "root", "manifest_path", "checkpoint_2d",
                   "device", "detector_requested", "allow_foreign_detector", "detector_reason"}


# Keys added to config.json after runs were made without them: a run folder without one was
# made with its default, so resuming it is not refused.
DEFAULT_IF_ABSENT = {"max_people": JobConfig.max_people,
                     "association_gate": JobConfig.association_gate,
                     "association_calibration_gate": JobConfig.association_calibration_gate,
                     "track_gate": JobConfig.track_gate, "track_max_gap": JobConfig.track_max_gap}


def run_record(cfg: JobConfig, m: Manifest) -> dict[str, Any]:
    """What config.json holds: the configuration, resolved paths and the label scale."""
    mode = cfg.mode
    return {**cfg.to_dict(), "dataset": m.dataset, "manifest_path": str(m.path.resolve()),
            "root": str(m.root), "metric_scale": bool(mode.metric),
            "scale": scale_doc(mode, m.joint_set)}


def scale_doc(mode, joint_set: JointSet | None = None) -> str:
    """What a label's unit is, in words, for config.json."""
    if mode.metric:
        return "metric: millimetres, from the manifest's extrinsics"
    per = "each frame" if mode.per_frame_scale else "one scale per sequence and camera pair"
    if joint_set is None or joint_set is H36M17:
        return (f"canonical: poses scaled so that the sum of bone lengths equals "
                f"pipeline.geometry.triangulation.REFERENCE_BONE_SUM_MM ({per})")
    if joint_set.reference_lengths is not None:
        return (f"canonical: poses scaled to the reference bone lengths of joint set "
                f"{joint_set.name} (sum {joint_set.reference_lengths.sum():.1f} mm) ({per})")
    shared = [joint_set.names[c] for (_, c), v in zip(joint_set.bones, lengths_by_name(joint_set))
              if np.isfinite(v)]
    return (f"canonical: joint set {joint_set.name} declares no bone lengths; poses scaled so "
            f"that its bones H36M-17 also has (by child joint: {', '.join(shared)}) take "
            f"H36M-17's reference lengths, the others keep the recording's proportions ({per})")


def check_same_configuration(cfg: JobConfig, m: Manifest) -> None:
    """A rerun into a folder made with another configuration would mix outputs (finished files
    are skipped by name): refuse it, naming the keys that differ."""
    run = cfg.run
    if not run.config_file.exists():
        return
    old = run.config()
    new = json.loads(json.dumps(run_record(cfg, m), default=str))
    old = {**DEFAULT_IF_ABSENT, **old}
    differ = sorted(k for k in set(old) | set(new)
                    if k not in EXTENDABLE_KEYS and old.get(k) != new.get(k))
    if differ:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ)
        raise ValueError(f"{cfg.out}: made with another configuration ({changes}); choose a new "
                         "--out or delete the folder")


def load_run(run_dir: str | Path) -> tuple[JobConfig, Manifest]:
    """The configuration and manifest of a finished stage-1 run (``config.json``).

    ``out`` is set to ``run_dir`` (the run may have moved); the manifest is looked up where the
    run found it, and its data root is the one the run resolved.
    """
    run = RunFolder(run_dir)
    raw = run.config()
    names = {f.name for f in dataclasses.fields(JobConfig)}
    kw = {k: v for k, v in raw.items() if k in names}
    missing = [k for k in ("manifest", "geometry") if k not in kw]
    if missing:
        raise ValueError(f"{run.config_file}: missing keys {missing}")
    if kw.get("subjects"):
        kw["subjects"] = tuple(kw["subjects"])
    kw["out"] = str(run.path)
    cfg = JobConfig(**kw)
    manifest = raw.get("manifest_path") or cfg.manifest
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"{run.config_file}: manifest {manifest!r} not found (paths in "
                                "config.json are relative to the folder the run was started from)")
    return cfg, load_manifest(manifest, root=cfg.root)


def threshold_options(f: Any) -> Any:
    """The pixel-threshold options of every command that runs stage 1 (``python -m pipeline
    pseudolabels``, ``python -m tools detector-check``): None = from the measured 2D noise."""
    f = click.option(
        "--reproj-threshold-px", default=None, type=float,
        help="Joints reprojecting worse than this (pixels) in a view are not labels; the "
             "cross-view consistency check compares with it. Default: each camera's from its "
             "measured 2D noise (4 sigma, at least 3 px; the check: the largest camera's).")(f)
    return click.option(
        "--ransac-threshold-px", default=None, type=float,
        help="RANSAC inlier threshold (pixels) of the five-point fits. Default: each camera "
             "pair's from the 2D noise measured on it (3 sigma, at least 1 px; summary.json "
             "'thresholds' records the estimates and the thresholds used).")(f)

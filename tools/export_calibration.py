"""``python -m tools export-calibration``: a stage-1 run's self-calibrated cameras as a Pose2Sim,
anipose or OpenCV calibration file, at metric scale.

An all-view run (``multiview``) keeps, per subject, every camera's pose in the reference
camera's frame (``cameras.json``), known only up to one global scale. The scale is fixed by the
subject's size: every labelled frame of the subject is re-triangulated with the run's own rig
and settings (``pipeline.job.tasks.relabel_sequence``, the job's code path), the sum of the 16
bone lengths of H36M-17 is measured on each frame whose bones are all valid, and the rig is
scaled so that the median of those sums equals the declared bone sum. The bone sum, not the
standing height, because it does not depend on the pose (a crouch or a raised arm changes the
height, not the bones) and needs no "up" direction, which a self-calibrated rig does not have.

The declared bone sum is, in order: ``bone_sum_mm`` (measured on the person, or known), else
``height_mm`` times REFERENCE_BONE_SUM_MM / REFERENCE_HEIGHT_MM (the reference skeleton's
proportions: a rough conversion, bodies differ by a few per cent), else
``pipeline.geometry.triangulation.REFERENCE_BONE_SUM_MM`` (4150 mm, the Human3.6M skeleton, an adult of about
1.7 m: the scale the run's labels are already in). A metric run (known extrinsics) is already in
mm and is written as it is.

Intrinsics, distortion and image sizes come from the run's manifest; the reference camera is at
the origin (R = I, t = 0) and the file's world frame is its camera frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from pipeline.store.calibration import CALIBRATION_FORMATS, write_calibration
from pipeline.geometry.cameras import Camera
from pipeline.geometry.triangulation import REFERENCE_BONE_SUM_MM, bone_lengths
from pipeline.job.config import load_run
from pipeline.store.run_folder import RunFolder
from pipeline.job.tasks import relabel_sequence, selected_sequences

REFERENCE_HEIGHT_MM = 1700.0
"""The stature the reference skeleton (REFERENCE_BONE_SUM_MM) stands for."""

MIN_FRAMES = 5
"""Fewest frames with every bone valid that the scale is measured on."""


@dataclass(frozen=True)
class ExportedRig:
    """What :func:`metric_cameras` made: the cameras and how their scale was decided.

    Attributes:
        cameras: name -> Camera (world = the reference camera's frame, mm).
        reference: the camera at the origin.
        scale: mm per rig unit applied to the translations.
        bone_sum_mm: the declared (or default) bone sum; measured_bone_sum: the rig's median
            bone sum before scaling (rig units); frames: labelled (frame, camera) rows it was
            measured on (a frame counts once per camera that labels it; the sum is the same).
        source: in words, where the bone sum came from.
    """

    cameras: dict[str, Camera]
    reference: str
    scale: float
    bone_sum_mm: float
    measured_bone_sum: float
    frames: int
    source: str


def declared_bone_sum(height_mm: float | None = None, bone_sum_mm: float | None = None
                      ) -> tuple[float, str]:
    """The bone sum (mm) to scale to, and in words where it comes from (module docstring)."""
    if height_mm is not None and bone_sum_mm is not None:
        raise ValueError("give the subject's height or its bone sum, not both")
    for v in (height_mm, bone_sum_mm):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"a declared size must be a positive number of mm, got {v}")
    if bone_sum_mm is not None:
        return float(bone_sum_mm), f"declared bone sum {bone_sum_mm:.1f} mm"
    if height_mm is not None:
        s = height_mm * REFERENCE_BONE_SUM_MM / REFERENCE_HEIGHT_MM
        return s, (f"declared height {height_mm:.1f} mm x reference proportions "
                   f"({REFERENCE_BONE_SUM_MM:.1f} / {REFERENCE_HEIGHT_MM:.0f}) = {s:.1f} mm")
    return REFERENCE_BONE_SUM_MM, (f"reference skeleton (REFERENCE_BONE_SUM_MM = "
                                   f"{REFERENCE_BONE_SUM_MM:.1f} mm, nothing declared)")


def rig_bone_sums(run_dir: str | Path, subject: str) -> np.ndarray:
    """(N,) sum of bone lengths, in the rig's units, of every labelled frame (per labelled
    camera) of ``subject`` whose bones are all valid, re-triangulated with the run's rig."""
    cfg, m = load_run(run_dir)
    bones = m.joint_set.bones
    sums = []
    for seq in [s for s in selected_sequences(cfg) if s.subject == subject]:
        _, _, labels = relabel_sequence(cfg, seq)
        for lab in labels:
            if lab.X_camera is None:
                continue
            ok = lab.valid & np.isfinite(lab.X_camera).all(-1)
            full = (ok[:, bones[:, 0]] & ok[:, bones[:, 1]]).all(-1)
            sums.append(bone_lengths(lab.X_camera[full], m.joint_set).sum(-1))
    return np.concatenate(sums) if sums else np.zeros(0)


def metric_cameras(run_dir: str | Path, subject: str, height_mm: float | None = None,
                   bone_sum_mm: float | None = None) -> ExportedRig:
    """The run's all-view cameras of ``subject`` with the manifest's intrinsics, in mm."""
    run = RunFolder(run_dir)
    cfg, m = load_run(run_dir)
    if not cfg.mode.all_view:  # pooled records its chained pair fits; its labels are pairs'
        raise KeyError(f"{run.cameras_file}: run {run.path} ({cfg.geometry}) is not an all-view "
                       "run: its labels are not triangulated with these cameras, so they cannot "
                       "measure the rig's scale; export a multiview run")
    poses = run.cameras(subject)                      # KeyError: no rig for the subject
    reference = next(iter(poses))
    if cfg.mode.metric:
        if height_mm is not None or bone_sum_mm is not None:
            raise ValueError(f"{run.path}: a metric run ({cfg.geometry}) is in mm from the "
                             "manifest's extrinsics; do not declare a size")
        scale, target, measured, n = 1.0, float("nan"), float("nan"), 0
        source = f"metric run ({cfg.geometry}): the manifest's extrinsics"
    else:
        target, source = declared_bone_sum(height_mm, bone_sum_mm)
        sums = rig_bone_sums(run_dir, subject)
        n = int(sums.size)
        if n < MIN_FRAMES:
            raise ValueError(f"{run.path}: subject {subject} has {n} frames with every bone "
                             f"triangulated (need {MIN_FRAMES}); cannot measure the scale")
        measured = float(np.median(sums))
        scale = target / measured
    cams = {}
    for name, (R, t) in poses.items():
        c = m.camera(name)
        cams[name] = Camera(name, c.K.copy(), c.dist.copy(), c.width, c.height, R, t * scale)
    return ExportedRig(cams, reference, scale, target, measured, n, source)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--subject", required=True, help="Subject whose all-view rig is exported.")
@click.option("--format", "fmt", type=click.Choice(list(CALIBRATION_FORMATS)), required=True,
              help="pose2sim: Calib.toml (translation in m); anipose: calibration.toml (mm); "
                   "opencv: FileStorage YAML, or XML when --out ends in .xml (mm).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--height-mm", type=float, default=None,
              help="The subject's standing height; converted to a bone sum with the reference "
                   "skeleton's proportions (x 4150.1 / 1700; bodies differ by a few %).")
@click.option("--bone-sum-mm", type=float, default=None,
              help="The subject's sum of the 16 H36M-17 bone lengths, if known (exact).")
@click.option("--unit-to-mm", type=float, default=None,
              help="Write translations in this unit (default: the format's, see --format).")
def main(run: Path, subject: str, fmt: str, out: Path, height_mm: float | None,
         bone_sum_mm: float | None, unit_to_mm: float | None) -> None:
    """Write a stage-1 all-view run's self-calibrated cameras of SUBJECT as a calibration file.

    \b
    Scale: a self-calibrated rig is known up to one factor. The subject's labelled frames are
    re-triangulated with the rig, the sum of the 16 bone lengths is measured per frame, and the
    rig is scaled so that the median sum equals the declared one: --bone-sum-mm if given, else
    --height-mm converted with the reference proportions, else the reference skeleton's
    4150.1 mm (an adult of about 1.7 m). The bone sum does not change with the pose and needs
    no up direction. Camera distances scale with it: a 5 % wrong size is a 5 % wrong rig.
    Metric runs (known extrinsics) are written in mm as they are.

    \b
    The reference camera is at the origin; intrinsics and distortion are the manifest's.
    """
    try:
        rig = metric_cameras(run, subject, height_mm=height_mm, bone_sum_mm=bone_sum_mm)
    except (KeyError, ValueError) as e:
        raise click.ClickException(str(e.args[0] if isinstance(e, KeyError) else e)) from None
    path = write_calibration(rig.cameras, out, fmt, unit_to_mm)
    click.echo(f"{path}: {len(rig.cameras)} cameras of {subject}, reference {rig.reference} "
               f"at the origin; scale {rig.scale:.6g} mm per rig unit from {rig.source}"
               + (f", measured on {rig.frames} frames" if rig.frames else ""))

"""Real footage: the Pose2Sim demo (`make data-real`) and checks of a run against a shipped
calibration (`make real-demo`). The calibration readers are ``pipeline/store/calibration.py``.

``prepare_pose2sim_demo`` gets Pose2Sim's ``Demo_SinglePerson`` (4 synchronised real cameras,
one person, 100 frames at 60 fps; BSD-3-Clause) from the pose2sim wheel on PyPI with
``pip download --no-deps``, extracts only its videos and calibration, and writes a manifest::

    python -m tools real-demo --out outputs/data/pose2sim_demo

Stage 1 on real footage, checked against the shipped calibration (subcommands)::

    python -m tools real-demo fix-flips RUN --out DETECTIONS.parquet   # undo left/right swaps
    python -m tools real-demo compare RUN [CALIBRATED_RUN]            # cameras and labels
    python -m tools real-demo sweep RUN                               # RANSAC/conf settings

``camera_pair_errors`` (rotation and translation-direction error of every self-calibrated
pair), ``compare_to_calibration`` (N-MPJPE / PA-MPJPE of the self-calibrated labels against
the calibrated triangulation of the same detections), ``fix_flips`` and ``geometry_sweep``
are the functions behind them.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
import pandas as pd
import yaml

import pyarrow as pa
import pyarrow.parquet as pq

from eval.metrics import ALIGNMENTS, mpjpe, root_relative
from eval.tables import write_docs_table
from pipeline.store import shards as S
from pipeline.store.calibration import calibration_to_manifest, read_qualisys_calibration
from pipeline.geometry.cameras import (Camera, angle_between_deg, pixels_to_normalized,
                                      relative_pose, rotation_angle_deg, rotation_error_deg)
from pipeline.geometry.flips import apply_flips, detect_flips, flip_groups
from pipeline.geometry.epipolar import PairGeometry
from pipeline.geometry.modes import (GeometrySettings, PairMode, Views, fit_pooled_pairs,
                                     get_mode)
from pipeline.job.config import load_run
from pipeline.store.manifest import load_manifest
from pipeline.geometry.rig import CameraRig
from pipeline.store.run_folder import RunFolder
from pipeline.job.tasks import (concat_views, labels_table, load_sequence_detections,
                                selected_sequences, subject_geometry)

# --- Pose2Sim demo ------------------------------------------------------------------------------

POSE2SIM_VERSION = "0.10.49"
_DEMO = "Pose2Sim/Demo_SinglePerson/"
DEMOS = {"single": "Pose2Sim/Demo_SinglePerson/", "multi": "Pose2Sim/Demo_MultiPerson/"}
"""The wheel's demos: one person (the default), or two in front of each other, with
bystanders (``tools/real_demo_people.py``)."""


def download_pose2sim_wheel(dest: Path, version: str = POSE2SIM_VERSION) -> Path:
    """``pip download --no-deps pose2sim==version`` into ``dest``; the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), f"pose2sim=={version}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"pose2sim-{version}-*.whl"))
    if r.returncode != 0 or not wheels:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return wheels[0]


def extract_demo(wheel: Path, out: Path, demo: str = _DEMO) -> tuple[list[Path], Path]:
    """Extract the demo's videos and its calibration (nothing else) from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith(demo)]
        videos = sorted(n for n in names if n.startswith(demo + "videos/") and n.endswith(".mp4"))
        calib = [n for n in names if n.startswith(demo + "calibration/")
                 and n.endswith(".qca.txt")]
        if not videos or len(calib) != 1:
            raise RuntimeError(f"{wheel}: expected {demo}videos/*.mp4 and one "
                               f"{demo}calibration/*.qca.txt, found {len(videos)} videos and "
                               f"{len(calib)} calibration files")
        written = []
        for n in videos + calib:
            target = out / n[len(demo):]
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(z.read(n))
            tmp.replace(target)
            written.append(target)
    return written[:-1], written[-1]


def video_info(path: Path) -> tuple[int, int, int, float]:
    """(width, height, frame count, fps) of a video, as OpenCV reads it."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RuntimeError(f"cannot open video {path}")
    info = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS)))
    cap.release()
    return info


def demo_manifest(cameras: dict[str, Camera], videos: dict[str, Path], demo: str = _DEMO
                  ) -> dict[str, Any]:
    """The demo's manifest (root: the folder holding it). Image sizes come from the videos:
    two of them are 8 columns narrower than the calibration's video window (cropped on the
    right, which leaves the principal point in place)."""
    sizes = {c: video_info(p) for c, p in videos.items()}
    fps = {round(v[3], 3) for v in sizes.values()}
    if len(fps) != 1:
        raise RuntimeError(f"demo videos disagree on the frame rate: {sorted(fps)}")
    cams = {c: Camera(c, cam.K, cam.dist, sizes[c][0], sizes[c][1], cam.R, cam.t)
            for c, cam in cameras.items() if c in videos}
    calib = calibration_to_manifest(cams, ["P1"])
    name = demo.rstrip("/").split("/")[-1]
    single = demo == _DEMO
    return {
        "description": f"Pose2Sim {name} (pose2sim " + POSE2SIM_VERSION + ", "
                       "BSD-3-Clause): 4 synchronised cameras, "
                       + ("one person" if single else "several people") + "; calibration "
                       "converted from its Qualisys Calib.qca.txt (pipeline/store/calibration.py). "
                       "No ground truth.",
        "dataset": "pose2sim_demo" if single else "pose2sim_multi",
        "root": ".",
        "joint_set": "h36m17",
        **calib,
        "frames": {"kind": "video", "pattern": "videos/{camera}.mp4", "fps": fps.pop(), "step": 1},
        "sequences": [{"subject": "P1", "action": name.split("_")[-1], "subaction": 1,
                       "num_frames": min(v[2] for v in sizes.values())}],
        "splits": {"train": ["P1"]},
    }


def prepare_pose2sim_demo(out: Path, wheel: Path | None = None, demo: str = _DEMO) -> Path:
    """Download (unless ``wheel`` is given) and extract the demo (a folder of :data:`DEMOS`),
    write ``out/manifest.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_pose2sim_wheel(Path(tmp))
        video_paths, calib_path = extract_demo(wheel, out, demo)
    cameras = read_qualisys_calibration(calib_path)
    videos = {p.stem: p for p in video_paths}
    unknown = sorted(set(videos) - set(cameras))
    if unknown:
        raise RuntimeError(f"videos {unknown} have no camera in {calib_path}")
    manifest = out / "manifest.yaml"
    tmp_manifest = manifest.with_name(".manifest.yaml.tmp")
    tmp_manifest.write_text("# Written by tools/real_demo.py. Schema: pipeline/store/manifest.py.\n"
                            + yaml.safe_dump(demo_manifest(cameras, videos, demo), sort_keys=False,
                                             default_flow_style=None, width=100))
    tmp_manifest.replace(manifest)
    return manifest


# --- self-calibration against the shipped calibration ------------------------------------------
#
# A stage-1 run on real footage has no 3D ground truth, but the demo ships a calibration: the
# self-calibrated cameras can be checked against it, and the self-calibrated labels against the
# calibrated triangulation of the same detections (a run with --geometry calibrated).

LABEL_KEYS = ("subject", "action", "subaction", "frame", "camera")
MIN_AGREEMENT_JOINTS = 4  # Procrustes needs three non-collinear points; one more for margin


def relative_pose_errors(R: np.ndarray, t: np.ndarray, R_ref: np.ndarray, t_ref: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Rotation error (angle of R @ R_ref.T) and translation-direction error (angle between t and
    t_ref, whatever their lengths), degrees. Shapes (..., 3, 3) and (..., 3)."""
    return rotation_error_deg(R, R_ref), angle_between_deg(t, t_ref)


def reference_pairs(m: Any, subject: str, cams: list[str]) -> dict[tuple[str, str], tuple]:
    """(a, b) -> the manifest's relative pose of each pair of ``cams`` with known extrinsics
    (what self-calibrated cameras are compared with, :func:`pair_errors_from_cameras`)."""
    out = {}
    for i, a in enumerate(cams):
        for b in cams[i + 1:]:
            if m.has_extrinsics(subject, (a, b)):
                A, B = m.camera(a, subject), m.camera(b, subject)
                out[(a, b)] = relative_pose(A.R, A.t, B.R, B.t)
    return out


def pair_errors_from_cameras(cameras: dict[str, tuple[np.ndarray, np.ndarray]],
                             reference: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
                             ) -> pd.DataFrame:
    """Every camera pair's error from one set of camera poses (X_c = R_c X + t_c, any common
    frame and scale) against reference relative poses (cam_a, cam_b) -> (R, t)."""
    rows = []
    for (a, b), (Rr, tr) in reference.items():
        if a not in cameras or b not in cameras:
            continue
        (Ra, ta), (Rb, tb) = cameras[a], cameras[b]
        R, t = relative_pose(Ra, ta, Rb, tb)
        re, te = relative_pose_errors(R, t, Rr, tr)
        rows.append({"cam_a": a, "cam_b": b, "rot_deg": float(rotation_angle_deg(Rr)),
                     "rot_err_deg": float(re), "t_err_deg": float(te)})
    return pd.DataFrame(rows, columns=["cam_a", "cam_b", "rot_deg", "rot_err_deg", "t_err_deg"])


def pair_errors_from_fits(fits: list[Any],
                          reference: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
                          ) -> pd.DataFrame:
    """As :func:`pair_errors_from_cameras` for pair fits (``PairGeometry``: R, t, ok)."""
    rows = []
    for g in fits:
        key = (g.cam_a, g.cam_b)
        if key not in reference:
            continue
        Rr, tr = reference[key]
        re, te = relative_pose_errors(g.R, g.t, Rr, tr) if g.ok else (np.nan, np.nan)
        rows.append({"cam_a": g.cam_a, "cam_b": g.cam_b, "rot_deg": float(rotation_angle_deg(Rr)),
                     "rot_err_deg": float(re), "t_err_deg": float(te)})
    return pd.DataFrame(rows, columns=["cam_a", "cam_b", "rot_deg", "rot_err_deg", "t_err_deg"])


def camera_pair_errors(run_dir: str | Path) -> pd.DataFrame:
    """Rotation and translation-direction error of every camera pair of a run against the
    manifest's extrinsics: the two-view pair fits of ``geometry.parquet`` (pooled and
    loop-checked, or the extrinsics themselves for a calibrated mode), and for all-view runs
    also the bundle-adjusted cameras of ``cameras.json``. Columns: subject, source ("pooled
    pair", "multiview cameras", "extrinsics"), cam_a, cam_b, rot_deg (reference angle between
    the two cameras), rot_err_deg, t_err_deg, chosen (pair labelled by the run)."""
    cfg, m = load_run(run_dir)
    run = RunFolder(run_dir)
    geo = run.geometry()
    if geo is None:
        raise FileNotFoundError(f"{run.geometry_file} is missing")
    geo = geo[geo.get("kind", "pair") == "pair"]
    rigs, out = run.rigs(), []
    for subject, g in geo.groupby("subject", sort=True):
        cams = sorted(set(g["cam_a"]) | set(g["cam_b"]))
        ref = reference_pairs(m, subject, cams)
        if not ref:
            raise ValueError(f"{m.path}: subject {subject} has no extrinsics to compare with")
        fits = [PairGeometry(r.cam_a, r.cam_b, r.R, r.t, np.zeros((3, 3)), 0, 0, 0.0, bool(r.ok))
                for r in g.itertuples() if np.isfinite(r.R).all()]
        pe = pair_errors_from_fits(fits, ref)
        chosen = {(r.cam_a, r.cam_b) for r in g.itertuples() if bool(r.chosen)}
        pe["chosen"] = [(a, b) in chosen for a, b in zip(pe["cam_a"], pe["cam_b"])]
        source = "extrinsics" if cfg.mode.needs_extrinsics else "pooled pair"
        out.append(pe.assign(subject=subject, source=source))
        if rigs.get(subject) and cfg.mode.all_view and not cfg.mode.needs_extrinsics:
            mv = pair_errors_from_cameras(run.cameras(subject), ref)
            out.append(mv.assign(subject=subject, source="multiview cameras", chosen=True))
    cols = ["subject", "source", "cam_a", "cam_b", "rot_deg", "rot_err_deg", "t_err_deg",
            "chosen"]
    return pd.concat(out, ignore_index=True)[cols]


def pose_agreement(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray, root: int = 0
                   ) -> dict[str, float]:
    """Agreement of two sets of poses of the same people in the same camera frame.

    Args:
        pred: (N, J, 3) poses at any scale (self-calibrated labels); ref: (N, J, 3), metric
            (calibrated labels); valid: (N, J) joints usable in both. Both are made
            root-relative here (``root`` must be valid); poses with fewer than
            MIN_AGREEMENT_JOINTS valid joints are left out.
    Returns:
        poses, joints (counts used), n_mpjpe and pa_mpjpe (mean over poses, units of ``ref``),
        n_mpjpe_median and pa_mpjpe_median (median over poses).
    """
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    valid = np.asarray(valid, bool) & np.isfinite(pred).all(-1) & np.isfinite(ref).all(-1)
    keep = valid[:, root] & (valid.sum(-1) >= MIN_AGREEMENT_JOINTS)
    out = {"poses": int(keep.sum()), "joints": int(valid[keep].sum())}
    if not keep.any():
        return {**out, "n_mpjpe": np.nan, "pa_mpjpe": np.nan, "n_mpjpe_median": np.nan,
                "pa_mpjpe_median": np.nan}
    p = root_relative(np.where(valid[keep][..., None], pred[keep], 0.0), root)
    r = root_relative(np.where(valid[keep][..., None], ref[keep], 0.0), root)
    for name in ("n_mpjpe", "pa_mpjpe"):
        e = mpjpe(p, r, valid[keep], alignment=ALIGNMENTS[name])
        out[name], out[name + "_median"] = float(np.mean(e)), float(np.median(e))
    return out


def read_labels(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A run's shard rows: a frame of the key columns, partner_camera and row (index into the
    arrays), and the arrays joints_3d (N, J, 3), valid (N, J), reproj_error_px (N, J),
    joints_2d_conf (N, J)."""
    return labels_of_table(S.read_shards(run_dir))


def labels_of_table(t: pa.Table) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Shard rows (a table in the shard schema) in the layout of :func:`read_labels`."""
    keys = pd.DataFrame({k: t.column(k).to_pylist() for k in LABEL_KEYS + ("partner_camera",)})
    keys["row"] = np.arange(len(keys))
    arrays = {k: S.column_array(t, k) for k in ("joints_3d", "valid", "reproj_error_px",
                                                "joints_2d_conf")}
    return keys, arrays


def join_labels(self_keys: pd.DataFrame, cal_keys: pd.DataFrame) -> pd.DataFrame:
    """Match rows of two runs on (subject, action, subaction, frame, camera); columns row_self,
    row_cal, partner_self, partner_cal.

    Where a run labels a camera with several partners (pairs=all), rows are matched on the
    partner too; a key still ambiguous then is an error (compare runs with one partner per
    camera, e.g. pairs=nearest, or a multiview run against a nearest-pair calibrated run).
    """
    keys = list(LABEL_KEYS)
    dup_s = self_keys.duplicated(keys).any()
    dup_c = cal_keys.duplicated(keys).any()
    on = keys + ["partner_camera"] if (dup_s or dup_c) else keys
    j = self_keys.merge(cal_keys, on=on, suffixes=("_self", "_cal"), validate="one_to_one") \
        if on == keys else self_keys.merge(cal_keys, on=on, suffixes=("_self", "_cal"))
    if on != keys:
        if j.duplicated(keys + ["partner_camera"]).any():
            raise ValueError("runs label the same camera and partner twice; cannot match rows")
        j = j.rename(columns={"partner_camera": "partner_self"})
        j["partner_cal"] = j["partner_self"]
    else:
        j = j.rename(columns={"partner_camera_self": "partner_self",
                              "partner_camera_cal": "partner_cal"})
    return j[keys + ["partner_self", "partner_cal", "row_self", "row_cal"]]


def agreement_table(self_keys: pd.DataFrame, self_arrays: dict[str, np.ndarray],
                    cal_keys: pd.DataFrame, cal_arrays: dict[str, np.ndarray],
                    conf_threshold: float = 0.3, root: int = 0) -> pd.DataFrame:
    """Per camera (and "all"): matched poses and joints, valid shares, median reprojection error
    of both runs (joints whose 2D confidence is >= ``conf_threshold`` in the labelled view), and
    N-MPJPE / PA-MPJPE of the self-calibrated labels against the calibrated ones (mm) over the
    joints valid in both (:func:`pose_agreement`)."""
    j = join_labels(self_keys, cal_keys)
    if j.empty:
        raise ValueError("the two runs have no (subject, action, subaction, frame, camera) in "
                         "common")
    rows = []
    groups = [(c, g) for c, g in j.groupby("camera", sort=True)] + [("all", j)]
    for cam, g in groups:
        rs, rc = g["row_self"].to_numpy(), g["row_cal"].to_numpy()
        vs, vc = self_arrays["valid"][rs], cal_arrays["valid"][rc]
        agree = pose_agreement(self_arrays["joints_3d"][rs], cal_arrays["joints_3d"][rc],
                               vs & vc, root)
        med = {}
        for tag, arr, r in (("self", self_arrays, rs), ("cal", cal_arrays, rc)):
            e = arr["reproj_error_px"][r]
            use = (arr["joints_2d_conf"][r] >= conf_threshold) & (e < 1e5)
            med[tag] = float(np.median(e[use])) if use.any() else np.nan
        rows.append({"camera": cam,
                     "partner_self": ",".join(sorted(set(g["partner_self"]))),
                     "partner_cal": ",".join(sorted(set(g["partner_cal"]))),
                     "rows": len(g), "poses": agree["poses"], "joints": agree["joints"],
                     "valid_self": float(vs.mean()), "valid_cal": float(vc.mean()),
                     "reproj_px_self": med["self"], "reproj_px_cal": med["cal"],
                     "n_mpjpe_mm": agree["n_mpjpe"], "pa_mpjpe_mm": agree["pa_mpjpe"],
                     "n_mpjpe_median_mm": agree["n_mpjpe_median"],
                     "pa_mpjpe_median_mm": agree["pa_mpjpe_median"]})
    return pd.DataFrame(rows)


def calibrated_all_view_labels(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Labels of a run's own detections triangulated from all views with the manifest's
    extrinsics (metric, mm), in the layout of :func:`read_labels` (partner "all").

    The calibrated counterpart of a multiview run: the same triangulation
    (``pipeline.geometry.multiview.triangulate_multiview``) from the same confident joints, only the
    cameras differ. A joint is valid when confident in the view, seen by two or more views and
    in front of the camera; its reprojection error is reported but drops nothing: on real
    footage it measures how far the detector is from the calibration (about 18 px, the max over
    four views, for MediaPipe on the Pose2Sim demo), and a threshold would compare the
    self-calibrated labels on the joints easiest for the calibration only.
    """
    cfg, m = load_run(run_dir)
    keys, arrays = [], {k: [] for k in ("joints_3d", "valid", "reproj_error_px",
                                        "joints_2d_conf")}
    root = m.joint_set.root
    for seq in selected_sequences(cfg):
        cams = [c for c in seq.cameras if m.has_extrinsics(seq.subject, (c,))]
        if len(cams) < 2:
            raise ValueError(f"{m.path}: subject {seq.subject} needs extrinsics of two or more "
                             f"cameras (has {cams})")
        det = load_sequence_detections(cfg, seq)
        cal = {c: m.camera(c, seq.subject) for c in cams}
        poses = {c: (cal[c].R, cal[c].t) for c in cams}
        x = {c: pixels_to_normalized(det.joints[c], cal[c].K, cal[c].dist) for c in cams}
        mask = {c: (det.conf[c] >= cfg.conf_threshold) & np.isfinite(det.joints[c]).all(-1)
                for c in cams}
        rig = CameraRig(poses, {c: cal[c].K[0, 0] for c in cams})
        X = rig.triangulate(x, mask)                                      # world, mm
        err = rig.reprojection_error_px(X, x, mask)
        reproj = np.nanmax(np.stack([np.where(mask[c], err[c], 0.0) for c in cams]), axis=0)
        n_views = np.sum([mask[c] for c in cams], axis=0)
        for c in cams:
            Xc = X @ cal[c].R.T + cal[c].t
            keep = mask[c].any(-1)
            valid = (mask[c] & (n_views >= 2) & (Xc[..., 2] > 0)
                     & np.isfinite(Xc).all(-1))[keep]
            valid &= valid[:, root: root + 1]
            Xr = Xc[keep] - Xc[keep][:, root: root + 1]
            frames = det.frames[keep]
            keys.append(pd.DataFrame({"subject": seq.subject, "action": seq.action,
                                      "subaction": str(seq.subaction), "frame": frames,
                                      "camera": c, "partner_camera": "all"}))
            arrays["joints_3d"].append(np.where(valid[..., None], Xr, 0.0))
            arrays["valid"].append(valid)
            arrays["reproj_error_px"].append(np.nan_to_num(reproj[keep], nan=1e6))
            arrays["joints_2d_conf"].append(det.conf[c][keep])
    k = pd.concat(keys, ignore_index=True)
    k["row"] = np.arange(len(k))
    return k, {name: np.concatenate(v) for name, v in arrays.items()}


def calibrated_pair_labels(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Labels of a pair-mode run's own chosen pairs, triangulated from its own detections with
    the manifest's extrinsics (metric, mm), in the layout of :func:`read_labels`.

    The calibrated counterpart of a pooled run: the calibrated mode labels the very (camera,
    partner) pairs the run chose, from the same confident joints with the same settings; only
    the cameras differ. A calibrated run of its own picks each camera's partner by the true
    rotations: where the pooled run chose another partner, its labels would be compared with the
    triangulation of other detections, which measures the detector, not the geometry.
    """
    cfg, m = load_run(run_dir)
    mode, settings = get_mode("calibrated"), cfg.settings(m.joint_set)
    tables = []
    for seq in selected_sequences(cfg):
        det = load_sequence_detections(cfg, seq)
        views = det.views(m, seq.subject)
        chosen = subject_geometry(cfg, seq.subject, views).chosen
        geometry = replace(mode.fit(seq.subject, views, settings), chosen=chosen)
        labels = [lab for shard in chosen for lab in mode.label(views, geometry, settings, shard)]
        tables.append(labels_table(m, seq, det, views, labels))
    return labels_of_table(pa.concat_tables(tables))


def compare_to_calibration(run_self: str | Path, run_calibrated: str | Path | None = None
                           ) -> pd.DataFrame:
    """Self-calibrated labels (a pooled or multiview run) against the calibrated triangulation of
    the same detections, per camera (see :func:`agreement_table`).

    ``run_calibrated``: a run with geometry calibrated on the same detections (its shards are
    joined with ``run_self``'s); None: the calibrated triangulation of ``run_self``'s own
    detections through the same views: its chosen pairs for a pair mode
    (:func:`calibrated_pair_labels`), all views for an all-view mode
    (:func:`calibrated_all_view_labels`).
    """
    cfg_s, _ = load_run(run_self)
    if run_calibrated is None:
        pair_mode = isinstance(cfg_s.mode, PairMode)
        kc, ac = (calibrated_pair_labels if pair_mode else calibrated_all_view_labels)(run_self)
    else:
        cfg_c, _ = load_run(run_calibrated)
        if not cfg_c.mode.needs_extrinsics:
            raise ValueError(f"{run_calibrated}: geometry is {cfg_c.geometry!r}, expected one "
                             f"from known extrinsics (calibrated)")
        kc, ac = read_labels(run_calibrated)
    ks, as_ = read_labels(run_self)
    return agreement_table(ks, as_, kc, ac, conf_threshold=cfg_s.conf_threshold)


# --- the figures of `make real-demo`, written by it -------------------------------------------

REAL_DEMO_TABLE = Path("docs/figures/tables/real_demo.md")


@dataclass
class DemoFigures:
    """What `make real-demo` reports of a pooled and a multiview run of the same detections.

    Attributes:
        pairs: one row per camera pair: rot_deg (true angle between the cameras), the pooled
            pair's rot_err_deg, rotation_se_deg, loop_err_deg, ok, chosen, reason, and the
            multiview cameras' mv_rot_err_deg.
        pooled, multiview: the "all" row of :func:`compare_to_calibration` against the
            calibrated triangulation through the same views (n_mpjpe_mm, pa_mpjpe_mm, ...).
    """

    pairs: pd.DataFrame
    pooled: pd.Series
    multiview: pd.Series


def demo_figures(pooled_run: str | Path, multiview_run: str | Path) -> DemoFigures:
    """The camera and label figures of a pooled and a multiview run (:class:`DemoFigures`)."""
    geo = RunFolder(pooled_run).geometry()
    geo = geo[geo.get("kind", "pair") == "pair"]
    cam = camera_pair_errors(multiview_run)
    mv = cam[cam["source"] == "multiview cameras"].set_index(["cam_a", "cam_b"])["rot_err_deg"]
    ref = camera_pair_errors(pooled_run).set_index(["cam_a", "cam_b"])["rot_deg"]
    pairs = pd.DataFrame({
        "pair": [f"{a}-{b}" for a, b in zip(geo["cam_a"], geo["cam_b"])],
        "rot_deg": [ref.get((a, b), np.nan) for a, b in zip(geo["cam_a"], geo["cam_b"])],
        "rot_err_deg": geo["rot_err_deg"].to_numpy(),
        "rotation_se_deg": geo.get("rotation_se_deg", pd.Series(np.nan, geo.index)).to_numpy(),
        "loop_err_deg": geo.get("loop_err_deg", pd.Series(np.nan, geo.index)).to_numpy(),
        "ok": geo["ok"].astype(bool).to_numpy(), "chosen": geo["chosen"].astype(bool).to_numpy(),
        "reason": geo["reason"].fillna("").to_numpy(),
        "mv_rot_err_deg": [mv.get((a, b), np.nan) for a, b in zip(geo["cam_a"], geo["cam_b"])]})
    return DemoFigures(pairs, _all_cameras(compare_to_calibration(pooled_run)),
                       _all_cameras(compare_to_calibration(multiview_run)))


def _all_cameras(table: pd.DataFrame) -> pd.Series:
    return table[table["camera"] == "all"].iloc[0]


def _status(r: Any) -> str:
    if not r.ok:
        return "refused: " + r.reason.split(";")[0].split(" (")[0]
    return "labelled (chosen)" if r.chosen else "usable, not chosen"


def figures_markdown(f: DemoFigures) -> str:
    """The real-demo tables as markdown (what `make real-demo` writes to ``REAL_DEMO_TABLE``)."""
    lines = ["Camera pairs against the recording's calibration (degrees):", "",
             "| pair | angle | pooled rotation error | bootstrap s.e. | loop | pooled pair "
             "| multiview rotation error |", "|---|---|---|---|---|---|---|"]
    for r in f.pairs.itertuples():
        lines.append(f"| {r.pair} | {r.rot_deg:.1f} | {r.rot_err_deg:.2f} | "
                     f"{r.rotation_se_deg:.2f} | {r.loop_err_deg:.2f} | {_status(r)} | "
                     f"{r.mv_rot_err_deg:.2f} |")
    lines += ["", "Labels against the calibrated triangulation of the same detections through "
              "the same views (mm):", "",
              "| geometry | N-MPJPE | PA-MPJPE | joints | valid (self / calibrated) |",
              "|---|---|---|---|---|"]
    for name, row in (("pooled pairs", f.pooled), ("multiview", f.multiview)):
        lines.append(f"| {name} | {row.n_mpjpe_mm:.1f} | {row.pa_mpjpe_mm:.1f} | "
                     f"{int(row.joints)} | {row.valid_self:.0%} / {row.valid_cal:.0%} |")
    return "\n".join(lines) + "\n"


# --- left/right swaps and a settings sweep on a run's detections --------------------------------

def _subject_views(cfg: Any, m: Any, subject: str, conf_threshold: float
                   ) -> tuple[list[Any], list[Any], dict, dict, dict]:
    """(sequences, their detections, x_norm, mask, focal) of one subject, frames concatenated
    over sequences in order."""
    seqs = [s for s in selected_sequences(cfg) if s.subject == subject]
    dets = [load_sequence_detections(cfg, s) for s in seqs]
    views = concat_views([d.views(m, subject) for d in dets])
    return seqs, dets, views.x, views.masks(conf_threshold), views.focal


def _pooled_fits(x: dict, mask: dict, threshold_px: float, focal: dict, seed: int = 0) -> list:
    """The job's pooled, loop-checked pair fits (``fit_pooled_pairs``) of these views."""
    views = Views(x, {c: mask[c].astype(np.float64) for c in x}, focal)
    return fit_pooled_pairs(views, GeometrySettings(conf_threshold=0.5,
                                                    ransac_threshold_px=threshold_px, seed=seed))


def _flip_views(x: dict, mask: dict, flipped: dict) -> tuple[dict, dict]:
    xs, ms = {}, {}
    for c in x:
        xs[c], m2 = apply_flips(x[c], mask[c].astype(np.float64), flipped[c])
        ms[c] = m2 > 0.5
    return xs, ms


def fix_flips(run_dir: str | Path, out: str | Path, threshold_px: float = 16.0,
              conf_threshold: float | None = None) -> pd.DataFrame:
    """Write a run's detections with left/right swaps undone (``pipeline.geometry.flips``) as one
    Parquet file in the detection schema, to replay with ``--detector file --detections OUT``.

    Per subject: pooled, loop-checked pair fits of the detections as they are (RANSAC threshold
    ``threshold_px``; confidence threshold of the run unless given) decide, per frame, camera and
    limb group, which views are swapped. Returns one row per subject, camera and group with the
    number of frames swapped. Nothing is guessed: joints keep their values and confidences,
    only exchanged between left and right.
    """
    cfg, m = load_run(run_dir)
    conf_threshold = cfg.conf_threshold if conf_threshold is None else conf_threshold
    folder = RunFolder(run_dir).detections_dir
    files = [p for p in RunFolder(run_dir).all_detection_files() if not p.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"no detection files under {folder}")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    keys = pd.DataFrame({k: table.column(k).to_pylist()
                         for k in ("subject", "action", "subaction", "camera", "frame")})
    joints = S.column_array(table, "joints_2d").astype(np.float64)
    conf = S.column_array(table, "joints_2d_conf").astype(np.float64)
    group_names = list(flip_groups(m.joint_set))
    report = []
    for subject in sorted({s.subject for s in selected_sequences(cfg)}):
        seqs, dets, x, mask, focal = _subject_views(cfg, m, subject, conf_threshold)
        flipped = detect_flips(x, mask, _pooled_fits(x, mask, threshold_px, focal, cfg.seed),
                               focal, m.joint_set)
        start = 0
        for seq, det in zip(seqs, dets):
            F = len(det.frames)
            for cam in seq.cameras:
                sel = np.flatnonzero((keys["subject"] == seq.subject) & (keys["action"] ==
                                     seq.action) & (keys["subaction"] == str(seq.subaction))
                                     & (keys["camera"] == cam))
                pos = np.searchsorted(det.frames, keys["frame"].to_numpy()[sel])
                fl = flipped[cam][start: start + F][pos]
                joints[sel], conf[sel] = apply_flips(joints[sel], conf[sel], fl, m.joint_set)
            start += F
        for cam in flipped:
            for g, name in enumerate(group_names):
                report.append({"subject": subject, "camera": cam, "group": name,
                               "frames_swapped": int(flipped[cam][:, g].sum()),
                               "frames": int(len(flipped[cam]))})
    cols: dict[str, Any] = {n: table.column(n).to_pylist() for n in
                            ("dataset", "subject", "action", "subaction", "camera", "image_path",
                             "status")}
    cols.update(frame=table.column("frame").to_numpy(), bbox=S.column_array(table, "bbox"),
                joints_2d=joints, joints_2d_conf=conf)
    S.write_table_atomic(S.to_table(cols, S.DETECTION_SCHEMA), Path(out))
    return pd.DataFrame(report)


def geometry_sweep(run_dir: str | Path, thresholds_px: tuple[float, ...] = (1, 4, 8, 16),
                   conf_thresholds: tuple[float, ...] = (0.3, 0.7),
                   fix_swaps: tuple[bool, ...] = (False, True), bundle_adjust: bool = True,
                   subject: str | None = None) -> pd.DataFrame:
    """Self-calibration accuracy of a run's detections under several settings, against the
    manifest's extrinsics: for each (left/right fix, RANSAC threshold, confidence threshold),
    the pooled loop-checked pair fits and, with ``bundle_adjust``, the multiview cameras
    (registration + robust bundle adjustment, ``pipeline.geometry.multiview``). Rows: one per setting,
    mode and camera pair (rot_err_deg, t_err_deg), plus seconds for the fit."""
    cfg, m = load_run(run_dir)
    subject = subject or (cfg.subjects[0] if cfg.subjects else m.sequences[0].subject)
    rows = []
    for ct in conf_thresholds:
        _, _, x0, mask0, focal = _subject_views(cfg, m, subject, ct)
        ref = reference_pairs(m, subject, list(x0))
        if not ref:
            raise ValueError(f"{m.path}: subject {subject} has no extrinsics to compare with")
        for swap in fix_swaps:
            for thr in thresholds_px:
                t0 = time.perf_counter()
                x, mask = x0, mask0
                fits = _pooled_fits(x, mask, thr, focal, cfg.seed)
                if swap:
                    x, mask = _flip_views(x0, mask0, detect_flips(x0, mask0, fits, focal,
                                                                  m.joint_set))
                    fits = _pooled_fits(x, mask, thr, focal, cfg.seed)
                t_pooled = time.perf_counter() - t0
                setting = {"fix_swaps": swap, "threshold_px": thr, "conf_threshold": ct}
                rows.append(pair_errors_from_fits(fits, ref).assign(
                    mode="pooled", seconds=t_pooled, **setting))
                if bundle_adjust:
                    t0 = time.perf_counter()
                    rig, _ = CameraRig.register(x, mask, thr, focal, seed=cfg.seed, pairs=fits)
                    rig, _, _ = rig.bundle_adjust({c: x[c] for c in rig.cameras}, mask,
                                                  reference=rig.reference, gauge=rig.gauge,
                                                  seed=cfg.seed)
                    rows.append(pair_errors_from_cameras(rig.poses, ref).assign(
                        mode="multiview", seconds=t_pooled + time.perf_counter() - t0,
                        **setting))
    return pd.concat(rows, ignore_index=True)


def sweep_summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """Median and max over camera pairs of each setting's errors (degrees)."""
    keys = ["mode", "fix_swaps", "threshold_px", "conf_threshold"]
    g = sweep.groupby(keys, sort=True)
    return pd.DataFrame({
        "rot_med": g["rot_err_deg"].median(), "rot_max": g["rot_err_deg"].max(),
        "t_med": g["t_err_deg"].median(), "t_max": g["t_err_deg"].max(),
        "seconds": g["seconds"].first()}).reset_index()


# --- command line -------------------------------------------------------------------------------

def _print(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.float_format", "{:.2f}".format):
        click.echo(df.to_string(index=False))


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--out", type=click.Path(path_type=Path), default=Path("outputs/data/pose2sim_demo"),
              show_default=True, help="Folder for the videos, calibration and manifest.yaml.")
@click.option("--wheel", type=click.Path(exists=True, path_type=Path), default=None,
              help="A pose2sim wheel already on disk (skips the download).")
@click.option("--demo", type=click.Choice(sorted(DEMOS)), default="single", show_default=True,
              help="Demo_SinglePerson, or Demo_MultiPerson (two people and bystanders).")
@click.pass_context
def main(ctx: click.Context, out: Path, wheel: Path | None, demo: str) -> None:
    """Fetch Pose2Sim's 4-camera demo and write its manifest (no subcommand), or check a run
    on real footage against the shipped calibration (subcommands).

    \b
    fix-flips  undo left/right swaps of a run's detections (replay with --detector file)
    compare    self-calibrated run vs the shipped calibration and a calibrated run
    sweep      RANSAC / confidence / left-right settings vs the shipped calibration
    people     several people: association vs the calibration's, camera errors, an overlay
    """
    if ctx.invoked_subcommand is not None:
        return
    path = prepare_pose2sim_demo(out, wheel, DEMOS[demo])
    m = load_manifest(path)
    click.echo(f"{path}: {len(m.camera_ids)} cameras {list(m.camera_ids)}, "
               f"{m.sequences[0].num_frames} frames at {m.frames.fps:g} fps")


@main.command("fix-flips")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Parquet file of corrected detections.")
@click.option("--ransac-threshold-px", default=16.0, show_default=True)
def fix_flips_cmd(run_dir: Path, out_file: Path, ransac_threshold_px: float) -> None:
    """Undo left/right swaps of RUN_DIR's detections; write them to --out."""
    report = fix_flips(run_dir, out_file, ransac_threshold_px)
    _print(report)
    click.echo(f"{out_file}: replay with --detector file --detections {out_file}")


@main.command("compare")
@click.argument("run_self", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_calibrated", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
def compare_cmd(run_self: Path, run_calibrated: Path | None) -> None:
    """Camera-pair errors of RUN_SELF and its labels' agreement with RUN_CALIBRATED (a
    --geometry calibrated run on the same detections), or, without it, with the calibrated
    triangulation of RUN_SELF's detections through the same views (its chosen pairs, or all
    views for an all-view mode)."""
    click.echo(f"camera pairs of {run_self} vs the manifest's extrinsics (degrees):")
    _print(camera_pair_errors(run_self))
    ref = run_calibrated or "the calibrated triangulation of its detections through the same views"
    click.echo(f"\nlabels of {run_self} vs {ref} (N-/PA-MPJPE mm; reprojection px, the max "
               f"over the views each joint was triangulated from):")
    _print(compare_to_calibration(run_self, run_calibrated))


@main.command("figures")
@click.argument("pooled_run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("multiview_run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=REAL_DEMO_TABLE,
              show_default=True, help="Markdown file of the tables (the docs include it).")
def figures_cmd(pooled_run: Path, multiview_run: Path, out: Path) -> None:
    """Write the real-demo tables of POOLED_RUN and MULTIVIEW_RUN (same detections) to --out."""
    md = figures_markdown(demo_figures(pooled_run, multiview_run))
    write_docs_table(out, "make real-demo", md)
    click.echo(md + f"\nwritten to {out}")


@main.command("sweep")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--thresholds", default="1,4,8,16", show_default=True,
              help="RANSAC thresholds (px).")
@click.option("--conf", "conf_thresholds", default="0.3,0.7", show_default=True)
@click.option("--pairs/--summary", "show_pairs", default=False, show_default=True,
              help="Print every pair's errors, not only the median and max per setting.")
def sweep_cmd(run_dir: Path, thresholds: str, conf_thresholds: str, show_pairs: bool) -> None:
    """Self-calibration of RUN_DIR's detections under several settings vs the extrinsics."""
    df = geometry_sweep(run_dir, tuple(float(v) for v in thresholds.split(",")),
                        tuple(float(v) for v in conf_thresholds.split(",")))
    _print(df if show_pairs else sweep_summary(df))


if __name__ == "__main__":
    main()

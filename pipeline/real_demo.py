"""Real multi-view data: calibration readers and the Pose2Sim demo (`make data-real`).

Calibration formats read into ``pipeline.cameras.Camera`` (OpenCV conventions: X_cam = R @ X_world
+ t in mm, pixels with y down, distortion [k1, k2, p1, p2, k3]):

* ``read_3dhp_calibration``: MPI-INF-3DHP's ``camera.calibration`` ("Skeletool Camera Calibration
  File V1.0"): per camera a block ``name``, ``sensor``, ``size W H``, ``animated 0``,
  ``intrinsic`` (4x4 row-major, pixels), ``extrinsic`` (4x4 row-major world->camera, mm) and
  ``radial`` (distortion; 0 in the dataset).
* ``read_qualisys_calibration``: Qualisys ``.qca.txt`` XML (Pose2Sim's demo). Intrinsics are in
  1/64 pixel units of the sensor, shifted by the video window ``fov_video``. ``transform``
  holds the camera's position (x, y, z, mm) and orientation in the world: (r11, r12, r13) is
  the camera's x axis in world coordinates, (r21, r22, r23) its y axis, (r31, r32, r33) its z
  axis, and the camera looks down -z with y up; OpenCV's camera is that one turned by 180
  degrees about x. Distortion is read as Pose2Sim reads it (divided by 64; on the demo it is
  then negligible, and reading it undivided changes reprojection errors by < 0.1 px).

``calibration_to_manifest`` turns cameras into a manifest's ``cameras`` and ``extrinsics``.

``prepare_pose2sim_demo`` gets Pose2Sim's ``Demo_SinglePerson`` (4 synchronised real cameras,
one person, 100 frames at 60 fps; BSD-3-Clause) from the pose2sim wheel on PyPI with
``pip download --no-deps``, extracts only its videos and calibration, and writes a manifest::

    python -m pipeline.real_demo --out outputs/data/pose2sim_demo

Stage 1 on real footage, checked against the shipped calibration (subcommands)::

    python -m pipeline.real_demo fix-flips RUN --out DETECTIONS.parquet   # undo left/right swaps
    python -m pipeline.real_demo compare RUN [CALIBRATED_RUN]            # cameras and labels
    python -m pipeline.real_demo sweep RUN                               # RANSAC/conf settings

``camera_pair_errors`` (rotation and translation-direction error of every self-calibrated
pair), ``compare_to_calibration`` (N-MPJPE / PA-MPJPE of the self-calibrated labels against
the calibrated triangulation of the same detections), ``fix_flips`` and ``geometry_sweep``
are the functions behind them.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np
import pandas as pd
import yaml

from pipeline.cameras import (Camera, angle_between_deg, relative_pose, rotation_angle_deg,
                              rotation_error_deg)

_FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # a 180-degree turn about the camera's x axis


class CalibrationError(ValueError):
    """A calibration file is malformed; the message names the file, line or camera."""


# --- MPI-INF-3DHP -------------------------------------------------------------------------------

_3DHP_HEADER = "Skeletool Camera Calibration File V1.0"
_3DHP_KEYS = {"sensor": 2, "size": 2, "animated": 1, "intrinsic": 16, "extrinsic": 16}


def read_3dhp_calibration(path: str | Path) -> dict[str, Camera]:
    """Cameras of an MPI-INF-3DHP ``camera.calibration`` file, by name, in file order.

    ``radial`` values are read as [k1, k2, k3] radial terms (the dataset writes a single 0).
    Raises CalibrationError naming the file and line on anything unexpected, including animated
    (per-frame) cameras, which the dataset does not use.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != _3DHP_HEADER:
        raise CalibrationError(f"{path}: line 1: expected {_3DHP_HEADER!r}")
    blocks: list[tuple[str, int, dict[str, list[float]]]] = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        key, vals = parts[0], parts[1:]
        if key == "name":
            if len(vals) != 1:
                raise CalibrationError(f"{path}: line {n}: 'name' takes one value")
            blocks.append((vals[0], n, {}))
            continue
        if not blocks:
            raise CalibrationError(f"{path}: line {n}: {key!r} before the first 'name'")
        try:
            numbers = [float(v) for v in vals]
        except ValueError:
            raise CalibrationError(f"{path}: line {n}: non-numeric values for {key!r}") from None
        if key in _3DHP_KEYS and len(numbers) != _3DHP_KEYS[key]:
            raise CalibrationError(f"{path}: line {n}: {key!r} needs {_3DHP_KEYS[key]} values, "
                                   f"got {len(numbers)}")
        if key not in _3DHP_KEYS and key != "radial":
            raise CalibrationError(f"{path}: line {n}: unknown key {key!r}")
        blocks[-1][2][key] = numbers
    if not blocks:
        raise CalibrationError(f"{path}: no cameras")
    cams: dict[str, Camera] = {}
    for name, n, b in blocks:
        cams[name] = _3dhp_camera(path, name, n, b)
    return cams


def _3dhp_camera(path: Path, name: str, line: int, b: dict[str, list[float]]) -> Camera:
    where = f"{path}: camera {name!r} (line {line})"
    missing = [k for k in ("size", "intrinsic", "extrinsic") if k not in b]
    if missing:
        raise CalibrationError(f"{where}: missing {missing}")
    if b.get("animated", [0.0])[0] != 0:
        raise CalibrationError(f"{where}: animated (per-frame) cameras are not supported")
    K4 = np.asarray(b["intrinsic"]).reshape(4, 4)
    E = np.asarray(b["extrinsic"]).reshape(4, 4)
    if not np.allclose(E[3], [0, 0, 0, 1]) or not np.allclose(K4[3], [0, 0, 0, 1]):
        raise CalibrationError(f"{where}: 4x4 matrices must end with the row 0 0 0 1")
    R = E[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) <= 0:
        raise CalibrationError(f"{where}: extrinsic rotation is not a rotation matrix")
    radial = (b.get("radial") or [0.0]) + [0.0, 0.0]
    dist = np.array([radial[0], radial[1], 0.0, 0.0, radial[2] if len(radial) > 4 else 0.0])
    w, h = (int(round(v)) for v in b["size"])
    return Camera(name, K4[:3, :3].copy(), dist, w, h, R.copy(), E[:3, 3].copy())


# --- Qualisys (.qca.txt) -----------------------------------------------------------------------

def read_qualisys_calibration(path: str | Path, binning: int = 1) -> dict[str, Camera]:
    """Cameras of a Qualisys ``.qca.txt`` file, by serial, in OpenCV conventions (see the
    module docstring). ``binning``: 2 when the videos were recorded with 2x2 pixel binning."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise CalibrationError(f"{path}: not valid XML ({e})") from None
    cams: dict[str, Camera] = {}
    for i, cam in enumerate(root.findall("cameras/camera")):
        name = cam.get("serial") or f"camera{i}"
        where = f"{path}: camera {name!r}"
        tags = {t: cam.find(t) for t in ("fov_video", "intrinsic", "transform")}
        missing = [t for t, e in tags.items() if e is None]
        if missing:
            raise CalibrationError(f"{where}: missing {missing}")
        fov, intr, tr = (_floats(tags[t], f"{where}: <{t}>", _QCA_ATTRS[t])
                         for t in ("fov_video", "intrinsic", "transform"))
        w = (fov["right"] - fov["left"] + 1) / binning
        h = (fov["bottom"] - fov["top"] + 1) / binning
        s = 64.0 * binning
        K = np.array([[intr["focalLengthU"] / s, 0.0, intr["centerPointU"] / s - fov["left"]],
                      [0.0, intr["focalLengthV"] / s, intr["centerPointV"] / s - fov["top"]],
                      [0.0, 0.0, 1.0]])
        dist = np.array([intr["radialDistortion1"], intr["radialDistortion2"],
                         intr["tangentalDistortion1"], intr["tangentalDistortion2"],
                         intr.get("radialDistortion3", 0.0)]) / s
        M = np.array([[tr[f"r{r}{c}"] for c in (1, 2, 3)] for r in (1, 2, 3)])
        if not np.allclose(M @ M.T, np.eye(3), atol=1e-5) or np.linalg.det(M) <= 0:
            raise CalibrationError(f"{where}: transform is not a rotation matrix")
        centre = np.array([tr["x"], tr["y"], tr["z"]])
        R = _FLIP_YZ @ M          # rows of M: the camera's axes in world coordinates
        t = -R @ centre
        cams[name] = Camera(name, K, dist, int(round(w)), int(round(h)), R, t)
    if not cams:
        raise CalibrationError(f"{path}: no cameras/camera elements")
    return cams


_QCA_ATTRS = {
    "fov_video": ("left", "top", "right", "bottom"),
    "intrinsic": ("focalLengthU", "focalLengthV", "centerPointU", "centerPointV",
                  "radialDistortion1", "radialDistortion2", "tangentalDistortion1",
                  "tangentalDistortion2"),
    "transform": ("x", "y", "z") + tuple(f"r{r}{c}" for r in (1, 2, 3) for c in (1, 2, 3)),
}


def _floats(e: ET.Element, where: str, required: tuple[str, ...]) -> dict[str, float]:
    """The element's numeric attributes; CalibrationError if a required one is absent or bad."""
    out = {}
    for k, v in e.attrib.items():
        try:
            out[k] = float(v)
        except ValueError:
            if k in required:
                raise CalibrationError(f"{where}: attribute {k}={v!r} is not a number") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise CalibrationError(f"{where}: missing attributes {missing}")
    return out


# --- manifests ----------------------------------------------------------------------------------

def calibration_to_manifest(cameras: dict[str, Camera], subjects: list[str]
                            ) -> dict[str, Any]:
    """``cameras`` and ``extrinsics`` entries of a manifest (plain YAML-ready values); the same
    extrinsics are written for every subject of ``subjects``."""
    cams = {}
    extr = {}
    for name, c in cameras.items():
        cams[name] = {"fx": float(c.K[0, 0]), "fy": float(c.K[1, 1]), "cx": float(c.K[0, 2]),
                      "cy": float(c.K[1, 2]), "width": int(c.width), "height": int(c.height),
                      "distortion": [float(v) for v in np.resize(c.dist, 5)]}
        if c.has_extrinsics:
            extr[name] = {"R": [[float(v) for v in row] for row in c.R],
                          "t": [float(v) for v in c.t]}
    out: dict[str, Any] = {"cameras": cams}
    if extr:
        out["extrinsics"] = {s: extr for s in subjects}
    return out


# --- Pose2Sim demo ------------------------------------------------------------------------------

POSE2SIM_VERSION = "0.10.49"
_DEMO = "Pose2Sim/Demo_SinglePerson/"


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


def extract_demo(wheel: Path, out: Path) -> tuple[list[Path], Path]:
    """Extract the demo's videos and its calibration (nothing else) from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith(_DEMO)]
        videos = sorted(n for n in names if n.startswith(_DEMO + "videos/") and n.endswith(".mp4"))
        calib = [n for n in names if n.startswith(_DEMO + "calibration/")
                 and n.endswith(".qca.txt")]
        if not videos or len(calib) != 1:
            raise RuntimeError(f"{wheel}: expected {_DEMO}videos/*.mp4 and one "
                               f"{_DEMO}calibration/*.qca.txt, found {len(videos)} videos and "
                               f"{len(calib)} calibration files")
        written = []
        for n in videos + calib:
            target = out / n[len(_DEMO):]
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


def demo_manifest(cameras: dict[str, Camera], videos: dict[str, Path]) -> dict[str, Any]:
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
    return {
        "description": "Pose2Sim Demo_SinglePerson (pose2sim " + POSE2SIM_VERSION + ", "
                       "BSD-3-Clause): 4 synchronised cameras, one person; calibration "
                       "converted from its Qualisys Calib.qca.txt (pipeline/real_demo.py). "
                       "No ground truth.",
        "dataset": "pose2sim_demo",
        "root": ".",
        "joint_set": "h36m17",
        **calib,
        "frames": {"kind": "video", "pattern": "videos/{camera}.mp4", "fps": fps.pop(), "step": 1},
        "sequences": [{"subject": "P1", "action": "SinglePerson", "subaction": 1,
                       "num_frames": min(v[2] for v in sizes.values())}],
        "splits": {"train": ["P1"]},
    }


def prepare_pose2sim_demo(out: Path, wheel: Path | None = None) -> Path:
    """Download (unless ``wheel`` is given) and extract the demo, write ``out/manifest.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or download_pose2sim_wheel(Path(tmp))
        video_paths, calib_path = extract_demo(wheel, out)
    cameras = read_qualisys_calibration(calib_path)
    videos = {p.stem: p for p in video_paths}
    unknown = sorted(set(videos) - set(cameras))
    if unknown:
        raise RuntimeError(f"videos {unknown} have no camera in {calib_path}")
    manifest = out / "manifest.yaml"
    tmp_manifest = manifest.with_name(".manifest.yaml.tmp")
    tmp_manifest.write_text("# Written by pipeline/real_demo.py. Schema: pipeline/manifest.py.\n"
                            + yaml.safe_dump(demo_manifest(cameras, videos), sort_keys=False,
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


def _reference_pairs(m: Any, subject: str, cams: list[str]) -> dict[tuple[str, str], tuple]:
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
    manifest's extrinsics: the pooled (loop-checked) pair fits of ``geometry.parquet``, and for
    multiview runs also the bundle-adjusted cameras of ``cameras.json``. Columns: subject,
    source ("pooled pair", "multiview cameras", "extrinsics"), cam_a, cam_b, rot_deg (reference
    angle between the two cameras), rot_err_deg, t_err_deg, chosen (pair labelled by the run)."""
    from pipeline.geometry import PairGeometry
    from pipeline.overlay import geometry_rows, load_run, multiview_cameras

    cfg, m = load_run(run_dir)
    geo = geometry_rows(run_dir)
    out = []
    for subject, g in geo.groupby("subject", sort=True):
        cams = sorted(set(g["cam_a"]) | set(g["cam_b"]))
        ref = _reference_pairs(m, subject, cams)
        if not ref:
            raise ValueError(f"{m.path}: subject {subject} has no extrinsics to compare with")
        fits = [PairGeometry(r.cam_a, r.cam_b, r.R, r.t, np.zeros((3, 3)), 0, 0, 0.0, bool(r.ok))
                for r in g.itertuples() if np.isfinite(r.R).all()]
        pe = pair_errors_from_fits(fits, ref)
        chosen = {(r.cam_a, r.cam_b) for r in g.itertuples() if bool(r.chosen)}
        pe["chosen"] = [(a, b) in chosen for a, b in zip(pe["cam_a"], pe["cam_b"])]
        # Every self-calibrated mode fits (and loop-checks) the pooled pairs first.
        source = "extrinsics" if cfg.geometry == "calibrated" else "pooled pair"
        out.append(pe.assign(subject=subject, source=source))
        if cfg.geometry == "multiview":
            mv = pair_errors_from_cameras(multiview_cameras(run_dir, subject), ref)
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
    from eval.metrics import mpjpe, root_relative

    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    valid = np.asarray(valid, bool) & np.isfinite(pred).all(-1) & np.isfinite(ref).all(-1)
    keep = valid[:, root] & (valid.sum(-1) >= MIN_AGREEMENT_JOINTS)
    out = {"poses": int(keep.sum()), "joints": int(valid[keep].sum())}
    if not keep.any():
        return {**out, "n_mpjpe": np.nan, "pa_mpjpe": np.nan, "n_mpjpe_median": np.nan,
                "pa_mpjpe_median": np.nan}
    p = root_relative(np.where(valid[keep][..., None], pred[keep], 0.0), root)
    r = root_relative(np.where(valid[keep][..., None], ref[keep], 0.0), root)
    for name, alignment in (("n_mpjpe", "scale"), ("pa_mpjpe", "procrustes")):
        e = mpjpe(p, r, valid[keep], alignment=alignment)
        out[name], out[name + "_median"] = float(np.mean(e)), float(np.median(e))
    return out


def read_labels(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A run's shard rows: a frame of the key columns, partner_camera and row (index into the
    arrays), and the arrays joints_3d (N, J, 3), valid (N, J), reproj_error_px (N, J),
    joints_2d_conf (N, J)."""
    from pipeline import shards as S

    t = S.read_shards(run_dir)
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
    (``pipeline.multiview.triangulate_multiview``) from the same confident joints, only the
    cameras differ. A joint is valid when confident in the view, seen by two or more views and
    in front of the camera; its reprojection error is reported but drops nothing: on real
    footage it measures how far the detector is from the calibration (about 18 px, the max over
    four views, for MediaPipe on the Pose2Sim demo), and a threshold would compare the
    self-calibrated labels on the joints easiest for the calibration only.
    """
    from pipeline.cameras import pixels_to_normalized
    from pipeline.job import load_sequence_detections, selected_sequences
    from pipeline.multiview import reprojection_errors_px, triangulate_multiview
    from pipeline.overlay import load_run

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
        X = triangulate_multiview(x, poses, mask)                       # world, mm
        err = reprojection_errors_px(X, x, poses, mask, {c: cal[c].K[0, 0] for c in cams})
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


def compare_to_calibration(run_self: str | Path, run_calibrated: str | Path | None = None
                           ) -> pd.DataFrame:
    """Self-calibrated labels (a pooled or multiview run) against the calibrated triangulation of
    the same detections, per camera (see :func:`agreement_table`).

    ``run_calibrated``: a run with geometry calibrated on the same detections (its shards are
    joined with ``run_self``'s); None: the all-view calibrated triangulation of ``run_self``'s
    own detections (:func:`calibrated_all_view_labels`), the fair reference of a multiview run.
    """
    from pipeline.overlay import load_run

    cfg_s, _ = load_run(run_self)
    if run_calibrated is None:
        kc, ac = calibrated_all_view_labels(run_self)
    else:
        cfg_c, _ = load_run(run_calibrated)
        if cfg_c.geometry != "calibrated":
            raise ValueError(f"{run_calibrated}: geometry is {cfg_c.geometry!r}, expected "
                             f"calibrated")
        kc, ac = read_labels(run_calibrated)
    ks, as_ = read_labels(run_self)
    return agreement_table(ks, as_, kc, ac, conf_threshold=cfg_s.conf_threshold)


# --- left/right swaps and a settings sweep on a run's detections --------------------------------

def _subject_views(cfg: Any, m: Any, subject: str, conf_threshold: float
                   ) -> tuple[list[Any], list[Any], dict, dict, dict]:
    """(sequences, their detections, x_norm, mask, focal) of one subject, frames concatenated
    over sequences in order."""
    from pipeline.cameras import pixels_to_normalized
    from pipeline.job import load_sequence_detections, selected_sequences

    seqs = [s for s in selected_sequences(cfg) if s.subject == subject]
    dets = [load_sequence_detections(cfg, s) for s in seqs]
    cams = list(seqs[0].cameras)
    cal = {c: m.camera(c) for c in cams}
    x = {c: np.concatenate([pixels_to_normalized(d.joints[c], cal[c].K, cal[c].dist)
                            for d in dets]) for c in cams}
    mask = {c: np.concatenate([(d.conf[c] >= conf_threshold) & np.isfinite(d.joints[c]).all(-1)
                               for d in dets]) for c in cams}
    focal = {c: float(cal[c].K[0, 0]) for c in cams}
    return seqs, dets, x, mask, focal


def _pooled_fits(x: dict, mask: dict, threshold_px: float, focal: dict, seed: int = 0) -> list:
    from pipeline import geometry as G

    cams = list(x)
    fits = [G.fit_pair_pooled(x[a], x[b], mask[a] & mask[b], threshold_px,
                              (focal[a] + focal[b]) / 2, seed=seed, cam_a=a, cam_b=b)
            for i, a in enumerate(cams) for b in cams[i + 1:]]
    return G.resolve_loops(fits, x, mask) if len(cams) > 2 else fits


def _flip_views(x: dict, mask: dict, flipped: dict) -> tuple[dict, dict]:
    from pipeline.flips import apply_flips

    xs, ms = {}, {}
    for c in x:
        xs[c], m2 = apply_flips(x[c], mask[c].astype(np.float64), flipped[c])
        ms[c] = m2 > 0.5
    return xs, ms


def fix_flips(run_dir: str | Path, out: str | Path, threshold_px: float = 16.0,
              conf_threshold: float | None = None) -> pd.DataFrame:
    """Write a run's detections with left/right swaps undone (``pipeline.flips``) as one
    Parquet file in the detection schema, to replay with ``--detector file --detections OUT``.

    Per subject: pooled, loop-checked pair fits of the detections as they are (RANSAC threshold
    ``threshold_px``; confidence threshold of the run unless given) decide, per frame, camera and
    limb group, which views are swapped. Returns one row per subject, camera and group with the
    number of frames swapped. Nothing is guessed: joints keep their values and confidences,
    only exchanged between left and right.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import shards as S
    from pipeline.flips import apply_flips, detect_flips, flip_groups
    from pipeline.job import selected_sequences
    from pipeline.overlay import load_run

    cfg, m = load_run(run_dir)
    conf_threshold = cfg.conf_threshold if conf_threshold is None else conf_threshold
    folder = Path(run_dir) / "detections"
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))
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
    (registration + robust bundle adjustment, ``pipeline.multiview``). Rows: one per setting,
    mode and camera pair (rot_err_deg, t_err_deg), plus seconds for the fit."""
    import time

    from pipeline import multiview as MV
    from pipeline.flips import detect_flips
    from pipeline.overlay import load_run

    cfg, m = load_run(run_dir)
    subject = subject or (cfg.subjects[0] if cfg.subjects else m.sequences[0].subject)
    rows = []
    for ct in conf_thresholds:
        _, _, x0, mask0, focal = _subject_views(cfg, m, subject, ct)
        ref = _reference_pairs(m, subject, list(x0))
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
                    reg = MV.register_cameras_detailed(x, mask, thr, focal, seed=cfg.seed,
                                                       pairs=fits)
                    cams, _, _ = MV.bundle_adjust(x, reg.cameras, mask, focal,
                                                  reference=list(x)[0], seed=cfg.seed)
                    rows.append(pair_errors_from_cameras(cams, ref).assign(
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
@click.pass_context
def main(ctx: click.Context, out: Path, wheel: Path | None) -> None:
    """Fetch Pose2Sim's 4-camera demo and write its manifest (no subcommand), or check a run
    on real footage against the shipped calibration (subcommands).

    \b
    fix-flips  undo left/right swaps of a run's detections (replay with --detector file)
    compare    self-calibrated run vs the shipped calibration and a calibrated run
    sweep      RANSAC / confidence / left-right settings vs the shipped calibration
    """
    if ctx.invoked_subcommand is not None:
        return
    from pipeline.manifest import load_manifest

    path = prepare_pose2sim_demo(out, wheel)
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
    --geometry calibrated run on the same detections), or, without it, with the all-view
    calibrated triangulation of RUN_SELF's detections."""
    click.echo(f"camera pairs of {run_self} vs the manifest's extrinsics (degrees):")
    _print(camera_pair_errors(run_self))
    ref = run_calibrated or "the all-view calibrated triangulation of its detections"
    click.echo(f"\nlabels of {run_self} vs {ref} (N-/PA-MPJPE mm; reprojection px, the max "
               f"over the views each joint was triangulated from):")
    _print(compare_to_calibration(run_self, run_calibrated))


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

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
import yaml

from pipeline.cameras import Camera

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


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("outputs/data/pose2sim_demo"),
              show_default=True, help="Folder for the videos, calibration and manifest.yaml.")
@click.option("--wheel", type=click.Path(exists=True, path_type=Path), default=None,
              help="A pose2sim wheel already on disk (skips the download).")
def main(out: Path, wheel: Path | None) -> None:
    """Fetch Pose2Sim's 4-camera demo and write its manifest."""
    from pipeline.manifest import load_manifest

    path = prepare_pose2sim_demo(out, wheel)
    m = load_manifest(path)
    click.echo(f"{path}: {len(m.camera_ids)} cameras {list(m.camera_ids)}, "
               f"{m.sequences[0].num_frames} frames at {m.frames.fps:g} fps")


if __name__ == "__main__":
    main()

"""Calibration files read into ``pipeline.cameras.Camera`` (OpenCV conventions: X_cam = R @ X_world
+ t in mm, pixels with y down, distortion [k1, k2, p1, p2, k3]), and cameras written into a
manifest.

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
* ``calibration_to_manifest`` turns cameras into a manifest's ``cameras`` and ``extrinsics``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

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

"""Calibration files read into ``pipeline.geometry.cameras.Camera`` (OpenCV conventions: X_cam = R @ X_world
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
* ``read_pose2sim_calibration`` / ``read_anipose_calibration``: Pose2Sim ``Calib.toml`` and
  anipose ``calibration.toml`` (TOML, read with ``tomllib``); ``read_opencv_calibration``:
  OpenCV FileStorage YAML/XML. Fisheye cameras are refused (the project's model is OpenCV's
  pinhole with [k1, k2, p1, p2, k3]); translations are multiplied by ``unit_to_mm`` (defaults:
  1000 for Pose2Sim's metres, 1 for anipose and OpenCV).
* ``pose2sim_toml`` / ``anipose_toml`` / ``opencv_storage`` write them (``write_calibration``
  by format name, :data:`CALIBRATION_FORMATS`); ``toml_dumps`` is the small TOML writer.
* ``calibration_to_manifest`` turns cameras into a manifest's ``cameras`` and ``extrinsics``.
"""
from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.geometry.cameras import Camera

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


# --- shared checks ------------------------------------------------------------------------------

def _matrix(where: str, key: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` as a finite float array of ``shape``; CalibrationError naming ``key`` else."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {key!r} is not numeric") from None
    if a.size != int(np.prod(shape)) or not np.isfinite(a).all():
        raise CalibrationError(f"{where}: {key!r} must hold {int(np.prod(shape))} finite numbers, "
                               f"got shape {a.shape}")
    return a.reshape(shape)


def _rotation(where: str, key: str, value: Any) -> np.ndarray:
    """A world->camera rotation from a Rodrigues vector (3 values) or a 3x3 matrix (9 values):
    the file's declared shape decides, never the numbers."""
    n = np.asarray(value, dtype=object).size
    if n not in (3, 9):
        raise CalibrationError(f"{where}: {key!r} must be a Rodrigues vector (3 values) or a "
                               f"3x3 matrix, got {n} values")
    if n == 3:
        return cv2.Rodrigues(_matrix(where, key, value, (3, 1)))[0]
    R = _matrix(where, key, value, (3, 3))
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) <= 0:
        raise CalibrationError(f"{where}: {key!r} is not a rotation matrix")
    return R


def _distortion(where: str, key: str, value: Any) -> np.ndarray:
    """[k1, k2, p1, p2(, k3)] as 5 values; longer OpenCV vectors (k4.. rational, thin prism,
    tilt) only when their extra terms are 0 (the project's model has none)."""
    try:
        d = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {key!r} is not numeric") from None
    if d.size < 4 or not np.isfinite(d).all():
        raise CalibrationError(f"{where}: {key!r} needs at least 4 finite values "
                               f"[k1, k2, p1, p2(, k3)], got {d.size}")
    if d.size > 5 and np.any(d[5:] != 0):
        raise CalibrationError(f"{where}: {key!r} has {d.size} terms with non-zero k4.. "
                               "(OpenCV rational/thin-prism model); only [k1, k2, p1, p2, k3] "
                               "is supported")
    return np.resize(np.concatenate([d[:5], np.zeros(5)]), 5)


def _camera(where: str, name: str, K: Any, dist: Any, size: Any, R: Any, t: Any,
            unit_to_mm: float, keys: tuple[str, ...]) -> Camera:
    """A Camera from a file's values; ``keys`` names them (K, dist, size, R, t) for errors."""
    Km = _matrix(where, keys[0], K, (3, 3))
    if Km[2, 0] != 0 or Km[2, 1] != 0 or Km[2, 2] != 1 or Km[1, 0] != 0:
        raise CalibrationError(f"{where}: {keys[0]!r} must be [[fx, s, cx], [0, fy, cy], "
                               "[0, 0, 1]]")
    wh = _matrix(where, keys[2], size, (2,))
    if np.any(wh <= 0) or np.any(wh != np.round(wh)):
        raise CalibrationError(f"{where}: {keys[2]!r} must be two positive whole numbers "
                               "[width, height]")
    tm = _matrix(where, keys[4], t, (3,)) * float(unit_to_mm)
    return Camera(name, Km, _distortion(where, keys[1], dist), int(wh[0]), int(wh[1]),
                  _rotation(where, keys[3], R), tm)


# --- TOML (Pose2Sim Calib.toml, anipose calibration.toml) ---------------------------------------
#
# Both are one table per camera, world->camera extrinsics in OpenCV conventions:
#   name = "cam_01"    size = [width, height]    matrix = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
#   distortions = [k1, k2, p1, p2(, k3)]   rotation = Rodrigues vector of R   translation = t
# Pose2Sim (Pose2Sim.common / calibration.toml_write): tables named after the camera, 4
# distortion terms, translation in metres, ``fisheye = false``, and a [metadata] table
# (adjusted, error). anipose (aniposelib CameraGroup.dump): tables [cam_0], [cam_1], ...,
# 5 distortion terms, translation in the unit of the calibration board (anipose's configs give
# the square size in mm), fisheye cameras marked ``fisheye = true`` (4 fisheye terms), and a
# [metadata] table of free content.

POSE2SIM_UNIT_TO_MM = 1000.0
"""Pose2Sim writes translations in metres."""
ANIPOSE_UNIT_TO_MM = 1.0
"""anipose writes the board's unit; its documented configs give the square size in mm."""
OPENCV_UNIT_TO_MM = 1.0
"""OpenCV files have no unit; ours are written in mm (pass 1000 for files in metres)."""

_NOT_CAMERAS = {"metadata", "capture_volume", "charuco", "checkerboard"}
_TOML_KEYS = ("matrix", "distortions", "size", "rotation", "translation")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def read_pose2sim_calibration(path: str | Path, unit_to_mm: float = POSE2SIM_UNIT_TO_MM
                              ) -> dict[str, Camera]:
    """Cameras of a Pose2Sim ``Calib.toml``, by their ``name``, in file order; translations
    times ``unit_to_mm`` (default: metres). Fisheye cameras are refused (CalibrationError)."""
    return _read_toml_cameras(Path(path), unit_to_mm)


def read_anipose_calibration(path: str | Path, unit_to_mm: float = ANIPOSE_UNIT_TO_MM
                             ) -> dict[str, Camera]:
    """Cameras of an anipose / aniposelib ``calibration.toml``, by their ``name``, in file
    order; translations times ``unit_to_mm`` (default 1: the board was measured in mm).
    Fisheye cameras are refused (CalibrationError)."""
    return _read_toml_cameras(Path(path), unit_to_mm)


def _read_toml_cameras(path: Path, unit_to_mm: float) -> dict[str, Camera]:
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CalibrationError(f"{path}: not valid TOML ({e})") from None
    cams: dict[str, Camera] = {}
    for section, d in doc.items():
        if section in _NOT_CAMERAS or not isinstance(d, dict):
            continue
        where = f"{path}: [{section}]"
        missing = [k for k in ("name",) + _TOML_KEYS if k not in d]
        if missing:
            raise CalibrationError(f"{where}: missing key(s) {missing}")
        name = str(d["name"])
        if d.get("fisheye", False):
            raise CalibrationError(f"{where}: camera {name!r} is a fisheye camera "
                                   "(fisheye = true); only OpenCV's pinhole model with "
                                   "[k1, k2, p1, p2, k3] is supported")
        if name in cams:
            raise CalibrationError(f"{where}: camera name {name!r} appears twice")
        cams[name] = _camera(f"{where} camera {name!r}", name,
                             *(d[k] for k in _TOML_KEYS), unit_to_mm, _TOML_KEYS)
    if not cams:
        raise CalibrationError(f"{path}: no camera tables")
    return cams


def toml_dumps(tables: dict[str, dict[str, Any]]) -> str:
    """TOML text of ``{table: {key: value}}``: values are str, bool, int, float or (nested)
    lists of them. Floats are written with ``repr`` so they read back bit-exact."""
    out = []
    for name, body in tables.items():
        out.append(f"[{_toml_key(name)}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
        out.append("")
    return "\n".join(out)


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _toml_string(k)


def _toml_string(s: str) -> str:
    esc = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    body = "".join(esc.get(ch, ch if ord(ch) >= 0x20 and ord(ch) != 0x7F else f"\\u{ord(ch):04x}")
                   for ch in s)
    return f'"{body}"'


def _toml_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "nan" if f != f else repr(f)   # repr: 1.0, 1e-05, inf, -inf are all TOML floats
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_camera(name: str, c: Camera, unit_to_mm: float, n_dist: int) -> dict[str, Any]:
    if not c.has_extrinsics:
        raise CalibrationError(f"camera {name!r} has no extrinsics to write")
    return {"name": name, "size": [int(c.width), int(c.height)],
            "matrix": np.asarray(c.K, np.float64).tolist(),
            "distortions": [float(v) for v in np.resize(c.dist, 5)[:n_dist]],
            "rotation": cv2.Rodrigues(np.asarray(c.R, np.float64))[0].ravel().tolist(),
            "translation": (np.asarray(c.t, np.float64) / unit_to_mm).tolist()}


def pose2sim_toml(cameras: dict[str, Camera], unit_to_mm: float = POSE2SIM_UNIT_TO_MM,
                  error_px: float = 0.0) -> str:
    """Pose2Sim ``Calib.toml`` text: a table per camera (named after it), size as floats as
    Pose2Sim writes it, 4 distortion terms (5 when k3 != 0), ``fisheye = false``, and
    ``[metadata] adjusted = false, error = error_px``."""
    tables = {}
    for name, c in cameras.items():
        n = 5 if np.resize(c.dist, 5)[4] != 0 else 4
        d = _toml_camera(name, c, unit_to_mm, n)
        d["size"] = [float(v) for v in d["size"]]
        tables[name] = {**d, "fisheye": False}
    tables["metadata"] = {"adjusted": False, "error": float(error_px)}
    return toml_dumps(tables)


def anipose_toml(cameras: dict[str, Camera], unit_to_mm: float = ANIPOSE_UNIT_TO_MM,
                 metadata: dict[str, Any] | None = None) -> str:
    """anipose ``calibration.toml`` text (aniposelib ``CameraGroup.load`` reads it): tables
    ``[cam_0]``.. in camera order with 5 distortion terms, then ``[metadata]``."""
    tables = {f"cam_{i}": _toml_camera(n, c, unit_to_mm, 5)
              for i, (n, c) in enumerate(cameras.items())}
    tables["metadata"] = dict(metadata or {})
    return toml_dumps(tables)


# --- OpenCV FileStorage (YAML / XML) ------------------------------------------------------------
#
# Two layouts, both read by ``cv2.FileStorage`` (the file's extension or header picks YAML/XML):
# * one camera (OpenCV's calibration sample): camera_matrix, distortion_coefficients,
#   image_width, image_height, and the pose as R (3x3 matrix, or 3 values: Rodrigues) or rvec,
#   with T or tvec; the camera is named by camera_name, else by the file's stem.
# * several cameras (EasyMocap's intri.yml / extri.yml keys, which we write in one file):
#   names (a sequence), then per camera K_<name>, dist_<name>, W_<name>, H_<name>, and
#   Rot_<name> (3x3) or R_<name> (Rodrigues), T_<name>. EasyMocap keeps intrinsics and
#   extrinsics in two files: pass the second as ``extrinsics_path``.

_OPENCV_SINGLE = {"K": ("camera_matrix",), "dist": ("distortion_coefficients",),
                  "W": ("image_width",), "H": ("image_height",), "R": ("R", "rvec"),
                  "T": ("T", "tvec")}
_OPENCV_MULTI = {"K": ("K_{}",), "dist": ("dist_{}",), "W": ("W_{}",), "H": ("H_{}",),
                 "R": ("Rot_{}", "R_{}"), "T": ("T_{}",)}
_OPENCV_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def read_opencv_calibration(path: str | Path, unit_to_mm: float = OPENCV_UNIT_TO_MM,
                            extrinsics_path: str | Path | None = None) -> dict[str, Camera]:
    """Cameras of an OpenCV FileStorage YAML/XML file (layouts above), by name; translations
    times ``unit_to_mm`` (default 1: mm; EasyMocap's files are in metres: pass 1000)."""
    path = Path(path)
    files = [_open_storage(path)] + ([_open_storage(Path(extrinsics_path))]
                                     if extrinsics_path is not None else [])
    names_node = files[0][1].getNode("names")
    if names_node.empty() or names_node.isNone():
        stem = _node_value(files, "camera_name", "string")
        names, keys = [stem or path.name.split(".")[0]], _OPENCV_SINGLE
    else:
        names = [names_node.at(i).string() for i in range(names_node.size())]
        keys = _OPENCV_MULTI
    cams = {}
    for n in names:
        where = f"{path}: camera {n!r}"
        found = {}
        for field_, options in keys.items():
            cands = [k.format(n) for k in options]
            hit = next(((k, v) for k in cands
                        if (v := _node_value(files, k, "real" if field_ in "WH" else "mat"))
                        is not None), None)
            if hit is None:
                raise CalibrationError(f"{where}: missing key {' or '.join(cands)!r}")
            found[field_] = hit
        cams[n] = _camera(where, n, found["K"][1], found["dist"][1],
                          [found["W"][1], found["H"][1]], found["R"][1], found["T"][1],
                          unit_to_mm, tuple(found[f][0] for f in ("K", "dist", "W", "R", "T")))
    return cams


def _open_storage(path: Path) -> tuple[Path, Any]:
    if not path.is_file():
        raise CalibrationError(f"{path}: no such file")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as e:
        raise CalibrationError(f"{path}: not an OpenCV FileStorage YAML/XML file ({e.err})"
                               ) from None
    if not fs.isOpened():
        raise CalibrationError(f"{path}: OpenCV could not open it as YAML/XML")
    return path, fs


def _node_value(files: list[tuple[Path, Any]], key: str, kind: str) -> Any:
    """The first file's value of ``key`` as a matrix, real or string; None where absent."""
    for _, fs in files:
        node = fs.getNode(key)
        if node.empty() or node.isNone():
            continue
        if kind == "string":
            return node.string()
        if kind == "real":
            return node.real()
        m = node.mat()
        if m is None:   # a plain sequence of numbers rather than an !!opencv-matrix
            m = np.array([node.at(i).real() for i in range(node.size())])
        return m
    return None


def opencv_storage(cameras: dict[str, Camera], unit_to_mm: float = OPENCV_UNIT_TO_MM,
                   xml: bool = False) -> str:
    """OpenCV FileStorage text (YAML, or XML) of the several-camera layout: names, K_, dist_,
    W_, H_, Rot_ (3x3), R_ (Rodrigues), T_ per camera (T_ in mm / ``unit_to_mm``)."""
    fs = cv2.FileStorage("calib.xml" if xml else "calib.yml",
                         cv2.FILE_STORAGE_WRITE | cv2.FILE_STORAGE_MEMORY)
    fs.startWriteStruct("names", cv2.FileNode_SEQ)
    for n in cameras:
        if not _OPENCV_KEY.match(n):
            raise CalibrationError(f"camera {n!r}: OpenCV keys allow only letters, digits, "
                                   "'_' and '-'")
        fs.write("", n)
    fs.endWriteStruct()
    for n, c in cameras.items():
        if not c.has_extrinsics:
            raise CalibrationError(f"camera {n!r} has no extrinsics to write")
        R = np.asarray(c.R, np.float64)
        fs.write(f"K_{n}", np.asarray(c.K, np.float64))
        fs.write(f"dist_{n}", np.resize(np.asarray(c.dist, np.float64), 5).reshape(1, 5))
        fs.write(f"W_{n}", int(c.width))
        fs.write(f"H_{n}", int(c.height))
        fs.write(f"Rot_{n}", R)
        fs.write(f"R_{n}", cv2.Rodrigues(R)[0])
        fs.write(f"T_{n}", (np.asarray(c.t, np.float64) / unit_to_mm).reshape(3, 1))
    return fs.releaseAndGetString()


# --- formats ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationFormat:
    """One file format: its reader, its writer (cameras -> text), its default unit and the file
    name its tools expect."""

    read: Callable[..., dict[str, Camera]]
    dumps: Callable[..., str]
    unit_to_mm: float
    file_name: str


CALIBRATION_FORMATS: dict[str, CalibrationFormat] = {
    "pose2sim": CalibrationFormat(read_pose2sim_calibration, pose2sim_toml, POSE2SIM_UNIT_TO_MM,
                                  "Calib.toml"),
    "anipose": CalibrationFormat(read_anipose_calibration, anipose_toml, ANIPOSE_UNIT_TO_MM,
                                 "calibration.toml"),
    "opencv": CalibrationFormat(read_opencv_calibration, opencv_storage, OPENCV_UNIT_TO_MM,
                                "calibration.yml"),
}
"""Readers and writers by format name (``tools export-calibration --format``)."""


def write_calibration(cameras: dict[str, Camera], path: str | Path, fmt: str,
                      unit_to_mm: float | None = None) -> Path:
    """Write ``cameras`` (world->camera, mm) as a ``fmt`` file of :data:`CALIBRATION_FORMATS`,
    translations divided by ``unit_to_mm`` (default: the format's unit). OpenCV files ending
    in .xml are XML, else YAML."""
    if fmt not in CALIBRATION_FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {tuple(CALIBRATION_FORMATS)}")
    f = CALIBRATION_FORMATS[fmt]
    unit = f.unit_to_mm if unit_to_mm is None else float(unit_to_mm)
    path = Path(path)
    extra = {"xml": True} if f.dumps is opencv_storage and path.suffix.lower() == ".xml" else {}
    path.write_text(f.dumps(cameras, unit, **extra))
    return path

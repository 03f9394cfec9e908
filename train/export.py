"""Exports of a ``predict`` folder (``poses.parquet``) and of a 3D network.

Formats of predictions (:data:`EXPORTERS`, ``python -m train export PRED_DIR --format ...``):

* ``bvh``: one file per clip and person (``<subject>_<action>_<subaction>_<camera>.bvh``, with
  ``_p<track>`` before ``.bvh`` when the predictions hold several people), spanning the person's
  first to last predicted frame: the joint set's
  skeleton (``pipeline.store.bvh.motion_from_positions``: root with position and rotation channels,
  ``Zrotation Xrotation Yrotation`` per joint, rest offsets at each bone's median length) with
  per-frame rotations fitted to the predicted positions, in centimetres, y up (the camera frame
  turned by a half turn about x: x right, y up, z towards the camera), root at the origin.
  Frames without a pose hold the nearest predicted one. ``bvh_fit.json`` gives the largest
  distance between the file's forward kinematics and the predictions (bone lengths vary from
  frame to frame in predictions, not in a BVH skeleton).
* ``npz``: VideoPose3D's layout (``positions_2d.npz`` is its ``data_2d_*.npz`` layout, which
  ``pipeline.detect.registry.FileDetector`` reads back as detections): ``positions_2d[subject][action
  subaction]`` = list over cameras (the manifest's order) of (F, J, 2) pixels, row f = frame f,
  NaN where nothing was predicted; ``positions_3d.npz`` the same keys with (F, J, 3) root-relative
  camera-frame poses in metres (per camera: a single view has no world frame);
  ``metadata`` = {layout_name "h36m", num_joints, keypoints_symmetry}. Several people: one pair
  of files per track, ``positions_2d_p<track>.npz`` and ``positions_3d_p<track>.npz``.
* ``csv``: ``poses.csv``, one row per frame and person: the keys, ``person`` (track id, -1 for
  a frame without a pose), ``status``, then per joint
  ``<joint>_x, _y, _z`` (mm) and ``<joint>_u, _v`` (pixels).

The network itself: :func:`export_onnx` writes the 3D network as ONNX (input ``images`` (N, 3,
S, S) normalised as ``train.data.normalize_images``; outputs ``coords`` (N, J, 3) and ``conf``
(N, J)); it needs the optional ``onnx`` package (``requirements-onnx.txt``).
"""
from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.store.bvh import format_bvh, forward_kinematics, motion_from_positions, parse_bvh
from pipeline.joints import JointSet, get_joint_set
from train.checkpoint import NotA3DNetwork, load_checkpoint, model_from_state, network_settings
from train.lifter import feature_size

KEYS = ["dataset", "subject", "action", "subaction", "camera"]
CAMERA_TO_Y_UP = np.diag([1.0, -1.0, -1.0])
"""Camera frame (x right, y down, z forward) -> BVH frame (x right, y up, z backward)."""
BVH_UNITS_PER_MM = 0.1


def read_predictions(folder: str | Path) -> pd.DataFrame:
    """``poses.parquet`` of a predict folder; a FileNotFoundError naming it when absent."""
    path = Path(folder) / "poses.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m train predict` first")
    return pd.read_parquet(path)


def _array(series: pd.Series) -> np.ndarray:
    return np.stack([np.stack(v) for v in series]).astype(np.float64)


def _joint_set(df: pd.DataFrame) -> JointSet:
    J = len(df.joints_3d.iloc[0])
    js = get_joint_set("h36m17")
    if js.num_joints != J:
        raise ValueError(f"predictions hold {J} joints; the exporters know the H36M-17 set only")
    return js


def _tracks(df: pd.DataFrame) -> list[int]:
    """The person ids with a pose (rows of person -1 have none)."""
    return sorted(int(p) for p in df.person.unique() if p >= 0)


def _clips(df: pd.DataFrame):
    """(clip key, person, rows of that person sorted by frame) for every track of every clip."""
    df = df[df.person >= 0]
    for key, g in df.groupby(KEYS + ["person"], sort=False):
        yield tuple(key[:-1]), int(key[-1]), g.sort_values("frame")


def _track_span(g: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """One track's rows -> (last - first + 1, ...) per frame from its first to its last frame,
    NaN where it has no row."""
    frames = g.frame.to_numpy()
    out = np.full((int(frames.max() - frames.min()) + 1,) + values.shape[1:], np.nan)
    out[frames - frames.min()] = values
    return out


def _filled(X: np.ndarray) -> np.ndarray | None:
    """(F, J, 3) poses with NaN frames replaced by the nearest predicted frame (None: none)."""
    ok = np.isfinite(X).all(axis=(1, 2))
    if not ok.any():
        return None
    idx = np.flatnonzero(ok)
    nearest = idx[np.clip(np.searchsorted(idx, np.arange(len(X))), 0, len(idx) - 1)]
    prev = idx[np.clip(np.searchsorted(idx, np.arange(len(X)), side="right") - 1, 0,
                       len(idx) - 1)]
    pick = np.where(np.abs(prev - np.arange(len(X))) <= np.abs(nearest - np.arange(len(X))),
                    prev, nearest)
    return X[pick]


FALLBACK_FRAME_TIME_S = 1 / 25
"""BVH frame time of a clip whose rows are all at frame 0 (one image: no frame rate to read)."""


def frame_times(df: pd.DataFrame) -> dict[tuple, float]:
    """Seconds per frame of every clip (:data:`KEYS`) of a predict folder's rows. ``time_s`` is
    ``frame / fps`` (train.predict), so each row past frame 0, with a pose or without, gives
    the clip's frame time; :data:`FALLBACK_FRAME_TIME_S` for a clip seen at frame 0 only."""
    out = {}
    for key, g in df.groupby(KEYS, sort=False):
        frame, t = g.frame.to_numpy(np.float64), g.time_s.to_numpy(np.float64)
        later = (frame > 0) & (t > 0)
        out[tuple(key)] = float(np.median(t[later] / frame[later])) if later.any() \
            else FALLBACK_FRAME_TIME_S
    return out


def export_bvh(df: pd.DataFrame, out: Path) -> list[Path]:
    """One BVH per clip (module docstring) and ``bvh_fit.json`` (with each file's frame time,
    :func:`frame_times`); returns every file written, ``bvh_fit.json`` last."""
    js = _joint_set(df)
    written, fit = [], {}
    several = len(_tracks(df)) > 1
    dts = frame_times(df)
    for key, person, g in _clips(df):
        X = _filled(_track_span(g, _array(g.joints_3d)))
        if X is None:
            continue
        Y = X @ CAMERA_TO_Y_UP.T * BVH_UNITS_PER_MM
        motion = motion_from_positions(Y, js, dts[key])
        path = out / ("_".join(map(str, key[1:])) + (f"_p{person}" if several else "") + ".bvh")
        path.write_text(format_bvh(motion))
        back = forward_kinematics(parse_bvh(path.read_text(), str(path)), unit_to_mm=1.0,
                                  z_up=False)
        idx = [motion.names.index(n) for n in js.names]
        dist = np.linalg.norm(back[:, idx] - Y, axis=-1) / BVH_UNITS_PER_MM
        fit[path.name] = {"mean": float(dist.mean()), "max": float(dist.max()), "person": person,
                          "first_frame": int(g.frame.min()), "frames": len(Y),
                          "frame_time_s": dts[key]}
        written.append(path)
    (out / "bvh_fit.json").write_text(json.dumps(
        {"joint_distance_mm": fit, "note": "forward kinematics of each file vs the predicted "
         "(gap-filled) positions: mean and max over frames and joints; each file spans its "
         "person's first to last predicted frame"}, indent=2))
    return written + [out / "bvh_fit.json"]


def _per_frame(g: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """Rows of one clip -> (max frame + 1, ...) with row f = frame f, NaN elsewhere."""
    frames = g.frame.to_numpy()
    out = np.full((int(frames.max()) + 1,) + values.shape[1:], np.nan, np.float32)
    out[frames] = values
    return out


def export_videopose3d(df: pd.DataFrame, out: Path) -> list[Path]:
    """``positions_2d.npz`` and ``positions_3d.npz`` in VideoPose3D's layout (module docstring);
    with several people, one pair per track (``positions_2d_p<T>.npz`` ...)."""
    tracks = _tracks(df)
    if len(tracks) <= 1:
        return _videopose3d_files(df, out, "")
    return [p for t in tracks for p in _videopose3d_files(df[df.person == t], out, f"_p{t}")]


def _videopose3d_files(df: pd.DataFrame, out: Path, suffix: str) -> list[Path]:
    js = _joint_set(df)
    p2d: dict[str, dict[str, list[np.ndarray]]] = {}
    p3d: dict[str, dict[str, list[np.ndarray]]] = {}
    for (_, subject, action, subaction, _), g in df.groupby(KEYS, sort=False):
        g = g.sort_values("frame").drop_duplicates("frame")
        k = f"{action} {subaction}"
        p2d.setdefault(subject, {}).setdefault(k, []).append(_per_frame(g, _array(g.joints_2d)))
        p3d.setdefault(subject, {}).setdefault(k, []).append(
            _per_frame(g, _array(g.joints_3d) / 1000.0))
    left = [int(a) for a, _ in js.flip_pairs]
    right = [int(b) for _, b in js.flip_pairs]
    meta = {"layout_name": "h36m", "num_joints": js.num_joints,
            "keypoints_symmetry": [left, right],
            "cameras": {s: {k: list(dict.fromkeys(df[(df.subject == s)].camera)) for k in v}
                        for s, v in p2d.items()}}
    paths = [out / f"positions_2d{suffix}.npz", out / f"positions_3d{suffix}.npz"]
    np.savez_compressed(paths[0], positions_2d=p2d, metadata=meta)
    np.savez_compressed(paths[1], positions_3d=p3d, metadata=meta)
    return paths


def export_csv(df: pd.DataFrame, out: Path) -> list[Path]:
    """``poses.csv``: one row per frame and person (module docstring)."""
    js = _joint_set(df)
    X, uv = _array(df.joints_3d), _array(df.joints_2d)
    cols = {c: df[c].to_numpy() for c in KEYS + ["frame", "time_s", "person", "status"]}
    for j, name in enumerate(js.names):
        cols.update({f"{name}_x": X[:, j, 0], f"{name}_y": X[:, j, 1], f"{name}_z": X[:, j, 2]})
    for j, name in enumerate(js.names):
        cols.update({f"{name}_u": uv[:, j, 0], f"{name}_v": uv[:, j, 1]})
    path = out / "poses.csv"
    pd.DataFrame(cols).to_csv(path, index=False, float_format="%.3f")
    return [path]


EXPORTERS: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = {
    "bvh": export_bvh,
    "npz": export_videopose3d,
    "csv": export_csv,
}
"""Export formats of predictions by name (module docstring)."""


def export_predictions(folder: str | Path, formats: tuple[str, ...], out: str | Path | None = None
                       ) -> list[Path]:
    """Write ``formats`` of a predict folder's ``poses.parquet`` into ``out`` (default: the
    folder's ``export/``); ValueError naming an unknown format."""
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; choose from {list(EXPORTERS)}")
    df = read_predictions(folder)
    if df.empty:
        raise ValueError(f"{Path(folder) / 'poses.parquet'} holds no rows")
    target = Path(out) if out is not None else Path(folder) / "export"
    target.mkdir(parents=True, exist_ok=True)
    return [p for f in formats for p in EXPORTERS[f](df, target)]


# --- ONNX -----------------------------------------------------------------------------------------

class _Exported(torch.nn.Module):
    """A network with plain tensor outputs (its signature's, in order) for ONNX."""

    def __init__(self, model: torch.nn.Module, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[k] for k in self.outputs)


@dataclass(frozen=True)
class OnnxSignature:
    """What an exported network reads and writes: the input's name and shape after the batch
    axis (from the plain-dict configuration), and the outputs' names."""

    input: str
    shape: Callable[[dict[str, Any]], tuple[int, ...]]
    outputs: tuple[str, ...]


ONNX_SIGNATURES = {
    "volumetric": OnnxSignature(
        "images", lambda cfg: (3,) + (network_settings(cfg, "<config>")["input_size"],) * 2,
        ("coords", "conf")),
    "lifter": OnnxSignature(
        "features", lambda cfg: (feature_size(int(cfg["model"]["num_joints"])),
                                 int(cfg["lifter"]["window"])), ("coords",)),
}
"""``config.student`` -> its ONNX signature: the volumetric network reads normalised crops
(N, 3, S, S) and writes ``coords`` (N, J, 3) crop units and ``conf`` (N, J); the lifter reads
``features`` (N, C, T) (train.lifter.lift_features of T frames) and writes ``coords`` (N, J, 3),
the root-relative pose / train.lifter.OUTPUT_SCALE_MM."""


def _signature(state: dict[str, Any], where: str) -> tuple[OnnxSignature, tuple[int, ...]]:
    cfg = state["config"]
    sig = ONNX_SIGNATURES[cfg.get("student", "volumetric")]
    try:
        return sig, sig.shape(cfg)
    except NotA3DNetwork as e:
        raise NotA3DNetwork(str(e).replace("<config>", where)) from None


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """The 3D network of ``checkpoint`` (either student, :data:`ONNX_SIGNATURES`) as an ONNX file
    (module docstring); batch size dynamic. CheckpointError for a 2D network's or a damaged
    checkpoint."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    sig, shape = _signature(state, str(checkpoint))
    model, _ = model_from_state(state, str(checkpoint), "cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((2,) + shape)
    if importlib.util.find_spec("onnx") is None:  # optional extra; torch's exporter needs it
        raise RuntimeError("ONNX export needs the onnx package: `make onnx` installs "
                           "requirements-onnx.txt into outputs/onnx-site, or pip install -r "
                           "requirements-onnx.txt")
    torch.onnx.export(_Exported(model, sig.outputs).eval(), (dummy,), str(out),
                      input_names=[sig.input], output_names=list(sig.outputs),
                      opset_version=opset,
                      dynamic_axes={k: {0: "n"} for k in (sig.input,) + sig.outputs},
                      dynamo=False)
    return out


def onnx_agreement(onnx_path: str | Path, checkpoint: str | Path, inputs: np.ndarray
                   ) -> dict[str, float]:
    """Largest absolute difference between ONNX Runtime (CPU) and PyTorch on ``inputs`` (the
    network's input, e.g. (N, 3, S, S) normalised images), for each output; needs
    onnxruntime."""
    import onnxruntime as ort  # noqa: PLC0415  (optional extra: requirements-onnx.txt)

    state = load_checkpoint(checkpoint, map_location="cpu")
    sig, _ = _signature(state, str(checkpoint))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {sig.input: inputs.astype(np.float32)})
    model, _ = model_from_state(state, str(checkpoint), "cpu")
    with torch.no_grad():
        ref = model(torch.from_numpy(inputs.astype(np.float32)))
    return {k: float(np.abs(g - ref[k].numpy()).max()) for k, g in zip(sig.outputs, got)}


ONNX_TOLERANCE = 1e-3
"""Default largest |ONNX Runtime - PyTorch| of :func:`check_onnx`: the volumetric network's coords
are in crop units ([-0.5, 0.5): 1e-3 is a quarter pixel of a 256-pixel crop), conf in [0, 1];
the lifter's in metres (1e-3: 1 mm); float32 kernels differ by about 1e-6."""


def check_onnx(onnx_path: str | Path, checkpoint: str | Path, tolerance: float = ONNX_TOLERANCE,
               batch: int = 4, seed: int = 0) -> dict[str, float]:
    """:func:`onnx_agreement` on ``batch`` random inputs of the network's signature (normalised
    images, or the lifter's features); ValueError naming the file, the differences and ``tolerance`` when one exceeds it
    (ImportError without onnxruntime)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    _, shape = _signature(state, str(checkpoint))
    x = np.random.default_rng(seed).normal(size=(batch,) + shape)
    diff = onnx_agreement(onnx_path, checkpoint, x)
    over = {k: v for k, v in diff.items() if not v <= tolerance}  # NaN counts as over
    if over:
        raise ValueError(f"{onnx_path}: ONNX Runtime and PyTorch ({checkpoint}) differ by "
                         + ", ".join(f"{k} {v:.2e}" for k, v in over.items())
                         + f" > tolerance {tolerance:g}: the export does not match the network")
    return diff

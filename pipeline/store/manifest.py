"""Dataset manifests: one YAML file per dataset, validated on load into frozen dataclasses.

Schema (every key is checked; unknown keys are rejected; errors name the file and the key):

.. code-block:: yaml

    dataset: synthetic              # name, written into every shard row
    root: ../outputs/data/synthetic # data folder; relative paths are relative to this file;
                                    # ${VAR} and ~ are expanded
    joint_set: h36m17               # a key of pipeline.joints.JOINT_SETS, or your own:
    # joint_set:
    #   name: upper10                 # written nowhere else; names the set in errors
    #   joints: [neck, head, l_shoulder, ...]        # the order of every joint array
    #   parents: {neck: null, head: neck, ...}       # every joint; null for the one tree root
    #   flip_pairs: [[l_shoulder, r_shoulder], ...]  # optional, (left, right)
    #   root: l_hip                   # optional (default: the tree root); labels are relative
    #   fallback_roots: [neck]        # optional; used per frame where the roots before are hidden
    #   bone_lengths_mm: {head: 200, ...}  # optional, every bone by its child joint; without it
    #                                 # labels are scaled by the recording's median bone lengths
    cameras:                        # camera id -> intrinsics (pixels) and distortion
      "54138969": {fx: .., fy: .., cx: .., cy: .., width: .., height: ..,
                   distortion: [k1, k2, p1, p2, k3]}
    extrinsics:                     # optional; subject -> camera -> world->camera pose (mm)
      S1: {"54138969": {R: [[..], [..], [..]], t: [tx, ty, tz]}}
    frames:                         # default frame source of every sequence
      kind: images                  # images | video
      pattern: "images/{subject}/{action}_{subaction}/{camera}/{frame:06d}.jpg"
      fps: 50                       # frame rate of the source
      step: 1                       # use every step-th frame
    ground_truth:                   # optional patterns (relative to root), for eval/ablations only
      joints_3d: "gt/{subject}/{action}_{subaction}.npz"
    sequences:                      # one entry per recorded sequence
      - {subject: S1, action: Walking, subaction: 1}
      # optional per sequence: name (substituted as {name}), cameras (subset), frames (override)
    splits: {train: [S1, S5], val: [S6], test: [S9]}  # name -> subjects; the trainer selects
                                    # on val (disjoint from train), make eval reads test
    synthetic: {...}                # optional; generator settings, only read by `make data`

Pattern placeholders: {root} {subject} {action} {subaction} {name} {camera} {frame}.

Ground-truth npz layout (``ground_truth.joints_3d``): ``joints_3d_world`` (F, J, 3) float, mm,
world frame of the extrinsics, frame index = source frame index; optional ``joints_2d``
(C, F, J, 2) distorted pixels, ``bbox`` (C, F, 4) [x_min, y_min, x_max, y_max] and ``cameras``
(C,) camera ids giving the order of the first axis.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.geometry.cameras import Camera, intrinsic_matrix
from pipeline.joints import JOINT_SETS, JointSet, get_joint_set


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class FrameSource:
    kind: str  # "images" or "video"
    pattern: str
    fps: float = 50.0
    step: int = 1


@dataclass(frozen=True)
class Sequence:
    subject: str
    action: str
    subaction: str
    cameras: tuple[str, ...]
    frames: FrameSource
    name: str = ""
    num_frames: int | None = None

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.action}/{self.subaction}"

    @property
    def fields(self) -> dict[str, str]:
        return {"subject": self.subject, "action": self.action, "subaction": self.subaction,
                "name": self.name or f"{self.action}_{self.subaction}"}


@dataclass(frozen=True)
class Manifest:
    path: Path
    dataset: str
    root: Path
    joint_set: JointSet
    cameras: dict[str, dict[str, Any]]
    extrinsics: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    frames: FrameSource
    sequences: tuple[Sequence, ...]
    splits: dict[str, tuple[str, ...]]
    ground_truth: dict[str, str] = field(default_factory=dict)
    synthetic: dict[str, Any] = field(default_factory=dict)

    # -- cameras --------------------------------------------------------------------------------
    @property
    def camera_ids(self) -> tuple[str, ...]:
        return tuple(self.cameras)

    def camera(self, cam_id: str, subject: str | None = None) -> Camera:
        """The camera ``cam_id``, with the subject's extrinsics where the manifest has them."""
        if cam_id not in self.cameras:
            raise ManifestError(f"{self.path}: camera {cam_id!r} is not under 'cameras' "
                                f"(known: {list(self.cameras)})")
        c = self.cameras[cam_id]
        R = t = None
        if subject is not None and cam_id in self.extrinsics.get(subject, {}):
            R, t = self.extrinsics[subject][cam_id]
        return Camera(cam_id, intrinsic_matrix(c["fx"], c["fy"], c["cx"], c["cy"]),
                      np.asarray(c["distortion"], dtype=np.float64), int(c["width"]),
                      int(c["height"]), R, t)

    def has_extrinsics(self, subject: str, cameras: tuple[str, ...]) -> bool:
        return all(c in self.extrinsics.get(subject, {}) for c in cameras)

    # -- sequences ------------------------------------------------------------------------------
    def split_of(self, subject: str) -> str | None:
        for name, subjects in self.splits.items():
            if subject in subjects:
                return name
        return None

    def sequences_in(self, split: str | None = None, subjects: tuple[str, ...] | None = None
                     ) -> list[Sequence]:
        out = list(self.sequences)
        if split is not None:
            if split not in self.splits:
                raise ManifestError(f"{self.path}: split {split!r} is not under 'splits' "
                                    f"(known: {list(self.splits)})")
            out = [s for s in out if s.subject in self.splits[split]]
        if subjects is not None:
            out = [s for s in out if s.subject in subjects]
        return out

    def frame_path(self, seq: Sequence, camera: str, frame: int | None = None) -> Path:
        """Path of one frame (image sources) or of the camera's video file (``frame`` ignored)."""
        fields = dict(seq.fields, camera=camera, root=str(self.root))
        if seq.frames.kind == "images":
            fields["frame"] = int(frame if frame is not None else 0)
        return self.root / _format(seq.frames.pattern, fields, self.path, "frames.pattern")

    def gt_path(self, seq: Sequence) -> Path | None:
        pat = self.ground_truth.get("joints_3d")
        if not pat:
            return None
        return self.root / _format(pat, dict(seq.fields, root=str(self.root)), self.path,
                                   "ground_truth.joints_3d")

    def frame_indices(self, seq: Sequence, camera: str | None = None) -> np.ndarray:
        """Source frame indices of a sequence after the frame step.

        Counted from the manifest's ``num_frames`` if given, else from the files on disk: the
        highest frame index + 1 over the image folders of ``camera`` (default: every camera of
        the sequence; a frame missing in some camera is still asked for, so its absence is
        reported), or the first camera's video frame count."""
        n = seq.num_frames
        if n is None:
            cams = [camera] if camera else list(seq.cameras)
            if seq.frames.kind == "video":
                cams = cams[:1]
            n = max(count_frames(self, seq, c) for c in cams)
        return np.arange(0, n, seq.frames.step, dtype=np.int64)

    def check_sources(self, sequences: list[Sequence] | None = None,
                      frames: Any = None) -> None:
        """Fail before any work starts if the root or a frame source a run will read is missing.

        ``frames(seq)`` gives the frame indices the run reads of a sequence (default: frame 0).
        Every (sequence, camera) source is checked, cheaply (a folder listing, a video's frame
        count), the first missing one named: see :meth:`check_frames`."""
        if not self.root.is_dir():
            raise ManifestError(f"{self.path}: root {str(self.root)!r} is not a folder")
        for seq in self.sequences if sequences is None else sequences:
            idx = [0] if frames is None else [int(i) for i in frames(seq)]
            for cam in seq.cameras:
                self.check_frames(seq, cam, idx or [0])

    def check_frames(self, seq: Sequence, camera: str, frames: list[int]) -> None:
        """Raise a ManifestError naming the first source of ``frames`` that cannot be read: an
        image folder that does not exist or holds none of them, a missing video or one with
        fewer frames. A single frame missing from a folder that holds others is not refused
        here: stage 1 records it as a failed frame (``failures.parquet``)."""
        where = f"{self.path}: sequence {seq.key} camera {camera}"
        if seq.frames.kind == "video":
            p = self.frame_path(seq, camera)
            if not p.exists():
                raise ManifestError(f"{where}: frame source {p} does not exist")
            n = count_frames(self, seq, camera)
            if max(frames) >= n:
                raise ManifestError(f"{where}: frame source {p} has {n} frames, frame "
                                    f"{max(frames)} is asked for")
            return
        by_folder: dict[Path, list[Path]] = {}
        for f in frames:
            p = self.frame_path(seq, camera, f)
            by_folder.setdefault(p.parent, []).append(p)
        for folder, paths in by_folder.items():
            names = set(os.listdir(folder)) if folder.is_dir() else set()
            if not any(p.name in names for p in paths):
                missing = folder if not folder.is_dir() else paths[0]
                raise ManifestError(f"{where}: frame source {missing} does not exist"
                                    + (f" ({len(paths)} frames asked, none found in {folder})"
                                       if folder.is_dir() and len(paths) > 1 else ""))


def count_frames(m: Manifest, seq: Sequence, camera: str) -> int:
    if seq.frames.kind == "video":
        import cv2

        path = m.frame_path(seq, camera)
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ManifestError(f"{m.path}: sequence {seq.key}: cannot open video {path}")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return n
    # Images: highest index + 1, not the number of files (a missing frame must not shorten the
    # sequence and drop the frames after it).
    pattern = str(m.frame_path(seq, camera, 0))
    glob_pat = re.sub(r"\d+(?=\.\w+$)", "*", pattern)
    found = (re.search(r"(\d+)\.\w+$", p) for p in glob.glob(glob_pat))
    return max((int(x.group(1)) + 1 for x in found if x), default=0)


# --- loading and validation ---------------------------------------------------------------------

_TOP_KEYS = {"dataset": True, "root": True, "joint_set": True, "cameras": True,
             "extrinsics": False, "frames": True, "ground_truth": False, "sequences": True,
             "splits": True, "synthetic": False, "description": False}
_CAMERA_KEYS = ("fx", "fy", "cx", "cy", "width", "height", "distortion")
_FRAME_KEYS = {"kind", "pattern", "fps", "step"}
_SEQ_KEYS = {"subject", "action", "subaction", "name", "cameras", "frames", "num_frames"}
_JOINT_SET_KEYS = {"name": True, "joints": True, "parents": True, "flip_pairs": False,
                   "root": False, "fallback_roots": False, "bone_lengths_mm": False}


def _format(pattern: str, fields: dict[str, Any], path: Path, key: str) -> str:
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ManifestError(f"{path}: {key}: pattern {pattern!r} has an unknown placeholder "
                            f"({e}); known: {sorted(fields)}") from None


def _need(cond: bool, path: Path, key: str, msg: str) -> None:
    if not cond:
        raise ManifestError(f"{path}: {key}: {msg}")


def _number(v: Any, path: Path, key: str) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v), path, key,
          f"expected a finite number, got {v!r}")
    return float(v)


def _frame_source(d: Any, path: Path, key: str, base: FrameSource | None = None) -> FrameSource:
    _need(isinstance(d, dict), path, key, "expected a mapping")
    unknown = set(d) - _FRAME_KEYS
    _need(not unknown, path, key, f"unknown keys {sorted(unknown)}")
    merged = {**(base.__dict__ if base else {}), **d}
    for k in ("kind", "pattern"):
        _need(k in merged, path, f"{key}.{k}", "missing")
    _need(merged["kind"] in ("images", "video"), path, f"{key}.kind",
          f"must be 'images' or 'video', got {merged['kind']!r}")
    _need(isinstance(merged["pattern"], str), path, f"{key}.pattern", "expected a string")
    if merged["kind"] == "images":
        _need("{frame" in merged["pattern"], path, f"{key}.pattern",
                "an image pattern needs a {frame} placeholder, e.g. {frame:06d}")
    step = merged.get("step", 1)
    _need(isinstance(step, int) and step >= 1, path, f"{key}.step", "expected an integer >= 1")
    return FrameSource(kind=merged["kind"], pattern=merged["pattern"],
                       fps=_number(merged.get("fps", 50.0), path, f"{key}.fps"), step=step)


def load_manifest(path: str | os.PathLike, root: str | None = None) -> Manifest:
    """Read and validate a manifest. ``root`` overrides the manifest's ``root``."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ManifestError(f"{path}: not valid YAML: {e}") from None
    return parse_manifest(raw, path, root)


def parse_manifest(raw: Any, path: Path, root: str | None = None) -> Manifest:
    """Check a loaded manifest mapping and build the :class:`Manifest` (``path`` names the file
    in every error; ``root`` overrides the manifest's own root)."""
    _check_top_keys(raw, path)
    _need(isinstance(raw["dataset"], str) and raw["dataset"], path, "dataset", "expected a name")
    joint_set = _parse_joint_set(raw["joint_set"], path)
    root_path = _parse_root(raw["root"] if root is None else root, path)
    cameras = _parse_cameras(raw["cameras"], path)
    extr = _parse_extrinsics(raw.get("extrinsics") or {}, cameras, path)
    frames = _frame_source(raw["frames"], path, "frames")
    seqs = _parse_sequences(raw["sequences"], cameras, frames, path)
    splits = _parse_splits(raw["splits"], path)
    gt = raw.get("ground_truth") or {}
    _need(isinstance(gt, dict) and set(gt) <= {"joints_3d"}, path, "ground_truth",
          "expected a mapping with key joints_3d")
    m = Manifest(path=path, dataset=raw["dataset"], root=root_path,
                 joint_set=joint_set, cameras=cameras, extrinsics=extr,
                 frames=frames, sequences=tuple(seqs), splits=splits, ground_truth=dict(gt),
                 synthetic=dict(raw.get("synthetic") or {}))
    # Patterns must format: catch unknown placeholders now, not half-way through a job.
    m.frame_path(seqs[0], seqs[0].cameras[0], 0)
    m.gt_path(seqs[0])
    return m


def _check_top_keys(raw: Any, path: Path) -> None:
    """A mapping with only known top-level keys and every required one."""
    _need(isinstance(raw, dict), path, "<top>", "expected a mapping at the top level")
    unknown = set(raw) - set(_TOP_KEYS)
    _need(not unknown, path, "<top>", f"unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for k, required in _TOP_KEYS.items():
        _need(not required or k in raw, path, k, "missing (required)")


def _parse_root(root: Any, path: Path) -> Path:
    """The data root with ~ and $VARS expanded; relative roots are relative to the manifest."""
    root_str = os.path.expanduser(os.path.expandvars(str(root)))
    _need("$" not in root_str, path, "root", f"unset environment variable in {root_str!r}")
    root_path = Path(root_str)
    if not root_path.is_absolute():
        root_path = (path.parent / root_path).resolve()
    return root_path


def _parse_cameras(cams: Any, path: Path) -> dict[str, dict[str, Any]]:
    """camera id -> intrinsics dict (fx, fy, cx, cy, ... as floats, distortion of length 5)."""
    _need(isinstance(cams, dict) and cams, path, "cameras", "expected a non-empty mapping")
    return {str(cid): _parse_camera(c, path, f"cameras.{cid}") for cid, c in cams.items()}


def _parse_camera(c: Any, path: Path, key: str) -> dict[str, Any]:
    """One camera's intrinsics under ``key`` (e.g. ``cameras.54138969``)."""
    _need(isinstance(c, dict), path, key, "expected a mapping")
    unknown = set(c) - set(_CAMERA_KEYS)
    _need(not unknown, path, key, f"unknown keys {sorted(unknown)}")
    for k in _CAMERA_KEYS:
        _need(k in c, path, f"{key}.{k}", "missing")
    d = c["distortion"]
    _need(isinstance(d, list) and len(d) in (4, 5), path, f"{key}.distortion",
          "expected [k1, k2, p1, p2, k3]")
    out = {k: _number(c[k], path, f"{key}.{k}") for k in _CAMERA_KEYS[:6]}
    out["distortion"] = [_number(v, path, f"{key}.distortion") for v in d] + (
        [0.0] if len(d) == 4 else [])
    _need(out["fx"] > 0 and out["fy"] > 0, path, key, "focal lengths must be positive")
    return out


def _parse_extrinsics(raw: Any, cameras: dict[str, dict[str, Any]], path: Path
                      ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """subject -> camera -> (R (3, 3), t (3,)), each R checked to be a rotation."""
    extr: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for subj, per_cam in raw.items():
        _need(isinstance(per_cam, dict), path, f"extrinsics.{subj}", "expected a mapping")
        extr[str(subj)] = {}
        for cid, e in per_cam.items():
            key = f"extrinsics.{subj}.{cid}"
            _need(str(cid) in cameras, path, key, f"camera {cid!r} is not under 'cameras'")
            _need(isinstance(e, dict) and set(e) == {"R", "t"}, path, key, "expected {R, t}")
            R = np.asarray(e["R"], dtype=np.float64)
            t = np.asarray(e["t"], dtype=np.float64)
            _need(R.shape == (3, 3) and t.shape == (3,), path, key, "R must be 3x3 and t length 3")
            _need(np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0, path,
                  f"{key}.R", "not a rotation matrix")
            extr[str(subj)][str(cid)] = (R, t)
    return extr


def _parse_sequences(seqs_raw: Any, cameras: dict[str, dict[str, Any]], frames: FrameSource,
                     path: Path) -> list[Sequence]:
    """The sequences in file order; two with the same key are refused."""
    _need(isinstance(seqs_raw, list) and seqs_raw, path, "sequences", "expected a non-empty list")
    seqs = []
    seen = set()
    for i, s in enumerate(seqs_raw):
        key = f"sequences[{i}]"
        seq = _parse_sequence(s, cameras, frames, path, key)
        _need(seq.key not in seen, path, key, f"duplicate sequence {seq.key}")
        seen.add(seq.key)
        seqs.append(seq)
    return seqs


def _parse_sequence(s: Any, cameras: dict[str, dict[str, Any]], frames: FrameSource, path: Path,
                    key: str) -> Sequence:
    """One sequence under ``key`` (e.g. ``sequences[3]``); cameras default to all of them."""
    _need(isinstance(s, dict), path, key, "expected a mapping")
    unknown = set(s) - _SEQ_KEYS
    _need(not unknown, path, key, f"unknown keys {sorted(unknown)}")
    for k in ("subject", "action", "subaction"):
        _need(k in s, path, f"{key}.{k}", "missing")
    cam_list = tuple(str(c) for c in s.get("cameras", list(cameras)))
    for c in cam_list:
        _need(c in cameras, path, f"{key}.cameras", f"camera {c!r} is not under 'cameras'")
    _need(len(cam_list) >= 2, path, f"{key}.cameras", "at least two cameras are needed")
    fs = _frame_source(s["frames"], path, f"{key}.frames", frames) if "frames" in s else frames
    n = s.get("num_frames")
    _need(n is None or (isinstance(n, int) and n > 0), path, f"{key}.num_frames",
          "expected a positive integer")
    return Sequence(subject=str(s["subject"]), action=str(s["action"]),
                    subaction=str(s["subaction"]), cameras=cam_list, frames=fs,
                    name=str(s.get("name", "")), num_frames=n)


def _parse_splits(splits_raw: Any, path: Path) -> dict[str, tuple[str, ...]]:
    """split name -> subjects."""
    _need(isinstance(splits_raw, dict) and splits_raw, path, "splits", "expected a mapping")
    splits = {}
    for name, subj in splits_raw.items():
        _need(isinstance(subj, list), path, f"splits.{name}", "expected a list of subjects")
        splits[str(name)] = tuple(str(x) for x in subj)
    return splits


def _parse_joint_set(raw: Any, path: Path) -> JointSet:
    """``joint_set``: a key of pipeline.joints.JOINT_SETS, or a mapping declaring the set (see
    the module docstring); every key checked, errors name ``joint_set.<key>``."""
    if isinstance(raw, str):
        _need(raw in JOINT_SETS, path, "joint_set",
              f"unknown joint set {raw!r}; known: {sorted(JOINT_SETS)} (or a mapping)")
        return get_joint_set(raw)
    _need(isinstance(raw, dict), path, "joint_set", "expected a known name or a mapping")
    unknown = set(raw) - set(_JOINT_SET_KEYS)
    _need(not unknown, path, "joint_set", f"unknown keys {sorted(unknown)}; allowed: "
          f"{sorted(_JOINT_SET_KEYS)}")
    for k, required in _JOINT_SET_KEYS.items():
        _need(not required or k in raw, path, f"joint_set.{k}", "missing (required)")
    _need(isinstance(raw["name"], str) and raw["name"], path, "joint_set.name", "expected a name")
    names = raw["joints"]
    _need(isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names),
          path, "joint_set.joints", "expected a list of at least two joint names")
    _need(len(set(names)) == len(names), path, "joint_set.joints", "duplicate joint names")
    parents = raw["parents"]
    _need(isinstance(parents, dict) and set(parents) == set(names), path, "joint_set.parents",
          "expected a mapping of every joint to its parent (null for the root); missing "
          f"{sorted(set(names) - set(parents or {}))}, unknown "
          f"{sorted(set(parents or {}) - set(names)) if isinstance(parents, dict) else []}")
    for n, par in parents.items():
        _need(par is None or par in names, path, f"joint_set.parents.{n}",
              f"parent {par!r} is not a joint of joint_set.joints")
    return _build_joint_set(raw, names, parents, path)


def _name_list(v: Any, names: list[str], path: Path, key: str) -> tuple[str, ...]:
    _need(isinstance(v, list) and all(isinstance(n, str) for n in v), path, key,
          "expected a list of joint names")
    bad = [n for n in v if n not in names]
    _need(not bad, path, key, f"{bad} not in joint_set.joints")
    return tuple(v)


def _build_joint_set(raw: dict[str, Any], names: list[str], parents: dict[str, Any],
                     path: Path) -> JointSet:
    """The optional keys of a declared joint set, then the JointSet (its own checks too)."""
    flips = raw.get("flip_pairs") or []
    _need(isinstance(flips, list), path, "joint_set.flip_pairs", "expected a list of pairs")
    pairs = []
    for i, pr in enumerate(flips):
        key = f"joint_set.flip_pairs[{i}]"
        _need(isinstance(pr, list) and len(pr) == 2, path, key, "expected [left, right]")
        pairs.append(_name_list(pr, names, path, key))
    roots = ()
    if "root" in raw:
        roots = _name_list([raw["root"]], names, path, "joint_set.root")
    roots += _name_list(raw.get("fallback_roots") or [], names, path, "joint_set.fallback_roots")
    if roots and "root" not in raw:
        roots = (next(n for n in names if parents[n] is None),) + roots
    ref = raw.get("bone_lengths_mm") or {}
    _need(isinstance(ref, dict), path, "joint_set.bone_lengths_mm",
          "expected a mapping child joint -> length in mm")
    for k, v in ref.items():
        _need(_number(v, path, f"joint_set.bone_lengths_mm.{k}") > 0, path,
              f"joint_set.bone_lengths_mm.{k}", "must be positive")
    children = [n for n in names if parents[n] is not None]
    _need(not ref or set(ref) == set(children), path, "joint_set.bone_lengths_mm",
          "every bone needs a length, keyed by its child joint: missing "
          f"{[c for c in children if c not in ref]}, not a child {sorted(set(ref) - set(children))}")
    try:
        return JointSet(name=raw["name"], names=tuple(names),
                        parents=tuple(-1 if parents[n] is None else names.index(parents[n])
                                      for n in names),
                        flip_names=tuple(pairs), root_names=roots,
                        reference_mm=tuple((str(k), float(v)) for k, v in ref.items()))
    except (ValueError, KeyError) as e:
        raise ManifestError(f"{path}: joint_set.parents: {e}") from None

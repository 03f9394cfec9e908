"""The registry of 2D detectors (:data:`DETECTORS`), and the back-ends beside the project's own
network (``pipeline/detect/network.py``): precomputed detections and MediaPipe.

Both follow ``pipeline.detect.network.Detector``::

    detect(images, boxes, keys) -> joints_2d (N, 17, 2) float32, conf (N, 17) float32

in the H36M-17 order of ``pipeline.joints``, pixels of the original (distorted) image. A frame
without a person (or an unreadable frame, ``images[i] is None``) gets NaN joints and zero
confidence, never an exception. ``detect_with_boxes`` returns a third array, the person box
(N, 4) float32 [x_min, y_min, x_max, y_max] the detector found (NaN where none).

``FileDetector`` replays detections made elsewhere, from either of two layouts:

(a) npz, the layout most Human3.6M users have (VideoPose3D's ``data_2d_h36m_*.npz``), loaded with
    ``allow_pickle=True`` (so load only files you trust)::

        positions_2d: dict subject -> dict action key -> list over cameras of (F, J, 2) or
                      (F, J, 3) arrays (x, y[, confidence]); row f = source frame f
        metadata:     optional dict; ``layout_name`` "h36m" (H36M-17 order) or "coco" (COCO-17)

    Action keys are the sequences' file names with the trial suffix ("Directions 1",
    "Directions"), S1's TakingPhoto / WalkingDog spelled Photo / WalkDog; they are matched to
    the manifest's sequences through ``Sequence.name`` (see ``npz_action_key``). The camera list
    follows the manifest's camera order unless ``camera_order`` says otherwise.

(b) Parquet in the project's detection schema (``detection_schema(J)``, defined once in
    ``pipeline/store/shards.py``): one row per (sequence, camera, frame) with joints_2d (J, 2),
    joints_2d_conf (J,), optional bbox (4,) and ``status`` ("" when usable, else the reason), J
    and the joint order those of the manifest's joint set (any set, e.g. one declared in the
    manifest). A stage-1 run's ``detections/`` folder is such a table, so detections can be
    replayed. This detector needs no frames (``needs_images=False``).

    Several people per frame: add an int32 ``person`` column (the detector's index of the
    person in that frame and view; any order, no identity across views or frames is assumed).
    Rows then are unique per (sequence, camera, frame, person); stage 1 associates the people
    across views and over time (``pipeline.people.tracks``). A repeated (frame, person) keeps its first
    row and records the others with a reason, never an error. MediaPipe's pose solution finds
    one person per image: to label several people, detect them with a multi-person detector of
    your choice and hand its output over as this table, or use ``mediapipe-people``
    (:class:`MediaPipePeopleDetector`: BlazePose's person detector on the frame and on tiles of
    it, its landmark model on every person it finds).

``MediaPipeDetector`` and ``MediaPipePeopleDetector`` run BlazePose (an optional extra,
``requirements-mediapipe.txt``; ``pipeline/detect/blazepose.py``) and map its 33 landmarks with
``pipeline.joints.mediapipe33_to_h36m17``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence as Seq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import shards as S
from pipeline.geometry.cameras import box_from_points
from pipeline.detect.blazepose import (MEDIAPIPE_HINT, MediaPipeDetector,  # noqa: F401
                                       MediaPipePeopleDetector, import_mediapipe)
from pipeline.detect.network import (DetectorUnavailable, NetDetector, OracleDetector,
                                     detector_alternatives, network_datasets)
from pipeline.detect.rows import (NO_PERSON, BoxReportingDetector, GroupKey,  # noqa: F401
                                  PeopleRows, empty_detections, key_fields, no_person)
from pipeline.joints import H36M17, coco17_to_h36m17
from pipeline.store.manifest import Manifest, Sequence

J = H36M17.num_joints
DETECTION_SCHEMA: pa.Schema = S.DETECTION_SCHEMA
"""The detection table (pipeline/store/shards.py): dataset, subject, action, subaction, camera,
frame int32, image_path, bbox (4,), joints_2d (17, 2), joints_2d_conf (17,), status."""
REQUIRED_COLUMNS = ("dataset", "subject", "action", "subaction", "camera", "frame",
                    "joints_2d", "joints_2d_conf", "status")
NPZ_LAYOUTS = {"h36m": "h36m17", "h36m17": "h36m17", "coco": "coco17", "coco17": "coco17"}
# VideoPose3D's spelling of the scenarios that subject S1's files spell differently.
_NPZ_RENAMES = (("TakingPhoto", "Photo"), ("WalkingDog", "WalkDog"))


def boxes_from_joints(joints: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """(N, J, 2) joints and (N, J) confidences -> (N, 4) tight boxes of the confident joints
    (NaN rows where no joint is confident)."""
    pts = np.where((conf > 0)[..., None], joints, np.nan)
    out = np.full((len(joints), 4), np.nan, np.float32)
    ok = np.isfinite(pts).all(-1).any(-1)
    if ok.any():
        out[ok] = box_from_points(pts[ok]).astype(np.float32)
    return out


@dataclass(frozen=True)
class _Group:
    """Detections of one (sequence, camera): frames sorted ascending, arrays row-aligned."""

    frames: np.ndarray  # (F,) int64
    joints: np.ndarray  # (F, 17, 2) float32, NaN where unusable
    conf: np.ndarray    # (F, 17) float32, 0 where unusable
    boxes: np.ndarray   # (F, 4) float32


def _make_group(frames: np.ndarray, joints: np.ndarray, conf: np.ndarray,
                boxes: np.ndarray | None, where: str) -> _Group:
    order = np.argsort(frames, kind="stable")
    frames = np.asarray(frames, np.int64)[order]
    dup = frames[1:] == frames[:-1]
    if dup.any():
        raise ValueError(f"{where}: frame {int(frames[1:][dup][0])} appears more than once")
    joints = np.asarray(joints, np.float32)[order]
    conf = np.asarray(conf, np.float32)[order]
    bad = ~np.isfinite(joints).all(-1) | ~np.isfinite(conf)
    conf = np.where(bad, 0.0, np.clip(conf, 0.0, None)).astype(np.float32)
    joints = np.where((conf > 0)[..., None], joints, np.nan).astype(np.float32)
    b = boxes_from_joints(joints, conf) if boxes is None else np.asarray(boxes, np.float32)[order]
    return _Group(frames, joints, conf, b)


class FileDetector(BoxReportingDetector):
    """Precomputed detections looked up by (dataset, subject, action, subaction, camera, frame).

    Build with ``from_npz``, ``from_parquet`` or ``from_path``. Frames the file does not have
    come back as "no person"; ``misses`` counts them.
    """

    name = "file"
    reads_images = False  # the 2D is looked up by key: the frames need not exist

    def __init__(self, groups: dict[GroupKey, _Group], source: str = "",
                 people: dict[GroupKey, "PeopleGroup"] | None = None) -> None:
        self.groups = groups
        self.source = source
        self.misses = 0
        self.people = people or {}
        counts = {g.joints.shape[1] for g in groups.values()}
        if len(counts) > 1:
            raise ValueError(f"{source}: detections hold {sorted(counts)} joints; one joint set")
        self.num_joints = counts.pop() if counts else J

    def check_keys(self, planned: Seq[GroupKey]) -> None:
        """Raise ValueError, naming the fields that differ, when none of the ``planned``
        (dataset, subject, action, subaction, camera) keys of a run has a detection: a file
        made for another manifest (another dataset name, other subaction numbers ...), which
        would otherwise surface only after the run as missing or inconsistent labels."""
        held = set(self.groups) | set(self.people)
        if not planned or not held or held.intersection(planned):
            return
        names = ("dataset", "subject", "action", "subaction", "camera")
        diffs = []
        for i, name in enumerate(names):
            want, have = sorted({k[i] for k in planned}), sorted({k[i] for k in held})
            if not set(want) & set(have):
                diffs.append(f"{name} {want[:3]} in the manifest, {have[:3]} in the file")
        raise ValueError(f"detections {self.source}: none of them belongs to a sequence and camera "
                         f"of the run (e.g. manifest {tuple(planned[0])}, file "
                         f"{tuple(sorted(held)[0])}); " + ("; ".join(diffs) or "no single field "
                         "differs everywhere: check the keys' combinations"))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | Path, manifest: Manifest | None = None, **kw: Any
                  ) -> "FileDetector":
        """``.npz`` -> ``from_npz`` (needs the manifest); a ``.parquet`` file or a folder of
        them -> ``from_parquet``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"detections {path} do not exist")
        if path.suffix == ".npz":
            if manifest is None:
                raise ValueError(f"{path}: an npz of detections needs the manifest to map its "
                                 "action keys to sequences")
            return cls.from_npz(path, manifest, **kw)
        return cls.from_parquet(path, **kw)

    @classmethod
    def from_npz(cls, path: str | Path, manifest: Manifest, *,
                 camera_order: Seq[str] | None = None, joint_layout: str | None = None
                 ) -> "FileDetector":
        """Load the npz layout (a) for the sequences of ``manifest``.

        Args:
            camera_order: camera ids in the order of each action's list (default: the
                manifest's camera order, which for Human3.6M is VideoPose3D's).
            joint_layout: "h36m17" or "coco17"; default from ``metadata['layout_name']``, else
                H36M-17 with a warning.
        """
        path = Path(path)
        with np.load(path, allow_pickle=True) as z:
            if "positions_2d" not in z.files:
                raise ValueError(f"{path}: no 'positions_2d' array (keys: {z.files})")
            positions = z["positions_2d"].item()
            metadata = z["metadata"].item() if "metadata" in z.files else {}
        if not isinstance(positions, dict):
            raise ValueError(f"{path}: positions_2d must hold a dict subject -> action -> list")
        layout = _npz_layout(path, joint_layout, metadata)
        cams = tuple(camera_order) if camera_order is not None else manifest.camera_ids
        groups: dict[GroupKey, _Group] = {}
        for seq in manifest.sequences:
            actions = positions.get(seq.subject)
            if not isinstance(actions, dict):
                continue
            key = npz_action_key(seq, actions)
            if key is None:
                continue
            per_cam = actions[key]
            where = f"{path}: positions_2d[{seq.subject!r}][{key!r}]"
            if len(per_cam) != len(cams):
                raise ValueError(f"{where} has {len(per_cam)} cameras, the camera order "
                                 f"{list(cams)} has {len(cams)}")
            for cam, arr in zip(cams, per_cam):
                if cam not in seq.cameras or arr is None:
                    continue
                xy, conf = _npz_joints(np.asarray(arr), layout, f"{where}[camera {cam}]")
                groups[(manifest.dataset, seq.subject, seq.action, seq.subaction, cam)] = \
                    _make_group(np.arange(len(xy)), xy, conf, None, where)
        if not groups:
            raise ValueError(f"{path}: no action key matches a sequence of {manifest.path} "
                             f"(subjects in the file: {sorted(positions)[:10]})")
        return cls(groups, str(path))

    @classmethod
    def from_parquet(cls, path: str | Path) -> "FileDetector":
        """Load detection tables (layout (b)): one ``.parquet`` file or a folder searched
        recursively (hidden temporary files skipped)."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no .parquet detection files under {path}")
        tables = [_read_detection_table(f) for f in files]
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 \
            else tables[0]
        if "person" in table.column_names:  # several people per frame
            people = _people_from_table(table, str(path))
            return cls(_first_person_groups(people, str(path)), str(path), people)
        return cls(_groups_from_table(table, str(path)), str(path))

    @property
    def multi_person(self) -> bool:
        """Whether the detections carry a person index (several people per frame)."""
        return bool(self.people)

    def detect_people(self, images: list[np.ndarray | None] | None, boxes: np.ndarray | None,
                      keys: Seq[Any]) -> "PeopleRows":
        """Every stored person of every key: one row per (key, person), in key order; a key
        without a stored person gets one row (person -1) with the reason (``images`` and
        ``boxes`` are not needed)."""
        parts = []
        for i, k in enumerate(keys):
            g, f = key_fields(k)
            grp = self.people.get(g)
            lo, hi = (np.searchsorted(grp.frames, f), np.searchsorted(grp.frames, f, "right")) \
                if grp is not None else (0, 0)
            if hi == lo:
                self.misses += 1
                parts.append(no_person(i, f, self.num_joints))
            else:
                parts.append(PeopleRows(np.full(hi - lo, i), grp.person[lo:hi],
                                        grp.joints[lo:hi], grp.conf[lo:hi], grp.boxes[lo:hi],
                                        grp.status[lo:hi]))
        return PeopleRows.concat(parts, self.num_joints)

    # -- detection --------------------------------------------------------------------------
    def detect_with_boxes(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
                          keys: Seq[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Look every key up; ``images`` and ``boxes`` are not needed (an image that could not
        be read still gets its stored detection, as the detection exists)."""
        joints, conf, out_boxes = empty_detections(len(keys), self.num_joints)
        by_group: dict[GroupKey, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            g, f = key_fields(k)
            by_group.setdefault(g, []).append((i, f))
        for g, items in by_group.items():
            rows = np.array([i for i, _ in items])
            frames = np.array([f for _, f in items], np.int64)
            grp = self.groups.get(g)
            if grp is None:
                self.misses += len(items)
                continue
            pos = np.clip(np.searchsorted(grp.frames, frames), 0, len(grp.frames) - 1)
            hit = grp.frames[pos] == frames
            self.misses += int((~hit).sum())
            joints[rows[hit]] = grp.joints[pos[hit]]
            conf[rows[hit]] = grp.conf[pos[hit]]
            out_boxes[rows[hit]] = grp.boxes[pos[hit]]
        return joints, conf, out_boxes


@dataclass(frozen=True)
class PeopleGroup:
    """Detections of several people of one (sequence, camera), sorted by (frame, person).

    ``status`` is "" where usable, else why not (a repeated person index)."""

    frames: np.ndarray  # (M,) int64
    person: np.ndarray  # (M,) int64
    joints: np.ndarray  # (M, J, 2) float32
    conf: np.ndarray    # (M, J) float32
    boxes: np.ndarray   # (M, 4) float32
    status: np.ndarray  # (M,) object


def _people_from_table(table: pa.Table, where: str) -> dict[GroupKey, PeopleGroup]:
    """Rows with a ``person`` column grouped by (sequence, camera), sorted by (frame, person);
    a repeated (frame, person) keeps its first row usable and gives the others a reason."""
    key_cols = [table.column(c).to_pylist()
                for c in ("dataset", "subject", "action", "subaction", "camera")]
    frames = table.column("frame").to_numpy().astype(np.int64)
    person = table.column("person").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    joints = S.column_array(table, "joints_2d").astype(np.float32)
    conf = S.column_array(table, "joints_2d_conf").astype(np.float32)
    boxes = S.column_array(table, "bbox").astype(np.float32) if "bbox" in table.column_names \
        else None
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    combo = np.array(["\x1f".join(map(str, t)) for t in zip(*key_cols)], dtype=object)
    uniq, inv = np.unique(combo, return_inverse=True)
    out: dict[GroupKey, PeopleGroup] = {}
    for gi, k in enumerate(uniq):
        rows = np.flatnonzero(inv == gi)
        rows = rows[np.lexsort((person[rows], frames[rows]))]
        f, p = frames[rows], person[rows]
        st = status[rows].copy()
        dup = np.zeros(len(rows), bool)
        dup[1:] = (f[1:] == f[:-1]) & (p[1:] == p[:-1])
        gk = tuple(k.split("\x1f"))
        st[dup] = [f"duplicate person id {int(pp)} in camera {gk[4]} frame {int(ff)} "
                   f"({where}); the first row is kept" for ff, pp in zip(f[dup], p[dup])]
        c = conf[rows].copy()
        bad = ~np.isfinite(joints[rows]).all(-1) | ~np.isfinite(c) | (st != "")[:, None]
        c = np.where(bad, 0.0, np.clip(c, 0.0, None)).astype(np.float32)
        j = np.where((c > 0)[..., None], joints[rows], np.nan).astype(np.float32)
        b = boxes_from_joints(j, c) if boxes is None else boxes[rows]
        out[gk] = PeopleGroup(f, p, j, c, b, st)
    return out


def _first_person_groups(people: dict[GroupKey, PeopleGroup], where: str
                         ) -> dict[GroupKey, _Group]:
    """One person per frame (the lowest usable index): what ``detect`` gives callers that know
    one person only (``detector-check``)."""
    out = {}
    for gk, g in people.items():
        ok = g.status == ""
        f = g.frames[ok]
        first = np.concatenate([[True], f[1:] != f[:-1]]) if len(f) else np.zeros(0, bool)
        rows = np.flatnonzero(ok)[first]
        out[gk] = _make_group(g.frames[rows], g.joints[rows], g.conf[rows], g.boxes[rows],
                              f"{where}: {'/'.join(gk)}")
    return out


def npz_action_key(seq: Sequence, keys: Iterable[str]) -> str | None:
    """The npz action key of ``seq`` among ``keys``: its file name as is, then in VideoPose3D's
    spelling (TakingPhoto -> Photo, WalkingDog -> WalkDog), then "action subaction" and
    "action_subaction"; None if none is present."""
    keys = set(keys)
    name = seq.name or ""
    renamed = name
    for a, b in _NPZ_RENAMES:
        renamed = renamed.replace(a, b)
    for cand in (name, renamed, f"{seq.action} {seq.subaction}", f"{seq.action}_{seq.subaction}"):
        if cand and cand in keys:
            return cand
    return None


def _npz_layout(path: Path, joint_layout: str | None, metadata: Any) -> str:
    name = joint_layout
    if name is None and isinstance(metadata, dict) and "layout_name" in metadata:
        name = str(metadata["layout_name"])
    if name is None:
        warnings.warn(f"{path}: no metadata['layout_name']; reading the joints as H36M-17 order "
                      "(pass joint_layout='coco17' for COCO order)", stacklevel=3)
        return "h36m17"
    if name not in NPZ_LAYOUTS:
        raise ValueError(f"{path}: joint layout {name!r} is not supported; known: "
                         f"{sorted(NPZ_LAYOUTS)}")
    return NPZ_LAYOUTS[name]


def _npz_joints(a: np.ndarray, layout: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(F, 17, 2|3) array in ``layout`` -> H36M-17 joints (F, 17, 2) and confidences (F, 17)."""
    if a.ndim != 3 or a.shape[1] != 17 or a.shape[2] not in (2, 3):
        raise ValueError(f"{where}: expected (frames, 17, 2 or 3), got {a.shape}")
    a = a.astype(np.float32)
    xy = a[..., :2]
    conf = a[..., 2] if a.shape[2] == 3 else np.isfinite(xy).all(-1).astype(np.float32)
    if layout == "coco17":
        xy, conf = coco17_to_h36m17(xy, conf)
    return xy, conf


def _read_detection_table(path: Path) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: detection table lacks columns {missing} "
                         f"(schema: pipeline.store.shards.DETECTION_SCHEMA)")
    expected = S.detection_schema(S.num_joints_of(schema, str(path)))  # any joint count
    for c in ("joints_2d", "joints_2d_conf", "bbox"):
        if c in schema.names and schema.field(c).type != expected.field(c).type:
            raise ValueError(f"{path}: column {c!r} has type {schema.field(c).type}, expected "
                             f"{expected.field(c).type}")
    cols = list(REQUIRED_COLUMNS) + [c for c in ("bbox", "person") if c in schema.names]
    return pq.read_table(path, columns=cols)


def _groups_from_table(table: pa.Table, where: str) -> dict[GroupKey, _Group]:
    key_cols = [table.column(c).to_pylist()
                for c in ("dataset", "subject", "action", "subaction", "camera")]
    frames = table.column("frame").to_numpy().astype(np.int64)
    joints = S.column_array(table, "joints_2d").astype(np.float32)
    conf = S.column_array(table, "joints_2d_conf").astype(np.float32)
    boxes = S.column_array(table, "bbox").astype(np.float32) if "bbox" in table.column_names \
        else None
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    conf[status != ""] = 0.0
    combo = np.array(["\x1f".join(map(str, t)) for t in zip(*key_cols)], dtype=object)
    uniq, inv = np.unique(combo, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    groups: dict[GroupKey, _Group] = {}
    for k, rows in zip(uniq, np.split(order, np.cumsum(np.bincount(inv))[:-1])):
        gk = tuple(k.split("\x1f"))
        b = None
        if boxes is not None:
            b = np.where((status[rows] == "")[:, None], boxes[rows], np.nan)
        groups[gk] = _make_group(frames[rows], joints[rows], conf[rows], b,
                                 f"{where}: {'/'.join(gk)}")
    return groups


# --- registry ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectorOptions:
    """What a detector back-end may need (each reads its own fields).

    Attributes:
        noise_px, outlier_rate, seed: the oracle's 2D noise, outlier share and seed.
        checkpoint: the 2D network's checkpoint (``net``).
        detections: the precomputed detections file or folder (``file``).
        device: where the 2D network runs: "auto" (GPU when present), "cpu", "cuda:0" ...
        allow_foreign: run the 2D network on a dataset it was not trained on (``net``).
    """

    noise_px: float = 0.0
    outlier_rate: float = 0.0
    seed: int = 0
    checkpoint: str = "outputs/runs/pose2d/best.pt"
    detections: str | None = None
    device: str = "auto"
    allow_foreign: bool = False


@dataclass(frozen=True)
class DetectorSpec:
    """One back-end of the registry: its name, a line of help and how to build it.
    ``needs_images``: False when it detects without the frames (stage 1 then reads no frame
    unless crops are written)."""

    name: str
    help: str
    build: Callable[[Manifest, DetectorOptions], Any]
    reads_ground_truth: bool = False
    needs_images: bool = True


def _build_file(manifest: Manifest, o: DetectorOptions) -> FileDetector:
    if not o.detections:
        raise DetectorUnavailable("DETECTOR=file needs DETECTIONS=path (an npz of "
                                  "positions_2d, or Parquet detection files)")
    if not Path(o.detections).exists():
        raise DetectorUnavailable(f"DETECTOR=file: detections {o.detections} do not exist")
    det = FileDetector.from_path(o.detections, manifest)
    if det.num_joints != manifest.joint_set.num_joints:
        raise DetectorUnavailable(f"DETECTOR=file: detections {o.detections} hold "
                                  f"{det.num_joints} joints, the joint set "
                                  f"{manifest.joint_set.name} of {manifest.path} has "
                                  f"{manifest.joint_set.num_joints}")
    return det


DETECTORS: dict[str, DetectorSpec] = {s.name: s for s in (
    DetectorSpec("net", "the project's 2D network (make train-2d) on the person crops",
                 lambda m, o: NetDetector(o.checkpoint, device=o.device, dataset=m.dataset,
                                          allow_foreign=o.allow_foreign, manifest=m)),
    DetectorSpec("gt", "ground-truth 2D + Gaussian noise and outliers (oracle, for ablations)",
                 lambda m, o: OracleDetector(m, o.noise_px, o.outlier_rate, o.seed),
                 reads_ground_truth=True),
    DetectorSpec("file", "precomputed detections (npz of positions_2d, or Parquet)", _build_file,
                 needs_images=False),
    DetectorSpec("mediapipe", "BlazePose (optional extra: requirements-mediapipe.txt)",
                 lambda m, o: MediaPipeDetector()),
    DetectorSpec("mediapipe-people", "BlazePose, several people per frame (its person detector "
                 "on the frame and on tiles of it, landmarks per person; same optional extra)",
                 lambda m, o: MediaPipePeopleDetector()),
)}
"""Every 2D detector back-end by name (the command line's choices come from here)."""


AUTO = "auto"
"""The detector choice that follows the manifest (:func:`resolve_detector`)."""
DETECTOR_CHOICES: tuple[str, ...] = (AUTO, *DETECTORS)
"""What the command line and ``JobConfig.detector`` accept: ``auto`` or a back-end's name."""


@dataclass(frozen=True)
class DetectorChoice:
    """A resolved detector choice: what was asked, what runs, and why in one short sentence
    (printed by every command that resolves one, recorded in config.json and predict.json)."""

    requested: str
    name: str
    reason: str

    def line(self) -> str:
        """The one line the commands print: ``detector: auto -> net: <why>`` for ``auto``,
        ``detector: gt (requested)`` otherwise."""
        if self.requested == AUTO:
            return f"detector: {AUTO} -> {self.name}: {self.reason}"
        return f"detector: {self.name} ({self.reason})"


def resolve_detector(name: str, manifest: Manifest, options: DetectorOptions | None = None
                     ) -> DetectorChoice:
    """The back-end ``name`` stands for on ``manifest``: itself, or for ``auto``

    1. the project's 2D network when its checkpoint exists and was trained on this manifest's
       ``dataset`` (or when it is missing and the manifest is a renderable synthetic one:
       ``make train-2d`` makes it, which ``make pseudolabels`` runs first);
    2. else MediaPipe when installed;
    3. else DetectorUnavailable saying why and what to do
       (``pipeline.detect.network.detector_alternatives``: ``make train-2d`` only where it can
       work on this manifest).
    """
    o = options or DetectorOptions()
    if name != AUTO:
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose one of {DETECTOR_CHOICES}")
        return DetectorChoice(name, name, "requested")
    ckpt = Path(o.checkpoint)
    if ckpt.exists():
        trained_on = network_datasets(ckpt)
        if manifest.dataset in (trained_on or ()):
            return DetectorChoice(AUTO, "net", f"the 2D network's checkpoint {ckpt} was trained "
                                               f"on dataset {manifest.dataset!r}")
        why_not = (f"the 2D network's checkpoint {ckpt} was trained on {list(trained_on)}, "
                   f"not on dataset {manifest.dataset!r}" if trained_on else
                   f"the 2D network's checkpoint {ckpt} does not record its dataset")
    elif manifest.synthetic:
        return DetectorChoice(AUTO, "net", f"synthetic manifest: `make train-2d` trains {ckpt} "
                                           "on its 2D ground truth")
    else:
        why_not = f"no 2D network checkpoint at {ckpt} for dataset {manifest.dataset!r}"
    try:
        import_mediapipe()
    except DetectorUnavailable as e:
        raise DetectorUnavailable(f"DETECTOR=auto found no detector for {manifest.path}: "
                                  f"{why_not}, and MediaPipe is not installed ({e}). "
                                  f"{detector_alternatives(manifest)}") from None
    return DetectorChoice(AUTO, "mediapipe", why_not)


def make_detector(name: str, manifest: Manifest, options: DetectorOptions | None = None,
                  **fields: Any) -> Any:
    """Build the detector ``name`` (a back-end, or ``auto``: :func:`resolve_detector`) for
    ``manifest`` from ``options`` (or keyword fields of :class:`DetectorOptions`); a ValueError
    lists the known names."""
    options = options or DetectorOptions(**fields)
    name = resolve_detector(name, manifest, options).name
    return DETECTORS[name].build(manifest, options)


def detectors_help() -> str:
    """One line per back-end, for --help."""
    return "; ".join([f"{AUTO}: the 2D network where it was trained on this dataset, else "
                      "mediapipe (the choice and why are printed)"] + [f"{s.name}: {s.help}" for s in DETECTORS.values()])

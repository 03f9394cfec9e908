"""Person crops stored in shards: one Parquet file of JPEG bytes per sequence and camera.

Layout (paths from :class:`pipeline.store.run_folder.RunFolder`)::

    crops/<subject>/<action>/<s>__<a>__<sub>__<camera>.parquet           packed, one per (sequence, camera)
    crops/<subject>/<action>/parts/<s>__<a>__<sub>__<camera>__<start>.parquet   one per detection task

Each file has :data:`CROP_SCHEMA`: ``row`` int32, ``frame`` int32, ``jpeg`` binary (empty where
the frame failed and has no crop). Row ``r`` of a packed file is the ``r``-th frame of the
sequence's planned frame list (``pipeline.job.tasks.frame_indices``), so a detection task knows the
reference of each crop before any packing: a shard's ``image_path`` is
``crops/.../<s>__<a>__<sub>__<camera>.parquet#<row>`` (:func:`crop_ref`), the same whatever the
chunking of the job.

Writes and resume (the label shards' guarantees): a detection task writes its part to a hidden
temporary name and renames it *before* its detection file, so a finished detection file always
has its crops on disk; :func:`pack` concatenates the parts of a (sequence, camera) once all its
detection tasks are done, checks that every planned row is there exactly once (a part rewritten
by a rerun, or by a rerun with other chunking, holds the same rows: duplicates are dropped by
row), writes the packed file atomically and only then deletes the parts. A packed file that
exists is finished; a rerun only removes parts (and temporary files of parts) a kill left
behind.

Reading: :class:`StoredImages` reads a whole row group (:data:`ROWS_PER_GROUP` crops, one
contiguous read) and keeps the last few groups, so a trainer that visits samples group by group
(:func:`crop_blocks`, ``train.data.EpochSampler``) opens each group once per epoch and decodes in
its DataLoader workers. Plain image files (a manifest's frames, crops of older runs) are read
with OpenCV, so a reference and a path are interchangeable wherever an image is read.

Pandas inspects a crop file as it does a label shard: ``pandas.read_parquet(path)`` gives
``row``, ``frame`` and the JPEG bytes (``cv2.imdecode``).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import shards as S
from pipeline.geometry.cameras import crop_affine

CROP_SCHEMA = pa.schema([
    pa.field("row", pa.int32(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("jpeg", pa.binary(), nullable=False),
], metadata={"contract": "epipolar-pose crop shard v1",
             "jpeg": "square person crop (bbox of the detection row), BGR JPEG; empty = no crop",
             "row": "index into the sequence's planned frames; image_path = <file>#<row>"})

ROWS_PER_GROUP = 64
"""Crops per Parquet row group: the unit of one read (about 1-2 MB at 256 px)."""
JPEG_QUALITY = 92
REF_SEP = "#"


def crop_ref(rel_path: str, row: int) -> str:
    """The ``image_path`` of crop ``row`` of the crop file ``rel_path``."""
    return f"{rel_path}{REF_SEP}{int(row)}"


def split_ref(ref: str | os.PathLike) -> tuple[str, int] | None:
    """(crop file, row) of a crop reference, None for a plain image path."""
    s = str(ref)
    path, sep, row = s.rpartition(REF_SEP)
    if not sep or not path.endswith(".parquet") or not row.isdigit():
        return None
    return path, int(row)


def encode_crop(image: np.ndarray, box: np.ndarray, size: int) -> bytes:
    """JPEG bytes of the square ``box`` (x_min, y_min, x_max, y_max) of ``image`` at size²."""
    A = crop_affine((box[:2] + box[2:]) / 2, box[2] - box[0], size)
    crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode a crop of box {box.tolist()}")
    return buf.tobytes()


def crop_table(rows: np.ndarray, frames: np.ndarray, jpegs: list[bytes]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(np.asarray(rows, np.int32)),
                                 pa.array(np.asarray(frames, np.int32)),
                                 pa.array(jpegs, pa.binary())], schema=CROP_SCHEMA)


def write_crops(path: Path, table: pa.Table) -> None:
    """Write a crop table atomically; row groups of :data:`ROWS_PER_GROUP`, JPEG uncompressed
    (it is compressed already), no dictionary."""
    S.write_table_atomic(table, path, compression="none", use_dictionary=False,
                         row_group_size=ROWS_PER_GROUP)


def pack(final: Path, parts: list[Path], frames: np.ndarray) -> bool:
    """Pack the parts of one (sequence, camera) into ``final``: one row per planned frame
    ``frames``, in order. Returns True when it wrote ``final`` (False: already packed). Parts are
    deleted once ``final`` is in place; a missing or inconsistent row is a ValueError naming
    the file and the frame, and nothing is deleted."""
    written = False
    if not final.exists():
        if not parts:
            raise FileNotFoundError(f"{final}: no crop parts to pack (were the detection tasks "
                                    "of this sequence and camera run with crops on?)")
        t = pa.concat_tables([pq.read_table(p, schema=CROP_SCHEMA) for p in parts])
        rows = t.column("row").to_numpy()
        _, first = np.unique(rows, return_index=True)  # a part rewritten by a rerun: same rows
        t = t.take(pa.array(first))
        got, want = t.column("row").to_numpy(), np.arange(len(frames))
        if len(got) != len(want) or (got != want).any():
            missing = sorted(set(want.tolist()) - set(got.tolist()))
            raise ValueError(f"{final}: parts {[p.name for p in parts]} lack rows {missing[:5]} "
                             f"(frames {[int(frames[r]) for r in missing[:5]]})")
        if (t.column("frame").to_numpy() != frames).any():
            raise ValueError(f"{final}: parts hold other frames than planned (the run's "
                             "max_frames or frame step changed?)")
        write_crops(final, t)
        written = True
    for p in parts:
        p.unlink(missing_ok=True)
    return written


class StoredImages:
    """Reads stored images by path or crop reference, decoded BGR uint8 (None when unreadable).

    One per process (file handles do not cross a fork): keeps the handles of open crop files and
    the ``cache_groups`` row groups read last (least recently used dropped first)."""

    def __init__(self, cache_groups: int = 32) -> None:
        self.cache_groups = cache_groups
        self._files: dict[str, pq.ParquetFile] = {}
        self._groups: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self.groups_read = 0

    def read(self, path: str | os.PathLike) -> np.ndarray | None:
        data = self.read_bytes(path)
        if data is None:
            return None
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def read_bytes(self, path: str | os.PathLike) -> bytes | None:
        """The encoded bytes of an image file or a crop reference (None when there is none)."""
        ref = split_ref(path)
        if ref is None:
            try:
                return Path(path).read_bytes()
            except OSError:
                return None
        file, row = ref
        group = self._group(file, row // ROWS_PER_GROUP)
        data = group[row % ROWS_PER_GROUP] if row % ROWS_PER_GROUP < len(group) else b""
        return data or None

    def _group(self, file: str, g: int) -> list[bytes]:
        key = (file, g)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        if file not in self._files:
            self._files[file] = pq.ParquetFile(file)
        pf = self._files[file]
        if g >= pf.num_row_groups:
            raise IndexError(f"{file}: no row group {g} (the file has {pf.metadata.num_rows} rows)")
        group = pf.read_row_group(g, columns=["jpeg"]).column("jpeg").to_pylist()
        self.groups_read += 1
        self._groups[key] = group
        while len(self._groups) > self.cache_groups:
            self._groups.popitem(last=False)
        return group


def crop_blocks(paths: np.ndarray) -> np.ndarray | None:
    """(N,) int64 block of each image path: samples of one crop row group share a block (read
    together); every plain image file is a block of its own. None when no path is a crop
    reference (nothing to group)."""
    keys, any_ref = [], False
    for i, p in enumerate(paths):
        ref = split_ref(p)
        any_ref |= ref is not None
        keys.append(f"{ref[0]}|{ref[1] // ROWS_PER_GROUP}" if ref else f"#{i}")
    if not any_ref:
        return None
    return np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)[1].astype(
        np.int64)

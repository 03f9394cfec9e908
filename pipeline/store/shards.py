"""The pseudo-label shard contract: one explicit pyarrow schema, an atomic writer, a reader.

Layout under a run's output folder::

    shards/subject=S1/action=Walking/S1__Walking__1__54138969-55011271.parquet
    shards/subject=S1/action=Walking/_S1__Walking__1__54138969-55011271_stats.json
    config.json          resolved configuration of the run
    geometry.parquet     one row per (subject, camera pair): E, R, t, inliers, rotation error

One file per sequence and camera pair; each written to a temporary name and renamed, its
``_stats.json`` written last. A shard whose stats file exists is finished; a rerun skips it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.joints import H36M17

NUM_JOINTS = H36M17.num_joints


def _fixed(t: pa.DataType, *dims: int) -> pa.DataType:
    for d in reversed(dims):
        t = pa.list_(t, d)
    return t


def shard_schema(num_joints: int = NUM_JOINTS, people: bool = True) -> pa.Schema:
    """The shard schema (DESIGN.md §3). ``subject`` and ``action`` are also hive partitions.

    ``person`` (int32): the person's track id within its sequence (``pipeline.people.tracks``), on
    runs whose detections hold several people per frame. A single-person run writes its shards
    without the column (``people=False``: the files are those of before it existed); every
    reader sees it as null there."""
    J = num_joints
    f32 = pa.float32()
    return pa.schema([
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("subaction", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("partner_camera", pa.string(), nullable=False),
        pa.field("image_path", pa.string(), nullable=False),
        pa.field("bbox", _fixed(f32, 4), nullable=False),
        pa.field("joints_2d", _fixed(f32, J, 2), nullable=False),
        pa.field("joints_2d_conf", _fixed(f32, J), nullable=False),
        pa.field("joints_3d", _fixed(f32, J, 3), nullable=False),
        pa.field("valid", _fixed(pa.bool_(), J), nullable=False),
        pa.field("reproj_error_px", _fixed(f32, J), nullable=False),
        pa.field("pair_inlier_ratio", f32, nullable=False),
        pa.field("pair_rot_deg_to_gt", f32, nullable=True),
        pa.field("gt_joints_3d", _fixed(f32, J, 3), nullable=True),
    ] + ([pa.field("person", pa.int32(), nullable=True)] if people else []),
               metadata={"contract": "epipolar-pose pseudo-label shard v1",
                 "bbox": "x_min,y_min,x_max,y_max pixels",
                 "joints_3d": "camera frame, root-relative; scale: see config.json 'scale'"})


SHARD_SCHEMA = shard_schema()
PARTITION_COLUMNS = ("subject", "action")
OPTIONAL_COLUMNS = ("person",)
"""Columns a shard written before they existed may lack: read back as nulls."""


def file_schema(num_joints: int = NUM_JOINTS) -> pa.Schema:
    """What each shard file holds: the partition columns live in the folder names (hive style),
    so that pandas, pyarrow and Dask read a folder of shards without a type clash."""
    full = shard_schema(num_joints)
    return pa.schema([f for f in full if f.name not in PARTITION_COLUMNS], metadata=full.metadata)


FILE_SCHEMA = file_schema()


def num_joints_of(schema: pa.Schema, where: str, column: str = "joints_2d") -> int:
    """The joint count J of a shard or detection schema, read from its ``column`` (any J: the
    manifest's joint set decides it)."""
    idx = schema.get_field_index(column)
    if idx < 0:
        raise ValueError(f"{where}: column {column!r} is missing")
    t = schema.field(idx).type
    if not pa.types.is_fixed_size_list(t):
        raise ValueError(f"{where}: column {column!r} has type {t}, expected a fixed-size list "
                         "of joints")
    return t.list_size
PARTITIONING = ds.partitioning(pa.schema([(c, pa.string()) for c in PARTITION_COLUMNS]),
                               flavor="hive")


def _fixed_array(x: np.ndarray, t: pa.DataType) -> pa.Array:
    """Build a (nested) fixed-size list array from an (N, ...) numpy array without copies per row."""
    flat = pa.array(np.ascontiguousarray(x).reshape(-1), type=_leaf(t))
    for size in reversed(x.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _leaf(t: pa.DataType) -> pa.DataType:
    while pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


def to_table(cols: dict[str, Any], schema: pa.Schema | None = None) -> pa.Table:
    """Columns (numpy arrays or scalars broadcast to every row) -> a table with the exact schema.

    Array columns have shape (N, ...) matching the fixed-size list dims. ``gt_joints_3d`` may be
    None (null for every row); ``pair_rot_deg_to_gt`` may be NaN or None (null).
    """
    schema = SHARD_SCHEMA if schema is None else schema
    n = len(cols["frame"])
    arrays = []
    for f in schema:
        v = cols.get(f.name)
        if v is None:
            if not f.nullable:
                raise KeyError(f"shard column {f.name!r} is missing")
            arrays.append(pa.nulls(n, f.type))
        elif pa.types.is_fixed_size_list(f.type):
            a = np.asarray(v)
            if a.shape[0] != n:
                raise ValueError(f"shard column {f.name!r} has {a.shape[0]} rows, expected {n}")
            arrays.append(_fixed_array(a.astype(_leaf(f.type).to_pandas_dtype()), f.type))
        elif np.ndim(v) == 0:
            if isinstance(v, (float, np.floating)) and not np.isfinite(v):
                arrays.append(pa.nulls(n, f.type))
            else:
                arrays.append(pa.array([v] * n, type=f.type))
        else:
            a = np.asarray(v)
            if len(a) != n:
                raise ValueError(f"shard column {f.name!r} has {len(a)} rows, expected {n}")
            mask = ~np.isfinite(a) if f.nullable and a.dtype.kind == "f" else None
            arrays.append(pa.array(a, type=f.type, mask=mask))
    return pa.Table.from_arrays(arrays, schema=schema)


def shard_name(subject: str, action: str, subaction: str, cam_a: str, cam_b: str) -> str:
    return f"{subject}__{action}__{subaction}__{cam_a}-{cam_b}"


def shard_dir(out: Path, subject: str, action: str) -> Path:
    return Path(out) / "shards" / f"subject={subject}" / f"action={action}"


def stats_path(parquet_path: Path) -> Path:
    # Leading underscore: pyarrow and pandas skip it when they read the folder as a dataset.
    return parquet_path.with_name("_" + parquet_path.name.replace(".parquet", "_stats.json"))


def is_finished(parquet_path: Path) -> bool:
    return stats_path(parquet_path).exists() and parquet_path.exists()


def temporary_path(path: Path) -> Path:
    """The hidden name a file is written to before it is renamed into place (per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def temporaries(folder: Path, name_pattern: str) -> list[Path]:
    """Temporary files (:func:`temporary_path`, any process) in ``folder`` of the files whose
    names match the glob ``name_pattern``: what a killed writer left behind."""
    return sorted(Path(folder).glob(f".{name_pattern}.tmp-*"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
                       .encode())


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_shard(table: pa.Table, path: Path, stats: dict[str, Any]) -> None:
    """Write ``table`` to ``path`` atomically (temporary name, then rename), stats file last.

    The partition columns (subject, action) are dropped from the file: the folder names hold them.
    """
    full = shard_schema(num_joints_of(table.schema, str(path)),
                        people="person" in table.schema.names)
    if not table.schema.equals(full, check_metadata=False):
        raise ValueError(f"{path}: table schema differs from shard_schema(J)")
    for c in PARTITION_COLUMNS:
        values = table.column(c).unique().to_pylist()
        if values != [path.parent.name.split("=", 1)[1] if c == "action"
                      else path.parent.parent.name.split("=", 1)[1]]:
            raise ValueError(f"{path}: column {c!r} holds {values}, not the folder's partition")
    table = table.drop_columns(list(PARTITION_COLUMNS)).replace_schema_metadata(full.metadata)
    # Hidden temporary name (leading dot): pyarrow's dataset discovery ignores it.
    write_table_atomic(table, path)
    write_json_atomic(stats_path(path), stats)


def read_shards(out: str | os.PathLike, filters: Any = None, columns: list[str] | None = None
                ) -> pa.Table:
    """Read every finished shard under ``out`` (a run folder or its ``shards`` folder).

    Files without a stats file (unfinished) are skipped; the schema is checked and a column of
    the wrong type is refused with its name. Any joint count J, one for all files.
    """
    root = Path(out)
    if (root / "shards").is_dir():
        root = root / "shards"
    files = sorted(str(p) for p in root.rglob("*.parquet") if is_finished(p))
    if not files:
        raise FileNotFoundError(f"no finished shards under {root}")
    counts = {f: check_schema(pq.read_schema(f), f) for f in files}
    if len(set(counts.values())) > 1:
        other = next(f for f in files if counts[f] != counts[files[0]])
        raise ValueError(f"{other}: shard holds {counts[other]} joints, {files[0]} holds "
                         f"{counts[files[0]]}; one joint set per dataset")
    # The full schema: a column of OPTIONAL_COLUMNS missing from an older file reads as nulls.
    J = counts[files[0]]
    schema = pa.schema([f for f in shard_schema(J) if f.name not in PARTITION_COLUMNS]
                       + [pa.field(c, pa.string()) for c in PARTITION_COLUMNS])
    dataset = ds.dataset(files, schema=schema, format="parquet", partitioning=PARTITIONING,
                         partition_base_dir=str(root))
    table = dataset.to_table(columns=columns, filter=_filter_expr(filters))
    return table.select([f.name for f in SHARD_SCHEMA if columns is None or f.name in columns])


def _filter_expr(filters: Any):
    if filters is None:
        return None
    import pyarrow.compute as pc

    expr = None
    for name, op, value in filters:
        f = pc.field(name)
        term = {"==": f == value, "!=": f != value, "<": f < value, ">": f > value,
                "<=": f <= value, ">=": f >= value}.get(op)
        if op == "in":
            term = f.isin(value)
        if term is None:
            raise ValueError(f"unsupported filter operator {op!r}")
        expr = term if expr is None else expr & term
    return expr


def check_schema(schema: pa.Schema, where: str) -> int:
    """Refuse a shard file whose columns differ from the contract (for its joint count J, read
    from ``joints_3d``), naming the column; returns J."""
    idx = schema.get_field_index("joints_3d")
    t = schema.field(idx).type if idx >= 0 else None
    J = t.list_size if t is not None and pa.types.is_fixed_size_list(t) else NUM_JOINTS
    for f in file_schema(J):
        idx = schema.get_field_index(f.name)
        if idx < 0 and f.name in OPTIONAL_COLUMNS:
            continue
        if idx < 0:
            raise ValueError(f"{where}: shard column {f.name!r} is missing")
        if not schema.field(idx).type.equals(f.type):
            raise ValueError(f"{where}: shard column {f.name!r} has type {schema.field(idx).type}, "
                             f"expected {f.type}")
    return J


def column_array(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as an (N, ...) numpy array (no per-row Python objects)."""
    col = table.column(name).combine_chunks()
    shape = []
    t = col.type
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        t = t.value_type
    if col.null_count:
        raise ValueError(f"column {name!r} has nulls")
    values = col
    for _ in shape:
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).reshape((len(col), *shape))


def detection_schema(num_joints: int = NUM_JOINTS, people: bool = False) -> pa.Schema:
    """Intermediate 2D detections (stage 1 keeps them so geometry can re-run without
    re-detecting). One row per frame and camera; ``status`` is "" when usable, else the reason
    (unreadable frame, no person, non-finite joints ...). ``bbox`` is the square crop box.
    The columns it shares with the shards are taken from the shard schema.

    ``people``: several people per frame (``pipeline.people.tracks``): one row per frame, camera and
    detected person, with the detector's ``person`` index (int32; -1 on a row that records a
    frame without anybody). Without it, exactly the single-person schema of before."""
    shared = shard_schema(num_joints)
    names = ("dataset", "subject", "action", "subaction", "camera", "frame", "image_path", "bbox",
             "joints_2d", "joints_2d_conf")
    extra = [pa.field("person", pa.int32(), nullable=False)] if people else []
    return pa.schema([shared.field(n) for n in names]
                     + [pa.field("status", pa.string(), nullable=False)] + extra,
                     metadata={"contract": "epipolar-pose 2D detections v1",
                               "bbox": "square crop box x_min,y_min,x_max,y_max pixels",
                               "joints_2d": "distorted pixels of the original image; NaN when "
                                            "status != ''"})


DETECTION_SCHEMA = detection_schema()


def write_table_atomic(table: pa.Table, path: Path, **options: Any) -> None:
    """Write any Parquet table to a hidden temporary name, then rename it into place
    (``options``: ``pyarrow.parquet.write_table``'s; zstd compression unless given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    pq.write_table(table, tmp, **{"compression": "zstd", **options})
    os.replace(tmp, path)

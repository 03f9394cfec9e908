import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.store import shards as S


def _cols(subject="S1", n=6, J=17, seed=0):
    rng = np.random.default_rng(seed)
    return dict(dataset="synthetic", subject=subject, action="Walking", subaction="1",
                frame=np.arange(n), camera="a", partner_camera="b",
                image_path=[f"crops/{i}.jpg" for i in range(n)], bbox=rng.uniform(0, 100, (n, 4)),
                joints_2d=rng.normal(size=(n, J, 2)), joints_2d_conf=rng.uniform(size=(n, J)),
                joints_3d=rng.normal(size=(n, J, 3)), valid=rng.uniform(size=(n, J)) > 0.2,
                reproj_error_px=rng.uniform(size=(n, J)), pair_inlier_ratio=0.9,
                pair_rot_deg_to_gt=float("nan"), gt_joints_3d=None)


def _write(tmp_path, subject, seed=0):
    cols = _cols(subject, seed=seed)
    p = S.shard_dir(tmp_path, subject, "Walking") / (S.shard_name(subject, "Walking", "1", "a", "b") + ".parquet")
    S.write_shard(S.to_table(cols), p, {"rows": 6})
    return p, cols


def test_round_trip_with_exact_schema(tmp_path):
    p, cols = _write(tmp_path, "S1")
    _write(tmp_path, "S9", seed=1)
    t = S.read_shards(tmp_path, filters=[("subject", "==", "S1")])
    assert t.num_rows == 6 and t.column_names == S.SHARD_SCHEMA.names
    assert np.allclose(S.column_array(t, "joints_3d"), cols["joints_3d"].astype(np.float32))
    assert np.array_equal(S.column_array(t, "valid"), cols["valid"])
    assert t.column("pair_rot_deg_to_gt").null_count == 6
    assert pq.read_schema(p).equals(S.FILE_SCHEMA, check_metadata=False)


def test_pandas_reads_a_folder_of_shards(tmp_path):
    _write(tmp_path, "S1")
    _write(tmp_path, "S9", seed=1)
    df = pd.read_parquet(tmp_path / "shards", filters=[("subject", "==", "S9")])
    assert len(df) == 6 and set(df["subject"]) == {"S9"}
    assert np.stack(df["joints_3d"].iloc[0]).shape == (17, 3)


def test_unfinished_and_temporary_files_are_not_shards(tmp_path):
    p, _ = _write(tmp_path, "S1")
    S.stats_path(p).unlink()  # as if killed between the rename and the stats file
    with pytest.raises(FileNotFoundError):
        S.read_shards(tmp_path)
    assert not S.is_finished(p)


def test_wrong_schema_is_refused_naming_the_column(tmp_path):
    p, _ = _write(tmp_path, "S1")
    t = pq.read_table(p)
    t = t.set_column(t.schema.get_field_index("frame"), "frame", t.column("frame").cast("int64"))
    pq.write_table(t, p)
    with pytest.raises(ValueError, match="'frame'"):
        S.read_shards(tmp_path)


def test_missing_column_and_wrong_rows():
    cols = _cols()
    cols.pop("joints_3d")
    with pytest.raises(KeyError, match="joints_3d"):
        S.to_table(cols)
    cols = _cols()
    cols["valid"] = cols["valid"][:3]
    with pytest.raises(ValueError, match="valid"):
        S.to_table(cols)

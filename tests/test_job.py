"""Stage 1 end to end on a tiny rendered synthetic set, through a real Dask LocalCluster."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eval.metrics import mpjpe
from pipeline.store import shards as S
from pipeline.store.crop_shards import StoredImages
from pipeline.geometry.modes import GEOMETRY_MODES
from pipeline.job.plan import JobConfig, run_job, shards_hint
from pipeline.geometry.hypotheses import MIN_MARGIN
from pipeline.job.tasks import labelled_cameras
from tests.conftest import SYNTHETIC_MANIFEST

FRAMES = 12
SUBJECTS = ("S1", "S9")


def _cfg(root, out, **kw):
    base = dict(manifest=str(SYNTHETIC_MANIFEST), out=str(out), root=str(root), detector="gt",
                subjects=SUBJECTS, chunk_frames=8, crop_size=64)
    base.update(kw)
    return JobConfig(**base)


def _labels(out):
    t = S.read_shards(out)
    return (S.column_array(t, "joints_3d"), S.column_array(t, "gt_joints_3d"),
            S.column_array(t, "valid"), t)


@pytest.mark.parametrize("geometry", ["pooled", "multiview", "calibrated", "calibrated-multiview",
                                      "per-frame-refit"])
def test_noise_free_labels_match_ground_truth(tiny_root, tmp_path, client, geometry):
    cfg = _cfg(tiny_root, tmp_path / geometry, geometry=geometry)
    summary = run_job(cfg, client, progress=False)
    assert summary.failed_frames == 0 and summary.exit_code == 0
    X, gt, valid, t = _labels(cfg.out)
    assert t.schema.equals(S.SHARD_SCHEMA, check_metadata=False) or t.column_names == S.SHARD_SCHEMA.names
    assert valid.mean() > 0.95
    # 2 subjects x 5 actions x FRAMES frames x 4 cameras, each camera labelled at least once
    cams = set(zip(t.column("subject").to_pylist(), t.column("camera").to_pylist()))
    assert len(cams) == 8
    metric = GEOMETRY_MODES[geometry].metric
    err = mpjpe(X, gt, valid, alignment="none" if metric else "scale")
    assert np.median(err) < 1.0, f"{geometry}: median label error {np.median(err):.3f} mm"
    # every row's crop is in a crop shard and is the configured size
    images = StoredImages()
    for p in t.column("image_path").to_pylist()[::97]:
        assert images.read(cfg.run.path / p).shape == (64, 64, 3)
    if geometry in ("pooled", "multiview"):  # fitted pairs: hypotheses compared, none ambiguous
        geo = cfg.run.geometry()
        assert {"cheirality", "cost_margin", "runner_up_deg", "ambiguous"} <= set(geo.columns)
        assert geo["ok"].all() and not geo["ambiguous"].any()
        assert (geo["cost_margin"] > MIN_MARGIN).all() and (geo["cheirality"] > 0.99).all()


def test_per_frame_is_worse_than_pooled_at_2px(tiny_root, tmp_path, client):
    errs = {}
    for geometry in ("per-frame", "pooled"):
        cfg = _cfg(tiny_root, tmp_path / geometry, geometry=geometry, noise_px=2.0,
                   ransac_threshold_px=2.0)
        run_job(cfg, client, progress=False)
        X, gt, valid, _ = _labels(cfg.out)
        errs[geometry] = float(np.nanmean(mpjpe(X, gt, valid, alignment="procrustes")))
    assert errs["pooled"] < errs["per-frame"], errs


def test_rerun_skips_finished_work_and_gives_identical_shards(tiny_root, tmp_path, client):
    cfg = _cfg(tiny_root, tmp_path / "run", noise_px=1.0)
    first = run_job(cfg, client, progress=False)
    before = {p: p.read_bytes() for p in (cfg.run.path / "shards").rglob("*.parquet")}
    second = run_job(cfg, client, progress=False)
    assert first.shards_written == len(before) and second.shards_written == 0
    assert second.shards_skipped == len(before)
    assert {p: p.read_bytes() for p in (cfg.run.path / "shards").rglob("*.parquet")} == before
    # The rerun knows which cameras the skipped shards label: same severities, same exit.
    assert second.pairs_losing_labels == first.pairs_losing_labels
    assert second.exit_code == first.exit_code
    for shard in before:
        t = pq.read_table(shard, columns=["camera", "valid"])
        has = np.asarray(t.column("camera").to_pylist())[S.column_array(t, "valid").any(-1)]
        assert labelled_cameras(shard) == sorted(set(has)) and len(has)


def test_corrupt_frame_is_recorded_and_the_rest_completes(tiny_root, tmp_path, client):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    cfg = _cfg(root, tmp_path / "run")
    from pipeline.store.manifest import load_manifest

    m = load_manifest(SYNTHETIC_MANIFEST, root=str(root))
    seq = [s for s in m.sequences if s.subject == "S1"][0]
    bad = m.frame_path(seq, seq.cameras[1], 3)
    bad.write_bytes(b"not a jpeg")
    summary = run_job(cfg, client, progress=False)
    assert summary.failed_frames == 1 and summary.exit_code == 2
    table = pq.read_table(cfg.run.path / "failures.parquet")
    assert table.schema.field("frame").type == pa.int32()  # typed, not every column as text
    assert table.schema.field("reason").type == pa.string()
    fails = table.to_pandas()
    row = fails[fails["stage"] == "detect"].iloc[0]
    assert row["camera"] == seq.cameras[1] and int(row["frame"]) == 3
    assert str(bad.name) in row["reason"] or "frame 3" in row["reason"]
    t = S.read_shards(cfg.out)
    df = t.select(["subject", "action", "camera", "frame"]).to_pandas()
    hit = df[(df.subject == "S1") & (df.action == seq.action) & (df.camera == seq.cameras[1])]
    assert 3 not in set(hit.frame) and len(hit) > 0  # the frame is dropped, its neighbours kept
    assert shards_hint(cfg).endswith("filters=[('subject', '==', 'S1')]))")  # a subject it wrote


def test_rerun_with_another_configuration_is_refused(tiny_root, tmp_path, client):
    cfg = _cfg(tiny_root, tmp_path / "run", max_frames=4)
    run_job(cfg, client, progress=False)
    with pytest.raises(ValueError, match="noise_px: 0.0 -> 3.0"):
        run_job(_cfg(tiny_root, tmp_path / "run", max_frames=4, noise_px=3.0), client,
                progress=False)

"""Crops stored in shards (pipeline/store/crop_shards.py): one file per sequence and camera, packed
from per-task parts with no crop lost or duplicated, read back row group by row group."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.store import crop_shards as CS
from pipeline.job import tasks as T
from pipeline.geometry.cameras import crop_affine
from pipeline.job.plan import JobConfig, plan_chunks, run_job
from pipeline.store.manifest import load_manifest
from tests import faults
from tests.conftest import SYNTHETIC_MANIFEST
from train.data import EpochSampler

FRAMES = 10
SUBJECTS = ("S1",)
CROP = 48


@pytest.fixture(scope="module")
def clean(tiny_root, tmp_path_factory, client) -> JobConfig:
    """One uninterrupted run, shared by the tests that read it."""
    cfg = _cfg(tiny_root, tmp_path_factory.mktemp("crops") / "clean")
    assert run_job(cfg, client, progress=False).exit_code == 0
    return cfg


def _cfg(root, out, **kw) -> JobConfig:
    base = dict(manifest=str(SYNTHETIC_MANIFEST), out=str(out), root=str(root), detector="gt",
                subjects=SUBJECTS, chunk_frames=4, crop_size=CROP)
    base.update(kw)
    return JobConfig(**base)


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_crop_files_grow_with_sequences_and_cameras_not_frames(tiny_root, tmp_path, client,
                                                               clean):
    m = load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root))
    views = sum(len(s.cameras) for s in m.sequences if s.subject in SUBJECTS)
    counts = {}
    for n in (4, FRAMES):
        cfg = _cfg(tiny_root, tmp_path / f"f{n}", max_frames=n) if n < FRAMES else clean
        if n < FRAMES:
            assert run_job(cfg, client, progress=False).exit_code == 0
        crops = _files(cfg.run.crops_dir)
        assert len(crops) == views, [p.name for p in crops]  # packed; no part, no temp file
        counts[n] = len([p for p in _files(cfg.run.path) if "detections" not in p.parts])
    # everything but the detection files (one per task of chunk_frames) is independent of frames
    assert counts[4] == counts[FRAMES]


def test_image_path_is_a_reference_to_the_crop_of_the_rows_box(tiny_root, clean):
    cfg = clean
    m = load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root))
    # pandas reads the label shards as before; image_path names a crop shard and a row
    df = pd.read_parquet(cfg.run.shards_dir, filters=[("subject", "==", "S1")])
    assert len(df) and df["image_path"].str.match(r"crops/S1/\w+/S1__\w+__\d+__\w+\.parquet#\d+$").all()
    images = CS.StoredImages()
    for r in df.sample(12, random_state=0).itertuples():
        seq = next(s for s in m.sequences if s.subject == "S1" and s.action == r.action)
        frame = cv2.imread(str(m.frame_path(seq, r.camera, int(r.frame))))
        box = np.asarray(r.bbox, np.float64)
        A = crop_affine((box[:2] + box[2:]) / 2, box[2] - box[0], CROP)
        want = cv2.warpAffine(frame, A, (CROP, CROP), flags=cv2.INTER_LINEAR)
        got = images.read(cfg.run.path / r.image_path)
        assert got.shape == (CROP, CROP, 3)
        assert np.abs(got.astype(float) - want).mean() < 4.0  # JPEG at quality 92
        file, row = CS.split_ref(r.image_path)
        assert pd.read_parquet(cfg.run.path / file)["frame"].iloc[row] == r.frame


def test_interrupted_job_resumes_with_no_crop_lost_or_duplicated(tiny_root, tmp_path, client,
                                                                 clean):
    """Leave the states a kill can leave in crops/ (found by running the job's own tasks and
    stopping between their writes), rerun the job, get the clean run's crops exactly."""
    cfg = _cfg(tiny_root, tmp_path / "run", chunk_frames=3)  # other chunking, same crops
    chunks = plan_chunks(cfg)
    for key, cam, frames in chunks:
        T.detect_chunk(cfg, key, cam, frames)
    seqs = {s.key: s for s in T.selected_sequences(cfg)}
    # (1) killed after a part was renamed, before its detection file: the chunk runs again
    key, cam, frames = chunks[1]
    cfg.run.detection_file(seqs[key], cam, frames[0]).unlink()
    # (2) killed after packing, before the parts were removed: the rerun only removes them
    key2, cam2, _ = chunks[-1]
    parts = cfg.run.crop_parts(seqs[key2], cam2)
    saved = {p: p.read_bytes() for p in parts}
    assert T.pack_crops(cfg, key2, cam2)
    for p, data in saved.items():
        p.write_bytes(data)
    # (3) killed while writing a part: a hidden temporary file, never read
    tmp = parts[0].with_name(f".{parts[0].name}.tmp-999")
    tmp.write_bytes(saved[parts[0]][:100])
    # (4) a part of a killed run with other chunking: its rows overlap two parts of this one
    key3, cam3, frames3 = chunks[0]
    T.detect_chunk(cfg, key3, cam3, frames3[1:] + [frames3[-1] + 1])
    cfg.run.detection_file(seqs[key3], cam3, frames3[1]).unlink()

    summary = run_job(cfg, client, progress=False)
    assert summary.exit_code == 0 and summary.detection_rows == len(seqs) * 4 * FRAMES
    assert not tmp.exists()  # a killed writer's temporary file is removed by the packing
    assert faults.crop_differences(clean.out, cfg.out) == []
    assert faults.shard_differences(clean.out, cfg.out) == []


def test_pack_drops_duplicate_rows_and_refuses_missing_ones(tmp_path):
    frames = np.arange(0, 20, 2)
    jpeg = [bytes([i]) * (i + 1) for i in range(10)]

    def part(name, rows):
        p = tmp_path / "parts" / name
        CS.write_crops(p, CS.crop_table(rows, frames[rows], [jpeg[r] for r in rows]))
        return p

    final = tmp_path / "c.parquet"
    parts = [part("a.parquet", np.arange(0, 4)), part("b.parquet", np.arange(2, 10))]
    assert CS.pack(final, parts, frames)
    t = pq.read_table(final)
    assert t.column("row").to_pylist() == list(range(10))
    assert t.column("jpeg").to_pylist() == jpeg and not any(p.exists() for p in parts)
    assert pq.ParquetFile(final).metadata.row_group(0).num_rows == 10
    assert not CS.pack(final, [], frames)  # packed already: nothing to do

    gap = tmp_path / "gap.parquet"
    parts = [part("c.parquet", np.arange(0, 4)), part("d.parquet", np.arange(5, 10))]
    with pytest.raises(ValueError, match=r"gap\.parquet.*rows \[4\].*frames \[8\]"):
        CS.pack(gap, parts, frames)
    assert not gap.exists() and all(p.exists() for p in parts)  # nothing lost


def test_stored_images_read_each_row_group_once(tmp_path):
    n = 2 * CS.ROWS_PER_GROUP + 5
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    jpeg = [cv2.imencode(".png", im)[1].tobytes() for im in imgs]  # lossless: exact compare
    jpeg[7] = b""  # a failed frame
    path = tmp_path / "crops.parquet"
    CS.write_crops(path, CS.crop_table(np.arange(n), np.arange(n), jpeg))
    reader = CS.StoredImages()
    refs = [CS.crop_ref(str(path), r) for r in range(n)]
    for r, ref in enumerate(refs):
        got = reader.read(ref)
        assert (got is None) if r == 7 else np.array_equal(got, imgs[r])
    assert reader.groups_read == 3
    plain = tmp_path / "frame.png"
    cv2.imwrite(str(plain), imgs[0])
    assert np.array_equal(reader.read(plain), imgs[0]) and reader.read(tmp_path / "no.png") is None
    assert CS.split_ref(plain) is None and CS.split_ref(refs[3]) == (str(path), 3)
    blocks = CS.crop_blocks(np.array(refs + [str(plain)], dtype=object))
    assert len(set(blocks[:CS.ROWS_PER_GROUP])) == 1 and len(set(blocks)) == 4
    assert CS.crop_blocks(np.array([str(plain)])) is None


def test_block_shuffle_keeps_row_groups_together_and_visits_every_sample():
    blocks = np.repeat(np.arange(20), 64)
    s = EpochSampler(len(blocks), seed=3, blocks=blocks, window=128)
    order = s.order()
    assert sorted(order.tolist()) == list(range(len(blocks)))
    # each window of 128 samples spans about 2 row groups (3 where blocks straddle it) ...
    spans = [len(set(blocks[order[i:i + 128]])) for i in range(0, len(order), 128)]
    assert max(spans) <= 3
    # ... the blocks' order and the order inside windows change with the epoch
    s.set_epoch(1)
    assert not np.array_equal(s.order(), order)
    assert not np.array_equal(order[:128], np.sort(order[:128]))

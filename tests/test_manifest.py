import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.store.manifest import ManifestError, load_manifest, parse_manifest
from tests.conftest import SYNTHETIC_MANIFEST


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(SYNTHETIC_MANIFEST.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_synthetic_manifest_loads_with_real_h36m_cameras(h36m_cameras):
    m = load_manifest(SYNTHETIC_MANIFEST)
    assert m.dataset == "synthetic"
    assert m.camera_ids == tuple(h36m_cameras["camera_ids"])
    assert len(m.sequences) == 23 * 5                        # 20 training people, S8, S9, S11
    assert set(m.splits["train"]) == {"S1", "S5", "S6", "S7"} | {f"X{i:02d}" for i in range(1, 17)}
    assert np.array_equal(m.camera("55011271", "X02").R, m.camera("55011271", "S5").R)
    assert set(m.splits["val"]) == {"S8"}                    # model selection, never trained on
    assert set(m.splits["test"]) == {"S9", "S11"}
    assert {q.subject for q in m.sequences} >= {"S8"}        # stage 1 labels the val subject
    cam = m.camera("55011271", "S9")
    ref = h36m_cameras["extrinsics"]["S9"]["55011271"]
    assert np.allclose(cam.R, ref["R_w2c"], atol=1e-8)
    assert np.allclose(cam.center, ref["C_mm"], atol=0.05)
    assert np.isclose(cam.K[0, 0], h36m_cameras["intrinsics"]["55011271"]["fx"] * 0.25, atol=1e-3)
    assert m.root == (SYNTHETIC_MANIFEST.parent / "../outputs/data/synthetic").resolve()


def test_root_override_and_paths(tmp_path):
    m = load_manifest(SYNTHETIC_MANIFEST, root=str(tmp_path))
    seq = m.sequences_in("test")[0]
    assert m.frame_path(seq, "54138969", 7) == tmp_path / f"images/{seq.subject}/{seq.action}_1/54138969/000007.jpg"
    assert m.gt_path(seq) == tmp_path / f"gt/{seq.subject}/{seq.action}_1.npz"
    with pytest.raises(ManifestError, match="root"):
        load_manifest(SYNTHETIC_MANIFEST, root=str(tmp_path / "missing")).check_sources()


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r.pop("cameras"), "cameras"),
    (lambda r: r.update(colour="red"), "unknown keys"),
    (lambda r: r["cameras"]["54138969"].update(fx="big"), "cameras.54138969.fx"),
    (lambda r: r["cameras"]["54138969"].pop("cy"), "cameras.54138969.cy"),
    (lambda r: r["sequences"][3].update(cameras=["54138969", "nope"]), "sequences[3].cameras"),
    (lambda r: r["sequences"][0].pop("subject"), "sequences[0].subject"),
    (lambda r: r["frames"].update(pattern="images/{subject}/{camera}.jpg"), "frames.pattern"),
    (lambda r: r["frames"].update(pattern="images/{subjekt}/{frame}.jpg"), "frames.pattern"),
    (lambda r: r["frames"].update(kind="webcam"), "frames.kind"),
    (lambda r: r["extrinsics"]["S1"]["54138969"].update(R=[[1, 0, 0], [0, 1, 0], [0, 0, 2]]),
     "extrinsics.S1.54138969.R"),
    (lambda r: r.update(joint_set="smpl24"), "joint_set"),
    (lambda r: r["sequences"].append(dict(r["sequences"][0])), "duplicate"),
])
def test_bad_manifests_name_file_and_key(tmp_path, raw, mutate, key):
    bad = copy.deepcopy(raw)
    mutate(bad)
    path = _write(tmp_path, bad)
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("dataset: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(p)


def test_env_var_root(tmp_path, raw, monkeypatch):
    raw["root"] = "${MY_DATA_ROOT}/set"
    monkeypatch.setenv("MY_DATA_ROOT", str(tmp_path))
    m = parse_manifest(raw, tmp_path / "x.yaml")
    assert m.root == tmp_path / "set"
    monkeypatch.delenv("MY_DATA_ROOT")
    with pytest.raises(ManifestError, match="root"):
        parse_manifest(raw, tmp_path / "x.yaml")


def test_frame_count_from_disk(tmp_path):
    m = load_manifest(SYNTHETIC_MANIFEST, root=str(tmp_path))
    seq = m.sequences[0]
    for i in range(4):
        p = m.frame_path(seq, seq.cameras[0], i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert list(m.frame_indices(seq)) == [0, 1, 2, 3]

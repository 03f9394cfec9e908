"""Your own rig (issue 13): a manifest with its own upper-body joint set, three cameras with
known intrinsics and no extrinsics, a precomputed-detections Parquet file and NO images.

Stage 1 with ``--detector file --no-crops`` must label it in seconds, through the real Dask job,
root-relative to a fallback root (the neck) where the first root (a hip) is hidden.
"""
from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
import yaml

from eval.metrics import mpjpe
from pipeline.geometry import triangulation as tri
from pipeline.geometry.cameras import rotation_error_deg
from pipeline.store.run_folder import RunFolder
from pipeline.store import shards as S
from pipeline.job.plan import JobConfig, local_client, preflight, run_job
from pipeline.joints import JointSet
from pipeline.store.manifest import ManifestError, load_manifest
from tools.detector_check import verdict

NAMES = ["l_hip", "r_hip", "neck", "head", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
         "l_wrist", "r_wrist"]
PARENTS = {"neck": None, "head": "neck", "l_shoulder": "neck", "r_shoulder": "neck",
           "l_elbow": "l_shoulder", "r_elbow": "r_shoulder", "l_wrist": "l_elbow",
           "r_wrist": "r_elbow", "l_hip": "neck", "r_hip": "neck"}
# Body frame (mm): x to the person's left, y down, z forward; neck at the origin.
TEMPLATE = {"neck": (0, 0, 0), "head": (0, -220, 20), "l_shoulder": (180, 30, 0),
            "r_shoulder": (-180, 30, 0), "l_elbow": (200, 310, 40), "r_elbow": (-200, 310, 40),
            "l_wrist": (190, 560, 160), "r_wrist": (-190, 560, 160), "l_hip": (110, 520, 0),
            "r_hip": (-110, 520, 0)}
BONES_MM = {n: float(np.linalg.norm(np.subtract(TEMPLATE[n], TEMPLATE[p])))
            for n, p in PARENTS.items() if p is not None}
FRAMES, FX, W, H = 240, 1000.0, 1280, 960
HIDDEN = slice(0, 100)  # frames whose hips no camera sees


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    R = np.zeros(np.shape(a) + (3, 3))
    R[..., 0, 0], R[..., 0, 2], R[..., 1, 1], R[..., 2, 0], R[..., 2, 2] = c, s, 1, -s, c
    return R


def motion(rng: np.random.Generator) -> np.ndarray:
    """(F, J, 3) world mm: the template turning, stepping about and swinging its arms."""
    t = np.linspace(0, 2 * np.pi, FRAMES)
    X = np.repeat(np.array([TEMPLATE[n] for n in NAMES], np.float64)[None], FRAMES, axis=0)
    for side, sign in (("l", 1.0), ("r", -1.0)):  # arms swing forward/back about the shoulder
        sh = NAMES.index(f"{side}_shoulder")
        for j in (NAMES.index(f"{side}_elbow"), NAMES.index(f"{side}_wrist")):
            a = 0.9 * np.sin(2 * t + (0 if sign > 0 else np.pi))
            d = X[:, j] - X[:, sh]
            X[:, j, 1] = X[:, sh, 1] + d[:, 1] * np.cos(a) - d[:, 2] * np.sin(a)
            X[:, j, 2] = X[:, sh, 2] + d[:, 1] * np.sin(a) + d[:, 2] * np.cos(a)
    X = np.einsum("fij,fkj->fki", _rot_y(0.8 * np.sin(t) + 0.1 * rng.standard_normal(FRAMES)), X)
    return X + np.stack([300 * np.sin(t), np.zeros(FRAMES), 300 * np.cos(1.5 * t)], -1)[:, None]


def cameras() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three cameras 4 m from the person, 70 degrees apart, 1.5 m up, looking at it."""
    out = {}
    for k, az in enumerate(np.radians([-70.0, 0.0, 70.0])):
        centre = np.array([4000 * np.sin(az), -1500.0, -4000 * np.cos(az)])
        z = -centre / np.linalg.norm(centre)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R = np.stack([x, np.cross(z, x), z])
        out[f"cam{k}"] = (R, -R @ centre)
    return out


def write_rig(tmp_path, joint_set: dict, rng: np.random.Generator):
    """The manifest, the detections file and the generated truth (camera id -> (F, J, 3))."""
    X = motion(rng)
    cams = cameras()
    rows, truth = [], {}
    for cam, (R, t) in cams.items():
        Xc = X @ R.T + t
        truth[cam] = Xc
        uv = FX * Xc[..., :2] / Xc[..., 2:] + np.array([W / 2, H / 2])
        uv += rng.normal(0, 1.0, uv.shape)
        conf = np.full(uv.shape[:2], 0.9)
        hips = [NAMES.index("l_hip"), NAMES.index("r_hip")]
        conf[HIDDEN, hips] = 0.0
        uv[HIDDEN, hips] = np.nan
        box = np.concatenate([np.nanmin(uv, 1), np.nanmax(uv, 1)], -1)
        rows.append(S.to_table({
            "dataset": "myrig", "subject": "P1", "action": "wave", "subaction": "1",
            "camera": cam, "frame": np.arange(FRAMES, dtype=np.int32),
            "image_path": [""] * FRAMES, "bbox": box, "joints_2d": uv, "joints_2d_conf": conf,
            "status": [""] * FRAMES}, S.detection_schema(len(NAMES))))
    det = tmp_path / "detections.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.concat_tables(rows), det)
    manifest = {
        "dataset": "myrig", "root": str(tmp_path / "no_images_here"), "joint_set": joint_set,
        "cameras": {c: {"fx": FX, "fy": FX, "cx": W / 2, "cy": H / 2, "width": W, "height": H,
                        "distortion": [0, 0, 0, 0, 0]} for c in cams},
        "frames": {"kind": "images", "pattern": "{camera}/{frame:06d}.jpg", "fps": 30},
        "sequences": [{"subject": "P1", "action": "wave", "subaction": 1,
                       "num_frames": FRAMES}],
        "splits": {"train": ["P1"]}}
    path = tmp_path / "myrig.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path, det, truth


def upper10(**extra) -> dict:
    return {"name": "upper10", "joints": NAMES, "parents": PARENTS,
            "flip_pairs": [["l_hip", "r_hip"], ["l_shoulder", "r_shoulder"],
                           ["l_elbow", "r_elbow"], ["l_wrist", "r_wrist"]],
            "root": "l_hip", "fallback_roots": ["neck"], **extra}


@pytest.fixture(scope="module")
def client():
    with local_client(1) as c:
        yield c


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own_rig")
    return write_rig(tmp, upper10(bone_lengths_mm=BONES_MM), np.random.default_rng(13))


@pytest.mark.parametrize("geometry", ["multiview", "pooled"])
def test_labels_from_detections_without_images_in_seconds(rig, client, tmp_path, geometry):
    manifest, det, truth = rig
    cfg = JobConfig(manifest=str(manifest), out=str(tmp_path / geometry), geometry=geometry,
                    detector="file", detections=str(det), write_crops=False,
                    ransac_threshold_px=3.0)
    t0 = time.perf_counter()
    summary = run_job(cfg, client, progress=False)
    seconds = time.perf_counter() - t0
    assert summary.exit_code == 0 and summary.failed_frames == 0, summary
    assert seconds < 30, f"stage 1 took {seconds:.1f} s"
    # frames are instants (one sequence), detection rows one per frame and camera
    assert (summary.frames, summary.detection_rows) == (FRAMES, 3 * FRAMES)
    # each camera's reprojection figure is its own (multiview's were all one value before)
    per_cam = [f["median_reproj_px"] for f in summary.consistency["per_camera"].values()]
    assert len(per_cam) == 3 and len(set(per_cam)) == 3 and max(per_cam) < 3.0, per_cam
    # cameras.json: world (cam0's frame) -> camera rotations of the fit, for pooled too
    rig = RunFolder(cfg.out).cameras("P1")
    true = cameras()
    assert list(rig) == ["cam0", "cam1", "cam2"]
    np.testing.assert_allclose(rig["cam0"][0], np.eye(3), atol=1e-12)
    for c, (R, t) in rig.items():
        R_true = true[c][0] @ true["cam0"][0].T
        assert rotation_error_deg(R, R_true) < 1.0, (geometry, c)
    assert not (tmp_path / geometry / "crops").exists()
    t = S.read_shards(cfg.out)
    X, valid = S.column_array(t, "joints_3d"), S.column_array(t, "valid")
    frames = t.column("frame").to_numpy()
    cams = np.array(t.column("camera").to_pylist())
    assert set(t.column("image_path").to_pylist()) == {""}
    js = load_manifest(manifest).joint_set
    hidden = frames < HIDDEN.stop
    l_hip, neck = NAMES.index("l_hip"), NAMES.index("neck")
    # Hidden hips: labelled relative to the neck (the fallback root), in every camera.
    assert hidden.any() and not valid[hidden, l_hip].any()
    assert valid[hidden, neck].all() and (valid[hidden].sum(1) >= 6).mean() > 0.9
    assert set(cams[hidden]) == set(truth)
    assert np.abs(X[hidden, neck]).max() == 0 and np.abs(X[~hidden & valid[:, l_hip], l_hip]).max() == 0
    gt = np.stack([truth[c][f] for c, f in zip(cams, frames)])
    gt, _ = js.root_relative(gt, valid)
    for rows in (hidden, ~hidden):
        err = mpjpe(X[rows], gt[rows], valid[rows], alignment="scale")
        assert np.nanmean(err) < 15, (geometry, np.nanmean(err))  # measured: 6-9 mm
    # Declared bone lengths: labels at the declared size (the sum of bones, not H36M's 4150 mm).
    med = np.nanmedian(np.where(valid[:, js.bones].all(-1), tri.bone_lengths(X, js), np.nan), 0)
    np.testing.assert_allclose(med.sum(), sum(BONES_MM.values()), rtol=0.05)
    assert "upper10" in cfg.run.config()["scale"]


def test_preflight_names_missing_frames_and_suggests_no_crops(rig, tmp_path):
    manifest, det, _ = rig
    cfg = JobConfig(manifest=str(manifest), out=str(tmp_path / "crops"), geometry="pooled",
                    detector="file", detections=str(det))  # crops on: frames would be read
    with pytest.raises(ManifestError, match=r"root .*no_images_here.* is not a folder"):
        preflight(cfg)
    (manifest.parent / "no_images_here" / "cam0").mkdir(parents=True)
    (manifest.parent / "no_images_here" / "cam0" / "000007.jpg").write_bytes(b"")
    # Every camera's source is checked, not only the first; the first missing one is named.
    with pytest.raises(ManifestError, match=r"camera cam1: frame source \S*no_images_here/cam1 "
                                            r"does not exist.*--no-crops"):
        preflight(cfg)


def test_a_refused_rig_is_an_error_of_the_run_not_labels(rig, client, tmp_path):
    """A reprojection limit the 1 px detections cannot meet (0.2 px): the bundle-adjusted rig
    fails its own check, so the run writes no label, records every camera as an error with
    the reason and exits 2. The message of a run without any label names the geometry, each
    refused pair and why, and does not blame the detector (before: exit 3, "the 2D detections
    disagree across views ... detector probably wrong")."""
    manifest, det, _ = rig
    cfg = JobConfig(manifest=str(manifest), out=str(tmp_path / "refused"), geometry="multiview",
                    detector="file", detections=str(det), write_crops=False,
                    ransac_threshold_px=3.0, reproj_threshold_px=0.2)
    summary = run_job(cfg, client, progress=False)
    assert summary.exit_code == 2 and summary.pairs_losing_labels == 3 and summary.rows == 0
    assert not summary.inconsistent and not summary.inconsistency_warning(cfg)
    why = summary.refused_geometry
    assert why.startswith("no labels: the geometry refused camera pairs")
    assert all(f"P1 {c}" in why for c in ("cam0", "cam1", "cam2"))
    assert why.count("rig refused after bundle adjustment") == 3
    assert json.loads(cfg.run.summary_file.read_text())["refused_geometry"] == why
    fit, reasons = verdict({"consistency": summary.consistency, "refused_geometry": why}, 0.2)
    assert not fit and reasons == [why]
    fail = RunFolder(cfg.out).failures()
    geo = fail[fail["stage"] == "geometry"]
    assert len(geo) == 3 and (geo["severity"] == "error").all()
    assert geo["reason"].str.contains("rig refused after bundle adjustment").all()
    assert RunFolder(cfg.out).rigs() == {"P1": {}}


def test_joint_set_without_bone_lengths_is_scaled_by_the_h36m_bones_it_contains():
    """An upper body without declared lengths comes out near life size: its bones H36M-17 also
    has (head, elbows, wrists by name) take H36M-17's lengths; before, the recording's bones
    were scaled to the full-body sum of 4150 mm (1.5x life size for these 10 joints, 2.5x for
    the 10 upper-body joints of the recording in issue 25)."""
    js = JointSet("upper10", tuple(NAMES), tuple(-1 if PARENTS[n] is None else NAMES.index(
        PARENTS[n]) for n in NAMES), root_names=("l_hip", "neck"))
    X = motion(np.random.default_rng(0)) * 0.0021  # any unit
    valid = np.ones(X.shape[:2], bool)
    valid[:50, 0] = False  # l_hip hidden: those frames are measured from the neck
    Xn, scale = tri.normalize_scale(X, valid, per_frame=False, joint_set=js)
    ok = tri.normalized_validity(valid, scale, js)
    assert ok[:50, 1:].all() and (Xn[:50, NAMES.index("neck")] == 0).all()
    lengths = tri.bone_lengths(Xn[50:], js).mean(0)
    children = [NAMES[c] for _, c in js.bones]
    shared = ["head", "l_elbow", "r_elbow", "l_wrist", "r_wrist"]
    ref = tri.reference_lengths(js)
    assert [c for c, r in zip(children, ref) if np.isfinite(r)] == shared
    on = np.isfinite(ref)
    np.testing.assert_allclose(lengths[on].sum(), ref[on].sum(), rtol=1e-6)
    # every bone keeps the recording's proportions; the whole is near life size, not 4150 mm
    true = np.array([BONES_MM[c] for c in children])
    np.testing.assert_allclose(lengths / lengths.sum(), true / true.sum(), rtol=1e-6)
    # measured: 0.88x life size (this template's arms are 13 % longer than H36M-17's);
    # scaled to the full-body sum it was 4150 / 2771 = 1.50x
    assert 0.8 < lengths.sum() / true.sum() < 1.2 < tri.REFERENCE_BONE_SUM_MM / true.sum()
    with pytest.raises(ValueError, match=r"missing \['r_hip'\]"):
        JointSet("partial", js.names, js.parents,
                 reference_mm=tuple((k, v) for k, v in BONES_MM.items() if k != "r_hip"))


def test_a_joint_set_of_unknown_size_is_refused_before_any_work(tmp_path):
    """No declared lengths and no bone of H36M-17's names: the labels would have no size;
    preflight refuses it naming the key to declare (a calibrated mode is metric: accepted)."""
    odd = {n: f"p{i}" for i, n in enumerate(NAMES)}
    js = upper10(joints=[odd[n] for n in NAMES], root=odd["l_hip"], fallback_roots=[odd["neck"]],
                 parents={odd[n]: (odd[p] if p else None) for n, p in PARENTS.items()},
                 flip_pairs=[])
    manifest, det, _ = write_rig(tmp_path, js, np.random.default_rng(2))
    cfg = JobConfig(manifest=str(manifest), out=str(tmp_path / "odd"), geometry="pooled",
                    detector="file", detections=str(det), write_crops=False)
    with pytest.raises(ManifestError, match=r"myrig\.yaml: joint_set\.bone_lengths_mm: joint set "
                                            r"upper10 declares no bone lengths"):
        preflight(cfg)
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize("bad, key", [
    ({"parents": {**PARENTS, "head": "nek"}}, "joint_set.parents.head"),
    ({"fallback_roots": ["chest"]}, "joint_set.fallback_roots"),
    ({"bone_lengths_mm": {"head": 200.0}}, "joint_set.bone_lengths_mm"),
    ({"flip_pairs": [["l_hip"]]}, r"joint_set.flip_pairs\[0\]"),
    ({"colour": "red"}, "joint_set"),
])
def test_a_bad_joint_set_is_refused_naming_the_key(tmp_path, bad, key):
    path, _, _ = write_rig(tmp_path, upper10(**bad), np.random.default_rng(1))
    with pytest.raises(ManifestError, match=rf"myrig\.yaml: {key}"):
        load_manifest(path)


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                    reason="mediapipe is not installed (requirements-mediapipe.txt)")
def test_a_detector_of_another_joint_set_is_refused_before_any_work(rig, tmp_path):
    """MediaPipe gives the 17 H36M joints; the rig's manifest declares 10: refused at preflight,
    naming both counts, before a cluster starts or a file is written."""
    manifest, _, _ = rig
    for cam in ("cam0", "cam1", "cam2"):  # MediaPipe reads images: give each camera one
        (manifest.parent / "no_images_here" / cam).mkdir(parents=True, exist_ok=True)
        (manifest.parent / "no_images_here" / cam / "000000.jpg").write_bytes(b"")
    cfg = JobConfig(manifest=str(manifest), out=str(tmp_path / "mp"), geometry="pooled",
                    detector="mediapipe", write_crops=False)
    with pytest.raises(ManifestError, match=r"joint_set upper10 has 10 joints, detector "
                                            r"mediapipe gives 17"):
        preflight(cfg)
    assert not (tmp_path / "mp").exists()

"""Calibration files in and out (pipeline/store/calibration.py) and the export of a run's
self-calibrated cameras (tools/export_calibration.py)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.store import shards as S
from pipeline.store.calibration import (CALIBRATION_FORMATS, CalibrationError, calibration_to_manifest,
                                        read_anipose_calibration, read_opencv_calibration,
                                        read_pose2sim_calibration, toml_dumps, write_calibration)
from pipeline.geometry.cameras import rotation_error_deg
from pipeline.geometry.triangulation import bone_lengths
from pipeline.store.manifest import load_manifest
from tests.conftest import REPO, SYNTHETIC_MANIFEST, render_tiny

H36M = REPO / "data_manifests" / "h36m.yaml"
R_Z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # Rodrigues [0, 0, pi/2]
R_X180 = np.diag([1.0, -1.0, -1.0])                                      # Rodrigues [pi, 0, 0]


@pytest.fixture(scope="module")
def h36m_cams():
    m = load_manifest(H36M, root="/")
    return {c: m.camera(c, "S1") for c in m.cameras}


@pytest.mark.parametrize("fmt,name", [("pose2sim", "Calib.toml"), ("anipose", "calibration.toml"),
                                      ("opencv", "calib.yml"), ("opencv", "calib.xml")])
def test_round_trip_h36m(h36m_cams, tmp_path: Path, fmt: str, name: str) -> None:
    path = write_calibration(h36m_cams, tmp_path / name, fmt)
    back = CALIBRATION_FORMATS[fmt].read(path)
    assert list(back) == list(h36m_cams)
    for n, c in h36m_cams.items():
        b = back[n]
        assert (b.width, b.height) == (c.width, c.height)
        np.testing.assert_allclose(b.K, c.K, rtol=1e-12)
        np.testing.assert_allclose(b.dist, c.dist, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(b.R, c.R, atol=1e-7)     # the files' R are orthonormal to 1e-8
        np.testing.assert_allclose(b.t, c.t, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(b.project_world(np.array([100.0, 200.0, 900.0])),
                                   c.project_world(np.array([100.0, 200.0, 900.0])), atol=1e-4)
    assert calibration_to_manifest(back, ["S1"])["extrinsics"]["S1"].keys() == h36m_cams.keys()


def test_unit_argument_scales_translations(h36m_cams, tmp_path: Path) -> None:
    path = write_calibration(h36m_cams, tmp_path / "c.toml", "anipose", unit_to_mm=1000.0)
    assert tomllib.loads(path.read_text())["cam_0"]["translation"][2] == pytest.approx(5.474481)
    back = read_anipose_calibration(path, unit_to_mm=1000.0)
    np.testing.assert_allclose(back["54138969"].t, h36m_cams["54138969"].t, rtol=1e-12)


POSE2SIM = """\
[cam_01]
name = "cam_01"
size = [ 1088.0, 1920.0]
matrix = [ [ 1681.5, 0.0, 532.75], [ 0.0, 1680.25, 948.5], [ 0.0, 0.0, 1.0]]
distortions = [ -0.0125, 0.0025, 9.5e-06, 1.0e-05]
rotation = [ 0.0, 0.0, 1.5707963267948966]
translation = [ 0.1, -0.2, 3.0]
fisheye = false

[cam_02]
name = "cam_02"
size = [ 1088.0, 1920.0]
matrix = [ [ 1600.0, 0.0, 544.0], [ 0.0, 1600.0, 960.0], [ 0.0, 0.0, 1.0]]
distortions = [ 0.0, 0.0, 0.0, 0.0]
rotation = [ 0.0, 0.0, 0.0]
translation = [ -1.5, 0.0, 4.25]
fisheye = false

[metadata]
adjusted = false
error = 0.0
"""


def test_read_pose2sim_written_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "Calib.toml"
    p.write_text(POSE2SIM)
    cams = read_pose2sim_calibration(p)
    assert list(cams) == ["cam_01", "cam_02"]
    a, b = cams["cam_01"], cams["cam_02"]
    assert (a.width, a.height) == (1088, 1920)
    np.testing.assert_allclose(a.K, [[1681.5, 0, 532.75], [0, 1680.25, 948.5], [0, 0, 1]])
    np.testing.assert_allclose(a.dist, [-0.0125, 0.0025, 9.5e-6, 1e-5, 0.0])
    np.testing.assert_allclose(a.R, R_Z90, atol=1e-12)
    np.testing.assert_allclose(a.t, [100.0, -200.0, 3000.0])          # metres -> mm
    np.testing.assert_allclose(b.R, np.eye(3), atol=0)
    np.testing.assert_allclose(b.t, [-1500.0, 0.0, 4250.0])
    np.testing.assert_allclose(b.center, [1500.0, 0.0, -4250.0])
    np.testing.assert_allclose(read_pose2sim_calibration(p, unit_to_mm=1.0)["cam_01"].t,
                               [0.1, -0.2, 3.0])


ANIPOSE = """\
[cam_0]
name = "A"
size = [ 640, 480,]
matrix = [ [ 500.0, 0.0, 320.0,], [ 0.0, 510.0, 240.0,], [ 0.0, 0.0, 1.0,],]
distortions = [ -0.2, 0.05, 0.001, -0.002, 0.01,]
rotation = [ 3.141592653589793, 0.0, 0.0,]
translation = [ 10.0, 20.0, 1500.0,]

[cam_1]
name = "B"
size = [ 640, 480,]
matrix = [ [ 520.0, 0.0, 330.0,], [ 0.0, 520.0, 250.0,], [ 0.0, 0.0, 1.0,],]
distortions = [ 0.0, 0.0, 0.0, 0.0, 0.0,]
rotation = [ 0.0, 0.0, 0.0,]
translation = [ 0.0, 0.0, 0.0,]

[metadata]
adjusted = true
error = 0.41
"""


def test_read_anipose_written_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "calibration.toml"
    p.write_text(ANIPOSE)
    cams = read_anipose_calibration(p)
    assert list(cams) == ["A", "B"]
    a = cams["A"]
    assert (a.width, a.height) == (640, 480)
    np.testing.assert_allclose(a.K, [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    np.testing.assert_allclose(a.dist, [-0.2, 0.05, 0.001, -0.002, 0.01])
    np.testing.assert_allclose(a.R, R_X180, atol=1e-12)
    np.testing.assert_allclose(a.t, [10.0, 20.0, 1500.0])              # board unit: mm
    np.testing.assert_allclose(read_anipose_calibration(p, unit_to_mm=25.0)["A"].t,
                               [250.0, 500.0, 37500.0])


OPENCV_ONE = """\
%YAML:1.0
---
camera_name: left
image_width: 1280
image_height: 720
camera_matrix: !!opencv-matrix
   rows: 3
   cols: 3
   dt: d
   data: [ 900.0, 0., 640.5, 0., 905.0, 360.25, 0., 0., 1. ]
distortion_coefficients: !!opencv-matrix
   rows: 1
   cols: 5
   dt: d
   data: [ -0.3, 0.1, 0.0005, -0.0004, -0.02 ]
R: !!opencv-matrix
   rows: 3
   cols: 3
   dt: d
   data: [ 0., -1., 0., 1., 0., 0., 0., 0., 1. ]
T: !!opencv-matrix
   rows: 3
   cols: 1
   dt: d
   data: [ 12.5, -40.0, 2500.0 ]
"""

EASYMOCAP_INTRI = """\
%YAML:1.0
---
names:
  - "01"
K_01: !!opencv-matrix
   rows: 3
   cols: 3
   dt: d
   data: [ 1000., 0., 500., 0., 1000., 400., 0., 0., 1. ]
dist_01: !!opencv-matrix
   rows: 1
   cols: 5
   dt: d
   data: [ 0.01, 0., 0., 0., 0. ]
W_01: 1000
H_01: 800
"""

EASYMOCAP_EXTRI = """\
%YAML:1.0
---
names:
  - "01"
R_01: !!opencv-matrix
   rows: 3
   cols: 1
   dt: d
   data: [ 3.141592653589793, 0., 0. ]
T_01: !!opencv-matrix
   rows: 3
   cols: 1
   dt: d
   data: [ 0.5, 0.25, 4.0 ]
"""


def test_read_opencv_written_by_hand(tmp_path: Path) -> None:
    p = tmp_path / "left.yml"
    p.write_text(OPENCV_ONE)
    c = read_opencv_calibration(p)["left"]
    assert (c.width, c.height) == (1280, 720)
    np.testing.assert_allclose(c.K, [[900, 0, 640.5], [0, 905, 360.25], [0, 0, 1]])
    np.testing.assert_allclose(c.dist, [-0.3, 0.1, 0.0005, -0.0004, -0.02])
    np.testing.assert_allclose(c.R, R_Z90)
    np.testing.assert_allclose(c.t, [12.5, -40.0, 2500.0])
    intri, extri = tmp_path / "intri.yml", tmp_path / "extri.yml"
    intri.write_text(EASYMOCAP_INTRI)
    extri.write_text(EASYMOCAP_EXTRI)
    c = read_opencv_calibration(intri, unit_to_mm=1000.0, extrinsics_path=extri)["01"]
    assert (c.width, c.height) == (1000, 800)
    np.testing.assert_allclose(c.R, R_X180, atol=1e-12)                # R_: Rodrigues
    np.testing.assert_allclose(c.t, [500.0, 250.0, 4000.0])


@pytest.mark.parametrize("reader,text", [(read_pose2sim_calibration, POSE2SIM),
                                         (read_anipose_calibration, ANIPOSE)])
def test_fisheye_is_refused_naming_the_camera(tmp_path: Path, reader, text: str) -> None:
    p = tmp_path / "calib.toml"
    first = text.split("\n\n")[0]
    p.write_text(text.replace(first, first.replace("fisheye = false", "") + "\nfisheye = true"))
    name = "cam_01" if reader is read_pose2sim_calibration else "A"
    with pytest.raises(CalibrationError,
                       match=rf"{re.escape(str(p))}.*camera '{name}' is a fisheye camera"):
        reader(p)


def test_missing_key_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "Calib.toml"
    p.write_text(POSE2SIM.replace("rotation = [ 0.0, 0.0, 0.0]\n", ""))
    with pytest.raises(CalibrationError,
                       match=rf"{re.escape(str(p))}: \[cam_02\]: missing key\(s\) \['rotation'\]"):
        read_pose2sim_calibration(p)
    y = tmp_path / "left.yml"
    y.write_text(OPENCV_ONE.split("T: !!opencv-matrix")[0])
    with pytest.raises(CalibrationError,
                       match=rf"{re.escape(str(y))}: camera 'left': missing key 'T or tvec'"):
        read_opencv_calibration(y)


@pytest.mark.parametrize("edit,message", [
    (("distortions = [ 0.0, 0.0, 0.0, 0.0]", "distortions = [ 0.0, 0.0]"),
     r"\[cam_02\] camera 'cam_02': 'distortions' needs at least 4"),
    (("distortions = [ 0.0, 0.0, 0.0, 0.0]",
      "distortions = [ 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]"), r"non-zero k4"),
    (("rotation = [ 0.0, 0.0, 0.0]", "rotation = [ 0.0, 0.0]"),
     r"'rotation' must be a Rodrigues vector \(3 values\) or a 3x3"),
    (("size = [ 1088.0, 1920.0]\nmatrix = [ [ 1600.0",
      "size = [ 0.0, 1920.0]\nmatrix = [ [ 1600.0"), r"'size' must be two positive whole numbers"),
    (("[metadata]", "[metadata"), r"not valid TOML"),
])
def test_malformed_pose2sim_is_refused(tmp_path: Path, edit, message: str) -> None:
    p = tmp_path / "Calib.toml"
    assert edit[0] in POSE2SIM
    p.write_text(POSE2SIM.replace(*edit))
    with pytest.raises(CalibrationError, match=message):
        read_pose2sim_calibration(p)


def test_toml_writer_reads_back_with_tomllib() -> None:
    tables = {"odd name.\"q\"": {"s": "a\\b\"c\n\té", "flag": True, "n": -3,
                                 "f": [1.0, 1e-300, -2.5e20, float("inf"), 0.1 + 0.2],
                                 "nested": [[1, 2], [3.5]]}, "metadata": {}}
    back = tomllib.loads(toml_dumps(tables))
    assert back == tables
    with pytest.raises(TypeError):
        toml_dumps({"t": {"x": object()}})


# --- export of a stage-1 run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def multiview_run(tmp_path_factory):
    from pipeline.job.plan import JobConfig, local_client, run_job
    root = render_tiny(tmp_path_factory, 12, ("S1",))
    out = tmp_path_factory.mktemp("run") / "multiview"
    cfg = JobConfig(manifest=str(SYNTHETIC_MANIFEST), out=str(out), root=str(root), detector="gt",
                    geometry="multiview", subjects=("S1",), chunk_frames=12, crop_size=32,
                    write_crops=False)
    with local_client(workers=1) as client:
        assert run_job(cfg, client, progress=False).exit_code == 0
    return out, load_manifest(SYNTHETIC_MANIFEST, root=str(root))


def test_export_pose2sim_has_the_true_rig_at_metric_scale(multiview_run, tmp_path: Path) -> None:
    run, m = multiview_run
    gt = S.column_array(S.read_shards(run), "gt_joints_3d")
    true_sum = float(np.median(bone_lengths(gt, m.joint_set).sum(-1)))
    out = tmp_path / "Calib.toml"
    res = CliRunner().invoke(_cli(), ["export-calibration", str(run), "--subject", "S1",
                                      "--format", "pose2sim", "--out", str(out),
                                      "--bone-sum-mm", f"{true_sum:.3f}"])
    assert res.exit_code == 0, res.output
    cams = read_pose2sim_calibration(out)
    true = {c: m.camera(c, "S1") for c in cams}
    ref = next(iter(cams))
    np.testing.assert_allclose(cams[ref].R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(cams[ref].t, 0.0, atol=1e-9)
    for c in cams:
        R_true = true[c].R @ true[ref].R.T                       # relative to the reference
        assert rotation_error_deg(cams[c].R, R_true) < 1.0, c
        assert (cams[c].width, cams[c].height) == (true[c].width, true[c].height)
        np.testing.assert_allclose(cams[c].K, true[c].K)
    names = list(cams)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = np.linalg.norm(cams[a].center - cams[b].center)
            d_true = np.linalg.norm(true[a].center - true[b].center)
            assert abs(d / d_true - 1) < 0.02, (a, b, d, d_true)


def test_export_refuses_a_run_without_an_all_view_rig(multiview_run, tmp_path: Path) -> None:
    run, _ = multiview_run
    res = CliRunner().invoke(_cli(), ["export-calibration", str(run), "--subject", "S9",
                                      "--format", "anipose", "--out", str(tmp_path / "c.toml")])
    assert res.exit_code != 0 and "no all-view cameras for subject S9" in res.output
    res = CliRunner().invoke(_cli(), ["export-calibration", str(run), "--subject", "S1",
                                      "--format", "anipose", "--out", str(tmp_path / "c.toml"),
                                      "--height-mm", "1700", "--bone-sum-mm", "4000"])
    assert res.exit_code != 0 and "not both" in res.output


def test_declared_height_uses_the_reference_proportions() -> None:
    from tools.export_calibration import REFERENCE_HEIGHT_MM, declared_bone_sum
    from pipeline.geometry.triangulation import REFERENCE_BONE_SUM_MM

    assert declared_bone_sum()[0] == REFERENCE_BONE_SUM_MM
    assert declared_bone_sum(height_mm=REFERENCE_HEIGHT_MM)[0] == pytest.approx(
        REFERENCE_BONE_SUM_MM)
    assert declared_bone_sum(bone_sum_mm=3900.0)[0] == 3900.0
    with pytest.raises(ValueError):
        declared_bone_sum(height_mm=-1.0)


def _cli():
    from tools.__main__ import cli
    return cli

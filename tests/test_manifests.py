"""The real-dataset manifests (Human3.6M, MPI-INF-3DHP), the calibration readers and the
Pose2Sim demo preparation (pipeline/store/calibration.py, tools/real_demo.py)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.geometry.cameras import project
from pipeline.store.frames import read_frames
from pipeline.store.manifest import load_manifest
from pipeline.store.calibration import (CalibrationError, calibration_to_manifest, read_3dhp_calibration,
                                        read_qualisys_calibration)
from tools.real_demo import prepare_pose2sim_demo

REPO = Path(__file__).resolve().parents[1]
H36M = REPO / "data_manifests" / "h36m.yaml"
MPI = REPO / "data_manifests" / "mpi_inf_3dhp.yaml"
H36M_CAMS = ("54138969", "55011271", "58860488", "60457274")
H36M_SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")


# --- Human3.6M ----------------------------------------------------------------------------------

def test_h36m_manifest_layout(tmp_path: Path) -> None:
    m = load_manifest(H36M, root=str(tmp_path))
    assert m.dataset == "h36m" and m.root == tmp_path and m.joint_set.name == "h36m17"
    assert m.camera_ids == H36M_CAMS
    assert set(m.extrinsics) == set(H36M_SUBJECTS)
    assert all(m.has_extrinsics(s, H36M_CAMS) for s in H36M_SUBJECTS)
    assert m.splits == {"train": ("S1", "S5", "S6", "S7"), "val": ("S8",),
                        "test": ("S9", "S11")}
    assert m.frames.kind == "video" and m.frames.fps == 50
    for s in H36M_SUBJECTS:
        seqs = m.sequences_in(subjects=(s,))
        assert len(seqs) == 30, s                                # 15 scenarios x 2 trials
        assert len({q.name for q in seqs}) == 30, s
        assert {(q.action, q.subaction) for q in seqs} == {
            (a, sub) for a in {q.action for q in seqs} for sub in ("1", "2")}
    names_s1 = {q.name for q in m.sequences_in(subjects=("S1",))}
    assert {"TakingPhoto 1", "TakingPhoto", "WalkingDog 1", "WalkingDog"} <= names_s1
    assert not any("TakingPhoto" in q.name or "WalkingDog" in q.name
                   for q in m.sequences if q.subject != "S1")
    seq = next(q for q in m.sequences if q.key == "S1/Directions/1")
    assert m.frame_path(seq, "54138969") == tmp_path / "S1/Videos/Directions 1.54138969.mp4"
    assert m.gt_path(seq) == tmp_path / "gt/S1/Directions_1.npz"
    broken = next(q for q in m.sequences if q.key == "S11/Directions/2")
    assert broken.cameras == H36M_CAMS[1:]                      # corrupt video left out
    assert all(q.cameras == H36M_CAMS for q in m.sequences if q is not broken)


def test_h36m_root_needs_the_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.delenv("H36M_ROOT", raising=False)
    with pytest.raises(ValueError, match="H36M_ROOT"):
        load_manifest(H36M)
    monkeypatch.setenv("H36M_ROOT", str(tmp_path))
    assert load_manifest(H36M).root == tmp_path


def test_h36m_numbers_are_the_published_ones(h36m_cameras: dict, tmp_path: Path) -> None:
    m = load_manifest(H36M, root=str(tmp_path))
    for c in H36M_CAMS:
        ref = h36m_cameras["intrinsics"][c]
        cam = m.camera(c)
        np.testing.assert_array_equal(cam.K, np.asarray(ref["K"], float))
        np.testing.assert_array_equal(cam.dist, ref["distortion_opencv"])
        assert (cam.width, cam.height) == (ref["width"], ref["height"])
        for s in H36M_SUBJECTS:
            e = h36m_cameras["extrinsics"][s][c]
            R, t = m.extrinsics[s][c]
            np.testing.assert_array_equal(R, e["R_w2c"])
            np.testing.assert_array_equal(t, e["t_mm"])
            np.testing.assert_allclose(m.camera(c, s).center, e["C_mm"], atol=1e-3)


def test_h36m_projection_matches_opencv(h36m_cameras: dict, tmp_path: Path) -> None:
    m = load_manifest(H36M, root=str(tmp_path))
    rng = np.random.default_rng(0)
    Xc = np.column_stack([rng.uniform(-1500, 1500, 50), rng.uniform(-1200, 1200, 50),
                          rng.uniform(3000, 7000, 50)])          # in front, across the image
    for c in H36M_CAMS:
        ref = h36m_cameras["intrinsics"][c]
        want, _ = cv2.projectPoints(Xc, np.zeros(3), np.zeros(3), np.asarray(ref["K"], float),
                                    np.asarray(ref["distortion_opencv"], float))
        cam = m.camera(c)
        np.testing.assert_allclose(project(Xc, cam.K, cam.dist), want[:, 0], atol=1e-6)
        # and a world point through the S9 extrinsics
        e = h36m_cameras["extrinsics"]["S9"][c]
        Xw = np.array([[0.0, 0.0, 900.0], [400.0, -300.0, 100.0]])
        want, _ = cv2.projectPoints(Xw, cv2.Rodrigues(np.asarray(e["R_w2c"]))[0],
                                    np.asarray(e["t_mm"]), np.asarray(ref["K"], float),
                                    np.asarray(ref["distortion_opencv"], float))
        np.testing.assert_allclose(m.camera(c, "S9").project_world(Xw), want[:, 0], atol=1e-6)


# --- MPI-INF-3DHP -------------------------------------------------------------------------------

def test_mpi_inf_3dhp_manifest_layout(tmp_path: Path) -> None:
    m = load_manifest(MPI, root=str(tmp_path))
    assert m.dataset == "mpi_inf_3dhp" and m.root == tmp_path
    assert m.camera_ids == tuple(str(i) for i in range(14))
    subjects = tuple(f"S{i}" for i in range(1, 9))
    assert m.splits == {"train": subjects[:-1], "val": ("S8",),
                        "test": tuple(f"TS{i}" for i in range(1, 7))}
    assert len(m.sequences) == 16
    assert {q.subject for q in m.sequences} == set(subjects)
    assert all(q.cameras == ("0", "2", "4", "7", "8") for q in m.sequences)
    assert all(m.has_extrinsics(s, m.camera_ids) for s in subjects)
    centres = np.array([m.camera(c, "S1").center for c in m.camera_ids])
    assert (np.linalg.norm(centres, axis=1) < 6000).all()       # a studio a few metres wide
    assert np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(14, 1)].min() > 100
    np.testing.assert_allclose(m.camera("8").K[0], [1500.172, 0, 1017.387])
    seq = next(q for q in m.sequences if q.key == "S3/Seq/2")
    assert seq.frames.fps == 50 and seq.frames.step == 10 and seq.num_frames == 12283
    assert m.frame_path(seq, "7") == tmp_path / "S3/Seq2/imageSequence/video_7.avi"
    assert len(m.frame_indices(seq)) == 1229


CALIB_3DHP = """Skeletool Camera Calibration File V1.0
name          0
  sensor      10 10
  size        2048 2048
  animated    0
  intrinsic   1497.693 0 1024.704 0 0 1497.103 1051.394 0 0 0 1 0 0 0 0 1
  extrinsic   0.9650164 0.00488022 0.262144 -562.8666 -0.004488356 -0.9993728 0.0351275 1398.138 0.262151 -0.03507521 -0.9643893 3852.623 0 0 0 1
  radial      0
name          7
  sensor      10 10
  size        2048 2048
  animated    0
  intrinsic   1498.831 0 987.2716 0 0 1499.674 976.8773 0 0 0 1 0 0 0 0 1
  extrinsic   -0.9995936 0.02847456 0.001368653 1378.866 -0.02843213 -0.9992908 0.0246889 1270.781 0.002070688 0.02463995 0.9996943 2631.567 0 0 0 1
  radial      0
"""


def test_read_3dhp_calibration_matches_the_manifest(tmp_path: Path) -> None:
    p = tmp_path / "camera.calibration"
    p.write_text(CALIB_3DHP)
    cams = read_3dhp_calibration(p)
    assert list(cams) == ["0", "7"]
    c0 = cams["0"]
    np.testing.assert_allclose(c0.K, [[1497.693, 0, 1024.704], [0, 1497.103, 1051.394], [0, 0, 1]])
    np.testing.assert_allclose(c0.t, [-562.8666, 1398.138, 3852.623])
    assert (c0.width, c0.height) == (2048, 2048) and not c0.dist.any()
    m = load_manifest(MPI, root=str(tmp_path))
    for name, cam in cams.items():
        R, t = m.extrinsics["S5"][name]
        np.testing.assert_allclose(R, cam.R, atol=1e-6)
        np.testing.assert_allclose(t, cam.t)
        np.testing.assert_allclose(m.camera(name).K, cam.K)
    entries = calibration_to_manifest(cams, ["S1", "S2"])
    assert set(entries["extrinsics"]) == {"S1", "S2"}
    assert entries["cameras"]["7"]["fx"] == 1498.831 and len(entries["cameras"]["7"]["distortion"]) == 5


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("Skeletool", "Other"), "line 1"),
    (lambda s: s.replace("1051.394 0 0 0 1 0 0 0 0 1", "1051.394 0 0 0 1"), "line 6.*16 values"),
    (lambda s: s.replace("  animated    0\n  intrinsic   1498", "  animated    1\n  intrinsic   1498"),
     "camera '7'.*animated"),
    (lambda s: s.replace("-0.9995936 0.02847456", "-0.5 0.02847456"), "camera '7'.*rotation"),
    (lambda s: s.replace("  radial      0\nname          7", "  focus 3\nname          7"),
     "line 8: unknown key 'focus'"),
])
def test_read_3dhp_calibration_errors(tmp_path: Path, edit, message: str) -> None:
    p = tmp_path / "camera.calibration"
    p.write_text(edit(CALIB_3DHP))
    with pytest.raises(CalibrationError, match=message):
        read_3dhp_calibration(p)


# --- Qualisys and the Pose2Sim demo -------------------------------------------------------------

def qca_camera(serial: str, right: int, bottom: int, M: np.ndarray, centre: np.ndarray) -> str:
    r = {f"r{i + 1}{j + 1}": float(M[i, j]) for i in range(3) for j in range(3)}
    rs = " ".join(f'{k}="{v!r}"' for k, v in r.items())
    return f"""
    <camera active="1" avg-residual="0.4" model="none" serial="{serial}" viewrotation="0">
      <fov_video bottom="{bottom}" left="0" right="{right}" top="0"/>
      <transform {rs} x="{centre[0]}" y="{centre[1]}" z="{centre[2]}"/>
      <intrinsic centerPointU="{64 * 40.0}" centerPointV="{64 * 30.0}" focalLengthU="{64 * 100.0}"
        focalLengthV="{64 * 101.0}" radialDistortion1="-0.064" radialDistortion2="0.128"
        radialDistortion3="0" tangentalDistortion1="0.0064" tangentalDistortion2="0"/>
    </camera>"""


def qca_file(path: Path, cameras: list[str]) -> Path:
    path.write_text("<?xml version='1.0' encoding='ASCII'?>\n<calibration><cameras>"
                    + "".join(cameras) + "</cameras></calibration>\n")
    return path


def test_read_qualisys_calibration_conventions(tmp_path: Path) -> None:
    # Identity orientation: the Qualisys camera looks down world -z with world y up.
    p = qca_file(tmp_path / "c.qca.txt", [qca_camera("camA", 79, 59, np.eye(3), np.array([0, 0, 1000.0]))])
    cam = read_qualisys_calibration(p)["camA"]
    np.testing.assert_allclose(cam.K, [[100, 0, 40], [0, 101, 30], [0, 0, 1]])
    np.testing.assert_allclose(cam.dist, [-0.001, 0.002, 0.0001, 0, 0])
    assert (cam.width, cam.height) == (80, 60)
    np.testing.assert_allclose(cam.center, [0, 0, 1000])
    no_dist = cam.K, np.zeros(5)
    uv = project(cam.world_to_camera(np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0.0]])), *no_dist)
    np.testing.assert_allclose(uv, [[40, 30], [50, 30], [40, 19.9]])  # world y up = image up
    np.testing.assert_allclose(cam.world_to_camera(np.zeros(3)), [0, 0, 1000])  # in front
    # A rotated camera 3 m from the origin, looking at it along its -z axis (the rows of the
    # transform matrix are the camera's axes in the world).
    rot = cv2.Rodrigues(np.array([0.3, -0.5, 0.2]))[0]
    cam = read_qualisys_calibration(qca_file(tmp_path / "r.qca.txt", [
        qca_camera("camB", 79, 59, rot, 3000.0 * rot[2])]))["camB"]
    np.testing.assert_allclose(cam.world_to_camera(np.zeros(3)), [0, 0, 3000], atol=1e-9)
    # its x axis (first row) points to the image's right, its y axis (second row) up
    uv = project(cam.world_to_camera(np.array([100 * rot[0], 100 * rot[1]])), *no_dist)
    np.testing.assert_allclose(uv, [[40 + 100 / 30, 30], [40, 30 - 101 / 30]], atol=1e-9)


def test_read_qualisys_calibration_errors(tmp_path: Path) -> None:
    p = tmp_path / "bad.qca.txt"
    p.write_text("<calibration><cameras>")
    with pytest.raises(CalibrationError, match="not valid XML"):
        read_qualisys_calibration(p)
    p.write_text("<calibration><cameras><camera serial='x'><fov_video left='0' right='9' "
                 "top='0' bottom='9'/></camera></cameras></calibration>")
    with pytest.raises(CalibrationError, match=r"camera 'x'.*\['intrinsic', 'transform'\]"):
        read_qualisys_calibration(p)
    good = qca_camera("y", 79, 59, np.eye(3), np.zeros(3))
    qca_file(p, [good.replace(' z="0.0"', '')])
    with pytest.raises(CalibrationError, match=r"camera 'y': <transform>.*\['z'\]"):
        read_qualisys_calibration(p)
    qca_file(p, [good.replace('focalLengthU="6400.0"', 'focalLengthU="wide"')])
    with pytest.raises(CalibrationError, match="focalLengthU='wide' is not a number"):
        read_qualisys_calibration(p)


def fake_pose2sim_wheel(tmp_path: Path) -> Path:
    """A zip with the wheel's demo layout: two tiny videos, a calibration and other files."""
    demo = "Pose2Sim/Demo_SinglePerson/"
    wheel = tmp_path / "pose2sim-0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, w in (("camA", 80), ("camB", 72)):      # camB cropped 8 columns, like the demo
            v = tmp_path / f"{name}.avi"
            wr = cv2.VideoWriter(str(v), cv2.VideoWriter_fourcc(*"MJPG"), 60, (w, 60))
            for i in range(12):
                wr.write(np.full((60, w, 3), 20 * i, np.uint8))
            wr.release()
            z.write(v, f"{demo}videos/{name}.mp4")
        rot = cv2.Rodrigues(np.array([0.0, 0.4, 0.0]))[0]
        z.writestr(f"{demo}calibration/Calib.qca.txt", qca_file(tmp_path / "c.qca.txt", [
            qca_camera("camA", 79, 59, np.eye(3), np.array([0, 0, 3000.0])),
            qca_camera("camB", 79, 59, rot, 3000.0 * rot[2])]).read_text())
        z.writestr(f"{demo}Config.toml", "[project]\n")
        z.writestr(f"{demo}calibration/intrinsics/int_camA_img/a.jpg", b"not extracted")
        z.writestr("Pose2Sim/calibration.py", "# not extracted\n")
    return wheel


def test_prepare_pose2sim_demo_from_a_wheel(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    path = prepare_pose2sim_demo(out, wheel=fake_pose2sim_wheel(tmp_path))
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["calibration/Calib.qca.txt", "manifest.yaml", "videos/camA.mp4",
                     "videos/camB.mp4"]
    m = load_manifest(path)
    assert m.root == out and m.camera_ids == ("camA", "camB")
    assert (m.cameras["camB"]["width"], m.cameras["camB"]["height"]) == (72, 60)  # from the video
    assert m.frames.fps == 60 and m.sequences[0].num_frames == 12
    assert m.has_extrinsics("P1", ("camA", "camB"))
    np.testing.assert_allclose(m.camera("camA", "P1").center, [0, 0, 3000], atol=1e-9)
    frames = list(read_frames(m, m.sequences[0], "camB", m.frame_indices(m.sequences[0])[::5]))
    assert [f.error for f in frames] == [None] * 3
    assert [round(float(f.image.mean()) / 20) for f in frames] == [0, 5, 10]


@pytest.mark.parametrize("name", ["synthetic.yaml", "h36m.yaml", "mpi_inf_3dhp.yaml"])
def test_shipped_manifests_hold_out_a_validation_subject(name: str, tmp_path: Path) -> None:
    """Model selection reads `val`: subjects with sequences, disjoint from train and test."""
    m = load_manifest(H36M.parent / name, root=str(tmp_path))
    train, val, test = (set(m.splits[k]) for k in ("train", "val", "test"))
    assert val and not val & train and not val & test and not train & test
    assert val <= {q.subject for q in m.sequences}

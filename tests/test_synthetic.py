"""The rendered synthetic dataset: geometry of the body and motion, the renderer, and a tiny
end-to-end dataset (2 subjects, 3 sequences, 3 frames) generated into tmp folders."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.geometry import cameras as C
from pipeline.joints import H36M17
from pipeline.store.manifest import ManifestError, load_manifest
from pipeline.synthetic import generate_dataset, write_contact_sheet
from pipeline.synthetic import generate as G
from pipeline.synthetic import render as R
from pipeline.synthetic.motion import ACTIONS, Motion, motion_for, pose_sequence
from pipeline.synthetic.skeleton import (forward_kinematics, mean_offsets, rot_x, rot_y, rot_z,
                                         sample_body, semantic_to_euler)

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "data_manifests" / "synthetic.yaml"
FRAMES = 3
SEQS = [("S1", "Walking"), ("S1", "Sitting"), ("S9", "Bending")]


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    """The synthetic manifest restricted to three sequences of two subjects."""
    raw = yaml.safe_load(MANIFEST.read_text())
    raw["sequences"] = [s for s in raw["sequences"] if (s["subject"], s["action"]) in SEQS]
    path = tmp_path_factory.mktemp("manifest") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def dataset(tiny_manifest, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_a")
    out = generate_dataset(tiny_manifest, frames=FRAMES, root=root, workers=1, progress=False)
    assert out == root.resolve()
    return root


def _gt(manifest: Path, root: Path) -> dict[str, dict[str, np.ndarray]]:
    m = load_manifest(manifest, root=str(root))
    out = {}
    for seq in m.sequences:
        with np.load(m.gt_path(seq)) as z:
            out[seq.key] = {k: z[k] for k in z.files}
    return out


# --- skeleton and motion -------------------------------------------------------------------------

def test_rotations_are_proper_and_about_their_axis():
    a = np.random.default_rng(0).uniform(-3, 3, size=50)
    for rot, axis in ((rot_x, 0), (rot_y, 1), (rot_z, 2)):
        Rm = rot(a)
        assert np.allclose(Rm @ np.swapaxes(Rm, -1, -2), np.eye(3), atol=1e-12)
        assert np.allclose(np.linalg.det(Rm), 1.0)
        e = np.eye(3)[axis]
        assert np.allclose(Rm @ e, e)
        assert np.allclose(C.rotation_angle_deg(Rm), np.degrees(np.abs(np.angle(np.exp(1j * a)))))


def test_forward_kinematics_keeps_bone_lengths_for_random_angles():
    rng = np.random.default_rng(1)
    body = sample_body(rng)
    F = 40
    euler = rng.uniform(-np.pi, np.pi, size=(F, H36M17.num_joints, 3))
    yaw = rng.uniform(-np.pi, np.pi, F)
    root = rot_z(yaw) @ rot_y(yaw / 2)
    P, Gf = forward_kinematics(body.offsets, rng.normal(size=(F, 3)) * 1000, root, euler)
    bones = H36M17.bones
    lengths = np.linalg.norm(P[:, bones[:, 1]] - P[:, bones[:, 0]], axis=-1)
    assert np.allclose(lengths, body.bone_lengths[bones[:, 1]], atol=1e-9)
    assert np.allclose(Gf @ np.swapaxes(Gf, -1, -2), np.eye(3), atol=1e-9)


def test_rest_skeleton_has_h36m_like_proportions():
    off = mean_offsets()
    L = {n: np.linalg.norm(off[H36M17.index(n)]) for n in H36M17.names}
    assert L["r_knee"] == pytest.approx(450) and L["l_ankle"] == pytest.approx(440)
    assert L["l_elbow"] == pytest.approx(280) and L["r_wrist"] == pytest.approx(250)
    # left and right mirror each other
    for a, b in H36M17.flip_pairs:
        assert np.allclose(off[a] * [1, -1, 1], off[b])
    body = sample_body(np.random.default_rng(5))
    lens = body.bone_lengths
    assert np.allclose(lens[H36M17.flip_pairs[:, 0]], lens[H36M17.flip_pairs[:, 1]])
    assert 0.9 <= body.height_scale <= 1.1


def test_semantic_angles_move_limbs_the_named_way():
    F = 1
    off = mean_offsets()
    root = np.eye(3)[None]
    rest, _ = forward_kinematics(off, np.zeros((F, 3)), root, semantic_to_euler({}, F))
    flexed, _ = forward_kinematics(off, np.zeros((F, 3)), root, semantic_to_euler(
        {"l_knee": np.array([[60.0, 0, 0]]), "r_elbow": np.array([[0.0, 60, 0]]),
         "spine": np.array([[30.0, 0, 0]])}, F))
    lk, rw, head = H36M17.index("l_knee"), H36M17.index("r_wrist"), H36M17.index("head")
    assert flexed[0, lk, 0] > rest[0, lk, 0] + 300  # hip flexion: knee goes forward (+x)
    assert flexed[0, rw, 1] < rest[0, rw, 1] - 300  # right shoulder abduction: to the right (-y)
    assert flexed[0, head, 0] > rest[0, head, 0] + 200  # spine flexion: head forward
    # limits clip: a 300 degree knee bend is clipped to 150
    e = semantic_to_euler({"l_ankle": np.array([[300.0, 0, 0]])}, 1)
    assert np.degrees(e[0, H36M17.index("l_ankle"), 1]) == pytest.approx(150)
    with pytest.raises(KeyError, match="unknown semantic bones"):
        semantic_to_euler({"tail": np.zeros((1, 3))}, 1)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_actions_are_smooth_with_feet_on_the_floor(action):
    rng = np.random.default_rng(3)
    body = sample_body(rng)
    t = np.arange(250) / 50.0
    P, _ = pose_sequence(body, motion_for(action, rng, t, 1300.0), np.array([100.0, 300.0]))
    assert P.shape == (250, 17, 3) and np.isfinite(P).all()
    ankles = P[:, [H36M17.index("l_ankle"), H36M17.index("r_ankle")], 2]
    assert np.allclose(ankles.min(1), body.ankle_height)
    speed = np.linalg.norm(np.diff(P, axis=0), axis=-1) * 50.0  # mm/s
    assert speed.max() < 8000  # no teleporting joints at 50 fps
    assert np.abs(P[:, 0, :2] - [100.0, 300.0]).max() < 2000
    assert P[..., 2].max() < 2300 * body.height_scale


def test_actions_differ_and_unknown_action_is_rejected():
    rng = np.random.default_rng(0)
    body = sample_body(rng)
    t = np.arange(100) / 50.0
    poses = {a: pose_sequence(body, motion_for(a, np.random.default_rng(1), t, 1300.0),
                              np.zeros(2))[0] for a in ACTIONS}
    pelvis_min = {a: p[:, 0, 2].min() for a, p in poses.items()}
    assert pelvis_min["Sitting"] < pelvis_min["Gestures"] - 150  # sitting lowers the pelvis
    thorax = H36M17.index("thorax")
    lean = {a: np.degrees(np.arccos(np.clip((p[:, thorax] - p[:, 0])[:, 2] / np.linalg.norm(
        p[:, thorax] - p[:, 0], axis=-1), -1, 1))).max() for a, p in poses.items()}
    assert lean["Bending"] > 35 and lean["Gestures"] < 20
    with pytest.raises(KeyError, match="no motion for action"):
        motion_for("Juggling", rng, t, 1000.0)


# --- renderer ------------------------------------------------------------------------------------

def test_ray_capsule_intersection_hits_the_surface():
    rng = np.random.default_rng(2)
    a, b, r = np.array([100.0, -50.0, 4000.0]), np.array([-200.0, 300.0, 4300.0]), 80.0
    # points on the cylindrical part of the surface, seen from the origin
    s = rng.uniform(0.1, 0.9, 200)
    axis = (b - a) / np.linalg.norm(b - a)
    perp = np.cross(axis, rng.normal(size=(200, 3)))
    perp /= np.linalg.norm(perp, axis=-1, keepdims=True)
    pts = a + s[:, None] * (b - a) + r * perp
    facing = (perp * pts).sum(-1) < 0  # only points facing the camera are first hits
    rays = pts[facing] / np.linalg.norm(pts[facing], axis=-1, keepdims=True)
    t, n = R.intersect_capsule(rays, a, b, r)
    assert np.allclose(t, np.linalg.norm(pts[facing], axis=-1), atol=1e-6)
    assert np.allclose(n, perp[facing], atol=1e-6)
    # rays well outside miss
    miss = np.array([[1.0, 0.0, 0.2], [0.0, -1.0, 0.1]])
    miss /= np.linalg.norm(miss, axis=-1, keepdims=True)
    assert np.isinf(R.intersect_capsule(miss, a, b, r)[0]).all()
    # end caps: the ray through the centre of end b hits its sphere at |b| - r
    t_cap, _ = R.intersect_capsule((b / np.linalg.norm(b))[None], b + axis * 1.0, b, r)
    assert t_cap[0] == pytest.approx(np.linalg.norm(b) - r, abs=1e-6)


def test_render_camera_distortion_puts_a_sphere_at_its_projection():
    """A small sphere rendered through the canvas and remap lands at cameras.project."""
    m = load_manifest(MANIFEST)
    cam = m.camera("54138969", "S1")
    rc = G.render_camera(cam)
    target = np.array([45.0, 210.0])  # near a corner: distortion moves it by several px
    xy = C.pixels_to_normalized(target, cam.K, cam.dist)
    Xc = np.array([xy[0], xy[1], 1.0]) * 4500.0
    assert np.linalg.norm(C.project(Xc, cam.K, None) - target) > 3  # distortion matters here
    caps = R.Capsules(a=Xc[None], b=(Xc + [0, 0, 1e-3])[None], radius=np.array([40.0]),
                      part=np.array([0]), tone_dir=np.zeros((1, 3)), tone_thr=np.array([2.0]),
                      tone_part=np.array([0]))
    look = np.ones((len(R.PARTS), 3))
    scene = R.sample_scene(np.random.default_rng(0), cam.center[None], np.zeros(2))
    layer = R.render_body(rc, caps.a, caps.b, caps, caps.tone_dir, look, np.array([0, 0, -1.0]),
                          scene)
    Wc, Hc = rc.size
    canvas = R.compose(np.zeros((Hc, Wc, 4), np.float32), np.full((Hc, Wc, 2), np.nan),
                       rc, layer, np.zeros((1, 3)))
    _, cover = R.finish_image(rc, canvas, scene, np.ones(3), np.zeros((250, 250, 3)))
    ys, xs = np.mgrid[0:cam.height, 0:cam.width]
    centroid = np.array([(cover * xs).sum(), (cover * ys).sum()]) / cover.sum()
    assert np.linalg.norm(centroid - target) < 0.3


def _visibility_from(yaw_offset_deg: float) -> dict[str, bool]:
    """Visibility of the joints of a standing rest pose, rotated ``yaw_offset_deg`` from
    facing camera 54138969 of S1."""
    m = load_manifest(MANIFEST)
    cam = m.camera("54138969", "S1")
    body = sample_body(np.random.default_rng(0))
    centre = np.array([0.0, 300.0])
    to_cam = cam.center[:2] - centre
    yaw = np.degrees(np.arctan2(to_cam[1], to_cam[0])) + yaw_offset_deg
    motion = Motion({}, np.array([yaw]), np.zeros(1), np.zeros(1), np.zeros((1, 2)), True)
    P, Gf = pose_sequence(body, motion, centre)
    caps = R.body_capsules(P, Gf, body)
    rc = G.render_camera(cam)
    a, b = cam.world_to_camera(caps.a[0]), cam.world_to_camera(caps.b[0])
    scene = R.sample_scene(np.random.default_rng(0), cam.center[None], centre)
    layer = R.render_body(rc, a, b, caps, caps.tone_dir[0] @ cam.R.T, np.ones((10, 3)),
                          cam.R @ scene.light, scene)
    Xc = cam.world_to_camera(P[0])
    px = np.rint(R.canvas_project(rc, Xc)).astype(int)
    vis = R.joint_visibility(layer, px, np.linalg.norm(Xc, axis=-1))
    return dict(zip(H36M17.names, vis))


def test_self_occlusion_hides_the_far_arm_in_a_side_view():
    front = _visibility_from(0.0)
    assert all(front.values()), front
    side = _visibility_from(90.0)  # facing left of the camera: the right side is seen
    assert side["r_elbow"] and side["r_wrist"] and side["r_knee"]
    assert not side["l_elbow"] and not side["l_wrist"] and not side["l_knee"]
    back = _visibility_from(180.0)
    assert back["l_wrist"] and back["r_wrist"] and back["head"]


# --- the generated dataset -----------------------------------------------------------------------

def test_ground_truth_shapes_and_dtypes(dataset, tiny_manifest):
    gts = _gt(tiny_manifest, dataset)
    assert sorted(gts) == sorted(f"{s}/{a}/1" for s, a in SEQS)
    m = load_manifest(tiny_manifest, root=str(dataset))
    for key, z in gts.items():
        Cn = len(m.camera_ids)
        assert z["joints_3d_world"].shape == (FRAMES, 17, 3)
        assert z["joints_3d_cam"].shape == (Cn, FRAMES, 17, 3)
        assert z["joints_2d"].shape == (Cn, FRAMES, 17, 2)
        assert z["bbox"].shape == (Cn, FRAMES, 4)
        assert z["visible"].shape == (Cn, FRAMES, 17) and z["visible"].dtype == bool
        for k in ("joints_3d_world", "joints_3d_cam", "joints_2d", "bbox"):
            assert z[k].dtype == np.float32, k
        assert tuple(z["cameras"]) == m.camera_ids
        assert z["visible"].mean() > 0.6  # most joints of a person are visible
    for seq in m.sequences:
        for cam in seq.cameras:
            for f in range(FRAMES):
                img = cv2.imread(str(m.frame_path(seq, cam, f)))
                assert img is not None and img.shape == (250, 250, 3)
        assert m.frame_indices(seq).tolist() == list(range(FRAMES))


def test_ground_truth_is_geometrically_consistent(dataset, tiny_manifest):
    m = load_manifest(tiny_manifest, root=str(dataset))
    for seq in m.sequences:
        with np.load(m.gt_path(seq)) as z:
            for ci, cid in enumerate(z["cameras"]):
                cam = m.camera(str(cid), seq.subject)
                Xc = z["joints_3d_cam"][ci].astype(np.float64)
                uv = C.project(Xc, cam.K, cam.dist)
                assert np.abs(uv - z["joints_2d"][ci]).max() < 1e-3
                assert np.abs(cam.world_to_camera(z["joints_3d_world"].astype(np.float64))
                              - Xc).max() < 0.01
                # every joint inside the image, and inside the rendered body's box
                assert (z["joints_2d"][ci] >= 0).all() and (z["joints_2d"][ci] <= 249).all()
                box = z["bbox"][ci]
                assert (z["joints_2d"][ci] >= box[:, None, :2] - 1.0).all()
                assert (z["joints_2d"][ci] <= box[:, None, 2:] + 1.0).all()
                side = box[:, 2:] - box[:, :2]
                assert (side > 15).all() and (side < 200).all()
            P = z["joints_3d_world"].astype(np.float64)
            bones = H36M17.bones
            lengths = np.linalg.norm(P[:, bones[:, 1]] - P[:, bones[:, 0]], axis=-1)
            assert np.abs(lengths - lengths[0]).max() < 0.05  # mm, float32 storage
            assert 70 < lengths[0].min() and lengths[0].max() < 520


def test_body_is_rendered_where_the_ground_truth_says(dataset, tiny_manifest):
    """Joint pixels differ from the empty room; pixels far from the box do not."""
    m = load_manifest(tiny_manifest, root=str(dataset))
    seq = m.sequences[0]
    sim = G.simulate_sequence(m, seq, FRAMES)
    with np.load(m.gt_path(seq)) as z:
        uv, vis, box = z["joints_2d"], z["visible"], z["bbox"]
    on, off = [], []
    for ci, cam in enumerate(sim.cams):
        rc = G.render_camera(cam)
        bg, _ = R.render_background(rc, sim.scene)
        empty, _ = R.finish_image(rc, bg, sim.scene, sim.scene.gains[ci],
                                  np.zeros((250, 250, 3), np.float32))
        empty = empty.astype(np.float32)
        for f in range(FRAMES):
            img = cv2.imread(str(m.frame_path(seq, cam.name, f))).astype(np.float32)
            diff = cv2.blur(np.abs(img - empty).sum(-1), (3, 3))
            p = np.rint(uv[ci, f]).astype(int)
            torso_limbs = [H36M17.index(n) for n in ("spine", "thorax", "l_knee", "r_knee",
                                                     "l_hip", "r_hip", "pelvis")]
            on.append(diff[p[torso_limbs, 1], p[torso_limbs, 0]])
            b = box[ci, f]
            ys, xs = np.mgrid[0:250, 0:250]
            far = ((xs < b[0] - 25) | (xs > b[2] + 25) | (ys < b[1] - 25) | (ys > b[3] + 25))
            off.append(diff[far])
    on, off = np.concatenate(on), np.concatenate(off)
    assert np.median(off) < 12  # noise and JPEG only
    assert np.mean(on > 30) > 0.9  # the body covers the joints


def test_generation_is_deterministic_across_runs_and_workers(dataset, tiny_manifest,
                                                             tmp_path):
    other = generate_dataset(tiny_manifest, frames=FRAMES, root=tmp_path, workers=2,
                             progress=False)
    a_files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    b_files = sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    assert a_files == b_files and len(a_files) == len(SEQS) * (4 * FRAMES + 1)
    for rel in a_files:
        assert (dataset / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_resume_skips_finished_sequences_and_redoes_missing_ones(tiny_manifest, tmp_path):
    root = generate_dataset(tiny_manifest, frames=2, root=tmp_path, workers=1, progress=False,
                            subjects=["S1"])
    m = load_manifest(tiny_manifest, root=str(root))
    walk, sit = (s for s in m.sequences if s.subject == "S1")
    assert m.gt_path(m.sequences[-1]).exists() is False  # S9 was not asked for
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    m.gt_path(sit).unlink()
    generate_dataset(tiny_manifest, frames=2, root=tmp_path, workers=1, progress=False,
                     subjects=["S1"])
    for p, t in stamp.items():
        same = p.stat().st_mtime_ns == t
        assert same == (sit.action not in str(p)), p  # only the sitting files were rewritten
    assert m.gt_path(sit).exists()
    # a shorter run regenerates and removes frames beyond the new end
    generate_dataset(tiny_manifest, frames=1, root=tmp_path, workers=1, progress=False,
                     subjects=["S1"])
    assert m.frame_indices(walk).tolist() == [0]
    with np.load(m.gt_path(walk)) as z:
        assert z["joints_3d_world"].shape[0] == 1
    assert not list(root.rglob("*.tmp"))
    with pytest.raises(ValueError, match="S42"):
        generate_dataset(tiny_manifest, frames=1, root=tmp_path, subjects=["S42"])


def test_contact_sheet(dataset, tiny_manifest, tmp_path):
    out = write_contact_sheet(tiny_manifest, tmp_path / "sheet.png", root=dataset,
                              sequences=2, frames_per_sequence=2, scale=2)
    img = cv2.imread(str(out))
    assert img.shape == (2 * 2 * 500, 4 * 500, 3)
    with pytest.raises(FileNotFoundError):
        write_contact_sheet(tiny_manifest, tmp_path / "none.png", root=tmp_path / "empty")


def test_frames_per_sequence_follows_split_size_and_override():
    m = load_manifest(MANIFEST)
    assert G.frames_per_sequence(m) == m.synthetic["frames_per_sequence"] == 100
    assert G.frames_per_sequence(m, split="test") == G.frames_per_sequence(m, split="val") == 100
    assert G.frames_per_sequence(m, split="train") == 20 and G.frame_stride(m, "train") == 5
    assert G.frame_stride(m, "test") == G.frame_stride(m) == 1
    assert G.frames_per_sequence(m, size=2.5) == 250
    assert G.frames_per_sequence(m, size=2.5, split="train") == 50
    assert G.frames_per_sequence(m, size=2.5, frames=7, split="train") == 7
    with pytest.raises(ValueError, match="at least one frame"):
        G.frames_per_sequence(m, size=0.001)


@pytest.mark.parametrize("splits, message", [
    ({"holdout": {"frame_stride": 2}}, "no such split"),
    ({"train": {"fps": 10}}, "may set only"),
    ({"train": {"frame_stride": 0}}, "frame_stride must be an integer"),
])
def test_bad_per_split_settings_name_the_key(tmp_path, splits, message):
    raw = yaml.safe_load(MANIFEST.read_text())
    raw["synthetic"]["splits"] = splits
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ManifestError, match=message) as e:
        G.frame_stride(load_manifest(path), "train")
    assert "bad.yaml" in str(e.value)


def test_each_split_is_rendered_with_its_own_frames_and_stride(tmp_path):
    """The training split's sequences get their own length and motion stride; the held-out
    splits keep the manifest-wide ones (the ground truth shows both)."""
    raw = yaml.safe_load(MANIFEST.read_text())
    raw["sequences"] = [{"subject": "X01", "action": "Gestures", "subaction": 1},
                        {"subject": "S9", "action": "Gestures", "subaction": 1}]
    raw["synthetic"].update(frames_per_sequence=4, splits={"train": {"frames_per_sequence": 2,
                                                                     "frame_stride": 3}})
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(raw))
    generate_dataset(path, root=tmp_path / "data", workers=1, progress=False)
    m = load_manifest(path, root=str(tmp_path / "data"))
    train, test = m.sequences
    with np.load(m.gt_path(train)) as z:
        sparse = z["joints_3d_world"]
    with np.load(m.gt_path(test)) as z:
        assert z["joints_3d_world"].shape[0] == 4
    assert sparse.shape[0] == 2
    assert m.frame_path(train, train.cameras[0], 1).exists()
    assert not m.frame_path(train, train.cameras[0], 2).exists()
    raw["synthetic"]["splits"] = {}                         # the same sequence at 50 fps
    path.write_text(yaml.safe_dump(raw))
    dense = G.simulate_sequence(load_manifest(path), train, 4).joints_world
    assert np.abs(dense[1] - dense[0]).max() > 1.0
    np.testing.assert_allclose(sparse, dense[[0, 3]], atol=1e-3)


def test_capture_centre_is_where_the_h36m_cameras_look():
    m = load_manifest(MANIFEST)
    for subject in m.splits["train"] + m.splits["test"]:
        cams = [m.camera(c, subject) for c in m.camera_ids]
        centre = G.capture_centre(cams)
        assert 300 < centre[2] < 550 and np.linalg.norm(centre[:2]) < 700
        for c in cams:  # each optical axis passes within 0.45 m of it
            v = centre - c.center
            assert np.linalg.norm(v - (v @ c.R[2]) * c.R[2]) < 450


def test_data_command_renders_only_the_subjects_asked_for(tmp_path):
    """``python -m pipeline data --subjects``: a benchmark's workload without the rest of the
    set; an unknown subject is a one-line error naming the manifest, not a traceback."""
    from click.testing import CliRunner

    from pipeline.__main__ import cli

    root = tmp_path / "part"
    args = ["data", "--root", str(root), "--no-sheet", "--workers", "1", "--size", "0.02"]
    bad = CliRunner().invoke(cli, args + ["--subjects", "S99"])
    assert bad.exit_code == 1 and "S99" in bad.output and "synthetic.yaml" in bad.output
    assert "Traceback" not in bad.output
    ok = CliRunner().invoke(cli, args + ["--subjects", "S9"])
    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (root / "gt").iterdir()} == {"S9"}
    m = load_manifest("data_manifests/synthetic.yaml", root=str(root))
    for seq in (s for s in m.sequences if s.subject == "S9"):
        assert m.frame_path(seq, seq.cameras[0], 1).exists()  # 100 x 0.02 = 2 frames
        assert not m.frame_path(seq, seq.cameras[0], 2).exists()

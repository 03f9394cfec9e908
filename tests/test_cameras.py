import cv2
import numpy as np
import pytest

from pipeline.geometry import cameras as C


def _random_points(n, rng, depth=(2000, 6000)):
    xy = rng.uniform(-800, 800, size=(n, 2))
    z = rng.uniform(*depth, size=(n, 1))
    return np.concatenate([xy, z], axis=1)


@pytest.fixture
def cam(h36m_cameras):
    i = h36m_cameras["intrinsics"]["54138969"]
    e = h36m_cameras["extrinsics"]["S1"]["54138969"]
    return C.Camera("54138969", np.array(i["K"], float), np.array(i["distortion_opencv"]),
                    i["width"], i["height"], np.array(e["R_w2c"]), np.array(e["t_mm"]))


def test_project_matches_opencv(cam):
    rng = np.random.default_rng(0)
    Xc = _random_points(200, rng)
    ours = C.project(Xc, cam.K, cam.dist)
    ref, _ = cv2.projectPoints(Xc, np.zeros(3), np.zeros(3), cam.K, cam.dist)
    assert np.abs(ours - ref.reshape(-1, 2)).max() < 1e-6


def test_batched_shapes_and_world_round_trip(cam):
    rng = np.random.default_rng(1)
    Xw = rng.normal(size=(3, 5, 17, 3)) * 500
    Xc = cam.world_to_camera(Xw)
    assert Xc.shape == Xw.shape
    assert np.allclose(C.camera_to_world(Xc, cam.R, cam.t), Xw)
    assert np.allclose(np.linalg.norm(Xc - Xc[..., :1, :], axis=-1),
                       np.linalg.norm(Xw - Xw[..., :1, :], axis=-1))  # rigid
    assert np.allclose(cam.center, -cam.R.T @ cam.t)


def test_unproject_inverts_project_with_distortion(cam):
    rng = np.random.default_rng(2)
    Xc = _random_points(300, rng).reshape(10, 30, 3)
    uv = C.project(Xc, cam.K, cam.dist)
    back = C.unproject(uv, Xc[..., 2], cam.K, cam.dist)
    assert np.abs(back - Xc).max() < 1e-3  # mm, at up to 6 m


def test_undistort_pixels_gives_pinhole_projection(cam):
    rng = np.random.default_rng(3)
    Xc = _random_points(100, rng)
    ideal = C.project(Xc, cam.K, None)
    assert np.abs(C.undistort_pixels(C.project(Xc, cam.K, cam.dist), cam.K, cam.dist)
                  - ideal).max() < 1e-4


def test_scaled_intrinsics_match_resized_image_coordinates():
    K = C.intrinsic_matrix(1000, 1000, 500, 400)
    X = np.array([[100.0, -50.0, 3000.0]])
    s = 0.25
    uv = C.project(X, K)
    uv_small = C.project(X, C.scale_intrinsics(K, s))
    assert np.allclose(uv_small, (uv + 0.5) * s - 0.5)


def test_crop_affine_maps_box_and_inverts():
    A = C.crop_affine(np.array([100.0, 50.0]), 40.0, 64)
    pts = np.array([[100.0, 50.0], [80.0, 30.0], [120.0, 70.0]])
    out = C.apply_affine(pts, A)
    assert np.allclose(out[0], [31.5, 31.5])
    assert np.allclose(out[2] - out[1], [64, 64])
    assert np.allclose(C.apply_affine(out, C.invert_affine(A)), pts)


def test_crop_affine_matches_warp_affine_and_rotation():
    img = np.zeros((100, 100), np.uint8)
    img[30, 60] = 255
    A = C.crop_affine(np.array([50.0, 50.0]), 60.0, 48, rotation_deg=30.0)
    crop = cv2.warpAffine(img, A, (48, 48), flags=cv2.INTER_LINEAR)
    peak = np.unravel_index(np.argmax(crop), crop.shape)[::-1]
    expect = C.apply_affine(np.array([[60.0, 30.0]]), A)[0]
    assert np.abs(np.array(peak) - expect).max() <= 1.0
    # batched: several centres at once
    Ab = C.crop_affine(np.array([[50.0, 50.0], [10.0, 20.0]]), np.array([60.0, 30.0]), 48)
    assert Ab.shape == (2, 2, 3)
    assert np.allclose(C.apply_affine(np.array([[[10.0, 20.0]]]), Ab[1:])[0, 0], [23.5, 23.5])


def test_boxes():
    uv = np.array([[[10.0, 20.0], [30.0, 60.0], [np.nan, np.nan]]])
    box = C.box_from_points(uv)
    assert np.allclose(box, [[10, 20, 30, 60]])
    c, side = C.box_to_square(box, margin=0.5)
    assert np.allclose(c, [[20, 40]]) and np.allclose(side, [80])


def test_rotation_errors():
    R = cv2.Rodrigues(np.array([0.0, 0.0, np.deg2rad(10)]))[0]
    assert np.isclose(C.rotation_angle_deg(R), 10)
    assert np.isclose(C.rotation_error_deg(R, np.eye(3)), 10)
    assert np.isclose(C.angle_between_deg(np.array([1.0, 0, 0]), np.array([0, 1.0, 0])), 90)


def test_pixels_to_normalized_inverts_strong_distortion_to_the_corners():
    """OpenCV's 5 fixed iterations plus one Newton step: back to the same pixel to 1e-9 px over
    the whole image (OpenCV's 5 iterations alone leave > 1e-7 px there), skew included."""
    K = np.array([[1145.0, 0.4, 512.0], [0, 1144.0, 515.0], [0, 0, 1]])
    dist = np.array([-0.207, 0.247, -0.0009, -0.0014, -0.0031])
    u, v = np.meshgrid(np.linspace(0, 1000, 41), np.linspace(0, 1000, 41))
    uv = np.stack([u, v], -1)
    xy = C.pixels_to_normalized(uv, K, dist)
    assert xy.shape == uv.shape
    back = C.distort_normalized(xy, dist) @ K[:2, :2].T + K[:2, 2]
    assert np.abs(back - uv).max() < 1e-9
    fixed = cv2.undistortPoints(uv.reshape(-1, 1, 2), K, dist).reshape(uv.shape)
    assert np.abs(C.distort_normalized(fixed, dist) @ K[:2, :2].T + K[:2, 2] - uv).max() > 1e-7


def test_pixels_to_normalized_rational_model_runs_opencv_to_convergence():
    K = np.array([[1000.0, 0, 500.0], [0, 1000.0, 500.0], [0, 0, 1]])
    dist = np.array([-0.2, 0.1, 0.001, -0.001, 0.0, 0.05, 0.01, 0.002])
    rng = np.random.default_rng(4)
    Xc = _random_points(200, rng)
    uv, _ = cv2.projectPoints(Xc, np.zeros(3), np.zeros(3), K, dist)
    xy = C.pixels_to_normalized(uv.reshape(-1, 2), K, dist)
    assert np.abs(xy - Xc[:, :2] / Xc[:, 2:]).max() < 1e-9


def test_pixels_to_normalized_accepts_four_coefficients():
    K = np.array([[1000.0, 0, 500.0], [0, 1000.0, 500.0], [0, 0, 1]])
    Xc = _random_points(50, np.random.default_rng(5))
    four = np.array([-0.2, 0.1, 0.001, -0.001])
    uv = C.project(Xc, K, np.append(four, 0.0))
    assert np.abs(C.pixels_to_normalized(uv, K, four) - Xc[:, :2] / Xc[:, 2:]).max() < 1e-9

"""Ray-cast rendering of the synthetic body and room, with real lens distortion.

Pipeline of one image (all numpy / OpenCV, vectorised per capsule and per pixel):

1. The scene is rendered in an *ideal pinhole canvas*: the camera's K scaled by the
   supersampling factor ``ss`` and shifted so that the canvas covers every ray the distorted
   image sees (barrel distortion pulls the corners inwards, so the canvas is a little larger).
2. The room (floor with tiles/planks/rugs, walls with doors and posters, ceiling) is ray-cast
   once per camera and sequence: :func:`render_background`.
3. The body is a set of capsules (sphere-swept segments). Each capsule is intersected exactly
   with the pixel rays inside its own projected bounding box; a z-buffer keeps the nearest
   surface; shading is ambient + Lambert + a little specular from one light: :func:`render_body`.
4. The canvas is resampled into the distorted image with a cached ``cv2.remap`` map (for every
   distorted pixel: its undistorted pinhole position), area-averaged down to the output size,
   blurred a little and given sensor noise: :func:`finish_image`.

Because step 4 uses ``cameras.undistort_pixels``, a world point rendered at its pinhole position
appears at ``cameras.project(X_cam, K, dist)`` in the saved image: the saved 2D ground truth
lands on the rendered joints.

Colours are BGR floats in [0, 1] (OpenCV order).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.geometry.cameras import Camera, scale_intrinsics, undistort_pixels
from pipeline.joints import H36M17
from pipeline.synthetic.skeleton import Body

# --- camera ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderCamera:
    """A camera prepared for rendering.

    Attributes:
        cam: the manifest camera with extrinsics.
        ss: supersampling factor.
        K: (3, 3) pinhole intrinsics of the canvas (supersampled, shifted).
        size: canvas (width, height) in pixels.
        rays: (H_c, W_c, 3) unit ray direction of every canvas pixel, camera frame.
        map_x, map_y: (ss*H, ss*W) float32 canvas position of every supersampled distorted pixel.
    """

    cam: Camera
    ss: int
    K: np.ndarray
    size: tuple[int, int]
    rays: np.ndarray
    map_x: np.ndarray
    map_y: np.ndarray


def make_render_camera(cam: Camera, ss: int = 2, margin: int = 3) -> RenderCamera:
    """Build the canvas intrinsics, the per-pixel rays and the distortion remap of ``cam``."""
    W, H = cam.width * ss, cam.height * ss
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    # supersampled distorted pixel -> output pixel -> ideal pinhole pixel -> supersampled.
    uv = np.stack([(u + 0.5) / ss - 0.5, (v + 0.5) / ss - 0.5], axis=-1)
    pin = undistort_pixels(uv, cam.K, cam.dist)
    q = (pin + 0.5) * ss - 0.5
    origin = np.floor(q.reshape(-1, 2).min(0)) - margin
    end = np.ceil(q.reshape(-1, 2).max(0)) + margin
    Kc = scale_intrinsics(cam.K, ss)
    Kc[:2, 2] -= origin
    Wc, Hc = (end - origin + 1).astype(int)
    cu, cv = np.meshgrid(np.arange(Wc, dtype=np.float64), np.arange(Hc, dtype=np.float64))
    d = np.stack([(cu - Kc[0, 2]) / Kc[0, 0], (cv - Kc[1, 2]) / Kc[1, 1], np.ones_like(cu)], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    mx = (q[..., 0] - origin[0]).astype(np.float32)
    my = (q[..., 1] - origin[1]).astype(np.float32)
    return RenderCamera(cam, ss, Kc, (int(Wc), int(Hc)), d, mx, my)


def canvas_project(rc: RenderCamera, Xc: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) canvas pixels (pinhole, no distortion)."""
    return Xc[..., :2] / Xc[..., 2:3] * np.array([rc.K[0, 0], rc.K[1, 1]]) + rc.K[:2, 2]


# --- looks and scenes -----------------------------------------------------------------------------

PARTS = ("upper", "upper_l", "upper_r", "lower", "lower_l", "lower_r", "skin", "hair", "shoes",
         "front")
"""Colour slots of a subject; ``_l``/``_r`` are the left/right sleeves and trouser legs."""


def _hsv_bgr(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array([b, g, r])


def sample_look(rng: np.random.Generator) -> np.ndarray:
    """(len(PARTS), 3) BGR colours of one subject's clothes, skin and hair.

    Left sleeves and legs are always a clearly lighter, less saturated shade of the garment and
    right ones a darker shade, so that a 2D network can tell left from right from any view.
    """
    hu, su, vu = rng.uniform(), rng.uniform(0.35, 0.9), rng.uniform(0.45, 0.65)
    hl, sl, vl = rng.uniform(), rng.uniform(0.25, 0.8), rng.uniform(0.4, 0.6)
    skin_v = rng.uniform(0.35, 0.9)
    colours = {
        "upper": _hsv_bgr(hu, su, vu),
        "upper_l": _hsv_bgr(hu, su * 0.55, min(1.0, vu * 1.55)),
        "upper_r": _hsv_bgr(hu, su, vu * 0.5),
        "lower": _hsv_bgr(hl, sl, vl),
        "lower_l": _hsv_bgr(hl, sl * 0.55, min(1.0, vl * 1.6)),
        "lower_r": _hsv_bgr(hl, sl, vl * 0.5),
        "skin": _hsv_bgr(rng.uniform(0.03, 0.09), rng.uniform(0.3, 0.55), skin_v),
        "hair": _hsv_bgr(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.4)),
        "shoes": _hsv_bgr(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.1, 0.35)),
        "front": _hsv_bgr(hu + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.8), rng.uniform(0.6, 0.9)),
    }
    return np.stack([colours[p] for p in PARTS])


@dataclass(frozen=True)
class Scene:
    """Per-sequence room and light. Lengths in mm, colours BGR in [0, 1].

    Attributes:
        seed: seed of the procedural textures.
        light: (3,) unit vector towards the light, world frame.
        ambient, diffuse, specular: shading weights.
        room: (3,) half sizes x, y and the ceiling height of the room around the capture centre.
        centre: (2,) world xy of the room centre.
        floor_kind: 0 tiles, 1 planks, 2 speckled.
        floor_colours: (2, 3); wall_colours: (4, 3); ceiling: (3,).
        tile: tile or plank size.
        rugs: (R, 7) rug centre x, y, half sizes, angle (rad) and colour index into rug_colours.
        rug_colours: (R, 3).
        posters: (P, 6) wall index, centre u, centre z, half width, half height, colour index.
        poster_colours: (P, 3).
        blur_sigma, noise_sigma: image blur (output pixels) and sensor noise (0-255 scale).
        gains: (C, 3) per camera colour gains (white balance and exposure).
    """

    seed: int
    light: np.ndarray
    ambient: float
    diffuse: float
    specular: float
    room: np.ndarray
    centre: np.ndarray
    floor_kind: int
    floor_colours: np.ndarray
    wall_colours: np.ndarray
    ceiling: np.ndarray
    tile: float
    rugs: np.ndarray
    rug_colours: np.ndarray
    posters: np.ndarray
    poster_colours: np.ndarray
    blur_sigma: float
    noise_sigma: float
    gains: np.ndarray


def sample_scene(rng: np.random.Generator, cam_centres: np.ndarray, capture_xy: np.ndarray
                 ) -> Scene:
    """A random room that encloses the cameras (``cam_centres`` (C, 3) world mm), a light, and
    the image degradations."""
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(35), np.radians(75))
    light = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    half = np.abs(cam_centres[:, :2] - capture_xy).max(0) + rng.uniform(800, 2500, size=2)
    room = np.array([half[0], half[1], rng.uniform(3200, 4500)])
    fh = rng.uniform()
    floor = np.stack([_hsv_bgr(fh, rng.uniform(0, 0.5), rng.uniform(0.25, 0.75)),
                      _hsv_bgr(fh + rng.uniform(-0.1, 0.1), rng.uniform(0, 0.5),
                               rng.uniform(0.25, 0.75))])
    wh = rng.uniform()
    walls = np.stack([_hsv_bgr(wh + rng.uniform(-0.08, 0.08), rng.uniform(0, 0.45),
                               rng.uniform(0.4, 0.9)) for _ in range(4)])
    n_rugs = int(rng.integers(1, 4))
    rugs = np.column_stack([
        rng.uniform(-2500, 2500, n_rugs), rng.uniform(-2500, 2500, n_rugs),
        rng.uniform(300, 1200, n_rugs), rng.uniform(300, 1200, n_rugs),
        rng.uniform(0, np.pi, n_rugs), np.arange(n_rugs)]).reshape(n_rugs, 6)
    rug_colours = np.stack([_hsv_bgr(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 0.8))
                            for _ in range(n_rugs)]).reshape(n_rugs, 3)
    n_posters = int(rng.integers(4, 14))
    posters = np.column_stack([
        rng.integers(0, 4, n_posters), rng.uniform(-0.9, 0.9, n_posters),
        rng.uniform(300, 2600, n_posters), rng.uniform(150, 900, n_posters),
        rng.uniform(150, 1000, n_posters), np.arange(n_posters)])
    poster_colours = np.stack([_hsv_bgr(rng.uniform(), rng.uniform(0.1, 1.0),
                                        rng.uniform(0.1, 1.0)) for _ in range(n_posters)])
    C = cam_centres.shape[0]
    gains = rng.uniform(0.85, 1.15) * (1 + rng.normal(0, 0.04, size=(C, 3)))
    return Scene(
        seed=int(rng.integers(2**31)), light=light, ambient=float(rng.uniform(0.3, 0.55)),
        diffuse=float(rng.uniform(0.45, 0.8)), specular=float(rng.uniform(0.0, 0.25)),
        room=room, centre=np.asarray(capture_xy, dtype=np.float64),
        floor_kind=int(rng.integers(0, 3)), floor_colours=floor, wall_colours=walls,
        ceiling=_hsv_bgr(rng.uniform(), rng.uniform(0, 0.15), rng.uniform(0.6, 0.95)),
        tile=float(rng.uniform(300, 900)), rugs=rugs, rug_colours=rug_colours,
        posters=posters, poster_colours=poster_colours,
        blur_sigma=float(rng.uniform(0.35, 0.85)), noise_sigma=float(rng.uniform(1.0, 4.0)),
        gains=gains)


# --- procedural textures --------------------------------------------------------------------------

def value_noise(x: np.ndarray, y: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1] at (...) coordinates, feature size ``cell``."""
    table = np.random.default_rng(seed).uniform(size=(64, 64))
    gx, gy = x / cell, y / cell
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = smooth01(gx - ix), smooth01(gy - iy)
    v00, v10 = table[iy % 64, ix % 64], table[iy % 64, (ix + 1) % 64]
    v01, v11 = table[(iy + 1) % 64, ix % 64], table[(iy + 1) % 64, (ix + 1) % 64]
    return (v00 * (1 - fx) + v10 * fx) * (1 - fy) + (v01 * (1 - fx) + v11 * fx) * fy


def smooth01(x: np.ndarray) -> np.ndarray:
    return x * x * (3 - 2 * x)


def _hash01(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer cell."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (seed * 83492791)
    return ((h % 10007 + 10007) % 10007) / 10007.0


def _floor_albedo(xy: np.ndarray, scene: Scene) -> np.ndarray:
    """(N, 2) floor points (world mm) -> (N, 3) colours."""
    x, y = xy[:, 0] - scene.centre[0], xy[:, 1] - scene.centre[1]
    s = scene.tile
    ix, iy = np.floor(x / s), np.floor(y / s)
    if scene.floor_kind == 0:  # tiles with grout
        pick = ((ix + iy) % 2).astype(np.int64)
        grout = (np.minimum(np.abs(x / s - np.round(x / s)), np.abs(y / s - np.round(y / s)))
                 * s) < 6
        col = scene.floor_colours[pick] * np.where(grout, 0.6, 1.0)[:, None]
    elif scene.floor_kind == 1:  # planks along x with staggered joints
        w = s / 4
        row = np.floor(y / w)
        shift = _hash01(row, row * 0, scene.seed) * s * 2
        plank = np.floor((x + shift) / (2 * s))
        shade = 0.8 + 0.35 * _hash01(row, plank, scene.seed)
        edge = (np.abs(y / w - np.round(y / w)) * w) < 4
        col = scene.floor_colours[0] * (shade * np.where(edge, 0.65, 1.0))[:, None]
    else:  # speckled concrete
        col = (scene.floor_colours[0] * 0.7 + scene.floor_colours[1] * 0.3
               ) * (0.75 + 0.5 * value_noise(x, y, 25.0, scene.seed + 2))[:, None]
    col = col * (0.85 + 0.3 * value_noise(x, y, 700.0, scene.seed + 1))[:, None]
    for cx, cy, hx, hy, ang, ci in scene.rugs:
        dx, dy = x - cx, y - cy
        u = np.cos(ang) * dx + np.sin(ang) * dy
        v = -np.sin(ang) * dx + np.cos(ang) * dy
        inside = np.flatnonzero((np.abs(u) < hx) & (np.abs(v) < hy))
        ui, vi = u[inside], v[inside]
        stripe = 0.85 + 0.15 * (np.floor(ui / 120) % 2)
        border = (np.abs(ui) > hx - 60) | (np.abs(vi) > hy - 60)
        col[inside] = scene.rug_colours[int(ci)] * np.where(border, 0.6, stripe)[:, None]
    return col


def _wall_albedo(wall: np.ndarray, u: np.ndarray, z: np.ndarray, half_len: np.ndarray,
                 scene: Scene) -> np.ndarray:
    """Wall points: wall index (N,), horizontal coordinate u (N,) mm, height z (N,) mm."""
    col = scene.wall_colours[wall] * (0.8 + 0.25 * value_noise(u, z, 400.0, scene.seed + 3)
                                      )[:, None]
    col = col * (0.75 + 0.25 * np.clip(z / 2500, 0, 1))[:, None]  # darker near the floor
    col = np.where((z < 120)[:, None], col * 0.45, col)  # skirting board
    pattern = 0.7 + 0.3 * value_noise(u, z, 150.0, scene.seed + 10)
    for w, cu, cz, hw, hh, ci in scene.posters:
        uu = cu * half_len
        du, dz = np.abs(u - uu), np.abs(z - cz)
        inside = np.flatnonzero((wall == int(w)) & (du < hw) & (dz < hh))
        frame = (du[inside] > hw - 40) | (dz[inside] > hh - 40)
        base = scene.poster_colours[int(ci)]
        col[inside] = np.where(frame[:, None], base * 0.3, base * pattern[inside, None])
    return col


def render_background(rc: RenderCamera, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the room into the canvas.

    Returns:
        (H_c, W_c, 4) float32 canvas (BGR and a zero body-coverage channel) and (H_c, W_c, 2)
        world xy of the floor point seen by each pixel (NaN on walls and the ceiling).
    """
    cam = rc.cam
    d = rc.rays.reshape(-1, 3) @ cam.R  # world directions (R.T @ d)
    o = cam.center
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.array([scene.centre[0] - scene.room[0], scene.centre[1] - scene.room[1], 0.0])
        hi = np.array([scene.centre[0] + scene.room[0], scene.centre[1] + scene.room[1],
                       scene.room[2]])
        t_planes = np.where(d > 0, (hi - o) / d, (lo - o) / d)  # exit distance per axis
    t_planes = np.where(np.isfinite(t_planes) & (t_planes > 0), t_planes, np.inf)
    axis = np.argmin(t_planes, axis=1)
    t = t_planes[np.arange(d.shape[0]), axis]
    p = o + d * t[:, None]
    col = np.empty((d.shape[0], 3))
    floor = (axis == 2) & (d[:, 2] < 0)
    ceil = (axis == 2) & (d[:, 2] >= 0)
    col[floor] = _floor_albedo(p[floor, :2], scene)
    col[ceil] = scene.ceiling * (0.9 + 0.1 * value_noise(p[ceil, 0], p[ceil, 1], 500.0,
                                                         scene.seed + 4))[:, None]
    wall_mask = axis < 2
    wall = np.where(axis == 0, np.where(d[:, 0] > 0, 0, 1), np.where(d[:, 1] > 0, 2, 3))[wall_mask]
    pw = p[wall_mask] - np.array([scene.centre[0], scene.centre[1], 0.0])
    u = np.where(wall < 2, pw[:, 1], pw[:, 0])
    half_len = np.where(wall < 2, scene.room[1], scene.room[0])
    col[wall_mask] = _wall_albedo(wall, u, pw[:, 2], half_len, scene)
    # soft light fall-off with distance from the light-facing side of the room
    col *= (0.75 + 0.25 * np.clip(1.0 - t / 12000.0, 0, 1))[:, None]
    Wc, Hc = rc.size
    floor_xy = np.where(floor[:, None], p[:, :2], np.nan).reshape(Hc, Wc, 2).astype(np.float32)
    canvas = np.zeros((Hc, Wc, 4), np.float32)
    canvas[..., :3] = col.reshape(Hc, Wc, 3)
    return canvas, floor_xy


# --- body capsules --------------------------------------------------------------------------------

_I = {n: i for i, n in enumerate(H36M17.names)}
_P = {n: i for i, n in enumerate(PARTS)}

CAPSULE_NAMES: tuple[str, ...] = (
    "head", "nose", "neck", "belly", "chest", "l_flank", "r_flank", "shoulders", "hips",
    "l_upper_arm", "r_upper_arm", "l_forearm", "r_forearm", "l_hand", "r_hand",
    "l_thigh", "r_thigh", "l_shin", "r_shin", "l_foot", "r_foot")
"""The body's capsules, in the order of :func:`body_capsules`."""

_TORSO = ("belly", "chest", "l_flank", "r_flank", "shoulders", "hips")
# The capsules each joint lies inside: a joint is visible when the surface in front of it
# belongs to one of these (or nothing hides it); any other capsule in front occludes it.
_OWNERS: dict[str, tuple[str, ...]] = {
    "pelvis": _TORSO + ("l_thigh", "r_thigh"), "spine": _TORSO, "thorax": _TORSO + ("neck",),
    "neck": ("head", "nose", "neck"), "head": ("head", "nose"),
    **{f"{s}_hip": _TORSO + (f"{s}_thigh",) for s in "lr"},
    **{f"{s}_knee": (f"{s}_thigh", f"{s}_shin") for s in "lr"},
    **{f"{s}_ankle": (f"{s}_shin", f"{s}_foot") for s in "lr"},
    **{f"{s}_shoulder": _TORSO + (f"{s}_upper_arm",) for s in "lr"},
    **{f"{s}_elbow": (f"{s}_upper_arm", f"{s}_forearm") for s in "lr"},
    **{f"{s}_wrist": (f"{s}_forearm", f"{s}_hand") for s in "lr"},
}
JOINT_OWNS_CAPSULE = np.array([[c in _OWNERS[j] for c in CAPSULE_NAMES] for j in H36M17.names])
"""(J, N) bool: capsule n contains joint j."""


@dataclass(frozen=True)
class Capsules:
    """Body capsules of a sequence, world frame.

    Attributes:
        a, b: (F, N, 3) segment end points, mm.
        radius: (N,) mm.
        part: (N,) colour slot (index into PARTS).
        tone_dir: (F, N, 3) unit direction; surface points whose normal has a dot product above
            ``tone_thr`` with it take colour ``tone_part`` (hair at the back of the head,
            the front panel of the shirt); zero vector for one-colour capsules.
        tone_thr: (N,); tone_part: (N,).
    """

    a: np.ndarray
    b: np.ndarray
    radius: np.ndarray
    part: np.ndarray
    tone_dir: np.ndarray
    tone_thr: np.ndarray
    tone_part: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        return CAPSULE_NAMES


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


_CapsuleSpec = tuple[np.ndarray, np.ndarray, float, str, np.ndarray, float, str]
"""(a (F, 3), b (F, 3), radius, part, tone_dir (F, 3), tone_thr, tone_part) of one capsule."""


def body_capsules(joints: np.ndarray, frames: np.ndarray, body: Body) -> Capsules:
    """Capsules of the body for every frame.

    Args:
        joints: (F, J, 3) world joint positions (mm).
        frames: (F, J, 3, 3) joint frames from forward kinematics (columns forward, left, up).
        body: the subject (scales radii).
    Returns:
        Capsules with a, b, tone_dir (F, C, 3) and radius, part, tone_thr, tone_part (C,), in
        the order of ``CAPSULE_NAMES``.
    """
    P = {n: joints[:, i] for n, i in _I.items()}
    specs = (_head_capsules(P, frames, body) + _torso_capsules(P, frames, body)
             + _limb_capsules(P, frames, body))
    return Capsules(
        a=np.stack([x[0] for x in specs], axis=1),
        b=np.stack([x[1] for x in specs], axis=1),
        radius=np.array([x[2] for x in specs]),
        part=np.array([_P[x[3]] for x in specs]),
        tone_dir=np.stack([x[4] for x in specs], axis=1),
        tone_thr=np.array([x[5] for x in specs]),
        tone_part=np.array([_P[x[6]] for x in specs]),
    )


def _head_capsules(P: dict[str, np.ndarray], frames: np.ndarray, body: Body
                   ) -> list[_CapsuleSpec]:
    """Head (hair towards the back), nose and neck. P: joint name -> (F, 3)."""
    g, s = body.girth, body.height_scale
    u_head = _unit(P["head"] - P["neck"])
    L_head = np.linalg.norm(P["head"] - P["neck"], axis=-1, keepdims=True)
    r_head = 92.0 * s
    fwd_head = frames[:, _I["head"], :, 0]
    head_a = P["neck"] - 0.3 * L_head * u_head
    head_b = P["head"] - r_head * u_head
    head_mid = 0.5 * (head_a + head_b)
    nose = head_mid + fwd_head * (r_head - 4) - 0.1 * L_head * u_head
    up_thorax = frames[:, _I["thorax"], :, 2]
    zero = np.zeros_like(frames[:, _I["thorax"], :, 0])
    hair_dir = _unit(-0.8 * fwd_head + 0.6 * u_head)
    return [
        (head_a, head_b, r_head, "skin", hair_dir, 0.05, "hair"),
        (nose, nose + 1e-3 * u_head, 20.0 * s, "skin", zero, 2.0, "skin"),
        (P["thorax"] - 20 * s * up_thorax, P["neck"] - 0.2 * L_head * u_head, 50.0 * g, "skin",
         zero, 2.0, "skin"),
    ]


def _torso_capsules(P: dict[str, np.ndarray], frames: np.ndarray, body: Body
                    ) -> list[_CapsuleSpec]:
    """Belly and chest (shirt front towards the front), flanks, shoulders and hips."""
    g, s = body.girth, body.height_scale
    up_pelvis = frames[:, _I["pelvis"], :, 2]
    up_thorax = frames[:, _I["thorax"], :, 2]
    fwd_torso = frames[:, _I["thorax"], :, 0]
    zero = np.zeros_like(fwd_torso)

    def side(n_hip: str, n_sh: str) -> tuple[np.ndarray, np.ndarray]:
        lo = P["pelvis"] + 0.45 * (P[n_hip] - P["pelvis"]) + 90 * s * up_pelvis
        hi = P["thorax"] + 0.45 * (P[n_sh] - P["thorax"]) - 110 * s * up_thorax
        return lo, hi

    return [
        (P["pelvis"], P["spine"], 112.0 * g, "upper", fwd_torso, 0.8, "front"),
        (P["spine"], P["thorax"] - 35 * s * up_thorax, 118.0 * g, "upper", fwd_torso, 0.8,
         "front"),
        (*side("l_hip", "l_shoulder"), 82.0 * g, "upper", zero, 2.0, "upper"),
        (*side("r_hip", "r_shoulder"), 82.0 * g, "upper", zero, 2.0, "upper"),
        (P["l_shoulder"], P["r_shoulder"], 62.0 * g, "upper", zero, 2.0, "upper"),
        (P["pelvis"] + 0.55 * (P["l_hip"] - P["pelvis"]),
         P["pelvis"] + 0.55 * (P["r_hip"] - P["pelvis"]), 95.0 * g, "lower", zero, 2.0, "lower"),
    ]


def _limb_capsules(P: dict[str, np.ndarray], frames: np.ndarray, body: Body
                   ) -> list[_CapsuleSpec]:
    """Upper and lower arms, hands, thighs, shins and shoes."""
    g, s = body.girth, body.height_scale
    zero = np.zeros_like(frames[:, _I["thorax"], :, 0])

    def hand(n_elbow: str, n_wrist: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unit(P[n_wrist] - P[n_elbow])
        return P[n_wrist] + 25 * s * d, P[n_wrist] + 85 * s * d

    def foot(n_ankle: str) -> tuple[np.ndarray, np.ndarray]:
        G = frames[:, _I[n_ankle]]
        toe_dir = np.cos(np.radians(20)) * G[..., 0] - np.sin(np.radians(20)) * G[..., 2]
        return P[n_ankle] + 15 * s * toe_dir, P[n_ankle] + 150 * s * toe_dir

    return [
        (P["l_shoulder"], P["l_elbow"], 46.0 * g, "upper_l", zero, 2.0, "upper_l"),
        (P["r_shoulder"], P["r_elbow"], 46.0 * g, "upper_r", zero, 2.0, "upper_r"),
        (P["l_elbow"], P["l_wrist"], 37.0 * g, "upper_l", zero, 2.0, "upper_l"),
        (P["r_elbow"], P["r_wrist"], 37.0 * g, "upper_r", zero, 2.0, "upper_r"),
        (*hand("l_elbow", "l_wrist"), 36.0 * s, "skin", zero, 2.0, "skin"),
        (*hand("r_elbow", "r_wrist"), 36.0 * s, "skin", zero, 2.0, "skin"),
        (P["l_hip"], P["l_knee"], 66.0 * g, "lower_l", zero, 2.0, "lower_l"),
        (P["r_hip"], P["r_knee"], 66.0 * g, "lower_r", zero, 2.0, "lower_r"),
        (P["l_knee"], P["l_ankle"], 52.0 * g, "lower_l", zero, 2.0, "lower_l"),
        (P["r_knee"], P["r_ankle"], 52.0 * g, "lower_r", zero, 2.0, "lower_r"),
        (*foot("l_ankle"), 42.0 * s, "shoes", zero, 2.0, "shoes"),
        (*foot("r_ankle"), 42.0 * s, "shoes", zero, 2.0, "shoes"),
    ]


def intersect_capsule(rd: np.ndarray, a: np.ndarray, b: np.ndarray, r: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact ray-capsule intersection for rays from the origin.

    Args:
        rd: (N, 3) unit ray directions; a, b: (3,) segment end points (distinct); r: radius.
    Returns:
        t (N,) distance to the first hit (inf on a miss) and (N, 3) unit outward normals
        (zero on a miss).
    """
    ba = b - a
    baba = ba @ ba
    baoa = -(a @ ba)
    bard = rd @ ba
    rdoa = -(rd @ a)
    A = baba - bard * bard
    B = baba * rdoa - baoa * bard
    h = B * B - A * (baba * (a @ a) - baoa * baoa - r * r * baba)
    t = np.full(rd.shape[0], np.inf)
    n = np.zeros_like(rd)
    idx = np.flatnonzero((h >= 0) & (A > 1e-9 * baba))  # rays that meet the infinite cylinder
    if idx.size == 0:
        return t, n
    ti = (-B[idx] - np.sqrt(h[idx])) / A[idx]
    y = baoa + ti * bard[idx]
    side = (y > 0) & (y < baba)
    rdi = rd[idx]
    # side hits: normal from the axis
    p = rdi * ti[:, None]
    normal = (p - a - ba * (y / baba)[:, None]) / r
    # otherwise the sphere at the nearer end
    cap = np.flatnonzero(~side)
    end = np.where((y[cap] <= 0)[:, None], a, b)
    bb = -(rdi[cap] * end).sum(-1)
    hh = bb * bb - ((end * end).sum(-1) - r * r)
    t_cap = np.where(hh > 0, -bb - np.sqrt(np.maximum(hh, 0.0)), np.inf)
    ti[cap] = t_cap
    normal[cap] = (rdi[cap] * np.where(np.isfinite(t_cap), t_cap, 0.0)[:, None] - end) / r
    t[idx] = ti
    n[idx] = normal
    return t, n


@dataclass(frozen=True)
class BodyLayer:
    """The rendered body inside a canvas window ``[y0:y1, x0:x1]``.

    Attributes:
        window: (y0, y1, x0, x1).
        colour: (h, w, 3) shaded BGR; mask: (h, w) bool; depth: (h, w) ray distance (inf where
            no body), mm; index: (h, w) int16 capsule seen by each pixel (-1 where none).
    """

    window: tuple[int, int, int, int]
    colour: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    index: np.ndarray


def render_body(rc: RenderCamera, a: np.ndarray, b: np.ndarray, caps: Capsules,
                tone_dir: np.ndarray, look: np.ndarray, light: np.ndarray, scene: Scene
                ) -> BodyLayer | None:
    """Ray-cast one frame's capsules (camera frame ``a``, ``b`` (N, 3), ``tone_dir`` (N, 3);
    ``light`` (3,) camera frame) into the canvas. None when nothing is in view."""
    Wc, Hc = rc.size
    f = max(rc.K[0, 0], rc.K[1, 1])
    z = np.minimum(a[:, 2], b[:, 2])
    if np.any(z <= caps.radius):
        raise ValueError("a body capsule reaches behind the camera")
    pa, pb = canvas_project(rc, a), canvas_project(rc, b)
    rpx = caps.radius * f / (z - caps.radius) + 2
    lo = np.clip(np.floor(np.minimum(pa, pb) - rpx[:, None]).astype(int), 0, [Wc, Hc])
    hi = np.clip(np.ceil(np.maximum(pa, pb) + rpx[:, None]).astype(int) + 1, 0, [Wc, Hc])
    keep = np.all(hi > lo, axis=1)
    if not keep.any():
        return None
    x0, y0 = lo[keep].min(0)
    x1, y1 = hi[keep].max(0)
    h, w = y1 - y0, x1 - x0
    depth = np.full((h, w), np.inf)
    normal = np.zeros((h, w, 3))
    albedo = np.zeros((h, w, 3))
    index = np.full((h, w), -1, np.int16)
    for i in np.flatnonzero(keep):  # one vectorised intersection per capsule (about 20)
        (bx0, by0), (bx1, by1) = lo[i], hi[i]
        t, n = intersect_capsule(rc.rays[by0:by1, bx0:bx1].reshape(-1, 3), a[i], b[i],
                                 caps.radius[i])
        shape = (by1 - by0, bx1 - bx0)
        d_view = depth[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
        win = t.reshape(shape) < d_view
        if not win.any():
            continue
        two_tone = ((n @ tone_dir[i]) > caps.tone_thr[i]).reshape(shape + (1,))
        col = np.where(two_tone, look[caps.tone_part[i]], look[caps.part[i]])
        np.copyto(d_view, t.reshape(shape), where=win)
        index[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0][win] = i
        np.copyto(normal[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], n.reshape(shape + (3,)),
                  where=win[..., None])
        np.copyto(albedo[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], col, where=win[..., None])
    mask = np.isfinite(depth)
    nrm, view = normal[mask], -rc.rays[y0:y1, x0:x1][mask]
    ndl = np.clip(nrm @ light, 0, None)
    half = _unit(view + light)
    spec = np.clip((nrm * half).sum(-1), 0, None) ** 24
    rim = 1.0 - 0.25 * (1 - np.clip((nrm * view).sum(-1), 0, 1)) ** 2  # darker silhouettes
    colour = np.zeros((h, w, 3), np.float32)
    colour[mask] = albedo[mask] * ((scene.ambient + scene.diffuse * ndl) * rim)[:, None] + (
        scene.specular * spec)[:, None]
    return BodyLayer((int(y0), int(y1), int(x0), int(x1)), colour, mask, depth, index)


def joint_visibility(layer: BodyLayer | None, joint_px: np.ndarray, joint_dist: np.ndarray,
                     tolerance_mm: float = 20.0, first_capsule: int = 0) -> np.ndarray:
    """Occlusion of the joints of one frame (by the body itself or by other bodies).

    Args:
        layer: the rendered body (or bodies); joint_px: (J, 2) int canvas pixels of the joints;
        joint_dist: (J,) distance of each joint from the camera centre, mm.
        first_capsule: where this body's capsules start in the layer's capsule list (several
            people rendered together: their capsules one body after the other).
    Returns:
        (J,) bool: nothing but the joint's own body parts lies in front of it.
    """
    J = joint_px.shape[0]
    if layer is None:
        return np.ones(J, bool)
    y0, y1, x0, x1 = layer.window
    px, py = joint_px[:, 0] - x0, joint_px[:, 1] - y0
    inside = (px >= 0) & (px < x1 - x0) & (py >= 0) & (py < y1 - y0)
    front = np.full(J, -1)
    depth = np.full(J, np.inf)
    front[inside] = layer.index[py[inside], px[inside]]
    depth[inside] = layer.depth[py[inside], px[inside]]
    mine = front - first_capsule
    C = JOINT_OWNS_CAPSULE.shape[1]
    own = (mine >= 0) & (mine < C) & JOINT_OWNS_CAPSULE[np.arange(J), np.clip(mine, 0, C - 1)]
    return (front < 0) | own | (depth >= joint_dist - tolerance_mm)


def contact_shadow(rc: RenderCamera, floor_xy: np.ndarray, points: np.ndarray,
                   canvas: np.ndarray) -> None:
    """Darken the floor of ``canvas`` (H_c, W_c, 3 or 4) in place: a soft blob below each of
    ``points`` (K, 3) world mm (feet, knees, hips), wider and fainter the higher the point."""
    z = np.clip(points[:, 2], 0, None)
    sigma = 60.0 + 0.3 * z
    weight = 0.4 * np.exp(-z / 600.0)
    reach = 2.5 * sigma.max()
    lo_xy, hi_xy = points[:, :2].min(0) - reach, points[:, :2].max(0) + reach
    corners = np.array([[lo_xy[0], lo_xy[1], 0], [hi_xy[0], lo_xy[1], 0],
                        [lo_xy[0], hi_xy[1], 0], [hi_xy[0], hi_xy[1], 0]])
    Xc = rc.cam.world_to_camera(corners)
    if np.any(Xc[:, 2] <= 0):
        return
    uv = canvas_project(rc, Xc)
    Wc, Hc = rc.size
    x0, y0 = np.clip(np.floor(uv.min(0)).astype(int), 0, [Wc, Hc])
    x1, y1 = np.clip(np.ceil(uv.max(0)).astype(int) + 1, 0, [Wc, Hc])
    if x1 <= x0 or y1 <= y0:
        return
    step = 4  # the shadow is smooth: evaluate it on a coarse grid, then interpolate
    xy = floor_xy[y0:y1:step, x0:x1:step]
    gh, gw = xy.shape[:2]
    xy = xy.reshape(-1, 2)
    on_floor = np.flatnonzero(np.isfinite(xy[:, 0]))
    p = points[:, :2].astype(np.float32)
    d2 = (xy[on_floor, 0, None] - p[:, 0]) ** 2 + (xy[on_floor, 1, None] - p[:, 1]) ** 2
    dark = np.exp(-d2 / (2 * sigma**2).astype(np.float32)) @ weight.astype(np.float32)
    shade = np.ones(xy.shape[0], np.float32)
    shade[on_floor] = 1.0 - np.clip(dark, 0, 0.6)
    full = cv2.resize(shade.reshape(gh, gw), (gw * step, gh * step),
                      interpolation=cv2.INTER_LINEAR)[: y1 - y0, : x1 - x0]
    canvas[y0:y0 + full.shape[0], x0:x0 + full.shape[1], :3] *= full[..., None]


def compose(background: np.ndarray, floor_xy: np.ndarray, rc: RenderCamera,
            layer: BodyLayer | None, shadow_points: np.ndarray) -> np.ndarray:
    """Canvas of one frame: a copy of ``background`` (H_c, W_c, 4) with the contact shadow of
    ``shadow_points`` (K, 3) world mm and the body layer (colour, and coverage in channel 3)."""
    canvas = background.copy()
    contact_shadow(rc, floor_xy, shadow_points, canvas)
    if layer is not None:
        y0, y1, x0, x1 = layer.window
        region = canvas[y0:y1, x0:x1]
        region[layer.mask, :3] = layer.colour[layer.mask]
        region[layer.mask, 3] = 1.0
    return canvas


def noise_bank(rng: np.random.Generator, width: int, height: int, n: int = 4, pad: int = 16
               ) -> np.ndarray:
    """(n, height + pad, width + pad, 3) float32 standard normal sensor-noise fields; frames
    take shifted windows of them (:func:`noise_window`), which is much cheaper than fresh
    noise per image."""
    return rng.standard_normal((n, height + pad, width + pad, 3), np.float32)


def noise_window(bank: np.ndarray, rng: np.random.Generator, width: int, height: int
                 ) -> np.ndarray:
    """A random (height, width, 3) window of a random field of ``bank`` (a view)."""
    k, dy, dx = (int(rng.integers(0, m + 1))
                 for m in (bank.shape[0] - 1, bank.shape[1] - height, bank.shape[2] - width))
    return bank[k, dy:dy + height, dx:dx + width]


def finish_image(rc: RenderCamera, canvas: np.ndarray, scene: Scene, gain: np.ndarray,
                 noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distort, downsample, blur and add noise.

    Args:
        canvas: (H_c, W_c, 4) float32: BGR in [0, 1] and body coverage.
        gain: (3,) colour gains; noise: (H, W, 3) standard normal field.
    Returns:
        (H, W, 3) uint8 BGR image and (H, W) float32 body coverage in [0, 1].
    """
    cam = rc.cam
    dist = cv2.remap(canvas, rc.map_x, rc.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    small = cv2.resize(dist, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(small[..., :3], (0, 0), scene.blur_sigma)
    img *= (255.0 * gain).astype(np.float32)
    img += np.float32(scene.noise_sigma) * noise
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), small[..., 3].copy()

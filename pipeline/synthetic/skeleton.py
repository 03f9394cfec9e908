"""The synthetic body: per-subject bone lengths and batched forward kinematics on H36M17.

Body frame (every joint's local frame at rest): x forward, y to the subject's left, z up;
millimetres. At rest the subject stands upright with the arms hanging slightly away from the
body (the elbow's carrying angle), clear of the hips.

A pose is a root position, a root orientation and one local rotation per bone. The rotation
of bone ``parent(j) -> j`` is stored at index ``j`` (the root's entry is unused); the frame of
joint ``j`` is ``G_j = G_parent(j) @ B_j`` and ``P_j = P_parent(j) + G_j @ offset_j``. So the
rotation of bone ``r_hip -> r_knee`` (stored at ``r_knee``) swings the thigh, and so on.

Local rotations come from Euler angles ``(rx, ry, rz)`` as ``Ry(ry) @ Rx(rx) @ Rz(rz)``: first a
twist about the bone's rest axis, then sideways, then fore-aft. :data:`SEMANTIC` names the signs
(flexion of the hip is ``-ry``, of the knee ``+ry`` ...), :data:`LIMITS_DEG` the joint limits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.joints import H36M17

J = H36M17.num_joints
_IDX = {n: i for i, n in enumerate(H36M17.names)}

# Rest direction (parent frame) and mean length (mm) of the bone ending at each joint.
# Lengths follow Human3.6M's published skeleton; see the module docstring for the frame.
_REST_BONES: dict[str, tuple[tuple[float, float, float], float]] = {
    "r_hip": ((0.0, -1.0, -0.18), 130.0),
    "r_knee": ((0.0, 0.0, -1.0), 450.0),
    "r_ankle": ((0.0, 0.0, -1.0), 440.0),
    "l_hip": ((0.0, 1.0, -0.18), 130.0),
    "l_knee": ((0.0, 0.0, -1.0), 450.0),
    "l_ankle": ((0.0, 0.0, -1.0), 440.0),
    "spine": ((0.04, 0.0, 1.0), 230.0),
    "thorax": ((0.0, 0.0, 1.0), 250.0),
    "neck": ((0.25, 0.0, 1.0), 115.0),
    "head": ((-0.3, 0.0, 1.0), 115.0),
    "l_shoulder": ((-0.05, 1.0, -0.12), 150.0),
    "l_elbow": ((0.0, 0.12, -1.0), 280.0),
    "l_wrist": ((0.0, 0.22, -1.0), 250.0),
    "r_shoulder": ((-0.05, -1.0, -0.12), 150.0),
    "r_elbow": ((0.0, -0.12, -1.0), 280.0),
    "r_wrist": ((0.0, -0.22, -1.0), 250.0),
}

ANKLE_HEIGHT_MM = 85.0
"""Height of the ankle joint above the floor when the foot is flat, at height scale 1."""

# Joint limits (degrees) of each bone's semantic angles (flex, abduct/lateral, twist), applied
# by :func:`semantic_to_euler`. Flexion: the limb (or torso) moves forward.
LIMITS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "r_knee": ((-30, 125), (-20, 45), (-35, 35)),  # hip joint
    "l_knee": ((-30, 125), (-20, 45), (-35, 35)),
    "r_ankle": ((0, 150), (0, 0), (0, 0)),  # knee joint
    "l_ankle": ((0, 150), (0, 0), (0, 0)),
    "spine": ((-20, 55), (-25, 25), (-30, 30)),  # lumbar
    "thorax": ((-20, 45), (-20, 20), (-30, 30)),  # chest
    "neck": ((-30, 40), (-25, 25), (-60, 60)),
    "head": ((-30, 30), (-20, 20), (-20, 20)),
    "l_elbow": ((-60, 175), (-15, 160), (-70, 90)),  # shoulder joint
    "r_elbow": ((-60, 175), (-15, 160), (-70, 90)),
    "l_wrist": ((0, 150), (0, 0), (0, 0)),  # elbow joint
    "r_wrist": ((0, 150), (0, 0), (0, 0)),
}

# Semantic angle -> Euler sign: euler = sign * semantic, columns (flex, abduct, twist) map to
# (ry, rx, rz). Left limbs abduct towards +y (+rx), right limbs towards -y; torso "abduct" is a
# lateral bend to the right; limb twist is an external (outward) rotation on both sides.
_SIGNS: dict[str, tuple[float, float, float]] = {
    "r_knee": (-1, -1, -1), "l_knee": (-1, 1, 1),
    "r_ankle": (1, 0, 0), "l_ankle": (1, 0, 0),
    "spine": (1, 1, 1), "thorax": (1, 1, 1), "neck": (1, 1, 1), "head": (1, 1, 1),
    "l_elbow": (-1, 1, 1), "r_elbow": (-1, -1, -1),
    "l_wrist": (-1, 0, 0), "r_wrist": (-1, 0, 0),
}
SEMANTIC_BONES: tuple[str, ...] = tuple(_SIGNS)


@dataclass(frozen=True)
class Body:
    """One subject's body.

    Attributes:
        offsets: (J, 3) bone vector of each joint in its parent's frame at rest, mm (root zero).
        height_scale: overall size factor (1 = the mean skeleton).
        girth: radius factor of the rendered capsules.
    """

    offsets: np.ndarray
    height_scale: float
    girth: float

    @property
    def bone_lengths(self) -> np.ndarray:
        """(J,) length of the bone ending at each joint (0 for the root)."""
        return np.linalg.norm(self.offsets, axis=-1)

    @property
    def ankle_height(self) -> float:
        return ANKLE_HEIGHT_MM * self.height_scale


def mean_offsets() -> np.ndarray:
    """(J, 3) rest bone vectors of the mean skeleton."""
    off = np.zeros((J, 3))
    for name, (direction, length) in _REST_BONES.items():
        d = np.asarray(direction, dtype=np.float64)
        off[_IDX[name]] = d / np.linalg.norm(d) * length
    return off


def sample_body(rng: np.random.Generator) -> Body:
    """A random subject: height scale in [0.9, 1.1], per-bone proportions within a few percent
    (left and right equal), girth in [0.85, 1.2]."""
    height = float(rng.uniform(0.9, 1.1))
    per_bone = np.clip(rng.normal(1.0, 0.03, size=J), 0.92, 1.08)
    per_bone[H36M17.flip_pairs[:, 0]] = per_bone[H36M17.flip_pairs[:, 1]]
    offsets = mean_offsets() * (height * per_bone)[:, None]
    return Body(offsets=offsets, height_scale=height, girth=float(rng.uniform(0.85, 1.2)))


# --- rotations -------------------------------------------------------------------------------

def rot_x(a: np.ndarray) -> np.ndarray:
    """(...) angles (rad) -> (..., 3, 3) rotations about x."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([o, z, z, z, c, -s, z, s, c], axis=-1).reshape(a.shape + (3, 3))


def rot_y(a: np.ndarray) -> np.ndarray:
    """(...) angles (rad) -> (..., 3, 3) rotations about y."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, z, s, z, o, z, -s, z, c], axis=-1).reshape(a.shape + (3, 3))


def rot_z(a: np.ndarray) -> np.ndarray:
    """(...) angles (rad) -> (..., 3, 3) rotations about z."""
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(a.shape + (3, 3))


def euler_to_matrix(euler: np.ndarray) -> np.ndarray:
    """(..., 3) Euler angles (rx, ry, rz), rad -> (..., 3, 3) ``Ry @ Rx @ Rz``."""
    return rot_y(euler[..., 1]) @ rot_x(euler[..., 0]) @ rot_z(euler[..., 2])


def semantic_to_euler(semantic: dict[str, np.ndarray], frames: int) -> np.ndarray:
    """Clip semantic angles to :data:`LIMITS_DEG` and convert them to per-bone Euler angles.

    Args:
        semantic: bone name (a key of :data:`SEMANTIC_BONES`) -> (F, 3) degrees
            (flex, abduct, twist); missing bones stay at rest.
        frames: F.
    Returns:
        (F, J, 3) Euler angles (rx, ry, rz) in radians.
    """
    unknown = set(semantic) - set(SEMANTIC_BONES)
    if unknown:
        raise KeyError(f"unknown semantic bones {sorted(unknown)}; known: {SEMANTIC_BONES}")
    euler = np.zeros((frames, J, 3))
    for name, ang in semantic.items():
        lim = np.asarray(LIMITS_DEG[name], dtype=np.float64)
        a = np.clip(np.broadcast_to(ang, (frames, 3)), lim[:, 0], lim[:, 1])
        sign = np.asarray(_SIGNS[name], dtype=np.float64)
        euler[:, _IDX[name]] = np.deg2rad(a[:, [1, 0, 2]] * sign[[1, 0, 2]])
    return euler


# --- forward kinematics --------------------------------------------------------------------------

def _depth_levels(parents: tuple[int, ...]) -> list[np.ndarray]:
    depth = np.zeros(len(parents), dtype=np.int64)
    for j, p in enumerate(parents):  # H36M17 lists parents before children
        depth[j] = 0 if p < 0 else depth[p] + 1
    return [np.flatnonzero(depth == d) for d in range(1, depth.max() + 1)]


_LEVELS = _depth_levels(H36M17.parents)
_PARENTS = np.asarray(H36M17.parents)


def forward_kinematics(offsets: np.ndarray, root_pos: np.ndarray, root_rot: np.ndarray,
                       euler: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions and frames of a pose sequence.

    Args:
        offsets: (J, 3) rest bone vectors (see :class:`Body`).
        root_pos: (F, 3) pelvis position, world mm.
        root_rot: (F, 3, 3) pelvis frame in world coordinates.
        euler: (F, J, 3) per-bone Euler angles (rad).
    Returns:
        positions (F, J, 3) world mm and frames (F, J, 3, 3) (columns: forward, left, up).
    """
    F = root_pos.shape[0]
    B = euler_to_matrix(euler)
    G = np.empty((F, J, 3, 3))
    P = np.empty((F, J, 3))
    G[:, 0], P[:, 0] = root_rot, root_pos
    for idx in _LEVELS:  # one vectorised step per tree depth (5 for H36M17)
        par = _PARENTS[idx]
        G[:, idx] = G[:, par] @ B[:, idx]
        P[:, idx] = P[:, par] + (G[:, idx] @ offsets[idx][..., None])[..., 0]
    return P, G


def root_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(F,) yaw about world z, forward pitch, roll to the right (rad) -> (F, 3, 3) pelvis frame."""
    return rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)

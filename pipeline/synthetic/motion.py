"""Procedural human motion for the synthetic dataset: six action types on the H36M17 body.

Each action is a pure function ``(rng, t, radius) -> Motion`` of time (seconds, 50 fps in the
dataset): semantic joint angles (degrees, see :mod:`pipeline.synthetic.skeleton`), the pelvis
orientation and the horizontal position, all smooth in time, with random per-sequence speed,
amplitude, phase and heading. :func:`pose_sequence` turns a Motion into world joint positions
with the feet on the floor (z = 0 plane, world z up).

Actions: ``Walking`` (elliptic or figure-eight paths with turns), ``Gestures`` (arm waving,
standing), ``Sitting`` (sitting or squatting down and standing up), ``Reaching`` (one arm to
random targets high and low), ``Bending`` (forward bends from the hips), ``Random`` (random
poses within the joint limits, blended key poses: pose variety for training; not in the default
manifest). Unknown action names raise a KeyError naming the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.synthetic.skeleton import (LIMITS_DEG, Body, forward_kinematics, root_rotation,
                                         semantic_to_euler)
from pipeline.joints import H36M17

_ANKLES = np.array([H36M17.index("l_ankle"), H36M17.index("r_ankle")])


@dataclass(frozen=True)
class Motion:
    """One sequence of motion.

    Attributes:
        semantic: bone name -> (F, 3) degrees (flex, abduct, twist).
        yaw, pitch, roll: (F,) pelvis orientation, degrees (yaw 0 faces world +x).
        xy: (F, 2) mm, horizontal position relative to the capture centre: of the pelvis when
            ``anchored`` is False (walking), else of the mid-point between the ankles.
        anchored: see ``xy``.
    """

    semantic: dict[str, np.ndarray]
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    xy: np.ndarray
    anchored: bool


# --- smooth random signals -----------------------------------------------------------------------

def smooth_noise(rng: np.random.Generator, t: np.ndarray, amp: float, fmin: float = 0.15,
                 fmax: float = 0.8, n: int = 3) -> np.ndarray:
    """(F,) sum of ``n`` sinusoids with random frequencies in [fmin, fmax] Hz and phases,
    peak amplitude about ``amp``."""
    f = rng.uniform(fmin, fmax, size=n)
    ph = rng.uniform(0, 2 * np.pi, size=n)
    w = rng.uniform(0.5, 1.0, size=n)
    w = w / w.sum() * amp
    return (w[:, None] * np.sin(2 * np.pi * f[:, None] * t[None] + ph[:, None])).sum(0)


def noise3(rng: np.random.Generator, t: np.ndarray, amps: tuple[float, float, float],
           fmin: float = 0.15, fmax: float = 0.8) -> np.ndarray:
    """(F, 3) independent :func:`smooth_noise` per semantic angle."""
    return np.stack([smooth_noise(rng, t, a, fmin, fmax) for a in amps], axis=-1)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def hold_cycle(t: np.ndarray, period: float, phase: float, hold: float = 0.35) -> np.ndarray:
    """(F,) periodic 0 -> 1 -> 0 profile with rests at both ends (``hold`` is the fraction of
    the period spent resting at each extreme, roughly)."""
    c = 0.5 - 0.5 * np.cos(2 * np.pi * t / period + phase)
    return smoothstep((c - hold / 2) / (1 - hold))


def _v(*cols: np.ndarray | float) -> np.ndarray:
    """Stack per-angle columns (arrays (F,) or scalars) into (F, 3)."""
    arrs = np.broadcast_arrays(*[np.asarray(c, dtype=np.float64) for c in cols])
    return np.stack(arrs, axis=-1)


def _idle(rng: np.random.Generator, t: np.ndarray) -> dict[str, np.ndarray]:
    """Small natural sway on every bone (degrees)."""
    return {
        "spine": noise3(rng, t, (2, 2, 3)), "thorax": noise3(rng, t, (2, 2, 3)),
        "neck": noise3(rng, t, (6, 4, 15)), "head": noise3(rng, t, (4, 3, 3)),
        "l_elbow": noise3(rng, t, (5, 4, 8)), "r_elbow": noise3(rng, t, (5, 4, 8)),
        "l_wrist": _v(12 + smooth_noise(rng, t, 6), 0, 0),
        "r_wrist": _v(12 + smooth_noise(rng, t, 6), 0, 0),
        "l_knee": noise3(rng, t, (2, 1.5, 3)), "r_knee": noise3(rng, t, (2, 1.5, 3)),
        "l_ankle": _v(4 + smooth_noise(rng, t, 3), 0, 0),
        "r_ankle": _v(4 + smooth_noise(rng, t, 3), 0, 0),
    }


def _add(base: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = out[k] + v if k in out else v
    return out


def _standing_spot(rng: np.random.Generator, radius: float, F: int) -> np.ndarray:
    r = radius * np.sqrt(rng.uniform(0, 1))
    a = rng.uniform(0, 2 * np.pi)
    return np.broadcast_to(np.array([r * np.cos(a), r * np.sin(a)]), (F, 2)).copy()


# --- actions --------------------------------------------------------------------------------------

def walking(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Walk along an ellipse or figure-eight inside ``radius`` (mm) at 0.8-1.5 m/s."""
    F = t.size
    a = radius * rng.uniform(0.6, 1.0)
    b = radius * rng.uniform(0.35, 0.8)
    eight = rng.uniform() < 0.4
    u = np.linspace(0, 2 * np.pi, 2049)
    curve = np.stack([a * np.cos(u), b * (np.sin(2 * u) / 1.6 if eight else np.sin(u))], -1)
    rot = rng.uniform(0, 2 * np.pi)
    Rm = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    curve = curve @ Rm.T
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=-1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    perimeter = arc[-1]
    speed = rng.uniform(800, 1500) * (1 + smooth_noise(rng, t, 0.1, 0.1, 0.3))  # mm/s
    direction = rng.choice([-1.0, 1.0])
    s = rng.uniform(0, perimeter) + direction * np.concatenate(
        [[0.0], np.cumsum(speed[:-1] * np.diff(t))])
    s_mod = np.mod(s, perimeter)
    xy = np.stack([np.interp(s_mod, arc, curve[:, 0]), np.interp(s_mod, arc, curve[:, 1])], -1)
    tangent = np.stack([np.interp(s_mod, arc, np.gradient(curve[:, 0])),
                        np.interp(s_mod, arc, np.gradient(curve[:, 1]))], -1) * direction
    heading = np.degrees(np.unwrap(np.arctan2(tangent[:, 1], tangent[:, 0])))

    cycle_hz = rng.uniform(0.85, 1.0) * np.sqrt(speed / 1200)
    phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.concatenate(
        [[0.0], np.cumsum(cycle_hz[:-1] * np.diff(t))])
    amp = rng.uniform(0.8, 1.2) * np.clip(speed / 1200, 0.7, 1.3)
    hip_amp, arm_amp = 24 * amp, rng.uniform(12, 30) * amp
    legs, arms = {}, {}
    for side, off in (("l", 0.0), ("r", np.pi)):
        ph = phase + off
        legs[f"{side}_knee"] = _v(4 + hip_amp * np.sin(ph), 3 + 2 * np.cos(ph), 4)
        knee = 6 + rng.uniform(50, 62) * np.clip(np.sin(ph + np.pi / 3), 0, 1) ** 2
        legs[f"{side}_ankle"] = _v(knee, 0, 0)
        arms[f"{side}_elbow"] = _v(-arm_amp * np.sin(ph) + 3, 8, 5)
        arms[f"{side}_wrist"] = _v(20 + 12 * np.clip(-np.sin(ph), 0, 1) + rng.uniform(0, 15), 0, 0)
    sem = _add(_idle(rng, t), {**legs, **arms})
    lean = rng.uniform(0, 8)
    sem = _add(sem, {"spine": _v(lean, 0, -4 * np.sin(phase)),
                     "thorax": _v(2, 0, -4 * np.sin(phase))})
    return Motion(sem, heading + 5 * np.sin(phase), np.full(F, 3.0),
                  2.5 * np.sin(phase), xy, anchored=False)


def _arm_wave(rng: np.random.Generator, t: np.ndarray, energy: float) -> np.ndarray:
    flex = rng.uniform(-10, 80) + smooth_noise(rng, t, 60 * energy, 0.2, 0.9)
    abd = rng.uniform(5, 50) + smooth_noise(rng, t, 40 * energy, 0.2, 0.9)
    twist = smooth_noise(rng, t, 35 * energy, 0.2, 0.8)
    return _v(flex, abd, twist)


def gestures(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Stand and gesture with both arms (pointing, waving, explaining), turning slowly."""
    F = t.size
    energy = rng.uniform(0.6, 1.3)
    sem = _add(_idle(rng, t), {
        "l_elbow": _arm_wave(rng, t, energy), "r_elbow": _arm_wave(rng, t, energy),
        "l_wrist": _v(rng.uniform(10, 80) + smooth_noise(rng, t, 50 * energy, 0.2, 1.0), 0, 0),
        "r_wrist": _v(rng.uniform(10, 80) + smooth_noise(rng, t, 50 * energy, 0.2, 1.0), 0, 0),
        "spine": noise3(rng, t, (5, 5, 12)), "neck": noise3(rng, t, (8, 5, 25)),
        "l_knee": _v(3, rng.uniform(2, 10), 5), "r_knee": _v(3, rng.uniform(2, 10), 5),
        "l_ankle": _v(rng.uniform(0, 12), 0, 0), "r_ankle": _v(rng.uniform(0, 12), 0, 0),
    })
    yaw = rng.uniform(0, 360) + smooth_noise(rng, t, rng.uniform(10, 50), 0.05, 0.3)
    roll = smooth_noise(rng, t, 4, 0.1, 0.4)
    return Motion(sem, yaw, np.full(F, 2.0), roll, _standing_spot(rng, 0.6 * radius, F), True)


def sitting(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Sit down (or squat) and stand up again, with rests, arms on the thighs or free."""
    F = t.size
    s = hold_cycle(t, rng.uniform(2.5, 5.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.5))
    squat = rng.uniform() < 0.35
    hip = rng.uniform(110, 124) if squat else rng.uniform(80, 100)
    knee = rng.uniform(125, 145) if squat else rng.uniform(80, 110)
    lean = (rng.uniform(25, 40) if squat else rng.uniform(0, 15)) * s + 25 * np.sin(np.pi * s)
    spread = rng.uniform(3, 20)
    arms = {}
    for side in ("l", "r"):
        arms[f"{side}_elbow"] = _v(rng.uniform(0, 20) + s * rng.uniform(10, 45)
                                   + smooth_noise(rng, t, 20, 0.1, 0.5),
                                   rng.uniform(5, 20) + smooth_noise(rng, t, 10),
                                   smooth_noise(rng, t, 20))
        arms[f"{side}_wrist"] = _v(15 + s * rng.uniform(20, 70) + smooth_noise(rng, t, 15), 0, 0)
    sem = _add(_idle(rng, t), {
        "l_knee": _v(hip * s, spread * s, 5 * s), "r_knee": _v(hip * s, spread * s, 5 * s),
        "l_ankle": _v(knee * s, 0, 0), "r_ankle": _v(knee * s, 0, 0),
        "spine": _v(0.6 * lean, 0, 0), "thorax": _v(0.4 * lean - 10 * s * (not squat), 0, 0),
        "neck": _v(-0.3 * lean, 0, 0), **arms,
    })
    yaw = rng.uniform(0, 360) + smooth_noise(rng, t, 8, 0.05, 0.2)
    return Motion(sem, yaw, np.zeros(F), np.zeros(F), _standing_spot(rng, 0.6 * radius, F), True)


def reaching(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Reach with one arm at a time to random targets (high, level, low; front or side)."""
    F = t.size
    durations = rng.uniform(1.2, 2.4, size=int(np.ceil(t[-1] / 1.2)) + 2)
    starts = np.concatenate([[0.0], np.cumsum(durations)]) - rng.uniform(0, durations[0])
    k = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, durations.size - 1)
    tau = np.clip((t - starts[k]) / durations[k], 0, 1)
    s = smoothstep(np.clip(1.6 * np.sin(np.pi * tau), 0, 1))
    n = durations.size
    height = rng.uniform(-1, 1, size=n)  # -1 low, +1 high
    left = rng.uniform(size=n) < 0.5
    flex = 90 + 75 * height
    abd = rng.uniform(0, 60, size=n)
    elbow = rng.uniform(0, 25, size=n)
    low = np.clip(-height, 0, 1)
    bend = (40 * low + rng.uniform(0, 10, size=n))[k] * s
    twist = (rng.uniform(5, 25, size=n) * np.where(left, -1, 1))[k] * s
    sem = _idle(rng, t)
    for side, is_side in (("l", left), ("r", ~left)):
        active = is_side[k] * s
        rest_flex = rng.uniform(-5, 25) + smooth_noise(rng, t, 10)
        sem[f"{side}_elbow"] = sem[f"{side}_elbow"] + _v(
            rest_flex + active * (flex[k] - rest_flex), 6 + active * abd[k], active * 20)
        sem[f"{side}_wrist"] = _v(20 + active * (elbow[k] - 20)
                                  + 60 * active * (1 - active), 0, 0)
    sem = _add(sem, {
        "spine": _v(0.6 * bend - 6 * np.clip(height[k], 0, 1) * s, 0, 0.5 * twist),
        "thorax": _v(0.4 * bend, 0, 0.5 * twist),
        "l_knee": _v(0.5 * 30 * low[k] * s, 5, 0), "r_knee": _v(0.5 * 30 * low[k] * s, 5, 0),
        "l_ankle": _v(30 * low[k] * s, 0, 0), "r_ankle": _v(30 * low[k] * s, 0, 0),
        "neck": _v(-0.3 * bend + 15 * (height[k] < 0) * s, 0, -0.5 * twist),
    })
    yaw = rng.uniform(0, 360) + smooth_noise(rng, t, 20, 0.05, 0.3)
    return Motion(sem, yaw, np.zeros(F), np.zeros(F), _standing_spot(rng, 0.6 * radius, F), True)


def bending(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Bend forward from the hips (to pick something up) and straighten, arms hanging."""
    F = t.size
    s = hold_cycle(t, rng.uniform(2.5, 5.0), rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.4))
    total = rng.uniform(50, 100) * s
    knee = rng.uniform(0, 35) * s
    pitch = 0.4 * total
    arm = total * rng.uniform(0.6, 1.05) + smooth_noise(rng, t, 10)
    sem = _add(_idle(rng, t), {
        "spine": _v(0.35 * total, smooth_noise(rng, t, 6), smooth_noise(rng, t, 10)),
        "thorax": _v(0.25 * total, 0, smooth_noise(rng, t, 8)),
        "l_knee": _v(pitch + 0.5 * knee, rng.uniform(2, 10), 3),
        "r_knee": _v(pitch + 0.5 * knee, rng.uniform(2, 10), 3),
        "l_ankle": _v(knee, 0, 0), "r_ankle": _v(knee, 0, 0),
        "l_elbow": _v(arm + rng.uniform(-10, 10), rng.uniform(3, 20), 0),
        "r_elbow": _v(arm + rng.uniform(-10, 10), rng.uniform(3, 20), 0),
        "l_wrist": _v(rng.uniform(5, 40) * s, 0, 0), "r_wrist": _v(rng.uniform(5, 40) * s, 0, 0),
        "neck": _v(-0.45 * total, 0, 0),
    })
    yaw = rng.uniform(0, 360) + smooth_noise(rng, t, 10, 0.05, 0.2)
    return Motion(sem, yaw, pitch, np.zeros(F), _standing_spot(rng, 0.6 * radius, F), True)


RANDOM_RANGE = 0.8
"""Share of each joint limit's range (about its middle) that :func:`random_poses` draws from."""


def _keyframe_blend(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Key poses every ``lo``-``hi`` seconds: per frame the index k of the key pose it leaves
    and the smooth blend weight (0 -> 1) towards key k + 1; the number of key intervals."""
    n = int(np.ceil(t[-1] / lo)) + 2
    durations = rng.uniform(lo, hi, size=n)
    starts = np.concatenate([[0.0], np.cumsum(durations)]) - rng.uniform(0, durations[0])
    k = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, n - 1)
    return k, smoothstep((t - starts[k]) / durations[k]), n


def random_poses(rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Random poses within the joint limits: every bone's angles drawn uniformly from the middle
    :data:`RANDOM_RANGE` of its :data:`~pipeline.synthetic.skeleton.LIMITS_DEG` range, a new key
    pose every 0.4-1.0 s, blended smoothly; the lower ankle stays on the floor (one leg may be
    lifted), heading and a small lean random. Pose variety rather than a realistic action."""
    F = t.size
    k, w, n = _keyframe_blend(rng, t, 0.4, 1.0)
    sem = {}
    for bone, limits in LIMITS_DEG.items():
        lim = np.asarray(limits, dtype=np.float64)
        mid, half = lim.mean(1), (lim[:, 1] - lim[:, 0]) / 2 * RANDOM_RANGE
        keys = rng.uniform(mid - half, mid + half, size=(n + 1, 3))
        sem[bone] = keys[k] + (keys[k + 1] - keys[k]) * w[:, None]
    yaw = rng.uniform(0, 360) + smooth_noise(rng, t, 40, 0.05, 0.3)
    pitch = smooth_noise(rng, t, 8, 0.1, 0.5) + 4
    roll = smooth_noise(rng, t, 5, 0.1, 0.5)
    return Motion(sem, yaw, pitch, roll, _standing_spot(rng, 0.6 * radius, F), True)


ACTIONS: dict[str, Callable[[np.random.Generator, np.ndarray, float], Motion]] = {
    "Walking": walking, "Gestures": gestures, "Sitting": sitting, "Reaching": reaching,
    "Bending": bending, "Random": random_poses,
}


def motion_for(action: str, rng: np.random.Generator, t: np.ndarray, radius: float) -> Motion:
    """Dispatch on the action name (the manifest's ``action``)."""
    try:
        fn = ACTIONS[action]
    except KeyError:
        raise KeyError(f"the synthetic generator has no motion for action {action!r}; "
                       f"known: {sorted(ACTIONS)}") from None
    return fn(rng, t, radius)


def pose_sequence(body: Body, motion: Motion, centre_xy: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """World joint positions of a motion, feet on the floor.

    The lower ankle of every frame sits at the body's ankle height above z = 0; horizontally
    the pelvis (or, for anchored motions, the ankles' mid-point) follows ``centre_xy + xy``.

    Returns:
        joints (F, J, 3) world mm and joint frames (F, J, 3, 3).
    """
    F = motion.xy.shape[0]
    euler = semantic_to_euler(motion.semantic, F)
    rot = root_rotation(*(np.deg2rad(np.broadcast_to(a, (F,)))
                          for a in (motion.yaw, motion.pitch, motion.roll)))
    P, G = forward_kinematics(body.offsets, np.zeros((F, 3)), rot, euler)
    ref = P[:, _ANKLES, :2].mean(1) if motion.anchored else P[:, 0, :2]
    shift = np.zeros((F, 1, 3))
    shift[:, 0, :2] = centre_xy + motion.xy - ref
    shift[:, 0, 2] = body.ankle_height - P[:, _ANKLES, 2].min(1)
    return P + shift, G

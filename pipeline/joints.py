"""Joint sets: the single source of joint names, parents, bones, flip pairs and permutations.

Every other module imports from here; no parent array or joint order is typed anywhere else.

The project's canonical skeleton is Human3.6M's 17-joint set (``H36M17``), in the order used by
VideoPose3D, mmpose and EpipolarPose. Other orders (MPII-16, COCO-17, MediaPipe's 33 BlazePose
landmarks) are described by names, and permutations between sets are built from those names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class JointSet:
    """A named joint order with its kinematic tree.

    Attributes:
        name: registry key, e.g. ``"h36m17"``.
        names: joint names in order.
        parents: parent index of each joint, -1 for the root(s).
        flip_names: pairs of (left, right) joint names swapped by a horizontal flip.
        root_names: the joints root-relative poses are measured from, in order of preference:
            the first is :attr:`root`, the others are fallbacks used in a frame where the ones
            before them are not visible (:meth:`frame_roots`). Empty: the kinematic root only.
        reference_mm: (child joint name, length in mm) of every bone, the canonical skeleton of
            ``pipeline.geometry.triangulation.normalize_scale``; empty when the set declares none (labels are
            then scaled by the recording's own median bone lengths). Partial lists are refused.
    """

    name: str
    names: tuple[str, ...]
    parents: tuple[int, ...]
    flip_names: tuple[tuple[str, str], ...] = field(default=())
    root_names: tuple[str, ...] = field(default=())
    reference_mm: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.names) != len(self.parents):
            raise ValueError(f"{self.name}: {len(self.names)} names but {len(self.parents)} parents")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{self.name}: duplicate joint names")
        if self.parents.count(-1) != 1:
            raise ValueError(f"{self.name}: exactly one root (parent -1) expected")
        for j in range(len(self.parents)):  # walking up from every joint must reach the root
            seen, k = set(), j
            while k != -1:
                if k in seen or not -1 <= self.parents[k] < len(self.parents):
                    raise ValueError(f"{self.name}: joint {self.names[j]!r} does not reach the root")
                seen.add(k)
                k = self.parents[k]
        self._check_names()

    def _check_names(self) -> None:
        """Flip pairs, roots and reference lengths name joints of the set; every bone has a
        reference length when any is given, each positive."""
        for a, b in self.flip_names:
            self.index(a), self.index(b)
        for r in self.root_names:
            self.index(r)
        if len(set(self.root_names)) != len(self.root_names):
            raise ValueError(f"{self.name}: a root is listed twice in {list(self.root_names)}")
        if not self.reference_mm:
            return
        ref = dict(self.reference_mm)
        children = [self.names[c] for _, c in self.bones]
        extra = sorted(set(ref) - set(children))
        missing = [c for c in children if c not in ref]
        if extra or missing:
            raise ValueError(f"{self.name}: reference bone lengths are keyed by each bone's child "
                             f"joint; missing {missing}, not a bone's child {extra}")
        bad = [k for k, v in ref.items() if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"{self.name}: reference bone lengths of {bad} must be positive")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def root(self) -> int:
        """The first root: the joint root-relative poses are measured from where visible."""
        return self.roots[0]

    @property
    def roots(self) -> tuple[int, ...]:
        """Indices of the root and its fallbacks, in order of preference."""
        if not self.root_names:
            return (self.parents.index(-1),)
        return tuple(self.index(n) for n in self.root_names)

    def frame_roots(self, valid: np.ndarray) -> np.ndarray:
        """(..., J) bool visibility -> (...,) index of each frame's root: the first of
        :attr:`roots` that is valid in that frame, -1 where none is. With one root this is the
        root where valid. The rule is recoverable from a label's ``valid`` mask alone."""
        valid = np.asarray(valid, bool)
        out = np.full(valid.shape[:-1], -1, np.int64)
        for r in reversed(self.roots):
            out = np.where(valid[..., r], r, out)
        return out

    def root_relative(self, X: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., J, 3) poses made relative to each frame's root (:meth:`frame_roots`) and the
        (..., J) validity that needs a root: frames without one are all invalid. Invalid
        joints are left as they are (callers zero or mask them)."""
        roots = self.frame_roots(valid)
        has = roots >= 0
        origin = np.take_along_axis(X, np.maximum(roots, 0)[..., None, None], axis=-2)
        Xr = X - np.where(has[..., None, None], origin, 0.0)
        return Xr, np.asarray(valid, bool) & has[..., None]

    @property
    def reference_lengths(self) -> np.ndarray | None:
        """(B,) reference length (mm) of every bone of :attr:`bones`, or None when the set
        declares none."""
        if not self.reference_mm:
            return None
        ref = dict(self.reference_mm)
        return np.array([ref[self.names[c]] for _, c in self.bones], np.float64)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"joint {name!r} is not in joint set {self.name!r}") from None

    @property
    def bones(self) -> np.ndarray:
        """(B, 2) int array of (parent, child) index pairs."""
        return np.array([(p, j) for j, p in enumerate(self.parents) if p >= 0], dtype=np.int64)

    @property
    def flip_pairs(self) -> np.ndarray:
        """(P, 2) int array of (left, right) index pairs."""
        return np.array([(self.index(a), self.index(b)) for a, b in self.flip_names], dtype=np.int64)

    @property
    def flip_permutation(self) -> np.ndarray:
        """(J,) permutation that maps a pose to its mirror's joint order."""
        perm = np.arange(self.num_joints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm


# Bone lengths of the Human3.6M skeleton (mm), keyed by the H36M-17 child joint of each bone.
# They are the offsets of the 32-joint H36M motion skeleton as distributed with the dataset's
# exponential-map motion files (the skeleton the motion-prediction literature uses; left and
# right differ by < 0.02 mm and are averaged here). Spine: pelvis->spine is the 0.1 + 233.38 mm
# offset of the two lower spine joints; thorax->shoulder is the 151.03 mm clavicle offset.
# Their sum, 4150.1 mm (pipeline.geometry.triangulation.REFERENCE_BONE_SUM_MM), is the canonical size of a
# normalised label: an adult of about 1.7 m. Measured on the CMU clip 131_01 (a different,
# smaller adult, mapped to H36M-17 by pipeline.store.bvh) the same sum is 3.53 m (narrower hips,
# shorter spine).
H36M17_BONE_LENGTHS_MM: dict[str, float] = {
    "r_hip": 132.949, "r_knee": 442.895, "r_ankle": 454.207,
    "l_hip": 132.949, "l_knee": 442.895, "l_ankle": 454.207,
    "spine": 233.483, "thorax": 257.078, "neck": 121.135, "head": 115.002,
    "l_shoulder": 151.033, "l_elbow": 278.888, "l_wrist": 251.731,
    "r_shoulder": 151.033, "r_elbow": 278.888, "r_wrist": 251.731,
}

H36M17 = JointSet(
    name="h36m17",
    names=(
        "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
        "spine", "thorax", "neck", "head",
        "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist",
    ),
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    flip_names=(
        ("l_hip", "r_hip"), ("l_knee", "r_knee"), ("l_ankle", "r_ankle"),
        ("l_shoulder", "r_shoulder"), ("l_elbow", "r_elbow"), ("l_wrist", "r_wrist"),
    ),
    reference_mm=tuple(H36M17_BONE_LENGTHS_MM.items()),
)

DERIVED_JOINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pelvis", ("l_hip", "r_hip")),
    ("thorax", ("l_shoulder", "r_shoulder")),
    ("spine", ("pelvis", "thorax")),
)
"""Joints that 2D detectors without them derive as the mean of others (MediaPipe and COCO:
:func:`mediapipe33_to_h36m17`); a consumer that must read every detector alike (the keypoint
lifter, ``train.lifter``) derives them the same way from any detector's output. In order: a
derived joint may be the source of a later one."""


def derived_joint_sources(joint_set: JointSet) -> list[tuple[int, list[int]]]:
    """(joint index, source indices) of the :data:`DERIVED_JOINTS` a joint set holds together
    with all their sources; empty for a set without them."""
    have = set(joint_set.names)
    return [(joint_set.index(j), [joint_set.index(s) for s in src])
            for j, src in DERIVED_JOINTS if j in have and have.issuperset(src)]


def lengths_by_name(joint_set: JointSet, reference: JointSet = H36M17) -> np.ndarray:
    """(B,) for each bone of ``joint_set`` (:attr:`JointSet.bones` order) the reference length
    (mm) of the bone of ``reference`` that joins the same two joint names, either way round;
    NaN where ``reference`` has no such bone. A joint set that declares no lengths is scaled by
    the H36M-17 bones it contains (``pipeline.geometry.triangulation.normalize_scale``)."""
    ref = {frozenset((reference.names[p], reference.names[c])): length
           for (p, c), length in zip(reference.bones, reference.reference_lengths)}
    return np.array([ref.get(frozenset((joint_set.names[p], joint_set.names[c])), np.nan)
                     for p, c in joint_set.bones], np.float64)


MPII16_ORDER: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "neck", "head", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)
"""MPII's published joint order (its annotation ids 0..15). Our 'neck' is MPII's upper neck."""

COCO17_ORDER: tuple[str, ...] = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)
"""COCO keypoint order. COCO has no pelvis, spine, thorax or head top."""

MEDIAPIPE33_ORDER: tuple[str, ...] = (
    "nose", "l_eye_inner", "l_eye", "l_eye_outer", "r_eye_inner", "r_eye", "r_eye_outer",
    "l_ear", "r_ear", "mouth_left", "mouth_right", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_pinky", "r_pinky", "l_index", "r_index", "l_thumb",
    "r_thumb", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle", "l_heel", "r_heel",
    "l_foot_index", "r_foot_index",
)
"""MediaPipe BlazePose's 33 landmarks in its published order."""

# MPII in its published order; its parents are built from names so no index is typed twice.
_MPII_PARENT_NAMES = {
    "pelvis": None, "r_hip": "pelvis", "r_knee": "r_hip", "r_ankle": "r_knee",
    "l_hip": "pelvis", "l_knee": "l_hip", "l_ankle": "l_knee", "thorax": "pelvis",
    "neck": "thorax", "head": "neck", "r_shoulder": "thorax", "r_elbow": "r_shoulder",
    "r_wrist": "r_elbow", "l_shoulder": "thorax", "l_elbow": "l_shoulder", "l_wrist": "l_elbow",
}
MPII16 = JointSet(
    name="mpii16",
    names=MPII16_ORDER,
    parents=tuple(-1 if _MPII_PARENT_NAMES[n] is None else MPII16_ORDER.index(_MPII_PARENT_NAMES[n])
                  for n in MPII16_ORDER),
    flip_names=H36M17.flip_names,
)

JOINT_SETS: dict[str, JointSet] = {js.name: js for js in (H36M17, MPII16)}


def get_joint_set(name: str) -> JointSet:
    """Registry lookup with an error that lists the known sets."""
    try:
        return JOINT_SETS[name]
    except KeyError:
        raise KeyError(f"unknown joint set {name!r}; known: {sorted(JOINT_SETS)}") from None


def permutation(src_names: tuple[str, ...], dst_names: tuple[str, ...]) -> np.ndarray:
    """Index array ``p`` with ``x_dst = x_src[..., p, :]`` for every name of ``dst`` found in
    ``src``; raises if ``dst`` holds a name that ``src`` lacks."""
    missing = [n for n in dst_names if n not in src_names]
    if missing:
        raise KeyError(f"joints {missing} have no source in {src_names}")
    return np.array([src_names.index(n) for n in dst_names], dtype=np.int64)


# --- MediaPipe 33 -> H36M 17 ------------------------------------------------------------------
# Direct correspondences share a name (shoulders, elbows, wrists, hips, knees, ankles).
# Derived joints (documented here, used by the mediapipe detector):
#   pelvis = mean(l_hip, r_hip)
#   thorax = mean(l_shoulder, r_shoulder)
#   spine  = mean(pelvis, thorax)
#   neck   = mean(nose, thorax) weighted 0.5/0.5 (H36M's joint 9 sits between chin and nose)
#   head   = nose + (nose - thorax) * 0.5, i.e. above the nose along the neck direction
# Each derived joint's confidence is the minimum of its sources' confidences.
_MP_DIRECT = ("r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
              "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist")


def mediapipe33_to_h36m17(landmarks: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map MediaPipe landmarks to the H36M 17-joint order.

    Args:
        landmarks: (..., 33, D) landmark coordinates (D = 2 or 3).
        conf: (..., 33) per-landmark visibility/confidence.
    Returns:
        joints (..., 17, D) and confidences (..., 17), derived joints as documented above.
    """
    assert landmarks.shape[-2] == 33 and conf.shape[-1] == 33
    mp = {n: i for i, n in enumerate(MEDIAPIPE33_ORDER)}
    out = np.zeros(landmarks.shape[:-2] + (17, landmarks.shape[-1]), dtype=landmarks.dtype)
    oc = np.zeros(conf.shape[:-1] + (17,), dtype=conf.dtype)
    for n in _MP_DIRECT:
        out[..., H36M17.index(n), :] = landmarks[..., mp[n], :]
        oc[..., H36M17.index(n)] = conf[..., mp[n]]

    def mean_of(a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        return (landmarks[..., mp[a], :] + landmarks[..., mp[b], :]) / 2, np.minimum(
            conf[..., mp[a]], conf[..., mp[b]])

    pelvis, c_pelvis = mean_of("l_hip", "r_hip")
    thorax, c_thorax = mean_of("l_shoulder", "r_shoulder")
    nose, c_nose = landmarks[..., mp["nose"], :], conf[..., mp["nose"]]
    derived = {
        "pelvis": (pelvis, c_pelvis),
        "thorax": (thorax, c_thorax),
        "spine": ((pelvis + thorax) / 2, np.minimum(c_pelvis, c_thorax)),
        "neck": ((nose + thorax) / 2, np.minimum(c_nose, c_thorax)),
        "head": (nose + (nose - thorax) * 0.5, np.minimum(c_nose, c_thorax)),
    }
    for n, (x, c) in derived.items():
        out[..., H36M17.index(n), :] = x
        oc[..., H36M17.index(n)] = c
    return out, oc


def coco17_to_h36m17(kpts: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map COCO-17 keypoints (..., 17, D) to H36M-17, deriving pelvis, spine, thorax, neck and
    head the same way as :func:`mediapipe33_to_h36m17` (COCO has the same source joints)."""
    assert kpts.shape[-2] == 17 and conf.shape[-1] == 17
    idx = permutation(COCO17_ORDER, MEDIAPIPE33_ORDER[:1] + tuple(
        n for n in MEDIAPIPE33_ORDER if n in COCO17_ORDER and n != "nose"))
    # Scatter COCO joints into a MediaPipe-shaped array so that one mapping stays the truth.
    mp = np.zeros(kpts.shape[:-2] + (33, kpts.shape[-1]), dtype=kpts.dtype)
    mc = np.zeros(conf.shape[:-1] + (33,), dtype=conf.dtype)
    names = [COCO17_ORDER[i] for i in idx]
    for src, n in zip(idx, names):
        mp[..., MEDIAPIPE33_ORDER.index(n), :] = kpts[..., src, :]
        mc[..., MEDIAPIPE33_ORDER.index(n)] = conf[..., src]
    return mediapipe33_to_h36m17(mp, mc)

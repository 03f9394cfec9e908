"""BVH motion capture: parser, forward kinematics, and the mapping to H36M-17.

A BVH file holds a joint hierarchy (offsets and channel orders) and per-frame channel values.
:func:`load_bvh` parses it; :func:`forward_kinematics` gives world joint positions in mm,
converted from the file's y-up frame to the project's z-up world (H36M convention) by the
proper rotation (x, y, z) -> (x, -z, y); :func:`bvh_to_h36m17` maps CMU joints to H36M-17.

Rotation channels compose in the order they are listed: ``Zrotation Yrotation Xrotation`` means
R_local = Rz @ Ry @ Rx (intrinsic, the BVH convention); CMU shoulders and arms list Z X Y.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.joints import H36M17

END_SUFFIX = "_end"
"""End sites become joints named after their parent plus this suffix (e.g. ``Head_end``)."""

Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Rotation taking the file's y-up frame to the z-up world: (x, y, z) -> (x, -z, y)."""


@dataclass(frozen=True)
class BvhMotion:
    """A parsed BVH file.

    Attributes:
        names: (Jb,) joint names in file order (end sites included as ``<parent>_end``).
        parents: (Jb,) parent index, -1 for the root.
        offsets: (Jb, 3) offsets from the parent, file units.
        channels: per joint, the channel names in file order (empty for end sites).
        channel_start: (Jb,) column of each joint's first channel in ``motion``.
        motion: (F, C) channel values (positions in file units, rotations in degrees).
        frame_time: seconds per frame.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    channel_start: tuple[int, ...]
    motion: np.ndarray
    frame_time: float

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"joint {name!r} not in BVH (has {list(self.names)})") from None


class _Tokens:
    """Whitespace tokens of a BVH text with their line numbers, read front to back."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, int]] = [(tok, n + 1) for n, line in
                                              enumerate(text.splitlines()) for tok in line.split()]
        self.pos = 0

    def take(self, expect: str | None = None) -> str:
        """The next token; with ``expect``, fail unless it is that token."""
        if self.pos >= len(self.tokens):
            raise ValueError(f"{self.source}: unexpected end of file "
                             f"(expected {expect or 'a token'})")
        tok, line = self.tokens[self.pos]
        if expect is not None and tok != expect:
            raise ValueError(f"{self.source}:{line}: expected {expect!r}, found {tok!r}")
        self.pos += 1
        return tok

    def take_float(self) -> float:
        """The next token as a number."""
        tok, line = self.tokens[self.pos] if self.pos < len(self.tokens) else ("<eof>", -1)
        try:
            value = float(self.take())
        except ValueError:
            raise ValueError(f"{self.source}:{line}: expected a number, found {tok!r}") from None
        return value

    def rest(self) -> list[str]:
        """Every token not read yet."""
        return [tok for tok, _ in self.tokens[self.pos:]]


@dataclass
class _Hierarchy:
    """Joints of a BVH HIERARCHY in file order (End Sites included) while being read."""

    names: list[str] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    offsets: list[list[float]] = field(default_factory=list)
    channels: list[tuple[str, ...]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    n_channels: int = 0


def parse_bvh(text: str, source: str = "<string>") -> BvhMotion:
    """Parse BVH text. Errors name the source and the line at fault."""
    tok = _Tokens(text, source)
    h = _parse_hierarchy(tok)
    tok.take("MOTION")
    tok.take("Frames:")
    n_frames = int(tok.take_float())
    tok.take("Frame")
    tok.take("Time:")
    frame_time = tok.take_float()
    values = np.array([float(t) for t in tok.rest()], dtype=np.float64)
    if values.size != n_frames * h.n_channels:
        raise ValueError(f"{source}: MOTION holds {values.size} values, expected {n_frames} frames "
                         f"x {h.n_channels} channels")
    return BvhMotion(tuple(h.names), tuple(h.parents), np.array(h.offsets, dtype=np.float64),
                     tuple(h.channels), tuple(h.starts), values.reshape(n_frames, h.n_channels),
                     float(frame_time))


def _parse_hierarchy(tok: _Tokens) -> _Hierarchy:
    """Read ``HIERARCHY ROOT ... }`` up to the brace that closes the root."""
    h = _Hierarchy()
    tok.take("HIERARCHY")
    stack: list[int] = []
    kind = tok.take()
    if kind != "ROOT":
        raise ValueError(f"{tok.source}: expected ROOT after HIERARCHY, found {kind!r}")
    pending: tuple[str, str] | None = ("ROOT", tok.take())
    while True:
        if pending is not None:
            _parse_joint(tok, h, stack, *pending)
            pending = None
            continue
        t = tok.take()
        if t in ("JOINT", "End"):
            pending = (t, tok.take())
        elif t == "}":
            stack.pop()
            if not stack:
                return h
        else:
            line = tok.tokens[tok.pos - 1][1]
            raise ValueError(f"{tok.source}:{line}: unexpected {t!r} in HIERARCHY")


def _parse_joint(tok: _Tokens, h: _Hierarchy, stack: list[int], kind: str, name: str) -> None:
    """Read ``{ OFFSET x y z [CHANNELS n ...]`` of one joint (kind ROOT, JOINT or End) into
    ``h`` and push it on ``stack`` (its children follow, then its closing brace)."""
    tok.take("{")
    idx = len(h.names)
    h.names.append(name if kind != "End" else f"{h.names[stack[-1]]}{END_SUFFIX}")
    h.parents.append(stack[-1] if stack else -1)
    tok.take("OFFSET")
    h.offsets.append([tok.take_float(), tok.take_float(), tok.take_float()])
    chans: tuple[str, ...] = ()
    if kind != "End":
        tok.take("CHANNELS")
        n = int(tok.take_float())
        chans = tuple(tok.take() for _ in range(n))
    h.channels.append(chans)
    h.starts.append(h.n_channels)
    h.n_channels += len(chans)
    stack.append(idx)


def load_bvh(path: str | Path) -> BvhMotion:
    """Read and parse a BVH file."""
    path = Path(path)
    return parse_bvh(path.read_text(), str(path))


def _axis_rotation(axis: str, deg: np.ndarray) -> np.ndarray:
    """(F,) angles in degrees about 'X', 'Y' or 'Z' -> (F, 3, 3)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    if axis == "X":
        m = [[o, z, z], [z, c, -s], [z, s, c]]
    elif axis == "Y":
        m = [[c, z, s], [z, o, z], [-s, z, c]]
    elif axis == "Z":
        m = [[c, -s, z], [s, c, z], [z, z, o]]
    else:
        raise ValueError(f"unknown rotation axis {axis!r}")
    return np.stack([np.stack(r, -1) for r in m], -2)


def local_transforms(bvh: BvhMotion) -> tuple[np.ndarray, np.ndarray]:
    """Per joint and frame: local rotation (F, Jb, 3, 3) and translation (F, Jb, 3), file units.

    Translation is the offset plus any position channels."""
    F, J = bvh.num_frames, len(bvh.names)
    R = np.broadcast_to(np.eye(3), (F, J, 3, 3)).copy()
    T = np.broadcast_to(bvh.offsets, (F, J, 3)).copy()
    for j, chans in enumerate(bvh.channels):  # per joint of the hierarchy, vectorised over frames
        for k, ch in enumerate(chans):
            col = bvh.motion[:, bvh.channel_start[j] + k]
            if ch.endswith("position"):
                T[:, j, "XYZ".index(ch[0])] += col
            elif ch.endswith("rotation"):
                R[:, j] = R[:, j] @ _axis_rotation(ch[0], col)
            else:
                raise ValueError(f"joint {bvh.names[j]!r}: unknown channel {ch!r}")
    return R, T


def forward_kinematics(bvh: BvhMotion, unit_to_mm: float = 1000.0, z_up: bool = True
                       ) -> np.ndarray:
    """World joint positions (F, Jb, 3) in mm (z up when ``z_up``).

    ``unit_to_mm``: millimetres per file unit (1000 for files in metres such as the scaled
    CMU clips; 10 for centimetres).
    """
    R_loc, T_loc = local_transforms(bvh)
    F, J = R_loc.shape[:2]
    R_glob = np.empty_like(R_loc)
    P = np.empty((F, J, 3))
    for j, p in enumerate(bvh.parents):  # parents precede children in file order
        if p < 0:
            R_glob[:, j], P[:, j] = R_loc[:, j], T_loc[:, j]
        else:
            R_glob[:, j] = R_glob[:, p] @ R_loc[:, j]
            P[:, j] = P[:, p] + (R_glob[:, p] @ T_loc[:, j, :, None])[..., 0]
    P = P * unit_to_mm
    return P @ Y_UP_TO_Z_UP.T if z_up else P


# --- CMU -> H36M-17 -----------------------------------------------------------------------------
# Direct joints (CMU name on the right). In CMU skeletons "LeftHip" is the hip joint centre
# (the child of the zero-length LHipJoint), "LeftShoulder" is the gleno-humeral joint.
CMU_DIRECT: dict[str, str] = {
    "r_hip": "RightHip", "r_knee": "RightKnee", "r_ankle": "RightAnkle",
    "l_hip": "LeftHip", "l_knee": "LeftKnee", "l_ankle": "LeftAnkle",
    "l_shoulder": "LeftShoulder", "l_elbow": "LeftElbow", "l_wrist": "LeftWrist",
    "r_shoulder": "RightShoulder", "r_elbow": "RightElbow", "r_wrist": "RightWrist",
    "neck": "Head", "head": "Head_end",
}
# Derived joints (the same construction as pipeline.joints' detector mappings, so that a
# synthetic label and a detector's derived joint mean the same point):
#   pelvis = mean(l_hip, r_hip)          H36M's pelvis lies on the hip axis (hips are lateral)
#   thorax = mean(l_shoulder, r_shoulder)
#   spine  = mean(pelvis, thorax)
#   neck   = CMU "Head": the top of the neck segment, base of the skull (H36M 'neck/nose')
#   head   = the end site above CMU "Head": top of the head (H36M 'head')


def bvh_to_h36m17(positions: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Map (F, Jb, 3) CMU BVH joint positions (names in ``names``) to (F, 17, 3) H36M-17."""
    if positions.shape[-2] != len(names):
        raise ValueError(f"positions have {positions.shape[-2]} joints but {len(names)} names")
    missing = [n for n in CMU_DIRECT.values() if n not in names]
    if missing:
        raise KeyError(f"BVH lacks joints {missing} needed for H36M-17")
    out = np.empty(positions.shape[:-2] + (H36M17.num_joints, 3))
    src = np.array([names.index(CMU_DIRECT[n]) for n in H36M17.names if n in CMU_DIRECT])
    dst = np.array([H36M17.index(n) for n in H36M17.names if n in CMU_DIRECT])
    out[..., dst, :] = positions[..., src, :]
    pelvis = (out[..., H36M17.index("l_hip"), :] + out[..., H36M17.index("r_hip"), :]) / 2
    thorax = (out[..., H36M17.index("l_shoulder"), :] + out[..., H36M17.index("r_shoulder"), :]) / 2
    out[..., H36M17.index("pelvis"), :] = pelvis
    out[..., H36M17.index("thorax"), :] = thorax
    out[..., H36M17.index("spine"), :] = (pelvis + thorax) / 2
    return out


def load_h36m17(path: str | Path, unit_to_mm: float = 1000.0) -> np.ndarray:
    """Convenience: (F, 17, 3) H36M-17 world positions (mm, z up) of a CMU BVH file."""
    bvh = load_bvh(path)
    return bvh_to_h36m17(forward_kinematics(bvh, unit_to_mm), bvh.names)


# --- writing: a joint set's skeleton with rotations fitted to positions -------------------------

def _topological(parents: tuple[int, ...]) -> list[int]:
    """Joint indices with every parent before its children."""
    order, placed = [], set()
    while len(order) < len(parents):
        for j, p in enumerate(parents):
            if j not in placed and (p < 0 or p in placed):
                order.append(j)
                placed.add(j)
    return order


def _shortest_arc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(F, 3) unit vectors a, b -> (F, 3, 3) the smallest rotations taking a onto b (Rodrigues;
    a half turn about an axis normal to a where b = -a)."""
    v = np.cross(a, b)
    c = np.einsum("fi,fi->f", a, b)
    s = np.linalg.norm(v, axis=-1)
    k = v / np.maximum(s, 1e-12)[:, None]
    flip = (s < 1e-9) & (c < 0)
    if flip.any():  # any axis normal to a
        alt = np.cross(a[flip], np.eye(3)[np.argmin(np.abs(a[flip]), axis=-1)])
        k[flip] = alt / np.linalg.norm(alt, axis=-1, keepdims=True)
    ang = np.arctan2(s, c)
    ang[flip] = np.pi
    K = np.zeros((len(a), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - np.swapaxes(K, 1, 2)
    return (np.eye(3) + np.sin(ang)[:, None, None] * K
            + (1 - np.cos(ang))[:, None, None] * K @ K)


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(F, k, 3) source and target vectors -> (F, 3, 3) the rotations R minimising
    sum |R src - dst|^2 (no reflection)."""
    H = np.swapaxes(src, 1, 2) @ dst
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))
    D = np.zeros_like(H)
    D[:, 0, 0], D[:, 1, 1], D[:, 2, 2] = 1.0, 1.0, d
    return np.swapaxes(Vt, 1, 2) @ D @ np.swapaxes(U, 1, 2)


def fit_rotations(positions: np.ndarray, parents: tuple[int, ...], offsets: np.ndarray
                  ) -> np.ndarray:
    """Global rotations (F, J, 3, 3) of a skeleton with rest ``offsets`` (J, 3) whose forward
    kinematics follows ``positions`` (F, J, 3): a joint with one child turns the child's rest
    direction onto the observed one by the smallest rotation after its parent's; one with
    several children takes the best rigid fit of their directions (Kabsch); a leaf keeps its
    parent's rotation."""
    F, J = positions.shape[:2]
    children = [[c for c, p in enumerate(parents) if p == j] for j in range(J)]
    R = np.empty((F, J, 3, 3))
    for j in _topological(parents):
        Rp = R[:, parents[j]] if parents[j] >= 0 else np.broadcast_to(np.eye(3), (F, 3, 3))
        kids = children[j]
        if not kids:
            R[:, j] = Rp
            continue
        d = positions[:, kids] - positions[:, j:j + 1]
        d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
        rest = offsets[kids] / np.maximum(np.linalg.norm(offsets[kids], axis=-1,
                                                         keepdims=True), 1e-12)
        if len(kids) == 1:
            R[:, j] = _shortest_arc((Rp @ rest[0])[:, :], d[:, 0]) @ Rp
        else:
            R[:, j] = _kabsch(np.broadcast_to(rest, d.shape), d)
    return R


def motion_from_positions(positions: np.ndarray, joint_set, frame_time: float,
                          rest: np.ndarray | None = None) -> BvhMotion:
    """A :class:`BvhMotion` of ``joint_set``'s skeleton following ``positions`` (F, J, 3), in the
    file's units and frame (y up for the usual viewers): the root has position and rotation
    channels, every other joint rotations (``Zrotation Xrotation Yrotation``), each leaf an end
    site at zero offset (so that parsing it back names every joint of the set).

    Rest offsets: the bone vectors of ``rest`` (J, 3; default the first frame, with the
    directions of the children of each joint that has several replaced by their Procrustes mean
    over the frames) scaled to each bone's median length over the frames. Forward kinematics
    gives the positions back exactly where the motion is rigid with those lengths; elsewhere
    bone lengths are the medians and branching joints the best rigid fit."""
    from scipy.spatial.transform import Rotation  # noqa: PLC0415  (writing only)

    X = np.asarray(positions, np.float64)
    F, J = X.shape[:2]
    par = np.asarray(joint_set.parents)
    has = par >= 0
    unit = X[:, has] - X[:, par[has]]
    unit = unit / np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    if rest is None:
        dirs = _mean_branch_directions(unit, par[has], unit[0])
    else:
        bone = np.asarray(rest, np.float64)[has] - np.asarray(rest, np.float64)[par[has]]
        dirs = bone / np.maximum(np.linalg.norm(bone, axis=-1, keepdims=True), 1e-12)
    offsets = np.zeros((J, 3))
    median = np.median(np.linalg.norm(X[:, has] - X[:, par[has]], axis=-1), axis=0)
    offsets[has] = dirs * median[:, None]
    R = fit_rotations(X, joint_set.parents, offsets)
    local = R.copy()
    local[:, has] = np.swapaxes(R[:, par[has]], -1, -2) @ R[:, has]
    euler = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_euler("ZXY", degrees=True)
    return _assemble(joint_set, offsets, X[:, joint_set.root], euler.reshape(F, J, 3),
                     frame_time)


def _mean_branch_directions(unit: np.ndarray, parent_of_bone: np.ndarray, first: np.ndarray
                            ) -> np.ndarray:
    """(B, 3) rest directions of the bones: ``first`` (B, 3), except that the bones leaving a
    joint with several children get the Procrustes mean of their (F, B, 3) unit directions
    (each frame's set rotated onto the first frame's by Kabsch, then averaged)."""
    out = first.copy()
    for p in np.unique(parent_of_bone):
        b = np.flatnonzero(parent_of_bone == p)
        if len(b) < 2:
            continue
        d = unit[:, b]
        R = _kabsch(d, np.broadcast_to(first[b], d.shape))
        mean = (d @ np.swapaxes(R, 1, 2)).mean(0)
        out[b] = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    return out


def _assemble(joint_set, offsets: np.ndarray, root_pos: np.ndarray, euler: np.ndarray,
              frame_time: float) -> BvhMotion:
    """The BvhMotion in file order (depth first from the root; leaves followed by their end
    site)."""
    children = [[c for c, p in enumerate(joint_set.parents) if p == j]
                for j in range(joint_set.num_joints)]
    names, parents, offs, channels, cols = [], [], [], [], []

    def visit(j: int, parent_row: int) -> None:
        row = len(names)
        names.append(joint_set.names[j])
        parents.append(parent_row)
        offs.append(offsets[j])
        rot = ("Zrotation", "Xrotation", "Yrotation")
        pos = ("Xposition", "Yposition", "Zposition") if parent_row < 0 else ()
        channels.append(pos + rot)
        cols.append(([root_pos] if pos else []) + [euler[:, j]])
        for c in children[j]:
            visit(c, row)
        if not children[j]:
            names.append(joint_set.names[j] + END_SUFFIX)
            parents.append(row)
            offs.append(np.zeros(3))
            channels.append(())

    visit(joint_set.root if joint_set.parents[joint_set.root] < 0 else
          joint_set.parents.index(-1), -1)
    starts = np.cumsum([0] + [len(c) for c in channels])[:-1]
    motion = np.concatenate([a for c in cols for a in c], axis=1)
    return BvhMotion(tuple(names), tuple(parents), np.array(offs), tuple(map(tuple, channels)),
                     tuple(int(s) for s in starts), motion, float(frame_time))


def format_bvh(bvh: BvhMotion, digits: int = 6) -> str:
    """The text of a BVH file (HIERARCHY, MOTION) of ``bvh``; :func:`parse_bvh` reads it back."""
    lines = ["HIERARCHY"]
    kids = [[c for c, p in enumerate(bvh.parents) if p == j] for j in range(len(bvh.names))]

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        end = not bvh.channels[j] and bvh.names[j].endswith(END_SUFFIX)
        head = "ROOT" if bvh.parents[j] < 0 else "End Site" if end else "JOINT"
        lines.append(pad + (head if end else f"{head} {bvh.names[j]}"))
        lines.append(pad + "{")
        lines.append(pad + "  OFFSET " + " ".join(f"{v:.{digits}f}" for v in bvh.offsets[j]))
        if not end:
            lines.append(pad + f"  CHANNELS {len(bvh.channels[j])} " + " ".join(bvh.channels[j]))
        for c in kids[j]:
            emit(c, depth + 1)
        lines.append(pad + "}")

    emit(bvh.parents.index(-1), 0)
    lines += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time:.6f}"]
    lines += [" ".join(f"{v:.{digits}f}" for v in row) for row in bvh.motion]
    return "\n".join(lines) + "\n"

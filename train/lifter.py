"""The keypoint-lifting student: 2D joints of one camera -> its root-relative 3D pose.

It learns the same labels as the volumetric network (stage-1 shards: ``joints_2d`` of the
labelled camera in, ``joints_3d`` out) but reads no pixels, so it trains in minutes on a CPU and
carries over from rendered to real footage wherever a 2D detector does. Two networks:

* ``window`` 1: a residual MLP on one frame (Martinez et al. 2017, "A simple yet effective
  baseline for 3d human pose estimation");
* ``window`` 3, 9, 27 or 81: dilated temporal convolutions over that many frames of one person
  (Pavllo et al. 2019, VideoPose3D), predicting the middle frame.

**The input** of a frame (:func:`lift_features`), for any joint set: each joint's undistorted
normalised camera coordinates (the intrinsics remove the lens and the focal length), relative to
the root and divided by the pose's 2D spread, times a presence mask (a joint the detector did not
find, or found below ``conf_threshold``, is 0 with mask 0); then the mask itself, and three
numbers that keep the perspective: the root's normalised position and the log of the spread.
Joints that detectors derive rather than see (:data:`pipeline.joints.DERIVED_JOINTS`: the pelvis
as the hips' midpoint, ...) are derived from their sources here for every detector, so a
network trained on one detector's 2D reads another's the same way.

**The output**: the root-relative camera-frame pose in the label's units (mm of the reference
skeleton for pseudo-labels) divided by :data:`OUTPUT_SCALE_MM`, as ``{"coords": (N, J, 3)}``,
so the trainer's loss and step serve both students.

**Training samples** (:class:`LiftDataset`): the sample's own detections (the inputs it will
see at inference), with random horizontal flips (joints swapped), hidden joints
(``joint_dropout``) and virtual cameras: the label pose rotated about the camera's vertical axis
through its root, projected through the camera's intrinsics (no extrinsics needed) with the
detector's 2D noise measured on the training rows (:func:`detector_noise_px`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline.geometry.cameras import pixels_to_normalized
from pipeline.joints import JointSet, derived_joint_sources
from pipeline.store.shards import column_array
from train.samples import Samples

UP_JOINTS = ("spine", "thorax", "neck", "head")
"""Joints above the root whose mean direction from it is a person's up (those a set holds)."""
OUTPUT_SCALE_MM = 1000.0
"""Label units per network output unit."""
TEMPORAL_WINDOWS = (1, 3, 9, 27, 81)
"""Frames a lifter may see: 1 (the MLP) or 3**k (k dilated temporal convolutions of kernel 3)."""


@dataclass(frozen=True)
class LifterSpec:
    """The keypoint-lifting student (the ``lifter`` section of a config with ``student: lifter``).

    Attributes:
        window: frames seen, one of :data:`TEMPORAL_WINDOWS` (1 = the single-frame MLP).
        hidden: width of the hidden layers (1024 in both papers; 512 is enough here).
        blocks: residual blocks (two layers each).
        dropout: dropout after every hidden layer.
        conf_threshold: a detected joint below this confidence is missing.
        joint_dropout: training: probability that a present input joint is hidden.
        flip_prob: training: probability of a horizontal flip (joints swapped left/right).
        virtual_prob: training: probability that a sample is seen from a virtual camera.
        virtual_yaw_deg: a virtual camera turns the pose about the vertical axis through its
            root by an angle uniform in [-virtual_yaw_deg, virtual_yaw_deg].
        virtual_body_up: the vertical axis of a virtual camera is the people's: per camera,
            the mean direction from the root to the upper-body joints of its labels
            (:data:`UP_JOINTS`; for a tilted camera that is not its image y axis); False: the
            camera's y axis (as for a level camera).
        noise_px: 2D noise (pixels, Gaussian sigma) added to virtual projections; < 0 = the
            detector's own, measured on the training rows (:func:`detector_noise_px`).
        input_noise_px: training: Gaussian noise (pixels, sigma) added to the detections of
            samples not seen from a virtual camera: a detector is noisier on people it was
            not trained on than on the training subjects whose 2D the lifter learns from.
        ignore_joints: joints never read (always missing in the input; still predicted):
            those whose 2D differs by detector, e.g. ``[neck, head]``, which MediaPipe and
            COCO mappings derive from the nose (pipeline.joints.mediapipe33_to_h36m17) where
            the project's network detects them.
    """

    window: int = 1
    hidden: int = 512
    blocks: int = 2
    dropout: float = 0.25
    conf_threshold: float = 0.3
    joint_dropout: float = 0.1
    flip_prob: float = 0.5
    virtual_prob: float = 0.0
    virtual_yaw_deg: float = 180.0
    virtual_body_up: bool = False
    noise_px: float = -1.0
    input_noise_px: float = 0.0
    ignore_joints: tuple[str, ...] = ()

    @property
    def half(self) -> int:
        return self.window // 2


LIFTER_NETWORK_KEYS = ("window", "hidden", "blocks")
"""The :class:`LifterSpec` keys that shape the network (a checkpoint can start a run whose other,
training-only keys differ: ``optim.init_from``)."""


def feature_size(num_joints: int) -> int:
    """Inputs per frame: J x (x, y, mask) + root position (2) + log spread (1)."""
    return 3 * num_joints + 3


# --- the networks -------------------------------------------------------------------------------

class _Residual(nn.Module):
    """Two layers and a skip; ``kernel`` 3 looks at three positions ``stride`` 3 apart and
    keeps the middle one's skip."""

    def __init__(self, width: int, dropout: float, kernel: int = 1) -> None:
        super().__init__()
        self.kernel = kernel
        self.body = nn.Sequential(
            nn.Conv1d(width, width, kernel, stride=kernel, bias=False), nn.BatchNorm1d(width),
            nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv1d(width, width, 1, bias=False), nn.BatchNorm1d(width),
            nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.kernel // 2::self.kernel] + self.body(x)


class LifterNet(nn.Module):
    """(N, C, T) features of exactly T = ``window`` frames (or (N, C) for T = 1) ->
    {"coords": (N, J, 3)} of the middle frame.

    With T = 1 every convolution has kernel 1: the residual MLP of Martinez et al. With
    T = 3**k the expansion and the first k - 1 blocks have kernel 3: the dilated temporal
    convolutions of VideoPose3D (dilations 1, 3, 9 ...), written as VideoPose3D's training model
    writes them, with stride 3 instead of dilation: the same weights computing only the middle
    frame's output (the only one a window needs), 3**k / (k + 1) times fewer operations than
    the dilated form over the window. The receptive field is exactly T."""

    def __init__(self, spec: LifterSpec, num_joints: int) -> None:
        super().__init__()
        if spec.window not in TEMPORAL_WINDOWS:
            raise ValueError(f"lifter.window must be one of {TEMPORAL_WINDOWS}, got {spec.window}")
        self.spec, self.num_joints = spec, num_joints
        levels = int(round(np.log(spec.window) / np.log(3)))
        k = 3 if spec.window > 1 else 1
        self.expand = nn.Sequential(
            nn.Conv1d(feature_size(num_joints), spec.hidden, k, stride=k, bias=False),
            nn.BatchNorm1d(spec.hidden), nn.ReLU(inplace=True), nn.Dropout(spec.dropout))
        kernels = [3] * max(0, levels - 1)
        kernels += [1] * max(0, spec.blocks - len(kernels))
        self.blocks = nn.Sequential(*[_Residual(spec.hidden, spec.dropout, kk) for kk in kernels])
        self.head = nn.Conv1d(spec.hidden, num_joints * 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() == 2:
            x = x[..., None]
        if not torch.jit.is_tracing() and x.shape[-1] != self.spec.window:  # ONNX: fixed T
            raise ValueError(f"the lifter reads windows of {self.spec.window} frames, got "
                             f"{x.shape[-1]}")
        y = self.head(self.blocks(self.expand(x)))
        return {"coords": y.reshape(-1, self.num_joints, 3)}  # batch not traced as a constant


def build_lifter(spec: LifterSpec, num_joints: int, device: str | torch.device = "cpu"
                 ) -> LifterNet:
    return LifterNet(spec, num_joints).to(device)


# --- inputs -------------------------------------------------------------------------------------

def normalized_joints(joints_2d: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(N, J, 2) pixels -> undistorted normalised camera coordinates, per row's camera (rows of
    one camera at once); NaN stays NaN. ValueError where a row's intrinsics are unknown."""
    n = len(joints_2d)
    cams = np.concatenate([np.asarray(K, np.float64).reshape(n, 9),
                           np.asarray(dist, np.float64).reshape(n, -1)], axis=1)
    if n and not np.isfinite(cams[:, :9]).all():
        raise ValueError("the keypoint lifter needs each row's camera intrinsics (K), and some "
                         "rows have none (shards read without their manifest?)")
    cams = np.nan_to_num(cams)
    out = np.full(np.shape(joints_2d), np.nan)
    for cam in np.unique(cams, axis=0):
        sel = (cams == cam).all(1)
        out[sel] = pixels_to_normalized(np.nan_to_num(joints_2d[sel]), cam[:9].reshape(3, 3),
                                        cam[9:])
    out[~np.isfinite(joints_2d)] = np.nan
    return out


def derive_joints(m: np.ndarray, present: np.ndarray, joint_set: JointSet
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, 2), (N, J) with each derived joint replaced by the mean of its sources wherever
    all of them are present (:func:`pipeline.joints.derived_joint_sources`), in the listed order
    (a derived joint may be the source of a later one)."""
    m, present = m.copy(), present.copy()
    for j, sources in derived_joint_sources(joint_set):
        ok = present[:, sources].all(1)
        m[ok, j] = m[ok][:, sources].mean(1)
        present[:, j] |= ok
    return m, present


def lift_features(m: np.ndarray, present: np.ndarray, joint_set: JointSet) -> np.ndarray:
    """(N, J, 2) normalised camera coordinates and (N, J) presence -> (N, C) features (module
    docstring). A row with fewer than two present joints is all zeros."""
    m, present = derive_joints(np.where(present[..., None], m, np.nan), present, joint_set)
    n, J = present.shape
    r = joint_set.root
    count = np.maximum(present.sum(1), 1)[:, None]
    mean = np.where(present[..., None], m, 0.0).sum(1) / count
    centre = np.where(present[:, [r]], m[:, r], mean)
    rel = np.where(present[..., None], m - centre[:, None], 0.0)
    spread = np.sqrt((rel ** 2).sum(-1).sum(1) / np.maximum(present.sum(1), 1))
    ok = (present.sum(1) >= 2) & (spread > 1e-9)
    spread = np.where(ok, spread, 1.0)
    out = np.concatenate([(rel / spread[:, None, None]).reshape(n, 2 * J),
                          present.astype(np.float64), np.nan_to_num(centre),
                          np.log(spread)[:, None]], axis=1)
    out[~ok] = 0.0
    return out.astype(np.float32)


def present_joints(joints_2d: np.ndarray, conf: np.ndarray, spec: "LifterSpec",
                   joint_set: JointSet) -> np.ndarray:
    """(N, J) bool: the joints a lifter reads: finite 2D at or above ``spec.conf_threshold``,
    except ``spec.ignore_joints``."""
    out = np.isfinite(joints_2d).all(-1) & (np.nan_to_num(conf) >= spec.conf_threshold)
    out[:, [joint_set.index(n) for n in spec.ignore_joints]] = False
    return out


def flip_inputs(m: np.ndarray, present: np.ndarray, perm: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mirror normalised coordinates about the camera's vertical plane, joints swapped."""
    m = m[:, perm].copy()
    m[..., 0] *= -1
    return m, present[:, perm]


def flip_pose(pose: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The 3D counterpart of :func:`flip_inputs` for (..., J, 3) camera-frame poses."""
    out = pose[..., perm, :].copy()
    out[..., 0] *= -1
    return out


# --- training samples ---------------------------------------------------------------------------

def window_indices(sequence: np.ndarray, frame: np.ndarray, window: int) -> np.ndarray:
    """(N, window) row indices of each row's neighbours in its sequence (rows of one
    ``sequence`` ordered by frame), the row itself in the middle; edges repeat the first or
    last row."""
    n, h = len(sequence), window // 2
    order = np.lexsort((frame, sequence))
    out = np.empty((n, window), np.int64)
    seq_sorted = sequence[order]
    starts = np.flatnonzero(np.r_[True, seq_sorted[1:] != seq_sorted[:-1]])
    ends = np.r_[starts[1:], n]
    for s, e in zip(starts, ends):
        pos = np.arange(s, e)
        nb = np.clip(pos[:, None] + np.arange(-h, h + 1)[None], s, e - 1)
        out[order[pos]] = order[nb]
    return out


def absolute_label(samples: Samples, m: np.ndarray, joint_set: JointSet) -> np.ndarray:
    """(N, J, 3) the label pose put at its root depth along the detected root's ray (label
    units, camera frame; NaN where the label or the depth is unknown)."""
    r = joint_set.root
    ray = np.concatenate([m[:, r], np.ones((len(m), 1))], axis=1)
    return samples.root_depth[:, None, None] * ray[:, None] + samples.label_3d


def detector_noise_px(samples: Samples, m: np.ndarray, present: np.ndarray,
                      joint_set: JointSet) -> float:
    """Robust sigma (pixels, per axis) of the detections about the projections of their
    labels put at the label's root depth (:func:`absolute_label`): the detector's 2D noise
    plus what the labels miss. NaN when no row has both."""
    P = absolute_label(samples, m, joint_set)
    with np.errstate(invalid="ignore", divide="ignore"):
        proj = P[..., :2] / P[..., 2:3]
    focal = samples.K[:, 0, 0][:, None, None]
    d = ((proj - m) * focal)[present & np.isfinite(proj).all(-1) & samples.label_mask]
    if d.size == 0:
        return float("nan")
    d = d.ravel()
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


class LiftDataset(Dataset):
    """Lifter training samples of a :class:`Samples` (module docstring), indexed like
    :class:`train.data.PoseDataset` by ``(epoch, i)`` or ``i``: ``{"image": features (C, T)
    float32 ("image" so the trainer's step serves both students), "target": (J, 3) label /
    OUTPUT_SCALE_MM, "weight": (J, 3), "meta": {"index": i}}``. Without ``augment`` the input
    is the detections as they are."""

    def __init__(self, samples: Samples, spec: LifterSpec, joint_set: JointSet,
                 augment: bool = True, seed: int = 0) -> None:
        self.samples, self.spec, self.joint_set = samples, spec, joint_set
        self.augment, self.seed = augment, int(seed)
        self.m = normalized_joints(samples.joints_2d, samples.K, samples.dist)
        self.present = present_joints(samples.joints_2d, samples.conf, spec, joint_set)
        self.window = window_indices(samples.sequence, samples.frame, spec.window)
        self.label = np.where(samples.label_mask[..., None], samples.label_3d, 0.0)
        self.absolute = absolute_label(samples, self.m, joint_set)
        self.noise_px = (spec.noise_px if spec.noise_px >= 0
                         else detector_noise_px(samples, self.m, self.present, joint_set))
        self.focal = samples.K[:, 0, 0]
        self.perm = joint_set.flip_permutation
        self.up = (people_up(samples, joint_set) if spec.virtual_body_up
                   else np.broadcast_to(np.array([0.0, -1.0, 0.0]), (len(samples), 3)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        """A batch of samples at once (the DataLoader calls this with a batch's keys): the
        augmentation's draws are per sample (seed, epoch, index), the arithmetic per batch."""
        keys = [k if isinstance(k, tuple) else (0, k) for k in keys]
        idx = np.array([i for _, i in keys], np.int64)
        rows = self.window[idx]                                           # (B, T)
        m, present = self.m[rows], self.present[rows]                     # (B, T, J, .)
        target = self.label[idx].copy()
        weight = self.samples.label_mask[idx].copy()
        if self.augment:
            draws = [self._draws(np.random.default_rng((self.seed, int(e), int(i))))
                     for e, i in keys]
            m, present, target, weight = self._augment(idx, rows, m, present, target, weight,
                                                       draws)
        B, T, J = present.shape
        x = lift_features(m.reshape(B * T, J, 2), present.reshape(B * T, J), self.joint_set)
        x = np.ascontiguousarray(x.reshape(B, T, -1).transpose(0, 2, 1))  # (B, C, T)
        y = (target / OUTPUT_SCALE_MM).astype(np.float32)
        w = np.repeat(weight[..., None].astype(np.float32), 3, axis=-1)
        return [{"image": torch.from_numpy(x[k]), "target": torch.from_numpy(y[k]),
                 "weight": torch.from_numpy(w[k]), "meta": {"index": np.int64(idx[k])}}
                for k in range(B)]

    def _draws(self, rng: np.random.Generator) -> dict[str, Any]:
        """One sample's random choices, in a fixed order."""
        s, T, J = self.spec, self.spec.window, self.joint_set.num_joints
        return {"virtual": rng.uniform() < s.virtual_prob,
                "yaw": np.deg2rad(rng.uniform(-s.virtual_yaw_deg, s.virtual_yaw_deg)),
                "noise": rng.normal(size=(T, J, 2)),
                "keep": rng.uniform(size=(T, J)) >= s.joint_dropout,
                "flip": rng.uniform() < s.flip_prob}

    def _augment(self, idx: np.ndarray, rows: np.ndarray, m: np.ndarray, present: np.ndarray,
                 target: np.ndarray, weight: np.ndarray, draws: list[dict[str, Any]]) -> tuple:
        r = self.joint_set.root
        virtual = np.array([d["virtual"] for d in draws]) & \
            np.isfinite(self.absolute[idx, r]).all(-1)
        if virtual.any():
            v = np.flatnonzero(virtual)
            m[v], present[v], target[v] = self._virtual(
                idx[v], rows[v], np.array([draws[k]["yaw"] for k in v]),
                np.stack([draws[k]["noise"] for k in v]))
        real = np.flatnonzero(~virtual)
        if len(real) and self.spec.input_noise_px > 0:
            sigma = self.spec.input_noise_px / np.maximum(self.focal[rows[real]], 1e-9)
            m[real] = m[real] + np.stack([draws[k]["noise"] for k in real]) * \
                sigma[..., None, None]
        present &= np.stack([d["keep"] for d in draws])
        flip = np.flatnonzero([d["flip"] for d in draws])
        if len(flip):
            perm = self.perm
            m[flip] = m[flip][:, :, perm] * np.array([-1.0, 1.0])
            present[flip] = present[flip][:, :, perm]
            target[flip] = flip_pose(target[flip], perm)
            weight[flip] = weight[flip][:, perm]
        return m, present, target, weight

    def _virtual(self, idx: np.ndarray, rows: np.ndarray, yaw: np.ndarray, noise: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows seen from cameras turned by ``yaw`` about the vertical axis through each
        middle frame's root: rotated label poses projected, with the detector's noise
        (``noise``: standard normal draws (B, T, J, 2)); joints without a label (and frames
        without one) are missing from the input. Returns (m, present, target)."""
        R = axis_rotation(self.up[idx], yaw)
        centre = self.absolute[idx, self.joint_set.root][:, None, None]      # (B, 1, 1, 3)
        P = np.einsum("bij,btkj->btki", R, self.absolute[rows] - centre) + centre
        ok = np.isfinite(P).all(-1) & (P[..., 2] > 1e-6)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = P[..., :2] / P[..., 2:3]
        sigma = self.noise_px / np.maximum(self.focal[rows], 1e-9)           # (B, T)
        if np.isfinite(sigma).all():
            m = m + noise * sigma[..., None, None]
        target = np.einsum("bij,bkj->bki", R, self.absolute[idx] - centre[:, 0])
        return np.where(ok[..., None], m, 0.0), ok, np.nan_to_num(target)


def axis_rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations by ``angle`` (B,) radians about unit ``axis`` (B, 3) (Rodrigues)."""
    c, s_ = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = np.zeros_like(x)
    cross = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1),
                      np.stack([-y, x, zero], -1)], axis=1)
    return c * np.eye(3) + s_ * cross + (1 - c) * axis[:, :, None] * axis[:, None, :]


def people_up(samples: Samples, joint_set: JointSet) -> np.ndarray:
    """(N, 3) each row's camera's up direction in its frame: the mean over the camera's rows of
    the unit vector from the root to the mean of the :data:`UP_JOINTS` of the label; the
    camera's -y where the set has none of them or the camera no such label."""
    out = np.broadcast_to(np.array([0.0, -1.0, 0.0]), (len(samples), 3)).copy()
    upper = [joint_set.index(n) for n in UP_JOINTS if n in joint_set.names]
    if not upper:
        return out
    L = samples.label_3d[:, upper]
    fin = np.isfinite(L).all(-1)
    v = np.where(fin[..., None], L, 0.0).sum(1) / np.maximum(fin.sum(1), 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    v[fin.sum(1) == 0] = np.nan
    for cam in np.unique(samples.camera):
        rows = samples.camera == cam
        ok = rows & np.isfinite(v).all(-1)
        if ok.any():
            mean = v[ok].mean(0)
            out[rows] = mean / np.linalg.norm(mean)
    return out


# --- inference ----------------------------------------------------------------------------------

@torch.no_grad()
def lift(model: LifterNet, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(N, C, T) (or (N, C)) features -> (N, J, 3) root-relative poses in label units."""
    model.eval()
    device = next(model.parameters()).device
    out = np.zeros((len(features), model.num_joints, 3))
    for s in range(0, len(features), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(features[s:s + batch_size])).to(device)
        out[s:s + len(x)] = model(x.float())["coords"].double().cpu().numpy()
    return out * OUTPUT_SCALE_MM


def sample_features(samples: Samples, spec: LifterSpec, joint_set: JointSet) -> np.ndarray:
    """(N, C, T) unaugmented inputs of every sample (its own detections, its window)."""
    ds = LiftDataset(samples, spec, joint_set, augment=False)
    feats = lift_features(ds.m, ds.present, joint_set)             # (N, C)
    return np.ascontiguousarray(feats[ds.window].transpose(0, 2, 1))


def predict_samples(model: LifterNet, samples: Samples, joint_set: JointSet) -> np.ndarray:
    """(N, J, 3) the lifter's poses of ``samples`` (label units, root-relative; the root 0)."""
    poses = lift(model, sample_features(samples, model.spec, joint_set))
    return poses - poses[:, joint_set.root:joint_set.root + 1]


# --- inputs from a stage-1 run's detections -------------------------------------------------------

def with_detections(samples: Samples, run: str | Path) -> Samples:
    """``samples`` (e.g. a manifest's test split) with ``joints_2d`` and ``conf`` replaced by the
    2D detections that stage-1 run folder ``run`` kept of the same (sequence, camera, frame):
    the lifter's inputs as its detector gives them. A sample without a usable detection gets NaN
    2D (the lifter then predicts NaN for it: counted as failed, never skipped silently).
    Single-person runs only (a multi-person run's detections carry several people per frame)."""
    from pipeline.store.run_folder import RunFolder

    folder = RunFolder(run)
    j2d, conf = np.full(samples.joints_2d.shape, np.nan), np.zeros(samples.conf.shape)
    for s, seq in enumerate(samples.sequences):
        for cam in seq.cameras:
            rows = np.flatnonzero((samples.seq_index == s) & (samples.camera == cam))
            if not len(rows):
                continue
            t = folder.detection_table(seq, cam)
            if "person" in t.column_names:
                raise ValueError(f"{folder.path}: detections of several people per frame; the "
                                 "lifter's evaluation reads single-person runs")
            ok = np.array(t.column("status").to_pylist()) == ""
            frame = np.asarray(t.column("frame").to_numpy())[ok]
            jj = column_array(t, "joints_2d")[ok]
            cc = column_array(t, "joints_2d_conf")[ok]
            pos = {int(f): k for k, f in enumerate(frame)}
            hit = np.array([pos.get(int(f), -1) for f in samples.frame[rows]])
            have = rows[hit >= 0]
            j2d[have], conf[have] = jj[hit[hit >= 0]], cc[hit[hit >= 0]]
    return replace(samples, joints_2d=j2d, conf=np.nan_to_num(conf))

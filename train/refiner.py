"""The refinement unit: a small fully-connected network that refines the 3D network's poses.

EpipolarPose's last step (its Section 3.3): a residual MLP (the "simple baseline" of Martinez et
al. 2017 in shape) trained on **unpaired** 3D poses, i.e. poses that never saw the images, to
map the 3D network's noisy predictions back towards plausible poses. Here:

    - clean poses: the training subjects' labels (the stage-1 pseudo-labels for a
      self-supervised network, whose training set it is; the ground truth for the supervised
      one), optionally mirrored with the joint set's flip pairs;
    - noise: a :class:`PoseNoise` model of the 3D network's own errors, a Gaussian (mean and
      full covariance over the J x 3 coordinates) of the residuals of its predictions on the
      **validation** split against that split's labels (pseudo-labels: no ground truth is read
      for a self-supervised network), never on the test split;
    - the network sees a pose scaled to unit RMS joint distance from the root and returns a
      correction; :meth:`Refiner.__call__` puts the refined pose back at the input's scale, so
      it works in any unit (mm, or the pseudo-labels' canonical scale).

Pose layout everywhere: (N, J, 3) root-relative camera-frame poses; rows with a non-finite
value pass through unchanged.

The checkpoint is :mod:`train.checkpoint`'s format (a plain dict, atomic write, checked read)
with ``config["kind"] == "refiner"``, the network's shape, and the noise model it was trained
with; :func:`load_refiner` refuses anything else with the file named. Training one for a 3D
network's checkpoint (its validation predictions, its training labels) is
:mod:`train.refiner_fit`'s, so that inference and ``make eval`` never load the trainer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REFINER_KIND = "refiner"


# --- the network --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefinerSpec:
    """Shape and schedule of a refinement unit.

    Attributes:
        num_joints: J. root: index of the root joint (stays at the origin).
        hidden: width of the residual blocks. blocks: residual blocks (two linear layers each).
        dropout: dropout inside the blocks.
        steps, batch_size, lr: Adam schedule (the learning rate decays tenfold at 2/3 of it).
        noise_scale: multiplies the noise model's deviations while training.
        flip: also train on the poses' mirror images (the joint set's flip pairs).
        seed: initialisation, noise and batch order.
    """

    num_joints: int = 17
    root: int = 0
    hidden: int = 512
    blocks: int = 2
    dropout: float = 0.1
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    noise_scale: float = 1.0
    flip: bool = True
    seed: int = 0


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class RefinerNet(nn.Module):
    """(B, J*3) unit-scale pose -> (B, J*3) refined pose (input plus a learned correction)."""

    def __init__(self, spec: RefinerSpec) -> None:
        super().__init__()
        d = spec.num_joints * 3
        self.inp = nn.Sequential(nn.Linear(d, spec.hidden), nn.BatchNorm1d(spec.hidden),
                                 nn.ReLU(), nn.Dropout(spec.dropout))
        self.blocks = nn.Sequential(*[_Block(spec.hidden, spec.dropout)
                                      for _ in range(spec.blocks)])
        self.out = nn.Linear(spec.hidden, d)
        nn.init.zeros_(self.out.weight)  # starts as the identity: never worse than no refiner
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.blocks(self.inp(x)))


# --- scale ------------------------------------------------------------------------------------------

def unit_scale(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, J, 3) root-relative poses -> (poses / s, s) with s (N,) the RMS joint distance from
    the root (1 where it is 0 or not finite, so that such rows pass through)."""
    s = np.sqrt(np.mean(np.sum(poses ** 2, axis=-1), axis=-1))
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return poses / s[:, None, None], s


def scale_to(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """``pred`` (N, J, 3) times the least-squares scale that best matches ``label`` (N, J, 3),
    over all joints (the N-MPJPE alignment)."""
    num = np.sum(pred * label, axis=(1, 2))
    den = np.maximum(np.sum(pred * pred, axis=(1, 2)), 1e-12)
    return pred * (num / den)[:, None, None]


# --- the noise model --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoseNoise:
    """A Gaussian model of a 3D network's errors at unit pose scale.

    Attributes:
        mean: (J*3,) mean residual (prediction minus label); chol: (J*3, J*3) lower Cholesky
            factor of their covariance; count: poses it was estimated from; rms: RMS joint
            error of those residuals (unit scale).
    """

    mean: np.ndarray
    chol: np.ndarray
    count: int
    rms: float

    @classmethod
    def estimate(cls, pred: np.ndarray, label: np.ndarray, ridge: float = 1e-6) -> "PoseNoise":
        """Fit to predictions (N, J, 3) and their labels (N, J, 3), both root-relative; rows
        with a non-finite label or prediction are left out. Each prediction is scaled to its
        label (as N-MPJPE does) and both are divided by the label's RMS joint distance. The
        covariance is shrunk towards its diagonal by the share d / n (d = J*3 dimensions, n
        poses), so that a few complete poses still give a usable model."""
        ok = np.isfinite(pred).all(axis=(1, 2)) & np.isfinite(label).all(axis=(1, 2))
        if ok.sum() < 2:
            raise ValueError(f"noise model: {int(ok.sum())} complete (prediction, label) pairs; "
                             "at least 2 needed")
        lab, s = unit_scale(label[ok])
        res = (scale_to(pred[ok], label[ok]) / s[:, None, None] - lab).reshape(int(ok.sum()), -1)
        cov = np.cov(res, rowvar=False)
        # few complete poses for J*3 dimensions: shrink towards the diagonal (share d / n)
        share = min(1.0, res.shape[1] / len(res))
        cov = (1 - share) * cov + share * np.diag(np.diag(cov)) + ridge * np.eye(res.shape[1])
        rms = float(np.sqrt(np.mean(np.sum(res.reshape(len(res), -1, 3) ** 2, axis=-1))))
        return cls(res.mean(0), np.linalg.cholesky(cov), int(ok.sum()), rms)

    def sample(self, n: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """(n, J, 3) residuals drawn from the model (deviations times ``scale``)."""
        z = rng.standard_normal((n, len(self.mean)))
        return (self.mean + scale * z @ self.chol.T).reshape(n, -1, 3)

    def state(self) -> dict[str, Any]:
        return {"mean": torch.as_tensor(self.mean), "chol": torch.as_tensor(self.chol),
                "count": self.count, "rms": self.rms}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "PoseNoise":
        return cls(s["mean"].numpy(), s["chol"].numpy(), int(s["count"]), float(s["rms"]))


def noisy_pairs(clean: np.ndarray, noise: PoseNoise, rng: np.random.Generator, root: int,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs from clean unit-scale poses (N, J, 3): (input, target), both divided by
    the noisy pose's RMS radius, so that the target is what the refiner must return for that
    input at the input's scale (the root stays at the origin)."""
    noisy = clean + noise.sample(len(clean), rng, scale)
    noisy = noisy - noisy[:, root:root + 1]
    x, s = unit_scale(noisy)
    return x, clean / s[:, None, None]


# --- the refiner ------------------------------------------------------------------------------------

class Refiner:
    """A trained refinement unit: ``refiner(poses)`` -> refined poses (N, J, 3), same units;
    rows with a non-finite value are returned unchanged."""

    def __init__(self, net: RefinerNet, spec: RefinerSpec, noise: PoseNoise | None = None
                 ) -> None:
        self.net, self.spec, self.noise = net.eval(), spec, noise

    @torch.no_grad()
    def __call__(self, poses: np.ndarray) -> np.ndarray:
        poses = np.asarray(poses, np.float64)
        out = poses.copy()
        ok = np.isfinite(poses).all(axis=(1, 2))
        if not ok.any():
            return out
        rel = poses[ok] - poses[ok][:, self.spec.root:self.spec.root + 1]
        x, s = unit_scale(rel)
        y = self.net(torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32)).double()
        y = y.numpy().reshape(x.shape)
        y = y - y[:, self.spec.root:self.spec.root + 1]
        out[ok] = y * s[:, None, None] + poses[ok][:, self.spec.root:self.spec.root + 1]
        return out


def mirror(poses: np.ndarray, flip_permutation: np.ndarray) -> np.ndarray:
    """Mirror images (N, J, 3) of camera-frame poses: x negated, left and right swapped."""
    m = poses[:, flip_permutation].copy()
    m[..., 0] *= -1
    return m


def train_refiner(clean: np.ndarray, noise: PoseNoise, spec: RefinerSpec,
                  flip_permutation: np.ndarray | None = None, progress: bool = False
                  ) -> tuple[Refiner, dict[str, Any]]:
    """Train a refinement unit on clean root-relative poses (N, J, 3; any unit) corrupted by
    ``noise``; a tenth of the poses (at least one) is held out and measured before and after
    (``heldout_noisy_rms``, ``heldout_refined_rms``: RMS joint error at unit scale, the same
    noise draws for both). Returns the refiner and those figures with the final loss."""
    from tqdm import tqdm

    clean = clean[np.isfinite(clean).all(axis=(1, 2))]
    if len(clean) < 10:
        raise ValueError(f"refiner: {len(clean)} complete clean poses; at least 10 needed")
    rng = np.random.default_rng(spec.seed)
    torch.manual_seed(spec.seed)
    unit, _ = unit_scale(clean - clean[:, spec.root:spec.root + 1])
    order = rng.permutation(len(unit))
    n_held = max(1, len(unit) // 10)
    held, train = unit[order[:n_held]], unit[order[n_held:]]
    if spec.flip and flip_permutation is not None:
        train = np.concatenate([train, mirror(train, flip_permutation)])
    net = RefinerNet(spec)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, 2 * spec.steps // 3)], 0.1)
    bar = tqdm(range(spec.steps), unit="step", disable=not progress, desc="refiner")
    loss = torch.zeros(())
    net.train()
    for _ in bar:
        batch = train[rng.integers(0, len(train), min(spec.batch_size, len(train)))]
        x, y = noisy_pairs(batch, noise, rng, spec.root, spec.noise_scale)
        pred = net(torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32))
        loss = (pred - torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    refiner = Refiner(net, spec, noise)
    x, y = noisy_pairs(held, noise, np.random.default_rng(spec.seed + 1), spec.root)
    before = _rms(x, y)
    after = _rms(refiner(x), y)
    return refiner, {"train_loss": float(loss.detach()), "heldout_poses": int(n_held),
                     "train_poses": int(len(train)), "heldout_noisy_rms": before,
                     "heldout_refined_rms": after}


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS joint distance between two pose arrays (N, J, 3)."""
    return float(math.sqrt(np.mean(np.sum((a - b) ** 2, axis=-1))))


# --- checkpoints ------------------------------------------------------------------------------------

def save_refiner(path: str | Path, refiner: Refiner, metrics: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> None:
    """Write a refiner checkpoint (train.checkpoint's format, ``config.kind == "refiner"``)."""
    if refiner.noise is None:
        raise ValueError("a refiner checkpoint records its noise model; this refiner has none")
    state = {"model": refiner.net.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
             "epoch": 0, "step": refiner.spec.steps, "rng": {},
             "config": {"kind": REFINER_KIND, **asdict(refiner.spec)}, "metrics": dict(metrics),
             "noise": refiner.noise.state(), **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)


def load_refiner(path: str | Path) -> Refiner:
    """A refiner from its checkpoint; a CheckpointError naming the file for anything else (a
    3D network's checkpoint included)."""
    state = load_checkpoint(path)
    cfg = dict(state["config"])
    if cfg.pop("kind", None) != REFINER_KIND:
        raise CheckpointError(f"{path} is not a refiner checkpoint (config.kind != "
                              f"{REFINER_KIND!r}); train one with `python -m train refiner`")
    try:
        spec = RefinerSpec(**cfg)
        net = RefinerNet(spec)
        net.load_state_dict(state["model"])
        noise = PoseNoise.from_state(state["noise"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: refiner checkpoint does not match this code "
                              f"({type(e).__name__}: {e})") from None
    return Refiner(net, spec, noise)

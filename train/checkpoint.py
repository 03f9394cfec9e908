"""Checkpoints: the file format, its atomic writer, its checked reader, and a network from one.

A checkpoint is a plain dict of tensors and Python values (loads with
``torch.load(weights_only=True)``) holding at least :data:`CHECKPOINT_KEYS`::

    model, optimizer, scheduler, scaler   state dicts
    epoch, step                           ints
    rng                                   RNG states (train.trainer.rng_state)
    config                                the resolved TrainConfig as a plain dict
    metrics                               the last metrics record at save time
    datasets                              (written since issue 18) the manifests' ``dataset``
                                          names the network was trained on; absent in older
                                          checkpoints (:func:`trained_datasets` gives None)
    raw_model                             only with ``optim.ema_decay`` > 0 (:data:`RAW_MODEL_KEY`)

``model`` is always the network to use. With weight averaging on (``optim.ema_decay`` > 0,
train.ema) it holds the averaged weights, so every reader (inference, stage 1's net detector,
``make eval``, export, fine-tuning's ``init_from``) uses them unchanged, and ``raw_model`` the
weights the optimiser trains, which only the trainer reads, to resume exactly. Without
averaging a checkpoint has no ``raw_model`` key; a slimmed one (:func:`slim_checkpoint`) never.

It is written to a temporary file in the same folder and renamed. Inference (:mod:`train.infer`,
stage 1's net detector, ``make eval``) needs only this module, never the trainer.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from torch import nn

from train.config import TrainConfig, config_from_dict
from train.lifter import build_lifter
from train.model import PoseNet, build_model

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config",
                   "metrics")
"""Keys every training checkpoint holds (more may be present, e.g. ``best``, ``losses``)."""

RAW_MODEL_KEY = "raw_model"
"""With ``optim.ema_decay`` > 0: the training (not averaged) weights, for exact resume only."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of ours; the message names the file."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a :class:`CheckpointError` naming the file
    if it is missing, damaged (zip CRC), unreadable or lacks :data:`CHECKPOINT_KEYS`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    damaged = zip_crc_error(path)
    if damaged:  # torch.load does not check the CRCs: damaged bytes would load as weights
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt (CRC mismatch in "
                              f"{damaged}); delete it to start over")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); delete it to start over") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks keys {missing}: not a training checkpoint")
    return state


def zip_crc_error(path: Path) -> str | None:
    """The first member of a zip-format checkpoint whose bytes fail their CRC, else None (also
    for files that are not zip archives: torch.load reports those)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return None
    except Exception as e:  # noqa: BLE001 - zlib errors and the like: damaged too
        return f"? ({type(e).__name__})"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; any other name as given ("cpu", "cuda:1"),
    a RuntimeError when it asks for CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


def trained_datasets(state: dict[str, Any]) -> tuple[str, ...] | None:
    """The ``dataset`` names a checkpoint's network was trained on, or None when the checkpoint
    does not say (written before the trainer recorded them)."""
    names = state.get("datasets")
    if not names:
        return None
    return tuple(str(n) for n in ([names] if isinstance(names, str) else names))


def load_model(checkpoint_path: str | Path, device: str = "cpu"
               ) -> tuple[PoseNet, dict[str, Any]]:
    """A network in eval mode from a training checkpoint, and its configuration as a plain dict
    (sections model, data, augment, optim, val; ``config["model"]["input_size"]`` is the crop
    side S the network was trained on; it maps (N, 3, S, S) images to (N, J, 3) coordinates)."""
    state = load_checkpoint(checkpoint_path, map_location="cpu")
    return model_from_state(state, str(checkpoint_path), device)


NETWORK_BUILDERS = {
    "volumetric": lambda cfg, device: build_model(cfg.model, device),
    "lifter": lambda cfg, device: build_lifter(cfg.lifter, cfg.model.num_joints, device),
}
"""``config.student`` -> the network of a configuration (train.config.STUDENTS)."""


def build_network(cfg: TrainConfig, device: str | torch.device = "cpu") -> nn.Module:
    """The untrained network of a configuration's student on ``device``."""
    return NETWORK_BUILDERS[cfg.student](cfg, device)


def model_from_state(state: dict[str, Any], where: str, device: str = "cpu"
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model` on a checkpoint already read (``where`` names it in errors)."""
    cfg = config_from_dict(state["config"], where)
    model = build_network(cfg, resolve_device(device))
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg.to_dict()


class NotA3DNetwork(CheckpointError):
    """A checkpoint holds a network of another kind (e.g. the 2D network given as the 3D one)."""


def network_settings(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """What inference and evaluation need from a 3D network's plain-dict configuration:
    ``input_size`` (S), ``depth_range_mm``, ``box_margin`` and ``depth_bins``; NotA3DNetwork
    naming the file for a 2D network (``model.depth_bins`` = 1)."""
    model, data = cfg.get("model") or {}, cfg.get("data") or {}
    if cfg.get("student") == "lifter":
        raise NotA3DNetwork(f"{where} is a keypoint lifter (student: lifter), which reads 2D "
                            "joints, not images: use it with `predict --student lifter` or "
                            "`eval lifter`")
    if model.get("input_size") is None:
        raise CheckpointError(f"{where}: its configuration has no model.input_size")
    bins = int(model.get("depth_bins", 2))
    if bins <= 1:
        raise NotA3DNetwork(f"{where} is a 2D network (model.depth_bins = 1: stage 1's detector), "
                            "not the 3D network: give a checkpoint of `make train` "
                            "(e.g. outputs/runs/pose3d_pseudo/best.pt)")
    return {"input_size": int(model["input_size"]),
            "depth_range_mm": float(data.get("depth_range_mm") or 2000.0),
            "box_margin": float(data.get("box_margin") if data.get("box_margin") is not None
                                else 0.15),
            "depth_bins": bins}


SLIM_KEEP = ("model", "epoch", "step", "config", "metrics", "best", "datasets", "joint_set",
             "labels", "init_from")
"""What a slimmed checkpoint keeps (:func:`slim_checkpoint`): the network and what it records
(not :data:`RAW_MODEL_KEY`: the averaged weights under ``model`` are the network)."""


def slim_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """A copy of training checkpoint ``src`` for inference only (the shipped lifter): the
    network's weights and records (:data:`SLIM_KEEP`), empty optimiser, scheduler, scaler and
    RNG states (it loads everywhere a checkpoint does, but cannot be resumed), and
    ``slimmed_from``: the source's path."""
    state = load_checkpoint(src)
    slim = {k: state[k] for k in SLIM_KEEP if k in state}
    slim.update(optimizer={}, scheduler={}, scaler={}, rng={}, slimmed_from=str(src))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, slim)
    return Path(dst)

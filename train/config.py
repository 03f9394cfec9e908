"""Training configurations: one YAML file per experiment -> a frozen dataclass, defaults in code.

A file names its settings (``demo_r18w32_96px_d24_pseudo.yaml``); every key is checked: an
unknown key or a value of the wrong type is refused with the file and the dotted key. The
command line overrides only run-time knobs (device, workers, paths, epochs for quick runs); the
resolved configuration is written into the run folder and into every checkpoint.

Sections (see each dataclass for the meaning of its keys)::

    name: demo_r18w32_96px_d24_pseudo
    seed: 0
    student: volumetric|lifter   (the network: train.model's, or the keypoint lifter)
    model:   {depth, width, deconv_channels, deconv_layers, depth_bins, num_joints, input_size}
    data:    {source: shards|manifest, shards, manifest, data_root, split, target_column, box_margin,
              frame_step, depth_range_mm, batch_size, workers}
    augment: {scale, rotation_deg, rotation_prob, flip_prob, color, occluder_prob, shift}
    optim:   {optimizer: adam|adamw|sgd, lr, weight_decay, momentum, epochs, milestones, gamma,
              loss_beta, heatmap_nll_weight, warmup_steps, grad_clip, ema_decay, init_from,
              init_2d_from}
    lifter:  {window, hidden, blocks, dropout, conf_threshold, joint_dropout, flip_prob,
              virtual_prob, virtual_yaw_deg, noise_px, input_noise_px, ignore_joints}
              (student: lifter; train.lifter.LifterSpec)
    val:     {split, frame_holdout, max_samples, train_samples, every_epochs, batch_size,
              pck_threshold_px}
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from train.data import AugmentSpec
from train.lifter import TEMPORAL_WINDOWS, LifterSpec
from train.model import RESNET_SPECS, NetSpec


class ConfigError(ValueError):
    """A configuration is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class DataSpec:
    """Where the training labels come from.

    Attributes:
        source: ``shards`` (stage-1 pseudo-labels) or ``manifest`` (ground truth: the 2D
            network and the fully supervised upper bound).
        shards: stage-1 run folder (holding ``shards/``); ``--shards`` overrides.
        manifest: dataset manifest: its splits name the training and validation subjects (and
            the manifest source reads its ground truth); ``--manifest`` overrides.
        data_root: overrides the manifest's ``root`` when not empty (``--data-root``).
        split: manifest split of the training subjects (shards: those subjects' rows).
        target_column: shard column giving z: joints_3d (pseudo-labels), or gt_joints_3d
            (the ground truth stage 1 copied beside them: a supervised run, validated and
            named ``val_gt_*`` accordingly).
        box_margin: manifest source: square box = tight box grown by this fraction per side.
        frame_step: manifest source: use every n-th frame.
        depth_range_mm: z normalisation at augmentation scale 1 (2000 mm in the paper).
        batch_size: training batch size.
        workers: DataLoader worker processes (``--workers`` overrides).
    """

    source: str = "shards"
    shards: str = "outputs/pseudolabels/synthetic"
    manifest: str = "data_manifests/synthetic.yaml"
    data_root: str = ""
    split: str = "train"
    target_column: str = "joints_3d"
    box_margin: float = 0.15
    frame_step: int = 1
    depth_range_mm: float = 2000.0
    batch_size: int = 32
    workers: int = 2


@dataclass(frozen=True)
class OptimSpec:
    """Optimiser and schedule (epochs count passes over the training set).

    Attributes:
        optimizer: adam, adamw or sgd.
        lr, weight_decay, momentum (sgd only).
        epochs: training length.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        loss_beta: smooth-L1 transition, normalised units.
        heatmap_nll_weight: weight of the marginals' negative log-likelihood of the labels
            (train.targets.heatmap_nll) added to the smooth-L1 loss; 0 = the paper's loss.
        warmup_steps: linear learning-rate warm-up over the first steps (0 = none).
        grad_clip: clip the gradient norm to this value (0 = off).
        ema_decay: in [0, 1); 0 = off. Otherwise the trainer keeps an exponential moving average
            of the weights with this decay (train.ema: updated after every optimiser step, the
            decay warmed up over the first steps); validation, best.pt and the curves measure
            the averaged weights, checkpoints hold them under ``model`` and the training
            weights under ``raw_model`` (for resume). The decay at step t is
            min(ema_decay, t / (t + 9)): in a run shorter than ~9 / (1 - ema_decay) steps the
            warm-up, not ema_decay, sets the window (0.993 at step 1,250).
        init_from: start from this checkpoint's network weights (fine-tuning: e.g. the
            synthetic-trained 3D network on a real recording's pseudo-labels); the optimiser,
            schedule and step start fresh. Its network settings must match ``model``. "" = the
            usual initialisation (``--init-from`` overrides).
        init_2d_from: a 3D network starts from this 2D network's checkpoint (``depth_bins`` 1,
            the same backbone and deconvolutions; ``train.trainer.init_from_2d``): every layer
            copied, its last one repeated over the depth bins, so the network begins with the 2D
            network's x, y and a flat depth (3D pose networks are commonly started from a
            2D-trained backbone). "" = none (``--init-2d-from`` overrides).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    epochs: int = 140
    milestones: tuple[int, ...] = (90, 120)
    gamma: float = 0.1
    loss_beta: float = 0.02
    heatmap_nll_weight: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0
    ema_decay: float = 0.0
    init_from: str = ""
    init_2d_from: str = ""


@dataclass(frozen=True)
class ValSpec:
    """Validation after every ``every_epochs`` epochs; its selection metric picks best.pt.

    Validation reads the labels of the training labels' kind for the subjects of ``split``:
    the stage-1 pseudo-labels for a shards run (no ground truth), the ground truth for a
    manifest run (train/trainer.py, ``load_labels``).

    Attributes:
        split: manifest split of the validation subjects, disjoint from ``data.split``; never
            the test split (refused here by name, and by subjects against the manifest's
            ``test`` split when the run starts). Unused when ``frame_holdout`` > 0.
        frame_holdout: share in [0, 1) of each training sequence's frames, the last ones, that
            validate instead of a split of other subjects (a recording of one subject has no
            other): those frames, in every camera, are never trained on. 0 = use ``split``.
        max_samples: evenly spaced subsample of the split (0 = all), to keep CPU runs cheap.
        train_samples: evenly spaced training samples also measured at every validation,
            unaugmented, against their training labels (``train_{source}_*`` in metrics.jsonl:
            how well the network fits what it learns from, beside the held-out error); 0 = off.
        every_epochs: validation period (the last epoch is always validated).
        batch_size: inference batch size.
        pck_threshold_px: 2D PCK threshold, original-image pixels.
    """

    split: str = "val"
    frame_holdout: float = 0.0
    max_samples: int = 0
    train_samples: int = 0
    every_epochs: int = 1
    batch_size: int = 64
    pck_threshold_px: float = 5.0


STUDENTS = ("volumetric", "lifter")
"""The networks a run can train on the same labels: ``volumetric`` (train.model, the paper's: an
image crop -> a 64**3 heatmap per joint; ``model`` section) and ``lifter`` (train.lifter: the
labelled camera's 2D joints -> 3D; ``lifter`` section, ``model.num_joints``)."""


@dataclass(frozen=True)
class TrainConfig:
    name: str = "unnamed"
    seed: int = 0
    student: str = "volumetric"
    model: NetSpec = field(default_factory=NetSpec)
    data: DataSpec = field(default_factory=DataSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    val: ValSpec = field(default_factory=ValSpec)
    lifter: LifterSpec = field(default_factory=LifterSpec)

    @property
    def is_3d(self) -> bool:
        return self.student == "lifter" or self.model.depth_bins > 1

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (tuples as lists) that :func:`config_from_dict` reads back."""
        return _plain(asdict(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


_CHOICES = {
    ".student": STUDENTS,
    "lifter.window": TEMPORAL_WINDOWS,
    "data.source": ("shards", "manifest"),
    "data.target_column": ("joints_3d", "gt_joints_3d"),
    "optim.optimizer": ("adam", "adamw", "sgd"),
    "model.depth": tuple(sorted(RESNET_SPECS)),
}


def config_from_dict(raw: Any, where: str = "<dict>") -> TrainConfig:
    """Validate a plain dict (a YAML file's content) into a :class:`TrainConfig`."""
    cfg = _build(TrainConfig, raw, where, "")
    _check_values(cfg, where)
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return config_from_dict(raw if raw is not None else {}, str(path))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def with_overrides(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """``with_overrides(cfg, data={"workers": 0})``: a copy with some keys of some sections
    replaced (the run-time knobs of the command line), validated like a file."""
    d = cfg.to_dict()
    for sec, values in sections.items():
        if sec not in d or not isinstance(d[sec], dict):
            raise ConfigError(f"override: unknown section {sec!r}")
        d[sec].update(values)
    return config_from_dict(d, "<command line>")


def _build(cls: type, raw: Any, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix or '<top>'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{where}: unknown key {key!r}; allowed under "
                          f"{prefix.rstrip('.') or '<top>'}: {sorted(names)}")
    kwargs = {k: _value(hints[k], v, where, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _value(tp: Any, v: Any, where: str, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, where, key + ".")
    origin = typing.get_origin(tp)
    if origin is tuple:
        elem = typing.get_args(tp)[0]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: {key}: expected a list, got {v!r}")
        return tuple(_value(elem, x, where, f"{key}[{i}]") for i, x in enumerate(v))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: {key}: unsupported union type")  # not used in the schema
    ok = {bool: isinstance(v, bool),
          int: isinstance(v, int) and not isinstance(v, bool),
          float: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: isinstance(v, str)}[tp]
    if not ok:
        raise ConfigError(f"{where}: {key}: expected {tp.__name__}, got {v!r} "
                          f"({type(v).__name__})")
    return float(v) if tp is float else v


def _check_values(cfg: TrainConfig, where: str) -> None:
    for key, choices in _CHOICES.items():
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec) if sec else cfg, name)
        if v not in choices:
            raise ConfigError(f"{where}: {key.lstrip('.')}: {v!r} is not one of {list(choices)}")
    checks = [
        ("model.input_size", cfg.model.input_size % 32 == 0 and cfg.model.input_size > 0,
         "a positive multiple of 32"),
        ("model.width", cfg.model.width > 0, "positive"),
        ("model.depth_bins", cfg.model.depth_bins >= 1, ">= 1"),
        ("model.deconv_layers", cfg.model.deconv_layers >= 0, ">= 0"),
        ("data.batch_size", cfg.data.batch_size >= 2, ">= 2 (batch norm)"),
        ("data.workers", cfg.data.workers >= 0, ">= 0"),
        ("data.frame_step", cfg.data.frame_step >= 1, ">= 1"),
        ("data.depth_range_mm", cfg.data.depth_range_mm > 0, "positive"),
        ("optim.lr", cfg.optim.lr > 0, "positive"),
        ("optim.epochs", cfg.optim.epochs >= 1, ">= 1"),
        ("optim.loss_beta", cfg.optim.loss_beta > 0, "positive"),
        ("optim.heatmap_nll_weight", cfg.optim.heatmap_nll_weight >= 0, ">= 0"),
        ("optim.ema_decay", 0 <= cfg.optim.ema_decay < 1, "in [0, 1) (0 = off)"),
        ("augment.scale", 0 <= cfg.augment.scale < 1, "in [0, 1)"),
        ("val.every_epochs", cfg.val.every_epochs >= 1, ">= 1"),
        ("val.max_samples", cfg.val.max_samples >= 0, ">= 0"),
        ("val.train_samples", cfg.val.train_samples >= 0, ">= 0"),
        ("val.frame_holdout", 0 <= cfg.val.frame_holdout < 1, "in [0, 1)"),
        ("lifter.hidden", cfg.lifter.hidden > 0, "positive"),
        ("lifter.blocks", cfg.lifter.blocks >= 0, ">= 0"),
        ("lifter.dropout", 0 <= cfg.lifter.dropout < 1, "in [0, 1)"),
        ("lifter.joint_dropout", 0 <= cfg.lifter.joint_dropout < 1, "in [0, 1)"),
        ("lifter.flip_prob", 0 <= cfg.lifter.flip_prob <= 1, "in [0, 1]"),
        ("lifter.virtual_prob", 0 <= cfg.lifter.virtual_prob <= 1, "in [0, 1]"),
        ("lifter.input_noise_px", cfg.lifter.input_noise_px >= 0, ">= 0"),
    ]
    for key, ok, what in checks:
        if not ok:
            sec, name = key.split(".")
            raise ConfigError(f"{where}: {key}: must be {what}, got "
                              f"{getattr(getattr(cfg, sec), name)!r}")
    if cfg.student == "lifter" and cfg.optim.heatmap_nll_weight > 0:
        raise ConfigError(f"{where}: optim.heatmap_nll_weight: the lifter has no heatmaps; "
                          "set it to 0")
    if cfg.optim.init_2d_from and (cfg.student != "volumetric" or cfg.model.depth_bins < 2
                                   or cfg.optim.init_from):
        raise ConfigError(f"{where}: optim.init_2d_from starts a 3D volumetric network "
                          "(depth_bins > 1) from a 2D one; not with optim.init_from, the lifter "
                          "or a 2D network")
    if list(cfg.optim.milestones) != sorted(cfg.optim.milestones):
        raise ConfigError(f"{where}: optim.milestones: must be increasing")
    _check_val_split(cfg, where)


def _check_val_split(cfg: TrainConfig, where: str) -> None:
    """Model selection never sees the test split nor the training split."""
    if cfg.val.split == "test":
        raise ConfigError(f"{where}: val.split: 'test' is the test split, read only by make "
                          "eval; validate on a split of held-out training-side subjects "
                          "(e.g. val)")
    if cfg.val.split == cfg.data.split and cfg.val.frame_holdout == 0:
        raise ConfigError(f"{where}: val.split: {cfg.val.split!r} is also data.split; the "
                          "validation subjects must not be trained on (or validate on held-out "
                          "frames: val.frame_holdout)")

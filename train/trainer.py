"""The training loop: step, evaluate, log, save; exact resume; one run folder per run.

A run folder (``--out``) holds::

    config.yaml      the resolved configuration (file + command-line overrides)
    metrics.jsonl    one JSON line per evaluation (epoch, step, lr, train loss, throughput,
                     data-loading share, validation metrics, ``selection_metric``)
    last.pt          the latest state (every epoch end, and where a run stops early)
    best.pt          the state with the best ``selection_metric`` (:func:`primary_metric`)
    curves.png       training loss and validation curves

With ``optim.ema_decay`` > 0 an exponential moving average of the weights (:mod:`train.ema`)
is updated after every optimiser step; validation, best.pt and the curves then measure the
averaged weights, which checkpoints hold under ``model`` (the training weights under
``raw_model``, for resume); metrics.jsonl adds ``raw_val_*``, the training weights' validation.

Checkpoints (:mod:`train.checkpoint`) are plain dicts of tensors and Python values
(``torch.load(weights_only=True)``), written to a temporary file and renamed. Validation runs the
one evaluation protocol (:func:`train.evaluation.evaluate_samples`) on the samples it is given. Every random choice is a function of the seed, the
epoch and the step (sample order and augmentation: :mod:`train.data`), and the RNG states are
saved, so a run interrupted and resumed reaches bitwise the same weights on CPU.

Model selection (DESIGN.md §5) never looks at the test subjects: validation reads the manifest's
``val.split``, whose subjects must be disjoint from the training split and from the split named
``test`` (:func:`check_splits`). Its labels are of the training labels' kind
(:func:`load_labels`): a shard-trained (self-supervised) run validates against the validation
subjects' pseudo-labels from the same stage-1 run and reads no ground truth at all (it works
on a manifest without ``ground_truth`` or ``extrinsics``); a manifest-trained run (the 2D
network, the supervised upper bound) against the validation subjects' ground truth, and so does
a shard run whose ``data.target_column`` is ``gt_joints_3d`` (supervised on the ground truth
stage 1 copied into the shards; only the training and validation subjects' rows are read).
Metric names say which: ``val_pseudo_n_mpjpe`` vs ``val_gt_n_mpjpe``.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eval.metrics import ERROR_METRICS
from pipeline.store.crop_shards import crop_blocks
from pipeline.store.manifest import Manifest, load_manifest
from pipeline.store.run_folder import RunFolder
from train.checkpoint import (RAW_MODEL_KEY, CheckpointError, build_network, load_checkpoint,
                              resolve_device, save_checkpoint)
from train.config import TrainConfig, config_from_dict, save_config
from train.data import EpochSampler, make_loader
from train.ema import WeightAverage
from train.lifter import LIFTER_NETWORK_KEYS
from train.samples import TARGET_COLUMNS, Samples, load_manifest_samples, load_shard_samples
from train.students import STUDENTS, validate
from train.targets import heatmap_nll, pose_loss


@dataclass(frozen=True)
class RunOptions:
    """Run-time knobs (not part of the experiment).

    Attributes:
        out: run folder.
        device: "cpu", "cuda", "cuda:1" ... ("auto": CUDA when present).
        resume: continue from ``out/last.pt``.
        max_steps: stop (and save last.pt) after this many optimiser steps in total.
        threads: torch CPU threads (None = leave as is).
        progress: show a tqdm bar.
        allow_inconsistent_labels: train on a stage-1 run whose summary.json flags its
            detections as inconsistent (refused otherwise: :func:`check_label_run`).
    """

    out: Path
    device: str = "auto"
    resume: bool = False
    max_steps: int | None = None
    threads: int | None = None
    progress: bool = True
    allow_inconsistent_labels: bool = False


# --- checkpoints --------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Torch, numpy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --- setup --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1): NCCL on CUDA (one
    GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. Returns the rank info and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                           weight_decay=o.weight_decay)


TEST_SPLIT = "test"
"""The split read only by ``make eval``; never trained or validated on."""


def check_splits(cfg: TrainConfig, manifest: Manifest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training subjects, validation subjects) of a configuration; refuses a split the manifest
    lacks, a validation subject that is trained on, and a test subject in either."""
    def subjects(split: str, key: str) -> tuple[str, ...]:
        if split not in manifest.splits:
            raise ValueError(f"{manifest.path}: {key} {split!r} is not under 'splits' "
                             f"(known: {list(manifest.splits)})")
        return manifest.splits[split]

    train = subjects(cfg.data.split, "data.split")
    # held-out frames of the training subjects validate (checked against the test split too)
    val = train if cfg.val.frame_holdout > 0 else subjects(cfg.val.split, "val.split")
    test = set(manifest.splits.get(TEST_SPLIT, ()))
    for key, split, subj, other in (("val.split", cfg.val.split, val,
                                     set() if cfg.val.frame_holdout > 0 else set(train)),
                                    ("val.split", cfg.val.split, val, test),
                                    ("data.split", cfg.data.split, train, test)):
        shared = sorted(set(subj) & other)
        if shared:
            what = "test" if other is test else f"training split {cfg.data.split!r}"
            raise ValueError(f"{manifest.path}: {key} {split!r} shares subjects {shared} with "
                             f"the {what}: model selection must not see them")
    return train, val


def check_label_run(shards: str | os.PathLike, allow_inconsistent: bool = False) -> None:
    """Refuse (ValueError naming the run folder and the flag) a stage-1 run whose summary.json
    says its 2D detections disagree across views (``inconsistent``: stage 1 exited 3), unless
    ``allow_inconsistent``. ``shards``: the run folder or its ``shards/`` folder."""
    root = Path(shards)
    run = RunFolder(root.parent if root.name == "shards" else root)
    reasons = run.inconsistency()
    if reasons and not allow_inconsistent:
        raise ValueError(
            f"{run.summary_file}: 'inconsistent': true (stage 1 exited 3: {'; '.join(reasons)}). "
            f"The 2D detections of {run.path} disagree across views, so its labels are suspect: "
            "check the detector (make detector-check), or pass --allow-inconsistent-labels to "
            "train on them anyway")


def load_labels(cfg: TrainConfig, manifest: Manifest) -> tuple[Samples, Samples]:
    """(training samples, validation samples) of a configuration (module docstring): shards ->
    the training and the validation subjects' rows of the ``target_column`` (``joints_3d``:
    pseudo-labels; ``gt_joints_3d``: the ground truth stage 1 copied beside them, a supervised
    run validated against it); manifest -> their ground truth. With ``val.frame_holdout``
    the validation samples are the last frames of the training subjects' sequences
    (:meth:`Samples.holdout_starts`), and those frames are dropped from training."""
    train_subjects, val_subjects = check_splits(cfg, manifest)
    holdout = cfg.val.frame_holdout
    if cfg.data.source == "manifest":
        train = load_manifest_samples(manifest, cfg.data.split, cfg.data.box_margin,
                                      cfg.data.frame_step)
        val = load_manifest_samples(manifest, cfg.data.split if holdout else cfg.val.split,
                                    cfg.data.box_margin)
    else:
        train = load_shard_samples(cfg.data.shards, manifest.joint_set, cfg.data.target_column,
                                   manifest, subjects=train_subjects)
        val = load_shard_samples(cfg.data.shards, manifest.joint_set, cfg.data.target_column,
                                 manifest, subjects=val_subjects)
    if holdout:  # cut on the validation rows (every frame; training may skip some)
        starts = val.holdout_starts(holdout)
        train, val = train.subset(~train.from_frames(starts)), val.subset(val.from_frames(starts))
    return train, val.evenly_spaced(cfg.val.max_samples)


def label_provenance(cfg: TrainConfig, manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint records of its labels beside ``datasets``: ``joint_set`` (name and joint
    names) and, for a shard run, ``labels`` (the stage-1 run's folder, detector and geometry
    from its config.json; the 2D the lifter learned to read)."""
    js = manifest.joint_set
    out: dict[str, Any] = {"joint_set": {"name": js.name, "names": list(js.names)}}
    if cfg.data.source == "shards":
        root = Path(cfg.data.shards)
        run = RunFolder(root.parent if root.name == "shards" else root).config_or_empty()
        out["labels"] = {"run": str(cfg.data.shards), "detector": str(run.get("detector", "")),
                         "geometry": str(run.get("geometry", ""))}
    return out


# --- one step, one evaluation --------------------------------------------------------------------

def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, cfg: TrainConfig, device: torch.device
               ) -> torch.Tensor:
    """One optimiser step; returns the loss (a detached tensor, no host sync)."""
    images = _to_device(batch["image"], device)
    target = batch["target"].to(device, non_blocking=True)
    weight = batch["weight"].to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, dtype=torch.float16,
                        enabled=device.type == "cuda"):
        out = model(images)
    loss = training_loss(out, target, weight, cfg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.optim.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def training_loss(out: dict[str, torch.Tensor], target: torch.Tensor, weight: torch.Tensor,
                  cfg: TrainConfig) -> torch.Tensor:
    """Smooth-L1 on the coordinates, plus the heatmap NLL when its weight is not 0."""
    loss = pose_loss(out["coords"], target, weight, cfg.optim.loss_beta)
    if cfg.optim.heatmap_nll_weight > 0:
        loss = loss + cfg.optim.heatmap_nll_weight * heatmap_nll(
            out["heatmap_xy"], out["heatmap_z"], target, weight)
    return loss


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and images.dim() == 4:  # image crops (the lifter's are (N, C, T))
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def label_source(cfg: TrainConfig) -> str:
    """What training and validation measure against: "pseudo" (shard runs on ``joints_3d``) or
    "gt" (manifest runs, and shard runs on ``gt_joints_3d``: supervised, not self-supervised)."""
    return TARGET_COLUMNS[cfg.data.target_column] if cfg.data.source == "shards" else "gt"


def primary_metric(cfg: TrainConfig) -> str:
    """The validation metric that picks best.pt (lower is better), as named in metrics.jsonl:
    ``val_pseudo_n_mpjpe`` / ``val_gt_n_mpjpe`` (3D), ``val_*_px_error`` (2D)."""
    return f"val_{label_source(cfg)}_{'n_mpjpe' if cfg.is_3d else 'px_error'}"


def init_weights(model: nn.Module, cfg: TrainConfig, path: Path) -> dict[str, Any]:
    """Load the network weights of checkpoint ``path`` into ``model`` (``optim.init_from``:
    fine-tuning; optimiser and schedule are not taken). CheckpointError naming the file and
    the keys when its ``model`` settings differ from ``cfg.model``. Returns what the run records
    of its start: path, the source's configuration name, step, datasets and best metric."""
    state = load_checkpoint(path)
    saved = config_from_dict(state["config"], str(path))
    keys = [("model", k) for k in cfg.to_dict()["model"]]
    if cfg.student == "lifter":  # its network's shape; the other keys are training knobs
        keys = [("model", "num_joints")] + [("lifter", k) for k in LIFTER_NETWORK_KEYS]
    diffs = [] if saved.student == cfg.student else ["student"]
    diffs += sorted(f"{sec}.{k}" for sec, k in keys
                    if _plain_value(getattr(getattr(saved, sec), k))
                    != _plain_value(getattr(getattr(cfg, sec), k)))
    if diffs:
        raise CheckpointError(f"optim.init_from {path}: its network differs from this "
                              f"configuration's in {diffs}; it cannot start this run")
    model.load_state_dict(state["model"])
    return _start_record(path, state)


def _start_record(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What a run records of the checkpoint it started from (``Trainer.init_from``)."""
    return {"path": str(path), "name": state["config"].get("name", ""),
            "step": int(state["step"]), "datasets": list(state.get("datasets") or []),
            "best": state.get("best")}


def init_from_2d(model: nn.Module, cfg: TrainConfig, path: Path) -> dict[str, Any]:
    """Start 3D network ``model`` from the 2D network of checkpoint ``path`` (``depth_bins``
    1, otherwise the same ``model`` settings; ``optim.init_2d_from``). Every layer is copied;
    the last one's J 2D channels are repeated over the D depth bins, so the volume's softmax
    has the 2D network's x, y marginals and a flat depth: the 3D training starts from where the
    2D one ended and learns depth. CheckpointError naming the file and the keys otherwise.
    Returns what the run records of its start."""
    state = load_checkpoint(path)
    saved = config_from_dict(state["config"], str(path))
    diffs = sorted(f"model.{k}" for k in cfg.to_dict()["model"] if k != "depth_bins"
                   and _plain_value(getattr(saved.model, k)) != _plain_value(getattr(cfg.model, k)))
    if saved.student != "volumetric" or saved.model.depth_bins != 1:
        diffs.insert(0, "not a 2D network (model.depth_bins 1)")
    if diffs:
        raise CheckpointError(f"optim.init_2d_from {path}: cannot start this 3D network: "
                              f"{diffs}")
    weights = dict(state["model"])
    for name in ("final.weight", "final.bias"):  # (J, ...) -> (J * D, ...), joint-major
        weights[name] = weights[name].repeat_interleave(cfg.model.depth_bins, dim=0)
    model.load_state_dict(weights)
    return {**_start_record(path, state), "from_2d": True}


def _plain_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# --- the run --------------------------------------------------------------------------------------

class Trainer:
    """Holds a run's state; :meth:`fit` trains to the configured number of epochs."""

    def __init__(self, cfg: TrainConfig, opts: RunOptions) -> None:
        self.opts = opts
        self.out = Path(opts.out)
        self.dist, self.device = init_distributed(resolve_device(opts.device))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels
        if opts.threads:
            torch.set_num_threads(opts.threads)
        resume_state = None
        if opts.resume:
            resume_state = load_checkpoint(self.out / "last.pt")
            cfg = _resumed_config(resume_state, cfg, self.out / "last.pt")
        self.cfg = cfg
        _seed_everything(cfg.seed)
        self._build_data()
        self.model: nn.Module = build_network(cfg, self.device)
        self.init_from: dict[str, Any] = {}
        if cfg.optim.init_from and resume_state is None:  # a resumed run has its own weights
            self.init_from = init_weights(self.model, cfg, Path(cfg.optim.init_from))
        elif cfg.optim.init_2d_from and resume_state is None:
            self.init_from = init_from_2d(self.model, cfg, Path(cfg.optim.init_2d_from))
        self.net: nn.Module = self.model  # what the training step runs (DDP-wrapped in a job)
        if self.dist.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # optim.ema_decay: the averaged weights (train.ema) are the ones measured and saved
        self.ema = (WeightAverage(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0
                    else None)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, list(cfg.optim.milestones), cfg.optim.gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        self.step, self.epoch = 0, 0
        self.losses = LossLog(self.device, every=max(1, self.steps_per_epoch // 25))
        self.best: float | None = None
        self.history: list[dict[str, Any]] = []
        if resume_state is not None:
            self._restore(resume_state)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if resume_state is None:
                _clear_previous_run(self.out)
            save_config(self.cfg, self.out / "config.yaml")

    def _build_data(self) -> None:
        """Samples of training and validation, the training dataset, its resumable sampler and
        loader (validation reads its frames through train.evaluation)."""
        cfg = self.cfg
        if cfg.data.source == "shards":
            check_label_run(cfg.data.shards, self.opts.allow_inconsistent_labels)
        manifest = load_manifest(cfg.data.manifest, root=cfg.data.data_root or None)
        self.joint_set = manifest.joint_set
        self.datasets = [manifest.dataset]  # recorded in every checkpoint (stage 1 checks it)
        self.provenance = label_provenance(cfg, manifest)
        if self.joint_set.num_joints != cfg.model.num_joints:
            raise ValueError(f"{cfg.data.manifest}: joint set {self.joint_set.name} has "
                             f"{self.joint_set.num_joints} joints, model.num_joints is "
                             f"{cfg.model.num_joints}")
        train_labels, val_labels = load_labels(cfg, manifest)
        self.train_set = STUDENTS[cfg.student].dataset(cfg, train_labels, self.joint_set)
        self.val_samples = val_labels
        # a fixed, unaugmented probe of the training labels (under- vs over-fitting per epoch)
        self.train_probe = (train_labels.evenly_spaced(cfg.val.train_samples)
                            if cfg.val.train_samples > 0 else None)
        # Samples of crop shards are visited row group by row group (sequential reads).
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size,
                                    blocks=crop_blocks(train_labels.image_paths)
                                    if STUDENTS[cfg.student].reads_images else None)
        self.steps_per_epoch = len(self.sampler.order()) // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training samples: fewer than one batch of "
                             f"{cfg.data.batch_size} per process")
        self.loader = make_loader(self.train_set, self.sampler, cfg.data.batch_size,
                                  cfg.data.workers, self.device, drop_last=True)

    # -- state ------------------------------------------------------------------------------------
    @property
    def measured(self) -> nn.Module:
        """The network validation measures and checkpoints hold under ``model``: the averaged
        weights with ``optim.ema_decay`` > 0, else the trained network itself."""
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        raw = {RAW_MODEL_KEY: self.model.state_dict()} if self.ema is not None else {}
        return {"model": self.measured.state_dict(), **raw,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "rng": rng_state(),
                "config": self.cfg.to_dict(), "metrics": self.history[-1] if self.history else {},
                "best": self.best, "losses": self.losses.state(), "datasets": self.datasets,
                "init_from": self.init_from, **self.provenance}

    def _restore(self, s: dict[str, Any]) -> None:
        if self.ema is not None:  # the config matched, so the run that wrote it averaged too
            self.model.load_state_dict(s[RAW_MODEL_KEY])
            self.ema.load_state_dict(s["model"])
        else:
            self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if s["scaler"] and self.scaler.is_enabled():  # empty when saved on CPU (no AMP)
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.step, self.best = int(s["epoch"]), int(s["step"]), s.get("best")
        self.init_from = s.get("init_from") or {}
        if "losses" in s:
            self.losses.load_state(s["losses"])
        set_rng_state(s["rng"])
        metrics = self.out / "metrics.jsonl"
        if metrics.exists():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            # A kill between an epoch's metrics line and its checkpoint leaves a line this state
            # has not reached: drop it (the resumed run writes it again).
            self.history = [r for r in lines if r.get("step", 0) <= self.step]
            if len(self.history) < len(lines) and self.dist.is_main:
                tmp = metrics.with_name(f".{metrics.name}.tmp-{os.getpid()}")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
                os.replace(tmp, metrics)

    # -- loop -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``optim.epochs`` (or ``max_steps``); returns a summary with the paths."""
        from tqdm import tqdm

        cfg, spe = self.cfg, self.steps_per_epoch
        total = cfg.optim.epochs * spe
        stop_at = min(total, self.opts.max_steps) if self.opts.max_steps else total
        bar = tqdm(total=stop_at, initial=min(self.step, stop_at), unit="step",
                   disable=not (self.opts.progress and self.dist.is_main), dynamic_ncols=True)
        stats = _Throughput()
        try:
            while self.step < stop_at:
                self.epoch = self.step // spe
                self.sampler.set_epoch(self.epoch, (self.step % spe) * cfg.data.batch_size)
                self.net.train()
                stats.start()
                for batch in self.loader:
                    stats.loaded()
                    self._warmup_lr()
                    loss = train_step(self.net, batch, self.optimizer, self.scaler, cfg,
                                      self.device)
                    self.step += 1
                    if self.ema is not None:
                        self.ema.update(self.step)
                    stats.stepped(len(batch["target"]))
                    bar.update(1)
                    if self.losses.add(loss, self.step):  # a window closed: show it
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{self.losses.last:.4f}",
                                        img_s=f"{stats.samples_per_s:.1f}",
                                        data=f"{stats.data_share:.0%}")
                    if self.step >= stop_at:
                        break
                if self.step % spe == 0:
                    self._end_epoch(stats)
                    stats = _Throughput()
        except KeyboardInterrupt:
            bar.close()
            if self.dist.is_main:
                save_checkpoint(self.out / "last.pt", self.state())
                print(f"interrupted at step {self.step}: state saved to {self.out / 'last.pt'}; "
                      "continue with --resume")
            raise
        bar.close()
        if self.step % spe != 0 and self.dist.is_main:  # stopped inside an epoch: exact state
            save_checkpoint(self.out / "last.pt", self.state())
        _barrier(self.dist)
        return self.summary()

    def _warmup_lr(self) -> None:
        w = self.cfg.optim.warmup_steps
        if w and self.step < w:
            for g, base in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                g["lr"] = base * (self.step + 1) / w
        elif w and self.step == w:
            for g, base in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                g["lr"] = base

    def _end_epoch(self, stats: "_Throughput") -> None:
        cfg = self.cfg
        epoch_done = self.step // self.steps_per_epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch_done, "step": self.step, "lr": lr,
            "samples_per_s": round(stats.samples_per_s, 2),
            "data_time_share": round(stats.data_share, 4), "peak_rss_mib": _peak_rss_mib(),
            "time": time.time()}
        record.update(self.losses.end_epoch())
        self.epoch = epoch_done
        if not self.dist.is_main:  # rank 0 evaluates and writes; the others wait
            _barrier(self.dist)
            return
        if epoch_done % cfg.val.every_epochs == 0 or epoch_done == cfg.optim.epochs:
            self._validate(record)
        key = record["selection_metric"] = primary_metric(cfg)
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        improved = key in record and (self.best is None or record[key] < self.best)
        if improved:
            self.best = record[key]
        state = self.state()
        save_checkpoint(self.out / "last.pt", state)
        if improved:
            save_checkpoint(self.out / "best.pt", state)
        plot_curves(self.history, self.out / "curves.png", primary_metric(cfg))
        _barrier(self.dist)

    def _validate(self, record: dict[str, Any]) -> None:
        """Add the validation metrics to ``record``: ``val_*`` of the measured network (the
        averaged one with weight averaging), ``train_*`` of it on the training probe, and with
        weight averaging ``raw_val_*``: the training weights on the same validation samples
        (what averaging changes, epoch by epoch, in one run; best.pt never looks at them)."""
        cfg, t0 = self.cfg, time.perf_counter()
        nets = [("val", self.measured, self.val_samples), ("train", self.measured,
                                                            self.train_probe)]
        if self.ema is not None:
            nets.append(("raw_val", self.model, self.val_samples))
        for prefix, net, samples in nets:
            if samples is not None:
                measured = validate(net, samples, cfg, self.joint_set)
                record.update({f"{prefix}_{k}": v for k, v in measured.items()})
        record["val_time_s"] = round(time.perf_counter() - t0, 2)

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "last": str(self.out / "last.pt"),
                "best": str(self.out / "best.pt") if (self.out / "best.pt").exists() else None,
                "metrics": str(self.out / "metrics.jsonl"), "curves": str(self.out / "curves.png"),
                "step": self.step, "epoch": self.epoch, "steps_per_epoch": self.steps_per_epoch,
                "last_metrics": self.history[-1] if self.history else {},
                "selection_metric": primary_metric(self.cfg), "best_metric": self.best}


class LossLog:
    """Training loss without a host sync per step: sums stay on the device; every ``every``
    steps one window mean is read (the progress bar and the loss curve), and the epoch mean at
    the epoch's end. Its state goes into checkpoints so a resumed run logs the same numbers."""

    def __init__(self, device: torch.device, every: int) -> None:
        self.device, self.every = device, every
        self._reset_epoch()
        self.last = float("nan")

    def _reset_epoch(self) -> None:
        self.epoch_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_steps = self.window_steps = 0
        self.curve: list[list[float]] = []

    def add(self, loss: torch.Tensor, step: int) -> bool:
        """Add one step's loss; True when a window closed (``last`` holds its mean)."""
        self.epoch_sum += loss.double()
        self.window_sum += loss.double()
        self.epoch_steps += 1
        self.window_steps += 1
        if self.window_steps < self.every:
            return False
        self.last = float(self.window_sum) / self.window_steps
        self.curve.append([step, self.last])
        self.window_sum.zero_()
        self.window_steps = 0
        return True

    def end_epoch(self) -> dict[str, Any]:
        """``train_loss`` (epoch mean) and ``loss_curve`` ([step, window mean] pairs); resets."""
        out = {"train_loss": float(self.epoch_sum) / max(self.epoch_steps, 1),
               "loss_curve": self.curve}
        self._reset_epoch()
        return out

    def state(self) -> dict[str, Any]:
        return {"epoch_sum": self.epoch_sum.cpu(), "window_sum": self.window_sum.cpu(),
                "epoch_steps": self.epoch_steps, "window_steps": self.window_steps,
                "curve": [list(x) for x in self.curve], "last": self.last}

    def load_state(self, s: dict[str, Any]) -> None:
        self.epoch_sum = s["epoch_sum"].to(self.device)
        self.window_sum = s["window_sum"].to(self.device)
        self.epoch_steps, self.window_steps = int(s["epoch_steps"]), int(s["window_steps"])
        self.curve, self.last = [list(x) for x in s["curve"]], float(s["last"])


class _Throughput:
    """Samples per second and the share of wall time spent waiting for data."""

    def __init__(self) -> None:
        self.t_begin = self.t_mark = time.perf_counter()
        self.data_time = 0.0
        self.samples = 0

    def start(self) -> None:
        self.t_mark = time.perf_counter()

    def loaded(self) -> None:
        now = time.perf_counter()
        self.data_time += now - self.t_mark
        self.t_mark = now

    def stepped(self, n: int) -> None:
        self.samples += n
        self.t_mark = time.perf_counter()

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.t_begin, 1e-9)

    @property
    def data_share(self) -> float:
        return self.data_time / max(time.perf_counter() - self.t_begin, 1e-9)


def _peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and the current resident memory of its children
    (the DataLoader workers), MiB."""
    import resource

    import psutil

    children = 0
    for c in psutil.Process().children(recursive=True):
        try:
            children += c.memory_info().rss
        except psutil.Error:  # a worker that just exited
            pass
    return {"main_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "workers_now": round(children / 2**20, 1)}


RUN_FILES = ("metrics.jsonl", "last.pt", "best.pt", "curves.png", "config.yaml")


def _clear_previous_run(out: Path) -> None:
    """A fresh run (no --resume) in a folder that holds one replaces it: stale metrics lines
    or a best.pt of another run must not mix with the new run's."""
    old = [out / f for f in RUN_FILES if (out / f).exists()]
    if old:
        print(f"{out}: starting a new run; replacing {[p.name for p in old]} of the previous "
              "one (use --resume to continue it)")
        for p in old:
            p.unlink()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _resumed_config(state: dict[str, Any], cfg: TrainConfig, path: Path) -> TrainConfig:
    """The checkpoint's configuration, with this invocation's run-time knobs (workers, epochs,
    paths). Any other difference from the given configuration is refused."""
    saved = config_from_dict(state["config"], str(path))
    runtime = {("data", "workers"), ("data", "shards"), ("data", "manifest"),
               ("data", "data_root"), ("optim", "epochs"), ("val", "max_samples")}
    a, b = saved.to_dict(), cfg.to_dict()
    diffs = [f"{sec}.{k}" for sec in a if isinstance(a[sec], dict)
             for k in a[sec] if a[sec][k] != b[sec][k] and (sec, k) not in runtime]
    diffs += [k for k in a if not isinstance(a[k], dict) and a[k] != b[k]]
    if diffs:
        raise CheckpointError(f"{path}: --resume with a configuration that differs in {diffs}; "
                              "use a new --out for a different experiment")
    return cfg


def plot_curves(history: list[dict[str, Any]], path: Path, primary: str) -> None:
    """One PNG: the training loss against steps, the 2D validation error (px) and, for a 3D
    network, the 3D validation errors (mm) against epochs; ``primary``: the selection metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = primary.split("_")[1]  # val_{source}_{metric}
    what = "pseudo-labels" if source == "pseudo" else "ground truth"
    panels = [(keys, title) for keys, title in (
        ([f"val_{source}_px_error", f"raw_val_{source}_px_error", f"train_{source}_px_error"],
         f"2D error vs {what} (px, original image)"),
        ([f"val_{source}_{k}" for k in ERROR_METRICS] + [f"raw_val_{source}_n_mpjpe",
                                                        f"train_{source}_n_mpjpe"],
         f"3D error vs {what} (label root depth)"))
        if any(k in h for h in history for k in keys[:-1])]  # the lifter has no 2D panel
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4 + 5 * len(panels), 3.6),
                             squeeze=False)
    axes = axes[0]
    curve = [pt for h in history for pt in h.get("loss_curve", [])]
    if curve:
        axes[0].plot(*zip(*curve), lw=1, label="window mean")
    mids = [(h["step"] - h["step"] / h["epoch"] / 2, h["train_loss"]) for h in history]
    axes[0].plot(*zip(*mids), "o", label="epoch mean")
    axes[0].set(xlabel="step", ylabel="loss (smooth-L1 + weighted NLL)", yscale="log",
                title="training")
    axes[0].legend()
    for ax, (keys, title) in zip(axes[1:], panels):
        _plot_val(ax, history, keys, title, primary)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_val(ax: Any, history: list[dict[str, Any]], keys: list[str], title: str,
              primary: str) -> None:
    for k in keys:
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        if pts:
            kind = k.split("_")[0]  # val, raw (the training weights of an averaged run), train
            note = {"raw": " (not averaged)"}.get(kind, " (best.pt)" if k == primary else "")
            ax.plot(*zip(*pts), marker="o", ls={"val": "-", "raw": ":"}.get(kind, "--"),
                    label=(k[4:] if kind == "val" else k) + note)
    ax.set(xlabel="epoch", title=f"validation (train_: training probe): {title}")
    ax.legend()


def fit(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Train one run; the function the command line and the tests call."""
    return Trainer(cfg, opts).fit()

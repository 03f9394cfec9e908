"""What differs between the two students the trainer trains on the same labels.

Each student gives the trainer its training dataset and its validation; the network comes from
:func:`train.checkpoint.build_network` and the step, loss, schedule, checkpoints, resume and
DDP/AMP are the trainer's, shared. Both datasets yield ``{"image", "target", "weight", "meta"}``
batches and both networks return ``{"coords": (N, J, 3)}``, so one training step serves both.

* :class:`Volumetric` (``student: volumetric``): image crops (train.data.PoseDataset), measured
  through the one evaluation protocol (train.evaluation.evaluate_samples);
* :class:`Lifter` (``student: lifter``): the labelled camera's 2D joints
  (train.lifter.LiftDataset), measured on the same labels by the same pose metrics.
"""
from __future__ import annotations

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from pipeline.joints import JointSet
from train.config import TrainConfig
from train.data import PoseDataset
from train.evaluation import evaluate_samples, model_predictor, pose_metric_table
from train.lifter import LiftDataset, predict_samples
from train.samples import Samples


class Volumetric:
    """The paper's network: an image crop -> a volumetric heatmap per joint."""

    reads_images = True  # samples are visited crop row group by row group (sequential reads)

    @staticmethod
    def dataset(cfg: TrainConfig, samples: Samples, joint_set: JointSet) -> Dataset:
        return PoseDataset(samples, cfg.model.input_size, joint_set, cfg.augment,
                           use_depth=cfg.is_3d, depth_range_mm=cfg.data.depth_range_mm,
                           seed=cfg.seed)

    @staticmethod
    def poses(model: nn.Module, samples: Samples, cfg: TrainConfig, joint_set: JointSet
              ) -> np.ndarray:
        """(N, J, 3) root-relative poses of ``samples`` through the one evaluation protocol
        (decoded with each sample's label root depth)."""
        return evaluate_samples(model_predictor(model, cfg.val.batch_size), samples,
                                cfg.model.input_size, cfg.data.depth_range_mm,
                                chunk=cfg.val.batch_size * 4).poses

    @staticmethod
    def measure(model: nn.Module, samples: Samples, cfg: TrainConfig, joint_set: JointSet
                ) -> dict[str, float]:
        result = evaluate_samples(model_predictor(model, cfg.val.batch_size), samples,
                                  cfg.model.input_size, cfg.data.depth_range_mm,
                                  with_3d=cfg.is_3d, pck_threshold_px=cfg.val.pck_threshold_px,
                                  chunk=cfg.val.batch_size)
        return result.means()


class Lifter:
    """The keypoint-lifting student: 2D joints of the labelled camera -> 3D."""

    reads_images = False

    @staticmethod
    def dataset(cfg: TrainConfig, samples: Samples, joint_set: JointSet) -> Dataset:
        return LiftDataset(samples, cfg.lifter, joint_set, augment=True, seed=cfg.seed)

    @staticmethod
    def poses(model: nn.Module, samples: Samples, cfg: TrainConfig, joint_set: JointSet
              ) -> np.ndarray:
        """(N, J, 3) root-relative poses of ``samples`` lifted from their 2D."""
        return predict_samples(model, samples, joint_set)

    @staticmethod
    def measure(model: nn.Module, samples: Samples, cfg: TrainConfig, joint_set: JointSet
                ) -> dict[str, float]:
        poses = predict_samples(model, samples, joint_set)
        table = pose_metric_table(poses, samples)
        out = {k: float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")
               for k, v in table.items()}
        out["n"] = int(np.isfinite(poses).all(axis=(1, 2)).sum())
        return out


STUDENTS = {"volumetric": Volumetric, "lifter": Lifter}
"""``config.student`` -> its dataset and validation (train.config.STUDENTS names them)."""


def validate(model: nn.Module, samples: Samples, cfg: TrainConfig, joint_set: JointSet
             ) -> dict[str, float]:
    """Validation metrics of ``model`` on ``samples`` (the caller picks the split), against the
    samples' labels (ground truth or pseudo-labels), named ``{label_source}_{metric}``.

    The volumetric network adds the 2D metrics: ``px_error`` mean joint error in
    original-image pixels, ``pck_px`` share within ``val.pck_threshold_px``. 3D networks (both
    students) give every metric of :data:`eval.metrics.ALIGNMENTS` (mm, or the pseudo-labels'
    units; or shares). ``n``: samples measured. The model's train/eval mode is restored."""
    was_training = model.training
    result = STUDENTS[cfg.student].measure(model, samples, cfg, joint_set)
    model.train(was_training)
    return {f"{samples.label_source}_{k}": v for k, v in result.items()}

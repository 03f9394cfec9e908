"""Evaluate a 3D checkpoint (or the mean-pose baseline) on a manifest's test split.

Protocol (the paper's):
    - one sample per (test sequence, camera, frame) of the ground-truth npz
      (``manifest.gt_path(seq)``: ``joints_2d`` (C, F, J, 2), ``joints_3d_cam`` (C, F, J, 3) mm
      (or ``joints_3d_world`` + the manifest's extrinsics), ``bbox`` (C, F, 4) tight
      [x_min, y_min, x_max, y_max], ``cameras`` (C,));
    - the crop: the square around the GT box grown by ``box_margin`` per side
      (:func:`pipeline.cameras.box_to_square`), cut with ``cv2.warpAffine(img,
      crop_affine(center, side, S), (S, S))``, S = the model's input size;
    - the network's crop-normalised (x, y, z) are decoded to camera-frame mm by
      :func:`train.targets.decode`: each joint is back-projected through its image position with
      the **ground-truth root depth** and the camera's intrinsics, then made root-relative;
    - ground truth: root-relative camera-frame ``joints_3d_cam`` (mm);
    - metrics: :data:`eval.metrics.ALIGNMENTS` (MPJPE, N-MPJPE, PA-MPJPE, PCK3D @150 mm, AUC
      0..150 mm) and PSS@50 / PSS@100 (:mod:`eval.pss`) with cluster models fitted on the
      train split's root-relative camera-frame GT, cached in the output folder;
    - per action and overall (mean over samples; ``mean_of_actions`` is the unweighted mean
      of the action rows).

The mean-pose baseline predicts the mean root-relative camera-frame training pose for every test
sample and is measured the same way.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import pandas as pd

from eval.metrics import ALIGNMENTS, PCK_THRESHOLD_MM, aggregate, pose_metrics
from eval.pss import PSS_KS, PSSModel, load_or_fit, pss_hits
from eval.tables import write_table
from pipeline.cameras import box_to_square, crop_affine, world_to_camera
from pipeline.frames import read_frames
from pipeline.manifest import Manifest, ManifestError, Sequence, load_manifest

DEFAULT_BOX_MARGIN = 0.15
COLUMNS = ("mpjpe", "n_mpjpe", "pa_mpjpe", "pss@50", "pss@100", "pck3d", "auc")
"""Column order of the results table (the paper's layout), then ``n``."""


@dataclass(frozen=True)
class Samples:
    """Evaluation samples of a manifest split, one per (sequence, camera, frame), in blocks.

    Attributes:
        blocks: (sequence, camera, source frame indices) in the order of the arrays below.
        action, subject, camera: (N,) str. frame: (N,) int.
        center: (N, 2) crop box centre, pixels. side: (N,) crop box side, pixels.
        K: (N, 3, 3) intrinsics. dist: (N, 5) distortion.
        root_depth: (N,) ground-truth root Z in the camera frame, mm.
        gt: (N, J, 3) root-relative camera-frame ground truth, mm.
        mask: (N, J) joints with finite ground truth.
    """

    blocks: tuple[tuple[Sequence, str, np.ndarray], ...]
    action: np.ndarray
    subject: np.ndarray
    camera: np.ndarray
    frame: np.ndarray
    center: np.ndarray
    side: np.ndarray
    K: np.ndarray
    dist: np.ndarray
    root_depth: np.ndarray
    gt: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


def _load_gt(path: Path, seq: Sequence) -> dict[str, np.ndarray]:
    if not path.exists():
        raise ManifestError(f"ground-truth file {path} of sequence {seq.key} does not exist "
                            "(run `make data` for the synthetic set)")
    with np.load(path, allow_pickle=False) as z:
        gt = {k: z[k] for k in z.files}
    for key in ("bbox", "cameras"):
        if key not in gt:
            raise ManifestError(f"{path}: key {key!r} is missing (sequence {seq.key})")
    if "joints_3d_cam" not in gt and "joints_3d_world" not in gt:
        raise ManifestError(f"{path}: needs joints_3d_cam or joints_3d_world")
    return gt


def _camera_joints(m: Manifest, gt: dict[str, np.ndarray], c: int, seq: Sequence, cam: str,
                   frames: np.ndarray, path: Path) -> np.ndarray:
    """(F', J, 3) camera-frame GT of camera index ``c``: joints_3d_cam, else world + extrinsics."""
    if "joints_3d_cam" in gt:
        return gt["joints_3d_cam"][c, frames].astype(np.float64)
    camera = m.camera(cam, seq.subject)
    if not camera.has_extrinsics:
        raise ManifestError(f"{path}: no joints_3d_cam and no extrinsics for {seq.subject} {cam}")
    return world_to_camera(gt["joints_3d_world"][frames].astype(np.float64), camera.R, camera.t)


def load_samples(m: Manifest, split: str, frame_step: int = 1, box_margin: float =
                 DEFAULT_BOX_MARGIN, max_frames: int | None = None) -> Samples:
    """Every (sequence, camera, frame) of ``split`` that has ground truth.

    Frames: the GT npz's frame axis, every ``seq.frames.step * frame_step``-th, at most
    ``max_frames`` per sequence and camera.
    """
    if frame_step < 1:
        raise ValueError("frame_step must be >= 1")
    seqs = m.sequences_in(split)
    if not seqs:
        raise ManifestError(f"{m.path}: split {split!r} has no sequences")
    root = m.joint_set.root
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "action", "subject", "camera", "frame", "bbox", "K", "dist", "j3d")}
    blocks = []
    for seq in seqs:
        path = m.gt_path(seq)
        if path is None:
            raise ManifestError(f"{m.path}: evaluation needs ground_truth.joints_3d")
        gt = _load_gt(path, seq)
        gt_cams = [str(c) for c in gt["cameras"]]
        frames = np.arange(0, gt["bbox"].shape[1], seq.frames.step * frame_step)[:max_frames]
        for cam in seq.cameras:
            if cam not in gt_cams:
                raise ManifestError(f"{path}: camera {cam} of {seq.key} is not in its 'cameras' "
                                    f"{gt_cams}")
            c = gt_cams.index(cam)
            camera = m.camera(cam, seq.subject)
            n = len(frames)
            blocks.append((seq, cam, frames))
            parts["action"].append(np.full(n, seq.action, dtype=object))
            parts["subject"].append(np.full(n, seq.subject, dtype=object))
            parts["camera"].append(np.full(n, cam, dtype=object))
            parts["frame"].append(frames)
            parts["bbox"].append(gt["bbox"][c, frames].astype(np.float64))
            parts["K"].append(np.broadcast_to(camera.K, (n, 3, 3)))
            parts["dist"].append(np.broadcast_to(camera.dist[:5], (n, 5)))
            parts["j3d"].append(_camera_joints(m, gt, c, seq, cam, frames, path))
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    j3d = cat["j3d"]
    center, side = box_to_square(cat["bbox"], box_margin)
    return Samples(
        blocks=tuple(blocks), action=cat["action"].astype(str), subject=cat["subject"].astype(str),
        camera=cat["camera"].astype(str), frame=cat["frame"].astype(np.int64), center=center,
        side=side, K=cat["K"].astype(np.float64), dist=cat["dist"].astype(np.float64),
        root_depth=j3d[:, root, 2].copy(), gt=j3d - j3d[:, root:root + 1],
        mask=np.isfinite(j3d).all(-1) & np.isfinite(j3d[:, root:root + 1]).all(-1))


# --- crops and predictions -----------------------------------------------------------------------

def cut_crop(image: np.ndarray, center: np.ndarray, side: float, size: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image -> (size, size, 3) crop of the square box and its (2, 3) affine."""
    A = crop_affine(center, side, size)
    crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop, A


def iter_crops(m: Manifest, samples: Samples, size: int, chunk: int = 256
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (sample indices (B,), crops (B, size, size, 3) uint8 BGR, affines (B, 2, 3)) in
    chunks of at most ``chunk`` samples; frames that cannot be read are left out (their
    samples never appear)."""
    idx_buf: list[int] = []
    crop_buf: list[np.ndarray] = []
    aff_buf: list[np.ndarray] = []
    start = 0
    for seq, cam, frames in samples.blocks:
        for k, fr in enumerate(read_frames(m, seq, cam, [int(f) for f in frames])):
            i = start + k
            if fr.image is not None:
                crop, A = cut_crop(fr.image, samples.center[i], float(samples.side[i]), size)
                idx_buf.append(i)
                crop_buf.append(crop)
                aff_buf.append(A)
            if len(idx_buf) == chunk:
                yield np.array(idx_buf), np.stack(crop_buf), np.stack(aff_buf)
                idx_buf, crop_buf, aff_buf = [], [], []
        start += len(frames)
    if idx_buf:
        yield np.array(idx_buf), np.stack(crop_buf), np.stack(aff_buf)


PredictFn = Callable[[np.ndarray], np.ndarray]
"""(B, S, S, 3) uint8 BGR crops -> (B, J, 3) crop-normalised (x, y, z) coordinates."""


def predict_samples(predict_fn: PredictFn, m: Manifest, samples: Samples, size: int,
                    depth_range: float, chunk: int = 256) -> np.ndarray:
    """(N, J, 3) root-relative camera-frame predictions in mm (NaN for unreadable frames).

    Coordinates are decoded by :func:`train.targets.decode` with the GT root depth and the
    sample's intrinsics and distortion.
    """
    from train.targets import decode

    out = np.full(samples.gt.shape, np.nan)
    root = m.joint_set.root
    for idx, crops, A in iter_crops(m, samples, size, chunk):
        coords = np.asarray(predict_fn(crops), dtype=np.float64)
        if coords.shape != (len(idx), samples.gt.shape[1], 3):
            raise ValueError(f"model returned {coords.shape}, expected "
                             f"({len(idx)}, {samples.gt.shape[1]}, 3)")
        out[idx] = decode(coords, A, samples.K[idx], samples.dist[idx], samples.root_depth[idx],
                          size, depth_range, root=root)
    return out


def _cfg_get(cfg: Any, *keys: str, default: Any = None) -> Any:
    """A nested setting of a config given as a dataclass or a plain dict."""
    v = cfg
    for k in keys:
        if isinstance(v, dict):
            v = v.get(k)
        else:
            v = getattr(v, k, None)
        if v is None:
            return default
    return v


def checkpoint_predictor(path: str | Path, batch_size: int) -> tuple[PredictFn, dict[str, Any]]:
    """Load a 3D checkpoint with :func:`train.infer.load_model`; returns the predict function
    and the settings evaluation needs (input_size, depth_range_mm, box_margin)."""
    from train.infer import load_model, predict

    model, cfg = load_model(str(path))
    size = _cfg_get(cfg, "model", "input_size")
    if size is None:
        raise ValueError(f"{path}: its configuration has no model.input_size")
    if int(_cfg_get(cfg, "model", "depth_bins", default=2)) <= 1:
        raise ValueError(f"{path} is a 2D network (model.depth_bins = 1): give a 3D checkpoint")
    settings = {"input_size": int(size),
                "depth_range_mm": float(_cfg_get(cfg, "data", "depth_range_mm", default=2000.0)),
                "box_margin": float(_cfg_get(cfg, "data", "box_margin",
                                             default=DEFAULT_BOX_MARGIN))}

    def fn(crops: np.ndarray) -> np.ndarray:
        coords, _ = predict(model, crops, batch_size)
        return np.asarray(coords)

    return fn, settings


# --- metrics over samples --------------------------------------------------------------------------

def mean_pose(samples: Samples) -> np.ndarray:
    """(J, 3) mean root-relative camera-frame pose over the valid joints of ``samples``."""
    w = samples.mask[..., None]
    n = w.sum(0)
    if np.any(n == 0):
        raise ValueError("a joint has no valid training sample; no mean pose")
    return np.where(w, samples.gt, 0.0).sum(0) / n


def pss_models(train: Samples, cache_dir: Path, ks: tuple[int, ...] = PSS_KS, seed: int = 0,
               restarts: int = 5) -> dict[int, PSSModel]:
    """PSS cluster models fitted on the train split's GT (cached as ``pss_k{k}.npz``)."""
    poses = train.gt[train.mask.all(1)]
    models = {}
    for k in ks:
        models[k], _ = load_or_fit(Path(cache_dir) / f"pss_k{k}.npz", poses, k, seed=seed,
                                   restarts=restarts, root=0)
    return models


def per_sample_metrics(pred: np.ndarray, samples: Samples, models: dict[int, PSSModel]
                       ) -> dict[str, np.ndarray]:
    """Every metric per sample: ALIGNMENTS' metrics and ``pss@k`` (1.0 hit, 0.0 miss); NaN for
    samples without a prediction (unreadable frame) or without a complete GT (PSS)."""
    have = np.isfinite(pred).all(axis=(1, 2))
    mask = samples.mask & have[:, None]
    out = pose_metrics(np.nan_to_num(pred), samples.gt, mask)
    full = have & samples.mask.all(1)
    for k, model in models.items():
        hits = np.full(len(pred), np.nan)
        if full.any():
            hits[full] = pss_hits(model, pred[full], samples.gt[full])
        out[f"pss@{k}"] = hits
    return out


def results_table(per_sample: dict[str, np.ndarray], samples: Samples) -> pd.DataFrame:
    """Per action, overall and mean-of-actions rows; columns in :data:`COLUMNS` order (other
    metrics, e.g. PSS at another k, after them), then n."""
    table = aggregate(per_sample, samples.action)
    cols = [c for c in COLUMNS if c in table.columns]
    cols += [c for c in table.columns if c not in cols and c != "n"]
    return table[cols + ["n"]]


def table_note(models: dict[int, PSSModel], what: str, failed: int = 0) -> str:
    """The sentence under every results table: what was predicted, against which ground truth,
    with which alignment."""
    align = ", ".join(f"{k}: {v}" for k, v in ALIGNMENTS.items())
    pss = "; ".join(f"PSS@{k}: {m.k} k-means clusters of {m.num_train} unit-norm train GT poses "
                    f"(seed {m.seed}, {m.restarts} restarts)" for k, m in models.items())
    note = (f"{what}. Ground truth: root-relative camera-frame `joints_3d_cam` of the manifest "
            f"(mm). Alignment of the prediction before each metric ({align}); errors in mm, "
            f"PCK3D at {PCK_THRESHOLD_MM:g} mm, AUC over 0-150 mm and PSS are shares in [0, 1]. "
            f"{pss}. Rows: one per action, `overall` = mean over all samples, "
            f"`mean_of_actions` = unweighted mean of the action rows; n = samples.")
    if failed:
        note += f" {failed} samples had no readable frame and are left out."
    return note


def write_result(name: str, pred: np.ndarray, what: str, samples: Samples,
                 models: dict[int, PSSModel], out: Path, title: str
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measure (N, J, 3) predictions; write ``out/<name>.md``/``.csv`` and
    ``out/per_sample_<name>.parquet``. Returns the table and a summary for eval.json."""
    per = per_sample_metrics(pred, samples, models)
    failed = int((~np.isfinite(pred).all(axis=(1, 2))).sum())
    table = results_table(per, samples)
    write_table(table, out / name, title=title, note=table_note(models, what, failed),
                digits_by_column={c: 3 for c in table.columns if not c.endswith("mpjpe")})
    pd.DataFrame({"subject": samples.subject, "action": samples.action,
                  "camera": samples.camera, "frame": samples.frame, **per}
                 ).to_parquet(out / f"per_sample_{name}.parquet")
    return table, {"failed_samples": failed,
                   "overall": {k: float(v) for k, v in table.loc["overall"].items()}}


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    train_split: str = "train"
    frame_step: int = 1
    max_frames: int | None = None
    batch_size: int = 64
    pss_seed: int = 0
    pss_restarts: int = 5
    pss_dir: str | None = None
    """Folder of the cached PSS models (default: the output folder). Share it between runs so
    that their PSS numbers use the same clusters."""


def evaluate(manifest_path: str | Path, out: str | Path, checkpoint: str | Path | None = None,
             baselines: tuple[str, ...] = (), settings: EvalSettings = EvalSettings(),
             root: str | None = None) -> dict[str, pd.DataFrame]:
    """Evaluate a checkpoint and/or baselines; writes ``<name>.md``/``.csv`` per result,
    ``per_sample_<name>.parquet``, the PSS models and ``eval.json`` under ``out``.

    Returns name -> results table (``checkpoint``, ``mean_pose``).
    """
    if checkpoint is None and not baselines:
        raise ValueError("nothing to evaluate: give a checkpoint or a baseline")
    unknown = set(baselines) - {"mean-pose"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: mean-pose")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = load_manifest(manifest_path, root=root)
    predictor, model_settings = (checkpoint_predictor(checkpoint, settings.batch_size)
                                 if checkpoint is not None else (None, {}))
    margin = model_settings.get("box_margin", DEFAULT_BOX_MARGIN)
    test = load_samples(m, settings.split, settings.frame_step, margin, settings.max_frames)
    # Every training frame, whatever --frame-step: the PSS models and the mean pose then do
    # not depend on how densely the test split is sampled.
    train = load_samples(m, settings.train_split, 1, margin)
    models = pss_models(train, Path(settings.pss_dir) if settings.pss_dir else out,
                        seed=settings.pss_seed, restarts=settings.pss_restarts)

    results: dict[str, pd.DataFrame] = {}
    info: dict[str, Any] = {"manifest": str(manifest_path), "split": settings.split,
                            "samples": len(test), "train_samples": len(train),
                            "settings": settings.__dict__, "alignments": ALIGNMENTS}
    predictions: dict[str, tuple[np.ndarray, str]] = {}
    if "mean-pose" in baselines:
        pred = np.broadcast_to(mean_pose(train), test.gt.shape).copy()
        predictions["mean_pose"] = (pred, f"Mean-pose baseline: the mean root-relative "
                                          f"camera-frame pose of the {settings.train_split} split "
                                          f"predicted for every sample")
    if predictor is not None:
        t0 = time.perf_counter()
        pred = predict_samples(predictor, m, test, model_settings["input_size"],
                               model_settings["depth_range_mm"], chunk=settings.batch_size * 4)
        info["predict_seconds"] = time.perf_counter() - t0
        info["model"] = dict(model_settings, checkpoint=str(checkpoint))
        predictions["checkpoint"] = (pred, f"Checkpoint `{checkpoint}`: predictions decoded with "
                                           "the ground-truth root depth and the intrinsics")
    for name, (pred, what) in predictions.items():
        results[name], info[name] = write_result(name, pred, what, test, models, out,
                                                 f"{name} on {m.dataset} / {settings.split}")
    (out / "eval.json").write_text(json.dumps(info, indent=2, default=str))
    return results

"""Pose Structure Score (PSS): does a prediction have the same *kind* of pose as its ground truth?

MPJPE rewards a mean pose; PSS (Kocabas et al., CVPR 2019, §4) does not. The recipe:

1. every pose is root-centred and scaled to unit Frobenius norm (so scale and translation do
   not matter, only structure), see :func:`normalize_poses`;
2. k-means with k clusters (k = 50 and 100 in the paper) is fitted once on the **training
   set's ground-truth** poses; the cluster centres are saved (npz) and reused so that scores
   of different runs are comparable, see :func:`fit_pss_model`, :func:`save_pss_model`;
3. PSS@k is the share of test samples whose prediction falls in the same cluster (nearest
   centre) as its ground truth, see :func:`pss_hits` and :func:`pss`.

k-means here: k-means++ seeding, Lloyd iterations until no assignment changes (or ``max_iter``),
empty clusters re-seeded with the sample farthest from its centre, ``restarts`` independent
runs from one seeded generator, the run with the lowest inertia kept. Everything is
deterministic for a given seed and input.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PSS_KS: tuple[int, ...] = (50, 100)
_CHUNK = 65536


@dataclass(frozen=True)
class PSSModel:
    """A fitted cluster model.

    Attributes:
        centroids: (k, J*3) cluster centres in the normalised pose space.
        root: root joint index used for centring.
        seed, restarts: how it was fitted.
        inertia: sum of squared distances of the training poses to their centres.
        fingerprint: hash of the normalised training poses (detects a stale cached model).
        num_train: number of training poses used.
    """

    centroids: np.ndarray
    root: int
    seed: int
    restarts: int
    inertia: float
    fingerprint: str
    num_train: int

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.centroids.shape[1] // 3)


def normalize_poses(poses: np.ndarray, root: int = 0) -> np.ndarray:
    """(N, J, 3) poses -> (N, J*3) root-centred poses of unit Frobenius norm.

    A degenerate pose (all joints at the root) stays the zero vector.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[-1] != 3:
        raise ValueError(f"poses must be (N, J, 3), got {poses.shape}")
    if not np.all(np.isfinite(poses)):
        raise ValueError("poses hold NaN or inf; PSS needs every joint")
    x = (poses - poses[:, root:root + 1]).reshape(len(poses), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def fingerprint(x: np.ndarray) -> str:
    """Short hash of an array's shape and float32 values."""
    h = hashlib.sha1(str(x.shape).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances (clipped at 0)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) points -> (N,) index of the nearest centre and (N,) squared distance to it,
    computed in chunks so memory stays O(chunk * K)."""
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), _CHUNK):
        d = _sq_dists(x[start:start + _CHUNK], centroids)
        labels[start:start + _CHUNK] = d.argmin(1)
        dist[start:start + _CHUNK] = d[np.arange(len(d)), labels[start:start + _CHUNK]]
    return labels, dist


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: (N, D) -> (k, D) initial centres."""
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(len(x))]
    d = ((x - centres[0]) ** 2).sum(1)
    for i in range(1, k):
        total = d.sum()
        idx = rng.choice(len(x), p=d / total) if total > 0 else rng.integers(len(x))
        centres[i] = x[idx]
        d = np.minimum(d, ((x - centres[i]) ** 2).sum(1))
    return centres


def _lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd iterations from ``centres``; returns centres, labels and inertia."""
    k = len(centres)
    labels = np.full(len(x), -1)
    for _ in range(max_iter):
        new_labels, dist = nearest(x, centres)
        counts = np.bincount(new_labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if len(empty):  # re-seed empty clusters with the worst-fitted samples
            far = np.argsort(-dist)[:len(empty)]
            centres[empty] = x[far]
            new_labels[far] = empty
            counts = np.bincount(new_labels, minlength=k)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        centres = sums / np.maximum(counts, 1)[:, None]
    labels, dist = nearest(x, centres)
    return centres, labels, float(dist.sum())


def kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = 5, max_iter: int = 300
           ) -> tuple[np.ndarray, float]:
    """(N, D) points -> (k, D) centres and inertia of the best of ``restarts`` seeded runs."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k = {k} needs 1 <= k <= number of samples ({len(x)})")
    if restarts < 1:
        raise ValueError("restarts must be >= 1")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, float] | None = None
    for _ in range(restarts):
        centres, _, inertia = _lloyd(x, _kmeans_pp(x, k, rng), max_iter)
        if best is None or inertia < best[1]:
            best = (centres, inertia)
    assert best is not None
    return best


def fit_pss_model(train_poses: np.ndarray, k: int, seed: int = 0, restarts: int = 5,
                  root: int = 0, max_samples: int | None = 200_000) -> PSSModel:
    """Fit the PSS cluster model on (N, J, 3) training ground-truth poses.

    ``max_samples``: a seeded random subset of at most this many poses is clustered (consecutive
    video frames are near duplicates; this bounds the cost). None uses every pose.
    """
    x = normalize_poses(train_poses, root)
    fp = fingerprint(x)
    if max_samples is not None and len(x) > max_samples:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), max_samples, replace=False))
        x = x[pick]
    centroids, inertia = kmeans(x, k, seed=seed, restarts=restarts)
    return PSSModel(centroids=centroids, root=root, seed=seed, restarts=restarts,
                    inertia=inertia, fingerprint=fp, num_train=len(x))


def assign(model: PSSModel, poses: np.ndarray) -> np.ndarray:
    """(N, J, 3) poses -> (N,) cluster index of each (after normalisation)."""
    poses = np.asarray(poses)
    if poses.ndim != 3 or poses.shape[1] != model.num_joints:
        raise ValueError(f"poses must be (N, {model.num_joints}, 3), got {poses.shape}")
    return nearest(normalize_poses(poses, model.root), model.centroids)[0]


def pss_hits(model: PSSModel, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) bool: prediction and ground truth fall in the same cluster."""
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"pred {np.shape(pred)} and gt {np.shape(gt)} differ")
    return assign(model, pred) == assign(model, gt)


def pss(model: PSSModel, pred: np.ndarray, gt: np.ndarray) -> float:
    """PSS@k: share of samples whose prediction is in its ground truth's cluster."""
    return float(pss_hits(model, pred, gt).mean())


def chance_level(model: PSSModel, gt: np.ndarray) -> float:
    """Expected PSS of a prediction drawn independently of its ground truth from the same
    cluster distribution: sum_c p_c^2 with p_c the share of ``gt`` in cluster c."""
    p = np.bincount(assign(model, gt), minlength=model.k) / len(gt)
    return float((p * p).sum())


# --- persistence --------------------------------------------------------------------------------

def save_pss_model(model: PSSModel, path: str | Path) -> None:
    """Write ``model`` to an npz (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, centroids=model.centroids, root=model.root, seed=model.seed,
             restarts=model.restarts, inertia=model.inertia, fingerprint=model.fingerprint,
             num_train=model.num_train)
    tmp.replace(path)


def load_pss_model(path: str | Path) -> PSSModel:
    with np.load(Path(path), allow_pickle=False) as z:
        missing = {"centroids", "root", "seed", "restarts", "inertia", "fingerprint",
                   "num_train"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: not a PSS model (missing {sorted(missing)})")
        return PSSModel(centroids=z["centroids"], root=int(z["root"]), seed=int(z["seed"]),
                        restarts=int(z["restarts"]), inertia=float(z["inertia"]),
                        fingerprint=str(z["fingerprint"]), num_train=int(z["num_train"]))


def load_or_fit(path: str | Path, train_poses: np.ndarray, k: int, seed: int = 0,
                restarts: int = 5, root: int = 0) -> tuple[PSSModel, bool]:
    """The model cached at ``path`` if it was fitted on the same training poses with the same
    k, seed and root; otherwise a freshly fitted one, saved there. Returns (model, reused)."""
    path = Path(path)
    if path.exists():
        model = load_pss_model(path)
        if (model.k == k and model.seed == seed and model.root == root
                and model.fingerprint == fingerprint(normalize_poses(train_poses, root))):
            return model, True
    model = fit_pss_model(train_poses, k, seed=seed, restarts=restarts, root=root)
    save_pss_model(model, path)
    return model, False

"""Pose Structure Score: invariances, identity, chance level, persistence."""
from __future__ import annotations

import numpy as np
import pytest

from eval.pss import (assign, chance_level, fit_pss_model, kmeans, load_or_fit, load_pss_model,
                      normalize_poses, pss, pss_hits, save_pss_model)


def _poses(n: int, seed: int) -> np.ndarray:
    """Structured random poses: a few prototypes plus noise, root joint 0 anywhere in space."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(8, 17, 3)) * 300
    x = protos[rng.integers(8, size=n)] + rng.normal(size=(n, 17, 3)) * 60
    x[:, 0] = rng.normal(size=(n, 3)) * 50
    return x + rng.normal(size=(n, 1, 3)) * 1000


@pytest.fixture(scope="module")
def model():
    return fit_pss_model(_poses(1500, 0), k=20, seed=3, restarts=3)


def test_normalize_is_root_centred_unit_norm():
    x = normalize_poses(_poses(10, 1))
    assert x.shape == (10, 51)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
    np.testing.assert_allclose(x[:, :3], 0.0)
    with pytest.raises(ValueError, match="NaN"):
        normalize_poses(np.full((1, 17, 3), np.nan))


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0], [10, 0], [0, 10]])
    x = centres[np.repeat(np.arange(3), 50)] + rng.normal(size=(150, 2)) * 0.1
    c1, inertia = kmeans(x, 3, seed=1, restarts=2)
    c2, _ = kmeans(x, 3, seed=1, restarts=2)
    np.testing.assert_array_equal(c1, c2)
    found = c1[np.argsort(c1[:, 0] + 100 * c1[:, 1])]       # order (0,0), (10,0), (0,10)
    np.testing.assert_allclose(found, centres, atol=0.1)
    assert inertia < 150 * 2 * 0.1 ** 2 * 2
    with pytest.raises(ValueError, match="k = 200"):
        kmeans(x, 200)


def test_identical_predictions_score_one(model):
    gt = _poses(300, 5)
    assert pss(model, gt, gt) == 1.0


def test_scaled_and_translated_predictions_score_the_same(model):
    gt = _poses(400, 6)
    pred = gt + np.random.default_rng(7).normal(size=gt.shape) * 120   # imperfect predictions
    base = pss_hits(model, pred, gt)
    assert 0.05 < base.mean() < 0.999    # neither trivial nor perfect
    moved = pred * 0.004 + np.array([3.0, -1.0, 7.0])                  # metres, shifted
    np.testing.assert_array_equal(pss_hits(model, moved, gt), base)
    assert pss(model, gt * 5.0 - 20.0, gt) == 1.0


def test_random_predictions_score_near_chance(model):
    gt = _poses(2000, 8)
    pred = _poses(2000, 9)[np.random.default_rng(1).permutation(2000)]
    chance = chance_level(model, gt)
    assert chance < 0.2
    assert abs(pss(model, pred, gt) - chance) < 0.05


def test_save_load_and_cache_reuse(tmp_path, model):
    path = tmp_path / "pss_k20.npz"
    save_pss_model(model, path)
    loaded = load_pss_model(path)
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert (loaded.k, loaded.seed, loaded.fingerprint) == (20, 3, model.fingerprint)
    gt = _poses(50, 11)
    np.testing.assert_array_equal(assign(loaded, gt), assign(model, gt))

    train = _poses(300, 12)
    m1, reused1 = load_or_fit(tmp_path / "c.npz", train, k=5, seed=0, restarts=1)
    m2, reused2 = load_or_fit(tmp_path / "c.npz", train, k=5, seed=0, restarts=1)
    assert not reused1 and reused2
    np.testing.assert_array_equal(m1.centroids, m2.centroids)
    _, reused3 = load_or_fit(tmp_path / "c.npz", train[:-1], k=5, seed=0, restarts=1)
    assert not reused3                      # a different training set refits


def test_wrong_joint_count_is_refused(model):
    with pytest.raises(ValueError, match="17"):
        assign(model, np.zeros((2, 16, 3)))

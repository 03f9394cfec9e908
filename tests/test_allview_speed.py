"""The closed-form DLT (pipeline.geometry._dlt) against the batched-SVD DLT it replaced."""
from __future__ import annotations

import numpy as np

from pipeline import geometry as geo
from pipeline import multiview as mv
from tests.test_multiview import _truth, _views
from tests.test_geometry import FOCAL


def svd_dlt(x, P, w):
    """The previous implementation: SVD of the stacked 2V x 4 rows (reference)."""
    w = np.where(np.isfinite(x).all(-1), w.astype(np.float64), 0.0)
    xs = np.where(w[..., None] > 0, x, 0.0)
    rows = np.concatenate([xs[..., 0, None, None] * P[..., 2:3, :] - P[..., 0:1, :],
                           xs[..., 1, None, None] * P[..., 2:3, :] - P[..., 1:2, :]], -2)
    A = (rows * w[..., None, None]).reshape(rows.shape[:-3] + (-1, 4))
    _, _, Vt = np.linalg.svd(np.where(np.isfinite(A), A, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Vt[..., -1, :3] / Vt[..., -1, 3:4]
    return np.where(((w > 0).sum(-1) >= 2)[..., None], X, np.nan)


def _stack(noise, seed, outliers=0.0):
    rig, X, xs, masks = _views(40, noise, seed)
    cams = _truth(rig, list(rig)[0])
    _, x, P, w = mv._stack_views(xs, cams, masks)
    rng = np.random.default_rng(seed)
    bad = rng.random(w.shape) < outliers
    x = x + bad[..., None] * rng.normal(0, 80.0 / FOCAL, x.shape)
    return x, P, w


def _close(a, b):
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = np.isfinite(a)
    np.testing.assert_allclose(a[ok], b[ok], rtol=1e-8, atol=1e-9 * np.abs(a[ok]).max())


def test_closed_form_dlt_matches_svd_on_noisy_views_and_pairs():
    for noise, outliers in ((0.0, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.3)):
        x, P, w = _stack(noise, 30, outliers)
        Pb = np.broadcast_to(P, x.shape[:-1] + (3, 4))
        _close(geo._dlt(x, P, w), svd_dlt(x, Pb, w))        # all views, shared cameras
        _close(geo._dlt(x, Pb, w), svd_dlt(x, Pb, w))       # per-point cameras
        for i, j in zip(*np.triu_indices(x.shape[-2], 1)):  # every pair
            wij = np.zeros_like(w)
            wij[..., i], wij[..., j] = w[..., i], w[..., j]
            _close(geo._dlt(x, P, wij), svd_dlt(x, Pb, wij))


def test_two_view_dlt_matches_svd_with_per_frame_poses():
    x, P, w = _stack(3.0, 31)
    R, t = P[1, :, :3], P[1, :, 3]
    F = x.shape[0]
    Rf, tf = np.broadcast_to(R, (F, 3, 3)), np.broadcast_to(t, (F, 3))
    a = geo.triangulate_dlt(x[..., 0, :], x[..., 1, :], R, t)
    b = geo.triangulate_dlt(x[..., 0, :], x[..., 1, :], Rf, tf)
    P2 = np.broadcast_to(np.stack([np.eye(3, 4), P[1]]), x.shape[:-2] + (2, 3, 4))
    ref = svd_dlt(x[..., :2, :], P2, np.ones(x.shape[:-2] + (2,), bool))
    _close(a, ref)
    _close(b, ref)


def test_degenerate_cases_as_before():
    x, P, w = _stack(2.0, 32)
    Pb = np.broadcast_to(P, x.shape[:-1] + (3, 4))
    w = w.copy()
    w[0, 0, 1:] = False                  # one view: NaN
    w[0, 1, :] = False                   # no view: NaN
    x = x.copy()
    x[0, 2, 0] = np.nan                  # a NaN observation: that view unused
    x[0, 3, :2] = np.nan                 # two NaN views of four: two left
    x[0, 4, 2:] = [np.inf, 0.0]
    out = geo._dlt(x, P, w)
    _close(out, svd_dlt(x, Pb, w))
    assert np.isnan(out[0, 0]).all() and np.isnan(out[0, 1]).all()
    assert np.isfinite(out[0, 2:5]).all()
    # a view that sees the point behind it: the DLT does not care, both agree
    Xb = np.array([0.0, 0.0, -3.0])
    Pc = P[:2]
    xb = np.stack([(Pc[v, :, :3] @ Xb + Pc[v, :, 3]) for v in range(2)])
    xb = xb[:, :2] / xb[:, 2:]
    got = geo._dlt(xb[None], Pc, np.ones((1, 2), bool))
    _close(got, svd_dlt(xb[None], Pc[None], np.ones((1, 2), bool)))
    # labels mark a joint behind a camera invalid, as before
    cams = {str(v): (Pc[v, :, :3], Pc[v, :, 3]) for v in range(2)}
    X, valid, _ = mv.multiview_labels({c: xb[None, int(c)][None] for c in cams}, cams,
                                      {c: np.ones((1, 1), bool) for c in cams}, FOCAL, 3.0)
    depth = [(cams[c][0] @ X[0, 0] + cams[c][1])[2] for c in cams]
    assert (min(depth) > 0) == bool(valid[0, 0])


def test_labels_single_pass_consensus_matches_pair_loop():
    x, P, w = _stack(5.0, 33, 0.1)
    focal = np.full(x.shape[-2], FOCAL)
    got = mv.consensus_views(x, P, w, focal, 15.0)
    # the previous loop over pairs, with the reference DLT
    Pb = np.broadcast_to(P, x.shape[:-1] + (3, 4))
    best = np.zeros(w.shape, bool)
    best_n = np.full(w.shape[:-1], -1)
    best_cost = np.full(w.shape[:-1], np.inf)
    for i, j in zip(*np.triu_indices(x.shape[-2], 1)):
        wij = np.zeros_like(w)
        wij[..., i], wij[..., j] = w[..., i], w[..., j]
        e = np.nan_to_num(mv._reprojection_px(svd_dlt(x, Pb, wij), x, P, w, focal), nan=np.inf)
        sup = w & (e <= 15.0)
        n = sup.sum(-1)
        cost = np.where(w, np.minimum(e, 15.0), 0).sum(-1)
        better = (wij.sum(-1) == 2) & ((n > best_n) | ((n == best_n) & (cost < best_cost)))
        best = np.where(better[..., None], sup, best)
        best_n = np.where(better, n, best_n)
        best_cost = np.where(better, cost, best_cost)
    np.testing.assert_array_equal(got, best)

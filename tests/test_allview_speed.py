"""The closed-form DLT (pipeline.geometry.triangulation._dlt) against the batched-SVD DLT it replaced."""
from __future__ import annotations

import numpy as np

from pipeline.geometry import triangulation as tri
from pipeline.geometry import multiview as mv
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
    _, x, P, w = mv.stack_views(xs, cams, masks)
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
        _close(tri._dlt(x, P, w), svd_dlt(x, Pb, w))        # all views, shared cameras
        _close(tri._dlt(x, Pb, w), svd_dlt(x, Pb, w))       # per-point cameras
        for i, j in zip(*np.triu_indices(x.shape[-2], 1)):  # every pair
            wij = np.zeros_like(w)
            wij[..., i], wij[..., j] = w[..., i], w[..., j]
            _close(tri._dlt(x, P, wij), svd_dlt(x, Pb, wij))


def test_two_view_dlt_matches_svd_with_per_frame_poses():
    x, P, w = _stack(3.0, 31)
    R, t = P[1, :, :3], P[1, :, 3]
    F = x.shape[0]
    Rf, tf = np.broadcast_to(R, (F, 3, 3)), np.broadcast_to(t, (F, 3))
    a = tri.triangulate_dlt(x[..., 0, :], x[..., 1, :], R, t)
    b = tri.triangulate_dlt(x[..., 0, :], x[..., 1, :], Rf, tf)
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
    out = tri._dlt(x, P, w)
    _close(out, svd_dlt(x, Pb, w))
    assert np.isnan(out[0, 0]).all() and np.isnan(out[0, 1]).all()
    assert np.isfinite(out[0, 2:5]).all()
    # a view that sees the point behind it: the DLT does not care, both agree
    Xb = np.array([0.0, 0.0, -3.0])
    Pc = P[:2]
    xb = np.stack([(Pc[v, :, :3] @ Xb + Pc[v, :, 3]) for v in range(2)])
    xb = xb[:, :2] / xb[:, 2:]
    got = tri._dlt(xb[None], Pc, np.ones((1, 2), bool))
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
        e = np.nan_to_num(mv.reprojection_px(svd_dlt(x, Pb, wij), x, P, w, focal), nan=np.inf)
        sup = w & (e <= 15.0)
        n = sup.sum(-1)
        cost = np.where(w, np.minimum(e, 15.0), 0).sum(-1)
        better = (wij.sum(-1) == 2) & ((n > best_n) | ((n == best_n) & (cost < best_cost)))
        best = np.where(better[..., None], sup, best)
        best_n = np.where(better, n, best_n)
        best_cost = np.where(better, cost, best_cost)
    np.testing.assert_array_equal(got, best)


def _refine_reference(X, x, P, w, iterations=3, huber_scale=None):
    """The previous refine_points ((..., V) layout, one pass over all points): reference."""
    R, t = P[:, :, :3], P[:, :, 3]
    ok = np.isfinite(X).all(-1) & (w.sum(-1) >= 2)
    X = np.where(ok[..., None], X, 0.0)
    xs = np.where(w[..., None], x, 0.0)
    w = w.astype(np.float64)
    for _ in range(iterations):
        Y = (X[..., None, :, None] * np.swapaxes(R, -1, -2)).sum(-2) + t
        z = np.where(np.abs(Y[..., 2]) > 1e-12, Y[..., 2], 1e-12)
        u = Y[..., :2] / z[..., None]
        r = u - xs
        wt = w
        if huber_scale is not None:
            e = np.sqrt(r[..., 0] ** 2 + r[..., 1] ** 2)
            wt = wt * np.where(e <= huber_scale, 1.0, huber_scale / np.maximum(e, 1e-300))
        s = np.sqrt(wt) / z
        J = np.stack([(R[:, 0] - u[..., 0, None] * R[:, 2]) * s[..., None],
                      (R[:, 1] - u[..., 1, None] * R[:, 2]) * s[..., None]], -2)  # (..., V, 2, 3)
        H = np.einsum("...vka,...vkb->...ab", J, J) + 1e-12 * np.eye(3)
        g = np.einsum("...vka,...vk->...a", J, r * np.sqrt(wt)[..., None])
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.linalg.solve(np.where(ok[..., None, None], H, np.eye(3)), g[..., None])
        X = X - np.where(ok[..., None], step[..., 0], 0.0)
    return np.where(ok[..., None], X, np.nan)


def test_blocked_refine_matches_reference():
    """refine_points in (V, N) blocks (more points than one block, Huber on and off, joints
    with < 2 views, non-finite starts) against the straightforward implementation."""
    x, P, w = _stack(2.0, 5, 0.1)
    reps = mv._BLOCK // x[..., 0, 0].size + 2
    x, w = np.tile(x, (reps, 1, 1, 1)), np.tile(w, (reps, 1, 1))
    w[0, :3, 1:] = False
    X0 = tri._dlt(x, P, w) + np.random.default_rng(1).normal(0, 0.01, x.shape[:-2] + (3,))
    X0[1, 0] = np.nan
    for huber in (None, 3.0 / FOCAL):
        got = mv.refine_points(X0, x, P, w, iterations=4, huber_scale=huber)
        _close(got, _refine_reference(X0, x, P, w, iterations=4, huber_scale=huber))
    assert np.isnan(got[0, :3]).all() and np.isnan(got[1, 0]).all()


def _labels_reference(x, P, w, thr):
    """multiview_labels written joint by joint with the SVD DLT and the pair loop (reference):
    all seen views where the all-view point reprojects within thr in every one of them, else the
    best two-view hypothesis's support; DLT + Gauss-Newton; drop the worst view beyond thr while
    three or more remain; valid: >= 2 views, in front of each, all within thr, a majority."""
    F, J, V, _ = x.shape
    focal = np.full(V, FOCAL)
    X = np.full((F, J, 3), np.nan)
    valid = np.zeros((F, J), bool)
    for f in range(F):
        for j in range(J):
            xj, seen = x[f, j][None], w[f, j].copy()
            n_seen = int(seen.sum())
            if n_seen < 2:
                continue
            e0 = mv.reprojection_px(svd_dlt(xj, P[None], seen[None]), xj, P, seen[None], focal)[0]
            use = seen.copy()
            if not (np.nan_to_num(e0, nan=np.inf) <= thr)[seen].all():
                best, best_n, best_cost = None, -1, np.inf
                for a, b in zip(*np.triu_indices(V, 1)):
                    if not (seen[a] and seen[b]):
                        continue
                    wab = np.zeros(V, bool)
                    wab[[a, b]] = True
                    e = np.nan_to_num(mv.reprojection_px(svd_dlt(xj, P[None], wab[None]), xj, P,
                                                         seen[None], focal)[0], nan=np.inf)
                    sup = seen & (e <= thr)
                    cost = np.where(seen, np.minimum(e, thr), 0).sum()
                    if sup.sum() > best_n or (sup.sum() == best_n and cost < best_cost):
                        best, best_n, best_cost = sup, int(sup.sum()), cost
                if best_n >= 2:
                    use = best
            while True:
                Xj = mv.refine_points(svd_dlt(xj, P[None], use[None]), xj, P, use[None])
                e = np.nan_to_num(mv.reprojection_px(Xj, xj, P, use[None], focal)[0], nan=np.inf)
                if e[use].max() <= thr or use.sum() < 3:
                    break
                use[np.argmax(np.where(use, e, -np.inf))] = False
            depth = Xj[0] @ P[:, 2, :3].T + P[:, 2, 3]
            X[f, j] = Xj[0]
            valid[f, j] = (use.sum() >= 2 and np.isfinite(Xj).all() and (depth[use] > 0).all()
                           and e[use].max() <= thr and 2 * use.sum() > n_seen)
    return X, valid


def test_labels_match_a_joint_by_joint_reference():
    """multiview_labels (the all-view check, the vectorised pair RANSAC on the other joints, the
    closed-form DLT, the batched drop loop) gives the points and validity of the straightforward
    per-joint procedure, with outliers, missing views, non-finite x and 3-5 views."""
    for noise, outl, thr in ((2.0, 0.0, 6.0), (5.0, 0.1, 15.0), (2.0, 0.3, 6.0)):
        x, P, w = _stack(noise, 11, outl)
        x, w = x[:6], w[:6]
        rng = np.random.default_rng(2)
        w = w & (rng.random(w.shape) > 0.15)
        x = x.copy()
        x[0, 0, 0] = np.nan
        w = w & np.isfinite(x).all(-1)
        for V in range(3, x.shape[-2] + 1):
            cams = {str(v): (P[v, :, :3], P[v, :, 3]) for v in range(V)}
            got, gvalid, _ = mv.multiview_labels({c: x[..., int(c), :] for c in cams}, cams,
                                                 {c: w[..., int(c)] for c in cams}, FOCAL, thr)
            ref, rvalid = _labels_reference(x[..., :V, :], P[:V], w[..., :V], thr)
            np.testing.assert_array_equal(gvalid, rvalid)
            assert gvalid.mean() > 0.5
            _close(got, ref)


def test_consensus_keeps_the_views_of_the_best_pair_hypothesis():
    """consensus_views on a joint with one outlier view among four keeps the other three; with
    two outliers a pair of agreeing views remains."""
    x, P, w = _stack(1.0, 5)
    x = x[:1, :4].copy()
    w = w[:1, :4]
    x[0, 0, 1] += 60.0 / FOCAL
    x[0, 1, 2] += 60.0 / FOCAL
    x[0, 1, 3] -= 60.0 / FOCAL
    got = mv.consensus_views(x, P, w, np.full(4, FOCAL), 5.0)
    np.testing.assert_array_equal(got[0, 0], [True, False, True, True])
    np.testing.assert_array_equal(got[0, 1], [True, True, False, False])
    np.testing.assert_array_equal(got[0, 2:], w[0, 2:])


def test_blockdiag_per_view_normal_matches_per_view_products():
    x, P, w = _stack(2.0, 3, 0.1)
    wf = w.astype(np.float64)
    got = tri.dlt_normal(x, P, wf, per_view=True)
    for v in range(x.shape[-2]):
        ref = tri.dlt_normal(x[..., v:v + 1, :], P[v:v + 1], wf[..., v:v + 1])
        np.testing.assert_allclose(got[..., v, :], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.sum(-2), tri.dlt_normal(x, P, wf), rtol=1e-10, atol=1e-10)


def test_freezing_converged_points_matches_full_iteration(monkeypatch):
    """solve_dlt_normal iterating only the unconverged points after a few steps gives the same
    points and certification as iterating all of them (noisy, outlier and degenerate inputs)."""
    x, P, w = _stack(5.0, 21, 0.2)
    wf = w.astype(np.float64)
    vn = tri.dlt_normal(x, P, wf, per_view=True)
    Ms = [vn.sum(-2), vn[..., 0, :] + vn[..., 1, :], vn[..., 1, :] + vn[..., 3, :],
          np.zeros((5, 10)), np.full((2, 10), np.nan)]
    got = [tri.solve_dlt_normal(M) for M in Ms]
    assert got[0][1].all() and not got[3][1].any() and not got[4][1].any()
    monkeypatch.setattr(tri, "_FREEZE_AFTER", 10 ** 6)
    for M, (X, ok) in zip(Ms, got):
        Xr, okr = tri.solve_dlt_normal(M)
        np.testing.assert_array_equal(ok, okr)
        if ok.any():
            _close(np.where(ok[..., None], X, np.nan), np.where(okr[..., None], Xr, np.nan))


def test_bracketed_solve_certifies_outlier_hypotheses_as_the_svd():
    """Two-view hypotheses with an outlier view (the DLT point's eigenvalue close to C's, where
    the plain Rayleigh/Newton iteration overshoots past the pole): the bracketed iteration
    certifies them and they equal the SVD's points, so the SVD fallback is (nearly) never run."""
    x, P, w = _stack(5.0, 22, 0.3)
    Pb = np.broadcast_to(P, x.shape[:-1] + (3, 4))
    wf = w.astype(np.float64)
    vn = tri.dlt_normal(x, P, wf, per_view=True)
    certified = total = 0
    for i, j in zip(*np.triu_indices(x.shape[-2], 1)):
        M = vn[..., i, :] + vn[..., j, :]
        wij = np.zeros_like(wf)
        wij[..., i], wij[..., j] = wf[..., i], wf[..., j]
        enough = (wij > 0).sum(-1) >= 2
        X, ok = tri.solve_dlt_normal(M)
        Mc = np.moveaxis(M, -1, 0).reshape(10, -1)
        Xb, okb = tri._bracketed_solve(Mc, 1e-10)
        certified += int((ok & enough).sum())
        total += int(enough.sum())
        ref = svd_dlt(x, Pb, wij)
        sel = ok & enough
        _close(np.where(sel[..., None], X, np.nan), np.where(sel[..., None], ref, np.nan))
        # the bracketed iteration on its own (from lambda = 0) reaches the same points
        okb = okb.reshape(ok.shape) & enough
        _close(np.where(okb[..., None], Xb.T.reshape(X.shape), np.nan),
               np.where(okb[..., None], ref, np.nan))
        assert okb.mean() > 0.99 * enough.mean()
    assert certified >= 0.999 * total


def test_bracketed_solve_converges_in_few_steps_on_far_outliers(monkeypatch):
    """Hypotheses of a view pair with an outlier up to 500 px off that the plain iteration
    leaves uncertified: the one-pole step from the left of the root certifies 99 % within 10
    steps and all within 20 (Newton with bisection: ~70 % and ~99 %; it needed up to 60)."""
    monkeypatch.setattr(tri, "_bracket_uncertified", lambda *a: None)
    rig, _, xs, masks = _views(40, 5.0, 5)
    _, x, P, w = mv.stack_views(xs, _truth(rig, next(iter(rig))), masks)
    rng = np.random.default_rng(5)
    x = x + (rng.random(w.shape) < 0.3)[..., None] * rng.uniform(-500, 500, x.shape) / FOCAL
    vn = tri.dlt_normal(x, P, w.astype(np.float64), per_view=True)
    left = []
    for i, j in zip(*np.triu_indices(x.shape[-2], 1)):
        M = vn[..., i, :] + vn[..., j, :]
        left.append(M[~tri.solve_dlt_normal(M)[1]])
    Mc = np.ascontiguousarray(np.concatenate(left).T)
    assert Mc.shape[1] > 100
    assert tri._bracketed_solve(Mc, 1e-10, iterations=10)[1].mean() >= 0.99
    assert tri._bracketed_solve(Mc, 1e-10, iterations=20)[1].all()


def test_least_eigenvalue_of_symmetric_3x3_in_closed_form():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(500, 3, 3))
    C = np.concatenate([A @ np.swapaxes(A, 1, 2), -A @ np.swapaxes(A, 1, 2),
                        np.eye(3)[None] * 2.5, np.diag([1.0, 1.0, 4.0])[None]])
    got = tri.sym3_least_eigenvalue(*(C[:, i, j] for i, j in ((0, 0), (0, 1), (0, 2), (1, 1),
                                                               (1, 2), (2, 2))))
    np.testing.assert_allclose(got, np.linalg.eigvalsh(C)[:, 0], atol=1e-12)

"""Several people per frame: who is who across views, and over time.

Pure array functions on a known camera rig (``pipeline.geometry.rig.CameraRig``: the manifest's
extrinsics, or a rig self-calibrated by RANSAC over people, see
``pipeline.people.tracks``); no files.

1. :func:`epipolar_costs`: for every frame, every pair of views and every pair of people in
   them, the mean symmetric epipolar distance of the joints both detections hold, in person
   sizes (each view's distance divided by the person's RMS joint spread in that view,
   :func:`person_sizes`: the thresholds hold for any image size), each joint's distance
   clipped at ``2 * gate``, so one wrong joint does not veto a match. One broadcast over
   frames x views x views x people x people x joints: no Python loop over joints, people or
   frames.
2. :func:`cluster_frame`: each pair of views is solved as an assignment problem
   (``scipy.optimize.linear_sum_assignment``); the matches under ``gate`` are merged
   greedily, cheapest first, into clusters holding at most one person per view, a merge
   allowed only while the mean cost of every cross-view pair of the merged cluster stays under
   the gate (so A-B and B-C do not pull in an inconsistent C-A). A cluster of one view is a
   person seen by one camera only.
3. :func:`track`: clusters seen by two or more views are triangulated with the rig; their
   centroids are linked frame to frame (Hungarian on the distance to each track's
   constant-velocity prediction, gated at ``track_gate`` person sizes); unmatched clusters open
   new tracks, tracks unseen for more than ``max_gap`` frames end.

Coordinates: undistorted normalised image coordinates (``pipeline.geometry.cameras.pixels_to_normalized``),
rig conventions of ``pipeline.geometry.rig`` (X_cam = R X + t).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.geometry import epipolar as epi
from pipeline.geometry.rig import CameraRig


@dataclass(frozen=True)
class AssociationSettings:
    """Knobs of the association (defaults suit 1-10 people, 2-16 views, any image size).

    Attributes:
        gate: a cross-view match needs a mean symmetric epipolar distance below this, in
            person sizes (:func:`person_sizes`, the RMS distance of a person's 17 joints from
            their centroid in the image: about 0.3 of a standing person's height, 100 px for
            a person 340 px tall). 0.25 is 20-40 px for people 5 m from a 1000 px focal
            length, 7 px on the rendered multi-person set's 250 px images.
        calibration_gate: the self-calibration's RANSAC over people
            (``pipeline.people.tracks.candidate_pairs``) scores a hypothesis by the candidate matches
            closer than this to their epipolar lines (person sizes); tighter than ``gate``,
            since a wrong geometry still puts other people near their lines.
        hypotheses: at most this many hypotheses of the RANSAC over people per camera pair
            (fewer when the best one's support makes more useless, as RANSAC's stopping rule
            says).
        min_joints: joints both detections hold, needed to compare two people.
        max_people: a view holding more people in one frame is not associated in that frame
            (recorded with the reason).
        track_gate: largest distance, in person sizes (RMS joint distance from the centroid),
            between a track's predicted position and a cluster it takes.
        max_gap: frames a track may be unseen before it ends (a later cluster opens a new one).
        conf_threshold: joints under it are not compared.
        frame_chunk_elements: the cost tensor is built for this many elements at a time
            (memory bound; the result does not depend on it).
    """

    gate: float = 0.25
    calibration_gate: float = 0.12
    hypotheses: int = 500
    min_joints: int = 4
    max_people: int = 10
    track_gate: float = 1.5
    max_gap: int = 5
    conf_threshold: float = 0.3
    frame_chunk_elements: int = 20_000_000

    def __post_init__(self) -> None:
        if not (self.gate > 0 and self.calibration_gate > 0 and self.track_gate > 0):
            raise ValueError(f"association gates must be > 0 (gate {self.gate}, calibration_gate "
                             f"{self.calibration_gate}, track_gate {self.track_gate})")
        if self.max_people < 1 or self.min_joints < 1 or self.max_gap < 0 \
                or self.hypotheses < 1:
            raise ValueError(f"association settings out of range: max_people {self.max_people} "
                             f"and min_joints {self.min_joints} and hypotheses "
                             f"{self.hypotheses} must be >= 1, max_gap {self.max_gap} >= 0")


def essential_matrices(rig: CameraRig, cameras: list[str]) -> np.ndarray:
    """(C, C, 3, 3) E[a, b] with x_b^T E[a, b] x_a = 0 (normalised coordinates); 0 on the
    diagonal."""
    C = len(cameras)
    E = np.zeros((C, C, 3, 3))
    for i, a in enumerate(cameras):
        for j, b in enumerate(cameras):
            if i != j:
                R, t = rig.relative(a, b)
                E[i, j] = epi.essential_from_pose(R, t / max(np.linalg.norm(t), 1e-12))
    return E


def person_sizes(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(...,) size of each person in its image: the RMS distance of its masked joints
    (x: (..., J, 2), mask: (..., J)) from their centroid, in x's units (0 without joints).

    Every threshold of the association is in these units, so it holds for any image size,
    focal length and distance to the people: a 2D detector's error grows with the person's
    size in the image (it works on a crop of the person), not with the frame's size."""
    n = np.maximum(mask.sum(-1), 1)[..., None]
    c = np.where(mask[..., None], x, 0.0).sum(-2) / n
    d2 = np.where(mask, ((x - c[..., None, :]) ** 2).sum(-1), 0.0).sum(-1) / n[..., 0]
    return np.sqrt(d2)


def joint_distances(xa: np.ndarray, xb: np.ndarray, E: np.ndarray, size_a: np.ndarray,
                    size_b: np.ndarray) -> np.ndarray:
    """Symmetric epipolar distance of joints, in person sizes.

    Args:
        xa, xb: (..., J, 2) normalised joints of views a and b (broadcastable).
        E: (..., 3, 3) essential matrices with x_b^T E x_a = 0 (leading axes broadcast with
            xa's and xb's leading axes).
        size_a, size_b: (...,) each detection's :func:`person_sizes`.
    Returns:
        (..., J): half the sum of b's joint's distance to the epipolar line of a's joint
        (divided by the person's size in b) and the converse; NaN or inf where a line
        is undefined or a size is 0.
    """
    e = E[..., None, :, :]
    u, v, ub, vb = xa[..., 0], xa[..., 1], xb[..., 0], xb[..., 1]
    # Epipolar line of a's joint in b (l = E x_a) and of b's joint in a (m = E^T x_b),
    # component by component: plain broadcasts, no loop and no tiny matrix products.
    l0 = e[..., 0, 0] * u + e[..., 0, 1] * v + e[..., 0, 2]
    l1 = e[..., 1, 0] * u + e[..., 1, 1] * v + e[..., 1, 2]
    l2 = e[..., 2, 0] * u + e[..., 2, 1] * v + e[..., 2, 2]
    m0 = e[..., 0, 0] * ub + e[..., 1, 0] * vb + e[..., 2, 0]
    m1 = e[..., 0, 1] * ub + e[..., 1, 1] * vb + e[..., 2, 1]
    num = np.abs(ub * l0 + vb * l1 + l2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * num * (1.0 / (np.hypot(l0, l1) * size_b[..., None])
                            + 1.0 / (np.hypot(m0, m1) * size_a[..., None]))


def mean_distances(d: np.ndarray, both: np.ndarray, s: "AssociationSettings") -> np.ndarray:
    """(...,) mean over joints of :func:`joint_distances` ``d`` (..., J) where ``both``,
    each joint clipped at ``2 * s.gate`` (a non-finite one counts as the worst), so one wrong
    joint does not veto a match; inf where fewer than ``s.min_joints`` joints are shared."""
    d = np.where(both, np.minimum(np.nan_to_num(d, nan=np.inf), 2 * s.gate), 0.0)
    n = both.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= s.min_joints, d.sum(-1) / n, np.inf)


def epipolar_costs(x: np.ndarray, mask: np.ndarray, E: np.ndarray,
                   s: AssociationSettings) -> np.ndarray:
    """Cross-view matching costs.

    Args:
        x: (F, C, P, J, 2) normalised joints, people padded to P (any value where masked).
        mask: (F, C, P, J) bool, joints to compare.
        E: (C, C, 3, 3) of :func:`essential_matrices`.
    Returns:
        (F, C, C, P, P) cost[f, a, b, p, q]: mean clipped symmetric epipolar distance, in
        person sizes (:func:`person_sizes`, :func:`joint_distances`), between person p of
        view a and person q of view b; inf on the diagonal a == b and where fewer than
        ``min_joints`` joints are shared.
    """
    F, C, P, J = mask.shape
    out = np.empty((F, C, C, P, P))
    step = max(1, s.frame_chunk_elements // max(1, C * C * P * P * J))
    for f0 in range(0, F, step):
        sl = slice(f0, f0 + step)
        out[sl] = _costs(x[sl], mask[sl], E, s)
    return out


def _costs(x: np.ndarray, mask: np.ndarray, E: np.ndarray, s: AssociationSettings
           ) -> np.ndarray:
    F, C, P, J = mask.shape
    ia, ib = np.triu_indices(C, 1)                  # each pair of views once (a < b)
    x0 = np.where(mask[..., None], x, 0.0)                       # (F, C, P, J, 2)
    size = person_sizes(x0, mask)                                # (F, C, P)
    d = joint_distances(x0[:, ia, :, None], x0[:, ib, None, :],  # (F, K, P, Q, J)
                        E[ia, ib][None, :, None, None], size[:, ia, :, None],
                        size[:, ib, None, :])
    k = mean_distances(d, mask[:, ia, :, None, :] & mask[:, ib, None, :, :], s)
    cost = np.full((F, C, C, P, P), np.inf)
    cost[:, ia, ib] = k
    cost[:, ib, ia] = np.swapaxes(k, -1, -2)
    return cost


def cluster_frame(cost: np.ndarray, present: np.ndarray, gate: float) -> np.ndarray:
    """One frame's people grouped across views.

    Args:
        cost: (C, C, P, P) of :func:`epipolar_costs` for this frame.
        present: (C, P) bool, slots holding a person.
        gate: the largest mean cost of a match (person sizes).
    Returns:
        (C, P) cluster index per slot (0, 1, ... in order of first slot), -1 where absent.
    """
    C, P = present.shape
    owner = np.arange(C * P)                      # node (view * P + slot) -> its cluster
    members = {int(i): [int(i)] for i in np.flatnonzero(present.reshape(-1))}
    views = {i: 1 << (i // P) for i in members}   # bit set of the cluster's views
    for _, a, p, b, q in sorted(_pair_matches(cost, present, gate)):
        ra, rb = int(owner[a * P + p]), int(owner[b * P + q])
        if ra == rb or views[ra] & views[rb]:    # one person per view
            continue
        ma, mb = np.array(members[ra]), np.array(members[rb])
        cross = cost[(ma // P)[:, None], (mb // P)[None, :], (ma % P)[:, None], (mb % P)[None, :]]
        fin = np.isfinite(cross)
        if fin.any() and cross[fin].mean() < gate:
            members[ra] += members.pop(rb)
            views[ra] |= views.pop(rb)
            owner[mb] = ra
    out = np.full((C, P), -1, np.int64)
    ids: dict[int, int] = {}
    for c, p in zip(*np.nonzero(present)):
        out[c, p] = ids.setdefault(int(owner[c * P + p]), len(ids))
    return out


def _pair_matches(cost: np.ndarray, present: np.ndarray, gate: float
                  ) -> list[tuple[float, int, int, int, int]]:
    """(cost, a, p, b, q) of every pair of views' optimal assignment under the gate."""
    C = present.shape[0]
    edges = []
    for a in range(C):
        pa = np.flatnonzero(present[a])
        for b in range(a + 1, C):
            pb = np.flatnonzero(present[b])
            if not len(pa) or not len(pb):
                continue
            sub = cost[a, b][np.ix_(pa, pb)]
            r, c = linear_sum_assignment(np.where(np.isfinite(sub), sub, 1e12))
            ok = sub[r, c] < gate
            edges += [(float(sub[i, j]), a, int(pa[i]), b, int(pb[j]))
                      for i, j in zip(r[ok], c[ok])]
    return edges


def centroids(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, J, 3) points -> (K, 3) centroid of the finite joints and (K,) size: the RMS distance
    of those joints from it (NaN where no joint is finite)."""
    ok = np.isfinite(X).all(-1)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(ok[..., None], X, 0.0).sum(-2) / n[:, None]
        d2 = np.where(ok, ((X - c[:, None]) ** 2).sum(-1), 0.0).sum(-1) / n
    c[n == 0] = np.nan
    return c, np.sqrt(d2)


@dataclass
class Tracks:
    """Tracks over a sequence: ``ids[f]`` (K_f,) track id of each cluster of frame f (-1 for a
    cluster that cannot be placed in 3D, e.g. one view only); ``count`` tracks in all."""

    ids: list[np.ndarray]
    count: int


def track(points: list[np.ndarray], size: float, s: AssociationSettings) -> Tracks:
    """Link clusters over frames by 3D position continuity.

    Args:
        points: per frame, (K_f, 3) cluster centroids in the rig's frame (NaN: not placeable).
        size: the people's typical size in the rig's units (gate = ``track_gate * size``).
    """
    gate = s.track_gate * size
    pos: dict[int, np.ndarray] = {}   # track -> last position
    vel: dict[int, np.ndarray] = {}
    last: dict[int, int] = {}
    ids, count = [], 0
    for f, P in enumerate(points):
        out = np.full(len(P), -1, np.int64)
        live = [t for t in pos if f - last[t] <= s.max_gap + 1]
        ok = np.flatnonzero(np.isfinite(P).all(-1))
        if live and len(ok):
            pred = np.stack([pos[t] + vel[t] * (f - last[t]) for t in live])
            d = np.linalg.norm(P[ok][:, None] - pred[None], axis=-1)
            r, c = linear_sum_assignment(np.where(d < gate, d, 1e12))
            for i, j in zip(r, c):
                if d[i, j] < gate:
                    out[ok[i]] = live[j]
        for k in ok:
            if out[k] < 0:
                out[k], count = count, count + 1
            t = int(out[k])
            if t in pos and f > last[t]:
                vel[t] = (P[k] - pos[t]) / (f - last[t])
            vel.setdefault(t, np.zeros(3))
            pos[t], last[t] = P[k], f
        ids.append(out)
    return Tracks(ids, count)


def identity_mapping(predicted: np.ndarray, truth: np.ndarray) -> dict[int, int]:
    """Each predicted identity mapped to a true one, one-to-one, maximising the detections on
    which they agree (``linear_sum_assignment``); predictions of -1 (none) take no part.
    predicted, truth: (N,) integer ids of the same detections."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    keep = predicted >= 0
    pu, pi = np.unique(predicted[keep], return_inverse=True)
    tu, ti = np.unique(truth[keep], return_inverse=True)
    agree = np.zeros((len(pu), len(tu)))
    np.add.at(agree, (pi, ti), 1)
    r, c = linear_sum_assignment(-agree)
    return {int(pu[i]): int(tu[j]) for i, j in zip(r, c)}


def identity_accuracy(predicted: np.ndarray, truth: np.ndarray,
                      mapping: dict[int, int] | None = None) -> float:
    """Share of detections whose predicted identity maps to their true one
    (``mapping``, default :func:`identity_mapping` of these detections); a detection without a
    prediction (-1) counts as wrong. predicted, truth: (N,) integer ids."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if not len(truth):
        return float("nan")
    mapping = identity_mapping(predicted, truth) if mapping is None else mapping
    mapped = np.array([mapping.get(int(p), np.iinfo(np.int64).min) for p in predicted])
    return float((mapped == truth).mean())


@dataclass
class CameraPeople:
    """One camera's detections of one sequence, one row per (frame, person).

    Attributes:
        frame: (M,) source frame index. x: (M, J, 2) normalised joints. mask: (M, J) usable.
    """

    frame: np.ndarray
    x: np.ndarray
    mask: np.ndarray


@dataclass
class SequenceAssociation:
    """The association of one sequence: per camera, each row's track id (-1: none), the
    reason it has none ("" where it has one, or where the row held no usable joint) and
    whether it was left out for a crowded view (more than ``max_people``)."""

    track: dict[str, np.ndarray]
    reason: dict[str, np.ndarray]
    crowded: dict[str, np.ndarray]
    count: int


def _slots(frame: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's frame position on ``frames`` and its rank among the rows of its frame."""
    pos = np.searchsorted(frames, frame)
    order = np.argsort(pos, kind="stable")
    first = np.searchsorted(pos[order], pos[order])
    rank = np.empty(len(pos), np.int64)
    rank[order] = np.arange(len(pos)) - first
    return pos, rank


def _padded(people: dict[str, CameraPeople], frames: np.ndarray, s: AssociationSettings
            ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple], dict[str, np.ndarray]]:
    """(F, C, P, J, 2) joints and (F, C, P, J) masks of every camera's people (a view holding
    more than ``max_people`` in a frame is left out of that frame, with the reason)."""
    cams = list(people)
    J = next(iter(people.values())).x.shape[1]
    placed, reason = {}, {}
    for c, cp in people.items():
        pos, rank = _slots(cp.frame, frames)
        counts = np.bincount(pos, minlength=len(frames))
        crowded = counts[pos] > s.max_people
        reason[c] = np.where(crowded, np.char.add(np.char.add(
            counts[pos].astype(str), f" people in camera {c}, more than max_people "),
            str(s.max_people)), "").astype(object)
        placed[c] = (pos, rank, ~crowded)
    P = max([int(r[k].max()) + 1 for _, r, k in placed.values() if k.any()] or [1])
    X = np.zeros((len(frames), len(cams), P, J, 2))
    M = np.zeros((len(frames), len(cams), P, J), bool)
    for i, c in enumerate(cams):
        pos, rank, keep = placed[c]
        X[pos[keep], i, rank[keep]] = people[c].x[keep]
        M[pos[keep], i, rank[keep]] = people[c].mask[keep]
    return X, M, placed, reason


@dataclass
class FrameClusters:
    """One sequence's people grouped across views, frame by frame (:func:`cluster_sequence`).

    Attributes:
        cameras: the views, in the order of the arrays. frames: (F,) source frames.
        X: (F, C, P, J, 2) normalised joints, people padded to P; M: (F, C, P, J) masks.
        placed: camera -> (frame position, slot, kept) of each of its rows.
        reason: camera -> (M,) why a row was left out ("" where kept).
        present: (F, C, P) slots compared. clusters: per frame, (C, P) cluster index.
        n_views: per frame, (K_f,) views in each cluster.
    """

    cameras: list[str]
    frames: np.ndarray
    X: np.ndarray
    M: np.ndarray
    placed: dict[str, tuple]
    reason: dict[str, np.ndarray]
    present: np.ndarray
    clusters: list[np.ndarray]
    n_views: list[np.ndarray]


def cluster_sequence(people: dict[str, CameraPeople], E: np.ndarray,
                     s: AssociationSettings) -> FrameClusters:
    """Every frame's people grouped across views (``E``: (C, C, 3, 3) over ``people``'s
    cameras, from a rig (:func:`essential_matrices`) or from pair fits
    (:func:`pair_essentials`))."""
    cams = list(people)
    frames = np.unique(np.concatenate([p.frame for p in people.values()]))
    X, M, placed, reason = _padded(people, frames, s)
    present = M.sum(-1) >= s.min_joints
    cost = epipolar_costs(X, M, E, s)
    clusters = [cluster_frame(cost[f], present[f], s.gate) for f in range(len(frames))]
    n_views = [np.bincount(k[k >= 0], minlength=int(k.max()) + 1) for k in clusters]
    return FrameClusters(cams, frames, X, M, placed, reason, present, clusters, n_views)


def pair_essentials(pairs: list[epi.PairGeometry], cameras: list[str]) -> np.ndarray:
    """(C, C, 3, 3) essential matrices of pair fits (E[b, a] = E[a, b]^T; 0 where a pair is
    missing or not ok: its matches then cost the most)."""
    idx = {c: i for i, c in enumerate(cameras)}
    E = np.zeros((len(cameras), len(cameras), 3, 3))
    for g in pairs:
        if g.ok and g.cam_a in idx and g.cam_b in idx:
            e = epi.essential_from_pose(g.R, g.t / max(np.linalg.norm(g.t), 1e-12))
            E[idx[g.cam_a], idx[g.cam_b]], E[idx[g.cam_b], idx[g.cam_a]] = e, e.T
    return E


def _gather(fc: FrameClusters) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                        np.ndarray, np.ndarray]:
    """Every cluster of every frame as one row: camera -> (K, J, 2) joints and (K, J) masks
    (False where the cluster lacks the view), (K,) seen by two views or more, and the
    (F + 1,) row offsets of the frames."""
    offset = np.concatenate([[0], np.cumsum([len(n) for n in fc.n_views])]).astype(int)
    F, C, P, J = fc.M.shape
    x = {c: np.zeros((offset[-1], J, 2)) for c in fc.cameras}
    m = {c: np.zeros((offset[-1], J), bool) for c in fc.cameras}
    for f in range(F):
        for i, c in enumerate(fc.cameras):
            slots = np.flatnonzero(fc.clusters[f][i] >= 0)
            rows = offset[f] + fc.clusters[f][i, slots]
            x[c][rows], m[c][rows] = fc.X[f, i, slots], fc.M[f, i, slots]
    multi = np.concatenate(fc.n_views) >= 2 if offset[-1] else np.zeros(0, bool)
    return x, m, multi, offset


def cluster_views(fc: FrameClusters) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One row per cluster seen by two views or more, over all frames: camera -> (K, J, 2)
    normalised joints and (K, J) masks: the correspondences of one person at a time, as a
    self-calibration needs them."""
    x, m, multi, _ = _gather(fc)
    return {c: v[multi] for c, v in x.items()}, {c: v[multi] for c, v in m.items()}


def associate_sequence(rig: CameraRig, people: dict[str, CameraPeople],
                       s: AssociationSettings) -> SequenceAssociation:
    """Associate one sequence's people across its views (cameras of ``rig``) and over time."""
    cams = [c for c in people if c in rig]
    people = {c: people[c] for c in cams}
    fc = cluster_sequence(people, essential_matrices(rig, cams), s)
    frames, X, M, placed, reason = fc.frames, fc.X, fc.M, fc.placed, fc.reason
    present, clusters, n_views = fc.present, fc.clusters, fc.n_views
    pts = _all_cluster_points(rig, fc)
    C, sizes = zip(*[centroids(p) for p in pts]) if pts else ((), ())
    size = np.nanmedian(np.concatenate(sizes)) if len(sizes) and \
        np.isfinite(np.concatenate(sizes)).any() else np.nan
    tr = track(list(C), float(size), s)
    out_track, out_reason, crowded = {}, {}, {}
    for i, c in enumerate(cams):
        pos, rank, keep = placed[c]
        t = np.full(len(pos), -1, np.int64)
        rsn = reason[c].copy()
        few = keep & people[c].mask.any(-1) & (people[c].mask.sum(-1) < s.min_joints)
        rsn[few] = f"fewer than {s.min_joints} usable joints: not associated"
        for r in np.flatnonzero(keep & present[pos, i, np.minimum(rank, M.shape[2] - 1)]):
            k = clusters[pos[r]][i, rank[r]]
            t[r] = tr.ids[pos[r]][k]
            if n_views[pos[r]][k] < 2:
                rsn[r] = f"person seen by camera {c} only in frame {int(frames[pos[r]])}"
            elif t[r] < 0:
                rsn[r] = f"person of camera {c} frame {int(frames[pos[r]])} not placed in 3D"
        out_track[c], out_reason[c], crowded[c] = t, rsn, ~keep
    return SequenceAssociation(out_track, out_reason, crowded, tr.count)


def _all_cluster_points(rig: CameraRig, fc: FrameClusters) -> list[np.ndarray]:
    """Per frame, (K_f, J, 3) its clusters triangulated (NaN for one-view clusters): every
    frame's clusters in one batched triangulation."""
    x, m, multi, offset = _gather(fc)
    J = fc.M.shape[-1]
    if not offset[-1]:
        return [np.zeros((0, J, 3)) for _ in fc.frames]
    pts = rig.subset(fc.cameras).triangulate(x, {c: v & multi[:, None] for c, v in m.items()})
    return [pts[offset[f]:offset[f + 1]] for f in range(len(fc.frames))]

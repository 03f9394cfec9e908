"""Geometry modes of stage 1: how a subject's 2D joints become cameras and pseudo-3D labels.

A mode is a class in the :data:`GEOMETRY_MODES` registry. It fits once per subject
(cameras are static per subject) and labels each sequence with that fit:

    mode.fit(views, settings)                   -> SubjectGeometry   (views pooled over sequences)
    mode.shards(geometry)                       -> [(cam_a, cam_b), ...]  one shard each
    mode.label(views, geometry, settings, shard) -> [CameraLabels]   (views of one sequence)

and declares its facts: ``metric`` (labels in mm from known extrinsics, else up to scale and
normalised to the canonical skeleton), ``per_frame_scale`` (one scale per frame rather than per
sequence and pair), ``needs_extrinsics``, ``in_job`` (offered by ``make pseudolabels``; the
others exist for the benchmarks) and ``all_view`` (labels triangulated with the rig of
``cameras.json``: its scale is the labels' own). The job (``pipeline/job/tasks.py``), the benchmarks
(``tools/``), the overlay, the report and the command line all read this registry, so a bench
measures exactly the code path and settings that users run.

Adding a mode: write a class with the attributes and the three methods above (subclass
:class:`PairMode` for a two-view mode: it only chooses each pair's pose), register it in
:data:`GEOMETRY_MODES`, and add a row to the README's table.

Coordinates: ``Views.x`` are undistorted *normalised* coordinates (z = 1 plane);
conventions of :mod:`pipeline.geometry.epipolar` (``X_b = R X_a + t``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from pipeline.geometry import epipolar as epi

from pipeline.geometry import loops
from pipeline.geometry import noise

from pipeline.geometry import triangulation as tri
from pipeline.geometry.cameras import relative_pose
from pipeline.joints import H36M17, JointSet
from pipeline.geometry.multiview import fuse_pairs_vector_median
from pipeline.geometry.hypotheses import fit_pair_robust
from pipeline.geometry.rig import CameraRig

Pose = tuple[np.ndarray, np.ndarray]
PAIR_CHOICES = ("nearest", "all")
"""Which camera pairs a pair mode labels: each camera with its nearest partner among the most
certain ones (:func:`choose_pairs`), or every pair whose geometry is usable."""
PAIR_TOL_DEG = 1.0
"""Pair choice: a camera's partners whose uncertainty (:func:`pair_uncertainty_deg`) is within
this of its most certain partner's count as equally certain; the nearest of them is chosen."""
ALL_VIEWS = ("all", "all")
"""The shard key of an all-view mode (one shard per sequence, every camera labelled)."""


@dataclass(frozen=True)
class GeometrySettings:
    """The knobs every mode reads (from the job's configuration, or a benchmark's).

    Attributes:
        conf_threshold: joints below it in a view are neither fitted nor labelled.
        ransac_threshold_px: RANSAC inlier threshold in pixels (converted with the focal
            length); None: each pair's from the measured noise (:mod:`pipeline.geometry.noise`).
        reproj_threshold_px: joints reprojecting worse than this are not labels; None: each
            camera's from its measured noise.
        pairs: one of :data:`PAIR_CHOICES`.
        seed: RANSAC / subsampling seed.
        ba_f_scale_px: robust-loss scale of the bundle adjustment (pixels).
        joint_set: the joints' names and bones (scale normalisation).
    """

    conf_threshold: float = 0.3
    ransac_threshold_px: float | None = None
    reproj_threshold_px: float | None = None
    pairs: str = "nearest"
    seed: int = 0
    ba_f_scale_px: float = 3.0
    joint_set: JointSet = H36M17

    def __post_init__(self) -> None:
        if self.pairs not in PAIR_CHOICES:
            raise ValueError(f"pairs {self.pairs!r}: choose one of {PAIR_CHOICES}")


@dataclass
class Views:
    """2D joints of one subject's cameras on a common frame axis (one sequence, or several
    sequences concatenated for a fit).

    Attributes:
        x: camera -> (F, J, 2) undistorted normalised coordinates (NaN where missing).
        conf: camera -> (F, J) detector confidence (0 where missing).
        focal: camera -> focal length in pixels (converts pixel thresholds).
        known: camera -> (R, t) world->camera extrinsics in mm, where the manifest has them.
        crowd: where several people share the frames, every associated person's joints of
            each frame (joint axes side by side, same frame axis): the per-frame modes fit
            each frame's pose on them (:meth:`pose_points`); None for one person.
        group: (F,) where several people's or sequences' views are concatenated on one frame
            axis (``pipeline.job.tasks.concat_views``), the index of the part each row comes
            from: the bundle adjustment balances its frames over them
            (``pipeline.geometry.bundle.sample_frames``); None: one part.
    """

    x: dict[str, np.ndarray]
    conf: dict[str, np.ndarray]
    focal: dict[str, float]
    known: dict[str, Pose] = field(default_factory=dict)
    crowd: "Views | None" = None
    group: np.ndarray | None = None

    @property
    def cameras(self) -> list[str]:
        return list(self.x)

    def usable(self, cam: str, conf_threshold: float) -> np.ndarray:
        """(F, J) joints confident and finite in ``cam``."""
        return (self.conf[cam] >= conf_threshold) & np.isfinite(self.x[cam]).all(-1)

    def masks(self, conf_threshold: float) -> dict[str, np.ndarray]:
        return {c: self.usable(c, conf_threshold) for c in self.x}

    def pose_points(self, a: str, b: str, frames: np.ndarray, conf_threshold: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """xa, xb (len(frames), J', 2) and their joint mask: the correspondences a per-frame
        pose of pair (a, b) is fitted on (every person's joints of the frame, if ``crowd``)."""
        v = self.crowd if self.crowd is not None else self
        mask = v.usable(a, conf_threshold) & v.usable(b, conf_threshold)
        return v.x[a][frames], v.x[b][frames], mask[frames]

    def known_relative(self, a: str, b: str) -> Pose | None:
        """Metric pose of ``b`` relative to ``a`` from the extrinsics, or None."""
        if a not in self.known or b not in self.known:
            return None
        return relative_pose(*self.known[a], *self.known[b])


def share_frames(views: list[Views]) -> list[Views]:
    """Several people's views of one sequence (one frame axis), each given the ``crowd`` of
    all of them; one person's views unchanged."""
    if len(views) < 2:
        return views
    cams = views[0].cameras
    crowd = Views({c: np.concatenate([v.x[c] for v in views], 1) for c in cams},
                  {c: np.concatenate([v.conf[c] for v in views], 1) for c in cams},
                  views[0].focal, views[0].known)
    return [replace(v, crowd=crowd) for v in views]


@dataclass
class SubjectGeometry:
    """What a mode's fit hands to its labelling (one subject).

    Attributes:
        subject: the subject id.
        pairs: every camera pair's two-view geometry (ok or not, with reasons).
        chosen: pairs to label (pair modes) or []; order (cam_a, cam_b) as in ``pairs``.
        rig: the all-view cameras (all-view modes: what the labels are triangulated with;
            ``pooled``: its pair fits chained into one frame, a record only), reference first.
        unregistered: camera -> why the all-view rig does not hold it.
        bundle_adjustment: scalar summary of the bundle adjustment ({} when none ran), and the
            adjusted rig's checks per camera (``camera_reproj_px``, ``camera_pair_deg``:
            :class:`pipeline.geometry.rig.RigCheck`).
        thresholds: the pixel thresholds the fit used and the labels use (given, or from each
            camera's measured noise: :func:`subject_thresholds`).
    """

    subject: str
    pairs: list[epi.PairGeometry]
    chosen: list[tuple[str, str]] = field(default_factory=list)
    rig: CameraRig | None = None
    unregistered: dict[str, str] = field(default_factory=dict)
    bundle_adjustment: dict[str, Any] = field(default_factory=dict)
    thresholds: noise.Thresholds | None = None

    def pair(self, a: str, b: str) -> epi.PairGeometry:
        for g in self.pairs:
            if (g.cam_a, g.cam_b) == (a, b):
                return g
        raise KeyError(f"subject {self.subject}: no fitted pair {a}-{b}")


@dataclass
class CameraLabels:
    """Pseudo-3D labels of one camera of one sequence.

    Attributes:
        camera: the labelled view; partner: the view it was triangulated with ("all": every
            consistent view).
        frames: (F',) indices into the sequence's frame axis.
        X: (F', J, 3) in ``camera``'s frame, root not subtracted; canonical scale, or mm when
            the mode is metric.
        valid: (F', J) usable as labels. reproj_px: (F', J) reprojection error in pixels:
            a pair's worst of its two views; an all-view label's in ``camera`` where it sees
            the joint (the worst view used where it does not).
        inlier_ratio: (F',) or one value: the supporting geometry's inlier share.
        pose_from, R: the estimated rotation of ``camera`` relative to ``pose_from`` ((3, 3),
            or (F', 3, 3) per frame, NaN where the frame's fit failed), so that the caller can
            compare it with known extrinsics.
        X_camera: (F', J, 3) the triangulated points in ``camera``'s frame at the geometry's own
            scale, before validity, root subtraction and normalisation (NaN where none): what
            reprojects into the image (overlays, checks).
    """

    camera: str
    partner: str
    frames: np.ndarray
    X: np.ndarray
    valid: np.ndarray
    reproj_px: np.ndarray
    inlier_ratio: np.ndarray | float
    pose_from: str
    R: np.ndarray
    X_camera: np.ndarray | None = None


class GeometryMode(Protocol):
    name: ClassVar[str]
    help: ClassVar[str]
    metric: ClassVar[bool]
    per_frame_scale: ClassVar[bool]
    needs_extrinsics: ClassVar[bool]
    in_job: ClassVar[bool]
    all_view: ClassVar[bool]

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry: ...

    def shards(self, geometry: SubjectGeometry) -> list[tuple[str, str]]: ...

    def label(self, views: Views, geometry: SubjectGeometry, s: GeometrySettings,
              shard: tuple[str, str]) -> list[CameraLabels]: ...


# --- shared steps ---------------------------------------------------------------------------------

def subject_thresholds(views: Views, s: GeometrySettings, known: bool = False
                       ) -> noise.Thresholds:
    """The pixel thresholds of one subject: the settings' where given, else from each
    camera's noise measured on its pairs (:func:`pipeline.geometry.noise.estimate_thresholds`;
    ``known``: under the extrinsics rather than first-pass fits)."""
    cams = views.cameras
    poses = {(a, b): views.known_relative(a, b) for i, a in enumerate(cams)
             for b in cams[i + 1:]} if known else None
    return noise.estimate_thresholds(views.x, views.masks(s.conf_threshold), views.focal,
                                     s.ransac_threshold_px, s.reproj_threshold_px, s.seed, poses)


def label_thresholds(geometry: SubjectGeometry | None, views: Views, s: GeometrySettings
                     ) -> noise.Thresholds:
    """The thresholds a labelling uses: its fit's, else (a per-frame mode labelled without a
    fit) :func:`subject_thresholds` of the views labelled."""
    if geometry is not None and geometry.thresholds is not None:
        return geometry.thresholds
    return subject_thresholds(views, s)


def fit_pooled_pairs(views: Views, s: GeometrySettings, th: noise.Thresholds | None = None
                     ) -> list[epi.PairGeometry]:
    """Every camera pair fitted from the confident joints of all frames, distinct hypotheses
    compared on all correspondences (:func:`pipeline.geometry.hypotheses.fit_pair_robust`: a pair
    whose best pose is not clearly better than a distinct one, or whose rotation is too
    uncertain, is ambiguous, not ok), then checked around the camera loops (three or more
    cameras, :func:`pipeline.geometry.loops.check_rig`): a wrong decomposition of E is re-chosen
    so the loops close, a pair every loop contradicts is marked not ok, an ambiguous pair that
    every certain path through a third camera confirms is labelled, and each pair records its
    loop agreement (``loop_err_deg``, read by :func:`choose_pairs`). ``th``: each pair's RANSAC
    threshold (None: :func:`subject_thresholds` of the views)."""
    th = subject_thresholds(views, s) if th is None else th
    cams, mask = views.cameras, views.masks(s.conf_threshold)
    fits = [fit_pair_robust(views.x[a], views.x[b], mask[a] & mask[b], th.ransac(a, b),
                            (views.focal[a] + views.focal[b]) / 2, seed=s.seed, cam_a=a, cam_b=b)
            for i, a in enumerate(cams) for b in cams[i + 1:]]
    return loops.check_rig(fits, views.x, mask)


def pair_uncertainty_deg(g: epi.PairGeometry) -> float:
    """How far a pair's rotation may be off, in degrees: the root sum of squares of its bootstrap
    standard error (``rotation_se_deg``) and its median disagreement with the loops through a
    third camera (``loop_err_deg``); what was not measured counts 0 (known extrinsics: 0)."""
    return float(np.hypot(np.nan_to_num(g.rotation_se_deg), np.nan_to_num(g.loop_err_deg)))


def choose_pairs(cams: list[str], pairs: list[epi.PairGeometry], how: str
                 ) -> list[tuple[str, str]]:
    """The pairs to label: every usable pair (``all``), or for each camera, among its usable
    pairs within ``PAIR_TOL_DEG`` of the smallest :func:`pair_uncertainty_deg`, the one of
    smallest relative rotation (``nearest``): a partner that bootstrap or loops show to be
    degrees off is passed over for a slightly wider one that is not."""
    ok = {(g.cam_a, g.cam_b): g for g in pairs if g.ok}
    if how == "all":
        return sorted(ok)
    chosen = set()
    for c in cams:
        cand = {k: pair_uncertainty_deg(g) for k, g in ok.items() if c in k}
        if cand:
            least = min(cand.values())
            near = [(np.trace(ok[k].R), k) for k, u in cand.items() if u <= least + PAIR_TOL_DEG]
            chosen.add(max(near)[1])  # largest trace = smallest rotation angle
    return sorted(chosen)


def scale_labels(X: np.ndarray, valid: np.ndarray, per_frame: bool, joint_set: JointSet
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical-scale labels and the validity that survives normalisation."""
    Xn, scale = tri.normalize_scale(X, valid, per_frame=per_frame, joint_set=joint_set)
    return Xn, tri.normalized_validity(valid, scale, joint_set)


# --- pair modes -----------------------------------------------------------------------------------

@dataclass
class PairPose:
    """A pair's pose for labelling: R (3, 3) or (F, 3, 3), t likewise; ok (F,) frames whose
    geometry is usable; inlier_ratio (F,) or one value."""

    R: np.ndarray
    t: np.ndarray
    ok: np.ndarray
    inlier_ratio: np.ndarray | float


class ModeFacts:
    """The facts a mode declares, with the defaults most modes share (up to scale, one scale per
    sequence, no extrinsics needed, offered by the job)."""

    metric: ClassVar[bool] = False
    per_frame_scale: ClassVar[bool] = False
    needs_extrinsics: ClassVar[bool] = False
    in_job: ClassVar[bool] = True
    all_view: ClassVar[bool] = False


class PairMode(ModeFacts):
    """A two-view mode: labels each chosen pair by triangulating its two views; subclasses say
    how the pair's pose is obtained (:meth:`pair_pose`)."""

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        th = subject_thresholds(views, s)
        pairs = fit_pooled_pairs(views, s, th)
        return SubjectGeometry(subject, pairs, choose_pairs(views.cameras, pairs, s.pairs),
                               thresholds=th)

    def shards(self, geometry: SubjectGeometry) -> list[tuple[str, str]]:
        return list(geometry.chosen)

    def pair_pose(self, views: Views, geometry: SubjectGeometry, s: GeometrySettings, a: str,
                  b: str, xa: np.ndarray, xb: np.ndarray, mask: np.ndarray,
                  th: noise.Thresholds) -> PairPose:
        raise NotImplementedError

    def label(self, views: Views, geometry: SubjectGeometry, s: GeometrySettings,
              shard: tuple[str, str]) -> list[CameraLabels]:
        a, b = shard
        ua, ub = views.usable(a, s.conf_threshold), views.usable(b, s.conf_threshold)
        frames = np.flatnonzero(ua.any(-1) & ub.any(-1))  # both views found the person
        if not len(frames):
            return []
        xa, xb, mask = views.x[a][frames], views.x[b][frames], (ua & ub)[frames]
        th = label_thresholds(geometry, views, s)
        p = self.pair_pose(views, geometry, s, a, b,
                           *views.pose_points(a, b, frames, s.conf_threshold), th)
        X = tri.triangulate(xa, xb, p.R, p.t)
        reproj = tri.reprojection_error_px(X, xa, xb, p.R, p.t, views.focal[a], views.focal[b])
        valid = tri.label_validity(views.conf[a][frames], views.conf[b][frames], X, p.R, p.t,
                                   reproj, s.conf_threshold, th.reproj(a, b))
        valid &= mask & p.ok[:, None]
        raw_a, raw_b = X, epi.transform(X, p.R, p.t)
        Xb = raw_b
        if not self.metric:
            # One normalisation: bone lengths do not change under the rotation into camera b, so
            # b's canonical labels are a's, rotated (root-relative: no translation).
            X, valid = scale_labels(X, valid, self.per_frame_scale, s.joint_set)
            Xb = np.where(valid[..., None], epi.transform(X, p.R, np.zeros_like(p.t)), 0.0)
        R_ba = np.swapaxes(p.R, -1, -2)
        return [CameraLabels(a, b, frames, X, valid, reproj, p.inlier_ratio, b, R_ba, raw_a),
                CameraLabels(b, a, frames, Xb, valid, reproj, p.inlier_ratio, a, p.R, raw_b)]


class PerFrameMode(PairMode):
    """The paper's setting as published: one essential matrix per frame from that frame's
    joints, plain five-point RANSAC (:class:`PerFrameRefitMode` is the same setting at its
    strongest)."""

    name: ClassVar[str] = "per-frame"
    help: ClassVar[str] = ("the paper's setting: one essential matrix per frame (plain five-point "
                           "RANSAC)")
    per_frame_scale: ClassVar[bool] = True
    method: ClassVar[str] = "ransac"

    def pair_pose(self, views, geometry, s, a, b, xa, xb, mask, th):
        R, t, ok, ratio = epi.fit_pair_per_frame(xa, xb, mask, th.ransac(a, b),
                                                 (views.focal[a] + views.focal[b]) / 2,
                                                 method=self.method, seed=s.seed)
        return PairPose(R, t, ok, ratio.astype(np.float64))


class PerFrameRefitMode(PerFrameMode):
    """The paper's per-frame setting at its strongest: per frame, plain RANSAC's pose and
    USAC's, each refitted by least squares on its inliers, the one of lower truncated cost kept
    (:func:`pipeline.geometry.epipolar.fit_pair_per_frame_refit`); ~0 mm on noise-free 2D, where plain
    RANSAC stops at poses degrees off that explain all 17 joints within its threshold."""

    name: ClassVar[str] = "per-frame-refit"
    help: ClassVar[str] = ("the paper's per-frame setting at its strongest: per frame RANSAC and "
                           "USAC, each refitted by least squares on its inliers, the better kept")

    def pair_pose(self, views, geometry, s, a, b, xa, xb, mask, th):
        R, t, ok, ratio = epi.fit_pair_per_frame_refit(xa, xb, mask, th.ransac(a, b),
                                                       (views.focal[a] + views.focal[b]) / 2,
                                                       seed=s.seed)
        return PairPose(R, t, ok, ratio.astype(np.float64))


class PerFrameUsacMode(PerFrameMode):
    name: ClassVar[str] = "per-frame-usac"
    help: ClassVar[str] = "per-frame with USAC-MAGSAC instead of plain RANSAC (benchmarks)"
    method: ClassVar[str] = "usac_magsac"
    in_job: ClassVar[bool] = False


class PooledMode(PairMode):
    """One essential matrix per subject and camera pair from the joints of all its frames.

    The labels are triangulated pair by pair with each pair's own fit. For the record
    (``cameras.json``) the fit also chains the usable pairs into the first camera's frame
    (``CameraRig.register``: rotations fused over the direct pair and the two-hop paths, one
    global scale, the gauge camera at |t| = 1); a camera it cannot hold is left out of that
    record only, not of the labels.
    """

    name: ClassVar[str] = "pooled"
    help: ClassVar[str] = ("one essential matrix per subject and camera pair from many frames "
                           "(USAC-MAGSAC + robust refinement), camera loops checked")

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        g = super().fit(subject, views, s)
        if any(p.ok for p in g.pairs):
            g.rig, _ = CameraRig.register(views.x, views.masks(s.conf_threshold),
                                          g.thresholds.max_ransac(), views.focal, seed=s.seed,
                                          pairs=g.pairs)
        return g

    def pair_pose(self, views, geometry, s, a, b, xa, xb, mask, th):
        g = geometry.pair(a, b)
        return PairPose(g.R, g.t, np.full(len(xa), bool(g.ok)), float(g.inlier_ratio))


class CalibratedMode(PairMode):
    """Known extrinsics for each pair (the paper's "with R/t" ablation): metric labels."""

    name: ClassVar[str] = "calibrated"
    help: ClassVar[str] = "the manifest's extrinsics for each camera pair (metric labels, mm)"
    metric: ClassVar[bool] = True
    needs_extrinsics: ClassVar[bool] = True

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        cams = views.cameras
        pairs = [known_pair(subject, views, a, b) for i, a in enumerate(cams) for b in cams[i + 1:]]
        return SubjectGeometry(subject, pairs, choose_pairs(cams, pairs, s.pairs),
                               thresholds=subject_thresholds(views, s, known=True))

    def pair_pose(self, views, geometry, s, a, b, xa, xb, mask, th):
        R, t = views.known_relative(a, b)  # metric baseline, mm
        return PairPose(R, t, np.ones(len(xa), bool), 1.0)


def known_pair(subject: str, views: Views, a: str, b: str) -> epi.PairGeometry:
    """The pair geometry of known extrinsics (unit t), or a ValueError naming what is missing."""
    rel = views.known_relative(a, b)
    if rel is None:
        raise ValueError(f"geometry needs the extrinsics of subject {subject} cameras {a} and "
                         f"{b}; the manifest has none for them")
    R, t = rel
    u = t / np.linalg.norm(t)
    return epi.PairGeometry(cam_a=a, cam_b=b, R=R, t=u, E=epi.essential_from_pose(R, u), n_points=0,
                            n_inliers=0, inlier_ratio=1.0, ok=True, method="extrinsics")


# --- all-view modes -------------------------------------------------------------------------------

class MultiviewMode(ModeFacts):
    """Every camera of a subject registered into one frame and bundle-adjusted; each joint
    triangulated from all consistent views.

    The bundle adjustment fits frames that two views see, balanced over the people (tracks) or
    sequences of ``Views.group`` and over time. The adjusted rig must then pass its own checks
    (:meth:`pipeline.geometry.rig.CameraRig.check`): every camera's median reprojection error
    over all frames within its validity threshold (``SubjectGeometry.thresholds``), and its
    rotation within ``loops.LOOP_TOL_DEG`` of at least one of its usable pair fits. A rig that fails is
    refused, loudly: no labels for the subject, every camera recorded as unregistered with the
    reason (``geometry.parquet``, an error in ``failures.parquet``, exit status 2; 3 when the
    run has no label row at all).
    """

    name: ClassVar[str] = "multiview"
    help: ClassVar[str] = ("all cameras registered into one frame, robust bundle adjustment, "
                           "each joint triangulated from all consistent views")
    all_view: ClassVar[bool] = True

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        th = subject_thresholds(views, s)
        pairs = fit_pooled_pairs(views, s, th)
        mask = views.masks(s.conf_threshold)
        rig, unregistered = CameraRig.register(views.x, mask, th.max_ransac(), views.focal,
                                               seed=s.seed, pairs=pairs)
        x = {c: views.x[c] for c in rig.cameras}
        rig, X, ba = rig.bundle_adjust(x, mask, reference=rig.reference, gauge=rig.gauge,
                                       f_scale_px=s.ba_f_scale_px, seed=s.seed,
                                       groups=views.group)
        check = rig.check(x, mask, pairs, th.reproj_px, loops.LOOP_TOL_DEG, X)
        summary = {k: v for k, v in ba.items() if isinstance(v, (int, float, str, bool))}
        summary.update(camera_reproj_px=check.reproj_px, camera_pair_deg=check.pair_deg)
        if check.reasons:
            why = ("all-view rig refused after bundle adjustment, no labels: "
                   + "; ".join(check.reasons.values()))
            return SubjectGeometry(subject, pairs, [], None,
                                   {**unregistered, **{c: why for c in rig.cameras}}, summary, th)
        return SubjectGeometry(subject, pairs, [], rig, unregistered, summary, th)

    def shards(self, geometry: SubjectGeometry) -> list[tuple[str, str]]:
        return [ALL_VIEWS] if geometry.rig is not None and len(geometry.rig.cameras) >= 2 else []

    def label(self, views: Views, geometry: SubjectGeometry, s: GeometrySettings,
              shard: tuple[str, str]) -> list[CameraLabels]:
        rig = geometry.rig
        cams = [c for c in views.cameras if c in rig.cameras]
        mask = {c: views.usable(c, s.conf_threshold) for c in cams}
        # Consensus views per joint, worst views dropped while they reproject badly; valid =
        # seen by >= 2 consistent views, in front of all of them.
        x = {c: views.x[c] for c in cams}
        th = label_thresholds(geometry, views, s)
        X, valid_all, worst = rig.subset(cams).labels(x, mask, th.reproj_px)
        # Each camera's rows carry its own reprojection error where it sees the joint (the
        # worst view used elsewhere), so per-camera figures tell the cameras apart.
        own = rig.subset(cams).reprojection_error_px(X, x, mask)
        out = []
        for c in cams:
            frames = np.flatnonzero(mask[c].any(-1))
            if not len(frames):
                continue
            valid = valid_all[frames] & mask[c][frames]
            raw = Xc = rig.in_frame(X[frames], c)
            if not self.metric:
                Xc, valid = scale_labels(Xc, valid, False, s.joint_set)
            reproj = np.where(np.isfinite(own[c][frames]), own[c][frames], worst[frames])
            out.append(CameraLabels(c, "all", frames, Xc, valid, reproj, 1.0,
                                    rig.reference, rig.poses[c][0], raw))
        return out


class CalibratedMultiviewMode(MultiviewMode):
    """Known extrinsics, every joint triangulated from all consistent views: metric labels."""

    name: ClassVar[str] = "calibrated-multiview"
    help: ClassVar[str] = ("the manifest's extrinsics, each joint triangulated from all "
                           "consistent views (metric labels, mm)")
    metric: ClassVar[bool] = True
    needs_extrinsics: ClassVar[bool] = True

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        cams = views.cameras
        pairs = [known_pair(subject, views, a, b) for i, a in enumerate(cams) for b in cams[i + 1:]]
        ref = cams[0]
        rig = CameraRig({c: views.known_relative(ref, c) for c in cams}, dict(views.focal))
        return SubjectGeometry(subject, pairs, [], rig,
                               thresholds=subject_thresholds(views, s, known=True))


class VectorMedianMode(ModeFacts):
    """The paper's multi-view fusion: each camera's pooled pairs with every other camera,
    triangulated and fused per joint by the vector median (benchmarks only)."""

    name: ClassVar[str] = "vector-median"
    help: ClassVar[str] = "pooled pairs of each camera with every other, fused by the vector median"
    in_job: ClassVar[bool] = False

    def fit(self, subject: str, views: Views, s: GeometrySettings) -> SubjectGeometry:
        th = subject_thresholds(views, s)
        return SubjectGeometry(subject, fit_pooled_pairs(views, s, th), thresholds=th)

    def shards(self, geometry: SubjectGeometry) -> list[tuple[str, str]]:
        return [ALL_VIEWS]

    def label(self, views: Views, geometry: SubjectGeometry, s: GeometrySettings,
              shard: tuple[str, str]) -> list[CameraLabels]:
        per_camera: dict[str, list[CameraLabels]] = {}
        pooled = PooledMode()
        for g in geometry.pairs:
            if g.ok:
                for lab in pooled.label(views, geometry, s, (g.cam_a, g.cam_b)):
                    per_camera.setdefault(lab.camera, []).append(lab)
        return [_fuse(c, labs, views, s.joint_set) for c, labs in per_camera.items()]


def _fuse(cam: str, labs: list[CameraLabels], views: Views, joint_set: JointSet) -> CameraLabels:
    """Vector median of one camera's pair labels (root-relative, canonical scale)."""
    F = len(views.x[cam])
    poses, valids = {}, {}
    for n, lab in enumerate(labs):
        X = np.full((F, *lab.X.shape[1:]), np.nan)
        v = np.zeros((F, lab.X.shape[1]), bool)
        X[lab.frames], v[lab.frames] = joint_set.root_relative(lab.X, lab.valid)
        poses[n], valids[n] = X, v
    X = fuse_pairs_vector_median(poses, valids)
    valid = np.isfinite(X).all(-1)
    frames = np.flatnonzero(valid.any(-1))
    reproj = np.zeros(valid.shape)
    return CameraLabels(cam, "median", frames, np.nan_to_num(X[frames]), valid[frames],
                        reproj[frames], 1.0, cam, np.full((3, 3), np.nan))


# --- the registry ---------------------------------------------------------------------------------

GEOMETRY_MODES: dict[str, GeometryMode] = {m.name: m for m in (
    PerFrameMode(), PerFrameRefitMode(), PooledMode(), MultiviewMode(), CalibratedMode(),
    CalibratedMultiviewMode(), PerFrameUsacMode(), VectorMedianMode())}
"""Every geometry mode by name; ``JOB_MODES`` are those ``make pseudolabels`` offers."""

JOB_MODES: tuple[str, ...] = tuple(n for n, m in GEOMETRY_MODES.items() if m.in_job)


def get_mode(name: str) -> GeometryMode:
    """The mode called ``name``, or a ValueError listing the known ones."""
    if name not in GEOMETRY_MODES:
        raise ValueError(f"geometry {name!r}: choose one of {tuple(GEOMETRY_MODES)}")
    return GEOMETRY_MODES[name]


def modes_help() -> str:
    """One line per job mode, for --help."""
    return "; ".join(f"{n}: {GEOMETRY_MODES[n].help}" for n in JOB_MODES)

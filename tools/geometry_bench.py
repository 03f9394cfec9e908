"""Measured pseudo-label quality and speed of every geometry mode (DESIGN.md §7).

Real motion (the CMU clip 131_01, mapped to H36M-17) is projected through the real Human3.6M
cameras of subject S1 at full resolution (1000 px, distortion included), Gaussian noise and
optionally outlier joints are added to the 2D joints, and each geometry mode turns the 2D joints
back into pseudo-3D labels in the reference camera's frame:

every mode of ``pipeline.geometry.modes.GEOMETRY_MODES`` (the job's modes, per-frame-refit among
them, and the bench-only per-frame-usac and vector-median), called exactly as ``make pseudolabels`` calls them: one fit
on the subject's views, then every shard key labelled. Varied on purpose, and printed: the RANSAC
and reprojection thresholds grow with the noise (max(1, 2.5 noise) and max(3, 3 noise) px);
every other setting is ``GeometrySettings``' default, the job's.

Errors are against ground truth in each labelled camera, root-relative: N-MPJPE (scale
alignment) and PA-MPJPE (Procrustes), from :func:`eval.metrics.mpjpe`, over the joints each
mode marks valid (every labelled camera's rows); ``valid_pct`` says how many that is.
``rot_err_deg`` is the camera rotation error of the labels' geometry against the true cameras
(median over frames for per-frame modes, the worst labelled camera otherwise).

Run: ``python -m tools bench-geometry [--bvh CLIP.bvh]`` (about a minute on one core). Motion:
a BVH clip given on the command line (the README's figures: the CMU clip 131_01), else the
project's procedural synthetic motion.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from eval.metrics import ALIGNMENTS, mpjpe
from pipeline.geometry import epipolar as epi
from pipeline.geometry import triangulation as tri
from pipeline.store.bvh import load_h36m17
from pipeline.geometry.cameras import Camera, pixels_to_normalized, relative_pose, rotation_error_deg
from pipeline.geometry.modes import (ALL_VIEWS, GeometrySettings, SubjectGeometry, Views,
                                     get_mode)
from pipeline.geometry.noise import Thresholds
from pipeline.geometry.rig import CameraRig

MODES: tuple[str, ...] = ("per-frame", "per-frame-usac", "per-frame-refit", "pooled",
                          "vector-median", "multiview", "calibrated", "calibrated-multiview")
CONDITIONS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (2.0, 0.0), (5.0, 0.0), (10.0, 0.0),
                                               (5.0, 0.1))
"""(Gaussian noise sigma in px, share of outlier joints per view)."""


# --- the scene ----------------------------------------------------------------------------------

def load_h36m_rig(path: Path, subject: str = "S1") -> dict[str, Camera]:
    """The four full-resolution Human3.6M cameras of ``subject`` (rotations re-orthonormalised:
    the published matrices are orthonormal only to ~1e-7)."""
    d = json.loads(Path(path).read_text())
    rig = {}
    for c in d["camera_ids"]:
        i, e = d["intrinsics"][c], d["extrinsics"][subject][c]
        U, _, Vt = np.linalg.svd(np.array(e["R_w2c"], dtype=np.float64))
        rig[c] = Camera(c, np.array(i["K"], dtype=np.float64),
                        np.array(i["distortion_opencv"], dtype=np.float64), int(i["width"]),
                        int(i["height"]), U @ Vt, np.array(e["t_mm"], dtype=np.float64))
    return rig


def load_bvh_motion(path: Path, step: int = 2) -> np.ndarray:
    """(F, 17, 3) world poses (mm, z up) of a BVH clip (e.g. CMU 131_01), every ``step``-th frame, with the mean
    pelvis position moved to the capture volume's centre (world x = y = 0)."""
    X = load_h36m17(path)[::step]
    X[..., :2] -= X[:, 0, :2].mean(0)
    return X


def observe(X: np.ndarray, cam: Camera, noise_px: float, outlier_rate: float,
            rng: np.random.Generator, outlier_px: tuple[float, float] = (30.0, 150.0)
            ) -> tuple[np.ndarray, np.ndarray]:
    """Detector-like 2D joints: (F, J, 2) distorted pixels with Gaussian noise and a share of
    outliers (displaced by ``outlier_px`` in a random direction, confidence left high: the worst
    case), and their undistorted normalised coordinates."""
    uv = cam.project_world(X)
    if noise_px > 0:
        uv = uv + rng.normal(0.0, noise_px, uv.shape)
    if outlier_rate > 0:
        out = rng.random(uv.shape[:-1]) < outlier_rate
        ang = rng.uniform(0, 2 * np.pi, out.shape)
        r = rng.uniform(*outlier_px, out.shape)
        uv = uv + out[..., None] * np.stack([np.cos(ang), np.sin(ang)], -1) * r[..., None]
    return uv, pixels_to_normalized(uv, cam.K, cam.dist)


@dataclass
class Scene:
    """One noise condition: cameras, ground truth and the noisy 2D joints of every view."""

    rig: dict[str, Camera]
    X_world: np.ndarray
    x_norm: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]
    conf: dict[str, np.ndarray]
    noise_px: float
    outlier_rate: float
    ref: str
    partner: str

    @property
    def focal(self) -> dict[str, float]:
        return {c: float(0.5 * (cam.K[0, 0] + cam.K[1, 1])) for c, cam in self.rig.items()}

    @property
    def gt_ref(self) -> np.ndarray:
        """(F, J, 3) ground truth in the reference camera, root-relative, mm."""
        Xc = self.rig[self.ref].world_to_camera(self.X_world)
        return Xc - Xc[:, :1]

    def gt_in(self, cam: str) -> np.ndarray:
        """(F, J, 3) ground truth in camera ``cam``, root-relative, mm."""
        Xc = self.rig[cam].world_to_camera(self.X_world)
        return Xc - Xc[:, :1]

    def true_pose(self, cam: str) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.rig[self.ref], self.rig[cam]
        return relative_pose(a.R, a.t, b.R, b.t)

    @property
    def ransac_px(self) -> float:
        return max(1.0, 2.5 * self.noise_px)

    @property
    def reproj_px(self) -> float:
        return max(3.0, 3.0 * self.noise_px)


def make_scene(rig: dict[str, Camera], X_world: np.ndarray, noise_px: float, outlier_rate: float,
               seed: int = 0, ref: str | None = None, partner: str | None = None) -> Scene:
    """Observe ``X_world`` in every camera; the default pair is the rig's 1st and 3rd cameras
    (H36M 54138969-58860488, the ~48 degree pair)."""
    rng = np.random.default_rng(seed)
    ids = list(rig)
    x, mask, conf = {}, {}, {}
    for c in ids:
        _, x[c] = observe(X_world, rig[c], noise_px, outlier_rate, rng)
        mask[c] = np.isfinite(x[c]).all(-1)
        conf[c] = np.ones(X_world.shape[:2])
    return Scene(rig, X_world, x, mask, conf, noise_px, outlier_rate,
                 ref or ids[0], partner or ids[2 % len(ids)])


# --- one mode -> labels -------------------------------------------------------------------------

@dataclass
class Labels:
    """Pseudo-labels of one mode in every labelled camera: X (N, J, 3) root-relative, valid
    (N, J), gt (N, J, 3) ground truth of the same rows, camera rotation error (degrees),
    seconds spent."""

    X: np.ndarray
    valid: np.ndarray
    gt: np.ndarray
    rot_err_deg: float
    seconds: float


def settings_for(s: Scene, seed: int = 0) -> GeometrySettings:
    """The job's settings, with the thresholds grown with the noise (on purpose, see above)."""
    return GeometrySettings(conf_threshold=0.5, ransac_threshold_px=s.ransac_px,
                            reproj_threshold_px=s.reproj_px, seed=seed)


def scene_views(s: Scene) -> Views:
    return Views(dict(s.x_norm), {c: np.where(s.mask[c], s.conf[c], 0.0) for c in s.x_norm},
                 s.focal, {c: (cam.R, cam.t) for c, cam in s.rig.items()})


def run_mode(s: Scene, mode: str, seed: int = 0) -> Labels:
    """Pseudo-labels of ``mode`` (a name of ``GEOMETRY_MODES``) for scene ``s``: the mode's fit,
    then every shard it labels, as the job runs them."""
    t0 = time.perf_counter()
    m, views, settings = get_mode(mode), scene_views(s), settings_for(s, seed)
    geometry = m.fit("bench", views, settings)
    labels = [lab for shard in m.shards(geometry) for lab in m.label(views, geometry, settings,
                                                                     shard)]
    seconds = time.perf_counter() - t0
    X, valid, gt, rot = [], [], [], []
    for lab in labels:
        v = lab.valid & lab.valid[:, :1]
        X.append(np.where(v[..., None], lab.X - lab.X[:, :1], 0.0))
        valid.append(v)
        gt.append(s.gt_in(lab.camera)[lab.frames])
        if lab.camera != lab.pose_from:
            with np.errstate(invalid="ignore"):
                rot.append(np.ravel(rotation_error_deg(lab.R, views.known_relative(
                    lab.pose_from, lab.camera)[0])))
    rot_all = np.concatenate(rot) if rot else np.array([np.nan])
    err = float(np.nanmedian(rot_all) if m.per_frame_scale else np.nanmax(rot_all)) \
        if np.isfinite(rot_all).any() else np.nan
    return Labels(np.concatenate(X), np.concatenate(valid), np.concatenate(gt), err, seconds)


def score(labels: Labels) -> dict[str, float]:
    """N-MPJPE and PA-MPJPE (mm) over the valid joints of rows with at least 4 of them."""
    v, gt = labels.valid, labels.gt
    frames = v.sum(-1) >= 4
    if not frames.any():
        return {"n_mpjpe_mm": np.nan, "pa_mpjpe_mm": np.nan, "valid_pct": 100.0 * v.mean()}
    X, G, m = labels.X[frames], gt[frames], v[frames]
    return {**{f"{k}_mm": float(np.mean(mpjpe(X, G, m, alignment=ALIGNMENTS[k])))
               for k in ("n_mpjpe", "pa_mpjpe")}, "valid_pct": 100.0 * float(v.mean())}


def evaluate_noise_sweep(rig: dict[str, Camera] | None = None, X_world: np.ndarray | None = None,
                         conditions: Sequence[tuple[float, float]] = CONDITIONS,
                         modes: Sequence[str] = MODES, seed: int = 0) -> pd.DataFrame:
    """Pseudo-label error of every mode under every (noise px, outlier share) condition.

    Defaults: the H36M S1 rig of data_manifests/h36m.yaml and the procedural motion. Returns one row
    per (condition, mode): noise_px, outlier_rate, mode, n_mpjpe_mm, pa_mpjpe_mm, valid_pct,
    rot_err_deg, seconds.
    """
    rig = rig if rig is not None else load_rig_from_manifest()
    X_world = X_world if X_world is not None else load_synthetic_motion()
    rows = []
    for noise, outliers in conditions:
        s = make_scene(rig, X_world, noise, outliers, seed=seed)
        for mode in modes:
            lab = run_mode(s, mode, seed=seed)
            rows.append({"noise_px": noise, "outlier_rate": outliers, "mode": mode,
                         **score(lab), "rot_err_deg": lab.rot_err_deg,
                         "seconds": lab.seconds})
    return pd.DataFrame(rows)


# --- throughput ---------------------------------------------------------------------------------

def _rate(fn, n_items: int, min_seconds: float = 0.5) -> float:
    """Items per second of ``fn`` (called repeatedly for at least ``min_seconds``)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return n * n_items / (time.perf_counter() - t0)


def measure_throughput(rig: dict[str, Camera] | None = None,
                       X_world: np.ndarray | None = None, noise_px: float = 2.0,
                       seed: int = 0) -> dict[str, float]:
    """Frame pairs per second on this process's core(s) for the hot paths of stage 1.

    Keys: triangulate_pooled (optimal triangulation, one pose, all frames at once),
    labels_pooled (the pooled mode's label path: triangulate + reprojection + validity + scale),
    labels_multiview_4_views (the multiview mode's label path: consensus views, robust all-view
    triangulation, validity, scale; frames of 4 views), per_frame_ransac and
    per_frame_usac (one five-point fit per frame), pooled_fit_seconds (one pooled E per pair),
    bundle_adjust_seconds (4 cameras, 150 BA frames) and register_seconds.
    """
    rig = rig if rig is not None else load_rig_from_manifest()
    X_world = X_world if X_world is not None else load_synthetic_motion()
    s = make_scene(rig, X_world, noise_px, 0.0, seed=seed)
    a, b = s.ref, s.partner
    xa, xb = s.x_norm[a], s.x_norm[b]
    reps = max(1, 20000 // len(xa))
    XA, XB = np.tile(xa, (reps, 1, 1)), np.tile(xb, (reps, 1, 1))
    R, t = s.true_pose(b)
    t = t / np.linalg.norm(t)
    f = s.focal[a]
    settings = settings_for(s, seed)
    # The job's label paths on tiled frames, with the true geometry (what the fit would give).
    tiled = scene_views(s)
    tiled = Views({c: np.tile(x, (reps, 1, 1)) for c, x in tiled.x.items()},
                  {c: np.tile(v, (reps, 1)) for c, v in tiled.conf.items()}, tiled.focal,
                  tiled.known)
    th = Thresholds.given(list(s.rig), s.ransac_px, s.reproj_px)  # the bench's pixels
    pair = SubjectGeometry("bench", [epi.PairGeometry(a, b, R, t, epi.essential_from_pose(R, t),
                                                      0, 0, 1.0, True)], [(a, b)], thresholds=th)
    rig = SubjectGeometry("bench", [], [], CameraRig({c: s.true_pose(c) for c in s.rig},
                                                     s.focal), thresholds=th)
    both = s.mask[a] & s.mask[b]
    n_pf = 100
    out = {
        "triangulate_pooled": _rate(lambda: tri.triangulate(XA, XB, R, t), len(XA)),
        "labels_pooled": _rate(lambda: get_mode("pooled").label(tiled, pair, settings, (a, b)),
                               len(XA)),
        "labels_multiview_4_views": _rate(lambda: get_mode("multiview").label(
            tiled, rig, settings, ALL_VIEWS), len(XA)),
        "per_frame_ransac": _rate(lambda: epi.fit_pair_per_frame(
            xa[:n_pf], xb[:n_pf], both[:n_pf], s.ransac_px, f, method="ransac"), n_pf),
        "per_frame_usac": _rate(lambda: epi.fit_pair_per_frame(
            xa[:n_pf], xb[:n_pf], both[:n_pf], s.ransac_px, f, method="usac_magsac"), n_pf),
    }
    t0 = time.perf_counter()
    epi.fit_pair_pooled(xa, xb, both, s.ransac_px, f)
    out["pooled_fit_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg, _ = CameraRig.register(s.x_norm, s.mask, s.ransac_px, s.focal, seed=seed, reference=a)
    out["register_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg.bundle_adjust({c: s.x_norm[c] for c in reg.cameras}, s.mask, reference=a,
                      gauge=reg.gauge, f_scale_px=settings.ba_f_scale_px, seed=seed)
    out["bundle_adjust_seconds"] = time.perf_counter() - t0
    out["frames"] = float(len(xa))
    return out


def format_table(df: pd.DataFrame) -> str:
    """The sweep as a fixed-width table: one block per condition."""
    cols = ["noise_px", "outlier_rate", "mode", "n_mpjpe_mm", "pa_mpjpe_mm", "valid_pct",
            "rot_err_deg", "seconds"]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:8.2f}")


def load_rig_from_manifest(subject: str = "S1") -> dict[str, Camera]:
    """The four full-resolution Human3.6M cameras from the project's own data_manifests/h36m.yaml
    (the same published numbers as the reference json; no reference data needed)."""
    from pipeline.store.manifest import load_manifest

    m = load_manifest(Path(__file__).resolve().parents[1] / "data_manifests" / "h36m.yaml",
                      root="/")
    rig = {}
    for c in m.camera_ids:
        cam = m.camera(c, subject)
        U, _, Vt = np.linalg.svd(cam.R)
        rig[c] = Camera(c, cam.K, cam.dist, cam.width, cam.height, U @ Vt, cam.t)
    return rig


def load_synthetic_motion(frames: int = 250) -> np.ndarray:
    """(F, 17, 3) world poses of the project's procedural motion (all five actions of the
    synthetic subject S1, concatenated), centred in the capture volume: the fallback when the
    CMU clip is absent."""
    from pipeline.store.manifest import load_manifest
    from pipeline.synthetic.generate import simulate_sequence

    m = load_manifest(Path(__file__).resolve().parents[1] / "data_manifests" / "synthetic.yaml",
                      root="/")
    per = max(frames // 5, 2)
    X = np.concatenate([simulate_sequence(m, s, per).joints_world
                        for s in m.sequences if s.subject == "S1"])
    X[..., :2] -= X[:, 0, :2].mean(0)
    return X


def run(out: str | None = None, bvh: Path | None = None, step: int = 2, seed: int = 0
        ) -> dict[str, Any]:
    """Print the noise sweep and the throughput; returns both (and writes ``out/geometry.json``).

    Cameras: the Human3.6M S1 rig of data_manifests/h36m.yaml; motion: the BVH clip ``bvh`` when
    given, else the project's own procedural motion."""
    cv2.setNumThreads(1)
    rig = load_rig_from_manifest()
    if bvh is not None:
        X, what = load_bvh_motion(bvh, step=step), f"{Path(bvh).name} (BVH motion)"
    else:
        X, what = load_synthetic_motion(), "procedural synthetic motion (no --bvh given)"
    print(f"{what}, {len(X)} frames, through H36M S1 cameras (1000 px), reference "
          f"{list(rig)[0]}; one core; thresholds vary with the noise on purpose: RANSAC "
          f"max(1, 2.5 noise) px, reprojection max(3, 3 noise) px")
    df = evaluate_noise_sweep(rig, X, seed=seed)
    print(format_table(df))
    tp = measure_throughput(rig, X, seed=seed)
    print("\nthroughput (one core):")
    for k, v in tp.items():
        unit = "s" if k.endswith("seconds") else ("" if k == "frames" else "frame pairs/s")
        print(f"  {k:26s} {v:12.2f} {unit}")
    result = {"motion": what, "sweep": df.to_dict(orient="records"), "throughput": tp}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "geometry.json").write_text(json.dumps(result, indent=1, default=float))
    return result

"""Measured pseudo-label quality and speed of every geometry mode (DESIGN.md §7).

Real motion (the CMU clip 131_01, mapped to H36M-17) is projected through the real Human3.6M
cameras of subject S1 at full resolution (1000 px, distortion included), Gaussian noise and
optionally outlier joints are added to the 2D joints, and each geometry mode turns the 2D joints
back into pseudo-3D labels in the reference camera's frame:

    per_frame       the paper: one E per frame (five-point RANSAC), per-frame scale
    per_frame_usac  the same with USAC-MAGSAC + the same per-frame triangulation
    pooled          one E for the pair from all frames (USAC-MAGSAC + refinement)
    vector_median   pooled pairs of the reference with every other camera, fused per joint
                    by the vector median (the paper's multi-view fusion)
    multiview       all cameras registered, bundle-adjusted, every joint triangulated from
                    all views (outlier views dropped)
    calibrated      the known R, t of the pair (upper bound of the pair modes, metric)
    calibrated_mv   the known cameras, all views (upper bound of multiview, metric)

Errors are against ground truth in the reference camera, root-relative: N-MPJPE (scale
alignment) and PA-MPJPE (Procrustes), from :func:`eval.metrics.mpjpe`, over the joints each
mode marks valid; ``valid_pct`` says how many that is. ``rot_err_deg`` is the camera rotation
error (median over frames for per-frame modes, worst camera for multi-camera modes).

Run: ``python -m pipeline.geometry_bench`` (about a minute on one core).
"""
from __future__ import annotations

import os

# Throughput is reported per core: keep BLAS single-threaded when this is the entry point.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from eval.metrics import mpjpe  # noqa: E402
from pipeline import geometry as geo  # noqa: E402
from pipeline import multiview as mv  # noqa: E402
from pipeline.bvh import load_h36m17  # noqa: E402
from pipeline.cameras import (Camera, pixels_to_normalized, relative_pose,  # noqa: E402
                              rotation_error_deg)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CAMERAS_JSON = SHARED_DATA / "h36m_cameras.json"
CMU_CLIP = SHARED_DATA / "cmu-mocap" / "scaled_131_01.bvh"

MODES: tuple[str, ...] = ("per_frame", "per_frame_usac", "pooled", "vector_median", "multiview",
                          "calibrated", "calibrated_mv")
CONDITIONS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (2.0, 0.0), (5.0, 0.0), (10.0, 0.0),
                                               (5.0, 0.1))
"""(Gaussian noise sigma in px, share of outlier joints per view)."""


# --- the scene ----------------------------------------------------------------------------------

def load_h36m_rig(path: Path = CAMERAS_JSON, subject: str = "S1") -> dict[str, Camera]:
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


def load_cmu_walk(path: Path = CMU_CLIP, step: int = 2) -> np.ndarray:
    """(F, 17, 3) world poses (mm, z up) of the CMU clip, every ``step``-th frame, with the mean
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
    """Pseudo-labels of one mode in the reference camera: X (F, J, 3) root-relative,
    valid (F, J), camera rotation error (degrees), seconds spent."""

    X: np.ndarray
    valid: np.ndarray
    rot_err_deg: float
    seconds: float


def _pair_labels(s: Scene, R: np.ndarray, t: np.ndarray, partner: str, per_frame: bool,
                 normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    a, b = s.ref, partner
    X = geo.triangulate(s.x_norm[a], s.x_norm[b], R, t)
    reproj = geo.reprojection_error_px(X, s.x_norm[a], s.x_norm[b], R, t, s.focal[a], s.focal[b])
    valid = geo.label_validity(s.conf[a], s.conf[b], X, R, t, reproj, 0.5, s.reproj_px)
    valid &= s.mask[a] & s.mask[b]
    if normalize:
        Xn, scale = geo.normalize_scale(X, valid, per_frame=per_frame)
        return Xn, geo.normalized_validity(valid, scale)
    valid &= valid[:, :1]
    return np.where(valid[..., None], X - X[:, :1], 0.0), valid


def run_mode(s: Scene, mode: str, seed: int = 0) -> Labels:
    """Pseudo-labels of ``mode`` (see the module docstring) for scene ``s``."""
    t0 = time.perf_counter()
    a, b = s.ref, s.partner
    f_pair = 0.5 * (s.focal[a] + s.focal[b])
    both = s.mask[a] & s.mask[b]
    R_true, t_true = s.true_pose(b)
    if mode in ("per_frame", "per_frame_usac"):
        method = "ransac" if mode == "per_frame" else "usac_magsac"
        R, t, ok, _ = geo.fit_pair_per_frame(s.x_norm[a], s.x_norm[b], both, s.ransac_px,
                                             f_pair, method=method, seed=seed)
        X, valid = _pair_labels(s, R, t, b, per_frame=True)
        err = float(np.median(rotation_error_deg(R[ok], R_true))) if ok.any() else np.nan
    elif mode == "pooled":
        g = geo.fit_pair_pooled(s.x_norm[a], s.x_norm[b], both, s.ransac_px, f_pair, seed=seed)
        X, valid = _pair_labels(s, g.R, g.t, b, per_frame=False)
        err = float(rotation_error_deg(g.R, R_true))
    elif mode == "vector_median":
        poses, valids, errs = {}, {}, []
        for c in s.rig:
            if c == a:
                continue
            f = 0.5 * (s.focal[a] + s.focal[c])
            g = geo.fit_pair_pooled(s.x_norm[a], s.x_norm[c], s.mask[a] & s.mask[c],
                                    s.ransac_px, f, seed=seed)
            poses[c], valids[c] = _pair_labels(s, g.R, g.t, c, per_frame=False)
            errs.append(float(rotation_error_deg(g.R, s.true_pose(c)[0])))
        X = mv.fuse_pairs_vector_median(poses, valids)
        valid = np.isfinite(X).all(-1)
        X = np.nan_to_num(X)
        err = max(errs)
    elif mode in ("multiview", "calibrated_mv"):
        if mode == "multiview":
            reg = mv.register_cameras_detailed(s.x_norm, s.mask, s.ransac_px, s.focal,
                                               reference=a, seed=seed)
            cams, _, _ = mv.bundle_adjust(s.x_norm, reg.cameras, s.mask, s.focal, reference=a,
                                          gauge=reg.gauge, f_scale_px=s.ransac_px / 2,
                                          seed=seed)
        else:
            cams = {c: s.true_pose(c) for c in s.rig}
        Xm, vm, _ = mv.multiview_labels(s.x_norm, cams, s.mask, s.focal, s.reproj_px)
        if mode == "multiview":
            X, scale = geo.normalize_scale(Xm, vm, per_frame=False)
            valid = geo.normalized_validity(vm, scale)
        else:
            valid = vm & vm[:, :1]
            X = np.where(valid[..., None], Xm - Xm[:, :1], 0.0)
        err = max(float(rotation_error_deg(cams[c][0], s.true_pose(c)[0])) for c in cams)
    elif mode == "calibrated":
        X, valid = _pair_labels(s, R_true, t_true, b, per_frame=False, normalize=False)
        err = 0.0
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    return Labels(X, valid, err, time.perf_counter() - t0)


def score(labels: Labels, gt: np.ndarray) -> dict[str, float]:
    """N-MPJPE and PA-MPJPE (mm) over the valid joints of frames with at least 4 of them."""
    v = labels.valid
    frames = v.sum(-1) >= 4
    if not frames.any():
        return {"n_mpjpe_mm": np.nan, "pa_mpjpe_mm": np.nan, "valid_pct": 100.0 * v.mean()}
    X, G, m = labels.X[frames], gt[frames], v[frames]
    return {"n_mpjpe_mm": float(np.mean(mpjpe(X, G, m, alignment="scale"))),
            "pa_mpjpe_mm": float(np.mean(mpjpe(X, G, m, alignment="procrustes"))),
            "valid_pct": 100.0 * float(v.mean())}


def evaluate_noise_sweep(rig: dict[str, Camera] | None = None, X_world: np.ndarray | None = None,
                         conditions: Sequence[tuple[float, float]] = CONDITIONS,
                         modes: Sequence[str] = MODES, seed: int = 0) -> pd.DataFrame:
    """Pseudo-label error of every mode under every (noise px, outlier share) condition.

    Defaults: the H36M S1 rig and the CMU clip (every 2nd frame, 498 frames). Returns one row
    per (condition, mode): noise_px, outlier_rate, mode, n_mpjpe_mm, pa_mpjpe_mm, valid_pct,
    rot_err_deg, seconds.
    """
    rig = rig if rig is not None else load_h36m_rig()
    X_world = X_world if X_world is not None else load_cmu_walk()
    rows = []
    for noise, outliers in conditions:
        s = make_scene(rig, X_world, noise, outliers, seed=seed)
        gt = s.gt_ref
        for mode in modes:
            lab = run_mode(s, mode, seed=seed)
            rows.append({"noise_px": noise, "outlier_rate": outliers, "mode": mode,
                         **score(lab, gt), "rot_err_deg": lab.rot_err_deg,
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
    labels_pooled (triangulate + reprojection + validity + scale), per_frame_ransac and
    per_frame_usac (one five-point fit per frame), pooled_fit_seconds (one pooled E per pair),
    bundle_adjust_seconds (4 cameras, 150 BA frames) and register_seconds.
    """
    rig = rig if rig is not None else load_h36m_rig()
    X_world = X_world if X_world is not None else load_cmu_walk()
    s = make_scene(rig, X_world, noise_px, 0.0, seed=seed)
    a, b = s.ref, s.partner
    xa, xb = s.x_norm[a], s.x_norm[b]
    reps = max(1, 20000 // len(xa))
    XA, XB = np.tile(xa, (reps, 1, 1)), np.tile(xb, (reps, 1, 1))
    R, t = s.true_pose(b)
    t = t / np.linalg.norm(t)
    conf = np.ones(XA.shape[:2])
    f = s.focal[a]

    def labels() -> None:
        X = geo.triangulate(XA, XB, R, t)
        e = geo.reprojection_error_px(X, XA, XB, R, t, f, f)
        v = geo.label_validity(conf, conf, X, R, t, e, 0.5, 10.0)
        geo.normalize_scale(X, v, per_frame=False)

    both = s.mask[a] & s.mask[b]
    n_pf = 100
    out = {
        "triangulate_pooled": _rate(lambda: geo.triangulate(XA, XB, R, t), len(XA)),
        "labels_pooled": _rate(labels, len(XA)),
        "per_frame_ransac": _rate(lambda: geo.fit_pair_per_frame(
            xa[:n_pf], xb[:n_pf], both[:n_pf], s.ransac_px, f, method="ransac"), n_pf),
        "per_frame_usac": _rate(lambda: geo.fit_pair_per_frame(
            xa[:n_pf], xb[:n_pf], both[:n_pf], s.ransac_px, f, method="usac_magsac"), n_pf),
    }
    t0 = time.perf_counter()
    geo.fit_pair_pooled(xa, xb, both, s.ransac_px, f)
    out["pooled_fit_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg = mv.register_cameras_detailed(s.x_norm, s.mask, s.ransac_px, s.focal, reference=a)
    out["register_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mv.bundle_adjust(s.x_norm, reg.cameras, s.mask, s.focal, reference=a, gauge=reg.gauge,
                     f_scale_px=s.ransac_px / 2)
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
    from pipeline.manifest import load_manifest

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
    from pipeline.manifest import load_manifest
    from pipeline.synthetic.generate import simulate_sequence

    m = load_manifest(Path(__file__).resolve().parents[1] / "data_manifests" / "synthetic.yaml",
                      root="/")
    per = max(frames // 5, 2)
    X = np.concatenate([simulate_sequence(m, s, per).joints_world
                        for s in m.sequences if s.subject == "S1"])
    X[..., :2] -= X[:, 0, :2].mean(0)
    return X


def main(argv: Sequence[str] | None = None, out: str | None = None) -> dict[str, Any]:
    """Print the noise sweep and the throughput; returns both (for ``make bench``).

    Motion: the real CMU clip when the reference data beside the checkout has it, else the
    project's own procedural motion; cameras: the Human3.6M rig of data_manifests/h36m.yaml.
    """
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step", type=int, default=2, help="use every step-th mocap frame")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args([] if argv is None and out is not None else argv)
    if out is not None:
        args.json = Path(out) / "geometry.json"
    cv2.setNumThreads(1)
    rig = load_rig_from_manifest()
    if CMU_CLIP.exists():
        X, what = load_cmu_walk(step=args.step), "CMU 131_01 (real mocap)"
    else:
        X, what = load_synthetic_motion(), "procedural synthetic motion (CMU clip absent)"
    print(f"{what}, {len(X)} frames, through H36M S1 cameras (1000 px), reference "
          f"{list(rig)[0]}, pair partner {list(rig)[2]}; one core")
    df = evaluate_noise_sweep(rig, X, seed=args.seed)
    print(format_table(df))
    tp = measure_throughput(rig, X, seed=args.seed)
    print("\nthroughput (one core):")
    for k, v in tp.items():
        unit = "s" if k.endswith("seconds") else ("" if k == "frames" else "frame pairs/s")
        print(f"  {k:24s} {v:12.2f} {unit}")
    result = {"motion": what, "sweep": df.to_dict(orient="records"), "throughput": tp}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()

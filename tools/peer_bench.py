"""The project's geometry against aniposelib 0.8.0 (the peer), on the same 2D.

Cameras: the Human3.6M S1 rig (data_manifests/h36m.yaml, 1000 px, distortion included); motion:
the project's procedural motion, or a BVH clip. The same distorted-pixel 2D (Gaussian noise,
optionally 10 % outlier joints) goes to both: the project undistorts it
(:func:`pipeline.geometry.cameras.pixels_to_normalized`) and labels it with ``CameraRig.labels``;
aniposelib's ``CameraGroup`` (built from the same K, distortion, R, t) gets the pixels and
undistorts them itself (``CameraGroup.triangulate``: plain DLT over every view). Both are given
the true cameras. Accuracy: MPJPE (mm) against ground truth in the world frame over every
joint (the project's invalid joints included), and over the joints the project marks valid.
Throughput (points/s of this process's CPU time, best of 9 alternating windows, from distorted pixels,
undistortion included): pair triangulation (``pipeline.geometry.triangulation.triangulate``
vs aniposelib on two cameras), all-view labels, and all-view labels at 5 px with 10 % outlier
joints (the outlier path; the peer's DLT does the same work whatever the input). Self-calibration: ``CameraRig.register`` + ``bundle_adjust`` from the 2D alone vs
aniposelib's ``bundle_adjust_iter`` (extrinsics only) from the true cameras perturbed by 3 deg
and 5 % of the translation; rotation error is the worst camera's, relative to the first camera.

aniposelib is optional (``make bench`` tries to install it); without it the peer's columns are
empty. Run: ``python -m tools bench-peer [--bvh CLIP.bvh]``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from pipeline.geometry import epipolar as epi

from pipeline.geometry import triangulation as tri
from pipeline.geometry.cameras import Camera, pixels_to_normalized, rotation_error_deg
from pipeline.geometry.rig import CameraRig
from tools import docs_tables
from tools import geometry_bench as gb
from tools.docs_tables import docs_table_option

CONDITIONS = ((0.0, 0.0), (2.0, 0.0), (5.0, 0.0), (5.0, 0.1))
"""(Gaussian noise px, share of outlier joints per view)."""


def _peer():
    """aniposelib's cameras module, or None."""
    try:
        from aniposelib import cameras
        return cameras
    except Exception as exc:  # noqa: BLE001 - any import failure means "no peer"
        print(f"aniposelib not importable ({type(exc).__name__}: {exc}): peer columns empty")
        return None


def peer_group(ap, rig: dict[str, Camera], perturb: np.random.Generator | None = None):
    """aniposelib CameraGroup of the same cameras (world -> camera R, t in mm)."""
    cams = []
    for c, cam in rig.items():
        R = cam.R
        t = cam.t.astype(np.float64)
        if perturb is not None:
            w = perturb.normal(size=3)
            R = epi._rotvec_to_matrix(w / np.linalg.norm(w) * np.radians(3.0)) @ R
            t = t + perturb.normal(size=3) * 0.05 * np.linalg.norm(t) / np.sqrt(3)
        cams.append(ap.Camera(matrix=cam.K, dist=np.ravel(cam.dist), size=(cam.width, cam.height),
                              rvec=cv2.Rodrigues(R)[0].ravel(), tvec=t, name=c))
    return ap.CameraGroup(cams)


def _pixels(rig, X, noise, outliers, seed):
    rng = np.random.default_rng(seed)
    return {c: gb.observe(X, rig[c], noise, outliers, rng)[0] for c in rig}


def _ours_labels(rig, crig, uv, thr):
    x = {c: pixels_to_normalized(uv[c], rig[c].K, rig[c].dist) for c in rig}
    return crig.labels(x, {c: np.isfinite(v).all(-1) for c, v in x.items()}, thr)


def _mpjpe(X, gt, m=None):
    e = np.linalg.norm(X - gt, axis=-1)
    if m is not None:
        e = e[m]
    return float(np.nanmean(np.where(np.isfinite(e), e, np.nan))) if e.size else float("nan")


def _rates(fns: dict[Any, Any], n: int, min_seconds: float = 0.3, windows: int = 9
           ) -> dict[Any, float]:
    """Points per second of this process's CPU time for each of ``fns`` (name -> callable on
    ``n`` points), the best of ``windows`` windows of at least ``min_seconds`` each. The
    windows of the functions alternate, so that other jobs sharing the cores (and the clock
    speed they leave) weigh on all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, 0.0)
    for _ in range(windows):
        for name, fn in fns.items():
            k, t0 = 0, time.process_time()
            while time.process_time() - t0 < min_seconds:
                fn()
                k += 1
            best[name] = max(best[name], k * n / (time.process_time() - t0))
    return best


def run(out: str | None = None, bvh: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Print the comparison as a Markdown table; return it (and write ``out/peer.json``)."""
    cv2.setNumThreads(1)
    ap = _peer()
    rig = gb.load_rig_from_manifest()
    X = gb.load_bvh_motion(bvh) if bvh is not None else gb.load_synthetic_motion()
    what = f"{Path(bvh).name} (BVH)" if bvh is not None else "procedural synthetic motion"
    crig = CameraRig({c: (cam.R, cam.t) for c, cam in rig.items()},
                     {c: float(0.5 * (cam.K[0, 0] + cam.K[1, 1])) for c, cam in rig.items()})
    group = peer_group(ap, rig) if ap else None
    cams = list(rig)
    rows: list[dict[str, Any]] = []
    for noise, outl in CONDITIONS:
        uv = _pixels(rig, X, noise, outl, seed)
        thr = max(3.0, 3.0 * noise)
        Xo, valid, _ = _ours_labels(rig, crig, uv, thr)
        row = {"metric": f"MPJPE mm, {noise:g} px" + (f", {outl:.0%} outliers" if outl else ""),
               "ours": _mpjpe(Xo, X), "ours_valid_only": _mpjpe(Xo, X, valid),
               "valid_pct": 100.0 * float(valid.mean())}
        if group is not None:
            Xp = group.triangulate(np.stack([uv[c].reshape(-1, 2) for c in cams])).reshape(X.shape)
            row["peer"] = _mpjpe(Xp, X)
            row["peer_on_ours_valid"] = _mpjpe(Xp, X, valid)
        rows.append(row)
    # throughput from distorted pixels, 2 px noise, frames tiled to ~20k points
    uv = _pixels(rig, X, 2.0, 0.0, seed)
    reps = max(1, 20000 // X[:, :, 0].size)
    uvt = {c: np.tile(v, (reps, 1, 1)) for c, v in uv.items()}
    n = uvt[cams[0]].shape[0] * uvt[cams[0]].shape[1]
    a, b = cams[0], cams[2]
    Ra, ta = rig[a].R, rig[a].t
    Rab, tab = rig[b].R @ Ra.T, rig[b].t - rig[b].R @ Ra.T @ ta

    def ours_pair():
        xa = pixels_to_normalized(uvt[a], rig[a].K, rig[a].dist)
        xb = pixels_to_normalized(uvt[b], rig[b].K, rig[b].dist)
        return tri.triangulate(xa, xb, Rab, tab)

    # the outlier path: 5 px noise, 10 % outlier joints per view, same tiling
    uvo = {c: np.tile(v, (reps, 1, 1)) for c, v in _pixels(rig, X, 5.0, 0.1, seed).items()}
    all_view = "all-view labels (4 views), points/s"
    outlier_path = "all-view labels (4 views), 5 px, 10 % outlier joints, points/s"
    fns = {("pair triangulation, points/s", "ours"): ours_pair,
           (all_view, "ours"): lambda: _ours_labels(rig, crig, uvt, 6.0),
           (outlier_path, "ours"): lambda: _ours_labels(rig, crig, uvo, 15.0)}
    if group is not None:
        pair = group.subset_cameras_names([a, b])
        pa = np.stack([uvt[c].reshape(-1, 2) for c in (a, b)])
        p4 = np.stack([uvt[c].reshape(-1, 2) for c in cams])
        p4o = np.stack([uvo[c].reshape(-1, 2) for c in cams])
        fns.update({("pair triangulation, points/s", "peer"): lambda: pair.triangulate(pa),
                    (all_view, "peer"): lambda: group.triangulate(p4),
                    (outlier_path, "peer"): lambda: group.triangulate(p4o)})
    tp: dict[str, dict[str, float]] = {}
    for (row, who), rate in _rates(fns, n).items():
        tp.setdefault(row, {})[who] = rate
    calib = _calibration(ap, rig, X, seed)
    table = format_table(rows, tp, calib, ap is not None)
    print(f"{what}, {len(X)} frames x 17 joints, H36M S1 cameras (1000 px), one core; "
          f"peer: {'aniposelib 0.8.0' if ap else 'not installed'}\n")
    print(table)
    result = {"motion": what, "accuracy": rows, "throughput": tp, "calibration": calib,
              "peer_available": ap is not None, "table": table}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "peer.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def _rel_rot_err(Rs: dict[str, np.ndarray], rig: dict[str, Camera]) -> float:
    """Worst camera rotation error (deg) relative to the first camera."""
    ids = list(rig)
    r0, g0 = Rs[ids[0]], rig[ids[0]].R
    return max(float(rotation_error_deg(Rs[c] @ r0.T, rig[c].R @ g0.T)) for c in ids[1:])


def _calibration(ap, rig, X, seed, noise=2.0) -> dict[str, dict[str, float]]:
    """Self-calibration at 2 px: seconds and worst relative rotation error (deg)."""
    uv = _pixels(rig, X, noise, 0.0, seed)
    x = {c: pixels_to_normalized(uv[c], rig[c].K, rig[c].dist) for c in rig}
    m = {c: np.isfinite(v).all(-1) for c, v in x.items()}
    f = {c: float(0.5 * (cam.K[0, 0] + cam.K[1, 1])) for c, cam in rig.items()}
    t0 = time.perf_counter()
    reg, _ = CameraRig.register(x, m, max(1.0, 2.5 * noise), f, seed=seed)
    ba, _, _ = reg.bundle_adjust({c: x[c] for c in reg.cameras}, m, gauge=reg.gauge, seed=seed)
    out = {"ours": {"seconds": time.perf_counter() - t0,
                    "rot_err_deg": _rel_rot_err({c: p[0] for c, p in ba.poses.items()}, rig)
                    if len(ba) == len(rig) else float("nan"), "start": "2D only"}}
    if ap is not None:
        group = peer_group(ap, rig, perturb=np.random.default_rng(seed + 1))
        start = _rel_rot_err({c.get_name(): cv2.Rodrigues(c.get_rotation())[0]
                              for c in group.cameras}, rig)
        p2 = np.stack([uv[c].reshape(-1, 2) for c in rig])
        t0 = time.perf_counter()
        group.bundle_adjust_iter(p2, only_extrinsics=True, verbose=False)
        out["peer"] = {"seconds": time.perf_counter() - t0, "start_rot_err_deg": start,
                       "rot_err_deg": _rel_rot_err({c.get_name(): cv2.Rodrigues(
                           c.get_rotation())[0] for c in group.cameras}, rig),
                       "start": "true cameras, 3 deg / 5 % perturbed"}
    return out


def _f(v: float | None, d: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:,.{d}f}"


def format_table(rows, tp, calib, have_peer) -> str:
    """The Markdown table: ours, aniposelib and their ratio (ours / peer; < 1 is better for
    errors and seconds, > 1 better for throughput)."""
    lines = ["| measure | ours | aniposelib 0.8.0 | ours / peer |", "|---|---:|---:|---:|"]
    for r in rows:
        p = r.get("peer")
        lines.append(f"| {r['metric']} (all joints) | {_f(r['ours'])} | {_f(p)} | "
                     f"{_f(r['ours'] / p, 2) if p else '–'} |")
        pv = r.get("peer_on_ours_valid")
        lines.append(f"| {r['metric']} (our valid joints, {r['valid_pct']:.1f} %) | "
                     f"{_f(r['ours_valid_only'])} | {_f(pv)} | "
                     f"{_f(r['ours_valid_only'] / pv, 2) if pv else '–'} |")
    for k, v in tp.items():
        p = v.get("peer")
        lines.append(f"| {k} | {_f(v['ours'], 0)} | {_f(p, 0)} | "
                     f"{_f(v['ours'] / p, 2) if p else '–'} |")
    o, p = calib["ours"], calib.get("peer", {})
    lines.append(f"| self-calibration seconds (ours: 2D only; peer: BA from perturbed truth) | "
                 f"{_f(o['seconds'])} | {_f(p.get('seconds'))} | "
                 f"{_f(o['seconds'] / p['seconds'], 2) if p else '–'} |")
    lines.append(f"| self-calibration worst rotation error, deg (peer start "
                 f"{_f(p.get('start_rot_err_deg'), 2)}) | {_f(o['rot_err_deg'], 3)} | "
                 f"{_f(p.get('rot_err_deg'), 3)} | "
                 f"{_f(o['rot_err_deg'] / p['rot_err_deg'], 2) if p else '–'} |")
    return "\n".join(lines)


@click.command("bench-peer")
@click.option("--out", default="outputs/bench", show_default=True, help="Folder for peer.json.")
@click.option("--bvh", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Motion clip (BVH); default: the procedural synthetic motion.")
@docs_table_option("peer")
def main(out: str, bvh: Path | None, docs_table: Path | None) -> None:
    """The project's geometry against aniposelib 0.8.0 on the same 2D: accuracy at 0/2/5 px
    and with 10 % outliers, pair and all-view throughput, self-calibration."""
    result = run(out=out, bvh=bvh)
    docs_tables.write(docs_table, f"Motion: {result['motion']}.\n\n{result['table']}")

"""Thresholds from the data against fixed pixels: all-view labels beside plain DLT.

Cameras: the Human3.6M S1 rig (data_manifests/h36m.yaml, 1000 px, distortion included);
motion: the project's procedural motion, or a BVH clip (CMU 131_01). Each view's 2D is the
projection plus Gaussian noise (and optionally a share of outlier joints moved 30-150 px, as
``tools.geometry_bench.observe``; here each outlier is marked). Per condition:

* plain DLT: every joint triangulated from all four views with the true cameras, nothing
  refused (``CameraRig.triangulate``: DLT + Gauss-Newton, the triangulation of aniposelib's
  ``CameraGroup.triangulate`` without its optional RANSAC);
* ``calibrated-multiview`` (the true cameras, robust all-view labels) and ``multiview``
  (self-calibrated from the 2D alone), each run through the mode registry exactly as the job
  runs it, at the default settings (thresholds from the measured noise,
  :mod:`pipeline.geometry.noise`) and at the former fixed defaults (RANSAC 1 px, validity
  10 px).

Errors: ``calibrated-multiview`` and DLT in mm against the truth (every joint, no alignment:
the cameras are metric); ``multiview`` N-MPJPE (root-relative, scale-aligned per frame; DLT's
N-MPJPE beside it). ``good refused``: the share of good joints (no outlier in any view) that
are not labels. Run: ``python -m tools bench-thresholds [--bvh CLIP.bvh]``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.metrics import ALIGNMENTS, mpjpe
from pipeline.geometry.cameras import pixels_to_normalized
from pipeline.geometry.modes import GeometrySettings, Views, get_mode
from pipeline.geometry.rig import CameraRig
from tools import geometry_bench as gb

CONDITIONS = ((2.0, 0.0), (5.0, 0.0), (10.0, 0.0), (5.0, 0.1))
"""(Gaussian noise px, share of outlier joints per view)."""
FIXED = {"ransac_threshold_px": 1.0, "reproj_threshold_px": 10.0}
"""The former defaults of ``make pseudolabels``."""


def observe_marked(X: np.ndarray, cam, noise_px: float, outlier_rate: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(F, J, 2) normalised detector-like joints of ``cam`` and the (F, J) outlier marks."""
    uv = cam.project_world(X) + rng.normal(0.0, noise_px, X.shape[:-1] + (2,))
    out = rng.random(X.shape[:-1]) < outlier_rate
    ang = rng.uniform(0, 2 * np.pi, out.shape)
    r = rng.uniform(30.0, 150.0, out.shape)
    uv = uv + out[..., None] * np.stack([np.cos(ang), np.sin(ang)], -1) * r[..., None]
    return pixels_to_normalized(uv, cam.K, cam.dist), out


def _world_rig(rig) -> CameraRig:
    return CameraRig({c: (cam.R, cam.t) for c, cam in rig.items()},
                     {c: float(0.5 * (cam.K[0, 0] + cam.K[1, 1])) for c, cam in rig.items()})


def _labels(mode: str, views: Views, s: GeometrySettings) -> tuple[Any, Any, float]:
    """The mode's fit and the labels of its first labelled camera, and the seconds taken."""
    t0 = time.perf_counter()
    m = get_mode(mode)
    g = m.fit("bench", views, s)
    labs = [lab for shard in m.shards(g) for lab in m.label(views, g, s, shard)]
    return g, (labs[0] if labs else None), time.perf_counter() - t0


def _n_mpjpe(X: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    Xr, gr = X - X[:, :1], gt - gt[:, :1]
    rows = valid.sum(-1) >= 4
    v = valid & valid[:, :1]
    e = mpjpe(Xr[rows], gr[rows], v[rows], alignment=ALIGNMENTS["n_mpjpe"])
    return float(np.nanmean(e)) if np.isfinite(e).any() else float("nan")


def condition_rows(rig, X: np.ndarray, noise_px: float, outliers: float, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """Every method's row of one (noise, outliers) condition."""
    rng = np.random.default_rng(seed)
    obs = {c: observe_marked(X, rig[c], noise_px, outliers, rng) for c in rig}
    x = {c: o[0] for c, o in obs.items()}
    good = ~np.any([o[1] for o in obs.values()], axis=0)
    focal = {c: float(0.5 * (cam.K[0, 0] + cam.K[1, 1])) for c, cam in rig.items()}
    views = Views(x, {c: np.ones(X.shape[:2]) for c in rig}, focal,
                  {c: (cam.R, cam.t) for c, cam in rig.items()})
    cond = f"{noise_px:g} px" + (f" + {outliers:.0%} outliers" if outliers else "")
    ref = next(iter(rig))
    gt_ref = rig[ref].world_to_camera(X)
    X_dlt = rig[ref].world_to_camera(_world_rig(rig).triangulate(x))
    err = np.linalg.norm(X_dlt - gt_ref, axis=-1)
    rows = [{"condition": cond, "method": "plain DLT (true cameras)", "thresholds": "none",
             "error_mm": float(err.mean()),
             "n_mpjpe_mm": _n_mpjpe(X_dlt, gt_ref, np.ones_like(good)),
             "valid_pct": 100.0, "good_refused_pct": 0.0}]
    for mode in ("calibrated-multiview", "multiview"):
        for name, s in (("from the noise (default)", GeometrySettings(seed=seed)),
                        ("fixed 1 / 10 px (former default)", GeometrySettings(seed=seed, **FIXED))):
            g, lab, sec = _labels(mode, views, s)
            row = {"condition": cond, "method": mode, "thresholds": name, "seconds": sec}
            if lab is not None:
                gt = rig[lab.camera].world_to_camera(X)[lab.frames]
                v = lab.valid
                e = np.linalg.norm(lab.X_camera - gt, axis=-1)
                row.update(valid_pct=100.0 * float(v.mean()),
                           good_refused_pct=100.0 * float((good[lab.frames] & ~v).sum()
                                                          / max(good[lab.frames].sum(), 1)),
                           n_mpjpe_mm=_n_mpjpe(lab.X_camera, gt, v))
                if mode == "calibrated-multiview":
                    row["error_mm"] = float(e[v].mean())
            th = g.thresholds
            row["reproj_px"] = float(np.mean(list(th.reproj_px.values())))
            row["noise_px"] = float(np.nanmean(list(th.noise_px.values())))
            rows.append(row)
    return rows


def run(out: str | None = None, bvh: Path | None = None, step: int = 2, frames: int = 250,
        seed: int = 0) -> dict[str, Any]:
    """Every condition's rows; print the table and write ``out/thresholds.json``."""
    rig = gb.load_rig_from_manifest()
    X = gb.load_bvh_motion(bvh, step) if bvh is not None else gb.load_synthetic_motion(frames)
    what = f"{Path(bvh).name} (BVH), {len(X)} frames" if bvh is not None else \
        f"procedural synthetic motion, {len(X)} frames"
    rows = [r for n, o in CONDITIONS for r in condition_rows(rig, X, n, o, seed)]
    table = format_table(pd.DataFrame(rows))
    print(f"{what}, H36M S1 cameras (1000 px)\n\n{table}")
    result = {"motion": what, "rows": rows, "table": table}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "thresholds.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def format_table(df: pd.DataFrame) -> str:
    """The Markdown table: one row per condition, method and thresholds."""
    f = lambda v, d=1: "–" if v is None or not np.isfinite(v) else f"{v:.{d}f}"  # noqa: E731
    lines = ["| 2D noise | method | thresholds | error mm | N-MPJPE mm | valid % | good joints "
             "refused % | mean validity threshold px (noise px) |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in df.to_dict("records"):
        th = "–" if not np.isfinite(r.get("reproj_px", np.nan)) else \
            f"{r['reproj_px']:.1f} ({f(r.get('noise_px', np.nan), 2)})"
        lines.append(f"| {r['condition']} | {r['method']} | {r['thresholds']} | "
                     f"{f(r.get('error_mm', np.nan))} | {f(r.get('n_mpjpe_mm', np.nan))} | "
                     f"{f(r.get('valid_pct', np.nan))} | {f(r.get('good_refused_pct', np.nan), 2)} "
                     f"| {th} |")
    return "\n".join(lines)

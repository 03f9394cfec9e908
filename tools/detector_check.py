"""Is a 2D detector fit for labelling a dataset? ``make detector-check MANIFEST=... DETECTOR=...``

Runs the detector on a sample (the first ``max_frames`` frames of every sequence) through
stage 1's own code path (``pipeline.job.plan.run_job`` into ``--out``), then reports

* on frames with 2D ground truth (``pipeline.store.ground_truth.SequenceGroundTruth``): the pixel
  error per joint and overall, PCK at ``pck_px``, the detection rate, and how well the
  detector's confidence ranks its errors (Spearman correlation of confidence vs error, which is
  negative when confidence is informative; mean error of the most vs least confident third);
* label-free, after the geometry fit (any footage): the cross-view consistency of the
  detections (``pipeline.detect.consistency``: median reprojection error of the confident joints per
  camera, share that became labels) and the Sampson distance of confident joints under every
  fitted camera pair's essential matrix (pixels).

The verdict (fit for labelling or not) uses the ground-truth figures when there are any, else
the label-free ones; the thresholds are in :data:`THRESHOLDS` and in the report. Printed, and
written to ``--out``/detector_check.json and .md.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from scipy.stats import spearmanr

from pipeline.detect.consistency import run_consistency
from pipeline.detect.network import DetectorUnavailable
from pipeline.detect.registry import AUTO, DETECTOR_CHOICES, FileDetector
from pipeline.store.ground_truth import SequenceGroundTruth
from pipeline.job.plan import local_client, resolve_job, run_job, run_reproj_threshold
from pipeline.job.config import JobConfig, load_run, threshold_options
from pipeline.store.manifest import ManifestError
from pipeline.job.tasks import load_sequence_detections, selected_sequences

THRESHOLDS = {
    "gt_min_pck": 0.8,             # share of joints within pck_px of the ground truth
    "gt_min_detection_rate": 0.8,  # share of (frame, joint) with a confident detection
    "free_max_median_reproj_factor": 0.5,  # x reproj_threshold_px, per camera
    "free_min_valid_share": 0.7,   # confident joints that became labels
}
"""What "fit for labelling" means here (stage 1's own flag, pipeline.detect.consistency, is laxer: it
catches grossly inconsistent runs)."""


def ground_truth_errors(cfg: JobConfig) -> dict[str, np.ndarray] | None:
    """Per (frame, camera, joint) pixel error, confidence and joint index of the run's
    detections against the 2D ground truth; None when the manifest has none."""
    run_cfg, m = load_run(cfg.out)
    det = FileDetector.from_parquet(run_cfg.run.detections_dir)
    errs, confs, joints = [], [], []
    for seq in selected_sequences(run_cfg):
        gt = SequenceGroundTruth.find(m, seq)
        for cam in seq.cameras:
            g = det.groups.get((m.dataset, seq.subject, seq.action, seq.subaction, cam))
            truth = gt.camera_array(cam, "joints_2d") if gt is not None else None
            if g is None or truth is None:
                continue
            keep = g.frames < len(truth)
            e = np.linalg.norm(g.joints[keep] - truth[g.frames[keep]], axis=-1)
            ok = np.isfinite(truth[g.frames[keep]]).all(-1)
            errs.append(np.where(ok, e, np.nan)[ok])
            confs.append(g.conf[keep][ok])
            joints.append(np.broadcast_to(np.arange(e.shape[1]), e.shape)[ok])
    if not errs:
        return None
    return {"error": np.concatenate(errs), "conf": np.concatenate(confs),
            "joint": np.concatenate(joints)}


def gt_figures(e: dict[str, np.ndarray], conf_threshold: float, pck_px: float,
               joint_names: list[str]) -> dict[str, Any]:
    """Error, PCK, detection rate and confidence ranking from :func:`ground_truth_errors`."""
    found = np.isfinite(e["error"]) & (e["conf"] >= conf_threshold)
    err, conf, joint = e["error"][found], e["conf"][found], e["joint"][found]
    out: dict[str, Any] = {"joints": int(e["error"].size), "detection_rate": float(found.mean()),
                           "pck_px": pck_px}
    if not err.size:
        return out
    out.update(mean_px=float(err.mean()), median_px=float(np.median(err)),
               pck=float((err <= pck_px).mean()),
               per_joint_mean_px={joint_names[j]: float(err[joint == j].mean())
                                  for j in np.unique(joint)})
    rho = spearmanr(conf, err).statistic if np.ptp(conf) > 0 else float("nan")
    order = np.argsort(-conf, kind="stable")
    third = max(1, len(order) // 3)
    out.update(spearman_conf_vs_error=float(rho),
               most_confident_third_mean_px=float(err[order[:third]].mean()),
               least_confident_third_mean_px=float(err[order[-third:]].mean()))
    return out


def sampson_px(cfg: JobConfig) -> dict[str, float]:
    """Median Sampson distance (pixels) of the joints confident in both views under every fitted
    pair's essential matrix (geometry.parquet), per pair "a-b"."""
    run_cfg, m = load_run(cfg.out)
    geo = run_cfg.run.geometry()
    if geo is None or not len(geo) or "E" not in geo:
        return {}
    out: dict[str, list[np.ndarray]] = {}
    for seq in selected_sequences(run_cfg):
        views = load_sequence_detections(run_cfg, seq).views(m, seq.subject)
        rows = geo[(geo["subject"] == seq.subject) & geo["ok"].astype(bool)]
        for _, r in rows.iterrows():
            E = np.asarray(r["E"], np.float64).reshape(3, 3)
            a, b = r["cam_a"], r["cam_b"]
            if not np.isfinite(E).all() or not np.abs(E).sum() or a not in views.x \
                    or b not in views.x:
                continue
            both = views.usable(a, cfg.conf_threshold) & views.usable(b, cfg.conf_threshold)
            d = _sampson(E, views.x[a][both], views.x[b][both])
            out.setdefault(f"{a}-{b}", []).append(d * (views.focal[a] + views.focal[b]) / 2)
    return {k: float(np.median(np.concatenate(v))) for k, v in out.items()
            if np.concatenate(v).size}


def _sampson(E: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """First-order geometric distance of correspondences (normalised coordinates) to
    x_b^T E x_a = 0."""
    ha = np.concatenate([xa, np.ones((len(xa), 1))], 1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], 1)
    Ea, Eb = ha @ E.T, hb @ E
    num = np.einsum("ij,ij->i", hb, Ea) ** 2
    den = Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Eb[:, 0] ** 2 + Eb[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-300))


def verdict(report: dict[str, Any], reproj_threshold_px: float) -> tuple[bool, list[str]]:
    """(fit for labelling, reasons) from the ground truth when present, else label-free; a run
    without labels because its geometry refused every pair is not fit, for that reason (not
    the detector's: the report's ``refused_geometry`` names the pairs and why)."""
    t, why = THRESHOLDS, []
    g = report.get("ground_truth")
    if g:
        if g.get("pck", 0.0) < t["gt_min_pck"]:
            why.append(f"PCK@{g['pck_px']:g}px {g.get('pck', 0.0):.2f} < {t['gt_min_pck']}")
        if g["detection_rate"] < t["gt_min_detection_rate"]:
            why.append(f"detection rate {g['detection_rate']:.2f} < "
                       f"{t['gt_min_detection_rate']}")
        return not why, why
    if report.get("refused_geometry"):  # no label: nothing to judge the detections by
        return False, [report["refused_geometry"]]
    c = report["consistency"]
    limit = t["free_max_median_reproj_factor"] * reproj_threshold_px
    for cam, f in c["per_camera"].items():
        if not f["median_reproj_px"] <= limit:
            why.append(f"camera {cam}: median reprojection error {f['median_reproj_px']:.1f} px "
                       f"> {limit:g} px")
    if not c["valid_share"] >= t["free_min_valid_share"]:
        why.append(f"labelled share {c['valid_share']:.2f} < {t['free_min_valid_share']}")
    return not why, why


def check_detector(cfg: JobConfig, client: Any, pck_px: float = 10.0,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run stage 1 on the sample of ``cfg`` and measure its detections (the report dict);
    ``log`` receives the detector line (``detector: auto -> net: <why>``) before the run."""
    _, choice = resolve_job(cfg)
    if log is not None:
        log(choice.line())
    summary = run_job(cfg, client, progress=False)
    run_cfg, m = load_run(cfg.out)
    reproj_px = run_reproj_threshold(cfg, summary.thresholds)  # given, else the largest measured
    report: dict[str, Any] = {
        "manifest": str(m.path), "dataset": m.dataset, "detector": run_cfg.detector,
        "detector_requested": run_cfg.detector_requested or run_cfg.detector,
        "detector_reason": choice.reason,
        "max_frames": cfg.max_frames, "geometry": cfg.geometry, "run": str(cfg.out),
        "frames": summary.frames, "detection_rows": summary.detection_rows,
        "failed_frames": summary.failed_frames, "refused_geometry": summary.refused_geometry,
        "reproj_threshold_px": reproj_px, "stage1_thresholds": summary.thresholds,
        "thresholds": THRESHOLDS}
    e = ground_truth_errors(run_cfg)
    if e is not None:
        report["ground_truth"] = gt_figures(e, cfg.conf_threshold, pck_px, list(m.joint_set.names))
    report["consistency"] = run_consistency(run_cfg.run, cfg.conf_threshold, reproj_px).to_dict()
    report["sampson_median_px"] = sampson_px(run_cfg)
    report["fit_for_labelling"], report["reasons"] = verdict(report, reproj_px)
    report["basis"] = "ground truth" if e is not None else "label-free (cross-view consistency)"
    return report


def to_markdown(r: dict[str, Any]) -> str:
    """The report as Markdown (what is printed and written to detector_check.md)."""
    lines = [f"# Detector check: {r['detector_requested']} -> {r['detector']} on {r['dataset']}",
             "", f"why {r['detector']}: {r['detector_reason']}", "",
             f"manifest {r['manifest']}, first {r['max_frames']} frames per sequence, "
             f"{r['frames']} frames ({r['failed_frames']} failed), geometry {r['geometry']}", ""]
    verdict_line = "FIT" if r["fit_for_labelling"] else "NOT FIT"
    lines += [f"**{verdict_line} for labelling** (basis: {r['basis']})"
              + ("" if r["fit_for_labelling"] else ": " + "; ".join(r["reasons"])), ""]
    g = r.get("ground_truth")
    if g:
        lines += ["## Against the 2D ground truth", "", "| figure | value |", "|---|---|"]
        for k in ("joints", "detection_rate", "mean_px", "median_px", "pck",
                  "spearman_conf_vs_error", "most_confident_third_mean_px",
                  "least_confident_third_mean_px"):
            if k in g:
                lines.append(f"| {k}{'@' + format(g['pck_px'], 'g') + 'px' if k == 'pck' else ''}"
                             f" | {g[k]:.3g} |")
        worst = sorted(g.get("per_joint_mean_px", {}).items(), key=lambda kv: -kv[1])[:5]
        lines += ["", "worst joints (mean px): " + ", ".join(f"{j} {v:.1f}" for j, v in worst), ""]
    c = r["consistency"]
    lines += ["## Cross-view consistency (label-free)", "",
              f"all cameras: median reprojection error {c['median_reproj_px']:.2f} px, labelled "
              f"share {c['valid_share']:.2f} of {c['confident_joints']} confident joints", "",
              "| camera | median reproj px | labelled share | confident joints |", "|---|---|---|---|"]
    lines += [f"| {cam} | {f['median_reproj_px']:.2f} | {f['valid_share']:.2f} | "
              f"{f['confident_joints']} |" for cam, f in c["per_camera"].items()]
    if r["sampson_median_px"]:
        lines += ["", "Sampson distance under the fitted pairs (median px): " + ", ".join(
            f"{k} {v:.2f}" for k, v in r["sampson_median_px"].items())]
    lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in r["thresholds"].items())
              + f" (reproj_threshold_px {r['reproj_threshold_px']:g})"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "detector_check.json", out / "detector_check.md"
    j.write_text(json.dumps(report, indent=1, default=float))
    md.write_text(to_markdown(report))
    return j, md


@click.command()
@click.option("--manifest", required=True, help="Dataset manifest.")
@click.option("--detector", type=click.Choice(DETECTOR_CHOICES), default=AUTO, show_default=True)
@click.option("--checkpoint-2d", default="outputs/runs/pose2d/best.pt", show_default=True)
@click.option("--detections", default=None, help="Detections file or folder (--detector file).")
@click.option("--allow-foreign-detector", is_flag=True, default=False,
              help="Measure the 2D network on a dataset it was not trained on.")
@click.option("--noise-px", default=0.0, show_default=True, help="Oracle (gt) noise.")
@click.option("--outlier-rate", default=0.0, show_default=True, help="Oracle (gt) outliers.")
@click.option("--out", default="outputs/detector_check/run", show_default=True,
              help="Folder of the sample's stage-1 run and of the report.")
@click.option("--max-frames", default=40, show_default=True, help="Frames per sequence.")
@click.option("--subjects", default=None, help="Comma-separated subjects (default: all).")
@click.option("--geometry", default="pooled", show_default=True)
@threshold_options
@click.option("--pck-px", default=10.0, show_default=True, help="PCK threshold (pixels).")
@click.option("--root", default=None, type=click.Path(file_okay=False, resolve_path=True),
              help="Override the manifest's data root (relative to the working directory).")
@click.option("--workers", default=min(2, os.cpu_count() or 1), show_default=True)
def main(manifest, detector, checkpoint_2d, detections, allow_foreign_detector, noise_px,
         outlier_rate, out, max_frames, subjects, geometry, ransac_threshold_px,
         reproj_threshold_px, pck_px, root, workers) -> None:
    """Is DETECTOR fit for labelling MANIFEST? 2D error and confidence ranking against the
    ground truth where there is one, cross-view consistency after the geometry fit everywhere."""
    try:
        cfg = JobConfig(manifest=manifest, out=out, geometry=geometry, detector=detector,
                        checkpoint_2d=checkpoint_2d, detections=detections,
                        allow_foreign_detector=allow_foreign_detector, noise_px=noise_px,
                        outlier_rate=outlier_rate, max_frames=max_frames, root=root,
                        subjects=tuple(subjects.split(",")) if subjects else None,
                        ransac_threshold_px=ransac_threshold_px,
                        reproj_threshold_px=reproj_threshold_px, write_crops=False)
        with local_client(workers) as client:
            report = check_detector(cfg, client, pck_px=pck_px,
                                    log=lambda line: click.echo(line, err=True))
    except (ManifestError, DetectorUnavailable, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    paths = write_report(report, Path(out))
    click.echo(to_markdown(report))
    click.echo(f"report: {paths[0]}  {paths[1]}")

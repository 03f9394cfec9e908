"""Pseudo-label quality report of stage-1 run folders (DESIGN.md §6, §7).

A run folder (read through :class:`pipeline.store.run_folder.RunFolder`) holds ``shards/``
(pipeline.store.shards), ``config.json`` (the resolved stage-1 configuration: ``geometry`` mode,
``detector``, ``noise_px``, ``outlier_rate``, ``metric_scale`` ...) and ``geometry.parquet`` (one row per subject and camera pair: ``subject, cam_a, cam_b,
rot_err_deg, inlier_ratio, ok, reason`` ...).

What is measured, per run, per camera pair and per joint:

- pseudo-label error against ``gt_joints_3d`` on the rows that have it, over the **valid**
  joints only (``valid`` is the label mask the trainer uses): N-MPJPE and PA-MPJPE with the
  alignments of :data:`eval.metrics.ALIGNMENTS`. Both poses are made root-relative first. The
  labels' scale is canonical (not metric) unless the run says ``"metric_scale": true``
  (:attr:`pipeline.store.run_folder.RunFolder.metric_scale`); the unaligned MPJPE is reported only
  then (:func:`label_metrics`);
- the reprojection error of the valid joints (pixels, max over the two views, from the shard);
- the valid share: valid joints / all joints of all rows;
- the camera rotation error against the extrinsics: ``geometry.parquet``'s ``rot_err_deg`` per
  pair and the median of the rows' ``pair_rot_deg_to_gt`` (the per-frame mode has one per row).

Outputs under ``out``: ``report.md`` (everything), ``summary.csv`` (one row per run),
``<run>/per_pair.{csv,md}``, ``<run>/per_joint.{csv,md}``, ``<run>/*.png`` and, with several
runs, ``error_vs_noise.png``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from eval import plots
from eval.metrics import ALIGNMENTS, ERROR_METRICS, align, joint_errors, mpjpe, root_relative
from eval.tables import to_markdown, write_table
from pipeline.joints import H36M17, JointSet
from pipeline.store.manifest import ManifestError, load_manifest
from pipeline.store.run_folder import RunFolder
from pipeline.store.shards import column_array

_ROW_COLUMNS = ["subject", "action", "subaction", "frame", "camera", "partner_camera",
                "pair_rot_deg_to_gt", "person"]
_GEOMETRY_COLUMNS = ["rot_err_deg", "inlier_ratio", "ok", "reason", "chosen"]
_SHARES = {"valid_share": 3, "inlier_ratio": 3}


@dataclass(frozen=True)
class Run:
    """One stage-1 run folder, loaded.

    Attributes:
        name: its label in the report. folder: the run folder.
        config: ``config.json`` ({} when absent). table: every shard row.
        geometry: ``geometry.parquet`` (one row per subject and camera pair), or None.
    """

    name: str
    folder: RunFolder
    config: dict[str, Any]
    table: pa.Table
    geometry: pd.DataFrame | None

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def metric_scale(self) -> bool:
        """Labels in mm (known extrinsics) rather than at the canonical scale."""
        return self.folder.metric_scale


def label_metrics(metric_scale: bool) -> list[str]:
    """The error metrics of :data:`eval.metrics.ALIGNMENTS` a run's labels are measured with:
    those with an alignment always, the unaligned ones only for labels at metric scale."""
    return [name for name in ERROR_METRICS if metric_scale or ALIGNMENTS[name] != "none"]


@dataclass(frozen=True)
class LabelErrors:
    """Per-row and per-joint quality of a run's pseudo-labels.

    Attributes:
        rows: one row per shard row: subject, action, subaction, frame, camera,
            partner_camera, cam_a / cam_b (the pair, sorted), has_gt, valid_share, reproj_px
            (mean over valid joints), rot_err_deg (the row's pair_rot_deg_to_gt), and per-pose
            n_mpjpe, pa_mpjpe (and mpjpe when metric), NaN without GT or valid joints.
        joint_err: metric name -> (N, J) per-joint error (NaN where invalid or without GT).
        valid: (N, J) bool label mask. reproj: (N, J) reprojection error in pixels.
        labels, gt: (N, J, 3) root-relative pseudo-labels and ground truth (NaN without GT).
    """

    rows: pd.DataFrame
    joint_err: dict[str, np.ndarray]
    valid: np.ndarray
    reproj: np.ndarray
    labels: np.ndarray
    gt: np.ndarray


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run folder's shards, configuration and pair geometry (through RunFolder)."""
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise FileNotFoundError(f"run folder {folder.path} does not exist")
    return Run(name=name or folder.path.name, folder=folder, config=folder.config_or_empty(),
               table=folder.shards(), geometry=folder.geometry())


def _gt_array(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The nullable ``gt_joints_3d`` column -> (N, J, 3) with NaN rows and (N,) has-GT mask."""
    col = table.column("gt_joints_3d").combine_chunks()
    has = col.is_valid().to_numpy(zero_copy_only=False)
    J = col.type.list_size
    gt = np.full((len(table), J, 3), np.nan)
    if has.any():
        gt[has] = column_array(table.filter(pc.is_valid(table.column("gt_joints_3d"))),
                               "gt_joints_3d")
    return gt, has


def _root_relative(labels: np.ndarray, gt: np.ndarray, valid: np.ndarray, root: int,
                   joint_set: JointSet | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and ground truth measured from the same root: the joint set's per-row rule
    (first valid root, else its first valid fallback: ``JointSet.frame_roots``), or ``root``."""
    if joint_set is None:
        return root_relative(labels, root), root_relative(gt, root)
    roots = joint_set.frame_roots(valid)
    idx = np.maximum(roots, 0)[:, None, None]
    has = (roots >= 0)[:, None, None]
    return (labels - np.where(has, np.take_along_axis(labels, idx, axis=1), 0.0),
            gt - np.where(has, np.take_along_axis(gt, idx, axis=1), 0.0))


def label_errors(table: pa.Table, metric_scale: bool = False, root: int = H36M17.root,
                 joint_set: JointSet | None = None) -> LabelErrors:
    """Measure every shard row's pseudo-label against its ground truth (see module docstring).
    ``joint_set`` (the run's): root-relative by its per-row root rule; else by joint ``root``.
    Rows without ground truth, and joints whose label or ground truth is not finite, are left
    out of the errors (NaN), never fed to an alignment."""
    valid = column_array(table, "valid").astype(bool)
    reproj = column_array(table, "reproj_error_px").astype(np.float64)
    gt, has = _gt_array(table)
    labels, gt = _root_relative(column_array(table, "joints_3d").astype(np.float64), gt, valid,
                                root, joint_set)
    rows = table.select(_ROW_COLUMNS).to_pandas().rename(
        columns={"pair_rot_deg_to_gt": "rot_err_deg"})
    pair = np.sort(rows[["camera", "partner_camera"]].to_numpy(str), axis=1)
    rows["cam_a"], rows["cam_b"] = pair[:, 0], pair[:, 1]
    rows["has_gt"] = has
    rows["valid_share"] = valid.mean(axis=1)
    n_valid = valid.sum(axis=1)
    rows["reproj_px"] = np.where(n_valid > 0, np.where(valid, reproj, 0).sum(1)
                                 / np.maximum(n_valid, 1), np.nan)

    joint_err: dict[str, np.ndarray] = {}
    mask = valid & has[:, None] & np.isfinite(gt).all(-1) & np.isfinite(labels).all(-1)
    has = has & mask.any(1)  # a row whose every joint lacks a finite GT has no error
    for name in label_metrics(metric_scale):
        err = np.full(valid.shape, np.nan)
        per_pose = np.full(len(rows), np.nan)
        if has.any():
            err[has] = joint_errors(labels[has], gt[has], mask[has], ALIGNMENTS[name])
            per_pose[has] = mpjpe(labels[has], gt[has], mask[has], ALIGNMENTS[name])
        joint_err[name] = err
        rows[name] = per_pose
    return LabelErrors(rows=rows, joint_err=joint_err, valid=valid, reproj=reproj,
                       labels=labels, gt=gt)


def _sorted_pairs(geometry: pd.DataFrame) -> pd.DataFrame:
    g = geometry.copy()
    pair = np.sort(g[["cam_a", "cam_b"]].astype(str).to_numpy(), axis=1)
    g["cam_a"], g["cam_b"] = pair[:, 0], pair[:, 1]
    keep = ["subject", "cam_a", "cam_b"] + [c for c in _GEOMETRY_COLUMNS if c in g.columns]
    return g[keep].rename(columns={"rot_err_deg": "geom_rot_err_deg"})


def per_pair_table(le: LabelErrors, geometry: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (subject, camera pair): labelled rows, GT rows, error means and medians,
    valid share, reprojection error (px, valid joints), the rows' median rotation error and,
    from ``geometry``, the pair fit's rotation error, inlier ratio, ok, reason and chosen
    (pairs that failed or were not chosen for labelling have no rows and are listed too)."""
    errs = [c for c in ERROR_METRICS if c in le.rows.columns]
    r = le.rows.assign(valid_n=le.valid.sum(1), reproj_sum=np.where(le.valid, le.reproj, 0).sum(1))
    g = r.groupby(["subject", "cam_a", "cam_b"], sort=True)
    out = pd.DataFrame({"rows": g.size(), "gt_rows": g["has_gt"].sum()})
    for e in errs:
        out[e] = g[e].mean()
        out[f"{e}_median"] = g[e].median()
    out["valid_share"] = g["valid_share"].mean()
    out["reproj_px"] = g["reproj_sum"].sum() / g["valid_n"].sum().replace(0, np.nan)
    out["rot_err_deg"] = g["rot_err_deg"].median()
    out = out.reset_index()
    if geometry is not None and len(geometry):
        out = out.merge(_sorted_pairs(geometry), on=["subject", "cam_a", "cam_b"], how="outer")
        out[["rows", "gt_rows"]] = out[["rows", "gt_rows"]].fillna(0).astype(np.int64)
    return out.sort_values(["subject", "cam_a", "cam_b"]).reset_index(drop=True)


def per_person_table(le: LabelErrors) -> pd.DataFrame | None:
    """One row per (subject, sequence, person) of a run with several people per frame
    (``person`` of the shards: the track id within its sequence): labelled rows, GT rows, the
    error means, valid share and reprojection error; None for a single-person run."""
    r = le.rows
    if "person" not in r.columns or r["person"].isna().all():
        return None
    errs = [c for c in ERROR_METRICS if c in r.columns]
    r = r.assign(valid_n=le.valid.sum(1), reproj_sum=np.where(le.valid, le.reproj, 0).sum(1),
                 person=r["person"].astype("Int64"))
    g = r.groupby(["subject", "action", "subaction", "person"], sort=True)
    out = pd.DataFrame({"rows": g.size(), "gt_rows": g["has_gt"].sum()})
    for e in errs:
        out[e] = g[e].mean()
    out["valid_share"] = g["valid_share"].mean()
    out["reproj_px"] = g["reproj_sum"].sum() / g["valid_n"].sum().replace(0, np.nan)
    return out.reset_index()


def per_joint_table(le: LabelErrors, joint_set: JointSet = H36M17) -> pd.DataFrame:
    """One row per joint: mean error of each metric over valid GT rows, valid share, mean
    reprojection error of the valid joints (px) and the number of valid GT samples."""
    J = le.valid.shape[1]
    names = list(joint_set.names) if joint_set.num_joints == J else [str(j) for j in range(J)]
    has = le.rows["has_gt"].to_numpy()
    out = pd.DataFrame(index=pd.Index(names, name="joint"))
    for name, err in le.joint_err.items():
        n = np.isfinite(err).sum(0)
        out[name] = np.where(n > 0, np.nansum(err, 0) / np.maximum(n, 1), np.nan)
    out["valid_share"] = le.valid.mean(0)
    n_valid = le.valid.sum(0)
    out["reproj_px"] = np.where(n_valid > 0, np.where(le.valid, le.reproj, 0).sum(0)
                                / np.maximum(n_valid, 1), np.nan)
    out["gt_samples"] = (le.valid & has[:, None]).sum(0)
    return out


def run_summary(run: Run, le: LabelErrors, pairs: pd.DataFrame) -> dict[str, Any]:
    """One line describing a run: its configuration knobs and its overall label quality."""
    c = run.config
    rows = le.rows
    s: dict[str, Any] = {
        "run": run.name, "geometry": c.get("geometry", "?"), "detector": c.get("detector", "?"),
        "noise_px": float(c.get("noise_px", np.nan)),
        "outlier_rate": float(c.get("outlier_rate", np.nan)),
        "rows": len(rows), "gt_rows": int(rows["has_gt"].sum())}
    for e in ERROR_METRICS:
        if e in rows.columns:
            s[e] = float(rows[e].mean()) if rows[e].notna().any() else np.nan
            s[f"{e}_median"] = float(rows[e].median()) if rows[e].notna().any() else np.nan
    s["valid_share"] = float(le.valid.mean())
    nv = le.valid.sum()
    s["reproj_px"] = float(np.where(le.valid, le.reproj, 0).sum() / nv) if nv else np.nan
    # The rotation errors of the geometry the labels were made with (per row: the per-frame
    # mode has one per frame).
    rot = rows["rot_err_deg"]
    s["rot_err_deg_median"] = float(rot.median()) if rot.notna().any() else np.nan
    if "ok" in pairs.columns:  # fitted camera pairs only (not an all-view run's "all" rows)
        fitted = pairs["ok"].notna()
        s["pairs_ok"] = f"{int(pairs['ok'][fitted].astype(bool).sum())}/{int(fitted.sum())}"
    return s


def _skeleton_samples(le: LabelErrors, n: int = 4) -> np.ndarray:
    """Row indices at the 10th, 50th, 90th and 99th percentile of N-MPJPE (GT rows only)."""
    e = le.rows["n_mpjpe"].to_numpy()
    idx = np.flatnonzero(np.isfinite(e))
    if not len(idx):
        return idx
    order = idx[np.argsort(e[idx], kind="stable")]
    q = np.array([0.10, 0.50, 0.90, 0.99])[:n]
    return np.unique(order[np.minimum((q * len(order)).astype(int), len(order) - 1)])


def plot_run(le: LabelErrors, per_joint: pd.DataFrame, out: Path, title: str,
             joint_set: JointSet = H36M17) -> list[Path]:
    """The run's PNGs: error histogram, per-joint bars, skeletons (only with GT)."""
    made = []
    errs = [c for c in ERROR_METRICS if c in le.rows.columns]
    if le.rows["has_gt"].any():
        made.append(plots.error_histogram({e: le.rows[e].to_numpy() for e in errs},
                                          out / "error_hist.png", f"{title}: pseudo-label error"))
    made.append(plots.per_joint_bars(per_joint, [e for e in errs if per_joint[e].notna().any()],
                                     out / "per_joint.png", f"{title}: per joint",
                                     share_column="valid_share"))
    pick = _skeleton_samples(le)
    if len(pick):
        shown = align(le.labels[pick], le.gt[pick], le.valid[pick], ALIGNMENTS["n_mpjpe"])
        r = le.rows.iloc[pick]
        titles = [f"{x.subject} {x.action} f{x.frame}\ncam {x.camera} (+{x.partner_camera})\n"
                  f"N-MPJPE {x.n_mpjpe:.1f} mm" for x in r.itertuples()]
        made.append(plots.skeletons(shown, le.gt[pick], le.valid[pick], titles,
                                    out / "skeletons.png", joint_set))
    return made


def run_joint_set(run: Run) -> JointSet:
    """The run's joint set: its manifest's (config.json ``manifest_path``), else H36M-17 when
    the shards hold 17 joints, else one without fallback roots named by joint index."""
    manifest = run.config.get("manifest_path")
    if manifest and Path(manifest).is_file():
        try:
            return load_manifest(manifest).joint_set
        except ManifestError:
            pass
    J = run.table.schema.field("joints_3d").type.list_size
    if J == H36M17.num_joints:
        return H36M17
    return JointSet(f"j{J}", tuple(str(j) for j in range(J)), (-1,) + (0,) * (J - 1))


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def write_report(run_paths: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Measure every run folder, write tables and plots under ``out``; returns the summary
    (one row per run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in run_paths]
    if not paths:
        raise ValueError("write_report needs at least one run folder")
    summaries, sections = [], []
    for name, path in zip(_unique_names(paths), paths):
        run = load_run(path, name)
        joint_set = run_joint_set(run)
        le = label_errors(run.table, run.metric_scale, joint_set=joint_set)
        pairs = per_pair_table(le, run.geometry)
        joints = per_joint_table(le, joint_set)
        summaries.append(run_summary(run, le, pairs))
        d = out / name
        write_table(pairs, d / "per_pair", index=False, digits_by_column=_SHARES)
        write_table(joints, d / "per_joint", digits_by_column=_SHARES)
        people = per_person_table(le)
        if people is not None:
            write_table(people, d / "per_person", index=False, digits_by_column=_SHARES)
        pngs = plot_run(le, joints, d, name, joint_set)
        sections.append(_run_section(run, pairs, joints, pngs, out, people))
    summary = pd.DataFrame(summaries).set_index("run")
    summary.to_csv(out / "summary.csv")
    noise_png = None
    if len(summary) > 1 and summary["noise_px"].notna().any() and "n_mpjpe" in summary:
        noise_png = plots.error_vs_noise(summary.reset_index().fillna({"outlier_rate": 0.0}),
                                         ["n_mpjpe", "pa_mpjpe"], out / "error_vs_noise.png")
    (out / "report.md").write_text(_report_md(summary, sections, noise_png, out))
    return summary


_NOTE = ("Errors in mm against `gt_joints_3d`, root-relative, over the label mask `valid` of "
         "the rows that have ground truth. Alignment per metric (eval.metrics.ALIGNMENTS): "
         + ", ".join(f"{k} = {v}" for k, v in ALIGNMENTS.items() if k in ERROR_METRICS)
         + ". Unaligned errors (MPJPE) only for runs at metric scale (config.json "
         "metric_scale). reproj_px: mean reprojection error of "
         "valid joints (max of the two views). rot_err_deg: median of the rows' rotation "
         "error to the extrinsics (summary: over all labelled rows); geom_rot_err_deg: the pair fit "
         "in geometry.parquet; chosen: the pair was used for labels.")


def _run_section(run: Run, pairs: pd.DataFrame, joints: pd.DataFrame, pngs: list[Path],
                 out: Path, people: pd.DataFrame | None = None) -> str:
    cfg = ", ".join(f"{k}={run.config[k]}" for k in ("geometry", "detector", "noise_px",
                                                     "outlier_rate") if k in run.config)
    lines = [f"## {run.name}\n", f"`{run.path}` ({cfg or 'no config.json'})\n",
             "### Per camera pair\n", to_markdown(pairs, 1, index=False, digits_by_column=_SHARES),
             "### Per joint\n", to_markdown(joints, 1, digits_by_column=_SHARES)]
    if people is not None:
        lines += ["### Per person (track id within its sequence)\n",
                  to_markdown(people, 1, index=False, digits_by_column=_SHARES)]
    lines += [f"![{p.stem}]({p.relative_to(out)})\n" for p in pngs]
    return "\n".join(lines)


def _report_md(summary: pd.DataFrame, sections: list[str], noise_png: Path | None,
               out: Path) -> str:
    parts = ["# Pseudo-label quality report\n", _NOTE + "\n", "## Summary\n",
             to_markdown(summary, 1, digits_by_column=_SHARES)]
    if noise_png is not None:
        parts.append(f"![error vs noise]({noise_png.relative_to(out)})\n")
    return "\n".join(parts + sections)

"""PNG plots of the evaluation and the pseudo-label quality report (matplotlib, Agg backend).

Every function takes plain arrays or DataFrames and a path, draws one figure, saves it and
closes it; none of them computes a metric.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.joints import H36M17, JointSet  # noqa: E402

_DPI = 110


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def error_histogram(errors: dict[str, np.ndarray], path: str | Path, title: str = "",
                    unit: str = "mm") -> Path:
    """Overlaid histograms of per-pose errors (name -> (N,), NaN skipped), x clipped at the
    99th percentile so that a few failures do not squash the plot; medians marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    finite = {k: v[np.isfinite(v)] for k, v in errors.items()}
    allv = np.concatenate([v for v in finite.values() if len(v)] or [np.zeros(1)])
    hi = max(float(np.percentile(allv, 99)), 1e-6)
    bins = np.linspace(0, hi, 50)
    for (name, v), color in zip(finite.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        if not len(v):
            continue
        ax.hist(np.clip(v, 0, hi), bins=bins, alpha=0.55, color=color,
                label=f"{name} (median {np.median(v):.1f}, n={len(v)})")
        ax.axvline(np.median(v), color=color, lw=1.5, ls="--")
    ax.set_xlabel(f"per-pose error ({unit}); last bin holds everything above")
    ax.set_ylabel("poses")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_joint_bars(table: pd.DataFrame, columns: list[str], path: str | Path, title: str = "",
                   ylabel: str = "error (mm)", share_column: str | None = None) -> Path:
    """Grouped bars of ``columns`` for each joint (the table's index); ``share_column`` (a
    share in [0, 1], e.g. the valid share) is drawn as a line on a second axis."""
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    x = np.arange(len(table))
    w = 0.8 / max(len(columns), 1)
    for i, c in enumerate(columns):
        ax.bar(x + (i - (len(columns) - 1) / 2) * w, table[c].to_numpy(float), w, label=c)
    ax.set_xticks(x, [str(i) for i in table.index], rotation=60, ha="right", fontsize=8)
    top = np.nanmax(table[columns].to_numpy(float)) if columns and table[columns].notna().any(
        axis=None) else 1.0
    ax.set_ylim(0, top * 1.3)                                      # room for the legend
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if share_column is not None:
        ax2 = ax.twinx()
        (line,) = ax2.plot(x, table[share_column].to_numpy(float), "k.-", label=share_column)
        ax2.set_ylim(0, 1.3)
        ax2.set_yticks(np.linspace(0, 1, 6))
        ax2.set_ylabel(share_column)
        handles.append(line)
        labels.append(share_column)
    ax.legend(handles, labels, fontsize=8, loc="upper left", ncol=len(handles))
    return _save(fig, path)


def error_vs_noise(summary: pd.DataFrame, metrics: list[str], path: str | Path,
                   mode_column: str = "geometry", noise_column: str = "noise_px",
                   outlier_column: str = "outlier_rate") -> Path:
    """One panel per metric: error against 2D noise, one line per (geometry mode, outlier
    rate). ``summary`` has one row per run."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    groups = summary.groupby([mode_column, outlier_column], sort=True, dropna=False)
    for ax, metric in zip(axes[0], metrics):
        for (mode, outlier), g in groups:
            g = g.sort_values(noise_column)
            ls = "-" if not outlier else "--"
            label = f"{mode}" + (f", {outlier:.0%} outliers" if outlier else "")
            ax.plot(g[noise_column], g[metric], ls, marker="o", label=label)
        ax.set_xlabel("2D noise (px, std)")
        ax.set_ylabel(f"{metric} (mm)")
        ax.set_title(f"pseudo-label {metric} vs 2D noise")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _display(p: np.ndarray) -> np.ndarray:
    """Camera frame (x right, y down, z forward) -> plot axes (x, z, -y): up is up."""
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def skeletons(preds: np.ndarray, gts: np.ndarray, valid: np.ndarray, titles: list[str],
              path: str | Path, joint_set: JointSet = H36M17) -> Path:
    """Side-by-side 3D skeletons: ground truth (black) and prediction (red; bones touching an
    invalid joint are not drawn), one panel per sample. Shapes: (S, J, 3), (S, J, 3), (S, J)."""
    n = len(preds)
    fig = plt.figure(figsize=(3.4 * max(n, 1), 4.2))
    bones = joint_set.bones
    for i in range(n):
        ax = fig.add_subplot(1, max(n, 1), i + 1, projection="3d")
        g, p = _display(gts[i]), _display(preds[i])
        g_ok, p_ok = np.isfinite(g).all(-1), np.isfinite(p).all(-1) & valid[i]
        for a, b in bones:  # a NaN joint (no ground truth, no label) draws no bone
            if g_ok[a] and g_ok[b]:
                ax.plot(*g[[a, b]].T, color="k", lw=2)
            if p_ok[a] and p_ok[b]:
                ax.plot(*p[[a, b]].T, color="tab:red", lw=1.6)
        # Framed on the ground truth (on the prediction where it has no finite joint).
        shown = g[g_ok] if g_ok.any() else p[p_ok] if p_ok.any() else np.zeros((1, 3))
        centre = shown.mean(0)
        r = max(float(np.abs(shown - centre).max()), 1e-6) * 1.1
        ax.set_xlim(centre[0] - r, centre[0] + r)
        ax.set_ylim(centre[1] - r, centre[1] + r)
        ax.set_zlim(centre[2] - r, centre[2] + r)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=10, azim=-70)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
        ax.set_title(titles[i], fontsize=8, pad=0)
    fig.text(0.01, 0.01, "black: ground truth, red: prediction", fontsize=8)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.04, top=0.86, wspace=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)                    # tight_layout mishandles 3D axes
    plt.close(fig)
    return path

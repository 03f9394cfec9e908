"""Rendering the ablation table (:mod:`eval.ablation`) from whatever results exist.

Reads ``<budget>/results/<row>/seed<k>.json`` and writes ``table.md``, ``table.csv`` and
``ablation.png`` beside them. Cells are mean ± standard deviation over the seeds (sample
standard deviation, n - 1); a row without results says so; MPJPE is given only for rows whose
predictions are metric (labels in mm: calibrated, ground truth, mean pose).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from eval.tables import to_markdown

_DIGITS = {"pss@50": 3, "pss@100": 3, "pck3d": 3, "auc": 3}
_HEAD = {"n_mpjpe": "N-MPJPE", "pa_mpjpe": "PA-MPJPE", "mpjpe": "MPJPE", "pss@50": "PSS@50",
         "pss@100": "PSS@100"}


def load_results(budget_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Row name -> its result payloads, by seed."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(budget_dir).glob("results/*/seed*.json")):
        payload = json.loads(path.read_text())
        out.setdefault(path.parent.name, []).append(payload)
    for rows in out.values():
        rows.sort(key=lambda r: r["seed"])
    return out


def mean_std(values: Iterable[float], digits: int = 1) -> str:
    """'mean ± std' over the finite values (std with n - 1; only the mean for one value)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _label_cell(results: list[dict[str, Any]]) -> str:
    labels = results[0].get("labels")
    if not labels:
        return "–"
    parts = [f"{labels[k]:.1f}" if k in labels else "–" for k in ("n_mpjpe", "pa_mpjpe")]
    return " / ".join(parts)


def _paired_gain(results: list[dict[str, Any]]) -> str:
    """Refined minus unrefined N-MPJPE of the same networks, per seed."""
    d = [r["metrics"]["n_mpjpe"] - r["unrefined"]["n_mpjpe"] for r in results if "unrefined" in r]
    return mean_std(d) if d else "–"


def summary_frame(rows: list[Any], results: dict[str, list[dict[str, Any]]],
                  seeds: int) -> pd.DataFrame:
    """One line per row (``rows``: objects with ``name``, ``what``, ``paper``, ``seeded``)."""
    lines = []
    for row in rows:
        res = results.get(row.name, [])
        planned = seeds if row.seeded else 1
        line: dict[str, Any] = {"row": row.name, "labels": row.what,
                                "seeds": f"{len(res)}/{planned}"}
        for k, head in _HEAD.items():
            metric = all(r.get("metric_scale", False) for r in res)
            if not res:
                line[head] = "not run yet"
            elif k == "mpjpe" and not metric:
                line[head] = "– (not metric)"
            else:
                line[head] = mean_std((r["metrics"].get(k, np.nan) for r in res),
                                      _DIGITS.get(k, 1))
        line["label error N / PA (train subjects)"] = _label_cell(res) if res else "–"
        line["refined − unrefined N-MPJPE"] = _paired_gain(res)
        line["paper, Human3.6M (mm)"] = row.paper
        lines.append(line)
    return pd.DataFrame(lines).set_index("row")


def plot(rows: list[Any], results: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """N-MPJPE of every row with results: the seeds (dots), their mean ± std (bar) and the
    labels' own N-MPJPE (cross)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in rows if results.get(r.name)]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    for i, name in enumerate(names):
        v = np.array([r["metrics"]["n_mpjpe"] for r in results[name]])
        ax.barh(i, v.mean(), xerr=v.std(ddof=1) if len(v) > 1 else 0, color="#9ecae1",
                capsize=3)
        ax.plot(v, np.full(len(v), i), "o", color="#08519c", ms=4)
        lab = results[name][0].get("labels") or {}
        if "n_mpjpe" in lab:
            ax.plot([lab["n_mpjpe"]], [i], "x", color="#cb181d", ms=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test N-MPJPE (mm): bars mean ± std over seeds, dots seeds, x labels' own")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def render_table(budget_dir: Path, rows: list[Any], seeds: int, header: str) -> Path:
    """Write ``table.md`` (``header``, the table, the notes), ``table.csv`` and
    ``ablation.png`` under ``budget_dir`` from the results present; returns table.md."""
    budget_dir = Path(budget_dir)
    budget_dir.mkdir(parents=True, exist_ok=True)
    results = load_results(budget_dir)
    frame = summary_frame(rows, results, seeds)
    frame.to_csv(budget_dir / "table.csv")
    png = plot(rows, results, budget_dir / "ablation.png")
    failed = sorted(p.parent.name + "/" + p.name.split(".")[0]
                    for p in budget_dir.glob("results/*/seed*.failed.txt")
                    if not p.with_name(p.name.split(".")[0] + ".json").exists())
    notes = [header, "", to_markdown(frame, index=True)]
    if failed:
        notes.append(f"Failed (see results/<row>/<seed>.failed.txt): {', '.join(failed)}.")
    if png is not None:
        notes.append(f"![ablation]({png.name})")
    md = budget_dir / "table.md"
    tmp = md.with_name(f".{md.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(notes) + "\n")
    os.replace(tmp, md)
    return md

"""``python -m eval summary``: one table of several ``make eval`` folders, seeds grouped.

Each folder is what ``python -m eval metrics --out DIR`` wrote (``DIR/eval.json``); a group is a
name and one or more such folders (one per training seed), shown as mean ± sample standard
deviation with the number of seeds, so that a docs table of checkpoints is written by a command
instead of by hand.
"""
from __future__ import annotations

import json
from pathlib import Path

from eval.ablation_table import mean_std

COLUMNS = (("mpjpe", "MPJPE (mm)", 1), ("n_mpjpe", "N-MPJPE", 1), ("pa_mpjpe", "PA-MPJPE", 1),
           ("pck3d", "PCK3D@150 mm", 3), ("auc", "AUC", 3))


def overall(folder: Path) -> tuple[dict[str, float], dict]:
    """The overall metrics of the evaluated model in ``folder/eval.json`` (the checkpoint, or the
    only baseline) and the record itself. ValueError naming the folder otherwise."""
    path = Path(folder) / "eval.json"
    if not path.exists():
        raise ValueError(f"{path}: no eval.json (run python -m eval metrics --out {folder})")
    rec = json.loads(path.read_text())
    models = [k for k, v in rec.items() if isinstance(v, dict) and "overall" in v]
    key = "checkpoint" if "checkpoint" in models else (models[0] if len(models) == 1 else None)
    if key is None:
        raise ValueError(f"{path}: {len(models)} evaluated models {models}; give one folder per "
                         "model")
    return rec[key]["overall"], rec


def summary_table(groups: dict[str, list[Path]]) -> str:
    """A Markdown table: one row per group, each metric as mean ± std over its folders."""
    head = "| model | seeds | " + " | ".join(c[1] for c in COLUMNS) + " | test frame-views |"
    lines = [head, "|---|---:|" + "---:|" * (len(COLUMNS) + 1)]
    for name, folders in groups.items():
        res = [overall(f) for f in folders]
        samples = {int(r["samples"]) for _, r in res}
        if len(samples) != 1:
            raise ValueError(f"group {name!r}: its folders scored different test sets "
                             f"({sorted(samples)} frame-views)")
        cells = [mean_std([o[k] for o, _ in res], digits) for k, _, digits in COLUMNS]
        lines.append(f"| {name} | {len(res)} | " + " | ".join(cells) + f" | {samples.pop()} |")
    return "\n".join(lines) + "\n"

"""Writing result tables: one DataFrame -> a Markdown table and a CSV file; and a table for the
documentation site, headed by the command, machine and date that produced it."""
from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.store.shards import atomic_write_bytes


def _cell(v: object, digits: int) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{float(v):.{digits}f}"
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, digits: int = 1, index: bool = True,
                digits_by_column: dict[str, int] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats with ``digits`` decimals, NaN as '–').

    ``digits_by_column`` overrides the decimals of named columns (e.g. shares with 3).
    """
    per = digits_by_column or {}
    frame = df.reset_index() if index else df
    if index and frame.columns[0] == "index":
        frame = frame.rename(columns={"index": ""})
    cols = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(
        frame[c]) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, per.get(c, digits)) for c, v in zip(cols, row))
                     + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: str | Path, title: str = "", note: str = "",
                digits: int = 1, digits_by_column: dict[str, int] | None = None,
                index: bool = True) -> tuple[Path, Path]:
    """Write ``stem``.csv (full precision) and ``stem``.md (title, note, table). Returns both."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    df.to_csv(csv, index=index)
    parts = [f"## {title}\n" if title else "", f"{note}\n" if note else "",
             to_markdown(df, digits, index, digits_by_column)]
    md.write_text("\n".join(p for p in parts if p))
    return md, csv


def machine_description() -> str:
    """The machine a figure was measured on, in words: OS and CPU, cores, memory, GPU if torch
    sees one (torch is only asked when it is already imported)."""
    parts = [f"{platform.system()} {platform.machine()}", f"{os.cpu_count()} CPU cores"]
    try:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    parts.append(gpu or "no GPU")
    return ", ".join(parts)


def invocation(module: str) -> str:
    """The command line of this process as ``python -m <module> <arguments>``."""
    return " ".join(["python -m", module, shlex.join(sys.argv[1:])]).strip()


def write_docs_table(path: str | Path, command: str, body: str) -> Path:
    """Write ``body`` (Markdown: one or more tables) to ``path`` for the documentation site,
    under a line saying which command, machine and date (UTC) produced it. The docs pages
    include the file; the next run of ``command`` rewrites it, so it is never edited by hand."""
    path = Path(path)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"<!-- written by `{command}`; do not edit: the next run of the command rewrites "
            f"this file -->\n*Written by `{command}` on {when}, {machine_description()}.*\n\n")
    atomic_write_bytes(path, (head + body.rstrip() + "\n").encode())
    return path

"""``--docs-table PATH``: the benches write the table they print into the documentation site.

Each docs page of figures includes such a file (``docs/figures/tables/<name>.md``) next to the
command that wrote it; :func:`eval.tables.write_docs_table` heads it with that command, the
machine and the date, so the next run of the command replaces the figures, never a hand.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pandas as pd

from eval.tables import invocation, to_markdown, write_docs_table

F = TypeVar("F", bound=Callable[..., Any])


def docs_table_option(name: str) -> Callable[[F], F]:
    """The ``--docs-table`` click option of a bench whose docs file is ``name``.md."""
    return click.option("--docs-table", type=click.Path(dir_okay=False, path_type=Path),
                        default=None,
                        help=f"Also write the table, headed by this command, the machine and the "
                             f"date, to this Markdown file (the docs site's "
                             f"docs/figures/tables/{name}.md).")


def write(path: Path | None, body: str) -> None:
    """Write ``body`` for the docs when ``path`` is given (``python -m tools ...``)."""
    if path is not None:
        click.echo(f"docs table: {write_docs_table(path, invocation('tools'), body)}")


def association_body(df: pd.DataFrame) -> str:
    """bench-association: CPU ms per frame and identity accuracy, cameras x people."""
    ms = df.pivot(index="cameras", columns="people", values="ms_per_frame")
    acc = df.pivot(index="cameras", columns="people", values="identity_accuracy")
    return ("CPU milliseconds per frame (`time.process_time`, best of the repeats); rows: "
            "cameras, columns: people.\n\n" + to_markdown(ms, 2)
            + "\nIdentity accuracy (share of detections given their true person).\n\n"
            + to_markdown(acc, 4))


def geometry_body(result: dict[str, Any]) -> str:
    """bench-geometry: N-MPJPE and PA-MPJPE per noise condition and mode, then throughput."""
    df = pd.DataFrame(result["sweep"])
    df["2D noise"] = [f"{n:g} px" + (f" + {o:.0%} outliers" if o else "")
                      for n, o in zip(df["noise_px"], df["outlier_rate"])]
    order = list(dict.fromkeys(df["2D noise"]))
    parts = [f"Motion: {result['motion']}.\n"]
    for col, what in (("n_mpjpe_mm", "N-MPJPE (mm)"), ("pa_mpjpe_mm", "PA-MPJPE (mm)"),
                      ("rot_err_deg", "camera rotation error (deg)")):
        pivot = df.pivot_table(index="2D noise", columns="mode", values=col, sort=False)
        parts += [f"{what}:\n", to_markdown(pivot.reindex(order), 1 if col != "rot_err_deg" else 2)]
    tp = pd.DataFrame({"value": result["throughput"]})
    parts += ["Throughput, one core (frame pairs/s unless the name says seconds):\n",
              to_markdown(tp, 2)]
    return "\n".join(parts)


def stage1_body(printed: str) -> str:
    """bench-stage1: its printed Markdown, with the first line (machine, workload) set apart."""
    first, _, rest = printed.partition("\n")
    return f"{first}\n\n{rest}"

"""``time-make-train``: how long ``make train`` takes on a fresh clone, step by step.

Runs ``make <target>`` in a checkout (a fresh clone, so nothing is cached), copies its output to a
log with every line stamped by the seconds since the start, and splits the wall time into the
steps ``make`` echoes: each command line that runs the project's Python (``.venv/bin/python -m
<module> <command>``) starts a step that lasts until the next one or the end. The table (step,
command, wall time, the 1-minute load average when it started: above the core count, the cores
were shared) is what the docs' "make train" timing shows.

    git clone . /tmp/clone && ln -s "$PWD/.venv" /tmp/clone/.venv
    python -m tools time-make-train --clone /tmp/clone \\
        --docs-table docs/figures/tables/make_train_timing.md
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import click

from tools import caller_environment, docs_tables

STEP_LINE = re.compile(r"^(?:\S*/)?python3?\s+-m\s+(\S+)\s+(\S+)(.*)$")
"""A command ``make`` echoes that runs the project's Python: module, command, the rest."""

STAMP = re.compile(r"^\[\s*([0-9.]+)\]\s(.*)$")


@dataclass(frozen=True)
class Step:
    """One step of the log: its command and wall time, the load average when it began."""

    command: str
    start_s: float
    end_s: float
    load: float | None

    @property
    def name(self) -> str:
        m = STEP_LINE.match(self.command)
        assert m is not None
        module, cmd, rest = m.groups()
        config = re.search(r"--config\s+(\S+)", rest)
        return f"{module} {cmd}" + (f" ({Path(config.group(1)).name})" if config else "")


def parse_log(lines: Iterable[str], loads: dict[float, float] | None = None) -> tuple[list[Step], float]:
    """Steps of a stamped log (``[   12.3] line``) and its total seconds (the last stamp)."""
    starts: list[tuple[float, str]] = []
    total = 0.0
    for line in lines:
        m = STAMP.match(line.rstrip("\n"))
        if m is None:
            continue
        t, text = float(m.group(1)), m.group(2).strip()
        total = max(total, t)
        if STEP_LINE.match(text):
            starts.append((t, text))
    loads = loads or {}
    steps = [Step(cmd, t, starts[i + 1][0] if i + 1 < len(starts) else total, loads.get(t))
             for i, (t, cmd) in enumerate(starts)]
    return steps, total


def run_stamped(cmd: list[str], cwd: Path, log: TextIO) -> tuple[int, dict[float, float]]:
    """Run ``cmd`` in ``cwd``, writing every line of its output to ``log`` (and stdout) stamped
    with the seconds since the start. Returns the exit status and the load average at each
    step line's stamp."""
    t0 = time.perf_counter()
    loads: dict[float, float] = {}
    # the user's environment: not the one-thread caps `python -m tools` sets for its benches
    env = {**caller_environment(), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            t = round(time.perf_counter() - t0, 1)
            if STEP_LINE.match(line.strip()):
                loads[t] = os.getloadavg()[0]
            stamped = f"[{t:8.1f}] {line}"
            log.write(stamped)
            log.flush()
            sys.stdout.write(stamped)
        rc = proc.wait()
    end = f"[{time.perf_counter() - t0:8.1f}] exit status {rc}\n"
    log.write(end)
    sys.stdout.write(end)
    return rc, loads


def timing_table(steps: list[Step], total: float, rc: int, target: str, commit: str) -> str:
    """The Markdown table of the steps, the total and the exit status."""
    lines = [f"`make {target}` on a fresh clone at commit `{commit}`, exit status {rc}.\n",
             "| step | wall time | load average at its start |", "|---|---|---|"]
    for s in steps:
        load = "" if s.load is None else f"{s.load:.1f}"
        lines.append(f"| `{s.name}` | {(s.end_s - s.start_s) / 60:.1f} min | {load} |")
    lines.append(f"| **`make {target}`** | **{total / 60:.1f} min** | |")
    return "\n".join(lines) + "\n"


@click.command("time-make-train")
@click.option("--clone", required=True, type=click.Path(file_okay=False, exists=True,
                                                          path_type=Path),
              help="The checkout to run in (a fresh clone: nothing made yet).")
@click.option("--target", default="train", show_default=True, help="The make target.")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stamped log (default: CLONE/outputs/make_<target>.log).")
@docs_tables.docs_table_option("make_train_timing")
def main(clone: Path, target: str, log: Path | None, docs_table: Path | None) -> None:
    """Time `make TARGET` in CLONE step by step (each echoed `python -m` command is a step)."""
    log = log or clone / "outputs" / f"make_{target}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                            capture_output=True, text=True, check=False).stdout.strip() or "unknown"
    with open(log, "w") as f:
        rc, loads = run_stamped(["make", target], clone, f)
    with open(log) as f:
        steps, total = parse_log(f, loads)
    table = timing_table(steps, total, rc, target, commit)
    click.echo(table)
    docs_tables.write(docs_table, table)
    if rc:
        raise SystemExit(rc)

"""The documentation site's generated reference: every command's ``--help``, the Parquet schemas
and the manifest schema, written from the code itself so that they cannot go stale.

``python -m tools docs-reference --out docs/reference/generated`` writes three pages; the site's
MkDocs hook (``tools/docs_hook.py``) runs the same before every build. The CLIs are walked as click
objects (no subprocess per command): every group of ``python -m pipeline``, ``train``, ``eval`` and
``tools`` down to its last sub-command.
"""
from __future__ import annotations

import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pyarrow as pa

CLI_MODULES = ("pipeline", "train", "eval", "tools")
"""The packages run as ``python -m <package>``; each ``__main__`` holds a click group ``cli``."""

HELP_WIDTH = 100
PAGES = ("cli.md", "shard-schema.md", "manifest-schema.md")


@dataclass(frozen=True)
class CommandHelp:
    """One command of a CLI: its full name (``python -m tools real-demo people``) and help."""

    path: str
    help: str


def root_command(package: str) -> click.Command:
    """The click group of ``python -m <package>``."""
    return importlib.import_module(f"{package}.__main__").cli


def walk(command: click.Command, name: str, parent: click.Context | None = None
         ) -> Iterator[CommandHelp]:
    """``command`` and every sub-command below it, depth first in alphabetical order."""
    ctx = click.Context(command, info_name=name, parent=parent, terminal_width=HELP_WIDTH,
                        max_content_width=HELP_WIDTH)
    yield CommandHelp(ctx.command_path, command.get_help(ctx))
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            yield from walk(command.get_command(ctx, sub), sub, ctx)


def all_commands() -> list[CommandHelp]:
    """Every command of every CLI of :data:`CLI_MODULES`."""
    return [c for p in CLI_MODULES for c in walk(root_command(p), f"python -m {p}")]


def cli_page(commands: list[CommandHelp]) -> str:
    lines = ["# Command-line reference", "",
             "Every command's `--help`, generated from the click commands at documentation build "
             "time (`python -m tools docs-reference`): it is what your checkout prints.", ""]
    for c in commands:
        depth = min(c.path.count(" ") - 1, 4)  # "python -m x" is level 2
        lines += [f"{'#' * (depth + 1)} `{c.path}`", "", "```text", c.help.rstrip(), "```", ""]
    return "\n".join(lines)


def schema_table(schema: pa.Schema) -> str:
    """A Markdown table of ``schema``'s fields (name, Arrow type, nullable) and its metadata."""
    rows = ["| column | Arrow type | nullable |", "|---|---|---|"]
    rows += [f"| `{f.name}` | `{f.type}` | {'yes' if f.nullable else 'no'} |" for f in schema]
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    notes = [f"- `{k}`: {v}" for k, v in meta.items()]
    return "\n".join(rows + ([""] + ["Schema metadata (stored in every file):", ""] + notes
                             if notes else []))


def rst_to_markdown(text: str) -> str:
    """The reST of our docstrings as Markdown: ``code`` -> `code`, :func:`x` -> `x`, and
    ``.. code-block:: lang`` blocks as fenced code."""
    text = re.sub(r":(?:func|mod|class|data|meth|attr):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"\.\. code-block:: *(\w*)", lines[i].strip())
        if not m:
            out.append(lines[i])
            i += 1
            continue
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        out += [f"```{m.group(1)}", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
    return "\n".join(out)


def _doc(obj: object) -> str:
    return rst_to_markdown(inspect.cleandoc(obj.__doc__ or ""))


def schema_sections() -> list[tuple[str, str, pa.Schema]]:
    """(title, description, schema) of every Parquet contract a run or a predict folder holds."""
    from pipeline.store import crop_shards, shards
    from train.predict import poses_schema

    return [
        ("Label shards: `<run>/shards/subject=*/action=*/*.parquet`",
         _doc(shards.shard_schema) + "\n\nEach file holds `pipeline.store.shards.file_schema()`: "
         "the same columns without `subject` and `action`, which are the hive partition folders.",
         shards.shard_schema()),
        ("2D detections: `<run>/detections/**/*.parquet`, and `--detector file` input",
         _doc(shards.detection_schema) + "\n\nShown with `people=True` (the multi-person form).",
         shards.detection_schema(people=True)),
        ("Crop shards: `<run>/crops/<subject>/<action>/*.parquet`",
         "One file per sequence and camera; a label row's `image_path` is `<file>#<row>` "
         "(`pipeline.store.crop_shards`).", crop_shards.CROP_SCHEMA),
        ("Predictions: `<predict folder>/poses.parquet`", _doc(poses_schema),
         poses_schema(17)),
    ]


def shard_page() -> str:
    lines = ["# Parquet schemas", "",
             "Generated from the `pyarrow` schema objects at documentation build time "
             "(`python -m tools docs-reference`). Fixed-size lists are shown for the 17-joint "
             "`h36m17` set; another joint set changes J.", ""]
    for title, doc, schema in schema_sections():
        lines += [f"## {title}", "", doc, "", schema_table(schema), ""]
    return "\n".join(lines)


def manifest_page() -> str:
    from pipeline.store import manifest

    return "\n".join(["# Manifest schema", "",
                      "The docstring of `pipeline/store/manifest.py`, which validates every key "
                      "(generated at documentation build time).", "",
                      _doc(manifest), ""])


WRITERS: dict[str, Callable[[], str]] = {
    "cli.md": lambda: cli_page(all_commands()),
    "shard-schema.md": shard_page,
    "manifest-schema.md": manifest_page,
}


def generate(out: str | Path) -> list[Path]:
    """Write the pages of :data:`WRITERS` into ``out``; a page whose text is unchanged is not
    rewritten (so a live-reloading docs server does not loop). Returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, write in WRITERS.items():
        path, text = out / name, write()
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        paths.append(path)
    return paths


@click.command("docs-reference")
@click.option("--out", default="docs/reference/generated", show_default=True,
              type=click.Path(file_okay=False), help="Folder of the generated pages.")
def main(out: str) -> None:
    """Write the docs site's generated reference: every CLI command's --help, the Parquet
    schemas and the manifest schema."""
    for p in generate(out):
        click.echo(p)

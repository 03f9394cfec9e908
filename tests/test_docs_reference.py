"""The docs site's generated reference (tools/docs_reference.py) covers every command, every
Parquet column and the manifest schema; --docs-table files say which command wrote them."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from eval.tables import write_docs_table
from pipeline.store import crop_shards, shards
from tools import docs_reference as D
from train.predict import poses_schema


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference")
    return {p.name: p.read_text() for p in D.generate(out)}


def _expected(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    """Every command path below ``command``, read from the groups' ``commands`` dicts (not the
    generator's walk)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _expected(sub, f"{path} {name}")
    return found


def _section(page: str, path: str) -> str:
    """The text of ``path``'s section of the CLI page: from its heading to the next heading."""
    m = re.search(rf"^#+ `{re.escape(path)}`\n(.*?)(?=^#+ `|\Z)", page, re.M | re.S)
    assert m, f"no section for {path}"
    return m.group(1)


def test_cli_page_has_every_command_and_option(pages):
    page = pages["cli.md"]
    expected = [e for p in D.CLI_MODULES for e in _expected(D.root_command(p), f"python -m {p}")]
    assert len(expected) > 30  # four CLIs, sub-groups included
    for path, command in expected:
        section = _section(page, path)
        assert f"Usage: {path}" in section
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in section, f"{path}: {opt} missing"
    headings = re.findall(r"^#+ `(python -m [^`]+)`", page, re.M)
    assert sorted(headings) == sorted(p for p, _ in expected)  # nothing more, nothing less


def test_cli_page_includes_nested_groups_and_the_docs_options(pages):
    page = pages["cli.md"]
    assert "--docs-table" in _section(page, "python -m eval ablation")
    assert "--docs-table" in _section(page, "python -m tools bench-association")
    assert "Usage: python -m tools real-demo people" in page


def test_schema_page_lists_every_column(pages):
    page = pages["shard-schema.md"]
    for schema in (shards.shard_schema(), shards.detection_schema(people=True),
                   crop_shards.CROP_SCHEMA, poses_schema(17)):
        for field in schema:
            assert f"| `{field.name}` | `{field.type}` |" in page, field.name
    assert "epipolar-pose pseudo-label shard v1" in page  # the schema's metadata


def test_manifest_page_is_the_validator_docstring_as_markdown(pages):
    page = pages["manifest-schema.md"]
    block = re.search(r"```yaml\n(.*?)```", page, re.S)
    assert block, "the schema's code-block became a fenced yaml block"
    for key in ("dataset:", "root:", "joint_set:", "cameras:", "extrinsics:", "frames:",
                "ground_truth:", "sequences:", "splits:"):
        assert re.search(rf"^{key}", block.group(1), re.M), key
    assert not re.search(r"(?<!`)``(?!`)", page) and ".. code-block" not in page  # no reST left


def test_rst_to_markdown():
    text = "A :func:`x.y` and ``z``:\n\n.. code-block:: yaml\n\n    a: 1\n      b: 2\n\nAfter."
    assert D.rst_to_markdown(text) == "A `x.y` and `z`:\n\n```yaml\na: 1\n  b: 2\n```\n\nAfter."


def test_generate_leaves_unchanged_pages_alone(tmp_path):
    first = D.generate(tmp_path)
    stamps = [p.stat().st_mtime_ns for p in first]
    again = D.generate(tmp_path)
    assert [p.stat().st_mtime_ns for p in again] == stamps


def test_docs_table_names_command_machine_and_date(tmp_path):
    path = write_docs_table(tmp_path / "t.md", "python -m tools bench-x --y 1",
                            "| a |\n|---|\n| 1 |")
    text = path.read_text()
    head = text.splitlines()[1]
    assert "`python -m tools bench-x --y 1`" in head
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", head)
    assert "CPU cores" in head
    assert text.endswith("| a |\n|---|\n| 1 |\n")
    assert not list(Path(tmp_path).glob(".*tmp"))


def test_ablation_table_only_writes_its_docs_table(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from eval.__main__ import cli

    args = ["ablation", "--table-only", "--out", str(tmp_path / "abl"), "--rows",
            "multiview,mean-pose", "--docs-table", str(tmp_path / "docs" / "ablation.md")]
    monkeypatch.setattr("sys.argv", ["eval/__main__.py", *args])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "docs" / "ablation.md").read_text()
    assert f"`python -m eval {' '.join(args)}`" in text.splitlines()[1]
    assert "| multiview |" in text and "not run yet" in text
    assert "mean ± std over seeds (n - 1)" in text
    assert "![" not in text  # the plot stays beside table.md, not in the docs


def test_association_bench_writes_its_docs_table(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tools.association_bench import main

    args = ["--out", str(tmp_path), "--cameras", "2", "--people", "1,2", "--frames", "4",
            "--repeats", "1", "--docs-table", str(tmp_path / "association.md")]
    monkeypatch.setattr("sys.argv", ["tools/__main__.py", "bench-association", *args])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "association.md").read_text()
    assert "`python -m tools bench-association --out" in text
    assert re.search(r"^\| 2 \| [0-9.]+ \| [0-9.]+ \|$", text, re.M)  # ms: cameras x people
    assert "| 2 | 1.0000 | 1.0000 |" in text  # identity accuracy

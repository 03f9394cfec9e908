"""The layout of ``pipeline/`` (docs/architecture.md): sub-packages in layers, small files.

Every import between the sub-packages of ``pipeline/`` (function-level ones included) points down
:data:`LAYERS`; the top level keeps at most 8 modules; no product file grows past 800 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = ["joints", "geometry", "store", "detect", "people", "synthetic", "job", "__main__"]
"""Lowest first. ``synthetic`` and ``job`` do not import each other; both sit above ``people``."""

MAX_LINES = 800


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT / "pipeline").parts
    return rel[0] if len(rel) > 1 else path.stem


def _imported_parts(path: Path) -> list[tuple[str, int]]:
    """(sub-package or top-level module of pipeline, line) for every import of ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            names = ([f"pipeline.{a.name}" for a in node.names] if node.module == "pipeline"
                     else [node.module])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pipeline.")]
        out += [(n.split(".")[1], node.lineno) for n in names if "." in n]
    return out


def test_pipeline_subpackages_import_only_downward():
    upward = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        src = _part(path)
        if src == "__init__":
            continue
        assert src in LAYERS, f"{path}: sub-package {src!r} is not placed in LAYERS"
        for dst, line in _imported_parts(path):
            if dst != src and LAYERS.index(dst) > LAYERS.index(src):
                upward.append(f"{path.relative_to(ROOT)}:{line} {src} -> {dst}")
    assert not upward, "imports against the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(upward)


def test_pipeline_top_level_is_small_and_grouped():
    modules = [p.name for p in (ROOT / "pipeline").glob("*.py")]
    packages = [p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()]
    assert len(modules) <= 8, modules
    assert len(packages) >= 4, packages


def test_no_product_file_over_800_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for pkg in ("pipeline", "train", "eval")
            for p in sorted((ROOT / pkg).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long

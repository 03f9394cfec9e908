"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks: [tools/docs_hook.py]``).

* before every build, the generated reference (``tools.docs_reference``) is written into
  ``docs/reference/generated/``, so the CLI and schema pages are those of the checkout;
* the figures of ``eval/figures/`` (the README's pictures) are served as ``img/<name>``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "eval" / "figures"


def on_pre_build(config: Any) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.docs_reference import generate

    generate(Path(config["docs_dir"]) / "reference" / "generated")


def on_files(files: Files, config: Any) -> Files:
    for p in sorted(FIGURES.glob("*")):
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".svg"}:
            files.append(File.generated(config, f"img/{p.name}", abs_src_path=str(p)))
    return files

"""Stage 2 on real footage (``make real-finetune``): the helpers around the product's commands.

The Makefile target chains the product's own commands; this module adds the two steps they do
not have:

* :func:`manifest_without_camera`: a copy of a recording's manifest without one camera (its
  intrinsics and every subject's extrinsics), with the data root made absolute so the copy can
  live in the run's folder. Stage 1 on that copy labels the other cameras only: the left-out
  camera's pixels reach neither the pseudo-labels, nor training, nor model selection.
* :func:`compare_predictions`: the ``metrics.json`` of ``python -m train predict --reference``
  before and after fine-tuning, side by side (``comparison.json`` and a printed table).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.manifest import load_manifest

COMPARED = ("n_mpjpe", "pa_mpjpe", "mpjpe", "pck3d", "auc", "n")
"""Metrics of predict's ``metrics.json`` shown before/after (N-MPJPE and PA-MPJPE first)."""


def manifest_without_camera(src: str | Path, camera: str, out: str | Path) -> Path:
    """Write ``out``: the manifest ``src`` without ``camera``; its ``root`` absolute. Refuses
    (ValueError naming the file) a camera the manifest lacks or one that would leave fewer than
    two cameras (no multi-view geometry)."""
    src, out = Path(src), Path(out)
    manifest = load_manifest(src)  # validates the source, resolves its root
    if camera not in manifest.cameras:
        raise ValueError(f"{src}: no camera {camera!r} to leave out (known: "
                         f"{list(manifest.cameras)})")
    if len(manifest.cameras) < 3:
        raise ValueError(f"{src}: {len(manifest.cameras)} cameras; leaving {camera!r} out would "
                         "leave fewer than two for stage 1")
    raw = yaml.safe_load(src.read_text())
    raw["cameras"] = {k: v for k, v in raw["cameras"].items() if k != camera}
    raw["extrinsics"] = {subject: {k: v for k, v in cams.items() if k != camera}
                         for subject, cams in (raw.get("extrinsics") or {}).items()}
    raw["root"] = str(manifest.root.resolve())
    raw["description"] = (f"{raw.get('description', '')} -- camera {camera} left out "
                          f"(tools/real_finetune.py, from {src})").strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(out)
    load_manifest(out)  # the copy must read back
    return out


def compare_predictions(before: str | Path, after: str | Path) -> dict[str, Any]:
    """Before/after rows of the ``output`` and ``protocol`` metrics of two predict folders."""
    rows = {}
    for name, folder in (("before", Path(before)), ("after", Path(after))):
        path = folder / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `python -m train predict ... "
                                    "--reference RUN` first")
        metrics = json.loads(path.read_text())
        rows[name] = {kind: {k: metrics[kind].get(k) for k in COMPARED}
                      for kind in ("output", "protocol") if kind in metrics}
    return rows


def _table(rows: dict[str, Any]) -> str:
    lines = [f"{'':8}{'kind':10}" + "".join(f"{k:>10}" for k in COMPARED)]
    for name, kinds in rows.items():
        for kind, values in kinds.items():
            cells = "".join(f"{v:>10.3f}" if isinstance(v, float) else f"{v!s:>10}"
                            for v in values.values())
            lines.append(f"{name:8}{kind:10}{cells}")
    return "\n".join(lines)


@click.group("real-finetune")
def cli() -> None:
    """Stage 2 on a real recording with one camera left out (see ``make real-finetune``)."""


@cli.command("manifest")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--leave-out", "camera", required=True, help="Camera to leave out (e.g. cam04).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def manifest_cmd(src: Path, camera: str, out: Path) -> None:
    """Copy the manifest SRC without one camera (absolute data root)."""
    try:
        print(manifest_without_camera(src, camera, out))
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@cli.command("compare")
@click.argument("before", type=click.Path(file_okay=False, path_type=Path))
@click.argument("after", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the comparison here as JSON.")
def compare_cmd(before: Path, after: Path, out: Path | None) -> None:
    """Print predict's metrics (vs --reference) before and after fine-tuning."""
    try:
        rows = compare_predictions(before, after)
    except (FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    print(_table(rows))
    if out is not None:
        out.write_text(json.dumps(rows, indent=2))

"""Issue 26 (M1): stage 1's exit-3 flag (summary.json 'inconsistent') holds on every later use
of the run: the trainer's command line refuses it unless told otherwise, `make train` does not
skip it on a rerun, and the ablation never reuses a flagged run for its next seed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from eval.ablation import Plan, ensure_labels
from tests.test_trainer import build_toy_dataset, build_toy_shards, tiny_config
from train.__main__ import cli

REPO = Path(__file__).resolve().parents[1]
REASON = "median reprojection error of the confident joints 41.0 px > 10.0 px"


def _flag(run: Path, inconsistent: bool = True) -> Path:
    """Write the summary.json stage 1 leaves (only the keys the guard reads, and a count)."""
    summary = {"rows": 32, "inconsistent": inconsistent,
               "consistency": {"reasons": [REASON] if inconsistent else []}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def flagged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guard")
    manifest = build_toy_dataset(root / "data")
    shards = _flag(build_toy_shards(manifest, root / "stage1"))
    cfg = tiny_config({"manifest": manifest, "shards": shards},
                      data={"source": "shards"}, optim={"epochs": 1})
    config = root / "tiny3d.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    return {"root": root, "manifest": manifest, "shards": shards, "config": config}


def _fit(flagged: dict[str, Path], out: Path, *extra: str, shards: Path | None = None):
    return CliRunner().invoke(cli, ["fit", "--config", str(flagged["config"]), "--out", str(out),
                                    "--shards", str(shards or flagged["shards"]),
                                    "--device", "cpu", "--no-progress", "--threads", "1",
                                    *extra])


def test_trainer_cli_refuses_a_flagged_run_naming_folder_and_flag(flagged, tmp_path):
    for shards in (flagged["shards"], flagged["shards"] / "shards"):   # run folder or shards/
        res = _fit(flagged, tmp_path / "run", shards=shards)
        assert res.exit_code == 1, res.output
        assert f"{flagged['shards'] / 'summary.json'}: 'inconsistent': true" in res.output
        assert REASON in res.output and "--allow-inconsistent-labels" in res.output
        assert not (tmp_path / "run").exists()                 # refused before anything is written


def test_override_trains_on_a_flagged_run_and_unflagged_runs_train(flagged, tmp_path):
    res = _fit(flagged, tmp_path / "allowed", "--allow-inconsistent-labels", "--max-steps", "1")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "allowed" / "last.pt").exists()
    # --max-steps below one epoch: no validation yet, said so (it printed "(None)")
    assert "best.pt:     not written: stopped at step 1 before any validation" in res.output
    assert "step 2)" in res.output and "(None)" not in res.output   # 16 samples / batch 8
    clean = _flag(Path(shutil.copytree(flagged["shards"], tmp_path / "clean")), False)
    res = _fit(flagged, tmp_path / "clean_run", "--max-steps", "1", shards=clean)
    assert res.exit_code == 0, res.output


def test_make_train_rerun_does_not_skip_the_flag(flagged, tmp_path):
    """A second `make train` finds summary.json, skips stage 1, and the trainer stops it."""
    stamp = tmp_path / "stamp"
    stamp.touch()                                          # newer than the requirements files
    run = tmp_path / "make_run"
    env = {**os.environ, "MAKEFLAGS": ""}
    res = subprocess.run(
        ["make", "-s", "train", f"STAMP={stamp}", f"PY={sys.executable}",
         f"SHARDS={flagged['shards']}", f"MANIFEST={flagged['manifest']}",
         f"CONFIG={flagged['config']}", f"RUN={run}", "TRAIN_OPTS=--device cpu --no-progress"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "'inconsistent': true" in res.stderr and "pseudolabels" not in res.stdout
    assert not run.exists()


def test_ablation_never_reuses_a_flagged_label_run(tmp_path):
    plan = Plan(out=tmp_path / "ablation")
    folder = plan.labels_dir("multiview", "net")
    folder.mkdir(parents=True)
    _flag(folder)
    with pytest.raises(RuntimeError, match=r"summary.json: 'inconsistent': true \(median"):
        ensure_labels(plan, "multiview", "net")
    _flag(folder, inconsistent=False)
    assert ensure_labels(plan, "multiview", "net") == folder

"""Stage 2 under interruption and bad input: a training process SIGKILLed mid-run and resumed
with ``--resume`` ends bitwise where an uninterrupted run ends; a kill between the metrics line
and the checkpoint does not duplicate the metrics; a damaged checkpoint and shards of another
schema are refused with the file and the column named, through the command line.

Extends tests/test_trainer.py (which resumes a run stopped by ``max_steps`` in-process and
checks ``load_checkpoint`` on garbage bytes) with real kills and the command line; its tiny
dataset builders are reused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from tests import faults
from pipeline.store import shards as S
from pipeline.joints import H36M17
from tests.conftest import REPO
from tests.test_reliability import wait_for
from tests.test_trainer import build_toy_dataset, build_toy_shards, tiny_config
from train.__main__ import cli
from train.checkpoint import load_checkpoint
from train.samples import load_shard_samples
from train.trainer import RunOptions, Trainer, fit

EPOCHS = 3  # 2 steps per epoch: 6 steps


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy_reliability")
    manifest = build_toy_dataset(root / "data")
    return {"root": root, "manifest": manifest, "shards": build_toy_shards(manifest,
                                                                           root / "stage1")}


@pytest.fixture(scope="module")
def cfg(toy):
    return tiny_config(toy, data={"source": "shards"}, optim={"epochs": EPOCHS,
                                                              "milestones": [2]})


@pytest.fixture(scope="module")
def config_file(cfg, toy) -> Path:
    path = toy["root"] / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


@pytest.fixture(scope="module")
def straight(cfg, toy) -> Path:
    """The uninterrupted run."""
    out = toy["root"] / "straight"
    fit(cfg, RunOptions(out=out, device="cpu", progress=False, threads=1))
    return out


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def _same_records(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "step", "lr", "train_loss", "val_pseudo_n_mpjpe")
    return [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]


def _fit_args(config_file: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(config_file), "--out", str(out), "--device", "cpu",
            "--workers", "0", "--threads", "1", "--no-progress", *extra]


def test_training_killed_mid_run_resumes_to_the_same_weights(straight, config_file, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "train", *_fit_args(config_file, out)],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: (out / "last.pt").exists() or proc.poll() is not None, 120,
                 "the first checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    step_at_kill = load_checkpoint(out / "last.pt")["step"]
    assert 0 < step_at_kill < EPOCHS * 2, "the run finished before the kill"
    res = CliRunner().invoke(cli, _fit_args(config_file, out, "--resume"))
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out / "last.pt")["step"] == EPOCHS * 2
    assert _weights_equal(straight / "last.pt", out / "last.pt")
    assert _same_records(_metrics(out), _metrics(straight))
    faults.record("trainer SIGKILLed mid-run, resumed with --resume", faults_injected=1, runs=2,
                  exit_status=res.exit_code,
                  note=f"killed at step {step_at_kill}/{EPOCHS * 2}; final weights bitwise "
                       "equal to the uninterrupted run")


def test_kill_between_metrics_line_and_checkpoint_does_not_repeat_an_epoch(straight, cfg,
                                                                           tmp_path):
    """The epoch end writes the metrics line, then last.pt: a kill in between leaves a line for
    an epoch the checkpoint has not reached. Resuming redoes that epoch; it must replace the
    line, not add a second one."""
    out = tmp_path / "run"
    opts = dict(out=out, device="cpu", progress=False, threads=1)
    fit(cfg, RunOptions(**opts, max_steps=2))                 # epoch 1 done
    epoch1 = tmp_path / "epoch1.pt"
    shutil.copy(out / "last.pt", epoch1)
    fit(cfg, RunOptions(**opts, max_steps=4, resume=True))    # epoch 2: metrics line + last.pt
    shutil.copy(epoch1, out / "last.pt")                      # as if killed before last.pt
    fit(cfg, RunOptions(**opts, resume=True))
    epochs = [r["epoch"] for r in _metrics(out)]
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    assert _same_records(_metrics(out), _metrics(straight))
    assert _weights_equal(straight / "last.pt", out / "last.pt")
    faults.record("trainer killed between metrics line and checkpoint", faults_injected=1,
                  runs=3, exit_status=0,
                  note="resumed run redoes the epoch; metrics.jsonl keeps one line per epoch; "
                       "final weights bitwise equal to the uninterrupted run")


def test_damaged_checkpoint_is_refused_with_a_clear_error(straight, config_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    data = (straight / "last.pt").read_bytes()
    for damage in ("truncated", "zeroed bytes"):
        if damage == "truncated":
            (out / "last.pt").write_bytes(data[: len(data) // 2])
        else:
            b = bytearray(data)
            b[len(b) // 3: len(b) // 3 + 64] = bytes(64)
            (out / "last.pt").write_bytes(bytes(b))
        res = CliRunner().invoke(cli, _fit_args(config_file, out, "--resume"))
        assert res.exit_code == 1, (damage, res.output)
        assert f"error: checkpoint {out / 'last.pt'} is unreadable or corrupt" in res.output, \
            res.output
        assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    faults.record("damaged checkpoint (truncated, zeroed bytes) on --resume", faults_injected=2,
                  runs=2, exit_status=1,
                  note="refused: 'checkpoint <file> is unreadable or corrupt'")


def _rewrite(path: Path, change: str) -> None:
    t = pq.read_table(path)
    if change == "missing":
        t = t.drop_columns(["valid"])
    else:  # joints_3d as float64 lists
        i = t.schema.get_field_index("joints_3d")
        t = t.set_column(i, "joints_3d", t.column("joints_3d").cast(
            pa.list_(pa.list_(pa.float64(), 3), H36M17.num_joints)))
    pq.write_table(t, path)


@pytest.mark.parametrize("change,column", [("missing", "valid"), ("type", "joints_3d")])
def test_shards_of_another_schema_are_refused_naming_the_column(toy, config_file, tmp_path,
                                                                change, column):
    shards = tmp_path / "stage1"
    shutil.copytree(toy["shards"], shards)
    victim = sorted(faults.finished_shards(shards).values())[0]
    _rewrite(victim, change)
    cfg = tiny_config({**toy, "shards": shards}, data={"source": "shards"})
    with pytest.raises(ValueError, match=rf"{victim.name}.*'{column}'"):
        Trainer(cfg, RunOptions(out=tmp_path / "run", device="cpu", progress=False))
    res = CliRunner().invoke(cli, _fit_args(config_file, tmp_path / "cli", "--shards",
                                            str(shards)))
    assert res.exit_code == 1 and re.search(rf"error: .*{victim.name}.*'{column}'", res.output), \
        res.output
    faults.record(f"shard with {'a missing' if change == 'missing' else 'a mistyped'} column "
                  "given to the trainer", faults_injected=1, runs=1,
                  exit_status=res.exit_code, note=f"refused, naming the file and '{column}'")


def test_unfinished_shards_are_not_training_data(toy, tmp_path):
    """A shard without its stats file (killed before it) and a hidden temporary file are not
    read by the trainer's data path; the finished shards are."""
    shards = tmp_path / "stage1"
    shutil.copytree(toy["shards"], shards)
    files = sorted(faults.finished_shards(shards).values())
    all_rows = len(load_shard_samples(shards, H36M17))
    S.stats_path(files[0]).unlink()
    files[1].with_name(f".{files[1].name}.tmp-7").write_bytes(files[1].read_bytes()[:200])
    labels = load_shard_samples(shards, H36M17)
    assert len(labels) == all_rows - pq.read_metadata(files[0]).num_rows
    assert np.isfinite(labels.joints_2d[labels.valid]).all()

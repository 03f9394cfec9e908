"""``python -m tools time-make-train``: a make target's wall time split at the Python commands
it echoes, on a real ``make`` run of a small Makefile."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import tools
from tools.train_timing import main, parse_log


def test_parse_log_splits_at_the_python_commands():
    log = ["[     0.0] mkdir -p outputs\n",
           "[     0.5] .venv/bin/python -m pipeline data --manifest m.yaml\n",
           "[    70.0] render synthetic: 100%\n",
           "[   130.5] .venv/bin/python -m train fit --config train/configs/demo2d.yaml --out r\n",
           "not stamped .venv/bin/python -m eval metrics\n",
           "[   400.0] epoch 12\n"]
    steps, total = parse_log(log, {0.5: 3.2})
    assert total == 400.0
    assert [s.name for s in steps] == ["pipeline data", "train fit (demo2d.yaml)"]
    assert [(s.start_s, s.end_s) for s in steps] == [(0.5, 130.5), (130.5, 400.0)]
    assert steps[0].load == 3.2 and steps[1].load is None


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("fail", [False, True])
def test_time_make_train_times_a_real_make_run(tmp_path: Path, fail: bool, monkeypatch):
    # `python -m tools` caps BLAS threads for its benches; make train must not inherit that
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(tools, "CAPPED_HERE", ["OMP_NUM_THREADS"])
    (tmp_path / "Makefile").write_text(
        "train:\n"
        "\t@echo threads=$$OMP_NUM_THREADS.\n"
        "\tpython3 -m json.tool --help > /dev/null\n"
        "\tsleep 0.4\n"
        "\tpython3 -m platform --terse\n"
        + ("\tfalse\n" if fail else ""))
    table = tmp_path / "timing.md"
    r = CliRunner().invoke(main, ["--clone", str(tmp_path), "--docs-table", str(table)])
    assert (r.exit_code != 0) == fail, r.output
    log = (tmp_path / "outputs" / "make_train.log").read_text()
    assert "exit status" in log and all(line.startswith("[") for line in log.splitlines())
    assert "threads=." in log
    steps, total = parse_log(log.splitlines())
    assert [s.name for s in steps] == ["json.tool --help", "platform --terse"]
    assert steps[0].end_s - steps[0].start_s >= 0.4 and total >= steps[1].end_s
    text = table.read_text()
    assert text.startswith("<!-- written by") and f"exit status {2 if fail else 0}" in text
    assert "| `json.tool --help` |" in text and "**`make train`**" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_starts_the_3d_network_from_the_2d_one_where_it_exists(tmp_path: Path):
    """make train's last step (train-3d) picks its configuration when it runs: 3 epochs from
    the project's 2D network where CHECKPOINT_2D exists (stage 1 trains it first on the
    synthetic set), else 12 from scratch; CONFIG=... wins; the lifter is untouched."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    ckpt = tmp_path / "pose2d.pt"

    def fit_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "train-3d", *args],
                             cwd=repo, capture_output=True, text=True, check=True).stdout
        return " ".join(line.rstrip("\\").strip() for line in out.splitlines())

    scratch = fit_line(f"CHECKPOINT_2D={ckpt}")
    assert "demo_r18w32_96px_d24_pseudo.yaml" in scratch and "--init-2d-from" not in scratch
    ckpt.touch()
    from_2d = fit_line(f"CHECKPOINT_2D={ckpt}")
    assert "demo_r18w32_96px_d24_pseudo_from2d.yaml" in from_2d
    assert f"--init-2d-from {ckpt}" in from_2d and "synthetic_multiview_" in from_2d
    mine = fit_line(f"CHECKPOINT_2D={ckpt}", "CONFIG=train/configs/demo_r18w32_96px_d24_pseudo.yaml")
    assert "--init-2d-from" not in mine
    lifter = fit_line(f"CHECKPOINT_2D={ckpt}", "STUDENT=lifter")
    assert "lifter_w1_h512_pseudo.yaml" in lifter and "--init-2d-from" not in lifter

"""``python -m tools bench-train``: another network's cost from a config plus model overrides
(what a 2D network would cost as stage 1's detector), measured for real at toy size."""
from __future__ import annotations

import json

from click.testing import CliRunner

from tools.train_bench import main, speed_table

CONFIG_2D = "train/configs/demo2d_r18w32_96px.yaml"


def _rows(args: list[str]) -> list[dict]:
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]


def test_model_overrides_change_the_measured_network():
    base = ["--config", CONFIG_2D, "--batch-size", "2", "--steps", "1", "--threads", "1",
            "--inference-only"]
    small, = _rows(base + ["--model", "width=8", "--model", "input_size=32"])
    assert (small["width"], small["input_size"], small["depth"]) == (8, 32, 18)
    assert small["infer_ms_per_img"] > 0 and small["train_img_s"] != small["train_img_s"]  # NaN
    wide, = _rows(base + ["--model", "width=16", "--model", "input_size=32"])
    assert wide["params_m"] > 2 * small["params_m"]  # twice the width, ~4x the weights


def test_bad_model_override_is_a_usage_error():
    for bad, says in ((["--model", "width"], "KEY=VALUE"), (["--model", "nope=1"], "nope")):
        r = CliRunner().invoke(main, ["--config", CONFIG_2D, "--inference-only", *bad])
        assert r.exit_code == 2 and says in r.output, r.output


def test_docs_table_holds_each_config_with_the_minutes_of_its_epochs(tmp_path):
    """--docs-table: one row per config (random input), headed by the command; a row measured
    through the data path gets the minutes its epochs take at that rate."""
    out = tmp_path / "train_speed.md"
    args = ["--config", CONFIG_2D, "--batch-size", "2", "--steps", "1", "--threads", "1",
            "--model", "width=8", "--model", "input_size=32", "--docs-table", str(out)]
    _rows(args)
    text = out.read_text()
    assert text.startswith("<!-- written by `python -m tools")
    row, = [line for line in text.splitlines() if line.startswith("| `demo2d_r18w32_96px`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0 and cells[3] == cells[6] == "–"  # no data path measured


def test_speed_table_minutes_are_epochs_times_samples_over_the_rate():
    row = {"config": "train/configs/x.yaml", "epochs": 8, "params_m": 3.2, "train_img_s": 90.0,
           "infer_img_s": 600.0, "peak_rss_mib": 1024.0, "threads": 2, "device": "cpu",
           "data_path": {"train_img_s": 80.0, "data_wait_share": 0.031, "samples": 6000}}
    line, = [x for x in speed_table([row]).splitlines() if x.startswith("| `x`")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "8 x 6,000" and float(cells[6]) == 10.0  # 8 * 6000 / 80 / 60
    assert cells[4] == "0.031" and cells[8] == "1.0"

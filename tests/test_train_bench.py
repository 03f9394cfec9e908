"""``python -m tools bench-train``: another network's cost from a config plus model overrides
(what a 2D network would cost as stage 1's detector), measured for real at toy size."""
from __future__ import annotations

import json

from click.testing import CliRunner

from tools.train_bench import main

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

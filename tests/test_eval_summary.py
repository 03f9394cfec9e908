"""``python -m eval summary``: eval folders grouped by seed into one table, hand-computed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.__main__ import cli
from eval.summary import summary_table


def _eval_dir(root: Path, name: str, n_mpjpe: float, samples: int = 4000,
              model: str = "checkpoint") -> Path:
    d = root / name
    d.mkdir()
    overall = {"mpjpe": n_mpjpe + 1.0, "n_mpjpe": n_mpjpe, "pa_mpjpe": n_mpjpe - 20.0,
               "pck3d": 0.9, "auc": 0.5, "n": float(samples)}
    (d / "eval.json").write_text(json.dumps({"split": "test", "samples": samples,
                                             model: {"overall": overall}}))
    return d


def test_summary_groups_seeds_as_mean_and_sample_std(tmp_path):
    a, b = _eval_dir(tmp_path, "s0", 80.0), _eval_dir(tmp_path, "s1", 84.0)
    mean = _eval_dir(tmp_path, "mean", 212.7, model="mean_pose")
    table = summary_table({"pseudo": [a, b], "mean pose": [mean]})
    rows = table.splitlines()
    # 80 and 84: mean 82.0, sample std sqrt(((2)^2 + (2)^2) / 1) = 2.83
    assert rows[2] == ("| pseudo | 2 | 83.0 ± 2.8 | 82.0 ± 2.8 | 62.0 ± 2.8 | 0.900 ± 0.000 "
                       "| 0.500 ± 0.000 | 4000 |")
    assert rows[3].startswith("| mean pose | 1 | 213.7 | 212.7 | 192.7 |")


def test_summary_refuses_mixed_test_sets_and_missing_folders(tmp_path):
    a, b = _eval_dir(tmp_path, "s0", 80.0), _eval_dir(tmp_path, "s1", 84.0, samples=400)
    with pytest.raises(ValueError, match="different test sets"):
        summary_table({"x": [a, b]})
    with pytest.raises(ValueError, match="no eval.json"):
        summary_table({"x": [tmp_path / "nowhere"]})
    out = tmp_path / "t.md"
    r = CliRunner().invoke(cli, ["summary", "--group", f"x={a}", "--docs-table", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("<!-- written by") and "| x | 1 |" in out.read_text()
    bad = CliRunner().invoke(cli, ["summary", "--group", "no-equals-sign"])
    assert bad.exit_code != 0 and "NAME=DIR" in bad.output
    missing = CliRunner().invoke(cli, ["summary", "--group", f"y={tmp_path / 'nowhere'}"])
    assert missing.exit_code == 1 and "no eval.json" in missing.output

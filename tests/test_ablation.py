"""The ablation machinery end to end at toy size: stage 1, training, selection on the
validation split, test-split scores, the refinement unit, resumability, the rendered table."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from eval.ablation import (BUDGETS, JOB_MODES, ROWS, Budget, Plan, per_frame_geometry, render,
                           run_ablation)
from eval.ablation_table import mean_std
from tests.conftest import REPO, SYNTHETIC_MANIFEST
from train.checkpoint import load_checkpoint
from train.config import config_from_dict
from train.trainer import RunOptions, fit

SUBJECTS = ("S1", "S8", "S9")
FRAMES = 13          # PSS@100 needs >= 100 training poses (2 actions x 4 cameras x 13)
ACTIONS = ("Walking", "Sitting")
TOY = Budget(name="toy", epochs=1, milestones=(), val_samples=16, refiner_steps=40,
              refiner_hidden=32)


@pytest.fixture(scope="module")
def toy_manifest(tmp_path_factory):
    """The synthetic manifest cut to one training (S1), validation (S8) and test (S9) subject
    and two actions, FRAMES rendered frames per sequence."""
    from pipeline.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("toy")
    raw = yaml.safe_load(SYNTHETIC_MANIFEST.read_text())
    raw["root"] = str(root / "data")
    raw["sequences"] = [s for s in raw["sequences"]
                        if s["subject"] in SUBJECTS and s["action"] in ACTIONS]
    raw["splits"] = {"train": ["S1"], "val": ["S8"], "test": ["S9"]}
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    generate_dataset(path, frames=FRAMES, workers=1, progress=False)
    return path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """The shipped pseudo-label configuration with a tiny network (the budget sets the rest)."""
    raw = yaml.safe_load((REPO / "train/configs/demo_r18w32_96px_d24_pseudo.yaml").read_text())
    raw["model"].update({"width": 8, "deconv_channels": 16, "depth_bins": 8, "input_size": 32})
    raw["data"].update({"batch_size": 16, "workers": 0})
    path = tmp_path_factory.mktemp("cfg") / "tiny_pseudo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_rows_and_budgets_are_registries():
    assert list(ROWS)[:3] == ["per-frame", "pooled", "multiview"]
    assert per_frame_geometry() in JOB_MODES
    assert {"cpu-2h", "gpu"} <= set(BUDGETS)
    assert mean_std([1.0, 3.0]) == "2.0 ± 1.4" and mean_std([2.0]) == "2.0"
    assert mean_std([np.nan]) == "–"


def test_two_rows_end_to_end_resumable(toy_manifest, tiny_config, tmp_path):
    plan = Plan(out=tmp_path / "ablation", manifest=str(toy_manifest), seeds=(0,), budget=TOY,
                pseudo_config=tiny_config,
                rows=("oracle-2d", "refined"), refine_base="oracle-2d", device="cpu",
                stage1_workers=1, progress=False)
    progress = run_ablation(plan, log=lambda *_: None)
    assert progress.done == ["oracle-2d/seed0", "refined/seed0"] and not progress.failed
    oracle = json.loads(plan.result_file("oracle-2d", 0).read_text())
    refined = json.loads(plan.result_file("refined", 0).read_text())
    for r in (oracle, refined):
        assert np.isfinite([r["metrics"][k] for k in ("n_mpjpe", "pa_mpjpe", "pss@50")]).all()
        assert r["metrics"]["n"] == len(ACTIONS) * 4 * FRAMES                  # every S9 frame-view scored
    # ground-truth 2D triangulated from all views: labels close to the truth
    assert oracle["labels"]["n_mpjpe"] < 10.0 and oracle["geometry"] == "multiview"
    # model selection on the validation split's pseudo-labels, never on ground truth
    assert oracle["val"]["selection_metric"] == "val_pseudo_n_mpjpe"
    # the refiner refines the oracle row's own network, measured on the same samples
    assert refined["checkpoint"] == oracle["checkpoint"]
    assert refined["unrefined"] == pytest.approx(oracle["metrics"])
    assert refined["refiner_fit"]["label_source"] == "pseudo"

    # a rerun skips what is finished and leaves the results untouched
    before = {p: p.stat().st_mtime_ns for p in plan.budget_dir.glob("results/*/*.json")}
    again = run_ablation(plan, log=lambda *_: None)
    assert again.skipped == ["oracle-2d/seed0", "refined/seed0"] and not again.done
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # the table renders from what exists, rows without results marked
    wider = Plan(**{**plan.__dict__, "rows": ("oracle-2d", "refined", "mean-pose"),
                    "seeds": (0, 1)})
    table = render(wider).read_text()
    assert "| oracle-2d |" in table and "55.0" in table and "1/2" in table
    assert "not run yet" in table.split("| mean-pose |")[1].splitlines()[0]
    assert (plan.budget_dir / "ablation.png").exists()


def test_a_failing_row_is_recorded_and_the_rest_still_run(toy_manifest, tmp_path):
    plan = Plan(out=tmp_path / "ablation", manifest=str(toy_manifest), seeds=(0,), budget=TOY,
                rows=("refined", "mean-pose"), refine_base="mean-pose", device="cpu",
                progress=False)
    progress = run_ablation(plan, log=lambda *_: None)
    assert progress.failed == ["refined/seed0"] and progress.done == ["mean-pose/seed0"]
    assert "not a self-supervised row" in (
        plan.budget_dir / "results" / "refined" / "seed0.failed.txt").read_text()
    assert "Failed" in (plan.budget_dir / "table.md").read_text()


def test_the_from_2d_budget_starts_every_trained_row_from_the_2d_network(toy_manifest,
                                                                         tiny_config, tmp_path):
    """Budget.init_2d (``cpu-from2d``, make train's 3D recipe of session 6): the row's network
    starts from the plan's 2D network (recorded in its checkpoint); the former budgets start
    from scratch."""
    raw = yaml.safe_load((REPO / "train/configs/demo2d_r18w32_96px.yaml").read_text())
    raw["model"].update({"width": 8, "deconv_channels": 16, "input_size": 32})
    raw["data"].update({"manifest": str(toy_manifest), "batch_size": 16, "workers": 0})
    raw["optim"].update({"epochs": 1, "milestones": []})
    two_d = fit(config_from_dict(raw, "tiny 2D"), RunOptions(out=tmp_path / "pose2d", device="cpu",
                                                             progress=False, threads=1,
                                                             max_steps=2))["last"]
    assert BUDGETS["cpu-from2d"].init_2d and not BUDGETS["cpu-2h"].init_2d
    # cpu-make-train is make train's 3D schedule: it follows the from-2D config
    mt = yaml.safe_load((REPO / "train/configs/demo_r18w32_96px_d24_pseudo_from2d.yaml")
                        .read_text())["optim"]
    b = BUDGETS["cpu-make-train"]
    assert b.init_2d and (b.epochs, list(b.milestones)) == (mt["epochs"], mt["milestones"])
    budget = Budget(name="toy2d", epochs=1, milestones=(), val_samples=16, init_2d=True)
    plan = Plan(out=tmp_path / "ablation", manifest=str(toy_manifest), seeds=(0,), budget=budget,
                pseudo_config=tiny_config, rows=("oracle-2d",), checkpoint_2d=str(two_d),
                device="cpu", stage1_workers=1, progress=False)
    assert run_ablation(plan, log=lambda *_: None).done == ["oracle-2d/seed0"]
    result = json.loads(plan.result_file("oracle-2d", 0).read_text())
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["init_from"]["from_2d"] and ckpt["init_from"]["path"] == str(two_d)
    assert ckpt["config"]["optim"]["init_2d_from"] == str(two_d)
    assert result["budget"]["init_2d"] is True

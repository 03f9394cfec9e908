"""Weight averaging (``optim.ema_decay``, train/ema.py) in real training runs on the tiny data of
tests/test_trainer.py (the 2D network) and tests/test_lifter.py (the lifter): the averaged
weights are the hand-computed moving average of the recorded training trajectory, validation and
``model`` hold them, resume is exact, ``train slim`` drops the training weights, and a run
without averaging writes the checkpoint it always did."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.test_lifter import _lifter_config, build_lift_shards
from tests.test_trainer import build_toy_dataset, tiny_config
from train.__main__ import cli
from train.checkpoint import RAW_MODEL_KEY, build_network, load_checkpoint, load_model
from train.config import ConfigError, config_from_dict, load_config, with_overrides
from train.ema import decay_at
from train.students import validate
from train.trainer import RunOptions, Trainer, fit

DECAY = 0.3  # decay_at: 0.1, 0.18, 0.25, then 0.3: the warm-up and the cap within 4 steps
STEPS = 4  # 2D network: 2 epochs of 2 steps (16 training frame-views, batch 8)
LR = 0.1  # large steps: the averaged and the training networks predict apart after 4


def _opts(out: Path, **kw) -> RunOptions:
    return RunOptions(out=out, device="cpu", progress=False, threads=1, **kw)


def _config_2d(root: Path, decay: float = DECAY):
    """The 2D network (depth_bins 1, validated in px on S8's ground truth) with averaging."""
    return tiny_config({"manifest": build_toy_dataset(root / "data"), "shards": root / "none"},
                       model={"depth_bins": 1}, data={"frame_step": 2},
                       optim={"ema_decay": decay, "lr": LR})


def _config_lifter(root: Path):
    cfg = _lifter_config(build_lift_shards(root / "lift"))
    return with_overrides(cfg, optim={"ema_decay": DECAY, "epochs": 2})


def _trajectory(cfg, root: Path) -> dict:
    """The initial weights, and the checkpoint of a fresh run stopped after each step 1..STEPS
    (a fresh run stopped at step k is where the full run is at step k: test_trainer's resume)."""
    w0 = {k: v.clone() for k, v in Trainer(cfg, _opts(root / "w0")).model.state_dict().items()}
    runs = {k: root / f"steps{k}" for k in range(1, STEPS + 1)}
    for k, out in runs.items():
        fit(cfg, _opts(out, max_steps=k))
    return {"w0": w0, "runs": runs, "cfg": cfg,
            "states": {k: load_checkpoint(out / "last.pt") for k, out in runs.items()}}


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ema2d")
    return _trajectory(_config_2d(root), root)


@pytest.fixture(scope="module")
def lifter(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ema_lifter")
    return _trajectory(_config_lifter(root), root)


@pytest.mark.parametrize("which", ["run2d", "lifter"])
def test_averaged_weights_are_the_moving_average_of_the_training_weights(which, request):
    """``model`` after step 4 = the EMA, computed here in float64, of the initial weights and
    the training weights (``raw_model``) recorded after steps 1-4; BatchNorm's running
    statistics are averaged the same way, its step counter is the training network's."""
    run = request.getfixturevalue(which)
    states = run["states"]
    assert all(s["step"] == k for k, s in states.items())
    avg = {k: v.double() for k, v in run["w0"].items() if v.is_floating_point()}
    for k in range(1, STEPS + 1):
        d = decay_at(DECAY, k)
        raw = states[k][RAW_MODEL_KEY]
        avg = {n: d * a + (1 - d) * raw[n].double() for n, a in avg.items()}
    assert [round(decay_at(DECAY, k), 3) for k in range(1, 5)] == [0.1, 0.182, 0.25, 0.3]
    final, raw = states[STEPS]["model"], states[STEPS][RAW_MODEL_KEY]
    assert final.keys() == raw.keys() == run["w0"].keys()
    bn = [n for n in final if n.endswith("running_var")]
    assert bn, "the network has BatchNorm statistics to average"
    for n, expected in avg.items():
        torch.testing.assert_close(final[n], expected.float(), rtol=1e-5, atol=1e-6, msg=n)
    for n in final:
        if not final[n].is_floating_point():
            assert torch.equal(final[n], raw[n]), n
    # the training weights moved, and the average is not them
    params = [n for n in avg if not n.startswith("running_", n.rfind(".") + 1)]
    norm = lambda ws: float(torch.cat([w.flatten() for w in ws]).norm())  # noqa: E731
    travelled = norm([raw[n] - run["w0"][n] for n in params])
    apart = norm([final[n] - raw[n] for n in params])
    assert travelled > 0.1 and apart > 0.01, (travelled, apart)  # far above the tolerance
    assert not any(torch.equal(final[n], raw[n]) for n in bn)


def test_validation_and_best_pt_measure_the_averaged_weights(run2d):
    """The epoch-2 record's S8 error is that of the network ``python -m eval`` and stage 1 load
    (``model``: the averaged weights), not that of the training weights (recorded beside it as
    ``raw_val_*``); best.pt holds them."""
    out, cfg = run2d["runs"][STEPS], run2d["cfg"]
    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    key = record["selection_metric"]
    assert key == "val_gt_px_error" and record["step"] == STEPS
    trainer = Trainer(cfg, _opts(out, resume=True))  # its validation samples
    averaged, _ = load_model(out / "last.pt")
    raw = build_network(cfg)
    raw.load_state_dict(load_checkpoint(out / "last.pt")[RAW_MODEL_KEY])
    measure = lambda net: validate(net, trainer.val_samples, cfg,  # noqa: E731
                                   trainer.joint_set)["gt_px_error"]
    assert measure(averaged) == pytest.approx(record[key], rel=1e-6)
    assert measure(raw) == pytest.approx(record["raw_" + key], rel=1e-6)  # beside it, for study
    assert abs(record["raw_" + key] - record[key]) > 0.01  # 11.80 vs 11.92 px when written
    best = load_checkpoint(out / "best.pt")  # the run's state at that step: averaged weights
    at = run2d["states"][best["step"]]
    assert all(torch.equal(best["model"][n], v) for n, v in at["model"].items())
    assert all(torch.equal(best[RAW_MODEL_KEY][n], v) for n, v in at[RAW_MODEL_KEY].items())


def test_resume_with_averaging_reaches_the_same_averaged_and_training_weights(run2d, tmp_path):
    """Stopped after step 3 and resumed: both weight sets bitwise as in the uninterrupted run,
    and the same validation figures."""
    cfg, straight = run2d["cfg"], run2d["runs"][STEPS]
    fit(cfg, _opts(tmp_path, max_steps=3))
    fit(cfg, _opts(tmp_path, resume=True))
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(tmp_path / "last.pt")
    assert a["step"] == b["step"] == STEPS
    for key in ("model", RAW_MODEL_KEY):
        assert a[key].keys() == b[key].keys()
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n)
    lines = lambda p: [json.loads(x)["val_gt_px_error"]  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(tmp_path) == lines(straight)


def test_slim_keeps_the_averaged_weights_and_drops_the_training_weights(run2d, tmp_path):
    src = run2d["runs"][STEPS] / "last.pt"
    res = CliRunner().invoke(cli, ["slim", "--checkpoint", str(src),
                                   "--out", str(tmp_path / "slim.pt")])
    assert res.exit_code == 0, res.output
    slim, full = load_checkpoint(tmp_path / "slim.pt"), load_checkpoint(src)
    assert RAW_MODEL_KEY in full and RAW_MODEL_KEY not in slim
    assert all(torch.equal(slim["model"][n], v) for n, v in full["model"].items())
    load_model(tmp_path / "slim.pt")


def test_without_averaging_the_checkpoint_and_training_are_as_before(run2d, tmp_path):
    """ema_decay 0: no ``raw_model`` key, the checkpoint's keys of before, and ``model`` bitwise
    the training weights of the averaged run (averaging does not change the training)."""
    cfg = with_overrides(run2d["cfg"], optim={"ema_decay": 0.0})
    fit(cfg, _opts(tmp_path, max_steps=STEPS))
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng",
                          "config", "metrics", "best", "losses", "datasets", "init_from",
                          "joint_set"}
    raw = run2d["states"][STEPS][RAW_MODEL_KEY]
    assert all(torch.equal(state["model"][n], raw[n]) for n in raw)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_gt_px_error" in record and not any(k.startswith("raw_") for k in record)


def test_a_bad_ema_decay_is_refused_naming_the_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    for value in ("1.0", "-0.1", "1.5"):
        p.write_text(f"optim: {{ema_decay: {value}}}\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.ema_decay: must be in \[0, 1\)"):
            load_config(p)
    p.write_text("optim: {ema_decay: strong}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.ema_decay: expected float"):
        load_config(p)
    assert config_from_dict({"optim": {"ema_decay": 0.999}}).optim.ema_decay == 0.999
    assert config_from_dict({}).optim.ema_decay == 0.0

"""Fine-tuning (stage 2 on a recording of one subject): a run started from another checkpoint's
weights, validated on held-out frames of its own sequences; the manifest without one camera."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.joints import H36M17
from pipeline.store.manifest import load_manifest
from tests.test_trainer import build_toy_dataset, build_toy_shards, tiny_config
from tools.real_finetune import (compare_predictions, manifest_without_camera,
                                 merge_training_runs)
from train.__main__ import cli
from train.checkpoint import CheckpointError, load_checkpoint, load_model
from train.config import ConfigError
from train.samples import load_manifest_samples, load_shard_samples
from train.trainer import RunOptions, Trainer, fit


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    manifest = build_toy_dataset(root / "data")
    return {"root": root, "manifest": manifest, "shards": build_toy_shards(manifest,
                                                                           root / "stage1")}


def _opts(out: Path, **kw) -> RunOptions:
    return RunOptions(out=out, device="cpu", progress=False, threads=1, **kw)


def test_frame_holdout_keeps_every_camera_of_a_frame_on_one_side(toy):
    m = load_manifest(toy["manifest"])
    s = load_manifest_samples(m, "train")                    # S1: 2 cameras x 16 frames
    starts = s.holdout_starts(0.25)
    assert starts == {("S1", "Walk"): 12}
    held = s.from_frames(starts)
    assert held.sum() == 8 and set(s.frame[held]) == {12, 13, 14, 15}
    assert set(s.camera[held]) == {"c1", "c2"} and not set(s.frame[~held]) & {12, 13, 14, 15}
    assert s.holdout_starts(0.01) == {("S1", "Walk"): 15}     # at least one frame
    assert s.holdout_starts(0.999) == {("S1", "Walk"): 1}     # at most all but one
    assert not s.from_frames({("S8", "Walk"): 0}).any()       # other sequences: none held
    with pytest.raises(ValueError, match="S1 Walk: 1 frame"):
        s.subset(s.frame == 3).holdout_starts(0.2)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        s.holdout_starts(1.0)


def test_fine_tuning_starts_from_the_weights_and_validates_on_held_out_frames(toy, tmp_path):
    source = fit(tiny_config(toy, data={"source": "shards"}, optim={"epochs": 1}),
                 _opts(tmp_path / "source"))
    start = load_checkpoint(source["last"])
    cfg = tiny_config(toy, data={"source": "shards"},
                      optim={"epochs": 1, "lr": 1e-4, "init_from": source["last"]},
                      val={"split": "train", "frame_holdout": 0.25})
    tr = Trainer(cfg, _opts(tmp_path / "tuned"))
    for k, v in tr.model.state_dict().items():                 # the weights, not the optimiser
        assert torch.equal(v, start["model"][k]), k
    assert tr.step == 0 and not tr.optimizer.state_dict()["state"]
    assert tr.init_from["path"] == source["last"] and tr.init_from["step"] == start["step"]
    # training: frames 0-11 of S1's shards; validation: frames 12-15; S8 (val split) unread
    assert sorted(set(tr.train_set.labels.frame)) == list(range(12))
    assert sorted(set(tr.val_samples.frame)) == [12, 13, 14, 15]
    assert set(tr.train_set.labels.subject) == set(tr.val_samples.subject) == {"S1"}
    all_s1 = load_shard_samples(toy["shards"], H36M17, subjects=("S1",))
    np.testing.assert_array_equal(tr.val_samples.label_3d, all_s1.label_3d[12:])
    res = tr.fit()
    rec = json.loads((tmp_path / "tuned/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["val_pseudo_n"] == 4 and np.isfinite(rec["val_pseudo_n_mpjpe"])
    assert res["selection_metric"] == "val_pseudo_n_mpjpe"
    saved = yaml.safe_load((tmp_path / "tuned/config.yaml").read_text())
    assert saved["optim"]["init_from"] == source["last"]
    assert saved["val"]["frame_holdout"] == 0.25
    assert load_checkpoint(res["best"])["init_from"]["path"] == source["last"]
    tuned = load_checkpoint(res["last"])["model"]
    assert any(not torch.equal(tuned[k], start["model"][k]) for k in tuned)


def test_init_from_refuses_another_network_and_the_cli_records_it(toy, tmp_path):
    source = fit(tiny_config(toy, data={"source": "shards"}, optim={"epochs": 1}),
                 _opts(tmp_path / "source", max_steps=1))
    wider = tiny_config(toy, data={"source": "shards"}, model={"width": 16},
                        optim={"init_from": source["last"]})
    with pytest.raises(CheckpointError, match=r"\['model\.width'\]"):
        Trainer(wider, _opts(tmp_path / "wider"))
    with pytest.raises(ConfigError, match="frame_holdout"):   # same split, no held-out frames
        tiny_config(toy, val={"split": "train"})
    cfg = tiny_config(toy, data={"source": "shards"}, val={"split": "train",
                                                           "frame_holdout": 0.25})
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    r = CliRunner().invoke(cli, ["fit", "--config", str(path), "--init-from", source["last"],
                                 "--out", str(tmp_path / "cli"), "--device", "cpu",
                                 "--max-steps", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((tmp_path / "cli/config.yaml").read_text())
    assert saved["optim"]["init_from"] == source["last"]
    r = CliRunner().invoke(cli, ["fit", "--config", str(path), "--init-from",
                                 str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x"),
                                 "--device", "cpu", "--no-progress"])
    assert r.exit_code != 0 and "missing.pt" in r.output


def test_a_3d_network_starts_from_the_2d_network_with_its_x_y_and_a_flat_depth(toy, tmp_path):
    """optim.init_2d_from: every layer of the 2D network copied, its last one repeated over the
    depth bins: the 3D logits of every depth bin are the 2D logits, so x and y are the 2D
    network's at step 0 and the depth is flat."""
    two_d = fit(tiny_config(toy, model={"depth_bins": 1}, optim={"epochs": 1}),
                _opts(tmp_path / "2d", max_steps=2))
    cfg = tiny_config(toy, data={"source": "shards"},
                      optim={"epochs": 1, "init_2d_from": two_d["last"]})
    tr = Trainer(cfg, _opts(tmp_path / "3d"))
    assert tr.init_from["path"] == two_d["last"] and tr.init_from["from_2d"]
    net2d, _ = load_model(two_d["last"])
    net3d = tr.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        l2, l3 = net2d.logits(x), net3d.logits(x)
        out2, out3 = net2d(x), net3d(x)
    assert l3.shape[2] == 8 and l2.shape[2] == 1
    torch.testing.assert_close(l3, l2.expand_as(l3))
    torch.testing.assert_close(out3["coords"][..., :2], out2["coords"][..., :2])
    torch.testing.assert_close(out3["heatmap_xy"], out2["heatmap_xy"])
    torch.testing.assert_close(out3["coords"][..., 2], torch.zeros(2, l3.shape[1]))  # flat depth
    res = tr.fit()
    assert load_checkpoint(res["last"])["init_from"]["from_2d"]
    # refused: a 3D source, another width, with init_from, on a 2D network
    three_d = fit(tiny_config(toy, data={"source": "shards"}, optim={"epochs": 1}),
                  _opts(tmp_path / "3dsrc", max_steps=1))
    for bad, what in ((three_d["last"], "not a 2D network"), (two_d["last"], "model.width")):
        wide = {"width": 16} if what == "model.width" else {}
        with pytest.raises(CheckpointError, match=what):
            Trainer(tiny_config(toy, data={"source": "shards"}, model=wide,
                                optim={"init_2d_from": bad}), _opts(tmp_path / "bad"))
    for extra in ({"model": {"depth_bins": 1}}, {"optim": {"init_from": two_d["last"]}}):
        sections = {"optim": {"init_2d_from": two_d["last"]}}
        for k, v in extra.items():
            sections[k] = {**sections.get(k, {}), **v}
        with pytest.raises(ConfigError, match="init_2d_from"):
            tiny_config(toy, **sections)


def test_manifest_without_a_camera(toy, tmp_path):
    raw = yaml.safe_load(toy["manifest"].read_text())
    raw["root"] = "data"
    raw["cameras"]["c3"] = dict(raw["cameras"]["c1"])
    raw["extrinsics"] = {"S1": {c: {"R": np.eye(3).tolist(), "t": [float(i), 0.0, 0.0]}
                                for i, c in enumerate(("c1", "c2", "c3"))}}
    src = toy["root"] / "three.yaml"                         # root relative to this file
    src.write_text(yaml.safe_dump(raw))
    out = manifest_without_camera(src, "c2", tmp_path / "sub" / "no_c2.yaml")
    m = load_manifest(out)
    assert m.camera_ids == ("c1", "c3") and set(m.extrinsics["S1"]) == {"c1", "c3"}
    assert m.root == (toy["root"] / "data").resolve()
    np.testing.assert_allclose(m.extrinsics["S1"]["c3"][1].ravel(), [2.0, 0.0, 0.0])
    assert m.frame_path(m.sequences[0], "c1", 0).is_file()
    with pytest.raises(ValueError, match="no camera 'c9'"):
        manifest_without_camera(src, "c9", tmp_path / "x.yaml")
    with pytest.raises(ValueError, match="fewer than two"):
        manifest_without_camera(toy["manifest"], "c1", tmp_path / "y.yaml")
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "y.yaml").exists()


def test_compare_predictions_reads_both_metrics_files(tmp_path):
    for name, value in (("before", 381.0), ("after", 120.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"output": {"n_mpjpe": value, "pa_mpjpe": value / 2, "n": 100},
             "output/person 1": {"n_mpjpe": value + 1, "n": 40}, "tracks": {"person 1": {}}}))
    rows = compare_predictions(tmp_path / "before", tmp_path / "after")
    assert rows["after"]["output/person 1"]["n_mpjpe"] == 121.5 and "tracks" not in rows["after"]
    assert rows["before"]["output"]["n_mpjpe"] == 381.0
    assert rows["after"]["output"]["pa_mpjpe"] == 60.25 and rows["after"]["output"]["n"] == 100
    with pytest.raises(FileNotFoundError, match="missing"):
        compare_predictions(tmp_path / "before", tmp_path / "missing")


def test_several_recordings_merge_into_one_training_set(toy, tmp_path):
    """Two recordings (here: the toy set's S1 and S8 as two manifests, each with its own stage-1
    run) become one run folder and one manifest the trainer reads: every row, its crops, both
    subjects in training; the same sequence twice or a camera with other intrinsics is
    refused."""
    raw = yaml.safe_load(toy["manifest"].read_text())
    manifests, runs = [], []
    for subject in ("S1", "S8"):
        one = dict(raw, sequences=[q for q in raw["sequences"] if q["subject"] == subject],
                   splits={"train": [subject]}, dataset=f"toy_{subject}")
        path = tmp_path / f"{subject}.yaml"
        path.write_text(yaml.safe_dump(one))
        manifests.append(path)
        runs.append(build_toy_shards(path, tmp_path / f"run_{subject}"))
    info = merge_training_runs(runs, manifests, tmp_path / "merged")
    assert info["rows"] == sum(info["runs"].values()) == 2 * 16
    m = load_manifest(tmp_path / "merged" / "manifest.yaml")
    assert m.splits["train"] == ("S1", "S8") and m.dataset == "toy_S1+toy_S8"
    assert m.frame_path(m.sequences[1], "c1", 3).is_file()
    s = load_shard_samples(tmp_path / "merged", H36M17, manifest=m, subjects=("S1", "S8"))
    assert len(s) == 32 and all(Path(p).is_file() for p in s.image_paths)
    assert np.isfinite(s.K).all()
    with pytest.raises(ValueError, match="S1/Walk/1 is in an earlier manifest"):
        merge_training_runs(runs[:1], [manifests[0], manifests[0]], tmp_path / "twice")
    other = dict(raw, cameras={**raw["cameras"], "c1": dict(raw["cameras"]["c1"], fx=81.0)},
                 sequences=raw["sequences"][2:])
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="camera 'c1' has other intrinsics"):
        merge_training_runs(runs[:1], [manifests[0], tmp_path / "other.yaml"],
                            tmp_path / "clash")

"""``make bench-gpu``'s CPU fallback: every step of the GPU script at toy size, for real (stage 1,
a 2D network, stage 1 with it, the paper configuration's data path and step, torchrun DDP on two
gloo processes, resume of its checkpoint on the CPU)."""
from __future__ import annotations

import json

import yaml

from pipeline.store import shards as S
from tests.conftest import SYNTHETIC_MANIFEST
from tools import gpu_bench


def _tiny_set(base):
    """The synthetic manifest cut to S1 (two actions, training) and S8 (validation), 4 frames."""
    from pipeline.synthetic import generate_dataset

    raw = yaml.safe_load(SYNTHETIC_MANIFEST.read_text())
    raw["sequences"] = [s for s in raw["sequences"] if (s["subject"], s["action"]) in
                        {("S1", "Walking"), ("S1", "Gestures"), ("S8", "Walking")}]
    raw["root"] = str(base / "data")
    manifest = base / "tiny.yaml"
    S.atomic_write_bytes(manifest, yaml.safe_dump(raw).encode())
    generate_dataset(manifest, frames=4, root=base / "data", workers=1, progress=False)
    return manifest, base / "data"


def test_cpu_fallback_runs_every_step(tmp_path):
    manifest, root = _tiny_set(tmp_path)
    b = gpu_bench.tiny(tmp_path / "bench", str(root), str(manifest))
    r = gpu_bench.run(b)
    assert r["tiny_cpu_fallback"] and r["machine"]["gpus"] == []
    assert r["stage1_training_data"]["exit_code"] == 0
    assert r["stage1_training_data"]["frame_views"] == 3 * 4 * 4  # sequences x cameras x frames
    assert r["network_2d"]["trained_here"]
    s1 = r["stage1_detector_on_device"]
    assert s1["device"] == "cpu" and s1["frame_views"] == 2 * 4 * 4 and s1["detector_img_s"] > 0
    rows = r["paper_training"]
    assert [row["batch_size"] for row in rows] == [2, 4]
    for row in rows:
        assert row["train_img_s"] > 0 and 0 <= row["data_wait_share"] <= 1
        assert row["peak_gpu_mib"] is None and not row["amp"]
    assert r["ddp"]["processes"] == 2 and r["ddp"]["returncode"] == 0, r["ddp"]["stderr_tail"]
    c = r["resume_on_cpu"]
    assert c["ok"] and c["resumed_at_step"] == b.ddp_steps and c["steps_after"] == b.ddp_steps + 1
    assert json.loads((b.out / "gpu.json").read_text())["resume_on_cpu"]["ok"]
    scaling = r["stage1_cpu_scaling"]
    assert [row["workers"] for row in scaling] == [1, 2]
    for row in scaling:
        assert row["frame_views"] == 2 * 4 * 4 and row["cpu_non_detector_over_detector"] > 0
    table = gpu_bench.format_table(r)
    assert "tiny CPU fallback" in table and "| 4 | cpu |" in table
    assert "stage 1 on the CPU, 2 worker(s)" in table

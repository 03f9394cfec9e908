"""``make bench-gpu``: the GPU checks of stage 1 and stage 2 in one short prepared script.

On a CUDA machine (``python -m tools bench-gpu``), in this order, each step timed:

1. stage 1 labels the training data: the synthetic train + validation subjects, oracle 2D,
   pooled geometry, crops in crop shards (the trainer's input; cheap, so the GPU steps get the
   time);
2. the 2D network: its checkpoint (``--checkpoint-2d``), or, when there is none, a short
   training on the GPU (``--steps-2d``; a timing run, not a detector worth labelling with);
3. stage 1 with that 2D network on the GPU (``--detector net --device cuda``): detector images/s
   and the non-detector share, on the test subjects;
4. the paper configuration (ResNet-50, 256 px, 64 depth bins) trained through the trainer's
   own data path with AMP and channels-last at batch 32, 64 and 128: images/s, the share of time
   waiting for data, peak GPU memory (``tools.train_bench.measure_training``);
5. a short DDP run: ``torchrun --nproc_per_node=<GPUs>`` of ``python -m train fit``;
6. the checkpoint that run wrote on the GPU resumed on the CPU for one step;
7. stage 1 with the 2D network on the machine's CPU cores at 1, 2 and all (``os.cpu_count()``)
   Dask workers: the rows of ``make bench``'s scaling table that a 2-core machine cannot give
   (frame-views/s, the non-detector share in CPU and in wall seconds).

Without CUDA it runs the same steps as a tiny CPU fallback (``--tiny``: a small network, batch
2 and 4, two DDP processes on gloo), which tests/test_gpu_bench.py runs. Results:
``OUT/gpu.json`` and a Markdown table on stdout. Nothing here asserts a speed.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.job.plan import JobConfig, local_client, run_job
from tools.stage1_bench import breakdown, run_stage1, scaling_row
from tools.train_bench import measure_training
from train.config import TrainConfig, load_config, save_config, with_overrides
from train.trainer import RunOptions, Trainer

PAPER_CONFIG = "train/configs/paper_r50_256px_d64_adam1e-3_140ep_pseudo.yaml"
CONFIG_2D = "train/configs/demo2d_r18w32_96px.yaml"
TINY_MODEL = {"depth": 18, "width": 8, "deconv_channels": 16, "depth_bins": 8, "input_size": 64}


@dataclass(frozen=True)
class GpuBench:
    """What one bench run uses (the CUDA defaults, or :meth:`tiny` for the CPU fallback)."""

    out: Path
    manifest: str = "data_manifests/synthetic.yaml"
    root: str | None = None
    train_subjects: tuple[str, ...] = ("S1", "S5", "S6", "S7", "S8")
    detect_subjects: tuple[str, ...] = ("S9",)
    max_frames: int | None = None
    checkpoint_2d: str = "outputs/runs/pose2d/best.pt"
    steps_2d: int = 300
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    steps: int = 12
    workers: int = 8
    dask_workers: int = 14
    scaling_workers: tuple[int, ...] = (1, 2, os.cpu_count() or 1)
    warmup: int = 3
    ddp_steps: int = 20
    tiny: bool = False

    @property
    def device(self) -> str:
        return "cuda" if torch.cuda.is_available() and not self.tiny else "cpu"

    def config(self, path: str, **data: Any) -> TrainConfig:
        cfg = load_config(path)
        model = TINY_MODEL if self.tiny else {}
        if self.tiny and cfg.model.depth_bins == 1:
            model = {**TINY_MODEL, "depth_bins": 1}
        root = {"data_root": self.root} if self.root else {}
        return with_overrides(cfg, model=model, data={"manifest": self.manifest, **root, **data})


def tiny(out: Path, root: str, manifest: str = "data_manifests/synthetic.yaml") -> GpuBench:
    """The CPU fallback: every step at toy size (a few seconds each)."""
    return GpuBench(out=out, manifest=manifest, root=root, train_subjects=("S1", "S8"),
                    detect_subjects=("S1",), max_frames=4, checkpoint_2d=str(out / "none.pt"),
                    steps_2d=2, batch_sizes=(2, 4), steps=2, workers=0, dask_workers=1,
                    scaling_workers=(1, 2), warmup=1, ddp_steps=2, tiny=True)


def _timed(fn, *args, **kw) -> tuple[Any, float]:
    t0 = time.perf_counter()
    r = fn(*args, **kw)
    return r, time.perf_counter() - t0


def label_training_data(b: GpuBench) -> dict[str, Any]:
    """Step 1: the shards the trainer reads (oracle 2D, so the GPU steps get the time)."""
    cfg = JobConfig(manifest=b.manifest, root=b.root, out=str(b.out / "stage1_train"),
                    subjects=b.train_subjects, detector="gt", max_frames=b.max_frames)
    shutil.rmtree(cfg.out, ignore_errors=True)
    with local_client(b.dask_workers) as client:
        summary, wall = _timed(run_job, cfg, client, progress=False)
    return {"run": cfg.out, "frame_views": summary.detection_rows, "wall_s": round(wall, 1),
            "exit_code": summary.exit_code}


def network_2d(b: GpuBench) -> dict[str, Any]:
    """Step 2: the 2D network's checkpoint, trained briefly on the device when there is none."""
    if Path(b.checkpoint_2d).exists():
        return {"checkpoint": b.checkpoint_2d, "trained_here": False}
    out = b.out / "pose2d"
    # tiny: batches smaller than the split, so that two steps do not end an epoch (validation)
    cfg = b.config(CONFIG_2D, workers=b.workers, **({"batch_size": 4} if b.tiny else {}))
    trainer = Trainer(cfg, RunOptions(out=out, device=b.device, max_steps=b.steps_2d,
                                      progress=False))
    _, wall = _timed(trainer.fit)
    return {"checkpoint": str(out / "last.pt"), "trained_here": True, "steps": b.steps_2d,
            "wall_s": round(wall, 1)}


def stage1_on_device(b: GpuBench, checkpoint: str) -> dict[str, Any]:
    """Step 3: stage 1 with the 2D network on the device (the Dask workers share it)."""
    cfg = JobConfig(manifest=b.manifest, root=b.root, out=str(b.out / "stage1_net"),
                    subjects=b.detect_subjects, detector="net", checkpoint_2d=checkpoint,
                    device=b.device, max_frames=b.max_frames, allow_foreign_detector=True)
    r = run_stage1(cfg, min(b.dask_workers, 2) if b.device == "cuda" else b.dask_workers)
    split = breakdown(r)
    return {"device": b.device, "frame_views": int(r["frames"]), "wall_s": round(r["wall_s"], 1),
            "detector_img_s": round(r["frames"] / max(r["detector_cpu_s"], 1e-9), 1),
            "non_detector_over_detector": round(split["non_detector_over_detector"], 3),
            "steady_over_detector": round(split["steady_over_detector"], 3)}


def stage1_cpu_scaling(b: GpuBench, checkpoint: str) -> list[dict[str, Any]]:
    """Step 7: stage 1 with the 2D network on the CPU at each of ``scaling_workers`` Dask
    workers (one thread each): ``make bench``'s scaling rows on this machine's cores."""
    rows = []
    for w in sorted(set(b.scaling_workers)):
        cfg = JobConfig(manifest=b.manifest, root=b.root, out=str(b.out / "stage1_cpu"),
                        subjects=b.detect_subjects, detector="net", checkpoint_2d=checkpoint,
                        device="cpu", max_frames=b.max_frames, allow_foreign_detector=True)
        rows.append(scaling_row(run_stage1(cfg, w)))
    return rows


def training_throughput(b: GpuBench, shards: str) -> list[dict[str, Any]]:
    """Step 4: the paper configuration at each batch size (AMP and channels-last on CUDA)."""
    rows = []
    for bs in b.batch_sizes:
        cfg = b.config(PAPER_CONFIG, shards=shards, batch_size=bs, workers=b.workers)
        r = measure_training(cfg, str(b.out / f"train_b{bs}"), steps=b.steps, warmup=b.warmup,
                             device=b.device)
        rows.append({**r, "amp": r["device"].startswith("cuda"),
                     "channels_last": r["device"].startswith("cuda")})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def ddp_run(b: GpuBench, shards: str) -> dict[str, Any]:
    """Step 5: ``torchrun`` of the trainer on every GPU (2 gloo processes on the CPU)."""
    nproc = torch.cuda.device_count() if b.device == "cuda" else 2
    out = b.out / "ddp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = b.config(PAPER_CONFIG, shards=shards, workers=b.workers,
                   batch_size=b.batch_sizes[0])
    save_config(cfg, b.out / "ddp_config.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "train", "fit", "--config",
           str(b.out / "ddp_config.yaml"), "--out", str(out), "--device", b.device,
           "--max-steps", str(b.ddp_steps), "--no-progress"]
    p, wall = _timed(subprocess.run, cmd, capture_output=True, text=True,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"processes": nproc, "steps": b.ddp_steps, "returncode": p.returncode,
            "wall_s": round(wall, 1), "checkpoint": str(out / "last.pt"),
            "stderr_tail": p.stderr[-1500:] if p.returncode else ""}


def resume_on_cpu(b: GpuBench, run: Path) -> dict[str, Any]:
    """Step 6: the checkpoint written by the DDP run resumes on the CPU for one more step."""
    copy = b.out / "resume_cpu"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    state = torch.load(copy / "last.pt", map_location="cpu", weights_only=True)
    cfg = load_config(copy / "config.yaml")
    step = int(state["step"])
    trainer = Trainer(cfg, RunOptions(out=copy, device="cpu", resume=True, max_steps=step + 1,
                                      progress=False))
    resumed_at = trainer.step
    trainer.fit()
    return {"written_by": b.device, "resumed_at_step": resumed_at,
            "checkpoint_step": step, "steps_after": trainer.step,
            "ok": resumed_at == step and trainer.step == step + 1}


def run(b: GpuBench) -> dict[str, Any]:
    """Every step in order; ``OUT/gpu.json`` is rewritten after each, so a run cut short by
    its time limit keeps what it measured."""
    b.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": _machine(), "tiny_cpu_fallback": b.tiny or
                              not torch.cuda.is_available()}

    def step(name: str, fn, *args) -> Any:
        value, wall = _timed(fn, *args)
        result[name] = value
        result.setdefault("step_wall_s", {})[name] = round(wall, 1)
        (b.out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
        return value

    data = step("stage1_training_data", label_training_data, b)
    net = step("network_2d", network_2d, b)
    step("stage1_detector_on_device", stage1_on_device, b, net["checkpoint"])
    step("paper_training", training_throughput, b, data["run"])
    ddp = step("ddp", ddp_run, b, data["run"])
    if ddp["returncode"] == 0:
        step("resume_on_cpu", resume_on_cpu, b, b.out / "ddp")
    step("stage1_cpu_scaling", stage1_cpu_scaling, b, net["checkpoint"])
    return result


def _machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {"host": platform.node(), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else []}


def format_table(r: dict[str, Any]) -> str:
    """The figures of ``run`` as Markdown (README)."""
    m = r["machine"]
    lines = [f"GPUs: {', '.join(m['gpus']) or 'none (tiny CPU fallback)'}; torch {m['torch']}, "
             f"CUDA {m['cuda']}, {m['cpu_cores']} CPU cores",
             "| batch | device | images/s | data wait | loader alone (img/s) | peak GPU MiB |",
             "|---|---|---|---|---|---|"]
    for row in r.get("paper_training", []):
        lines.append(f"| {row['batch_size']} | {row['device']} | {row['train_img_s']} | "
                     f"{row['data_wait_share']:.1%} | {row['loader_only_img_s']} | "
                     f"{row['peak_gpu_mib']} |")
    s1 = r.get("stage1_detector_on_device", {})
    if s1:
        lines.append(f"stage 1, 2D network on {s1['device']}: {s1['detector_img_s']} detector "
                     f"images/s, non-detector {s1['non_detector_over_detector']:.0%} of detector "
                     f"time ({s1['frame_views']} frame-views, {s1['wall_s']} s)")
    if "ddp" in r:
        d = r["ddp"]
        lines.append(f"DDP: torchrun x {d['processes']}, {d['steps']} steps, exit "
                     f"{d['returncode']}, {d['wall_s']} s")
    if "resume_on_cpu" in r:
        c = r["resume_on_cpu"]
        lines.append(f"checkpoint written on {c['written_by']} resumed on the CPU at step "
                     f"{c['resumed_at_step']} -> {c['steps_after']}: {'ok' if c['ok'] else 'FAILED'}")
    for row in r.get("stage1_cpu_scaling", []):
        lines.append(f"stage 1 on the CPU, {row['workers']} worker(s): {row['frame_views']} "
                     f"frame-views in {row['wall_s']:.1f} s ({row['frame_views_per_s']:.1f}/s), "
                     f"non-detector {row['cpu_non_detector_over_detector']:.0%} of detector CPU "
                     f"({row['non_detector_over_detector']:.0%} in wall seconds)")
    return "\n".join(lines)

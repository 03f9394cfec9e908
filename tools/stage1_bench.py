"""Stage-1 benchmarks: end-to-end time split by step, Dask scaling, worker memory, cluster model.

``python -m tools bench-stage1`` (part of ``make bench``) prints a table and writes
``outputs/bench/stage1.json``. Every run goes through ``pipeline.job.plan.run_job``, the code path of
``make pseudolabels``. Benchmarks are measurements, not tests: nothing here asserts a
speed. Every figure states the workload it was measured on.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

import pandas as pd

from eval.metrics import ALIGNMENTS, mpjpe
from pipeline.store import shards as S
from pipeline.geometry.modes import GEOMETRY_MODES, JOB_MODES
from pipeline.job.plan import JobConfig, local_client, run_job
from pipeline.job.tasks import selected_sequences


def _worker_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cluster_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system, every thread) of this process (``client``: the client, and
    the LocalCluster's scheduler and nannies, which run in it) and of all its descendants alive
    now (``workers``: the worker processes)."""
    import psutil

    me = psutil.Process()
    out = {"client": sum(me.cpu_times()[:2]), "workers": 0.0}
    for p in me.children(recursive=True):
        try:
            out["workers"] += sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return out


def run_stage1(cfg: JobConfig, workers: int) -> dict[str, Any]:
    """One fresh stage-1 run on a new LocalCluster: wall time, step times (wall and CPU), worker
    peak RSS, the cluster's start-up (worker processes and their imports: wall, and CPU of
    every process of the cluster), the CPU of every process of the cluster during the job, and
    the run's file count."""
    shutil.rmtree(cfg.out, ignore_errors=True)
    c0 = cluster_cpu_s()
    t0 = time.perf_counter()
    with local_client(workers) as client:
        client.run(_import_tasks)  # the imports a worker pays before its first task
        startup, c1 = time.perf_counter() - t0, cluster_cpu_s()
        t0 = time.perf_counter()
        summary = run_job(cfg, client, progress=False)
        wall, c2 = time.perf_counter() - t0, cluster_cpu_s()
        rss = client.run(_worker_peak_rss_mb)
    shard_bytes = sum(p.stat().st_size for p in Path(cfg.out, "shards").rglob("*.parquet"))
    det = summary.seconds
    return {"workers": workers, "wall_s": wall, "frames": summary.detection_rows,  # frame-views
            "rows": summary.rows,
            "sequences": len(selected_sequences(cfg)), "cluster_startup_s": startup,
            "detector_cpu_s": det["detector_cpu"], "read_cpu_s": det["read_cpu"],
            "crops_cpu_s": det["crops_cpu"], "detect_wall_s": det["detect_wall"],
            "detector_setup_cpu_s": det["detector_setup_cpu"],
            "detections_write_cpu_s": det["detections_write_cpu"],
            "detect_tasks_cpu_s": det["detect_tasks_cpu"], "pack_crops_cpu_s": det["pack_crops_cpu"],
            "geometry_fit_cpu_s": det["geometry_fit_cpu"], "label_cpu_s": det["label_cpu"],
            "subjects_wall_s": det["subjects_wall"],
            **{f"{k}_s": det[k] for k in THREAD_CPU_KEYS},
            "startup_cpu_s": sum(c1.values()) - sum(c0.values()),
            "job_cpu_s": sum(c2.values()) - sum(c1.values()),
            "job_client_process_cpu_s": c2["client"] - c1["client"],
            "job_worker_processes_cpu_s": c2["workers"] - c1["workers"],
            "files": sum(1 for p in Path(cfg.out).rglob("*") if p.is_file()),
            "worker_peak_rss_mb": max(rss.values()), "shard_bytes": shard_bytes}


THREAD_CPU_KEYS = ("detector_thread_cpu", "detector_setup_thread_cpu", "read_thread_cpu",
                   "crops_thread_cpu", "detections_write_thread_cpu", "detect_tasks_thread_cpu",
                   "pack_crops_thread_cpu", "geometry_fit_thread_cpu", "label_thread_cpu",
                   "preflight_thread_cpu", "client_waiting_thread_cpu", "run_tables_thread_cpu")


def _import_tasks() -> bool:
    """Import what every task needs (OpenCV, pyarrow, the pipeline) in a worker."""
    import importlib

    importlib.import_module("pipeline.job.tasks")
    return True


BREAKDOWN_ROWS = (
    ("worker start-up: processes + imports", "cluster_startup_x_workers_s"),
    ("worker start-up: detector build (model load)", "detector_setup_cpu_s"),
    ("frame reading", "read_cpu_s"),
    ("crop encoding (+ crop part write)", "crops_cpu_s"),
    ("detection Parquet writes", "detections_write_cpu_s"),
    ("crop packing", "pack_crops_cpu_s"),
    ("geometry fit", "geometry_fit_cpu_s"),
    ("triangulate + label shards", "label_cpu_s"),
    ("scheduling, task overhead, idle workers", "scheduling_s"),
)


def breakdown(r: dict[str, Any]) -> dict[str, float]:
    """Worker-seconds of a run outside the detector, by step, and their sum over detector time.

    Busy worker time is ``workers x (cluster start-up + job wall)``; what the tasks measure is
    subtracted, and the rest (``scheduling_s``) is Dask's scheduling and transfers, the
    client-side run tables, and workers idle while others finish."""
    out = {"detector_cpu_s": r["detector_cpu_s"],
           "cluster_startup_x_workers_s": r["cluster_startup_s"] * r["workers"]}
    for _, k in BREAKDOWN_ROWS[1:-1]:
        out[k] = r[k]
    in_detect = (r["detect_tasks_cpu_s"] - r["detector_cpu_s"] - r["detector_setup_cpu_s"]
                 - r["read_cpu_s"] - r["crops_cpu_s"] - r["detections_write_cpu_s"])
    busy = r["workers"] * r["wall_s"]
    tasks = (r["detect_tasks_cpu_s"] + r["pack_crops_cpu_s"] + r["geometry_fit_cpu_s"]
             + r["label_cpu_s"])
    out["scheduling_s"] = max(busy - tasks, 0.0) + max(in_detect, 0.0)
    out["non_detector_s"] = sum(out[k] for _, k in BREAKDOWN_ROWS)
    out["non_detector_over_detector"] = out["non_detector_s"] / r["detector_cpu_s"]
    out["steady_over_detector"] = (out["non_detector_s"] - out["cluster_startup_x_workers_s"]
                                   - out["detector_setup_cpu_s"]) / r["detector_cpu_s"]
    return out


CPU_BREAKDOWN_ROWS = (
    ("worker start-up: processes + imports", "startup_cpu_s"),
    ("worker start-up: detector build (model load)", "detector_setup_thread_cpu_s"),
    ("frame reading", "read_thread_cpu_s"),
    ("crop encoding (+ crop part write)", "crops_thread_cpu_s"),
    ("detection Parquet writes", "detections_write_thread_cpu_s"),
    ("detection tasks beyond their steps (boxes, tables)", "detect_task_rest_cpu_s"),
    ("crop packing", "pack_crops_thread_cpu_s"),
    ("geometry fit", "geometry_fit_thread_cpu_s"),
    ("triangulate + label shards", "label_thread_cpu_s"),
    ("client: preflight (detector resolved and built once, frame checks)",
     "preflight_thread_cpu_s"),
    ("client: run tables (geometry, consistency, failures)", "run_tables_thread_cpu_s"),
    ("Dask in the client process: scheduler, nannies, client waiting", "dask_client_cpu_s"),
    ("Dask in the workers: event loop, heartbeats, profiler, transfers", "dask_workers_cpu_s"),
)


def cpu_breakdown(r: dict[str, Any]) -> dict[str, float]:
    """CPU seconds of a run outside the detector, by step, and their sum over the detector's
    CPU seconds. Every figure is CPU time, so the machine's other load enters it only through
    Dask's background work: the steps are the CPU of the task thread in each
    (``pipeline.job.tasks.Clock``); start-up and the two Dask rows come from the CPU of every
    process of the cluster (:func:`cluster_cpu_s`): the client process's minus the client's
    measured phases, the worker processes' minus what the tasks' threads spent. Dask's
    background work (heartbeats, the profiler, monitors) costs CPU per second of wall time, so
    these two rows grow when a busy machine stretches the run. Idle workers cost no CPU and are
    not in it (the wall-time :func:`breakdown` counts them)."""
    steps = ("detector_setup_thread_cpu_s", "read_thread_cpu_s", "crops_thread_cpu_s",
             "detections_write_thread_cpu_s")
    out = {"detector_cpu_s": r["detector_thread_cpu_s"], "startup_cpu_s": r["startup_cpu_s"]}
    for k in steps + ("pack_crops_thread_cpu_s", "geometry_fit_thread_cpu_s", "label_thread_cpu_s"):
        out[k] = r[k]
    out["detect_task_rest_cpu_s"] = max(r["detect_tasks_thread_cpu_s"] - r["detector_thread_cpu_s"]
                                        - sum(r[k] for k in steps), 0.0)
    out["preflight_thread_cpu_s"] = r["preflight_thread_cpu_s"]
    out["run_tables_thread_cpu_s"] = r["run_tables_thread_cpu_s"]
    tasks = (r["detect_tasks_thread_cpu_s"] + r["pack_crops_thread_cpu_s"]
             + r["geometry_fit_thread_cpu_s"] + r["label_thread_cpu_s"])
    out["dask_client_cpu_s"] = max(r["job_client_process_cpu_s"] - r["preflight_thread_cpu_s"]
                                   - r["run_tables_thread_cpu_s"], 0.0)
    out["dask_workers_cpu_s"] = max(r["job_worker_processes_cpu_s"] - tasks, 0.0)
    out["non_detector_s"] = sum(out[k] for _, k in CPU_BREAKDOWN_ROWS)
    out["non_detector_over_detector"] = out["non_detector_s"] / out["detector_cpu_s"]
    out["steady_over_detector"] = (out["non_detector_s"] - out["startup_cpu_s"]
                                   - out["detector_setup_thread_cpu_s"]) / out["detector_cpu_s"]
    out["frames"] = r["frames"]
    return out


def overhead_split(r: dict[str, Any]) -> dict[str, float]:
    """Busy worker-seconds split into detector, frame reading, crops and the rest.

    ``rest`` = workers x wall - (detector + reading + crops): Dask scheduling, Parquet writing,
    geometry and triangulation, idle workers at the end of a wave.
    """
    busy = r["workers"] * r["wall_s"]
    rest = busy - r["detector_cpu_s"] - r["read_cpu_s"] - r["crops_cpu_s"]
    return {"detector_share": r["detector_cpu_s"] / busy,
            "non_detector_over_detector": (busy - r["detector_cpu_s"]) / r["detector_cpu_s"],
            "dask_parquet_geometry_over_detector": rest / r["detector_cpu_s"]}


def dask_task_overhead_ms(n: int = 400) -> float:
    """Round-trip cost of one trivial Dask task on a 2-process LocalCluster (ms per task)."""
    with local_client(2) as client:
        client.gather(client.map(abs, range(50), pure=False))  # warm up
        t0 = time.perf_counter()
        client.gather(client.map(abs, range(n), pure=False))
        return (time.perf_counter() - t0) / n * 1e3


def cluster_model(r: dict[str, Any], task_ms: float, frame_views: int = 1_500_000,
                  workers: int = 64) -> dict[str, Any]:
    """What a Human3.6M-sized job (about 1.5 M frame-views) costs on ``workers`` cores,
    extrapolated from the measured per-frame-view costs of run ``r``."""
    per_fv = {k: r[k] / r["frames"] for k in ("detector_cpu_s", "read_cpu_s", "crops_cpu_s")}
    tasks = frame_views // 250
    cpu = sum(per_fv.values()) * frame_views
    shard_bytes_per_row = r["shard_bytes"] / max(r["rows"], 1)
    return {"frame_views": frame_views, "detect_tasks": tasks,
            "scheduler_s": tasks * task_ms / 1e3,
            "cpu_hours": cpu / 3600, "wall_hours_at_workers": cpu / workers / 3600,
            "workers": workers, "shard_gb": shard_bytes_per_row * frame_views / 1e9}


SWEEP_CONDITIONS: tuple[tuple[float, float], ...] = ((0, 0), (2, 0), (5, 0), (10, 0), (2, 0.1))


def pseudolabel_sweep(out: str = "outputs/bench/sweep", subjects: tuple[str, ...] = ("S9", "S11"),
                      modes: tuple[str, ...] = JOB_MODES,
                      conditions: tuple[tuple[float, float], ...] = SWEEP_CONDITIONS,
                      workers: int = 2) -> "pd.DataFrame":
    """Pseudo-label accuracy of every geometry mode on the synthetic set, oracle detector.

    For each (noise_px, outlier_rate): N-MPJPE and PA-MPJPE (mm) of the valid joints against the
    ground truth, the valid share, and the median camera-pair rotation error. Noise is in pixels
    of the synthetic 250-pixel images (the Human3.6M cameras scaled by 0.25: 2 px here is 8 px
    at Human3.6M's resolution). Varied on purpose: the RANSAC and reprojection thresholds grow
    with the noise (max(1, 1.5 noise) and max(10, 3 noise) px); everything else is the job's
    default.
    """
    rows = []
    with local_client(workers) as client:
        for noise, outl in conditions:
            for mode in modes:
                run = Path(out) / f"{mode}_n{noise:g}_o{outl:g}"
                shutil.rmtree(run, ignore_errors=True)
                cfg = JobConfig(manifest="data_manifests/synthetic.yaml", out=str(run),
                                subjects=subjects, detector="gt", geometry=mode, noise_px=noise,
                                outlier_rate=outl, ransac_threshold_px=max(1.0, 1.5 * noise),
                                reproj_threshold_px=max(10.0, 3.0 * noise), write_crops=False)
                t0 = time.perf_counter()
                run_job(cfg, client, progress=False)
                wall = time.perf_counter() - t0
                t = S.read_shards(run)
                X, gt = S.column_array(t, "joints_3d"), S.column_array(t, "gt_joints_3d")
                v = S.column_array(t, "valid")
                rot = t.column("pair_rot_deg_to_gt").to_numpy(zero_copy_only=False)
                if GEOMETRY_MODES[mode].needs_extrinsics:
                    rot = np.zeros(1)
                rows.append({"geometry": mode, "noise_px": noise, "outlier_rate": outl,
                             **{f"{k}_mm": float(np.nanmean(mpjpe(X, gt, v, ALIGNMENTS[k])))
                                for k in ("n_mpjpe", "pa_mpjpe")},
                             "valid_share": float(v.mean()),
                             "rot_err_deg_median": float(np.nanmedian(rot.astype(float))),
                             "wall_s": wall})
    df = pd.DataFrame(rows)
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(out) / "sweep.csv", index=False)
    return df


ALL_SUBJECTS = ("S1", "S5", "S6", "S7", "S8", "S9", "S11")


def main(out: str = "outputs/bench", subjects: tuple[str, ...] = ALL_SUBJECTS,
         checkpoint_2d: str = "outputs/runs/pose2d/best.pt", detector: str = "net",
         repeats: int = 1, scaling: tuple[tuple[str, ...], ...] = (("S9",), ("S9", "S11")),
         root: str | None = None) -> dict[str, Any]:
    """The breakdown on ``subjects`` (every synthetic subject: 35 sequences x 4 cameras x 100
    frames by default) at 1 and 2 workers, and the scaling table: the same at 1 and 2 workers
    on the smaller subject sets ``scaling`` (wall, frame-views/s, non-detector share)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    base = dict(manifest="data_manifests/synthetic.yaml", detector=detector,
                checkpoint_2d=checkpoint_2d, geometry="pooled", root=root)
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for _ in range(repeats):
        for w in (1, 2):
            runs[str(w)].append(run_stage1(JobConfig(out=f"{out}/stage1_w{w}", subjects=subjects,
                                                     **base), w))
    med = {w: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for w, rs in runs.items()}
    table = [scaling_row(run_stage1(JobConfig(out=f"{out}/stage1_scaling", subjects=s, **base),
                                    w)) for s in scaling for w in (1, 2)]
    table += [scaling_row(med[w]) for w in ("1", "2")]
    short = run_stage1(JobConfig(out=f"{out}/stage1_half", max_frames=50, subjects=("S9",),
                                 **base), 1)
    task_ms = dask_task_overhead_ms()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "workload": f"synthetic {','.join(subjects)}: {int(med['2']['frames'])} frame-views, "
                    f"{int(med['2']['sequences'])} sequences, detector={detector}, "
                    "geometry=pooled, crops on (256 px)",
        "runs": med, "split_2_workers": overhead_split(med["2"]),
        "breakdown": {w: breakdown(med[w]) for w in ("1", "2")}, "scaling": table,
        "cpu_breakdown": {w: cpu_breakdown(med[w]) for w in ("1", "2")},
        "scaling_efficiency_1_to_2": med["1"]["wall_s"] / (2 * med["2"]["wall_s"]),
        "memory": {"peak_rss_mb_50_frames": short["worker_peak_rss_mb"],
                   "peak_rss_mb_100_frames": med["1"]["worker_peak_rss_mb"]},
        "dask_task_overhead_ms": task_ms,
        "cluster_model": cluster_model(med["2"], task_ms),
    }
    Path(out, "stage1.json").write_text(json.dumps(result, indent=1))
    return result


def cpu_main(out: str = "outputs/bench", subjects: tuple[str, ...] = ALL_SUBJECTS,
             checkpoint_2d: str = "outputs/runs/pose2d/best.pt", detector: str = "net",
             workers: tuple[int, ...] = (1,), root: str | None = None) -> dict[str, Any]:
    """The CPU-time breakdown alone (:func:`cpu_breakdown`): one run on ``subjects`` per worker
    count, no scaling table or sweep; writes ``out/stage1_cpu.json``."""
    Path(out).mkdir(parents=True, exist_ok=True)
    base = dict(manifest="data_manifests/synthetic.yaml", detector=detector,
                checkpoint_2d=checkpoint_2d, geometry="pooled", root=root)
    runs = {str(w): run_stage1(JobConfig(out=f"{out}/stage1_cpu_w{w}", subjects=subjects, **base),
                               w) for w in workers}
    some = next(iter(runs.values()))
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "workload": f"synthetic {','.join(subjects)}: {int(some['frames'])} frame-views, "
                          f"{int(some['sequences'])} sequences, detector={detector}, "
                          "geometry=pooled, crops on (256 px)",
              "runs": runs, "cpu_breakdown": {w: cpu_breakdown(r) for w, r in runs.items()},
              "breakdown": {w: breakdown(r) for w, r in runs.items()}}
    Path(out, "stage1_cpu.json").write_text(json.dumps(result, indent=1))
    return result


def steps_table(bs: dict[str, dict[str, float]], rows: tuple[tuple[str, str], ...],
                title: str, unit: str) -> list[str]:
    """Markdown lines of a breakdown (:func:`breakdown` or :func:`cpu_breakdown`) per worker
    count of ``bs``: each of ``rows`` in ``unit`` and as a share of the detector, the total and
    the total without start-up."""
    ws, vals = list(bs), list(bs.values())
    lines = [f"| {title} |" + "".join(f" {w} worker(s): {unit} | % of detector |" for w in ws),
             "|---|" + "---|---|" * len(ws),
             "| (detector) |" + "".join(f" {b['detector_cpu_s']:.1f} | 100 % |" for b in vals)]
    for name, k in rows:
        lines.append(f"| {name} |" + "".join(
            f" {b[k]:.2f} | {b[k] / b['detector_cpu_s']:.1%} |" for b in vals))
    lines.append("| **all non-detector** |" + "".join(
        f" {b['non_detector_s']:.1f} | **{b['non_detector_over_detector']:.1%}** |"
        for b in vals))
    lines.append("| without start-up (steady state) |" + "".join(
        f" | {b['steady_over_detector']:.1%} |" for b in vals))
    return lines


def format_cpu_breakdown(r: dict[str, Any]) -> str:
    """The CPU breakdown of every worker count of ``r`` (CPU seconds and % of the detector's
    CPU seconds), with the wall-time share beside it, as Markdown."""
    lines = steps_table(r["cpu_breakdown"], CPU_BREAKDOWN_ROWS, "non-detector step (CPU)",
                        "CPU s")
    walls = r.get("breakdown", {})
    if walls:
        lines += ["", "wall-time share (counts waiting for a core and idle workers): " + ", ".join(
            f"{w} worker(s) {walls[w]['non_detector_over_detector']:.1%}"
            for w in r["cpu_breakdown"] if w in walls)]
    return "\n".join(lines)


def scaling_row(r: dict[str, Any]) -> dict[str, Any]:
    """One row of the scaling table: throughput, file count, and the non-detector share in CPU
    seconds (:func:`cpu_breakdown`, all and without start-up) and in wall seconds
    (:func:`breakdown`, which also counts waiting for a core and idle workers)."""
    b, c = breakdown(r), cpu_breakdown(r)
    return {"sequences": int(r["sequences"]), "workers": int(r["workers"]),
            "frame_views": int(r["frames"]), "wall_s": r["wall_s"],
            "frame_views_per_s": r["frames"] / r["wall_s"], "files": int(r["files"]),
            "cpu_non_detector_over_detector": c["non_detector_over_detector"],
            "cpu_steady_over_detector": c["steady_over_detector"],
            "non_detector_over_detector": b["non_detector_over_detector"],
            "steady_over_detector": b["steady_over_detector"]}


def format_breakdown(r: dict[str, Any]) -> str:
    """The breakdown table (worker-seconds and % of detector time, per worker count) and the
    scaling table, as Markdown."""
    lines = steps_table(r["breakdown"], BREAKDOWN_ROWS, "non-detector step (wall)", "s")
    lines += ["",
              "| sequences | workers | frame-views | wall (s) | frame-views/s | files in run | "
              "non-detector / detector, CPU | same without start-up | same in wall seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in r["scaling"]:
        lines.append(f"| {row['sequences']} | {row['workers']} | {row['frame_views']} | "
                     f"{row['wall_s']:.1f} | {row['frame_views_per_s']:.1f} | {row['files']} | "
                     f"{row['cpu_non_detector_over_detector']:.1%} | "
                     f"{row['cpu_steady_over_detector']:.1%} | "
                     f"{row['non_detector_over_detector']:.1%} |")
    return "\n".join(lines)


def format_table(r: dict[str, Any]) -> str:
    w1, w2, s = r["runs"]["1"], r["runs"]["2"], r["split_2_workers"]
    cm = r["cluster_model"]
    lines = [
        f"stage 1 on {r['machine']}; {r['workload']}",
        "| measure | 1 worker | 2 workers |", "|---|---|---|",
        f"| wall (s) | {w1['wall_s']:.1f} | {w2['wall_s']:.1f} |",
        f"| frame-views / s | {w1['frames'] / w1['wall_s']:.1f} | {w2['frames'] / w2['wall_s']:.1f} |",
        f"| detector CPU (s) | {w1['detector_thread_cpu_s']:.1f} | {w2['detector_thread_cpu_s']:.1f} |",
        f"| frame reading CPU (s) | {w1['read_thread_cpu_s']:.1f} | {w2['read_thread_cpu_s']:.1f} |",
        f"| crop writing CPU (s) | {w1['crops_thread_cpu_s']:.1f} | {w2['crops_thread_cpu_s']:.1f} |",
        f"| geometry fit CPU (s) | {w1['geometry_fit_thread_cpu_s']:.2f} | "
        f"{w2['geometry_fit_thread_cpu_s']:.2f} |",
        f"| triangulate + shards CPU (s) | {w1['label_thread_cpu_s']:.2f} | "
        f"{w2['label_thread_cpu_s']:.2f} |",
        f"| subject tasks wall, after detection (s) | {w1['subjects_wall_s']:.2f} | {w2['subjects_wall_s']:.2f} |",
        f"| worker peak RSS (MB) | {w1['worker_peak_rss_mb']:.0f} | {w2['worker_peak_rss_mb']:.0f} |",
        "",
        f"detector share of busy worker time (2 workers): {s['detector_share']:.1%}; "
        f"Dask + Parquet + geometry over detector time: {s['dask_parquet_geometry_over_detector']:.1%}",
        f"scaling efficiency 1 -> 2 workers: {r['scaling_efficiency_1_to_2']:.0%}",
        f"worker peak RSS, 50 vs 100 frames per sequence: "
        f"{r['memory']['peak_rss_mb_50_frames']:.0f} vs {r['memory']['peak_rss_mb_100_frames']:.0f} MB",
        f"Dask per-task round trip: {r['dask_task_overhead_ms']:.2f} ms",
        f"Human3.6M-sized job ({cm['frame_views']:,} frame-views): {cm['detect_tasks']:,} detection "
        f"tasks, {cm['scheduler_s']:.0f} s of scheduling, {cm['cpu_hours']:.1f} CPU-hours, "
        f"{cm['wall_hours_at_workers']:.2f} h on {cm['workers']} workers, {cm['shard_gb']:.2f} GB of shards",
        "", format_breakdown(r), "", format_cpu_breakdown(r),
    ]
    return "\n".join(lines)

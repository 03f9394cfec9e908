"""Stage 1's CPU-time accounting: every step of a detection task reports its wall and its
thread's CPU seconds (pipeline.job.tasks.Clock), and the bench's CPU breakdown
(tools.stage1_bench.cpu_breakdown) accounts for every CPU second of the cluster."""
from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.job import tasks as T
from pipeline.job.plan import JobConfig
from tests.conftest import SYNTHETIC_MANIFEST
from tools.stage1_bench import CPU_BREAKDOWN_ROWS, cpu_breakdown

FRAMES = 6


def test_clock_counts_work_not_waiting():
    clock = T.Clock()
    time.sleep(0.3)
    wall, cpu = clock.lap()
    assert wall >= 0.29 and cpu < 0.1  # sleeping is wall time, not CPU time
    x = np.random.default_rng(0).normal(size=(300, 300))
    c0 = time.thread_time()
    while time.thread_time() - c0 < 0.1:  # 0.1 s of this thread's CPU, however long it takes
        x = x @ x.T / 300
    wall, cpu = clock.lap()  # restarted at the last lap: the sleep is not counted again
    assert 0.1 <= cpu < 0.2 and cpu <= wall + 0.02


def test_detect_task_reports_cpu_of_each_step(tiny_root, tmp_path):
    cfg = JobConfig(manifest=str(SYNTHETIC_MANIFEST), out=str(tmp_path / "run"),
                    root=str(tiny_root), detector="gt", subjects=("S1",), crop_size=48)
    seq = T.selected_sequences(cfg)[0]
    frames = [int(f) for f in T.frame_indices(cfg, seq)]
    r = T.detect_chunk(cfg, seq.key, seq.cameras[0], frames)
    assert r.rows == FRAMES and not r.skipped
    steps = ("read", "detect", "crops", "setup", "write")
    for k in steps:
        wall, cpu = getattr(r, f"t_{k}"), getattr(r, f"c_{k}")
        assert 0 <= cpu <= wall + 0.02, (k, wall, cpu)
    assert r.c_read > 0 and r.c_crops > 0  # frames decoded, crops encoded
    # the steps are disjoint parts of the task
    assert sum(getattr(r, f"c_{k}") for k in steps) <= r.c_task + 1e-6
    assert sum(getattr(r, f"t_{k}") for k in steps) <= r.t_task + 1e-6
    again = T.detect_chunk(cfg, seq.key, seq.cameras[0], frames)
    assert again.skipped and again.c_task == 0.0  # a finished file is not redone


def _run(**kw) -> dict:
    r = {"frames": 100, "detector_thread_cpu_s": 10.0, "detector_setup_thread_cpu_s": 1.0,
         "read_thread_cpu_s": 0.5, "crops_thread_cpu_s": 0.4, "detections_write_thread_cpu_s": 0.1,
         "detect_tasks_thread_cpu_s": 12.5, "pack_crops_thread_cpu_s": 0.2,
         "geometry_fit_thread_cpu_s": 0.8, "label_thread_cpu_s": 0.1,
         "preflight_thread_cpu_s": 0.3, "run_tables_thread_cpu_s": 0.2, "startup_cpu_s": 2.0,
         "job_client_process_cpu_s": 1.5, "job_worker_processes_cpu_s": 14.6}
    r.update(kw)
    r["job_cpu_s"] = r["job_client_process_cpu_s"] + r["job_worker_processes_cpu_s"]
    return r


def test_cpu_breakdown_rows_subtract_the_measured_steps():
    r = _run()
    b = cpu_breakdown(r)
    assert b["detect_task_rest_cpu_s"] == pytest.approx(12.5 - 10.0 - 1.0 - 0.5 - 0.4 - 0.1)
    assert b["dask_client_cpu_s"] == pytest.approx(1.5 - 0.3 - 0.2)
    assert b["dask_workers_cpu_s"] == pytest.approx(14.6 - 12.5 - 0.2 - 0.8 - 0.1)
    assert b["non_detector_over_detector"] == pytest.approx(b["non_detector_s"] / 10.0)
    assert b["steady_over_detector"] == pytest.approx((b["non_detector_s"] - 3.0) / 10.0)
    # more read CPU, same total: the Dask rows do not absorb it, the read row shows it
    b2 = cpu_breakdown(_run(read_thread_cpu_s=1.5, detect_tasks_thread_cpu_s=13.5,
                            job_worker_processes_cpu_s=15.6))
    assert b2["read_thread_cpu_s"] - b["read_thread_cpu_s"] == pytest.approx(1.0)
    assert b2["dask_workers_cpu_s"] == pytest.approx(b["dask_workers_cpu_s"])


def test_cpu_breakdown_of_a_real_run_accounts_for_every_cpu_second(tiny_root, tmp_path):
    """On a measured stage-1 run (one worker process) the steps' thread CPU fits inside the
    processes' CPU: no Dask row is clamped at 0 (a step counted twice, or wall time counted as
    CPU, would push the tasks' sum past the processes'), so the detector and the rows add up
    to the CPU of every process of the cluster, start-up included."""
    from tools.stage1_bench import run_stage1

    cfg = JobConfig(manifest=str(SYNTHETIC_MANIFEST), out=str(tmp_path / "run"),
                    root=str(tiny_root), detector="gt", subjects=("S1",), crop_size=48)
    r = run_stage1(cfg, workers=1)
    b = cpu_breakdown(r)
    tasks = sum(r[f"{k}_thread_cpu_s"] for k in ("detect_tasks", "pack_crops", "geometry_fit",
                                                 "label"))
    assert 0 < tasks < r["job_worker_processes_cpu_s"], r
    assert 0 < r["preflight_thread_cpu_s"] + r["run_tables_thread_cpu_s"] < \
        r["job_client_process_cpu_s"], r
    assert b["dask_workers_cpu_s"] > 0 and b["dask_client_cpu_s"] > 0
    assert b["detector_cpu_s"] > 0 and b["read_thread_cpu_s"] > 0
    assert b["detector_cpu_s"] + b["non_detector_s"] == pytest.approx(
        r["startup_cpu_s"] + r["job_cpu_s"], abs=1e-6)


def _busy(seconds: float = 1.0) -> int:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
    return n


def _profile_samples(dashboard: bool) -> int:
    """Samples Dask's statistical profiler took of a one-second task on a one-worker cluster."""
    from pipeline.job.plan import local_client

    with local_client(1, dashboard=dashboard) as client:
        client.submit(_busy, pure=False).result()
        return int(client.profile().get("count", 0))


def test_cluster_without_dashboard_samples_less():
    """The quiet Dask settings (pipeline.job.plan.QUIET_DASK) reach the worker processes: their
    profiler takes no sample of a busy task, where Dask's defaults (a cluster with the
    dashboard) sample it every few milliseconds. That sampling is the idle CPU the settings
    save (measured 0.02-0.04 CPU-s per 4 idle seconds against 0.13-0.16; a figure for the
    bench, not for a unit test on a shared machine)."""
    assert _profile_samples(dashboard=False) == 0
    assert _profile_samples(dashboard=True) > 0


def _malloc_trim() -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_workers_keep_glibc_malloc_tuning():
    """Dask's MALLOC_TRIM_THRESHOLD_ (which makes the detector about 1.5x slower through page
    faults) is not set in stage 1's workers, unless the user's own environment sets it."""
    import os

    from pipeline.job.plan import local_client

    with local_client(1) as client:
        assert list(client.run(_malloc_trim).values()) == [
            os.environ.get("MALLOC_TRIM_THRESHOLD_")]


def test_cpu_breakdown_table_has_every_row():
    from tools.stage1_bench import format_cpu_breakdown

    b = cpu_breakdown(_run())
    text = format_cpu_breakdown({"cpu_breakdown": {"1": b, "2": b}})
    for name, _ in CPU_BREAKDOWN_ROWS:
        assert name in text
    assert f"**{b['non_detector_over_detector']:.1%}**" in text
    assert text.count("\n") == len(CPU_BREAKDOWN_ROWS) + 4  # header, rule, detector, 2 totals


def test_scaling_row_reads_cpu_and_wall_shares_of_the_same_run():
    """The scaling table gives the CPU share (what the steps cost) beside the wall share (which
    also counts waiting for a core): on a run stretched by a busy machine they differ."""
    from tools.stage1_bench import breakdown, format_breakdown, scaling_row

    wall_keys = {"sequences": 5, "workers": 2, "wall_s": 30.0, "files": 40,
                 "cluster_startup_s": 2.0, "detector_cpu_s": 25.0, "detector_setup_cpu_s": 1.5,
                 "read_cpu_s": 2.0, "crops_cpu_s": 1.0, "detections_write_cpu_s": 0.2,
                 "detect_tasks_cpu_s": 30.0, "pack_crops_cpu_s": 0.3,
                 "geometry_fit_cpu_s": 1.0, "label_cpu_s": 0.2}
    r = _run(**wall_keys)
    row = scaling_row(r)
    c = cpu_breakdown(r)
    assert row["cpu_non_detector_over_detector"] == pytest.approx(c["non_detector_s"] / 10.0)
    assert row["cpu_steady_over_detector"] == pytest.approx(c["steady_over_detector"])
    assert row["non_detector_over_detector"] == pytest.approx(
        breakdown(r)["non_detector_over_detector"])
    # 2 workers x 30 s wall = 60 busy worker-seconds for 25 s of detector wall time: the wall
    # share counts the idle and waiting seconds the CPU share leaves out
    assert row["non_detector_over_detector"] > row["cpu_non_detector_over_detector"]
    assert row["frame_views_per_s"] == pytest.approx(100 / 30.0)
    b = breakdown(r)
    text = format_breakdown({"breakdown": {"1": b, "2": b}, "scaling": [row]})
    assert f"| {row['cpu_non_detector_over_detector']:.1%} | " in text
    assert text.splitlines()[-1].count("|") == 10  # nine columns

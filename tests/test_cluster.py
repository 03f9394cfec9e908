"""Stage 1 on a real multi-process Dask cluster: a ``dask scheduler`` and two ``dask worker``
processes started here on 127.0.0.1 (free ports), the job run through the command line's
``--scheduler``, and one worker SIGKILLed while detection tasks run. Its tasks are retried on
the other worker and the shards equal those of the LocalCluster run (tests/test_reliability.py's
clean run, shared through the same folder, made here when run alone)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import faults
from pipeline.job.plan import local_client
from tests.conftest import REPO
from tests.test_reliability import (ACTIONS, FRAMES, SUBJECTS, clean_run, cli_args,
                                    n_detection_files, wait_for)

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MKL_NUM_THREADS="1")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A process in its own session (so that it and its children are killed together)."""
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=ENV, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "reliability"
    if (base / "clean" / "summary.json").exists():  # tests/test_reliability.py made it
        return clean_run(base, None)
    with local_client(workers=1) as client:
        return clean_run(base, client)


@pytest.fixture()
def cluster(tmp_path):
    """(scheduler address, {worker name: process}) of a scheduler and two workers."""
    procs: list[subprocess.Popen] = []
    try:
        sched_file = tmp_path / "scheduler.json"
        procs.append(_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                             "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                            tmp_path / "scheduler.log"))
        wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60,
                 "the scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = {}
        for name in ("w0", "w1"):
            workers[name] = _start(["distributed.cli.dask_worker", address, "--name", name,
                                    "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                    "--no-dashboard", "--local-directory", str(tmp_path / name)],
                                   tmp_path / f"{name}.log")
            procs.append(workers[name])
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):
            _stop(p)


def test_worker_killed_on_a_real_cluster_gives_the_local_cluster_shards(clean, cluster,
                                                                        tmp_path):
    address, workers = cluster
    out = tmp_path / "run"
    args = cli_args(Path(clean.manifest), Path(clean.root), out, "--chunk-frames", "1",
                    "--scheduler", address)
    job = _start(["pipeline", *args], tmp_path / "job.log")
    total = len(SUBJECTS) * len(ACTIONS) * 4 * FRAMES
    try:
        wait_for(lambda: n_detection_files(out) >= 4 or job.poll() is not None, 120,
                 "the first detection files")
        killed_at = n_detection_files(out)
        os.killpg(workers["w0"].pid, signal.SIGKILL)
        workers["w0"].wait(30)
        rc = job.wait(300)
    finally:
        _stop(job)
    log = (tmp_path / "job.log").read_text()
    assert rc == 0, log[-3000:]
    assert killed_at < total, "the job finished before the kill"
    assert workers["w0"].returncode == -signal.SIGKILL and workers["w1"].poll() is None
    from distributed import Client

    with Client(address, timeout=30) as c:
        alive = [w["name"] for w in c.scheduler_info()["workers"].values()]
    assert alive == ["w1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detection_rows"] == total and summary["failed_frames"] == 0
    diff = faults.shard_differences(clean.out, out)
    assert diff == []
    faults.record("real cluster (dask scheduler + 2 dask workers), one worker SIGKILLed",
                  faults_injected=1, runs=1, frames_lost=0,
                  shards_differing_from_clean_run=len(diff), exit_status=rc,
                  note=f"killed after {killed_at}/{total} detection files; tasks finished on "
                       "the other worker; same shards as the LocalCluster run")

"""Tools beside the product: benchmarks, the real-footage demo and the overlay (``python -m tools``).

They call the product's public functions and registries (``pipeline.geometry.modes``,
``pipeline.job.plan``, ``train``), so every figure they print measures the code users run.
"""
from __future__ import annotations

import os

BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
CAPPED_HERE: list[str] = []
"""The thread variables :func:`cap_blas_threads` set in this process (not the caller's own)."""


def cap_blas_threads() -> None:
    """One BLAS/OpenMP thread per process unless the caller says otherwise: the benchmarks
    report per-core figures and Dask workers are the parallelism (call before numpy loads)."""
    for var in BLAS_THREAD_VARS:
        if var not in os.environ:
            os.environ[var] = "1"
            CAPPED_HERE.append(var)


def caller_environment() -> dict[str, str]:
    """This process's environment without the caps :func:`cap_blas_threads` added: what a
    command run on the user's behalf (``make train``) would see from the user's shell."""
    return {k: v for k, v in os.environ.items() if k not in CAPPED_HERE}

"""Worker processes that share the machine's cores: the report's modules drawn side by side and a
sweep's runs trained side by side. Each worker must start with its share of the math-library
threads, or every worker's BLAS/OpenMP threads spin for the same cores."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

__all__ = ["cores", "threads_each", "math_threads", "THREAD_VARIABLES"]

# The variables the BLAS libraries (OpenBLAS, MKL) and OpenMP read at import for their thread
# count; torch takes its intra-op thread count from OMP_NUM_THREADS.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def threads_each(workers: int) -> int:
    """Math threads for each of `workers` processes: an equal share of the cores, at least one."""
    return max(1, cores() // workers)


@contextmanager
def math_threads(count: int) -> Iterator[None]:
    """Processes spawned inside this block start with `count` math-library threads. Each worker
    would otherwise start as many as the parent has (all the cores), and several workers' BLAS
    threads spin for the same cores: study 003's report took 356 s on two such workers against
    294 s in one process, and 174 s on two workers of one thread each."""
    before = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(count) for name in THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

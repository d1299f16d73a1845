"""CPU threads per training process when several sweep jobs run at once (`hydra/launcher=joblib`).

Each job would otherwise start torch with one thread per core, so n parallel jobs would oversubscribe the cores n
times over. The split is the one Lightning applies to its own ranks on one machine: cores // processes, at least 1.
"""

from __future__ import annotations

import os


def threads_per_job(cores: int, parallel_jobs: int) -> int:
    """Torch threads for each of `parallel_jobs` jobs sharing `cores`: max(1, cores // parallel_jobs)."""
    return max(1, cores // max(1, parallel_jobs))


def parallel_jobs(n_jobs: int | None, cores: int) -> int:
    """Jobs joblib runs at once for its `n_jobs` (None or 0: 1; -1: one per core; -2: all cores but one; ...)."""
    if not n_jobs:
        return 1
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and `taskset` narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

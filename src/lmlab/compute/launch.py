"""Start the ranks of one multi-process job from inside that job (used for each job of a sweep).

Lightning's `ddp` starts ranks 1..N-1 by running the command line again. Inside a sweep the command line is the whole
sweep (`-m ...`, or a submitit job's own argv), so every extra rank would run its own copy of the sweep, and an Optuna
sweep samples other parameters there. Here the job forks its N ranks instead, each with `LOCAL_RANK`, `WORLD_SIZE` and
the rendezvous address set, and each runs the same job function on the same config: Lightning sees ranks that were
started for it (as under torchrun) and launches nothing. The job's own process computes nothing, so no CUDA context
exists when it forks.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")

# Strategy names whose ranks Lightning starts itself in child processes: they already work inside a sweep.
_IN_PROCESS_LAUNCH = ("spawn", "fork", "notebook")


def ranks_to_start(strategy: Any, devices: Any, num_nodes: int) -> int:
    """How many rank processes a sweep job must start itself: 1 (none) unless Lightning would re-run the command line
    to start them, i.e. a multi-process strategy without spawn/fork where no cluster (SLURM, torchrun, LSF, MPI)
    starts one process per rank."""
    processes = _process_count(devices)
    if processes * max(1, int(num_nodes)) <= 1 or ranks_started_externally():
        return 1
    start_method = strategy.get("start_method", "popen") if hasattr(strategy, "get") else str(strategy)
    if any(name in str(start_method) for name in _IN_PROCESS_LAUNCH):
        return 1
    if int(num_nodes) > 1:
        raise LmlabError(
            f"trainer.num_nodes={num_nodes} inside a sweep needs a cluster that starts the ranks; use "
            "hydra/launcher=slurm (srun starts one task per device), or sweep on one node"
        )
    return processes


def ranks_started_externally() -> bool:
    """True where something else started one process per rank: lmlab itself (`LOCAL_RANK` set), or a cluster
    environment that Lightning detects (SLURM's srun, torchrun, LSF, MPI)."""
    from lightning_fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if "LOCAL_RANK" in os.environ:
        return True
    return any(env.detect() for env in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment))


def run_ranks(job: Callable[[], Any], nprocs: int) -> Any:
    """Run `job()` in `nprocs` forked rank processes (spawned, so `job` must pickle, if CUDA is already initialized
    here) and return what rank 0 returned. A rank that fails stops the others; a rank that exits with a status (after
    printing its one-line error) makes this process exit with it too."""
    method = "spawn" if torch.cuda.is_initialized() else "fork"  # CUDA does not survive a fork
    port = _free_port()
    log.info("starting %d ranks (%s) for this job, rendezvous at 127.0.0.1:%d", nprocs, method, port)
    context = mp.get_context(method)
    results = context.SimpleQueue()
    procs = mp.start_processes(
        _rank_main, args=(job, nprocs, port, results), nprocs=nprocs, join=False, start_method=method
    )
    try:
        while not procs.join():
            pass
    except mp.ProcessExitedException as err:
        sys.exit(
            err.exit_code if err.exit_code > 0 else 1
        )  # the rank printed its own one-line error (or traceback) before exiting
    return results.get()


def _rank_main(
    rank: int,
    job: Callable[[], Any],
    world_size: int,
    port: int,
    results: Any,
) -> None:
    """The body of one rank: rendezvous settings in the environment, then the job."""
    os.environ.update(
        LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    value = job()
    if rank == 0:
        results.put(value)


def _process_count(devices: Any) -> int:
    """Processes per node that a Trainer `devices` flag asks for (`auto`/-1: every visible GPU, at least 1)."""
    if isinstance(devices, list | tuple) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return max(1, torch.cuda.device_count())
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    return int(text) if text.isdigit() else 1


def _free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

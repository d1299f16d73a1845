"""Which process of a multi-process run this is, read from the launcher's environment before any Trainer exists.

torchrun sets `RANK` in every process; SLURM's srun sets `SLURM_PROCID`; Lightning's own launch (its re-run of the
command line, and its by-hand multi-node recipe) sets `NODE_RANK` per node and `LOCAL_RANK` per extra process of a
node. Lightning's `rank_zero_only` reads only `RANK`, `LOCAL_RANK` and `SLURM_PROCID` until a Trainer sets it, so on
node 1 of a `NODE_RANK` launch it says rank 0. What happens to the run folder before the Trainer exists (the Hydra
record, resume's bookkeeping, the W&B run id) asks here instead. Torch-free: the command line calls it before any
heavy import.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
"""Environment variables by which a launcher numbers the processes of one run (0 or unset: the first)."""


def is_first_process() -> bool:
    """True for the run's global rank 0, or a process no launcher numbered (a plain `lmlab train`)."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def process_name() -> str:
    """This process among the run's processes, for file names: `rank3` (torchrun, srun), `node1_local0` (Lightning's
    NODE_RANK/LOCAL_RANK; inside an sbatch script SLURM_PROCID stays 0 for those), `rank0` for the first one."""
    value = {name: os.environ.get(name, "").strip() or "0" for name in RANK_VARIABLES}
    if os.environ.get("RANK", "").strip():
        return f"rank{value['RANK']}"
    if value["SLURM_PROCID"] != "0":
        return f"rank{value['SLURM_PROCID']}"
    if (value["NODE_RANK"], value["LOCAL_RANK"]) != ("0", "0"):
        return f"node{value['NODE_RANK']}_local{value['LOCAL_RANK']}"
    return "rank0"

"""Compute: what a machine can do and how a run uses it.

`hardware` checks a profile against the machine, `batching` splits a global batch into processes x accumulation x
micro-batches, `launch` starts the ranks of a sweep's multi-process job, `ranks` reads which rank a launcher (torchrun,
srun, Lightning) made this process, `parallel` shards with FSDP2, `perf` measures peak FLOP/s and memory, `preflight`
refuses a run that cannot fit before its first step, `threads` splits the cores between the parallel jobs of a sweep.
"""

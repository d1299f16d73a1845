"""Sharded training: FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every process (a 1-D data-parallel mesh, no tensor parallelism).

    Lightning's `ModelParallelStrategy` defaults to data-parallel across nodes and tensor-parallel within one; for
    plain sharded data parallelism every process belongs to the data-parallel dimension. The task shards its
    modules in `configure_model` (see `shard_modules`). Unlike `strategy="fsdp"`, this also runs on CPU with gloo.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        super().setup_environment()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model (lmlab's `blocks`), each its own FSDP unit; empty when it has none."""
    blocks = getattr(model, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def shard_modules(owner: nn.Module, mesh: Any) -> None:
    """Apply FSDP2 to each Transformer block, then to every child of `owner` that holds parameters (the model,
    a classifier head, ...): parameters become DTensors sharded over `mesh`, gathered block by block in forward.

    Idempotent: modules already sharded are left alone (Lightning calls `configure_model` before each stage).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for child in owner.children():
        if isinstance(child, FSDPModule) or not any(True for _ in child.parameters()):
            continue
        for block in transformer_blocks(child):
            fully_shard(block, mesh=mesh)
        fully_shard(child, mesh=mesh)


def whole_model(model: nn.Module, config: Any) -> nn.Module:
    """`model` itself, or if FSDP2 sharded it, a plain copy with the whole weights (for sampling after training).

    Gathering is a collective: under FSDP every process must call this.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lmlab.models import build_model

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    copy = build_model(config)
    copy.load_state_dict({name: tensor.detach().cpu() for name, tensor in state.items()})
    return copy.eval()

"""Callbacks that make a run survive interruptions exactly and refuse to write broken weights.

- `RNGState`: the torch (CPU and CUDA), numpy and Python random states ride in every checkpoint and are restored
  when training resumes, so dropout and any other sampling continue as if never stopped.
- `GracefulInterrupt`: SIGINT (Ctrl+C) and SIGTERM stop training after the current step and save a checkpoint.
- `FiniteLoss`: a non-finite loss (or gradient) stops the run before the optimizer changes any weight.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab")


def rng_states() -> dict[str, Any]:
    """Every global random state, as tensors and plain values (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` captured (CUDA states only where the same devices are visible)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class RNGState(pl.Callback):
    """Saves the random states with each checkpoint; restores them when a resumed fit starts training."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Restored here, not at load time: building the model and the sanity check between the two draw numbers too.
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None


class GracefulInterrupt(pl.Callback):
    """SIGINT/SIGTERM: finish the current step (and its validation), save `checkpoints/last.ckpt`, stop (a second
    Ctrl+C stops at once).

    SIGTERM goes through Lightning's own handler (which also stops DDP workers); SIGINT is routed to the same flag.
    Lightning would stop inside a validation, and the checkpoint it leaves counts that validation as done, so the
    resumed run would never log it nor save its best checkpoint: the stop waits for the validation's end instead
    (redoing it on resume could not be exact, as its partial sums are not in the checkpoint).
    After the stop, `signal_name` and `saved` tell the command what happened.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.saved: Path | None = None
        self._held = False  # a stop that arrived during validation, raised when the validation ends
        self._validated_step = -1  # the step of the last validation during fit

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def on_sigint(signum: int, frame: Any) -> None:
            self.signal_name = "SIGINT"
            log.warning("interrupt: saving a checkpoint after this step (Ctrl+C again stops without saving)")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            trainer._signal_connector.received_sigterm = True

        signal.signal(signal.SIGINT, on_sigint)  # Lightning's teardown puts the previous handler back

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.received_sigterm and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            trainer._signal_connector.received_sigterm = False  # Lightning checks it after this hook
            self._held = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._validated_step = trainer.global_step
        if self._held:  # the training loop stops after this step, as for a signal during the step
            self._held = False
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self.signal_name = self.signal_name or "SIGTERM"
        self.saved = checkpoint_folder(trainer) / "last.ckpt"
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):  # its `last.ckpt` now; a resume overwrites it
            trainer.checkpoint_callback.last_model_path = str(self.saved)
        # Resuming at a step that validated, Lightning counts the step once more for the loggers (it expects such a
        # checkpoint from the validation's end, before the count): save that count, so rows keep their steps.
        loop = trainer.fit_loop.epoch_loop
        recount = int(self._validated_step == trainer.global_step)
        loop._batches_that_stepped -= recount
        try:
            trainer.save_checkpoint(self.saved)
        finally:
            loop._batches_that_stepped += recount
        log.warning("%s: saved %s at step %d", self.signal_name, self.saved, trainer.global_step)


def checkpoint_folder(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the ModelCheckpoint's folder, else `<run dir>/checkpoints`."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None)
    return Path(folder) if folder else Path(trainer.default_root_dir) / "checkpoints"


class FiniteLoss(pl.Callback):
    """Stops the run at the first non-finite loss or gradient, before the optimizer step writes it into the weights.

    One check per optimizer step: the last micro-batch's loss and the total gradient norm (fused over all gradients)
    must be finite. Gradients are not checked under `16-mixed` precision, whose grad scaler skips overflowing steps by
    design. The check does not make the GPU wait where it can be deferred: on one CUDA device with a fused optimizer
    (lmlab's AdamW there) the flag goes to the optimizer's `found_inf` input, the same one PyTorch's grad scaler uses,
    so a bad step leaves weights and optimizer state untouched on the device, and it is read back one step later
    (without the GPU's queue running dry) to stop the run. Elsewhere the flag is read back at once, in one
    synchronisation; under DDP one all-reduce of it follows.

    Args:
        deferred: defer the read-back where the optimizer supports it (None: on one CUDA device).
    """

    def __init__(self, deferred: bool | None = None) -> None:
        self.deferred = deferred
        self._params: list[torch.Tensor] | None = None  # cached: walking the module tree each step slows small models
        self._loss: torch.Tensor | None = None
        self._pending: tuple[int, torch.Tensor, torch.Tensor | None, Any] | None = None  # step, flags, loss, event

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = list(pl_module.parameters())  # after sharding and compiling: the tensors the optimizer steps

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()  # checked with the gradients: one synchronisation per step, not two

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.check_pending(trainer, pl_module)  # the previous step's flags, copied back while this step ran
        loss, self._loss = self._loss, None
        flags = [] if loss is None else [torch.isfinite(loss).all()]
        if not str(trainer.precision).startswith("16"):
            if self._params is None:
                self._params = list(pl_module.parameters())
            grads = [p.grad for p in self._params if p.grad is not None]
            if grads:
                flags.append(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if not flags:
            return
        finite = torch.stack(flags)  # (1 or 2,): loss, gradients
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # under a LightningOptimizer wrapper
        if self.defers(trainer, optimizer):
            optimizer.found_inf = (~finite.all()).float()  # the fused step is a no-op where this is 1
            host = torch.empty(finite.shape, dtype=torch.bool, pin_memory=finite.is_cuda)
            host.copy_(finite, non_blocking=True)
            event = torch.cuda.Event() if finite.is_cuda else None
            if event is not None:
                event.record()
            self._pending = (trainer.global_step + 1, host, loss, event)
            return
        self.judge(trainer, pl_module, trainer.global_step + 1, finite, loss)  # one host-device synchronisation

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_pending(trainer, pl_module)  # a bad last step was skipped; it still stops the run with the error

    def defers(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> bool:
        """Whether this step's flag can go to the optimizer instead of being read back now."""
        if not (getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused")):
            return False  # only a fused optimizer step reads `found_inf`
        if self.deferred is not None:
            return self.deferred
        return trainer.strategy.root_device.type == "cuda" and trainer.world_size == 1

    def check_pending(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is None:
            return
        (step, finite, loss, event), self._pending = self._pending, None
        if event is not None:
            event.synchronize()  # queued one step ago: the GPU is already busy with the next step
        self.judge(trainer, pl_module, step, finite, loss)

    def judge(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, finite: torch.Tensor, loss: Any
    ) -> None:
        """Stop with the error if the flags of `step` (on any process) say a value was not finite."""
        ok = bool(finite.all())
        if trainer.strategy.reduce_boolean_decision(not ok, all=False):
            loss_ok = loss is None or bool(torch.isfinite(loss).all())
            what = "a gradient is not finite" if loss_ok else f"the loss is {loss.float().mean().item()} (not finite)"
            self.stop(trainer, pl_module, step, what)

    @staticmethod
    def stop(trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, what: str) -> None:
        callback = trainer.checkpoint_callback
        kept = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        kept_text = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint had been written yet"
        lrs = ", ".join(f"{group['lr']:g}" for opt in trainer.optimizers for group in opt.param_groups[:1])
        raise LmlabError(
            f"training stopped at step {step}: {what}, so no weights were updated and "
            f"{kept_text}; likely causes: a learning rate too high (lr {lrs or '?'}; lower optimizer.lr), fp16 "
            "overflow (use trainer.precision=bf16-mixed or 32-true), or bad data (NaN/huge values in the batch)"
        )


def safety_callbacks(interrupt: GracefulInterrupt | None = None) -> list[pl.Callback]:
    """What every lmlab training run gets: random states in checkpoints, graceful interrupts, the finite-loss stop."""
    return [RNGState(), interrupt or GracefulInterrupt(), FiniteLoss()]


EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


@contextlib.contextmanager
def exit_on_interrupt(interrupt: Any, run_dir: Path) -> Iterator[None]:
    """Turn Lightning's stop on SIGTERM/SIGINT into one line naming the resume command, and exit 143/130."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        name = interrupt.signal_name or "SIGTERM"
        saved = f"saved {interrupt.saved}" if interrupt.saved else "no checkpoint saved"
        print(f"interrupted by {name}: {saved}; continue with: lmlab train resume={run_dir}", file=sys.stderr)
        sys.exit(EXIT_CODES.get(name, 1))

"""lmlab's Optuna sweeper: Hydra's, plus search-space checks and resuming a stored study to `n_trials` in total.

It lives here because Hydra instantiates sweepers only from the `hydra_plugins` namespace; the logic is in
`lmlab.config.sweeper`.
"""

from __future__ import annotations

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as HydraOptunaSweeper
from omegaconf import DictConfig


class LmlabOptunaSweeper(HydraOptunaSweeper):
    """`hydra.sweeper._target_` of lmlab's `hparams_search` presets (the settings of Hydra's Optuna sweeper)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def sweep(self, arguments: list[str]) -> None:
        from lmlab.config.sweeper import prepare_sweep

        prepare_sweep(self.sweeper, self.config, arguments)
        return self.sweeper.sweep(arguments)

"""Lightning loggers as lmlab configures them (W&B lives in `lmlab.tracking`)."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger as _TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only


class TensorBoardLogger(_TensorBoardLogger):
    """TensorBoard whose HParams tab shows every hyper-parameter logged so far, not only the last call's.

    The train command logs the resolved config and Lightning then logs the task's own hyper-parameters; the stock
    logger would show only the latter in the HParams tab (`hparams.yaml` holds both either way).
    """

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None, step: int | None = None
    ) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        super().log_hyperparams({**self.hparams, **params}, metrics, step)

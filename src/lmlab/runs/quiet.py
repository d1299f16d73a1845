"""Start-up messages of other libraries that tell an lmlab user nothing, silenced by their exact text so that every
other warning still shows."""

from __future__ import annotations

import logging
import re
import warnings

QUIET_WARNINGS = (
    # torch 2.9+ deprecates LeafSpec, which Lightning's _pytree still builds; nothing a user can change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # task=sft refuses a training batch without reply tokens in this hook, on the CPU before the transfer, by design
    (r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a", UserWarning),
)
"""(message regex, category) of Python warnings to drop."""

QUIET_LOG_MESSAGES = {
    # an advertisement for Lightning's hosted logger, on every Trainer without one
    "pytorch_lightning.utilities.rank_zero": r"💡 Tip: For seamless cloud logging .* try installing \[litlogger\]",
}
"""Logger name -> regex of the messages to drop from it."""


class DropMessages(logging.Filter):
    """Drops the records whose message starts with `pattern`."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_third_party() -> None:
    """Install the filters (idempotent: a sweep calls it once per job)."""
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in QUIET_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(DropMessages(pattern))

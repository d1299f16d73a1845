"""Where a run's wall time goes: start-up, training, validation and the end, from the start of its process.

`lmlab train` reports this split (summary.json's `timing`, and a line when it ends) because "time to result" is
what a user waits for: a run whose steps are fast can still lose to a plain loop on imports, start-up checks and
validations.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

_process_start: float | None = None
"""Set by the command-line entry; taken by the first run of the process (a sweep's later jobs start on their own)."""


def process_start_time() -> float:
    """When this process started (`time.time()` scale), from /proc (10 ms resolution) on Linux, else now.

    Read as uptime now minus the process's start in uptime, both in clock ticks, which avoids /proc/stat's boot
    time, rounded to whole seconds."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5): starttime, in ticks since boot
        return time.time() - max(0.0, up - started)
    except (OSError, ValueError, IndexError):
        return time.time()


def mark_process_start() -> None:
    """Called by `lmlab`'s entry: the process start is where the first run's start-up begins."""
    global _process_start
    _process_start = process_start_time()


def take_process_start() -> float:
    """The marked process start the first time it is asked for (then forgotten), else now: a run called as a library
    (tests) or a sweep's second job starts its clock when it starts."""
    global _process_start
    started, _process_start = _process_start, None
    return started if started is not None else time.time()


@dataclass(frozen=True)
class WallTimeSplit:
    """Seconds of one run, which add up to `total_s`."""

    startup_s: float
    """Process start to the first training step: imports, config, data, model, Trainer (less validation)."""
    training_s: float
    """First training step to the end of fit, less the validations in between (checkpoint saves included)."""
    validation_s: float
    """Every validation loop: the sanity check, those during fit, the final whole-split one (and an initial one)."""
    end_s: float
    """After fit until the summary is written: sample, test split, summary (less the final validation)."""
    total_s: float

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in asdict(self).items()}

    def line(self) -> str:
        """One line for the terminal."""
        parts = (("start-up", self.startup_s), ("training", self.training_s), ("validation", self.validation_s),
                 ("end", self.end_s))  # fmt: skip
        return "wall time: " + ", ".join(f"{name} {s:.1f} s" for name, s in parts) + f" (total {self.total_s:.1f} s)"


def split_wall_time(
    start: float, first_step: float, fit_end: float, now: float, validations: list[tuple[float, float]]
) -> WallTimeSplit:
    """Partition `[start, now]` at the first training step and the end of fit, each part less the validation
    intervals (`(begin, end)` pairs) that fall inside it. A run without training steps has `first_step == fit_end`.
    The marks come from `lmlab.callbacks.WallClock`."""

    def inside(low: float, high: float) -> float:
        return sum(max(0.0, min(end, high) - max(begin, low)) for begin, end in validations)

    return WallTimeSplit(
        startup_s=max(0.0, first_step - start - inside(start, first_step)),
        training_s=max(0.0, fit_end - first_step - inside(first_step, fit_end)),
        validation_s=inside(start, now),
        end_s=max(0.0, now - fit_end - inside(fit_end, now)),
        total_s=now - start,
    )

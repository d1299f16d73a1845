"""The wall-time split of a run (`lmlab.runs.timing`): a partition of the time since the process started."""

from __future__ import annotations

import time

import pytest

from lmlab.runs import timing
from lmlab.runs.timing import process_start_time, split_wall_time


def test_split_subtracts_each_validation_from_the_phase_it_falls_in() -> None:
    validations = [(1.0, 2.0), (5.0, 6.0), (9.0, 10.5), (11.0, 12.0)]  # sanity check, during fit, at its end, final
    split = split_wall_time(start=0.0, first_step=3.0, fit_end=10.0, now=13.0, validations=validations)
    assert (split.startup_s, split.training_s, split.validation_s, split.end_s) == (2.0, 5.0, 4.5, 1.5)
    assert split.total_s == 13.0
    assert split.line() == "wall time: start-up 2.0 s, training 5.0 s, validation 4.5 s, end 1.5 s (total 13.0 s)"


def test_process_start_is_taken_once_and_is_in_the_past(monkeypatch: pytest.MonkeyPatch) -> None:
    started = process_start_time()
    assert time.time() - 3600 * 24 < started <= time.time()
    monkeypatch.setattr(timing, "_process_start", None)
    timing.mark_process_start()
    assert timing.take_process_start() == pytest.approx(started, abs=0.05)
    assert timing.take_process_start() == pytest.approx(time.time(), abs=1)  # a second run starts its own clock

"""The epsilon schedule (SB3's exploration_* keys)."""

from __future__ import annotations

import numpy as np
import pytest

from dqn_cli.schedules import LinearSchedule


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (100, 0.9), (250, 0.75), (500, 0.5), (999, 0.5), (10_000, 0.5)],
)
def test_linear_schedule(step, expected):
    # from 1.0 to 0.5 over the first 50% of 1000 steps, then flat
    assert LinearSchedule(1.0, 0.5, 0.5, 1000)(step) == pytest.approx(expected)


def test_linear_schedule_with_zero_fraction_is_final_from_the_start():
    schedule = LinearSchedule(1.0, 0.05, 0.0, 1000)
    assert [schedule(s) for s in (0, 1, 1000)] == [0.05, 0.05, 0.05]


def test_linear_schedule_decreases_monotonically():
    schedule = LinearSchedule(1.0, 0.04, 0.2, 50_000)
    values = np.array([schedule(s) for s in range(0, 50_001, 100)])
    assert np.all(np.diff(values) <= 0)
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.04)
    assert schedule(10_000) == pytest.approx(0.04) and schedule(5_000) == pytest.approx(0.52)

"""Exploration schedule (SB3's `exploration_*` keys)."""

from __future__ import annotations


class LinearSchedule:
    """epsilon(step): `initial` at step 0, linear to `final` at `fraction * total_steps`, then flat."""

    def __init__(self, initial: float, final: float, fraction: float, total_steps: int):
        self.initial, self.final = float(initial), float(final)
        self.duration = fraction * total_steps

    def __call__(self, step: int) -> float:
        if self.duration <= 0:
            return self.final
        progress = min(1.0, step / self.duration)
        return self.initial + progress * (self.final - self.initial)


def epsilon_schedule(agent_cfg, total_steps: int) -> LinearSchedule:
    """The exploration schedule of `agent.exploration_initial_eps`, `exploration_final_eps` and
    `exploration_fraction` over `total_steps`."""
    a = agent_cfg
    return LinearSchedule(a.exploration_initial_eps, a.exploration_final_eps, a.exploration_fraction, total_steps)

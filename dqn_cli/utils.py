"""Small helpers shared by training and evaluation: seeding, device, threads, periodic moments."""

from __future__ import annotations

import random

import numpy as np
import torch

from dqn_cli.errors import UserError


def set_seed(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator the agent and buffer draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def setup_torch(device: str, threads: int) -> torch.device:
    """Resolve `device` (auto|cpu|cuda) and configure CPU threads and denormal flushing.

    Flushing denormals matters: without it a conv net's CPU update slows ~20x once weights
    drift into subnormal range.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"device={device!r} is unknown; allowed: auto, cpu, cuda (or cuda:N).")
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device={device} was asked for, but torch finds no CUDA GPU on this machine "
            f"(torch {torch.__version__}). Use device=cpu or device=auto."
        )
    return torch.device(device)


class Every:
    """True once each time a counter crosses a multiple of `interval` (0 disables).

    Works for counters that advance by more than one (vector envs step N at a time).
    """

    def __init__(self, interval: int):
        self.interval = int(interval)

    def __call__(self, before: int, after: int) -> bool:
        if self.interval <= 0:
            return False
        return after // self.interval > before // self.interval

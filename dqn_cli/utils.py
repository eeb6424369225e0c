"""Small helpers shared by training and evaluation: seeding, device, threads, periodic moments."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
import sys

import numpy as np
import torch

from dqn_cli.errors import UserError

log = logging.getLogger(__name__)


def set_seed(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator the agent and buffer draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def warn_if_more_than_cores(key: str, threads: int) -> None:
    """Say so when the setting `key` asks for more threads than this process has cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or threads
    if threads > cores:
        log.warning(
            f"{key}={threads} is more than the {cores} CPU cores this process may use; threads "
            "beyond them take turns on the same cores and slow each other down"
        )


def setup_torch(device: str, threads: int) -> torch.device:
    """Resolve `device` (auto|cpu|cuda) and configure CPU threads and denormal flushing.

    Flushing denormals matters: without it a conv net's CPU update slows ~20x once weights
    drift into subnormal range.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"device={device!r} is unknown; allowed: auto, cpu, cuda (or cuda:N).")
    warn_if_more_than_cores("torch_threads", threads)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device={device} was asked for, but torch finds no CUDA GPU on this machine "
            f"(torch {torch.__version__}). Use device=cpu or device=auto."
        )
    return torch.device(device)


def pinned(t: torch.Tensor) -> torch.Tensor:
    """A dense copy of `t` in page-locked memory, which a non-blocking host-to-GPU copy needs."""
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """`x` on `device`: through pinned memory and without waiting on a GPU, as-is on the CPU."""
    t = torch.from_numpy(x)
    return pinned(t).to(device, non_blocking=True) if device.type == "cuda" else t


# glibc's mallopt parameters; the largest mmap threshold glibc accepts on 64-bit is 32 MiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks of up to 32 MiB instead of returning them to the OS.

    A conv net's CPU update allocates and frees the same multi-MB temporaries every step (the
    float copy of a uint8 batch, activations, im2col buffers). By default glibc serves those with
    fresh mmaps, and the page faults of touching them cost ~15% of a Nature CNN update (33 -> 28 ms
    per batch of 32 on one core); kept in the heap, they are reused. Allocations above 32 MiB (the
    replay buffer) are still mmapped, and at most 1 GiB of freed heap is kept before it is trimmed.
    Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


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

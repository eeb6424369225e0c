"""Shared fixtures: the real Hydra train config, composed from configs/ and shrunk to run in ~1 s."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from dqn_cli.config import config_dir

# Overrides that turn any train config into a CPU run of a few hundred steps. Intervals are small so
# that a short run still crosses every moment of the loop: updates, syncs, logs, evals, checkpoints.
SHRINK = (
    "device=cpu",
    "total_steps=300",
    "buffer.capacity=500",
    "agent.batch_size=16",
    "agent.learning_starts=32",
    "agent.train_freq=2",
    "agent.gradient_steps=1",
    "agent.target_update_interval=50",
    "agent.exploration_fraction=0.5",
    "network.hidden_sizes=[16,16]",
    "eval.interval=100",
    "eval.episodes=2",
    "eval.stop_on_solved=false",
    "checkpoint.interval=100",
    "checkpoint.keep_last=2",
    "log.interval=50",
    "log.progress=false",
)


@functools.cache
def _compose(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_config(config_name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose configs/<config_name>.yaml with Hydra's command-line override syntax.

    Composing takes ~0.1 s, so results are cached and each caller gets its own deep copy.
    """
    return copy.deepcopy(_compose(config_name, tuple(overrides)))


def compose_small(overrides: Sequence[str] = ()) -> DictConfig:
    """The real train config, shrunk; `overrides` come last and win."""
    return compose_config("train", [*SHRINK, *overrides])


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[..., DictConfig]:
    """`compose_cfg("train", ["env=acrobot"])` -> the full (unshrunk) composed config."""
    return compose_config


@pytest.fixture(scope="session")
def small_cfg_factory() -> Callable[..., DictConfig]:
    """`small_cfg_factory("env=acrobot", "seed=3")` -> a shrunk train config."""
    return lambda *overrides: compose_small(overrides)


@pytest.fixture
def small_cfg() -> DictConfig:
    """The default train config (CartPole), shrunk to a 300-step CPU run."""
    return compose_small()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run directory for a Trainer."""
    path = tmp_path / "run"
    path.mkdir()
    return path


def catches_signal(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (Linux: SigCgt in /proc/PID/status);
    False once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


def child_pids(pid: int, name_part: str) -> list[int]:
    """The child processes of `pid` whose command line contains `name_part` (Linux: /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and name_part in cmdline:
            children.append(int(stat.parent.name))
    return children


def whole_checkpoint(**parts) -> dict:
    """The parts every checkpoint reader uses (`dqn_cli.checkpoint._damage`), empty, with `parts` merged
    in one level deep: for tests that save a hand-made checkpoint to read one part back."""
    state = {
        "config": {},
        "agent": {"q_net": {}},
        "counters": {"step": 0, "episodes": 0, "updates": 0},
        "eval": {"best": float("-inf"), "last": None},
        "rng": {},
    }
    for key, value in parts.items():
        state[key] = {**state[key], **value} if isinstance(state.get(key), dict) and isinstance(value, dict) else value
    return state

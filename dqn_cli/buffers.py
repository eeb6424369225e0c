"""Replay buffer builder: the `buffer` config group becomes a preallocated numpy ring buffer.

Transitions are stored per vector-env stream: arrays have shape (T, N, ...), T = capacity // N,
so each env's transitions stay in order and n-step windows never mix streams. `terminated` and
`truncated` are kept apart: a target bootstraps through a time-limit truncation but not through a
termination.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from omegaconf import DictConfig

from dqn_cli.errors import UserError

log = logging.getLogger(__name__)

# A sampled slot the storage cannot use (a frame-once layout's slot whose stack or next frame is gone,
# an unfilled prioritized leaf hit through rounding) is redrawn; this bounds the redraw rounds.
MAX_REDRAWS = 1000


def no_usable_slots(size_per_env: int) -> UserError:
    """What sampling says when MAX_REDRAWS rounds left a slot unusable (the config check keeps enough
    slots per env; this is for a case it missed, instead of looping forever)."""
    return UserError(
        f"the replay buffer found no usable transition for some draws in {MAX_REDRAWS:,} rounds: {size_per_env} "
        "steps per env are too few for this run. Raise buffer.capacity."
    )


class Batch(NamedTuple):
    """A sampled minibatch. `discounts` is gamma**k for the k rewards summed into `rewards`."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    discounts: np.ndarray
    weights: np.ndarray | None = None  # importance weights (prioritized replay only)
    indices: np.ndarray | None = None  # flat (t * N + env) positions, for priority updates
    # buffer.storage=device: (B, F) rows of the frame store on the device, obs and next_obs then None;
    # the first K columns stack obs, the last K next_obs (F = K + 1 one-step, 2K n-step)
    frames: np.ndarray | None = None


def available_memory() -> int | None:
    """Bytes the kernel reports as available (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(nbytes: int, what: str, fix: str = "Lower buffer.capacity (or the number of envs) so it fits.") -> None:
    """Refuse an allocation larger than the memory available now, before making it."""
    avail = available_memory()
    free = f" of {avail / 2**30:.2f} GiB available" if avail is not None else ""
    log.info(f"replay: {what} needs {nbytes / 2**30:.2f} GiB{free}")
    if avail is not None and nbytes > avail:
        raise UserError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of memory is available. {fix}"
        )


class ReplayBuffer:
    """Uniform replay over flat observations, storing obs and next_obs for every transition."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ):
        self.num_envs = num_envs
        self.size_per_env = max(1, capacity // num_envs)
        self.n_step, self.gamma = n_step, gamma
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(obs_dtype)
        check_fits(self.estimate_nbytes(), f"buffer.capacity={capacity}")
        shape = (self.size_per_env, num_envs)
        self._allocate_obs(shape)
        self.actions = np.zeros(shape, np.int64)
        self.rewards = np.zeros(shape, np.float32)
        self.terminated = np.zeros(shape, bool)
        self.truncated = np.zeros(shape, bool)
        self.pos, self.full = 0, False

    def _allocate_obs(self, shape: tuple[int, int]) -> None:
        """Observation storage; layouts that keep frames once (dqn_cli.frame_buffer) override it."""
        self.obs = np.zeros(shape + self.obs_shape, self.obs_dtype)
        self.next_obs = np.zeros(shape + self.obs_shape, self.obs_dtype)

    def estimate_nbytes(self) -> int:
        per_step = 2 * int(np.prod(self.obs_shape)) * self.obs_dtype.itemsize + 8 + 4 + 1 + 1
        return self.size_per_env * self.num_envs * per_step

    def __len__(self) -> int:
        return (self.size_per_env if self.full else self.pos) * self.num_envs

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Store one vector step; every argument has a leading axis of length num_envs."""
        p = self.pos
        self.obs[p] = obs
        self.next_obs[p] = next_obs
        self.actions[p] = actions
        self.rewards[p] = rewards
        self.terminated[p] = terminated
        self.truncated[p] = truncated
        self.pos = (p + 1) % self.size_per_env
        self.full = self.full or self.pos == 0

    def cut_episodes(self) -> None:
        """The envs were reset without their episodes' ends stored (a resume that starts fresh episodes): each
        stream's last transition that went on becomes a truncation, bootstrapped from its stored next
        observation, so no n-step window (or frame stack) runs from the old episode into the new one."""
        if len(self) == 0:
            return
        last = (self.pos - 1) % self.size_per_env
        self.truncated[last] |= ~self.terminated[last]

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        filled = self.size_per_env if self.full else self.pos
        t = rng.integers(0, filled, size=batch_size)
        env = rng.integers(0, self.num_envs, size=batch_size)
        bad = ~self.sampleable(t, env)
        for _ in range(MAX_REDRAWS):  # storage layouts with unusable slots redraw them (rare)
            if not bad.any():
                break
            t[bad] = rng.integers(0, filled, size=int(bad.sum()))
            bad = ~self.sampleable(t, env)
        else:
            raise no_usable_slots(self.size_per_env)
        return self._gather(t, env)

    def sampleable(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        """Which stored (t, env) slots can be turned into a full transition. All of them here;
        layouts that rebuild observations from neighbours (frame stacks) narrow this."""
        return np.ones(len(t), bool)

    def _obs_at(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        return self.obs[t, env]

    def _next_obs_at(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        return self.next_obs[t, env]

    def _obs_pair(self, t: np.ndarray, last: np.ndarray, env: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs at t and the next obs of `last` (t itself unless the n-step window runs on)."""
        return self._obs_at(t, env), self._next_obs_at(last, env)

    def _gather(self, t: np.ndarray, env: np.ndarray, weights: np.ndarray | None = None) -> Batch:
        rewards, terminated, discounts, last = self._n_step(t, env)
        frames = self._frame_rows(t, last, env)
        obs, next_obs = self._obs_pair(t, last, env) if frames is None else (None, None)
        return Batch(
            obs=obs,
            actions=self.actions[t, env],
            rewards=rewards,
            next_obs=next_obs,
            terminated=terminated,
            discounts=discounts,
            weights=weights,
            indices=t * self.num_envs + env,
            frames=frames,
        )

    def _frame_rows(self, t: np.ndarray, last: np.ndarray, env: np.ndarray) -> np.ndarray | None:
        """Frame-store rows of each transition's obs and next obs where the frames live on the
        device (dqn_cli.frame_buffer, buffer.storage=device); None: the batch carries the arrays."""
        return None

    def _n_step(self, t: np.ndarray, env: np.ndarray):
        """Sum up to n discounted rewards from t, stopping at an episode end or the newest entry.

        Returns the summed rewards, whether the window ended in a termination, gamma**k for the k
        rewards summed, and the index whose next_obs the target bootstraps from.
        """
        if self.n_step == 1:
            discounts = np.full(len(t), self.gamma, np.float32)
            return self.rewards[t, env], self.terminated[t, env].astype(np.float32), discounts, t
        size = self.size_per_env
        steps_left = (self.pos - t - 1) % size + 1  # transitions from t up to the newest one
        rewards = np.zeros(len(t), np.float32)
        terminated = np.zeros(len(t), bool)
        k = np.zeros(len(t), np.int64)  # rewards summed so far
        last = t.copy()
        active = np.ones(len(t), bool)
        for i in range(self.n_step):
            idx = (t + i) % size
            rewards += np.where(active, self.gamma**i * self.rewards[idx, env], 0.0).astype(np.float32)
            last = np.where(active, idx, last)
            k += active
            terminated |= active & self.terminated[idx, env]
            # an episode end (either kind) or the newest entry closes the window
            active &= ~(self.terminated[idx, env] | self.truncated[idx, env]) & (i + 1 < steps_left)
        discounts = (self.gamma**k).astype(np.float32)
        return rewards, terminated.astype(np.float32), discounts, last

    def state_dict(self) -> dict[str, np.ndarray]:
        n = self.size_per_env if self.full else self.pos
        return {
            "obs": self.obs[:n], "next_obs": self.next_obs[:n], "actions": self.actions[:n],
            "rewards": self.rewards[:n], "terminated": self.terminated[:n],
            "truncated": self.truncated[:n], "pos": np.array(self.pos), "full": np.array(self.full),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n = len(state["actions"])
        for key in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.full = int(state["pos"]), bool(state["full"])


def make_buffer(
    buf_cfg: DictConfig,
    obs_shape,
    obs_dtype,
    num_envs: int,
    n_step: int = 1,
    gamma: float = 0.99,
    frame_stacks: bool = False,
) -> ReplayBuffer:
    """Build the replay buffer. Reads `buffer.kind` and `buffer.capacity`; `kind=prioritized` wraps
    the same storage in `dqn_cli.prioritized.PrioritizedReplay` (which reads alpha, beta0, eps).
    `frame_stacks=True` (Atari): each observation is a uint8 stack of the env's last frames, so
    consecutive ones share all but one and `FrameStackReplay` stores each frame once. Nothing else is
    stored that way, whatever its shape (another image env's observations share no frames)."""
    if buf_cfg.kind not in ("uniform", "prioritized"):
        raise UserError(f"buffer.kind={buf_cfg.kind!r} is unknown; allowed: uniform, prioritized.")
    storage_cls = ReplayBuffer
    if frame_stacks:
        if len(obs_shape) != 3 or np.dtype(obs_dtype) != np.uint8:
            raise ValueError(f"frame stacks are uint8 (K, H, W); got {np.dtype(obs_dtype)} {tuple(obs_shape)}")
        from dqn_cli.frame_buffer import FrameStackReplay  # imports this module

        storage_cls = FrameStackReplay
    storage = storage_cls(int(buf_cfg.capacity), obs_shape, obs_dtype, num_envs, n_step, gamma)
    if buf_cfg.kind == "prioritized":
        from dqn_cli.prioritized import make_prioritized  # imports this module

        return make_prioritized(buf_cfg, storage)
    return storage

"""Frame-once replay for stacked frames (Atari): each 84x84 frame is stored once, as uint8.

An observation is a stack of the last K frames (K = `env.preset.frame_stack`), so consecutive observations
share K-1 frames and the next observation of a transition is the observation of the one after it.
Storing only the newest frame of each observation cuts replay memory by 2K (8x for K=4): about
7.1 KB per transition at 84x84, so a 1M buffer fits in about 7.1 GB (Dopamine's layout; SB3 keeps
obs and next_obs, about 56 KB, or about 28 KB with `optimize_memory_usage`).

Stacks are rebuilt at sample time. Slot t of a stream holds the newest frame of obs_t and a flag
`first[t]` that marks obs_t as an episode's first observation; walking back from t stops at that
flag and pads with zeros, exactly as `FrameStackObservation(padding_type="zero")` does, so no frame
of the previous episode leaks in. Each vector env is its own stream (column), as in ReplayBuffer.

Next observations: for a transition that goes on, the stack at t+1. `add` writes that next frame
into slot t+1 at once, so even the newest transition is sampleable. A truncated transition's next
observation (the env's `final_obs`) is not the next slot's, so its newest frame goes to a small ring
of side frames; a terminated transition's next observation is masked out of the target anyway.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dqn_cli.buffers import ReplayBuffer, check_fits
from dqn_cli.errors import UserError
from dqn_cli.utils import to_device

log = logging.getLogger(__name__)


class FrameStackReplay(ReplayBuffer):
    """ReplayBuffer storage for uint8 observations of shape (K, H, W), each frame stored once.

    Keeps ReplayBuffer's (T, N) layout, `_n_step` windows and hooks (`_obs_at`, `_next_obs_at`,
    `sampleable`), so uniform and prioritized sampling work unchanged.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
    ):
        self.stack, self.frame_shape = int(obs_shape[0]), tuple(obs_shape[1:])
        total = max(1, capacity // num_envs) * num_envs
        # Truncations (time limits) are rare in Atari: one per 27k steps at most with the 108k-frame
        # cap. A slot whose side frame was overwritten becomes unsampleable, nothing worse.
        self.side_capacity = max(64, total // 256)
        super().__init__(capacity, obs_shape, obs_dtype, num_envs, n_step, gamma)

    # ---- allocation ------------------------------------------------------------------------------
    def estimate_nbytes(self) -> int:
        frame = int(np.prod(self.frame_shape))
        # frame + action (int64) + reward (float32) + terminated, truncated, first (bool) + side index (int32)
        per_step = frame + 8 + 4 + 3 + 4
        return self.size_per_env * self.num_envs * per_step + self.side_capacity * (frame + 8)

    def _allocate_obs(self, shape: tuple[int, int]) -> None:
        self.frames = np.zeros(shape + self.frame_shape, np.uint8)  # newest frame of obs at (t, env)
        self.first = np.zeros(shape, bool)  # obs at (t, env) starts an episode
        self.side_slot = np.full(shape, -1, np.int32)  # side frame of a truncated transition
        self.side_frames = np.zeros((self.side_capacity, *self.frame_shape), np.uint8)
        self.side_owner = np.full(self.side_capacity, -1, np.int64)  # flat t * N + env owning each side frame
        self.side_pos = 0
        self.prev_done = np.zeros(self.num_envs, bool)  # did each stream's last added step end its episode
        self.fresh = True  # nothing added yet
        self.store: torch.Tensor | None = None  # buffer.storage=device: every frame also on the device

    # ---- buffer.storage=device ---------------------------------------------------------------------
    def keep_frames_on(self, device: torch.device) -> torch.Tensor:
        """Also keep every frame in a uint8 tensor on `device` and sample frame-store rows instead of
        frame stacks (`Batch.frames`): an update then gathers its obs and next obs on the device, and
        only small index arrays cross to it. Rows: slot t of stream e at t * N + e, then the side
        frames, then one row of zeros (the padding before an episode's first frame). The host copy
        stays (checkpoints, resume); returns the store."""
        rows = self.size_per_env * self.num_envs + self.side_capacity + 1
        nbytes = rows * int(np.prod(self.frame_shape))
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > free:
                raise UserError(
                    f"buffer.storage=device needs {nbytes / 2**30:.2f} GiB of GPU memory for the frames but "
                    f"{device} has {free / 2**30:.2f} GiB free. Lower buffer.capacity or use buffer.storage=host."
                )
        elif device.type == "cpu":  # the store is a second copy in the same memory: counted, and said
            capacity = self.size_per_env * self.num_envs
            # a fresh buffer's zeros take no memory until written: count both copies against what is free
            both = nbytes + (self.estimate_nbytes() if self.fresh else 0)
            what = f"buffer.capacity={capacity} with buffer.storage=device on the CPU (every frame twice)"
            check_fits(both, what, "Use buffer.storage=host (every frame once), or lower buffer.capacity.")
            log.warning(
                f"buffer.storage=device with device=cpu keeps every frame twice in host memory "
                f"(+{nbytes / 2**30:.2f} GiB); buffer.storage=host keeps it once"
            )
        self.store = torch.zeros((rows, *self.frame_shape), dtype=torch.uint8, device=device)
        if not self.fresh:  # frames were added before: copy them (a new buffer's zeros are there already)
            self._copy_to_store()
        return self.store

    def _copy_to_store(self, chunk_bytes: int = 1 << 26) -> None:
        """Every host frame to the device store (when attached, after loading a replay file), in
        chunks of ~64 MB: the pinned staging memory of a GPU copy stays that small."""
        rows = max(1, chunk_bytes // int(np.prod(self.frame_shape)))
        start = 0
        for part in (self.frames.reshape(-1, *self.frame_shape), self.side_frames):
            for i in range(0, len(part), rows):
                block = part[i : i + rows]
                self.store[start + i : start + i + len(block)] = self._on_store_device(block)
            start += len(part)

    def _frame_rows(self, t: np.ndarray, last: np.ndarray, env: np.ndarray) -> np.ndarray | None:
        if self.store is None:
            return None
        if self.n_step == 1:  # obs_t and its next obs: K+1 rows, as `_window` gathers them
            return self._window_rows(t, env)
        obs = self._window_rows(t, env)[:, :-1]
        return np.concatenate([obs, self._window_rows(last, env)[:, 1:]], axis=1)

    # ---- writing ---------------------------------------------------------------------------------
    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Store one vector step; obs and next_obs are (N, K, H, W) stacks, of which one frame is kept."""
        p, n = self.pos, self.num_envs
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        if self.fresh:  # a zero-padded stack is an episode start; other history is unknown (unsampleable)
            first = ~obs[:, :-1].reshape(n, -1).any(axis=1)
            self.fresh = False
        else:
            first = self.prev_done
        self.frames[p] = obs[:, -1]
        self.first[p] = first
        self.actions[p] = actions
        self.rewards[p] = rewards
        self.terminated[p] = terminated
        self.truncated[p] = truncated
        self.side_slot[p] = -1
        for i in np.flatnonzero(truncated & ~terminated):
            self._keep_side_frame(p, i, next_obs[i, -1])
        # The next frame of a step that goes on is the newest frame of the next slot: write it now so
        # this transition is sampleable at once (the next add writes the same frame again).
        going_on = ~(terminated | truncated)
        q = (p + 1) % self.size_per_env
        self.frames[q, going_on] = next_obs[going_on, -1]
        self.first[q, going_on] = False
        self.prev_done = ~going_on
        self.pos = q
        self.full = self.full or q == 0
        if self.store is not None:  # the slots written (p and q) on the device too (side frames: kept there)
            for a, b in [(p, q)] if q == p + 1 else [(p, p), (q, q)]:
                self.store[a * n : (b + 1) * n] = self._on_store_device(self.frames[a : b + 1])

    def _keep_side_frame(self, t: int, env: int, frame: np.ndarray) -> None:
        """The newest frame of truncated transition (t, env)'s next observation, into the ring of side frames."""
        k = self.side_pos
        self.side_frames[k] = frame
        self.side_owner[k] = t * self.num_envs + env
        self.side_slot[t, env] = k
        self.side_pos = (k + 1) % self.side_capacity
        if self.store is not None:
            self.store[self.num_envs * self.size_per_env + k] = self._on_store_device(frame)

    def cut_episodes(self) -> None:
        """ReplayBuffer's cut (a resume that starts fresh episodes): the next frame of each stream's last
        transition, written into the next slot, moves to a side frame, and the next add starts an episode."""
        if len(self) == 0:
            return
        last = (self.pos - 1) % self.size_per_env
        going_on = ~(self.terminated[last] | self.truncated[last])
        for i in np.flatnonzero(going_on):
            self._keep_side_frame(last, i, self.frames[self.pos, i].copy())
        self.truncated[last] |= going_on
        self.prev_done[:] = True

    def _on_store_device(self, frames: np.ndarray) -> torch.Tensor:
        return to_device(frames.reshape(-1, *self.frame_shape), self.store.device)

    # ---- reading ---------------------------------------------------------------------------------
    def _stack_index(self, t: np.ndarray, env: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of each stack position (oldest first) and whether it belongs to obs_t's episode."""
        back = np.arange(self.stack - 1, -1, -1)  # how far back each position lies: K-1, ..., 0
        idx = (t[:, None] - back) % self.size_per_env
        # walking back from t, a position is valid while no later position was an episode start
        starts = self.first[idx, env[:, None]][:, ::-1]  # newest first
        valid_newest_first = np.ones_like(starts)
        valid_newest_first[:, 1:] = np.logical_and.accumulate(~starts[:, :-1], axis=1)
        return idx, valid_newest_first[:, ::-1]

    def _obs_at(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        idx, valid = self._stack_index(t, env)
        out = self.frames[idx, env[:, None]]
        out[~valid] = 0
        return out

    def _window(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        """K+1 frames per transition, gathered in one pass: obs_t is [:, :K], its next obs [:, 1:].

        Both share obs_t's zero padding: a transition that goes on has no episode start at t+1.
        The extra frame is the newest of obs_{t+1}, a truncation's side frame, or, after a
        termination (whose next obs never enters the target), obs_t's own newest frame.
        """
        valid, flat, cut = self._window_slots(t, env)
        out = np.take(self.frames.reshape(-1, *self.frame_shape), flat, axis=0)
        out[:, : self.stack][~valid] = 0
        if cut.any():
            out[cut, self.stack] = self.side_frames[self.side_slot[t[cut], env[cut]]]
        return out

    def _window_slots(self, t: np.ndarray, env: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_window`'s frames as flat slots t * N + env, with which of the K stack positions are
        valid and which transitions were truncated (their last frame is a side frame instead)."""
        k = self.stack
        idx, valid = self._stack_index(t, env)
        slots = np.empty((len(t), k + 1), np.int64)
        slots[:, :k] = idx
        slots[:, k] = np.where(self.terminated[t, env], t, (t + 1) % self.size_per_env)
        cut = self.truncated[t, env] & ~self.terminated[t, env]
        return valid, slots * self.num_envs + env[:, None], cut

    def _window_rows(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        """`_window` as rows of the device store: padding is its zero row, side frames follow the slots."""
        valid, rows, cut = self._window_slots(t, env)
        total = self.size_per_env * self.num_envs
        rows[:, : self.stack][~valid] = total + self.side_capacity  # the zero row
        if cut.any():
            rows[cut, self.stack] = total + self.side_slot[t[cut], env[cut]]
        return rows

    def _next_obs_at(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        return self._window(t, env)[:, 1:]

    def _obs_pair(self, t: np.ndarray, last: np.ndarray, env: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.n_step == 1:  # one-step targets (last is t): obs and next obs come from one window
            window = self._window(t, env)
            return window[:, :-1], window[:, 1:]
        return self._obs_at(t, env), self._next_obs_at(last, env)

    def sampleable(self, t: np.ndarray, env: np.ndarray) -> np.ndarray:
        """A slot is usable when it holds a current transition, every frame of its stack is still in the
        buffer (none overwritten by the write pointer, none from before the first add), and the next
        observation of its (n-step) window exists."""
        size = self.size_per_env
        if self.full:  # slot pos is being overwritten: its frame is already the next one
            ok = t != self.pos
            oldest = (self.pos + 1) % size
        else:
            ok = t < self.pos
            oldest = 0
        _, valid = self._stack_index(t, env)
        depth = valid[:, :-1].sum(axis=1)  # earlier frames the stack needs
        ok &= depth <= (t - oldest) % size
        last = self._n_step(t, env)[3] if self.n_step > 1 else t
        cut = self.truncated[last, env] & ~self.terminated[last, env]
        if cut.any():
            k = self.side_slot[last, env]
            side_ok = (k >= 0) & (self.side_owner[np.maximum(k, 0)] == last * self.num_envs + env)
            ok &= ~cut | side_ok
        return ok

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        n = self.size_per_env if self.full else self.pos
        q = self.pos
        return {
            "frames": self.frames[:n], "first": self.first[:n], "side_slot": self.side_slot[:n],
            "next_frame": self.frames[q], "next_first": self.first[q],
            "side_frames": self.side_frames, "side_owner": self.side_owner, "side_pos": np.array(self.side_pos),
            "prev_done": self.prev_done, "fresh": np.array(self.fresh),
            "actions": self.actions[:n], "rewards": self.rewards[:n], "terminated": self.terminated[:n],
            "truncated": self.truncated[:n], "pos": np.array(self.pos), "full": np.array(self.full),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        n = len(state["actions"])
        for key in ("frames", "first", "side_slot", "actions", "rewards", "terminated", "truncated"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        self.frames[self.pos], self.first[self.pos] = state["next_frame"], state["next_first"]
        self.side_frames[:], self.side_owner[:] = state["side_frames"], state["side_owner"]
        self.side_pos = int(state["side_pos"])
        self.prev_done[:], self.fresh = state["prev_done"], bool(state["fresh"])
        if self.store is not None:
            self._copy_to_store()

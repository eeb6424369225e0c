"""Frame-once replay (dqn_cli/frame_buffer.py): stacks rebuilt at sample time equal the stacks the env
gave, at episode starts, across the write pointer and per vector stream; memory estimate and refusal."""

from __future__ import annotations

import functools
import logging
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dqn_cli.buffers import ReplayBuffer, make_buffer
from dqn_cli.errors import UserError
from dqn_cli.frame_buffer import FrameStackReplay

K, H, W = 4, 6, 5  # small frames: the layout does not depend on their size


class StackedStreams:
    """N synthetic episode streams that stack frames like FrameStackObservation(padding_type="zero").

    Episodes have random lengths and end by termination or truncation; every frame is distinct and
    nonzero, so a frame leaking from another step or episode changes the stack.
    """

    def __init__(self, n: int, rng: np.random.Generator, p_end: float = 0.08):
        self.n, self.rng, self.p_end = n, rng, p_end
        self.stacks = [self._fresh() for _ in range(n)]

    def _frame(self) -> np.ndarray:
        return self.rng.integers(1, 256, (H, W), dtype=np.uint8)

    def _fresh(self) -> deque:
        stack = deque([np.zeros((H, W), np.uint8)] * (K - 1), maxlen=K)
        stack.append(self._frame())
        return stack

    def obs(self) -> np.ndarray:
        return np.stack([np.stack(s) for s in self.stacks])

    def step(self):
        """One vector step: (obs, actions, rewards, real next obs, terminated, truncated)."""
        obs = self.obs()
        end = self.rng.random(self.n) < self.p_end
        terminated = end & (self.rng.random(self.n) < 0.5)
        truncated = end & ~terminated
        real_next = np.empty_like(obs)
        for i, stack in enumerate(self.stacks):
            stack.append(self._frame())
            real_next[i] = np.stack(stack)
            if end[i]:
                self.stacks[i] = self._fresh()  # same-step autoreset: the next obs starts a new episode
        actions = self.rng.integers(0, 6, self.n)
        rewards = self.rng.normal(size=self.n).astype(np.float32)
        return obs, actions, rewards, real_next, terminated, truncated


def fill_both(capacity: int, n: int, steps: int, n_step: int = 1, seed: int = 0, p_end: float = 0.08):
    rng = np.random.default_rng(seed)
    frames = FrameStackReplay(capacity, (K, H, W), np.uint8, n, n_step, 0.9)
    naive = ReplayBuffer(capacity, (K, H, W), np.uint8, n, n_step, 0.9)
    streams = StackedStreams(n, rng, p_end)
    for _ in range(steps):
        step = streams.step()
        frames.add(*step)
        naive.add(*step)
    return frames, naive


def all_slots(buf: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    filled = buf.size_per_env if buf.full else buf.pos
    t, env = np.meshgrid(np.arange(filled), np.arange(buf.num_envs), indexing="ij")
    return t.ravel(), env.ravel()


def assert_same_batches(frames: FrameStackReplay, naive: ReplayBuffer) -> int:
    t, env = all_slots(frames)
    ok = frames.sampleable(t, env)
    t, env = t[ok], env[ok]
    got, want = frames._gather(t, env), naive._gather(t, env)
    np.testing.assert_array_equal(got.obs, want.obs)
    np.testing.assert_array_equal(got.actions, want.actions)
    np.testing.assert_array_equal(got.rewards, want.rewards)
    np.testing.assert_array_equal(got.terminated, want.terminated)
    np.testing.assert_array_equal(got.discounts, want.discounts)
    live = got.terminated == 0  # a terminated transition's next obs never enters the target
    np.testing.assert_array_equal(got.next_obs[live], want.next_obs[live])
    return int(ok.sum())


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_rebuilt_stacks_equal_naive_stacking_across_wraps_and_streams(n_envs, n_step, seed):
    # capacity 60 per stream, 250 steps: the ring wraps four times over episodes of random length
    frames, naive = fill_both(60 * n_envs, n_envs, 250, n_step=n_step, seed=seed)
    usable = assert_same_batches(frames, naive)
    # only the slot under the write pointer and stacks reaching back across it are lost
    assert usable >= (60 - K) * n_envs


def test_one_step_batches_gather_each_stack_once():
    """obs and next obs of a one-step batch are two views of one (K+1)-frame gather per transition."""
    frames, naive = fill_both(200, 2, 150)
    batch = frames.sample(16, np.random.default_rng(0))
    assert np.shares_memory(batch.obs, batch.next_obs)
    assert batch.obs.base is batch.next_obs.base and batch.obs.base.shape == (16, K + 1, H, W)


def test_rebuilt_stacks_before_the_buffer_wraps():
    frames, naive = fill_both(1000, 2, 150)
    assert assert_same_batches(frames, naive) == 300  # every slot, the newest included


def test_episode_start_pads_with_zeros_not_the_previous_episode():
    frames, _ = fill_both(200, 1, 120, p_end=0.2)
    starts = np.flatnonzero(frames.first[: frames.pos, 0])
    assert len(starts) > 5
    obs = frames._obs_at(starts, np.zeros(len(starts), int))
    assert not obs[:, :-1].any() and obs[:, -1].all()
    second = starts[starts + 1 < frames.pos] + 1
    second = second[~frames.first[second, 0]]  # skip one-step episodes
    obs = frames._obs_at(second, np.zeros(len(second), int))
    assert not obs[:, :-2].any() and obs[:, -2:].all()


def test_a_first_add_with_unknown_history_is_not_sampled_until_its_stack_is_stored():
    """A buffer that starts mid-episode (a resumed run without its replay file): the first observation's
    older frames were never stored, so its stack cannot be rebuilt (it is no episode start to pad with
    zeros); the stacks from slot K-1 on reach back only to stored frames."""
    buf = FrameStackReplay(20, (K, H, W), np.uint8)
    frames = [np.full((H, W), v, np.uint8) for v in range(1, 10)]  # distinct nonzero frames

    def stack(t: int) -> np.ndarray:  # obs_t: frames t .. t+K-1, none zero
        return np.stack(frames[t : t + K])[None]

    no = np.zeros(1, bool)
    for t in range(5):
        buf.add(stack(t), np.zeros(1, np.int64), np.ones(1, np.float32), stack(t + 1), no, no)
    env = np.zeros(5, int)
    np.testing.assert_array_equal(buf.sampleable(np.arange(5), env), [False, False, False, True, True])
    batch = buf._gather(np.array([3, 4]), env[:2])
    np.testing.assert_array_equal(batch.obs, np.concatenate([stack(3), stack(4)]))
    np.testing.assert_array_equal(batch.next_obs, np.concatenate([stack(4), stack(5)]))


def test_truncated_next_obs_comes_from_the_side_store_and_evicted_slots_are_skipped():
    frames, naive = fill_both(3000, 1, 2000, p_end=0.3)
    truncated = np.flatnonzero(frames.truncated[: frames.pos, 0] & ~frames.terminated[: frames.pos, 0])
    assert len(truncated) > frames.side_capacity  # more truncations than side frames: the oldest are gone
    env = np.zeros(len(truncated), int)
    ok = frames.sampleable(truncated, env)
    assert ok.sum() == frames.side_capacity and not ok[: len(truncated) - frames.side_capacity].any()
    got, want = frames._next_obs_at(truncated[ok], env[ok]), naive._next_obs_at(truncated[ok], env[ok])
    np.testing.assert_array_equal(got, want)


def add_truncated_episodes(buf: FrameStackReplay, episodes: int, length: int) -> None:
    """`episodes` episodes of `length` steps in one stream, each cut by a time limit (a side frame each).
    Frames: obs of step s of episode e ends with frame 1 + (length * e + s) % 200, its final frame is 255."""
    t = 0
    for _ in range(episodes):
        stack = np.zeros((1, K, H, W), np.uint8)
        for s in range(length):
            end = s == length - 1
            stack[0, -1] = 1 + t % 200
            nxt = np.concatenate([stack[:, 1:], np.full((1, 1, H, W), 255 if end else 1 + (t + 1) % 200, np.uint8)], 1)
            buf.add(stack, np.zeros(1, np.int64), np.ones(1, np.float32), nxt, np.zeros(1, bool), np.array([end]))
            stack, t = nxt, t + 1


def test_n_step_windows_that_end_in_an_evicted_truncation_are_not_sampled():
    """3-step windows bootstrap from the side frame of the truncation that cuts them: once the side ring has
    dropped it, every window ending there is unusable, not only the truncated step's own."""
    buf = FrameStackReplay(1000, (K, H, W), np.uint8, 1, 3, 0.5)
    episodes = buf.side_capacity + 2  # 3-step episodes: the first two episodes' side frames are overwritten
    add_truncated_episodes(buf, episodes, 3)
    ok = buf.sampleable(np.arange(3 * episodes), np.zeros(3 * episodes, int))
    assert not ok[:6].any() and ok[6:].all()
    batch = buf._gather(np.array([6]), np.zeros(1, int))  # episode 2: frames 7, 8, 9, then its final frame
    np.testing.assert_array_equal(batch.obs[0], [np.full((H, W), v, np.uint8) for v in (0, 0, 0, 7)])
    np.testing.assert_array_equal(batch.next_obs[0], [np.full((H, W), v, np.uint8) for v in (7, 8, 9, 255)])
    assert batch.rewards[0] == 1 + 0.5 + 0.25 and batch.discounts[0] == 0.125 and batch.terminated[0] == 0


def test_sample_draws_only_full_transitions():
    frames, _ = fill_both(40, 2, 100)
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = frames.sample(16, rng)
        assert batch.obs.shape == (16, K, H, W) and batch.obs.dtype == np.uint8
        t, env = np.divmod(batch.indices, 2)
        assert frames.sampleable(t, env).all()


def test_state_dict_round_trip_continues_identically():
    a, _ = fill_both(50, 2, 80, seed=3)
    b = FrameStackReplay(50, (K, H, W), np.uint8, 2, 1, 0.9)
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    streams = StackedStreams(2, np.random.default_rng(9))
    for _ in range(30):
        step = streams.step()
        a.add(*step)
        b.add(*step)
    t, env = all_slots(a)
    np.testing.assert_array_equal(a.sampleable(t, env), b.sampleable(t, env))
    ok = a.sampleable(t, env)
    np.testing.assert_array_equal(a._gather(t[ok], env[ok]).obs, b._gather(t[ok], env[ok]).obs)


def test_state_dict_round_trip_keeps_the_newest_transition_and_the_episode_ends():
    """A loaded buffer gives the same batches at once (the newest transition's next frame is saved too) and
    goes on as the saved one: a stream whose episode ended at the last saved step starts a new episode at
    the next add (zero padding), while the other stream's episode goes on."""
    rng = np.random.default_rng(4)
    a = FrameStackReplay(200, (K, H, W), np.uint8, 2, 1, 0.9)
    naive = ReplayBuffer(200, (K, H, W), np.uint8, 2, 1, 0.9)
    streams = StackedStreams(2, rng, p_end=0.3)
    for i in range(60):  # until a step after which exactly one stream starts a new episode
        step = streams.step()
        a.add(*step)
        naive.add(*step)
        if i >= 5 and a.prev_done.sum() == 1:
            break
    assert a.prev_done.sum() == 1
    b = FrameStackReplay(200, (K, H, W), np.uint8, 2, 1, 0.9)
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    assert assert_same_batches(b, naive) == a.pos * 2
    for _ in range(4):
        step = streams.step()
        b.add(*step)
        naive.add(*step)
    assert_same_batches(b, naive)


def test_state_dict_round_trip_keeps_the_side_ring_position():
    """A loaded buffer puts its next truncation's side frame where the saved one would. A bug that restarted
    the side ring at 0 overwrote the first truncation's side frame, still in use, and its slot was lost."""
    a = FrameStackReplay(100, (K, H, W), np.uint8, 1, 1, 0.9)
    add_truncated_episodes(a, 2, 3)
    b = FrameStackReplay(100, (K, H, W), np.uint8, 1, 1, 0.9)
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    assert (a.side_pos, b.side_pos) == (2, 2)
    for buf in (a, b):
        add_truncated_episodes(buf, 1, 3)
    assert a.side_owner[:4].tolist() == [2, 5, 8, -1]  # the flat slots of the three truncated steps
    np.testing.assert_array_equal(b.side_owner, a.side_owner)
    np.testing.assert_array_equal(b.side_frames, a.side_frames)
    assert b.sampleable(np.arange(9), np.zeros(9, int)).all()
    batch_a, batch_b = (buf.sample(32, np.random.default_rng(0)) for buf in (a, b))
    np.testing.assert_array_equal(batch_b.indices, batch_a.indices)
    np.testing.assert_array_equal(batch_b.obs, batch_a.obs)
    np.testing.assert_array_equal(batch_b.next_obs, batch_a.next_obs)


# ---- buffer.storage=device: frame-store rows instead of frame stacks ------------------------------------


def gather_rows(store, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What DQNAgent.step does with Batch.frames: obs = the first K rows' frames, next obs the last K."""
    import torch

    frames = torch.index_select(store, 0, torch.from_numpy(rows).flatten()).view(*rows.shape, H, W).numpy()
    return frames[:, :K], frames[:, -K:]


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_step", [1, 3])
def test_device_store_rows_rebuild_the_naive_stacks(n_envs, n_step):
    """With the frames kept on the device (a CPU tensor here), a batch carries store rows, and gathering
    them gives the naive stacks: episode starts, wraps, streams and truncations' side frames included.
    The store follows every add, also when it is attached half-way."""
    import torch

    frames, naive = fill_both(60 * n_envs, n_envs, 100, n_step=n_step, p_end=0.15)
    store = frames.keep_frames_on(torch.device("cpu"))
    streams = StackedStreams(n_envs, np.random.default_rng(5), p_end=0.15)
    for _ in range(150):  # wraps again, with the store attached
        step = streams.step()
        frames.add(*step)
        naive.add(*step)
    t, env = all_slots(frames)
    ok = frames.sampleable(t, env)
    t, env = t[ok], env[ok]
    got, want = frames._gather(t, env), naive._gather(t, env)
    assert got.obs is None and got.next_obs is None
    assert got.frames.shape == (len(t), K + 1 if n_step == 1 else 2 * K)
    obs, next_obs = gather_rows(store, got.frames)
    np.testing.assert_array_equal(obs, want.obs)
    live = want.terminated == 0
    np.testing.assert_array_equal(next_obs[live], want.next_obs[live])
    np.testing.assert_array_equal(got.rewards, want.rewards)
    cut = frames.truncated[t, env] & ~frames.terminated[t, env]
    assert cut.any() and (got.frames >= frames.size_per_env * n_envs).any()  # side frames and zero padding used


def test_device_store_pads_with_its_zero_row_when_every_side_frame_is_in_use():
    """Padding rows point at the store's zero row, after the side frames: once more truncations than side
    frames have come, the last side frame holds a real frame, which must not leak into padded stacks."""
    import torch

    buf = FrameStackReplay(200, (K, H, W), np.uint8)
    store = buf.keep_frames_on(torch.device("cpu"))
    episodes = buf.side_capacity + 6  # one-step episodes, each truncated: the side ring wraps
    add_truncated_episodes(buf, episodes, 1)
    t = np.arange(episodes)
    ok = buf.sampleable(t, np.zeros(episodes, int))
    assert ok.sum() == buf.side_capacity and ok[6:].all()
    obs, next_obs = gather_rows(store, buf._gather(t[ok], np.zeros(ok.sum(), int)).frames)
    newest = np.broadcast_to((t[ok] + 1)[:, None, None], (ok.sum(), H, W))  # frame 1 + t of episode t
    np.testing.assert_array_equal(obs[:, :-1], 0)  # every observation starts an episode: K-1 padding frames
    np.testing.assert_array_equal(obs[:, -1], newest)
    np.testing.assert_array_equal(next_obs[:, :-2], 0)
    np.testing.assert_array_equal(next_obs[:, -2], newest)
    np.testing.assert_array_equal(next_obs[:, -1], 255)  # the final frame, from the side store


def test_device_store_is_refilled_from_a_loaded_replay_file():
    import torch

    a, _ = fill_both(50, 2, 80, seed=3)
    b = FrameStackReplay(50, (K, H, W), np.uint8, 2, 1, 0.9)
    store = b.keep_frames_on(torch.device("cpu"))
    b._copy_to_store = functools.partial(b._copy_to_store, chunk_bytes=7 * H * W)  # several chunks of 7 rows
    b.load_state_dict({k: np.array(v) for k, v in a.state_dict().items()})
    t, env = all_slots(a)
    ok = a.sampleable(t, env)
    obs, _ = gather_rows(store, b._gather(t[ok], env[ok]).frames)
    np.testing.assert_array_equal(obs, a._gather(t[ok], env[ok]).obs)


def test_device_store_larger_than_free_gpu_memory_is_refused_before_allocation(monkeypatch):
    import torch

    buf = FrameStackReplay(100_000, (K, 84, 84), np.uint8, 4, 1, 0.9)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**28, 2**34))  # 0.25 GiB free
    with pytest.raises(UserError, match=r"buffer.storage=device needs 0.66 GiB of GPU memory .* 0.25 GiB free"):
        buf.keep_frames_on(torch.device("cuda"))
    assert buf.store is None


def test_a_cpu_device_store_counts_both_copies_against_free_memory_and_says_so(monkeypatch, caplog):
    """On the CPU the store is a second copy of every frame in the same memory: a fresh buffer's zeros
    take none yet, so the check counts both copies; a store that fits is built, with a warning."""
    import torch

    import dqn_cli.buffers as buffers

    buf = FrameStackReplay(10_000, (K, 84, 84), np.uint8, 4, 1, 0.9)
    one_copy = buf.estimate_nbytes()
    monkeypatch.setattr(buffers, "available_memory", lambda: int(1.5 * one_copy))  # one copy fits, two do not
    with pytest.raises(
        UserError, match=r"storage=device on the CPU \(every frame twice\) needs .* buffer.storage=host"
    ):
        buf.keep_frames_on(torch.device("cpu"))
    assert buf.store is None
    monkeypatch.setattr(buffers, "available_memory", lambda: 3 * one_copy)
    with caplog.at_level(logging.WARNING, logger="dqn_cli.frame_buffer"):
        store = buf.keep_frames_on(torch.device("cpu"))
    assert store is buf.store and store.device.type == "cpu"
    assert "keeps every frame twice in host memory" in caplog.text


# ---- layout choice, memory ----------------------------------------------------------------------------


def test_make_buffer_picks_frame_once_storage_for_frame_stacks_only():
    cfg = OmegaConf.create({"kind": "uniform", "capacity": 1000})
    assert isinstance(make_buffer(cfg, (4, 84, 84), np.uint8, 1, frame_stacks=True), FrameStackReplay)
    assert type(make_buffer(cfg, (4,), np.float32, 1)) is ReplayBuffer
    # uint8 images that are not stacks of the env's last frames (they share no frames): stored whole
    images = make_buffer(cfg, (3, 4, 4), np.uint8, 1)
    assert type(images) is ReplayBuffer
    rng = np.random.default_rng(0)
    obs, next_obs = rng.integers(0, 256, (2, 1, 3, 4, 4), dtype=np.uint8)
    images.add(obs, np.zeros(1, int), np.zeros(1), next_obs, np.zeros(1, bool), np.zeros(1, bool))
    batch = images.sample(1, rng)
    assert (batch.obs == obs).all() and (batch.next_obs == next_obs).all()
    with pytest.raises(ValueError, match="frame stacks are uint8"):
        make_buffer(cfg, (4, 84, 84), np.float32, 1, frame_stacks=True)


def test_prioritized_replay_samples_from_frame_once_storage():
    cfg = OmegaConf.create({"kind": "prioritized", "capacity": 100, "alpha": 0.6, "beta0": 0.4, "eps": 1e-6})
    buf = make_buffer(cfg, (K, H, W), np.uint8, 2, frame_stacks=True)
    assert isinstance(buf.storage, FrameStackReplay)
    streams = StackedStreams(2, np.random.default_rng(0))
    for _ in range(90):
        buf.add(*streams.step())
    batch = buf.sample(8, np.random.default_rng(0))
    assert batch.obs.shape == (8, K, H, W) and batch.weights is not None
    t, env = np.divmod(batch.indices, 2)
    assert buf.storage.sampleable(t, env).all()


def test_estimate_is_under_7500_bytes_per_transition_at_84x84():
    small = FrameStackReplay(1000, (4, 84, 84), np.uint8, 1)
    assert small.estimate_nbytes() >= 1000 * 84 * 84
    for capacity in (100_000, 1_000_000):  # estimated without allocating
        buf = FrameStackReplay.__new__(FrameStackReplay)
        buf.stack, buf.frame_shape, buf.side_capacity = 4, (84, 84), max(64, capacity // 256)
        buf.size_per_env, buf.num_envs = capacity, 1
        assert 84 * 84 <= buf.estimate_nbytes() / capacity <= 7500


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_measured_memory_per_transition_is_under_7500_bytes():
    n = 20_000  # RSS growth over a fill, as scripts/bench_atari.py measures it
    before = rss_bytes()
    buf = FrameStackReplay(n, (4, 84, 84), np.uint8, 1)
    obs = np.random.default_rng(0).integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)
    zeros = np.zeros(1, bool)
    for _ in range(n):
        buf.add(obs, np.zeros(1, np.int64), np.zeros(1, np.float32), obs, zeros, zeros)
    grown = rss_bytes() - before
    assert grown / n <= 7500, f"{grown / n:.0f} bytes per transition"


def test_a_buffer_larger_than_memory_is_refused_before_allocation():
    with pytest.raises(UserError, match=r"buffer.capacity=1000000000 needs .* GiB but only"):
        FrameStackReplay(10**9, (4, 84, 84), np.uint8, 1)


@pytest.mark.parametrize("store", [False, True], ids=["host", "device store"])
def test_a_cut_starts_the_next_episode_and_keeps_the_old_ones_last_next_obs(store):
    """A resume that starts fresh episodes (ale/async envs: no saved state): the next add is an episode
    start, and the last transition before the stop keeps its next stack. Before, the new game's first stack
    was rebuilt with three frames of the old game and the old game's last next stack ended in the new one."""
    k, shape = 3, (2, 2)

    def stack(*frames):
        return np.stack([np.full(shape, f, np.uint8) for f in frames])[None]  # (1, K, H, W)

    buf = FrameStackReplay(32, (k, *shape), np.uint8, num_envs=1, gamma=0.5)
    if store:
        buf.keep_frames_on(torch.device("cpu"))
    old = [stack(0, 0, 1), stack(0, 1, 2), stack(1, 2, 3), stack(2, 3, 4), stack(3, 4, 5)]
    for obs, next_obs in zip(old[:-1], old[1:], strict=True):
        buf.add(obs, [0], [1.0], next_obs, [False], [False])  # t = 0..3, all going on
    buf.cut_episodes()
    new = [stack(0, 0, 21), stack(0, 21, 22)]
    buf.add(new[0], [1], [1.0], new[1], [False], [False])  # t = 4: the new game's first step
    t, env = np.array([3, 4]), np.zeros(2, np.int64)
    assert buf.sampleable(t, env).all()
    batch, (obs, next_obs) = buf._gather(t, env), buf._obs_pair(t, t, env)
    np.testing.assert_array_equal(obs[:, :, 0, 0], [[2, 3, 4], [0, 0, 21]])
    np.testing.assert_array_equal(next_obs[:, :, 0, 0], [[3, 4, 5], [0, 21, 22]])
    np.testing.assert_array_equal(batch.terminated, [0, 0])
    np.testing.assert_array_equal(batch.discounts, [0.5, 0.5])
    if store:  # the rows an update gathers on the device hold the same frames
        rows = buf.store[torch.from_numpy(buf._window_rows(t, env))][:, :, 0, 0].numpy()
        np.testing.assert_array_equal(rows, [[2, 3, 4, 5], [0, 0, 21, 22]])

"""ReplayBuffer indexing: ring wrap-around, per-env streams, episode ends, n-step windows, memory check."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from dqn_cli import buffers
from dqn_cli.buffers import ReplayBuffer, make_buffer
from dqn_cli.errors import UserError


def fill(buf: ReplayBuffer, steps: int, terminated=(), truncated=(), rewards=None, start: int = 0) -> None:
    """Add `steps` vector steps. Env e at step t sees obs = 100*e + t; next_obs = obs + 1, except that
    an episode end stores a marker final obs (1000 + obs) the way the trainer stores `final_obs`.

    `terminated` / `truncated` are sets of (t, env) pairs; `rewards[t][env]` defaults to 1.
    """
    n = buf.num_envs
    for t in range(start, start + steps):
        obs = np.array([[100.0 * e + t] * buf.obs_shape[0] for e in range(n)], np.float32)
        term = np.array([(t, e) in terminated for e in range(n)])
        trunc = np.array([(t, e) in truncated for e in range(n)])
        next_obs = np.where((term | trunc)[:, None], 1000.0 + obs, obs + 1.0).astype(np.float32)
        r = np.ones(n, np.float32) if rewards is None else np.asarray(rewards[t], np.float32)
        buf.add(obs, np.full(n, t % 2), r, next_obs, term, trunc)


def gather(buf: ReplayBuffer, t, env=0):
    t = np.atleast_1d(np.asarray(t))
    return buf._gather(t, np.full(len(t), env) if np.isscalar(env) else np.asarray(env))


# ---- storage and indexing ----------------------------------------------------------------------------


def test_ring_wraps_around_and_overwrites_the_oldest():
    buf = ReplayBuffer(5, (2,), np.float32)
    fill(buf, 3)
    assert len(buf) == 3 and buf.pos == 3 and not buf.full
    fill(buf, 4, start=3)  # t = 3..6; t=5 and t=6 overwrite slots 0 and 1
    assert len(buf) == 5 and buf.full and buf.pos == 2
    np.testing.assert_array_equal(buf.obs[:, 0, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf.next_obs[:, 0, 0], [6, 7, 3, 4, 5])
    np.testing.assert_array_equal(buf.actions[:, 0], [1, 0, 0, 1, 0])


def test_sample_only_draws_filled_slots():
    buf = ReplayBuffer(100, (1,), np.float32)
    fill(buf, 7)
    batch = buf.sample(500, np.random.default_rng(0))
    assert set(batch.obs[:, 0].tolist()) == set(range(7))
    np.testing.assert_array_equal(batch.next_obs, batch.obs + 1)
    assert batch.weights is None and batch.obs.dtype == np.float32 and batch.actions.dtype == np.int64


def test_a_wrapped_ring_samples_every_slot_it_holds():
    """After the ring wraps, the slots from the write position on hold the older transitions: draws
    cover all 10 slots (a draw only below `pos` would leave 7 of 10 transitions unused)."""
    buf = ReplayBuffer(10, (1,), np.float32)
    fill(buf, 13, rewards=[[float(t)] for t in range(13)])  # steps 10-12 overwrote slots 0-2
    assert buf.full and buf.pos == 3
    batch = buf.sample(2000, np.random.default_rng(0))
    assert set(batch.rewards.tolist()) == {float(t) for t in range(3, 13)}


def test_vector_envs_keep_separate_streams():
    buf = ReplayBuffer(12, (1,), np.float32, num_envs=3)
    assert buf.size_per_env == 4
    fill(buf, 6)  # each env wraps: slots hold t = 4, 5, 2, 3
    assert len(buf) == 12 and buf.pos == 2
    for e in range(3):
        np.testing.assert_array_equal(buf.obs[:, e, 0], 100 * e + np.array([4, 5, 2, 3]))
    batch = gather(buf, [0, 1, 2, 3], env=[2, 0, 1, 2])
    np.testing.assert_array_equal(batch.obs[:, 0], [204, 5, 102, 203])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [205, 6, 103, 204])
    np.testing.assert_array_equal(batch.indices, np.array([0, 1, 2, 3]) * 3 + [2, 0, 1, 2])
    batch = buf.sample(300, np.random.default_rng(1))
    np.testing.assert_array_equal(batch.next_obs, batch.obs + 1)  # never a pair from two streams
    assert set((batch.obs[:, 0] // 100).astype(int).tolist()) == {0, 1, 2}


def test_capacity_not_divisible_by_num_envs_rounds_down():
    buf = ReplayBuffer(10, (1,), np.float32, num_envs=3)
    assert buf.size_per_env == 3
    fill(buf, 5)
    assert len(buf) == 9


def test_episode_ends_keep_final_obs_and_terminated_apart_from_truncated():
    buf = ReplayBuffer(20, (2,), np.float32, num_envs=2)
    fill(buf, 6, terminated={(2, 0)}, truncated={(4, 1)})
    batch = gather(buf, [1, 2, 3], env=0)
    np.testing.assert_array_equal(batch.next_obs[:, 0], [2, 1002, 4])  # final obs of the terminated episode
    np.testing.assert_array_equal(batch.terminated, [0, 1, 0])
    batch = gather(buf, [3, 4, 5], env=1)
    np.testing.assert_array_equal(batch.next_obs[:, 0], [104, 1104, 106])
    np.testing.assert_array_equal(batch.terminated, [0, 0, 0])  # a truncation is not a termination
    assert buf.truncated[4, 1] and not buf.truncated[4, 0] and not buf.terminated[4, 1]
    np.testing.assert_allclose(batch.discounts, [0.99] * 3)


def test_state_dict_round_trip():
    buf = ReplayBuffer(4, (2,), np.float32, num_envs=2)
    fill(buf, 5, terminated={(1, 1)}, truncated={(3, 0)})
    copy = ReplayBuffer(4, (2,), np.float32, num_envs=2)
    copy.load_state_dict(buf.state_dict())
    assert (copy.pos, copy.full, len(copy)) == (buf.pos, buf.full, len(buf))
    for key in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
        np.testing.assert_array_equal(getattr(copy, key), getattr(buf, key), err_msg=key)


# ---- n-step windows ----------------------------------------------------------------------------------

GAMMA = 0.5  # powers of 1/2 are exact in float32
REWARDS = [[1], [2], [4], [8], [16], [32], [64], [128]]


@pytest.fixture
def nstep_buf():
    """t = 0..7 in one env: terminated at t=2, truncated at t=5, t=7 is the newest entry."""
    buf = ReplayBuffer(10, (1,), np.float32, n_step=3, gamma=GAMMA)
    fill(buf, 8, terminated={(2, 0)}, truncated={(5, 0)}, rewards=REWARDS)
    return buf


@pytest.mark.parametrize(
    "t, reward, discount, terminated, last",
    [
        (0, 1 + 0.5 * 2 + 0.25 * 4, 0.125, 1, 2),  # full window ending in a termination: no bootstrap
        (1, 2 + 0.5 * 4, 0.25, 1, 2),  # the termination cuts the window short
        (2, 4, 0.5, 1, 2),
        (3, 8 + 0.5 * 16 + 0.25 * 32, 0.125, 0, 5),  # ends on a truncation: bootstrap from final obs
        (4, 16 + 0.5 * 32, 0.25, 0, 5),  # cut by the truncation, not continued into the next episode
        (5, 32, 0.5, 0, 5),
        (6, 64 + 0.5 * 128, 0.25, 0, 7),  # cut at the newest entry
        (7, 128, 0.5, 0, 7),
    ],
)
def test_n_step_windows(nstep_buf, t, reward, discount, terminated, last):
    batch = gather(nstep_buf, t)
    assert batch.rewards[0] == reward
    assert batch.discounts[0] == discount
    assert batch.terminated[0] == terminated
    assert batch.next_obs[0, 0] == nstep_buf.next_obs[last, 0, 0]
    assert batch.obs[0, 0] == t and batch.actions[0] == t % 2


def test_n_step_bootstrap_obs_after_episode_ends(nstep_buf):
    batch = gather(nstep_buf, [0, 3, 6])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1002, 1005, 8])


def test_a_termination_after_the_window_closed_does_not_mark_it():
    # t=0 goes on, t=1 is cut by the time limit, t=2 is a one-step episode that terminates: the window of
    # t=0 ends at the truncation and bootstraps from its s'; the termination past it belongs to another episode
    buf = ReplayBuffer(10, (1,), np.float32, n_step=3, gamma=GAMMA)
    fill(buf, 4, truncated={(1, 0)}, terminated={(2, 0)}, rewards=REWARDS)
    batch = gather(buf, [0, 1, 2])
    np.testing.assert_array_equal(batch.rewards, [1 + 0.5 * 2, 2, 4])
    np.testing.assert_array_equal(batch.terminated, [0, 0, 1])
    np.testing.assert_array_equal(batch.discounts, [0.25, 0.5, 0.5])


def test_a_cut_closes_each_streams_last_transition_as_a_truncation():
    """A resume that starts fresh episodes: the stored episodes end where the run stopped. Env 0's last step
    went on (its window now stops there, bootstrapped from its stored s'); env 1's had terminated."""
    buf = ReplayBuffer(20, (1,), np.float32, num_envs=2, n_step=3, gamma=GAMMA)
    fill(buf, 4, terminated={(3, 1)}, rewards=[[1, 1], [2, 2], [4, 4], [8, 8]])
    buf.cut_episodes()
    fill(buf, 2, start=10, rewards={10: [16, 16], 11: [32, 32]})  # the new episodes
    assert buf.truncated[3].tolist() == [True, False] and buf.terminated[3].tolist() == [False, True]
    batch = gather(buf, [2, 3])
    np.testing.assert_array_equal(batch.rewards, [4 + 0.5 * 8, 8])  # not on into the new episode's 16
    np.testing.assert_array_equal(batch.discounts, [0.25, 0.5])
    np.testing.assert_array_equal(batch.terminated, [0, 0])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [4, 4])  # the old episode's s' of t=3
    empty = ReplayBuffer(20, (1,), np.float32)
    empty.cut_episodes()  # nothing stored: nothing to cut
    assert not empty.truncated.any()


def test_n_step_window_wraps_around_the_ring_but_stops_at_the_newest():
    buf = ReplayBuffer(4, (1,), np.float32, n_step=3, gamma=GAMMA)
    fill(buf, 6, rewards=REWARDS)  # slots hold t = 4, 5, 2, 3; pos = 2, so slot 1 (t=5) is the newest
    batch = gather(buf, [3, 0, 1, 2])  # t = 3, 4, 5, 2
    np.testing.assert_array_equal(batch.obs[:, 0], [3, 4, 5, 2])
    # t=3 wraps from slot 3 into slots 0 and 1; t=4 must not run on into slot 2 (the oldest, t=2)
    np.testing.assert_array_equal(batch.rewards, [8 + 0.5 * 16 + 0.25 * 32, 16 + 0.5 * 32, 32, 4 + 0.5 * 8 + 0.25 * 16])
    np.testing.assert_array_equal(batch.discounts, [0.125, 0.25, 0.5, 0.125])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [6, 6, 6, 5])
    np.testing.assert_array_equal(batch.terminated, [0, 0, 0, 0])


def test_n_step_windows_stay_in_their_env():
    buf = ReplayBuffer(20, (1,), np.float32, num_envs=2, n_step=3, gamma=GAMMA)
    fill(buf, 5, terminated={(1, 1)}, rewards=[[1, 10], [2, 20], [4, 40], [8, 80], [16, 160]])
    batch = gather(buf, [0, 0, 2, 2], env=[0, 1, 0, 1])
    np.testing.assert_array_equal(batch.rewards, [1 + 1 + 1, 10 + 10, 4 + 4 + 4, 40 + 40 + 40])
    np.testing.assert_array_equal(batch.terminated, [0, 1, 0, 0])
    np.testing.assert_array_equal(batch.discounts, [0.125, 0.25, 0.125, 0.125])
    np.testing.assert_array_equal(batch.next_obs[:, 0], [3, 1101, 5, 105])


def test_one_step_gather_is_the_plain_transition():
    buf = ReplayBuffer(10, (1,), np.float32, gamma=0.9)
    fill(buf, 4, terminated={(1, 0)}, rewards=REWARDS)
    batch = gather(buf, [0, 1, 3])
    np.testing.assert_array_equal(batch.rewards, [1, 2, 8])
    np.testing.assert_array_equal(batch.terminated, [0, 1, 0])
    np.testing.assert_allclose(batch.discounts, [0.9] * 3)
    np.testing.assert_array_equal(batch.next_obs[:, 0], [1, 1001, 4])


# ---- memory ----------------------------------------------------------------------------------------


def test_absurd_capacity_is_refused_before_allocating():
    with pytest.raises(UserError, match=r"buffer\.capacity=10000000000000"):
        ReplayBuffer(10**13, (4, 84, 84), np.uint8)


def test_memory_check_compares_the_estimate_with_available_memory(monkeypatch):
    need = ReplayBuffer(1000, (4, 84, 84), np.uint8).estimate_nbytes()
    assert need == 1000 * (2 * 4 * 84 * 84 + 14)  # obs and next_obs as uint8, plus the scalars
    monkeypatch.setattr(buffers, "available_memory", lambda: need)
    ReplayBuffer(1000, (4, 84, 84), np.uint8)
    monkeypatch.setattr(buffers, "available_memory", lambda: need - 1)
    with pytest.raises(UserError, match=r"buffer\.capacity=1000 needs"):
        ReplayBuffer(1000, (4, 84, 84), np.uint8)


def test_make_buffer_reads_its_group():
    buf = make_buffer(OmegaConf.create({"kind": "uniform", "capacity": 64}), (3,), np.float32, num_envs=2)
    assert buf.size_per_env == 32 and buf.obs.shape == (32, 2, 3)
    with pytest.raises(UserError, match="buffer.kind='reservoir'"):
        make_buffer(OmegaConf.create({"kind": "reservoir", "capacity": 64}), (3,), np.float32, num_envs=1)


@pytest.mark.parametrize("kind", ["uniform", "prioritized"])
def test_sampling_that_finds_no_usable_slot_says_to_raise_the_capacity(kind, monkeypatch):
    """A layout whose slots are all unusable (a case the config check missed) ends the redraws after
    MAX_REDRAWS rounds with the same message for both kinds, instead of looping forever."""
    cfg = OmegaConf.create({"kind": kind, "capacity": 8, "alpha": 0.6, "beta0": 0.4, "eps": 1e-6})
    buf = make_buffer(cfg, (2,), np.float32, num_envs=2)
    for _ in range(3):
        buf.add(np.zeros((2, 2)), np.zeros(2, int), np.ones(2), np.zeros((2, 2)), np.zeros(2, bool), np.zeros(2, bool))
    storage = getattr(buf, "storage", buf)
    calls = []
    monkeypatch.setattr(storage, "sampleable", lambda t, env: calls.append(1) or np.zeros(len(t), bool))
    with pytest.raises(UserError, match=r"no usable transition .* in 1,000 rounds: 4 steps per env .* buffer.capacity"):
        buf.sample(2, np.random.default_rng(0))
    assert len(calls) == buffers.MAX_REDRAWS + 1

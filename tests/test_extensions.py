"""DQN extensions: double-DQN and n-step targets worked by hand, the sum tree's sampling frequencies,
importance weights, the dueling identity, and prioritized replay over vector and pixel storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from dqn_cli.agent import DQNAgent
from dqn_cli.buffers import Batch, ReplayBuffer, make_buffer
from dqn_cli.frame_buffer import FrameStackReplay
from dqn_cli.networks import MLP, DuelingHead, NatureCNN
from dqn_cli.prioritized import PrioritizedReplay, SumTree
from dqn_cli.trainer import Trainer

CPU = torch.device("cpu")


def agent_cfg(**overrides):
    cfg = {"lr": 1e-3, "adam_eps": 1e-8, "loss": "mse", "max_grad_norm": None, "tau": 1.0, "double": False}
    return OmegaConf.create({**cfg, **overrides})


def linear_agent(online_w, target_w, double: bool) -> DQNAgent:
    """An agent whose online net is Q(s) = W s and whose target net is Q-(s) = W- s (no biases)."""
    net = nn.Linear(len(online_w[0]), len(online_w), bias=False)
    agent = DQNAgent(net, len(online_w), agent_cfg(double=double), CPU)
    with torch.no_grad():
        agent.q_net.weight.copy_(torch.tensor(online_w, dtype=torch.float32))
        agent.target_net.weight.copy_(torch.tensor(target_w, dtype=torch.float32))
    return agent


def td_of(agent: DQNAgent, batch: Batch) -> np.ndarray:
    """|y - Q(s, a)| per sample, read from the update (unit weights make the agent record it)."""
    agent.update(batch._replace(weights=np.ones(len(batch.actions), np.float32)))
    return agent.td_abs


# ---- double DQN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("double", [False, True])
def test_double_dqn_target_by_hand(double):
    # online Q(s) = s; target Q-(s) = 10 * (s2, s0, s1): the two nets disagree on the best next action
    agent = linear_agent(np.eye(3), 10 * np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]]), double)
    batch = Batch(
        obs=np.array([[1, 0, 0], [0, 0.5, 0], [0, 0, 2]], np.float32),
        actions=np.array([0, 1, 2]),
        rewards=np.array([1, 0, -1], np.float32),
        next_obs=np.array([[0.2, 0.9, 0.5], [0.7, 0.1, 0.3], [0.1, 0.3, 0.8]], np.float32),
        terminated=np.array([0, 1, 0], np.float32),
        discounts=np.array([0.9, 0.9, 0.81], np.float32),
    )
    q = np.array([1.0, 0.5, 2.0])  # Q(s, a) = s[a]
    # Q-(s') = [5, 2, 9], [3, 7, 1], [8, 1, 3]; the online argmax of s' is 1, 0, 2
    if double:  # target net scores the online net's choice: 2, (terminal), 3
        y = np.array([1 + 0.9 * 2, 0.0, -1 + 0.81 * 3])
    else:  # target net's own max: 9, (terminal), 8
        y = np.array([1 + 0.9 * 9, 0.0, -1 + 0.81 * 8])
    np.testing.assert_allclose(td_of(agent, batch), np.abs(y - q), rtol=1e-5)


# ---- n-step returns ----------------------------------------------------------------------------------


def test_n_step_targets_through_update():
    """3-step targets, gamma 0.5, two env streams; env 0 terminates at t=2 and truncates at t=5."""
    buf = ReplayBuffer(capacity=20, obs_shape=(1,), obs_dtype=np.float32, num_envs=2, n_step=3, gamma=0.5)
    rewards0 = [1, 2, 4, 8, 16, 32, 1, 1]
    for t in range(8):
        obs = np.array([[t], [t]], np.float32)
        # env 0's truncated step stores its real last state (100), not the reset obs of t=6
        next0 = 100.0 if t == 5 else t + 1.0
        buf.add(
            obs,
            np.array([1, 1]),  # Q(s, 1) = 0 below, so |TD| = |y|
            np.array([rewards0[t], 1], np.float32),
            np.array([[next0], [t + 1]], np.float32),
            np.array([t == 2, False]),
            np.array([t == 5, False]),
        )
    t = np.array([0, 1, 3, 4, 6, 7, 0])
    env = np.array([0, 0, 0, 0, 0, 0, 1])
    batch = buf._gather(t, env)
    expected = np.array(
        [
            1 + 0.5 * 2 + 0.25 * 4,  # termination at t=2 inside the window: no bootstrap
            2 + 0.5 * 4,  # the window stops at the termination
            8 + 0.5 * 16 + 0.25 * 32 + 0.125 * 100,  # truncation at t=5: bootstrap from its real s'
            16 + 0.5 * 32 + 0.25 * 100,  # window cut by the truncation: gamma^2
            1 + 0.5 * 1 + 0.25 * 8,  # the newest entry closes the window: bootstrap from s'=8
            1 + 0.5 * 8,  # the newest entry alone: a one-step target
            1 + 0.5 + 0.25 + 0.125 * 3,  # env 1 has no episode end: a full window on its own stream
        ]
    )
    np.testing.assert_allclose(batch.discounts, [0.125, 0.25, 0.125, 0.25, 0.25, 0.5, 0.125])
    np.testing.assert_array_equal(batch.terminated, [1, 1, 0, 0, 0, 0, 0])
    # online and target Q(s) = (s, 0): max_a Q(s') = s'
    agent = linear_agent([[1.0], [0.0]], [[1.0], [0.0]], double=False)
    np.testing.assert_allclose(td_of(agent, batch), expected, rtol=1e-5)


def test_n_step_reaches_the_buffer_from_the_config(small_cfg_factory, run_dir):
    trainer = Trainer(small_cfg_factory("agent.n_step=3", "env.num_envs=2"), run_dir)
    assert trainer.buffer.n_step == 3 and trainer.buffer.num_envs == 2


# ---- sum tree and prioritized sampling -----------------------------------------------------------


def chi_square_p(counts: np.ndarray, priorities: np.ndarray) -> float:
    keep = priorities > 0
    expected = counts.sum() * priorities[keep] / priorities.sum()
    return stats.chisquare(counts[keep], expected).pvalue


def test_sum_tree_sampling_frequencies_match_priorities():
    priorities = np.array([1.0, 2.0, 0.0, 3.0, 4.0, 0.5, 0.0, 6.0, 1.5, 2.0, 5.0])  # 11 leaves: padded to 16
    tree = SumTree(len(priorities))
    tree.set(np.arange(len(priorities)), priorities)
    assert tree.total == pytest.approx(priorities.sum())
    rng = np.random.default_rng(0)
    leaves = tree.find(rng.random(200_000) * tree.total)
    counts = np.bincount(leaves, minlength=tree.n_leaves)
    counts, padding = counts[: len(priorities)], counts[len(priorities) :]
    assert padding.sum() == 0 and counts[priorities == 0].sum() == 0
    assert chi_square_p(counts, priorities) > 0.001


def test_sum_tree_updates_and_rebuild_agree():
    rng = np.random.default_rng(1)
    tree = SumTree(37)
    for _ in range(50):  # batched updates, duplicates included
        idx = rng.integers(0, 37, size=8)
        tree.set(idx, rng.random(8))
    rebuilt = SumTree(37)
    rebuilt.load_leaves(tree.leaves(37))
    np.testing.assert_allclose(rebuilt.nodes, tree.nodes)
    assert tree.total == pytest.approx(tree.leaves(37).sum())


def test_sum_tree_find_on_interval_boundaries():
    """Leaf i holds the masses [c_i, c_i + p_i), c_i the sum of the priorities before it: a mass on a boundary
    goes to the leaf that starts there, and a zero-priority leaf holds none."""
    tree = SumTree(5)  # padded to 8 leaves
    tree.set(np.arange(5), np.array([1.0, 2.0, 0.0, 3.0, 0.5]))
    # leaf 0: [0, 1), leaf 1: [1, 3), leaf 2: empty, leaf 3: [3, 6), leaf 4: [6, 6.5)
    mass = np.array([0.0, 0.999, 1.0, 2.5, 3.0, 5.999, 6.0, 6.25])
    np.testing.assert_array_equal(tree.find(mass), [0, 0, 1, 1, 3, 3, 4, 4])


def filled_prioritized(num_envs=1, steps=10, alpha=1.0, beta0=0.4, obs_shape=(2,), dtype=np.float32, storage=None):
    if storage is None:
        storage = ReplayBuffer(100, obs_shape, dtype, num_envs=num_envs)
    per = PrioritizedReplay(storage, alpha=alpha, beta0=beta0, eps=1e-6)
    for t in range(steps):
        obs = np.full((num_envs, *obs_shape), t, dtype)
        per.add(obs, np.arange(num_envs), np.full(num_envs, t, np.float32), obs, np.zeros(num_envs, bool),
                np.zeros(num_envs, bool))  # fmt: skip
    return per


def test_prioritized_sampling_frequencies_follow_td_errors():
    per = filled_prioritized(steps=10, alpha=0.6)
    td = np.arange(1, 11, dtype=np.float64)
    per.update_priorities(np.arange(10), td)
    rng = np.random.default_rng(0)
    counts = np.zeros(10, int)
    for _ in range(2000):
        counts += np.bincount(per.sample(32, rng).indices, minlength=10)
    assert chi_square_p(counts, (td + 1e-6) ** 0.6) > 0.001


def test_prioritized_sampling_is_stratified():
    """One draw from each of batch_size equal slices of the priority mass (as in Schaul et al.): with equal
    priorities a batch of 10 from 10 slots holds each slot once, and a batch of 5 one from each pair."""
    per = filled_prioritized(steps=10, alpha=0.6)
    per.update_priorities(np.arange(10), np.ones(10))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert sorted(per.sample(10, rng).indices.tolist()) == list(range(10))
        assert (np.sort(per.sample(5, rng).indices) // 2).tolist() == [0, 1, 2, 3, 4]


def test_importance_weights_and_beta_annealing():
    per = filled_prioritized(steps=8, alpha=0.5, beta0=0.4)
    td = np.array([0.5, 1, 2, 4, 8, 0.1, 3, 1])
    per.update_priorities(np.arange(8), td)
    per.set_progress(0.5)
    assert per.beta == pytest.approx(0.7)
    batch = per.sample(16, np.random.default_rng(3))
    p_alpha = (td + 1e-6) ** 0.5
    probs = p_alpha[batch.indices] / p_alpha.sum()
    w = (8 * probs) ** -0.7
    np.testing.assert_allclose(batch.weights, w / w.max(), rtol=1e-5)
    assert batch.weights.dtype == np.float32 and batch.weights.max() == pytest.approx(1.0)
    per.set_progress(0.0)
    assert per.beta == pytest.approx(0.4)
    per.set_progress(1.5)
    assert per.beta == 1.0


def test_new_transitions_get_the_max_priority():
    per = filled_prioritized(steps=4, alpha=1.0)
    per.update_priorities(np.array([0, 1]), np.array([5.0, 0.2]))
    per.add(np.zeros((1, 2)), np.array([0]), np.zeros(1), np.zeros((1, 2)), np.zeros(1, bool), np.zeros(1, bool))
    assert per.tree.get(np.array([4]))[0] == pytest.approx(5.0 + 1e-6)


def add_one(per: PrioritizedReplay) -> None:
    per.add(np.zeros((1, 2)), np.array([0]), np.zeros(1), np.zeros((1, 2)), np.zeros(1, bool), np.zeros(1, bool))


def test_new_transitions_get_the_largest_priority_seen_raised_to_alpha():
    """The max priority is the largest |TD| + eps of all updates so far, not of the last one, and a new slot's
    leaf holds it to the power alpha, like every other leaf."""
    per = filled_prioritized(steps=4, alpha=0.5)
    per.update_priorities(np.array([0]), np.array([4.0]))
    per.update_priorities(np.array([1]), np.array([0.25]))  # a later, smaller update
    add_one(per)
    assert per.max_priority == pytest.approx(4.0 + 1e-6, rel=1e-12)
    np.testing.assert_allclose(per.tree.get(np.array([0, 1, 4])), [2.0, 0.5, 2.0], rtol=1e-5)  # (4 + eps)^0.5, ...


def test_a_zero_td_error_keeps_a_priority_of_eps():
    """p = |TD| + eps: a transition the net already fits keeps eps^alpha > 0, so it can still be drawn; a negative
    TD error counts by its size."""
    per = filled_prioritized(steps=4, alpha=0.5)
    per.update_priorities(np.arange(4), np.array([0.0, -4.0, 0.0, 0.0]))
    np.testing.assert_allclose(per.tree.get(np.arange(4)), [1e-3, 2.0, 1e-3, 1e-3], rtol=1e-5)  # (1e-6)^0.5 = 1e-3


class AlmostOne:
    """A generator stand-in whose every uniform draw is the largest float below 1."""

    def random(self, size: int) -> np.ndarray:
        return np.full(size, np.nextafter(1.0, 0.0))


def test_a_draw_rounded_onto_an_empty_leaf_is_redrawn():
    """One transition in a 4-slot buffer: total priority 1. The last of 3 stratified draws, (2 + r) / 3 with r
    the largest float below 1, rounds to exactly 1.0; that mass walks the tree past the filled leaf onto an
    empty one, which sample must redraw, never gather."""
    per = PrioritizedReplay(ReplayBuffer(4, (2,), np.float32), alpha=1.0)
    per.add(np.full((1, 2), 5.0), np.array([1]), np.ones(1), np.full((1, 2), 6.0), np.zeros(1, bool), np.zeros(1, bool))
    assert per.tree.total == 1.0 and per.tree.find(np.array([1.0]))[0] == 3  # mass == total: the empty leaf 3
    batch = per.sample(3, AlmostOne())
    np.testing.assert_array_equal(batch.indices, [0, 0, 0])
    np.testing.assert_array_equal(batch.obs, np.full((3, 2), 5.0))


def test_prioritized_skips_slots_the_storage_cannot_use():
    class EvenSlotsOnly(ReplayBuffer):  # stands in for a frame-once layout's unusable slots
        def sampleable(self, t, env):
            return t % 2 == 0

    per = filled_prioritized(steps=10, storage=EvenSlotsOnly(100, (2,), np.float32))
    per.update_priorities(np.arange(10), np.where(np.arange(10) % 2, 50.0, 1.0))  # odd slots dominate
    rng = np.random.default_rng(0)
    indices = np.concatenate([per.sample(64, rng).indices for _ in range(50)])
    assert (indices % 2 == 0).all()
    # redraws come from the whole priority mass: among the usable slots P(i) stays proportional to p_i,
    # here equal for the five even slots
    assert chi_square_p(np.bincount(indices, minlength=10)[::2], np.ones(5)) > 0.001


def test_prioritized_vector_envs():
    per = filled_prioritized(num_envs=2, steps=6, obs_shape=(3,))
    assert len(per) == 12 and per.num_envs == 2
    # make one slot (t=4, env=1 -> index 9) dominate
    per.update_priorities(np.arange(12), np.where(np.arange(12) == 9, 100.0, 1e-3))
    batch = per.sample(32, np.random.default_rng(0))
    assert (batch.indices == 9).mean() > 0.9
    t, env = np.divmod(batch.indices, 2)
    np.testing.assert_array_equal(batch.obs[:, 0], t)  # obs and actions come from the sampled slot
    np.testing.assert_array_equal(batch.actions, env)
    # the sum tree travels with the buffer's state dict
    again = PrioritizedReplay(ReplayBuffer(100, (3,), np.float32, num_envs=2))
    again.load_state_dict(per.state_dict())
    np.testing.assert_allclose(again.tree.nodes, per.tree.nodes)
    assert again.max_priority == per.max_priority and again.pos == per.pos


def test_prioritized_pixels_with_dueling_double_cnn():
    shape = (4, 84, 84)
    per = filled_prioritized(num_envs=2, steps=20, obs_shape=shape, dtype=np.uint8)
    batch = per.sample(8, np.random.default_rng(0))
    assert batch.obs.dtype == np.uint8 and batch.obs.shape == (8, *shape) and batch.weights.shape == (8,)
    agent = DQNAgent(NatureCNN(shape, 3, hidden=32, dueling=True), 3, agent_cfg(double=True), CPU)
    metrics = agent.update(batch)
    assert np.isfinite(metrics["td_loss"]) and agent.td_abs.shape == (8,)
    per.update_priorities(batch.indices, agent.td_abs)
    np.testing.assert_allclose(per.tree.get(batch.indices), agent.td_abs + 1e-6, rtol=1e-6)


class FrameStream:
    """Stacked-frame observations like FrameStackObservation(4, padding_type="zero") over frames
    filled with one value each; env 0 terminates every 7 steps, env 1 truncates every 9."""

    def __init__(self, num_envs: int, shape=(4, 84, 84)):
        self.n, self.shape, self.t = num_envs, shape, 0
        self.obs = np.stack([self.reset_stack(i) for i in range(num_envs)])

    def frame(self, i: int, shift: int = 0) -> np.ndarray:
        return np.full(self.shape[1:], (7 * self.t + 3 * i + shift) % 250 + 1, np.uint8)

    def reset_stack(self, i: int) -> np.ndarray:
        stack = np.zeros(self.shape, np.uint8)
        stack[-1] = self.frame(i, shift=100)  # the next episode starts with a frame of its own
        return stack

    def step(self):
        """(obs, actions, rewards, real next_obs, terminated, truncated); obs moves on."""
        self.t += 1
        real_next = np.concatenate([self.obs[:, 1:], np.stack([self.frame(i) for i in range(self.n)])[:, None]], 1)
        terminated = np.array([self.t % 7 == 0, False][: self.n])
        truncated = np.array([False, self.t % 9 == 0][: self.n])
        out = (self.obs, np.full(self.n, self.t % 3), np.ones(self.n, np.float32), real_next, terminated, truncated)
        self.obs = real_next.copy()
        for i in np.flatnonzero(terminated | truncated):
            self.obs[i] = self.reset_stack(i)
        return out


@pytest.mark.parametrize("layout", ["obs_and_next_obs", "frame_once"])
def test_prioritized_pixels_on_both_storage_layouts(layout):
    """uint8 (4, 84, 84) stacks, two env streams, the ring wrapped: prioritized batches hold the stored
    transitions and never a slot the storage calls unusable."""
    shape, num_envs = (4, 84, 84), 2
    if layout == "frame_once":
        storage = FrameStackReplay(64, shape, np.uint8, num_envs)
    else:
        storage = ReplayBuffer(64, shape, np.uint8, num_envs)
    per = PrioritizedReplay(storage, alpha=0.6, beta0=0.4)
    stream, truth = FrameStream(num_envs, shape), {}
    for _ in range(45):  # 32 slots per env: wraps
        obs, actions, rewards, next_obs, terminated, truncated = stream.step()
        for i in range(num_envs):
            truth[per.pos * num_envs + i] = (obs[i].copy(), actions[i], next_obs[i].copy(), terminated[i])
        per.add(obs, actions, rewards, next_obs, terminated, truncated)
    rng = np.random.default_rng(0)
    per.update_priorities(np.arange(64), rng.random(64) * 10)
    seen = set()
    for _ in range(50):
        batch = per.sample(16, rng)
        t, env = np.divmod(batch.indices, num_envs)
        assert storage.sampleable(t, env).all()
        for k, idx in enumerate(batch.indices):
            obs, action, next_obs, terminated = truth[idx]
            np.testing.assert_array_equal(batch.obs[k], obs)
            assert batch.actions[k] == action
            if not terminated:  # a terminal next obs never enters the target
                np.testing.assert_array_equal(batch.next_obs[k], next_obs)
        seen.update(batch.indices.tolist())
        per.update_priorities(batch.indices, rng.random(16))
    assert len(seen) > 40  # most of the 64 slots came up


def test_make_buffer_prioritized():
    cfg = OmegaConf.create({"kind": "prioritized", "capacity": 64, "alpha": 0.6, "beta0": 0.4, "eps": 1e-6})
    buf = make_buffer(cfg, (4,), np.float32, num_envs=2, n_step=3, gamma=0.9)
    assert isinstance(buf, PrioritizedReplay) and buf.alpha == 0.6
    assert buf.n_step == 3 and buf.gamma == 0.9 and buf.tree.capacity == 64


# ---- dueling ----------------------------------------------------------------------------------------


def dueling_parts(net: nn.Module, obs: torch.Tensor):
    """(Q, V, A) of a dueling net, with the head's input captured by a hook."""
    head = next(m for m in net.modules() if isinstance(m, DuelingHead))
    seen = {}
    handle = head.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    q = net(obs)
    handle.remove()
    return q, head.value(seen["x"]), head.advantage(seen["x"])


@pytest.mark.parametrize(
    "net, obs",
    [
        (MLP(4, 3, [16, 16], dueling=True), torch.randn(5, 4)),
        (NatureCNN((4, 84, 84), 6, hidden=32, dueling=True), torch.randint(0, 255, (2, 4, 84, 84), dtype=torch.uint8)),
    ],
    ids=["mlp", "nature_cnn"],
)
def test_dueling_shapes_and_mean_advantage_identity(net, obs):
    torch.manual_seed(0)
    with torch.no_grad():
        q, v, a = dueling_parts(net, obs)
    n_actions = a.shape[1]
    assert q.shape == (len(obs), n_actions) and v.shape == (len(obs), 1)
    # Q = V + A - mean A, so the mean over actions of Q is V and Q - V has zero mean
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q, v + a - a.mean(dim=1, keepdim=True))
    assert torch.equal(q.argmax(dim=1), a.argmax(dim=1))


def test_numpy_policy_of_diverged_weights_warns_nothing():
    """Overflowing weights (a diverging run) must not print numpy RuntimeWarnings at every step: the
    trainer's NaN guard reports the divergence once."""
    import warnings

    from dqn_cli.networks import MLP

    net = MLP(4, 2, [8], "relu", False)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(3e38)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.numpy_policy()(np.ones((3, 4), np.float32))


def test_dueling_mlp_numpy_policy_matches_torch():
    net = MLP(4, 5, [32], dueling=True)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(obs)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(net.numpy_policy()(obs), expected)


def test_numpy_policy_refuses_an_mlp_with_a_layer_it_would_skip():
    # the numpy copy mirrors Linear + activation pairs; a layer added to the MLP must not vanish from acting
    net = MLP(4, 5, [32, 32])
    net.layers.insert(1, torch.nn.LayerNorm(32))
    with pytest.raises(TypeError, match="numpy_policy mirrors Linear"):
        net.numpy_policy()


# ---- all switches at once ---------------------------------------------------------------------------


def test_all_extensions_train_together(small_cfg_factory, run_dir):
    cfg = small_cfg_factory(
        "buffer=prioritized", "buffer.capacity=500", "agent.double=true", "agent.n_step=3",
        "network.dueling=true", "env.num_envs=2",
    )  # fmt: skip
    trainer = Trainer(cfg, run_dir)
    assert isinstance(trainer.buffer, PrioritizedReplay)
    trainer.run()
    assert trainer.updates > 0
    assert trainer.buffer.beta > trainer.buffer.beta0  # annealed with the step count
    priorities = trainer.buffer.tree.leaves(len(trainer.buffer))
    assert len(np.unique(priorities)) > 2  # TD errors replaced the initial max priority


# ---- the Nature CNN -----------------------------------------------------------------------------------


def test_nature_cnn_has_the_papers_three_convs_and_512_unit_layer():
    net = NatureCNN((4, 84, 84), 6)
    convs = [m for m in net.conv if isinstance(m, nn.Conv2d)]
    assert [(tuple(c.weight.shape), c.stride) for c in convs] == [
        ((32, 4, 8, 8), (4, 4)),
        ((64, 32, 4, 4), (2, 2)),
        ((64, 64, 3, 3), (1, 1)),
    ]
    assert sum(isinstance(m, nn.ReLU) for m in net.conv) == 3
    # 84 -> (84 - 8) / 4 + 1 = 20 -> (20 - 4) / 2 + 1 = 9 -> 9 - 3 + 1 = 7: 64 * 7 * 7 = 3136 features
    assert [type(m) for m in net.head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert tuple(net.head[0].weight.shape) == (512, 3136) and tuple(net.head[2].weight.shape) == (6, 512)


def test_nature_cnn_scales_uint8_frames_to_0_1_once():
    torch.manual_seed(0)
    net = NatureCNN((4, 36, 36), 3, hidden=16)
    frames = torch.randint(0, 256, (2, 4, 36, 36), dtype=torch.uint8)
    with torch.no_grad():
        white = net(torch.full((1, 4, 36, 36), 255, dtype=torch.uint8))
        torch.testing.assert_close(white, net.head(net.conv(torch.ones(1, 4, 36, 36))))  # 255 / 255 = 1
        torch.testing.assert_close(net(frames), net.head(net.conv(frames.double().div(255).float())))


def test_make_network_reads_the_cnns_hidden_size_and_dueling():
    from dqn_cli.networks import make_network

    cfg = OmegaConf.create({"name": "nature_cnn", "hidden": 64, "dueling": True})
    net = make_network(cfg, (4, 84, 84), 5)
    assert isinstance(net.head, DuelingHead)
    assert [tuple(m.weight.shape) for m in net.head.value if isinstance(m, nn.Linear)] == [(64, 3136), (1, 64)]
    assert [tuple(m.weight.shape) for m in net.head.advantage if isinstance(m, nn.Linear)] == [(64, 3136), (5, 64)]

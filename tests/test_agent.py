"""DQNAgent: exact TD targets and losses on hand-made batches, target-network sync, epsilon-greedy acting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dqn_cli.agent import DQNAgent, make_agent, update_fields
from dqn_cli.buffers import Batch, ReplayBuffer
from dqn_cli.networks import MLP

CPU = torch.device("cpu")


def agent_cfg(**overrides):
    base = dict(gamma=0.99, lr=1e-3, adam_eps=1e-8, loss="huber", max_grad_norm=None, tau=1.0)
    return OmegaConf.create({**base, **overrides})


def linear_agent(online_w, target_w, **cfg) -> DQNAgent:
    """An agent whose Q-networks are single linear layers Q(s) = W s with weights set by hand."""
    agent = DQNAgent(MLP(2, 2, hidden_sizes=[]), 2, agent_cfg(**cfg), CPU)
    with torch.no_grad():
        for net, w in ((agent.q_net, online_w), (agent.target_net, target_w)):
            (layer,) = net.layers
            layer.weight.copy_(torch.tensor(w, dtype=torch.float32))
            layer.bias.zero_()
    return agent


def f32(*rows):
    return np.array(rows, np.float32)


# Online Q(s) = s, target Q(s) = 2 s, so every number below can be checked by hand.
BATCH = Batch(
    obs=f32([0.5, -1.0], [2.0, 0.0], [0.0, 0.0]),
    actions=np.array([0, 1, 1]),
    rewards=f32(1.0, 2.12, 2.0),
    next_obs=f32([1.0, 3.0], [-2.0, -1.0], [4.0, 5.0]),
    terminated=f32(0.0, 0.0, 1.0),
    discounts=f32(0.9, 0.81, 0.9),  # a 1-step, a 2-step and a 1-step transition
)
# Q(s, a) = [0.5, 0.0, 0.0]; target max_a Q(s') = [6, -2, 10]; the third row is terminal, so its 10 is masked:
# y = [1 + 0.9*6, 2.12 + 0.81*(-2), 2] = [6.4, 0.5, 2.0]; q - y = [-5.9, -0.5, -2.0]
EXPECTED = {
    "mse": (5.9**2 + 0.5**2 + 2.0**2) / 3,
    "huber": ((5.9 - 0.5) + 0.5 * 0.5**2 + (2.0 - 0.5)) / 3,  # |e| - 1/2 above 1, e^2 / 2 below
}


@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_td_loss_on_a_hand_made_batch(loss):
    agent = linear_agent(np.eye(2), 2 * np.eye(2), loss=loss)
    metrics = agent.update(BATCH)
    assert metrics["td_loss"] == pytest.approx(EXPECTED[loss], rel=1e-6)
    assert metrics["q_values"] == pytest.approx(0.5 / 3, rel=1e-6)


@pytest.mark.parametrize("double, expected", [(False, EXPECTED["mse"]), (True, (2.3**2 + 1.12**2 + 2.0**2) / 3)])
def test_double_dqn_target_on_a_hand_made_batch(double, expected):
    # target Q(s) = 2 * (s1, s0): its own max over s' is [6, -2, 10] as above, but the online net
    # (Q = s) picks action 1 at every s', which the target scores [2, -4, 8]:
    # y = [1 + 0.9*2, 2.12 + 0.81*(-4), 2] = [2.8, -1.12, 2.0]; q - y = [-2.3, 1.12, -2.0]
    agent = linear_agent(np.eye(2), [[0.0, 2.0], [2.0, 0.0]], loss="mse", double=double)
    assert agent.update(BATCH)["td_loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("double", [False, True], ids=["dqn", "double"])
def test_an_update_uses_the_target_values_computed_ahead(double):
    """`learn(batch, target_q)` takes Q(s', .; theta-) as given (batched_targets): the same loss as the
    agent's own target pass when it is that, and a hand-set one moves the target as it should."""
    target_w = [[0.0, 2.0], [2.0, 0.0]] if double else 2 * np.eye(2)
    agent = linear_agent(np.eye(2), target_w, loss="mse", double=double)
    ahead = agent.target_values(BATCH)
    torch.testing.assert_close(ahead, torch.as_tensor(BATCH.next_obs) @ torch.tensor(target_w, dtype=torch.float32).T)
    expected = (2.3**2 + 1.12**2 + 2.0**2) / 3 if double else EXPECTED["mse"]
    assert agent.learn(BATCH, ahead)["td_loss"].item() == pytest.approx(expected, rel=1e-6)
    # target Q(s') = 0 for every action: y = r (the third row is terminal anyway), q - y = [-0.5, -2.12, -2]
    agent = linear_agent(np.eye(2), target_w, loss="mse", double=double)
    zeros = torch.zeros(3, 2)
    assert agent.learn(BATCH, zeros)["td_loss"].item() == pytest.approx((0.5**2 + 2.12**2 + 2.0**2) / 3, rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3, 64])
def test_target_values_in_passes_of_chunk_rows_score_every_row(chunk):
    """Passes of `chunk` rows cover the whole batch, a last pass of a single row included (3 rows, chunk 2)."""
    agent = linear_agent(np.eye(2), 2 * np.eye(2))
    # target Q(s') = 2 s': [[2, 6], [-4, -2], [8, 10]]
    np.testing.assert_array_equal(agent.target_values(BATCH, chunk=chunk).numpy(), [[2, 6], [-4, -2], [8, 10]])


def test_gradient_is_that_of_the_loss_against_the_fixed_target():
    agent = linear_agent(np.eye(2), 2 * np.eye(2), loss="mse")
    agent.update(BATCH)
    # d/dW of mean((W[a] s - y)^2): row a collects 2/3 * (q - y) * s from each sample that took a
    expected = np.zeros((2, 2))
    for s, a, err in zip(BATCH.obs, BATCH.actions, [-5.9, -0.5, -2.0], strict=True):
        expected[a] += 2 / 3 * err * s
    (layer,) = agent.q_net.layers
    np.testing.assert_allclose(layer.weight.grad.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(layer.bias.grad.numpy(), [2 / 3 * -5.9, 2 / 3 * (-0.5 - 2.0)], rtol=1e-5)


def _random_batch(rng, n, obs_dim, n_actions):
    return Batch(
        obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
        actions=rng.integers(0, n_actions, n),
        rewards=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
        terminated=(rng.random(n) < 0.3).astype(np.float32),
        discounts=rng.choice([0.99, 0.99**2, 0.99**3], n).astype(np.float32),
    )


@pytest.mark.parametrize(
    "loss, torch_loss", [("huber", torch.nn.functional.smooth_l1_loss), ("mse", torch.nn.functional.mse_loss)]
)
def test_update_matches_a_manual_torch_computation(loss, torch_loss):
    torch.manual_seed(0)
    agent = DQNAgent(MLP(4, 3, [8, 8]), 3, agent_cfg(loss=loss, lr=1e-2), CPU)
    with torch.no_grad():  # make the target net differ from the online net
        for p in agent.target_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = _random_batch(np.random.default_rng(0), 32, 4, 3)
    online = [p.detach().clone() for p in agent.q_net.parameters()]
    target_before = [p.detach().clone() for p in agent.target_net.parameters()]

    b = {k: torch.as_tensor(v) for k, v in batch._asdict().items() if v is not None}
    with torch.no_grad():
        y = b["rewards"] + b["discounts"] * (1 - b["terminated"]) * agent.target_net(b["next_obs"]).max(1).values
        q = agent.q_net(b["obs"])[torch.arange(32), b["actions"]]
        expected_loss = torch_loss(q, y).item()
    metrics = agent.update(batch)

    assert metrics["td_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["q_values"] == pytest.approx(q.mean().item(), rel=1e-5, abs=1e-7)
    # the online net took a step, the target net did not move
    assert any(not torch.equal(p, p0) for p, p0 in zip(agent.q_net.parameters(), online, strict=True))
    assert all(torch.equal(p, p0) for p, p0 in zip(agent.target_net.parameters(), target_before, strict=True))
    assert not any(p.requires_grad for p in agent.target_net.parameters())


def test_gradient_clipping_bounds_the_global_norm():
    agent = DQNAgent(MLP(4, 3, [8]), 3, agent_cfg(loss="mse", max_grad_norm=0.01), CPU)
    batch = _random_batch(np.random.default_rng(1), 32, 4, 3)
    agent.update(batch._replace(rewards=batch.rewards * 100))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in agent.q_net.parameters()]))
    assert norm.item() == pytest.approx(0.01, rel=1e-4)


def test_prioritized_weights_scale_the_per_sample_loss():
    agent = linear_agent(np.eye(2), 2 * np.eye(2), loss="mse")
    metrics = agent.update(BATCH._replace(weights=f32(1.0, 0.0, 0.5)))
    assert metrics["td_loss"] == pytest.approx((5.9**2 + 0.5 * 2.0**2) / 3, rel=1e-6)
    np.testing.assert_allclose(agent.td_abs, [5.9, 0.5, 2.0], rtol=1e-6)


# ---- target sync ----------------------------------------------------------------------------------------


def _perturb(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))


def test_hard_sync_copies_the_online_net():
    torch.manual_seed(0)
    agent = DQNAgent(MLP(4, 2, [8]), 2, agent_cfg(tau=1.0), CPU)
    _perturb(agent.q_net)
    assert not all(
        torch.equal(t, o) for t, o in zip(agent.target_net.parameters(), agent.q_net.parameters(), strict=True)
    )
    agent.sync_target()
    for t, o in zip(agent.target_net.parameters(), agent.q_net.parameters(), strict=True):
        assert torch.equal(t, o) and t.data_ptr() != o.data_ptr()
    _perturb(agent.q_net)  # a copy, not an alias
    assert not torch.equal(next(agent.target_net.parameters()), next(agent.q_net.parameters()))


def test_polyak_sync_moves_tau_of_the_way():
    torch.manual_seed(0)
    agent = DQNAgent(MLP(4, 2, [8]), 2, agent_cfg(tau=0.25), CPU)
    _perturb(agent.q_net)
    old = [p.detach().clone() for p in agent.target_net.parameters()]
    agent.sync_target()
    for t, o, old_t in zip(agent.target_net.parameters(), agent.q_net.parameters(), old, strict=True):
        torch.testing.assert_close(t, 0.75 * old_t + 0.25 * o)


# ---- acting -------------------------------------------------------------------------------------------


@pytest.fixture
def mlp_agent(small_cfg):
    torch.manual_seed(0)
    return make_agent(small_cfg, (4,), 3, CPU)


@pytest.mark.parametrize("dueling", [False, True], ids=["plain", "dueling"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
def test_numpy_and_torch_greedy_paths_agree(small_cfg, activation, dueling):
    small_cfg.network.activation = activation
    OmegaConf.update(small_cfg, "network.dueling", dueling, force_add=True)
    torch.manual_seed(0)
    agent = make_agent(small_cfg, (4,), 3, CPU)
    assert agent._greedy_numpy is not None  # the CPU fast path is in use
    obs = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    with torch.no_grad():
        expected = agent.q_net(torch.from_numpy(obs)).argmax(1).numpy()
    np.testing.assert_array_equal(agent.act(obs, 0.0, np.random.default_rng(0)), expected)
    agent._greedy_numpy = None  # the torch path
    np.testing.assert_array_equal(agent.act(obs, 0.0, np.random.default_rng(0)), expected)


def test_an_mlp_over_frames_scales_the_bytes_to_0_1_on_both_greedy_paths(small_cfg):
    """As nature_cnn (and SB3's MlpPolicy on image spaces): raw 0..255 inputs gave a badly scaled baseline."""
    from dqn_cli.networks import make_network

    torch.manual_seed(0)
    net = make_network(small_cfg.network, (2, 3, 3), 4)
    frames = np.random.default_rng(0).integers(0, 256, size=(50, 2, 3, 3), dtype=np.uint8)
    with torch.no_grad():
        q = net(torch.from_numpy(frames))
        torch.testing.assert_close(q, net.layers(torch.from_numpy(frames).flatten(1).float() / 255))
    np.testing.assert_array_equal(net.numpy_policy()(frames), q.argmax(1).numpy())
    floats = torch.from_numpy(frames).float()  # float observations (vectors, or images already scaled) stay
    with torch.no_grad():
        torch.testing.assert_close(net(floats), net.layers(floats.flatten(1)))
    np.testing.assert_array_equal(net.numpy_policy()(floats.numpy()), net(floats).argmax(1).numpy())


def test_dueling_head_combines_value_and_centred_advantage():
    torch.manual_seed(0)
    net = MLP(4, 3, [8], dueling=True)
    head = net.layers[-1]
    x = torch.randn(5, 4)
    with torch.no_grad():
        features = net.layers[:-1](x)
        value, adv = head.value(features), head.advantage(features)
        torch.testing.assert_close(net(x), value + adv - adv.mean(1, keepdim=True))
        assert net(x).shape == (5, 3)


def test_numpy_path_sees_weight_updates(mlp_agent):
    obs = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    _perturb(mlp_agent.q_net)
    with torch.no_grad():
        expected = mlp_agent.q_net(torch.from_numpy(obs)).argmax(1).numpy()
    np.testing.assert_array_equal(mlp_agent.greedy(obs), expected)
    # after an optimizer step too
    buf = ReplayBuffer(64, (4,), np.float32)
    for _ in range(64):
        buf.add(obs[:1], [1], [1.0], obs[1:2], [False], [False])
    mlp_agent.update(buf.sample(32, np.random.default_rng(0)))
    with torch.no_grad():
        expected = mlp_agent.q_net(torch.from_numpy(obs)).argmax(1).numpy()
    np.testing.assert_array_equal(mlp_agent.greedy(obs), expected)


def test_epsilon_one_is_uniform_random(mlp_agent):
    obs = np.zeros((6000, 4), np.float32)  # one state: greedy would pick the same action every time
    actions = mlp_agent.act(obs, 1.0, np.random.default_rng(0))
    assert actions.min() >= 0 and actions.max() < 3
    counts = np.bincount(actions, minlength=3)
    np.testing.assert_allclose(counts / len(obs), 1 / 3, atol=0.03)


def test_epsilon_mixes_greedy_and_random(mlp_agent):
    obs = np.zeros((6000, 4), np.float32)
    greedy = mlp_agent.greedy(obs[:1])[0]
    actions = mlp_agent.act(obs, 0.3, np.random.default_rng(0))
    # P(greedy action) = 1 - eps + eps / n_actions
    assert np.mean(actions == greedy) == pytest.approx(0.7 + 0.1, abs=0.03)
    assert np.all((actions >= 0) & (actions < 3))


def test_exploring_actions_are_drawn_from_the_given_generator(mlp_agent):
    """The caller's generator decides the exploring actions: the same seed repeats them, and each call draws
    new ones. (Actions drawn from any other generator would not follow the seed, and one seeded inside
    `act` would repeat call after call.)"""
    obs = np.zeros((3000, 4), np.float32)  # one state: the greedy action is the same everywhere
    greedy = mlp_agent.greedy(obs[:1])[0]
    for epsilon in (1.0, 0.5):  # every action random; random and greedy mixed
        a, b = (mlp_agent.act(obs, epsilon, np.random.default_rng(7)) for _ in range(2))
        np.testing.assert_array_equal(a, b)
        rng = np.random.default_rng(7)
        first, second = mlp_agent.act(obs, epsilon, rng), mlp_agent.act(obs, epsilon, rng)
        explored = (first != greedy) & (second != greedy)  # surely random in both calls (~4/9 or ~1/9 of rows)
        assert explored.sum() > 200
        # two independent uniform draws that both missed the greedy action agree half of the time
        assert np.mean(first[explored] == second[explored]) == pytest.approx(0.5, abs=0.1)


def test_state_dict_round_trip(mlp_agent, small_cfg):
    _perturb(mlp_agent.q_net)
    other = make_agent(small_cfg, (4,), 3, CPU)
    other.load_state_dict(mlp_agent.state_dict())
    for a, b in zip(mlp_agent.q_net.state_dict().values(), other.q_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    obs = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    np.testing.assert_array_equal(other.greedy(obs), mlp_agent.greedy(obs))  # the numpy views follow the load


# ---- data-parallel CPU updates ----------------------------------------------------------------------------


def _pixel_batch(n: int, weights: bool) -> Batch:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, n, 4, 84, 84), dtype=np.uint8)
    return Batch(
        obs=frames[0], next_obs=frames[1], actions=rng.integers(0, 3, n), rewards=rng.normal(size=n).astype(np.float32),
        terminated=(rng.random(n) < 0.3).astype(np.float32), discounts=np.full(n, 0.99, np.float32),
        weights=rng.uniform(0.2, 1.0, n).astype(np.float32) if weights else None,
    )  # fmt: skip


def _cnn_agent(shards: int = 1, precision: str = "fp32", **cfg) -> DQNAgent:
    """A small Nature-CNN agent, the same initial weights every time."""
    from dqn_cli.networks import NatureCNN

    torch.manual_seed(0)
    net = NatureCNN((4, 84, 84), 3, hidden=64)
    return DQNAgent(net, 3, agent_cfg(**cfg), CPU, shards=shards, precision=precision)


def _cnn_agents(shards: tuple[int, ...], **cfg) -> list[DQNAgent]:
    return [_cnn_agent(n, **cfg) for n in shards]


@pytest.mark.parametrize("shards", [2, 3], ids=["2-shards", "3-uneven-shards"])
@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "weighted"])
def test_sharded_update_is_the_full_batch_step(shards, prioritized):
    """Splitting the batch across threads gives the same step as one full-batch backward."""
    whole, split = _cnn_agents((1, shards), double=True, max_grad_norm=1.0, lr=1e-3)
    assert split.shards == shards and whole.shards == 1
    batch = _pixel_batch(20, prioritized)
    for step in range(3):
        a, b = whole.update(batch), split.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-5)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=1e-5, abs=1e-7)
        if prioritized:
            np.testing.assert_allclose(split.td_abs, whole.td_abs, rtol=1e-5, atol=1e-6)
        if step == 0:  # the clipped gradients the optimizer stepped on
            for p, q in zip(whole.q_net.parameters(), split.q_net.parameters(), strict=True):
                scale = p.grad.abs().max().item()
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * scale)
    # Adam's steps are +-lr for the largest gradients; rounding may move a near-zero one a little
    for p, q in zip(whole.q_net.parameters(), split.q_net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "shards, double, compiled", [(1, False, False), (2, True, False), (1, False, True)],
    ids=["whole-dqn", "2-shards-double", "compiled"],
)  # fmt: skip
def test_a_round_of_updates_on_targets_scored_at_once_is_the_same_round(shards, double, compiled):
    """batched_targets: the target network scores a round's next states in one 96-row pass, each of the 3
    updates takes its 32 rows of it: the same updates as with a target pass per batch (compile=true: the
    compiled loss takes them as an input)."""
    from dqn_cli.accel import accelerate

    per_batch, ahead = _cnn_agents((shards, shards), double=double, max_grad_norm=1.0, lr=1e-3)
    accelerate(per_batch), accelerate(ahead, compile=compiled)
    rows = _pixel_batch(96, weights=False)
    target_q = ahead.target_values(rows)
    assert target_q.shape == (96, 3) and target_q.dtype == torch.float32
    torch.testing.assert_close(ahead.target_values(rows, chunk=40), target_q)  # 40 + 40 + 16 rows
    for i in range(3):
        part = slice(32 * i, 32 * (i + 1))
        batch = Batch(*(None if x is None else x[part] for x in rows))
        a, b = per_batch.update(batch), {k: v.item() for k, v in ahead.learn(batch, target_q[part]).items()}
        rel, small = (1e-4, 2e-5) if compiled else (1e-5, 1e-7)  # inductor's kernels round differently
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=rel)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=rel, abs=small)  # mean Q ~1e-3 here
    for p, q in zip(per_batch.q_net.parameters(), ahead.q_net.parameters(), strict=True):
        if compiled:  # as in test_compiled_update_follows_the_eager_update: Adam's near-zero gradients
            assert torch.isclose(q, p, rtol=0, atol=1e-4).float().mean() > 0.99 and (q - p).abs().max() < 2e-3
        else:
            torch.testing.assert_close(q, p, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batched_targets", [True, False], ids=["batched-targets", "per-batch-targets"])
def test_learn_round_is_its_updates_one_after_another(batched_targets):
    """learn_round (what cuda_graphs=true records as one graph per round): 3 updates on consecutive 32-row
    parts of the round's rows, after one target pass over all of them (batched_targets) or each with its
    own: bitwise the updates made one by one, with their losses and mean Qs in order."""
    one_by_one, round_ = _cnn_agents((2, 2), double=False, max_grad_norm=1.0, lr=1e-3)
    rows = _pixel_batch(96, weights=False)
    target_q = one_by_one.target_values(rows) if batched_targets else None
    expected = []
    for i in range(3):
        part = slice(32 * i, 32 * (i + 1))
        batch = Batch(*(None if x is None else x[part] for x in rows))
        metrics = one_by_one.learn(batch, None if target_q is None else target_q[part])
        expected.append({k: v.item() for k, v in metrics.items()})
    passes = []  # the rows of each target-network pass
    round_.target_compute.register_forward_hook(lambda net, args, out: passes.append(len(args[0])))
    got = round_.learn_round(rows, 3, batched_targets)
    # the CPU's batched passes take 64 rows at most; without, each update's 2 shards score their 16 rows
    assert passes == ([64, 32] if batched_targets else [16] * 6)
    assert [{k: v.item() for k, v in m.items()} for m in got] == expected
    assert len({m["td_loss"] for m in expected}) == 3  # three different updates
    for p, q in zip(one_by_one.q_net.parameters(), round_.q_net.parameters(), strict=True):
        assert torch.equal(p, q)
    assert {int(s["step"]) for s in round_.optimizer.state.values()} == {3}


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_the_step_after_the_shards_takes_all_the_update_threads(precision):
    """2 shards of 1 thread each: the gradient sum, clipping and Adam (bf16: and the refresh) run on the
    caller with both threads, while the shard thread waits; then acting gets its one thread back."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as make_agent leaves it for torch_threads=2 and 2 shards
        agent = _cnn_agent(2, precision)
        seen, clip_and_step = [], agent.clip_and_step
        agent.clip_and_step = lambda refresh=None: (seen.append(torch.get_num_threads()), clip_and_step(refresh))[1]
        for _ in range(2):
            agent.update(_pixel_batch(32, weights=False))
        assert seen == [2, 2] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sharded_update_is_deterministic():
    first, second = _cnn_agents((2, 2))
    batch = _pixel_batch(32, weights=False)
    for _ in range(2):
        assert first.update(batch) == second.update(batch)
    for p, q in zip(first.q_net.parameters(), second.q_net.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("threads", "batch", "device", "expected"),
    [
        (1, 32, "cpu", 1),
        (2, 32, "cpu", 2),
        (4, 32, "cpu", 2),
        (2, 16, "cpu", 1),
        (8, 256, "cpu", 8),
        (2, 32, "cuda", 1),
    ],  # fmt: skip
)
def test_update_shards_give_each_thread_16_rows(threads, batch, device, expected):
    from dqn_cli.agent import update_shards

    assert update_shards(threads, batch, torch.device(device)) == expected


def test_make_agent_shares_the_threads_between_shards(small_cfg):
    before = torch.get_num_threads()
    try:
        small_cfg.agent.batch_size = 32
        assert make_agent(small_cfg, (4,), 3, CPU).shards == 1  # evaluation: no update threads
        agent = make_agent(small_cfg, (4,), 3, CPU, update_threads=4)
        assert agent.shards == 2 and torch.get_num_threads() == 2  # 4 threads: 2 shards x 2 intra-op threads
    finally:
        torch.set_num_threads(before)


# ---- bf16-mixed precision ---------------------------------------------------------------------------------


def _precision_agents(*precisions: str, shards: int = 1, **cfg) -> list[DQNAgent]:
    return [_cnn_agent(shards, precision, **cfg) for precision in precisions]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors])


@pytest.mark.parametrize("shards", [1, 2])
def test_bf16_mixed_update_follows_the_fp32_step(shards):
    """bf16 forward/backward: the same loss to bf16's ~3 digits and a gradient pointing the same way."""
    fp32, mixed = _precision_agents("fp32", "bf16-mixed", shards=shards, double=True, max_grad_norm=10.0)
    batch = _pixel_batch(32, weights=False)
    a, b = fp32.update(batch), mixed.update(batch)
    assert b["td_loss"] == pytest.approx(a["td_loss"], rel=2e-2)
    assert b["q_values"] == pytest.approx(a["q_values"], rel=2e-2, abs=1e-3)
    g32 = _flat(p.grad for p in fp32.q_net.parameters())
    g16 = _flat(p.grad for p in mixed.q_net.parameters())
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.99
    assert (g16.norm() / g32.norm()).item() == pytest.approx(1.0, abs=0.02)


def test_bf16_mixed_keeps_fp32_masters_and_refreshes_the_compute_copies():
    (agent,) = _precision_agents("bf16-mixed", tau=1.0)
    batch = _pixel_batch(8, weights=False)
    before = [p.detach().clone() for p in agent.q_net.parameters()]
    agent.update(batch)

    def assert_copy(compute, master):
        for c, m in zip(compute.parameters(), master.parameters(), strict=True):
            assert m.dtype == torch.float32 and c.dtype == torch.bfloat16
            assert torch.equal(c, m.to(torch.bfloat16))

    # the optimizer stepped the fp32 masters (fp32 gradients), and the bf16 copy follows them
    assert all(p.grad.dtype == torch.float32 for p in agent.q_net.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(agent.q_net.parameters(), before, strict=True))
    assert_copy(agent.q_compute, agent.q_net)
    assert not torch.equal(_flat(agent.target_net.parameters()), _flat(agent.q_net.parameters()))
    agent.sync_target()
    assert_copy(agent.target_compute, agent.target_net)
    assert torch.equal(_flat(agent.target_net.parameters()), _flat(agent.q_net.parameters()))

    # checkpoints hold the fp32 masters; loading them refreshes a fresh agent's compute copies
    state = agent.state_dict()
    assert all(t.dtype == torch.float32 for t in state["q_net"].values())
    (other,) = _precision_agents("bf16-mixed", tau=1.0)
    torch.manual_seed(5)
    for p in other.q_compute.parameters():  # stale copies that must not survive the load
        p.data.normal_()
    other.load_state_dict(state)
    assert_copy(other.q_compute, agent.q_net)
    assert_copy(other.target_compute, agent.target_net)
    obs = _pixel_batch(16, weights=False).obs
    np.testing.assert_array_equal(other.greedy(obs), agent.greedy(obs))


def test_bf16_mixed_acts_with_the_compute_copy():
    """Greedy actions of a conv net come from the bf16 copy that the updates train."""
    (agent,) = _precision_agents("bf16-mixed")
    obs = _pixel_batch(16, weights=False).obs
    with torch.no_grad():
        q = agent.q_compute(torch.from_numpy(obs))
        assert q.dtype == torch.bfloat16
        np.testing.assert_array_equal(agent.greedy(obs), q.argmax(dim=1).numpy())
    (fp32,) = _precision_agents("fp32")
    assert fp32.q_compute is fp32.q_net and fp32.target_compute is fp32.target_net  # no copies in fp32


def test_bf16_mixed_sharded_update_is_deterministic():
    first, second = _precision_agents("bf16-mixed", "bf16-mixed", shards=2)
    batch = _pixel_batch(32, weights=False)
    for _ in range(2):
        assert first.update(batch) == second.update(batch)
    assert torch.equal(_flat(first.q_net.parameters()), _flat(second.q_net.parameters()))


def _joined_at_once(agent: DQNAgent) -> DQNAgent:
    """`agent` computing a deferred update's shards (the caller's smaller one; even ones for a weighted
    batch) but joining them and stepping at once, on the caller: what a deferred update must equal."""
    start = agent._start_shards
    agent._start_shards = lambda tensors, size, deferred=False: start(tensors, size, deferred=tensors[6] is None)
    return agent


def test_deferred_update_finishes_beside_acting_and_ends_as_the_update_joined_at_once():
    """overlap=true on the CPU with bf16-mixed: the caller computes its shard of the update (12 of 32
    rows) and returns; the shard thread computes the other 20, sums, clips, steps and writes the new
    bf16 weights aside. Acting meanwhile reads the weights from before the update; finish_update (or
    anything that reads the weights) waits and swaps them in. The updates are bitwise those of the
    same shards joined at once, and follow the even-split updates to float rounding. A weighted batch
    (prioritized replay) waits for its TD errors, and only its optimizer step is deferred."""
    inline, deferred, even = _precision_agents(*["bf16-mixed"] * 3, shards=2, max_grad_norm=1.0, lr=1e-3)
    assert deferred.can_defer_updates and not _cnn_agent(2, "fp32").can_defer_updates  # fp32 acts on masters
    _joined_at_once(inline)
    deferred.defer_updates = True
    obs = _pixel_batch(16, weights=False).obs
    calls = []
    start = deferred._start_shards
    deferred._start_shards = lambda *a, **k: calls.append(k.get("deferred", False)) or start(*a, **k)
    for i in range(3):
        weighted = i == 1
        batch = _pixel_batch(32, weights=weighted)
        metrics = deferred.learn(batch)
        assert deferred._pending is not None  # the rest of the update is in flight, or done but not swapped in
        stale = _flat(deferred.q_compute.parameters()).clone()
        deferred.greedy(obs)  # acting meanwhile reads the weights from before the update, and they stay
        deferred.wait_for_update()
        assert torch.equal(_flat(deferred.q_compute.parameters()), stale)
        expected = inline.update(batch)
        assert {k: v.item() for k, v in metrics.items()} == expected  # same loss and Q: the same weights went in
        assert even.update(batch)["td_loss"] == pytest.approx(expected["td_loss"], rel=2e-2)
        assert not torch.equal(stale, _flat(inline.q_compute.parameters()))  # the inline agent took its step
        if weighted:  # its TD errors at once, from even shards
            np.testing.assert_array_equal(deferred.td_abs, inline.td_abs)
    assert calls == [True, False, True]  # the weighted batch: even shards, joined at once
    state = deferred.state_dict()  # waits for the last update first
    assert deferred._pending is None
    assert torch.equal(_flat(state["q_net"].values()), _flat(inline.q_net.parameters()))
    assert torch.equal(_flat(deferred.q_compute.parameters()), _flat(inline.q_compute.parameters()))
    for p, q in zip(deferred.q_compute.parameters(), inline.q_compute.parameters(), strict=True):
        assert p.stride() == q.stride() and p.dtype == q.dtype == torch.bfloat16  # the swapped-in tensors' layout
    start = _flat(_cnn_agent().q_net.parameters())  # the same initial weights: Adam's steps point the same way
    moved, moved_even = _flat(state["q_net"].values()) - start, _flat(even.q_net.parameters()) - start
    assert torch.nn.functional.cosine_similarity(moved, moved_even, dim=0) > 0.95


@pytest.mark.parametrize("shards, batch, rows", [(2, 32, [12, 20]), (3, 48, [12, 18, 18]), (2, 20, [8, 12])])
def test_a_deferred_update_gives_the_caller_the_smaller_shard(shards, batch, rows):
    """The caller's shard is CALLER_SHARE (3/4) of an even one; the other shards split the rest evenly."""
    import threading

    agent = _cnn_agent(shards, "bf16-mixed")
    sizes = {}  # thread name: rows
    loss_terms = agent.loss_terms

    def recorded(tensors, batch_size):
        sizes[threading.current_thread().name] = len(tensors[2])
        return loss_terms(tensors, batch_size)

    agent.loss_terms = recorded
    b = _pixel_batch(batch, weights=False)
    tensors = [*(torch.from_numpy(x) for x in update_fields(b)[:6]), None, None]
    own, others = agent._start_shards(tensors, batch, deferred=True)
    agent._join_shards(own, others)
    assert sizes.pop(threading.current_thread().name) == rows[0] and sorted(sizes.values()) == rows[1:]
    assert all(g.dtype == torch.bfloat16 for g in own[3])  # the joining thread casts the caller's gradients
    sizes.clear()
    agent._join_shards(*agent._start_shards(tensors, batch))
    even = np.diff(np.linspace(0, batch, shards + 1).astype(int)).tolist()
    assert sizes.pop(threading.current_thread().name) == even[0] and sorted(sizes.values()) == sorted(even[1:])


def test_target_sync_waits_for_a_deferred_update():
    """With the update finishing on the shard thread (overlap=true), a target sync copies the weights its
    optimizer step writes, not the ones from before it: sync_target waits for the update in flight."""
    import threading

    agent = _cnn_agent(2, "bf16-mixed", tau=1.0, lr=1e-3)
    agent.defer_updates = True
    release, step = threading.Event(), agent._optimizer_step_to_spare

    def late_step(grads):  # the step starts only once `release` is set, 0.3 s after the update
        release.wait(10)
        step(grads)

    agent._optimizer_step_to_spare = late_step
    before = _flat(agent.q_net.parameters()).clone()
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        agent.learn(_pixel_batch(32, weights=False))  # returns at once: the update is in flight
        assert agent._pending is not None and not agent._pending.done()
        agent.sync_target()
    finally:
        release.set()
        timer.cancel()
    agent.finish_update()
    assert not torch.equal(_flat(agent.q_net.parameters()), before)  # the step was taken
    assert torch.equal(_flat(agent.target_net.parameters()), _flat(agent.q_net.parameters()))


# ---- compile=true ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shards, prioritized", [(1, False), (2, True)], ids=["whole-uniform", "2-shards-weighted"])
def test_compiled_update_follows_the_eager_update(shards, prioritized):
    """compile=true compiles the TD loss (with its backward) and clip + Adam: the same updates as the
    eager agent, to float rounding, with the networks left as plain modules."""
    from dqn_cli.accel import accelerate

    eager, compiled = _cnn_agents((shards, shards), double=True, max_grad_norm=1.0, lr=1e-3)
    accelerate(eager), accelerate(compiled, compile=True)
    assert compiled.loss_terms is not compiled._td_loss and eager.loss_terms == eager._td_loss
    assert compiled.optimizer.defaults["fused"]  # on the CPU fused Adam stays: faster than a compiled foreach one
    for i in range(4):
        batch = _pixel_batch(32, weights=prioritized)
        batch = batch._replace(rewards=batch.rewards + i)  # a different TD target each time
        a, b = eager.update(batch), compiled.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-4)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=1e-4, abs=2e-5)  # mean Q ~1e-3 here
        if prioritized:
            np.testing.assert_allclose(compiled.td_abs, eager.td_abs, rtol=1e-4, atol=1e-5)
    # Adam steps each weight ~lr whatever its gradient's size: where a gradient is ~0, rounding can send a
    # weight the other way. Nearly all agree to 1e-4, and none is more than two steps (2 lr) off
    for p, q in zip(eager.q_net.parameters(), compiled.q_net.parameters(), strict=True):
        assert torch.isclose(q, p, rtol=0, atol=1e-4).float().mean() > 0.99 and (q - p).abs().max() < 2e-3
    assert list(compiled.state_dict()["q_net"]) == list(eager.state_dict()["q_net"])  # no _orig_mod. keys
    assert int(compiled.optimizer.state[compiled.q_net.head[-1].weight]["step"]) == 4


def test_compiled_bf16_update_refreshes_the_compute_weights_with_the_step():
    """bf16-mixed with compile=true: the compiled clip + Adam also writes the bf16 compute weights (the
    casts as one kernel): after each update they are the new masters, cast; and the updates follow the
    eager bf16 ones."""
    from dqn_cli.accel import accelerate

    eager, compiled = (_cnn_agent(1, "bf16-mixed", max_grad_norm=1.0, lr=1e-3) for _ in range(2))
    accelerate(eager), accelerate(compiled, compile=True)
    for i in range(3):
        batch = _pixel_batch(32, weights=False)
        a, b = (
            eager.update(batch._replace(rewards=batch.rewards + i)),
            compiled.update(batch._replace(rewards=batch.rewards + i)),
        )
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-2)
        for master, compute in zip(compiled.q_net.parameters(), compiled.q_compute.parameters(), strict=True):
            assert compute.dtype == torch.bfloat16 and torch.equal(compute, master.to(torch.bfloat16))
    for p, q in zip(eager.q_net.parameters(), compiled.q_net.parameters(), strict=True):
        assert torch.isclose(q, p, rtol=0, atol=1e-4).float().mean() > 0.9 and (q - p).abs().max() < 4e-3


def test_each_new_agent_compiles_past_dynamo_recompile_limit():
    """Dynamo caches compiled code per code object up to `recompile_limit` entries and each agent adds
    its own (to the update's methods and to the frames Optimizer.step resumes in); compile_agent drops
    the earlier agents' so that, e.g., the 9th run of a sequential sweep is still wholly compiled (here
    with the limit at 2: the 3rd and 4th agents compile as many graphs as the first)."""
    from torch._dynamo.utils import counters

    from dqn_cli.accel import accelerate

    batch = _random_batch(np.random.default_rng(0), 8, 4, 2)
    compiled = []
    with torch._dynamo.config.patch(recompile_limit=2):  # restored after (monkeypatch's undo broke it)
        for _ in range(4):
            agent = DQNAgent(MLP(4, 2, [8], "relu"), 2, agent_cfg(max_grad_norm=1.0), CPU)
            # the foreach Adam that compile_agent puts in on a GPU (the CPU keeps the fused one)
            agent.optimizer = torch.optim.Adam(agent._trained_masters, **{**agent.optimizer.defaults, "fused": False})
            accelerate(agent, compile=True)
            graphs = counters["stats"]["unique_graphs"]
            agent.update(batch)
            compiled.append(counters["stats"]["unique_graphs"] - graphs)
    assert compiled[0] >= 3 and compiled == compiled[:1] * 4, compiled  # TD loss, clipping, Adam step

"""CUDA paths (marked gpu; skipped without a GPU): the update and acting agree with the CPU, and a tiny
training run on the GPU writes checkpoints that load on a CPU-only machine."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dqn_cli.agent import make_agent
from dqn_cli.buffers import Batch
from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _batch(rng: np.random.Generator, n: int = 64) -> Batch:
    return Batch(
        obs=rng.normal(size=(n, 4)).astype(np.float32),
        actions=rng.integers(0, 2, n),
        rewards=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, 4)).astype(np.float32),
        terminated=(rng.random(n) < 0.2).astype(np.float32),
        discounts=np.full(n, 0.99, np.float32),
    )


def test_cuda_update_and_acting_match_the_cpu(small_cfg):
    torch.manual_seed(0)
    cpu = make_agent(small_cfg, (4,), 2, torch.device("cpu"))
    gpu = make_agent(small_cfg, (4,), 2, torch.device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    batch = _batch(np.random.default_rng(0))
    for _ in range(3):
        m_cpu, m_gpu = cpu.update(batch), gpu.update(batch)
        assert m_gpu["td_loss"] == pytest.approx(m_cpu["td_loss"], rel=1e-4, abs=1e-6)
    for p_cpu, p_gpu in zip(cpu.q_net.parameters(), gpu.q_net.parameters(), strict=True):
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-4, atol=1e-5)
    obs = np.random.default_rng(1).normal(size=(256, 4)).astype(np.float32)
    with torch.no_grad():
        q = gpu.q_net(torch.from_numpy(obs).cuda())
    np.testing.assert_array_equal(gpu.act(obs, 0.0, np.random.default_rng(0)), q.argmax(1).cpu().numpy())


def test_cuda_training_run_writes_checkpoints_loadable_on_cpu(small_cfg_factory, run_dir):
    trainer = Trainer(small_cfg_factory("device=cuda"), run_dir)
    assert np.isfinite(trainer.run())
    assert trainer.device.type == "cuda"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location="cpu")
    assert state["counters"]["step"] == 300
    assert all(t.device.type == "cpu" for t in state["agent"]["q_net"].values())


# ---- the update as one CUDA graph (cuda_graphs=true) ----------------------------------------------------


def _cnn_agent(precision: str = "fp32", graphed: bool = False, compiled: bool = False, **cfg):
    """A small Nature-CNN agent on the GPU, the same initial weights every time; `graphed` records
    its update as a CUDA graph as `cuda_graphs=true` does, `compiled` compiles it (`compile=true`)."""
    from omegaconf import OmegaConf

    from dqn_cli.accel import accelerate
    from dqn_cli.agent import DQNAgent
    from dqn_cli.networks import NatureCNN

    base = dict(gamma=0.99, lr=1e-3, adam_eps=1e-8, loss="huber", max_grad_norm=1.0, tau=1.0, double=True)
    torch.manual_seed(0)
    net = NatureCNN((4, 84, 84), 3, hidden=64)
    agent = DQNAgent(net, 3, OmegaConf.create({**base, **cfg}), torch.device("cuda"), precision=precision)
    return accelerate(agent, compile=compiled, cuda_graphs=graphed)


def _pixel_batch(rng: np.random.Generator, n: int = 32, weights: bool = False) -> Batch:
    frames = rng.integers(0, 256, (n, 5, 84, 84), dtype=np.uint8)
    return Batch(
        obs=frames[:, :4], next_obs=frames[:, 1:], actions=rng.integers(0, 3, n),
        rewards=rng.normal(size=n).astype(np.float32), terminated=(rng.random(n) < 0.3).astype(np.float32),
        discounts=np.full(n, 0.99, np.float32), weights=rng.uniform(0.2, 1, n).astype(np.float32) if weights else None,
    )  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize("weights", [False, True], ids=["uniform", "prioritized"])
def test_cuda_graph_update_follows_the_eager_update(precision, weights):
    """Replaying the recorded update is the eager update: same losses, TD errors and weights, from the
    first update on (the warm-up steps before recording leave no trace).

    Each update starts from the graphed agent's state. The two runs' cuDNN and cuBLAS kernels differ
    inside a capture (seen on an H200), and Adam steps every weight ~lr however small its gradient, so
    where a gradient is ~0 the rounding (TF32 convs in fp32, bf16) can send a weight the other way;
    over several updates the runs would drift apart by such steps.
    """
    eager, graphed = _cnn_agent(precision), _cnn_agent(precision, graphed=True)
    rng = np.random.default_rng(0)
    rel = 1e-3 if precision == "fp32" else 2e-2
    for _ in range(6):
        batch = _pixel_batch(rng, weights=weights)
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        a, b = eager.update(batch), graphed.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=rel)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=rel, abs=1e-4)
        if weights:
            np.testing.assert_allclose(graphed.td_abs, eager.td_abs, rtol=rel * 10, atol=rel)
        _assert_one_step_apart_at_most(eager, graphed, rel)
    assert [key[0] for key in graphed.graphed.graphs] == ["update"]  # one graph, replayed
    assert all(p.dtype == torch.float32 for p in graphed.q_net.parameters())
    steps = {int(s["step"]) for s in graphed.optimizer.state.values()}
    assert steps == {6}  # Adam counted the 6 real updates, not the warm-up


def _assert_one_step_apart_at_most(eager, graphed, rel: float, steps: int = 1) -> None:
    """Nearly every weight agrees: in each tensor at most 1% of the weights, or one in a small tensor, are
    apart, and by what a flipped near-zero gradient moves a weight the other way (~lr, 1e-3, per update).
    A bf16 round graph on an H200 left 1 of a 64-weight bias apart after 4 updates (session 18). A small
    tensor left out of the graph's updates (all its weights apart) still fails."""
    for p, q in zip(eager.q_net.parameters(), graphed.q_net.parameters(), strict=True):
        apart = ~torch.isclose(q, p, rtol=rel, atol=rel * p.abs().max().item())
        assert apart.sum().item() <= max(1, 0.01 * p.numel()) and (q - p).abs().max() < 3e-3 * steps


def test_compiled_update_in_a_cuda_graph_follows_the_eager_update():
    """compile=true with cuda_graphs=true: the compiled TD loss, backward and Adam step recorded as one
    graph give the eager update, for uniform and then prioritized batches (a second graph). Each update
    starts from the graphed agent's state, as above."""
    eager, graphed = _cnn_agent(), _cnn_agent(graphed=True, compiled=True)
    rng = np.random.default_rng(2)
    for i in range(6):
        batch = _pixel_batch(rng, weights=i >= 3)
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        a, b = eager.update(batch), graphed.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-3)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=1e-3, abs=1e-4)
        if i >= 3:
            np.testing.assert_allclose(graphed.td_abs, eager.td_abs, rtol=1e-2, atol=1e-3)
        _assert_one_step_apart_at_most(eager, graphed, 1e-3)
    assert [key[-2] is not None for key in graphed.graphed.graphs] == [False, True]  # then the weighted graph
    assert graphed.optimizer.defaults["foreach"] and not graphed.optimizer.defaults["fused"]  # inductor fuses it
    assert {int(s["step"]) for s in graphed.optimizer.state.values()} == {6}


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_cuda_graph_takes_a_rounds_target_values_as_an_input(precision):
    """batched_targets: a round's Q(s', .; theta-) scored in one pass on the GPU, each graphed update
    reading its rows as a static input: the eager updates with a target pass per batch."""
    eager, graphed = _cnn_agent(precision), _cnn_agent(precision, graphed=True, compiled=precision == "bf16-mixed")
    rng = np.random.default_rng(3)
    rel = 1e-3 if precision == "fp32" else 2e-2
    rows = _pixel_batch(rng, n=128)
    target_q = graphed.target_values(rows)
    assert target_q.shape == (128, 3) and target_q.device.type == "cuda" and target_q.dtype == torch.float32
    for i in range(4):
        part = slice(32 * i, 32 * (i + 1))
        batch = Batch(*(None if x is None else x[part] for x in rows))
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        a, b = eager.update(batch), {k: v.item() for k, v in graphed.learn(batch, target_q[part]).items()}
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=rel)
        assert b["q_values"] == pytest.approx(a["q_values"], rel=rel, abs=1e-4)
        _assert_one_step_apart_at_most(eager, graphed, rel)
    assert [key[-1] for key in graphed.graphed.graphs] == [((32, 3), torch.float32)]  # target values as input


@pytest.mark.parametrize("precision, compiled", [("fp32", False), ("bf16-mixed", True)])
def test_a_round_recorded_as_one_cuda_graph_follows_the_eager_round(precision, compiled, monkeypatch):
    """round_graphs: a round of 4 updates, its target pass included, replayed as one graph gives the eager
    round's losses, mean Qs and weights. The second round replays the same graph, and the first round's
    metrics are copies it does not overwrite. Each round starts from the graphed agent's state.

    Within a round the updates build on each other, so a weight that the kernels inside and outside a
    capture step different ways (see above) stays apart for the round's later updates. To keep such
    flips rare, both sides run the same kernels: the eager round is compiled when the graph is, and
    convs use no TF32 (in fp32 a TF32 conv rounds to ~1e-3)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = _cnn_agent(precision, compiled=compiled)
    graphed = _cnn_agent(precision, graphed=True, compiled=compiled)
    rng = np.random.default_rng(4)
    rel = 1e-3 if precision == "fp32" else 2e-2
    rounds = []
    for _ in range(2):
        rows = _pixel_batch(rng, n=128)
        eager.load_state_dict(copy.deepcopy(graphed.state_dict()))
        rounds.append((eager.learn_round(rows, 4), graphed.learn_round(rows, 4)))
        _assert_one_step_apart_at_most(eager, graphed, rel, steps=4)
    for a, b in rounds:  # read after both rounds
        assert len(a) == len(b) == 4
        for m_a, m_b in zip(a, b, strict=True):
            assert m_b["td_loss"].item() == pytest.approx(m_a["td_loss"].item(), rel=rel)
            assert m_b["q_values"].item() == pytest.approx(m_a["q_values"].item(), rel=rel, abs=1e-4)
    assert [key[0] for key in graphed.graphed.graphs] == [("round", 4, True)]
    assert {int(s["step"]) for s in graphed.optimizer.state.values()} == {8}  # not the warm-up's


def test_cuda_graph_sees_target_syncs_and_loaded_checkpoints():
    """Weights changed in place (a target sync) reach the graph; a loaded optimizer state records a new one."""
    eager, graphed = _cnn_agent(), _cnn_agent(graphed=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        batch = _pixel_batch(rng)
        a, b = eager.update(batch), graphed.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-3)
        if i == 1:
            eager.sync_target(), graphed.sync_target()
    (first,) = (graph for graph, _, _ in graphed.graphed.graphs.values())
    other = _cnn_agent()
    other.update(_pixel_batch(rng))
    for agent in (eager, graphed):  # own copies: a loaded optimizer keeps the tensors it is given
        agent.load_state_dict(copy.deepcopy(other.state_dict()))
    for _ in range(3):
        batch = _pixel_batch(rng)
        a, b = eager.update(batch), graphed.update(batch)
        assert b["td_loss"] == pytest.approx(a["td_loss"], rel=1e-3)
    (second,) = (graph for graph, _, _ in graphed.graphed.graphs.values())
    assert second is not first  # recorded anew for the loaded optimizer state


@pytest.mark.parametrize(
    "storage, vectorization, compiled", [("host", "async", False), ("device", "async", False), ("device", "ale", True)]
)
def test_pong_trains_with_cuda_graphs_and_overlap(compose_cfg, run_dir, storage, vectorization, compiled):
    """Pong on async (or C++) vector envs with every GPU switch on: it updates, checkpoints load on the CPU
    and `dqn eval`'s rebuild plays from them. storage=device gathers the batches inside the graph; the
    C++ envs' run also compiles the update (compile=true, the fastest setting)."""
    from dqn_cli.evaluate import evaluate

    cfg = compose_cfg(
        "train",
        ["env=pong", "device=cuda", "cuda_graphs=true", "overlap=true", "env.num_envs=4",
         f"env.vectorization={vectorization}", "agent.gradient_steps=2", "total_steps=600", "buffer.capacity=2000",
         "agent.learning_starts=100", "agent.target_update_interval=200", "eval.interval=0", "eval.episodes=1",
         "checkpoint.interval=300", "env.preset.max_episode_frames=2000", f"buffer.storage={storage}",
         f"compile={str(compiled).lower()}"],
    )  # fmt: skip
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    assert trainer.updates == 2 * (600 - 100) // 4 and trainer.due_updates == 0
    assert (trainer.agent.frame_store is not None) == (storage == "device")
    assert trainer.queue_ahead  # host storage: a quarter of each round queued before the loop waits for the actions
    # storage=device: each round's 2 batches drawn at once and replayed as one graph (round_graphs), which
    # scores their targets in one pass (batched_targets)
    assert trainer.batched_targets == trainer.round_graphs == (storage == "device")
    kinds = {key[0] for key in trainer.agent.graphed.graphs}
    assert kinds == ({("round", 2, True)} if storage == "device" else {"update"})
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location="cpu")
    assert state["counters"]["updates"] == trainer.updates
    for name, w in trainer.agent.q_net.state_dict().items():
        torch.testing.assert_close(state["agent"]["q_net"][name], w.cpu())
    checkpoint = run_dir / "checkpoints" / "last.pt"
    overrides = [f"checkpoint={checkpoint}", "episodes=1", "device=cpu", "tensorboard=false"]
    result = evaluate(compose_cfg("eval", overrides))
    assert result["step"] == 600 and np.isfinite(result["mean_return"])

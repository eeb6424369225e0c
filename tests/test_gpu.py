"""CUDA paths (marked gpu; skipped without a GPU): the update and acting agree with the CPU, and a tiny
training run on the GPU writes checkpoints that load on a CPU-only machine."""

from __future__ import annotations

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

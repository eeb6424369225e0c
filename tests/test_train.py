"""The Trainer on the shrunk config: run-dir contents, TensorBoard scalars, counters, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.trainer import Trainer


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar written into `run_dir`, as {tag: [(step, value), ...]}."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.agent.q_net.parameters()]


class Run:
    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.trainer = Trainer(cfg, run_dir)
        self.result = self.trainer.run()
        self.scalars = scalars(run_dir)

    @property
    def returns(self) -> list[tuple[int, float]]:
        return self.scalars["charts/episodic_return"]


@pytest.fixture(scope="module")
def run0(small_cfg_factory, tmp_path_factory) -> Run:
    """One shrunk CartPole run (seed 0), shared by the tests that only read its outputs."""
    return Run(small_cfg_factory("seed=0"), tmp_path_factory.mktemp("run0"))


def test_run_writes_checkpoints_and_event_files(run0):
    ckpt = run0.run_dir / "checkpoints"
    # checkpoint.interval=100 writes step_100/200/300; keep_last=2 keeps the newest two
    assert sorted(p.name for p in ckpt.glob("*.pt")) == ["best.pt", "last.pt", "step_200.pt", "step_300.pt"]
    assert not list(ckpt.glob(".*.tmp"))  # every write finished its rename
    assert list(run0.run_dir.glob("events.out.tfevents.*"))


def test_last_checkpoint_holds_counters_config_and_weights(run0):
    state = load_checkpoint(run0.run_dir / "checkpoints" / "last.pt")
    # updates start once step > learning_starts=32 and then come every train_freq=2 steps: 34, 36, ..., 300
    assert state["counters"] == {
        "step": 300,
        "episodes": len(run0.returns),
        "updates": len(range(34, 301, 2)),
        "due_updates": 0,
    }
    assert state["config"] == OmegaConf.to_container(run0.cfg, resolve=True)
    for name, tensor in run0.trainer.agent.q_net.state_dict().items():
        assert torch.equal(state["agent"]["q_net"][name], tensor), name
    for name, tensor in run0.trainer.agent.target_net.state_dict().items():
        assert torch.equal(state["agent"]["target_net"][name], tensor), name
    assert state["eval"]["last"] == run0.result
    # the numpy RNG state restores the generator exactly where training left it
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]["numpy"]
    assert rng.random() == run0.trainer.rng.random()


def test_tensorboard_scalars(run0):
    s = run0.scalars
    charts = ["charts/episodic_return", "charts/episodic_length", "charts/epsilon", "charts/SPS"]
    others = ["losses/td_loss", "losses/q_values", "eval/mean_return", "eval/std_return", "eval/mean_length"]
    for tag in charts + others:
        assert tag in s, tag
    # CartPole pays 1 per step, so each return equals its length
    assert [v for _, v in s["charts/episodic_return"]] == [v for _, v in s["charts/episodic_length"]]
    assert sum(v for _, v in s["charts/episodic_length"]) <= 300
    # log.interval=50; the first update is at step 34, so every log carries a loss
    assert [step for step, _ in s["losses/td_loss"]] == [50, 100, 150, 200, 250, 300]
    assert all(np.isfinite(v) and v >= 0 for _, v in s["losses/td_loss"])
    eps = [v for _, v in s["charts/epsilon"]]
    assert eps == sorted(eps, reverse=True) and eps[0] < 1.0
    assert eps[-1] == pytest.approx(run0.cfg.agent.exploration_final_eps)
    # eval.interval=100 and the last one doubles as the final eval
    assert [step for step, _ in s["eval/mean_return"]] == [100, 200, 300]
    assert s["eval/mean_return"][-1][1] == pytest.approx(run0.result)


def test_best_checkpoint_follows_the_best_eval(run0):
    evals = run0.scalars["eval/mean_return"]
    best_step, best_value = max(evals, key=lambda e: (e[1], -e[0]))  # the first of equal bests is kept
    state = load_checkpoint(run0.run_dir / "checkpoints" / "best.pt")
    assert state["eval"]["best"] == pytest.approx(best_value)
    assert state["counters"]["step"] == best_step


def test_same_seed_is_deterministic_and_another_seed_is_not(run0, small_cfg_factory, tmp_path):
    again = Run(small_cfg_factory("seed=0"), tmp_path / "again")
    assert again.returns == run0.returns  # step for step
    assert again.scalars["losses/td_loss"] == run0.scalars["losses/td_loss"]
    for a, b in zip(params(again.trainer), params(run0.trainer), strict=True):
        assert torch.equal(a, b)

    other = Run(small_cfg_factory("seed=1"), tmp_path / "other")
    assert other.returns != run0.returns
    assert not all(torch.equal(a, b) for a, b in zip(params(other.trainer), params(run0.trainer), strict=True))


def test_stop_on_solved_ends_training_at_the_first_solving_eval(small_cfg_factory, run_dir):
    run = Run(small_cfg_factory("eval.stop_on_solved=true", "env.solved_return=1", "eval.stop_return=null"), run_dir)
    assert run.trainer.step == 100  # the first eval (any CartPole return is >= 1)
    assert [step for step, _ in run.scalars["eval/mean_return"]] == [100]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["counters"]["step"] == 100


def test_stop_return_overrides_the_solved_return(small_cfg_factory, run_dir):
    # a stop_return below every CartPole return stops at the first eval, whatever env.solved_return says
    run = Run(small_cfg_factory("eval.stop_on_solved=true", "env.solved_return=1000", "eval.stop_return=1"), run_dir)
    assert run.trainer.step == 100
    # and with stop_return unset, an unreachable solved_return never stops the run
    other = Run(small_cfg_factory("eval.stop_on_solved=true", "env.solved_return=1000", "eval.stop_return=null"),
                run_dir.parent / "other")  # fmt: skip
    assert other.trainer.step == other.trainer.cfg.total_steps


@pytest.mark.parametrize(
    "overrides",
    [
        ["env.num_envs=3"],
        ["agent.n_step=3"],
        ["buffer=prioritized"],
        ["agent.double=true", "network.dueling=true", "agent.loss=mse", "agent.tau=0.1"],
        ["env=acrobot", "env.max_episode_steps=60"],
        ["env=mountaincar", "env.max_episode_steps=60", "agent.gradient_steps=2"],
        ["eval.interval=0", "checkpoint.interval=0", "log.tensorboard=false"],
    ],
    ids=lambda o: ",".join(o),
)
def test_variants_train_end_to_end(small_cfg_factory, run_dir, overrides):
    cfg = small_cfg_factory(*overrides)
    trainer = Trainer(cfg, run_dir)
    result = trainer.run()
    n = cfg.env.num_envs
    assert np.isfinite(result)
    assert trainer.step == -(-cfg.total_steps // n) * n  # the loop steps all envs at once
    assert trainer.updates > 0 and len(trainer.buffer) == min(trainer.step, (cfg.buffer.capacity // n) * n)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["counters"]["step"] == trainer.step
    assert all(torch.isfinite(p).all() for p in trainer.agent.q_net.parameters())
    assert bool(list(run_dir.glob("events.out.tfevents.*"))) == cfg.log.tensorboard


def test_compiled_sharded_run_trains_and_ends_its_threads(small_cfg_factory, run_dir):
    """compile=true with the update in two shards on two threads: it trains, its checkpoint keeps the
    plain networks' keys, and the shard threads are ended with the run (left to interpreter shutdown,
    threads that ran compiled code can abort the process as it exits)."""
    import threading

    cfg = small_cfg_factory("compile=true", "torch_threads=2", "agent.batch_size=32", "precision=bf16-mixed")
    trainer = Trainer(cfg, run_dir)
    assert trainer.agent.shards == 2 and trainer.agent.loss_terms is not trainer.agent._td_loss
    assert np.isfinite(trainer.run()) and trainer.updates > 0
    assert not [t for t in threading.enumerate() if t.name.startswith("dqn-update")]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert list(state["agent"]["q_net"]) == list(trainer.agent.q_net.state_dict())
    assert not any("_orig_mod" in key for key in state["agent"]["q_net"])

"""The Trainer on the shrunk config: run-dir contents, TensorBoard scalars, counters, determinism."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import gymnasium as gym
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


def test_eval_reports_each_statistic_of_its_episodes(run0, compose_cfg, monkeypatch, tmp_path):
    """`dqn eval`'s JSON from the episodes played: returns 1 and 5, lengths 10 and 30."""
    import json

    import dqn_cli.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "run_episodes", lambda *args: (np.array([1.0, 5.0]), np.array([10, 30])))
    checkpoint, out = run0.run_dir / "checkpoints" / "last.pt", tmp_path / "eval.json"
    overrides = [f"checkpoint={checkpoint}", "episodes=2", "device=cpu", "tensorboard=false", f"output={out}"]
    evaluate_module.evaluate(compose_cfg("eval", overrides))
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("mean_return", "std_return", "min_return", "max_return", "mean_length")} == {
        "mean_return": 3.0, "std_return": 2.0, "min_return": 1.0, "max_return": 5.0, "mean_length": 20.0
    }  # fmt: skip
    assert (result["returns"], result["lengths"], result["step"]) == ([1.0, 5.0], [10, 30], 300)


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


@pytest.mark.parametrize("gradient_steps, updates, warned", [(1, 67, True), (2, 134, False)])
def test_updates_come_at_most_once_per_vector_step_and_a_lower_ratio_is_said(
    small_cfg_factory, run_dir, caplog, gradient_steps, updates, warned
):
    # 4 envs, train_freq 2: one round per vector step (4 env steps), so gradient_steps per 4 env steps
    cfg = small_cfg_factory("env.num_envs=4", f"agent.gradient_steps={gradient_steps}", "eval.interval=0")
    with caplog.at_level(logging.INFO, logger="dqn_cli.trainer"):
        trainer = Trainer(cfg, run_dir)
        trainer.run()
    ratio = "env.num_envs=4 > agent.train_freq=2: one round of agent.gradient_steps=2 per vector step, 2 updates per 4"
    assert (ratio in caplog.text) == (not warned)  # scaled for the envs: said as it is, not warned of
    assert trainer.updates == updates  # the vector steps after learning_starts=32: steps 36, 40, ..., 300
    said = "env.num_envs=4: each vector step is 4 env steps, more than agent.train_freq=2" in caplog.text
    assert said == warned
    fix = "1 update per 4 env steps, not per 2. For train_freq's ratio, set agent.gradient_steps=2."
    assert (fix in caplog.text) == warned
    assert "target_update_interval" not in caplog.text


def test_a_replay_ratio_that_is_not_whole_per_vector_step_is_said_with_both_neighbours(small_cfg_factory, run_dir,
                                                                                       caplog):  # fmt: skip
    cfg = small_cfg_factory("env.num_envs=6", "agent.train_freq=4", "total_steps=60", "eval.interval=0")
    with caplog.at_level(logging.WARNING, logger="dqn_cli.trainer"):
        Trainer(cfg, run_dir).run()
    assert "set agent.gradient_steps to 1 or 2 (1.5 is not whole), or env.num_envs to a multiple of" in caplog.text


def test_another_env_id_under_a_tuned_preset_is_said(small_cfg_factory, run_dir, caplog):
    cfg = small_cfg_factory("env=cartpole", "env.id=Acrobot-v1", "total_steps=40", "eval.interval=0")
    with caplog.at_level(logging.WARNING, logger="dqn_cli.trainer"):
        Trainer(cfg, run_dir).run()
    assert (
        "env.id=Acrobot-v1 runs under env=cartpole, a preset made for CartPole-v1 (its solved_return=475, its tuned "
        "agent included); env=classic env.id=Acrobot-v1 runs it with the classic defaults instead"
    ) in caplog.text


@pytest.mark.parametrize(
    "env, said",
    [
        ({"name": "pong", "game": "Breakout"}, "env.game=Breakout runs under env=pong, a preset made for Pong"),
        ({"name": "pong", "game": "Pong"}, None),
        ({"name": "classic", "id": "Acrobot-v1"}, None),
        ({"name": "atari", "game": "Breakout"}, None),
        ({"name": "mountaincar", "id": "MountainCar-v0"}, None),
    ],
)
def test_preset_mismatch_only_where_the_preset_names_another_env(env, said):
    from dqn_cli.config import preset_mismatch

    found = preset_mismatch(OmegaConf.create({"solved_return": None, **env}))
    assert found == said if said is None else found.startswith(said)


def test_a_target_sync_interval_below_the_vector_step_is_said(small_cfg_factory, run_dir, caplog):
    cfg = small_cfg_factory("env.num_envs=4", "agent.target_update_interval=3", "total_steps=40", "eval.interval=0")
    with caplog.at_level(logging.WARNING, logger="dqn_cli.trainer"):
        Trainer(cfg, run_dir).run()
    assert "agent.target_update_interval=3 is below env.num_envs=4: the target network syncs once per vector step" in (
        caplog.text
    )


def test_stop_on_solved_ends_training_at_the_first_solving_eval(small_cfg_factory, run_dir, caplog):
    with caplog.at_level(logging.INFO, logger="dqn_cli.trainer"):
        run = Run(
            small_cfg_factory("eval.stop_on_solved=true", "env.solved_return=1", "eval.stop_return=null"), run_dir
        )
    assert run.trainer.step == 100  # the first eval (any CartPole return is >= 1)
    ret = run.scalars["eval/mean_return"][0][1]
    assert (  # the log says why the run ended before total_steps
        f"solved at step 100: greedy eval {ret:.2f} >= env.solved_return=1, so the run ends here "
        "(set eval.stop_on_solved=false to train on to total_steps=300)" in caplog.text
    )
    assert [step for step, _ in run.scalars["eval/mean_return"]] == [100]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["counters"]["step"] == 100


def test_a_run_solved_at_a_checkpoint_step_still_writes_that_steps_checkpoint(small_cfg_factory, run_dir):
    """checkpoint.interval=100 and the first eval (step 100) solves: step_100.pt is written beside the
    done last.pt, as at every other multiple of the interval."""
    cfg = small_cfg_factory(
        "eval.stop_on_solved=true", "env.solved_return=1", "eval.stop_return=null", "checkpoint.interval=100"
    )
    Trainer(cfg, run_dir).run()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["best.pt", "last.pt", "step_100.pt"]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (last["status"], last["counters"]["step"]) == ("done", 100)
    assert load_checkpoint(run_dir / "checkpoints" / "step_100.pt")["counters"]["step"] == 100


def test_a_run_solved_only_at_its_last_step_is_not_said_to_end_early(small_cfg_factory, run_dir, caplog):
    cfg = small_cfg_factory("eval.stop_on_solved=true", "eval.stop_return=1", "eval.interval=0")  # the final eval
    with caplog.at_level(logging.INFO, logger="dqn_cli.trainer"):
        run = Run(cfg, run_dir)
    assert run.trainer.step == 300 and "solved at step" not in caplog.text


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


def test_episodes_are_logged_at_the_step_that_ends_them(run0):
    # one CartPole env: an episode ends at the step that is the sum of the lengths so far
    lengths = [int(v) for _, v in run0.scalars["charts/episodic_length"]]
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    assert [step for step, _ in run0.returns] == ends
    assert [step for step, _ in run0.scalars["charts/episodic_length"]] == ends


def test_each_moment_follows_its_own_interval(small_cfg_factory, run_dir):
    """Every cadence on distinct numbers: updates once step > learning_starts=42 at multiples of train_freq=3
    (45, 48, ..., 300), gradient_steps=2 batches of batch_size=8 each; target syncs every 40 steps after that
    step's updates; logs every 60 with the epsilon the step acted with; evals every 90 and a final one at 300;
    step checkpoints every 120."""
    cfg = small_cfg_factory(
        "agent.learning_starts=42", "agent.train_freq=3", "agent.gradient_steps=2", "agent.batch_size=8",
        "agent.target_update_interval=40", "log.interval=60", "eval.interval=90", "checkpoint.interval=120",
        "checkpoint.keep_last=5",
    )  # fmt: skip
    trainer = Trainer(cfg, run_dir)
    syncs, draws, losses = [], [], []
    sync, sample, learn = trainer.agent.sync_target, trainer.buffer.sample, trainer.agent.learn
    trainer.agent.sync_target = lambda: (syncs.append((trainer.step, trainer.updates)), sync())[1]
    trainer.buffer.sample = lambda size, rng: (draws.append(size), sample(size, rng))[1]

    def learn_and_record(batch, target_q=None):
        metrics = learn(batch, target_q)
        losses.append((trainer.step, metrics["td_loss"].item()))
        return metrics

    trainer.agent.learn = learn_and_record
    trainer.run()
    s = scalars(run_dir)

    def updates_by(step: int) -> int:
        return 2 * len(range(45, step + 1, 3))

    assert trainer.updates == updates_by(300) == 172 and draws == [8] * 172
    assert syncs == [(step, updates_by(step)) for step in range(40, 300, 40)]  # 40, 80, ..., 280
    assert [step for step, _ in s["losses/td_loss"]] == [60, 120, 180, 240, 300]
    # each log's loss is the mean over the updates since the log before it, not all of them or the last one
    logs = (0, 60, 120, 180, 240, 300)
    windows = [[v for t, v in losses if lo < t <= hi] for lo, hi in zip(logs, logs[1:], strict=False)]
    assert [len(w) for w in windows] == [12, 40, 40, 40, 40]  # updates at 45, 48, ..., 2 each
    assert [v for _, v in s["losses/td_loss"]] == pytest.approx([np.mean(w) for w in windows], rel=1e-5)
    # epsilon decays from 1.0 to 0.04 over 0.5 * 300 steps; the log at step t shows the epsilon of step t - 1
    expected = [max(1.0 - 0.96 * (t - 1) / 150, 0.04) for t in (60, 120, 180, 240, 300)]
    assert [v for _, v in s["charts/epsilon"]] == pytest.approx(expected, abs=1e-6)
    assert [step for step, _ in s["eval/mean_return"]] == [90, 180, 270, 300]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt")) == ["step_120.pt", "step_240.pt"]


def test_the_last_window_shorter_than_log_interval_is_logged_at_the_end(small_cfg_factory, run_dir):
    """300 steps logged every 120: scalars at 120 and 240, and the last 60 steps' at 300 (a short Atari run
    under log.interval=10000 would otherwise log no loss, epsilon or SPS at all)."""
    trainer = Trainer(small_cfg_factory("log.interval=120"), run_dir)
    trainer.run()
    s = scalars(run_dir)
    for tag in ("losses/td_loss", "losses/q_values", "charts/epsilon", "charts/SPS"):
        assert [step for step, _ in s[tag]] == [120, 240, 300], tag
    assert s["charts/epsilon"][-1][1] == pytest.approx(trainer.epsilon(300))


def test_a_run_that_cannot_update_or_asks_for_more_threads_than_cores_says_so(small_cfg_factory, run_dir, caplog):
    cores = len(os.sched_getaffinity(0))
    cfg = small_cfg_factory("agent.learning_starts=300", f"torch_threads={cores + 1}", "eval.interval=0")
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg, run_dir)
        trainer.run()
    assert trainer.updates == 0
    assert (
        "agent.learning_starts=300 >= total_steps=300: this run collects experience but makes no update" in caplog.text
    )
    assert f"torch_threads={cores + 1} is more than the {cores} CPU cores" in caplog.text


def test_a_run_past_total_steps_because_the_envs_step_together_says_so(small_cfg_factory, run_dir, caplog):
    cfg = small_cfg_factory("env.num_envs=3", "total_steps=301", "eval.interval=0")
    with caplog.at_level(logging.INFO, logger="dqn_cli.trainer"):
        trainer = Trainer(cfg, run_dir)
        trainer.run()
    assert trainer.step == 303
    assert "the 3 envs step together, so the run ends at step 303 (total_steps=301)" in caplog.text


def test_vector_envs_count_every_episode_that_ends_in_a_step(small_cfg_factory, run_dir):
    # three CartPole copies: some steps end two episodes at once (steps 63, 189 and 219 with seed 0)
    run = Run(small_cfg_factory("env.num_envs=3"), run_dir)
    steps = [step for step, _ in run.returns]
    assert len(steps) > len(set(steps))  # the case this test is about does happen
    assert run.trainer.episodes == len(steps)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["counters"]["episodes"] == len(steps)
    assert all(step % 3 == 0 for step in steps)


def test_truncated_episodes_end_and_are_logged(small_cfg_factory, run_dir):
    # Acrobot cut at 60 steps: an untrained agent never swings up that fast, so each episode is truncated
    run = Run(small_cfg_factory("env=acrobot", "env.max_episode_steps=60"), run_dir)
    assert run.returns == [(step, -60.0) for step in (60, 120, 180, 240, 300)]
    assert run.scalars["charts/episodic_length"] == [(step, 60.0) for step in (60, 120, 180, 240, 300)]
    assert run.trainer.episodes == 5
    # the buffer keeps the time limit apart from a termination: those steps still bootstrap from s'
    buffer = run.trainer.buffer
    assert np.flatnonzero(buffer.truncated[:300, 0]).tolist() == [59, 119, 179, 239, 299]
    assert not buffer.terminated.any()
    batch = buffer._gather(np.array([59, 58]), np.array([0, 0]))
    assert batch.terminated.tolist() == [0.0, 0.0] and (batch.discounts > 0).all()


def test_replay_stores_each_transition_with_the_state_it_led_to(run0):
    buffer = run0.trainer.buffer  # 300 steps of one env in a 500-slot buffer: no wrap
    obs, next_obs = buffer.obs[:300, 0], buffer.next_obs[:300, 0]
    ended = (buffer.terminated | buffer.truncated)[:300, 0]
    assert ended.sum() == len(run0.returns) and not buffer.truncated.any()  # CartPole truncates only at 500
    # within an episode, s' of a transition is s of the next one
    going_on = ~ended[:-1]
    np.testing.assert_array_equal(next_obs[:-1][going_on], obs[1:][going_on])
    # an episode's last s' is the state where the pole fell (|angle| > 0.2095 rad) or the cart left (|x| > 2.4) ...
    last = next_obs[ended]
    assert ((np.abs(last[:, 0]) > 2.4) | (np.abs(last[:, 2]) > 0.2095)).all()
    # ... and the next transition starts from a fresh state (CartPole draws each start in [-0.05, 0.05])
    assert np.abs(obs[1:][ended[:-1]]).max() <= 0.05


def scripted_evals(monkeypatch, returns: list[float]) -> list[dict]:
    """Evaluations that return `returns` one after another (each over 2 episodes); records their arguments."""
    import dqn_cli.trainer as trainer_module

    calls = []

    def run_episodes(agent, env, episodes, epsilon, seed, stop=None):
        calls.append({"episodes": episodes, "epsilon": epsilon, "seed": seed, "num_envs": env.num_envs})
        value = returns[len(calls) - 1]
        return np.array([value - 2, value + 2]), np.array([10, 30])  # mean `value`, std 2, mean length 20

    monkeypatch.setattr(trainer_module, "run_episodes", run_episodes)
    return calls


def test_an_eval_equal_to_stop_return_stops_training(small_cfg_factory, run_dir, monkeypatch):
    scripted_evals(monkeypatch, [5.0, 7.0, 9.0])
    run = Run(small_cfg_factory("eval.stop_on_solved=true", "eval.stop_return=7"), run_dir)
    assert run.trainer.step == 200 and run.result == 7.0
    assert run.scalars["eval/mean_return"] == [(100, 5.0), (200, 7.0)]
    assert run.scalars["eval/std_return"] == [(100, 2.0), (200, 2.0)]
    assert run.scalars["eval/mean_length"] == [(100, 20.0), (200, 20.0)]


def test_the_hparams_metrics_are_the_final_and_the_best_evaluation(small_cfg_factory, run_dir, monkeypatch):
    """TensorBoard's HParams tab compares runs by these two: a last eval below the best keeps them apart."""
    scripted_evals(monkeypatch, [5.0, 9.0, 7.0])
    run = Run(small_cfg_factory(), run_dir)
    assert run.scalars["hparams/final_return"] == [(300, 7.0)]
    assert run.scalars["hparams/best_return"] == [(300, 9.0)]


def test_training_evaluations_use_the_eval_settings(small_cfg_factory, run_dir, monkeypatch):
    calls = scripted_evals(monkeypatch, [1.0, 2.0, 3.0])
    # epsilon 0.05 from the nature protocol; 20 episodes on 16 envs (the most run side by side), seeded with
    # seed + seed_offset
    Run(small_cfg_factory("eval_protocol=nature", "eval.episodes=20", "seed=3", "eval.seed_offset=500"), run_dir)
    assert calls == [{"episodes": 20, "epsilon": 0.05, "seed": 503, "num_envs": 16}] * 3


class Countdown(gym.Env):
    """Episodes of `length` steps paying 1 per step; each reset's seed goes into `seeds`."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int, seeds: list):
        self.length, self.seeds = length, seeds

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seeds.append(seed)
        self.left = self.length
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.left -= 1
        return np.zeros(1, np.float32), 1.0, self.left == 0, False, {}


def countdown_envs(lengths: list[int], seeds: list) -> gym.vector.VectorEnv:
    def make(length: int) -> gym.Env:
        return gym.wrappers.RecordEpisodeStatistics(Countdown(length, seeds))

    makers = [functools.partial(make, n) for n in lengths]
    return gym.vector.SyncVectorEnv(makers, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class RandomPolicy:
    """Acts with the generator it is given, and records each epsilon and action."""

    def __init__(self):
        self.epsilons, self.actions = [], []

    def act(self, obs, epsilon, rng):
        self.epsilons.append(epsilon)
        self.actions.append(rng.integers(0, 2, len(obs)))
        return self.actions[-1]


def test_evaluation_spreads_the_episodes_over_the_envs_and_counts_only_its_quota():
    from dqn_cli.evaluate import run_episodes

    # 3 episodes on 2 envs: env 0 plays one, env 1 two. Env 0's episodes last 2 steps, env 1's 5: env 0 ends
    # at steps 2, 4, 6, 8 and 10, but only its first counts; env 1 ends at steps 5 and 10.
    seeds = []
    returns, lengths = run_episodes(RandomPolicy(), countdown_envs([2, 5], seeds), 3, 0.05, seed=7)
    assert returns.tolist() == [2.0, 5.0, 5.0] and lengths.tolist() == [2, 5, 5]


def test_evaluation_asked_to_stop_leaves_its_games_after_that_step():
    from dqn_cli.evaluate import run_episodes

    asked, policy = [], RandomPolicy()
    played = run_episodes(
        policy, countdown_envs([50, 50], []), 2, 0.05, seed=7, stop=lambda: asked.append(1) or len(asked) == 3
    )
    assert played is None and len(policy.actions) == 3  # games of 50 steps, left after the third
    # asked only while games are left: a stop on the step that ends the last one keeps the whole evaluation
    asked.clear()
    played = run_episodes(
        RandomPolicy(), countdown_envs([4, 4], []), 2, 0.05, seed=7, stop=lambda: asked.append(1) or len(asked) == 4
    )
    assert played is not None and played[0].tolist() == [4.0, 4.0] and len(asked) == 3


def test_evaluation_is_seeded_and_acts_with_its_epsilon():
    from dqn_cli.evaluate import run_episodes

    seeds, policy = [], RandomPolicy()
    run_episodes(policy, countdown_envs([3, 3], seeds), 2, 0.05, seed=7)
    assert seeds[:2] == [7, 8]  # the vector env seeds env i with seed + i
    assert policy.epsilons == [0.05] * 3
    rng = np.random.default_rng(7)  # the same generator, drawn from the same seed
    assert [a.tolist() for a in policy.actions] == [rng.integers(0, 2, 2).tolist() for _ in range(3)]


def test_steps_per_second_counts_only_this_sessions_steps(run_dir, small_cfg, monkeypatch):
    """A resumed run (here from step 500) reports its own speed, not the steps of the run it continues."""
    import types

    import dqn_cli.logger as logger_module

    clock = iter([100.0, 102.0])
    monkeypatch.setattr(logger_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    logger = logger_module.RunLogger(run_dir, small_cfg.log, 1000, start_step=500)
    assert logger.steps_per_second(600) == 50.0  # 100 steps in 2 s
    logger.close(600)


def test_the_final_log_line_names_the_evaluations_epsilon():
    from dqn_cli.trainer import eval_kind

    assert eval_kind(0.0) == "greedy eval"
    assert eval_kind(0.05) == "eval at epsilon 0.05"  # eval_protocol=nature: "greedy" was untrue

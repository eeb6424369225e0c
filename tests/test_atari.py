"""Atari support: preprocessing presets, vector envs, frame-once replay on real games, a short Pong
training run, the nature eval protocol with video, and clear refusals of bad input."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dqn_cli.buffers import ReplayBuffer, make_buffer
from dqn_cli.config import validate_eval, validate_train
from dqn_cli.envs import finished_episodes, make_env, real_next_obs
from dqn_cli.errors import UserError
from dqn_cli.frame_buffer import FrameStackReplay

# A Pong run that finishes in seconds: tiny buffer, early updates, episodes cut at 1,000 frames.
SMALL_ATARI = (
    "device=cpu",
    "torch_threads=2",  # the preset's: two 16-row update shards of one intra-op thread each
    "total_steps=300",
    "buffer.capacity=1000",
    "agent.learning_starts=64",
    "agent.target_update_interval=100",
    "agent.exploration_fraction=0.5",
    "env.preset.max_episode_frames=1000",
    "eval.interval=0",
    "eval.episodes=1",
    "checkpoint.interval=0",
    "log.interval=100",
    "log.progress=false",
)


@pytest.fixture(scope="session")
def atari_cfg(compose_cfg):
    """`atari_cfg("env.num_envs=2")` -> the full Pong train config with these overrides."""
    return lambda *overrides: compose_cfg("train", ["env=pong", *overrides])


def random_steps(env, steps: int, seed: int = 0):
    """Yield (obs, actions, rewards, real next obs, terminated, truncated, infos) of random play."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        actions = rng.integers(0, env.single_action_space.n, env.num_envs)
        next_obs, rewards, terminated, truncated, infos = env.step(actions)
        yield (
            obs,
            actions,
            rewards,
            real_next_obs(next_obs, infos, terminated | truncated),
            terminated,
            truncated,
            infos,
        )
        obs = next_obs


# ---- configs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["env=pong"],
        ["env=breakout"],
        ["env=atari", "env.game=SpaceInvaders"],
        ["env=pong", "env/preset=machado"],
        ["env=breakout", "env/preset=nature", "eval_protocol=nature"],
        ["env=cartpole", "eval_protocol=nature"],
    ],
)
def test_atari_configs_compose_resolve_and_validate(overrides, compose_cfg):
    cfg = compose_cfg("train", overrides)
    OmegaConf.resolve(cfg)
    validate_train(cfg)
    if "cartpole" not in overrides[0]:
        assert cfg.network.name == "nature_cnn"  # the env preset picks the Nature CNN
        assert cfg.env.kind == "atari" and cfg.env.id in (f"{cfg.env.game}NoFrameskip-v4", f"ALE/{cfg.env.game}-v5")


def test_presets_switch_protocol(atari_cfg):
    nature, machado = atari_cfg().env.preset, atari_cfg("env/preset=machado").env.preset
    assert (nature.noop_max, nature.sticky_actions, nature.terminal_on_life_loss) == (30, 0.0, True)
    assert (machado.noop_max, machado.sticky_actions, machado.terminal_on_life_loss) == (0, 0.25, False)
    assert atari_cfg("env/preset=machado").env.id == "ALE/Pong-v5"


@pytest.mark.parametrize("protocol", ["greedy", "nature"])
def test_eval_configs_validate(protocol, compose_cfg):
    cfg = compose_cfg("eval", ["checkpoint=x.pt", f"eval_protocol={protocol}", "video=true"])
    validate_eval(cfg)
    assert cfg.epsilon == {"greedy": 0.0, "nature": 0.05}[protocol]


@pytest.mark.parametrize(
    "overrides, atari, label",
    [
        (["eval_protocol=nature"], True, "nature"),
        (["eval_protocol=nature", "episodes=3"], True, "nature"),  # fewer games, the same protocol
        (["eval_protocol=nature", "epsilon=0"], True, "nature_eps0"),
        (["eval_protocol=nature", "eval_protocol.epsilon=0.01"], True, "nature_eps0.01"),  # the file says 0.05
        (["eval_protocol=nature", "eval_protocol.max_episode_frames=18000"], True, "nature_frames18000"),
        (["eval_protocol=nature", "eval_protocol.noop_max=0", "epsilon=0"], True, "nature_eps0_noop0"),
        (["eval_protocol=nature", "eval_protocol.noop_max=0"], False, "nature"),  # no no-ops outside Atari
        (["eval_protocol=greedy", "eval_protocol.noop_max=30"], True, "greedy_noop30"),
    ],
)
def test_a_changed_eval_protocol_is_named_by_what_changed(compose_cfg, overrides, atari, label):
    from dqn_cli.evaluate import protocol_label

    cfg = compose_cfg("eval", ["checkpoint=x.pt", *overrides])
    assert protocol_label(cfg.eval_protocol, float(cfg.epsilon), atari) == label


def test_a_users_own_eval_protocol_keeps_its_name_unless_epsilon_differs():
    from dqn_cli.evaluate import protocol_label

    mine = OmegaConf.create({"name": "mine", "epsilon": 0.1, "episodes": 5, "max_episode_frames": 900, "noop_max": 3})
    assert protocol_label(mine, 0.1, atari=True) == "mine"
    assert protocol_label(mine, 0.0, atari=True) == "mine_eps0"


@pytest.mark.parametrize(
    "overrides, episodes, epsilon",
    [
        (["env=pong"], 10, 0.0),
        (["env=pong", "eval_protocol=nature"], 30, 0.05),  # the protocol's count, in training too
        (["env=breakout", "eval_protocol=nature", "eval.episodes=5"], 5, 0.05),
        (["env=pong", "eval_protocol=nature", "experiment=pong_fast"], 3, 0.05),  # the bundle keeps evals short
        (["env=cartpole", "eval_protocol=nature"], 50, 0.05),  # CartPole's stop test is over 50 episodes
    ],
)
def test_training_evaluations_follow_the_eval_protocol(compose_cfg, overrides, episodes, epsilon):
    cfg = compose_cfg("train", overrides)
    assert (cfg.eval.episodes, cfg.eval.epsilon) == (episodes, epsilon)


def test_atari_without_a_game_asks_for_env_game(compose_cfg):
    with pytest.raises(UserError, match=r"env.game is required"):
        validate_train(compose_cfg("train", ["env=atari"]))


@pytest.mark.parametrize(
    "override, key",
    [
        ("env.preset.sticky_actions=1.5", "env.preset.sticky_actions"),
        ("env.preset.frame_skip=0", "env.preset.frame_skip"),
        ("env.vectorization=threads", "env.vectorization"),
        ("eval_protocol.epsilon=-1", "eval_protocol.epsilon"),
    ],
)
def test_bad_atari_values_name_the_key(override, key, atari_cfg):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate_train(atari_cfg(override))


def test_cuda_graphs_without_a_gpu_is_refused(atari_cfg):
    with pytest.raises(UserError, match="cuda_graphs=true .* needs a CUDA device; this run has device=cpu"):
        validate_train(atari_cfg("cuda_graphs=true", "device=cpu"))


# ---- preprocessing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
@pytest.mark.parametrize("preset", ["nature", "machado"])
def test_observations_are_stacked_84x84_uint8_frames(preset, vectorization, atari_cfg):
    env = make_env(atari_cfg(f"env/preset={preset}", f"env.vectorization={vectorization}").env, seed=0)
    assert env.single_observation_space.shape == (4, 84, 84)
    assert env.single_observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8
    assert not obs[0, :3].any() and obs[0, 3].any()  # zero padding before the first frame
    obs = list(random_steps(env, 20))[-1][0]
    assert 0 <= obs.min() and obs.max() <= 255 and obs[0, 0].any()
    assert len(np.unique(obs)) > 2  # grayscale, not binarised
    env.close()


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_training_clips_rewards_and_ends_episodes_at_lost_lives_but_scores_whole_games(vectorization, compose_cfg):
    cfg = compose_cfg("train", ["env=breakout", "env.num_envs=2", f"env.vectorization={vectorization}"])
    env = make_env(cfg.env, seed=0, training=True)
    ends, games = 0, []
    for *_, rewards, _, terminated, truncated, infos in random_steps(env, 700):
        assert np.all(np.abs(rewards) <= 1)
        ends += int((terminated | truncated).sum())
        games += list(finished_episodes(infos))
    env.close()
    assert games, "no whole game finished"
    assert ends >= 3 * len(games)  # five lives per Breakout game: several episode ends per game
    assert all(length > 100 for *_, length in games)  # whole games, not single lives

    eval_env = make_env(cfg.env, seed=0, num_envs=1, training=False)
    ends, games = 0, []
    for *_, terminated, truncated, infos in random_steps(eval_env, 400):
        ends += int((terminated | truncated).sum())
        games += list(finished_episodes(infos))
    eval_env.close()
    assert ends == len(games) >= 1  # evaluation episodes are whole games


def test_unknown_game_is_a_clear_error(compose_cfg):
    with pytest.raises(UserError, match=r"env.game='SpaceInvader' is not an ALE game\. Close matches: SpaceInvaders"):
        make_env(compose_cfg("train", ["env=atari", "env.game=SpaceInvader"]).env, seed=0)


@pytest.mark.parametrize("mode", ["sync", "async", "ale"])
def test_vector_envs_step_n_games_with_same_step_autoreset(mode, atari_cfg):
    cfg = atari_cfg("env.num_envs=2", f"env.vectorization={mode}", "env.preset.max_episode_frames=200")
    env = make_env(cfg.env, seed=0)
    assert env.num_envs == 2
    saw_end = False
    for obs, _, _, real_next, terminated, truncated, infos in random_steps(env, 60):
        assert obs.shape == (2, 4, 84, 84)
        for i in np.flatnonzero(terminated | truncated):
            saw_end = True
            np.testing.assert_array_equal(real_next[i], infos["final_obs"][i])
    env.close()
    assert saw_end  # 200 frames = 50 steps: every game was truncated once


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_training_ends_episodes_at_lost_lives_and_counts_whole_games_in_agent_steps(vectorization, compose_cfg):
    """A lost life ends the agent's episode while the game goes on; final_info reports each whole game once,
    with its unclipped score and its length in agent steps: the FIRE and no-op presses of the gymnasium
    pipeline's wrappers are not counted (a random Breakout game of 118 agent steps once reported 127)."""
    cfg = compose_cfg("train", ["env=breakout", "env.num_envs=2", f"env.vectorization={vectorization}"])
    env = make_env(cfg.env, seed=3, training=True)
    assert type(env).__name__ == ("ALEVectorEnv" if vectorization == "ale" else "SyncVectorEnv")
    steps, life_ends, games = np.zeros(2, int), 0, []
    for obs, _, _, real_next, terminated, truncated, infos in random_steps(env, 1500, seed=3):
        steps += 1
        np.testing.assert_array_equal(real_next[:, :3], obs[:, 1:])  # s' shifts s by one frame
        finished = list(finished_episodes(infos))
        for i, ret, length in finished:
            assert length == steps[i] and ret == int(ret) >= 0
            games.append(ret)
            steps[i] = 0
        life_ends += int((terminated | truncated).sum()) - len(finished)
    env.close()
    assert len(games) >= 3 and life_ends >= 3 * len(games)  # Breakout: five lives per game


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_max_episode_steps_truncates_after_that_many_agent_steps_and_restarts_the_stack(vectorization, atari_cfg):
    """Pong with FIRE on reset: the press is not one of the 30 steps (the sync pipeline once truncated at 29)."""
    cfg = atari_cfg("env.num_envs=2", f"env.vectorization={vectorization}", "env.max_episode_steps=30")
    assert cfg.env.preset.fire_on_reset
    env = make_env(cfg.env, seed=0)
    for t, (obs, *_, terminated, truncated, infos) in enumerate(random_steps(env, 61)):
        assert not terminated.any()  # Pong's games last far longer than 30 steps
        assert truncated.tolist() == [t in (29, 59)] * 2
        assert [length for *_, length in finished_episodes(infos)] == ([30, 30] if t in (29, 59) else [])
        starts = t in (0, 30, 60)  # obs is the first of an episode: zero-padded before its frame
        assert (not obs[:, :3].any()) == starts and obs[:, 3].any()
    env.close()


def test_max_episode_steps_caps_the_whole_game_across_lost_lives(compose_cfg):
    """Training Breakout (a lost life ends the agent's episode): the cap counts the agent's steps of the whole
    game, lost lives included, and a capped game restarts with five lives instead of going on."""
    cfg = compose_cfg("train", ["env=breakout", "env.num_envs=2", "env.max_episode_steps=150"])
    env = make_env(cfg.env, seed=0, training=True)
    steps, lost, capped_after_a_lost_life = np.zeros(2, int), np.zeros(2, int), 0
    for *_, terminated, truncated, infos in random_steps(env, 1200):
        steps += 1
        lengths = {i: length for i, _, length in finished_episodes(infos)}
        for i in range(2):
            if i not in lengths:
                lost[i] += int(terminated[i])
                assert not truncated[i] and steps[i] < 150
                continue
            assert lengths[i] == steps[i] <= 150 and truncated[i] == (steps[i] == 150)
            if truncated[i]:
                assert env.envs[i].unwrapped.ale.lives() == 5  # a new game
                capped_after_a_lost_life += int(lost[i] > 0)
            steps[i], lost[i] = 0, 0
    env.close()
    assert capped_after_a_lost_life >= 2


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's per-thread signal masks")
def test_ale_threads_leave_ctrl_c_and_sigterm_to_the_main_thread(atari_cfg):
    def blocked(task: Path) -> int:
        line = next(x for x in (task / "status").read_text().splitlines() if x.startswith("SigBlk:"))
        return int(line.split()[1], 16)

    signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    before = {t.name for t in Path("/proc/self/task").iterdir()}
    env = make_env(atari_cfg("env.num_envs=2", "env.vectorization=ale", "env.num_threads=2").env, seed=0)
    workers = [t for t in Path("/proc/self/task").iterdir() if t.name not in before]
    try:
        assert len(workers) >= 2
        assert all(blocked(t) & signals == signals for t in workers)
        assert blocked(Path("/proc/thread-self")) & signals == 0  # the main thread's mask is back
    finally:
        env.close()


def test_ale_vectorization_resets_some_games_and_reorders_answers(compose_cfg):
    from dqn_cli.ale_vector import ALEVectorEnv

    env = make_env(compose_cfg("train", ["env=breakout", "env.num_envs=2", "env.vectorization=ale"]).env, seed=0)
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([1, 1]))
    obs, _ = env.reset(seed=7, options={"reset_mask": np.array([False, True])})
    assert env.age.tolist() == [5, 0] and env.lengths.tolist() == [5, 0]
    assert obs[0, 0].any() and not obs[1, :3].any()  # game 0 goes on; game 1 starts from a padded stack
    env.close()
    # the C++ env names each answer's game in info["env_id"]; answers out of order are put back in order
    frames, rewards = np.arange(3)[:, None] * np.ones((3, 2)), np.array([10.0, 20.0, 30.0])
    info = {"env_id": np.array([2, 0, 1]), "lives": np.array([3, 1, 2]), "note": "kept"}
    out_frames, out_rewards, out_info = ALEVectorEnv._ordered(frames, rewards, info)
    assert out_rewards.tolist() == [20.0, 30.0, 10.0] and out_frames[:, 0].tolist() == [1, 2, 0]
    assert out_info["lives"].tolist() == [1, 2, 3] and out_info["env_id"].tolist() == [0, 1, 2]
    assert out_info["note"] == "kept"


def test_ale_vectorization_gives_the_gymnasium_pipelines_pong_frames(atari_cfg):
    """Without no-op starts and FIRE on reset both pipelines are deterministic, and the same actions give
    the same frames and rewards. (ale-py presses FIRE at reset its own way: a few emulator frames apart.)"""
    overrides = ("env.preset.noop_max=0", "env.preset.fire_on_reset=false")
    envs = [make_env(atari_cfg(*overrides, f"env.vectorization={v}").env, seed=0) for v in ("sync", "ale")]
    np.testing.assert_array_equal(*(env.reset(seed=0)[0] for env in envs))
    actions = [0] * 5 + [2] * 12 + [3] * 12 + list(np.random.default_rng(0).integers(0, 6, 400))
    points = 0
    for action in actions:
        (obs, reward, *_), (ale_obs, ale_reward, *_) = (env.step(np.array([action])) for env in envs)
        np.testing.assert_array_equal(obs, ale_obs)
        assert reward == ale_reward
        points += int(reward[0] != 0)
    assert points >= 2  # the comparison covers scored points, not just the paddle
    for env in envs:
        env.close()


def test_every_ale_game_has_an_ale_py_rom():
    from dqn_cli.ale_vector import rom_id
    from dqn_cli.atari import ale_games

    assert {rom_id(g) for g in ("Pong", "SpaceInvaders", "MsPacman", "TicTacToe3D")} == {
        "pong",
        "space_invaders",
        "ms_pacman",
        "tic_tac_toe_3d",
    }
    assert len({rom_id(g) for g in ale_games()}) == len(ale_games())


# ---- frame-once replay on real games ---------------------------------------------------------------------


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
@pytest.mark.parametrize("game, n_envs", [("Breakout", 2), ("Pong", 1)])
def test_frame_once_replay_matches_the_env_stacks_across_lives_and_streams(game, n_envs, vectorization, compose_cfg):
    overrides = [f"env.game={game}", f"env.num_envs={n_envs}", f"env.vectorization={vectorization}"]
    cfg = compose_cfg("train", ["env=atari", *overrides])
    cfg.env.preset.max_episode_frames = 1600  # Pong: truncations every 400 steps
    env = make_env(cfg.env, seed=1)
    capacity = 300 * n_envs  # 900 steps: the ring wraps
    frames = FrameStackReplay(capacity, (4, 84, 84), np.uint8, n_envs, 1, 0.99)
    naive = ReplayBuffer(capacity, (4, 84, 84), np.uint8, n_envs, 1, 0.99)
    ends = 0
    for obs, actions, rewards, real_next, terminated, truncated, _ in random_steps(env, 900, seed=1):
        frames.add(obs, actions, rewards, real_next, terminated, truncated)
        naive.add(obs, actions, rewards, real_next, terminated, truncated)
        ends += int((terminated | truncated).sum())
    env.close()
    assert ends >= 2
    t, e = np.meshgrid(np.arange(frames.size_per_env), np.arange(n_envs), indexing="ij")
    t, e = t.ravel(), e.ravel()
    ok = frames.sampleable(t, e)
    assert ok.sum() >= (300 - 4) * n_envs
    got, want = frames._gather(t[ok], e[ok]), naive._gather(t[ok], e[ok])
    np.testing.assert_array_equal(got.obs, want.obs)
    live = got.terminated == 0
    np.testing.assert_array_equal(got.next_obs[live], want.next_obs[live])


def test_trainer_refuses_a_buffer_that_cannot_fit(run_dir, atari_cfg):
    from dqn_cli.trainer import Trainer

    with pytest.raises(UserError, match=r"buffer.capacity=2000000000 needs [\d.]+ GiB but only"):
        Trainer(atari_cfg(*SMALL_ATARI, "buffer.capacity=2000000000"), run_dir)


def test_frame_buffer_is_chosen_for_atari_and_estimates_its_bytes():
    cfg = OmegaConf.create({"kind": "uniform", "capacity": 1000})
    buf = make_buffer(cfg, (4, 84, 84), np.uint8, 2, frame_stacks=True)
    assert isinstance(buf, FrameStackReplay) and buf.size_per_env == 500


# ---- training and evaluation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory, atari_cfg):
    """A few-hundred-step Pong training run (CI-sized): its run dir and final eval."""
    from dqn_cli.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("pong")
    trainer = Trainer(atari_cfg(*SMALL_ATARI), run_dir)
    assert isinstance(trainer.buffer, FrameStackReplay)
    final = trainer.run()
    return run_dir, trainer, final


def test_short_pong_training_run(pong_run):
    run_dir, trainer, final = pong_run
    assert trainer.step == 300 and trainer.updates > 0
    assert trainer.agent.shards == 2  # the update ran as two 16-row halves on two threads
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert np.isfinite(final) and -21 <= final <= 21


@pytest.mark.parametrize("vectorization, n_envs", [("async", 2), ("ale", 2), ("ale", 1)])
def test_overlap_steps_async_envs_while_learning_and_keeps_the_updates(vectorization, n_envs, run_dir, atari_cfg):
    """overlap=true: the updates run between step_async and step_wait, the same number as without it,
    all of them run before each checkpoint, and none is left over at the end."""
    from dqn_cli.checkpoint import load_checkpoint
    from dqn_cli.trainer import Trainer

    common = (*SMALL_ATARI, f"env.num_envs={n_envs}", f"env.vectorization={vectorization}", "checkpoint.interval=150")
    plain = Trainer(atari_cfg(*common), run_dir / "plain")
    plain.run()
    trainer = Trainer(atari_cfg(*common, "overlap=true"), run_dir / "overlap")
    events, step_async, learn = [], trainer.env.step_async, trainer._learn
    trainer.env.step_async = lambda actions: (events.append("step_async"), step_async(actions))[1]
    trainer._learn = lambda batch_size: (events.append("learn"), learn(batch_size))[1]
    trainer.run()
    assert trainer.updates == plain.updates > 0 and trainer.due_updates == 0
    pairs = zip(events[:-1], events[1:], strict=True)
    learned_while_stepping = sum(a == "step_async" and b == "learn" for a, b in pairs)
    assert learned_while_stepping > 0.8 * (trainer.updates - 4)  # all but those flushed before moments
    for name in ("step_150.pt", "step_300.pt"):
        a, b = (load_checkpoint(t.run_dir / "checkpoints" / name)["counters"] for t in (plain, trainer))
        assert a["updates"] == b["updates"] and b["due_updates"] == 0, name


@pytest.mark.parametrize("storage", ["host", "device"])
def test_queueing_part_of_the_updates_before_the_actions_changes_nothing(storage, run_dir, atari_cfg):
    """queue_ahead (overlap=true on a GPU, forced here on the CPU): a quarter of each round of updates runs
    before the step's actions are taken, the rest after step_async. The computations are the same, in the
    same order, so the run is bitwise the plain overlap run; with storage=device the round, drawn at
    once, is split across the two calls."""
    from dqn_cli.trainer import Trainer

    common = (*SMALL_ATARI, "env.num_envs=4", "env.vectorization=ale", "overlap=true", "agent.gradient_steps=4",
              f"buffer.storage={storage}")  # fmt: skip
    plain = Trainer(atari_cfg(*common), run_dir / "plain")
    assert not plain.queue_ahead  # the CPU's order: the updates while the games step
    plain.run()
    ahead = Trainer(atari_cfg(*common), run_dir / "ahead")
    ahead.queue_ahead = True
    events, step_async, learn_batch = [], ahead.env.step_async, ahead._learn_batch
    ahead.env.step_async = lambda actions: (events.append("step"), step_async(actions))[1]
    ahead._learn_batch = lambda *a: (events.append("learn"), learn_batch(*a))[1]
    ahead.run()
    assert ahead.updates == plain.updates > 0 and ahead.due_updates == 0 and not ahead.round
    first = events.index("learn")  # the first round of 4: one update before the actions, three after
    assert events[first : first + 5] == ["learn", "step", "learn", "learn", "learn"]
    for name, w in plain.agent.q_net.state_dict().items():
        assert torch.equal(ahead.agent.q_net.state_dict()[name], w), name


def test_overlap_with_bf16_on_the_cpu_defers_the_updates_and_saves_and_logs_every_one(run_dir, atari_cfg, monkeypatch):
    """overlap=true with bf16-mixed on the CPU: the shard thread finishes each update while the loop
    goes on. The metrics the trainer logs are the ones the shard thread wrote, even when it writes them
    late (it waits for them), and every checkpoint holds every update."""
    import time

    from dqn_cli.checkpoint import load_checkpoint
    from dqn_cli.trainer import Trainer

    common = (*SMALL_ATARI, "env.vectorization=ale", "overlap=true")
    fp32 = Trainer(atari_cfg(*common), run_dir / "fp32")
    assert not fp32.agent.defer_updates  # fp32 acts on the weights the optimizer steps
    fp32.env.close()
    trainer = Trainer(atari_cfg(*common, "precision=bf16-mixed", "checkpoint.interval=150"), run_dir / "bf16")
    assert trainer.agent.defer_updates
    written, collected = [], []
    finish = trainer.agent._finish_to_spare

    def late_finish(own, others, metrics):  # the shard thread writes each update's metrics 20 ms late
        time.sleep(0.02)
        finish(own, others, metrics)
        written.append(metrics[0].item())

    trainer.agent._finish_to_spare = late_finish
    collect = Trainer._collect_metrics

    def spy(self):  # the td_loss values each collection adds
        before = len(self.metrics.get("td_loss", []))
        collect(self)
        collected.extend(self.metrics.get("td_loss", [])[before:])

    monkeypatch.setattr(Trainer, "_collect_metrics", spy)
    trainer.run()
    assert len(written) == trainer.updates > 0 and collected == written
    for name in ("step_150.pt", "last.pt"):
        state = load_checkpoint(run_dir / "bf16" / "checkpoints" / name)
        steps = {int(s["step"]) for s in state["agent"]["optimizer"]["state"].values()}
        assert steps == {state["counters"]["updates"]} and state["counters"]["updates"] > 0, name  # none in flight
    for key, w in trainer.agent.q_net.state_dict().items():
        assert torch.equal(state["agent"]["q_net"][key], w), key


def test_logging_more_often_does_not_change_a_run_with_deferred_updates(run_dir, atari_cfg):
    """Collecting the metrics of deferred updates waits for them without swapping their weights in:
    acting keeps the weights it would have used, so how often a run logs does not change it."""
    from dqn_cli.trainer import Trainer

    weights = []
    for interval in (100, 7):
        cfg = atari_cfg(*SMALL_ATARI, "env.vectorization=ale", "overlap=true", "precision=bf16-mixed")
        cfg.log.interval = interval
        trainer = Trainer(cfg, run_dir / str(interval))
        assert trainer.agent.defer_updates
        trainer.run()
        weights.append(trainer.agent.q_net.state_dict())
    for key, w in weights[0].items():
        assert torch.equal(weights[1][key], w), key


WRAPPED_NSTEP = ("buffer.capacity=240", "total_steps=400", "agent.n_step=3", "env.num_envs=2")


@pytest.mark.parametrize(
    "kind, extra", [("uniform", ()), ("prioritized", ()), ("uniform", WRAPPED_NSTEP)], ids=["uniform", "prio", "wrap"]
)
def test_device_frame_store_trains_as_the_host_buffer(run_dir, atari_cfg, kind, extra):
    """buffer.storage=device (on the CPU here): batches gathered from the frame store give the same run,
    bitwise, as host batches; also with 3-step returns over 2 streams once the ring has wrapped."""
    from dqn_cli.trainer import Trainer

    host = Trainer(atari_cfg(*SMALL_ATARI, f"buffer={kind}", *extra), run_dir / "host")
    host.run()
    device = Trainer(atari_cfg(*SMALL_ATARI, f"buffer={kind}", "buffer.storage=device", *extra), run_dir / "device")
    assert device.agent.frame_store is getattr(device.buffer, "storage", device.buffer).store
    device.run()
    assert device.updates == host.updates > 0
    assert device.buffer.full == bool(extra)  # the wrapped case overwrote its oldest frames
    for name, w in host.agent.q_net.state_dict().items():
        assert torch.equal(device.agent.q_net.state_dict()[name], w), name


def test_device_frame_store_draws_a_round_of_batches_at_once(run_dir, atari_cfg):
    from dqn_cli.trainer import Trainer

    draws = []
    cfg = atari_cfg(*SMALL_ATARI, "buffer.storage=device", "env.num_envs=4", "agent.gradient_steps=2")
    trainer = Trainer(cfg, run_dir)
    assert trainer.draw_together
    sample = trainer.buffer.sample
    trainer.buffer.sample = lambda size, rng: (draws.append(size), sample(size, rng))[1]
    trainer.run()
    assert set(draws) == {64} and trainer.updates == 2 * len(draws) > 0


def test_batched_targets_score_each_round_in_one_target_pass(run_dir, atari_cfg):
    """batched_targets (default; on a GPU, forced here on the CPU): with a round of 2 updates per vector step,
    the target network scores the 64 next states of the round in one pass, and the run is the run with
    a target pass per batch."""
    from dqn_cli.trainer import Trainer

    round_of_two = (*SMALL_ATARI, "buffer.storage=device", "env.num_envs=4", "agent.gradient_steps=2")
    per_batch = Trainer(atari_cfg(*round_of_two), run_dir / "per_batch")
    assert not per_batch.batched_targets  # the CPU's shard threads split each update's own target pass
    ahead = Trainer(atari_cfg(*round_of_two), run_dir / "ahead")
    ahead.batched_targets = True
    passes = []
    target_values = ahead.agent.target_values
    ahead.agent.target_values = lambda rows: (passes.append(len(rows.actions)), target_values(rows))[1]
    per_batch.run()
    ahead.run()
    assert set(passes) == {64} and ahead.updates == 2 * len(passes) == per_batch.updates > 0
    for name, w in per_batch.agent.q_net.state_dict().items():
        torch.testing.assert_close(ahead.agent.q_net.state_dict()[name], w, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("ahead, batched", [(False, False), (True, True)], ids=["plain", "ahead-batched"])
def test_a_round_run_whole_is_the_round_run_update_by_update(run_dir, atari_cfg, ahead, batched):
    """round_graphs (with cuda_graphs=true on a GPU each round is one graph replay; forced here on the CPU,
    eager): each round drawn at once runs whole through agent.learn_round, also where queue_ahead asks for a
    quarter of it first, with or without batched targets. The run is bitwise the run update by update."""
    from dqn_cli.trainer import Trainer

    common = (*SMALL_ATARI, "buffer.storage=device", "env.num_envs=4", "env.vectorization=ale", "overlap=true",
              "agent.gradient_steps=4")  # fmt: skip
    trainers = {}
    for name in ("by_update", "whole"):
        trainers[name] = trainer = Trainer(atari_cfg(*common), run_dir / name)
        assert not trainer.round_graphs  # no CUDA graphs on the CPU
        trainer.batched_targets = batched
    whole = trainers["whole"]
    whole.round_graphs, whole.queue_ahead = True, ahead
    rounds, learn_round = [], whole.agent.learn_round
    whole.agent.learn_round = lambda rows, count, targets: (rounds.append(count), learn_round(rows, count, targets))[1]
    for trainer in trainers.values():
        trainer.run()
    by_update = trainers["by_update"]
    assert set(rounds) == {4} and whole.updates == 4 * len(rounds) == by_update.updates > 0
    assert whole.due_updates == 0 and not whole.round
    for name, w in by_update.agent.q_net.state_dict().items():
        assert torch.equal(whole.agent.q_net.state_dict()[name], w), name


def test_device_frame_store_needs_atari_frames(compose_cfg):
    with pytest.raises(UserError, match=r"buffer.storage=device keeps stacked Atari frames .* env.kind=classic"):
        validate_train(compose_cfg("train", ["buffer.storage=device"]))


@pytest.mark.parametrize("save_buffer", [True, False])
def test_a_stopped_overlap_run_keeps_its_due_updates_for_resume(run_dir, atari_cfg, save_buffer):
    """A stop between a step and the updates it made due (they run during the next step) saves their
    count in last.pt; the resumed run runs them first and ends with every update of a whole run.
    Without a replay file (checkpoint.save_buffer=false) the buffer refills from empty, and the updates
    due on the lost one are dropped."""
    import signal

    from dqn_cli.checkpoint import load_checkpoint
    from dqn_cli.signals import TrainingStoppedError
    from dqn_cli.trainer import Trainer

    common = (*SMALL_ATARI, "env.num_envs=2", "env.vectorization=async", "overlap=true")
    common += (f"checkpoint.save_buffer={str(save_buffer).lower()}",)
    trainer = Trainer(atari_cfg(*common), run_dir / "part")
    inner, fired = trainer.env.step_wait, []

    def step_wait(*args, **kwargs):
        if not fired and trainer.step == 150:  # this step reaches 152, a multiple of train_freq=4
            fired.append(signal.raise_signal(signal.SIGINT))
        return inner(*args, **kwargs)

    trainer.env.step_wait = step_wait
    with pytest.raises(TrainingStoppedError):
        trainer.run()
    counters = load_checkpoint(run_dir / "part" / "checkpoints" / "last.pt")["counters"]
    assert counters["step"] == 152 and counters["due_updates"] == 1
    resumed = Trainer(atari_cfg(*common, f"resume={run_dir / 'part'}"), "unused")
    assert resumed.due_updates == (1 if save_buffer else 0)
    resumed.run()
    assert resumed.step == 300 and resumed.due_updates == 0
    if save_buffer:
        whole = Trainer(atari_cfg(*common), run_dir / "whole")
        whole.run()
        assert resumed.updates == whole.updates
    else:  # updates restart once learning_starts (64) more steps are stored
        assert resumed.updates == counters["updates"] + (300 - (152 + 64)) // 4


def test_overlap_needs_async_vector_envs(atari_cfg):
    with pytest.raises(UserError, match=r"overlap=true .* env.vectorization=sync and env.num_envs=2"):
        validate_train(atari_cfg("overlap=true", "env.num_envs=2"))


def test_overlap_with_async_envs_needs_more_than_one_game(atari_cfg):
    # one async game leaves nothing to step while the update runs; ale threads overlap even one game
    with pytest.raises(UserError, match=r"overlap=true .* env.vectorization=async and env.num_envs=1"):
        validate_train(atari_cfg("overlap=true", "env.vectorization=async", "env.num_envs=1"))
    validate_train(atari_cfg("overlap=true", "env.vectorization=async", "env.num_envs=2"))
    validate_train(atari_cfg("overlap=true", "env.vectorization=ale", "env.num_envs=1"))


def test_eval_nature_protocol_writes_scores_video_and_tensorboard(pong_run, tmp_path, compose_cfg):
    from dqn_cli.evaluate import evaluate

    run_dir, trainer, _ = pong_run
    cfg = compose_cfg(
        "eval",
        [
            f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}",
            "eval_protocol=nature",
            "eval_protocol.max_episode_frames=800",  # a short cap keeps the test quick
            "episodes=2",
            "video=true",
            f"output={tmp_path / 'eval.json'}",
            "device=cpu",
        ],
    )
    result = evaluate(cfg)
    # a shorter frame cap than the protocol's is another protocol, named by what changed
    assert result["protocol"] == "nature_frames800" and result["epsilon"] == 0.05 and len(result["returns"]) == 2
    assert all(length <= 200 for length in result["lengths"])  # 800 frames / frame_skip 4
    video = Path(result["video"])
    assert video.parent == run_dir / "videos" and video.suffix == ".mp4" and video.stat().st_size > 1000
    assert json.loads((tmp_path / "eval.json").read_text())["mean_return"] == result["mean_return"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    (scalar,) = events.Scalars("eval_nature_frames800/mean_return")
    assert scalar.step == trainer.step and scalar.value == pytest.approx(result["mean_return"])

    # another epsilon is not the protocol either: its scores go under a name of their own
    cfg.epsilon, cfg.video, cfg.output = 0.0, False, None
    greedy = evaluate(cfg)
    assert greedy["protocol"] == "nature_eps0_frames800" and greedy["epsilon"] == 0.0
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert len(events.Scalars("eval_nature_frames800/mean_return")) == 1
    assert events.Scalars("eval_nature_eps0_frames800/mean_return")[0].value == pytest.approx(greedy["mean_return"])


@pytest.mark.parametrize(
    "game, env_id, said",
    [
        ("Pongg", "PonggNoFrameskip-v4", "env.game='Pongg' is not an ALE game."),
        ("Pong", "PongNoFrameskip-v9", "env.id='PongNoFrameskip-v9' is not a"),
    ],
)
def test_eval_of_an_atari_game_this_ale_lacks_says_what_to_install(pong_run, tmp_path, compose_cfg, game, env_id, said):
    """The game comes from the checkpoint (an ale-py of another version registers other ids): dqn train's
    advice (env.game=..., the presets' ids) is not dqn eval's, which takes no env settings."""
    from dqn_cli.evaluate import evaluate

    run_dir, _, _ = pong_run
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["env"].update(game=game, id=env_id)
    torch.save(state, tmp_path / "elsewhere.pt")
    with pytest.raises(UserError) as e:
        evaluate(compose_cfg("eval", [f"checkpoint={tmp_path / 'elsewhere.pt'}", "device=cpu", "tensorboard=false"]))
    assert "was trained on an env this machine cannot build: " + said in str(e.value)
    assert "install what registers it" in str(e.value)
    assert "Games are spelled" not in str(e.value) and "The presets use" not in str(e.value)


def test_bf16_mixed_pong_run_checkpoints_fp32_and_evaluates_with_the_trained_weights(
    tmp_path, atari_cfg, compose_cfg, monkeypatch
):
    import dqn_cli.evaluate as evaluate_module
    from dqn_cli.checkpoint import load_checkpoint
    from dqn_cli.trainer import Trainer

    trainer = Trainer(atari_cfg(*SMALL_ATARI, "total_steps=200", "precision=bf16-mixed"), tmp_path / "run")
    assert np.isfinite(trainer.run()) and trainer.updates > 0
    assert trainer.agent.shards == 2 and next(trainer.agent.q_compute.parameters()).dtype == torch.bfloat16
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert {t.dtype for t in state["agent"]["q_net"].values()} == {torch.float32}  # the masters

    seen = {}

    def capture(agent, env, *args):  # the agent `dqn eval` rebuilt, instead of playing episodes
        seen["agent"] = agent
        return np.zeros(1), np.zeros(1, int)

    monkeypatch.setattr(evaluate_module, "run_episodes", capture)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    evaluate_module.evaluate(compose_cfg("eval", [f"checkpoint={checkpoint}", "episodes=1", "device=cpu"]))
    obs = trainer.buffer.sample(32, np.random.default_rng(0)).obs
    np.testing.assert_array_equal(seen["agent"].greedy(obs), trainer.agent.greedy(obs))
    for c, m in zip(seen["agent"].q_compute.parameters(), trainer.agent.q_net.parameters(), strict=True):
        assert torch.equal(c, m.to(torch.bfloat16))


# ---- command line: bad input exits 2 with one paragraph, no traceback -------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dqn_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "env=atari", "env.game=Pongg"), "env.game='Pongg' is not an ALE game"),
        (("train", "env=cartpole", "network=nature_cnn"), "network=nature_cnn needs image observations"),
        (("train", "env=pong", "buffer.capacity=2000000000"), "buffer.capacity=2000000000 needs"),
        # the async workers ignore SIGTERM: an env left open by the error must not hold up the exit
        (
            ("train", "env=pong", "env.num_envs=2", "env.vectorization=async", "buffer.capacity=2000000000"),
            "buffer.capacity=2000000000 needs",
        ),
    ],
)
def test_cli_bad_input_exits_2_without_traceback(args, message, tmp_path):
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", "log.progress=false", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_device_cuda_without_gpu_exits_2(tmp_path):
    proc = run_cli("train", "env=pong", "device=cuda", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


# ---- GPU path (skipped without a GPU) --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_auto_picks_cuda_and_trains_pong(run_dir, atari_cfg):
    from dqn_cli.trainer import Trainer

    trainer = Trainer(atari_cfg(*SMALL_ATARI, "device=auto"), run_dir)
    assert trainer.device.type == "cuda"
    trainer.run()
    assert trainer.updates > 0


# ---- every preprocessing knob comes from the config ------------------------------------------------------


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_screen_size_frame_stack_and_action_set_come_from_the_preset(vectorization, atari_cfg):
    cfg = atari_cfg(f"env.vectorization={vectorization}", "env.preset.screen_size=42", "env.preset.frame_stack=2",
                    "env.preset.full_action_space=true")  # fmt: skip
    env = make_env(cfg.env, seed=0)
    assert env.single_observation_space.shape == (2, 42, 42) and env.reset(seed=0)[0].shape == (1, 2, 42, 42)
    assert env.single_action_space.n == 18  # Pong's minimal set has 6
    env.close()


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
@pytest.mark.parametrize("frame_skip, steps, fps", [(4, 50, 15.0), (2, 100, 30.0)])
def test_frame_skip_comes_from_the_preset(vectorization, frame_skip, steps, fps, atari_cfg):
    from dqn_cli.atari import frames_per_second

    # a 200-frame cap ends the first episode after 200 / frame_skip steps (no no-ops, no FIRE: no frame before it)
    cfg = atari_cfg(f"env.vectorization={vectorization}", f"env.preset.frame_skip={frame_skip}",
                    "env.preset.max_episode_frames=200", "env.preset.noop_max=0",
                    "env.preset.fire_on_reset=false")  # fmt: skip
    assert frames_per_second(cfg.env) == fps  # a video of it plays in real time: the ALE runs at 60 Hz
    env = make_env(cfg.env, seed=0)
    env.reset(seed=0)
    for step in range(1, steps + 1):
        *_, terminated, truncated, infos = env.step(np.array([0]))
        assert (not terminated[0]) and truncated[0] == (step == steps), step
    assert list(finished_episodes(infos)) == [(0, 0.0, steps)]
    env.close()


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_sticky_actions_come_from_the_preset(vectorization, atari_cfg):
    """With sticky_actions=1 the game keeps repeating its first action (NOOP): pressing UP or DOWN changes
    nothing. With 0 they move the paddle."""

    def frames_after(action: int, sticky: float) -> np.ndarray:
        cfg = atari_cfg(f"env.vectorization={vectorization}", f"env.preset.sticky_actions={sticky}",
                        "env.preset.noop_max=0", "env.preset.fire_on_reset=false")  # fmt: skip
        env = make_env(cfg.env, seed=0)
        env.reset(seed=0)
        for _ in range(30):
            obs = env.step(np.array([action]))[0]
        env.close()
        return obs

    assert np.array_equal(frames_after(2, 1.0), frames_after(3, 1.0))
    assert not np.array_equal(frames_after(2, 0.0), frames_after(3, 0.0))


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_no_op_starts_come_from_the_preset(vectorization, atari_cfg):
    """Each reset plays a random number of no-op frames, up to noop_max, before the first observation (FIRE
    on reset off: no other frame before it). A bug that passed noop_max=0 to the env passed every test that
    sets noop_max=0 to compare pipelines."""

    def frames_at_reset(noop_max: int) -> list[int]:
        cfg = atari_cfg(f"env.vectorization={vectorization}", f"env.preset.noop_max={noop_max}",
                        "env.preset.fire_on_reset=false")  # fmt: skip
        env = make_env(cfg.env, seed=0)
        frames = [int(env.reset(seed=seed)[1]["episode_frame_number"][0]) for seed in range(10)]
        env.close()
        return frames

    assert frames_at_reset(0) == [0] * 10
    frames = frames_at_reset(30)
    assert all(0 <= f <= 30 for f in frames) and len(set(frames)) >= 5, frames  # a different start per seed


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("fire", [True, False])
def test_fire_on_reset_launches_the_ball_after_each_reset_and_lost_life(fire, training, vectorization, compose_cfg):
    """Breakout waits for FIRE. A NOOP-only agent loses all five lives when FIRE is pressed for it after the
    reset and after each lost life (in training one agent episode each, in evaluation one whole game), in
    both pipelines; without fire_on_reset it never loses one. (A greedy agent trained with FIRE pressed for
    it would otherwise wait out the frame cap in evaluation.)"""
    overrides = [f"env.preset.fire_on_reset={str(fire).lower()}", f"env.vectorization={vectorization}"]
    cfg = compose_cfg("train", ["env=breakout", *overrides])
    env = make_env(cfg.env, seed=0, training=training)
    env.reset(seed=0)
    ends, games, played = 0, [], []
    for _ in range(300):
        *_, terminated, truncated, infos = env.step(np.array([0]))
        ends += int(terminated[0] or truncated[0])
        games += list(finished_episodes(infos))
        played.append(int(infos.get("actions", [0])[0]))
        if games:
            break
    env.close()
    assert (ends, len(games)) == ((5 if training else 1, 1) if fire else (0, 0))
    # ale-py presses FIRE as the agent's step after a lost life, and says so; gymnasium's wrappers between steps
    assert played.count(1) == (4 if fire and vectorization == "ale" else 0)


def test_eval_protocol_replaces_the_frame_cap_and_no_ops_it_sets(atari_cfg, compose_cfg):
    from dqn_cli.atari import apply_eval_protocol

    env = atari_cfg("env.preset.noop_max=7", "env.preset.max_episode_frames=4000").env
    nature = compose_cfg("eval", ["checkpoint=x.pt", "eval_protocol=nature"]).eval_protocol
    out = apply_eval_protocol(env, nature).preset
    assert (out.noop_max, out.max_episode_frames) == (30, 108000)
    assert (env.preset.noop_max, env.preset.max_episode_frames) == (7, 4000)  # the training config is untouched
    no_noops = compose_cfg("eval", ["checkpoint=x.pt", "eval_protocol.noop_max=0"]).eval_protocol
    out = apply_eval_protocol(env, no_noops).preset  # greedy: no frame cap of its own, and 0 no-ops
    assert (out.noop_max, out.max_episode_frames) == (0, 4000)
    cartpole = compose_cfg("train", ["env=cartpole"]).env
    assert apply_eval_protocol(cartpole, nature) is cartpole
    # the protocol's frame cap is the only one: whole games, whatever agent-step cap training had
    capped = atari_cfg("env.max_episode_steps=300").env
    assert apply_eval_protocol(capped, nature).max_episode_steps is None
    assert apply_eval_protocol(capped, no_noops).max_episode_steps == 300


def test_training_evaluations_play_under_the_eval_protocol(run_dir, atari_cfg):
    """The final evaluation of a (20-step, update-free) Pong run plays under eval_protocol: its 200-frame cap
    cuts the game (which lasts thousands of frames) at no more than 50 steps, where training's 4000 would not."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dqn_cli.trainer import Trainer

    cfg = atari_cfg(*SMALL_ATARI, "total_steps=20", "agent.learning_starts=1000", "env.preset.max_episode_frames=4000",
                    "eval_protocol.max_episode_frames=200")  # fmt: skip
    Trainer(cfg, run_dir).run()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    (length,) = events.Scalars("eval/mean_length")
    assert length.step == 20 and 40 < length.value <= 50  # 200 frames less up to 30 no-ops, 4 frames a step


def test_training_evaluations_play_whole_games(run_dir, compose_cfg):
    """The trainer's evaluation env is the evaluation variant: a lost life does not end its episode."""
    from dqn_cli.logger import RunLogger
    from dqn_cli.trainer import Trainer

    cfg = compose_cfg("train", ["env=breakout", *SMALL_ATARI, "eval_protocol.max_episode_frames=4000"])
    trainer = Trainer(cfg, run_dir)
    trainer.evaluate(RunLogger(run_dir, cfg.log, cfg.total_steps))
    env = trainer.eval_env
    ends, games = 0, []
    for *_, terminated, truncated, infos in random_steps(env, 600):
        ends += int((terminated | truncated).sum())
        games += list(finished_episodes(infos))
    env.close()
    trainer.env.close()
    assert ends == len(games) >= 1


def test_eval_plays_the_online_network_with_the_protocols_epsilon_on_whole_games(tmp_path, compose_cfg, monkeypatch):
    """`dqn eval` rebuilds the online network (not the target network, made different here), acts with the
    protocol's epsilon, seeds its envs with `seed`, and plays whole games: a lost life ends no episode."""
    import dqn_cli.evaluate as evaluate_module
    from dqn_cli.checkpoint import load_checkpoint, save_checkpoint
    from dqn_cli.trainer import Trainer

    run = tmp_path / "run"
    Trainer(compose_cfg("train", ["env=breakout", *SMALL_ATARI, "total_steps=20"]), run).run()
    checkpoint = run / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    state["agent"]["target_net"] = {k: torch.zeros_like(v) for k, v in state["agent"]["target_net"].items()}
    save_checkpoint(state, checkpoint)

    seen = {}

    def capture(agent, env, episodes, epsilon, seed, video):
        seen.update(agent=agent, episodes=episodes, epsilon=epsilon, seed=seed)
        ends, games = 0, []
        for *_, terminated, truncated, infos in random_steps(env, 600):
            ends += int((terminated | truncated).sum())
            games += list(finished_episodes(infos))
        seen.update(ends=ends, games=len(games))
        return np.zeros(1), np.zeros(1, int)

    monkeypatch.setattr(evaluate_module, "run_episodes", capture)
    evaluate_module.evaluate(
        compose_cfg("eval", [f"checkpoint={checkpoint}", "eval_protocol=nature", "episodes=1", "seed=77", "device=cpu",
                             "eval_protocol.max_episode_frames=4000", "tensorboard=false"])
    )  # fmt: skip
    assert (seen["episodes"], seen["epsilon"], seen["seed"]) == (1, 0.05, 77)
    for name, w in seen["agent"].q_net.state_dict().items():
        assert torch.equal(w, state["agent"]["q_net"][name]), name
    assert seen["ends"] == seen["games"] >= 1


def test_a_seeded_reset_restarts_the_game_after_a_lost_life(compose_cfg):
    """In training a lost life ends the agent's episode and the game goes on (autoreset); a reset with a seed
    starts a new game all the same."""
    env = make_env(compose_cfg("train", ["env=breakout"]).env, seed=0, training=True)
    env.reset(seed=0)
    for _ in range(100):  # NOOP: FIRE on reset launches the ball, which the paddle misses
        terminated = env.step(np.array([0]))[2]
        if terminated[0]:
            break
    game = env.envs[0].unwrapped.ale
    assert terminated[0] and game.lives() == 4  # the game went on
    env.reset(seed=1)
    assert game.lives() == 5
    env.close()


def test_the_ale_prints_no_banner_per_game():
    """ale-py prints "A.L.E: Arcade Learning Environment ... [Powered by Stella]" for every game it loads
    unless its logger is set to errors only (dqn_cli.atari does, on import)."""
    code = (
        "import dqn_cli.atari, gymnasium as gym; from ale_py.vector_env import AtariVectorEnv; "
        "gym.make('PongNoFrameskip-v4').reset(seed=0); AtariVectorEnv('pong', 2).close()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Stella" not in proc.stdout + proc.stderr and "A.L.E" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("vectorization", ["sync", "ale"])
def test_rewards_are_clipped_in_training_only(compose_cfg, vectorization):
    """Space Invaders pays 5 to 30 points an invader: training sees them clipped to 1, evaluation as scored."""
    cfg = compose_cfg("train", ["env=atari", "env.game=SpaceInvaders", f"env.vectorization={vectorization}"])
    seen = {}
    for training in (True, False):
        env = make_env(cfg.env, seed=0, training=training)
        seen[training] = {float(r) for _, _, rewards, *_ in random_steps(env, 300) for r in rewards}
        env.close()
    assert seen[True] == {0.0, 1.0}
    assert max(seen[False]) >= 5.0


class ScriptedGame(gym.Env):
    """A stand-in for the ALE under dqn_cli's wrappers: every frame pays 1, every 4th frame loses one of 3 lives."""

    observation_space = gym.spaces.Box(0, 255, (1,), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def __init__(self):
        self.ale = self  # LifeLossTerminal reads env.unwrapped.ale.lives()
        self.presses, self.restarts, self.frames, self.life_count = [], 0, 0, 3

    def lives(self) -> int:
        return self.life_count

    def reset(self, *, seed=None, options=None):
        self.restarts, self.frames, self.life_count = self.restarts + 1, 0, 3
        return np.zeros(1, np.uint8), {}

    def step(self, action):
        self.presses.append(int(action))
        self.frames += 1
        self.life_count -= int(self.frames % 4 == 0)
        return np.zeros(1, np.uint8), 1.0, self.life_count == 0, False, {}


@pytest.mark.parametrize("cap", [None, 5])
def test_game_statistics_count_the_agents_steps_and_the_whole_games_score(cap):
    """FIRE at the start, then no-op and FIRE after each lost life, pressed by the wrappers: their frames pay
    into the score but are not the agent's steps, for the statistics and for the cap. A capped game restarts."""
    from dqn_cli.atari import FireOnReset, GameStatistics, LifeLossTerminal

    game = ScriptedGame()
    env = GameStatistics(FireOnReset(LifeLossTerminal(game), after_life_loss=False), max_episode_steps=cap)
    env.reset(seed=0)
    ends = []
    for _ in range(7 if cap is None else 5):
        *_, terminated, truncated, info = env.step(2)
        ends.append((terminated, truncated, info.get("episode", {}).get("l"), info.get("episode", {}).get("r")))
        if terminated or truncated:
            env.reset()
    if cap is None:  # frames 4, 8 and 12 lose a life; the third is the game over: 12 frames, 7 agent steps
        assert game.presses == [1, 2, 2, 2, 0, 1, 2, 2, 0, 1, 2, 2, 1]
        assert [e for e in ends if e[0] or e[1]] == [(True, False, None, None)] * 2 + [(True, False, 7, 12.0)]
    else:  # the 5th agent step (frame 8) loses a life and hits the cap: the game restarts
        assert game.presses == [1, 2, 2, 2, 0, 1, 2, 2, 1]
        assert ends[-1] == (True, True, 5, 8.0)
    assert game.restarts == 2 and game.life_count == 3


def test_the_replay_stores_the_fire_that_ale_played_after_a_lost_life(run_dir, compose_cfg):
    """env.vectorization=ale plays FIRE in place of the agent's action after a lost life: the transition
    stored is the one that happened (FIRE), not the action the agent chose (NOOP here, every step)."""
    from dqn_cli.trainer import Trainer

    overrides = [*SMALL_ATARI, "total_steps=130", "agent.learning_starts=1000", "buffer.capacity=2000"]
    cfg = compose_cfg("train", ["env=breakout", "env.vectorization=ale", *overrides, "eval.episodes=1"])
    trainer = Trainer(cfg, run_dir)
    trainer.agent.act_later = lambda obs, epsilon, rng: lambda: np.zeros(len(obs), np.int64)
    trainer.run()
    actions, ends = trainer.buffer.actions[:130, 0], trainer.buffer.terminated[:130, 0]
    after_loss = np.flatnonzero(ends[:-1])[:4] + 1  # the steps after the first 4 lost lives
    assert len(after_loss) == 4 and (actions[after_loss] == 1).all()
    assert actions.sum() == 4  # every other step stored the agent's NOOP


def test_without_life_loss_terminal_fire_follows_each_lost_life_within_the_step():
    """Evaluation (no LifeLossTerminal): the step that loses a life presses FIRE after it; the FIRE frame's
    reward is that step's, and the agent's steps are not counted twice."""
    from dqn_cli.atari import FireOnReset, GameStatistics

    game = ScriptedGame()
    env = GameStatistics(FireOnReset(game, after_life_loss=True))
    env.reset(seed=0)
    rewards, info = [], {}
    while "episode" not in info:
        _, reward, terminated, _, info = env.step(2)
        rewards.append(reward)
    # frames 4 and 8 lose a life (FIRE pressed at once: frames 5 and 9); frame 12 is the game over
    assert game.presses == [1, 2, 2, 2, 1, 2, 2, 2, 1, 2, 2, 2]
    assert rewards == [1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0] and terminated
    assert (info["episode"]["l"], info["episode"]["r"]) == (9, 12.0)  # the reset's FIRE frame scores too


def test_a_seeded_reset_after_a_lost_life_starts_a_new_game_and_its_statistics():
    from dqn_cli.atari import FireOnReset, GameStatistics, LifeLossTerminal

    game = ScriptedGame()
    env = GameStatistics(FireOnReset(LifeLossTerminal(game), after_life_loss=False))
    env.reset(seed=0)
    assert [env.step(2)[2] for _ in range(3)] == [False, False, True]  # frame 4 loses a life
    env.reset(seed=1)
    assert (game.restarts, game.life_count) == (2, 3)
    episodes = []
    for _ in range(7):
        *_, terminated, _, info = env.step(2)
        episodes += [info["episode"]] if "episode" in info else []
        if terminated:
            env.reset()
    assert [(e["l"], e["r"]) for e in episodes] == [(7, 12.0)]  # counted from the seeded reset only


def test_more_ale_threads_than_cores_says_so(atari_cfg, caplog):
    import logging
    import os

    cores = len(os.sched_getaffinity(0))
    cfg = atari_cfg("env.vectorization=ale", "env.num_envs=2", f"env.num_threads={cores + 1}")
    with caplog.at_level(logging.WARNING):
        make_env(cfg.env, seed=0, num_envs=2).close()
    assert f"env.num_threads={cores + 1} is more than the {cores} CPU cores" in caplog.text


def _ignores_ctrl_c_after_building_async_envs(env_cfg, results) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    make_env(env_cfg, seed=0, num_envs=2).close()
    results.put(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)


def test_a_trainer_that_is_itself_a_child_process_keeps_its_signals_after_building_async_envs(atari_cfg):
    """A joblib sweep job is a child process. gymnasium builds the first env in the trainer too (for the
    spaces), and the workers' check, "has a parent process", made that trainer ignore Ctrl-C and SIGTERM."""
    import multiprocessing

    cfg = atari_cfg("env.vectorization=async", "env.num_envs=2")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_ignores_ctrl_c_after_building_async_envs, args=(cfg.env, results))
    child.start()
    try:
        assert results.get(timeout=120) is False
    finally:
        child.join(timeout=30)


def test_env_num_threads_outside_the_ale_vectorization_is_said_to_change_nothing(atari_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="dqn_cli.atari"):
        make_env(atari_cfg("env.num_threads=2").env, seed=0).close()  # sync
    assert "env.num_threads=2 sets ale-py's C++ threads, which only env.vectorization=ale uses" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dqn_cli.atari"):
        make_env(atari_cfg("env.num_threads=2").env, seed=0, training=False).close()  # (the eval env: said once)
        make_env(atari_cfg().env, seed=0).close()
    assert "env.num_threads" not in caplog.text

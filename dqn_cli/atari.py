"""Atari environments: ALE games preprocessed by gymnasium's own wrappers, as a vector env.

Every knob comes from the `env` config: `env.game`, `env.num_envs`, `env.vectorization`,
`env.max_episode_steps` (configs/env/atari.yaml) and the preprocessing protocol in `env.preset.*`
(the env/preset group: nature | machado). Inside each sub-env the wrappers sit in this order,
innermost first:

    AtariEnv                  frameskip=1, `sticky_actions`, `full_action_space`, `max_episode_frames`
    AtariPreprocessing        up to `noop_max` no-ops after reset, `frame_skip` with a max-pool over the
                              last two frames, `screen_size` x `screen_size` grayscale
    LifeLossTerminal          training only (`terminal_on_life_loss`): a lost life ends the agent's
                              episode while the game goes on
    FireOnReset               `fire_on_reset`, in games whose second action is FIRE
    GameStatistics            the true score and the length in agent steps of each whole game, and the
                              `max_episode_steps` cap (agent steps of the whole game)
    ClipReward                training only (`clip_rewards`): rewards clipped to [-1, 1]
    FrameStackObservation     the last `frame_stack` frames, zero-padded at each episode start

GameStatistics sits above the two wrappers that press buttons of their own (the no-op after a lost
life, FIRE) and below the training-only clipping, so `envs.finished_episodes` reports unclipped
whole-game scores, and lengths in agent steps, in training and evaluation alike; as
`env.vectorization=ale` does.
"""

from __future__ import annotations

import atexit
import difflib
import functools
import logging
import multiprocessing
import os
import re
import signal
import time
import weakref
from collections.abc import Callable
from typing import Any

import ale_py
import gymnasium as gym
from omegaconf import DictConfig, OmegaConf

from dqn_cli import env_state
from dqn_cli.envs import SAME_STEP
from dqn_cli.errors import EnvUnavailableError, UserError

log = logging.getLogger(__name__)

gym.register_envs(ale_py)
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no "A.L.E: ... [Powered by Stella]" per game

NEW_GAME = "new_game"  # reset option: restart the emulator even if the game below is not over
LIFE_LOST = "life_lost"  # step info: the agent's episode ended at a lost life, the game goes on
PRESS_REWARD = "press_reward"  # reset info: reward of the buttons a wrapper pressed for the agent


# ---- three wrappers that gymnasium does not ship --------------------------------------------------------


class LifeLossTerminal(gym.Wrapper):
    """Training only: losing a life ends the agent's episode (terminated=True), the game goes on.

    The vector env's autoreset then calls reset(), which continues the same game with one no-op step
    instead of restarting it (DeepMind's setup; baselines' EpisodicLifeEnv). Only a real game over, a
    truncation or a seeded reset restarts the emulator. gymnasium's `terminal_on_life_loss` would
    restart the whole game at every lost life, so the agent would never see its later lives.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives, self.game_over = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:  # lives == 0 is the game over itself, already terminal
            terminated, info[LIFE_LOST] = True, True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Continue the game after a lost life with one no-op; restart it after a game over, with a seed,
        or when a wrapper above asks (`options["new_game"]`: its own cap truncated the game)."""
        options = dict(options or {})
        if options.pop(NEW_GAME, False) or self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options or None)
        else:
            obs, reward, terminated, truncated, info = self.env.step(0)
            info[PRESS_REWARD] = float(reward)
            if terminated or truncated:  # cannot happen in practice: the life was just lost
                obs, info = self.env.reset(options=options or None)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireOnReset(gym.Wrapper):
    """Press FIRE at each start of play: Breakout and others wait for it after a (re)start and after
    each lost life.

    Applied only to games whose action 1 is FIRE. With LifeLossTerminal inside (training), a lost life
    ends the agent's episode and the reset that follows presses FIRE. Without it (evaluation, or
    `terminal_on_life_loss=false`) the step that loses a life presses FIRE after it (`after_life_loss`),
    its reward added to that step's: a greedy agent trained never to need FIRE mid-game would
    otherwise wait out the frame cap.
    """

    def __init__(self, env: gym.Env, after_life_loss: bool):
        super().__init__(env)
        self.after_life_loss, self.lives = after_life_loss, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not self.after_life_loss:  # training: LifeLossTerminal's reset brings the FIRE
            return obs, reward, terminated, truncated, info
        lives = self.env.unwrapped.ale.lives()
        if not (terminated or truncated) and 0 < lives < self.lives:
            obs, pressed, terminated, truncated, info = self.env.step(1)
            reward = float(reward) + float(pressed)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        pressed = info.get(PRESS_REWARD, 0.0)
        obs, reward, terminated, truncated, info = self.env.step(1)
        info[PRESS_REWARD] = pressed + float(reward)
        if terminated or truncated:
            obs, info = self.env.reset(options=options)
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class GameStatistics(gym.Wrapper):
    """Score and length of each whole game, in the agent's steps, and the `max_episode_steps` cap.

    It sits above the wrappers that press buttons for the agent (LifeLossTerminal's no-op after a
    lost life, FireOnReset's FIRE): their presses are not the agent's steps, so neither the lengths
    nor the cap count them, while their rewards (reset info `press_reward`) still count in the score.
    A lost life (step info `life_lost`) ends the agent's episode, not the game: the counts run on.
    At the end of a game `info["episode"]` holds `r`, `l` and `t` (seconds), as gymnasium's
    RecordEpisodeStatistics gives them. A game the cap truncates is restarted at the next reset.
    """

    def __init__(self, env: gym.Env, max_episode_steps: int | None = None):
        super().__init__(env)
        self.max_episode_steps = max_episode_steps
        self.score, self.length, self.start, self.game_over = 0.0, 0, time.perf_counter(), True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.score += float(reward)
        self.length += 1
        if self.max_episode_steps is not None and self.length >= self.max_episode_steps:
            truncated = True
        self.game_over = truncated or (terminated and not info.get(LIFE_LOST, False))
        if self.game_over:
            info["episode"] = {"r": self.score, "l": self.length, "t": round(time.perf_counter() - self.start, 6)}
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        new_game = self.game_over or seed is not None
        if new_game:
            options = {**(options or {}), NEW_GAME: True}
        obs, info = self.env.reset(seed=seed, options=options)
        if new_game:
            self.score, self.length, self.start = 0.0, 0, time.perf_counter()
        self.score += info.pop(PRESS_REWARD, 0.0)
        self.game_over = False
        return obs, info


def _has_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


# the resume engineer's env_state walks wrappers layer by layer; teach it ours
env_state.register(
    LifeLossTerminal,
    lambda w: {"lives": int(w.lives), "game_over": bool(w.game_over)},
    lambda w, s: (setattr(w, "lives", s["lives"]), setattr(w, "game_over", s["game_over"])),
)
env_state.register(FireOnReset, lambda w: {"lives": int(w.lives)}, lambda w, s: setattr(w, "lives", s.get("lives", 0)))


def _get_game_statistics(w: GameStatistics) -> dict:
    # the game's wall-clock start is kept as time elapsed, so it survives a process restart
    return {"score": w.score, "length": w.length, "elapsed": time.perf_counter() - w.start, "game_over": w.game_over}


def _set_game_statistics(w: GameStatistics, s: dict) -> None:
    w.score, w.length, w.game_over = float(s["score"]), int(s["length"]), bool(s["game_over"])
    w.start = time.perf_counter() - float(s["elapsed"])


env_state.register(GameStatistics, _get_game_statistics, _set_game_statistics)


# ---- games ---------------------------------------------------------------------------------------------


@functools.cache
def ale_games() -> tuple[str, ...]:
    """Game names as gymnasium spells them (Pong, SpaceInvaders, ...), from the registered v5 ids."""
    names = {m.group(1) for k in gym.registry if (m := re.fullmatch(r"ALE/(\w+)-v5", k))}
    return tuple(sorted(names))


def check_game(env_cfg: DictConfig) -> None:
    """A clear UserError for an unknown `env.game` or an `env.id` the ALE does not register."""
    game = env_cfg.get("game")
    if game not in ale_games():
        lower = {g.lower(): g for g in ale_games()}
        close = difflib.get_close_matches(str(game).lower().replace("_", ""), list(lower), n=4, cutoff=0.6)
        hint = f" Close matches: {', '.join(lower[c] for c in close)}." if close else ""
        raise EnvUnavailableError(
            f"env.game={game!r} is not an ALE game.{hint}",
            f"Games are spelled as in gymnasium ids (CamelCase), e.g. Pong, Breakout, SpaceInvaders, MsPacman; "
            f"{len(ale_games())} are available.",
        )
    if env_cfg.id not in gym.registry:
        raise EnvUnavailableError(
            f"env.id={env_cfg.id!r} is not a registered gymnasium id for env.game={game!r}.",
            f"The presets use {game}NoFrameskip-v4 (nature) or ALE/{game}-v5 (machado).",
        )
    plays = str(gym.registry[env_cfg.id].kwargs.get("game", "")).replace("_", "")
    if not plays:
        raise UserError(
            f"env.id={env_cfg.id!r} is no ALE game's id, and env={env_cfg.get('name', 'atari')} plays "
            f"env.game={game!r}: its preset sets env.id from the game ({game}NoFrameskip-v4 for nature, "
            f"ALE/{game}-v5 for machado). "
            "For a classic-control env: env=cartpole|acrobot|mountaincar, or env=classic env.id=ID."
        )
    if plays != game.lower():
        raise UserError(
            f"env.id={env_cfg.id!r} plays {plays!r}, not env.game={game!r}. Name the game with env.game=... "
            f"(env.id follows it through the preset: {game}NoFrameskip-v4 for nature, ALE/{game}-v5 for machado)."
        )


# ---- builder ---------------------------------------------------------------------------------------------


def make_atari_env(
    env_cfg: DictConfig, seed: int, num_envs: int, training: bool = True, render: bool = False
) -> gym.vector.VectorEnv:
    """Build `num_envs` preprocessed copies of `env.game` as one vector env (same-step autoreset).

    Reads `env.game`, `env.id`, `env.vectorization` (sync | async | ale: ale-py's C++ vector env,
    `dqn_cli.ale_vector`, with `env.num_threads`), `env.max_episode_steps` and the preset keys
    `env.preset.noop_max`, `frame_skip`, `screen_size`, `frame_stack`, `sticky_actions`,
    `full_action_space`, `max_episode_frames`, `clip_rewards`, `terminal_on_life_loss`,
    `fire_on_reset`. `training=False` drops the training-only reward clipping and life-loss
    terminal. `render=True` gives sub-env 0 RGB frames (`env.envs[0].render()`, sync mode).
    """
    check_game(env_cfg)
    cfg = OmegaConf.to_container(env_cfg, resolve=True)
    if training and cfg.get("num_threads") and cfg["vectorization"] != "ale":
        log.warning(
            f"env.num_threads={cfg['num_threads']} sets ale-py's C++ threads, which only env.vectorization=ale "
            f"uses; with {cfg['vectorization']} it changes nothing"
        )
    if cfg["vectorization"] == "ale" and not render:  # rendering (video) goes through gymnasium's pipeline
        from dqn_cli.ale_vector import ALEVectorEnv

        env = ALEVectorEnv(cfg, num_envs, training)
        env.action_space.seed(seed)
        return env
    fns = [functools.partial(_make_one, cfg, training, render and i == 0) for i in range(num_envs)]
    if cfg["vectorization"] == "async" and num_envs > 1 and not render:
        fns = [functools.partial(_in_worker, fn, os.getpid()) for fn in fns]
        # the platform's own start method (fork on Linux), named: inside a joblib worker the default is
        # loky's, whose processes cannot take the shared observation memory ("cannot pickle 'mmap.mmap'")
        context = multiprocessing.get_all_start_methods()[0]
        env = gym.vector.AsyncVectorEnv(fns, autoreset_mode=SAME_STEP, context=context)
        atexit.register(_kill_workers_at_exit, weakref.ref(env))
    else:
        env = gym.vector.SyncVectorEnv(fns, autoreset_mode=SAME_STEP)
    env.action_space.seed(seed)
    return env


def _in_worker(make: Callable[[], gym.Env], trainer_pid: int) -> gym.Env:
    """Build an env inside an async worker process, deaf to Ctrl-C and SIGTERM.

    A Ctrl-C in a terminal (or `timeout`, or a scheduler) signals the whole process group. The
    workers must not die of it: the trainer finishes its step, writes its checkpoint and then
    closes them, which a dead worker turns into a BrokenPipeError. gymnasium also calls the first
    env function in the parent (to read the spaces): there the trainer's handlers must stay, so the
    trainer is told by its pid (a trainer that is itself a child, a joblib sweep job, is no worker).
    """
    if os.getpid() != trainer_pid:  # a worker, not the trainer's own process
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    return make()


def _kill_workers_at_exit(env_ref: weakref.ref) -> None:
    """At interpreter exit, SIGKILL the workers of an async env that nobody closed.

    They ignore SIGTERM (`_in_worker`), and multiprocessing's own exit hook terminates daemon
    processes with SIGTERM before it joins them: a process that failed before closing its env (a
    buffer too large, a foreign checkpoint) printed its message and then waited for them forever.
    Registered after multiprocessing's hook, so it runs before it.
    """
    env = env_ref()
    for process in getattr(env, "processes", None) or []:
        if process.is_alive():
            process.kill()


def _make_one(cfg: dict, training: bool, render: bool) -> gym.Env:
    p = cfg["preset"]
    env = gym.make(
        cfg["id"],
        frameskip=1,  # AtariPreprocessing skips frames (and max-pools), not the emulator
        repeat_action_probability=float(p["sticky_actions"]),
        full_action_space=bool(p["full_action_space"]),
        max_num_frames_per_episode=int(p["max_episode_frames"]),
        render_mode="rgb_array" if render else None,
    )
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=int(p["noop_max"]),
        frame_skip=int(p["frame_skip"]),
        screen_size=int(p["screen_size"]),
        terminal_on_life_loss=False,  # LifeLossTerminal below does it without restarting the game
        grayscale_obs=True,
        scale_obs=False,  # uint8 all the way; the network scales on the device
    )
    life_loss_terminal = training and p["terminal_on_life_loss"]
    if life_loss_terminal:
        env = LifeLossTerminal(env)
    if p["fire_on_reset"] and _has_fire(env):
        env = FireOnReset(env, after_life_loss=not life_loss_terminal)
    max_steps = cfg.get("max_episode_steps")
    env = GameStatistics(env, max_episode_steps=None if max_steps is None else int(max_steps))
    if training and p["clip_rewards"]:
        env = gym.wrappers.ClipReward(env, -1.0, 1.0)
    return gym.wrappers.FrameStackObservation(env, int(p["frame_stack"]), padding_type="zero")


# ---- evaluation protocols ------------------------------------------------------------------------------


def apply_eval_protocol(env_cfg: DictConfig, protocol: DictConfig | None) -> DictConfig:
    """The env config an evaluation under `protocol` uses: its frame cap and no-op starts replace the
    training ones where the protocol sets them (Atari only; other envs are returned unchanged). A
    protocol's frame cap is the only one: the training run's `env.max_episode_steps` is dropped, so the
    games are whole up to that cap."""
    if protocol is None or env_cfg.kind != "atari":
        return env_cfg
    out = OmegaConf.create(OmegaConf.to_container(env_cfg, resolve=True))
    for key in ("max_episode_frames", "noop_max"):
        if protocol.get(key) is not None:
            out.preset[key] = int(protocol[key])
    if protocol.get("max_episode_frames") is not None:
        out.max_episode_steps = None
    return out


def frames_per_second(env_cfg: DictConfig) -> float:
    """Video frame rate that plays an episode in real time: the ALE runs at 60 Hz."""
    return 60.0 / int(env_cfg.preset.frame_skip) if env_cfg.kind == "atari" else 30.0

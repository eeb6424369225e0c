"""`env.vectorization=ale`: ale-py's C++ `AtariVectorEnv` with the meaning of the gymnasium pipeline.

ale-py steps the games on its own threads (`env.num_threads`) and does in C++ what
`dqn_cli.atari._make_one` does with gymnasium wrappers: sticky actions, the frame cap, no-op starts,
frame skip with a max-pool over the last two frames, the 84x84 grayscale resize and FIRE on reset.
`ALEVectorEnv` adds the rest, with the same meaning, so the trainer, the replay and the evaluation
cannot tell the two apart:

- training only: a lost life ends the agent's episode while the game goes on (`life_loss_info`),
  and rewards are clipped after the whole-game score is counted;
- the stack of `frame_stack` frames zero-padded at each start of the agent's episode, lost lives
  included (the C++ env pads only after a restart);
- `infos["final_obs"]` and `infos["final_info"]["episode"]` (`r`, `l`: unclipped score and agent steps
  of each whole game), as the gymnasium vector envs with same-step autoreset give them;
- `step_async` / `step_wait`, so `overlap=true` updates while the C++ threads play.

- FIRE after each lost life (`fire_on_reset`, games whose action 1 is FIRE): the C++ env presses it
  only at a game's start, so the next step after a lost life plays FIRE in place of the env's action,
  and `infos["actions"]` holds the actions played (the trainer stores those).

Two differences remain. ale-py presses FIRE on reset its own way: its games start a few emulator
frames out of phase with `FireOnReset`'s (without FIRE on reset and no-op starts, the frames are
the same, pixel for pixel: tests/test_atari.py). And after a lost life the FIRE is one of the agent's
steps (counted in its episode, stored in the replay), where the gymnasium pipeline presses a no-op
(in training) and FIRE between two of them. Video recording renders through the gymnasium pipeline
(`make_atari_env` builds that one for `render=True`).
"""

from __future__ import annotations

import functools
import signal
from typing import Any

import gymnasium as gym
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv

from dqn_cli.envs import SAME_STEP
from dqn_cli.utils import warn_if_more_than_cores


@functools.cache
def _rom_ids() -> dict[str, str]:
    return {rom.replace("_", ""): rom for rom in roms.get_all_rom_ids()}


def rom_id(game: str) -> str:
    """ale-py's ROM name for a game spelled as in gymnasium ids: SpaceInvaders -> space_invaders."""
    return _rom_ids()[game.lower()]


class ALEVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of `cfg["game"]` in ale-py's C++ vector env, preprocessed by `cfg["preset"]`.

    `cfg` is the resolved `env` config (atari.yaml with its preset); `training=False` drops the
    life-loss terminal and the reward clipping. `cfg["max_episode_steps"]`, when set, caps the frames
    at that many agent steps times `frame_skip`.
    """

    metadata = {"autoreset_mode": SAME_STEP}

    def __init__(self, cfg: dict, num_envs: int, training: bool = True):
        p = cfg["preset"]
        frame_cap = int(p["max_episode_frames"])
        if cfg.get("max_episode_steps") is not None:
            frame_cap = min(frame_cap, int(cfg["max_episode_steps"]) * int(p["frame_skip"]))
        self.life_loss = bool(training and p["terminal_on_life_loss"])
        self.clip_rewards = bool(training and p["clip_rewards"])
        # the C++ threads start here and inherit this mask: Ctrl-C and SIGTERM go to the main thread
        # only, which saves and stops. (A GPU run with 16 threads hung after a Ctrl-C before this.)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.ale_env = self._make(cfg, num_envs, frame_cap)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.num_envs = num_envs
        self.single_observation_space = self.ale_env.single_observation_space
        self.single_action_space = self.ale_env.single_action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.frame_stack = int(p["frame_stack"])
        self.age = np.zeros(num_envs, np.int64)  # steps since each agent episode began
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, np.int64)
        self.lives = np.zeros(num_envs, np.int64)
        self.frames = np.zeros(num_envs, np.int64)  # emulator frames into the current game
        actions = [str(a) for a in self.ale_env.ale.get_action_set()]
        self.fire = bool(p["fire_on_reset"]) and len(actions) >= 3 and actions[1] == "Action.FIRE"
        self.fire_next = np.zeros(num_envs, bool)  # lost a life at the last step: FIRE is played next
        self.played = np.zeros(num_envs, np.int64)  # the actions sent at the last step

    def _make(self, cfg: dict, num_envs: int, frame_cap: int) -> AtariVectorEnv:
        p = cfg["preset"]
        warn_if_more_than_cores("env.num_threads", int(cfg.get("num_threads") or 0))
        return AtariVectorEnv(
            rom_id(cfg["game"]),
            num_envs,
            num_threads=int(cfg.get("num_threads") or 0),
            max_num_frames_per_episode=frame_cap,
            repeat_action_probability=float(p["sticky_actions"]),
            full_action_space=bool(p["full_action_space"]),
            autoreset_mode=SAME_STEP,
            img_height=int(p["screen_size"]),
            img_width=int(p["screen_size"]),
            grayscale=True,
            stack_num=int(p["frame_stack"]),
            frameskip=int(p["frame_skip"]),
            maxpool=True,
            noop_max=int(p["noop_max"]),
            episodic_life=False,
            life_loss_info=self.life_loss,
            reward_clipping=False,  # the episode return counts true scores; clipping comes after
            use_fire_reset=bool(p["fire_on_reset"]),
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every game, or those of `options["reset_mask"]` (the others report their current
        observation, as in ale-py)."""
        obs, info = self._ordered(*self.ale_env.reset(seed=seed, options=options))
        mask = (options or {}).get("reset_mask", slice(None))
        self.age[mask], self.returns[mask], self.lengths[mask] = 0, 0.0, 0
        self.lives[mask], self.frames[mask] = info["lives"][mask], info["episode_frame_number"][mask]
        self.fire_next[mask] = False
        return self._pad(obs), info

    def step_async(self, actions: np.ndarray) -> None:
        self.played = np.where(self.fire_next, 1, actions).astype(np.int64)  # FIRE after a lost life
        self.ale_env.send(self.played)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self._ordered(*self.ale_env.recv())
        lives, game_frames = info["lives"].astype(np.int64), info["episode_frame_number"].astype(np.int64)
        # a lost life goes on in the same game (frames keep counting); a game over restarts it
        lost = (lives < self.lives) & (game_frames > self.frames)
        life_lost = terminated & lost & self.life_loss
        game_over = (terminated | truncated) & ~life_lost
        self.lives, self.frames, self.fire_next = lives, game_frames, lost & self.fire
        rewards = rewards.astype(np.float64)
        self.returns += rewards
        self.lengths += 1
        done = terminated | truncated
        self.age += 1
        infos: dict[str, Any] = {"lives": lives, "episode_frame_number": game_frames}
        if self.fire:
            infos["actions"] = self.played
        if done.any():
            final = info["final_obs"]  # right after a restart; a lost life goes on into the stack just returned
            final[life_lost] = obs[life_lost]
            infos.update(final_obs=self._pad(final, done), _final_obs=done)
            self.age[done] = 0
        obs = self._pad(obs)
        if game_over.any():
            episode = {"r": self.returns.copy(), "l": self.lengths.copy()}
            infos.update(final_info={"episode": episode, "_episode": game_over.copy()}, _final_info=game_over.copy())
            self.returns[game_over], self.lengths[game_over] = 0.0, 0
        if self.clip_rewards:
            rewards = np.clip(rewards, -1.0, 1.0)
        return obs, rewards, terminated, truncated, infos

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def close_extras(self, **kwargs: Any) -> None:
        self.ale_env.close()

    def _pad(self, stacks: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Zero, in place, the frames of `stacks` from before their agent episode began: a C++ stack
        runs on across a lost life. `rows` limits it to some envs (default: all)."""
        young = self.age < self.frame_stack - 1
        for i in np.flatnonzero(young if rows is None else young & rows):
            stacks[i, : self.frame_stack - 1 - self.age[i]] = 0
        return stacks

    @staticmethod
    def _ordered(*out):
        """The C++ env answers in `info["env_id"]` order; with batch_size == num_envs that is 0..N-1."""
        env_id = out[-1]["env_id"]
        if (np.diff(env_id) > 0).all():
            return out
        order = np.argsort(env_id)
        arrays = [x[order] for x in out[:-1]]
        info = {k: (v[order] if isinstance(v, np.ndarray) and len(v) == len(order) else v) for k, v in out[-1].items()}
        return (*arrays, info)

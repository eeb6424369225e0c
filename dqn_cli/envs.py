"""Environment builder: the `env` config group becomes a gymnasium vector env.

Every env this module returns is a `gymnasium.vector.VectorEnv` with same-step autoreset: when an
episode ends, `step` returns the first observation of the next episode and the last one sits in
`infos["final_obs"]`. Episode returns and lengths come from gymnasium's `RecordEpisodeStatistics`
(classic control) or its Atari counterpart (`dqn_cli.atari.GameStatistics`, whole games in agent
steps), placed before any reward clipping so they are the true scores.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from dqn_cli.errors import EnvUnavailableError, UserError

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


def make_env(
    env_cfg: DictConfig, seed: int, num_envs: int | None = None, training: bool = True, render: bool = False
) -> gym.vector.VectorEnv:
    """Build the vector env described by `env_cfg` and seed its action spaces.

    Reads `env.kind`, `env.id`, `env.num_envs` (unless `num_envs` is given) and
    `env.max_episode_steps`. `training=False` builds the evaluation variant (no training-only
    reward or termination changes). `render=True` lets sub-env 0 render RGB frames for videos
    (`env.envs[0].render()`). The caller resets it with its seed. `env.kind=atari` is built by
    `dqn_cli.atari.make_atari_env`, which reads the preprocessing keys.
    """
    n = int(num_envs if num_envs is not None else env_cfg.num_envs)
    if env_cfg.kind == "atari":
        from dqn_cli.atari import make_atari_env  # ale-py loads only for Atari

        return make_atari_env(env_cfg, seed, n, training, render)
    if env_cfg.kind != "classic":
        check_env(env_cfg)  # an unknown kind: raises its UserError
    _check_registered(env_cfg.id)
    kwargs = {"render_mode": "rgb_array"} if render else {}
    if render:  # classic control draws with pygame, whose SDL looks for a display (and on a headless
        # machine prints "error: XDG_RUNTIME_DIR is invalid"); rgb_array frames need none
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    if env_cfg.get("max_episode_steps") is not None:
        kwargs["max_episode_steps"] = int(env_cfg.max_episode_steps)
    with _missing_dependency(env_cfg.id):
        env = gym.make_vec(
            env_cfg.id,
            num_envs=n,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": SAME_STEP},
            wrappers=[gym.wrappers.RecordEpisodeStatistics],
            **kwargs,
        )
    _check_spaces(env, env_cfg.id)
    env.action_space.seed(seed)
    return env


def check_env(env_cfg: DictConfig) -> None:
    """The UserError `make_env` raises for an unknown env kind, id or ALE game, without building the env."""
    if env_cfg.kind == "atari":
        from dqn_cli.atari import check_game

        check_game(env_cfg)
    elif env_cfg.kind == "classic":
        _check_registered(env_cfg.id)
        with _missing_dependency(env_cfg.id):  # a spec alone cannot tell the spaces, or a missing extra (Box2D)
            env = gym.make(env_cfg.id)
        _check_spaces(env, env_cfg.id)
        env.close()
    else:
        raise UserError(f"env.kind={env_cfg.kind!r} is not supported; allowed: classic, atari.")


@contextmanager
def _missing_dependency(env_id: str) -> Iterator[None]:
    """Turn gymnasium's DependencyNotInstalled (Box2D, MuJoCo, ...) into a UserError naming the env."""
    try:
        yield
    except gym.error.DependencyNotInstalled as e:
        raise EnvUnavailableError(
            f"env.id={env_id!r} needs a package that is not installed: {e}.",
            "Or pick another env: env=cartpole|acrobot|mountaincar, or env=classic env.id=ID of an installed one.",
        ) from None


def _check_registered(env_id: str) -> None:
    if re.fullmatch(r"(ALE/\w+-v\d+|\w+NoFrameskip-v4)", env_id) or _ale_id(env_id):
        raise UserError(
            f"env.id={env_id!r} is an Atari game; it runs under env.kind=atari with its preprocessing: "
            "env=pong, env=breakout or env=atari env.game=GAME (the env/preset group picks the id)."
        )
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.lower().startswith(env_id.split("-")[0].lower()[:4])]
        hint = f" Close matches: {', '.join(sorted(close)[:6])}." if close else ""
        raise EnvUnavailableError(
            f"env.id={env_id!r} is not a registered gymnasium environment.{hint}",
            "Pick a preset with env=cartpole|acrobot|mountaincar or set env.id to a registered id.",
        )


def _ale_id(env_id: str) -> bool:
    """An id that ale-py registers (Pong-v4, Breakout-v5 besides the two forms above). Looked up only for an
    id gymnasium itself does not have: that lookup imports ale-py."""
    if env_id in gym.registry:
        return False
    import dqn_cli.atari  # noqa: F401 - registers the ALE's ids

    spec = gym.registry.get(env_id)
    return spec is not None and "ale_py" in str(spec.entry_point)


def _check_spaces(env: gym.Env | gym.vector.VectorEnv, env_id: str) -> None:
    vector = isinstance(env, gym.vector.VectorEnv)
    obs_space = env.single_observation_space if vector else env.observation_space
    act_space = env.single_action_space if vector else env.action_space
    if not isinstance(act_space, gym.spaces.Discrete):
        env.close()
        raise UserError(f"env.id={env_id!r} has {act_space} actions; DQN needs a Discrete action space.")
    if not isinstance(obs_space, gym.spaces.Box):
        env.close()
        raise UserError(f"env.id={env_id!r} has {obs_space} observations; a Box observation space is needed.")


def finished_episodes(infos: dict) -> Iterator[tuple[int, float, int]]:
    """Yield (env index, return, length) of each episode that ended in this vector step."""
    final = infos.get("final_info")
    if not final or "episode" not in final:
        return
    ep, mask = final["episode"], final["_episode"]
    for i in np.flatnonzero(mask):
        yield int(i), float(ep["r"][i]), int(ep["l"][i])


def real_next_obs(next_obs: np.ndarray, infos: dict, done: np.ndarray) -> np.ndarray:
    """The observation each step led to: `final_obs` where an episode ended, else `next_obs`."""
    if not done.any():
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(done):
        real[i] = infos["final_obs"][i]
    return real

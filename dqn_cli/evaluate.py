"""Evaluation: run a policy for N episodes, and the `dqn eval` entry that rebuilds it from a checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig, OmegaConf

from dqn_cli.agent import DQNAgent, make_agent
from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.config import validate_eval, validate_train
from dqn_cli.envs import finished_episodes, make_env
from dqn_cli.errors import UserError
from dqn_cli.utils import set_seed, setup_torch

log = logging.getLogger(__name__)


def run_episodes(
    agent: DQNAgent, env: gym.vector.VectorEnv, episodes: int, epsilon: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Play `episodes` full episodes spread over the env's copies; return their returns and lengths.

    Env i plays (episodes + i) // n of them, so short episodes do not crowd out long ones.
    The env is reset with `seed`, which makes each evaluation see the same start states.
    """
    n = env.num_envs
    quota = np.array([(episodes + i) // n for i in range(n)])
    done_count = np.zeros(n, int)
    returns: list[float] = []
    lengths: list[int] = []
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    while (done_count < quota).any():
        obs, _, _, _, infos = env.step(agent.act(obs, epsilon, rng))
        final = infos.get("final_info", {})
        if "episode" in final:
            for i in np.flatnonzero(final["_episode"]):
                if done_count[i] < quota[i]:
                    returns.append(float(final["episode"]["r"][i]))
                    lengths.append(int(final["episode"]["l"][i]))
                    done_count[i] += 1
    return np.array(returns), np.array(lengths)


def eval_env_count(episodes: int) -> int:
    """Copies of the env an evaluation runs side by side."""
    return min(episodes, 16)


def evaluate(cfg: DictConfig) -> dict:
    """`dqn eval`: load `checkpoint`, rebuild env and network from its stored config, play episodes.

    Reads `checkpoint`, `episodes`, `epsilon`, `seed`, `device`, `torch_threads`, `output`.
    """
    validate_eval(cfg)
    device = setup_torch(cfg.device, cfg.torch_threads)
    state = load_checkpoint(cfg.checkpoint, map_location=device)
    train_cfg = OmegaConf.create(state["config"])
    try:
        validate_train(train_cfg)
    except UserError as e:
        raise UserError(f"checkpoint={cfg.checkpoint!r} holds a config this version cannot use: {e}") from None
    set_seed(cfg.seed)
    env = make_env(train_cfg.env, cfg.seed, num_envs=eval_env_count(cfg.episodes), training=False)
    agent = make_agent(train_cfg, env.single_observation_space.shape, int(env.single_action_space.n), device)
    try:
        agent.q_net.load_state_dict(state["agent"]["q_net"])
    except (KeyError, RuntimeError) as e:
        raise UserError(
            f"checkpoint={cfg.checkpoint!r} does not match the network its config describes ({type(e).__name__})."
        ) from None
    returns, lengths = run_episodes(agent, env, cfg.episodes, cfg.epsilon, cfg.seed)
    env.close()
    result = {
        "env": train_cfg.env.id,
        "checkpoint": str(cfg.checkpoint),
        "step": int(state["counters"]["step"]),
        "episodes": int(cfg.episodes),
        "epsilon": float(cfg.epsilon),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "mean_length": float(lengths.mean()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
    }
    _print_table(result)
    if cfg.output:
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log.info(f"wrote {out}")
    return result


def _print_table(r: dict) -> None:
    log.info(f"{r['env']}  checkpoint step {r['step']}  ({r['episodes']} episodes, epsilon {r['epsilon']})")
    log.info(f"  {'mean return':<12} {r['mean_return']:>10.2f} ± {r['std_return']:.2f}")
    log.info(f"  {'min / max':<12} {r['min_return']:>10.2f} / {r['max_return']:.2f}")
    log.info(f"  {'mean length':<12} {r['mean_length']:>10.1f}")

"""The training loop: act, store, maybe update, maybe sync, maybe evaluate, maybe checkpoint."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqn_cli.agent import make_agent
from dqn_cli.buffers import make_buffer
from dqn_cli.checkpoint import save_checkpoint
from dqn_cli.config import validate_train
from dqn_cli.envs import finished_episodes, make_env, real_next_obs
from dqn_cli.evaluate import eval_env_count, run_episodes
from dqn_cli.logger import RunLogger
from dqn_cli.schedules import LinearSchedule
from dqn_cli.utils import Every, set_seed, setup_torch

log = logging.getLogger(__name__)


class Trainer:
    """Builds every part from the config and runs DQN's loop. `run()` returns the final eval return."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        validate_train(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = setup_torch(cfg.device, cfg.torch_threads)
        self.rng = set_seed(cfg.seed)
        self.env = make_env(cfg.env, cfg.seed)
        obs_space, n_actions = self.env.single_observation_space, int(self.env.single_action_space.n)
        self.agent = make_agent(cfg, obs_space.shape, n_actions, self.device)
        self.buffer = make_buffer(
            cfg.buffer, obs_space.shape, obs_space.dtype, self.env.num_envs, gamma=cfg.agent.gamma
        )
        a = cfg.agent
        self.epsilon = LinearSchedule(
            a.exploration_initial_eps, a.exploration_final_eps, a.exploration_fraction, cfg.total_steps
        )
        self.eval_env = None
        self.step = self.episodes = self.updates = 0
        self.best_eval = -math.inf
        self.last_eval: float | None = None

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> float:
        cfg, a, n = self.cfg, self.cfg.agent, self.env.num_envs
        logger = RunLogger(self.run_dir, cfg.log, cfg.total_steps, self.step)
        train_now, sync_now = Every(a.train_freq), Every(a.target_update_interval)
        log_now, eval_now = Every(cfg.log.interval), Every(cfg.eval.interval)
        checkpoint_now = Every(cfg.checkpoint.interval)
        metrics: dict[str, list[float]] = {}
        log.info(f"training {cfg.env.id} for {cfg.total_steps} steps on {self.device}; run dir {self.run_dir}")
        obs, _ = self.env.reset(seed=cfg.seed)
        solved = False
        while self.step < cfg.total_steps and not solved:
            epsilon = self.epsilon(self.step)
            actions = self.agent.act(obs, epsilon, self.rng)
            next_obs, rewards, terminated, truncated, infos = self.env.step(actions)
            done = terminated | truncated
            # store s' as the env left it: on an episode end that is final_obs, not the reset obs
            self.buffer.add(obs, actions, rewards, real_next_obs(next_obs, infos, done), terminated, truncated)
            obs = next_obs
            before, self.step = self.step, self.step + n
            if done.any():
                for ret, length in finished_episodes(infos):
                    self.episodes += 1
                    logger.episode(self.step, ret, length)

            if self.step > a.learning_starts and train_now(before, self.step):
                for _ in range(a.gradient_steps):
                    for k, v in self.agent.update(self.buffer.sample(a.batch_size, self.rng)).items():
                        metrics.setdefault(k, []).append(v)
                    self.updates += 1
            if sync_now(before, self.step):
                self.agent.sync_target()
            if log_now(before, self.step):
                scalars = {f"losses/{k}": float(np.mean(v)) for k, v in metrics.items()}
                scalars.update({"charts/epsilon": epsilon, "charts/SPS": logger.steps_per_second(self.step)})
                logger.scalars(self.step, scalars)
                metrics.clear()
            if eval_now(before, self.step):
                solved = self.evaluate(logger)
            if checkpoint_now(before, self.step):
                self.save(f"step_{self.step}.pt")
            logger.progress(self.step)

        if self.last_eval is None or not (solved or eval_now(self.step - n, self.step)):
            self.evaluate(logger)
        self.save("last.pt")
        logger.close(self.step)
        log.info(
            f"done: {self.step} steps, {self.episodes} episodes, {self.updates} updates; "
            f"final greedy eval {self.last_eval:.2f} over {cfg.eval.episodes} episodes (best {self.best_eval:.2f})"
        )
        log.info(f"checkpoint: {self.run_dir / 'checkpoints' / 'last.pt'}")
        self.env.close()
        return float(self.last_eval)

    # ---- moments -----------------------------------------------------------------------------
    def evaluate(self, logger: RunLogger) -> bool:
        """Greedy evaluation; logs eval/*, keeps best.pt, and says whether the env is solved."""
        cfg = self.cfg
        if self.eval_env is None:
            self.eval_env = make_env(
                cfg.env, cfg.seed + cfg.eval.seed_offset, eval_env_count(cfg.eval.episodes), training=False
            )
        returns, lengths = run_episodes(
            self.agent, self.eval_env, cfg.eval.episodes, cfg.eval.epsilon, cfg.seed + cfg.eval.seed_offset
        )
        self.last_eval = float(returns.mean())
        logger.scalars(
            self.step,
            {"eval/mean_return": self.last_eval, "eval/std_return": float(returns.std()),
             "eval/mean_length": float(lengths.mean())},
        )  # fmt: skip
        if self.last_eval > self.best_eval:
            self.best_eval = self.last_eval
            self.save("best.pt")
        target = cfg.env.solved_return
        return bool(cfg.eval.stop_on_solved and target is not None and self.last_eval >= target)

    def state_dict(self) -> dict:
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "agent": self.agent.state_dict(),
            "counters": {"step": self.step, "episodes": self.episodes, "updates": self.updates},
            "eval": {"best": self.best_eval, "last": self.last_eval},
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
            },
        }

    def save(self, name: str) -> Path:
        directory = self.run_dir / "checkpoints"
        path = save_checkpoint(self.state_dict(), directory / name)
        if name.startswith("step_"):
            keep = self.cfg.checkpoint.keep_last
            old = sorted(directory.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for stale in old[: max(len(old) - keep, 0)]:
                stale.unlink(missing_ok=True)
        return path


def train(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train from `cfg`, writing TensorBoard files and checkpoints into `run_dir`; return the final
    greedy eval return (the objective sweepers optimise)."""
    start = time.perf_counter()
    result = Trainer(cfg, run_dir).run()
    log.info(f"wall time {time.perf_counter() - start:.1f} s")
    return result

"""The Stable-Baselines3 peer of the CartPole benchmark (scripts/bench_cartpole.py runs it).

    python scripts/sb3_cartpole.py train --seed 0 --model OUT/sb3/seed0/model.zip
    python scripts/sb3_cartpole.py eval --model OUT/sb3/seed0/model.zip --episodes 20 --output eval.json

`train` is the process the benchmark times (imports included, as for `dqn train`): SB3 DQN with
rl-baselines3-zoo's CartPole-v1 hyperparameters (hyperparams/dqn.yml), torch threads left at
SB3's default (SB3 never calls torch.set_num_threads, nor does the zoo unless --num-threads is
given, so torch uses its own default: one intra-op thread per core). `eval` plays the final model
greedily (deterministic=True) and writes the returns as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ENV_ID = "CartPole-v1"

# rl-baselines3-zoo, hyperparams/dqn.yml, CartPole-v1 (policy: MlpPolicy)
ZOO_N_TIMESTEPS = 50_000
ZOO_HYPERPARAMS = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}


def train(args: argparse.Namespace) -> None:
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env

    start = time.perf_counter()
    if args.torch_threads is not None:  # like the zoo's --num-threads; not set by default
        torch.set_num_threads(args.torch_threads)
    # the zoo wraps the env in a Monitor through make_vec_env (n_envs=1 for off-policy algorithms)
    env = make_vec_env(ENV_ID, n_envs=1, seed=args.seed)
    model = DQN("MlpPolicy", env, seed=args.seed, verbose=0, **ZOO_HYPERPARAMS)
    model.learn(total_timesteps=args.timesteps)
    model.save(args.model)
    env.close()
    info = {
        "seed": args.seed,
        "timesteps": args.timesteps,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "train_s": time.perf_counter() - start,
    }
    Path(args.model).with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))


def evaluate(args: argparse.Namespace) -> None:
    import numpy as np
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env(ENV_ID, n_envs=1, seed=args.seed)
    model = DQN.load(args.model, env=env)
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=args.episodes, deterministic=True, return_episode_rewards=True
    )
    env.close()
    result = {
        "env": ENV_ID,
        "model": str(args.model),
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "min_return": float(np.min(returns)),
        "max_return": float(np.max(returns)),
        "returns": [float(r) for r in returns],
        "lengths": [int(n) for n in lengths],
    }
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean_return {result['mean_return']:.2f} over {result['episodes']} episodes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train SB3 DQN with the zoo's CartPole-v1 hyperparameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timesteps", type=int, default=ZOO_N_TIMESTEPS)
    p.add_argument("--model", required=True, help="where to save the final model (.zip)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: SB3's default)")
    p.set_defaults(func=train)
    p = sub.add_parser("eval", help="greedy evaluation of a saved model")
    p.add_argument("--model", required=True)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=12345, help="seed of the evaluation env (dqn eval's default)")
    p.add_argument("--output", help="JSON file for the returns and their summary")
    p.set_defaults(func=evaluate)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())

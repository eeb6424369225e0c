"""Evaluation: run a policy for N episodes, and the `dqn eval` entry that rebuilds it from a checkpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqn_cli.agent import DQNAgent, make_agent
from dqn_cli.atari import apply_eval_protocol, frames_per_second
from dqn_cli.checkpoint import load_checkpoint, state_dict_mismatch
from dqn_cli.config import shipped_option, validate_eval, validate_train
from dqn_cli.envs import finished_episodes, make_env
from dqn_cli.errors import EnvUnavailableError, UserError, counted
from dqn_cli.utils import set_seed, setup_torch
from dqn_cli.video import EpisodeVideo, run_dir_of

log = logging.getLogger(__name__)


def run_episodes(
    agent: DQNAgent,
    env: gym.vector.VectorEnv,
    episodes: int,
    epsilon: float,
    seed: int,
    video: EpisodeVideo | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Play `episodes` full episodes spread over the env's copies; return their returns and lengths.

    Env i plays (episodes + i) // n of them, so short episodes do not crowd out long ones.
    The env is reset with `seed`, which makes each evaluation see the same start states.
    `video` records env 0's episodes, one frame per step. `stop` is asked after each step that leaves
    games to play; once it says True they are left unfinished and None comes back (a training run's
    Ctrl-C / SIGTERM: greedy Atari games can last minutes, longer than a scheduler waits between SIGTERM
    and SIGKILL).
    """
    n = env.num_envs
    quota = np.array([(episodes + i) // n for i in range(n)])
    done_count = np.zeros(n, int)
    returns: list[float] = []
    lengths: list[int] = []
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    if video is not None:
        video.capture(env)
    while (done_count < quota).any():
        obs, _, _, _, infos = env.step(agent.act(obs, epsilon, rng))
        for i, ret, length in finished_episodes(infos):
            if done_count[i] < quota[i]:
                returns.append(ret)
                lengths.append(length)
                done_count[i] += 1
        if stop is not None and (done_count < quota).any() and stop():
            return None
        if video is not None and done_count[0] < quota[0]:
            video.capture(env)
    return np.array(returns), np.array(lengths)


# An evaluation plays its episodes on up to this many copies of the env side by side (one batched greedy
# pass per step); each copy plays (episodes + i) // n of them, so the scores do not depend on speed.
MAX_EVAL_ENVS = 16


def eval_env_count(episodes: int) -> int:
    """Copies of the env an evaluation runs side by side."""
    return min(episodes, MAX_EVAL_ENVS)


def protocol_label(protocol: DictConfig | None, epsilon: float, atari: bool) -> str:
    """The name an evaluation's scores go under (result, video, TensorBoard tag `eval_NAME/*`).

    Another epsilon, or on Atari another frame cap or no-op count, is another protocol: the shipped
    protocol's name gets a suffix per changed field (`nature_eps0`, `nature_frames800`), so its scores
    never pass for the published protocol's. `episodes` only sets how many games, and keeps the name.
    """
    if protocol is None:
        return "custom"
    shipped = shipped_option("eval_protocol", protocol.name) or protocol  # (a user's own protocol: itself)
    label = protocol.name
    if epsilon != float(shipped["epsilon"]):
        label += f"_eps{epsilon:g}"
    for key, short in (("noop_max", "noop"), ("max_episode_frames", "frames")) if atari else ():
        if protocol.get(key) != shipped.get(key):
            label += f"_{short}{protocol.get(key)}"
    return label


def evaluate(cfg: DictConfig) -> dict:
    """`dqn eval`: load `checkpoint`, rebuild env and network from its stored config, play episodes.

    Reads `checkpoint`, `episodes`, `epsilon`, `seed`, `device`, `torch_threads`, `output`, `video`,
    `tensorboard` and `eval_protocol` (whose frame cap and no-op starts apply to Atari envs).
    """
    validate_eval(cfg)
    device = setup_torch(cfg.device, cfg.torch_threads)
    state, train_cfg = _load_trained(cfg.checkpoint, device)
    set_seed(cfg.seed)
    protocol, step = cfg.get("eval_protocol"), int(state["counters"]["step"])
    protocol_name = protocol_label(protocol, float(cfg.epsilon), atari=train_cfg.env.kind == "atari")
    env_cfg = apply_eval_protocol(train_cfg.env, protocol)
    run_dir = run_dir_of(cfg.checkpoint)
    if cfg.output:  # before the games: a path that cannot be written fails now, not after them
        _writable(Path(cfg.output), Path(cfg.checkpoint))
    video = None
    if cfg.get("video"):
        where = (run_dir or Path(cfg.checkpoint).resolve().parent) / "videos"
        video = EpisodeVideo(where / f"eval_{protocol_name}_step{step}.mp4", frames_per_second(env_cfg))
    env = _checkpoint_env(cfg, env_cfg, render=video is not None)
    try:
        agent = _trained_agent(cfg.checkpoint, state, train_cfg, env, device)
        returns, lengths = run_episodes(agent, env, cfg.episodes, cfg.epsilon, cfg.seed, video)
    finally:
        video_path = video.close() if video is not None else None
        env.close()
    result = {
        "env": train_cfg.env.id,
        "checkpoint": str(cfg.checkpoint),
        "step": step,
        "protocol": protocol_name,
        "episodes": int(cfg.episodes),
        "epsilon": float(cfg.epsilon),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "mean_length": float(lengths.mean()),
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "video": str(video_path) if video_path else None,
    }
    _report(cfg, result, run_dir)
    return result


def _load_trained(checkpoint: str, device: torch.device) -> tuple[dict, DictConfig]:
    """The checkpoint's state and its training config, checked as `dqn train` checks one."""
    state = load_checkpoint(checkpoint, map_location=device)
    train_cfg = OmegaConf.create(state["config"])
    train_cfg.cuda_graphs = False  # a training switch: evaluation makes no updates, on any device
    try:
        validate_train(train_cfg)
    except UserError as e:
        raise UserError(f"checkpoint={checkpoint!r} holds a config this version cannot use: {e}") from None
    return state, train_cfg


def _checkpoint_env(cfg: DictConfig, env_cfg: DictConfig, render: bool) -> gym.vector.VectorEnv:
    """The evaluation envs: the checkpoint's env under the protocol's settings, without training's
    reward clipping and life-loss terminal."""
    try:
        return make_env(env_cfg, cfg.seed, num_envs=eval_env_count(cfg.episodes), training=False, render=render)
    except EnvUnavailableError as e:  # its advice (env=...) is for dqn train: here the env is the checkpoint's
        raise UserError(
            f"checkpoint={cfg.checkpoint!r} was trained on an env this machine cannot build: {e.problem} "
            "dqn eval plays the checkpoint's own env: install what registers it (the package the run used)."
        ) from None


def _trained_agent(
    checkpoint: str, state: dict, train_cfg: DictConfig, env: gym.vector.VectorEnv, device: torch.device
) -> DQNAgent:
    """The agent the checkpoint's config describes, with the checkpoint's online-network weights."""
    agent = make_agent(train_cfg, env.single_observation_space.shape, int(env.single_action_space.n), device)
    try:
        agent.q_net.load_state_dict(state["agent"]["q_net"])
        agent.refresh_compute()
    except (KeyError, RuntimeError) as e:
        raise UserError(
            f"checkpoint={checkpoint!r} does not match the network its config describes ({state_dict_mismatch(e)})."
        ) from None
    return agent


def _report(cfg: DictConfig, result: dict, run_dir: Path | None) -> None:
    """Print the scores, add them to the run's TensorBoard (`eval_PROTOCOL/*` at the checkpoint's step)
    and write `output`."""
    _print_table(result)
    if cfg.get("tensorboard") and run_dir is not None:  # beside the run's own curves, at the checkpoint's step
        _add_to_tensorboard(run_dir, f"eval_{result['protocol']}", result, result["step"])
    elif cfg.get("tensorboard"):
        log.info(f"no TensorBoard scores: {cfg.checkpoint} is not in a run dir's checkpoints/ folder")
    if cfg.output:
        out = Path(cfg.output)
        try:
            out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise UserError(f"output={str(out)!r} cannot be written ({e.strerror}); the scores are above.") from None
        log.info(f"wrote {out}")


def _writable(out: Path, checkpoint: Path) -> None:
    """Create `output`'s folder and check that a file can be written there, else a UserError; the JSON
    never replaces the checkpoint, or any checkpoint or replay file."""
    if out.resolve() == checkpoint.resolve() or (out.suffix in (".pt", ".npz") and out.exists()):
        raise UserError(
            f"output={str(out)!r} would replace a checkpoint or replay file with the scores' JSON; give another "
            "path, e.g. output=eval.json."
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        existed = out.exists()
        with open(out, "a"):  # appends nothing
            pass
        if not existed:
            out.unlink()
    except OSError as e:
        raise UserError(
            f"output={str(out)!r} cannot be written ({e.strerror}: {e.filename}); give a path in a folder you can "
            "write to."
        ) from None


def _add_to_tensorboard(run_dir: Path, prefix: str, result: dict, step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    try:
        with SummaryWriter(log_dir=str(run_dir)) as writer:
            for key in ("mean_return", "std_return", "mean_length"):
                writer.add_scalar(f"{prefix}/{key}", result[key], step)
    except OSError as e:  # a read-only run dir keeps the scores out of TensorBoard, nothing else
        log.warning(f"could not add the scores to {run_dir}'s TensorBoard files ({e}); tensorboard=false skips this")


def _print_table(r: dict) -> None:
    log.info(f"{r['env']}  checkpoint step {r['step']}  ({counted(r['episodes'], 'episode')}, epsilon {r['epsilon']})")
    log.info(f"  {'mean return':<12} {r['mean_return']:>10.2f} ± {r['std_return']:.2f}")
    log.info(f"  {'min / max':<12} {r['min_return']:>10.2f} / {r['max_return']:.2f}")
    log.info(f"  {'mean length':<12} {r['mean_length']:>10.1f}")

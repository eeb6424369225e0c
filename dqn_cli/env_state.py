"""Save and restore a vector env mid-episode, as plain data (tensors, numbers, lists), for exact resume.

`get_state(env)` walks each sub-env of a gymnasium `SyncVectorEnv` from its outer wrapper down to the
base env and records what each layer needs to continue where it stopped: the physics state and
`np_random` of a classic-control env, the emulator (with its RNG) of an ALE env, `TimeLimit`'s step
count, `RecordEpisodeStatistics`' running return and length, the frames of `AtariPreprocessing` and
`FrameStackObservation`. `set_state(env, state)` writes it back into an env built from the same config
and reset once. Nothing is pickled: the checkpoint stays loadable with `weights_only=True`.

A layer this module does not know makes the whole env unsupported (`unsupported(env)` names it); the
trainer then resumes such an env from a fresh reset and says so. New wrappers register their own
pair of functions with `register(cls, get, set)`.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

Getter = Callable[[Any], dict]
Setter = Callable[[Any, dict], None]
_HANDLERS: list[tuple[type, Getter, Setter]] = []


def register(cls: type, get: Getter, set_: Setter) -> None:
    """Teach get_state/set_state a wrapper or env class (checked before the built-in ones)."""
    _HANDLERS.insert(0, (cls, get, set_))


def _array(x: np.ndarray | None) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.array(x, copy=True))


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.numpy().copy()  # the saved dtype: Acrobot's state changes dtype


def _rng_state(rng: np.random.Generator | None) -> dict | None:
    return None if rng is None else rng.bit_generator.state


def _set_rng(env: Any, state: dict | None) -> None:
    if state is not None:
        env.np_random.bit_generator.state = state


# ---- layers ----------------------------------------------------------------------------------------


def _stateless(_env) -> dict:
    return {}


def _noop(_env, _state) -> None:
    pass


def _get_episode_stats(w: gym.wrappers.RecordEpisodeStatistics) -> dict:
    return {
        "returns": float(w.episode_returns),
        "lengths": int(w.episode_lengths),
        "count": int(w.episode_count),
        # wall-clock start of the episode, kept as time elapsed so it survives a process restart
        "elapsed": float(time.perf_counter() - w.episode_start_time),
        "return_queue": [float(x) for x in w.return_queue],
        "length_queue": [int(x) for x in w.length_queue],
        "time_queue": [float(x) for x in w.time_queue],
    }


def _set_episode_stats(w: gym.wrappers.RecordEpisodeStatistics, s: dict) -> None:
    w.episode_returns, w.episode_lengths, w.episode_count = s["returns"], s["lengths"], s["count"]
    w.episode_start_time = time.perf_counter() - s["elapsed"]
    for name in ("return_queue", "length_queue", "time_queue"):
        queue = getattr(w, name)
        setattr(w, name, deque(s[name], maxlen=queue.maxlen))


def _set_time_limit(w: gym.wrappers.TimeLimit, s: dict) -> None:
    w._elapsed_steps = s["elapsed_steps"]


def _set_order(w: gym.wrappers.OrderEnforcing, s: dict) -> None:
    w._has_reset = s["has_reset"]


def _get_classic(env: gym.Env) -> dict:
    state = env.state
    return {
        "state": _array(np.asarray(state)) if state is not None else None,
        "steps_beyond_terminated": getattr(env, "steps_beyond_terminated", None),
        "np_random": _rng_state(env._np_random),
    }


def _set_classic(env: gym.Env, s: dict) -> None:
    env.state = _numpy(s["state"])
    if hasattr(env, "steps_beyond_terminated"):
        env.steps_beyond_terminated = s["steps_beyond_terminated"]
    _set_rng(env, s["np_random"])


def _get_atari_preprocessing(w) -> dict:
    return {"obs_buffer": [_array(b) for b in w.obs_buffer], "lives": int(w.lives), "game_over": bool(w.game_over)}


def _set_atari_preprocessing(w, s: dict) -> None:
    for buf, saved in zip(w.obs_buffer, s["obs_buffer"], strict=True):
        buf[...] = saved.numpy()
    w.lives, w.game_over = s["lives"], s["game_over"]


def _get_frame_stack(w) -> dict:
    return {"frames": [_array(f) for f in w.obs_queue]}


def _set_frame_stack(w, s: dict) -> None:
    w.obs_queue = deque([f.numpy().copy() for f in s["frames"]], maxlen=w.obs_queue.maxlen)


@functools.cache
def _builtin_handlers() -> list[tuple[type, Getter, Setter]]:
    w = gym.wrappers
    handlers: list[tuple[type, Getter, Setter]] = [
        (w.RecordEpisodeStatistics, _get_episode_stats, _set_episode_stats),
        (w.TimeLimit, lambda e: {"elapsed_steps": e._elapsed_steps}, _set_time_limit),
        (w.OrderEnforcing, lambda e: {"has_reset": bool(e._has_reset)}, _set_order),
        (w.AtariPreprocessing, _get_atari_preprocessing, _set_atari_preprocessing),
        (w.FrameStackObservation, _get_frame_stack, _set_frame_stack),
    ]
    # wrappers that keep no per-episode state
    for name in (
        "PassiveEnvChecker", "ClipReward", "TransformReward", "TransformObservation", "TransformAction",
        "ClipAction", "RescaleObservation", "FlattenObservation", "DtypeObservation", "ReshapeObservation",
        "ResizeObservation", "GrayscaleObservation",
    ):  # fmt: skip
        if hasattr(w, name):
            handlers.append((getattr(w, name), _stateless, _noop))
    return handlers


def _handler(layer: Any) -> tuple[Getter, Setter] | None:
    for cls, get, set_ in _HANDLERS + _builtin_handlers():
        if type(layer) is cls:  # exact type: a subclass may add state its parent's handler misses
            return get, set_
    if not isinstance(layer, gym.Wrapper):
        if type(layer).__module__.startswith("gymnasium.envs.classic_control") and hasattr(layer, "state"):
            return _get_classic, _set_classic
        if type(layer).__module__.startswith("ale_py"):
            return _get_ale, _set_ale
    return None


def _get_ale(env) -> dict:
    # the emulator with its RNG (sticky actions), serialized to bytes by ALE itself
    data = env.ale.cloneState(include_rng=True).serialize()
    return {"ale": torch.frombuffer(bytearray(data), dtype=torch.uint8), "np_random": _rng_state(env._np_random)}


def _set_ale(env, s: dict) -> None:
    import ale_py

    env.ale.restoreState(ale_py.ALEState(bytes(s["ale"].numpy().tobytes())))
    _set_rng(env, s["np_random"])


def _layers(env: gym.Env) -> list:
    out = [env]
    while isinstance(out[-1], gym.Wrapper):
        out.append(out[-1].env)
    return out


def _names(env: gym.Env) -> list[str]:
    return [type(layer).__name__ for layer in _layers(env)]


# ---- the vector env --------------------------------------------------------------------------------


def unsupported(env: gym.vector.VectorEnv) -> str | None:
    """Why `env`'s state cannot be saved, or None when it can."""
    if not isinstance(env, gym.vector.SyncVectorEnv):
        return f"{type(env).__name__} keeps its envs out of reach: only SyncVectorEnv can be saved"
    for layer in _layers(env.envs[0]):
        if _handler(layer) is None:
            return f"{type(layer).__module__}.{type(layer).__name__} has no saved-state handler"
    return None


def get_state(env: gym.vector.VectorEnv) -> dict | None:
    """Everything `env` needs to continue mid-episode, as plain data; None where it is unsupported."""
    if unsupported(env) is not None:
        return None
    return {
        "layers": _names(env.envs[0]),  # set_state refuses a state saved through other wrappers
        "envs": [[_handler(layer)[0](layer) for layer in _layers(sub)] for sub in env.envs],
        "autoreset": _array(env._autoreset_envs),
        # make_env seeds action_space; single_action_space is never seeded nor drawn from, so not kept
        "action_space": _rng_state(env.action_space.np_random),
    }


def set_state(env: gym.vector.VectorEnv, state: dict) -> None:
    """Restore what `get_state` saved into an env built from the same config and reset once."""
    if len(state["envs"]) != env.num_envs:
        raise ValueError(f"saved env state holds {len(state['envs'])} envs, this env has {env.num_envs}")
    names = _names(env.envs[0])
    if state.get("layers", names) != names:  # checkpoints from before the names were kept have none
        raise ValueError(f"saved through the wrappers {state['layers']}, this env has {names}")
    for sub, layer_states in zip(env.envs, state["envs"], strict=True):
        layers = _layers(sub)
        if len(layers) != len(layer_states):
            raise ValueError(f"saved env state has {len(layer_states)} wrapper layers, this env {len(layers)}")
        for layer, s in zip(layers, layer_states, strict=True):
            try:
                _handler(layer)[1](layer, s)
            except KeyError as e:  # a checkpoint from before the names were kept: another layer's state
                raise ValueError(f"the saved state has no {e} for {type(layer).__name__}") from None
    env._autoreset_envs = _numpy(state["autoreset"])
    env.action_space.np_random.bit_generator.state = state["action_space"]

"""Where the YAML configs live, and the checks every config passes before anything is built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dqn_cli.errors import UserError


def config_dir() -> str:
    """The configs shipped inside the wheel, or the repo's top-level configs/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"dqn_cli's configs/ is missing next to {here}; reinstall the package.")


# ---- value rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    kind: str  # int | float | bool | str | choice | int_list
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "int_list":
            text = "a list of positive integers, e.g. [64, 64]"
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            if self.lo is not None and self.hi is not None:
                text = f"{noun} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"
            elif self.lo is not None:
                text = f"{noun} {'>' if self.lo_open else '>='} {self.lo:g}"
            else:
                text = noun
        else:
            text = {"bool": "true or false", "str": "a string"}[self.kind]
        return text + (" or null" if self.nullable else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str) and bool(v)
        if self.kind == "choice":
            return v in self.choices
        if self.kind == "int_list":
            return isinstance(v, (list, ListConfig)) and len(v) > 0 and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi


def Int(lo=None, hi=None, **kw):  # noqa: N802 - reads like a type in the table below
    return Rule("int", lo, hi, **kw)


def Float(lo=None, hi=None, **kw):  # noqa: N802
    return Rule("float", lo, hi, **kw)


def Choice(*choices, **kw):  # noqa: N802
    return Rule("choice", choices=choices, **kw)


BOOL, STR = Rule("bool"), Rule("str")

# Every key a train config may hold. A key missing here is rejected as unknown, so a new config
# field needs its rule added here (tests compose every group option and validate it).
TRAIN_RULES: dict[str, Rule] = {
    "seed": Int(0),
    "device": Rule("str"),
    "torch_threads": Int(1),
    "total_steps": Int(1),
    "eval.interval": Int(0),
    "eval.episodes": Int(1),
    "eval.epsilon": Float(0, 1),
    "eval.stop_on_solved": BOOL,
    "eval.seed_offset": Int(0),
    "checkpoint.interval": Int(0),
    "checkpoint.keep_last": Int(0),
    "log.interval": Int(1),
    "log.tensorboard": BOOL,
    "log.progress": Choice("auto", True, False),
    "env.name": STR,
    "env.id": STR,
    "env.kind": Choice("classic"),
    "env.num_envs": Int(1),
    "env.max_episode_steps": Int(1, nullable=True),
    "env.solved_return": Float(nullable=True),
    "network.name": Choice("mlp", "nature_cnn"),
    "network.hidden_sizes": Rule("int_list"),
    "network.activation": Choice("relu", "tanh", "elu"),
    "network.hidden": Int(1),
    "buffer.kind": Choice("uniform"),
    "buffer.capacity": Int(1),
    "agent.name": Choice("dqn"),
    "agent.gamma": Float(0, 1),
    "agent.lr": Float(0, lo_open=True),
    "agent.adam_eps": Float(0, lo_open=True),
    "agent.batch_size": Int(1),
    "agent.learning_starts": Int(0),
    "agent.train_freq": Int(1),
    "agent.gradient_steps": Int(1),
    "agent.target_update_interval": Int(1),
    "agent.tau": Float(0, 1, lo_open=True),
    "agent.loss": Choice("huber", "mse"),
    "agent.max_grad_norm": Float(0, lo_open=True, nullable=True),
    "agent.exploration_initial_eps": Float(0, 1),
    "agent.exploration_final_eps": Float(0, 1),
    "agent.exploration_fraction": Float(0, 1),
}

EVAL_RULES: dict[str, Rule] = {
    "checkpoint": STR,
    "episodes": Int(1),
    "epsilon": Float(0, 1),
    "seed": Int(0),
    "device": Rule("str"),
    "torch_threads": Int(1),
    "output": Rule("str", nullable=True),
}


def _leaves(cfg: DictConfig) -> dict[str, Any]:
    """Flatten a config to {"a.b": value}; lists stay whole. The hydra node is skipped."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for key in node:
            if not prefix and key == "hydra":
                continue
            name = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                out[name] = "???"
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, name + ".")
            else:
                out[name] = value

    walk(cfg, "")
    return out


def _check(cfg: DictConfig, rules: dict[str, Rule]) -> list[str]:
    problems = []
    leaves = _leaves(cfg)
    for key, value in leaves.items():
        rule = rules.get(key)
        if rule is None:
            group = key.split(".")[0] + "." if "." in key else ""
            known = sorted(k for k in rules if k.startswith(group)) if group else sorted(rules)
            problems.append(f"{key} is not a known key (known{' in ' + group[:-1] if group else ''}: {', '.join(known)}).")
        elif value == "???":
            problems.append(f"{key} is required; set it with {key}=..., it must be {rule.describe()}.")
        elif not rule.ok(value):
            problems.append(f"{key}={value!r} is invalid: it must be {rule.describe()}.")
    return problems


def validate_train(cfg: DictConfig) -> None:
    """Check every value of a train config, then the rules that tie values together."""
    problems = _check(cfg, TRAIN_RULES)
    if not problems:
        a, b, e = cfg.agent, cfg.buffer, cfg.env
        if a.batch_size > b.capacity:
            problems.append(
                f"agent.batch_size={a.batch_size} is larger than buffer.capacity={b.capacity}; "
                "the batch must fit in the buffer."
            )
        if a.learning_starts < a.batch_size:
            problems.append(
                f"agent.learning_starts={a.learning_starts} is smaller than agent.batch_size="
                f"{a.batch_size}; at least one batch must be collected before the first update."
            )
        if b.capacity < e.num_envs:
            problems.append(f"buffer.capacity={b.capacity} must be at least env.num_envs={e.num_envs}.")
        if a.exploration_final_eps > a.exploration_initial_eps:
            problems.append(
                f"agent.exploration_final_eps={a.exploration_final_eps} is above "
                f"agent.exploration_initial_eps={a.exploration_initial_eps}; epsilon decays, so final <= initial."
            )
    if problems:
        raise UserError("invalid config: " + " ".join(problems))


def validate_eval(cfg: DictConfig) -> None:
    """Check an eval config (the checkpoint's own config is checked when it is loaded)."""
    problems = _check(cfg, EVAL_RULES)
    if problems:
        if any(p.startswith("checkpoint is required") for p in problems):
            problems = [
                "no checkpoint given: run `dqn eval checkpoint=PATH/TO/last.pt` with a .pt written "
                "by `dqn train` (look in outputs/DATE/TIME/checkpoints/)."
            ] + [p for p in problems if not p.startswith("checkpoint is required")]
        raise UserError("invalid config: " + " ".join(problems))

"""Where the YAML configs live, and the checks every config passes before anything is built."""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from dqn_cli.errors import UsedRunDirError, UserError, counted
from dqn_cli.layout import LAST


def config_dir() -> str:
    """The configs shipped inside the wheel, or the repo's top-level configs/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"dqn_cli's configs/ is missing next to {here}; reinstall the package.")


def shipped_option(group: str, name: object) -> dict | None:
    """A group option's YAML as shipped, uninterpolated ("???" and ${...} as written), or None for an
    option that is not one of dqn_cli's (a user's own, through -cd or hydra.searchpath)."""
    path = Path(config_dir()) / group / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


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
            text = "one of " + ", ".join(c if isinstance(c, str) else spell(c) for c in self.choices)
        elif self.kind == "int_list":
            text = "a list of positive integers, e.g. [64, 64]"
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            lo, hi = _num(self.lo), _num(self.hi)
            if self.lo is not None and self.hi is not None:
                text = f"{noun} in {'(' if self.lo_open else '['}{lo}, {hi}]"
            elif self.lo is not None:
                text = f"{noun} {'>' if self.lo_open else '>='} {lo}"
            else:
                text = noun
        else:
            text = {"bool": "true or false", "str": "a non-empty string"}[self.kind]
        return text + (" or null" if self.nullable else "")

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str) and bool(v)
        if self.kind == "choice":  # same type too: 1 == True, but log.progress=1 is a mistake
            return any(v == c and type(v) is type(c) for c in self.choices)
        if self.kind == "int_list":
            return (
                isinstance(v, (list, ListConfig))
                and len(v) > 0
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        if isinstance(v, float) and not math.isfinite(v):  # ints beyond int64: `_too_long`, checked first
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi


INT64_MAX = 2**63 - 1


def spell(value: Any) -> str:
    """A value as it is typed on the command line (null, true, false), strings quoted."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _too_long(v: Any) -> bool:
    """An integer (or one in a list) beyond int64: Python reads it, numpy, torch and floats cannot hold it."""
    values = v if isinstance(v, (list, ListConfig)) else [v]
    return any(isinstance(x, int) and not isinstance(x, bool) and abs(x) > INT64_MAX for x in values)


def _num(x: float | None) -> str:
    return "" if x is None else str(int(x)) if float(x).is_integer() else f"{x:g}"


def Int(lo=None, hi=None, **kw):  # noqa: N802 - reads like a type in the table below
    return Rule("int", lo, hi, **kw)


def Float(lo=None, hi=None, **kw):  # noqa: N802
    return Rule("float", lo, hi, **kw)


def Choice(*choices, **kw):  # noqa: N802
    return Rule("choice", choices=choices, **kw)


BOOL, STR = Rule("bool"), Rule("str")

# The eval_protocol group, shared by `dqn train` (its evaluations) and `dqn eval`.
EVAL_PROTOCOL_RULES: dict[str, Rule] = {
    "eval_protocol.name": STR,
    "eval_protocol.epsilon": Float(0, 1),
    "eval_protocol.episodes": Int(1),
    "eval_protocol.max_episode_frames": Int(1, nullable=True),
    "eval_protocol.noop_max": Int(0, nullable=True),
}

# Every key a train config may hold. A key missing here is rejected as unknown, so a new config
# field needs its rule added here (tests compose every group option and validate it).
TRAIN_RULES: dict[str, Rule] = {
    "seed": Int(0, 2**32 - 1),  # numpy's legacy seeding takes 32 bits
    "device": Rule("str"),
    "torch_threads": Int(1),
    "total_steps": Int(1),
    "resume": Rule("str", nullable=True),
    "eval.interval": Int(0),
    "eval.episodes": Int(1),
    "eval.epsilon": Float(0, 1),
    "eval.stop_on_solved": BOOL,
    "eval.stop_return": Float(nullable=True),
    "eval.seed_offset": Int(0),
    "checkpoint.interval": Int(0),
    "checkpoint.keep_last": Int(0),
    "checkpoint.save_buffer": BOOL,
    "log.interval": Int(1),
    "log.tensorboard": BOOL,
    "log.progress": Choice("auto", True, False),
    "env.name": STR,
    "env.id": STR,
    "env.kind": Choice("classic", "atari"),
    "env.num_envs": Int(1),
    "env.max_episode_steps": Int(1, nullable=True),
    "env.solved_return": Float(nullable=True),
    # Atari (configs/env/atari.yaml; the preprocessing protocol is the env/preset group)
    "env.game": STR,
    "env.vectorization": Choice("sync", "async", "ale"),
    "env.num_threads": Int(0),
    "env.preset.name": STR,
    "env.preset.id": STR,
    "env.preset.noop_max": Int(0),
    "env.preset.frame_skip": Int(1),
    "env.preset.screen_size": Int(36),  # the smallest frame nature_cnn's three convs accept
    "env.preset.frame_stack": Int(1),
    "env.preset.sticky_actions": Float(0, 1),
    "env.preset.full_action_space": BOOL,
    "env.preset.max_episode_frames": Int(1),
    "env.preset.clip_rewards": BOOL,
    "env.preset.terminal_on_life_loss": BOOL,
    "env.preset.fire_on_reset": BOOL,
    **EVAL_PROTOCOL_RULES,
    "compile": BOOL,
    "cuda_graphs": BOOL,
    "overlap": BOOL,
    "batched_targets": BOOL,
    "round_graphs": BOOL,
    "precision": Choice("fp32", "bf16-mixed"),
    "network.name": Choice("mlp", "nature_cnn"),
    "network.hidden_sizes": Rule("int_list"),
    "network.activation": Choice("relu", "tanh", "elu"),
    "network.hidden": Int(1),
    "network.dueling": BOOL,
    "buffer.kind": Choice("uniform", "prioritized"),
    "buffer.capacity": Int(1),
    "buffer.storage": Choice("host", "device"),
    "buffer.alpha": Float(0, 1),
    "buffer.beta0": Float(0, 1),
    "buffer.eps": Float(0, lo_open=True),
    "agent.name": Choice("dqn"),
    "agent.gamma": Float(0, 1),
    "agent.n_step": Int(1),
    "agent.double": BOOL,
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
    "seed": Int(0, 2**32 - 1),  # numpy's legacy seeding takes 32 bits
    "device": Rule("str"),
    "torch_threads": Int(1),
    "output": Rule("str", nullable=True),
    **EVAL_PROTOCOL_RULES,
    "video": BOOL,
    "tensorboard": BOOL,
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
            try:
                value = node[key]
            except InterpolationResolutionError as e:  # e.g. env.id = ${env.game}... with env.game unset
                out[name] = _Unresolved(str(e).splitlines()[0])
                continue
            if isinstance(value, DictConfig):
                walk(value, name + ".")
            else:
                out[name] = value

    walk(cfg, "")
    return out


class _Unresolved(str):
    """A value whose interpolation failed; the text says why."""


def _check(cfg: DictConfig, rules: dict[str, Rule]) -> list[str]:
    problems = []
    leaves = _leaves(cfg)
    any_missing = any(isinstance(v, str) and v == "???" for v in leaves.values())
    for key, value in leaves.items():
        rule = rules.get(key)
        if isinstance(value, _Unresolved):
            if not any_missing:  # a required key left unset explains it better
                problems.append(f"{key} cannot be resolved: {value}.")
        elif rule is None:
            message = unknown_key(key, rules, set(leaves))
            if message not in problems:  # one line for all the keys of a group eval does not have (+env=...)
                problems.append(message)
        elif value == "???":
            problems.append(f"{key} is required; set it with {key}=..., it must be {rule.describe()}.")
        elif _too_long(value):
            problems.append(
                f"{key} is invalid: it is beyond 64-bit integers ({INT64_MAX}); it must be {rule.describe()}."
            )
        elif not rule.ok(value):
            typed = ""
            if rule.kind == "int" and isinstance(value, float) and value.is_integer() and rule.ok(int(value)):
                typed = f" (write {int(value)}: 1e4 and 10000.0 are floats)"
            problems.append(f"{key}={spell(value)} is invalid: it must be {rule.describe()}{typed}.")
    return problems


# What users of Stable-Baselines3, CleanRL and the ALE type, and the key it is here
OTHER_NAMES = {
    "learning_rate": "agent.lr",
    "buffer_size": "buffer.capacity",
    "total_timesteps": "total_steps",
    "target_network_frequency": "agent.target_update_interval",
    "train_frequency": "agent.train_freq",
    "start_e": "agent.exploration_initial_eps",
    "end_e": "agent.exploration_final_eps",
    "num_envs": "env.num_envs",
    "env_id": "env.id",
    "repeat_action_probability": "env.preset.sticky_actions",  # the ALE's name
    "net_arch": "network.hidden_sizes",  # SB3's policy_kwargs
    "n_timesteps": "total_steps",  # rl-zoo's
    "cuda": "device",  # CleanRL's --cuda
    "target_update_freq": "agent.target_update_interval",
}


def unknown_key(key: str, rules: dict[str, Rule], present: set[str] | None = None) -> str:
    """The message for a key no config has: the key meant (by its SB3, CleanRL or ALE name, or a close
    spelling) and the keys its group has. `present`: the keys of the config the run composes, where known
    (env=cartpole has no env.game): only those are offered; else every option's keys."""
    group = key.split(".")[0] + "." if "." in key else ""
    leaf = key.rsplit(".", 1)[-1].replace("-", "_")  # (total-timesteps: a command-line flag's spelling)
    tops = sorted({k.split(".")[0] for k in rules})  # the top-level keys and groups
    meant = OTHER_NAMES.get(leaf) in rules  # (another tool's name: said even where this run lacks the key)
    for_eval = rules is EVAL_RULES
    if present:
        rules = {k: rule for k, rule in rules.items() if k in present}
    if meant:
        hint = f" Did you mean {OTHER_NAMES[leaf]} (what Stable-Baselines3, CleanRL or the ALE call {leaf})?"
    else:
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in rules if k.startswith(group)}
        close = difflib.get_close_matches(key, [*rules, *tops], n=2, cutoff=0.85)  # groups too: netwrk=mlp
        if "." not in key:  # a short name is far from its ratio with one letter off: evn=pong
            close += difflib.get_close_matches(key, tops, n=1, cutoff=0.6)
        close += [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=2, cutoff=0.8)]
        close += [k for k in rules if k.rsplit(".", 1)[-1] == leaf and k != key]  # another group's: agent.capacity
        hint = f" Did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    in_group = sorted(k for k in rules if k.startswith(group))
    if group and not in_group:
        if for_eval and group[:-1] in TRAIN_GROUPS:
            return eval_refuses(group[:-1]) + f" (dqn eval's keys: {', '.join(tops)}.)"
        return (
            f"{key} is not a known key: there are no {group[:-1]}.* keys.{hint} (known at the top: {', '.join(tops)}.)"
        )
    known = f"known in {group[:-1]}: {', '.join(in_group)}" if group else f"known at the top: {', '.join(tops)}"
    return f"{key} is not a known key.{hint} ({known}.)"


TRAIN_GROUPS = ("env", "network", "buffer", "agent")  # what a checkpoint's own config fixes for dqn eval


def eval_refuses(group: str) -> str:
    """Why `dqn eval` has no `group` (one of TRAIN_GROUPS) to set."""
    return (
        f"{group}=... and {group}.* are not dqn eval settings: the env, network, buffer and agent are rebuilt "
        "from the config stored in the checkpoint."
    )


def options_with(key: str, config_name: str = "train") -> list[str]:
    """The options of `key`'s config group (`env.vectorization`: env) whose composed config has `key`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    group, _, rest = key.partition(".")
    folder = Path(config_dir()) / group
    if not rest or not folder.is_dir():
        return []
    GlobalHydra.instance().clear()  # what a failed Hydra app left
    found, (parent_key, _, leaf) = [], key.rpartition(".")
    with initialize_config_dir(config_dir(), version_base="1.3"):
        for option in sorted(p.stem for p in folder.glob("*.yaml")):
            parent = OmegaConf.select(compose(config_name, [f"{group}={option}"]), parent_key)
            if isinstance(parent, DictConfig) and leaf in parent.keys():  # (`in` is False for ???)
                found.append(option)
    return found


# Keys the trainer reads in every run; a config that lost one (`~agent.gamma`) is refused up front.
REQUIRED_TRAIN_KEYS = (
    "seed", "device", "torch_threads", "total_steps",
    "eval.interval", "eval.episodes", "eval.epsilon", "eval.stop_on_solved", "eval.seed_offset",
    "checkpoint.interval", "checkpoint.keep_last", "log.interval", "log.tensorboard", "log.progress",
    "env.id", "env.kind", "env.num_envs", "env.solved_return", "network.name", "buffer.kind", "buffer.capacity",
    "agent.gamma", "agent.lr", "agent.adam_eps", "agent.batch_size", "agent.learning_starts", "agent.train_freq",
    "agent.gradient_steps", "agent.target_update_interval", "agent.tau", "agent.loss", "agent.max_grad_norm",
    "agent.exploration_initial_eps", "agent.exploration_final_eps", "agent.exploration_fraction",
)  # fmt: skip
REQUIRED_BY_NETWORK = {"mlp": ("network.hidden_sizes", "network.activation"), "nature_cnn": ("network.hidden",)}
REQUIRED_BY_ENV_KIND = {"atari": tuple(k for k in TRAIN_RULES if k.startswith("env.preset.")) + ("env.game",)}


GROUP_BLOCKS = {"env.preset": "env/preset", "env": "env", "network": "network", "buffer": "buffer", "agent": "agent"}


def _replaced_blocks(cfg: DictConfig) -> list[str]:
    """A group's block set to a value (`env.preset=machado`): the group option meant, in one sentence
    instead of one per key the block lost."""
    problems = []
    for path, group in GROUP_BLOCKS.items():
        node = OmegaConf.select(cfg, path, default=None)
        if node is not None and not isinstance(node, DictConfig):
            problems.append(
                f"{path}={spell(node)} replaces the whole {path} block with a value; to pick an option of the "
                f"{group} group write {group}={node}."
            )
    return problems


def _missing(cfg: DictConfig, rules: dict[str, Rule]) -> list[str]:
    leaves = _leaves(cfg)
    if leaves.get("env.kind") == "atari" and not any(k.startswith("env.preset.") for k in leaves):
        return [
            "env.kind=atari needs the Atari settings (env.game, the env/preset group) that env=atari brings: "
            "use env=atari env.game=GAME, or env=pong / env=breakout, instead of env.kind=atari."
        ]
    required = REQUIRED_TRAIN_KEYS + REQUIRED_BY_NETWORK.get(leaves.get("network.name"), ())
    required += REQUIRED_BY_ENV_KIND.get(leaves.get("env.kind"), ())
    return [
        f"{key} is missing; every train config needs it ({rules[key].describe()}). Put it back, e.g. {key}=..."
        for key in required
        if key not in leaves
    ]


def _device_problem(device: str) -> str | None:
    """auto | cpu | cuda | cuda:N, and a CUDA device only where torch finds one."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        return f"device={device!r} is invalid: it must be one of auto, cpu, cuda or cuda:N."
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return (
                f"device={device!r} was asked for, but torch finds no CUDA GPU on this machine (torch "
                f"{torch.__version__}); use device=cpu or device=auto."
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"device={device!r} is invalid: this machine has {torch.cuda.device_count()} CUDA device(s)."
    return None


def validate_train(cfg: DictConfig) -> None:
    """Check every value of a train config, then the rules that tie values together."""
    problems = _replaced_blocks(cfg)
    if problems:
        raise UserError("invalid config: " + " ".join(problems))
    problems = _check(cfg, TRAIN_RULES) + _missing(cfg, TRAIN_RULES)
    if not problems:
        if (device := _device_problem(cfg.device)) is not None:
            problems.append(device)
        if cfg.seed + cfg.eval.seed_offset > 2**32 - 1:
            problems.append(
                f"eval.seed_offset={cfg.eval.seed_offset} with seed={cfg.seed} gives evaluation seed "
                f"{cfg.seed + cfg.eval.seed_offset}, above 2**32 - 1; lower one of them."
            )
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
        elif e.kind == "atari" and b.capacity // e.num_envs < e.preset.frame_stack + a.get("n_step", 1):
            # a sampled slot needs its stack's earlier frames and its window's next frame still stored
            needed = e.preset.frame_stack + a.get("n_step", 1)
            problems.append(
                f"buffer.capacity={b.capacity} keeps {b.capacity // e.num_envs} steps per env (env.num_envs="
                f"{e.num_envs}); a transition of {e.preset.frame_stack} stacked frames and agent.n_step="
                f"{a.get('n_step', 1)} needs at least {needed}. Raise buffer.capacity."
            )
        elif a.get("n_step", 1) > b.capacity // e.num_envs:
            problems.append(
                f"agent.n_step={a.n_step} is longer than the {b.capacity // e.num_envs} steps each env keeps "
                f"(buffer.capacity={b.capacity} / env.num_envs={e.num_envs})."
            )
        if a.exploration_final_eps > a.exploration_initial_eps:
            problems.append(
                f"agent.exploration_final_eps={a.exploration_final_eps} is above "
                f"agent.exploration_initial_eps={a.exploration_initial_eps}; epsilon decays, so final <= initial."
            )
        if b.get("storage") == "device" and e.kind != "atari":
            problems.append(
                f"buffer.storage=device keeps stacked Atari frames on the training device; env.kind={e.kind} "
                "stores flat observations, so use buffer.storage=host."
            )
        overlaps = e.get("vectorization") == "ale" or (e.get("vectorization") == "async" and e.num_envs > 1)
        if cfg.get("overlap") and not overlaps:
            problems.append(
                "overlap=true runs the updates while the games step on other cores, so it needs "
                "env.vectorization=ale, or env.vectorization=async with env.num_envs > 1 (Atari); this run has "
                + (
                    f"env.vectorization={e.vectorization} and env.num_envs={e.num_envs}."
                    if "vectorization" in e
                    else f"env={e.name}, which steps its envs in this process."
                )
            )
        if cfg.get("cuda_graphs") and not _uses_cuda(cfg.device):
            problems.append(
                f"cuda_graphs=true records the update as a CUDA graph, so it needs a CUDA device; this run has "
                f"device={cfg.device} ({'a GPU' if _uses_cuda(cfg.device) else 'no GPU'}). Drop cuda_graphs or use "
                "device=cuda on a GPU machine."
            )
    if problems:
        raise UserError("invalid config: " + " ".join(problems))


def _uses_cuda(device: str) -> bool:
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


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


# ---- the command line, before Hydra runs it ---------------------------------------------------------


def _groups(config_name: str) -> dict[str, bool]:
    """The config groups a `dqn` command composes, each with whether it is an add-on (`experiment`,
    `hparams_search`: none unless chosen): train's or eval's defaults list, plus the nested env/preset."""
    defaults = OmegaConf.load(Path(config_dir()) / f"{config_name}.yaml").defaults
    groups = {}
    for entry in defaults:
        if isinstance(entry, DictConfig):
            (key, value), *_ = entry.items()
            if not key.startswith("override "):
                groups[key] = value is None
    if "env" in groups:
        groups["env/preset"] = False
    return groups


def check_group_choices(overrides: list, config_name: str, unknown_options: bool = True) -> None:
    """A group set to null or to a list (`env=null`, `env=[cartpole,acrobot]`) is a UserError naming the
    options: one is needed (Hydra raises a ValueError for null, and merges the options of a list). So is an
    option that configs/ does not have (with the option meant), unless `unknown_options` is False (the
    command line adds a config dir, whose options Hydra finds). `overrides`: Hydra's parsed overrides."""
    groups = _groups(config_name)
    for o in overrides:
        group = o.key_or_group
        if group not in groups or o.is_sweep_override() or o.is_delete():
            continue
        names = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
        options = ", ".join(names)
        if isinstance(o.value(), str):
            if unknown_options and o.value() not in names:
                hint = _hint(group, o.value(), names)
                raise UserError(f"{o.input_line}: not an option of the {group} group; allowed: {options}.{hint}")
            continue
        if not isinstance(o.value(), (list, dict)) and o.value() is not None:  # env=1, agent=true
            raise UserError(f"{o.input_line}: the {group} group takes an option's name; allowed: {options}.")
        if o.value() is None:
            fix = f" It is off by default: leave {group}= out." if groups[group] else ""
            raise UserError(f"{o.input_line}: the {group} group takes one option, not null; allowed: {options}.{fix}")
        if isinstance(o.value(), dict):  # agent={lr:1}
            key = f"{group}.{next(iter(o.value()), 'KEY')}"
            raise UserError(
                f"{o.input_line}: the {group} group takes one option, not a mapping; allowed: {options}. "
                f"Set a key of it with {key}=VALUE."
            )
        sweep = f" To train with each, sweep: dqn train -m {group}=a,b." if config_name == "train" else ""
        raise UserError(f"{o.input_line}: the {group} group takes one option, not a list; allowed: {options}.{sweep}")


# what users type for a DQN extension as if it were a group option: each is a switch of the options there are
SWITCHES = {
    "ddqn": "agent.double=true", "double": "agent.double=true", "double_dqn": "agent.double=true",
    "dueling": "network.dueling=true", "dueling_dqn": "network.dueling=true",
    "per": "buffer=prioritized", "prioritised": "buffer=prioritized",
    "nstep": "agent.n_step=3 (or another n)", "n_step": "agent.n_step=3 (or another n)",
}  # fmt: skip


def _hint(group: str, value: str, names: list[str]) -> str:
    """The sentence after an unknown group option: the option meant, or where such a value goes."""
    key = value.lower().replace("-", "_")
    if key in SWITCHES:
        return f" For {value}: {SWITCHES[key]}."
    if group == "env":
        return _env_hint(value, names)
    close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
    return f" Did you mean {group}={close[0]}?" if close else ""


def _env_hint(value: str, names: list[str]) -> str:
    """Where an env value that is no env option goes: a preset, env.game (an ALE game) or env.id."""
    import gymnasium as gym

    from dqn_cli.atari import ale_games  # (registers the ALE's ids too)

    game = re.fullmatch(r"(?:ALE/)?(\w+?)(?:NoFrameskip)?(?:-v\d+)?", value)
    games = {g.lower(): g for g in ale_games()}
    if game and game.group(1).lower() in games:  # Pong, Breakout-v5, PongNoFrameskip-v4, ALE/Pong-v5
        name = games[game.group(1).lower()]
        preset = f"env={name.lower()}, or " if name.lower() in names else ""
        return f" An Atari game goes in env.game: {preset}env=atari env.game={name}."
    close = difflib.get_close_matches(value.lower(), names, n=1, cutoff=0.6)
    if value in gym.registry:  # CartPole-v1, LunarLander-v3
        return f" A gymnasium id goes in env.id: {f'env={close[0]}, or ' if close else ''}env=classic env.id={value}."
    if close:
        return f" Did you mean env={close[0]}?"
    return " A gymnasium env goes in env=classic env.id=ID (a registered id); an Atari game in env=atari env.game=GAME."


CHECK_LIMIT = 32  # a sweep of up to this many jobs has each one checked; a larger one varies one key at a time


def check_command_line(overrides: list[str], multirun: bool = False) -> None:
    """Compose and check the config of the run, or of every job of a sweep (`multirun`), that these
    `dqn train` overrides make, before Hydra makes a run dir or starts a job: a mistake leaves no
    outputs/DATE/TIME behind, and a bad value in a sweep's sixth job stops it before the first trains.

    A sweep's values are those of the command line's sweeps (comma lists, `range`, `choice`, `glob`)
    and of `hydra.sweeper.params` (a search space: every option of a `choice`, both ends of an
    `interval`); a key also set on the command line takes that value. Up to `CHECK_LIMIT` jobs are all
    checked; beyond that, each value once with the other keys at their first value. Each config passes
    `validate_train` and the env check of `make_env` (a registered id, an ALE game), and a sweep's jobs
    `refuse_resume`. Raises UserError (in a sweep naming the job's swept values); a bad override or group
    option raises Hydra's own error. A single run with a sweep in it is left to Hydra, which says how
    to sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dqn_cli.envs import check_env

    with initialize_config_dir(config_dir(), version_base="1.3", job_name="dqn_check"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        given = parser.parse_overrides(overrides)
        unswept = [o for o in given if not o.is_sweep_override()]
        fixed = [o.input_line for o in unswept]
        if not multirun and len(fixed) < len(given):
            return
        if not multirun:
            refuse_used_run_dir(compose("train", fixed, return_hydra_config=True))
        space = {}
        job_dirs = None  # a sweep dir given, whose job dirs are named by the overrides: checked job by job
        if multirun:
            hydra_cfg = compose("train", fixed, return_hydra_config=True).hydra
            refuse_used_sweep_dir(hydra_cfg)
            subdir = str(OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir"))
            if "${hydra.job.override_dirname}" in subdir:
                job_dirs = _sweep_dir(hydra_cfg)
            check_launcher(hydra_cfg.launcher, OmegaConf.select(hydra_cfg, "runtime.choices.hydra/launcher"))
            sweeper = hydra_cfg.sweeper
            space = sweeper.get("params") or {}
            # Optuna's n_trials and n_jobs (how many trials, how many at once); the basic sweeper's batch size
            for key in ("n_trials", "n_jobs", "max_batch_size"):
                if (
                    key in sweeper
                    and not Int(1).ok(sweeper[key])
                    and not (key == "max_batch_size" and sweeper[key] is None)
                ):
                    also = " or null (every job in one batch)" if key == "max_batch_size" else ""
                    raise UserError(
                        f"hydra.sweeper.{key}={sweeper[key]!r} is invalid: it must be {Int(1).describe()}{also}."
                    )
        swept = swept_overrides(parser, given, space)
        values = [[f"{o.get_key_element()}={v}" for v in _sweep_values(o)] for o in swept]
        checked_envs: set[tuple] = set()
        # the fixed overrides as Hydra's sweeper writes them (false -> False): with the job's values they name its dir
        launched = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in unswept]

        def check_job(job: list[str]) -> None:
            cfg = compose("train", [*fixed, *job])
            refuse_experiment_clash(parser.parse_overrides([*fixed, *job]))
            if multirun:
                refuse_resume(cfg)
            if job_dirs is not None:
                with_hydra = compose("train", [*launched, *job], return_hydra_config=True)
                try:
                    subdir = OmegaConf.select(with_hydra, "hydra.sweep.subdir", throw_on_resolution_failure=True)
                except OmegaConfBaseException:  # ${hydra.job.num}/id as well: known only as the job starts
                    subdir = None  # (the job checks its dir itself then)
                if subdir is not None:
                    refuse_used_job_dir(job_dirs / str(subdir))
            validate_train(cfg)
            env_key = (cfg.env.kind, cfg.env.id, cfg.env.get("game"))
            if env_key not in checked_envs:
                check_env(cfg.env)
                checked_envs.add(env_key)

        if multirun:
            _check_jobs(list(_jobs(values)), check_job)
        else:
            check_job([])


def _check_jobs(jobs: list[list[str]], check_job: Callable[[list[str]], None]) -> None:
    """`check_job` on each of a sweep's jobs (their swept values); the first UserError names the job, or
    every job when each one checked fails the same way (the fixed settings have it), and says that no
    job was started."""
    for i, job in enumerate(jobs):
        try:
            check_job(job)
        except UserError as e:
            where = f"in the sweep's job with {' '.join(job)}: " if job else ""
            if i == 0 and len(jobs) > 1 and all(_problem(lambda j=j: check_job(j)) == str(e) for j in jobs[1:]):
                where = "in every job of the sweep: "
            raise UserError(f"{where}{e} No job was started.") from None


def _problem(check: Callable[[], object]) -> str | None:
    """The text of the UserError `check()` raises, or None (any other error: None too)."""
    try:
        check()
    except UserError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a config the swept values were needed for
        return None
    return None


def check_launcher(launcher: DictConfig, choice: str | None = None) -> None:
    """Refuse a launcher setting that would crash the sweep inside its plugin, or leave it waiting
    forever: joblib's n_jobs=0, `hydra/launcher=ray` (`choice`) told to join a running cluster, a Ray job
    asking a new local instance for more CPUs or GPUs than it has, submitit's timeout_min below 1,
    Slurm's launcher where Slurm is not installed."""
    import os
    import shutil

    target = str(launcher.get("_target_", ""))
    if target.endswith("RayLauncher") and choice == "ray" and os.environ.get("RAY_ADDRESS", "local") != "local":
        raise UserError(
            f"hydra/launcher=ray starts a new local Ray instance, but RAY_ADDRESS={os.environ['RAY_ADDRESS']} names "
            "a running cluster, which the plugin's ray option cannot join (it passes object_store_memory, which "
            "Ray refuses then). Use hydra/launcher=ray_cluster to join it (with RAY_AUTH_MODE=token where the "
            "cluster uses Ray's token authentication), or unset RAY_ADDRESS for a local instance."
        )
    if target.endswith("SubmititLauncher") or target.endswith("LocalLauncher") or target.endswith("SlurmLauncher"):
        timeout = launcher.get("timeout_min")
        if timeout is not None and not Int(1).ok(timeout):
            raise UserError(
                f"hydra.launcher.timeout_min={spell(timeout)} is invalid: submitit kills each job after that many "
                f"minutes, so it must be {Int(1).describe()}."
            )
    if target.endswith("JoblibLauncher"):
        n_jobs = launcher.get("n_jobs")
        if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0):
            raise UserError(
                f"hydra.launcher.n_jobs={spell(n_jobs)} is invalid: joblib runs that many jobs at once, so it must "
                "be a whole number other than 0 (-1: one per CPU, -2: all CPUs but one)."
            )
    elif target.endswith("RayLauncher"):
        init, remote = launcher.ray.get("init") or {}, launcher.ray.get("remote") or {}
        address = init.get("address") or os.environ.get("RAY_ADDRESS")
        if address and (why := _unreachable(str(address))) is not None:
            where = "hydra.launcher.ray.init.address" if init.get("address") else "RAY_ADDRESS"
            raise UserError(
                f"the Ray cluster at {where}={address} cannot be reached ({why}); Ray would try it again and again, "
                "and no job would start. Start the cluster's head there (ray start --head), or give its address."
            )
        if init.get("address") is None and not os.environ.get("RAY_ADDRESS"):  # a new local instance: its size is known
            # (what the machine has, asked only for a resource a job asks for: counting GPUs imports torch)
            for resource, machine in (("num_cpus", lambda: os.cpu_count() or 1), ("num_gpus", _cuda_devices)):
                want = remote.get(resource)
                if not isinstance(want, (int, float)) or isinstance(want, bool):
                    continue
                have = init.get(resource) if init.get(resource) is not None else machine()
                if want > have:
                    raise UserError(
                        f"hydra.launcher.ray.remote.{resource}={spell(want)} asks Ray for more per job than the "
                        f"local Ray instance this sweep starts has ({have}, from hydra.launcher.ray.init.{resource} or "
                        f"this machine): no job would ever start. Ask for at most {have}, or join a larger cluster "
                        "(hydra/launcher=ray_cluster with RAY_ADDRESS or hydra.launcher.ray.init.address)."
                    )
    elif target.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise UserError(
            "hydra/launcher=submitit_slurm submits each job to Slurm, but Slurm's srun is not on this machine's "
            "PATH. Start the sweep on the cluster's login node, or pick a launcher that runs here: joblib, "
            "submitit_local, ray."
        )


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a Ray address HOST:PORT (or ray://HOST:PORT, http://HOST:PORT), or None: it
    answers, or the address is one Ray looks up itself (auto, local)."""
    import socket

    host, _, port = address.split("://")[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as e:  # refused, no such host, timed out (3 s)
        return e.strerror or str(e) or type(e).__name__
    except (UnicodeError, ValueError, OverflowError) as e:  # not a host name (a label over 63 characters), port
        return f"not an address: {e}"
    return None


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def refuse_experiment_clash(overrides: list) -> None:
    """An experiment is a bundle for the group options its defaults list overrides (pong_fast: env=pong);
    the command line picking another option of such a group would get the bundle's settings on the wrong
    env (the command line wins in Hydra): a UserError. `overrides`: Hydra's parsed overrides."""
    chosen = {o.key_or_group: o.value() for o in overrides if isinstance(o.value(), str)}
    experiment = chosen.get("experiment")
    bundle = shipped_option("experiment", experiment) if experiment is not None else None
    if bundle is None:  # (Hydra names an unknown option itself)
        return
    for entry in bundle.get("defaults", []):
        for key, option in entry.items() if isinstance(entry, dict) else ():
            group = key.removeprefix("override /")
            if key.startswith("override /") and chosen.get(group, option) != option:
                raise UserError(
                    f"experiment={experiment} is a bundle of settings for {group}={option}, but the command line "
                    f"picks {group}={chosen[group]}. Drop {group}={chosen[group]} to run the experiment, or drop "
                    "experiment= to train that option with its own settings."
                )


def refuse_used_run_dir(cfg: DictConfig) -> None:
    """A new run into a `hydra.run.dir` that holds an earlier run's checkpoints/last.pt would overwrite
    them (Hydra reuses a dir it is given): a UserError pointing at resume= instead."""
    try:
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)))
    except Exception:  # noqa: BLE001 - a dir named by what only a running job knows: nothing to check here
        return
    if (run_dir / LAST).exists():
        raise UserError(
            f"hydra.run.dir={run_dir} already holds a run (checkpoints/last.pt); a new run there would "
            f"overwrite its checkpoints. Continue that run with dqn train resume={run_dir}, or pick another "
            "hydra.run.dir."
        )


def _sweep_dir(hydra_cfg: DictConfig) -> Path | None:
    """`hydra.sweep.dir` as given, or None for the default multirun/DATE/TIME (a new dir each time)."""
    try:
        return Path(str(OmegaConf.select(hydra_cfg, "sweep.dir", throw_on_resolution_failure=True)))
    except Exception:  # noqa: BLE001 - ${now:...} and hydra.runtime.cwd resolve only in a running sweep
        return None


def refuse_used_sweep_dir(hydra_cfg: DictConfig) -> None:
    """A sweep into a `hydra.sweep.dir` whose job dirs hold an earlier sweep's checkpoints would overwrite
    them job by job (Hydra reuses the dir and the job numbers): a UserError naming them. Job dirs named
    by the job's number (`hydra.sweep.subdir`: `${hydra.job.num}`, or text around it) are checked here;
    dirs named by the overrides, job by job (`refuse_used_job_dir`)."""
    sweep_dir = _sweep_dir(hydra_cfg)
    subdir = str(OmegaConf.to_container(hydra_cfg.sweep, resolve=False).get("subdir"))
    parts = subdir.split("${hydra.job.num}")
    if sweep_dir is None or len(parts) != 2 or "$" in "".join(parts) or not sweep_dir.is_dir():
        return
    numbered = re.compile(re.escape(parts[0]) + r"\d+" + re.escape(parts[1]))
    used = sorted(d for d in sweep_dir.iterdir() if numbered.fullmatch(d.name) and (d / LAST).is_file())
    if used:
        runs = f"{counted(len(used), 'run dir')} with checkpoints/last.pt, e.g. {used[0]}"
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} already holds an earlier sweep's runs ({runs}); a new sweep there would "
            "overwrite them job by job. Pick another hydra.sweep.dir (left unset, each sweep gets a new "
            "multirun/DATE/TIME), or continue a stopped job with dqn train resume=RUN_DIR."
        )


def refuse_used_job_dir(job_dir: Path) -> None:
    """A sweep job whose dir holds an earlier run (checkpoints/last.pt) would train over it: a
    UsedRunDirError."""
    if (job_dir / LAST).exists():
        raise UsedRunDirError(
            f"the job dir {job_dir} already holds a run (checkpoints/last.pt), which this job would overwrite "
            "(an earlier sweep into the same hydra.sweep.dir gave a job the same dir, or two jobs of this sweep "
            "share it: hydra.job.config.override_dirname.exclude_keys). Pick another "
            f"hydra.sweep.dir, or continue that run with dqn train resume={job_dir}."
        )


def preset_mismatch(env_cfg: DictConfig) -> str | None:
    """What to say when `env.id` (classic) or `env.game` (Atari) is not the one the chosen env preset was
    made for (`env=cartpole env.id=Acrobot-v1`): its tuned settings and solved_return are the preset's."""
    preset = (shipped_option("env", env_cfg.get("name")) or {}).get("env", {})  # "???", ${...} as written
    for key, generic in (("id", "classic"), ("game", "atari")):
        made_for = preset.get(key)
        if made_for in (None, "???") or "${" in str(made_for) or env_cfg.get(key) == made_for:
            continue
        tuned = ", its tuned agent" if generic == "classic" else ""
        given = f"env.{key}={env_cfg.get(key)}"
        return (
            f"{given} runs under env={env_cfg.name}, a preset made for {made_for} (its solved_return="
            f"{env_cfg.get('solved_return')}{tuned} included); env={generic} {given} runs it with the {generic} "
            "defaults instead"
        )
    return None


def check_eval_sweep(overrides: list[str]) -> None:
    """`dqn eval -m OVERRIDES`, before the first job: each job's config passes `validate_eval` and names a
    checkpoint file that is there (up to `CHECK_LIMIT` jobs all, beyond that each value once), and a fixed
    `output=` that every job would write in turn is refused. Raises UserError naming the job's values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dqn_cli.checkpoint import check_checkpoint_path

    with initialize_config_dir(config_dir(), version_base="1.3", job_name="dqn_check"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        given = parser.parse_overrides(overrides)
        swept = [o for o in given if o.is_sweep_override()]
        fixed = [o.input_line for o in given if not o.is_sweep_override()]
        output = [o for o in given if o.get_key_element() == "output" and not o.is_sweep_override()]
        if swept and output and output[-1].value() is not None and "${" not in str(output[-1].value()):
            raise UserError(
                f"output={output[-1].value()} in a sweep: every job would write that one file, each over the one "
                "before. Leave output unset (each job writes eval.json into its job dir), or name a file per job, "
                "e.g. output='eval_${hydra:job.num}.json'."
            )
        values = [[f"{o.get_key_element()}={v}" for v in _sweep_values(o)] for o in swept]

        def check_job(job: list[str]) -> None:
            cfg = compose("eval", [*fixed, *job])
            if "${" in str(OmegaConf.to_container(cfg, resolve=False).get("output")):
                cfg.output = None  # a file per job (${hydra:job.num}): known only in the running job
            validate_eval(cfg)
            check_checkpoint_path(Path(cfg.checkpoint))

        _check_jobs(list(_jobs(values)), check_job)


def refuse_resume(cfg: DictConfig) -> None:
    """A sweep's job may not set `resume=`: that continues one run, in its own dir."""
    if cfg.get("resume"):
        raise UserError(f"resume={cfg.resume!r} continues one run; it cannot be part of a sweep (-m).")


def swept_overrides(parser, given: list, space: Mapping[str, Any]) -> list:
    """The sweep overrides of a multirun: the command line's (`given`, parsed) and the sweeper's search
    space `hydra.sweeper.params` (`space`) for keys the command line does not set."""
    keys = {o.get_key_element() for o in given}
    searched = [f"{k}={v}" for k, v in space.items() if k not in keys]
    return [o for o in [*parser.parse_overrides(searched), *given] if o.is_sweep_override()]


def _sweep_values(override) -> list[str]:
    """The values a sweep override takes (an interval: its two ends, what a search samples between)."""
    if override.is_interval_sweep():
        sweep = override.value()
        return [str(sweep.start), str(sweep.end)]
    return list(override.sweep_string_iterator())


def _jobs(values: list[list[str]]) -> Iterator[list[str]]:
    """Every combination of `values` (one list per swept key) if there are up to CHECK_LIMIT, else each
    value once, the other keys at their first."""
    if math.prod(len(v) for v in values) <= CHECK_LIMIT:
        yield from (list(job) for job in itertools.product(*values))
        return
    first = [v[0] for v in values]
    yield first
    for i, options in enumerate(values):
        for value in options[1:]:
            yield [*first[:i], value, *first[i + 1 :]]

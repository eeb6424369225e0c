"""The `dqn` command: `dqn train ...` and `dqn eval ...`, each a Hydra app over configs/."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
from pathlib import Path

from dqn_cli.layout import LAST

USAGE = """usage: dqn {train,eval} [KEY=VALUE ...] [GROUP=OPTION ...] [-m] [--help]

  dqn train env=cartpole                    train, log to TensorBoard, write checkpoints
  dqn train -m env=cartpole seed=0,1,2      a sweep, one run dir per job
  dqn train resume=RUN_DIR [total_steps=N]  continue a stopped run in place (Ctrl-C writes a checkpoint)
  dqn eval checkpoint=PATH episodes=20      evaluate a checkpoint

Each subcommand's --help lists its config groups and keys."""


_KEPT: list[BaseException] = []  # a single run's UserError, raised again by main() once Hydra returns


def _hydra_app(config_name: str, task):
    import hydra

    from dqn_cli.config import config_dir

    return hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")(_keep_errors(task))


def _keep_errors(task):
    """Keep a single run's UserError (bad input, a stop signal) for main() instead of raising it
    through Hydra, which would print "Error executing job with overrides: [...]" above the one
    paragraph. In a sweep (-m) it is raised: the launcher stops the sweep and says which job."""

    @functools.wraps(task)
    def run(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from dqn_cli.errors import UserError

        try:
            return task(cfg)
        except UserError as e:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise
            _KEPT.append(e)

    return run


def _train(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dqn_cli import signals

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and str(hydra_cfg.launcher.get("_target_", "")).endswith("JoblibLauncher"):
        signals.hold_stop_signals()  # first: a worker's first job spends seconds importing torch below
    from dqn_cli.config import refuse_resume, refuse_used_job_dir
    from dqn_cli.signals import STOP_FILE, NotStartedError, read_stop_file
    from dqn_cli.trainer import train

    overrides = list(hydra_cfg.overrides.task)
    if not multirun:
        return train(cfg, hydra_cfg.runtime.output_dir, overrides=overrides, fresh_dir=True)
    refuse_resume(cfg)  # (refused before the start already, unless other flags skipped that)
    job_dir = Path(hydra_cfg.runtime.output_dir)
    stop_file = Path(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir, STOP_FILE)  # (hydra.job.chdir=true: cwd moved)
    if (signum := read_stop_file(stop_file) or signals.HELD) is not None:
        raise NotStartedError(f"not started: the sweep was stopped by {signal.Signals(signum).name}", signum)
    if _requeued() and (job_dir / LAST).is_file():
        # Slurm requeued this job (preemption, a time limit) after its stop wrote last.pt: it goes on from there
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.resume = str(job_dir)
        return train(cfg, job_dir, overrides=overrides, stop_file=stop_file)
    refuse_used_job_dir(job_dir)  # (checked before the start where the dir was known)
    # (a sweep's job dir holds the sweep's record of it: not removed on a mistake)
    return train(cfg, hydra_cfg.runtime.output_dir, overrides=overrides, stop_file=stop_file)


def _requeued() -> bool:
    """Whether Slurm runs this job again (SLURM_RESTART_COUNT > 0: submitit requeues a preempted or
    timed-out job in the same job dir)."""
    count = os.environ.get("SLURM_RESTART_COUNT", "0")
    return count.isdigit() and int(count) > 0


def _eval(cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from dqn_cli.evaluate import evaluate

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and not cfg.output:  # each job's scores in its own job dir
        with open_dict(cfg):
            cfg.output = str(Path(hydra_cfg.runtime.output_dir) / "eval.json")
    return evaluate(cfg)["mean_return"]


COMMANDS = {"train": ("train", _train), "eval": ("eval", _eval)}


def configure_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (unless OMP_WAIT_POLICY is already set). With
    torch_threads > 1 on a machine that other processes also use, spinning threads steal the cores
    the work needs: a 2-thread Nature CNN update ran 5-7x slower than with 1 thread on a busy 2-core
    machine, and about as fast once the threads sleep. Must run before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    if "--version" in args or args[0] == "-V":  # (Hydra's own --version names Hydra's)
        from dqn_cli import __version__

        print(f"dqn_cli {__version__}")
        sys.exit(0)
    command = args[0]
    if command not in COMMANDS:
        print(f"dqn: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}.\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    config_name, task = COMMANDS[command]
    args = [command, *_flags_first(args[1:])]
    # Under HYDRA_FULL_ERROR Hydra re-raises what a run (or any job of a sweep) raised, so every
    # error ends here: one paragraph on stderr, an exit code, no traceback.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    # a number of over 4,300 digits is read (and refused by the config check), not a ValueError in Hydra's parser
    sys.set_int_max_str_digits(0)
    configure_openmp()
    # SIGTERM outside the training loop (building 500 envs, an evaluation) ends like a Ctrl-C there: one
    # line and exit 143, not a silent death; training and sweeps take it over with their own handlers
    signal.signal(signal.SIGTERM, _abort)

    from dqn_cli import signals
    from dqn_cli.errors import UserError
    from dqn_cli.signals import TrainingStoppedError
    from dqn_cli.sweep import end_of_sweep

    try:
        if command == "train":  # first: its path, taken as typed, becomes one Hydra reads back unchanged
            args = _resume_in_place(args)
        _check_groups(args[1:], config_name)
        _check_first(args[1:], command)
        sys.argv = [f"dqn {command}", *args[1:]]
        _hydra_app(config_name, task)()
        if _KEPT:
            raise _KEPT[0]
        if (stopped := end_of_sweep(None)) is not None:  # a stop signal after every job had ended
            raise stopped
    except UserError as e:
        e = end_of_sweep(e)  # a sweep's: with its summary and each stopped job's resume command
        if isinstance(e, TrainingStoppedError):  # Ctrl-C / SIGTERM: checkpoint written, exit 130 / 143
            _say(f"dqn {command}: {e}")
        else:
            _say(f"dqn {command}: error: {e}")
        sys.exit(e.exit_code)
    except Exception as e:
        if signals.ACTIVE_SWEEP is not None and signals.ACTIVE_SWEEP.signum is not None:
            # the sweep was stopped: whatever its launcher or sweeper then raised (submitit: a job it killed;
            # Optuna: "no trials are completed yet"), report the stop and each job's state
            stopped = end_of_sweep(e)
            print(f"dqn {command}: {stopped}", file=sys.stderr)
            sys.exit(stopped.exit_code)
        _fail(e, command)
    except KeyboardInterrupt as e:  # a second Ctrl-C, or one before training began
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        kept = "; checkpoints already written are kept" if command == "train" else ""
        if command == "train" and signals.ACTIVE_SWEEP is None and signals.LAST_SAVED is not None:
            path, step = signals.LAST_SAVED  # (the run dir's last.pt)
            run_dir = shlex.quote(str(Path(path).parent.parent))
            kept = f"; {path} (step {step}) is kept: resume with dqn train resume={run_dir}"
        _say(f"dqn {command}: aborted by {name}{kept}")
        if (sweep := signals.ACTIVE_SWEEP) is not None:
            print(
                f"the sweep's jobs may not have written theirs; list what they left with: "
                f"python -m dqn_cli.sweep {shlex.quote(str(sweep.sweep_dir))}",
                file=sys.stderr,
            )
        sys.exit(128 + signum)


def _say(text: str) -> None:
    """The closing message: on stderr, and in a single run's train.log (the run dir's record, where a
    run under nohup or Slurm is read) after the run's own lines. A sweep's report stays on stderr."""
    import logging

    print(text, file=sys.stderr)
    if any(a in SWEEP_FLAGS for a in sys.argv[1:]):
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            handler.stream.write(f"{text}\n")
            handler.flush()


def _fail(e: Exception, command: str) -> None:
    """Exit with one paragraph for what Hydra, OmegaConf or the file system raised; re-raise the rest."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dqn_cli.errors import first_line

    if isinstance(e, (HydraException, OmegaConfBaseException)):
        said = _unknown_override(e, command) or _one_paragraph(e)
        print(f"dqn {command}: error: {said}{_option_meant(said)}", file=sys.stderr)
        sys.exit(2)
    if isinstance(e, ValueError) and _raised_in_hydra(e):  # Hydra's checks of its flags ("Only one of --run, ...")
        print(f"dqn {command}: error: {_one_paragraph(e)}", file=sys.stderr)
        sys.exit(2)
    if isinstance(e, BrokenPipeError):  # `dqn train --help | head`: the reader has gone; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    ray = any(a.startswith("hydra/launcher=ray") for a in sys.argv[1:])
    if isinstance(e, ConnectionError) and ray:  # a sweep's Ray cluster that would not take the driver
        print(
            f"dqn {command}: error: {first_line(str(e))} A sweep joins a Ray cluster at RAY_ADDRESS (or "
            "hydra.launcher.ray.init.address) with hydra/launcher=ray_cluster; where the cluster uses Ray's token "
            "authentication (its default) set RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token "
            "or RAY_AUTH_TOKEN.",
            file=sys.stderr,
        )
        sys.exit(1)
    if isinstance(e, OSError):  # the file system said no: a run dir that cannot be made, a full disk
        where = f": {e.filename}" if e.filename else ""
        if any(a in SWEEP_FLAGS for a in sys.argv[1:]):
            hint = " The sweep dir is hydra.sweep.dir (multirun/DATE/TIME under the working directory unless set)."
        else:
            hint = " The run dir is hydra.run.dir (outputs/DATE/TIME under the working directory unless set)."
        print(f"dqn {command}: error: {e.strerror or e}{where}.{hint if command == 'train' else ''}", file=sys.stderr)
        sys.exit(1)
    raise e


def _abort(signum: int, frame) -> None:
    from dqn_cli.signals import Aborted

    raise Aborted(signum)


SWEEP_FLAGS = ("-m", "--multirun")
CONFIG_DIR_FLAGS = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name")
# Hydra's flags that take the next argument as their value
FLAGS_WITH_VALUES = (*CONFIG_DIR_FLAGS, "-c", "--cfg", "-i", "--info", "-p", "--package", "--experimental-rerun")


def _check_first(args: list[str], command: str = "train") -> None:
    """`check_command_line` on `dqn train ARGS` (`check_eval_sweep` on `dqn eval -m ARGS`), before Hydra
    makes a run dir or starts a sweep's first job. Skipped with Hydra flags other than -m (--cfg, --info,
    -cd DIR, ... print instead of running, or take values) and for a single run with resume= (its config
    is the run's own; `resume_config` checks it). A failure of the check itself only says so: Hydra and
    the trainer check each job anyway."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dqn_cli.config import check_command_line, check_eval_sweep
    from dqn_cli.errors import UserError

    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if a not in SWEEP_FLAGS]
    if any(a not in SWEEP_FLAGS for a in flags) or (not flags and _resumed(args)):
        return
    if command == "eval" and not flags:  # a single evaluation checks its config as it starts
        return
    try:
        if command == "eval":
            check_eval_sweep(overrides)
        else:
            check_command_line(overrides, multirun=bool(flags))
    except (UserError, HydraException, OmegaConfBaseException):
        raise
    except Exception as e:  # noqa: BLE001 - anything else is the check's own failure
        what = f"{type(e).__name__}: {e}"
        print(f"dqn {command}: warning: the config was not checked before the start ({what})", file=sys.stderr)


def _flags_first(args: list[str]) -> list[str]:
    """The overrides (KEY=VALUE) after the flags: Hydra's argparse takes them as one run of positional
    arguments, so `dqn train seed=0,1 -m` would end in "unrecognized arguments"."""
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    return [a for a in args if a not in overrides] + overrides


def _foreign_flag(args: list[str], config_name: str) -> str | None:
    """What to say of a `--flag` Hydra does not have (`--total-timesteps 1000`, CleanRL's and argparse
    scripts' way): settings are KEY=VALUE overrides here, and the key meant if known. Hydra would say
    "unrecognized arguments", or take the flag's value for an override without a value. Hydra's own
    parser tells its flags (abbreviated ones too: --multi) and their values apart."""
    from hydra._internal.utils import get_args_parser

    from dqn_cli.config import EVAL_RULES, OTHER_NAMES, TRAIN_RULES

    parser = get_args_parser()

    def refuse(message: str):  # (argparse would print its usage and exit: Hydra says that itself later)
        raise ValueError(message)

    parser.error = refuse
    try:
        unknown = parser.parse_known_args(args)[1]
    except (ValueError, SystemExit):
        return None
    flag = next((a for a in unknown if a.startswith("--")), None)
    if flag is None:
        return None
    flag, sep, value = flag.partition("=")
    following = args[args.index(flag) + 1 :] if not sep and flag in args else []
    if following and not following[0].startswith("--") and "=" not in following[0]:
        value = following[0]  # (a negative number too: --lr -0.001)
    name = flag[2:].replace("-", "_")
    rules = TRAIN_RULES if config_name == "train" else EVAL_RULES
    keys = [k for k in (name, OTHER_NAMES.get(name)) if k in rules] or [k for k in rules if k.endswith(f".{name}")]
    if name == "cuda":  # CleanRL's --cuda takes a bool; here the device is named
        value = "cuda (or device=cpu)"
    meant = f" {flag} is {keys[0]} here: write {keys[0]}={value or 'VALUE'}." if len(keys) == 1 else ""
    return (
        f"{flag} is not a dqn {config_name} flag: settings are Hydra overrides, KEY=VALUE "
        f"(dqn {config_name} --help lists the keys).{meant}"
    )


def _check_groups(args: list[str], config_name: str) -> None:
    """`check_group_choices` on the command line's overrides (whatever the flags): Hydra would raise a
    ValueError for a group set to null, and merge a list of options."""
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from dqn_cli.config import check_group_choices
    from dqn_cli.errors import UserError

    if (said := _foreign_flag(args, config_name)) is not None:
        raise UserError(said)
    for before, arg in zip(["", *args], args, strict=False):  # (a flag's value: -cd DIR, --cfg job)
        if "=" in arg or arg.startswith("-") or before in FLAGS_WITH_VALUES:
            continue
        if "/" in arg or os.path.exists(arg):  # a path typed without its key
            key = "checkpoint" if config_name == "eval" else "resume"
            what = "the checkpoint to evaluate" if config_name == "eval" else "the run dir to continue"
            raise UserError(f"{arg!r} has no key: {what} is given as {key}={arg}.")
        if re.fullmatch(r"\+{0,2}\w[\w.@-]*", arg):
            raise UserError(
                f"{arg!r} has no value: write {arg}=VALUE (overrides are KEY=VALUE; +KEY=VALUE adds a "
                "key, ~KEY deletes one)."
            )
    parser, parsed = OverridesParser.create(), []
    for override in (a for a in args if not a.startswith("-") and "=" in a):
        try:
            parsed += parser.parse_overrides([override])
        except OverrideParseException as e:  # Hydra's text does not say which override
            raise UserError(
                f"{override!r} cannot be read: {str(e).splitlines()[0]}. Lists are [a,b], quoted in the shell "
                "('network.hidden_sizes=[64,64]'); https://hydra.cc/docs/advanced/override_grammar/basic/ has the rest."
            ) from None
    # a config dir of the user's own (-cd DIR, hydra.searchpath) may add options: only Hydra knows them all
    more_configs = any(
        a.split("=")[0] in CONFIG_DIR_FLAGS or a.lstrip("+").startswith("hydra.searchpath") for a in args
    )
    check_group_choices(parsed, config_name, unknown_options=not more_configs)


def _resumed(args: list[str]) -> str | None:
    """The run dir of the last `resume=RUN_DIR` in `args`, or None. The path is taken as typed (a run dir
    named by Hydra's override_dirname holds `=` and `,`), unless it is quoted for Hydra ('...')."""
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not resume or resume[-1] in ("", "null"):
        return None
    if resume[-1][:1] in ("'", '"'):
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        try:
            (override,) = OverridesParser.create().parse_overrides([f"resume={resume[-1]}"])
            return str(OmegaConf.create({"path": override.value()}).path)
        except Exception:  # noqa: BLE001 - not Hydra's quoting after all: the path as typed
            return resume[-1]
    return resume[-1]


def _resume_in_place(args: list[str]) -> list[str]:
    """`resume=RUN_DIR` writes into RUN_DIR itself (logs, TensorBoard, checkpoints) and leaves the
    run's .hydra/ record as the original run wrote it."""
    run_dir = _resumed(args)
    if run_dir is None or any(a in SWEEP_FLAGS for a in args):  # (a sweep refuses resume= in its check)
        return args
    from dqn_cli.errors import UserError
    from dqn_cli.resume import last_checkpoint

    last_checkpoint(run_dir)  # before Hydra makes a dir of that name
    if any(a.startswith("hydra.run.dir=") for a in args):
        raise UserError(
            f"resume={run_dir} continues the run in that dir itself; drop hydra.run.dir=... from the command."
        )
    # absolute for the job (with hydra.job.chdir=true it runs in the run dir), and written so that Hydra reads
    # it back as it is; the earlier resume= arguments, which the last one overrides, go
    path = _hydra_string(os.path.abspath(run_dir))
    args = [a for a in args if not a.startswith("resume=")]
    extra = [f"resume={path}", f"hydra.run.dir={path}"]
    if not any(a.startswith("hydra.output_subdir=") for a in args):
        extra.append("hydra.output_subdir=null")
    return [*args, *extra]


def _hydra_string(text: str) -> str:
    """`text` as a Hydra override value: as it is when Hydra reads it back unchanged, else single-quoted."""
    import re

    if re.fullmatch(r"[\w/.\-+@:]+", text):
        return text
    # Hydra's quoted strings: backslashes are doubled only where they come before a quote or the end, and
    # OmegaConf would read ${...} as an interpolation
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("${", "\\${")
    return "'" + text.replace("'", "\\'") + "'"


def _unknown_override(e: BaseException, command: str) -> str | None:
    """Hydra's "Could not override 'KEY'. To append to your config use +KEY=..." for a key the config lacks,
    said as `unknown_key` says it (the key meant, the keys there are; appending would be refused too), or
    for a key of other group options (env.vectorization with env=cartpole) which group lacks it."""
    import re

    from dqn_cli.config import EVAL_RULES, TRAIN_GROUPS, TRAIN_RULES, eval_refuses, options_with, unknown_key

    found = re.match(r"Could not override '([\w./-]+)'", str(e))
    if found is not None and found.group(1).startswith("hydra."):
        return _unknown_hydra_key(found.group(1), e.__cause__)
    if found is not None and command == "eval" and found.group(1).split("/")[0] in TRAIN_GROUPS:
        return eval_refuses(found.group(1).split("/")[0])
    if found is not None and "/" in found.group(1) and "No match in the defaults list" in str(e):
        group = found.group(1)  # a nested group (env/preset) that the parent option chosen lacks
        parent, options = group.split("/")[0], options_with(group.replace("/", "."), command)
        having = f"of the {parent} options {', '.join(options)}" if options else "that no option uses"
        return f"{group} is a config group {having}; the {parent} this run composes has none. Pick one of those."
    if found is None or "not in struct" not in f"{e} {e.__cause__}":
        return None
    key, rules = found.group(1), TRAIN_RULES if command == "train" else EVAL_RULES
    if key not in rules:
        return unknown_key(key, rules, _composed_keys(command, key))
    group, options = key.split(".")[0], options_with(key, command)
    having = f"the {group} options that have it: {', '.join(options)}" if options else f"no {group} option has it"
    return f"{key} is not in the {group} config this run composes; {having}. Pick one of those, or drop {key}."


def _composed_keys(command: str, without: str) -> set[str] | None:
    """The keys of the config the command line composes, less the override of `without` (the key Hydra could
    not set); None when that cannot be composed either."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dqn_cli.config import _leaves, config_dir

    others = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-") and a.split("=")[0].lstrip("+~") != without]
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir(), version_base="1.3"):
            return set(_leaves(compose(command, others)))
    except Exception:  # noqa: BLE001 - only a narrower list of keys for a message: the full one will do
        return None


def _unknown_hydra_key(key: str, cause: BaseException | None) -> str | None:
    """A `hydra.` key that Hydra's config (or the launcher's or sweeper's) lacks. Hydra advises `+KEY=...`,
    which only an open mapping takes (hydra.launcher.ray.remote); a plugin's fixed fields
    (JobLibLauncherConf) refuse it too, so name those fields and the one meant instead."""
    import difflib

    parent, object_type = getattr(cause, "parent_node", None), getattr(cause, "object_type", None)
    if not hasattr(parent, "keys"):  # (a value, not a mapping, on the way: Hydra's own message)
        return None
    missing = str(getattr(cause, "full_key", None) or key)  # hydra.run.foo.bar: hydra.run has no foo
    where, leaf = missing.rsplit(".", 1)
    keys = [str(k) for k in parent.keys() if not str(k).startswith("_")]
    if object_type in (None, dict):
        now = ", ".join(keys) or "nothing"
        return f"{missing} is not set in {where} (it holds {now}); a new key there takes a `+`: +{key}=VALUE."
    if not keys:
        return f"{missing} is not a key of {where} ({object_type.__name__}), which has no keys to set."
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.6)
    meant = f"; did you mean {where}.{close[0]}?" if close else "."
    return f"{missing} is not a key of {where} ({object_type.__name__}){meant} Its keys: {', '.join(keys)}."


def _raised_in_hydra(e: BaseException) -> bool:
    """Whether the innermost frame of `e`'s traceback is Hydra's code."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename


def _option_meant(said: str) -> str:
    """ " Did you mean GROUP=OPTION?" after Hydra's "Could not find 'GROUP/OPTION' Available options in
    'GROUP': ..." for a group dqn's own check leaves to Hydra (hydra/launcher=joblb), or ''."""
    import difflib
    import re

    wanted = re.search(r"Could not find '([\w/]+)/([\w.-]+)'", said)
    options = re.search(r"Available options in '[\w/]+': ([\w, -]+)\.", said)
    if wanted is None or options is None:
        return ""
    close = difflib.get_close_matches(wanted.group(2), [o.strip() for o in options.group(1).split(",")], n=1)
    return f" Did you mean {wanted.group(1)}={close[0]}?" if close else ""


def _one_paragraph(e: BaseException) -> str:
    """Hydra's multi-line composition errors, minus the search-path listing, as one paragraph."""
    text = str(e).replace("\\'", "'")  # Hydra's "quote the value: key=\'value1,value2\'" shows its escapes
    if e.__cause__ is not None and str(e.__cause__) not in text:
        text += "\n\n" + str(e.__cause__)
    noise = ("full_key:", "object_type=", "reference_type=")
    sentences = []
    for block in text.split("Config search path:")[0].split("\n\n"):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith(noise)]
        if len(lines) > 1 and lines[0].endswith(":"):  # a header followed by one option per line
            sentences.append(f"{lines[0]} {', '.join(lines[1:])}.")
        elif lines:
            sentences.append(" ".join(lines))
    return " ".join(sentences)

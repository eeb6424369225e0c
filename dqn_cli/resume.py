"""`dqn train resume=RUN_DIR [total_steps=N]`: the run's own config, the few changes a resume accepts,
and the replay file that last.pt names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from dqn_cli.checkpoint import ArrayFile, load_checkpoint
from dqn_cli.errors import UserError
from dqn_cli.layout import CHECKPOINTS, LAST

log = logging.getLogger(__name__)

# Keys a resumed run may change. Everything else would make it a different run than the one stopped.
# (when to stop is not how to train: a run that stopped when solved may go on past it)
CHANGEABLE = ("total_steps", "log.progress", "eval.stop_on_solved", "eval.stop_return")
REPLAY_STEP_KEY = "dqn_cli_step"  # the step a replay file was saved at, checked against last.pt


def last_checkpoint(run_dir: str | Path) -> Path:
    """RUN_DIR/checkpoints/last.pt, or a UserError saying what RUN_DIR is missing."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        named = run_dir.absolute()
        meant = named.parent.parent if named.parent.name == CHECKPOINTS else None
        hint = f"; for this file's run: resume={meant}" if meant else ""
        raise UserError(
            f"resume={str(run_dir)!r} is a file; resume= takes the run dir of an earlier `dqn train` "
            f"(outputs/DATE/TIME, the folder holding checkpoints/), and continues from its last.pt{hint}."
        )
    if not run_dir.is_dir():
        raise UserError(
            f"resume={str(run_dir)!r} does not exist; give the run dir of an earlier `dqn train` "
            "(outputs/DATE/TIME, the folder holding checkpoints/)."
        )
    path = run_dir / LAST
    if path.is_dir():
        raise UserError(
            f"resume={str(run_dir)!r}: its {LAST} is a directory, not the checkpoint file dqn train writes there, "
            "so there is nothing to resume from."
        )
    if not path.is_file():
        raise UserError(
            f"resume={str(run_dir)!r} holds no checkpoints/last.pt, so there is nothing to resume "
            "(a run writes it every checkpoint.interval steps, on Ctrl-C/SIGTERM and at the end)."
        )
    return path


def resume_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> tuple[DictConfig, dict]:
    """Load last.pt of the run dir `cfg.resume`; return its stored config with the command line's
    accepted changes applied (only `CHANGEABLE` keys), and the checkpoint itself.

    `overrides` are the command-line overrides (Hydra's task overrides). One that sets a key to the
    value the run already has is fine; one that changes any other key is refused, naming each.
    """
    run_dir = Path(cfg.resume)
    path = last_checkpoint(run_dir)
    state = load_checkpoint(path)
    stored = OmegaConf.create(state["config"])
    stored.resume = str(run_dir)
    if OmegaConf.select(stored, "checkpoint.save_buffer") is None:  # checkpoints from before the key
        OmegaConf.update(stored, "checkpoint.save_buffer", bool(cfg.checkpoint.get("save_buffer", True)))
    given, changed, refused = _apply_overrides(stored, overrides)
    if refused:
        raise UserError(
            f"resume={str(run_dir)!r} continues that run with its own config, so only "
            f"{', '.join(CHANGEABLE[:-1])} and {CHANGEABLE[-1]} may change; these overrides differ from it: "
            f"{'; '.join(refused)}. "
            "Drop them, or start a new run to change them."
        )
    step, total = int(state["counters"]["step"]), int(stored.total_steps)
    if total <= step:
        raise UserError(
            f"resume={str(run_dir)!r}: the run is at step {step} and total_steps={total}, so there is "
            f"nothing left to train; extend it with total_steps=N (N > {step})."
        )
    solved = state.get("status") == "done" and step < int(state["config"]["total_steps"])
    if solved and not given & {"total_steps", "eval.stop_on_solved", "eval.stop_return"}:
        raise UserError(
            f"resume={str(run_dir)!r}: that run stopped when solved, at step {step}; continue it with "
            "eval.stop_on_solved=false (or a higher eval.stop_return), and total_steps=N for a new end."
        )
    if solved and stored.eval.stop_on_solved:
        log.warning(
            "resume: the run stopped when solved, and eval.stop_on_solved is still true: it will stop again at "
            "its next evaluation that solves (set eval.stop_on_solved=false to train on to total_steps)"
        )
    for key in changed:
        log.info(f"resume: {key} changed to {OmegaConf.select(stored, key)!r}")
    return stored, state


def _apply_overrides(stored: DictConfig, overrides: Sequence[str]) -> tuple[set[str], list[str], list[str]]:
    """Apply the `CHANGEABLE` overrides to `stored`; return the keys given, those changed, and the refused ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given, changed, refused = set(), [], []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        given.add(key)
        if key == "resume" or key.startswith("hydra"):
            continue
        text = f"{o.input_line}" if o.input_line else key
        if o.is_delete() or o.is_sweep_override():
            refused.append(f"{text} (not allowed on resume)")
            continue
        value = o.value()
        current = OmegaConf.select(stored, key, default="<absent>")
        if isinstance(current, DictConfig):  # a group option such as env=cartpole
            if value in (current.get("name"), current.get("kind")):
                continue
            refused.append(f"{text} (the run used {key}={current.get('name', current.get('kind'))})")
            continue
        if current == "<absent>":
            refused.append(f"{text} (no such key in the run's config)")
            continue
        if OmegaConf.is_list(current):
            current = OmegaConf.to_container(current)
        if current == value and type(current) is type(value) or _same_number(current, value):
            continue
        if key in CHANGEABLE:
            OmegaConf.update(stored, key, value)
            changed.append(key)
        else:
            refused.append(f"{text} (the run has {key}={current!r})")
    return given, changed, refused


def _same_number(a, b) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and a == b


def load_replay(checkpoint_path: Path, state: dict, buffer) -> bool:
    """Fill `buffer` from the replay file last.pt names; False when the run saved none."""
    name = state.get("replay")
    if not name:
        return False
    path = checkpoint_path.parent / Path(name).name  # a bare file name beside last.pt, nothing else
    if not path.is_file():
        raise UserError(
            f"replay file {str(path)!r}, which {str(checkpoint_path)!r} names, does not exist: a resume continues "
            "the run exactly from the replay buffer it saved. Put the file back, or start a new run (a run "
            "saved with checkpoint.save_buffer=false resumes with a buffer refilled from scratch instead)."
        )
    arrays = ArrayFile(path)
    try:
        step = int(arrays[REPLAY_STEP_KEY]) if REPLAY_STEP_KEY in arrays else None
        if step != int(state["counters"]["step"]):
            raise UserError(
                f"replay file {str(path)!r} is from step {step}, but {str(checkpoint_path)!r} is from step "
                f"{state['counters']['step']}; they do not belong together."
            )
        try:
            buffer.load_state_dict(arrays)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise UserError(
                f"replay file {str(path)!r} does not fit the replay buffer this run's config builds "
                f"({type(e).__name__}: {e})."
            ) from None
    finally:
        arrays.close()
    return True


def replay_arrays(buffer, step: int) -> dict[str, np.ndarray]:
    """What a replay file holds: the buffer's arrays and the step they belong to."""
    return {**buffer.state_dict(), REPLAY_STEP_KEY: np.array(step, np.int64)}

"""Checkpoints: state dicts, counters, RNG states and the resolved config; written atomically and
read back with `torch.load(weights_only=True)`, so a file can never run code when loaded."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from dqn_cli.errors import UserError

FORMAT = "dqn_cli/checkpoint-v1"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: temp file in the same dir, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a dqn_cli checkpoint safely; every failure is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        hint = " It is a directory; point at a .pt file inside checkpoints/." if path.is_dir() else ""
        raise UserError(f"checkpoint={str(path)!r} does not exist.{hint}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint={str(path)!r} is an empty file, not a dqn_cli checkpoint.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint={str(path)!r} was refused by the safe loader (weights_only=True): it holds "
            f"objects other than tensors and plain data, so it was not written by dqn_cli. ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(
            f"checkpoint={str(path)!r} cannot be read: it is truncated or not a torch file "
            f"({type(e).__name__})."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint={str(path)!r} is a torch file but not a dqn_cli checkpoint "
            f"(expected format {FORMAT!r})."
        )
    return state

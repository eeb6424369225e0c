"""Checkpoints: state dicts, counters, RNG states and the resolved config; written atomically and
read back with `torch.load(weights_only=True)`, so a file can never run code when loaded."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from dqn_cli.errors import UserError, WriteError, first_line

FORMAT = "dqn_cli/checkpoint-v1"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: temp file in the same dir, fsync, rename. It is serialised in
    memory first (a few tens of MB for the Nature CNN with Adam), so a full disk fails as the file
    write's OSError: torch's zip writer says only "unexpected pos 768 vs 662"."""

    def write(f: BinaryIO) -> None:
        data = io.BytesIO()
        torch.save({"format": FORMAT, **state}, data)
        f.write(data.getbuffer())

    return atomic_write(path, write)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the dir.

    A crash at any moment leaves either the old file or the new one at `path`, never a mix; at worst
    a `.NAME.*.tmp` file stays behind (`remove_temp_files` clears those). A write the file system
    refuses (a full disk, a read-only folder) is a UserError naming the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0o600 would keep the run's files from its collaborators
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "the one there before is kept" if path.exists() else "there was none before"
            raise WriteError(f"could not write {path} ({e.strerror or e}); {kept}.") from None
        raise
    _fsync_dir(path.parent)
    return path


def _new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process's umask (read, not set: setting it to read
    it back would race with the other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): the only way to read it
    os.umask(mask)
    return 0o666 & ~mask


def remove_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed writer left in `directory`; returns what was removed."""
    stale = sorted(Path(directory).glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write numpy arrays to an uncompressed .npz, atomically (the replay buffer beside last.pt)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class ArrayFile(Mapping):
    """The arrays of a .npz written by `save_arrays`, read one at a time (a replay buffer can be
    most of the machine's memory) with `allow_pickle=False`; every failure is a UserError."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        what = f"replay file {str(self.path)!r}"
        if not self.path.is_file():
            raise UserError(f"{what} does not exist.")
        if self.path.stat().st_size == 0:
            raise UserError(f"{what} is an empty file, not a saved replay buffer.")
        try:
            self._npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(
                f"{what} cannot be read: it is truncated or not a .npz file ({type(e).__name__})."
            ) from None
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise UserError(f"{what} holds a single array, not a saved replay buffer.")

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._npz[key]
        except KeyError:
            raise KeyError(key) from None
        except Exception as e:  # damage fails deep in zipfile/zlib/numpy: BadZipFile, zlib.error, ...
            # object arrays (which would need pickle) land here too: allow_pickle=False refuses them
            raise UserError(
                f"replay file {str(self.path)!r} cannot be read: array {key!r} is damaged or not plain "
                f"numbers ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})."
            ) from None

    def __iter__(self):
        return iter(self._npz.files)

    def __len__(self) -> int:
        return len(self._npz.files)

    def close(self) -> None:
        self._npz.close()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_checkpoint_path(path: Path) -> None:
    """A UserError for a `checkpoint=` that is no file: a directory (naming the .pt files in it) or nothing."""
    if path.is_dir():
        found = sorted(path.glob("*.pt")) or sorted(path.glob("checkpoints/*.pt"))
        inside = f"the checkpoints in it: {', '.join(str(p) for p in found[:6])}" if found else "it holds no .pt file"
        raise UserError(f"checkpoint={str(path)!r} is a directory, not a checkpoint file; {inside}.")
    if not path.is_file():
        raise UserError(f"checkpoint={str(path)!r} does not exist.")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a dqn_cli checkpoint safely; every failure is a UserError naming the file."""
    path = Path(path)
    check_checkpoint_path(path)
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint={str(path)!r} is an empty file, not a dqn_cli checkpoint.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a raw pickle or noise is not one
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's start without its end (the directory is written last)
                raise UserError(
                    f"checkpoint={str(path)!r} is a torch checkpoint cut off before its end ({path.stat().st_size:,} "
                    "bytes): a copy or write that did not finish. Copy it again, or use another checkpoint of the "
                    "run (best.pt, step_N.pt)."
                )
        raise UserError(
            f"checkpoint={str(path)!r} is not a torch checkpoint file (torch.save writes a zip archive); "
            "give a .pt written by dqn train (outputs/DATE/TIME/checkpoints/)."
        )
    try:
        with warnings.catch_warnings():  # torch's note on a raw pickle's protocol: the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text goes on to suggest weights_only=False, which would run the file's code: only its reason
        reason = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unpickler error" in ln]
        why = f" ({reason[0]})" if reason else ""
        raise UserError(
            f"checkpoint={str(path)!r} was refused by the safe loader (weights_only=True): it holds "
            f"objects other than tensors and plain data, so it was not written by dqn_cli.{why}"
        ) from None
    except Exception as e:  # a damaged file fails deep in torch.load: KeyError, IndexError, struct.error, ...
        if _is_npz(path):
            raise UserError(
                f"checkpoint={str(path)!r} is a replay file (the replay buffer that dqn train saves beside last.pt), "
                "not a checkpoint; give checkpoints/last.pt, best.pt or step_N.pt."
            ) from None
        raise UserError(
            f"checkpoint={str(path)!r} cannot be read: it is truncated or not a torch file ({type(e).__name__})."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint={str(path)!r} is a torch file but not a dqn_cli checkpoint (expected format {FORMAT!r})."
        )
    damage = _damage(state)
    if damage:
        raise UserError(
            f"checkpoint={str(path)!r} is a dqn_cli checkpoint with a part missing or damaged: {damage}. "
            "Use another checkpoint of the run (checkpoints/ keeps best.pt, last.pt and step_N.pt)."
        )
    return state


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # noqa: BLE001 - a damaged archive fails in many ways (NotImplementedError, ...): not one
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def state_dict_mismatch(e: Exception) -> str:
    """What torch's load_state_dict said, in one line: the first two of its size-mismatch, missing-key and
    unexpected-key lines (its text runs to a line per tensor), or its first line."""
    lines = [ln.strip().rstrip(".") for ln in str(e).splitlines()[1:] if ln.strip()]
    if not lines:
        return first_line(str(e)) or type(e).__name__
    return "; ".join(lines[:2]) + ("; ..." if len(lines) > 2 else "")


def _damage(state: dict) -> str | None:
    """What is missing or of the wrong type among the parts every reader of a checkpoint uses, or None."""

    def count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    expected = {
        "config": (lambda x: isinstance(x, dict), "a mapping (the run's config)"),
        "agent": (lambda x: isinstance(x, dict) and isinstance(x.get("q_net"), dict), "a mapping with q_net weights"),
        "counters": (lambda x: isinstance(x, dict), "a mapping"),
        "counters.step": (count, "an int >= 0"),
        "counters.episodes": (count, "an int >= 0"),
        "counters.updates": (count, "an int >= 0"),
        "eval": (lambda x: isinstance(x, dict), "a mapping"),
        "eval.best": (number, "a number"),
        "eval.last": (lambda x: x is None or number(x), "a number or None"),
        "rng": (lambda x: isinstance(x, dict), "a mapping of RNG states"),
    }
    for key, (ok, what) in expected.items():
        parent, _, leaf = key.rpartition(".")
        holder = state.get(parent) if parent else state
        if not isinstance(holder, dict) or leaf not in holder:
            return f"{key} is missing"
        if not ok(holder[leaf]):
            return f"{key} is {_described(holder[leaf])}, where {what} belongs"
    return None


def _described(value) -> str:
    """`str 'abc'`, `int -1`; a container or tensor by its type and size alone (its repr can be megabytes)."""
    if isinstance(value, dict):
        return f"a mapping of {', '.join(map(str, list(value)[:4]))}{', ...' if len(value) > 4 else ''}"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"

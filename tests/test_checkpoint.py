"""Checkpoints: round trip, atomic writes, and a UserError (never code execution) for every bad file."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import whole_checkpoint

from dqn_cli.checkpoint import FORMAT, load_checkpoint, save_arrays, save_checkpoint, state_dict_mismatch
from dqn_cli.errors import UserError


def make_state() -> dict:
    torch.manual_seed(0)
    return {
        "config": {"seed": 3, "agent": {"lr": 2.5e-3, "loss": "huber"}, "network": {"hidden_sizes": [64, 64]}},
        "agent": {"q_net": {"w": torch.randn(4, 3), "b": torch.zeros(3)}, "optimizer": {"step": torch.tensor(5.0)}},
        "counters": {"step": 300, "episodes": 12, "updates": 134},
        "eval": {"best": 21.5, "last": None},
        "rng": {"numpy": np.random.default_rng(0).bit_generator.state, "torch": torch.get_rng_state()},
    }


def test_round_trip_keeps_tensors_config_and_counters(tmp_path):
    state = make_state()
    path = save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")  # creates the folder
    assert path == tmp_path / "checkpoints" / "last.pt"
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    assert loaded["config"] == state["config"]
    assert loaded["counters"] == state["counters"] and loaded["eval"] == state["eval"]
    for key in ("w", "b"):
        assert torch.equal(loaded["agent"]["q_net"][key], state["agent"]["q_net"][key])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    # the numpy generator state comes back usable
    rng = np.random.default_rng()
    rng.bit_generator.state = loaded["rng"]["numpy"]
    assert rng.random() == np.random.default_rng(0).random()


def test_save_overwrites_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(whole_checkpoint(counters={"step": 1}), path)
    save_checkpoint(whole_checkpoint(counters={"step": 2}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["counters"]["step"] == 2


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_and_replay_files_get_the_mode_the_umask_gives_a_new_file(tmp_path, umask):
    """mkstemp makes 0o600 files: a shared run dir's TensorBoard files were readable, its checkpoints not."""
    old = os.umask(umask)
    try:
        checkpoint = save_checkpoint(whole_checkpoint(), tmp_path / "last.pt")
        replay = save_arrays({"actions": np.zeros(3, np.int64)}, tmp_path / "replay_3.npz")
        (tmp_path / "plain.txt").write_text("as open() makes it")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (checkpoint, replay, tmp_path / "plain.txt")}
    assert modes == {"last.pt": 0o666 & ~umask, "replay_3.npz": 0o666 & ~umask, "plain.txt": 0o666 & ~umask}


def test_atomic_write_fsyncs_the_temp_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """The order that survives a power cut: the new bytes on disk, then the rename, then the rename itself
    on disk (the folder's entry)."""
    import stat

    import dqn_cli.checkpoint as ck

    events, fsync, replace = [], os.fsync, os.replace

    def record_fsync(fd):  # (a file's fsync records how many of its bytes had reached the OS by then)
        info = os.fstat(fd)
        events.append("fsync folder" if stat.S_ISDIR(info.st_mode) else f"fsync file of {info.st_size} bytes")
        fsync(fd)

    def record_replace(src, dst):
        events.append(f"rename {Path(src).name[:9]} -> {Path(dst).name}")
        replace(src, dst)

    monkeypatch.setattr(ck.os, "fsync", record_fsync)
    monkeypatch.setattr(ck.os, "replace", record_replace)
    save_checkpoint({"x": 1}, tmp_path / "last.pt")  # small: all of it would still sit in Python's buffer
    size = (tmp_path / "last.pt").stat().st_size
    assert events == [f"fsync file of {size} bytes", "rename .last.pt. -> last.pt", "fsync folder"]


def test_failed_save_keeps_the_old_file_and_removes_the_temp_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"counters": {"step": 1}}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        save_checkpoint({"counters": {"step": 2}, "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(memoryview(data)) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(memoryview(data))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("what", ["checkpoint", "replay"])
def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch, what):
    path = tmp_path / ("last.pt" if what == "checkpoint" else "replay_1.npz")

    def save(n: int) -> None:
        if what == "checkpoint":
            save_checkpoint({"x": torch.arange(n)}, path)
        else:
            save_arrays({"x": np.arange(n)}, path)

    save(10)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), room=len(before)))
    with pytest.raises(UserError) as e:
        save(100_000)
    assert str(e.value) == f"could not write {path} (No space left on device); the one there before is kept."
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---- bad files ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"checkpoint='.*nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(UserError, match="is a directory, not a checkpoint file; it holds no .pt file"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt"):
        (tmp_path / "checkpoints" / name).touch()
    with pytest.raises(UserError) as e:  # a run dir: its checkpoints are named
        load_checkpoint(tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert str(e.value).endswith(f"the checkpoints in it: {ckpts / 'best.pt'}, {ckpts / 'last.pt'}."), str(e.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(UserError, match=r"empty\.pt' is an empty file"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 16])
def test_truncated_file(tmp_path, keep):
    path = save_checkpoint(make_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(UserError, match=r"last\.pt' is a torch checkpoint cut off before its end \([\d,]+ bytes\)"):
        load_checkpoint(path)


def test_random_bytes_are_not_a_torch_file(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"noise\.pt' is not a torch checkpoint file \(torch.save writes a zip"):
        load_checkpoint(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(UserError, match=r"notes\.pt'"):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", [{"q_net": torch.zeros(2)}, {"format": "other/v9"}, [1, 2, 3], torch.ones(2)])
def test_foreign_torch_file(tmp_path, payload):
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(UserError, match="not a dqn_cli checkpoint"):
        load_checkpoint(path)


def _without(state: dict, key: str) -> dict:
    parent, _, leaf = key.rpartition(".")
    del (state[parent] if parent else state)[leaf]
    return state


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda s: _without(s, "config"), "config is missing"),
        (lambda s: _without(s, "counters"), "counters is missing"),
        (lambda s: _without(s, "agent.q_net"), "agent is a mapping of optimizer, where a mapping with q_net weights "
                                                "belongs"),
        (lambda s: s["counters"].update(step="abc"), "counters.step is str 'abc', where an int >= 0 belongs"),
        (lambda s: s["counters"].update(updates=-1), "counters.updates is int -1, where an int >= 0 belongs"),
        (lambda s: s["counters"].update(episodes=True), "counters.episodes is bool True, where an int >= 0 belongs"),
        (lambda s: s["eval"].update(best=None), "eval.best is NoneType None, where a number belongs"),
        (lambda s: s.update(rng=[1, 2]), "rng is a list of 2, where a mapping of RNG states belongs"),
        (lambda s: s.update(config=torch.zeros(2, 3)), "config is a tensor of shape (2, 3), where a mapping"),
    ],
)  # fmt: skip
def test_a_dqn_cli_checkpoint_with_a_part_missing_or_damaged_is_named(tmp_path, damage, said):
    """Its format tag passed, and then eval and resume failed with a KeyError or ValueError traceback."""
    state = make_state()
    damage(state)
    path = save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"checkpoint={str(path)!r} is a dqn_cli checkpoint with a part missing or damaged: ")
    assert said in str(e.value)
    assert str(e.value).endswith(
        ". Use another checkpoint of the run (checkpoints/ keeps best.pt, last.pt and step_N.pt)."
    )


def test_a_replay_file_given_as_checkpoint_is_named(tmp_path):
    path = save_arrays(
        {"obs": np.zeros((3, 4), np.float32), "actions": np.zeros(3, np.int64)}, tmp_path / "replay_3.npz"
    )
    with pytest.raises(UserError, match=r"is a replay file \(the replay buffer that dqn train saves beside last.pt\)"):
        load_checkpoint(path)


def test_a_state_dict_mismatch_is_said_in_one_line_naming_the_tensors():
    small, big = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Linear(32, 2)), torch.nn.Linear(4, 64)
    with pytest.raises(RuntimeError) as e:
        small.load_state_dict(torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Linear(64, 2)).state_dict())
    said = state_dict_mismatch(e.value)
    assert "\n" not in said and said.startswith("size mismatch for 0.weight: copying a param with shape torch.Size")
    assert said.endswith("; ...") and said.count("size mismatch") == 2  # two of the four, then ...
    with pytest.raises(RuntimeError) as e:
        small.load_state_dict(big.state_dict())
    assert state_dict_mismatch(e.value).startswith('Missing key(s) in state_dict: "0.weight", "0.bias"')


class MakesDirWhenUnpickled:
    """A pickle payload: unpickling calls os.mkdir(marker), as a real exploit would run any command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_raw_pickle_is_refused_without_running(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": FORMAT, "x": MakesDirWhenUnpickled(tmp_path / "pwned")}, protocol=2))
    with pytest.raises(UserError, match=r"evil\.pt' is not a torch checkpoint file \(torch.save writes a zip"):
        load_checkpoint(path)  # never handed to an unpickler: torch.save writes a zip archive
    assert not (tmp_path / "pwned").exists()
    # the payload is live: a plain unpickler does run it
    pickle.loads(pickle.dumps(MakesDirWhenUnpickled(tmp_path / "control")))
    assert (tmp_path / "control").is_dir()


def test_malicious_torch_file_is_refused_without_running(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "agent": MakesDirWhenUnpickled(tmp_path / "pwned")}, path)
    with pytest.raises(UserError, match=r"evil\.pt' was refused by the safe loader") as info:
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    # it names what was blocked, and not torch's advice to load with weights_only=False (which runs it)
    assert "GLOBAL posix.mkdir" in str(info.value) and "False" not in str(info.value)
    torch.save({"format": FORMAT, "agent": MakesDirWhenUnpickled(tmp_path / "control")}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control").is_dir()


def test_damaged_files_give_a_user_error_or_load(tmp_path):
    # torch.load fails on garbage with many exception types (KeyError, IndexError, struct.error, ...);
    # every one of them must reach the user as a UserError, never as a traceback.
    good = save_checkpoint(make_state(), tmp_path / "good.pt").read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.pt"
    for i in range(150):
        if i % 3 == 0:
            data = rng.integers(0, 256, rng.integers(1, 300)).astype(np.uint8).tobytes()
        elif i % 3 == 1:
            data = rng.integers(32, 127, rng.integers(1, 300)).astype(np.uint8).tobytes()
        else:
            damaged = bytearray(good)
            for pos in rng.integers(0, len(good), 5):
                damaged[pos] = int(rng.integers(0, 256))
            data = bytes(damaged)
        path.write_bytes(data)
        try:
            assert load_checkpoint(path)["format"] == FORMAT
        except UserError as e:
            assert "damaged.pt" in str(e)


@pytest.mark.parametrize("content", ["single array", "empty"])
def test_a_replay_file_holding_a_single_array_or_nothing_is_named(tmp_path, content):
    """np.load of a .npy payload returns an array, not an NpzFile: without the check the resume crashed on
    `.close()` (AttributeError) instead of saying what the file holds."""
    from dqn_cli.checkpoint import ArrayFile

    path = tmp_path / "replay_1.npz"
    if content == "empty":
        path.write_bytes(b"")
    else:
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    expected = "holds a single array" if content == "single array" else "is an empty file"
    with pytest.raises(UserError, match=expected):
        ArrayFile(path)

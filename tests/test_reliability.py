"""Reliability: exact resume, graceful stops on SIGINT/SIGTERM, kills during checkpoint writes, hostile
checkpoint and replay files, the NaN guard and the checks a resume makes.

In-process runs use the shrunk 300-step config from conftest; the CLI tests start `python -m dqn_cli`
in a subprocess and signal or SIGKILL it at a known moment.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHRINK, whole_checkpoint

from dqn_cli import env_state
from dqn_cli.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from dqn_cli.errors import UserError, WriteError
from dqn_cli.signals import Aborted, StopSignals, TrainingStoppedError
from dqn_cli.trainer import DivergedError, Trainer

HALF = 153  # the run stops here: between two checkpoints and two log lines, mid-episode


# ---- helpers ---------------------------------------------------------------------------------------


def stop_at(trainer: Trainer, step: int, signum: int = signal.SIGINT) -> None:
    """Deliver a real `signum` to this process during the env step that reaches `step`."""
    inner, fired = trainer.env.step, []

    def step_fn(actions):
        if not fired and trainer.step + trainer.env.num_envs >= step:
            fired.append(True)
            signal.raise_signal(signum)
        return inner(actions)

    trainer.env.step = step_fn


def run_stopped(cfg, run_dir: Path, step: int = HALF, signum: int = signal.SIGINT) -> TrainingStoppedError:
    trainer = Trainer(cfg, run_dir)
    stop_at(trainer, step, signum)
    with pytest.raises(TrainingStoppedError) as info:
        trainer.run()
    return info.value


def assert_same(a, b, path: str = "") -> None:
    """Every tensor equal (bitwise), every number and string equal, through nested dicts and lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k not in ("elapsed", "time_queue"):  # wall-clock episode timers
                assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{path}: {a!r} != {b!r}"


def final_state(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    del state["config"]  # the resumed run's config also records resume=RUN_DIR
    return state


def replay(run_dir: Path) -> dict[str, np.ndarray]:
    (path,) = (run_dir / "checkpoints").glob("replay_*.npz")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run dir's event files, file after file in the order they were written.

    Files are ordered by the creation time and writer number in their names, compared as numbers:
    a directory listing compares them as text, and two writers of one test process made in the same
    second can sort as ...pid.10 before ...pid.9.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def written(path: Path) -> tuple[int, int]:
        parts = path.name.split(".")  # events.out.tfevents.TIME.HOST.PID.N
        return int(parts[3]), int(parts[-1])

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*"), key=written):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


# ---- resume is exact ----------------------------------------------------------------------------------

CASES = {
    "cartpole": (),
    "cartpole-2envs-nstep-double-dueling": ("env.num_envs=2", "agent.n_step=3", "agent.double=true",
                                            "network.dueling=true"),
    "acrobot-prioritized": ("env=acrobot", "buffer=prioritized"),
    "cartpole-sharded-update": ("torch_threads=2", "agent.batch_size=32"),  # 2 threads, 16 rows each
    "cartpole-bf16-mixed": ("precision=bf16-mixed", "torch_threads=2", "agent.batch_size=32"),
}  # fmt: skip


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_resume_from_half_way_equals_uninterrupted_run(tmp_path, small_cfg_factory, overrides):
    cfg = small_cfg_factory(*overrides)
    whole, part = tmp_path / "whole", tmp_path / "part"
    Trainer(cfg, whole).run()

    stop = run_stopped(cfg, part)
    assert stop.exit_code == 130 and f"resume with: dqn train resume={part}" in str(stop)
    stopped = load_checkpoint(part / "checkpoints" / "last.pt")
    assert stopped["status"] == "stopped" and HALF <= stopped["counters"]["step"] < 300
    assert stopped["replay"] == f"replay_{stopped['counters']['step']}.npz"

    Trainer(small_cfg_factory(*overrides, f"resume={part}"), "unused").run()

    a, b = final_state(whole), final_state(part)
    assert a["counters"]["step"] == 300 and a["status"] == "done"
    assert_same(a, b)  # networks, optimizer, counters, epsilon schedule, RNGs, env mid-episode, obs
    ra, rb = replay(whole), replay(part)
    assert ra.keys() == rb.keys() and all(np.array_equal(ra[k], rb[k]) for k in ra)
    # TensorBoard: the resumed run's curves continue at the right steps, with nothing doubled
    sa, sb = scalars(whole), scalars(part)
    assert sa.keys() == sb.keys() and {"losses/td_loss", "charts/epsilon", "eval/mean_return"} <= sa.keys()
    for tag in sa.keys() - {"charts/SPS"}:  # steps per second is wall-clock
        assert sa[tag] == sb[tag], tag


def test_resume_extends_total_steps_and_keeps_the_epsilon_schedule(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    Trainer(small_cfg_factory(), run).run()  # finishes at 300; epsilon decays over 0.5 * 300
    trainer = Trainer(small_cfg_factory(f"resume={run}"), "unused", overrides=["total_steps=400"])
    assert trainer.step == 300 and trainer.cfg.total_steps == 400
    # epsilon still decays over 0.5 * 300 steps, as the run began, not re-stretched over 400
    assert trainer.epsilon(100) == pytest.approx(1.0 - (1.0 - 0.04) * 100 / 150)
    trainer.run()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["counters"]["step"] == 400 and state["schedule"]["total_steps"] == 300
    assert sorted(p.name for p in (run / "checkpoints").glob("replay_*")) == ["replay_400.npz"]


def test_resume_extending_total_steps_keeps_prioritized_replays_beta_schedule(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    per = ("buffer=prioritized", "eval.interval=0")
    stopped = run_stopped(small_cfg_factory(*per), run)  # stopped at HALF of 300: beta has annealed half-way
    assert stopped.exit_code == 130
    trainer = Trainer(small_cfg_factory(*per, f"resume={run}"), "unused", overrides=["total_steps=600"])
    trainer._learn(16)  # beta follows the run's first 300 steps (before: HALF / 600, a step back)
    beta0 = trainer.buffer.beta0
    assert trainer.buffer.beta == pytest.approx(beta0 + (1 - beta0) * HALF / 300)


def test_resume_without_saved_buffer_refills_before_learning(tmp_path, small_cfg_factory, caplog):
    run = tmp_path / "run"
    run_stopped(small_cfg_factory("checkpoint.save_buffer=false"), run)
    assert not list((run / "checkpoints").glob("replay_*"))
    caplog.set_level(logging.WARNING)
    trainer = Trainer(small_cfg_factory(f"resume={run}"), "unused")
    assert trainer.learning_starts == trainer.step + 32 and len(trainer.buffer) == 0
    assert "no replay buffer" in caplog.text
    trainer.run()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["counters"]["step"] == 300


def _refuse_writes(monkeypatch, name: str, times: int = 10**6, after: int = 0) -> list[str]:
    """Make the trainer's writes of files whose name starts with `name` fail as on a full disk, `times`
    times once `after` of them went through; returns the paths refused."""
    import dqn_cli.trainer as trainer_module

    refused: list[str] = []
    written = [0]

    def failing(real):
        def write(obj, path, *args, **kwargs):
            if Path(path).name.startswith(name) and written[0] < after:
                written[0] += 1
            elif Path(path).name.startswith(name) and len(refused) < times:
                refused.append(str(path))
                raise WriteError(f"could not write {path} (No space left on device); there was none before.")
            return real(obj, path, *args, **kwargs)

        return write

    monkeypatch.setattr(trainer_module, "save_arrays", failing(trainer_module.save_arrays))
    monkeypatch.setattr(trainer_module, "save_checkpoint", failing(trainer_module.save_checkpoint))
    return refused


def test_a_stop_whose_replay_file_cannot_be_written_still_writes_last_pt(tmp_path, small_cfg_factory, monkeypatch,
                                                                          caplog):  # fmt: skip
    """SIGTERM on a nearly full disk: the weights, counters and RNGs still reach last.pt (without the replay
    buffer, which a resume refills), instead of nothing since the last periodic checkpoint."""
    run = tmp_path / "run"
    refused = _refuse_writes(monkeypatch, "replay_")
    caplog.set_level(logging.WARNING)
    error = run_stopped(small_cfg_factory("checkpoint.interval=0"), run, signum=signal.SIGTERM)
    assert refused and error.signum == signal.SIGTERM and "resume with: dqn train resume=" in str(error)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["status"] == "stopped" and state["counters"]["step"] == HALF and "replay" not in state
    assert "last.pt is written without the replay buffer; a resume starts it empty" in caplog.text
    monkeypatch.undo()
    trainer = Trainer(small_cfg_factory(f"resume={run}"), "unused")
    assert trainer.step == HALF and len(trainer.buffer) == 0 and trainer.learning_starts == HALF + 32
    trainer.run()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["counters"]["step"] == 300


def test_a_periodic_checkpoint_the_disk_refuses_is_said_and_training_goes_on(tmp_path, small_cfg_factory,
                                                                                monkeypatch, caplog):  # fmt: skip
    run = tmp_path / "run"
    refused = _refuse_writes(monkeypatch, "last.pt", times=1)  # the first periodic last.pt, at step 100
    caplog.set_level(logging.WARNING)
    trainer = Trainer(small_cfg_factory("checkpoint.interval=100"), run)
    trainer.run()
    assert len(refused) == 1 and trainer.step == 300
    assert "Training goes on; no last.pt has been written yet" in caplog.text
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["status"] == "done" and state["counters"]["step"] == 300 and state["replay"] == "replay_300.npz"


def test_a_stop_whose_last_pt_cannot_be_written_names_the_last_checkpoint_written(tmp_path, small_cfg_factory,
                                                                                    monkeypatch):  # fmt: skip
    run = tmp_path / "run"
    trainer = Trainer(small_cfg_factory("checkpoint.interval=100"), run)
    stop_at(trainer, 150, signal.SIGTERM)
    _refuse_writes(monkeypatch, "last.pt", after=1)  # step 100's goes through, the stop's does not
    with pytest.raises(WriteError) as info:
        trainer.run()
    assert str(info.value).startswith(f"stopped by SIGTERM at step 150, but could not write {run / 'checkpoints'}")
    last = run / "checkpoints" / "last.pt"
    assert info.value.exit_code == 1 and str(info.value).endswith(
        f" So the last checkpoint written is {last} (step 100), which resume= continues from."
    )
    assert load_checkpoint(last)["counters"]["step"] == 100


def test_a_stop_before_any_last_pt_says_none_was_written(tmp_path, small_cfg_factory, monkeypatch):
    trainer = Trainer(small_cfg_factory("checkpoint.interval=0"), tmp_path / "run")
    stop_at(trainer, 150, signal.SIGTERM)
    _refuse_writes(monkeypatch, "last.pt")
    with pytest.raises(WriteError, match=r"So no last\.pt has been written yet\.$"):
        trainer.run()


@pytest.mark.parametrize("where", ["run dir", "checkpoints"])
def test_a_run_dir_that_cannot_be_written_is_refused_before_anything_is_built(tmp_path, small_cfg_factory, where,
                                                                               monkeypatch):  # fmt: skip
    import dqn_cli.trainer as trainer_module

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    real = tempfile.TemporaryFile

    def refused(dir):  # noqa: A002 - (a read-only folder; root ignores the mode bits, so it is simulated)
        if Path(dir) == (run if where == "run dir" else run / "checkpoints"):
            raise PermissionError(13, "Permission denied")
        return real(dir=dir)

    monkeypatch.setattr(trainer_module.tempfile, "TemporaryFile", refused)
    built = []
    monkeypatch.setattr(trainer_module, "make_env", lambda *a, **k: built.append(1))
    with pytest.raises(WriteError, match=r"the run dir .* cannot be written \(Permission denied\); checkpoints and "):
        Trainer(small_cfg_factory(), run)
    assert not built


def test_a_fresh_run_dir_gets_no_checkpoints_folder_before_the_first_save(tmp_path, small_cfg_factory, monkeypatch):
    """(So a run that fails while its parts are built leaves only what Hydra wrote, and is removed.)"""
    import dqn_cli.trainer as trainer_module

    def fails(*args, **kwargs):
        raise UserError("a builder's refusal")

    monkeypatch.setattr(trainer_module, "make_env", fails)
    with pytest.raises(UserError):
        Trainer(small_cfg_factory(), tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


def test_resume_where_env_state_cannot_be_saved_starts_fresh_episodes(tmp_path, small_cfg_factory, monkeypatch, caplog):
    run = tmp_path / "run"
    run_stopped(small_cfg_factory(), run)
    monkeypatch.setattr(env_state, "unsupported", lambda env: "a test env")
    caplog.set_level(logging.WARNING)
    Trainer(small_cfg_factory(f"resume={run}"), "unused").run()
    assert "env's state cannot be restored (a test env)" in caplog.text
    assert load_checkpoint(run / "checkpoints" / "last.pt")["counters"]["step"] == 300


def test_keep_last_prunes_step_checkpoints_and_old_replay_files(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    Trainer(small_cfg_factory("checkpoint.interval=50", "checkpoint.keep_last=2"), run).run()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "replay_300.npz", "step_250.pt", "step_300.pt"]


# ---- env state --------------------------------------------------------------------------------------


def _roundtrip(state: dict, tmp_path: Path) -> dict:
    path = save_checkpoint(whole_checkpoint(env=state), tmp_path / "env.pt")
    return load_checkpoint(path)["env"]  # through weights_only=True: plain data only


def _episodes(infos: dict) -> list[tuple[int, float, int, float]]:
    """(env, return, length, seconds) of each episode that ended in a vector step (RecordEpisodeStatistics)."""
    final = infos.get("final_info", {})
    if "episode" not in final:
        return []
    ep = final["episode"]
    return [(int(i), float(ep["r"][i]), int(ep["l"][i]), float(ep["t"][i])) for i in np.flatnonzero(final["_episode"])]


def _continue_equal(a, b, n_actions: int, steps: int) -> int:
    """Step both envs with the same actions: the same observations, rewards and episode ends, and the same
    episode statistics (return and length; the wall-clock duration to 10 s, slack for a loaded machine).
    Returns the episodes ended."""
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(steps):
        actions = rng.integers(0, n_actions, a.num_envs)
        out_a, out_b = a.step(actions), b.step(actions)
        for x, y in zip(out_a[:4], out_b[:4], strict=True):
            assert np.array_equal(x, y)
        ep_a, ep_b = _episodes(out_a[4]), _episodes(out_b[4])
        assert [e[:3] for e in ep_a] == [e[:3] for e in ep_b]
        assert all(abs(x[3] - y[3]) < 10.0 for x, y in zip(ep_a, ep_b, strict=True)), (ep_a, ep_b)
        ended += len(ep_a)
    return ended


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_env_state_continues_classic_envs_mid_episode(tmp_path, env_id):
    from omegaconf import OmegaConf

    from dqn_cli.envs import make_env

    cfg = OmegaConf.create({"kind": "classic", "id": env_id, "num_envs": 2, "max_episode_steps": None})
    a, b = make_env(cfg, 0), make_env(cfg, 0)
    a.reset(seed=0)
    _continue_equal(a, a, 2, 0)
    for actions in np.random.default_rng(0).integers(0, 2, (137, 2)):
        a.step(actions)
    b.reset(seed=99)
    state = _roundtrip(env_state.get_state(a), tmp_path)
    env_state.set_state(b, state)
    assert_same(env_state.get_state(b), state)  # every layer holds what was saved
    for sub_a, sub_b in zip(a.envs, b.envs, strict=True):  # RecordEpisodeStatistics keeps its last 100 episodes
        assert sub_b.return_queue.maxlen == sub_a.return_queue.maxlen == 100
    assert _continue_equal(a, b, 2, 400) > 0  # across episode ends and time limits


def test_env_state_continues_an_atari_env(tmp_path, compose_cfg):
    """dqn_cli's own Atari stack (nature preset: no-op starts, life loss, FIRE, clipping, frame stack)
    continues bitwise from a saved state, across lost lives and game overs."""
    from dqn_cli.envs import make_env

    cfg = compose_cfg("train", ["env=breakout", "env.num_envs=2"])
    a, b = make_env(cfg.env, 0), make_env(cfg.env, 0)
    assert env_state.unsupported(a) is None
    a.reset(seed=0)
    for actions in np.random.default_rng(0).integers(0, 4, (150, 2)):
        a.step(actions)
    b.reset(seed=5)
    state = _roundtrip(env_state.get_state(a), tmp_path)
    env_state.set_state(b, state)
    # every layer holds what was saved: the emulator, and AtariPreprocessing's two max-pooled frames, which
    # give the last observation of a game that ends before the frame skip's last two frames
    assert_same(env_state.get_state(b), state)
    _continue_equal(a, b, 4, 300)


def test_env_state_reports_an_unknown_wrapper():
    import gymnasium as gym

    class Counting(gym.Wrapper):
        pass

    env = gym.vector.SyncVectorEnv([lambda: Counting(gym.make("CartPole-v1"))])
    assert "Counting has no saved-state handler" in env_state.unsupported(env)
    assert env_state.get_state(env) is None

    class CountingTimeLimit(gym.wrappers.TimeLimit):  # a subclass may keep state its parent's handler misses
        pass

    env = gym.vector.SyncVectorEnv([lambda: CountingTimeLimit(gym.make("CartPole-v1"), 50)])
    assert "CountingTimeLimit has no saved-state handler" in env_state.unsupported(env)


# ---- signals ----------------------------------------------------------------------------------------


def test_stop_signals_flag_first_abort_on_second_and_restore_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(Aborted) as info:
            signal.raise_signal(signal.SIGINT)
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_sweeps_stop_file_stops_a_job_and_the_same_signal_soon_after_is_no_second_stop(tmp_path, monkeypatch):
    stop_file = tmp_path / ".stop"
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    with StopSignals(stop_file) as stop:
        assert not stop.requested
        stop_file.write_text("SIGINT\n")
        assert not stop.requested  # looked at once a second, not at every step
        clock[0] += StopSignals.POLL_S
        assert stop.requested and stop.signum == signal.SIGINT
        signal.raise_signal(signal.SIGINT)  # the terminal's own Ctrl-C, which the launcher passed on too
        assert stop.signum == signal.SIGINT
        with pytest.raises(Aborted):  # another signal: a second stop
            signal.raise_signal(signal.SIGTERM)
        clock[0] += StopSignals.SAME_STOP_S
        with pytest.raises(Aborted):  # the same one, later: a second Ctrl-C
            signal.raise_signal(signal.SIGINT)


def test_the_sweep_launcher_writes_the_stop_file_on_the_first_signal_and_aborts_on_the_second(tmp_path):
    from dqn_cli.signals import SweepStop, read_stop_file

    (tmp_path / ".stop").write_text("SIGTERM\n")  # an earlier sweep's
    before = signal.getsignal(signal.SIGINT)
    sweep = SweepStop(tmp_path).start()
    try:
        assert read_stop_file(tmp_path / ".stop") is None
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the launcher waits for its jobs
        assert sweep.signum == signal.SIGINT and read_stop_file(tmp_path / ".stop") == signal.SIGINT
        with pytest.raises(Aborted):
            signal.raise_signal(signal.SIGTERM)
    finally:
        sweep.close()
    assert signal.getsignal(signal.SIGINT) == before and not (tmp_path / ".stop").exists()


def test_a_joblib_workers_signal_outside_training_is_held_for_its_runs(monkeypatch):
    """In a joblib worker a KeyboardInterrupt outside the training loop broke the pool (the sweep aborted):
    the first signal is held, the run then being built stops at once, a second signal aborts."""
    from dqn_cli import signals

    monkeypatch.setattr(signals, "HELD", None)
    previous = signals.set_handlers(signal.SIG_DFL)
    try:
        signals.hold_stop_signals()
        signal.raise_signal(signal.SIGTERM)  # building a run, or between jobs: no exception
        assert signals.HELD == signal.SIGTERM
        with StopSignals() as stop:  # the run being built: stopped before its first step
            assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(Aborted):
            signal.raise_signal(signal.SIGINT)
    finally:
        signals.restore_handlers(previous)


def test_stop_errors_survive_pickling_as_a_sweep_jobs_error_travels_back():
    import pickle

    from dqn_cli.signals import NotStartedError

    for error in (TrainingStoppedError("stopped by SIGTERM", signal.SIGTERM), NotStartedError("not started", 2)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.signum, copy.exit_code) == (error.signum, error.exit_code)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_in_process_writes_a_resumable_checkpoint(tmp_path, small_cfg_factory, signum):
    run = tmp_path / "run"
    stop = run_stopped(small_cfg_factory(), run, signum=signum)
    assert stop.exit_code == 128 + signum
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["status"] == "stopped" and state["counters"]["step"] == HALF
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def dqn(*args: str) -> list[str]:
    return [sys.executable, "-m", "dqn_cli", *args]


# A `dqn` whose checkpoint writer can be slowed down: the Nth atomic write of a file whose name starts
# with $SLOW_PREFIX writes half its bytes, prints FAULT and sleeps, so the test can signal it mid-write.
SLOW_WRITER = """
import os, sys, time
from pathlib import Path
import dqn_cli.checkpoint as ck
real, prefix, nth, seen = ck.atomic_write, os.environ["SLOW_PREFIX"], int(os.environ["SLOW_NTH"]), [0]
def atomic_write(path, write):
    if Path(path).name.startswith(prefix):
        seen[0] += 1
        if seen[0] == nth:
            def half(f):
                write(f)
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
                os.fsync(f.fileno())
                print(f"FAULT: writing {Path(path).name}", flush=True)
                time.sleep(300)
            return real(path, half)
    return real(path, write)
ck.atomic_write = atomic_write
from dqn_cli.cli import main
sys.argv = ["dqn", *sys.argv[1:]]
main()
"""


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )


def wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> str:
    """Read the child's output until a line matches `pattern`; return everything read."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, line):
            return seen
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r} from the child; it wrote:\n{seen}")


def wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    """Wait until the child writes `path`: evidence of how far it got that a slow machine cannot fake."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the child did not write {path}; it wrote:\n{proc.communicate()[0]}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, seen: str = "", timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return seen + out


def cli_overrides(run: Path, *extra: str) -> list[str]:
    return [*SHRINK, f"hydra.run.dir={run}", *extra]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_signal_checkpoints_prints_resume_and_exits_128_plus_signal(tmp_path, signum):
    run = tmp_path / "run"
    args = cli_overrides(run, "total_steps=10000000", "eval.interval=500", "eval.episodes=1", "checkpoint.interval=0")
    proc = start(dqn("train", *args))
    seen = wait_for(proc, r"training CartPole-v1")
    wait_for_file(proc, run / "checkpoints" / "best.pt")  # the first evaluation (step 500): well into the loop
    os.kill(proc.pid, signum)
    out = finish(proc, seen)
    assert proc.returncode == 128 + signum, out
    assert f"{signal.Signals(signum).name} received" in out
    assert f"resume with: dqn train resume={run}" in out
    assert "Traceback" not in out and "Error executing job" not in out, out
    # in the run dir's log too, where a run under nohup or Slurm is read (it was only on stderr)
    assert f"resume with: dqn train resume={run}" in (run / "train.log").read_text()
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    step = state["counters"]["step"]
    assert state["status"] == "stopped" and 0 < step < 10_000_000
    assert (run / "checkpoints" / f"replay_{step}.npz").is_file()

    # the printed command continues the run in place, here with a new end
    record = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
    proc = start(dqn("train", f"resume={run}", f"total_steps={step + 100}"))
    out = finish(proc)
    assert proc.returncode == 0, out
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == record  # the original run's, untouched
    assert load_checkpoint(run / "checkpoints" / "last.pt")["counters"]["step"] == step + 100
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one per session, in the same dir
    assert "resumed" in (run / "train.log").read_text()


@pytest.mark.parametrize("vectorization", ["async", "ale"])
def test_ctrl_c_to_the_process_group_stops_async_atari_envs_cleanly(tmp_path, vectorization):
    """A terminal's Ctrl-C reaches every process of the group, the env workers too: they ignore it,
    the trainer writes last.pt and exits 130 without a traceback (a dead worker would break close()).
    An async eval env built mid-run (gymnasium builds its first env in the parent too) leaves the
    trainer's own handler in place. With ale's C++ threads (overlap on) the main thread takes it."""
    run = tmp_path / "run"
    overlap = ["overlap=true"] if vectorization == "ale" else []
    args = ["env=pong", "device=cpu", "torch_threads=1", "env.num_envs=2", f"env.vectorization={vectorization}",
            *overlap, "buffer.capacity=2000", "agent.learning_starts=100", "total_steps=10000000", "eval.interval=200",
            "eval.episodes=2", "eval_protocol.max_episode_frames=200", "checkpoint.interval=0",
            "checkpoint.save_buffer=false", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.Popen(
        dqn("train", *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        seen = wait_for(proc, r"training PongNoFrameskip-v4")
        wait_for_file(proc, run / "checkpoints" / "best.pt")  # well into the loop, past the first evaluation
        os.killpg(proc.pid, signal.SIGINT)
        out = finish(proc, seen)
    finally:  # a run that ignored the signal must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "BrokenPipe" not in out and "Error executing job" not in out, out
    assert out.count("SIGINT received") == 1, out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["status"] == "stopped"


def test_cli_second_ctrl_c_aborts_at_once(tmp_path):
    run = tmp_path / "run"
    args = cli_overrides(run, "total_steps=10000000", "eval.interval=0", "checkpoint.interval=0")
    proc = start([sys.executable, "-c", SLOW_WRITER, "train", *args], {"SLOW_PREFIX": "last.pt", "SLOW_NTH": "1"})
    seen = wait_for(proc, r"training CartPole-v1")
    os.kill(proc.pid, signal.SIGINT)  # the checkpoint it then writes hangs half-way
    seen += wait_for(proc, r"FAULT: writing last\.pt")
    t = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, seen, timeout=30)
    assert time.monotonic() - t < 10
    assert proc.returncode == 130, out
    assert "aborted by SIGINT" in out and "Traceback" not in out
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the half-written temp file is removed
    assert not (run / "checkpoints" / "last.pt").exists()  # and nothing half-written took its place


def test_cli_abort_names_the_last_checkpoint_and_how_to_resume(tmp_path):
    """Two Ctrl-Cs while the second last.pt hangs half-written: the message names the first one, which is
    whole, and the resume command."""
    run = tmp_path / "run"
    args = cli_overrides(run, "total_steps=10000000", "eval.interval=0", "checkpoint.interval=1000")
    proc = start([sys.executable, "-c", SLOW_WRITER, "train", *args], {"SLOW_PREFIX": "last.pt", "SLOW_NTH": "2"})
    seen = wait_for(proc, r"FAULT: writing last\.pt")
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    out = finish(proc, seen, timeout=30)
    assert proc.returncode == 130 and "Traceback" not in out, out
    last = run / "checkpoints" / "last.pt"
    assert f"aborted by SIGINT; {last} (step 1000) is kept: resume with dqn train resume={run}" in out, out
    assert load_checkpoint(last)["counters"]["step"] == 1000


# ---- SIGKILL during a checkpoint write ---------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["replay_", "step_", "last.pt"])
def test_sigkill_during_a_write_keeps_the_previous_checkpoint(tmp_path, small_cfg_factory, prefix):
    """Kill -9 in the middle of the second checkpoint (step 200): step 100's last.pt and replay stay
    loadable, and resuming from them ends bitwise equal to a run never interrupted."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    proc = start(
        [sys.executable, "-c", SLOW_WRITER, "train", *cli_overrides(run)], {"SLOW_PREFIX": prefix, "SLOW_NTH": "2"}
    )
    seen = wait_for(proc, r"FAULT: writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen

    checkpoints = run / "checkpoints"
    assert list(checkpoints.glob(f".{prefix}*.tmp")), "the kill did not land inside the write"
    state = load_checkpoint(checkpoints / "last.pt")
    assert state["counters"]["step"] == 100 and state["status"] == "running"
    assert (checkpoints / state["replay"]).is_file()

    proc = start(dqn("train", f"resume={run}"))
    out = finish(proc)
    assert proc.returncode == 0, out
    assert not list(checkpoints.glob(".*.tmp"))  # the resume cleared the dead writer's temp file

    Trainer(small_cfg_factory(), whole).run()  # the same run, never interrupted, in this process
    assert_same(final_state(whole), final_state(run))


# ---- hostile and damaged files ----------------------------------------------------------------------


class MakesDirWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture
def stopped_run(tmp_path, small_cfg_factory) -> Path:
    run = tmp_path / "run"
    run_stopped(small_cfg_factory(), run)
    return run


def resume(small_cfg_factory, run: Path) -> Trainer:
    return Trainer(small_cfg_factory(f"resume={run}"), "unused")


def test_resume_refuses_a_malicious_checkpoint_without_running_it(tmp_path, small_cfg_factory, stopped_run):
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "agent": MakesDirWhenUnpickled(marker)}, stopped_run / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match=r"checkpoints/last\.pt' was refused by the safe loader"):
        resume(small_cfg_factory, stopped_run)
    assert not marker.exists()


def test_resume_refuses_a_malicious_replay_file_without_running_it(tmp_path, small_cfg_factory, stopped_run):
    marker = tmp_path / "pwned"
    (path,) = (stopped_run / "checkpoints").glob("replay_*.npz")
    arrays = replay(stopped_run)
    arrays["obs"] = np.array([MakesDirWhenUnpickled(marker)], dtype=object)  # np.savez pickles this
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(UserError, match=rf"replay file '.*{path.name}' cannot be read: array 'obs'"):
        resume(small_cfg_factory, stopped_run)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "text", "foreign"])
def test_resume_names_a_damaged_checkpoint(small_cfg_factory, stopped_run, damage):
    path = stopped_run / "checkpoints" / "last.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"q_net": torch.zeros(3)}, path)
    with pytest.raises(UserError, match=r"checkpoints/last\.pt'"):
        resume(small_cfg_factory, stopped_run)


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing", "other_step", "wrong_shape"])
def test_resume_names_a_damaged_replay_file(small_cfg_factory, stopped_run, damage):
    (path,) = (stopped_run / "checkpoints").glob("replay_*.npz")
    arrays = replay(stopped_run)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":
        path.unlink()
    elif damage == "other_step":
        np.savez(path, **{**arrays, "dqn_cli_step": np.array(7)})
    else:
        np.savez(path, **{**arrays, "obs": arrays["obs"][:, :, :2]})
    with pytest.raises(UserError, match=rf"replay file '.*{path.name}'") as info:
        resume(small_cfg_factory, stopped_run)
    if damage == "missing":  # what to do about it
        assert "Put the file back, or start a new run" in str(info.value)


def test_cli_eval_and_resume_refuse_a_malicious_checkpoint(tmp_path):
    marker, run = tmp_path / "pwned", tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = run / "checkpoints" / "last.pt"
    torch.save({"format": FORMAT, "agent": MakesDirWhenUnpickled(marker)}, evil)
    for args in (["eval", f"checkpoint={evil}"], ["train", f"resume={run}"]):
        proc = subprocess.run(dqn(*args), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "refused by the safe loader" in proc.stderr and str(evil) in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


# ---- NaN guard --------------------------------------------------------------------------------------


def poison_at(trainer: Trainer, step: int) -> None:
    """Fill the first layer of the online network with NaN during the env step that reaches `step`."""
    inner = trainer.env.step

    def step_fn(actions):
        if trainer.step + trainer.env.num_envs == step:
            with torch.no_grad():
                next(trainer.agent.q_net.parameters()).fill_(float("nan"))
        return inner(actions)

    trainer.env.step = step_fn


def test_nan_guard_on_metrics_collected_later_names_the_first_bad_update(tmp_path, small_cfg_factory):
    """On a GPU the update metrics stay on the device until the next log, evaluation or checkpoint;
    the guard then names the first non-finite update among them."""
    trainer = Trainer(small_cfg_factory(), tmp_path / "run")
    trainer.updates = 10  # updates 8, 9 and 10 are pending
    trainer.pending = [
        {"td_loss": torch.tensor(v), "q_values": torch.tensor(1.0)} for v in (0.5, float("nan"), float("inf"))
    ]
    with pytest.raises(DivergedError, match=r"\(update 9\): td_loss=nan, q_values=1.0 is not finite"):
        trainer._collect_metrics()
    assert trainer.metrics["td_loss"][0] == 0.5 and not trainer.pending


@pytest.mark.parametrize("learning", [True, False], ids=["loss", "weights-before-checkpoint"])
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_cfg_factory, learning):
    run = tmp_path / "run"
    # without learning the NaN weights are only caught when checkpoint 200 would save them
    cfg = small_cfg_factory(*(() if learning else ("agent.learning_starts=1000", "buffer.capacity=1000")))
    trainer = Trainer(cfg, run)
    poison_at(trainer, 150)
    with pytest.raises(DivergedError) as info:
        trainer.run()
    message = str(info.value)
    assert info.value.exit_code == 3
    step = 150 if learning else 200
    assert f"diverged at step {step}" in message and "not finite" in message
    assert f"last good checkpoint is {run / 'checkpoints' / 'last.pt'} (step 100)" in message
    # the advice fits the run: CartPole's preset clips no gradients, so it says to clip (not "keep it set")
    assert cfg.agent.max_grad_norm is None
    assert f"Try a lower agent.lr (it is {cfg.agent.lr}), agent.max_grad_norm=10, agent.loss=huber" in message
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["counters"]["step"] == 100
    for name in ("last.pt", "best.pt", "step_100.pt"):
        weights = load_checkpoint(run / "checkpoints" / name)["agent"]["q_net"].values()
        assert all(torch.isfinite(w).all() for w in weights), name
    assert not (run / "checkpoints" / "step_200.pt").exists()
    # the run resumes from that good checkpoint
    resume(small_cfg_factory, run).run()


def test_nan_guard_before_any_last_checkpoint_names_the_best_one(tmp_path, small_cfg_factory):
    """No last.pt yet (checkpoint.interval beyond the run), but the evaluation at step 100 wrote best.pt:
    the message points at it instead of saying that nothing was written."""
    run = tmp_path / "run"
    trainer = Trainer(small_cfg_factory("checkpoint.interval=1000"), run)
    poison_at(trainer, 150)
    with pytest.raises(DivergedError) as info:
        trainer.run()
    best = run / "checkpoints" / "best.pt"
    assert f"no last.pt was written before it; {best} holds the weights of the best evaluation" in str(info.value)
    assert not (run / "checkpoints" / "last.pt").exists()


# ---- what a resume accepts --------------------------------------------------------------------------


def test_resume_needs_a_run_dir_with_last_pt(tmp_path, small_cfg_factory):
    with pytest.raises(UserError, match=r"resume='.*nope' does not exist"):
        resume(small_cfg_factory, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"resume='.*empty' holds no checkpoints/last\.pt"):
        resume(small_cfg_factory, tmp_path / "empty")
    (tmp_path / "odd" / "checkpoints" / "last.pt").mkdir(parents=True)
    with pytest.raises(UserError, match=r"resume='.*odd': its checkpoints/last\.pt is a directory, not the checkpoint"):
        resume(small_cfg_factory, tmp_path / "odd")


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["agent.lr=0.5"], "agent.lr=0.5 (the run has agent.lr="),
        (["env=acrobot"], "env=acrobot (the run used env=cartpole)"),
        (["seed=1", "total_steps=600"], "seed=1 (the run has seed=0)"),
        (["+foo=1"], "+foo=1 (no such key in the run's config)"),
        (["~total_steps"], "~total_steps (not allowed on resume)"),
        (["checkpoint.save_buffer=1"], "checkpoint.save_buffer=1 (the run has checkpoint.save_buffer=True)"),
    ],
)
def test_resume_refuses_changes_to_the_run(small_cfg_factory, stopped_run, overrides, refused):
    with pytest.raises(
        UserError, match="only total_steps, log.progress, eval.stop_on_solved and eval.stop_return may"
    ) as info:
        Trainer(small_cfg_factory(f"resume={stopped_run}"), "unused", overrides=overrides)
    assert refused in str(info.value)


def test_resume_accepts_repeated_values_and_total_steps(small_cfg_factory, stopped_run):
    same = ["env=cartpole", "seed=0", "agent.batch_size=16", "network.hidden_sizes=[16,16]", "log.progress=false"]
    trainer = Trainer(small_cfg_factory(f"resume={stopped_run}"), "unused", overrides=[*same, "total_steps=500"])
    assert trainer.cfg.total_steps == 500 and trainer.step == HALF


def test_a_resume_that_starts_fresh_episodes_ends_the_stored_ones(small_cfg_factory, stopped_run, monkeypatch):
    """Envs whose state is not saved (ale, async) restart their games on resume: the replay buffer's last
    transition, mid-episode when the run stopped, becomes a truncation, so no n-step window or frame stack
    runs on from the old game into the new one (a bootstrap from the old game's own next state)."""
    from dqn_cli import env_state

    monkeypatch.setattr(env_state, "unsupported", lambda env: "not saved by this env (the test's stand-in)")
    trainer = resume(small_cfg_factory, stopped_run)
    last = (trainer.buffer.pos - 1) % trainer.buffer.size_per_env
    assert trainer.step == HALF and trainer.buffer.pos == HALF  # (one env, no wrap: slot = step)
    assert trainer.buffer.truncated[last, 0] and not trainer.buffer.terminated[last, 0]
    monkeypatch.undo()
    restored = resume(small_cfg_factory, stopped_run)  # the games go on where they were: nothing to cut
    assert not restored.buffer.truncated[last, 0]


def test_a_finished_run_extended_with_solving_on_is_not_called_solved(tmp_path, small_cfg_factory, caplog):
    run = tmp_path / "run"
    Trainer(small_cfg_factory(), run).run()  # to its total_steps: done, but not solved
    with caplog.at_level(logging.WARNING, logger="dqn_cli.resume"):
        trainer = Trainer(
            small_cfg_factory(f"resume={run}"), "unused", overrides=["total_steps=400", "eval.stop_on_solved=true"]
        )
    assert trainer.step == 300 and trainer.cfg.eval.stop_on_solved is True
    assert "stopped when solved" not in caplog.text


def test_a_checkpoint_from_before_save_buffer_resumes_saving_its_buffer(small_cfg_factory, stopped_run):
    path = stopped_run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["checkpoint"]["save_buffer"]  # written before the key existed
    save_checkpoint(state, path)
    trainer = resume(small_cfg_factory, stopped_run)
    assert trainer.cfg.checkpoint.save_buffer is True and trainer.step == HALF
    trainer.run()
    assert (stopped_run / "checkpoints" / f"replay_{trainer.step}.npz").is_file()


def test_resume_refuses_a_finished_run_unless_extended(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    Trainer(small_cfg_factory(), run).run()
    with pytest.raises(UserError, match=r"nothing left to train; extend it with total_steps=N \(N > 300\)"):
        resume(small_cfg_factory, run)
    with pytest.raises(UserError, match=r"nothing left to train"):
        Trainer(small_cfg_factory(f"resume={run}"), "unused", overrides=["total_steps=200"])


# ---- validation gaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["device=gpu"], "device='gpu' is invalid: it must be one of auto, cpu, cuda or cuda:N."),
        (["seed=4294967296"], "seed=4294967296 is invalid: it must be an integer in [0, 4294967295]."),
        (["seed=4294967295"], "eval.seed_offset=10000 with seed=4294967295 gives evaluation seed"),
        (["log.progress=1"], "log.progress=1 is invalid: it must be one of auto, true, false."),
        (["~agent.gamma"], "agent.gamma is missing; every train config needs it (a number in [0, 1])."),
        (["~network.hidden_sizes"], "network.hidden_sizes is missing"),
        (
            ["checkpoint.save_buffer=sometimes"],
            "checkpoint.save_buffer='sometimes' is invalid: it must be true or false.",
        ),
        (["resume=7"], "resume=7 is invalid: it must be a non-empty string or null."),
    ],
)
def test_validation_names_key_value_and_what_is_allowed(small_cfg_factory, overrides, expected):
    from dqn_cli.config import validate_train

    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory(*overrides))
    assert expected in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_an_error_before_anything_is_built(small_cfg_factory, tmp_path, monkeypatch):
    import dqn_cli.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "make_env", lambda *a, **k: pytest.fail("built an env"))
    with pytest.raises(UserError, match=r"device='cuda' was asked for, but torch finds no CUDA GPU"):
        Trainer(small_cfg_factory("device=cuda"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- what a resume restores ---------------------------------------------------------------------------


def test_resume_restores_every_rng_from_last_pt(small_cfg_factory, stopped_run):
    """Each generator continues from the state in last.pt: here states no seeding by the run's seed gives."""
    import random

    path = stopped_run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    random.seed(101)
    torch.manual_seed(102)
    np.random.seed(103)
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    state["rng"].update(
        python=random.getstate(), torch=torch.get_rng_state(), numpy=np.random.default_rng(104).bit_generator.state,
        numpy_global={"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
    )  # fmt: skip
    save_checkpoint(state, path)
    random.seed(0)  # where the resumed run's own seeding puts them anyway
    torch.manual_seed(0)
    np.random.seed(0)

    trainer = resume(small_cfg_factory, stopped_run)
    drawn = random.random(), torch.rand(1).item(), np.random.rand(), trainer.rng.random()
    random.seed(101)
    torch.manual_seed(102)
    np.random.seed(103)
    assert drawn == (random.random(), torch.rand(1).item(), np.random.rand(), np.random.default_rng(104).random())


def test_resume_without_the_env_state_starts_episodes_from_a_seed_of_their_own(small_cfg_factory, stopped_run,
                                                                                 monkeypatch):  # fmt: skip
    import gymnasium as gym

    monkeypatch.setattr(env_state, "unsupported", lambda env: "a test env")
    trainer = resume(small_cfg_factory, stopped_run)
    # seed 0 + step 153: not the run's first episode (seed 0) again
    first = {seed: gym.make_vec("CartPole-v1", num_envs=1).reset(seed=seed)[0] for seed in (0, HALF)}
    np.testing.assert_array_equal(trainer.obs, first[HALF])
    assert not np.array_equal(first[HALF], first[0])


def test_a_resumed_run_names_its_last_pt_as_the_last_good_checkpoint(small_cfg_factory, stopped_run):
    trainer = resume(small_cfg_factory, stopped_run)
    poison_at(trainer, 170)  # before the next checkpoint (200)
    with pytest.raises(DivergedError) as info:
        trainer.run()
    assert f"last good checkpoint is {stopped_run / 'checkpoints' / 'last.pt'} (step {HALF})" in str(info.value)


def test_a_sweep_job_stopped_during_its_final_evaluation_is_complete_not_stopped(
    tmp_path, small_cfg_factory, monkeypatch
):
    """It raised TrainingStoppedError: the job was STOPPED, with a resume command that had nothing to do."""
    monkeypatch.setattr(StopSignals, "POLL_S", 0.0)
    stop_file = tmp_path / ".stop"
    trainer = Trainer(small_cfg_factory("eval.interval=0"), tmp_path / "run")
    evaluate = trainer.evaluate

    def stop_the_sweep_meanwhile(logger, stop=None):
        stop_file.write_text("SIGTERM\n")
        return evaluate(logger, stop)

    trainer.evaluate = stop_the_sweep_meanwhile
    assert isinstance(trainer.run(stop_file), float)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["status"] == "done"


def signal_on_eval_act(trainer: Trainer, nth: int, signum: int = signal.SIGTERM) -> list[int]:
    """Deliver `signum` as the evaluation acts for the `nth` time (training acts through act_later); returns
    the step of each evaluation act."""
    act, acted = trainer.agent.act, []

    def act_then_signal(*args):
        acted.append(trainer.step)
        if len(acted) == nth:
            signal.raise_signal(signum)
        return act(*args)

    trainer.agent.act = act_then_signal
    return acted


def test_a_signal_during_an_evaluation_leaves_its_games_and_the_resumed_run_plays_it_first(
    tmp_path, small_cfg_factory, caplog
):
    """Greedy Atari games can outlast a scheduler's wait between SIGTERM and SIGKILL (an H200 Pong run was
    killed 30 s after its SIGINT, mid-evaluation): the games are left, with no scores, and last.pt is written.
    The resumed run plays that evaluation first, and ends as the run never stopped."""
    cfg = small_cfg_factory("eval.episodes=4")
    whole, part = tmp_path / "whole", tmp_path / "part"
    Trainer(cfg, whole).run()
    trainer = Trainer(cfg, part)
    acted = signal_on_eval_act(trainer, 5)
    with pytest.raises(TrainingStoppedError) as info:
        trainer.run()
    assert info.value.exit_code == 143 and acted == [100] * 5  # the first evaluation, left after its 5th step
    assert "SIGTERM came during the evaluation at step 100: its games are left unfinished" in caplog.text
    state = load_checkpoint(part / "checkpoints" / "last.pt")
    assert state["status"] == "stopped" and state["counters"]["step"] == 100 and state["eval"]["due"]
    assert not (part / "checkpoints" / "best.pt").exists()  # no scores, so no best policy

    caplog.set_level(logging.INFO)
    Trainer(small_cfg_factory("eval.episodes=4", f"resume={part}"), "unused").run()
    assert "the evaluation at step 100, left unfinished by the stop, comes first" in caplog.text
    a, b = final_state(whole), final_state(part)
    assert not a["eval"]["due"] and a["eval"]["last"] is not None
    assert_same(a, b)
    sa, sb = scalars(whole), scalars(part)
    assert sa["eval/mean_return"] == sb["eval/mean_return"] and [s for s, _ in sb["eval/mean_return"]] == [
        100,
        200,
        300,
    ]


def test_a_signal_during_the_last_steps_evaluation_lets_it_finish(tmp_path, small_cfg_factory):
    """The last step's evaluation is the run's final one, its result: it plays on, and only once."""
    run = tmp_path / "run"
    trainer = Trainer(small_cfg_factory("eval.interval=300", "eval.episodes=2"), run)
    acted = signal_on_eval_act(trainer, 3)
    with pytest.raises(TrainingStoppedError, match="after the last step; the run is complete"):
        trainer.run()
    lengths = scalars(run)["eval/mean_length"]
    assert [step for step, _ in lengths] == [300] and len(acted) == lengths[0][1]  # 2 games on 2 envs side by side
    assert load_checkpoint(run / "checkpoints" / "last.pt")["status"] == "done"


def test_a_signal_in_the_last_step_completes_the_run_and_still_exits_as_stopped(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    stop = run_stopped(small_cfg_factory(), run, step=300)
    assert stop.exit_code == 130 and "stopped by SIGINT after the last step; the run is complete." in str(stop)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["status"] == "done" and state["counters"]["step"] == 300


def test_a_run_that_stopped_solved_resumes_with_a_total_steps_or_solving_off(tmp_path, small_cfg_factory, caplog):
    run = tmp_path / "run"
    solved = ("eval.stop_on_solved=true", "eval.stop_return=1")  # any CartPole return: solved at the first eval
    Trainer(small_cfg_factory(*solved), run).run()
    with pytest.raises(UserError, match=r"that run stopped when solved, at step 100; continue it with eval.stop_on"):
        Trainer(small_cfg_factory(*solved, f"resume={run}"), "unused")
    # its own total_steps again (300) was refused before: "extend it with N > 100", and 300 > 100
    with caplog.at_level(logging.WARNING, logger="dqn_cli.resume"):
        trainer = Trainer(small_cfg_factory(*solved, f"resume={run}"), "unused", overrides=["total_steps=300"])
    assert trainer.step == 100 and "it will stop again at its next evaluation that solves" in caplog.text
    trainer = Trainer(small_cfg_factory(*solved, f"resume={run}"), "unused", overrides=["eval.stop_on_solved=false"])
    trainer.run()
    assert trainer.step == 300  # on to its total_steps


def test_a_finished_run_resumes_only_with_a_new_end(tmp_path, small_cfg_factory):
    run = tmp_path / "run"
    Trainer(small_cfg_factory("eval.interval=0"), run).run()
    with pytest.raises(UserError, match=r"the run is at step 300 and total_steps=300, so there is nothing left"):
        Trainer(small_cfg_factory(f"resume={run}"), "unused")
    trainer = Trainer(small_cfg_factory(f"resume={run}"), "unused", overrides=["total_steps=400"])
    assert trainer.step == 300 and trainer.cfg.total_steps == 400


def test_resume_reads_the_replay_file_beside_last_pt_whatever_path_last_pt_names(small_cfg_factory, stopped_run):
    path = stopped_run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["replay"] = f"/elsewhere/{state['replay']}"  # only the file name counts
    save_checkpoint(state, path)
    trainer = resume(small_cfg_factory, stopped_run)
    assert len(trainer.buffer) == HALF


def test_stop_signals_outside_the_main_thread_do_nothing():
    import threading

    seen = []

    def run() -> None:
        with StopSignals() as stop:
            seen.append(stop.requested)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [False]


def shown_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard shows for `run_dir`: its event files in the order they were written, where a
    session that starts with a purge step (a resumed run) hides the events at that step and later before it."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    def written(path: Path) -> tuple[int, int]:
        parts = path.name.split(".")  # events.out.tfevents.TIME.HOST.PID.N
        return int(parts[3]), int(parts[-1])

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*"), key=written):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                out = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in out.items()}
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":  # the loader turns each into a 0-d tensor
                    out.setdefault(value.tag, []).append((event.step, value.tensor.float_val[0]))
    return out


def test_a_run_resumed_after_a_crash_hides_what_it_logged_after_its_last_checkpoint(tmp_path, small_cfg_factory):
    """A crash at step 170 leaves last.pt of step 100 and TensorBoard events up to step 170; the resumed run logs
    steps 101 to 300 again, and TensorBoard shows each curve once, as the run never interrupted logged it."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    trainer = Trainer(small_cfg_factory(), run)
    inner = trainer.env.step

    def crash_at_170(actions):
        if trainer.step == 169:
            raise RuntimeError("power cut")
        return inner(actions)

    trainer.env.step = crash_at_170
    with pytest.raises(RuntimeError, match="power cut"):
        trainer.run()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["counters"]["step"] == 100
    assert [step for step, _ in shown_scalars(run)["losses/td_loss"]] == [50, 100, 150]

    resume(small_cfg_factory, run).run()
    Trainer(small_cfg_factory(), whole).run()
    shown, expected = shown_scalars(run), shown_scalars(whole)
    assert [step for step, _ in shown["losses/td_loss"]] == [50, 100, 150, 200, 250, 300]
    assert [step for step, _ in shown["eval/mean_return"]] == [100, 200, 300]
    assert shown.keys() == expected.keys()
    for tag in expected.keys() - {"charts/SPS"}:  # steps per second is wall-clock
        assert shown[tag] == expected[tag], tag


@pytest.mark.parametrize("change", ["renamed_layers", "older_without_names", "a_layer_less", "a_layer_emptied"])
def test_resume_with_an_env_state_that_no_longer_fits_starts_fresh_episodes(small_cfg_factory, stopped_run, change,
                                                                            caplog):  # fmt: skip
    """A checkpoint written before dqn_cli's wrappers changed (Atari's GameStatistics replaced two layers):
    the run resumes, with fresh episodes and a warning, instead of failing or half-restoring the env."""
    import gymnasium as gym

    path = stopped_run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    env = state["env"]
    if change == "renamed_layers":
        env["layers"] = ["GameStatistics", *env["layers"][1:]]
    else:
        del env["layers"]
    if change == "a_layer_less":
        env["envs"] = [layers[1:] for layers in env["envs"]]
    elif change == "a_layer_emptied":
        env["envs"] = [[{} for _ in layers] for layers in env["envs"]]
    save_checkpoint(state, path)
    caplog.set_level(logging.WARNING)
    trainer = resume(small_cfg_factory, stopped_run)
    if change == "older_without_names":  # a checkpoint from before the names were kept, wrappers unchanged
        np.testing.assert_array_equal(trainer.obs, state["obs"].numpy())
        assert "cannot be restored" not in caplog.text
        return
    assert "env's state cannot be restored (the saved one does not fit this version's CartPole-v1: " in caplog.text
    if change == "a_layer_emptied":
        assert "the saved state has no 'returns' for RecordEpisodeStatistics" in caplog.text
    fresh = gym.make_vec("CartPole-v1", num_envs=1).reset(seed=HALF)[0]  # seed 0 + step 153
    np.testing.assert_array_equal(trainer.obs, fresh)
    trainer.run()
    assert load_checkpoint(path)["counters"]["step"] == 300

"""Sweeps end to end, each `dqn train -m` in a subprocess with 2 (or 3) tiny CartPole jobs: the joblib,
submitit_local and Ray launchers, the Optuna sweeper, sweep_summary.csv, HParams and the plot script."""

from __future__ import annotations

import csv
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import catches_signal, child_pids, whole_checkpoint
from hydra.types import RunMode
from omegaconf import OmegaConf

from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.config import CHECK_LIMIT, _jobs, check_command_line
from dqn_cli.errors import UserError
from dqn_cli.sweep import SUMMARY, QuietRayNotices, SweepSummary, collect_runs, write_summary

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("dqn")
DQN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dqn_cli"]

# 300 steps with a few updates and one final eval: a job takes ~1 s beyond its process start-up.
TINY = [
    "env=cartpole", "total_steps=300", "device=cpu", "buffer.capacity=500", "agent.batch_size=16",
    "agent.learning_starts=100", "eval.interval=0", "eval.episodes=2", "eval.stop_on_solved=false",
    "checkpoint.interval=0", "log.interval=100", "log.progress=false",
]  # fmt: skip


def multirun(sweep_dir: Path, *overrides: str, env: dict | None = None, timeout: float = 300):
    """`dqn train -m TINY... OVERRIDES...` into `sweep_dir`; returns the finished process."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    cmd = [*DQN, "train", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(
        cmd, cwd=sweep_dir.parent, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def summary_script(sweep_dir: Path | str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m dqn_cli.sweep SWEEP_DIR`, run from `cwd` (SWEEP_DIR may be relative to it)."""
    cmd = [sys.executable, "-m", "dqn_cli.sweep", str(sweep_dir)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def plot_script(*args: str) -> subprocess.CompletedProcess:
    """`python scripts/plot_runs.py ARGS...`; returns the finished process."""
    cmd = [sys.executable, str(REPO / "scripts" / "plot_runs.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def plot_module():
    """scripts/plot_runs.py as a module (scripts/ is not a package), for its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_runs", REPO / "scripts" / "plot_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_refused(proc: subprocess.CompletedProcess, code: int) -> str:
    """The process ended with `code`, no traceback, and one line of error on stderr (after argparse's
    usage, if any); returns that line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code and "Traceback" not in out, out[-5000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), out
    return lines[-1]


def check_ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / SUMMARY, newline="") as f:
        return list(csv.DictReader(f))


def assert_run_dirs(sweep_dir: Path, n: int) -> list[Path]:
    """`n` run dirs 0..n-1, each with its overrides, TensorBoard curves, a checkpoint and a job result."""
    run_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in run_dirs] == [str(i) for i in range(n)]
    for run_dir in run_dirs:
        assert (run_dir / ".hydra" / "overrides.yaml").is_file()
        assert list(run_dir.glob("events.out.tfevents.*")), run_dir
        assert (run_dir / "checkpoints" / "last.pt").is_file(), run_dir
        assert (run_dir / "job_result.json").is_file(), run_dir
    return run_dirs


# ---- joblib: run dirs, summary, HParams, plot ----------------------------------------------------


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("joblib") / "sweep"
    check_ok(multirun(sweep_dir, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    return sweep_dir


def test_joblib_multirun_writes_one_run_dir_per_job(joblib_sweep):
    run_dirs = assert_run_dirs(joblib_sweep, 2)
    seeds = [OmegaConf.load(d / ".hydra" / "config.yaml").seed for d in run_dirs]
    assert seeds == [0, 1]
    assert (joblib_sweep / "multirun.yaml").is_file()


def test_a_sweep_into_the_dir_of_an_earlier_sweep_is_refused(joblib_sweep):
    """Hydra would rerun job 0 in 0/ over the earlier run's checkpoints (reported: a stopped, resumable
    job replaced by a new seed's run, its old step_N.pt and events left mixed in)."""
    before = {p: p.stat().st_mtime_ns for p in joblib_sweep.rglob("*") if p.is_file()}
    line = check_refused(multirun(joblib_sweep, "seed=5"), 2)
    assert line.startswith(
        f"dqn train: error: hydra.sweep.dir={joblib_sweep} already holds an earlier sweep's runs "
        f"(2 run dirs with checkpoints/last.pt, e.g. {joblib_sweep / '0'}); a new sweep"
    ), line
    assert {p: p.stat().st_mtime_ns for p in joblib_sweep.rglob("*") if p.is_file()} == before


def test_a_sweep_whose_job_dirs_are_named_by_their_overrides_may_share_a_dir(joblib_sweep, tmp_path):
    """hydra.sweep.subdir=${hydra.job.override_dirname}: each job's dir is named by its values, so a new
    sweep in the same dir adds dirs of its own and overwrites none."""
    shared = tmp_path / "shared"
    shutil.copytree(joblib_sweep, shared)
    check_ok(multirun(shared, "seed=5", "hydra.sweep.subdir=${hydra.job.override_dirname}"))
    (new,) = [d for d in shared.iterdir() if d.is_dir() and d.name not in ("0", "1")]
    assert "seed=5" in new.name and (new / "checkpoints" / "last.pt").is_file()
    assert (shared / "0" / "checkpoints" / "last.pt").is_file()  # the earlier sweep's, kept


@pytest.mark.parametrize(
    "overrides, env, said",
    [
        (["hydra.sweeper.max_batch_size=0"], {}, "hydra.sweeper.max_batch_size=0 is invalid: it must be an integer"),
        (["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=0"], {},
         "hydra.launcher.timeout_min=0 is invalid: submitit kills each job after that many minutes"),
        (["hydra/launcher=ray"], {"RAY_ADDRESS": "127.0.0.1:1"},
         "hydra/launcher=ray starts a new local Ray instance, but RAY_ADDRESS=127.0.0.1:1 names a running cluster"),
        # nothing listens there: Ray would retry the address for ever
        (["hydra/launcher=ray_cluster"], {"RAY_ADDRESS": "127.0.0.1:1"},
         "the Ray cluster at RAY_ADDRESS=127.0.0.1:1 cannot be reached (Connection refused)"),
        (["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=ray://127.0.0.1:1"], {},
         "the Ray cluster at hydra.launcher.ray.init.address=ray://127.0.0.1:1 cannot be reached"),
    ],
)  # fmt: skip
def test_launcher_settings_that_would_crash_the_sweep_are_refused_first(tmp_path, overrides, env, said):
    """Before: an AssertionError traceback (Hydra's basic sweeper), jobs killed at once and submitit's
    UncompletedJobError, Ray's 'object_store_memory must not be provided' after 20 s of retries."""
    line = check_refused(multirun(tmp_path / "sweep", "seed=0,1", *overrides, env=env), 2)
    assert said in line, line
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_dir_that_cannot_be_made_names_hydra_sweep_dir(tmp_path):
    (tmp_path / "afile").write_text("")
    cmd = [*DQN, "train", "-m", *TINY, f"hydra.sweep.dir={tmp_path / 'afile' / 'sweep'}", "seed=0,1"]
    line = check_refused(subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False), 1)
    assert line == (
        f"dqn train: error: Not a directory: {tmp_path / 'afile' / 'sweep'}. The sweep dir is hydra.sweep.dir "
        "(multirun/DATE/TIME under the working directory unless set)."
    )


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("subdir", ["${hydra.job.override_dirname}", "job${hydra.job.num}"])
def test_a_sweep_that_would_reuse_a_job_dir_is_refused_before_it_starts(tmp_path, subdir):
    """Job dirs named by the overrides (or by the job number with text around it): the same job in the same
    sweep dir again would train over the earlier run (reported: last.pt replaced, a second events file)."""
    sweep = tmp_path / "sweep"
    check_ok(multirun(sweep, "seed=5", f"hydra.sweep.subdir={subdir}"))
    before = _files(sweep)
    line = check_refused(multirun(sweep, "seed=5", f"hydra.sweep.subdir={subdir}"), 2)
    assert "already holds" in line and "checkpoints/last.pt" in line and "resume=" in line, line
    assert _files(sweep) == before
    check_ok(multirun(sweep, "seed=6", "hydra.sweep.subdir=${hydra.job.override_dirname}"))  # a dir of its own


def test_a_job_whose_dir_holds_a_run_is_refused_when_it_starts(tmp_path):
    """Where the check before the start is skipped (-cd), the job itself refuses: the earlier run's
    checkpoint, curves and job_result.json stay as they are."""
    sweep, subdir = tmp_path / "sweep", "hydra.sweep.subdir=${hydra.job.override_dirname}"
    check_ok(multirun(sweep, "seed=5", subdir))
    (job_dir,) = [d for d in sweep.iterdir() if d.is_dir()]
    kept = [job_dir / "checkpoints" / "last.pt", job_dir / "job_result.json", *job_dir.glob("events.out.*")]
    before = {p: p.read_bytes() for p in kept}
    proc = multirun(sweep, "seed=5", subdir, "-cd", str(REPO / "configs"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert f"the job dir {job_dir} already holds a run (checkpoints/last.pt)" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in kept} == before
    assert sorted(job_dir.glob("events.out.*")) == sorted(p for p in kept if p.name.startswith("events"))


def test_a_job_slurm_requeued_goes_on_from_its_last_pt(tmp_path):
    """submitit requeues a preempted job in the same job dir (SLURM_RESTART_COUNT > 0): it resumes from the
    last.pt its stop wrote instead of being refused (or, before, training over it from step 0)."""
    sweep = tmp_path / "sweep"
    check_ok(multirun(sweep, "seed=5"))
    assert load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["counters"]["step"] == 300
    # (-cd: the requeued job runs without dqn's check before the start, as a Slurm requeue does)
    proc = multirun(sweep, "seed=5", "total_steps=600", "-cd", str(REPO / "configs"), env={"SLURM_RESTART_COUNT": "1"})
    out = check_ok(proc)
    assert f"resumed {sweep / '0' / 'checkpoints' / 'last.pt'} at step 300" in out, out[-3000:]
    assert load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["counters"]["step"] == 600


def test_a_joblib_job_runs_async_atari_envs(tmp_path):
    """A loky worker's default start method is loky's, whose processes could not take gymnasium's shared
    observation memory (TypeError: cannot pickle 'mmap.mmap' object): the envs name the platform's."""
    sweep = tmp_path / "sweep"
    atari = ["env=pong", "env.vectorization=async", "env.num_envs=2", "buffer.capacity=2000", "eval.episodes=1",
             "eval_protocol.max_episode_frames=100"]  # fmt: skip
    check_ok(multirun(sweep, *atari, "seed=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    assert load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["counters"]["step"] == 300


def test_sweep_summary_has_a_row_per_run(joblib_sweep):
    rows = read_summary(joblib_sweep)
    assert [r["job"] for r in rows] == ["0", "1"] and [r["seed"] for r in rows] == ["0", "1"]
    assert list(rows[0])[:3] == ["job", "status", "env"]  # then one column per override key
    for row in rows:
        state = load_checkpoint(Path(row["run_dir"]) / "checkpoints" / "last.pt")
        assert row["status"] == "COMPLETED" and row["env"] == "cartpole" and row["total_steps"] == "300"
        assert float(row["final_return"]) == pytest.approx(state["eval"]["last"])  # what `train` returned
        assert float(row["best_return"]) == pytest.approx(state["eval"]["best"])
        assert float(row["best_return"]) >= float(row["final_return"]) > 0
        assert int(row["steps"]) == 300 and int(row["episodes"]) > 0 and int(row["updates"]) > 0
        assert float(row["wall_time_s"]) > 0


def test_summary_can_be_rewritten_by_hand(joblib_sweep, tmp_path):
    rows = write_summary(joblib_sweep, tmp_path / "again.csv")
    assert len(rows) == 2
    assert (tmp_path / "again.csv").read_text() == (joblib_sweep / SUMMARY).read_text()


def _fake_run(run_dir: Path, overrides: list[str], result: dict | None) -> None:
    """A run dir as a sweep job leaves it, without a checkpoint: its overrides and job result."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    if result is not None:
        (run_dir / "job_result.json").write_text(json.dumps(result))


def test_summary_of_hand_made_run_dirs_sorts_by_job_and_names_deleted_and_added_keys(tmp_path):
    sweep = tmp_path / "sweep"
    # dir "a" holds job 1 and dir "b" job 0: rows follow the job numbers, not the dir names
    _fake_run(sweep / "a", ["seed=1"], {"job": 1, "status": "FAILED", "return": None, "wall_time_s": None})
    _fake_run(
        sweep / "b", ["seed=0", "+x.y=2", "~z"], {"job": 0, "status": "COMPLETED", "return": 12.5, "wall_time_s": 1.5}
    )
    rows = write_summary(sweep, tmp_path / "s.csv")
    assert [r["job"] for r in rows] == [0, 1]
    assert b"\r" not in (tmp_path / "s.csv").read_bytes()  # Unix lines, for cat, awk and diff
    with open(tmp_path / "s.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [
        ["job", "status", "seed", "x.y", "z", "final_return", "best_return", "steps", "episodes", "updates",
         "wall_time_s", "run_dir"],
        ["0", "COMPLETED", "0", "2", "<deleted>", "12.5", "", "", "", "", "1.5", str(sweep / "b")],
        ["1", "FAILED", "1", "", "", "", "", "", "", "", "", str(sweep / "a")],
    ]  # fmt: skip


def test_summary_rows_follow_the_job_numbers(tmp_path):
    # dirs made in a scrambled order under names that sort otherwise; job 10 comes after job 2 (numbers, not
    # text), and a run dir without a job number (no job result, no hydra.yaml) comes last
    jobs = [3, 10, 0, 7, 2, 11, 5, 1, 9, 4, 8, 6]
    for i, job in enumerate(jobs):
        result = {"job": job, "status": "COMPLETED", "return": 1.0, "wall_time_s": 1.0}
        _fake_run(tmp_path / f"d{len(jobs) - i:02d}", [f"seed={job}"], result)
    _fake_run(tmp_path / "a_unknown", ["seed=99"], None)
    rows = write_summary(tmp_path, tmp_path / "s.csv")
    assert [r["job"] for r in rows] == [*range(12), ""]


@pytest.mark.parametrize(
    "saved, status", [("done", "COMPLETED"), ("stopped", "STOPPED"), ("running", "INCOMPLETE"), (None, "INCOMPLETE")]
)
def test_a_run_without_a_job_result_is_summarised_from_its_checkpoint(tmp_path, saved, status):
    """A job killed (or still running) wrote no job_result.json: last.pt says how far it got. A periodic
    checkpoint ("running") is no finished run."""
    from dqn_cli.checkpoint import save_checkpoint

    run = tmp_path / "0"
    _fake_run(run, ["seed=4"], None)
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": 4}}}), run / ".hydra" / "hydra.yaml")
    # no evaluation improved on -inf: there is no best return to report
    state = whole_checkpoint(counters={"step": 300, "episodes": 12, "updates": 67}, eval={"last": 20.5})
    if saved is not None:
        state["status"] = saved
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    (row,) = write_summary(tmp_path, tmp_path / "s.csv")
    assert {k: row[k] for k in ("job", "status", "final_return", "best_return", "steps", "episodes", "updates")} == {
        "job": 4, "status": status, "final_return": 20.5, "best_return": "", "steps": 300, "episodes": 12,
        "updates": 67,
    }  # fmt: skip


@pytest.mark.parametrize("resumed", [True, False])
def test_a_job_resumed_after_the_sweep_is_summarised_from_its_newer_checkpoint(tmp_path, resumed):
    """A stopped job run on to its end with `dqn train resume=RUN_DIR` stayed STOPPED in the summary, beside
    the new steps and returns (job_result.json is the job's, written when it stopped)."""
    from dqn_cli.checkpoint import save_checkpoint

    run = tmp_path / "0"
    # the job stopped at step 1,200 (job_result.json says so); resumed, last.pt stands at 3,000
    at_job_end = 1200 if resumed else 3000
    _fake_run(
        run, ["seed=0"], {"job": 0, "status": "STOPPED", "return": None, "wall_time_s": 12.5, "steps": at_job_end}
    )
    state = whole_checkpoint(status="done", counters={"step": 3000}, eval={"last": 180.5, "best": 200.0})
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    os.utime(run / "job_result.json", ns=(10**9, 10**9))  # file times do not matter (a copy without them)
    (row,) = collect_runs(tmp_path)
    seen = {k: row[k] for k in ("status", "final_return", "best_return", "steps", "wall_time_s")}
    if resumed:  # the run as it stands now; its wall time (two processes) is not known
        assert seen == {
            "status": "COMPLETED",
            "final_return": 180.5,
            "best_return": 200.0,
            "steps": 3000,
            "wall_time_s": "",
        }
    else:  # the job's own record, beside the checkpoint it ended with
        assert seen == {
            "status": "STOPPED",
            "final_return": 180.5,
            "best_return": 200.0,
            "steps": 3000,
            "wall_time_s": 12.5,
        }


def test_a_run_dir_with_files_that_cannot_be_read_is_skipped_or_read_from_its_checkpoint(tmp_path, caplog):
    """A cut-off or hand-edited file under the sweep dir was a traceback in the summary and the plot
    script: an unreadable overrides.yaml leaves its run out, an unreadable job_result.json is ignored."""
    from dqn_cli.checkpoint import save_checkpoint

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", ["seed=0"], {"job": 0, "status": "COMPLETED", "return": 9.0, "wall_time_s": 1.0})
    _fake_run(sweep / "1", ["seed=1"], None)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("{{{ cut off")
    _fake_run(sweep / "2", ["seed=2"], None)
    (sweep / "2" / "job_result.json").write_text('{"job": 2, "status"')
    save_checkpoint(whole_checkpoint(status="stopped", counters={"step": 50}), sweep / "2" / "checkpoints" / "last.pt")
    _fake_run(sweep / "3", ["seed=3"], None)
    (sweep / "3" / ".hydra" / "overrides.yaml").write_text("seed: 3\n")  # a mapping, not a list
    with caplog.at_level(logging.WARNING, logger="dqn_cli.sweep"):
        rows = write_summary(sweep, sweep / SUMMARY)
    assert [(r["overrides"], r["status"], r["steps"]) for r in rows] == [
        (["seed=0"], "COMPLETED", ""),
        (["seed=2"], "STOPPED", 50),
    ]
    assert f"skipping {sweep / '1'}" in caplog.text and f"skipping {sweep / '3'}" in caplog.text
    assert f"{sweep / '2' / 'job_result.json'} cannot be read" in caplog.text
    proc = plot_script(str(sweep), "-o", str(tmp_path / "curves.png"))
    assert "Traceback" not in proc.stderr and "cannot be read" in proc.stderr, proc.stderr


def test_the_sweep_end_logs_the_best_final_return(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    for job, ret in enumerate([3.0, 12.5, None]):
        result = {"job": job, "status": "COMPLETED", "return": ret, "wall_time_s": 1.0}
        _fake_run(sweep / str(job), [f"seed={job}"], result)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level(logging.INFO, logger="dqn_cli.sweep"):
        SweepSummary().on_multirun_end(config)
    assert f"sweep summary: 3 runs in {sweep / SUMMARY}; best final return 12.5 (seed=1)" in caplog.text


@pytest.mark.parametrize("mode", [RunMode.MULTIRUN, RunMode.RUN])
def test_a_sweep_job_writes_its_result_and_a_single_run_writes_none(tmp_path, mode):
    from hydra.core.utils import JobReturn, JobStatus

    from dqn_cli.checkpoint import save_checkpoint

    config = OmegaConf.create({"hydra": {"mode": mode, "job": {"num": 3}, "runtime": {"output_dir": str(tmp_path)}}})
    save_checkpoint(whole_checkpoint(status="done", counters={"step": 300}), tmp_path / "checkpoints" / "last.pt")
    callback = SweepSummary()
    callback.on_job_start(config)
    callback.on_job_end(config, JobReturn(overrides=["seed=1"], status=JobStatus.COMPLETED, _return_value=7))
    if mode == RunMode.RUN:
        assert not (tmp_path / "job_result.json").exists()
        return
    result = json.loads((tmp_path / "job_result.json").read_text())
    assert result.pop("wall_time_s") >= 0
    assert result == {
        "job": 3, "status": "COMPLETED", "overrides": ["seed=1"], "return": 7.0, "error": None, "traceback": None,
        "steps": 300,
    }  # fmt: skip


def test_a_job_that_never_started_records_no_wall_time_and_no_steps(tmp_path):
    """A job due after the sweep was stopped returns at once: it has no wall time to report (it was 0.0 for
    some such jobs and 0.001 for others), and no checkpoint."""
    from hydra.core.utils import JobReturn, JobStatus

    from dqn_cli.signals import NotStartedError

    config = OmegaConf.create(
        {"hydra": {"mode": RunMode.MULTIRUN, "job": {"num": 5}, "runtime": {"output_dir": str(tmp_path)}}}
    )
    callback = SweepSummary()
    callback.on_job_start(config)
    error = NotStartedError("not started: the sweep was stopped by SIGINT", signal.SIGINT)
    callback.on_job_end(config, JobReturn(overrides=["seed=5"], status=JobStatus.FAILED, _return_value=error))
    result = json.loads((tmp_path / "job_result.json").read_text())
    assert (result["status"], result["steps"], result["wall_time_s"]) == ("NOT_STARTED", None, None)


@pytest.mark.parametrize("crash", [True, False])
def test_a_crashed_job_writes_its_traceback_to_its_log_file_only(tmp_path, crash, capsys):
    """A joblib or Ray job's traceback does not travel back with its error, and a stopped sweep raises none:
    the job's own log file keeps it. A UserError (a message, not a bug) gets no traceback."""
    from hydra.core.utils import JobReturn, JobStatus

    def failing():
        raise RuntimeError("boom in the job") if crash else UserError("training diverged at step 9")

    try:
        failing()
    except Exception as e:
        error = e
    log_file = tmp_path / "train.log"
    handler, root = logging.FileHandler(log_file), logging.getLogger()
    root.addHandler(handler)
    try:
        config = OmegaConf.create(
            {"hydra": {"mode": RunMode.MULTIRUN, "job": {"num": 1}, "runtime": {"output_dir": str(tmp_path)}}}
        )
        SweepSummary().on_job_end(config, JobReturn(overrides=["seed=1"], status=JobStatus.FAILED, _return_value=error))
    finally:
        root.removeHandler(handler)
        handler.close()
    result = json.loads((tmp_path / "job_result.json").read_text())
    text = log_file.read_text()
    if crash:
        assert result["error"] == "RuntimeError: boom in the job" and result["traceback"] == str(log_file)
        assert text.startswith("the job crashed:\nTraceback (most recent call last):"), text
        assert "in failing" in text and text.rstrip().endswith("RuntimeError: boom in the job"), text
    else:
        assert result["error"] == "UserError: training diverged at step 9" and result["traceback"] is None
        assert text == ""
    assert "Traceback" not in capsys.readouterr().err  # the console shows none


def test_the_summary_script_exit_codes(tmp_path, capsys):
    from dqn_cli.sweep import main

    assert main([]) == 2 and main([str(tmp_path / "nowhere")]) == 2
    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: python -m dqn_cli.sweep SWEEP_DIR")
    assert main([str(tmp_path)]) == 1  # no run dirs
    _fake_run(tmp_path / "0", ["seed=0"], {"job": 0, "status": "COMPLETED", "return": 1.0, "wall_time_s": 1.0})
    assert main([str(tmp_path)]) == 0 and (tmp_path / SUMMARY).is_file()
    assert f"1 run -> {tmp_path / SUMMARY}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sweeps, singles, warning",
    [
        (1, 0, None),
        (0, 2, None),  # a table of single runs (outputs/): nothing mixed
        (2, 0, "{root} holds the run dirs of 2 sweeps; they share this one table, where job numbers repeat"),
        (1, 1, "{root} holds the run dirs of 1 sweep and 1 single run; they share this one table (run_dir"),
        (2, 2, "{root} holds the run dirs of 2 sweeps and 2 single runs; they share this one table, where job"),
    ],
)
def test_the_summary_script_warns_when_it_mixes_sweeps_or_single_runs(tmp_path, capsys, sweeps, singles, warning):
    from dqn_cli.sweep import main

    root, result = tmp_path / "runs", {"job": 0, "status": "COMPLETED", "return": 1.0, "wall_time_s": 1.0}
    for i in range(sweeps):  # a sweep dir holds Hydra's multirun.yaml (sweep0) or not (Optuna) and a run dir per job
        for job in (0, 1):
            _fake_run(root / f"sweep{i}" / str(job), [f"seed={job}"], result | {"job": job})
            (root / f"sweep{i}" / str(job) / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
        if i == 0:
            (root / f"sweep{i}" / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for i in range(singles):
        _fake_run(root / f"single{i}", ["seed=0"], None)
        (root / f"single{i}" / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    assert main([str(root)]) == 0 and len(read_summary(root)) == 2 * sweeps + singles
    err = capsys.readouterr().err
    if warning is None:
        assert err == ""
    else:
        assert err.startswith("warning: " + warning.format(root=root)), err
        assert err.rstrip().endswith(f"One sweep's table: python -m dqn_cli.sweep {root.resolve() / 'sweep0'}"), err


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The run dir of a single `dqn train` (no -m): a run dir, not a sweep dir."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    cmd = [*DQN, "train", *TINY, f"hydra.run.dir={run_dir}"]
    check_ok(subprocess.run(cmd, cwd=run_dir.parent, capture_output=True, text=True, timeout=300, check=False))
    return run_dir


@pytest.mark.parametrize(
    "given, code, words",
    [
        # the reported crash: a single run's hydra.job.num is ??? (MissingMandatoryValue)
        ("single run", 2, ["{path} is the run dir of a single run (`dqn train` without -m), not a sweep dir"]),
        ("job 1", 2, ["{path} is the run dir of job 1 of a sweep, not the sweep dir",
                      "Summarise this sweep with: python -m dqn_cli.sweep {sweep}"]),
        ("missing", 2, ["{path} does not exist"]),
        ("file", 2, ["{path} is a file, not a directory"]),
        ("empty", 1, ["no run dirs under {path} (a run dir holds .hydra/overrides.yaml",
                      "so no sweep_summary.csv was written"]),
    ],
)  # fmt: skip
def test_the_summary_script_says_why_a_dir_is_no_sweep_dir(request, tmp_path, given, code, words):
    if given == "single run":
        path = request.getfixturevalue("single_run")
    elif given == "job 1":
        path = request.getfixturevalue("joblib_sweep") / "1"
    else:
        path = tmp_path / {"missing": "nowhere", "file": "notes.txt", "empty": "empty"}[given]
        if given == "file":
            path.write_text("not a dir\n")
        elif given == "empty":
            path.mkdir()
    line = check_refused(summary_script(path, cwd=tmp_path), code)
    for word in words:
        assert word.format(path=path, sweep=path.parent) in line, line
    assert line.startswith("error: ")
    assert "; a sweep dir is the multirun/DATE/TIME dir of a `dqn train -m` (its hydra.sweep.dir)" in line, line
    assert not (path / SUMMARY).exists()


def test_the_summary_script_says_in_one_line_when_it_cannot_write_the_table(tmp_path):
    _fake_run(tmp_path / "0", ["seed=0"], {"job": 0, "status": "COMPLETED", "return": 1.0, "wall_time_s": 1.0})
    (tmp_path / SUMMARY).mkdir()  # as good as a read-only sweep dir, also for root
    line = check_refused(summary_script(tmp_path, cwd=tmp_path), 1)
    assert line == f"error: could not write {tmp_path / SUMMARY} (Is a directory)"


def test_the_summary_script_writes_the_callbacks_table_with_absolute_run_dirs(joblib_sweep, tmp_path):
    # the callback is given the absolute hydra.sweep.dir; here the script gets a relative path through a
    # symlink, and still writes the same table: each run_dir absolute and resolved
    copy = tmp_path / "copy"
    shutil.copytree(joblib_sweep, copy)
    (tmp_path / "link").symlink_to(copy)
    check_ok(summary_script("link", cwd=tmp_path))
    assert [r["run_dir"] for r in read_summary(copy)] == [str(copy / "0"), str(copy / "1")]
    assert (copy / SUMMARY).read_text() == (joblib_sweep / SUMMARY).read_text().replace(str(joblib_sweep), str(copy))


def test_each_run_records_hparams_for_tensorboard(joblib_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(joblib_sweep / "1"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["seed"].number_value == 1
    assert start.hparams["agent.lr"].number_value > 0 and start.hparams["env.id"].string_value == "CartPole-v1"
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/final_return", "hparams/best_return"}
    assert {"hparams/final_return", "hparams/best_return"} <= set(acc.Tags()["scalars"])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_script_draws_a_png_of_the_requested_size(joblib_sweep, tmp_path):
    out = tmp_path / "curves.png"
    proc = plot_script(str(joblib_sweep), "-o", str(out), "--size", "6", "4", "--dpi", "50")
    check_ok(proc)
    assert "(n=2)" in proc.stdout  # both seeds in one setting
    assert png_size(out) == (300, 200)
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (200, 300) and pixels.std() > 0.01  # something was drawn


def test_plot_curves_hold_each_runs_last_return_to_its_last_step():
    """Seeds whose last episodes end at different steps: each run's last return stands until the run's
    last step, so the mean does not fall at the end as runs drop out (the README's picture did); a run
    that ended early (stop_on_solved) still drops out after its own end."""
    import numpy as np

    plot_runs = plot_module()
    grid = np.array([0.0, 50.0, 100.0, 150.0, 200.0])
    # episodes ended at steps 50 and 100, the run trained to step 200
    held = plot_runs.on_grid(grid, np.array([50.0, 100.0]), np.array([10.0, 30.0]), 200.0)
    np.testing.assert_array_equal(held, [np.nan, 10.0, 30.0, 30.0, 30.0])
    # a run that stopped at step 120
    ended = plot_runs.on_grid(grid, np.array([50.0, 100.0]), np.array([10.0, 30.0]), 120.0)
    np.testing.assert_array_equal(ended, [np.nan, 10.0, 30.0, np.nan, np.nan])


def test_plot_reads_a_runs_end_from_its_last_point_of_any_tag(tmp_path):
    """The last episode ended at step 50; the run logged on to step 200: its curve holds to 200."""
    from torch.utils.tensorboard import SummaryWriter

    plot_runs = plot_module()
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("charts/episodic_return", 10.0, 20)
        writer.add_scalar("charts/episodic_return", 30.0, 50)
        writer.add_scalar("charts/SPS", 100.0, 200)
    steps, values, end = plot_runs.read_scalars(tmp_path, "charts/episodic_return")
    assert (steps.tolist(), values.tolist(), end) == ([20.0, 50.0], [10.0, 30.0], 200)


def test_plot_script_names_a_path_that_does_not_exist(tmp_path):
    line = check_refused(plot_script(str(tmp_path / "nowhere"), "-o", str(tmp_path / "c.png")), 1)
    assert line == f"error: {tmp_path / 'nowhere'} does not exist (give a sweep dir, multirun/DATE/TIME, or run dirs)"
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--smooth", "-1"], ["argument --smooth: must be an integer >= 1, not '-1'"]),
        (["--smooth", "0"], ["argument --smooth: must be an integer >= 1, not '0'"]),
        (["--points", "1"], ["argument --points: must be an integer in [2, 100000], not '1'"]),
        (["--dpi", "0"], ["argument --dpi: must be an integer >= 1, not '0'"]),
        (["--size", "nan", "4"], ["argument --size: must be a number >= 0.01, not 'nan'"]),
        (["--dpi", "1000000"], ["--size 8 4.5 at --dpi 1000000 is a 8000000x4500000 pixel image",
                                "each side (W*dpi, H*dpi) must be 1 to 16384 pixels"]),
        # matplotlib would refuse the format after reading every run, or add .png to a name without a suffix
        (["-o", "curves.jpq"], ["argument -o/--output: 'curves.jpq' must end in an image format's suffix: ", ".png, "]),
        (["-o", "curves"], ["argument -o/--output: 'curves' must end in an image format's suffix: ", ".pdf, "]),
    ],
)  # fmt: skip
def test_plot_script_refuses_bad_options_with_the_allowed_values(joblib_sweep, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)  # a relative -o (the last -o counts) lands here, as would any image
    line = check_refused(plot_script(str(joblib_sweep), "-o", str(tmp_path / "c.png"), *args), 2)
    assert line.startswith("plot_runs.py: error: ") and all(word in line for word in words), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out, why", [("file/c.png", "Not a directory: {tmp}/file"), ("dir.png", "Is a directory")])
def test_plot_script_says_in_one_line_when_it_cannot_write_the_image(joblib_sweep, tmp_path, out, why):
    (tmp_path / "file").write_text("a file, not a dir\n")
    (tmp_path / "dir.png").mkdir()
    line = check_refused(plot_script(str(joblib_sweep), "-o", str(tmp_path / out)), 1)
    assert line == f"error: could not write {tmp_path / out} ({why.format(tmp=tmp_path)})"


# ---- every job checked before the first one runs ---------------------------------------------------


def test_a_bad_value_in_a_later_job_stops_the_sweep_before_the_first_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = multirun(sweep_dir, "agent.lr=1e-3,abc")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "Error executing job" not in out, out
    assert "in the sweep's job with agent.lr=abc: invalid config: agent.lr='abc'" in proc.stderr, out
    assert "No job was started." in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, out
    assert not sweep_dir.exists()  # job 0 (agent.lr=1e-3, a good config) did not run either


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["agent.lr=1e-3,-1"], ["job with agent.lr=-1:", "must be a number > 0"]),
        # 80 jobs, more than CHECK_LIMIT: each value is still checked once
        (["seed=range(0,40)", "agent.lr=1e-3,-1"], ["job with seed=0 agent.lr=-1:"]),
        (["seed=range(0,40)", "agent.lr=1e-3,5e-4", "agent.gamma=0.99,1.5"],
         ["seed=0 agent.lr=0.001 agent.gamma=1.5:"]),
        # combinations: each value alone is good, the pair is not (the batch must fit in the buffer)
        (["agent.batch_size=16,600", "buffer.capacity=500,1000"], ["agent.batch_size=600 buffer.capacity=500:"]),
        (["env=atari", "env.game=Pong,Pongg"], ["job with env.game=Pongg:", "not an ALE game", "Close matches: Pong"]),
        (["env=cartpole", "env.id=CartPole-v1,CartPole-v9"], ["env.id=CartPole-v9:", "not a registered"]),
        (["seed=0,1", "resume=/some/run"], ["in every job of the sweep:", "cannot be part of a sweep"]),
        # a problem of the fixed settings is every job's, not the first one's; one of a swept value is that job's
        (["env=classic", "seed=0,1"], ["in every job of the sweep: invalid config: env.id is required"]),
        (["env=classic,cartpole"], ["in the sweep's job with env=classic: invalid config: env.id is required"]),
        (["env=classic", "env.id=Foo-v0", "seed=0,1"], ["in every job of the sweep: env.id='Foo-v0' is not a"]),
        # the swept key at its default fails as one of its values does: still that job's, another passes
        (["agent.exploration_initial_eps=0.01", "agent.exploration_final_eps=0.04,0.005"],
         ["in the sweep's job with agent.exploration_final_eps=0.04: "]),
        # Optuna's search space (the config's, or a command-line sweep): both ends of an interval, every choice
        (["hparams_search=cartpole_optuna", "agent.exploration_fraction=interval(0.5, 1.5)"],
         ["agent.exploration_fraction=1.5:", "must be a number in [0, 1]"]),
        # a searched key set on the command line is pinned, not searched
        (["hparams_search=cartpole_optuna", "agent.batch_size=100000"], ["agent.batch_size=100000 is larger"]),
    ],
)  # fmt: skip
def test_the_check_names_the_sweeps_job_with_the_bad_value(overrides, words):
    with pytest.raises(UserError) as e:
        check_command_line([*TINY, *overrides], multirun=True)
    for word in words:
        assert word in str(e.value), str(e.value)
    assert str(e.value).endswith("No job was started.")
    assert "agent.batch_size=32" not in str(e.value)  # a pinned key is not searched


def test_the_check_covers_the_configs_search_space():
    unpinned = [o for o in TINY if not o.startswith("agent.batch_size=")]  # learning_starts=100 < choice 128
    with pytest.raises(UserError) as e:
        check_command_line([*unpinned, "hparams_search=cartpole_optuna"], multirun=True)
    assert "job with agent.lr=0.0003 agent.batch_size=128 agent.target_update_interval=100" in str(e.value)
    assert "agent.learning_starts=100 is smaller than agent.batch_size=128" in str(e.value)


def test_the_check_passes_good_sweeps():
    for overrides in (
        [*TINY, "seed=0,1,2", "agent.lr=1e-3,5e-4"],
        [*TINY, "hparams_search=cartpole_optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        [
            "env=glob(*,exclude=[atari,classic])",
            "device=cpu",
        ],  # every env preset (atari needs env.game, classic env.id)
        ["env=classic", "env.id=CartPole-v1,Acrobot-v1", "device=cpu"],
        # job dirs named by the job number and the overrides: the number is known only as the job starts
        [
            *TINY,
            "seed=0,1",
            "hydra.sweep.dir=/tmp/dqn-check",
            "hydra.sweep.subdir=${hydra.job.num}_${hydra.job.override_dirname}",
        ],  # fmt: skip
        ["env=pong", "env/preset=nature,machado", "device=cpu"],
    ):
        check_command_line(overrides, multirun=True)


def test_a_failure_of_the_check_itself_only_warns(monkeypatch, capsys):
    import dqn_cli.config
    from dqn_cli.cli import _check_first

    def broken(overrides, multirun):
        raise RuntimeError("a bug in the check")

    monkeypatch.setattr(dqn_cli.config, "check_command_line", broken)
    _check_first(["-m", "seed=0,1"])  # the sweep goes on
    err = capsys.readouterr().err
    assert "warning: the config was not checked before the start (RuntimeError: a bug in the check)" in err


def test_a_sweep_of_exactly_the_limit_is_checked_job_by_job():
    values = [[f"a={i}" for i in range(4)], [f"b={i}" for i in range(CHECK_LIMIT // 4)]]
    assert 4 * (CHECK_LIMIT // 4) == CHECK_LIMIT
    assert sorted(map(tuple, _jobs(values))) == sorted((a, b) for a in values[0] for b in values[1])


def test_a_single_run_with_resume_is_not_refused_by_the_check():
    # resume= continues one run (its config is checked when the run is loaded); only a sweep refuses it
    check_command_line([*TINY, "resume=/some/run"])


def test_a_single_run_with_a_sweep_in_it_is_left_to_hydra():
    # without -m, Hydra refuses `agent.lr=1e-3,abc` itself and says to add --multirun; the check says nothing
    check_command_line([*TINY, "agent.lr=1e-3,abc"])


def test_sweeps_up_to_the_limit_are_checked_job_by_job_and_larger_ones_value_by_value():
    small = [["a=1", "a=2"], ["b=1", "b=2", "b=3"]]
    assert sorted(map(tuple, _jobs(small))) == sorted((a, b) for a in small[0] for b in small[1])
    large = [[f"s={i}" for i in range(CHECK_LIMIT + 1)], ["l=1", "l=2"], ["g=1", "g=2"]]
    jobs = list(_jobs(large))
    assert len(jobs) == 1 + CHECK_LIMIT + 1 + 1
    assert jobs[0] == ["s=0", "l=1", "g=1"] and ["s=0", "l=2", "g=1"] in jobs and ["s=0", "l=1", "g=2"] in jobs
    assert {j[0] for j in jobs} == set(large[0])  # every value once
    assert all(sum(v != f for v, f in zip(j, jobs[0], strict=True)) <= 1 for j in jobs)


# ---- stopping a sweep: Ctrl-C or SIGTERM ----------------------------------------------------------

LONG = ["total_steps=10000000", "eval.interval=200", "eval.episodes=1"]  # jobs that run until stopped


def stop_sweep(
    sweep_dir: Path, running: int, signum: int, whole_group: bool, *overrides: str, relative=False, when=None, env=None
):
    """Start `dqn train -m` in a session of its own; once `running` jobs have evaluated (best.pt), send
    `signum` to the whole process group (a terminal's Ctrl-C) or to the launching process only (`kill`).
    `relative`: hydra.sweep.dir relative to the working dir, and each job's cwd its run dir (chdir).
    `when`: a test of the launching process instead, signalled once it passes."""
    where = (
        [f"hydra.sweep.dir={sweep_dir.name}", "hydra.job.chdir=true"] if relative else [f"hydra.sweep.dir={sweep_dir}"]
    )
    cmd = [*DQN, "train", "-m", *TINY, *LONG, *where, *overrides]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    proc = subprocess.Popen(
        cmd, cwd=sweep_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while len(list(sweep_dir.glob("*/checkpoints/best.pt"))) < running or (when and not when(proc)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        (os.killpg if whole_group else os.kill)(proc.pid, signum)
        out, _ = proc.communicate(timeout=120)
    finally:  # a sweep that ignored the signal must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def job_statuses(sweep_dir: Path) -> list[str]:
    return [json.loads((sweep_dir / str(i) / "job_result.json").read_text())["status"] for i in range(4)]


def assert_stopped_with_checkpoint(run_dir: Path) -> None:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["status"] == "stopped" and state["counters"]["step"] > 0
    assert (run_dir / "checkpoints" / state["replay"]).is_file()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no write was cut off


@pytest.mark.parametrize(
    "signum, whole_group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c-to-group", "kill-launcher"]
)
def test_a_stopped_joblib_sweep_checkpoints_every_running_job_and_starts_no_other(tmp_path, signum, whole_group):
    """Before: the launcher's KeyboardInterrupt made joblib kill its workers mid-checkpoint (a temp file,
    no last.pt) and the stopped job's error did not unpickle (a traceback). Signalled alone (`kill`), the
    launcher passes the stop on through SWEEP_DIR/.stop."""
    sweep = tmp_path / "sweep"
    launcher = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    # (killing the launcher alone also runs the jobs in their run dirs, the sweep dir given relative: the jobs
    # must still find the stop file)
    code, out = stop_sweep(sweep, 2, signum, whole_group, "seed=0,1,2,3", *launcher, relative=not whole_group)
    assert code == 128 + signum, out
    assert "Traceback" not in out and "Error executing job" not in out, out
    name = signal.Signals(signum).name
    assert f"sweep stopped by {name}; its 4 jobs: 2 stopped, 2 not started." in out
    for job in (0, 1):
        assert f"  dqn train resume={sweep / str(job)}" in out
        assert_stopped_with_checkpoint(sweep / str(job))
    assert job_statuses(sweep) == ["STOPPED", "STOPPED", "NOT_STARTED", "NOT_STARTED"]
    assert [row["status"] for row in read_summary(sweep)] == job_statuses(sweep)
    assert not (sweep / "2" / "checkpoints").exists()  # a job not started trains nothing
    assert not (sweep / ".stop").exists()  # it told every job; the sweep dir keeps no trace of it


def test_ctrl_c_while_joblib_jobs_start_stops_the_sweep_cleanly(tmp_path):
    """A worker takes Ctrl-C outside the training loop too (importing torch, building the run): it raised
    KeyboardInterrupt there, which broke joblib's pool and aborted the whole sweep ("aborted by SIGINT")."""
    sweep = tmp_path / "sweep"
    launcher = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

    def both_workers_in_dqn_code(proc) -> bool:  # (a worker still starting up takes Ctrl-C as an abort)
        workers = child_pids(proc.pid, "popen_loky")
        return len(workers) == 2 and all(catches_signal(pid, signal.SIGTERM) for pid in workers)

    code, out = stop_sweep(sweep, 0, signal.SIGINT, True, "seed=0,1,2,3", *launcher, when=both_workers_in_dqn_code)
    assert code == 130 and "Traceback" not in out and "aborted" not in out, out
    statuses = job_statuses(sweep)
    assert set(statuses) <= {"STOPPED", "NOT_STARTED"} and statuses[2:] == ["NOT_STARTED"] * 2, out
    for job, status in enumerate(statuses):
        if status == "STOPPED":  # (a job that reached its training loop all the same)
            assert_stopped_with_checkpoint(sweep / str(job))


def test_ctrl_c_to_a_sweep_of_the_basic_launcher_stops_its_job_and_skips_the_rest(tmp_path):
    """The basic launcher runs the jobs in the sweep's own process, one after the other."""
    sweep = tmp_path / "sweep"
    code, out = stop_sweep(sweep, 1, signal.SIGINT, True, "seed=0,1,2,3")
    assert code == 130 and "Traceback" not in out, out
    assert "its 4 jobs: 1 stopped, 3 not started." in out
    assert_stopped_with_checkpoint(sweep / "0")
    assert job_statuses(sweep) == ["STOPPED", "NOT_STARTED", "NOT_STARTED", "NOT_STARTED"]
    # the printed command resumes the stopped job in place
    proc = subprocess.run([*DQN, "train", f"resume={sweep / '0'}", "total_steps=2000"], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["status"] == "done"


def test_a_new_sweep_in_the_same_dir_is_not_stopped_by_the_last_ones_stop_file(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / ".stop").write_text("SIGINT\n")
    check_ok(multirun(sweep, "seed=0"))
    assert json.loads((sweep / "0" / "job_result.json").read_text())["status"] == "COMPLETED"
    assert not (sweep / ".stop").exists()


def test_a_failed_job_ends_the_sweep_with_its_message_and_the_summary_written(tmp_path, monkeypatch):
    """Hydra stops a sweep at a failed job before its own end-of-sweep callback: dqn writes the summary."""
    from dqn_cli import signals
    from dqn_cli.sweep import end_of_sweep

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", ["seed=0"], {"job": 0, "status": "COMPLETED", "return": 9.0, "wall_time_s": 1.0})
    _fake_run(sweep / "1", ["seed=1"], {"job": 1, "status": "FAILED", "return": None, "wall_time_s": 1.0})
    monkeypatch.setattr(signals, "ACTIVE_SWEEP", signals.SweepStop(sweep))
    error = end_of_sweep(UserError("training diverged at step 100"))
    assert type(error) is UserError and signals.ACTIVE_SWEEP is None
    assert str(error) == (
        "job 1 (seed=1) failed: training diverged at step 100\n"
        f"1 of 2 jobs failed; the sweep's jobs, each with its status: {sweep / SUMMARY}"
    )
    assert [row["status"] for row in read_summary(sweep)] == ["COMPLETED", "FAILED"]
    assert end_of_sweep(None) is None  # a single run (no sweep): nothing to add

    one = tmp_path / "one"  # a sweep of one job: nothing varies, so its overrides are named
    _fake_run(one / "0", ["seed=3", "agent.lr=1"], {"job": 0, "status": "FAILED", "return": None, "wall_time_s": 1.0})
    monkeypatch.setattr(signals, "ACTIVE_SWEEP", signals.SweepStop(one))
    assert str(end_of_sweep(UserError("diverged"))).startswith("job 0 (seed=3 agent.lr=1) failed: diverged\n1 of 1")


def test_a_stopped_sweep_of_several_batches_counts_the_jobs_it_never_launched(tmp_path, monkeypatch):
    """hydra.sweeper.max_batch_size (or Optuna's n_jobs) launches the jobs batch by batch: once stopped,
    the later batches never get a run dir, and the report said nothing of them."""
    from dqn_cli import signals
    from dqn_cli.sweep import end_of_sweep, planned_jobs

    def hydra(sweeper: dict, task: list[str]):
        return OmegaConf.create({"hydra": {"sweeper": sweeper, "overrides": {"task": task}}})

    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": 2}
    assert planned_jobs(hydra(basic, ["seed=0,1,2,3", "agent.lr=1e-3,5e-4", "env=cartpole"])) == 8
    assert planned_jobs(hydra(basic | {"params": {"seed": "range(3)"}}, [])) == 3
    optuna = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": 20}
    assert planned_jobs(hydra(optuna, [])) == 20
    sweep = tmp_path / "sweep"
    for job in (0, 1):
        result = {"job": job, "status": "STOPPED", "return": None, "wall_time_s": 1.0}
        _fake_run(sweep / str(job), [f"seed={job}"], result)
    stop = signals.SweepStop(sweep)
    stop.signum, stop.planned = signal.SIGINT, 4
    monkeypatch.setattr(signals, "ACTIVE_SWEEP", stop)
    from dqn_cli.signals import TrainingStoppedError

    report = str(end_of_sweep(TrainingStoppedError("stopped by SIGINT at step 9", signal.SIGINT)))
    assert report.startswith("sweep stopped by SIGINT; its 4 jobs: 2 stopped, 2 not launched.")
    assert "jobs not launched (later batches of the sweep) have no run dir" in report


@pytest.mark.parametrize("raised", ["stop", "crash"])
def test_a_stopped_sweep_reports_a_jobs_crash_beside_it_once(tmp_path, monkeypatch, raised):
    """A job that crashed while the sweep was being stopped: the report names its error and where its
    traceback is, whether the launcher raised a stopped job's error or the crash itself (then not twice)."""
    from dqn_cli import signals
    from dqn_cli.signals import TrainingStoppedError
    from dqn_cli.sweep import end_of_sweep

    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", ["seed=0"], {"job": 0, "status": "STOPPED", "return": None, "wall_time_s": 1.0})
    crash = {"job": 1, "status": "FAILED", "return": None, "wall_time_s": 1.0, "error": "RuntimeError: boom\nmore"}
    _fake_run(sweep / "1", ["seed=1"], crash | {"traceback": str(sweep / "1" / "train.log")})
    stop = signals.SweepStop(sweep)
    stop.signum = signal.SIGTERM
    monkeypatch.setattr(signals, "ACTIVE_SWEEP", stop)
    error = TrainingStoppedError("stopped", signal.SIGTERM) if raised == "stop" else RuntimeError("boom\nmore")
    report = end_of_sweep(error)
    assert isinstance(report, TrainingStoppedError) and report.exit_code == 143
    lines = str(report).splitlines()
    assert lines[:2] == [
        "sweep stopped by SIGTERM; its 2 jobs: 1 stopped, 1 failed.",
        f"job 1 failed: RuntimeError: boom (traceback: {sweep / '1' / 'train.log'})",
    ]
    assert not any(line.startswith("the launcher said") for line in lines), lines


# ---- Optuna ---------------------------------------------------------------------------------------


def test_optuna_search_writes_results_and_resumes_from_sqlite(tmp_path):
    optuna = pytest.importorskip("optuna")
    db = tmp_path / "search.db"
    search = ["hparams_search=cartpole_optuna", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.sampler.seed=0"]
    check_ok(multirun(tmp_path / "first", *search, "hydra.sweeper.n_trials=3"))

    results = OmegaConf.load(tmp_path / "first" / "optimization_results.yaml")
    # TINY's agent.batch_size=16 on the command line pins that searched key; the others are searched
    assert set(results.best_params) == {"agent.lr", "agent.target_update_interval", "agent.exploration_fraction"}
    rows = read_summary(tmp_path / "first")
    assert len(rows) == 3 and len(assert_run_dirs(tmp_path / "first", 3)) == 3
    assert {r["agent.batch_size"] for r in rows} == {"16"} and len({r["agent.lr"] for r in rows}) == 3
    assert results.best_value == pytest.approx(max(float(r["final_return"]) for r in rows))  # the train return

    check_ok(multirun(tmp_path / "second", *search, "hydra.sweeper.n_trials=1"))
    study = optuna.load_study(study_name="cartpole_dqn", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)


# ---- submitit (local executor) ---------------------------------------------------------------------


def test_submitit_local_multirun(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    check_ok(multirun(sweep_dir, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"))
    assert_run_dirs(sweep_dir, 2)
    assert [r["status"] for r in read_summary(sweep_dir)] == ["COMPLETED", "COMPLETED"]


# ---- Ray: a local cluster on 127.0.0.1 -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster on 127.0.0.1 (`ray start --head --block`), stopped afterwards; yields
    (address, env) where env lets a driver join it."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("the ray command is not installed next to this interpreter")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP = loopback, not the host's address
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # Ray's default auth, with a throwaway token (nothing in ~/.ray)
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    log_path = Path(temp_dir) / "ray_start.log"
    with open(log_path, "w") as log_file:
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
             "--object-store-memory=100000000", f"--temp-dir={temp_dir}"],
            env=os.environ | env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the session that start_new_session gave it
            head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_multirun_on_a_local_cluster(ray_cluster, tmp_path):
    address, env = ray_cluster
    sweep_dir = tmp_path / "sweep"
    # address: null in ray_cluster.yaml, so Ray reads RAY_ADDRESS
    proc = multirun(sweep_dir, "seed=0,1", "hydra/launcher=ray_cluster", env=env | {"RAY_ADDRESS": address})
    out = check_ok(proc)
    assert f"Connecting to existing Ray cluster at address: {address}" in out
    assert_run_dirs(sweep_dir, 2)
    assert [r["status"] for r in read_summary(sweep_dir)] == ["COMPLETED", "COMPLETED"]


def test_sigterm_to_a_ray_sweep_stops_its_jobs_with_checkpoints(ray_cluster, tmp_path):
    """ray.init sets a SIGTERM handler of its own (sys.exit), which replaced the sweep's: the launcher
    died (exit -6) and its jobs with it, no checkpoint. Ray's workers are not in the launcher's process
    group: they stop through the stop file."""
    address, env = ray_cluster
    sweep = tmp_path / "sweep"
    launcher = ("seed=0,1", "hydra/launcher=ray_cluster")
    code, out = stop_sweep(sweep, 2, signal.SIGTERM, False, *launcher, env=env | {"RAY_ADDRESS": address})
    assert code == 143 and "Traceback" not in out, out
    assert "sweep stopped by SIGTERM; its 2 jobs: 2 stopped." in out
    for job in (0, 1):
        assert_stopped_with_checkpoint(sweep / str(job))


def test_ray_auth_notice_is_filtered_but_other_ray_warnings_are_not(caplog):
    cfg = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_ray_launcher.RayLauncher"}}})
    QuietRayNotices().on_multirun_start(cfg)
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
        logger.info("Generated new authentication token and saved to /root/.ray/auth_token")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage().split(".")[0] for r in caplog.records] == [
        "Token authentication is disabled for this Ray cluster"
    ]

"""Sweep bookkeeping as Hydra callbacks: a per-job result file and the sweep's summary CSV.

`train.yaml` lists both callbacks under `hydra.callbacks`, so every launcher (basic, joblib, Ray,
submitit) and sweeper (basic, Optuna) gets them. Job-side hooks run wherever the job runs; the
summary is written by the process that started the sweep and reads the run dirs from disk, so on a
cluster the sweep dir must be on a shared filesystem (as it must be for the run dirs anyway).

Rewrite a summary by hand, e.g. after a sweep with failed jobs: `python -m dqn_cli.sweep SWEEP_DIR`.

Before any of that, `dqn train -m` checks the config of every job (`dqn_cli.config.check_command_line`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dqn_cli.errors import counted, first_line
from dqn_cli.layout import LAST

log = logging.getLogger(__name__)

JOB_RESULT = "job_result.json"
SUMMARY = "sweep_summary.csv"
METRICS = ["final_return", "best_return", "steps", "episodes", "updates", "wall_time_s"]
# a run dir without job_result.json: its status from last.pt's; "running" is INCOMPLETE (killed, or running still)
CHECKPOINT_STATUS = {"done": "COMPLETED", "stopped": "STOPPED"}
# said with every refusal of `python -m dqn_cli.sweep DIR`
SWEEP_DIR_HINT = (
    "a sweep dir is the multirun/DATE/TIME dir of a `dqn train -m` (its hydra.sweep.dir), holding one run dir "
    "per job (0/, 1/, ...)"
)


class SweepSummary(Callback):
    """Writes `job_result.json` (status, return value, wall time) into each run dir of a multirun,
    and `sweep_summary.csv` (one row per run: overrides, final/best eval return, steps, wall time)
    into `hydra.sweep.dir` once the sweep ends. Single runs are left alone."""

    def __init__(self, filename: str = SUMMARY):
        self.filename = filename
        self._start: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        from dqn_cli.errors import UsedRunDirError, UserError

        ok = job_return.status.name == "COMPLETED"
        value = job_return._return_value  # the property would re-raise a failed job's exception
        if isinstance(value, UsedRunDirError):  # the dir is an earlier run's: its record stays
            return
        crashed = isinstance(value, Exception) and not isinstance(value, UserError)
        run_dir = Path(config.hydra.runtime.output_dir)
        status = job_status(job_return.status.name, value)
        started = status != "NOT_STARTED"
        wall_time = round(time.perf_counter() - self._start, 3) if started and self._start is not None else None
        state = _last_checkpoint(run_dir) if started else None
        result = {
            "job": int(config.hydra.job.num),
            "status": status,
            "overrides": list(job_return.overrides or []),
            "return": float(value) if ok and isinstance(value, (int, float)) else None,
            "error": None if ok else f"{type(value).__name__}: {value}",
            "traceback": _log_traceback(value, run_dir) if crashed else None,
            # the step last.pt holds as the job ends: a later `dqn train resume=` moves last.pt past it
            "steps": state["counters"]["step"] if state is not None else None,
            "wall_time_s": wall_time,
        }
        (run_dir / JOB_RESULT).write_text(json.dumps(result, indent=2) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir, sweep_dir / self.filename)
        if rows:
            best = max(rows, key=lambda r: _num(r["final_return"]))
            log.info(
                f"sweep summary: {counted(len(rows), 'run')} in {sweep_dir / self.filename}; best final return "
                f"{best['final_return']} ({' '.join(best['overrides']) or 'no overrides'})"
            )


def _log_traceback(error: Exception, run_dir: Path) -> str | None:
    """Write a crashed job's traceback into its log file in `run_dir` (train.log) only: Hydra re-raises the
    error in the launcher only while the sweep goes on, and a joblib or Ray job's traceback does not travel
    back with it (nor, once the sweep is stopped, is it raised at all). Returns the file's path, or None."""
    files = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == run_dir.resolve()
    ]
    if not files:
        return None
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "the job crashed:", (), None)
    record.exc_info = (type(error), error, error.__traceback__)
    for handler in files:
        handler.handle(record)
    return files[0].baseFilename


def job_status(hydra_status: str, value: Any) -> str:
    """Hydra's COMPLETED / FAILED, told apart from a stop: STOPPED (a signal or the sweep's stop; the
    run dir's last.pt resumes it) and NOT_STARTED (due after the sweep was stopped)."""
    from dqn_cli.signals import NotStartedError, TrainingStoppedError

    if isinstance(value, NotStartedError):
        return "NOT_STARTED"
    return "STOPPED" if isinstance(value, TrainingStoppedError) else hydra_status


class SweepStopper(Callback):
    """In the process that launches the sweep: the sweep's first SIGINT/SIGTERM stops its jobs cleanly
    (`dqn_cli.signals.SweepStop`); `dqn_cli.cli` reports how the sweep ended (`end_of_sweep`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dqn_cli import signals

        if str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("RayLauncher"):
            # start Ray now, as the launcher would: ray.init sets a SIGTERM handler of its own (sys.exit),
            # which must come before ours, not replace it
            from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

            try:
                start_ray(config.hydra.launcher.ray.init)
            except Exception:  # noqa: BLE001 - the launcher tries again and raises it; Hydra would only warn here
                pass
        signals.ACTIVE_SWEEP = signals.SweepStop(Path(config.hydra.sweep.dir)).start()
        signals.ACTIVE_SWEEP.planned = planned_jobs(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dqn_cli import signals

        if signals.ACTIVE_SWEEP is not None:
            signals.ACTIVE_SWEEP.close()  # (kept: the CLI reads how the sweep ended)


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will launch: Optuna's n_trials, or the basic sweeper's combinations of the
    swept values (a range, a comma list); None where that is not known."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dqn_cli.config import swept_overrides

    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if target.endswith("OptunaSweeper"):
        return int(sweeper.n_trials)
    if not target.endswith("BasicSweeper"):
        return None
    try:
        parser = OverridesParser.create()
        given = parser.parse_overrides(list(config.hydra.overrides.task))
        swept = swept_overrides(parser, given, sweeper.get("params") or {})
        return math.prod(len(list(o.sweep_string_iterator())) for o in swept)
    except Exception:  # noqa: BLE001 (an estimate for a message: never a reason to fail the sweep)
        return None


def end_of_sweep(error: BaseException | None) -> BaseException | None:
    """How `dqn train -m` ends when its sweep was stopped or a job failed: the error to report, with the
    sweep's summary written and, for a stop, every stopped job's resume command; None when this process
    ran no sweep, or one that ended without either. `error` is what the sweep raised, if anything."""
    from dqn_cli import signals
    from dqn_cli.errors import UserError
    from dqn_cli.signals import TrainingStoppedError

    sweep, signals.ACTIVE_SWEEP = signals.ACTIVE_SWEEP, None
    if sweep is None:
        return error
    sweep.close()
    if error is None and sweep.signum is None:
        return None
    if not isinstance(error, (UserError, type(None))) and sweep.signum is None:
        return error  # (a crash: its traceback)
    path = sweep.sweep_dir / SUMMARY
    with signals.ignored():  # a second Ctrl-C now would only cut the summary short, with a traceback
        try:  # (written already when the sweep returned; not when it raised)
            rows = write_summary(sweep.sweep_dir, path) if error is not None else collect_runs(sweep.sweep_dir)
        except OSError as e:
            rows, path = collect_runs(sweep.sweep_dir), f"not written ({e.strerror or e})"
    signum = sweep.signum or getattr(error, "signum", None)
    if isinstance(error, UserError) and not isinstance(error, TrainingStoppedError):
        failed = [r for r in rows if r["status"] == "FAILED"]
        said = f"{type(error).__name__}: {error}"
        job = next((r for r in failed if r.get("error") == said), failed[0] if failed else None)
        swept = _varying(rows, job) if job and len(rows) > 1 else (job or {}).get("overrides", [])
        which = f"job {job['job']} ({' '.join(swept) or 'no overrides'}) failed: " if job else ""
        count = f"{len(failed)} of {counted(len(rows), 'job')} failed; " if failed else ""
        return type(error)(f"{which}{error}\n{count}the sweep's jobs, each with its status: {path}")
    if signum is None:  # (a job stopped by a signal of its own, not the sweep)
        signum = error.signum
    counts: dict[str, int] = {}
    for status in (row["status"] or "ENDED_WITHOUT_A_CHECKPOINT" for row in rows):
        counts[status] = counts.get(status, 0) + 1
    unlaunched = (sweep.planned or 0) - len(rows)  # later batches (max_batch_size, Optuna's n_jobs) never began
    if unlaunched > 0:
        counts["NOT_LAUNCHED"] = unlaunched
    said = ", ".join(f"{n} {s.lower().replace('_', ' ')}" for s, n in counts.items())
    total = len(rows) + max(unlaunched, 0)
    name = signal.Signals(signum).name
    how = f"stopped by {name}" if sweep.signum is not None else f"ended after its batch: a job was stopped by {name}"
    lines = [f"sweep {how}; its {counted(total, 'job')}: {said or 'none begun'}."]
    failed = [r for r in rows if r["status"] == "FAILED"]
    for row in failed:  # a real failure beside the stop: its error, and where its traceback went
        where = f" (traceback: {row['traceback']})" if row.get("traceback") else ""
        lines.append(f"job {row['job']} failed: {first_line(row.get('error') or 'no error recorded')}{where}")
    if not isinstance(error, (UserError, type(None))):  # the launcher's own complaint, e.g. of a killed job
        said = f"{type(error).__name__}: {first_line(str(error))}"
        if said not in {first_line(r.get("error") or "") for r in failed}:  # (not a failed job's, again)
            lines.append(f"the launcher said: {said}")
    stopped = [r["run_dir"] for r in rows if r["status"] == "STOPPED"]
    if stopped:
        lines.append("resume each stopped job in its run dir with:")
        lines += [f"  dqn train resume={shlex.quote(d)}" for d in stopped]
    if counts.get("NOT_STARTED"):
        lines.append("jobs not started: run their overrides (in the summary) as a new sweep.")
    if unlaunched > 0:
        lines.append("jobs not launched (later batches of the sweep) have no run dir: run them as a new sweep.")
    lines.append(f"summary: {path}")
    return TrainingStoppedError("\n".join(lines), signum)


class QuietRayNotices(Callback):
    """Hides Ray's start-up notice that token authentication is on (and where the token was saved):
    it is Ray's default, said on every local start. Ray's warning that auth is *off* still shows."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "ray" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")).lower():
            # a logger fetched by name before Ray imports is the one Ray's module then uses
            logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
            if _not_auth_notice not in logger.filters:
                logger.addFilter(_not_auth_notice)


def _not_auth_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(
        ("Token authentication is enabled for this Ray cluster", "Generated new authentication token")
    )


# ---- the summary -------------------------------------------------------------------------------


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per run dir under `sweep_dir` (any depth, found by `.hydra/overrides.yaml`), sorted
    by job number: job, status, overrides, final/best eval return, steps, episodes, updates, wall
    time, run_dir. Values come from `job_result.json` and `checkpoints/last.pt`; missing ones are ''.
    run_dir is absolute and resolved, so the table reads the same whoever writes it: the callback (given
    `hydra.sweep.dir`) or `python -m dqn_cli.sweep` (given whatever path the user typed)."""
    rows = []
    for overrides_file in Path(sweep_dir).resolve().rglob(".hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent.resolve()
        overrides = read_overrides(overrides_file)
        if overrides is None:
            continue
        row: dict[str, Any] = {m: "" for m in METRICS}
        row.update(job="", status="", overrides=overrides, run_dir=str(run_dir))
        result = _read_job_result(run_dir / JOB_RESULT)
        if result is not None:
            row.update(job=result["job"], status=result["status"], wall_time_s=result["wall_time_s"] or "")
            row.update(error=result.get("error"), traceback=result.get("traceback"))
            if result["return"] is not None:
                row["final_return"] = result["return"]
        else:
            hydra_file = run_dir / ".hydra" / "hydra.yaml"
            if hydra_file.is_file():  # a single run's hydra.job.num is ??? (missing): no job number
                row["job"] = _read_yaml(hydra_file, "hydra.job.num")
        state = _last_checkpoint(run_dir)
        if state is not None:
            counters, evals = state.get("counters", {}), state.get("eval", {})
            row.update(steps=counters.get("step", ""), episodes=counters.get("episodes", ""))
            row.update(updates=counters.get("updates", ""))
            if result is not None and result.get("steps", row["steps"]) != row["steps"]:
                # `dqn train resume=RUN_DIR` went on after the job: last.pt tells how the run stands now
                row.update(status="", final_return="", wall_time_s="")
            if row["final_return"] == "" and evals.get("last") is not None:
                row["final_return"] = evals["last"]
            if evals.get("best") is not None and math.isfinite(evals["best"]):
                row["best_return"] = evals["best"]
            if not row["status"]:  # no job_result.json: a job killed (or still running) says so in last.pt
                row["status"] = CHECKPOINT_STATUS.get(state.get("status"), "INCOMPLETE")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["job"] if isinstance(r["job"], int) else math.inf, r["run_dir"]))


UNREADABLE = (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, OmegaConfBaseException)


def read_overrides(path: Path) -> list[str] | None:
    """A run dir's `.hydra/overrides.yaml` (a list of `key=value` strings), or None with a warning when it
    cannot be read (cut off, edited by hand): that run dir is left out, the others still summarised."""
    try:
        overrides = OmegaConf.load(path)
        if not isinstance(overrides, ListConfig):
            raise ValueError(f"a {type(overrides).__name__} where a list of overrides belongs")
        return [str(o) for o in overrides]
    except UNREADABLE as e:
        log.warning(f"skipping {path.parent.parent}: {path} cannot be read ({_first_line(e)})")
        return None


def _read_job_result(path: Path) -> dict[str, Any] | None:
    """job_result.json, or None (with a warning when one is there but cannot be read: the row then
    comes from the checkpoint, as for a job that wrote none)."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
        if not isinstance(result, dict) or not {"job", "status", "return", "wall_time_s"} <= result.keys():
            raise ValueError("not a job result: it lacks job, status, return or wall_time_s")
        return result
    except UNREADABLE as e:
        log.warning(f"{path} cannot be read ({_first_line(e)}); using the run's checkpoint instead")
        return None


def _read_yaml(path: Path, key: str) -> Any:
    try:
        return OmegaConf.select(OmegaConf.load(path), key, default="")
    except UNREADABLE as e:
        log.warning(f"{path} cannot be read ({_first_line(e)})")
        return ""


def _first_line(e: BaseException) -> str:
    return first_line(str(e)) or type(e).__name__


def write_summary(sweep_dir: str | Path, path: str | Path) -> list[dict[str, Any]]:
    """Write the CSV of `collect_runs(sweep_dir)` to `path` (see `write_rows`). Returns the rows; with
    none, it warns and writes nothing."""
    rows = collect_runs(sweep_dir)
    if not rows:
        log.warning(f"sweep summary: no run dirs under {sweep_dir}")
        return rows
    write_rows(rows, path)
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write `rows` (of `collect_runs`) as a CSV: columns job, status, one column per override key
    (`seed`, `agent.lr`, ...), then the metrics and run_dir."""
    keys: list[str] = []
    for row in rows:
        for key in _override_values(row["overrides"]):
            if key not in keys:
                keys.append(key)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")  # (the csv module's default is \r\n)
        writer.writerow(["job", "status", *keys, *METRICS, "run_dir"])
        for row in rows:
            values = _override_values(row["overrides"])
            writer.writerow(
                [
                    row["job"],
                    row["status"],
                    *(values.get(k, "") for k in keys),
                    *(row[m] for m in METRICS),
                    row["run_dir"],
                ]
            )


def _varying(rows: list[dict[str, Any]], row: dict[str, Any]) -> list[str]:
    """`row`'s overrides whose values differ between the rows: what tells its job apart (seed=3 agent.lr=1e-3)."""
    values = [_override_values(r["overrides"]) for r in rows]
    return [o for o in row["overrides"] if len({v.get(o.partition("=")[0].lstrip("+~")) for v in values}) > 1]


def _override_values(overrides: list[str]) -> dict[str, str]:
    """`["seed=1", "+x.y=2", "~z"]` -> {"seed": "1", "x.y": "2", "z": "<deleted>"}."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        out[key.lstrip("+~")] = value if sep else "<deleted>"
    return out


def _last_checkpoint(run_dir: Path) -> dict | None:
    path = run_dir / LAST
    if not path.is_file():
        return None
    from dqn_cli.checkpoint import load_checkpoint
    from dqn_cli.errors import UserError

    try:
        return load_checkpoint(path)
    except (UserError, OSError) as e:  # (OSError: a file that cannot be opened, e.g. its permissions)
        log.warning(f"sweep summary: skipping {path}: {e}")
        return None


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else -math.inf


def not_a_sweep_dir(path: Path) -> str | None:
    """Why `path` is not a dir to summarise, or None. A dir holding `.hydra/hydra.yaml` is a run dir:
    a single run's (`dqn train` without -m: hydra.mode is RUN) or one job's of a sweep (then the
    message names the sweep dir to give instead, the job's `hydra.sweep.dir`)."""
    if not path.exists():
        return f"{path} does not exist; {SWEEP_DIR_HINT}."
    if not path.is_dir():
        return f"{path} is a file, not a directory; {SWEEP_DIR_HINT}."
    hydra_file = path / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return None
    hydra = OmegaConf.load(hydra_file)
    if OmegaConf.select(hydra, "hydra.mode", default=None) != RunMode.MULTIRUN.name:
        return f"{path} is the run dir of a single run (`dqn train` without -m), not a sweep dir; {SWEEP_DIR_HINT}."
    sweep_dir = OmegaConf.select(hydra, "hydra.sweep.dir", default=None, throw_on_resolution_failure=False)
    if not (isinstance(sweep_dir, str) and path.resolve().is_relative_to(Path(sweep_dir).resolve())):
        sweep_dir = path.resolve().parent  # not above the run dir (relative, or moved since): where it usually is
    return (
        f"{path} is the run dir of job {OmegaConf.select(hydra, 'hydra.job.num', default='?')} of a sweep, not the "
        f"sweep dir; {SWEEP_DIR_HINT}. Summarise this sweep with: python -m dqn_cli.sweep {sweep_dir}"
    )


def _mixed_origins(rows: list[dict[str, Any]], root: Path) -> str | None:
    """A warning when the run dirs under `root` (e.g. `multirun/` or `outputs/`) come from more than one sweep
    or from sweeps and single runs, else None. A job's sweep dir is the dir above it holding Hydra's
    `multirun.yaml`, else (Optuna writes none) its parent."""
    top, sweeps, singles = root.resolve(), set(), 0
    for row in rows:
        run_dir = Path(row["run_dir"])
        hydra_file = run_dir / ".hydra" / "hydra.yaml"
        mode = _read_yaml(hydra_file, "hydra.mode") if hydra_file.is_file() else None
        if mode == RunMode.RUN.name:
            singles += 1
        elif mode == RunMode.MULTIRUN.name:
            marked = (d for d in run_dir.parents if d.is_relative_to(top) and (d / "multirun.yaml").is_file())
            sweeps.add(next(marked, run_dir.parent))
    if len(sweeps) + (singles > 0) < 2:
        return None
    parts = [counted(len(sweeps), "sweep")] if sweeps else []
    parts += [counted(singles, "single run")] if singles else []
    return (
        f"{root} holds the run dirs of {' and '.join(parts)}; they share this one table"
        f"{', where job numbers repeat' if len(sweeps) > 1 else ''} (run_dir tells them apart). "
        f"One sweep's table: python -m dqn_cli.sweep {min(sweeps)}"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m dqn_cli.sweep SWEEP_DIR`: write SWEEP_DIR/sweep_summary.csv from the run dirs there.
    Exit 2 for a path that is no sweep dir, 1 when there is no run dir yet or the CSV cannot be written."""
    argv = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m dqn_cli.sweep SWEEP_DIR   (writes SWEEP_DIR/sweep_summary.csv)"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    problem = not_a_sweep_dir(sweep_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    rows = collect_runs(sweep_dir)
    if not rows:
        print(
            f"error: no run dirs under {sweep_dir} (a run dir holds .hydra/overrides.yaml; a sweep's jobs "
            f"write it when they start), so no {SUMMARY} was written; {SWEEP_DIR_HINT}.",
            file=sys.stderr,
        )
        return 1
    mixed = _mixed_origins(rows, sweep_dir)
    if mixed:
        print(f"warning: {mixed}", file=sys.stderr)
    try:
        write_rows(rows, sweep_dir / SUMMARY)
    except OSError as e:
        print(f"error: could not write {sweep_dir / SUMMARY} ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"{counted(len(rows), 'run')} -> {sweep_dir / SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

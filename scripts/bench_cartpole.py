"""CartPole-v1 benchmark: `dqn train env=cartpole` against Stable-Baselines3 DQN, side by side.

    python scripts/bench_cartpole.py               # 10 seeds (what `make bench` runs)
    python scripts/bench_cartpole.py --seeds 2 --out /tmp/bench
    python scripts/bench_cartpole.py --quick       # plumbing check: 2 seeds, short runs, no verdict

For each seed, ours and then SB3 for the same seed (so machine noise hits both alike):

  ours  timed:   the whole `dqn train env=cartpole seed=S hydra.run.dir=OUT/dqn/seedS log.progress=false`
                 process (imports, training, its own evals, checkpoints, TensorBoard files)
        untimed: `dqn eval checkpoint=OUT/dqn/seedS/checkpoints/last.pt episodes=20 output=...`
  SB3   timed:   the whole `python scripts/sb3_cartpole.py train` process: SB3 DQN with
                 rl-baselines3-zoo's CartPole-v1 hyperparameters for their 50k steps, model saved
        untimed: `python scripts/sb3_cartpole.py eval`: 20 greedy (deterministic) episodes

Wall times come from time.perf_counter around subprocess.run; CPU seconds (user + sys of the child)
are recorded too, as they are less sensitive to other load on the machine. The goals (from the
issue): ours solves (greedy mean return >= 475 over 20 episodes of the final checkpoint) on at least
9 of 10 seeds, and median wall(ours) <= 1/3 median wall(SB3). The verdict is printed; the exit code
is 0 whatever it is (this is a report), and non-zero only when the script itself cannot run.
Results go to OUT/results.md and OUT/results.json beside the run dirs and logs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SB3_SCRIPT = Path(__file__).resolve().parent / "sb3_cartpole.py"
SOLVED_RETURN = 475.0
EVAL_EPISODES = 20
MIN_SOLVED_FRACTION = 0.9  # 9 of 10 seeds
MAX_WALL_RATIO = 1 / 3
QUICK_STEPS = 2000  # --quick: steps per run for both sides
QUICK_EVAL_EPISODES = 2
TIMEOUT_S = 1800  # default limit of one training process; its wall then counts as a lower bound


def timed_run(cmd: list[str], log_path: Path, timeout: float = TIMEOUT_S) -> dict:
    """Run `cmd` with stdout/stderr into `log_path`; return wall and CPU seconds and the exit code
    ("timeout" when it was killed after `timeout` seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rc": rc, "log": str(log_path)}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tool(name: str) -> str:
    """A console script of this venv (works under `make bench` without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_ours(seed: int, out: Path, quick: bool, timeout: float) -> dict:
    run_dir = out / "dqn" / f"seed{seed}"
    cmd = [tool("dqn"), "train", "env=cartpole", f"seed={seed}", f"hydra.run.dir={run_dir}", "log.progress=false"]
    if quick:
        cmd += [f"total_steps={QUICK_STEPS}"]
    checkpoint = run_dir / "checkpoints" / "last.pt"
    eval_json = out / "dqn" / f"seed{seed}_eval.json"
    for stale in (checkpoint, eval_json):  # from an earlier bench into the same --out
        stale.unlink(missing_ok=True)
    result = timed_run(cmd, out / "logs" / f"dqn_train_seed{seed}.log", timeout)
    if result["rc"] == 0 and checkpoint.exists():
        episodes = QUICK_EVAL_EPISODES if quick else EVAL_EPISODES
        cmd = [tool("dqn"), "eval", f"checkpoint={checkpoint}", f"episodes={episodes}", f"output={eval_json}"]
        timed_run(cmd, out / "logs" / f"dqn_eval_seed{seed}.log")
    evaluation = read_json(eval_json) or {}
    result["eval"] = evaluation.get("mean_return")
    result["steps"] = evaluation.get("step")
    return result


def run_sb3(seed: int, out: Path, quick: bool, threads: int | None, timeout: float) -> dict:
    run_dir = out / "sb3" / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    model = run_dir / "model.zip"
    cmd = [sys.executable, str(SB3_SCRIPT), "train", "--seed", str(seed), "--model", str(model)]
    if quick:
        cmd += ["--timesteps", str(QUICK_STEPS)]
    if threads is not None:
        cmd += ["--torch-threads", str(threads)]
    eval_json = run_dir / "eval.json"
    for stale in (model, model.with_suffix(".json"), eval_json):  # from an earlier bench into the same --out
        stale.unlink(missing_ok=True)
    result = timed_run(cmd, out / "logs" / f"sb3_train_seed{seed}.log", timeout)
    if result["rc"] == 0 and model.exists():
        episodes = QUICK_EVAL_EPISODES if quick else EVAL_EPISODES
        cmd = [sys.executable, str(SB3_SCRIPT), "eval", "--model", str(model), "--episodes", str(episodes)]
        timed_run(cmd + ["--output", str(eval_json)], out / "logs" / f"sb3_eval_seed{seed}.log")
    train_info = read_json(model.with_suffix(".json")) or {}
    result["eval"] = (read_json(eval_json) or {}).get("mean_return")
    result["steps"] = train_info.get("timesteps")
    result["torch_threads"] = train_info.get("torch_threads")
    result["torch_interop_threads"] = train_info.get("torch_interop_threads")
    return result


# ---- reporting ---------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def wall_cell(run: dict) -> str:
    """A run's wall seconds; a timed-out run's is a lower bound."""
    return ("≥" if run["rc"] == "timeout" else "") + fmt(run["wall_s"])


def summarise(rows: list[dict], side: str) -> dict:
    """Counts and medians of one side. Crashed runs are left out of the medians (and count as not
    solved); timed-out runs stay in with their wall so far, which makes the median a lower bound."""
    runs = [r[side] for r in rows if side in r]
    timed = [r for r in runs if r["rc"] in (0, "timeout")]
    walls = [r["wall_s"] for r in timed]
    cpus = [r["cpu_s"] for r in timed]
    return {
        "runs": len(runs),
        "failed": sum(r["rc"] not in (0, "timeout") for r in runs),
        "timeouts": sum(r["rc"] == "timeout" for r in runs),
        "solved": sum(r["eval"] is not None and r["eval"] >= SOLVED_RETURN for r in runs),
        "median_wall_s": statistics.median(walls) if walls else None,
        "median_cpu_s": statistics.median(cpus) if cpus else None,
    }


def verdict(summary: dict, with_sb3: bool, quick: bool) -> dict:
    ours = summary["ours"]
    need = -(-ours["runs"] * MIN_SOLVED_FRACTION // 1)  # ceil: 9 of 10
    solved_ok = ours["runs"] > 0 and ours["solved"] >= need
    result = {
        "eval_episodes": QUICK_EVAL_EPISODES if quick else EVAL_EPISODES,
        "solved_needed": int(need),
        "solved_pass": solved_ok,
        "ratio": None,
        "ratio_pass": None,
    }
    if with_sb3 and ours["median_wall_s"] and summary["sb3"]["median_wall_s"]:
        ratio = ours["median_wall_s"] / summary["sb3"]["median_wall_s"]
        result.update(ratio=ratio, ratio_pass=ratio <= MAX_WALL_RATIO)
    if quick:
        result["note"] = "quick mode: short runs that test the plumbing, not a benchmark"
    return result


def markdown(rows: list[dict], summary: dict, judged: dict, with_sb3: bool) -> str:
    head = "| seed | ours wall s | ours CPU s | ours steps | ours eval |"
    rule = "| ---: | ---: | ---: | ---: | ---: |"
    if with_sb3:
        head += " SB3 wall s | SB3 CPU s | SB3 eval |"
        rule += " ---: | ---: | ---: |"
    head += " load (1 min) |"
    rule += " ---: |"
    lines = [head, rule]
    for row in rows:
        o = row["ours"]
        line = f"| {row['seed']} | {wall_cell(o)} | {fmt(o['cpu_s'])} | {o['steps'] or 'n/a'} | {fmt(o['eval'])} |"
        if with_sb3:
            s = row["sb3"]
            line += f" {wall_cell(s)} | {fmt(s['cpu_s'])} | {fmt(s['eval'])} |"
        line += f" {row['loadavg_1m']:.1f} |"
        if o["rc"] != 0 or (with_sb3 and row["sb3"]["rc"] != 0):
            line += " (a run failed or timed out, see logs/)"
        lines.append(line)
    o = summary["ours"]
    tail = f"| **median / solved** | **{fmt(o['median_wall_s'])}** | {fmt(o['median_cpu_s'])} | |"
    tail += f" **{o['solved']}/{o['runs']}** |"
    if with_sb3:
        s = summary["sb3"]
        tail += f" **{fmt(s['median_wall_s'])}** | {fmt(s['median_cpu_s'])} | **{s['solved']}/{s['runs']}** |"
    tail += " |"
    lines.append(tail)
    lines.append("")
    lines += verdict_lines(summary, judged, with_sb3)
    return "\n".join(lines) + "\n"


def verdict_lines(summary: dict, judged: dict, with_sb3: bool) -> list[str]:
    o = summary["ours"]
    lines = [
        f"- solved (greedy mean >= {SOLVED_RETURN:g} over {judged['eval_episodes']} episodes): "
        + f"ours {o['solved']}/{o['runs']}"
        + (f", SB3 {summary['sb3']['solved']}/{summary['sb3']['runs']}" if with_sb3 else "")
        + f"; goal >= {judged['solved_needed']}/{o['runs']}: **{'PASS' if judged['solved_pass'] else 'FAIL'}**"
    ]
    if with_sb3:
        if judged["ratio"] is None:
            lines.append("- wall-time ratio: n/a (a side has no successful run): **FAIL**")
        else:
            lines.append(
                f"- median wall: ours {fmt(o['median_wall_s'])} s, SB3 {fmt(summary['sb3']['median_wall_s'])} s; "
                f"ratio ours/SB3 = {judged['ratio']:.3f} (goal <= {MAX_WALL_RATIO:.3f}): "
                f"**{'PASS' if judged['ratio_pass'] else 'FAIL'}**"
            )
    else:
        lines.append("- wall-time ratio: not measured (--skip-sb3)")
    timeouts = sum(side["timeouts"] for side in summary.values())
    if timeouts:
        lines.append(
            f"- {timeouts} run(s) hit the time limit: their wall so far (marked ≥) is in the medians, "
            "so those medians are lower bounds"
        )
    if judged.get("note"):
        lines.append(f"- {judged['note']}")
    return lines


def machine_info(sb3_threads: int | None) -> dict:
    import torch

    try:
        import stable_baselines3

        sb3_version = stable_baselines3.__version__
    except ImportError:
        sb3_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dqn_cli", "configs"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit += " (dqn_cli/ or configs/ modified)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "date": datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": sb3_version,
        "sb3_torch_threads_setting": "SB3 default (torch's own)" if sb3_threads is None else sb3_threads,
        "loadavg_start": os.getloadavg(),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CartPole-v1: dqn_cli's env=cartpole preset vs Stable-Baselines3 DQN (rl-zoo hyperparameters)."
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 10, or 2 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0, help="start the seeds here (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="results dir (default: a fresh dir under /tmp)")
    parser.add_argument("--skip-sb3", action="store_true", help="run only ours (no ratio)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"plumbing check: {QUICK_STEPS}-step runs, {QUICK_EVAL_EPISODES} eval episodes",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S,
        help=f"seconds before a training process is killed (default {TIMEOUT_S}); its wall is then a lower bound",
    )
    parser.add_argument(
        "--sb3-threads", type=int, default=None, help="torch threads for SB3 (default: SB3's default, torch's own)"
    )
    args = parser.parse_args(argv)
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else 10)
    if n_seeds < 1:
        parser.error("--seeds must be at least 1")
    with_sb3 = not args.skip_sb3
    if with_sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print(
                "bench_cartpole: stable-baselines3 is not installed; run `make install-bench` "
                '(pip install -e ".[bench]") or pass --skip-sb3',
                file=sys.stderr,
            )
            return 2
    if args.out is None:
        base = Path(tempfile.gettempdir()) / "dqn_bench_cartpole"
        base.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=datetime.now().strftime("%Y%m%d-%H%M%S-"), dir=base))
    else:
        out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)

    info = machine_info(args.sb3_threads)
    preset = ROOT / "configs" / "env" / "cartpole.yaml"
    if preset.exists():  # the preset this run measured (the composed config is in each run dir's .hydra/)
        (out / "cartpole.yaml").write_bytes(preset.read_bytes())
        info["preset_sha256"] = hashlib.sha256(preset.read_bytes()).hexdigest()[:12]
    command = " ".join(["python", "scripts/bench_cartpole.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"bench_cartpole: {n_seeds} seeds, results in {out}")
    print(f"  {info['cpus']} CPUs ({info['cpu_model']}), torch {info['torch']}, SB3 {info['stable_baselines3']}")
    print(f"  load average at start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    seeds = range(args.first_seed, args.first_seed + n_seeds)
    rows: list[dict] = []
    header = f"{'seed':>4} | {'ours wall s':>11} {'ours eval':>9} | {'SB3 wall s':>10} {'SB3 eval':>8} | load"
    print(header)
    print("-" * len(header))
    for seed in seeds:
        row = {"seed": seed, "loadavg_1m": os.getloadavg()[0]}
        row["ours"] = run_ours(seed, out, args.quick, args.timeout)
        if with_sb3:
            row["sb3"] = run_sb3(seed, out, args.quick, args.sb3_threads, args.timeout)
        rows.append(row)
        sb3 = row.get("sb3", {"wall_s": None, "eval": None, "rc": None})
        print(
            f"{seed:>4} | {wall_cell(row['ours']):>11} {fmt(row['ours']['eval']):>9} | "
            f"{wall_cell(sb3):>10} {fmt(sb3['eval']):>8} | {row['loadavg_1m']:.2f}",
            flush=True,
        )
        for side in ("ours", "sb3"):
            if side in row and row[side]["rc"] != 0:
                print(f"       {side} run failed (rc {row[side]['rc']}): see {row[side]['log']}")

    summary = {"ours": summarise(rows, "ours")}
    if with_sb3:
        summary["sb3"] = summarise(rows, "sb3")
        threads = {r["sb3"]["torch_threads"] for r in rows} - {None}
        info["sb3_torch_threads"] = sorted(threads)
    info["loadavg_end"] = os.getloadavg()
    judged = verdict(summary, with_sb3, args.quick)
    table = markdown(rows, summary, judged, with_sb3)
    (out / "results.md").write_text(f"`{command}`\n\n{table}")
    results = {"command": command, "machine": info, "rows": rows, "summary": summary, "verdict": judged}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print()
    print(table, end="")
    overall = judged["solved_pass"] and (judged["ratio_pass"] if with_sb3 else True)
    label = "PASS" if overall else "FAIL"
    if args.quick:
        label += " (quick mode: not a benchmark)"
    elif not with_sb3:
        label += " (solve goal only; --skip-sb3)"
    print(f"\nOVERALL: {label}")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ablation of the DQN extensions: plain DQN vs each switch vs all of them, several seeds per env.

    python scripts/bench_ablation.py                        # CartPole + Acrobot, 6 variants, 5 seeds
    python scripts/bench_ablation.py --envs cartpole --seeds 2 --jobs 2

Each run is a `dqn train` subprocess with the env preset's settings and the four switches set to
the variant's (plain: all off, whatever the preset turns on), `eval.stop_on_solved=false` (every run
gets the whole budget, so the final return is the return after `total_steps`) and Acrobot's budget
lowered to `--acrobot-steps`. From each run's TensorBoard `eval/mean_return` it takes the steps to
solve (first evaluation >= env.solved_return) and the final return, and prints a Markdown table
(and writes it with the raw numbers as JSON).
With --runs-dir DIR, finished runs are kept in DIR and reused, so an interrupted benchmark picks up
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Every switch is set explicitly, off unless the variant turns it on: a preset may turn one on.
SWITCHES = {
    "double": ("agent.double=false", "agent.double=true"),
    "dueling": ("network.dueling=false", "network.dueling=true"),
    "n_step=3": ("agent.n_step=1", "agent.n_step=3"),
    "prioritized": ("buffer=uniform", "buffer=prioritized"),
}
VARIANTS: dict[str, list[str]] = {
    name: [on if name in (switch, "all") else off for switch, (off, on) in SWITCHES.items()]
    for name in ["plain", *SWITCHES, "all"]
}
SOLVED = {"cartpole": 475.0, "acrobot": -100.0}  # env.solved_return of the presets


def run_one(env: str, variant: str, seed: int, args: argparse.Namespace) -> dict:
    run_dir = Path(args.runs_dir) / env / variant.replace("=", "") / f"seed{seed}"
    cached = run_dir / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    overrides = [f"env={env}", f"seed={seed}", *VARIANTS[variant], "eval.stop_on_solved=false",
                 "checkpoint.interval=0", "log.progress=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    if env == "acrobot":
        overrides.append(f"total_steps={args.acrobot_steps}")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dqn_cli", "train", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{env}/{variant}/seed{seed} failed:\n{proc.stderr[-2000:]}")
    evals = eval_returns(run_dir)
    solved_at = next((step for step, ret in evals if ret >= SOLVED[env]), None)
    result = {"env": env, "variant": variant, "seed": seed, "evals": evals, "solved_at": solved_at,
              "final_return": evals[-1][1], "wall_s": wall}  # fmt: skip
    cached.write_text(json.dumps(result))
    print(
        f"{env:9s} {variant:12s} seed {seed}: solved at {solved_at}, final {evals[-1][1]:.1f}, {wall:.0f} s", flush=True
    )
    return result


def eval_returns(run_dir: Path) -> list[tuple[int, float]]:
    """(step, eval/mean_return) pairs from the run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(int(e.step), float(e.value)) for e in acc.Scalars("eval/mean_return")]


def table(results: list[dict], envs: list[str], variants: list[str], budgets: dict[str, int]) -> str:
    lines = [
        "| env | variant | solved | steps to solve, median (min–max) | final return, mean ± std | s/run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for env in envs:
        for variant in variants:
            rs = [r for r in results if r["env"] == env and r["variant"] == variant]
            if not rs:
                continue
            solved = sorted(r["solved_at"] for r in rs if r["solved_at"] is not None)
            # an unsolved run counts as "later than the budget" in the median
            median = statistics.median_low(solved + [float("inf")] * (len(rs) - len(solved)))
            steps = f"{median:,}" if median != float("inf") else f"> {budgets[env]:,}"
            if solved:
                steps += f" ({solved[0]:,}–{solved[-1]:,})"
            finals = [r["final_return"] for r in rs]
            spread = statistics.pstdev(finals)
            lines.append(
                f"| {env} | {variant} | {len(solved)}/{len(rs)} | {steps} | "
                f"{statistics.mean(finals):.1f} ± {spread:.1f} | {statistics.mean(r['wall_s'] for r in rs):.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(SOLVED), choices=list(SOLVED))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per env and variant")
    parser.add_argument("--acrobot-steps", type=int, default=50_000, help="Acrobot budget (preset: 100000)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (each uses one core)")
    parser.add_argument("--runs-dir", help="run dirs; finished runs found here are reused (default: a new temp dir)")
    parser.add_argument("--output", default="benchmarks/ablation.json", help="all results as JSON")
    args = parser.parse_args()
    args.runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="dqn_ablation_")

    jobs = [(env, v, s) for env in args.envs for v in args.variants for s in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    budgets = {"cartpole": 50_000, "acrobot": args.acrobot_steps}
    text = table(results, args.envs, args.variants, budgets)
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"budgets": budgets, "table": text, "runs": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

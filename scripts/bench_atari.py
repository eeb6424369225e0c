"""Atari (CPU) benchmark: dqn_cli against Stable-Baselines3 DQN CnnPolicy, side by side in one run.

    python scripts/bench_atari.py                 # what `make bench` runs (15-60 min on 2 cores)
    python scripts/bench_atari.py --quick         # plumbing check: short windows, one round
    python scripts/bench_atari.py --rounds 5 --measure-steps 4000 --out /tmp/bench_atari

Speed: PongNoFrameskip-v4 with the Nature settings on both sides (no-op starts, frame skip 4 with
max-pool, 84x84 grayscale, 4-frame stack, clipped rewards, life loss = terminal; 1 env, batch 32,
train_freq 4, gradient_steps 1, Adam lr 1e-4, buffer 100,000, learning_starts 1,000). Each peer runs
in a fresh process. Ours is the real `Trainer` of `dqn train env=pong` (torch_threads=2 from
configs/env/atari.yaml: the update as two 16-row shards on a thread each; OMP_WAIT_POLICY=PASSIVE as
`dqn` sets it); SB3 is `DQN("CnnPolicy", ...)` on `make_atari_env` + `VecFrameStack(4)` with torch's
default threads (SB3 never sets them). Rows at 1 thread on both sides show the per-thread efficiency
alone. The "ours bf16-mixed" row is the same run with `precision=bf16-mixed` (bf16 forward/backward
over fp32 master weights; fast on CPUs with AVX512-BF16/AMX), an opt-in that changes the numerics,
so it is reported beside the fp32 ratio. The "ours ale+overlap" rows step the game in ale-py's C++
vector env (`env.vectorization=ale`) and update while it plays (`overlap=true`), still 1 env: the
game's step moves off the update's critical path. Rows ending "compile" add `compile=true` (the
update compiled by torch.compile; its compile time falls inside the timed window). Training steps/s
= env steps from learning_starts to the end over the wall time between them (acting, storing,
updating; no start-up, no evaluation); steps per CPU-second divide by the process's CPU time
instead, which depends less on what else runs on the machine. Rounds alternate the peers so machine
noise hits all alike; the table reports medians and the 1-minute load average seen during the runs.

Memory: process RSS growth while a buffer fills with N transitions of 4x84x84 uint8 observations,
divided by N: ours (dqn_cli.frame_buffer.FrameStackReplay), SB3's ReplayBuffer with and without
`optimize_memory_usage`. Results go to OUT/results.json and OUT/results.md; exit code 0 whatever the
numbers are (this is a report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _children import run_json_child  # scripts/ is sys.path[0] when a script runs

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "PongNoFrameskip-v4"
BUFFER = 100_000
LEARNING_STARTS = 1000
TARGET_UPDATE = 10_000
MEMORY_FILL = 50_000
CHILD_TIMEOUT_S = 1800


# ---- children: one measurement each, printed as one JSON line --------------------------------------------


def child_ours(args: argparse.Namespace) -> dict:
    from dqn_cli.cli import configure_openmp

    configure_openmp()  # as `dqn train` does, before torch loads
    from hydra import compose, initialize_config_dir

    from dqn_cli.config import config_dir
    from dqn_cli.trainer import Trainer

    total = LEARNING_STARTS + args.measure_steps
    overrides = [
        "env=pong", "device=cpu", f"seed={args.seed}", f"total_steps={total}",
        f"buffer.capacity={BUFFER}", f"agent.learning_starts={LEARNING_STARTS}",
        f"agent.target_update_interval={TARGET_UPDATE}", "agent.exploration_fraction=0.1",
        "eval.interval=0", "eval.episodes=1", "eval_protocol.max_episode_frames=400",
        "checkpoint.interval=0", "checkpoint.save_buffer=false", "log.tensorboard=false", "log.progress=false",
    ]  # fmt: skip
    if args.threads:
        overrides.append(f"torch_threads={args.threads}")
    if args.precision:
        overrides.append(f"precision={args.precision}")
    overrides += args.override
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        stamps = _stamp_env_steps(trainer.env, _marks(args.measure_steps), "step_wait" if cfg.overlap else "step")
        trainer.run()
    # torch_threads, not torch.get_num_threads(): with 2 threads the update runs as two 16-row shards
    # of one intra-op thread each, so the calling thread itself reports 1
    return _result("ours", stamps, args.measure_steps, int(cfg.torch_threads), cfg.agent.batch_size)


def child_sb3(args: argparse.Namespace) -> dict:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    if args.threads:
        torch.set_num_threads(args.threads)
    total = LEARNING_STARTS + args.measure_steps
    stamps: dict[int, float] = {}
    marks = set(_marks(args.measure_steps))

    class Stamp(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps in marks:
                stamps[self.num_timesteps] = (time.perf_counter(), time.process_time())
            return True

    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=1, seed=args.seed), n_stack=4)
    model = DQN(
        "CnnPolicy", env, learning_rate=1e-4, buffer_size=BUFFER, learning_starts=LEARNING_STARTS,
        batch_size=32, train_freq=4, gradient_steps=1, target_update_interval=TARGET_UPDATE,
        exploration_fraction=0.1, exploration_final_eps=0.1, optimize_memory_usage=False,
        seed=args.seed, device="cpu", verbose=0,
    )  # fmt: skip
    model.learn(total_timesteps=total, callback=Stamp())
    env.close()
    return _result("sb3", stamps, args.measure_steps, torch.get_num_threads(), 32)


WINDOW = 2000  # steps/s is also reported per window of this many steps, to show a trend over the run


def _marks(steps: int) -> list[int]:
    """Env-step counts to time: learning_starts, every WINDOW steps after it, and the end."""
    return sorted({*range(LEARNING_STARTS, LEARNING_STARTS + steps, WINDOW), LEARNING_STARTS + steps})


def _stamp_env_steps(env, marks: list[int], method: str = "step") -> dict[int, tuple[float, float]]:
    """Record (wall, CPU) times when the env has been stepped marks[i] times (1 env: steps = env steps).
    `method` is the call that ends a step: `step`, or `step_wait` where the trainer overlaps."""
    stamps: dict[int, tuple[float, float]] = {}
    step, count = getattr(env, method), [0]

    def timed_step(*actions):
        out = step(*actions)
        count[0] += env.num_envs
        if count[0] in marks:
            stamps[count[0]] = (time.perf_counter(), time.process_time())
        return out

    setattr(env, method, timed_step)
    return stamps


def _result(peer: str, stamps: dict, steps: int, threads: int, batch: int) -> dict:
    (wall0, cpu0), (wall1, cpu1) = stamps[LEARNING_STARTS], stamps[LEARNING_STARTS + steps]
    marks = sorted(stamps)
    windows = [round((b - a) / (stamps[b][0] - stamps[a][0]), 1) for a, b in zip(marks[:-1], marks[1:], strict=True)]
    return {"peer": peer, "steps": steps, "seconds": wall1 - wall0, "steps_per_s": steps / (wall1 - wall0),
            "cpu_seconds": cpu1 - cpu0, "steps_per_cpu_s": steps / (cpu1 - cpu0), "torch_threads": threads,
            "batch_size": batch, "loadavg_1min_at_end": os.getloadavg()[0],
            "steps_per_s_by_window": windows}  # fmt: skip


def child_memory(args: argparse.Namespace) -> dict:
    """RSS growth per transition while a buffer of `--fill` transitions fills (imports done first)."""
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.buffers import ReplayBuffer

    from dqn_cli.frame_buffer import FrameStackReplay

    n = args.fill
    obs = np.random.default_rng(0).integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)
    action, reward, no = np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, bool)
    before = _rss()
    if args.layout == "ours":
        buf = FrameStackReplay(n, (4, 84, 84), np.uint8, 1)
        estimate = buf.estimate_nbytes() / n
        for _ in range(n):
            buf.add(obs, action, reward, obs, no, no)
    else:
        optimize = args.layout == "sb3-optimized"
        space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        buf = ReplayBuffer(
            n, space, gym.spaces.Discrete(6), device="cpu", optimize_memory_usage=optimize,
            handle_timeout_termination=not optimize,  # SB3 allows only one of the two
        )  # fmt: skip
        estimate = None
        for _ in range(n):
            buf.add(obs, obs, action, reward, no, [{}])
    grown = _rss() - before
    return {"layout": args.layout, "transitions": n, "bytes_per_transition": grown / n, "estimate": estimate}


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


# ---- the report ------------------------------------------------------------------------------------------


def run_child(argv: list[str], log: Path) -> dict | None:
    return run_json_child(__file__, argv, log, CHILD_TIMEOUT_S, ROOT)


def main_report(args: argparse.Namespace) -> None:
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_atari_"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "children.log"
    peers = {
        "ours": ["_ours"],
        "sb3": ["_sb3"],
        "ours bf16-mixed": ["_ours", "--precision", "bf16-mixed"],
        "ours ale+overlap": ["_ours", "--override", "env.vectorization=ale", "--override", "overlap=true"],
        "ours ale+overlap bf16": [
            "_ours",
            "--precision",
            "bf16-mixed",
            "--override",
            "env.vectorization=ale",
            "--override",
            "overlap=true",
        ],
        "ours @ 1 thread": ["_ours", "--threads", "1"],
        "sb3 @ 1 thread": ["_sb3", "--threads", "1"],
    }
    for name in ("ours", "ours bf16-mixed", "ours ale+overlap bf16"):  # the update compiled (compile=true)
        peers[f"{name} compile"] = [*peers[name], "--override", "compile=true"]
    if args.peers:
        wanted = [p.strip() for p in args.peers.split(",")]
        unknown = [p for p in wanted if p not in peers]
        if unknown or "ours" not in wanted or "sb3" not in wanted:
            sys.exit(f"--peers must name ours and sb3, from: {', '.join(peers)} (got {args.peers!r})")
        peers = {name: argv for name, argv in peers.items() if name in wanted}
    speed: dict[str, list[dict]] = {name: [] for name in peers}
    for r in range(args.rounds):
        for name, argv in peers.items():
            res = run_child([*argv, "--measure-steps", str(args.measure_steps), "--seed", str(r)], log)
            done = f"{res['steps_per_s']:.1f} steps/s" if res else "failed"
            print(f"round {r + 1}/{args.rounds}  {name:<15} {done}", flush=True)
            if res:
                speed[name].append(res)
    memory = {}
    for layout in ("ours", "sb3-optimized", "sb3"):
        res = run_child(["_memory", "--layout", layout, "--fill", str(args.fill)], log)
        done = f"{res['bytes_per_transition']:.0f} bytes/transition" if res else "failed"
        print(f"memory {layout:<14} {done}", flush=True)
        memory[layout] = res

    def med(key: str) -> dict[str, float | None]:
        return {k: statistics.median(x[key] for x in v) if v else None for k, v in speed.items()}

    median, median_cpu = med("steps_per_s"), med("steps_per_cpu_s")
    ratio = median["ours"] / median["sb3"] if median["ours"] and median["sb3"] else None
    bf16 = median.get("ours bf16-mixed")
    ratio_bf16 = bf16 / median["sb3"] if bf16 and median["sb3"] else None
    over_sb3 = {  # every row of ours against SB3 at its default threads
        name: v / median["sb3"] for name, v in median.items() if name.startswith("ours") and v and median["sb3"]
    }
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"env": ENV_ID, "buffer": BUFFER, "learning_starts": LEARNING_STARTS,
                     "measure_steps": args.measure_steps, "rounds": args.rounds, "batch_size": 32, "train_freq": 4},
        "speed": speed, "median_steps_per_s": median, "median_steps_per_cpu_s": median_cpu,
        "ratio_ours_over_sb3": ratio, "ratio_ours_bf16_mixed_over_sb3": ratio_bf16, "ratios_over_sb3": over_sb3,
        "memory": memory,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    loads = [x["loadavg_1min_at_end"] for v in speed.values() for x in v]
    md = [
        f"{ENV_ID}, CPU ({os.cpu_count()} cores), 1 env, batch 32, train_freq 4, {args.rounds} rounds of "
        f"{args.measure_steps} training steps after {LEARNING_STARTS} warm-up steps (medians); 1-min load "
        f"average {min(loads, default=0):.1f}-{max(loads, default=0):.1f} during the runs",
        "",
        "| peer | torch threads | training steps/s (wall) | each round | ours / peer (wall) "
        "| steps per CPU-second | ours / peer (CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in speed.items():
        if not runs:
            md.append(f"| {name} | | failed | | | | |")
            continue
        rounds = ", ".join(f"{x['steps_per_s']:.1f}" for x in runs)
        vs = f"{median['ours'] / median[name]:.2f}x" if median["ours"] else ""
        vs_cpu = f"{median_cpu['ours'] / median_cpu[name]:.2f}x" if median_cpu["ours"] else ""
        md.append(
            f"| {name} | {runs[0]['torch_threads']} | {median[name]:.1f} | {rounds} | {vs} "
            f"| {median_cpu[name]:.1f} | {vs_cpu} |"
        )
    if args.measure_steps > WINDOW:
        md += ["", f"Training steps/s in each window of {WINDOW:,} steps, every round (a trend shows a slowdown):", ""]
        for name, runs in speed.items():
            md += [f"- {name}: " + "; ".join(", ".join(f"{w:.0f}" for w in x["steps_per_s_by_window"]) for x in runs)]
    md += ["", f"Replay memory, RSS growth over a fill of {args.fill:,} transitions (4x84x84 uint8):", ""]
    md += ["| layout | bytes / transition | 1M transitions |", "| --- | --- | --- |"]
    for layout, res in memory.items():
        if res:
            b = res["bytes_per_transition"]
            md.append(f"| {layout} | {b:,.0f} | {b * 1e6 / 2**30:.1f} GiB |")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(md))
    others = [f"{name} / SB3 (default threads): {r:.2f}x" for name, r in over_sb3.items() if name != "ours"]
    if others:
        print("\n" + "\n".join(others))
    if ratio is not None:
        best = max(over_sb3, key=over_sb3.get)
        print(f"\nours / SB3 (default threads): {ratio:.2f}x, fastest row {best!r}: {over_sb3[best]:.2f}x "
              "(goal >= 2x); "
              f"ours {memory['ours']['bytes_per_transition'] if memory.get('ours') else float('nan'):.0f} "
              "bytes/transition (goal <= 7,500)")  # fmt: skip
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; child logs: {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="report", choices=["report", "_ours", "_sb3", "_memory"])
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds (each runs every peer once)")
    parser.add_argument("--measure-steps", type=int, default=2000, help="timed training steps per run")
    parser.add_argument("--fill", type=int, default=MEMORY_FILL, help="transitions per memory measurement")
    parser.add_argument("--quick", action="store_true", help="1 round of 400 steps, a 5,000-transition fill")
    parser.add_argument("--out", help="results folder (default: a new temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="child: torch threads (0 = the peer's default)")
    parser.add_argument("--peers", default="", help="comma-separated subset of the peers (ours and sb3 at least)")
    parser.add_argument("--precision", default="", help="child ours: the precision key (default: the config's)")
    parser.add_argument("--layout", choices=["ours", "sb3", "sb3-optimized"], default="ours")
    parser.add_argument("--override", action="append", default=[], help="child ours: one more config override")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.measure_steps, args.fill = 1, 400, 5000
    if args.mode == "report":
        main_report(args)
        return
    child = {"_ours": child_ours, "_sb3": child_sb3, "_memory": child_memory}[args.mode]
    print(json.dumps(child(args)))


if __name__ == "__main__":
    main()

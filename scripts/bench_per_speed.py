"""Training steps/s of uniform vs prioritized replay at the Atari CPU settings, side by side.

    python scripts/bench_per_speed.py                      # both measurements below
    python scripts/bench_per_speed.py --skip-synthetic --trainer-rounds 2

1. The trainer: `dqn train env=pong` (the Nature preset: Nature CNN, batch 32, train_freq 4,
   1M-slot frame-once replay, the preset's torch threads) with `buffer=uniform` and
   `buffer=prioritized`, short runs (`--learning-starts` random steps, then `--train-steps`
   training steps) taking turns. Steps/s of the training phase comes from the `charts/SPS`
   scalars: the mean rate since the start at two log points gives the time of each, and the rate
   between them.
2. Synthetic: the trainer's inner loop without an environment: store one uint8 (4, 84, 84)
   observation per step (random bytes) with a random action in the frame-once replay the Atari
   preset uses, every 4 steps sample 32, do one Nature-CNN update and (prioritized) write back the
   priorities. No emulator or acting time dilutes the replay cost, so this ratio is a lower bound
   on what a real run keeps.

The two buffers take turns round by round so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dqn_cli.agent import DQNAgent
from dqn_cli.frame_buffer import FrameStackReplay
from dqn_cli.networks import NatureCNN
from dqn_cli.prioritized import PrioritizedReplay
from dqn_cli.utils import setup_torch

SHAPE, N_ACTIONS = (4, 84, 84), 6
AGENT = {"lr": 1e-4, "adam_eps": 1.5e-4, "loss": "huber", "max_grad_norm": 10.0, "tau": 1.0, "double": False}


class Loop:
    """A buffer, an agent and a position in the synthetic stream of transitions."""

    def __init__(self, kind: str, args: argparse.Namespace, frames: np.ndarray, seed: int):
        storage = FrameStackReplay(args.capacity, SHAPE, np.uint8, num_envs=1, n_step=1, gamma=0.99)
        self.buffer = PrioritizedReplay(storage, 0.6, 0.4, 1e-6) if kind == "prioritized" else storage
        torch.manual_seed(seed)
        self.agent = DQNAgent(NatureCNN(SHAPE, N_ACTIONS), N_ACTIONS, OmegaConf.create(AGENT), torch.device("cpu"))
        self.frames, self.rng, self.step = frames, np.random.default_rng(seed), 0
        self.args = args
        self.replay_s = self.total_s = 0.0  # time in replay calls (add, sample, priorities) and in all
        self.timed_steps = 0

    def add(self) -> None:
        i = self.step % (len(self.frames) - 1)
        reward = self.rng.random(1, dtype=np.float32)
        action = self.rng.integers(0, N_ACTIONS, size=1)
        done = np.array([self.rng.random() < 0.001])
        self.buffer.add(self.frames[i : i + 1], action, reward, self.frames[i + 1 : i + 2], done, np.zeros(1, bool))
        self.step += 1

    def run(self, steps: int) -> float:
        """Env steps per second over `steps` steps of act-store-update."""
        args = self.args
        clock = time.perf_counter
        start = clock()
        for _ in range(steps):
            t0 = clock()
            self.add()
            if self.step % args.train_freq == 0:
                if isinstance(self.buffer, PrioritizedReplay):
                    self.buffer.set_progress(self.step / 1e7)
                batch = self.buffer.sample(args.batch_size, self.rng)
                t1 = clock()
                self.agent.update(batch)
                t2 = clock()
                if batch.weights is not None:
                    self.buffer.update_priorities(batch.indices, self.agent.td_abs)
                self.replay_s += (t1 - t0) + (clock() - t2)
            else:
                self.replay_s += clock() - t0
        elapsed = clock() - start
        self.total_s += elapsed
        self.timed_steps += steps
        return steps / elapsed


def trainer_rate(kind: str, args: argparse.Namespace, run_dir: Path) -> float:
    """Steps/s of the training phase of a short `dqn train env=pong` run with `buffer=kind`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = args.learning_starts + args.train_steps
    overrides = [
        "env=pong", f"buffer={kind}", f"total_steps={total}", f"agent.learning_starts={args.learning_starts}",
        f"log.interval={args.log_interval}", "eval.interval=0", "eval.episodes=1", "checkpoint.interval=0",
        "checkpoint.save_buffer=false", "log.progress=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "dqn_cli", "train", *overrides], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dqn train buffer={kind} failed:\n{proc.stderr[-2000:]}")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    # SPS(s) = s / elapsed(s); measure from one log interval after the updates start to the end
    points = [(e.step, e.step / e.value) for e in acc.Scalars("charts/SPS") if e.step > args.learning_starts]
    (s0, t0), (s1, t1) = points[1], points[-1]
    return (s1 - s0) / (t1 - t0)


def side_by_side(measure, rounds: int) -> dict[str, list[float]]:
    """Alternate the two buffers (uniform first on even rounds) and collect steps/s per kind."""
    sps: dict[str, list[float]] = {"uniform": [], "prioritized": []}
    for r in range(rounds):
        for kind in ("uniform", "prioritized") if r % 2 == 0 else ("prioritized", "uniform"):
            sps[kind].append(measure(kind, r))
            print(f"  round {r}: {kind:11s} {sps[kind][-1]:7.1f} steps/s", flush=True)
    return sps


def summary(name: str, sps: dict[str, list[float]]) -> dict:
    """Medians per buffer, and the median over rounds of prioritized/uniform within a round (the two
    runs of a round are back to back, so a change in machine load moves both)."""
    med = {kind: statistics.median(v) for kind, v in sps.items()}
    ratio = statistics.median(p / u for p, u in zip(sps["prioritized"], sps["uniform"], strict=True))
    print(f"{name}: median steps/s uniform {med['uniform']:.1f}, prioritized {med['prioritized']:.1f}; "
          f"prioritized/uniform per round, median {ratio:.3f} (cost {100 * (1 - ratio):.1f}%)", flush=True)  # fmt: skip
    return {"steps_per_s": sps, "median": med, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer-rounds", type=int, default=3, help="alternating dqn train runs per buffer")
    parser.add_argument("--learning-starts", type=int, default=1000, help="random steps before updates")
    parser.add_argument("--train-steps", type=int, default=2500, help="training steps per dqn train run")
    parser.add_argument("--log-interval", type=int, default=500)
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--capacity", type=int, default=100_000, help="synthetic: replay capacity (transitions)")
    parser.add_argument("--prefill", type=int, default=50_000, help="synthetic: transitions stored before timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-freq", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000, help="synthetic: env steps per timed round")
    parser.add_argument("--rounds", type=int, default=8, help="synthetic: alternating rounds per buffer")
    parser.add_argument("--threads", type=int, default=1, help="synthetic: torch intra-op threads")
    parser.add_argument("--output", default="benchmarks/per_speed.json")
    args = parser.parse_args()
    results: dict = {"settings": vars(args)}

    if not args.skip_trainer:
        print("dqn train env=pong, training phase:", flush=True)
        root = Path(tempfile.mkdtemp(prefix="dqn_per_speed_"))
        sps = side_by_side(lambda kind, r: trainer_rate(kind, args, root / f"{kind}{r}"), args.trainer_rounds)
        results["trainer"] = summary("dqn train env=pong", sps)

    if not args.skip_synthetic:
        print("synthetic replay + update loop (no env):", flush=True)
        setup_torch("cpu", args.threads)
        frames = np.random.default_rng(0).integers(0, 256, size=(512, *SHAPE), dtype=np.uint8)
        loops = {kind: Loop(kind, args, frames, seed=0) for kind in ("uniform", "prioritized")}
        for loop in loops.values():
            for _ in range(args.prefill):
                loop.add()
            loop.run(200)  # warm-up: allocator, first optimizer steps
            loop.replay_s = loop.total_s = loop.timed_steps = 0
        sps = side_by_side(lambda kind, r: loops[kind].run(args.steps), args.rounds)
        results["synthetic"] = summary("synthetic", sps)
        # the replay calls alone, per env step: a number that load from other processes moves less
        replay_ms = {k: 1e3 * loop.replay_s / loop.timed_steps for k, loop in loops.items()}
        step_ms = 1e3 * loops["uniform"].total_s / loops["uniform"].timed_steps
        results["synthetic"]["replay_ms_per_step"] = replay_ms
        print(f"replay calls per env step: uniform {replay_ms['uniform']:.3f} ms, prioritized "
              f"{replay_ms['prioritized']:.3f} ms; a uniform step takes {step_ms:.2f} ms in all")  # fmt: skip

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

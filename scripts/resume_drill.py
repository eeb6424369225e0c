"""Resume drill: one `dqn train` run stopped again and again (SIGINT, SIGTERM, SIGKILL in turn, at
random moments) and resumed each time must end bitwise equal to the same run never stopped.

    python scripts/resume_drill.py --stops 6 --seed 0 -- env=cartpole total_steps=20000

Prints one line per stop and a summary; exits 1 if any tensor, counter or RNG state differs.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dqn_cli.checkpoint import load_checkpoint

BASE = ["device=cpu", "log.progress=false", "checkpoint.interval=2000", "eval.interval=5000", "eval.episodes=5"]
KINDS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


def dqn(*args: str) -> list[str]:
    return [sys.executable, "-m", "dqn_cli", "train", *args]


def flat(x, prefix=""):
    """{path: value} over nested dicts/lists, tensors and plain values (wall-clock timers dropped)."""
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k not in ("config", "elapsed", "time_queue"):
                out.update(flat(v, f"{prefix}.{k}"))
        return out
    if isinstance(x, (list, tuple)):
        out = {}
        for i, v in enumerate(x):
            out.update(flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: x}


def same(a, b) -> list[str]:
    fa, fb = flat(a), flat(b)
    if fa.keys() != fb.keys():
        return sorted(fa.keys() ^ fb.keys())
    return [k for k in fa if not (torch.equal(fa[k], fb[k]) if isinstance(fa[k], torch.Tensor) else fa[k] == fb[k])]


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars as TensorBoard shows them (purged where a resumed run took over)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), purge_orphaned_data=True, size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t != "charts/SPS"]  # steps per second is wall-clock
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--stops", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="seeds the stop times")
    parser.add_argument("--max-delay", type=float, default=4.0, help="seconds of training before a stop")
    parser.add_argument("overrides", nargs="*", default=["env=cartpole", "total_steps=20000"])
    args = parser.parse_args()
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="resume_drill_"))
    ref, cut = work / "reference", work / "stopped"
    overrides = [*BASE, *args.overrides]

    t = time.perf_counter()
    subprocess.run(dqn(*overrides, f"hydra.run.dir={ref}"), check=True, capture_output=True)
    print(f"reference run: {time.perf_counter() - t:.1f} s")

    command, finished = dqn(*overrides, f"hydra.run.dir={cut}"), False
    for i in range(args.stops):
        kind = KINDS[i % len(KINDS)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if re.search(r"training \S+ (for|from)", line):
                break
        time.sleep(rnd.uniform(0.2, args.max_delay))
        proc.send_signal(kind)
        out = line + proc.communicate()[0]
        last = cut / "checkpoints" / "last.pt"
        step = load_checkpoint(last)["counters"]["step"] if last.exists() else 0
        print(f"stop {i + 1}: {kind.name:<7} exit {proc.returncode:>4}  last.pt at step {step}")
        if proc.returncode == 0:
            print("  the run finished before the signal; stopping the drill here")
            finished = True
            break
        expected = -signal.SIGKILL if kind == signal.SIGKILL else 128 + kind
        if proc.returncode != expected or "Traceback" in out:
            print(out)
            return 1
        if last.exists():
            command = dqn(f"resume={cut}")
    if not finished:  # the last session: resumed to the end
        subprocess.run(command, check=True, capture_output=True)
    diff = same(load_checkpoint(ref / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt"))
    print(f"final last.pt: {'bitwise equal to the reference' if not diff else 'DIFFERENT: ' + ', '.join(diff[:8])}")
    a, b = curves(ref), curves(cut)
    bad = sorted(t for t in a.keys() | b.keys() if a.get(t) != b.get(t))
    n = sum(len(v) for v in a.values())
    print(f"TensorBoard: {'all ' + str(n) + ' points equal' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    diff += bad
    print(f"run dirs under {work}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU benchmark: env steps/s at the Nature replay ratio with vector envs, SB3 side by side.

    python scripts/bench_gpu.py --out /tmp/bench_gpu            # every row (about 3 minutes)
    python scripts/bench_gpu.py --rows "graphs+overlap N=32,sb3 N=16" --measure-steps 40000

The replay ratio is the Nature one on every row: one batch-32 update per 4 env steps, so N envs
take N/4 updates per vector step (`agent.gradient_steps=N/4`; SB3: `train_freq=1, gradient_steps=N/4`
over N envs). PongNoFrameskip-v4 with the Nature preprocessing on both sides, buffer 100,000, the
Nature optimizer settings. Ours is the real `Trainer` of `dqn train env=pong` with the row's
switches: async vector envs (rows starting "ale": `env.vectorization=ale`, ale-py's C++ vector env),
`cuda_graphs`, `overlap`, `compile`, `precision`, "device" for `buffer.storage=device` and
"unbatched" for `batched_targets=false` (rounds of updates drawn at once with "device" have the
target network score all their next states in one pass unless it is set), "per-update" for
`round_graphs=false` (with "graphs" and "device" a round is one graph replay unless it is set). SB3 is
`DQN("CnnPolicy")` on `make_atari_env` (SubprocVecEnv for N > 1) + `VecFrameStack(4)`. Env steps/s
counts the transitions stored from `learning_starts + warmup` to the end over the wall time between
them (acting, env stepping, storing and updating; no start-up, no CUDA-graph recording, no evaluation).
Each row runs in a fresh process. `--profile` adds the main thread's ms per vector step in each part
of the loop. Results go to OUT/results.json and OUT/results.md; the exit code is 0 whatever the
numbers are (this is a report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from _children import run_json_child  # scripts/ is sys.path[0] when a script runs

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "PongNoFrameskip-v4"
BUFFER = 100_000
LEARNING_STARTS = int(os.environ.get("BENCH_LEARNING_STARTS", 5000))
WARMUP = 2000  # steps after learning_starts left out of the timing (graph recording, cuDNN set-up)
TARGET_UPDATE = 10_000
CHILD_TIMEOUT_S = 600

ROWS = [  # the default rows, in order of interest; any name `parse_row` reads can be asked for
    "graphs N=1", "sb3 N=1", "eager N=16", "graphs N=16", "graphs+overlap N=16", "sb3 N=16", "graphs+overlap N=32",
    "graphs+overlap bf16 N=32", "graphs+overlap N=64", "graphs+overlap+device N=32", "graphs+overlap+device N=64",
    "ale+eager N=16", "ale+graphs+overlap N=32", "ale+graphs+overlap+device N=32", "ale+graphs+overlap+device N=64",
    "ale+graphs+overlap+device N=128", "ale+graphs+compile+overlap+device N=64",
    "ale+graphs+compile+overlap+device N=128", "ale+graphs+compile+overlap+device bf16 N=128",
]  # fmt: skip
SWITCHES = {  # a row name's "+"-joined words -> our overrides (ale: env.vectorization=ale, else async/sync)
    "eager": [],
    "graphs": ["cuda_graphs=true"],
    "overlap": ["overlap=true"],
    "device": ["buffer.storage=device"],
    "compile": ["compile=true"],
    "unbatched": ["batched_targets=false"],  # a target-network pass per update, not one per round
    "per-update": ["round_graphs=false"],  # a graph replay per update, not one per round
    "ale": [],
}


def parse_row(name: str) -> dict:
    """A row name to its settings: "ale+graphs+compile+overlap+device bf16 N=128" -> {"envs": 128, "vec":
    "ale", "args": [...]}; "sb3 N=16" -> SB3's row. Raises ValueError for anything else."""
    words = name.split()
    if len(words) not in (2, 3) or not words[-1].startswith("N=") or not words[-1][2:].isdigit():
        raise ValueError(f"{name!r}: a row is 'SWITCHES [bf16] N=ENVS'")
    envs, switches = int(words[-1][2:]), words[0].split("+")
    if switches == ["sb3"] and len(words) == 2:
        return {"envs": envs, "peer": "sb3"}
    unknown = [w for w in switches if w not in SWITCHES] + [w for w in words[1:-1] if w != "bf16"]
    if unknown:
        raise ValueError(f"{name!r}: unknown {unknown}; switches: {', '.join(SWITCHES)}, sb3; then bf16 or nothing")
    args = [a for w in switches for a in SWITCHES[w]] + (["precision=bf16-mixed"] if len(words) == 3 else [])
    return {"envs": envs, "vec": "ale" if "ale" in switches else None, "args": args}


def child_ours(row: dict, measure: int, device: str, profile: bool = False) -> dict:
    from dqn_cli.cli import configure_openmp

    configure_openmp()  # as `dqn train` does, before torch loads
    from hydra import compose, initialize_config_dir

    from dqn_cli.config import config_dir
    from dqn_cli.trainer import Trainer

    n = row["envs"]
    vectorization = row["vec"] or ("async" if n > 1 else "sync")
    overrides = [
        "env=pong", f"device={device}", f"env.num_envs={n}", f"env.vectorization={vectorization}",
        f"agent.gradient_steps={max(1, n // 4)}",  # train_freq stays 4: every vector step once N >= 4
        f"total_steps={LEARNING_STARTS + WARMUP + measure}", f"buffer.capacity={BUFFER}",
        f"agent.learning_starts={LEARNING_STARTS}", f"agent.target_update_interval={TARGET_UPDATE}",
        "eval.interval=0", "eval.episodes=1", "eval_protocol.max_episode_frames=400", "checkpoint.interval=0",
        "checkpoint.save_buffer=false", "log.tensorboard=false", "log.progress=false", *row["args"],
    ]  # fmt: skip
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        sections = _time_sections(trainer) if profile else None
        stamps = _stamp(trainer.buffer, "add", n, sections, int(cfg.total_steps))
        trainer.run()
    result = _result(stamps, trainer.updates)
    if sections is not None:  # main-thread ms per vector step in each part, over the timed window
        vector_steps = result["steps"] / n
        ms = {k: round(1000 * v / vector_steps, 3) for k, v in sections.items() if k != "_on"}
        ms["other"] = round(1000 * result["seconds"] / vector_steps - sum(ms.values()), 3)
        result["ms_per_vector_step"] = ms
    return result


def _time_sections(trainer) -> dict:
    """Wrap the loop's parts to add up the main thread's wall time in each (once sections["_on"])."""
    sections: dict = {"_on": False}
    env_parts = ["step_async", "step_wait"] if trainer.cfg.get("overlap") else ["step"]  # step calls both
    parts = [(trainer.env, name) for name in env_parts]
    parts += [(trainer.agent, "act_later"), (trainer.buffer, "sample"), (trainer.agent, "target_values")]
    parts += [(trainer.agent, "learn"), (trainer.agent, "learn_round"), (trainer.buffer, "add")]

    def timer(inner, label: str):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            if sections["_on"]:
                sections[label] = sections.get(label, 0.0) + time.perf_counter() - t
            return out

        return timed

    for obj, name in parts:
        setattr(obj, name, timer(getattr(obj, name), f"{type(obj).__name__}.{name}"))
    # act_later only queues the greedy pass on a GPU: the wait for the actions (and so for the updates queued
    # before them) is the function it returns
    queue = trainer.agent.act_later
    trainer.agent.act_later = lambda *args: timer(queue(*args), "DQNAgent.act (waits for the GPU)")
    return sections


def child_sb3(row: dict, measure: int, device: str, profile: bool = False) -> dict:
    import ale_py
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecFrameStack

    gym.register_envs(ale_py)
    n = row["envs"]
    vec = {"vec_env_cls": SubprocVecEnv, "vec_env_kwargs": {"start_method": "fork"}} if n > 1 else {}
    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=n, seed=0, **vec), n_stack=4)  # fork: ALE ids registered
    model = DQN(
        "CnnPolicy", env, learning_rate=1e-4, buffer_size=BUFFER, learning_starts=LEARNING_STARTS,
        batch_size=32, train_freq=1 if n > 1 else 4, gradient_steps=max(1, n // 4),
        target_update_interval=TARGET_UPDATE, exploration_fraction=0.1, exploration_final_eps=0.1,
        optimize_memory_usage=False, seed=0, device=device, verbose=0,
    )  # fmt: skip
    stamps = _stamp(model.replay_buffer, "add", n)
    model.learn(total_timesteps=LEARNING_STARTS + WARMUP + measure)
    env.close()
    return _result(stamps, None)


def _stamp(obj, method: str, n: int, sections: dict | None = None, end: int = 0) -> list[tuple[int, float]]:
    """(transitions stored, wall time) after each call of obj.method (one call per vector step);
    switches `sections` timing on where the timed window starts."""
    stamps, inner, count = [], getattr(obj, method), [0]

    def timed(*args, **kwargs):
        out = inner(*args, **kwargs)
        count[0] += n
        stamps.append((count[0], time.perf_counter()))
        if sections is not None:  # on inside the timed window only (not the final evaluation's acting)
            sections["_on"] = LEARNING_STARTS + WARMUP <= count[0] < end
        return out

    setattr(obj, method, timed)
    return stamps


def _result(stamps: list[tuple[int, float]], updates: int | None) -> dict:
    start = next(i for i, (c, _) in enumerate(stamps) if c >= LEARNING_STARTS + WARMUP)
    (c0, t0), (c1, t1) = stamps[start], stamps[-1]
    return {"steps": c1 - c0, "seconds": t1 - t0, "env_steps_per_s": (c1 - c0) / (t1 - t0), "updates": updates}


def run_child(name: str, measure: int, device: str, log: Path, profile: bool = False) -> dict | None:
    argv = ["_child", "--rows", name, "--measure-steps", str(measure), "--device", device]
    return run_json_child(__file__, argv + (["--profile"] if profile else []), log, CHILD_TIMEOUT_S, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="report", choices=["report", "_child"])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    parser.add_argument("--measure-steps", type=int, default=20_000, help="timed env steps per row")
    parser.add_argument("--out", help="results folder (default: a new temp dir)")
    parser.add_argument("--profile", action="store_true", help="also time the main thread's parts (ours)")
    parser.add_argument("--device", default="cuda", help="cpu: a plumbing check of the eager rows on a CPU machine")
    args = parser.parse_args()
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    try:
        rows = {name: parse_row(name) for name in names}
    except ValueError as e:
        parser.error(str(e))
    if args.mode == "_child":
        row = rows[names[0]]
        child = child_sb3 if row.get("peer") == "sb3" else child_ours
        print(json.dumps(child(row, args.measure_steps, args.device, args.profile)))
        return
    import torch

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_gpu_"))
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    results = {}
    for name in names:  # one env's rows time a tenth of the steps (a few hundred steps/s)
        measure = args.measure_steps if rows[name]["envs"] > 1 else args.measure_steps // 10
        results[name] = run_child(name, measure, args.device, out / "children.log", args.profile)
        r = results[name]
        print(f"{name:28s} " + ("failed (children.log)" if r is None else f"{r['env_steps_per_s']:9.0f} env steps/s"))
        report(out, gpu, results, rows)
    print((out / "results.md").read_text() + f"results in {out}")


def report(out: Path, gpu: str, results: dict, rows: dict) -> None:
    """results.md and results.json, rewritten after each row (a run cut short keeps what it measured)."""
    import torch

    sb3 = {n: results.get(f"sb3 N={n}") for n in (1, 16)}
    best_sb3 = max((r["env_steps_per_s"] for r in sb3.values() if r), default=None)
    lines = [f"GPU: {gpu}; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); torch "
             f"{torch.__version__}", "", "| row | envs | env steps/s | x SB3 same N | x fastest SB3 row |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in results.items():
        n, peer = rows[name]["envs"], sb3.get(rows[name]["envs"])
        speed = "failed" if r is None else f"{r['env_steps_per_s']:.0f}"
        same = f"{r['env_steps_per_s'] / peer['env_steps_per_s']:.1f}x" if r and peer and "sb3" not in name else ""
        best = f"{r['env_steps_per_s'] / best_sb3:.1f}x" if r and best_sb3 and "sb3" not in name else ""
        lines.append(f"| {name} | {n} | {speed} | {same} | {best} |")
    profiles = {name: r["ms_per_vector_step"] for name, r in results.items() if r and "ms_per_vector_step" in r}
    for name, ms in profiles.items():
        lines.append(f"\n{name}, main thread, ms per vector step: " + ", ".join(f"{k} {v}" for k, v in ms.items()))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"gpu": gpu, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

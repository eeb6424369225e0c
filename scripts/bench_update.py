"""GPU micro-benchmark of one DQN update (Nature CNN, batch 32, Pong's 6 actions): where its time goes.

    python scripts/bench_update.py                  # every variant, then the eager and compiled kernels
    python scripts/bench_update.py --variants graph,graph+tf32 --updates 500

Each variant builds the agent of `dqn train env=pong` (the configs' agent and network groups), feeds
it the same random uint8 batches from pinned host memory and times `--updates` updates back to back
(wall time between two device synchronisations, so per update: host copies, launch and GPU work). A
variant is `eager` or `graph` (`cuda_graphs=true`) and any of, joined by "+": `compile`
(`compile=true`), `tf32` (TF32 matmuls for the two linear layers,
`torch.backends.cuda.matmul.allow_tf32`), `cudnn-benchmark` (`torch.backends.cudnn.benchmark`),
`bf16` (`precision=bf16-mixed`), `channels-last` or `nchw` (the conv weights' layout; the default on
a GPU: NCHW in fp32, channels-last in bf16), `fused-adam` (with `compile`: keep the fused Adam
kernel rather than a foreach Adam compiled), `autotune` (`compile` in inductor's
"max-autotune-no-cudagraphs" mode, which times Triton conv and matmul templates against cuDNN and
cuBLAS; minutes of compiling), `ahead` (`batched_targets`: rounds of 32 updates, each round's
next states scored by the target network in one 1,024-row pass, whose time is counted, and each
update taking its rows; 128 envs at the Nature ratio make such rounds), `device`
(`buffer.storage=device`: the batches are rows of a 100,000-frame store on the device, gathered
inside the update; only the rows and the scalars travel), `round` (`round_graphs`: a round of 32
updates in one `learn_round` call, with `graph` one CUDA graph replay per round, its target pass
included with `ahead`). The profile lists the GPU
kernels of the eager update and of the compiled one (no graph): how many per update and the GPU time
of each kind. A report: the exit code is 0 whatever the numbers are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict

import numpy as np
import torch

VARIANTS = [
    "eager",
    "graph",
    "graph+channels-last",
    "graph+compile",
    "graph+compile+channels-last",
    "graph+compile+fused-adam",
    "graph+compile+bf16",
    "graph+compile+bf16+nchw",
    "graph+bf16",
    "graph+compile+bf16+device",
    "graph+compile+bf16+device+ahead",
    "graph+compile+bf16+device+ahead+round",
]
SWITCHES = {
    "eager", "graph", "compile", "autotune", "fused-adam", "tf32", "cudnn-benchmark", "bf16", "channels-last", "nchw",
    "ahead", "device", "round",
}  # fmt: skip
ROUND = 32  # updates per round with "ahead" or "round"
STORE_FRAMES = 100_000  # with "device": the frame store of a 100,000-transition buffer


def build(variant: str, device: str = "cuda"):
    from hydra import compose, initialize_config_dir

    from dqn_cli.accel import accelerate
    from dqn_cli.agent import make_agent
    from dqn_cli.config import config_dir

    switches = set(variant.split("+"))
    if switches - SWITCHES:
        raise ValueError(f"unknown switches {sorted(switches - SWITCHES)}; known: {sorted(SWITCHES)}")
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in switches
    torch.backends.cudnn.benchmark = "cudnn-benchmark" in switches
    overrides = ["env=pong", f"device={device}", "precision=" + ("bf16-mixed" if "bf16" in switches else "fp32")]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    agent = make_agent(cfg, (4, 84, 84), 6, torch.device(device))
    accelerate(agent, compile=bool({"compile", "autotune"} & switches), cuda_graphs="graph" in switches)
    for net in agent.networks():  # before the first update: the same Parameter objects, Adam keeps them
        for switch, layout in (("channels-last", torch.channels_last), ("nchw", torch.contiguous_format)):
            if switch in switches:
                net.to(memory_format=layout)
    if "autotune" in switches:
        mode = "max-autotune-no-cudagraphs"  # the update's CUDA graph is ours (cuda_graphs=true)
        agent.loss_terms = torch.compile(agent._td_loss, dynamic=False, mode=mode)
        agent.clip_and_step = torch.compile(agent._clip_and_step, dynamic=False, mode=mode)
    if "fused-adam" in switches:
        agent.optimizer = torch.optim.Adam(
            agent._trained_masters, **{**agent.optimizer.defaults, "fused": True, "foreach": None}
        )
    return agent


def batches(count: int, seed: int = 0, rows: int = 32, store_rows: bool = False) -> list:
    """Random batches of 4-frame stacks, or (store_rows) of 5 frame-store rows each, as the frame-once
    replay samples them with buffer.storage=device."""
    from dqn_cli.buffers import Batch

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if store_rows:
            index, frames = rng.integers(0, STORE_FRAMES, (rows, 5)), None
        else:
            index, frames = None, rng.integers(0, 256, (rows, 5, 84, 84), dtype=np.uint8)
        out.append(
            Batch(
                obs=None if frames is None else frames[:, :4],
                next_obs=None if frames is None else frames[:, 1:],
                actions=rng.integers(0, 6, rows),
                rewards=rng.normal(size=rows).astype(np.float32),
                terminated=(rng.random(rows) < 0.1).astype(np.float32),
                discounts=np.full(rows, 0.99, np.float32),
                frames=index,
            )  # fmt: skip
        )
    return out


def update_calls(variant: str, device: str = "cuda"):
    """The variant's agent, and an endless supply of its updates as (call, updates it makes) pairs: the
    batches in turn; or (ahead) rounds of ROUND updates on 32-row parts of one batch, whose target values
    the first call computes; or (round) one `learn_round` call per round."""
    from dqn_cli.buffers import Batch

    agent = build(variant, device)
    switches = variant.split("+")
    ahead, store_rows, whole = "ahead" in switches, "device" in switches, "round" in switches
    if store_rows:
        agent.frame_store = torch.randint(0, 256, (STORE_FRAMES, 84, 84), dtype=torch.uint8, device=device)
        agent.frame_stack = 4
    rounds = ahead or whole
    data = batches(2, rows=32 * ROUND, store_rows=store_rows) if rounds else batches(16, store_rows=store_rows)

    def calls():
        for i in itertools.count():
            batch = data[i % len(data)]
            if whole:
                yield (lambda batch=batch: agent.learn_round(batch, ROUND, batched_targets=ahead)), ROUND
                continue
            if not ahead:
                yield (lambda batch=batch: agent.learn(batch)), 1
                continue
            round_ = {}
            for j in range(ROUND):
                part = Batch(*(x if x is None else x[32 * j : 32 * (j + 1)] for x in batch))

                def call(part=part, j=j, batch=batch, round_=round_):
                    if j == 0:
                        round_["target_q"] = agent.target_values(batch)
                    return agent.learn(part, round_["target_q"][32 * j : 32 * (j + 1)])

                yield call, 1

    return agent, calls()


def run_updates(calls, updates: int) -> None:
    """Make `updates` updates (whole rounds of those that come in rounds) from `update_calls`."""
    done = 0
    while done < updates:
        call, count = next(calls)
        call()
        done += count


def time_variant(variant: str, updates: int, device: str = "cuda") -> dict:
    _, calls = update_calls(variant, device)
    run_updates(calls, 2 * ROUND)  # recording, cuDNN set-up, allocator warm-up; whole rounds with "ahead"
    updates = ROUND * max(1, round(updates / ROUND))  # whole rounds: each round's target pass is counted
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    run_updates(calls, updates)
    sync()
    ms = 1000 * (time.perf_counter() - start) / updates
    return {"variant": variant, "ms_per_update": round(ms, 4), "updates_per_s": round(1000 / ms)}


def kernel_profile(variant: str = "eager", updates: int = ROUND) -> dict:
    from torch.profiler import ProfilerActivity, profile

    _, calls = update_calls(variant)
    run_updates(calls, ROUND)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_updates(calls, updates)
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name[:90]
            totals[name][0] += 1
            totals[name][1] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
    kernels = sum(c for c, _ in totals.values()) / updates
    gpu_us = sum(t for _, t in totals.values()) / updates
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:25]
    rows = [
        {"kernel": k, "per_update": round(c / updates, 2), "us_per_update": round(t / updates, 1)} for k, (c, t) in top
    ]
    return {"kernels_per_update": kernels, "gpu_us_per_update": round(gpu_us, 1), "top": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile", default="eager,compile", help="the variants whose kernels to list")
    parser.add_argument("--device", default="cuda", help="cpu: a plumbing check of the eager variant")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "none (CPU)"
    print(f"GPU: {name}; torch {torch.__version__}", flush=True)
    for variant in args.variants.split(","):
        try:
            print(json.dumps(time_variant(variant.strip(), args.updates, args.device)), flush=True)
        except Exception as e:  # a report: one failed variant does not hide the others
            print(json.dumps({"variant": variant, "error": repr(e)[:300]}), flush=True)
    for variant in [] if args.no_profile or args.device != "cuda" else args.profile.split(","):
        prof = kernel_profile(variant)
        kernels, gpu_us = prof["kernels_per_update"], prof["gpu_us_per_update"]
        print(f"{variant} update: {kernels:.1f} kernels, {gpu_us} us of GPU time", flush=True)
        for row in prof["top"]:
            print(f"  {row['us_per_update']:8.1f} us  x{row['per_update']:<5} {row['kernel']}", flush=True)


if __name__ == "__main__":
    main()

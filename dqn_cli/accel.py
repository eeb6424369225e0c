"""Device-side speed-ups of the Q-networks, applied by the trainer after the agent is built.

Always: conv nets keep their weights channels-last (NHWC), oneDNN's native conv layout on CPU and
cuDNN's fast one on GPU; the update's conv passes then skip layout conversions (~15% faster on CPU).
`compile=true` compiles the online and target networks in place (`nn.Module.compile`, so state-dict
keys and checkpoints are unchanged). `cuda_graphs=true` (CUDA only, checked in config.py) compiles
them with mode="reduce-overhead": inductor records the forward and backward kernels of the update
as CUDA graphs and replays them, so one update is a few graph launches instead of dozens of kernel
launches. Each update and each action starts a new graph "step" so a replay never overwrites an
output that is still being read.
"""

from __future__ import annotations

import functools
import logging

import torch

from dqn_cli.agent import DQNAgent

log = logging.getLogger(__name__)


def accelerate(agent: DQNAgent, compile: bool = False, cuda_graphs: bool = False) -> DQNAgent:
    """Channels-last conv weights, then `compile_agent` if asked. The trainer passes the top-level
    `compile` and `cuda_graphs` keys."""
    for net in agent.networks():
        if any(p.dim() == 4 for p in net.parameters()):  # same Parameter objects: the optimizer keeps them
            net.to(memory_format=torch.channels_last)
    if compile:
        compile_agent(agent, cuda_graphs)
    return agent


def compile_agent(agent: DQNAgent, cuda_graphs: bool = False) -> DQNAgent:
    """Compile `agent`'s networks in place (mode reduce-overhead, i.e. CUDA graphs, with `cuda_graphs`)."""
    mode = "reduce-overhead" if cuda_graphs else "default"
    for net in {id(n): n for n in (agent.q_compute, agent.target_compute)}.values():  # the ones that run
        net.compile(mode=mode, dynamic=False)
    agent._greedy_numpy = None  # act through the compiled module
    if cuda_graphs:
        agent.update = _new_graph_step(agent.update)
        agent.greedy = _new_graph_step(agent.greedy)
    log.info(f"torch.compile (mode={mode}) on {agent.device}: the first updates are slow while it compiles")
    return agent


def _new_graph_step(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return fn(*args, **kwargs)

    return wrapped

"""Device-side speed-ups of the Q-networks, applied by the trainer after the agent is built.

Always, for conv nets: the weights go channels-last (NHWC) on the CPU, oneDNN's native conv layout
(the update's conv passes then skip layout conversions, ~15% faster), and on a GPU with
`precision=bf16-mixed`, whose cuDNN tensor-core kernels are NHWC. fp32 on a GPU stays NCHW: the
update measured faster so (H200, `scripts/bench_update.py`).
`compile=true` compiles the update (`compile_agent`): the TD loss through both networks, whose
backward AOTAutograd compiles with it, and gradient clipping with the Adam step. The networks
themselves stay plain modules (state-dict keys and checkpoints are unchanged, acting stays eager).
`cuda_graphs=true` (CUDA only, checked in config.py) records the whole update (forward, TD loss,
backward, gradient clipping, Adam, bf16 refresh; compiled or not) as one CUDA graph
(`GraphedUpdate`): an update is then a few host-to-GPU copies and one graph launch instead of
~100 kernel launches from Python. With `round_graphs=true` a round of updates drawn at once is one
graph (its target pass and all its updates).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch

from dqn_cli.agent import DQNAgent, update_fields
from dqn_cli.buffers import Batch
from dqn_cli.errors import UserError
from dqn_cli.utils import pinned

log = logging.getLogger(__name__)


def accelerate(agent: DQNAgent, compile: bool = False, cuda_graphs: bool = False) -> DQNAgent:
    """The conv nets' layout for the device, then `compile_agent` and `GraphedUpdate` if asked. The
    trainer passes the top-level `compile` and `cuda_graphs` keys."""
    if agent.device.type == "cpu" or agent.mixed:
        for net in agent.networks():
            if any(p.dim() == 4 for p in net.parameters()):  # same Parameter objects: the optimizer keeps them
                net.to(memory_format=torch.channels_last)
    if compile:
        compile_agent(agent)
    if cuda_graphs:
        agent.graphed = GraphedUpdate(agent)
    return agent


def compile_agent(agent: DQNAgent) -> DQNAgent:
    """Compile `agent`'s update in two parts (torch.compile's default mode, static shapes): the TD loss
    (`loss_terms`: both networks' forward passes, the target, the loss; inductor fuses the pointwise
    work between the convs and matmuls, and the backward pass comes compiled with it) and
    `clip_and_step` (gradient clipping and Adam). On a GPU that cuts the update's kernel count, which
    is what a batch-32 update's time is made of."""
    missing = _missing_compiler(agent.device)
    if missing:
        raise UserError(
            f"compile=true builds the update's kernels with {missing}, and none was found. "
            f"Install it, or drop compile=true: the update then runs uncompiled (the same algorithm)."
        )
    # Dynamo tells once that it drops Adam's profiler annotation; nothing a user can act on
    logging.getLogger("torch._dynamo.variables.ctx_manager").setLevel(logging.ERROR)
    # Dynamo keeps compiled code per code object (the update's methods, and the frames it resumes in
    # inside Optimizer.step), up to `recompile_limit` (8) entries, and every agent adds its own: drop
    # the earlier agents' (in a sequential sweep, finished runs), or from the 9th run in one process on
    # the Adam step would silently run uncompiled. Any other compiled code recompiles at its next call.
    torch._dynamo.reset_code_caches()
    optimizer = agent.optimizer
    # on a GPU fused Adam is one opaque kernel and inductor fuses a foreach Adam itself, faster (0.455 against
    # 0.498 ms per update, H200); on the CPU fused Adam's own kernel is the faster (1.4 against 2.6 ms per step)
    if agent.device.type == "cuda" and not optimizer.state:  # no step yet: nothing to carry over
        settings = {**optimizer.defaults, "fused": False, "foreach": True}
        agent.optimizer = torch.optim.Adam(agent._trained_masters, **settings)
    agent.loss_terms = torch.compile(agent._td_loss, dynamic=False)
    agent.clip_and_step = torch.compile(agent._clip_and_step, dynamic=False)
    log.info(f"torch.compile on {agent.device}: the first updates are slow while it compiles")
    return agent


def _missing_compiler(device: torch.device) -> str | None:
    """What torch.compile's inductor lacks here to build kernels for `device`, or None: Triton on a
    GPU, a C++ compiler on the CPU (found as inductor finds it: $CXX, else g++)."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton (it comes with torch's CUDA wheels: pip install triton)"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:  # inductor's InvalidCxxCompiler, or whatever an odd $CXX raises
        cxx = os.environ.get("CXX")
        return f"a C++ compiler ({f'CXX={cxx} is not one' if cxx else 'no g++ found'}; e.g. apt install g++)"
    return None


class GraphedUpdate:
    """`agent.step` recorded once as a CUDA graph and replayed for every later batch; a round of updates
    drawn at once (`agent.round_step`) likewise, as one graph for the whole round.

    The batch is copied (uint8 frames, or frame-store rows with buffer.storage=device, through
    pinned memory) into static input tensors that the graph reads; the graph writes the loss, mean
    Q and TD errors into static outputs, and each call clones the loss and mean Q. Recording follows
    PyTorch's whole-network capture recipe: a few warm-up steps on a side stream (lazy cuBLAS/cuDNN
    set-up, Adam's state), then the capture. The warm-up steps change the weights and Adam's state,
    so both are put back afterwards: the first replayed update is the run's first update. Weights
    changed in place later (target sync, `load_state_dict` of the networks) are seen by the graph; a
    new optimizer state (`load_state_dict`) calls `reset`, and a batch of another shape (or
    with/without importance weights or target values) or a round of another length records a graph of
    its own (`graphs`, keyed by kind and input shapes).
    """

    WARMUP_STEPS = 3

    def __init__(self, agent: DQNAgent):
        if agent.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.agent = agent
        self.reset()

    def reset(self) -> None:
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list, tuple]] = {}  # key: graph, inputs, outputs

    def __call__(self, batch: Batch, target_q: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        loss, q_mean, td = self._replay("update", [*update_fields(batch), target_q], self.agent.step)
        # the next replay overwrites the outputs: copies of the metrics, which wait for the next moment;
        # the TD errors are read at once (prioritized replay), in stream order before that replay
        return loss.clone(), q_mean.clone(), td

    def round(self, rows: Batch, count: int, batched_targets: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`agent.round_step` on `count` batches (`rows`, one after another): the round's target pass and
        all its updates in one replay, after one copy per field. Returns copies of the losses and mean Qs."""
        step = functools.partial(self.agent.round_step, count=count, batched_targets=batched_targets)
        losses, qs = self._replay(("round", count, batched_targets), update_fields(rows), step)
        return losses.clone(), qs.clone()

    def _replay(self, kind: str | tuple, fields: list, step: Callable[[list], tuple]) -> tuple:
        key = (kind, *(None if x is None else (tuple(x.shape), x.dtype) for x in fields))  # None: no such input
        if key not in self.graphs:
            self.graphs[key] = self._record(fields, step)
            log.info(f"recorded {kind} as a CUDA graph on {self.agent.device} (inputs {[k and k[0] for k in key[1:]]})")
        graph, inputs, outputs = self.graphs[key]
        for static, x in zip(inputs, fields, strict=True):  # a tensor (target_q) is on the device already
            if x is not None:
                static.copy_(x if torch.is_tensor(x) else pinned(torch.from_numpy(x)), non_blocking=True)
        graph.replay()
        return outputs

    def _record(self, fields: list, step: Callable[[list], tuple]) -> tuple[torch.cuda.CUDAGraph, list, tuple]:
        agent, device = self.agent, self.agent.device
        inputs = [None if x is None else torch.as_tensor(x, device=device).clone() for x in fields]
        saved = _snapshot(agent)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                step(inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        agent.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            outputs = step(inputs)
        _restore(agent, saved)
        return graph, inputs, outputs


def _snapshot(agent: DQNAgent) -> tuple[list[torch.Tensor], dict]:
    params = [p.detach().clone() for p in agent.q_net.parameters()]
    state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in agent.optimizer.state.items()}
    return params, state


@torch.no_grad()
def _restore(agent: DQNAgent, saved: tuple[list[torch.Tensor], dict]) -> None:
    """Put back the weights and Adam state from before the warm-up, in place (the graph holds these
    tensors). Adam state that the warm-up created is zeroed: Adam's own initial state."""
    params, state = saved
    torch._foreach_copy_(list(agent.q_net.parameters()), params)
    for p, s in agent.optimizer.state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                v.copy_(state[p][k]) if p in state else v.zero_()
    agent.refresh_compute()

"""The DQN agent: epsilon-greedy acting and the TD update against a target network."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from omegaconf import DictConfig
from torch import nn

from dqn_cli.buffers import Batch
from dqn_cli.utils import to_device

log = logging.getLogger(__name__)


class DQNAgent:
    """Online and target Q-networks with an Adam optimizer.

    Reads `agent.lr`, `adam_eps`, `loss`, `max_grad_norm`, `tau` and `double` (default false).
    The discount (`agent.gamma`, and gamma**n with `agent.n_step`) arrives in each batch.

    `shards` > 1 (CPU only, see `update_shards`) splits each update's batch across that many threads,
    each computing the gradient of its rows' share of the loss; the gradients are summed in a fixed
    order, so the update is the same full-batch step (up to float rounding) and stays deterministic.
    With `defer_updates` (overlap=true) the caller computes only its own, smaller shard and goes on;
    the shard threads finish the update (see `step`).

    `precision="bf16-mixed"`: `q_net` and `target_net` keep the fp32 master weights (what the
    optimizer steps and checkpoints hold); bf16 copies of them (`q_compute`, `target_compute`) run
    every forward and backward pass, are refreshed after each optimizer step and target sync, and
    their gradients reach the master weights as fp32. With fp32 the compute nets are the masters.
    """

    def __init__(
        self,
        q_net: nn.Module,
        n_actions: int,
        agent_cfg: DictConfig,
        device: torch.device,
        shards: int = 1,
        precision: str = "fp32",
    ):
        self.device = device
        self.n_actions = n_actions
        self.q_net = q_net.to(device)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self.mixed = precision != "fp32"
        if self.mixed:
            self.q_compute = copy.deepcopy(self.q_net).to(PRECISIONS[precision])
            self.target_compute = copy.deepcopy(self.target_net).to(PRECISIONS[precision])
        else:
            self.q_compute, self.target_compute = self.q_net, self.target_net
        self.loss_fn = {"huber": F.smooth_l1_loss, "mse": F.mse_loss}[agent_cfg.loss]
        self.max_grad_norm = agent_cfg.max_grad_norm
        self.tau = float(agent_cfg.tau)
        self.double = bool(agent_cfg.get("double", False))
        self.optimizer = torch.optim.Adam(
            self.q_net.parameters(),
            lr=float(agent_cfg.lr),
            eps=float(agent_cfg.adam_eps),
            fused=True,
            capturable=device.type == "cuda",  # its step count stays on the GPU: a CUDA graph can replay it
        )
        # Acting on the CPU goes through numpy views of the (fp32) weights: no per-step tensor churn.
        numpy_policy = getattr(self.q_net, "numpy_policy", None)
        self._greedy_numpy = numpy_policy() if device.type == "cpu" and numpy_policy else None
        self.td_abs: np.ndarray | None = None  # |TD error| of the last update, for priorities
        self.graphed = None  # accel.GraphedUpdate with cuda_graphs=true: the whole update as one CUDA graph
        # buffer.storage=device: the replay's frames on this device, and the frames per observation
        self.frame_store: torch.Tensor | None = None
        self.frame_stack = 0
        self.shards = shards
        self._trained_masters = [p for p in self.q_net.parameters() if p.requires_grad]
        self._trained_compute = [p for p in self.q_compute.parameters() if p.requires_grad]  # kept by .to()
        # the rest of an update may run on the shard threads while the caller acts (set by the trainer:
        # overlap=true); acting then uses the weights from before it until finish_update
        self.defer_updates = False
        self._pending = None  # that rest, in flight
        self._spare: list[torch.Tensor] = []  # the compute weights it writes, swapped in by finish_update
        # the update's two halves; compile=true swaps in compiled versions (accel.compile_agent)
        self.loss_terms = self._td_loss
        self.clip_and_step = self._clip_and_step
        self._pool: ThreadPoolExecutor | None = None  # the shard threads, started by the first update
        self._shard_threads = torch.get_num_threads()  # each one's intra-op threads: the caller's

    @property
    def can_defer_updates(self) -> bool:
        """Whether an update can finish beside acting: there is a shard thread to finish it, and
        acting reads only the compute copy (bf16-mixed conv nets), never the masters it steps."""
        return self.shards > 1 and self.mixed and self._greedy_numpy is None

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch of observations."""
        return self._greedy_later(obs)()

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy actions for a batch of observations (one per vector env)."""
        return self.act_later(obs, epsilon, rng)()

    def act_later(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> Callable[[], np.ndarray]:
        """`act`, returning a function that gives the actions. On a GPU the greedy pass is only queued
        (behind the updates in flight) and that function waits for it: the caller can queue more work
        first, and the GPU never waits for the caller. `rng` is drawn from as `act` draws, at once."""
        n = len(obs)
        explore = rng.random(n) < epsilon
        if explore.all():
            actions = rng.integers(0, self.n_actions, size=n)
            return lambda: actions
        greedy = self._greedy_later(obs)
        if not explore.any():
            return greedy
        random_actions = rng.integers(0, self.n_actions, size=n)
        return lambda: np.where(explore, random_actions, greedy())

    def _greedy_later(self, obs: np.ndarray) -> Callable[[], np.ndarray]:
        if self._greedy_numpy is not None:
            actions = self._greedy_numpy(obs)
            return lambda: actions
        with torch.no_grad():  # on a GPU: obs through pinned memory, no wait for the queued updates
            best = self.q_compute(self._tensor(obs)).argmax(dim=1)
        if self.device.type != "cuda":
            actions = best.numpy()
            return lambda: actions
        host = torch.empty(best.shape, dtype=best.dtype, pin_memory=True).copy_(best, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return lambda: (done.synchronize(), host.numpy())[1]

    def _tensor(self, x: np.ndarray | None) -> torch.Tensor | None:
        # on a GPU: one copy into dense pinned memory (frame stacks arrive as strided views), no waiting
        return None if x is None else to_device(x, self.device)

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the TD error of `batch`; returns loss and mean Q."""
        metrics = self.learn(batch)
        self.wait_for_update()
        return {k: v.item() for k, v in metrics.items()}

    def learn(self, batch: Batch, target_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`update` without waiting for the device: loss and mean Q as 0-dim tensors on it. On a GPU
        the caller can go on (sample the next batch) while the kernels run. With `defer_updates` the
        shard threads write them when they finish the update: read them after `wait_for_update`.
        `target_q`: the batch's Q(s', .; theta-) from `target_values`, when the caller scored a round
        of batches at once."""
        if self.graphed is not None:
            loss, q_mean, td = self.graphed(batch, target_q)
        else:
            loss, q_mean, td = self.step([*(self._tensor(x) for x in update_fields(batch)), target_q])
        if batch.weights is not None:
            self.td_abs = td.abs().cpu().numpy()
        return {"td_loss": loss, "q_values": q_mean}

    def learn_round(self, rows: Batch, count: int, batched_targets: bool = True) -> list[dict[str, torch.Tensor]]:
        """`learn` on each of `count` batches, `rows` holding them one after another (no importance
        weights; nothing comes between the updates): `round_step` on the device, one CUDA graph replay
        with `cuda_graphs=true`. Returns each update's loss and mean Q, as `learn` does."""
        if self.graphed is not None:
            losses, qs = self.graphed.round(rows, count, batched_targets)
        else:
            losses, qs = self.round_step([self._tensor(x) for x in update_fields(rows)], count, batched_targets)
        return [{"td_loss": loss, "q_values": q} for loss, q in zip(losses, qs, strict=True)]

    def round_step(self, tensors: list, count: int, batched_targets: bool = True) -> tuple[torch.Tensor, ...]:
        """`count` updates (`step`) on equal consecutive parts of `tensors`, the device tensors of a
        round's `update_fields`. With `batched_targets` the target network first scores every part's
        next states in one pass (`target_values`: the updates of a round all see one target network).
        Returns the updates' losses and mean Qs, stacked. This is what `cuda_graphs=true` records as one
        CUDA graph per round (`GraphedUpdate.round`)."""
        target_q = self._target_pass(*tensors[:2]) if batched_targets else None
        size = len(tensors[2]) // count
        metrics = []
        for i in range(count):
            part = slice(i * size, (i + 1) * size)
            metrics.append(self.step([None if t is None else t[part] for t in (*tensors, target_q)])[:2])
        losses, qs = zip(*metrics, strict=True)
        return torch.stack(losses), torch.stack(qs)

    def step(self, tensors: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The update on the device tensors of `update_fields` and the batch's `target_q` (or None):
        gradient, clipping, optimizer step, compute-copy refresh. Returns the loss, mean Q and TD errors,
        detached. This is what `cuda_graphs=true` records as one CUDA graph (the frame-store gather included).

        With `defer_updates` the caller computes its shard's gradient and returns; the shard threads
        compute theirs, then sum them, clip, step and write the new compute weights aside
        (`_finish_to_spare`); `finish_update` swaps those in. The caller's shard is the smaller
        (`CALLER_SHARE`): the caller also acts and steps the envs while the update finishes. The loss
        and mean Q come back as tensors the shard thread fills in, the TD errors as None. A batch with
        importance weights (prioritized replay, whose priorities need every TD error at once) waits for
        all the shards, and only the optimizer step runs on the shard thread."""
        tensors = self._stacks(tensors)
        self.finish_update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.shards == 1 and not self.mixed:
            loss, q, td = self.loss_terms(tensors, len(tensors[2]))
            loss.backward()
            self._optimizer_step()
            return loss.detach(), q.mean(), td
        batch_size, weighted = len(tensors[2]), tensors[6] is not None
        if self.defer_updates and not weighted:  # the shard threads finish it while the caller goes on
            own, others = self._start_shards(tensors, batch_size, deferred=True)
            metrics = torch.empty(2)
            self._pending = self._threads().submit(self._finish_to_spare, own, others, metrics)
            return metrics[0], metrics[1], None
        loss, q, td, grads = self._join_shards(*self._start_shards(tensors, batch_size))
        if self.defer_updates:  # on the shard thread, while the caller goes on; finish_update joins it
            self._pending = self._threads().submit(self._optimizer_step_to_spare, grads)
        else:  # the shard threads wait meanwhile: the caller takes their cores (bf16-mixed: refreshed with the step)
            with intra_op_threads(self.shards * self._shard_threads):
                self._optimizer_step(grads, refresh=self._trained_compute if self.mixed else None)
        return loss, q.mean(), td

    def _stacks(self, tensors: list) -> list:
        """`tensors` with obs and next_obs as frame stacks. With buffer.storage=device tensors[0] holds
        the batch's frame-store rows (tensors[1] is None): the stacks are gathered from the store here."""
        if tensors[1] is not None:
            return tensors
        index, store = tensors[0], self.frame_store
        frames = torch.index_select(store, 0, index.flatten()).view(*index.shape, *store.shape[1:])
        k = self.frame_stack
        return [frames[:, :k], frames[:, -k:], *tensors[2:]]

    @torch.no_grad()
    def target_values(self, batch: Batch, chunk: int | None = None) -> torch.Tensor:
        """Q(s', .; theta-) of every row's next state, as fp32, in passes of up to `chunk` rows.

        Several updates between two env steps (vector envs, `agent.gradient_steps` > 1) all see the same
        target network, since target syncs come between steps: the trainer draws their batches at once
        and has the target network score all their next states here, in wide passes instead of one
        batch-32 pass per update (`batched_targets`). Each update then runs only the online network.
        A GPU takes 1,024 rows a pass. On the CPU wide passes cost more per row (the activations leave
        the caches): 64 rows a pass, 2.71 ms per 32 rows against 2.88 for 32-row passes and 6.17 for
        one 1,024-row pass (Nature CNN, fp32, one thread, 2-core Xeon). The trainer batches targets on
        a GPU only: on the CPU an update's own target pass is split over its shard threads.
        """
        self.finish_update()
        obs, next_obs = update_fields(batch)[:2]  # with buffer.storage=device: frame-store rows, None
        return self._target_pass(self._tensor(obs), self._tensor(next_obs), chunk)

    @torch.no_grad()
    def _target_pass(self, obs: torch.Tensor, next_obs: torch.Tensor | None, chunk: int | None = None) -> torch.Tensor:
        """`target_values` on device tensors (obs the frame-store rows when next_obs is None)."""
        chunk = chunk or (1024 if self.device.type == "cuda" else 64)
        if next_obs is None:  # gather only the next stacks' frames: the last K of each row's window
            next_obs = self._stacks([obs[:, -self.frame_stack :], None])[1]
        return torch.cat([self.target_compute(next_obs[i : i + chunk]).float() for i in range(0, len(next_obs), chunk)])

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:  # each shard thread: the caller's intra-op threads, denormals flushed
            self._pool = ThreadPoolExecutor(self.shards - 1, "dqn-update", _init_shard_thread, (self._shard_threads,))
        return self._pool

    def close(self) -> None:
        """Wait for a deferred optimizer step, then end the shard threads (a later update starts new ones).
        The trainer calls it when training ends: a thread that ran compiled code (compile=true) holds
        torch thread-local Python objects, and left for interpreter shutdown to end, it aborts the
        process ("terminate called without an active exception"): 7 of 14 exits in one check."""
        self.finish_update()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def wait_for_update(self) -> None:
        """With `defer_updates`: wait until the shard threads have finished the last update (its loss
        and mean Q are then written), without swapping its weights in: acting keeps the ones it uses."""
        if self._pending is not None:
            self._pending.result()

    def finish_update(self) -> None:
        """With `defer_updates`: wait for the rest of the last update, and let the compute net take
        the weights it wrote. Everything that reads or writes the weights calls it first."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
            compute = list(self.q_compute.parameters())
            fresh, self._spare = self._spare, [p.data for p in compute]
            for p, weights in zip(compute, fresh, strict=True):
                p.data = weights

    @torch.no_grad()
    def _optimizer_step_to_spare(self, shard_grads: Sequence[list[torch.Tensor]]) -> None:
        """The deferred optimizer step, then the new weights in compute dtype into spare tensors
        (acting still reads the compute net's own); finish_update swaps them in."""
        self._optimizer_step(shard_grads)
        if not self._spare:  # same shapes, dtype and memory format as the compute net's
            self._spare = [torch.empty_like(p) for p in self.q_compute.parameters()]
        torch._foreach_copy_(self._spare, list(self.q_net.parameters()))

    def _optimizer_step(
        self, shard_grads: Sequence[list[torch.Tensor]] = (), refresh: list[torch.Tensor] | None = None
    ) -> None:
        """Sum the shards' fp32 gradients (in shard order) into the masters' `.grad`, clip, step, and copy
        the new weights into `refresh` (the trained compute weights of bf16-mixed) if given."""
        if shard_grads:
            grads = shard_grads[0]
            for part in shard_grads[1:]:
                torch._foreach_add_(grads, part)
            for p, g in zip(self._trained_masters, grads, strict=True):
                p.grad = g
        self.clip_and_step(refresh)

    def _clip_and_step(self, refresh: list[torch.Tensor] | None = None) -> None:
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._trained_masters, float(self.max_grad_norm))
        self.optimizer.step()
        if refresh is not None:  # compiled (compile=true): one kernel for all these casts; eager: one per tensor
            with torch.no_grad():
                torch._foreach_copy_(refresh, self._trained_masters)

    def _td_loss(self, tensors: list, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The TD loss of these rows as their share of the batch mean (sum / batch_size), with
        Q(s, a) and the TD errors y - Q(s, a) (detached). `target_q`, Q(s', .; theta-), comes computed
        ahead (`target_values`) or is computed here."""
        obs, next_obs, actions, rewards, terminated, discounts, weights, target_q = tensors
        with torch.no_grad():
            if target_q is None:  # the frozen target network scores the next state
                target_q = self.target_compute(next_obs).float()
            if self.double:
                # double DQN: the online network picks a* = argmax_a' Q(s', a'; theta), the target scores it
                best = self.q_compute(next_obs).argmax(dim=1, keepdim=True)
                next_q = target_q.gather(1, best).squeeze(1)
            else:
                next_q = target_q.max(dim=1).values  # max_a' Q(s', a'; theta-)
            # y = r + gamma^k * Q(s'), k rewards summed (n-step); no bootstrap past a termination
            # (a truncation keeps it: s' is then the last real state of the window)
            target = rewards + discounts * (1.0 - terminated) * next_q
        # Q(s, a; theta) for the actions actually taken
        q = self.q_compute(obs).float().gather(1, actions.unsqueeze(1)).squeeze(1)
        losses = self.loss_fn(q, target, reduction="none")
        if weights is not None:  # prioritized replay: importance weights correct the sampling bias
            losses = weights * losses
        return losses.sum() / batch_size, q.detach(), (target - q).detach()

    def _start_shards(self, tensors: list, batch_size: int, deferred: bool = False) -> tuple:
        """Start the shards of an update: shard i's rows go to thread i, and the caller computes shard 0
        here. Returns the caller's part and the futures of the others', for `_join_shards`. Each part:
        loss (its rows' share of the batch mean), Q(s, a), TD errors and the compute net's gradients:
        the others' as fp32, the caller's in the compute dtype (`_join_shards` casts them, on the thread
        that joins). `deferred`: the caller's shard is `CALLER_SHARE` of an even one (the others split
        the rest evenly)."""
        params = self._trained_compute

        def shard(rows: slice, cast: bool = True) -> tuple:
            loss, q, td = self.loss_terms([t if t is None else t[rows] for t in tensors], batch_size)
            grads = torch.autograd.grad(loss, params)
            return loss.detach(), q, td, [g.float() for g in grads] if cast else grads

        bounds = np.linspace(0, batch_size, self.shards + 1)
        if deferred:
            bounds = [0, *np.linspace(round(bounds[1] * CALLER_SHARE), batch_size, self.shards)]
        bounds = np.asarray(bounds).astype(int)
        rows = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        others = [self._threads().submit(shard, r) for r in rows[1:]]  # none with one shard
        return shard(rows[0], cast=False), others

    @staticmethod
    def _join_shards(own: tuple, others: list) -> tuple:
        """Loss, Q(s, a), TD errors and each shard's fp32 gradients of the parts from `_start_shards`."""
        parts = [(*own[:3], [g.float() for g in own[3]])] + [f.result() for f in others]
        losses, qs, tds, grads = zip(*parts, strict=True)
        return sum(losses), torch.cat(qs), torch.cat(tds), grads

    def _finish_to_spare(self, own: tuple, others: list, metrics: torch.Tensor) -> None:
        """A deferred update's rest, on a shard thread: its shards joined, the optimizer step to the spare
        weights, and the loss and mean Q into `metrics`."""
        loss, q, _, grads = self._join_shards(own, others)
        self._optimizer_step_to_spare(grads)
        metrics[0], metrics[1] = loss, q.mean()

    @torch.no_grad()
    def sync_target(self) -> None:
        """theta- <- theta (tau = 1) or theta- <- tau*theta + (1-tau)*theta- (Polyak)."""
        self.finish_update()
        online, target = list(self.q_net.parameters()), list(self.target_net.parameters())
        if self.tau >= 1.0:
            torch._foreach_copy_(target, online)
        else:
            torch._foreach_lerp_(target, online, self.tau)
        for b_t, b_o in zip(self.target_net.buffers(), self.q_net.buffers(), strict=True):
            b_t.copy_(b_o)
        if self.mixed:
            _copy_weights(self.target_compute, self.target_net)

    def networks(self) -> list[nn.Module]:
        """Every distinct network the agent holds: the masters, then the compute copies if any."""
        nets = (self.q_net, self.target_net, self.q_compute, self.target_compute)
        return list({id(net): net for net in nets}.values())  # in fp32 the compute nets are the masters

    def state_dict(self) -> dict:
        self.finish_update()
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.finish_update()
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])  # new state tensors: a recorded graph is stale
            if self.graphed is not None:
                self.graphed.reset()
        self.refresh_compute()

    def refresh_compute(self) -> None:
        """Copy the master weights into the compute nets (bf16-mixed; nothing to do in fp32). Call
        after changing q_net or target_net's weights from outside."""
        self.finish_update()
        if self.mixed:
            _copy_weights(self.q_compute, self.q_net)
            _copy_weights(self.target_compute, self.target_net)


def update_fields(batch: Batch) -> list[np.ndarray | None]:
    """What an update reads, in `DQNAgent.step`'s order: obs, next_obs, actions, rewards, terminated,
    discounts, weights. With buffer.storage=device, obs is the batch's frame-store index and next_obs
    None (the frames are gathered on the device); weights is None without prioritized replay."""
    obs, next_obs = (batch.frames, None) if batch.frames is not None else (batch.obs, batch.next_obs)
    return [obs, next_obs, batch.actions, batch.rewards, batch.terminated, batch.discounts, batch.weights]


PRECISIONS = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16}  # the `precision` key: compute dtypes


@torch.no_grad()
def _copy_weights(compute: nn.Module, master: nn.Module) -> None:
    """compute <- master, cast to the compute net's dtype (its layout kept)."""
    torch._foreach_copy_(list(compute.parameters()), list(master.parameters()))
    for b_c, b_m in zip(compute.buffers(), master.buffers(), strict=True):
        b_c.copy_(b_m)


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """The caller's intra-op threads set to `threads` inside the block (OpenMP keeps them per thread).

    With update shards, the gradient sum, clipping and Adam after the shards run on the caller alone
    while the shard threads wait: with all the update's threads they took 1.4 ms instead of 2.2 per
    Nature-CNN update, and Pong trained 1-6% faster in fp32 (2-core Xeon, three pairs of runs)."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_shard_thread(threads: int) -> None:
    torch.set_num_threads(threads)  # per thread: OpenMP and MKL keep their thread counts per caller
    torch.set_flush_denormal(True)  # per thread too (the MXCSR register)


MIN_SHARD_ROWS = 16  # below this a conv net's per-row cost climbs; fewer, wider shards are faster
# With deferred updates the caller's shard is 3/4 of an even one (12 of 32 rows on 2 threads): the
# caller also acts and steps the envs while the shard thread finishes the update (its own 20 rows,
# the gradient sum, clipping, Adam). Pong with `env.vectorization=ale overlap=true
# precision=bf16-mixed`, 2-core AMD EPYC, 9 interleaved pairs: ~8% more steps/s than even shards
# (5/8 would give 10 rows: ~7%; 7/8, 14 rows: ~1%).
CALLER_SHARE = 0.75


def update_shards(threads: int, batch_size: int, device: torch.device) -> int:
    """How many threads share a CPU update: `torch_threads`, as long as each gets 16+ rows.

    On 2 cores the Nature CNN update (batch 32) runs ~10% faster as two 16-row halves on one thread
    each than as one batch over 2 intra-op threads (and acting on one observation is fastest on one
    thread). Each shard runs threads // shards intra-op threads (`make_agent` sets them).
    """
    if device.type != "cpu":
        return 1
    return max(1, min(threads, batch_size // MIN_SHARD_ROWS))


def make_agent(
    cfg: DictConfig, obs_shape: tuple[int, ...], n_actions: int, device: torch.device, update_threads: int = 1
) -> DQNAgent:
    """Build the Q-network (`network` group) and the agent around it (`agent` group, top-level
    `precision`). A trainer passes `update_threads` (its `torch_threads`): on the CPU they are shared
    out between the update's shards (`update_shards`), which also sets the caller's intra-op threads."""
    from dqn_cli.networks import make_network

    shards = update_shards(update_threads, int(cfg.agent.batch_size), device)
    if shards > 1:
        torch.set_num_threads(update_threads // shards)  # the intra-op threads of each shard, the caller's too
    net = make_network(cfg.network, obs_shape, n_actions)
    precision = cfg.get("precision", "fp32")
    if precision != "fp32" and not native_bf16(device):
        log.warning(
            f"precision={precision}: this {device.type.upper()} has no native bf16 arithmetic (on CPUs: "
            "AVX512-BF16 or AMX), so bf16 runs emulated and slower than fp32. precision=fp32 is faster here."
        )
    return DQNAgent(net, n_actions, cfg.agent, device, shards, precision)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

"""The training loop: act, store, maybe update, maybe sync, maybe evaluate, maybe checkpoint."""

from __future__ import annotations

import logging
import math
import random
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dqn_cli import env_state, signals
from dqn_cli.accel import accelerate
from dqn_cli.agent import make_agent
from dqn_cli.atari import apply_eval_protocol
from dqn_cli.buffers import Batch, make_buffer
from dqn_cli.checkpoint import remove_temp_files, save_arrays, save_checkpoint, state_dict_mismatch
from dqn_cli.config import preset_mismatch, validate_train
from dqn_cli.envs import finished_episodes, make_env, real_next_obs
from dqn_cli.errors import UserError, WriteError, counted
from dqn_cli.evaluate import eval_env_count, run_episodes
from dqn_cli.layout import CHECKPOINTS, LAST
from dqn_cli.logger import RunLogger
from dqn_cli.prioritized import PrioritizedReplay
from dqn_cli.resume import load_replay, replay_arrays, resume_config
from dqn_cli.schedules import epsilon_schedule
from dqn_cli.signals import StopSignals, TrainingStoppedError
from dqn_cli.utils import Every, set_seed, setup_torch

log = logging.getLogger(__name__)

# queue_ahead (overlap=true on a GPU): the share of the due updates queued before the greedy pass is
# waited for (1/4): enough to keep the GPU busy while the loop waits, the rest go beside the envs' step
QUEUE_AHEAD_DIVISOR = 4


class DivergedError(UserError):
    """A non-finite loss, Q value or weight: training stops without saving the bad weights."""

    exit_code = 3


class Trainer:
    """Builds every part from the config and runs DQN's loop. `run()` returns the final eval return.

    The builders read their groups: `make_env` env.*, `make_agent` network.* and agent.* (the update's
    keys), `make_buffer` buffer.*, `RunLogger` log.*. The trainer reads the loop's own keys: the
    agent's schedule (`agent.learning_starts`, `train_freq`, `gradient_steps`, `target_update_interval`,
    `batch_size`, `exploration_*`), `total_steps`, `seed`, `device`, `torch_threads`, the speed switches
    (`compile`, `cuda_graphs`, `overlap`, `batched_targets`, `round_graphs`, `precision`,
    `buffer.storage`), and the `eval.*` and `checkpoint.*` blocks with `eval_protocol`.

    With `resume=RUN_DIR` it rebuilds the run from RUN_DIR's own config (see `dqn_cli.resume`; the
    command-line `overrides` may only extend total_steps) and continues from its last.pt, in place.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, overrides: Sequence[str] = ()):
        validate_train(cfg)
        resumed = None
        if cfg.get("resume"):
            cfg, resumed = resume_config(cfg, overrides)
            validate_train(cfg)
            run_dir = Path(cfg.resume).absolute()
        self.cfg, self.run_dir = cfg, Path(run_dir)
        _check_writable(self.run_dir, resumed=resumed is not None)
        self.device = setup_torch(cfg.device, cfg.torch_threads)
        self.rng = set_seed(cfg.seed)
        self.env = make_env(cfg.env, cfg.seed)
        obs_space, n_actions = self.env.single_observation_space, int(self.env.single_action_space.n)
        self.agent = make_agent(cfg, obs_space.shape, n_actions, self.device, int(cfg.torch_threads))
        accelerate(self.agent, compile=bool(cfg.get("compile")), cuda_graphs=bool(cfg.get("cuda_graphs")))
        # overlap=true on the CPU with bf16-mixed: each update also finishes while the next steps are taken
        self.agent.defer_updates = bool(cfg.get("overlap")) and self.agent.can_defer_updates
        self.buffer = make_buffer(
            cfg.buffer,
            obs_space.shape,
            obs_space.dtype,
            self.env.num_envs,
            cfg.agent.n_step,
            cfg.agent.gamma,
            frame_stacks=cfg.env.kind == "atari",
        )
        # buffer.storage=device: frames on the device too; with uniform replay a round's batches are drawn at
        # once, and with batched_targets the target network scores all their next states in one pass
        self.draw_together = False
        if cfg.buffer.get("storage") == "device":
            storage = getattr(self.buffer, "storage", self.buffer)  # PrioritizedReplay holds its storage
            self.agent.frame_store, self.agent.frame_stack = storage.keep_frames_on(self.device), obs_space.shape[0]
            self.draw_together = not isinstance(self.buffer, PrioritizedReplay)
        # (on a GPU: on the CPU the per-batch passes run on both shard threads, the round's pass on one, slower)
        on_gpu = self.device.type == "cuda"
        self.batched_targets = self.draw_together and on_gpu and bool(cfg.get("batched_targets", True))
        # overlap=true on a GPU: a quarter of the due updates is queued before the loop waits for the actions
        # (queued behind the updates in flight), so the GPU has work while the loop takes them and starts the games
        self.queue_ahead = bool(cfg.get("overlap")) and on_gpu
        # cuda_graphs=true: a round drawn at once is one graph replay (its target pass and all its updates)
        graphed = self.agent.graphed is not None
        self.round_graphs = self.draw_together and graphed and bool(cfg.get("round_graphs", True))
        a = cfg.agent
        self.epsilon = epsilon_schedule(a, cfg.total_steps)
        self.eval_env = None
        self.step = self.episodes = self.updates = 0
        self.best_eval = -math.inf
        self.last_eval: float | None = None
        self.last_eval_step: int | None = None
        self.eval_due = False  # an evaluation a stop left unfinished: the resumed run plays it first
        self.obs: np.ndarray | None = None  # what the next step acts on (saved: episodes continue)
        self.metrics: dict[str, list[float]] = {}  # update metrics since the last log line
        self.pending: list[dict[str, torch.Tensor]] = []  # on a GPU: metrics not yet brought to the host
        self.due_updates = 0  # overlap=true: updates due, run while the envs compute the next step
        self.round: list[tuple[Batch, torch.Tensor | None]] = []  # a round drawn at once, run update by update
        self.schedule_steps = int(cfg.total_steps)  # epsilon decays over a fraction of this
        self.learning_starts = int(a.learning_starts)
        self.last_saved: tuple[Path, int] | None = None  # last.pt and its step: the last good checkpoint
        self.logged_step: int | None = None  # the step of the last scalars written (log.interval)
        self._replay_step: int | None = None
        if resumed is not None:
            self.load_state_dict(resumed)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, stop_file: Path | None = None) -> float:
        """Train until total_steps (or a solving eval), then evaluate and write last.pt.

        Ctrl-C / SIGTERM only raise a flag: the step in flight finishes, last.pt is written, and a
        TrainingStoppedError says how to resume. So does `stop_file` once it exists (a sweep's, see
        `dqn_cli.signals.SweepStop`).
        """
        cfg = self.cfg
        steps = f"from step {self.step} to {cfg.total_steps}" if self.step else f"for {cfg.total_steps} steps"
        with StopSignals(stop_file) as stop:
            log.info(f"training {cfg.env.id} {steps} on {self.device}; run dir {self.run_dir}")
            n = self.env.num_envs
            if (cfg.total_steps - self.step) % n:
                end = self.step + -(-(cfg.total_steps - self.step) // n) * n
                log.info(f"the {n} envs step together, so the run ends at step {end} (total_steps={cfg.total_steps})")
            if self.learning_starts >= cfg.total_steps:
                log.warning(
                    f"agent.learning_starts={self.learning_starts} >= total_steps={cfg.total_steps}: this run collects "
                    "experience but makes no update"
                )
            self._warn_about_vector_steps(n)
            if (mismatch := preset_mismatch(cfg.env)) is not None:
                log.warning(mismatch)
            logger = RunLogger(self.run_dir, cfg.log, cfg.total_steps, self.step)  # opens the progress bar
            try:
                solved = self._loop(logger, stop)
                if self.step < cfg.total_steps and not solved:  # the loop ended on a stop signal
                    raise self._stopped(stop)
                if self.logged_step != self.step:  # the last window, shorter than log.interval
                    self._log_scalars(logger, self.epsilon(self.step))
                if not solved and self.last_eval_step != self.step:
                    self.evaluate(logger)
                self.save_last("done")
                logger.hparams(self.step, cfg, {"final_return": self.last_eval, "best_return": self.best_eval})
                # arrived after the last step: the run is complete anyway; a single run still exits as
                # stopped (130 / 143), a sweep's job is COMPLETED (its sweep reports the stop)
                if stop.requested and stop_file is None:
                    raise TrainingStoppedError(
                        f"stopped by {stop.name} after the last step; the run is complete.", stop.signum
                    )
            finally:
                logger.close(self.step)
                self.agent.close()
                self.env.close()
                if self.eval_env is not None:
                    self.eval_env.close()
        log.info(
            f"done: {counted(self.step, 'step')}, {counted(self.episodes, 'episode')}, "
            f"{counted(self.updates, 'update')}; "
            f"final {eval_kind(cfg.eval.epsilon)} {self.last_eval:.2f} over {counted(cfg.eval.episodes, 'episode')} "
            f"(best {self.best_eval:.2f})"
        )
        log.info(f"checkpoint: {self.run_dir / LAST}")
        return float(self.last_eval)

    def _loop(self, logger: RunLogger, stop: StopSignals) -> bool:
        """DQN's loop; returns True when an evaluation solved the env (stop_on_solved).

        With `overlap=true` (async vector envs) the updates due after a step run while the envs
        compute the next one: the actions of step t+1 are chosen before step t's updates. Target
        syncs, evaluations and checkpoints still come after the updates due before them; a log reports
        the updates done (so how often a run logs does not change what it computes). On a
        GPU the first quarter of those updates is queued before the loop waits for the actions
        (`queue_ahead`); the order of the computations stays the same.
        """
        cfg, a, n = self.cfg, self.cfg.agent, self.env.num_envs
        # plain ints: an OmegaConf lookup costs microseconds, too many for a per-step check
        total_steps, gradient_steps = int(cfg.total_steps), int(a.gradient_steps)
        overlap = bool(cfg.get("overlap", False))
        train_now, sync_now = Every(a.train_freq), Every(a.target_update_interval)
        log_now, eval_now = Every(cfg.log.interval), Every(cfg.eval.interval)
        checkpoint_now = Every(cfg.checkpoint.interval)
        obs = self.obs if self.obs is not None else self.env.reset(seed=cfg.seed)[0]
        if self.eval_due and not stop.requested:
            log.info(f"the evaluation at step {self.step}, left unfinished by the stop, comes first")
            if self.evaluate(logger, stop):
                return True
        while self.step < total_steps and not stop.requested:
            epsilon = self.epsilon(self.step)
            actions, next_obs, rewards, terminated, truncated, infos = self._act_and_step(obs, epsilon, overlap)
            done = terminated | truncated
            # store s' as the env left it: on an episode end that is final_obs, not the reset obs
            self.buffer.add(obs, actions, rewards, real_next_obs(next_obs, infos, done), terminated, truncated)
            self.obs = obs = next_obs
            before, self.step = self.step, self.step + n
            if done.any():
                for _, ret, length in finished_episodes(infos):
                    self.episodes += 1
                    logger.episode(self.step, ret, length)

            if self.step > self.learning_starts and train_now(before, self.step):
                self.due_updates += gradient_steps
            moments = (sync_now, log_now, eval_now, checkpoint_now)
            sync, log_, eval_, checkpoint = (moment(before, self.step) for moment in moments)
            # a log does not need the due updates (it reports those done): with overlap=true they still run
            # beside the next step, so how often a run logs does not change what it computes
            if not overlap or sync or eval_ or checkpoint or self.step >= total_steps:
                self._learn_due()
            if sync:
                self.agent.sync_target()
            if log_:
                self._log_scalars(logger, epsilon)
            # the last step's evaluation is the run's final one, which plays on after a stop (see evaluate)
            solved = bool(eval_) and self.evaluate(logger, stop if self.step < total_steps else None)
            if checkpoint:  # (a solved run's last.pt comes from run(), as done)
                self._checkpoint(last=not solved)
            if solved:
                return True
            logger.progress(self.step)
        return False

    def _checkpoint(self, last: bool = True) -> None:
        """The periodic checkpoints, step_N.pt and (with `last`) last.pt. One the file system refuses (a
        full disk) is said, and training goes on: the last checkpoint written stays what `resume=`
        continues from, and the next one may find space again."""
        try:
            self.save(f"step_{self.step}.pt")
            if last:
                self.save_last("running")
        except WriteError as e:
            goes_on = "Training goes on" if last else "The run ends solved (last.pt comes next)"
            log.warning(f"{e} {goes_on}; {self._last_written()}")

    def _last_written(self) -> str:
        if self.last_saved is None:
            return "no last.pt has been written yet"
        path, step = self.last_saved
        return f"the last checkpoint written is {path} (step {step}), which resume= continues from"

    def _act_and_step(self, obs: np.ndarray, epsilon: float, overlap: bool) -> tuple:
        """Epsilon-greedy actions on `obs`, and the envs' step on them: the actions played (ale presses
        FIRE after a lost life in place of the agent's action: `infos["actions"]`), next obs, rewards,
        terminated, truncated, infos. With `overlap` the due updates run while the envs step (on a GPU
        their first quarter is queued before the greedy pass is waited for: `queue_ahead`)."""
        act = self.agent.act_later(obs, epsilon, self.rng)
        if overlap:
            if self.queue_ahead:
                self._learn_due(limit=max(1, self.due_updates // QUEUE_AHEAD_DIVISOR))
            actions = act()
            self.env.step_async(actions)
            self._learn_due()  # (the rest) while the games step
            next_obs, rewards, terminated, truncated, infos = self.env.step_wait()
        else:
            actions = act()
            next_obs, rewards, terminated, truncated, infos = self.env.step(actions)
        return infos.get("actions", actions), next_obs, rewards, terminated, truncated, infos

    def _warn_about_vector_steps(self, n: int) -> None:
        """Updates and target syncs come at most once per vector step (n env steps): a warning where that
        gives fewer than one update per `agent.train_freq` env steps (gradient_steps not scaled for the
        envs) or `agent.target_update_interval` asks for more syncs; the ratio, as info, where
        gradient_steps was scaled."""
        a = self.cfg.agent
        if a.gradient_steps * a.train_freq < n:  # (agent.gradient_steps=n/train_freq keeps train_freq's ratio)
            ratio = n * a.gradient_steps / a.train_freq
            fix = (
                f"set agent.gradient_steps={ratio:g}"
                if ratio == int(ratio)
                else f"set agent.gradient_steps to {math.floor(ratio)} or {math.ceil(ratio)} ({ratio:g} is not whole), "
                "or env.num_envs to a multiple of agent.train_freq"
            )
            log.warning(
                f"env.num_envs={n}: each vector step is {n} env steps, more than agent.train_freq={a.train_freq}, "
                f"and a round of agent.gradient_steps={a.gradient_steps} comes once per vector step: "
                f"{counted(a.gradient_steps, 'update')} per {n} env steps, not per {a.train_freq}. "
                f"For train_freq's ratio, {fix}."
            )
        elif a.train_freq < n:  # gradient_steps scaled for the envs (the GPU recipes): the ratio, said once
            log.info(
                f"env.num_envs={n} > agent.train_freq={a.train_freq}: one round of agent.gradient_steps="
                f"{a.gradient_steps} per vector step, {counted(a.gradient_steps, 'update')} per {n} env steps"
            )
        if a.target_update_interval < n:
            log.warning(
                f"agent.target_update_interval={a.target_update_interval} is below env.num_envs={n}: the target "
                f"network syncs once per vector step, every {n} env steps."
            )

    def _learn_due(self, limit: int | None = None) -> None:
        """Run the due updates, or the first `limit` of them (the rest stay due; a round drawn at once is
        kept for them, so it makes no difference how a round is split). With `round_graphs` a round drawn
        at once runs whole, whatever the limit: it is one graph replay."""
        batch_size = int(self.cfg.agent.batch_size)
        if self.draw_together and self.due_updates > 1 and not self.round:
            # one draw of due * batch_size rows (no add comes between the updates) ...
            rows = self.buffer.sample(self.due_updates * batch_size, self.rng)
            if self.round_graphs:
                count, self.due_updates = self.due_updates, 0
                self._learned(self.agent.learn_round(rows, count, self.batched_targets))
                return
            # ... nor a target sync: one target network for all of them, which scores their next states at once
            target_q = self.agent.target_values(rows) if self.batched_targets else None
            for i in range(self.due_updates):
                part = slice(i * batch_size, (i + 1) * batch_size)
                batch = Batch(*(None if x is None else x[part] for x in rows))
                self.round.append((batch, None if target_q is None else target_q[part]))
            self.round.reverse()  # popped from the end
        count = self.due_updates if limit is None else min(limit, self.due_updates)
        for _ in range(count):
            self.due_updates -= 1
            if self.round:
                self._learn_batch(*self.round.pop())
            else:
                self._learn(batch_size)

    def _learn(self, batch_size: int) -> None:
        """One gradient step on a replay batch, with the NaN guard and priority feedback."""
        if isinstance(self.buffer, PrioritizedReplay):  # importance-weight beta anneals to 1, as epsilon decays:
            self.buffer.set_progress(self.step / self.schedule_steps)  # over the run's first total_steps
        self._learn_batch(self.buffer.sample(batch_size, self.rng))

    def _learn_batch(self, batch: Batch, target_q: torch.Tensor | None = None) -> None:
        self._learned([self.agent.learn(batch, target_q)])
        if batch.weights is not None:  # prioritized replay: new priorities from |TD|
            self.buffer.update_priorities(batch.indices, self.agent.td_abs)

    def _learned(self, metrics: list[dict[str, torch.Tensor]]) -> None:
        """Count the updates just made, keeping their metrics for the next moment."""
        self.pending.extend(metrics)
        self.updates += len(metrics)
        # free on the CPU; a GPU, or the shard threads finishing deferred updates, compute on until the next moment
        if self.device.type != "cuda" and not self.agent.defer_updates:
            self._collect_metrics()

    def _collect_metrics(self) -> None:
        """Bring the pending updates' metrics to the host (one wait for the GPU) and NaN-check them:
        after every update on the CPU, before each log, evaluation and checkpoint on a GPU or with
        deferred updates (overlap=true with bf16-mixed on the CPU)."""
        if not self.pending:
            return
        self.agent.wait_for_update()  # deferred updates: their metrics written (acting keeps its weights)
        first = self.updates - len(self.pending) + 1  # the update number of pending[0]
        names = list(self.pending[0])
        if len(self.pending) == 1:  # the CPU's case: plain floats, no stacking
            values = np.array([[self.pending[0][k].item() for k in names]], dtype=np.float64)
        else:
            values = torch.stack([torch.stack([r[k] for k in names]) for r in self.pending]).double().cpu().numpy()
        self.pending.clear()
        for k, column in zip(names, values.T, strict=True):
            self.metrics.setdefault(k, []).extend(column.tolist())
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():  # NaN guard
            i = int(np.argmin(finite))
            self._diverged(", ".join(f"{k}={v}" for k, v in zip(names, values[i], strict=True)), first + i)

    def _log_scalars(self, logger: RunLogger, epsilon: float) -> None:
        self._collect_metrics()
        scalars = {f"losses/{k}": float(np.mean(v)) for k, v in self.metrics.items()}
        scalars.update({"charts/epsilon": epsilon, "charts/SPS": logger.steps_per_second(self.step)})
        logger.scalars(self.step, scalars)
        self.metrics.clear()
        self.logged_step = self.step

    def _stopped(self, stop: StopSignals) -> TrainingStoppedError:
        """Write last.pt after a stop signal and build the message that tells how to go on."""
        try:
            path = self.save_last("stopped")
        except WriteError as e:
            stopped = f"stopped by {stop.name} at step {self.step}"
            raise WriteError(f"{stopped}, but {e} So {self._last_written()}.") from None
        log.warning(f"{stop.name}: checkpoint written at step {self.step}: {path}")
        message = (
            f"stopped by {stop.name} at step {self.step} of {self.cfg.total_steps}.\n"
            f"resume with: dqn train resume={shlex.quote(str(self.run_dir))}"
        )
        return TrainingStoppedError(message, stop.signum)

    def _diverged(self, what: str, update: int | None = None) -> None:
        """NaN guard: stop, keeping the last good checkpoint (nothing from this point is saved)."""
        if self.last_saved is not None:
            kept = f"the last good checkpoint is {self.last_saved[0]} (step {self.last_saved[1]})"
        elif (best := self.run_dir / CHECKPOINTS / "best.pt").is_file():
            kept = f"no last.pt was written before it; {best} holds the weights of the best evaluation so far"
        else:
            kept = "no checkpoint was written before it"
        clip = self.cfg.agent.get("max_grad_norm")
        clipping = f"a lower agent.max_grad_norm (it is {clip})" if clip is not None else "agent.max_grad_norm=10"
        message = (
            f"training diverged at step {self.step} (update {update or self.updates}): {what} is not finite. "
            f"Nothing from this point was saved; {kept}. Try a lower agent.lr (it is {self.cfg.agent.lr}), "
            f"{clipping}, agent.loss=huber if it is mse, or look for inf/nan in the env's rewards and observations."
        )
        log.error(f"non-finite {what} at step {self.step}: stopping without saving")
        raise DivergedError(message)

    def _check_finite(self) -> None:
        """Refuse to write weights that are not finite (a checkpoint must stay a good one)."""
        self._collect_metrics()
        self.agent.finish_update()
        for name, net in (("q_net", self.agent.q_net), ("target_net", self.agent.target_net)):
            if not all(bool(torch.isfinite(p).all()) for p in chain(net.parameters(), net.buffers())):
                self._diverged(f"a weight of {name}")

    # ---- moments -----------------------------------------------------------------------------
    def evaluate(self, logger: RunLogger, stop: StopSignals | None = None) -> bool:
        """Greedy evaluation; logs eval/*, keeps best.pt, and says whether the env is solved. A `stop`
        requested during its games leaves them unfinished, with no scores: the loop then writes last.pt,
        and the resumed run plays this evaluation first (`eval_due`). The final evaluation gets no `stop`:
        its score is the run's result (a second Ctrl-C aborts it)."""
        cfg = self.cfg
        if self.eval_env is None:
            self.eval_env = make_env(
                apply_eval_protocol(cfg.env, cfg.get("eval_protocol")),  # Atari: its frame cap and no-ops
                cfg.seed + cfg.eval.seed_offset,
                eval_env_count(cfg.eval.episodes),
                training=False,
            )
        self.agent.finish_update()  # evaluate the weights of every update so far
        played = run_episodes(
            self.agent, self.eval_env, cfg.eval.episodes, cfg.eval.epsilon, cfg.seed + cfg.eval.seed_offset,
            stop=None if stop is None else lambda: stop.requested,
        )  # fmt: skip
        self.eval_due = played is None
        if played is None:
            log.warning(
                f"{stop.name} came during the evaluation at step {self.step}: its games are left unfinished "
                "(a resumed run plays it first)"
            )
            return False
        returns, lengths = played
        self.last_eval, self.last_eval_step = float(returns.mean()), self.step
        logger.scalars(
            self.step,
            {"eval/mean_return": self.last_eval, "eval/std_return": float(returns.std()),
             "eval/mean_length": float(lengths.mean())},
        )  # fmt: skip
        if self.last_eval > self.best_eval:
            self.best_eval = self.last_eval
            try:
                self.save("best.pt")
            except WriteError as e:  # the run goes on; the best policy so far is not on disk
                log.warning(f"{e} Training goes on.")
        which = "eval.stop_return" if cfg.eval.get("stop_return") is not None else "env.solved_return"
        target = OmegaConf.select(cfg, which)
        solved = bool(cfg.eval.stop_on_solved and target is not None and self.last_eval >= target)
        if solved and self.step < cfg.total_steps:  # (at the last step the run ends anyway: nothing to say)
            log.info(
                f"solved at step {self.step}: {eval_kind(cfg.eval.epsilon)} {self.last_eval:.2f} >= {which}={target}, "
                f"so the run ends here (set eval.stop_on_solved=false to train on to total_steps={cfg.total_steps})"
            )
        return solved

    def state_dict(self, status: str = "running") -> dict:
        """Plain data only (tensors, numbers, strings, lists, dicts): loads with weights_only=True.
        `status` is running (a periodic save), stopped (a signal) or done (the end of the run)."""
        np_global = np.random.get_state()
        rng = {
            "numpy": self.rng.bit_generator.state,
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy_global": {
                "keys": torch.from_numpy(np_global[1].astype(np.int64)), "pos": int(np_global[2]),
                "has_gauss": int(np_global[3]), "cached_gaussian": float(np_global[4]),
            },
        }  # fmt: skip
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "agent": self.agent.state_dict(),
            "counters": {
                "step": self.step,
                "episodes": self.episodes,
                "updates": self.updates,
                "due_updates": self.due_updates,
            },
            "status": status,
            "schedule": {"total_steps": self.schedule_steps},
            "eval": {"best": self.best_eval, "last": self.last_eval, "due": self.eval_due},
            "metrics": {k: [float(x) for x in v] for k, v in self.metrics.items()},
            "rng": rng,
            "env": env_state.get_state(self.env),  # None where the env cannot be saved
            "obs": None if self.obs is None else torch.from_numpy(np.array(self.obs, copy=True)),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a last.pt: weights, optimizer, counters, epsilon schedule, the env mid-episode,
        the replay buffer (when saved) and every RNG, so the run goes on as if never stopped."""
        cfg, a = self.cfg, self.cfg.agent
        path = self.run_dir / LAST
        for stale in remove_temp_files(path.parent):
            log.info(f"removed {stale.name}, left by a write that was cut off")
        try:
            self.agent.load_state_dict(state["agent"])  # copies in place: numpy views stay valid
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(
                f"checkpoint {str(path)!r} does not match the networks its config builds ({state_dict_mismatch(e)})."
            ) from None
        c = state["counters"]
        self.step, self.episodes, self.updates = int(c["step"]), int(c["episodes"]), int(c["updates"])
        self.due_updates = int(c.get("due_updates", 0))  # overlap=true: the updates the next step runs
        self.best_eval, self.last_eval = float(state["eval"]["best"]), state["eval"]["last"]
        self.eval_due = bool(state["eval"].get("due", False))  # (older checkpoints lack it)
        self.metrics = {k: list(v) for k, v in state.get("metrics", {}).items()}
        # epsilon keeps the decay of the run as started, even when total_steps is extended
        self.schedule_steps = int(state.get("schedule", {}).get("total_steps", cfg.total_steps))
        self.epsilon = epsilon_schedule(cfg.agent, self.schedule_steps)
        self.obs, fresh_episodes = self._restore_env(state)
        if load_replay(path, state, self.buffer):
            self._replay_step = self.step
            if fresh_episodes:  # the stored episodes end where the run stopped
                self.buffer.cut_episodes()
        else:
            self.learning_starts = self.step + int(a.learning_starts)
            self.due_updates = 0  # they were due on the saved buffer, which is gone
            log.warning(
                f"{path} has no replay buffer beside it (checkpoint.save_buffer=false): the buffer refills "
                f"from empty and updates restart after {a.learning_starts} more steps"
            )
        self._restore_rngs(state["rng"])
        self.last_saved = signals.LAST_SAVED = (path, self.step)
        done = f"{counted(self.episodes, 'episode')}, {counted(self.updates, 'update')}"
        log.info(f"resumed {path} at step {self.step} ({done})")

    def _restore_env(self, state: dict) -> tuple[np.ndarray, bool]:
        """The envs as the run left them, and False; or, where their state cannot be restored, fresh episodes
        and True."""
        obs, _ = self.env.reset(seed=self.cfg.seed)  # sets up every wrapper; the saved state overwrites it
        reason = env_state.unsupported(self.env)
        if reason is None and state.get("env") is not None and state.get("obs") is not None:
            try:
                env_state.set_state(self.env, state["env"])
                return state["obs"].numpy().copy(), False
            except (KeyError, ValueError, TypeError, RuntimeError) as e:
                # the run's own config built this env: dqn_cli's wrappers changed since the checkpoint
                reason = f"the saved one does not fit this version's {self.cfg.env.id}: {e}"
        # fresh episodes from a seed of their own, not a replay of the run's first ones
        obs, _ = self.env.reset(seed=self.cfg.seed + self.step)
        log.warning(
            f"the env's state cannot be restored ({reason or 'not in this checkpoint'}): the resumed run starts "
            "fresh episodes, so it will not match an uninterrupted run step for step"
        )
        return obs, True

    def _restore_rngs(self, rng: dict) -> None:
        self.rng.bit_generator.state = rng["numpy"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "numpy_global" in rng:
            g = rng["numpy_global"]
            keys = g["keys"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, g["pos"], g["has_gauss"], g["cached_gaussian"]))
        if "torch_cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["torch_cuda"])

    def save(self, name: str) -> Path:
        self._check_finite()
        directory = self.run_dir / CHECKPOINTS
        path = save_checkpoint(self.state_dict(), directory / name)
        if name.startswith("step_"):
            keep = self.cfg.checkpoint.keep_last
            old = sorted(directory.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for stale in old[: max(len(old) - keep, 0)]:
                stale.unlink(missing_ok=True)
        return path

    def save_last(self, status: str) -> Path:
        """last.pt, what `resume=` continues from, after the replay file it names (replay_STEP.npz).

        The order makes every crash safe: last.pt only ever names a replay file already complete, and
        older replay files go only once the new last.pt is in place.
        """
        self._check_finite()
        directory = self.run_dir / CHECKPOINTS
        state = self.state_dict(status)
        if self.cfg.checkpoint.get("save_buffer", True):
            state["replay"] = f"replay_{self.step}.npz"
            if self._replay_step != self.step or not (directory / state["replay"]).is_file():
                try:
                    save_arrays(replay_arrays(self.buffer, self.step), directory / state["replay"])
                    self._replay_step = self.step
                except WriteError as e:  # the weights and counters still go into last.pt: a resume refills replay
                    log.warning(f"{e} last.pt is written without the replay buffer; a resume starts it empty.")
                    del state["replay"]
        path = save_checkpoint(state, self.run_dir / LAST)
        for old in directory.glob("replay_*.npz"):
            if old.name != state.get("replay"):
                old.unlink(missing_ok=True)
        self.last_saved = signals.LAST_SAVED = (path, self.step)
        return path


def _check_writable(run_dir: Path, resumed: bool) -> None:
    """A WriteError, before anything is built, for a run dir that checkpoints and TensorBoard files
    cannot go into (TensorBoard's writer thread would otherwise fail with a traceback of its own)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (run_dir, run_dir / CHECKPOINTS):  # (checkpoints/ as it is: made by the first save)
            if folder.exists() or folder == run_dir:
                tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        what = f"resume={run_dir}: its run dir" if resumed else f"the run dir {run_dir}"
        advice = "copy the run dir somewhere writable and resume the copy" if resumed else "set hydra.run.dir"
        raise WriteError(
            f"{what} cannot be written ({e.strerror or e}); checkpoints and TensorBoard files go there. "
            f"Make it writable, or {advice}."
        ) from None


def train(
    cfg: DictConfig,
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    fresh_dir: bool = False,
    stop_file: Path | None = None,
) -> float:
    """Train from `cfg`, writing TensorBoard files and checkpoints into `run_dir`; return the final
    greedy eval return (the objective sweepers optimise). With `cfg.resume` set, continue that run
    in its own dir instead; `overrides` (the command line's) may extend its total_steps.
    `fresh_dir`: Hydra made `run_dir` for this run; a mistake found while building the parts (a buffer
    too large for the memory, a network that does not fit the env) removes it again (`discard_run_dir`).
    `stop_file`: a sweep job's SWEEP_DIR/.stop, which stops it like a signal once it exists."""
    start = time.perf_counter()
    try:
        trainer = Trainer(cfg, run_dir, overrides)
    except UserError:
        if fresh_dir and not cfg.get("resume"):
            discard_run_dir(Path(run_dir))
        raise
    result = trainer.run(stop_file)
    log.info(f"wall time {time.perf_counter() - start:.1f} s")
    return result


def eval_kind(epsilon: float) -> str:
    """How an evaluation at `epsilon` is named in the log: greedy eval, or eval at epsilon 0.05."""
    return "greedy eval" if float(epsilon) == 0 else f"eval at epsilon {float(epsilon):g}"


def discard_run_dir(run_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra wrote at the start (.hydra/, train.log), and then its
    parents below the working directory that this leaves empty (outputs/DATE/): a run that failed
    before it began leaves nothing behind. A dir holding anything else is kept."""
    run_dir = run_dir.absolute()
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().absolute()
    for parent in run_dir.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break

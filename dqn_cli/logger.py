"""Run logging: TensorBoard scalars under CleanRL's tags, and a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig


class RunLogger:
    """Writes `charts/*`, `losses/*` and `eval/*` scalars and drives a tqdm bar.

    Reads `log.tensorboard` and `log.progress`.
    """

    def __init__(self, run_dir: Path, log_cfg: DictConfig, total_steps: int, start_step: int = 0):
        self.writer = None
        if log_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step or None)
        show = log_cfg.progress if log_cfg.progress != "auto" else sys.stderr.isatty()
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=0.5,
                smoothing=0.05,
            )  # fmt: skip
        self.start_time, self.start_step = time.perf_counter(), start_step
        self._bar_step = start_step
        self.last_return: float | None = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def episode(self, step: int, ret: float, length: int) -> None:
        self.last_return = ret
        self.scalars(step, {"charts/episodic_return": ret, "charts/episodic_length": length})

    def steps_per_second(self, step: int) -> float:
        return (step - self.start_step) / max(time.perf_counter() - self.start_time, 1e-9)

    def progress(self, step: int) -> None:
        if self.bar is None or step - self._bar_step < 256:
            return
        self.bar.update(step - self._bar_step)
        self._bar_step = step
        if self.last_return is not None:
            self.bar.set_postfix_str(f"return {self.last_return:.1f}", refresh=False)

    def close(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self._bar_step)
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

"""Run logging: TensorBoard scalars under CleanRL's tags, and a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class RunLogger:
    """Writes `charts/*`, `losses/*` and `eval/*` scalars and drives a tqdm bar.

    Reads `log.tensorboard` and `log.progress`.
    """

    def __init__(self, run_dir: Path, log_cfg: DictConfig, total_steps: int, start_step: int = 0):
        self.writer = None
        if log_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run (start_step > 0) hides what the stopped one logged after its checkpoint:
            # TensorBoard drops events at steps >= purge_step written before this point
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)
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

    def hparams(self, step: int, cfg: DictConfig, metrics: dict[str, float]) -> None:
        """Record the run's whole config and its final `metrics` for TensorBoard's HParams tab (one row
        per run dir, so a sweep's runs line up). Metrics are also scalars under `hparams/`."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        params = {
            k: "null" if v is None else v if isinstance(v, (int, float, str)) else str(v) for k, v in _flat(cfg).items()
        }
        tags = {f"hparams/{k}": float(v) for k, v in metrics.items()}
        for summary in hparams(params, tags):  # experiment, session start, session end
            self.writer.file_writer.add_summary(summary, step)
        self.scalars(step, tags)

    def close(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self._bar_step)
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _flat(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as {"agent.lr": 0.001, ...}; lists stay whole (shown as text)."""
    out: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out

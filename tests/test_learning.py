"""Learning runs (marked slow): the default presets must actually solve their environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("dqn")
DQN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dqn_cli"]


def run(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([*DQN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_cartpole_preset_solves(tmp_path):
    """The README's promise: `dqn train env=cartpole` reaches a greedy mean >= 475 over 20 episodes."""
    run_dir = tmp_path / "run"
    run("train", "env=cartpole", "seed=0", "device=cpu", "log.progress=false", f"hydra.run.dir={run_dir}",
        cwd=tmp_path, timeout=1200)  # fmt: skip
    ckpt = run_dir / "checkpoints" / "last.pt"
    run("eval", f"checkpoint={ckpt}", "episodes=20", "device=cpu", "output=eval.json", cwd=tmp_path, timeout=300)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert len(result["returns"]) == 20
    assert result["mean_return"] >= 475, result

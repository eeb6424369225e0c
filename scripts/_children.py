"""Shared by the benchmark scripts: run one measurement in a fresh Python process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_json_child(script: str, argv: list[str], log: Path, timeout: float, cwd: Path) -> dict | None:
    """Run `python script argv...`, append its command, stderr and stdout to `log`, and return the
    last JSON line it printed (None if it failed or timed out)."""
    cmd = [sys.executable, str(Path(script).resolve()), *argv]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            f.write("timeout\n")
            return None
        f.write(proc.stdout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if proc.returncode == 0 and lines else None

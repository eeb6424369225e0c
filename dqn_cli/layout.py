"""Where a run dir keeps its checkpoints (a module without torch: the CLI's checks read it before torch loads)."""

from pathlib import Path

CHECKPOINTS = "checkpoints"  # RUN_DIR / CHECKPOINTS: last.pt, best.pt, step_N.pt and the replay file
LAST = Path(CHECKPOINTS, "last.pt")  # RUN_DIR / LAST: where the run stands (saved periodically, on a stop, at the end)

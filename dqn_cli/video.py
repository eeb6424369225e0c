"""Evaluation videos: the RGB frames of sub-env 0, written as one mp4 by OpenCV's FFmpeg backend."""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym

from dqn_cli.errors import UserError
from dqn_cli.layout import CHECKPOINTS

log = logging.getLogger(__name__)


class EpisodeVideo:
    """Appends `env.envs[0].render()` (an env built with `render=True`) to `path` at each capture."""

    def __init__(self, path: str | Path, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.writer = None
        self.frames = 0

    def capture(self, env: gym.vector.VectorEnv) -> None:
        import cv2

        frame = env.envs[0].render()
        if self.writer is None:
            height, width = frame.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self.writer.isOpened():
                raise UserError(
                    f"video=true: OpenCV cannot write {self.path} (its FFmpeg backend with the mp4v codec is "
                    "missing); reinstall opencv-python-headless or run without video=true."
                )
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was captured."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        log.info(f"wrote {self.path} ({self.frames} frames at {self.fps:g} fps)")
        return self.path


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run dir a checkpoint belongs to (RUN/checkpoints/NAME.pt -> RUN), or None."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == CHECKPOINTS else None

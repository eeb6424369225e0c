"""Helpers: the periodic `Every` moments (vector envs step N at a time), seeding, device resolution,
glibc's heap settings, the evaluation video writer."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dqn_cli.utils
from dqn_cli.errors import UserError, counted
from dqn_cli.utils import Every, set_seed, setup_torch


def test_every_fires_once_per_multiple_with_unit_steps():
    every = Every(3)
    fired = [after for after in range(1, 13) if every(after - 1, after)]
    assert fired == [3, 6, 9, 12]


@pytest.mark.parametrize("stride, expected", [(4, [12, 20, 32, 40]), (5, [10, 20, 30, 40]), (10, [10, 20, 30, 40])])
def test_every_with_strides_larger_than_one(stride, expected):
    # a vector env advances the counter by `stride` per step; each multiple of 10 crossed fires once
    every = Every(10)
    fired = [after for after in range(stride, 41, stride) if every(after - stride, after)]
    assert fired == expected


def test_every_fires_once_even_when_a_stride_crosses_several_multiples():
    every = Every(2)
    assert every(0, 7) and not every(7, 7) and every(7, 8)


def test_every_zero_never_fires():
    every = Every(0)
    assert not any(every(s, s + 1) for s in range(100))


@pytest.mark.parametrize("n, said", [(0, "0 episodes"), (1, "1 episode"), (2, "2 episodes"), (-1, "-1 episodes")])
def test_counted_says_the_noun_in_the_singular_only_for_one(n, said):
    assert counted(n, "episode") == said


def test_set_seed_makes_every_generator_repeat():
    rng = set_seed(7)
    first = rng.random(3), np.random.rand(3), torch.rand(3)
    rng = set_seed(7)
    second = rng.random(3), np.random.rand(3), torch.rand(3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])


def test_set_seed_seeds_each_generator_with_the_seed_itself():
    # python's random, numpy's legacy global state, torch's default generator and the returned one
    rng = set_seed(7)
    drawn = random.random(), np.random.rand(3), torch.rand(3), rng.random(3)
    assert drawn[0] == random.Random(7).random()
    np.testing.assert_array_equal(drawn[1], np.random.RandomState(7).rand(3))
    assert torch.equal(drawn[2], torch.rand(3, generator=torch.Generator().manual_seed(7)))
    np.testing.assert_array_equal(drawn[3], np.random.default_rng(7).random(3))


def test_setup_torch_sets_the_threads_and_flushes_denormals(monkeypatch):
    threads, kept = torch.get_num_threads(), []
    monkeypatch.setattr(dqn_cli.utils, "keep_freed_memory", lambda: kept.append(True) or True)
    try:
        for n in (1, 2):
            torch.set_num_threads(3)
            torch.set_flush_denormal(False)
            setup_torch("cpu", n)
            assert torch.get_num_threads() == n
            # 1e-30 * 1e-10 = 1e-40 is below float32's smallest normal number (1.18e-38): flushed to 0
            assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0
        assert kept == [True, True]  # glibc keeps the update's freed blocks
    finally:
        torch.set_num_threads(threads)


def test_setup_torch_resolves_devices():
    threads = torch.get_num_threads()
    try:
        assert setup_torch("cpu", 1) == torch.device("cpu")
        expected = "cuda" if torch.cuda.is_available() else "cpu"
        assert setup_torch("auto", 1).type == expected
        with pytest.raises(UserError, match="device='tpu'"):
            setup_torch("tpu", 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_setup_torch_refuses_cuda_without_a_gpu():
    with pytest.raises(UserError, match="no CUDA GPU"):
        setup_torch("cuda", 1)


UPDATE_FAULTS = """
import resource, sys, numpy as np, torch
from omegaconf import OmegaConf
from dqn_cli.agent import make_agent
from dqn_cli.buffers import Batch
from dqn_cli.utils import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
torch.set_flush_denormal(True)
cfg = OmegaConf.create({"agent": {"batch_size": 32, "lr": 1e-4, "adam_eps": 1.5e-4, "loss": "huber",
                                  "max_grad_norm": 10.0, "tau": 1.0}, "network": {"name": "nature_cnn", "hidden": 512}})
agent = make_agent(cfg, (4, 84, 84), 6, torch.device("cpu"))
rng = np.random.default_rng(0)
frames = lambda: rng.integers(0, 256, (32, 4, 84, 84), dtype=np.uint8)
batch = Batch(frames(), rng.integers(0, 6, 32), np.zeros(32, np.float32), frames(), np.zeros(32, np.float32),
              np.full(32, 0.99, np.float32))
for _ in range(5):
    agent.update(batch)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    agent.update(batch)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_stops_the_page_faults_of_a_cnn_update():
    """glibc's default hands each update's multi-MB temporaries back to the OS and faults them in
    again (~2,700 page faults per Nature CNN update here); with keep_freed_memory they are reused."""

    def faults(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", UPDATE_FAULTS, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    kept, default = faults("keep"), faults("default")
    # measured: 0-90 kept against 2,700-5,000 by default (the heap's state at start varies)
    assert default > 1000 and kept < default / 10, (kept, default)


class _FakeFrames:
    """Stands in for a vector env whose sub-env 0 renders RGB frames: pure red, 48 rows by 64 columns."""

    def __init__(self):
        self.envs = [self]

    def render(self) -> np.ndarray:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = 255
        return frame


def test_episode_video_writes_each_captured_frame_in_rgb(tmp_path, caplog):
    import cv2

    from dqn_cli.video import EpisodeVideo

    assert EpisodeVideo(tmp_path / "none.mp4", fps=10).close() is None  # nothing captured, no file
    video = EpisodeVideo(tmp_path / "videos" / "ep.mp4", fps=10)
    env = _FakeFrames()
    for _ in range(3):
        video.capture(env)
    with caplog.at_level("INFO", logger="dqn_cli.video"):
        assert video.close() == tmp_path / "videos" / "ep.mp4"
    assert f"wrote {tmp_path / 'videos' / 'ep.mp4'} (3 frames at 10 fps)" in caplog.text
    reader = cv2.VideoCapture(str(tmp_path / "videos" / "ep.mp4"))
    frames = []
    while (read := reader.read())[0]:
        frames.append(read[1])
    reader.release()
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    b, g, r = frames[0].reshape(-1, 3).mean(axis=0)  # OpenCV reads BGR: red stays red (mp4v is lossy)
    assert r > 200 and b < 50 and g < 50, (b, g, r)
    assert not (tmp_path / "none.mp4").exists()


def test_run_dir_of_a_checkpoint():
    from dqn_cli.video import run_dir_of

    assert run_dir_of("/runs/r1/checkpoints/last.pt") == Path("/runs/r1")
    assert run_dir_of("/elsewhere/last.pt") is None

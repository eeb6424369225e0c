"""Helpers: the periodic `Every` moments (vector envs step N at a time), seeding, device resolution,
glibc's heap settings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dqn_cli.errors import UserError
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


def test_set_seed_makes_every_generator_repeat():
    rng = set_seed(7)
    first = rng.random(3), np.random.rand(3), torch.rand(3)
    rng = set_seed(7)
    second = rng.random(3), np.random.rand(3), torch.rand(3)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert torch.equal(first[2], second[2])


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

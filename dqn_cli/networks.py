"""Q-network builder: the `network` config group becomes a torch module mapping obs -> Q(s, ·)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dqn_cli.errors import UserError

log = logging.getLogger(__name__)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
_NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "tanh": lambda x: np.tanh(x, out=x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
}


class DuelingHead(nn.Module):
    """Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a') from two streams over shared features.

    Wang et al. (2016): subtracting the mean advantage makes V and A identifiable without changing
    which action is greedy, since argmax_a Q = argmax_a A.
    """

    def __init__(self, value: nn.Module, advantage: nn.Module):
        super().__init__()
        self.value, self.advantage = value, advantage

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        adv = self.advantage(features)
        return self.value(features) + adv - adv.mean(dim=1, keepdim=True)


class MLP(nn.Module):
    """Fully connected Q-network over flat observations; `dueling` splits the last layer into a value and
    an advantage stream. uint8 observations (frames) are scaled to [0, 1], as nature_cnn and SB3 do."""

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int],
        activation: str = "relu",
        dueling: bool = False,
    ):
        super().__init__()
        sizes = [obs_dim, *hidden_sizes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        if dueling:
            layers.append(DuelingHead(nn.Linear(sizes[-1], 1), nn.Linear(sizes[-1], n_actions)))
        else:
            layers.append(nn.Linear(sizes[-1], n_actions))
        self.layers = nn.Sequential(*layers)
        self.activation = activation

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.flatten(1).to(next(self.parameters()).dtype)  # fp32, or bf16 compute copies
        return self.layers(x / 255.0 if obs.dtype == torch.uint8 else x)

    def numpy_policy(self):
        """A greedy-action function in plain numpy over views of this module's CPU weights.

        The views share memory with the parameters, so optimizer steps show up at once; acting on
        one observation this way costs a few microseconds instead of torch's ~25 us dispatch.
        """
        *hidden, head = self.layers
        pairs = (nn.Linear, ACTIVATIONS[self.activation])
        if not all(isinstance(m, pairs[i % 2]) for i, m in enumerate(hidden)):  # a layer this copy would skip
            raise TypeError(f"numpy_policy mirrors Linear + {self.activation} pairs only, not {self.layers}")
        # dueling: V(s) and the mean advantage shift every action alike, so A alone picks the action
        last = head.advantage if isinstance(head, DuelingHead) else head
        linears = [m for m in hidden if isinstance(m, nn.Linear)] + [last]
        weights = [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in linears]
        act = _NUMPY_ACTIVATIONS[self.activation]

        def greedy(obs: np.ndarray) -> np.ndarray:
            x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
            if obs.dtype == np.uint8:
                x /= 255.0
            with np.errstate(all="ignore"):  # diverged weights overflow here; the trainer's NaN guard says so
                for w, b in weights[:-1]:
                    x = act(x @ w + b)
                w, b = weights[-1]
                return (x @ w + b).argmax(axis=1)

        return greedy


class NatureCNN(nn.Module):
    """The conv net of Mnih et al. (2015): 3 conv layers + 512 FC over stacked uint8 frames.

    `dueling` gives the value and the advantage their own `hidden`-unit FC layer each over the
    shared conv features, as in Wang et al. (2016).
    """

    def __init__(self, in_shape: Sequence[int], n_actions: int, hidden: int = 512, dueling: bool = False):
        super().__init__()
        c, h, w = in_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            n_flat = self.conv(torch.zeros(1, c, h, w)).shape[1]

        def stream(n_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(n_flat, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

        self.head = DuelingHead(stream(1), stream(n_actions)) if dueling else stream(n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # uint8 frames travel to the device as bytes and are scaled there, in the weights' dtype
        return self.head(self.conv(obs.to(self.conv[0].weight.dtype) / 255.0))


def make_network(net_cfg: DictConfig, obs_shape: tuple[int, ...], n_actions: int) -> nn.Module:
    """Build the Q-network. Reads `network.name`, `network.dueling` (default false) and, for mlp,
    `hidden_sizes` and `activation`; for nature_cnn, `hidden`."""
    dueling = bool(net_cfg.get("dueling", False))
    if net_cfg.name == "mlp":
        if net_cfg.activation not in ACTIVATIONS:
            raise UserError(f"network.activation={net_cfg.activation!r} is unknown; allowed: {', '.join(ACTIVATIONS)}.")
        if len(obs_shape) == 3:  # allowed (a baseline, a test), but rarely what was meant
            log.warning(
                f"network=mlp flattens this env's image observations {tuple(obs_shape)} into "
                f"{int(np.prod(obs_shape)):,} inputs; the Nature DQN setup for frames is network=nature_cnn."
            )
        return MLP(int(np.prod(obs_shape)), n_actions, list(net_cfg.hidden_sizes), net_cfg.activation, dueling)
    if net_cfg.name == "nature_cnn":
        if len(obs_shape) != 3:
            raise UserError(
                f"network=nature_cnn needs image observations (frames, height, width), but this env "
                f"gives shape {tuple(obs_shape)}. Use network=mlp for vector observations."
            )
        return NatureCNN(obs_shape, n_actions, int(net_cfg.hidden), dueling)
    raise UserError(f"network.name={net_cfg.name!r} is unknown; allowed: mlp, nature_cnn.")

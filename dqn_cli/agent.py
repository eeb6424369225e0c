"""The DQN agent: epsilon-greedy acting and the TD update against a target network."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch spelling
from omegaconf import DictConfig
from torch import nn

from dqn_cli.buffers import Batch


class DQNAgent:
    """Online and target Q-networks with an Adam optimizer.

    Reads `agent.lr`, `adam_eps`, `loss`, `max_grad_norm`, `tau` and `double` (default false).
    The discount (`agent.gamma`, and gamma**n with `agent.n_step`) arrives in each batch.
    """

    def __init__(self, q_net: nn.Module, n_actions: int, agent_cfg: DictConfig, device: torch.device):
        self.device = device
        self.n_actions = n_actions
        self.q_net = q_net.to(device)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self.loss_fn = {"huber": F.smooth_l1_loss, "mse": F.mse_loss}[agent_cfg.loss]
        self.max_grad_norm = agent_cfg.max_grad_norm
        self.tau = float(agent_cfg.tau)
        self.double = bool(agent_cfg.get("double", False))
        self.optimizer = torch.optim.Adam(
            self.q_net.parameters(), lr=float(agent_cfg.lr), eps=float(agent_cfg.adam_eps), fused=True
        )
        # Acting on the CPU goes through numpy views of the weights: no per-step tensor churn.
        numpy_policy = getattr(self.q_net, "numpy_policy", None)
        self._greedy_numpy = numpy_policy() if device.type == "cpu" and numpy_policy else None
        self.td_abs: np.ndarray | None = None  # |TD error| of the last update, for priorities

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch of observations."""
        if self._greedy_numpy is not None:
            return self._greedy_numpy(obs)
        with torch.no_grad():
            q = self.q_net(torch.as_tensor(obs, device=self.device))
        return q.argmax(dim=1).cpu().numpy()

    def act(self, obs: np.ndarray, epsilon: float, rng: np.random.Generator) -> np.ndarray:
        """Epsilon-greedy actions for a batch of observations (one per vector env)."""
        n = len(obs)
        explore = rng.random(n) < epsilon
        if explore.all():
            return rng.integers(0, self.n_actions, size=n)
        actions = self.greedy(obs)
        if explore.any():
            actions = np.where(explore, rng.integers(0, self.n_actions, size=n), actions)
        return actions

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on the TD error of `batch`; returns loss and mean Q."""
        obs, next_obs = self._tensor(batch.obs), self._tensor(batch.next_obs)
        actions, rewards = self._tensor(batch.actions), self._tensor(batch.rewards)
        terminated, discounts = self._tensor(batch.terminated), self._tensor(batch.discounts)
        with torch.no_grad():
            if self.double:
                # double DQN: the online network picks a* = argmax_a' Q(s', a'; theta), the target scores it
                best = self.q_net(next_obs).argmax(dim=1, keepdim=True)
                next_q = self.target_net(next_obs).gather(1, best).squeeze(1)
            else:
                # max_a' Q(s', a'; theta-): the frozen target network scores the next state
                next_q = self.target_net(next_obs).max(dim=1).values
            # y = r + gamma^k * Q(s'), k rewards summed (n-step); no bootstrap past a termination
            # (a truncation keeps it: s' is then the last real state of the window)
            target = rewards + discounts * (1.0 - terminated) * next_q
        # Q(s, a; theta) for the actions actually taken
        q = self.q_net(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        if batch.weights is None:
            loss = self.loss_fn(q, target)
        else:  # prioritized replay: importance weights correct the sampling bias
            loss = (self._tensor(batch.weights) * self.loss_fn(q, target, reduction="none")).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.q_net.parameters(), float(self.max_grad_norm))
        self.optimizer.step()
        if batch.weights is not None:
            self.td_abs = (target - q).abs().detach().cpu().numpy()
        return {"td_loss": loss.item(), "q_values": q.mean().item()}

    @torch.no_grad()
    def sync_target(self) -> None:
        """theta- <- theta (tau = 1) or theta- <- tau*theta + (1-tau)*theta- (Polyak)."""
        online, target = list(self.q_net.parameters()), list(self.target_net.parameters())
        if self.tau >= 1.0:
            torch._foreach_copy_(target, online)
        else:
            torch._foreach_lerp_(target, online, self.tau)
        for b_t, b_o in zip(self.target_net.buffers(), self.q_net.buffers(), strict=True):
            b_t.copy_(b_o)

    def state_dict(self) -> dict:
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def make_agent(cfg: DictConfig, obs_shape: tuple[int, ...], n_actions: int, device: torch.device) -> DQNAgent:
    """Build the Q-network (`network` group) and the agent around it (`agent` group)."""
    from dqn_cli.networks import make_network

    return DQNAgent(make_network(cfg.network, obs_shape, n_actions), n_actions, cfg.agent, device)

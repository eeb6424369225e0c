"""Proportional prioritized replay (Schaul et al. 2016) over any replay storage layout.

`PrioritizedReplay` holds a storage object (the uniform `ReplayBuffer`, or a subclass that lays out
observations differently, such as frame-once Atari storage) and a sum tree with one leaf per
storage slot `t * num_envs + env`. It only decides *which* slots to draw; the storage turns slots
into a `Batch` (n-step windows, frame stacks), so every layout gets prioritized sampling for free.

    P(i) = p_i^alpha / sum_k p_k^alpha,   p_i = |TD error_i| + eps
    w_i  = (N * P(i))^-beta / max_batch w,   beta annealed from beta0 to 1 over training
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from dqn_cli.buffers import MAX_REDRAWS, Batch, ReplayBuffer, check_fits, no_usable_slots


class SumTree:
    """A binary sum tree over `capacity` leaves in one float64 array, vectorized over batches.

    Node 1 is the root, node i has children 2i and 2i+1, and the leaves sit at
    [n_leaves, n_leaves + capacity). Parents are recomputed from their children (not patched with
    deltas), so rounding errors never accumulate.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.depth = max(0, (self.capacity - 1).bit_length())
        self.n_leaves = 1 << self.depth
        self.nodes = np.zeros(2 * self.n_leaves, np.float64)

    @staticmethod
    def nbytes(capacity: int) -> int:
        return 2 * (1 << max(0, (int(capacity) - 1).bit_length())) * 8

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(idx) + self.n_leaves]

    def set(self, idx: np.ndarray, values: np.ndarray | float) -> None:
        """Set leaves `idx` to `values` and refresh their ancestors, one tree level at a time."""
        node = np.asarray(idx, np.int64) + self.n_leaves
        self.nodes[node] = values
        for _ in range(self.depth):
            node = node >> 1
            # repeated parents get the same sum, so duplicate indices are harmless
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, mass: np.ndarray) -> np.ndarray:
        """The leaf whose cumulative-priority interval holds each value of `mass` (in [0, total))."""
        node = np.ones(len(mass), np.int64)
        mass = np.array(mass, np.float64)
        for _ in range(self.depth):
            left = self.nodes[2 * node]
            go_right = mass >= left
            mass -= np.where(go_right, left, 0.0)
            node = 2 * node + go_right
        return node - self.n_leaves

    def leaves(self, n: int) -> np.ndarray:
        return self.nodes[self.n_leaves : self.n_leaves + n].copy()

    def load_leaves(self, values: np.ndarray) -> None:
        """Replace every leaf (the first len(values), the rest zero) and rebuild the whole tree."""
        self.nodes[:] = 0.0
        self.nodes[self.n_leaves : self.n_leaves + len(values)] = values
        size = self.n_leaves
        while size > 1:
            size //= 2
            self.nodes[size : 2 * size] = self.nodes[2 * size : 4 * size : 2] + self.nodes[2 * size + 1 : 4 * size : 2]


class PrioritizedReplay:
    """Prioritized sampling over a replay storage: new slots get the largest priority seen so far,
    `update_priorities` sets p = |TD| + eps after each update, `set_progress` anneals beta.

    Attributes it does not define (`pos`, `num_envs`, `n_step`, the arrays...) are the storage's.
    """

    def __init__(self, storage: ReplayBuffer, alpha: float = 0.6, beta0: float = 0.4, eps: float = 1e-6):
        self.storage = storage
        self.alpha, self.beta0, self.eps = float(alpha), float(beta0), float(eps)
        self.beta = self.beta0
        slots = storage.size_per_env * storage.num_envs
        check_fits(SumTree.nbytes(slots), f"the prioritized replay sum tree over {slots} slots")
        self.tree = SumTree(slots)
        self.max_priority = 1.0  # largest |TD| + eps seen; new transitions are sampled at least once soon

    def __getattr__(self, name: str):
        if name == "storage":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.storage, name)

    def __len__(self) -> int:
        return len(self.storage)

    def add(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        """Store one vector step in the storage and give its slots the maximal priority."""
        first = self.storage.pos * self.storage.num_envs
        self.storage.add(obs, actions, rewards, next_obs, terminated, truncated)
        self.tree.set(np.arange(first, first + self.storage.num_envs), self.max_priority**self.alpha)

    def set_progress(self, fraction: float) -> None:
        """beta = beta0 at the start of training (fraction 0), 1 at the end (fraction 1)."""
        self.beta = self.beta0 + (1.0 - self.beta0) * min(max(float(fraction), 0.0), 1.0)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Draw slots with probability proportional to priority^alpha, with importance weights."""
        total = self.tree.total
        # stratified: one draw from each of batch_size equal slices of the priority mass
        idx = self.tree.find((np.arange(batch_size) + rng.random(batch_size)) * (total / batch_size))
        bad = ~self._usable(idx)
        for _ in range(MAX_REDRAWS):
            if not bad.any():
                break
            # redrawing from the whole mass keeps P(i) proportional to p_i among the usable slots
            idx[bad] = self.tree.find(rng.random(int(bad.sum())) * total)
            bad = ~self._usable(idx)
        else:
            raise no_usable_slots(self.storage.size_per_env)
        probs = self.tree.get(idx) / total
        # importance weights (N P(i))^-beta, scaled so the largest is 1: updates only shrink
        weights = (len(self) * probs) ** -self.beta
        weights = (weights / weights.max()).astype(np.float32)
        t, env = np.divmod(idx, self.storage.num_envs)
        return self.storage._gather(t, env, weights)

    def _usable(self, idx: np.ndarray) -> np.ndarray:
        in_range = np.minimum(idx, self.tree.capacity - 1)  # padding leaves have priority 0 anyway
        t, env = np.divmod(in_range, self.storage.num_envs)
        return (self.tree.get(idx) > 0) & self.storage.sampleable(t, env)

    def update_priorities(self, indices: np.ndarray, td_abs: np.ndarray) -> None:
        """p_i = |TD error_i| + eps for the slots of the last batch (`Batch.indices`)."""
        priorities = np.abs(np.asarray(td_abs, np.float64)) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.tree.set(indices, priorities**self.alpha)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            **self.storage.state_dict(),
            "per_priorities": self.tree.leaves(len(self)),
            "per_max_priority": np.array(self.max_priority),
            "per_beta": np.array(self.beta),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.storage.load_state_dict(state)  # the storage reads its own keys and skips the per_ ones
        self.tree.load_leaves(state["per_priorities"])
        self.max_priority, self.beta = float(state["per_max_priority"]), float(state["per_beta"])


def make_prioritized(buf_cfg: DictConfig, storage: ReplayBuffer) -> PrioritizedReplay:
    """Wrap `storage` in prioritized sampling. Reads `buffer.alpha`, `buffer.beta0`, `buffer.eps`."""
    return PrioritizedReplay(storage, float(buf_cfg.alpha), float(buf_cfg.beta0), float(buf_cfg.eps))

"""Flat transitions in time order (numpy), the common form every source is read into.

A source (D4RL HDF5 file, Minari dataset) yields one :class:`Transitions`; everything after
that (validation, episode statistics, reward modification, return-to-go, normalization,
conversion to a ``TensorDict``) is vectorized numpy/torch over the whole dataset, with no
per-transition Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict

from . import keys
from .errors import DatasetError


@dataclass
class Transitions:
    """Transitions of a dataset, episodes stored one after the other.

    ``episode_ends[i]`` marks the last transition of an episode: a true termination
    (``terminals``), a time-out (``timeouts``), or the end of the data. An episode that ends
    in neither a termination nor a time-out is *incomplete* (cut by the end of the data).
    """

    observations: np.ndarray  # [N, obs_dim]
    actions: np.ndarray  # [N, act_dim]
    rewards: np.ndarray  # [N]
    next_observations: np.ndarray  # [N, obs_dim]
    terminals: np.ndarray  # [N] bool
    timeouts: np.ndarray  # [N] bool, only meaningful where episode_ends
    episode_ends: np.ndarray  # [N] bool, episode_ends[-1] is True

    def __post_init__(self):
        n = len(self.rewards)
        if n == 0:
            raise DatasetError("the dataset holds no transitions")
        for name in ("observations", "actions", "next_observations", "terminals", "timeouts", "episode_ends"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"'{name}' has {len(getattr(self, name))} rows but 'rewards' has {n}")
        self.episode_ends = self.episode_ends | self.terminals
        self.episode_ends[-1] = True

    def __len__(self) -> int:
        return len(self.rewards)

    def check_finite(self, where: str) -> None:
        """Raise :class:`DatasetError` naming the first float array holding NaN/inf and the count."""
        for name in ("observations", "actions", "rewards", "next_observations"):
            bad = int(np.size(getattr(self, name)) - np.count_nonzero(np.isfinite(getattr(self, name))))
            if bad:
                raise DatasetError(f"{where}: '{name}' holds {bad} non-finite values (NaN/inf)")

    @property
    def truncated(self) -> np.ndarray:
        """Episode ends that are not terminations (time-outs and cuts)."""
        return self.episode_ends & ~self.terminals

    @property
    def episode_ids(self) -> np.ndarray:
        """Index of the episode of each transition, 0..num_episodes-1."""
        return np.concatenate(([0], np.cumsum(self.episode_ends[:-1])))

    def episode_returns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(undiscounted returns, lengths, complete flags) of every episode, in order."""
        ids = self.episode_ids
        returns = np.bincount(ids, weights=self.rewards.astype(np.float64))
        lengths = np.bincount(ids)
        complete = (self.terminals | self.timeouts)[self.episode_ends]
        return returns, lengths, complete


@dataclass
class EpisodeStats:
    """Statistics of the complete episodes of a dataset (all episodes if none is complete)."""

    count: int
    return_mean: float
    return_min: float
    return_max: float
    length_mean: float

    @classmethod
    def of(cls, transitions: Transitions) -> EpisodeStats:
        returns, lengths, complete = transitions.episode_returns()
        if complete.any():
            returns, lengths = returns[complete], lengths[complete]
        return cls(
            count=len(returns),
            return_mean=float(returns.mean()),
            return_min=float(returns.min()),
            return_max=float(returns.max()),
            length_mean=float(lengths.mean()),
        )


def return_to_go(
    rewards: np.ndarray,
    episode_ends: np.ndarray,
    gamma: float,
    failure_reward: float | None = None,
) -> np.ndarray:
    """Discounted return-to-go within each episode, CORL's ``get_return_to_go`` (Cal-QL).

    ``G_t = r_t + gamma * G_{t+1}`` inside an episode and ``G_last = r_last``: nothing is
    bootstrapped after the last transition, whether the episode terminated or timed out
    (CORL treats a time-out like the end of the episode here).

    Sparse-reward option (``failure_reward`` given, CORL's ``is_sparse_reward``): an episode
    whose **last** reward equals ``failure_reward`` (CORL: ``ref_min_score * reward_scale +
    reward_bias``, i.e. -5 on AntMaze with the x10 - 5 modification; such an episode never
    reached the goal) gets ``G_t = r_last / (1 - gamma)`` at every step, the value of
    failing forever.

    Computed with a segmented parallel scan (log2 of the longest episode vectorized passes).
    """
    g = rewards.astype(np.float64)
    coef = np.where(episode_ends, 0.0, gamma)  # G_t = g_t + coef_t * G_{t+step}
    coef[-1] = 0.0
    step = 1
    while coef.any():
        g[:-step] += coef[:-step] * g[step:]
        coef[:-step] *= coef[step:]
        coef[-step:] = 0.0
        step *= 2
    if failure_reward is not None:
        last = rewards[episode_ends].astype(np.float64)
        failed = np.isclose(last, failure_reward, rtol=0.0, atol=1e-6)
        ids = np.concatenate(([0], np.cumsum(episode_ends[:-1])))
        g = np.where(failed[ids], (last / (1.0 - gamma))[ids], g)
    return g


def to_tensordict(t: Transitions, mc_return: np.ndarray) -> TensorDict:
    """One ``TensorDict`` [N] with the keys of :mod:`.keys` (float32 data, bool flags [N, 1])."""

    def f32(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def flag(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=bool)).unsqueeze(-1)

    n = len(t)
    return TensorDict(
        {
            keys.OBSERVATION: f32(t.observations),
            # discrete actions stay integers [N] (TorchRL's Categorical convention)
            keys.ACTION: torch.from_numpy(t.actions.astype(np.int64)) if t.actions.dtype.kind in "iu" else f32(t.actions),
            keys.NEXT_OBSERVATION: f32(t.next_observations),
            keys.REWARD: f32(t.rewards).unsqueeze(-1),
            keys.DONE: flag(t.episode_ends),
            keys.TERMINATED: flag(t.terminals),
            keys.TRUNCATED: flag(t.truncated),
            keys.MC_RETURN: f32(mc_return).unsqueeze(-1),
        },
        batch_size=[n],
    )

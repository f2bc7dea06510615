"""Online episodes: transitions are held per environment until their episode ends
(terminated or truncated), then get their Monte-Carlo return with the data layer's
:func:`~cql_modules.data.return_to_go` (the dataset's gamma and sparse-reward rule) and are
written to the replay, so every stored row, offline or online, has a valid ``mc_return``.
Online transitions thus reach the replay when their episode ends (CORL's CQL adds them at
once; the delay is at most one episode).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from cql_modules.data import keys, return_to_go
from cql_modules.online.env import RAW_RETURN_KEY
from cql_modules.train.evaluation import SUCCESS_KEYS

__all__ = ["EpisodeRecord", "EpisodeWriter"]

_STEP_KEYS = tuple(k for k in keys.TRANSITION_KEYS if k != keys.MC_RETURN)


@dataclass
class EpisodeRecord:
    """One finished online episode."""

    length: int
    raw_return: float  #: undiscounted return of the raw rewards (the modified ones if the env has no RewardSum)
    modified_return: float  #: undiscounted return of the stored (modified) rewards
    terminated: bool
    success: Optional[bool] = None  #: None when the env reports no success signal


def _flag(td: TensorDictBase, key, fallback: torch.Tensor) -> torch.Tensor:
    value = td.get(key, None)
    return fallback.clone() if value is None else value.reshape(fallback.shape).bool()


class EpisodeWriter:
    """Buffers the transitions of unfinished episodes per environment; when an episode ends
    (``("next", "done")``: terminated or truncated) computes its ``mc_return`` with the data
    layer's :func:`~cql_modules.data.return_to_go` and writes it.

    Args:
        write: called with one ``TensorDict`` [n] of finished transitions (the keys of
            :mod:`cql_modules.data.keys`) per :meth:`add` that finished any episode.
        gamma: the dataset's discount (``info.gamma``).
        failure_reward: the sparse-reward failure value (:func:`mc_failure_reward`).
        success_keys: info keys (``("next", key)``) marking success; checked in this order.
        goal_reward: when no success key is present, a step whose *stored* reward exceeds
            this reached the goal (AntMaze: raw reward > 0, i.e. modified reward > -5;
            CORL's ``is_goal_reached`` fallback). None: no reward-based success.
    """

    def __init__(
        self,
        write: Callable[[TensorDictBase], Any],
        *,
        gamma: float,
        failure_reward: float | None = None,
        success_keys: Sequence[str] = SUCCESS_KEYS,
        goal_reward: float | None = None,
    ) -> None:
        self.write = write
        self.gamma = float(gamma)
        self.failure_reward = failure_reward
        self.success_keys = tuple(success_keys)
        self.goal_reward = goal_reward
        self.pending: dict[int, list[TensorDict]] = {}

    @property
    def pending_steps(self) -> int:
        return sum(p.shape[0] for parts in self.pending.values() for p in parts)

    def reset(self) -> None:
        """Drop the unfinished episodes (e.g. the env was reset from outside)."""
        self.pending.clear()

    def _select(self, batch: TensorDictBase) -> TensorDict:
        """The stored keys (+ raw return and success flags), float32/bool, cloned."""
        shape = batch.batch_size
        done = batch.get(keys.DONE).reshape(*shape, 1).bool()
        terminated = _flag(batch, keys.TERMINATED, done)
        out = TensorDict(
            {
                keys.OBSERVATION: batch.get(keys.OBSERVATION).float(),
                keys.ACTION: batch.get(keys.ACTION).float(),
                keys.NEXT_OBSERVATION: batch.get(keys.NEXT_OBSERVATION).float(),
                keys.REWARD: batch.get(keys.REWARD).reshape(*shape, 1).float(),
                keys.DONE: done,
                keys.TERMINATED: terminated,
                keys.TRUNCATED: _flag(batch, keys.TRUNCATED, done & ~terminated),
            },
            batch_size=shape,
        ).clone()
        raw = batch.get(("next", RAW_RETURN_KEY), None)
        if raw is not None:
            out.set("_raw_return", raw.reshape(*shape).double().clone())
        for k in self.success_keys:
            flag = batch.get(("next", k), None)
            if flag is not None:
                out.set("_success", flag.reshape(*shape).bool().clone())
                break
        return out

    def add(self, batch: TensorDictBase) -> list[EpisodeRecord]:
        """Consume one collector batch ([T] for one env, [E, T] for E envs, time last)."""
        if batch.ndim == 1:
            batch = batch.unsqueeze(0)
        elif batch.ndim > 2:
            batch = batch.reshape(-1, batch.shape[-1])
        data = self._select(batch)
        done = data.get(keys.DONE).squeeze(-1)
        finished, records = [], []
        for e in range(data.shape[0]):
            start = 0
            for t in done[e].nonzero().squeeze(-1).tolist():
                parts = self.pending.pop(e, []) + [data[e, start : t + 1]]
                episode = torch.cat(parts) if len(parts) > 1 else parts[0]
                rows, record = self._finish(episode)
                finished.append(rows)
                records.append(record)
                start = t + 1
            if start < data.shape[1]:
                self.pending.setdefault(e, []).append(data[e, start:])
        if finished:
            self.write(torch.cat(finished) if len(finished) > 1 else finished[0])
        return records

    def _finish(self, episode: TensorDict) -> tuple[TensorDict, EpisodeRecord]:
        n = episode.shape[0]
        rewards = episode.get(keys.REWARD).squeeze(-1).double().numpy()
        ends = np.zeros(n, dtype=bool)
        ends[-1] = True
        mc = return_to_go(rewards, ends, self.gamma, self.failure_reward)
        modified_return = float(rewards.sum())
        raw = episode.get("_raw_return", None)
        success = None
        if "_success" in episode.keys():
            success = bool(episode.get("_success").any())
        elif self.goal_reward is not None:
            success = bool((rewards > self.goal_reward).any())
        record = EpisodeRecord(
            length=n,
            raw_return=float(raw[-1]) if raw is not None else modified_return,
            modified_return=modified_return,
            terminated=bool(episode.get(keys.TERMINATED)[-1]),
            success=success,
        )
        rows = episode.select(*_STEP_KEYS)
        rows.set(keys.MC_RETURN, torch.from_numpy(mc.astype(np.float32)).unsqueeze(-1))
        return rows, record

"""Bookkeeping of the online phase: counters, training-episode metrics and regret."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cql_modules.data.scores import normalized_score
from cql_modules.online.episodes import EpisodeRecord
from cql_modules.train.evaluation import regret, score_regret

__all__ = ["OnlineProgress"]


@dataclass
class OnlineProgress:
    """Counters and histories of the online phase, checkpointed with the run.

    ``train/regret`` is CORL's, over every online training episode so far: Cal-QL's
    ``mean(1 - success)`` when the env reports success (goal tasks), else CQL's
    ``mean(1 - clip(normalized_return / 100, 0, 1))``. ``eval/regret`` is
    ``mean(1 - clip(normalized_score / 100, 0, 1))`` over the online phase's evaluations.
    """

    env_steps: int = 0
    episodes: int = 0
    train_returns: list = field(default_factory=list)  #: raw returns of the online training episodes
    train_successes: list = field(default_factory=list)  #: success flags (empty without a success signal)
    eval_scores: list = field(default_factory=list)  #: normalized scores of the online evaluations
    eval_successes: list = field(default_factory=list)  #: success rates of the online evaluations
    _interval: list = field(default_factory=list, repr=False)

    def add_episodes(self, records: Sequence[EpisodeRecord]) -> None:
        for r in records:
            self.episodes += 1
            self.train_returns.append(float(r.raw_return))
            if r.success is not None:
                self.train_successes.append(float(r.success))
            self._interval.append(r)

    def metrics(self, ref_scores: tuple[float, float] | None = None) -> dict[str, float]:
        """Training-episode metrics of the episodes finished since the last call (CORL's
        names under ``train/``) and the running ``train/regret``."""
        m: dict[str, float] = {"train/env_steps": float(self.env_steps), "train/episodes": float(self.episodes)}
        interval, self._interval = self._interval, []
        if interval:
            returns = [r.raw_return for r in interval]
            m["train/episode_return"] = float(np.mean(returns))
            m["train/episode_length"] = float(np.mean([r.length for r in interval]))
            if ref_scores is not None:
                m["train/d4rl_normalized_episode_return"] = float(np.mean(normalized_score(ref_scores, returns)))
            flags = [r.success for r in interval if r.success is not None]
            if flags:
                m["train/is_success"] = float(np.mean(flags))
        if self.train_successes:  # CORL Cal-QL (goal tasks): mean(1 - success)
            m["train/regret"] = regret(self.train_successes)
        elif self.train_returns and ref_scores is not None:  # CORL CQL: mean(1 - clip(normalized, 0, 1))
            m["train/regret"] = score_regret(normalized_score(ref_scores, self.train_returns), clip=True)
        return m

    def add_eval(self, normalized_score: float | None, success_rate: float | None = None) -> dict[str, float]:
        """Record an online evaluation; returns ``eval/regret`` (CORL's CQL:
        ``mean(1 - clip(score / 100, 0, 1))`` over the online evaluations so far) and, with a
        success signal, ``eval/success_regret`` (``mean(1 - success_rate)``)."""
        m: dict[str, float] = {}
        if normalized_score is not None:
            self.eval_scores.append(float(normalized_score))
            m["eval/regret"] = score_regret(self.eval_scores, clip=True)
        if success_rate is not None:
            self.eval_successes.append(float(success_rate))
            m["eval/success_regret"] = regret(self.eval_successes)
        return m

    def state_dict(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "train_returns": list(self.train_returns),
            "train_successes": list(self.train_successes),
            "eval_scores": list(self.eval_scores),
            "eval_successes": list(self.eval_successes),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OnlineProgress:
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in state.items()})

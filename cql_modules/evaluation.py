"""Full-episode evaluation of the deterministic policy, normalized scores, regret.

Every episode runs to its own end (termination or the env's time limit): episodes are
played one after the other, so no episode is cut when another one ends. Episode ``i`` of
an evaluation starts from ``env.reset(seed=seed + i)``: every evaluation of a run sees the
same start states (less noisy learning curves), and evaluating never draws from the
training random streams (wrap the call in :func:`cql_modules.training.preserve_rng` to
also protect torch's global generator from the policy / transforms).

Metric names follow CORL (``d4rl_normalized_score``, ``eval_score``) plus an ``eval/``
group (``eval/return_mean``, ``eval/normalized_score_mean``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = [
    "EvalResult",
    "evaluate",
    "episode_limit",
    "normalized_score",
    "regret",
    "score_regret",
]

DEFAULT_MAX_STEPS = 100_000  # safety cap for envs without a time limit


def normalized_score(returns, ref_min: float, ref_max: float):
    """D4RL normalized score ``100 * (return - ref_min) / (ref_max - ref_min)``."""
    if not ref_max > ref_min:
        raise ValueError(f"ref_max ({ref_max}) must be > ref_min ({ref_min})")
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(score) if score.ndim == 0 else score


def regret(successes: Sequence[float]) -> float:
    """CORL's offline-to-online regret: ``mean(1 - success)`` over the online phase's
    episodes (success in [0, 1]; AntMaze: goal reached, Adroit: ``goal_achieved``)."""
    s = np.asarray(successes, dtype=np.float64)
    if s.size == 0:
        raise ValueError("regret of an empty sequence")
    return float(np.mean(1.0 - s))


def score_regret(normalized_scores: Sequence[float], max_score: float = 100.0) -> float:
    """Regret in normalized-score units: ``mean(1 - score / max_score)`` over evaluations
    (for tasks without a success signal)."""
    s = np.asarray(normalized_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("regret of an empty sequence")
    return float(np.mean(1.0 - s / max_score))


@dataclass
class EvalResult:
    """Returns (and normalized scores when the references are known) of ``n`` episodes."""

    returns: list[float]
    lengths: list[int]
    normalized: list[float] | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    @property
    def normalized_mean(self) -> float | None:
        return float(np.mean(self.normalized)) if self.normalized is not None else None

    @property
    def score(self) -> float:
        """Mean normalized score if known, else mean return (the number a run reports)."""
        return float(np.mean(self.normalized)) if self.normalized is not None else self.return_mean

    def metrics(self) -> dict[str, float]:
        m = {
            "eval_score": self.return_mean,  # CORL: mean raw return
            "eval/return_mean": self.return_mean,
            "eval/return_std": self.return_std,
            "eval/return_min": float(np.min(self.returns)),
            "eval/return_max": float(np.max(self.returns)),
            "eval/episode_length_mean": float(np.mean(self.lengths)),
            "eval/episodes": float(len(self.returns)),
            "eval/seconds": self.seconds,
        }
        if self.normalized is not None:
            m["d4rl_normalized_score"] = float(np.mean(self.normalized))  # CORL's name
            m["eval/normalized_score_mean"] = float(np.mean(self.normalized))
            m["eval/normalized_score_std"] = float(np.std(self.normalized))
        m.update(self.extra)
        return m


def episode_limit(env) -> int | None:
    """The wrapped gymnasium env's ``max_episode_steps`` (None if it has none)."""
    base = getattr(env, "base_env", env)
    gym_env = getattr(base, "_env", None)
    spec = getattr(gym_env, "spec", None)
    return getattr(spec, "max_episode_steps", None)


def _reset(env, seed: int) -> TensorDictBase:
    """``reset(seed=seed)`` (gymnasium's seeded reset, through TorchRL's wrapper); envs
    whose reset takes no seed are seeded with ``set_seed`` first."""
    try:
        return env.reset(seed=seed)
    except TypeError:
        env.set_seed(seed)
        return env.reset()


@torch.no_grad()
def evaluate(
    env,
    policy: Callable[[TensorDictBase], TensorDictBase],
    n_episodes: int,
    *,
    seed: int,
    max_steps: int | None = None,
    ref_scores: tuple[float, float] | None = None,
) -> EvalResult:
    """Play ``n_episodes`` complete episodes with ``policy`` in deterministic mode
    (``ExplorationType.DETERMINISTIC``: a tanh-Gaussian actor plays ``tanh(mean)``).

    Args:
        env: a TorchRL env (e.g. ``cql_modules.data.make_env``), with the same observation
            normalization as the training data.
        policy: the actor (a TensorDict module writing ``action``).
        n_episodes: episodes to play, each to its own end.
        seed: episode ``i`` starts from ``env.reset(seed=seed + i)``.
        max_steps: cap per episode; None = the env's time limit (or a safety cap).
        ref_scores: ``(ref_min, ref_max)`` for normalized scores.
    """
    import time

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    limit = max_steps or episode_limit(env) or DEFAULT_MAX_STEPS
    start = time.perf_counter()
    returns, lengths = [], []
    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            for i in range(n_episodes):
                traj = env.rollout(limit, policy, auto_reset=False, tensordict=_reset(env, seed + i),
                                   break_when_any_done=True)
                returns.append(float(traj["next", "reward"].sum()))
                lengths.append(int(traj.shape[-1]))
    finally:
        if was_training and hasattr(policy, "train"):
            policy.train()
    normalized = None
    if ref_scores is not None:
        normalized = [float(s) for s in normalized_score(np.asarray(returns), *ref_scores)]
    return EvalResult(returns, lengths, normalized, seconds=time.perf_counter() - start)

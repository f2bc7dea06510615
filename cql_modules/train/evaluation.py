"""Full-episode evaluation of the deterministic policy, normalized scores, regret.

Every episode runs to its own end (termination or the env's time limit): episodes are
played one after the other, so no episode is cut when another one ends. Episode ``i`` of
an evaluation starts from ``env.reset(seed=seed + i)``: every evaluation of a run sees the
same start states (less noisy learning curves), and evaluating never draws from the
training random streams (wrap the call in :func:`cql_modules.train.state.preserve_rng` to
also protect torch's global generator from the policy / transforms).

Metric names follow CORL (``d4rl_normalized_score``, ``eval_score``) plus an ``eval/``
group (``eval/return_mean``, ``eval/normalized_score_mean``, ...; ``eval/success_rate``
when the env reports task success in its step info, see :func:`env_success_keys`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Composite, Unbounded
from torchrl.envs import TransformedEnv
from torchrl.envs.gym_like import BaseInfoDictReader
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cql_modules.data.scores import normalized_score

if TYPE_CHECKING:
    from cql_modules.data import DatasetInfo

__all__ = [
    "SUCCESS_KEYS",
    "EvalResult",
    "evaluate",
    "episode_limit",
    "env_success_keys",
    "SuccessInfoReader",
    "add_success_reader",
    "regret",
    "score_regret",
]

DEFAULT_MAX_STEPS = 100_000  # safety cap for envs without a time limit
#: info keys an environment may use to report task success (gymnasium-robotics: "success";
#: many goal envs: "is_success"; D4RL Adroit: "goal_achieved").
SUCCESS_KEYS = ("success", "is_success", "goal_achieved")


def regret(successes: Sequence[float]) -> float:
    """CORL's offline-to-online regret: ``mean(1 - success)`` over the online phase's
    episodes (success in [0, 1]; AntMaze: goal reached, Adroit: ``goal_achieved``)."""
    s = np.asarray(successes, dtype=np.float64)
    if s.size == 0:
        raise ValueError("regret of an empty sequence")
    return float(np.mean(1.0 - s))


def score_regret(normalized_scores: Sequence[float], max_score: float = 100.0, *, clip: bool = False) -> float:
    """Regret in normalized-score units: ``mean(1 - score / max_score)`` over evaluations
    (for tasks without a success signal). ``clip=True``: scores clipped to ``[0, max_score]``
    first, CORL's ``mean(1 - clip(score / 100, 0, 1))``."""
    s = np.asarray(normalized_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("regret of an empty sequence")
    if clip:
        s = np.clip(s, 0.0, max_score)
    return float(np.mean(1.0 - s / max_score))


@dataclass
class EvalResult:
    """Returns (and normalized scores when the references are known) of ``n`` episodes."""

    returns: list[float]
    lengths: list[int]
    normalized: list[float] | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    successes: list[bool] | None = None  #: per episode; None when no success key was read

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.successes is not None else None

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
        if self.successes is not None:
            m["eval/success_rate"] = self.success_rate
        m.update(self.extra)
        return m


def episode_limit(env) -> int | None:
    """The wrapped gymnasium env's ``max_episode_steps`` (None if it has none)."""
    base = getattr(env, "base_env", env)
    spec = getattr(base, "spec", None)  # TorchRL's wrapper forwards unknown attributes to the gymnasium env
    return getattr(spec, "max_episode_steps", None)


def env_success_keys(info: DatasetInfo | str, **make_kwargs) -> tuple[str, ...]:
    """The :data:`SUCCESS_KEYS` that a dataset's environment (a ``DatasetInfo`` or a
    gymnasium env id) reports in its reset or step info.

    Probed on a throw-away gymnasium instance (reset + one random step), so the training
    and evaluation environments' random streams are untouched.
    """
    import gymnasium as gym

    ref = info if isinstance(info, str) else (info.env_spec or info.env_id)
    env = gym.make(ref, **make_kwargs)
    try:
        _, reset_info = env.reset(seed=0)
        _, _, _, _, step_info = env.step(env.action_space.sample())
    finally:
        env.close()
    return tuple(k for k in SUCCESS_KEYS if k in step_info or k in reset_info)


def _gym_wrapper(env):
    base = env.base_env if isinstance(env, TransformedEnv) else env
    if not hasattr(base, "set_info_dict_reader"):
        raise TypeError(f"expected a TorchRL GymWrapper at the base of the env, got {type(base).__name__}")
    return base


class SuccessInfoReader(BaseInfoDictReader):
    """Reads success flags from a gymnasium step info into the TensorDict as bool scalars.

    TorchRL's ``default_info_dict_reader`` calls ``.dtype`` on every value and so fails on
    the plain Python ``bool`` that goal environments (gymnasium-robotics) report; a key
    missing from one step's info reads as False.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self._spec = Composite({k: Unbounded((), dtype=torch.bool) for k in self.keys}, shape=[])

    def __call__(self, info_dict: dict[str, Any], tensordict: TensorDictBase) -> TensorDictBase:
        for k in self.keys:
            value = info_dict.get(k, False) if isinstance(info_dict, dict) else False
            tensordict.set(k, torch.tensor(bool(np.asarray(value).any())))
        return tensordict

    @property
    def info_spec(self) -> Composite:
        return self._spec


def add_success_reader(env, success_keys: Sequence[str]):
    """Read the given info keys into the env's output as bool entries (``("next", key)``).
    Does nothing for keys a :class:`SuccessInfoReader` of the env already reads."""
    if not success_keys:
        return env
    base = _gym_wrapper(env)
    read = {k for r in base.info_dict_reader if isinstance(r, SuccessInfoReader) for k in r.keys}
    missing = [k for k in success_keys if k not in read]
    if missing:
        base.set_info_dict_reader(SuccessInfoReader(missing))
        if isinstance(env, TransformedEnv):
            env.transform.empty_cache()
    return env


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
    success_keys: Sequence[str] = (),
    goal_reward: float | None = None,
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
        success_keys: info keys reporting task success (e.g. :func:`env_success_keys`;
            read into the env with :func:`add_success_reader`). With keys, an episode
            succeeded when any key is true at any step: ``result.successes`` per episode
            and ``eval/success_rate`` in the metrics.
        goal_reward: without success keys, an episode succeeded when a step's reward
            exceeds this (sparse goal tasks: a raw reward > 0, CORL's ``is_goal_reached``);
            None: no success signal.
    """
    import time

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    limit = max_steps or episode_limit(env) or DEFAULT_MAX_STEPS
    success_keys = tuple(success_keys)
    add_success_reader(env, success_keys)
    start = time.perf_counter()
    returns, lengths, successes = [], [], []
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
                if success_keys:
                    successes.append(any(bool(traj["next", k].any()) for k in success_keys))
                elif goal_reward is not None:
                    successes.append(bool((traj["next", "reward"] > goal_reward).any()))
    finally:
        if was_training and hasattr(policy, "train"):
            policy.train()
    normalized = None
    if ref_scores is not None:
        normalized = [float(s) for s in normalized_score(ref_scores, np.asarray(returns))]
    return EvalResult(returns, lengths, normalized, seconds=time.perf_counter() - start,
                      successes=successes if success_keys or goal_reward is not None else None)

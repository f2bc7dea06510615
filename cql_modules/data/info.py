"""``DatasetInfo``: everything about a loaded dataset except the transitions themselves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import gymnasium as gym

from .transforms import RewardModification, StateNormalizer
from .transitions import EpisodeStats


@dataclass
class DatasetInfo:
    """Description of a dataset returned by :func:`load_dataset` next to its replay buffer.

    Attributes:
        name: the id, D4RL name or path it was loaded from.
        source: ``"minari"`` or ``"d4rl"`` (an HDF5 file in D4RL layout).
        observation_space / action_space: gymnasium ``Box`` spaces of the stored data (raw,
            i.e. before state normalization; a Minari ``Dict`` space is flattened); the
            action space may also be ``Discrete``.
        env_id: gymnasium id of the environment to evaluate in (None if there is none).
        env_spec: full gymnasium ``EnvSpec`` (Minari datasets) or None; ``make_env`` prefers it.
        flatten_observation: the stored observations were a flattened ``Dict`` (goal envs).
        observation_keys: that ``Dict``'s keys in the flattened order (``make_env`` flattens
            the env's observations in the same order).
        num_transitions: transitions in the replay buffer.
        episodes: episode statistics of the raw rewards (count, mean/min/max return).
        ref_min_score / ref_max_score: normalized-score references (D4RL table, Minari
            metadata), or None when the dataset has none.
        normalizer: the state normalizer applied to the buffer, or None.
        reward_modification: the reward modification applied to the buffer.
        gamma: discount of the ``mc_return`` entries.
        sparse_reward: whether the sparse-reward return-to-go rule was used.
    """

    name: str
    source: Literal["minari", "d4rl"]
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box
    env_id: str | None
    num_transitions: int
    episodes: EpisodeStats
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    normalizer: StateNormalizer | None = None
    reward_modification: RewardModification = field(default_factory=RewardModification)
    gamma: float = 0.99
    sparse_reward: bool = False
    flatten_observation: bool = False
    env_spec: Any = None
    observation_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (for logs and checkpoints); spaces as shapes and bounds."""

        def box(space: gym.spaces.Box | gym.spaces.Discrete) -> dict[str, Any]:
            if isinstance(space, gym.spaces.Discrete):
                return {"n": int(space.n)}
            return {"shape": list(space.shape), "low": space.low.tolist(), "high": space.high.tolist()}

        return {
            "name": self.name,
            "source": self.source,
            "env_id": self.env_id,
            "observation_space": box(self.observation_space),
            "action_space": box(self.action_space),
            "num_transitions": self.num_transitions,
            "episodes": asdict(self.episodes),
            "ref_min_score": self.ref_min_score,
            "ref_max_score": self.ref_max_score,
            "behaviour_score": self.behaviour_score,
            "normalizer": self.normalizer.to_dict() if self.normalizer is not None else None,
            "reward_modification": self.reward_modification.to_dict(),
            "gamma": self.gamma,
            "sparse_reward": self.sparse_reward,
        }

    @property
    def behaviour_score(self) -> float | None:
        """Normalized score (0-100) of the dataset's mean episode return, if refs are known."""
        from .scores import normalized_score

        return None if self.ref_min_score is None else float(normalized_score(self, self.episodes.return_mean))

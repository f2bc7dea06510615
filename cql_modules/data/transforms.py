"""Data conventions from CORL (docs/cql.md, section 9): state normalization, reward modification.

Both are small serializable objects so checkpoints can store them, and both turn into TorchRL
transforms so the evaluation / online environment sees the same convention as the buffer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchrl.envs.transforms import ObservationNorm, RewardScaling

from . import keys
from .errors import DatasetError

STATE_STD_EPS = 1e-3  # CORL: std + 1e-3
RETURN_RANGE_TARGET = 1000.0  # CORL modify_reward: r * max_episode_steps (1000) / (max_ret - min_ret)


@dataclass
class StateNormalizer:
    """``s -> (s - loc) / scale`` with loc = dataset mean, scale = dataset std + 1e-3 (CORL)."""

    loc: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_observations(cls, observations: np.ndarray, eps: float = STATE_STD_EPS) -> StateNormalizer:
        mean = observations.mean(0, dtype=np.float64)
        std = observations.std(0, dtype=np.float64) + eps
        return cls(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Same arithmetic as the ``ObservationNorm`` of :meth:`transform` (float32)."""
        return (obs - self.loc.to(obs.device)) / self.scale.to(obs.device)

    def denormalize(self, obs: torch.Tensor) -> torch.Tensor:
        return obs * self.scale.to(obs.device) + self.loc.to(obs.device)

    def transform(self, in_keys=(keys.OBSERVATION,)) -> ObservationNorm:
        """TorchRL ``ObservationNorm(standard_normal=True)`` applying this normalization."""
        return ObservationNorm(
            loc=self.loc.clone(), scale=self.scale.clone(), in_keys=list(in_keys), standard_normal=True
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loc": self.loc.clone(), "scale": self.scale.clone()}

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-friendly form (lists of floats)."""
        return {"loc": self.loc.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> StateNormalizer:
        """Inverse of :meth:`state_dict` and of :meth:`to_dict`."""
        return cls(*(torch.as_tensor(state[k], dtype=torch.float32) for k in ("loc", "scale")))


@dataclass
class RewardModification:
    """CORL's ``modify_reward``: ``r -> r * range_factor * scale + bias``.

    ``range_factor`` is ``1000 / (max_return - min_return)`` over the dataset's complete
    episodes when return-range scaling is on (CORL: locomotion), else 1. AntMaze uses
    scale 10, bias -5.
    """

    range_factor: float = 1.0
    scale: float = 1.0
    bias: float = 0.0

    @classmethod
    def make(
        cls, *, return_range: tuple[float, float] | None, scale: float = 1.0, bias: float = 0.0
    ) -> RewardModification:
        """``return_range`` = (min, max) episode return to scale by, or None for no range scaling."""
        if return_range is None:
            return cls(1.0, scale, bias)
        lo, hi = return_range
        if not hi > lo:
            raise DatasetError(f"cannot scale rewards by the return range: all episodes return {hi}")
        return cls(RETURN_RANGE_TARGET / (hi - lo), scale, bias)

    def __call__(self, reward):
        return reward * (self.range_factor * self.scale) + self.bias

    @property
    def is_identity(self) -> bool:
        return self.range_factor * self.scale == 1.0 and self.bias == 0.0

    def transform(self, in_keys=("reward",)) -> RewardScaling:
        """TorchRL ``RewardScaling`` applying the same modification to an environment's rewards."""
        return RewardScaling(loc=self.bias, scale=self.range_factor * self.scale, in_keys=list(in_keys))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> RewardModification:
        return cls(**state)

"""Behaviour policies for building datasets: uniform random, scripted controllers, saved
TorchRL policies, each with optional Gaussian action noise and epsilon-random actions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from . import keys
from .errors import DatasetError

ActionFn = Callable[[torch.Tensor], torch.Tensor]  # batched observation -> batched action


def pendulum_swing_up(obs: torch.Tensor) -> torch.Tensor:
    """Scripted expert for gymnasium ``Pendulum-v1`` (mean return about -143 over 200 steps).

    Far from upright: energy pumping, full torque in the direction of motion while the
    energy ``E = thdot^2 / 2 + 15 (cos th - 1)`` (0 = upright at rest; ``thdd = 15 sin th +
    3 u``) is below the upright level. Near upright (cos th > 0.85): PD stabilizer
    ``u = -(10 th + 2 thdot)``. Torque clipped to [-2, 2].
    """
    cos, sin, thdot = obs.unbind(-1)
    th = torch.atan2(sin, cos)
    energy = 0.5 * thdot**2 + 15.0 * (cos - 1.0)
    pump = 2.0 * torch.where(thdot >= 0, 1.0, -1.0) * (energy < 0)
    stabilize = -(10.0 * th + 2.0 * thdot)
    return torch.where(cos > 0.85, stabilize, pump).clamp(-2.0, 2.0).unsqueeze(-1)


SCRIPTED_CONTROLLERS: dict[str, ActionFn] = {"Pendulum-v1": pendulum_swing_up}


def load_policy(path: str | Path) -> ActionFn:
    """A saved TorchRL policy (``torch.save(module)`` of a ``TensorDictModule`` reading
    ``observation`` and writing ``action``, e.g. a ``ProbabilisticActor``), run
    deterministically on raw environment observations."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise DatasetError(f"cannot load policy checkpoint {path}: {err}") from err
    if not isinstance(module, nn.Module):
        raise DatasetError(f"{path} holds a {type(module).__name__}, expected a saved TorchRL policy module")

    @torch.no_grad()
    def act(obs: torch.Tensor) -> torch.Tensor:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return module(TensorDict({keys.OBSERVATION: obs}, batch_size=obs.shape[:-1]))[keys.ACTION]

    return act


def resolve_policy(policy: str | ActionFn, env_id: str) -> ActionFn | None:
    """``"random"`` -> None (uniform), ``"scripted"`` -> the env's scripted controller,
    a file path -> :func:`load_policy`, a callable -> itself."""
    if callable(policy):
        return policy
    if policy == "random":
        return None
    if policy == "scripted":
        if env_id not in SCRIPTED_CONTROLLERS:
            raise DatasetError(f"no scripted controller for {env_id} (have: {sorted(SCRIPTED_CONTROLLERS)})")
        return SCRIPTED_CONTROLLERS[env_id]
    if Path(policy).is_file():
        return load_policy(policy)
    raise DatasetError(f"unknown behaviour policy '{policy}': use 'random', 'scripted' or a checkpoint path")


class BehaviourPolicy(nn.Module):
    """TensorDict policy for a ``Collector``: base action + N(0, (noise_std * half_range)^2)
    noise, replaced by a uniform action with probability ``epsilon``, clipped to the bounds."""

    def __init__(
        self,
        action_space: gym.spaces.Box,
        base: ActionFn | None = None,
        noise_std: float = 0.0,
        epsilon: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.base, self.noise_std, self.epsilon = base, noise_std, epsilon
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32)
        if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise DatasetError(f"behaviour policies need a bounded action space, got {action_space}")
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, shape) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand(shape, generator=self.generator)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict[keys.OBSERVATION]
        shape = (*obs.shape[:-1], *self.low.shape)
        if self.base is None:
            action = self._uniform(shape)
        else:
            action = self.base(obs.float()).reshape(shape)
            if self.noise_std > 0:
                half_range = (self.high - self.low) / 2
                action = action + self.noise_std * half_range * torch.randn(shape, generator=self.generator)
            if self.epsilon > 0:
                explore = torch.rand(shape[:-1], generator=self.generator).unsqueeze(-1) < self.epsilon
                action = torch.where(explore, self._uniform(shape), action)
        tensordict[keys.ACTION] = torch.maximum(torch.minimum(action, self.high), self.low)
        return tensordict


__all__ = ["BehaviourPolicy", "SCRIPTED_CONTROLLERS", "load_policy", "pendulum_swing_up", "resolve_policy"]

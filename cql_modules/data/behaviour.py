"""Behaviour policies for building datasets: uniform random, scripted controllers, saved
TorchRL policies (policy files, see :func:`save_policy_file`), each with optional Gaussian action noise and epsilon-random actions.
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


def cartpole_balance(obs: torch.Tensor) -> torch.Tensor:
    """Scripted expert for gymnasium ``CartPole-v1`` (return 500, the time limit, from every
    start tried): push right (action 1) when ``10 th + 2 thdot + x + xdot > 0``."""
    x, xdot, th, thdot = obs.unbind(-1)
    return (10.0 * th + 2.0 * thdot + x + xdot > 0).long()


SCRIPTED_CONTROLLERS: dict[str, ActionFn] = {"Pendulum-v1": pendulum_swing_up, "CartPole-v1": cartpole_balance}


POLICY_FILE_FORMAT = "cql-modules/policy-v1"


def save_policy_file(actor: nn.Module, path: str | Path, *, normalizer=None) -> Path:
    """Save an actor built by :func:`cql_modules.make_actor` as a *policy file*: its state
    dict, the small architecture description needed to rebuild it (observation size,
    hidden width and depth, action bounds) and the observation normalizer it was trained
    with (a :class:`~cql_modules.data.StateNormalizer`, or None for raw observations).

    Only tensors, numbers and strings are stored, so :func:`load_behaviour_policy` reads it
    with ``torch.load(weights_only=True)``: loading a policy file can never run code.
    """
    from cql_modules.modules import MLP

    mlps = [m for m in actor.modules() if isinstance(m, MLP)]
    spec = getattr(actor, "spec", None)
    if spec is not None and hasattr(spec, "keys"):  # a Composite keyed by the actor's out_keys
        spec = spec[keys.ACTION] if keys.ACTION in spec.keys() else None
    if len(mlps) != 1 or spec is None or not hasattr(spec.space, "low"):
        raise DatasetError("save_policy_file needs an actor built by cql_modules.make_actor (one MLP, bounded spec)")
    linears = [m for m in mlps[0] if isinstance(m, nn.Linear)]
    state = {
        "format": POLICY_FILE_FORMAT,
        "observation_dim": linears[0].in_features,
        "hidden_dim": linears[0].out_features,
        "n_hidden_layers": len(linears) - 1,
        "action_low": torch.as_tensor(spec.space.low, dtype=torch.float32).reshape(-1).cpu(),
        "action_high": torch.as_tensor(spec.space.high, dtype=torch.float32).reshape(-1).cpu(),
        "state_dict": {k: v.detach().cpu() for k, v in actor.state_dict().items()},
        "normalizer": None if normalizer is None else normalizer.state_dict(),
    }
    path = Path(path)
    torch.save(state, path)
    return path


def load_behaviour_policy(path: str | Path, *, trust: bool = False) -> ActionFn:
    """A behaviour policy from a file, run deterministically on raw environment observations.

    * A policy file (:func:`save_policy_file`) is read with ``weights_only=True`` and its
      actor rebuilt with :func:`cql_modules.make_actor`; its normalizer is applied first.
    * Any other file (a pickled TorchRL ``TensorDictModule`` from ``torch.save(module)``
      reading ``observation`` and writing ``action``) is unpickled only with ``trust=True``
      (``--trust-policy-file``): unpickling runs whatever code the file names.
    """
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    path = Path(path)
    normalize = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a plain policy file (a pickled module), or unreadable
        if not trust:
            raise DatasetError(
                f"{path} is not a policy file (state dict + architecture) readable without running code "
                f"({type(err).__name__}); save it with cql_modules.data.save_policy_file, or pass "
                "--trust-policy-file if you trust where this pickle comes from"
            ) from err
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:
            raise DatasetError(f"cannot read policy file {path}: {type(err2).__name__}: {err2}") from err2
        if not isinstance(module, nn.Module):
            raise DatasetError(f"{path} holds a {type(module).__name__}, expected a saved TorchRL policy module")
    else:
        if not (isinstance(state, dict) and state.get("format") == POLICY_FILE_FORMAT):
            raise DatasetError(
                f"{path} is not a cql-modules policy file (expected format {POLICY_FILE_FORMAT!r}); "
                "save one with cql_modules.data.save_policy_file"
            )
        from torchrl.data import Bounded

        from cql_modules.modules import make_actor

        low, high = state["action_low"], state["action_high"]
        module = make_actor(
            state["observation_dim"], Bounded(low, high, shape=low.shape),
            hidden_dim=state["hidden_dim"], n_hidden_layers=state["n_hidden_layers"],
        )
        try:
            module.load_state_dict(state["state_dict"])
        except RuntimeError as err:
            raise DatasetError(f"{path}: weights do not match the architecture it describes ({err})") from err
        if state["normalizer"] is not None:
            from .transforms import StateNormalizer

            normalize = StateNormalizer.from_state_dict(state["normalizer"]).normalize
    module.eval()

    @torch.no_grad()
    def act(obs: torch.Tensor) -> torch.Tensor:
        obs = normalize(obs) if normalize is not None else obs
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return module(TensorDict({keys.OBSERVATION: obs}, batch_size=obs.shape[:-1]))[keys.ACTION]

    return act


def resolve_policy(policy: str | ActionFn, env_id: str, *, trust_policy_file: bool = False) -> ActionFn | None:
    """``"random"`` -> None (uniform), ``"scripted"`` -> the env's scripted controller,
    a file path -> :func:`load_behaviour_policy`, a callable -> itself."""
    if callable(policy):
        return policy
    if policy == "random":
        return None
    if policy == "scripted":
        if env_id not in SCRIPTED_CONTROLLERS:
            raise DatasetError(f"no scripted controller for {env_id} (have: {sorted(SCRIPTED_CONTROLLERS)})")
        return SCRIPTED_CONTROLLERS[env_id]
    if Path(policy).is_file():
        return load_behaviour_policy(policy, trust=trust_policy_file)
    raise DatasetError(f"unknown behaviour policy '{policy}': use 'random', 'scripted' or the path of a policy file")


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


class DiscreteBehaviourPolicy(nn.Module):
    """``BehaviourPolicy`` for a ``Discrete`` action space: the base action (an integer),
    replaced by a uniform one with probability ``epsilon``; ``noise_std`` does not apply."""

    def __init__(self, action_space: gym.spaces.Discrete, base: ActionFn | None = None, noise_std: float = 0.0,
                 epsilon: float = 0.0, seed: int = 0):  # fmt: skip
        super().__init__()
        if noise_std:
            raise DatasetError(f"noise_std applies to continuous actions; use epsilon for {action_space}")
        self.num_actions, self.base, self.epsilon = int(action_space.n), base, epsilon
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict[keys.OBSERVATION]
        uniform = torch.randint(self.num_actions, obs.shape[:-1], generator=self.generator)
        if self.base is None:
            action = uniform
        else:
            action = self.base(obs.float()).reshape(obs.shape[:-1]).long()
            explore = torch.rand(obs.shape[:-1], generator=self.generator) < self.epsilon
            action = torch.where(explore, uniform, action)
        tensordict[keys.ACTION] = action
        return tensordict


__all__ = [
    "BehaviourPolicy",
    "DiscreteBehaviourPolicy",
    "POLICY_FILE_FORMAT",
    "SCRIPTED_CONTROLLERS",
    "cartpole_balance",
    "load_behaviour_policy",
    "pendulum_swing_up",
    "resolve_policy",
    "save_policy_file",
]

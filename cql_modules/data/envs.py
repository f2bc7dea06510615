"""``make_env``: the evaluation environment of a dataset, with the buffer's conventions.

* The env is the dataset's own: a Minari dataset's (evaluation) ``EnvSpec``, kwargs included
  (maze layout, reward type, ...); gymnasium-robotics' envs are registered on demand.
* A ``Dict`` observation (goal envs) is flattened by :class:`FlattenDictObservation` in the
  dataset's key order (``DatasetInfo.observation_keys``), exactly as the loader flattened
  the stored observations, goal included.
* AntMaze is evaluated as D4RL does: the episode ends when the goal is reached
  (``continuing_task=False``), so its sparse return is the success (0 or 1) and the
  normalized score (refs 0 and 1) is 100 x success. Success itself is read from
  ``info["success"]`` (see ``cql_modules.train.evaluation.env_success_keys``).
* D4RL's own AntMaze files have no environment (see :func:`no_env_reason`).
"""

from __future__ import annotations

import contextlib
import io

import gymnasium as gym
import numpy as np
import torch
from torchrl.envs import DoubleToFloat, GymWrapper, TransformedEnv

from .d4rl import D4RL_DATASETS
from .errors import DatasetError
from .info import DatasetInfo
from .minari_source import env_family, flat_observation_space, flatten_observation, observation_keys
from .transforms import StateNormalizer

#: gym.make kwargs per env family for evaluation and online play (D4RL's AntMaze convention).
EPISODE_KWARGS = {"antmaze": {"continuing_task": False}}


class FlattenDictObservation(gym.ObservationWrapper):
    """Encode a ``Dict`` observation as the loader encoded the dataset's
    (:func:`~cql_modules.data.minari_source.flatten_observation`, entries in ``keys`` order)."""

    def __init__(self, env: gym.Env, keys: tuple[str, ...]):
        super().__init__(env)
        self.space = env.observation_space
        if set(keys) != set(observation_keys(self.space)):
            raise DatasetError(f"environment observation keys {sorted(observation_keys(self.space))} != "
                               f"the dataset's {sorted(keys)}")
        self.keys = tuple(keys)
        self.observation_space = flat_observation_space(self.space, self.keys)

    def observation(self, observation):
        return flatten_observation(observation, self.space, self.keys)


def minari_port(d4rl_name: str) -> str | None:
    """Minari's id of a D4RL AntMaze / Adroit name (``antmaze-umaze-v2`` -> ``D4RL/antmaze/umaze-v1``)."""
    task, _, rest = d4rl_name.partition("-")
    if task == "antmaze" and rest.endswith("-v2"):
        return f"D4RL/antmaze/{rest[:-3]}-v1"
    if task in ("pen", "door", "hammer", "relocate") and rest.endswith("-v1"):
        return f"D4RL/{task}/{rest[:-3]}-v2"
    return None


def no_env_reason(info: DatasetInfo) -> str:
    """Why a dataset has no evaluation environment, and what to use instead (one line)."""
    port = minari_port(info.name) if info.name in D4RL_DATASETS else None
    if port and info.name.startswith("antmaze"):
        return (f"no environment matches D4RL's {info.name}: its 29-dim observations (ant qpos + qvel, no goal) "
                f"come from d4rl's retired gym AntMaze, which no gymnasium env reproduces; use the Minari port "
                f"{port} (dataset={port}), evaluated in gymnasium-robotics' AntMaze")
    if port:
        return (f"no environment matches D4RL's {info.name} (d4rl's retired gym Adroit envs); use the Minari port "
                f"{port} (dataset={port}), evaluated in gymnasium-robotics' AdroitHand envs")
    return f"dataset '{info.name}' names no evaluation environment; pass a gymnasium env id"


def register_robotics_envs() -> None:
    """Register gymnasium-robotics' envs (mazes, AntMaze, Adroit) with gymnasium, which does
    not know them until the package is imported; a one-line :class:`DatasetError` if it is
    not installed."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its import prints a version notice
            import gymnasium_robotics
    except ImportError:
        raise DatasetError("gymnasium-robotics is not installed (pip install 'cql-modules[mujoco]')") from None
    gym.register_envs(gymnasium_robotics)


def _gym_make(env_ref, **make_kwargs) -> gym.Env:
    """``gym.make``; registers gymnasium-robotics' envs on demand."""
    try:
        return gym.make(env_ref, **make_kwargs)
    except gym.error.Error:
        try:
            register_robotics_envs()
        except DatasetError as err:
            raise DatasetError(f"cannot make environment '{getattr(env_ref, 'id', env_ref)}': not registered, "
                               f"and {err}") from None
        return gym.make(env_ref, **make_kwargs)


def make_env(
    dataset: DatasetInfo | str,
    *,
    normalizer: StateNormalizer | None | str = "dataset",
    seed: int | None = None,
    device: str | torch.device = "cpu",
    **make_kwargs,
) -> TransformedEnv:
    """TorchRL env (``GymWrapper`` of ``gym.make``) + ``DoubleToFloat`` + state normalization.

    Args:
        dataset: a :class:`DatasetInfo` (its ``env_spec`` / ``env_id``; the env's observation
            and action spaces are checked against the dataset's, a mismatch raises
            :class:`DatasetError`) or a gymnasium env id (no check).
        normalizer: ``"dataset"`` = the dataset's normalizer (none for an env id), a
            :class:`StateNormalizer`, or None for raw observations. Applied as TorchRL's
            ``ObservationNorm(loc, scale, standard_normal=True)`` on ``observation``.
        seed: seeds the environment.
        device: device of the TorchRL env.
        make_kwargs: extra ``gym.make`` arguments (over :data:`EPISODE_KWARGS` of the env's family).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else None
    if info is not None:
        env_ref = info.env_spec or info.env_id
        if env_ref is None:
            raise DatasetError(no_env_reason(info))
    else:
        env_ref = dataset
    if normalizer == "dataset":
        normalizer = info.normalizer if info is not None else None
    make_kwargs = {**EPISODE_KWARGS.get(env_family(env_ref), {}), **make_kwargs}
    try:
        gym_env = _gym_make(env_ref, **make_kwargs)
    except DatasetError:
        raise
    except Exception as err:  # bad kwargs, missing simulator, ...
        name = getattr(env_ref, "id", env_ref)
        raise DatasetError(f"cannot make evaluation environment '{name}': {type(err).__name__}: {err}") from err
    if info is not None:
        keys = getattr(info, "observation_keys", ())
        if keys:
            gym_env = FlattenDictObservation(gym_env, keys)
        elif info.flatten_observation:
            gym_env = gym.wrappers.FlattenObservation(gym_env)
        check_spaces(info, gym_env.observation_space, gym_env.action_space)
    env = TransformedEnv(GymWrapper(gym_env, device=device, categorical_action_encoding=True), DoubleToFloat())
    if normalizer is not None:
        env.append_transform(normalizer.transform())
    if seed is not None:
        env.set_seed(seed)
    return env


def check_spaces(info: DatasetInfo, observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raise :class:`DatasetError` when an env's spaces disagree with the dataset's."""
    problems = []
    if getattr(observation_space, "shape", None) != info.observation_space.shape:
        problems.append(f"observation shape {observation_space.shape} != {info.observation_space.shape}")
    if isinstance(info.action_space, gym.spaces.Discrete) or isinstance(action_space, gym.spaces.Discrete):
        if action_space != info.action_space:
            problems.append(f"action space {action_space} != {info.action_space}")
    elif getattr(action_space, "shape", None) != info.action_space.shape:
        problems.append(f"action shape {getattr(action_space, 'shape', action_space)} != {info.action_space.shape}")
    elif not (
        np.allclose(action_space.low, info.action_space.low) and np.allclose(action_space.high, info.action_space.high)
    ):
        problems.append(
            f"action bounds [{action_space.low}, {action_space.high}] != "
            f"[{info.action_space.low}, {info.action_space.high}]"
        )
    if problems:
        raise DatasetError(f"environment does not match dataset '{info.name}': " + "; ".join(problems))

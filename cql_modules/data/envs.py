"""``make_env``: the evaluation environment of a dataset, with the buffer's conventions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torchrl.envs import DoubleToFloat, GymWrapper, TransformedEnv

from .errors import DatasetError
from .info import DatasetInfo
from .transforms import StateNormalizer


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
        make_kwargs: extra ``gym.make`` arguments.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else None
    if info is not None:
        env_ref = info.env_spec or info.env_id
        if env_ref is None:
            raise DatasetError(f"dataset '{info.name}' names no evaluation environment; pass a gymnasium env id")
    else:
        env_ref = dataset
    if normalizer == "dataset":
        normalizer = info.normalizer if info is not None else None
    try:
        gym_env = gym.make(env_ref, **make_kwargs)
    except Exception as err:  # unregistered id, missing package (e.g. gymnasium-robotics)
        name = getattr(env_ref, "id", env_ref)
        raise DatasetError(f"cannot make evaluation environment '{name}': {type(err).__name__}: {err}") from err
    if info is not None:
        if info.flatten_observation:
            gym_env = gym.wrappers.FlattenObservation(gym_env)
        check_spaces(info, gym_env.observation_space, gym_env.action_space)
    env = TransformedEnv(GymWrapper(gym_env, device=device), DoubleToFloat())
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
    if getattr(action_space, "shape", None) != info.action_space.shape:
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

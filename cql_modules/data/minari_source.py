"""Minari datasets: id resolution (local root first, download only when asked) and reading.

Local datasets live under minari's own root: ``$MINARI_DATASETS_PATH`` if set, else
``~/.minari/datasets``. Observations of a ``Dict`` space (e.g. ``D4RL/antmaze/*``:
``achieved_goal``, ``desired_goal``, ``observation``) are flattened in the space's key order,
as gymnasium's ``FlattenObservation`` does for the evaluation environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from .errors import DatasetError, DatasetNotFoundError
from .transitions import Transitions


@dataclass
class MinariData:
    """A Minari dataset read into :class:`Transitions`, plus what its metadata says."""

    transitions: Transitions
    observation_space: gym.spaces.Box  # flattened when the stored space is a Dict
    action_space: gym.spaces.Box
    flatten_observation: bool
    env_spec: Any  # gymnasium EnvSpec to evaluate in, or None
    ref_min_score: float | None
    ref_max_score: float | None


def minari_root() -> Path:
    """Minari's local root (its own resolution of ``$MINARI_DATASETS_PATH``)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def is_local_minari(dataset_id: str) -> bool:
    return (minari_root() / dataset_id / "data").is_dir()


def open_minari(dataset_id: str, download: bool = False):
    """The ``MinariDataset`` of an id: the local copy, else a download when ``download``."""
    import minari

    if not is_local_minari(dataset_id):
        if not download:
            raise DatasetNotFoundError(
                f"Minari dataset '{dataset_id}' not found under {minari_root()} ($MINARI_DATASETS_PATH); "
                f"pass download=True or run `minari download {dataset_id}`"
            )
        try:
            minari.download_dataset(dataset_id)
        except Exception as err:  # network down, unknown remote id, ...
            raise DatasetNotFoundError(f"could not download Minari dataset '{dataset_id}': {err}") from err
    try:
        return minari.load_dataset(dataset_id)
    except Exception as err:
        raise DatasetError(f"Minari dataset '{dataset_id}' under {minari_root()} is unreadable: {err}") from err


def _flat_space(space: gym.Space) -> tuple[gym.spaces.Box, bool]:
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return space, False
    if isinstance(space, gym.spaces.Dict) and all(
        isinstance(s, gym.spaces.Box) and len(s.shape) == 1 for s in space.spaces.values()
    ):
        return gym.spaces.flatten_space(space), True
    raise DatasetError(f"unsupported observation space {space}: need a 1-D Box (or a Dict of 1-D Boxes)")


def _flat(x, flatten: bool, space: gym.Space) -> np.ndarray:
    return np.concatenate([x[k] for k in space.spaces], axis=-1) if flatten else x


def read_minari(dataset) -> MinariData:
    """Read every episode of a ``MinariDataset`` (one h5py read per episode, then concatenate)."""
    obs_space, flatten = _flat_space(dataset.observation_space)
    act_space = dataset.action_space
    if not (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1):
        raise DatasetError(f"unsupported action space {act_space}: need a 1-D Box")
    obs, next_obs, actions, rewards, terminals, timeouts, ends = [], [], [], [], [], [], []
    try:
        for ep in dataset.storage.get_episodes(dataset.episode_indices):
            o = _flat(ep["observations"], flatten, dataset.observation_space)
            n = len(ep["rewards"])
            obs.append(o[:n])
            next_obs.append(o[1 : n + 1])
            actions.append(ep["actions"])
            rewards.append(ep["rewards"])
            terminals.append(ep["terminations"])
            timeouts.append(ep["truncations"])
            end = np.zeros(n, dtype=bool)
            end[-1] = True
            ends.append(end)
    except Exception as err:
        raise DatasetError(f"Minari dataset '{dataset.id}' is corrupt: {type(err).__name__}: {err}") from err
    if not rewards:
        raise DatasetError(f"Minari dataset '{dataset.id}' holds no episodes")
    cat = np.concatenate
    transitions = Transitions(
        cat(obs), cat(actions), cat(rewards), cat(next_obs),
        cat(terminals).astype(bool), cat(timeouts).astype(bool), cat(ends),
    )  # fmt: skip
    metadata = dataset.storage.metadata
    env_spec = getattr(dataset, "_eval_env_spec", None) or dataset.env_spec
    return MinariData(
        transitions=transitions,
        observation_space=obs_space,
        action_space=act_space,
        flatten_observation=flatten,
        env_spec=env_spec,
        ref_min_score=metadata.get("ref_min_score"),
        ref_max_score=metadata.get("ref_max_score"),
    )

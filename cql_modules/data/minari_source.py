"""Minari datasets: id resolution (local root first, download only when asked) and reading.

Local datasets live under minari's own root: ``$MINARI_DATASETS_PATH`` if set, else
``~/.minari/datasets``. Observations of a ``Dict`` space (e.g. ``D4RL/antmaze/*`` and
``D4RL/pointmaze/*``: ``achieved_goal``, ``desired_goal``, ``observation``) are concatenated
in the stored space's key order (:attr:`MinariData.observation_keys`); the evaluation and
online environments flatten theirs in that same order (:func:`cql_modules.data.make_env`),
so the goal is part of the observation on both sides. Other entries are encoded the same
way on both sides too (:func:`flatten_observation`): an image ``Box`` by its pixels, a
``Discrete`` one one-hot, and strings (MiniGrid's constant mission) dropped.

Goal-reaching datasets (gymnasium-robotics mazes: ``AntMaze_*``, ``PointMaze_*`` with
``reward_type="sparse"``) use the sparse-reward ``mc_return`` rule. AntMaze follows D4RL's
convention: its evaluation episode ends when the goal is reached (return 1, else 0) and
the reference scores are 0 and 1, so the normalized score is 100 x the success rate.
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


#: (ref_min_score, ref_max_score) of Minari datasets whose metadata has none, measured by this
#: project: MiniGrid-FourRooms-v0, uniform random policy and shortest-path expert, 1000 episodes
#: each, seeds 0..999 (``cql_modules.data.discrete.measure_minigrid_references``).
MEASURED_REFERENCE_SCORES = {
    "D4RL/minigrid/fourrooms-v0": (0.0231, 0.8568),
    "D4RL/minigrid/fourrooms-random-v0": (0.0231, 0.8568),
}


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
    observation_keys: tuple[str, ...] = ()  # a Dict observation's keys, in the flattened order
    sparse_reward: bool = False  # a sparse-reward goal task (see the module docstring)


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


def observation_keys(space: gym.spaces.Dict) -> tuple[str, ...]:
    """The entries of a ``Dict`` observation that are encoded, in order: every ``Box`` and
    ``Discrete`` one; string entries (``Text``, MiniGrid's ``MissionSpace``: a task's mission,
    e.g. "reach the goal") are left out."""
    keys = tuple(k for k, s in space.spaces.items() if not _is_string_space(s))
    for key in keys:
        if not isinstance(space[key], (gym.spaces.Box, gym.spaces.Discrete)):
            raise DatasetError(f"unsupported observation entry '{key}': {space[key]} (need Box, Discrete or Text)")
    return keys


def _is_string_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Text) or (space.dtype is not None and np.dtype(space.dtype).kind == "U")


def flat_observation_space(space: gym.spaces.Dict, keys: tuple[str, ...]) -> gym.spaces.Box:
    """The 1-D ``Box`` of :func:`flatten_observation`'s output."""
    lows, highs = [], []
    for key in keys:
        s = space[key]
        if isinstance(s, gym.spaces.Discrete):
            lows.append(np.zeros(s.n, np.float32))
            highs.append(np.ones(s.n, np.float32))
        else:
            lows.append(s.low.reshape(-1))
            highs.append(s.high.reshape(-1))
    low, high = np.concatenate(lows), np.concatenate(highs)
    dtype = low.dtype if np.issubdtype(low.dtype, np.floating) else np.float32
    return gym.spaces.Box(low.astype(dtype), high.astype(dtype), dtype=dtype)


def flatten_observation(x, space: gym.spaces.Dict, keys: tuple[str, ...]) -> np.ndarray:
    """Encode a ``Dict`` observation (one, or a batch along leading dims) as one vector:
    the entries of ``keys`` concatenated, a ``Box`` entry flattened (an image: its pixels),
    a ``Discrete`` one one-hot. The loader and the evaluation env both use this."""
    parts = []
    for key in keys:
        s, value = space[key], np.asarray(x[key])
        if isinstance(s, gym.spaces.Discrete):
            parts.append(np.eye(s.n, dtype=np.float32)[value.astype(np.int64) - s.start])
        else:
            value = value.reshape(*value.shape[: value.ndim - len(s.shape)], -1)
            parts.append(value if np.issubdtype(value.dtype, np.floating) else value.astype(np.float32))
    return np.concatenate(parts, axis=-1)


def _flat_space(space: gym.Space) -> tuple[gym.spaces.Box, tuple[str, ...]]:
    """The stored observation space as a 1-D Box, and the encoded keys of a Dict (else ())."""
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return space, ()
    if isinstance(space, gym.spaces.Dict):
        keys = observation_keys(space)
        return flat_observation_space(space, keys), keys
    raise DatasetError(f"unsupported observation space {space}: need a 1-D Box or a Dict of Box / Discrete / Text")


def env_family(env_spec: Any) -> str | None:
    """``"antmaze"`` / ``"pointmaze"`` for gymnasium-robotics' maze envs, ``"adroit"`` for
    the Adroit hand, else None (read from the spec's id)."""
    env_id = str(getattr(env_spec, "id", env_spec) or "")
    for prefix, family in (("AntMaze_", "antmaze"), ("PointMaze_", "pointmaze"), ("AdroitHand", "adroit")):
        if env_id.startswith(prefix):
            return family
    return None


def is_sparse_goal_task(env_spec: Any) -> bool:
    """A maze env with sparse rewards (AntMaze datasets are sparse whatever their spec says)."""
    family = env_family(env_spec)
    kwargs = getattr(env_spec, "kwargs", None) or {}
    return family == "antmaze" or (family == "pointmaze" and kwargs.get("reward_type", "sparse") == "sparse")


def read_minari(dataset) -> MinariData:
    """Read every episode of a ``MinariDataset`` (one h5py read per episode, then concatenate)."""
    obs_space, obs_keys = _flat_space(dataset.observation_space)
    act_space = dataset.action_space
    if not (isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1 or isinstance(act_space, gym.spaces.Discrete)):
        raise DatasetError(f"unsupported action space {act_space}: need a 1-D Box or a Discrete space")
    obs, next_obs, actions, rewards, terminals, timeouts, ends = [], [], [], [], [], [], []
    try:
        for ep in dataset.storage.get_episodes(dataset.episode_indices):
            o = ep["observations"]
            o = flatten_observation(o, dataset.observation_space, obs_keys) if obs_keys else o
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
    refs = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if refs[0] is None:
        refs = MEASURED_REFERENCE_SCORES.get(dataset.id, refs)
    if env_family(env_spec) == "antmaze":
        refs = 0.0, 1.0  # D4RL: the evaluation episode ends at the goal, return = success
    return MinariData(
        transitions=transitions,
        observation_space=obs_space,
        action_space=act_space,
        flatten_observation=bool(obs_keys),
        env_spec=env_spec,
        ref_min_score=refs[0],
        ref_max_score=refs[1],
        observation_keys=obs_keys,
        sparse_reward=is_sparse_goal_task(env_spec),
    )

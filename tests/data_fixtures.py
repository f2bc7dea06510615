"""Small synthetic datasets for the data-layer tests (D4RL-layout HDF5 and Minari)."""

from __future__ import annotations

import gymnasium as gym
import h5py
import numpy as np

# Three episodes: terminal after 3 steps, time-out after 4 steps, cut by the end of data after 2.
EPISODE_LENGTHS = (3, 4, 2)
EPISODE_ENDS = ("terminal", "timeout", "cut")


def d4rl_arrays(obs_dim: int = 2, act_dim: int = 2) -> dict[str, np.ndarray]:
    """Rows i = 0..8; observations[i] = [i, 100 + i, ...], rewards[i] = i + 1."""
    n = sum(EPISODE_LENGTHS)
    obs = np.arange(n, dtype=np.float32)[:, None] + 100 * np.arange(obs_dim, dtype=np.float32)
    terminals = np.zeros(n, dtype=bool)
    timeouts = np.zeros(n, dtype=bool)
    ends = np.cumsum(EPISODE_LENGTHS) - 1
    terminals[ends[0]] = True
    timeouts[ends[1]] = True
    return {
        "observations": obs,
        "actions": np.full((n, act_dim), 0.5, dtype=np.float32) * np.sign(np.arange(n) % 2 - 0.5)[:, None],
        "rewards": np.arange(1, n + 1, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        # "next observation" of row i written as obs + 0.5 so tests see which one is used
        "next_observations": obs + 0.5,
    }


def write_d4rl(path, *, next_observations: bool = False, **overrides) -> dict[str, np.ndarray]:
    arrays = d4rl_arrays()
    if not next_observations:
        del arrays["next_observations"]
    arrays.update(overrides)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return arrays


def pendulum_episode(length: int, rewards, *, terminated: bool = False, seed: int = 0) -> dict:
    """A Minari episode with Pendulum-v1 shaped data (obs 3-d in bounds, torque in [-2, 2])."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(length + 1, 3)).astype(np.float32)
    return {
        "observations": obs,
        "actions": rng.uniform(-2, 2, size=(length, 1)).astype(np.float32),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminations": np.array([False] * (length - 1) + [terminated]),
        "truncations": np.array([False] * (length - 1) + [not terminated]),
    }


def write_minari(dataset_id: str, episodes: list[dict], *, env="Pendulum-v1", ref=(-1000.0, -100.0), **kw):
    """Write a Minari dataset under the current $MINARI_DATASETS_PATH."""
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            ref_min_score=ref[0] if ref else None,
            ref_max_score=ref[1] if ref else None,
            **kw,
        )


DICT_OBS_SPACE = gym.spaces.Dict(
    {"achieved_goal": gym.spaces.Box(-10, 10, (2,)), "observation": gym.spaces.Box(-10, 10, (3,))}
)

"""Offline data layer: dataset sources -> validated, transformed transitions -> replay buffer.

Usage::

    buffer, info = load_dataset(DEFAULT_DATASET_ID)  # built locally on first use
    batch = buffer.sample()                          # TensorDict [256], keys in cql_modules.data.keys
    env = make_env(info, seed=0)                     # evaluation env with the same state normalization
    normalized_score(info, returns)                  # 100 * (r - ref_min) / (ref_max - ref_min)
"""

from . import keys
from .behaviour import SCRIPTED_CONTROLLERS, BehaviourPolicy, load_behaviour_policy, pendulum_swing_up, save_policy_file
from .collect import (
    DEFAULT_DATASET_ID,
    BehaviourSpec,
    build_default_dataset,
    build_minari_dataset,
    collect_episodes,
    ensure_default_dataset,
)
from .discrete import CARTPOLE_DATASET_ID, build_cartpole_dataset  # importing registers its local builder
from .d4rl import D4RL_DATASETS, d4rl_cache_dir, read_d4rl_hdf5
from .envs import make_env
from .errors import DatasetError, DatasetNotFoundError
from .info import DatasetInfo
from .loading import dataset_problem, load_dataset, locate_dataset, make_replay_buffer
from .maze import MAZE_DATASET_ID, build_maze_dataset, ensure_maze_dataset
from .scores import normalized_score, reference_scores
from .transforms import RewardModification, StateNormalizer
from .transitions import EpisodeStats, Transitions, return_to_go

__all__ = [
    "CARTPOLE_DATASET_ID",
    "D4RL_DATASETS",
    "DEFAULT_DATASET_ID",
    "SCRIPTED_CONTROLLERS",
    "BehaviourPolicy",
    "BehaviourSpec",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "MAZE_DATASET_ID",
    "EpisodeStats",
    "RewardModification",
    "StateNormalizer",
    "Transitions",
    "build_cartpole_dataset",
    "build_default_dataset",
    "build_maze_dataset",
    "build_minari_dataset",
    "collect_episodes",
    "d4rl_cache_dir",
    "dataset_problem",
    "ensure_default_dataset",
    "ensure_maze_dataset",
    "keys",
    "load_dataset",
    "load_behaviour_policy",
    "locate_dataset",
    "make_env",
    "make_replay_buffer",
    "normalized_score",
    "pendulum_swing_up",
    "read_d4rl_hdf5",
    "reference_scores",
    "save_policy_file",
    "return_to_go",
]

"""The online phase's environment and collector.

* observations are normalized by the dataset's ``ObservationNorm`` (``make_env``);
* rewards get the dataset's reward modification as a TorchRL ``RewardScaling`` transform
  (:meth:`RewardModification.transform`), and a ``RewardSum`` placed *before* it keeps the
  raw episode return (``("next", RAW_RETURN_KEY)``) for scores and regret;
* a TorchRL ``Collector`` runs the very actor being trained, stochastically.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torchrl.collectors import Collector
from torchrl.envs import TransformedEnv
from torchrl.envs.transforms import RewardSum
from torchrl.envs.utils import ExplorationType

from cql_modules.data import DatasetError, DatasetInfo, keys, make_env
from cql_modules.train.evaluation import add_success_reader, env_success_keys

__all__ = ["RAW_RETURN_KEY", "make_online_env", "make_collector", "mc_failure_reward", "goal_reward_threshold"]

#: where the online env writes the undiscounted episode return of the *raw* rewards.
RAW_RETURN_KEY = "episode_raw_return"


def make_online_env(
    info: DatasetInfo,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    success_keys: Sequence[str] | None | Literal["auto"] = "auto",
    **make_kwargs,
) -> TransformedEnv:
    """The training environment of the online phase: :func:`cql_modules.data.make_env`
    (same ``ObservationNorm`` as the buffer) + ``RewardSum`` of the raw rewards (written
    to ``RAW_RETURN_KEY``) + the dataset's reward modification (``RewardScaling``), so the
    collected ``("next", "reward")`` is on the buffer's scale.

    Args:
        info: the loaded dataset's :class:`DatasetInfo`.
        seed: seeds the environment, after every transform is in place (set it before a
            ``Collector`` is built: the collector resets the env when constructed).
        success_keys: info keys to read as success flags; ``"auto"`` probes the env
            (:func:`env_success_keys`); None or ``()`` for none.
        make_kwargs: ``gym.make`` arguments (e.g. ``max_episode_steps``).
    """
    env = make_env(info, device=device, **make_kwargs)
    if success_keys == "auto":
        success_keys = env_success_keys(info, **make_kwargs)
    add_success_reader(env, success_keys or ())
    env.append_transform(RewardSum(in_keys=[keys.REWARD[1]], out_keys=[RAW_RETURN_KEY]))
    mod = info.reward_modification
    if not mod.is_identity:
        factor = mod.range_factor * mod.scale
        if factor < 1e-6:  # RewardScaling clamps its scale to >= 1e-6
            raise DatasetError(f"online reward modification needs a scale >= 1e-6, got {factor}")
        env.append_transform(mod.transform())
    if seed is not None:
        env.set_seed(seed)
    return env


def make_collector(env, policy, *, frames_per_batch: int = 1, device: str | torch.device | None = None) -> Collector:
    """A TorchRL ``Collector`` running ``policy`` **stochastically** (``ExplorationType.RANDOM``)
    in ``env`` forever (``total_frames=-1``), ``frames_per_batch`` steps per batch.

    In one process the collector calls the very ``policy`` object it was given, so every
    optimizer step on the actor is seen by the next collected action (no weight copy).
    Seed ``env`` before calling this (the collector resets it when built).
    """
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=-1,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
        device=device,
    )


def mc_failure_reward(info: DatasetInfo, replay_buffer=None) -> float | None:
    """The sparse-reward failure value of the dataset's ``mc_return`` (None when dense).

    The data layer uses the modified minimum raw reward of the dataset (-5 on AntMaze);
    read from ``info.mc_failure_reward`` when the data layer records it, else the minimum
    reward of the (offline, modified) buffer, which is the same number.
    """
    if not info.sparse_reward:
        return None
    value = getattr(info, "mc_failure_reward", None)
    if value is not None:
        return float(value)
    if replay_buffer is None:
        raise ValueError("a sparse-reward dataset needs the replay buffer (or info.mc_failure_reward)")
    storage = replay_buffer.storage
    rewards = storage.get(torch.arange(info.num_transitions)).get(keys.REWARD)
    return float(rewards.min())


def goal_reward_threshold(info: DatasetInfo) -> float | None:
    """CORL's ``is_goal_reached`` fallback for sparse-reward (goal) tasks without a success
    info key: a raw reward > 0 reached the goal, i.e. a stored reward > modification(0)."""
    return float(info.reward_modification(0.0)) if info.sparse_reward else None

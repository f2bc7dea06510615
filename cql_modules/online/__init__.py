"""Offline-to-online pieces: config, the online environment and collector, episode assembly
with Monte-Carlo returns, the offline/online replay, and online bookkeeping (regret).
:class:`~cql_modules.online.phase.OnlinePhase` strings them into the run engine's loop::

    env = make_online_env(info, seed=seed)               # dataset normalization + reward modification
    collector = make_collector(env, actor, frames_per_batch=1)   # stochastic policy, same actor object
    replay = OnlineReplay(rb, mode="add", online_capacity=n)     # CORL: one buffer; "mix": Cal-QL's ratio
    writer = EpisodeWriter(replay.extend, gamma=info.gamma, failure_reward=mc_failure_reward(info, rb),
                           goal_reward=goal_reward_threshold(info))
    progress = OnlineProgress()
    for batch in collector:                              # [frames_per_batch] transitions
        episodes = writer.add(batch)                     # finished episodes -> mc_return -> replay
        progress.add_episodes(episodes)                  # train/episode_return, train/regret, ...
        for _ in range(frames_per_batch * utd_ratio):
            update(replay.sample())
"""
from cql_modules.online.config import FinetuneConfig, OnlineConfig, register_finetune_configs, validate_finetune_config
from cql_modules.online.env import (
    RAW_RETURN_KEY,
    goal_reward_threshold,
    make_collector,
    make_online_env,
    mc_failure_reward,
)
from cql_modules.online.episodes import EpisodeRecord, EpisodeWriter
from cql_modules.online.progress import OnlineProgress
from cql_modules.online.replay import OnlineReplay

__all__ = [
    "RAW_RETURN_KEY",
    "OnlineConfig",
    "FinetuneConfig",
    "register_finetune_configs",
    "validate_finetune_config",
    "make_online_env",
    "make_collector",
    "mc_failure_reward",
    "goal_reward_threshold",
    "EpisodeRecord",
    "EpisodeWriter",
    "OnlineReplay",
    "OnlineProgress",
]

"""Tiny goal-reaching Minari datasets recorded in real gymnasium-robotics envs (seconds).

* AntMaze (``AntMaze_UMaze-v5``, 27-dim ant state without contact forces, as Minari's
  ``D4RL/antmaze``): random actions; in every other episode the goal is moved next to the
  ant after the reset, so that episode succeeds (sparse reward 1, terminated) at its first step.
* Adroit pen (``AdroitHandPen-v1``): a fixed action plus Gaussian noise.

Both store the collecting env's full ``EnvSpec`` (kwargs and a short time limit) as the
dataset's env and evaluation env, and the raw gymnasium observations (a ``Dict`` for AntMaze).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from data_fixtures import write_minari

ANT_STEPS = 30  # time limit of the tiny AntMaze env (evaluation episodes too)
PEN_STEPS = 20
PEN_REFS = (96.262799, 3258.3708)  # D4RL's pen references


def _register():
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def _stack(observations: list) -> np.ndarray | dict:
    if isinstance(observations[0], dict):
        return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    return np.stack(observations)


def record_episode(env: gym.Env, act, seed: int, after_reset=None) -> dict:
    """One episode as a Minari episode dict (``observations`` has the final one too)."""
    obs, _ = env.reset(seed=seed)
    if after_reset is not None:
        obs = after_reset(env, obs)
    observations, actions, rewards, terms, truncs = [obs], [], [], [], []
    done = False
    while not done:
        action = act(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        done = terminated or truncated
    return {
        "observations": _stack(observations),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminations": np.asarray(terms),
        "truncations": np.asarray(truncs),
    }


def goal_next_to_ant(env: gym.Env, obs: dict) -> dict:
    """Move the goal 0.2 from the ant: the first step reaches it (distance <= 0.45)."""
    maze_env = env.unwrapped
    maze_env.goal = obs["achieved_goal"] + np.array([0.2, 0.0])
    maze_env.update_target_site_pos()
    return {**obs, "desired_goal": maze_env.goal.copy()}


def build_tiny_antmaze(dataset_id: str, episodes: int = 6, seed: int = 0) -> list[dict]:
    _register()
    env = gym.make("AntMaze_UMaze-v5", continuing_task=False, include_cfrc_ext_in_observation=False,
                   max_episode_steps=ANT_STEPS)
    rng = np.random.default_rng(seed)
    eps = [
        record_episode(env, lambda _: rng.uniform(-1, 1, 8).astype(np.float32), seed + i,
                       goal_next_to_ant if i % 2 else None)
        for i in range(episodes)
    ]
    write_minari(dataset_id, eps, env=env.spec, eval_env=env.spec, ref=None)
    return eps


def build_tiny_pen(dataset_id: str, episodes: int = 4, seed: int = 0) -> list[dict]:
    _register()
    env = gym.make("AdroitHandPen-v1", max_episode_steps=PEN_STEPS)
    rng = np.random.default_rng(seed)
    base = rng.uniform(-0.5, 0.5, 24)
    eps = [
        record_episode(env, lambda _: np.clip(base + 0.3 * rng.normal(size=24), -1, 1).astype(np.float32), seed + i)
        for i in range(episodes)
    ]
    write_minari(dataset_id, eps, env=env.spec, eval_env=env.spec, ref=PEN_REFS)
    return eps

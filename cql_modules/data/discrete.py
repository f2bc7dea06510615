"""The embedded discrete-action datasets, built locally (``cql-modules/cartpole/*``).

Built by :func:`build_cartpole_dataset` on first use (``load_dataset(CARTPOLE_DATASET_ID)``),
with no network, into minari's root, through the same collector and Minari writer as the
Pendulum dataset (:mod:`.collect`), in gymnasium ``CartPole-v1`` (4-d observation,
``Discrete(2)`` actions, +1 per step, terminated when the pole falls, truncated at 500 steps).
``ref_max_score`` is the scripted controller :func:`~cql_modules.data.behaviour.cartpole_balance`
(return 500), ``ref_min_score`` the uniform random policy (about 20); both are measured at build
time over 50 episodes and stored in the dataset metadata. Seed 0;
``build_cartpole_dataset(dataset_id, overwrite=True)`` rebuilds one and returns the numbers below:

* ``cql-modules/cartpole/mixed-v0`` (the default, :func:`cartpole_behaviour`): 20 % uniform random
  episodes, the rest the scripted controller with 40 %, 55 % and 70 % epsilon-random actions;
  200 episodes, 23.2k transitions, mean return 116.0 (random 20.4), behaviour normalized score
  19.9; about 20 s to build on the shared 2-core CPU;
* ``cql-modules/cartpole/expert-v0``: 20 episodes of the scripted controller alone (10k
  transitions, score 100). The data never show the other action, the case where a plain
  (double) DQN's over-estimation of unseen actions diverges and CQL does not
  (docs/discrete_cql.md, section 5).

Actions are stored as integers (Minari's ``Discrete`` space); :func:`~cql_modules.data.load_dataset`
puts them in the replay buffer as ``int64`` of shape ``[N]`` (TorchRL's ``Categorical``
convention), which :class:`~cql_modules.objectives.discrete.DiscreteCQLLoss` reads as
categorical actions (``action_space="categorical"``).
"""
from __future__ import annotations

import collections
from functools import partial

import numpy as np

from .collect import BehaviourSpec, build_minari_dataset, register_local_builder

CARTPOLE_DATASET_ID = "cql-modules/cartpole/mixed-v0"
CARTPOLE_EXPERT_DATASET_ID = "cql-modules/cartpole/expert-v0"
CARTPOLE_ENV_ID = "CartPole-v1"


def cartpole_behaviour(episodes: int = 200) -> list[BehaviourSpec]:
    """The mixture of :data:`CARTPOLE_DATASET_ID`: 20 % random episodes, the rest scripted
    with epsilon 0.4 / 0.55 / 0.7 in equal parts."""
    n_random = round(0.2 * episodes)
    n_each = (episodes - n_random) // 3
    return [
        BehaviourSpec("random", n_random),
        BehaviourSpec("scripted", n_each, epsilon=0.4),
        BehaviourSpec("scripted", n_each, epsilon=0.55),
        BehaviourSpec("scripted", episodes - n_random - 2 * n_each, epsilon=0.7),
    ]


#: id -> (behaviour mixture, default number of episodes, description)
CARTPOLE_DATASETS = {
    CARTPOLE_DATASET_ID: (cartpole_behaviour, 200, "mixture of random and epsilon-random scripted episodes"),
    CARTPOLE_EXPERT_DATASET_ID: (lambda n: [BehaviourSpec("scripted", n)], 20, "scripted balancing episodes only"),
}


def build_cartpole_dataset(
    dataset_id: str = CARTPOLE_DATASET_ID,
    *,
    episodes: int | None = None,
    reference_episodes: int = 50,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Build one of :data:`CARTPOLE_DATASETS` (module docstring); smaller with ``episodes``."""
    behaviour, default_episodes, description = CARTPOLE_DATASETS[dataset_id]
    return build_minari_dataset(
        dataset_id,
        CARTPOLE_ENV_ID,
        behaviour(episodes or default_episodes),
        reference_policy="scripted",
        reference_episodes=reference_episodes,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        description=f"CartPole-v1, {description} (cql_modules.data.discrete.build_cartpole_dataset).",
    )


for _id in CARTPOLE_DATASETS:
    register_local_builder(_id, partial(build_cartpole_dataset, _id), "seconds")


def minigrid_shortest_path(env) -> list[int] | None:
    """The shortest action sequence (0 turn left, 1 turn right, 2 forward) from the agent's
    pose to the goal of a MiniGrid env, by breadth-first search over (x, y, direction) with
    full observability (what the D4RL/Minari expert is given); None if the goal is unreachable."""
    u = env.unwrapped
    moves = [(1, 0), (0, 1), (-1, 0), (0, -1)]  # MiniGrid's DIR_TO_VEC
    start = (*u.agent_pos, u.agent_dir)
    previous, queue = {start: None}, collections.deque([start])
    while queue:
        x, y, d = pose = queue.popleft()
        cell = u.grid.get(x, y)
        if cell is not None and cell.type == "goal":
            actions = []
            while previous[pose] is not None:
                pose, action = previous[pose]
                actions.append(action)
            return actions[::-1]
        ahead = u.grid.get(x + moves[d][0], y + moves[d][1])
        steps = [((x, y, (d - 1) % 4), 0), ((x, y, (d + 1) % 4), 1)]
        if ahead is None or ahead.can_overlap():
            steps.append(((x + moves[d][0], y + moves[d][1], d), 2))
        for nxt, action in steps:
            if nxt not in previous:
                previous[nxt] = (pose, action)
                queue.append(nxt)
    return None


def measure_minigrid_references(env_id: str = "MiniGrid-FourRooms-v0", episodes: int = 1000,
                                seed: int = 0) -> dict[str, float]:
    """Mean returns of the uniform random policy (over all 7 actions) and of the
    shortest-path expert (:func:`minigrid_shortest_path`) over episodes reset with seeds
    ``seed .. seed + episodes - 1``: the reference scores of the ``D4RL/minigrid/*`` datasets,
    whose Minari metadata has none (``minari_source.MEASURED_REFERENCE_SCORES``). Needs the
    ``minigrid`` package."""
    import gymnasium as gym
    import minigrid  # noqa: F401 (registers the MiniGrid envs)

    env = gym.make(env_id)
    returns = {}
    for name in ("random", "expert"):
        rng, total = np.random.default_rng(seed), 0.0
        for episode in range(episodes):
            env.reset(seed=seed + episode)
            plan = minigrid_shortest_path(env) if name == "expert" else None
            done, t = False, 0
            while not done:
                action = plan[t] if plan is not None and t < len(plan) else int(rng.integers(env.action_space.n))
                _, reward, terminated, truncated, _ = env.step(action)
                total, done, t = total + reward, terminated or truncated, t + 1
        returns[name] = total / episodes
    return returns

"""The embedded discrete-action dataset, ``cql-modules/cartpole/mixed-v0``, built locally.

Built by :func:`build_cartpole_dataset` on first use (``load_dataset(CARTPOLE_DATASET_ID)``),
with no network, into minari's root, through the same collector and Minari writer as the
Pendulum dataset (:mod:`.collect`):

* environment: gymnasium ``CartPole-v1`` (4-d observation, ``Discrete(2)`` actions, +1 per
  step, terminated when the pole falls, truncated at 500 steps);
* ``ref_max_score``: the scripted controller
  :func:`~cql_modules.data.behaviour.cartpole_balance` (return 500);
  ``ref_min_score``: the uniform random policy (about 22); both measured at build time over
  50 episodes and stored in the dataset metadata;
* behaviour (a medium-replay-like mixture, see :func:`cartpole_behaviour`): uniform random
  episodes and the scripted controller with 40 %, 55 % and 70 % epsilon-random actions:
  200 episodes, 23.2k transitions, mean return 116.0 (random 20.4, scripted 500), i.e. a
  behaviour normalized score of 19.9 (seed 0; ``python -m cql_modules.data.discrete``
  rebuilds it and prints these numbers);
* build time about 20 s on the shared 2-core CPU.

Actions are stored as integers (Minari's ``Discrete`` space); :func:`~cql_modules.data.load_dataset`
puts them in the replay buffer as ``int64`` of shape ``[N]`` (TorchRL's ``Categorical``
convention), which :class:`~cql_modules.objectives.discrete.DiscreteCQLLoss` reads as
categorical actions (``action_space="categorical"``).
"""
from __future__ import annotations

import collections
import sys

import numpy as np

from .collect import LOCAL_BUILDERS, BehaviourSpec, build_minari_dataset
from .minari_source import is_local_minari, minari_root

CARTPOLE_DATASET_ID = "cql-modules/cartpole/mixed-v0"
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


def build_cartpole_dataset(
    dataset_id: str = CARTPOLE_DATASET_ID,
    *,
    episodes: int = 200,
    reference_episodes: int = 50,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Build the CartPole dataset (module docstring); smaller with ``episodes``."""
    return build_minari_dataset(
        dataset_id,
        CARTPOLE_ENV_ID,
        cartpole_behaviour(episodes),
        reference_policy="scripted",
        reference_episodes=reference_episodes,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        description="CartPole-v1, mixture of random and epsilon-random scripted balancing episodes "
        "(cql_modules.data.discrete.build_cartpole_dataset).",
    )


def ensure_cartpole_dataset(progress: bool = True) -> str:
    """Build :data:`CARTPOLE_DATASET_ID` if it is not in minari's root yet; return its id."""
    if not is_local_minari(CARTPOLE_DATASET_ID):
        if progress:
            print(f"building {CARTPOLE_DATASET_ID} under {minari_root()} (first use, seconds)", file=sys.stderr)
        build_cartpole_dataset(progress=progress)
    return CARTPOLE_DATASET_ID


LOCAL_BUILDERS[CARTPOLE_DATASET_ID] = ensure_cartpole_dataset


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

if __name__ == "__main__":  # rebuild and print the measured numbers
    print(build_cartpole_dataset(overwrite=True, progress=False))

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

import sys

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

if __name__ == "__main__":  # rebuild and print the measured numbers
    print(build_cartpole_dataset(overwrite=True, progress=False))

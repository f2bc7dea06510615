"""Build Minari datasets locally by running behaviour policies through a TorchRL ``Collector``.

The default dataset, ``cql-modules/pendulum/mixed-v0`` (:data:`DEFAULT_DATASET_ID`), is built
by this code on first use (``load_dataset(DEFAULT_DATASET_ID)`` or
``ensure_default_dataset()``), with no network, and cached under minari's root
(``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``):

* environment: gymnasium ``Pendulum-v1`` (3-d observation, 1-d torque in [-2, 2], 200-step
  episodes that always end by time-out);
* reference "expert" (``ref_max_score``): the scripted energy-pumping swing-up + PD
  stabilizer :func:`~cql_modules.data.behaviour.pendulum_swing_up`, mean return -147.6;
  ``ref_min_score``: the uniform random policy, mean return -1205.3; both measured over 50
  episodes at build time and stored in the dataset metadata;
* behaviour (400 episodes, 80k transitions, a medium-replay-like mixture): 120 uniform
  random episodes, 140 expert episodes with Gaussian action noise of std 1.0 x the action
  half-range, 140 expert episodes with noise 0.3 and 50% epsilon-random actions. Mean
  return -780.3, normalized score 40.2: well below the expert, so offline RL has something
  to gain;
* build time about 7 s on a 2-core CPU (seed 0; the numbers above are from that build).

Collection runs 16 environments in a gymnasium ``SyncVectorEnv`` (same-step autoreset)
wrapped by TorchRL's ``GymWrapper``; only complete episodes are kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from . import keys
from .behaviour import ActionFn, BehaviourPolicy, DiscreteBehaviourPolicy, resolve_policy
from .envs import register_robotics_envs
from .errors import DatasetError
from .minari_source import is_local_minari, minari_root

DEFAULT_DATASET_ID = "cql-modules/pendulum/mixed-v0"
DEFAULT_ENV_ID = "Pendulum-v1"


@dataclass
class BehaviourSpec:
    """One behaviour policy of a dataset's mixture and how many episodes it contributes.

    ``policy``: ``"random"`` (uniform), ``"scripted"`` (the env's scripted controller), a path
    to a saved TorchRL policy, or a callable ``observation -> action``. ``noise_std``: std of
    Gaussian action noise as a fraction of the action half-range. ``epsilon``: probability
    of a uniform random action at each step.
    """

    policy: str | ActionFn = "random"
    episodes: int = 10
    noise_std: float = 0.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise DatasetError(f"episodes must be a positive integer, got {self.episodes!r}")
        if not self.noise_std >= 0:
            raise DatasetError(f"noise_std must be >= 0, got {self.noise_std!r}")
        if not 0 <= self.epsilon <= 1:
            raise DatasetError(f"epsilon must be in [0, 1], got {self.epsilon!r}")


def lookup_env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """gymnasium's spec of ``env_id``; gymnasium-robotics' envs (mazes, Adroit) are
    registered on demand. Unknown ids raise a one-line :class:`DatasetError`."""
    try:
        return gym.spec(env_id)
    except gym.error.Error as err:
        try:
            register_robotics_envs()
            return gym.spec(env_id)
        except DatasetError as missing:  # gymnasium-robotics is not installed
            hint = f"; {missing}"
        except gym.error.Error:
            hint = ""
        raise DatasetError(f"unknown gymnasium environment '{env_id}': {err}{hint}") from None


def default_behaviour(episodes: int = 400) -> list[BehaviourSpec]:
    """The mixture of the default dataset (see the module docstring)."""
    n_random = round(0.3 * episodes)
    n_noisy = round(0.35 * episodes)
    parts = [
        ("random", n_random, {}),
        ("scripted", n_noisy, {"noise_std": 1.0}),
        ("scripted", episodes - n_random - n_noisy, {"noise_std": 0.3, "epsilon": 0.5}),
    ]
    return [BehaviourSpec(policy, n, **kw) for policy, n, kw in parts if n > 0]  # tiny builds drop parts


def make_vector_env(env_id: str, num_envs: int):
    """``num_envs`` copies of a gymnasium env stepped in this process, as a TorchRL env."""
    from torchrl.envs import GymWrapper

    venv = gym.vector.SyncVectorEnv(
        [partial(gym.make, env_id)] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    torchrl_logger = logging.getLogger("torchrl")
    level = torchrl_logger.level
    torchrl_logger.setLevel(logging.WARNING)  # silence the info-dict spec probing messages
    try:
        # Discrete actions as integers (TorchRL's Categorical), as Minari stores them
        return GymWrapper(venv, categorical_action_encoding=True), venv.single_action_space
    finally:
        torchrl_logger.setLevel(level)


def collect_episodes(
    env_id: str,
    behaviour: BehaviourSpec,
    *,
    num_envs: int = 16,
    seed: int = 0,
    progress: bool = True,
    trust_policy_file: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Run one behaviour policy through a TorchRL ``Collector`` until ``behaviour.episodes``
    episodes are complete; return the first ones to finish as Minari-style dicts
    (``observations`` has one more row than ``actions``: the final observation)."""
    from torchrl.collectors import Collector
    from tqdm.auto import tqdm

    if num_envs < 1:
        raise DatasetError(f"num_envs must be >= 1, got {num_envs}")
    steps = min(lookup_env_spec(env_id).max_episode_steps or 1000, 1000)
    base = resolve_policy(behaviour.policy, env_id, trust_policy_file=trust_policy_file)  # before any env starts
    n_envs = min(num_envs, behaviour.episodes)
    env, action_space = make_vector_env(env_id, n_envs)
    policy_cls = DiscreteBehaviourPolicy if isinstance(action_space, gym.spaces.Discrete) else BehaviourPolicy
    policy = policy_cls(action_space, base, behaviour.noise_std, behaviour.epsilon, seed=seed)
    env.set_seed(seed)  # before the collector's first reset, so its first observations are the seeded ones
    collector = Collector(
        env, policy, frames_per_batch=n_envs * steps, total_frames=-1, auto_register_policy_transforms=False
    )
    batches, done_count = [], 0
    name = behaviour.policy if isinstance(behaviour.policy, str) else "policy"
    try:
        with tqdm(total=behaviour.episodes, desc=f"collect {env_id} {name}", disable=not progress) as bar:
            for batch in collector:
                batches.append(batch.exclude("collector"))
                new = int(batch[keys.DONE].sum())
                bar.update(min(new, behaviour.episodes - done_count))
                done_count += new
                if done_count >= behaviour.episodes:
                    break
    finally:
        collector.shutdown()
    data = torch.cat(batches, dim=1)  # [n_envs, time]
    return _split_episodes(data)[: behaviour.episodes]


def _split_episodes(data) -> list[dict[str, np.ndarray]]:
    """Cut each environment's row at its episode ends, ordered by end time; drop partial tails."""
    done = data[keys.DONE].squeeze(-1).numpy()
    cols = {k: data[k].numpy() for k in (keys.OBSERVATION, keys.ACTION, keys.NEXT_OBSERVATION, keys.REWARD,
                                          keys.TERMINATED, keys.TRUNCATED)}  # fmt: skip
    found = []
    for env_idx in range(done.shape[0]):
        start = 0
        for end in np.flatnonzero(done[env_idx]):
            row = {k: v[env_idx, start : end + 1] for k, v in cols.items()}
            found.append((end, env_idx, {
                "observations": np.concatenate([row[keys.OBSERVATION], row[keys.NEXT_OBSERVATION][-1:]]),
                "actions": row[keys.ACTION],
                "rewards": row[keys.REWARD].reshape(-1),
                "terminations": row[keys.TERMINATED].reshape(-1),
                "truncations": row[keys.TRUNCATED].reshape(-1),
            }))  # fmt: skip
            start = end + 1
    return [episode for _, _, episode in sorted(found, key=lambda x: x[:2])]


def mean_return(episodes: Sequence[dict[str, np.ndarray]]) -> float:
    return float(np.mean([ep["rewards"].sum(dtype=np.float64) for ep in episodes]))


@contextlib.contextmanager
def _minari_root_at(path: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari_dataset(
    dataset_id: str,
    episodes: Sequence[dict],
    *,
    env,
    eval_env,
    ref_min_score: float,
    ref_max_score: float,
    num_episodes_average_score: int,
    algorithm_name: str,
    description: str,
    code_permalink: str = "cql_modules/data/collect.py",
    overwrite: bool = False,
) -> None:
    """Write Minari-style episode dicts as Minari dataset ``dataset_id`` (``env`` /
    ``eval_env``: an id or a full ``EnvSpec``). Written under a temporary root and moved into
    minari's root in one rename, so an interrupted or concurrent build never leaves a
    half-written dataset."""
    import minari
    from minari.data_collector import EpisodeBuffer

    root = minari_root()
    target = root / dataset_id
    buffers = [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))  # hidden: minari ignores it
    try:
        with _minari_root_at(tmp):
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=env,
                eval_env=eval_env,
                algorithm_name=algorithm_name,
                author="cql-modules",
                author_email="n/a",
                code_permalink=code_permalink,
                ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
                num_episodes_average_score=num_episodes_average_score,
                description=description,
            )
        if overwrite and target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in Path(dataset_id).parents:  # minari's namespace metadata files
            meta = tmp / parent / "namespace_metadata.json"
            if str(parent) != "." and meta.exists() and not (root / meta.relative_to(tmp)).exists():
                shutil.copy(meta, root / meta.relative_to(tmp))
        try:
            os.rename(tmp / dataset_id, target)
        except OSError:
            if not is_local_minari(dataset_id):  # else a concurrent build won: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_minari_dataset(
    dataset_id: str,
    env_id: str,
    behaviour: Sequence[BehaviourSpec],
    *,
    reference_policy: str | ActionFn = "scripted",
    reference_episodes: int = 50,
    num_envs: int = 16,
    seed: int = 0,
    description: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    trust_policy_file: bool = False,
) -> dict[str, float]:
    """Collect the behaviour mixture in ``env_id`` and write it as Minari dataset ``dataset_id``.

    ``ref_min_score`` (uniform random policy) and ``ref_max_score`` (``reference_policy``) are
    measured over ``reference_episodes`` episodes each and stored in the dataset metadata.
    The dataset is written under a temporary root and moved into minari's root in one
    rename, so an interrupted or concurrent build never leaves a half-written dataset.
    Policy files load without running code unless ``trust_policy_file`` (see
    :func:`~cql_modules.data.behaviour.load_behaviour_policy`).
    Returns the measured numbers (returns, normalized behaviour score, seconds).
    """
    # Every input is checked before the first episode is collected.
    lookup_env_spec(env_id)
    if not behaviour:
        raise DatasetError("the behaviour mixture is empty: give at least one policy and episode count")
    if reference_episodes < 1:
        raise DatasetError(f"reference_episodes must be >= 1, got {reference_episodes}")
    for spec in behaviour:
        resolve_policy(spec.policy, env_id, trust_policy_file=trust_policy_file)
    resolve_policy(reference_policy, env_id, trust_policy_file=trust_policy_file)
    root = minari_root()
    target = root / dataset_id
    if target.exists() and not overwrite:
        raise DatasetError(f"Minari dataset '{dataset_id}' already exists at {target}; pass overwrite=True")
    start = time.perf_counter()
    episodes = []
    for i, spec in enumerate(behaviour):
        episodes += collect_episodes(env_id, spec, num_envs=num_envs, seed=seed + 1000 * i, progress=progress,
                                     trust_policy_file=trust_policy_file)
    ref_seed = seed + 1000 * len(behaviour)
    ref_min = mean_return(collect_episodes(
        env_id, BehaviourSpec("random", reference_episodes), num_envs=num_envs, seed=ref_seed, progress=progress
    ))  # fmt: skip
    ref_max = mean_return(collect_episodes(
        env_id, BehaviourSpec(reference_policy, reference_episodes), num_envs=num_envs, seed=ref_seed + 1,
        progress=progress, trust_policy_file=trust_policy_file,
    ))  # fmt: skip
    write_minari_dataset(
        dataset_id,
        episodes,
        env=env_id,
        eval_env=env_id,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        num_episodes_average_score=reference_episodes,
        algorithm_name="cql-modules behaviour mixture: "
        + ", ".join(
            f"{s.episodes}x{s.policy if isinstance(s.policy, str) else 'policy'}"
            f"(noise={s.noise_std},eps={s.epsilon})"
            for s in behaviour
        ),  # fmt: skip
        description=description or f"Behaviour mixture collected in {env_id} by cql_modules.data.collect",
        overwrite=overwrite,
    )
    behaviour_return = mean_return(episodes)
    return {
        "episodes": len(episodes),
        "transitions": sum(len(ep["rewards"]) for ep in episodes),
        "behaviour_return": behaviour_return,
        "random_return": ref_min,
        "reference_return": ref_max,
        "behaviour_score": 100.0 * (behaviour_return - ref_min) / (ref_max - ref_min),
        "seconds": time.perf_counter() - start,
    }


def build_default_dataset(
    dataset_id: str = DEFAULT_DATASET_ID,
    *,
    episodes: int = 400,
    reference_episodes: int = 50,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Build the default Pendulum dataset (see the module docstring); smaller with ``episodes``."""
    return build_minari_dataset(
        dataset_id,
        DEFAULT_ENV_ID,
        default_behaviour(episodes),
        reference_policy="scripted",
        reference_episodes=reference_episodes,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        description="Pendulum-v1, medium-replay-like mixture of random, noisy and epsilon-random "
        "scripted swing-up episodes (cql_modules.data.collect.build_default_dataset).",
    )


# Ids that load_dataset builds locally when missing instead of asking for a download.
LOCAL_BUILDERS: dict[str, Callable[..., str]] = {}


def register_local_builder(dataset_id: str, build: Callable[..., object], duration: str) -> Callable[..., str]:
    """Make ``dataset_id`` one that :func:`~cql_modules.data.load_dataset` builds on first use
    with ``build(progress=...)`` (``duration`` is said to the user); returns the
    ``ensure(progress=True) -> dataset_id`` function that builds it only if it is missing."""

    def ensure(progress: bool = True) -> str:
        if not is_local_minari(dataset_id):
            if progress:
                print(f"building {dataset_id} under {minari_root()} (first use, {duration})", file=sys.stderr)
            build(progress=progress)
        return dataset_id

    ensure.__doc__ = f"Build {dataset_id} if it is not in minari's root yet; return its id."
    LOCAL_BUILDERS[dataset_id] = ensure
    return ensure


ensure_default_dataset = register_local_builder(DEFAULT_DATASET_ID, build_default_dataset, "about 10 s")

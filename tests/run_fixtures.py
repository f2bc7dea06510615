"""Session fixtures for the results tests (``pytest_plugins = ("run_fixtures",)``): a tiny
Pendulum dataset built locally, one tiny offline run and one tiny fine-tuning run, each built
once per session and only read by the tests."""
from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import DATASET, ROOT, load_recipe, run_recipe, tiny_overrides  # noqa: F401  (also imported from here)


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory):
    """A Minari root with a tiny Pendulum dataset (8 episodes), exported as
    ``MINARI_DATASETS_PATH`` for the whole session (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        mp.setenv("WANDB_MODE", "offline")
        from cql_modules.data import BehaviourSpec, build_minari_dataset

        build_minari_dataset(DATASET, "Pendulum-v1",
                             [BehaviourSpec("random", 4), BehaviourSpec("scripted", 4, noise_std=0.3)],
                             reference_episodes=2, num_envs=4, progress=False)
        yield root


@pytest.fixture(scope="session")
def tiny_run(minari_root, tmp_path_factory) -> Path:
    """One real offline run (8 updates) shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_recipe(*tiny_overrides(), f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


@pytest.fixture(scope="session")
def tiny_finetune_run(minari_root, tmp_path_factory) -> Path:
    """One real offline-to-online run: 4 offline updates, then 8 online (Pendulum, 5-step episodes)."""
    run_dir = tmp_path_factory.mktemp("runs") / "finetune"
    run_recipe(*tiny_overrides(), "offline_updates=4", "online_updates=8", "online.max_episode_steps=5",
               f"hydra.run.dir={run_dir}", cwd=run_dir.parent, recipe="finetune_cql.py")
    return run_dir

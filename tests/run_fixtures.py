"""Tiny real runs for the results tests (export, evaluate, report, sweeps): a tiny Pendulum
dataset built locally and ``recipes/offline_cql.py`` run through its real command line."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASET = "test/pendulum/results-v0"
# networks of 8 units, 2 evaluations of 1 short episode: a run takes a few seconds
TINY_RUN = {
    "dataset.name": DATASET, "network.hidden_dim": 8, "network.actor_n_hidden_layers": 1,
    "network.q_n_hidden_layers": 1, "loss.num_actions": 2, "batch_size": 16, "num_updates": 8,
    "logger.every": 4, "eval.every": 4, "eval.n_episodes": 1, "eval.max_episode_steps": 20,
    "checkpoint.every": 4, "logger.backends": "[]", "logger.progress": "false", "num_threads": 1,
}


def tiny_overrides(**changes) -> list[str]:
    return [f"{k}={v}" for k, v in {**TINY_RUN, **changes}.items()]


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


def load_recipe(name: str = "offline_cql"):
    """``recipes/<name>.py`` imported as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(*args: str, cwd: Path, recipe: str = "offline_cql.py", timeout: int = 300) -> subprocess.CompletedProcess:
    """``python recipes/<recipe> <args>`` as a user types it; fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


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

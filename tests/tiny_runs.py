"""Tiny real runs for the results tests (export, evaluate, report, sweeps): the overrides of a
run of a few seconds and the recipes' real command line. Fixtures: ``run_fixtures``."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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


def run_recipe(*args: str, cwd: Path, recipe: str = "offline_cql.py", timeout: int = 300) -> subprocess.CompletedProcess:
    """``python recipes/<recipe> <args>`` as a user types it; fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def load_recipe(name: str = "offline_cql"):
    """``recipes/<name>.py`` imported as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a recipe's dataclasses look their module up
    spec.loader.exec_module(module)
    return module

"""Session fixtures for the results tests (``pytest_plugins = ("run_fixtures",)``): a tiny
Pendulum dataset built locally, one tiny offline run and one tiny fine-tuning run, each built
once per session and only read by the tests."""
from __future__ import annotations

import sys
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
def recipes():
    """``recipes[name]``: ``recipes/<name>.py`` imported once per session, on first use."""

    class Recipes(dict):
        def __missing__(self, name: str):
            self[name] = load_recipe(name)
            return self[name]

    return Recipes()


@pytest.fixture(scope="session")
def offline_recipe(recipes):
    return recipes["offline_cql"]


@pytest.fixture
def cli(recipes, minari_root, monkeypatch, capsys):
    """``cli(*args, recipe="offline_cql")``: run ``python recipes/<recipe>.py *args`` in this
    process (the real command line: Hydra + the one-line error handling); returns
    ``(exit code, stderr lines)``."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("HYDRA_MAIN_MODULE", "__main__")  # Hydra then finds configs/ beside the recipe file

    def run(*args: str, recipe: str = "offline_cql") -> tuple[int, list[str]]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [f"{recipe}.py", *args])
        try:
            recipes[recipe].main()
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
        return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]

    return run


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

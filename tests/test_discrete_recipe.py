"""The discrete data path (CartPole built locally, Discrete actions through load_dataset and
make_env) and recipes/discrete_cql.py end to end on a tiny dataset."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDict

from cql_modules.data import DatasetError, load_dataset, make_env
from cql_modules.data.behaviour import DiscreteBehaviourPolicy, cartpole_balance
from cql_modules.train.config import ConfigError
from cql_modules.train.state import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DATASET = "test/cartpole/tiny-v0"
TINY = [
    f"dataset.name={DATASET}", "network.hidden_dim=8", "network.n_hidden_layers=1", "batch_size=16",
    "num_updates=4", "logger.every=2", "logger.backends=[]", "logger.progress=false", "eval.every=4",
    "eval.n_episodes=1", "eval.max_episode_steps=10", "checkpoint.every=2", "num_threads=1",
]


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A Minari root with a tiny CartPole dataset: 4 random + 4 purely scripted episodes."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        from cql_modules.data import BehaviourSpec, build_minari_dataset

        stats = build_minari_dataset(DATASET, "CartPole-v1", [BehaviourSpec("random", 4), BehaviourSpec("scripted", 4)],
                                     reference_episodes=2, num_envs=4, progress=False)
        yield root, stats


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("discrete_cql_recipe", ROOT / "recipes" / "discrete_cql.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("discrete_cql", overrides=[*TINY, *overrides])


# ---------------------------------------------------------------- data
def test_discrete_dataset_loads_integer_actions(minari_root):
    _, stats = minari_root
    rb, info = load_dataset(DATASET, normalize_states=False)
    data = rb[:]
    assert isinstance(info.action_space, gym.spaces.Discrete) and info.to_dict()["action_space"] == {"n": 2}
    assert data["action"].dtype == torch.int64 and data["action"].shape == (info.num_transitions,)
    assert info.ref_max_score == stats["reference_return"] == 500.0  # the scripted controller balances
    # episodes 4..7 are the scripted controller's (epsilon 0): its action at every stored state
    done = data["next", "done"].reshape(-1).long()
    episode = torch.cumsum(done, 0) - done
    scripted = data[episode >= 4]
    assert (cartpole_balance(scripted["observation"]) == scripted["action"]).all()


def test_eval_env_has_categorical_actions(minari_root):
    from torchrl.modules import MLP, QValueActor

    _, info = load_dataset(DATASET)
    env = make_env(info, seed=0)
    actor = QValueActor(MLP(in_features=4, out_features=2, num_cells=[8]), in_keys=["observation"],
                        spec=env.action_spec)
    td = env.rollout(5, actor)
    assert td["action"].dtype == torch.int64 and td["action"].shape == (5,)


def test_discrete_behaviour_policy():
    space = gym.spaces.Discrete(3)
    with pytest.raises(DatasetError, match="epsilon"):
        DiscreteBehaviourPolicy(space, noise_std=0.1)
    obs = torch.randn(1000, 4)
    always_two = DiscreteBehaviourPolicy(space, lambda o: torch.full(o.shape[:-1], 2), epsilon=0.3, seed=0)
    a = always_two(TensorDict({"observation": obs}, [1000]))["action"]
    # epsilon-random: 0.3 uniform (a third of which is 2 again)
    assert abs((a != 2).float().mean().item() - 0.2) < 0.04 and a.dtype == torch.int64


# ---------------------------------------------------------------- recipe
def test_recipe_runs_checkpoints_and_prints_the_score(minari_root, recipe, tmp_path, capsys):
    summary = recipe.train(config(), tmp_path / "run")
    assert summary["status"] == "completed" and summary["updates"] == 4
    assert summary["final_normalized_score"] is not None
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"final normalized_score: {summary['final_normalized_score']:.2f}"
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4


def test_recipe_resume_is_exact(minari_root, recipe, tmp_path):
    recipe.train(config(), tmp_path / "straight")
    recipe.train(config("num_updates=2"), tmp_path / "split")
    recipe.train(config("resume=true"), tmp_path / "split")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["loss"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["loss"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_hard_updates_and_ensemble(minari_root, recipe, tmp_path):
    from torchrl.objectives import HardUpdate

    c = recipe.validate_config(config("optim.target_update=hard", "optim.target_update_period=3",
                                      "loss.num_qvalue_nets=2", "loss.lagrange=true"),
                               recipe.DiscreteConfig, learner_checks=recipe.check_discrete_learner)
    _, info = load_dataset(DATASET)
    _, loss, update = recipe.build_discrete_learner(c, info, "cpu")
    assert isinstance(update.target_updater, HardUpdate) and loss.num_qvalue_nets == 2
    assert [g["name"] for g in update.optimizer.param_groups] == ["critic", "alpha_prime"]
    assert recipe.train(config("optim.target_update=hard", "loss.num_qvalue_nets=2"), tmp_path / "r")["updates"] == 4


@pytest.mark.parametrize("override,field", [("optim.target_update=polyak", "optim.target_update"),
                                             ("loss.cql_alpha=-1", "loss.cql_alpha"),
                                             ("network.n_hidden_layers=0", "network.n_hidden_layers")])
def test_recipe_config_errors_name_the_field(minari_root, recipe, tmp_path, override, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        recipe.train(config(override), tmp_path / "bad")


def test_recipe_rejects_continuous_dataset(minari_root, recipe, tmp_path):
    from cql_modules.data import BehaviourSpec, build_minari_dataset

    build_minari_dataset("test/pendulum/for-discrete-v0", "Pendulum-v1", [BehaviourSpec("random", 1)],
                         reference_episodes=1, num_envs=1, progress=False)
    with pytest.raises(ConfigError, match="^dataset.name: .*Discrete"):
        recipe.train(config("dataset.name=test/pendulum/for-discrete-v0"), tmp_path / "bad")


def test_command_line_config_error_is_one_line(minari_root, tmp_path):
    """The real entry point (Hydra + the shared CLI shell): exit code 2 and one line."""
    root, _ = minari_root
    env = {**os.environ, "MINARI_DATASETS_PATH": str(root), "OMP_NUM_THREADS": "1"}
    bad = subprocess.run([sys.executable, str(ROOT / "recipes" / "discrete_cql.py"), *TINY, "optim.tau=2",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "optim.tau: must be in (0, 1]" in bad.stderr and "Traceback" not in bad.stderr


def test_every_discrete_preset_composes_and_validates(recipe):
    presets = sorted(str(p.relative_to(ROOT / "configs" / "discrete_dataset").with_suffix(""))
                     for p in (ROOT / "configs" / "discrete_dataset").rglob("*.yaml"))
    assert len(presets) >= 4
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for p in presets:
            c = recipe.validate_config(compose("discrete_cql", overrides=[f"discrete_dataset={p}"]),
                                       recipe.DiscreteConfig, check_dataset=False,
                                       learner_checks=recipe.check_discrete_learner)
            assert c.dataset.name == p, p

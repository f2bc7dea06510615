"""Building datasets through the TorchRL Collector (tiny sizes; the default build is parametrized)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule

from cql_modules.data import (
    DEFAULT_DATASET_ID,
    BehaviourSpec,
    DatasetError,
    build_default_dataset,
    collect,
    collect_episodes,
    keys,
    load_dataset,
)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "collect_dataset.py"


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def pendulum_dynamics_error(obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> float:
    """Largest deviation of next_obs from Pendulum-v1's dynamics applied to (obs, action)."""
    th, thdot = np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]
    new_thdot = np.clip(thdot + (15.0 * np.sin(th) + 3.0 * actions[:, 0]) * 0.05, -8, 8)
    new_th = th + new_thdot * 0.05
    return float(max(np.abs(np.cos(new_th) - next_obs[:, 0]).max(), np.abs(new_thdot - next_obs[:, 2]).max()))


def test_collected_episodes_follow_the_dynamics():
    episodes = collect_episodes("Pendulum-v1", BehaviourSpec("scripted", 5, noise_std=0.5), num_envs=2, progress=False)
    assert len(episodes) == 5  # 3 rounds of 2 envs, the partial ones dropped
    for ep in episodes:
        assert len(ep["observations"]) == len(ep["actions"]) + 1 == 201
        assert ep["truncations"][-1] and not ep["truncations"][:-1].any() and not ep["terminations"].any()
        assert pendulum_dynamics_error(ep["observations"][:-1], ep["actions"], ep["observations"][1:]) < 1e-5


def test_saved_torchrl_policy_as_behaviour(tmp_path):
    torch.manual_seed(0)
    module = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["observation"], out_keys=["action"])
    torch.save(module, tmp_path / "policy.pt")
    (ep,) = collect_episodes("Pendulum-v1", BehaviourSpec(str(tmp_path / "policy.pt"), 1), progress=False)
    with torch.no_grad():
        expected = module.module(torch.as_tensor(ep["observations"][:-1])).clamp(-2, 2)
    np.testing.assert_allclose(ep["actions"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_default_dataset_builds_on_first_load(minari_root, monkeypatch):
    tiny = lambda: build_default_dataset(episodes=6, reference_episodes=2, progress=False)  # noqa: E731
    monkeypatch.setitem(collect.LOCAL_BUILDERS, DEFAULT_DATASET_ID, tiny)
    buffer, info = load_dataset(DEFAULT_DATASET_ID, normalize_states=False)
    assert (minari_root / DEFAULT_DATASET_ID / "data").is_dir()
    assert info.num_transitions == 6 * 200 and info.env_id == "Pendulum-v1"
    assert info.ref_min_score < info.episodes.return_mean < info.ref_max_score
    data = buffer[: len(buffer)]
    assert int(data[keys.TRUNCATED].sum()) == 6 and not data[keys.TERMINATED].any()
    assert (
        pendulum_dynamics_error(
            data[keys.OBSERVATION].numpy(), data[keys.ACTION].numpy(), data[keys.NEXT_OBSERVATION].numpy()
        )
        < 1e-5
    )
    with pytest.raises(DatasetError, match="already exists"):
        build_default_dataset(episodes=2, reference_episodes=1, progress=False)


def test_collect_recipe_cli(minari_root):
    spec = importlib.util.spec_from_file_location("collect_dataset", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    stats = recipe.main([
        "--env", "Pendulum-v1", "--dataset-id", "test/pendulum/cli-v0", "--mix", "random:2",
        "--mix", "scripted:2:noise=0.5:eps=0.2", "--reference-episodes", "2", "--num-envs", "2",
    ])  # fmt: skip
    assert stats["episodes"] == 4 and stats["transitions"] == 800
    _, info = load_dataset("test/pendulum/cli-v0")
    assert info.ref_min_score == pytest.approx(stats["random_return"])
    assert info.behaviour_score == pytest.approx(stats["behaviour_score"])

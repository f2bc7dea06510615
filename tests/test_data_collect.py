"""Building datasets through the TorchRL Collector (tiny sizes; the default build is parametrized)."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cql_modules.data import (
    DEFAULT_DATASET_ID,
    BehaviourSpec,
    DatasetError,
    build_default_dataset,
    collect,
    collect_episodes,
    StateNormalizer,
    keys,
    load_behaviour_policy,
    load_dataset,
    save_policy_file,
)
from cql_modules.modules import bounded_action_spec, make_actor

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


def load_recipe():
    spec = importlib.util.spec_from_file_location("collect_dataset", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def test_saved_torchrl_policy_as_behaviour_needs_trust(tmp_path):
    torch.manual_seed(0)
    module = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["observation"], out_keys=["action"])
    torch.save(module, tmp_path / "policy.pt")
    with pytest.raises(DatasetError, match="trust-policy-file"):
        collect_episodes("Pendulum-v1", BehaviourSpec(str(tmp_path / "policy.pt"), 1), progress=False)
    (ep,) = collect_episodes("Pendulum-v1", BehaviourSpec(str(tmp_path / "policy.pt"), 1), progress=False,
                             trust_policy_file=True)
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


def test_policy_file_roundtrip_applies_normalizer(tmp_path):
    """A policy file is read with weights_only=True and acts like the actor on normalized obs."""
    torch.manual_seed(0)
    actor = make_actor(3, bounded_action_spec(1, -2.0, 2.0), hidden_dim=16, n_hidden_layers=2)
    normalizer = StateNormalizer.from_observations(np.random.default_rng(0).normal(2.0, 3.0, (64, 3)).astype(np.float32))
    save_policy_file(actor, tmp_path / "policy.pt", normalizer=normalizer)
    assert torch.load(tmp_path / "policy.pt", weights_only=True)["format"] == "cql-modules/policy-v1"
    act = load_behaviour_policy(tmp_path / "policy.pt")
    obs = torch.randn(32, 3) * 4
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        expected = actor(TensorDict({"observation": normalizer.normalize(obs)}, [32]))["action"]
    torch.testing.assert_close(act(obs), expected, rtol=0, atol=0)
    (ep,) = collect_episodes("Pendulum-v1", BehaviourSpec(str(tmp_path / "policy.pt"), 1), progress=False)
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        obs = torch.as_tensor(ep["observations"][:-1])
        expected = actor(TensorDict({"observation": normalizer.normalize(obs)}, [len(obs)]))["action"]
    np.testing.assert_allclose(ep["actions"], expected.numpy(), rtol=1e-5, atol=1e-6)


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_policy_pickle_is_not_executed(tmp_path, minari_root, capsys):
    """Issue 11 case 11: a pickle that runs a shell command when loaded is refused unread."""
    marker = tmp_path / "pwned"
    torch.save(_RunsAShellCommand(marker), tmp_path / "evil.pt")
    recipe = load_recipe()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--env", "Pendulum-v1", "--dataset-id", "test/evil-v0", "--mix", f"{tmp_path / 'evil.pt'}:1",
                     "--reference-episodes", "1", "--num-envs", "1"])
    assert exit_info.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--trust-policy-file" in err
    with pytest.raises(DatasetError, match="not a policy file"):
        load_behaviour_policy(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(DatasetError, match="cannot read policy file"):
        load_behaviour_policy(tmp_path / "junk.pt", trust=True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env", "NoSuchEnv-v9", "--dataset-id", "t/x-v0", "--mix", "random:2"], "unknown gymnasium environment 'NoSuchEnv-v9'"),
        (["--env", "Pendulum-v1", "--dataset-id", "t/x-v0", "--mix", "random:-5"], "episodes must be a positive integer"),
        (["--env", "Pendulum-v1", "--dataset-id", "t/x-v0", "--mix", "random:0"], "episodes must be a positive integer"),
        (["--default", "--episodes", "-3"], "--episodes: must be a positive integer"),
        (["--default", "--reference-episodes", "0"], "--reference-episodes: must be a positive integer"),
        (["--env", "Pendulum-v1", "--dataset-id", "t/x-v0", "--mix", "random:2:eps=1.5"], "epsilon must be in [0, 1]"),
        (["--env", "Pendulum-v1", "--dataset-id", "t/x-v0", "--mix", "random"], "is not POLICY:EPISODES"),
        (["--env", "Pendulum-v1", "--dataset-id", "t/x-v0", "--mix", "nofile.pt:3"], "unknown behaviour policy 'nofile.pt'"),
        (["--env", "Pendulum-v1", "--mix", "random:2"], "--dataset-id and at least one --mix are required"),
    ],
)
def test_collect_recipe_bad_input_is_one_line(argv, message, minari_root, capsys):
    """Issue 11 case 10: one line naming the problem, exit code 2, nothing written."""
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not minari_root.exists() or not any(minari_root.rglob("metadata.json"))


def test_collect_recipe_cli(minari_root):
    recipe = load_recipe()
    stats = recipe.main([
        "--env", "Pendulum-v1", "--dataset-id", "test/pendulum/cli-v0", "--mix", "random:2",
        "--mix", "scripted:2:noise=0.5:eps=0.2", "--reference-episodes", "2", "--num-envs", "2",
    ])  # fmt: skip
    assert stats["episodes"] == 4 and stats["transitions"] == 800
    _, info = load_dataset("test/pendulum/cli-v0")
    assert info.ref_min_score == pytest.approx(stats["random_return"])
    assert info.behaviour_score == pytest.approx(stats["behaviour_score"])

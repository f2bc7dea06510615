"""Minari discrete datasets with Dict observations (the D4RL/minigrid/* layout) through the data
layer and recipes/discrete_cql.py, on a tiny stand-in built locally with the same structure:
Dict(direction: Discrete(4), image: Box(7, 7, 3) uint8, mission: Text), Discrete(7) actions."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.spaces.text import alphanumeric

from cql_modules.data import load_dataset
from cql_modules.data.envs import FlattenDictObservation
from cql_modules.data.minari_source import MEASURED_REFERENCE_SCORES

DATASET = "D4RL/minigrid/fourrooms-v0"  # the real id: its reference scores come from our table
OBS_SPACE = gym.spaces.Dict({
    "direction": gym.spaces.Discrete(4),
    "image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
    "mission": gym.spaces.Text(max_length=14, charset=str(alphanumeric) + " "),
})


def episode(rng, length: int) -> dict:
    obs = {"direction": rng.integers(4, size=length + 1),
           "image": rng.integers(0, 11, size=(length + 1, 7, 7, 3), dtype=np.uint8),
           "mission": ["reach the goal"] * (length + 1)}
    return dict(observations=obs, actions=rng.integers(7, size=length),
                rewards=np.r_[np.zeros(length - 1), 0.7], terminations=np.r_[np.zeros(length - 1, bool), True],
                truncations=np.zeros(length, bool))


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    import minari
    from minari.data_collector import EpisodeBuffer

    root = tmp_path_factory.mktemp("minari")
    rng = np.random.default_rng(0)
    episodes = [episode(rng, 4 + i) for i in range(6)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        minari.create_dataset_from_buffers(
            DATASET, [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(episodes)], observation_space=OBS_SPACE,
            action_space=gym.spaces.Discrete(7), algorithm_name="random", author="tests", author_email="n/a",
            code_permalink="tests/test_discrete_minigrid.py", description="MiniGrid-shaped stand-in")
        yield episodes


def encode(obs_dict, i):
    """Independent encoding of row i: direction one-hot, then the image's pixels (key order)."""
    return np.r_[np.eye(4)[obs_dict["direction"][i]], obs_dict["image"][i].reshape(-1)]


def test_dict_observations_are_encoded_and_actions_are_integers(standin):
    rb, info = load_dataset(DATASET, normalize_states=False)
    data = rb[:]
    assert info.observation_space.shape == (151,) and info.observation_keys == ("direction", "image")
    assert isinstance(info.action_space, gym.spaces.Discrete) and info.action_space.n == 7
    assert (info.ref_min_score, info.ref_max_score) == MEASURED_REFERENCE_SCORES[DATASET]  # metadata has none
    first = standin[0]["observations"]
    assert np.array_equal(data["observation"][0].numpy(), encode(first, 0))
    assert np.array_equal(data["next", "observation"][0].numpy(), encode(first, 1))
    assert data["action"].dtype == torch.int64
    assert torch.equal(data["action"][:4], torch.as_tensor(standin[0]["actions"]))


def test_eval_env_encodes_like_the_loader(standin):
    _, info = load_dataset(DATASET, normalize_states=False)

    class Standin(gym.Env):
        observation_space, action_space = OBS_SPACE, gym.spaces.Discrete(7)

        def reset(self, *, seed=None, options=None):
            return {k: v[0] for k, v in standin[0]["observations"].items()}, {}

    env = FlattenDictObservation(Standin(), info.observation_keys)
    obs, _ = env.reset()
    assert env.observation_space.shape == (151,) and np.array_equal(obs, encode(standin[0]["observations"], 0))


def test_recipe_trains_on_the_standin(standin, tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("discrete_cql_recipe_mg", root / "recipes" / "discrete_cql.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        # the real preset, with the stand-in data, tiny sizes and no evaluation env (no minigrid here)
        cfg = compose("discrete_cql", overrides=[
            "discrete_dataset=D4RL/minigrid/fourrooms-v0", "network.hidden_dim=8",
            "batch_size=8", "num_updates=4", "logger.every=2", "logger.backends=[]", "logger.progress=false",
            "eval.every=0", "checkpoint.every=2", "num_threads=1"])
    summary = recipe.train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["updates"] == 4


# ---------------------------------------------------------------- with the real MiniGrid env
def test_real_minigrid_env_evaluates_and_references_are_reproducible(tmp_path, monkeypatch):
    """A tiny dataset recorded in MiniGrid-FourRooms-v0 itself (as Minari's generation script
    does): the evaluation env is rebuilt from its spec and encoded like the buffer, and the
    reference policies order as expected. Needs the ``minigrid`` package."""
    pytest.importorskip("minigrid")
    from minari import DataCollector
    from torchrl.modules import MLP, QValueActor

    from cql_modules.data import make_env
    from cql_modules.data.discrete import measure_minigrid_references, minigrid_shortest_path

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("MiniGrid-FourRooms-v0")
    space = gym.spaces.Dict({"direction": env.observation_space["direction"], "image": env.observation_space["image"],
                             "mission": OBS_SPACE["mission"]})
    env = DataCollector(env, observation_space=space)
    for seed in range(2):
        env.reset(seed=seed)
        plan, done, t = minigrid_shortest_path(env), False, 0
        while not done:
            _, _, terminated, truncated, _ = env.step(plan[t])
            done, t = terminated or truncated, t + 1
    env.create_dataset("test/minigrid/real-v0", algorithm_name="shortest path", author="tests", author_email="n/a",
                       code_permalink="tests/test_discrete_minigrid.py", description="two expert episodes")
    rb, info = load_dataset("test/minigrid/real-v0")
    eval_env = make_env(info, seed=0)
    actor = QValueActor(MLP(in_features=151, out_features=7, num_cells=[8]), in_keys=["observation"],
                        spec=eval_env.action_spec)
    rollout = eval_env.rollout(5, actor)
    assert rollout["observation"].shape == (5, 151) and rollout["action"].dtype == torch.int64
    first = rb[:1]["observation"]  # the buffer's first state, normalized like the env's
    reset = eval_env.reset(seed=0)["observation"]
    assert torch.allclose(first[0], reset, atol=1e-5)
    refs = measure_minigrid_references(episodes=10)
    assert refs["random"] < 0.2 < 0.7 < refs["expert"] <= 1.0

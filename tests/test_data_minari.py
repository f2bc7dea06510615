"""Minari datasets: loading, return-to-go, normalization, the evaluation env, bad input."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from data_fixtures import DICT_OBS_SPACE, pendulum_episode, write_minari

from cql_modules.data import (
    DatasetError,
    DatasetNotFoundError,
    StateNormalizer,
    keys,
    load_dataset,
    make_env,
    normalized_score,
    return_to_go,
)

GAMMA = 0.5
REWARDS = ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [-1.0, -1.0])


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


@pytest.fixture
def toy_id(minari_root):
    episodes = [
        pendulum_episode(3, REWARDS[0], terminated=True, seed=0),
        pendulum_episode(4, REWARDS[1], seed=1),
        pendulum_episode(2, REWARDS[2], seed=2),
    ]
    write_minari("test/toy-v0", episodes)
    return "test/toy-v0", episodes


def test_load_keys_alignment_flags(toy_id):
    dataset_id, episodes = toy_id
    buffer, info = load_dataset(dataset_id, normalize_states=False, gamma=GAMMA, batch_size=4)
    data = buffer[: len(buffer)]
    assert buffer.sample().batch_size == torch.Size([4])
    assert data[keys.OBSERVATION].dtype == torch.float32 and data[keys.MC_RETURN].shape == (9, 1)
    obs = np.concatenate([ep["observations"][:-1] for ep in episodes])
    next_obs = np.concatenate([ep["observations"][1:] for ep in episodes])
    np.testing.assert_array_equal(data[keys.OBSERVATION].numpy(), obs)
    np.testing.assert_array_equal(data[keys.NEXT_OBSERVATION].numpy(), next_obs)
    assert data[keys.TERMINATED].squeeze(-1).tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert data[keys.TRUNCATED].squeeze(-1).tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1]
    assert data[keys.DONE].squeeze(-1).tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 1]
    expected = [2.75, 3.5, 3.0, 4 + 2.5 + 1.5 + 0.875, 5 + 3 + 1.75, 6 + 3.5, 7.0, -1.5, -1.0]
    np.testing.assert_allclose(data[keys.MC_RETURN].squeeze(-1).numpy(), expected)
    assert info.source == "minari" and info.env_id == "Pendulum-v1" and info.num_transitions == 9
    assert (info.episodes.count, info.episodes.return_min, info.episodes.return_max) == (3, -2.0, 22.0)
    assert info.observation_space.shape == (3,) and info.action_space.shape == (1,)


def test_normalized_score_from_minari_metadata(toy_id):
    dataset_id, _ = toy_id
    _, info = load_dataset(dataset_id)
    assert (info.ref_min_score, info.ref_max_score) == (-1000.0, -100.0)
    np.testing.assert_allclose(normalized_score(info, np.array([-1000.0, -550.0, -100.0])), [0, 50, 100])
    assert normalized_score(dataset_id, -550.0) == pytest.approx(50.0)  # by id, from the metadata


def test_state_normalization_round_trip_and_env_transform(toy_id):
    dataset_id, episodes = toy_id
    buffer, info = load_dataset(dataset_id)
    raw, _ = load_dataset(dataset_id, normalize_states=False)
    norm, data = info.normalizer, buffer[: len(buffer)]
    raw_data = raw[: len(raw)]
    all_obs = np.concatenate([ep["observations"][:-1] for ep in episodes])
    np.testing.assert_allclose(norm.loc.numpy(), all_obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.scale.numpy(), all_obs.std(0) + 1e-3, rtol=1e-5)
    for key in (keys.OBSERVATION, keys.NEXT_OBSERVATION):
        torch.testing.assert_close(data[key] * norm.scale + norm.loc, raw_data[key])
    # the evaluation env maps a raw observation exactly as the buffer does
    env = make_env(info, seed=0)
    transform = env.transform[-1]
    raw_obs = raw_data[keys.OBSERVATION][:5]
    torch.testing.assert_close(transform._apply_transform(raw_obs), data[keys.OBSERVATION][:5], rtol=0, atol=0)
    reset = env.reset()
    assert reset[keys.OBSERVATION].dtype == torch.float32
    unnormalized = make_env(info, normalizer=None, seed=0).reset()[keys.OBSERVATION]
    torch.testing.assert_close(reset[keys.OBSERVATION], norm.normalize(unnormalized))
    # serializable: state_dict and JSON-friendly dict give the same normalizer back
    for state in (norm.state_dict(), norm.to_dict()):
        back = StateNormalizer.from_state_dict(state)
        torch.testing.assert_close(back.loc, norm.loc)
        torch.testing.assert_close(back.scale, norm.scale)


def test_env_space_mismatch(toy_id):
    dataset_id, _ = toy_id
    _, info = load_dataset(dataset_id)
    info.env_spec, info.env_id = None, "MountainCarContinuous-v0"  # 2-d obs, action bounds [-1, 1]
    with pytest.raises(DatasetError, match=r"does not match dataset.*observation shape \(2,\) != \(3,\)"):
        make_env(info)


def test_sparse_return_to_go_and_antmaze_modification(minari_root):
    # AntMaze-like: rewards 0/1; x10 - 5; failed episode -> -5 / (1 - gamma) everywhere
    episodes = [pendulum_episode(3, [0, 0, 0], seed=0), pendulum_episode(3, [0, 0, 1], terminated=True, seed=1)]
    write_minari("test/antmaze-like-v0", episodes, ref=None)
    buffer, info = load_dataset(
        "test/antmaze-like-v0", normalize_states=False, sparse_reward=True, reward_scale=10, reward_bias=-5, gamma=GAMMA
    )
    data = buffer[: len(buffer)]
    np.testing.assert_allclose(data[keys.REWARD].squeeze(-1).numpy(), [-5, -5, -5, -5, -5, 5])
    np.testing.assert_allclose(data[keys.MC_RETURN].squeeze(-1).numpy(), [-10, -10, -10, -6.25, -2.5, 5])
    assert info.sparse_reward and info.ref_min_score is None
    with pytest.raises(DatasetError, match="no reference scores"):
        normalized_score(info, 0.0)


def test_return_to_go_long_episodes_matches_loop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=3000)
    ends = rng.random(3000) < 0.002
    out = return_to_go(rewards, ends.copy(), 0.99)
    expected, g = np.zeros(3000), 0.0
    for i in reversed(range(3000)):
        g = rewards[i] + (0.0 if ends[i] or i == 2999 else 0.99 * g)
        expected[i] = g
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_dict_observations_are_flattened(minari_root):
    rng = np.random.default_rng(0)
    ep = pendulum_episode(3, [1, 2, 3])
    ep["observations"] = {
        "achieved_goal": rng.uniform(-1, 1, (4, 2)).astype(np.float32),
        "observation": rng.uniform(-1, 1, (4, 3)).astype(np.float32),
    }
    action_space = gym.spaces.Box(-2, 2, (1,))
    write_minari("test/dict-v0", [ep], env=None, observation_space=DICT_OBS_SPACE, action_space=action_space, ref=None)
    buffer, info = load_dataset("test/dict-v0", normalize_states=False)
    expected = np.concatenate([ep["observations"]["achieved_goal"], ep["observations"]["observation"]], -1)
    np.testing.assert_array_equal(buffer[:3][keys.OBSERVATION].numpy(), expected[:3])
    np.testing.assert_array_equal(buffer[:3][keys.NEXT_OBSERVATION].numpy(), expected[1:])
    assert info.flatten_observation and info.observation_space.shape == (5,) and info.env_id is None


def test_missing_minari_dataset(minari_root):
    with pytest.raises(
        DatasetNotFoundError, match=r"'mujoco/hopper/medium-v0' not found under .*minari.*download=True"
    ):
        load_dataset("mujoco/hopper/medium-v0")


def test_non_finite_minari(minari_root):
    ep = pendulum_episode(3, [1.0, np.nan, 3.0])
    write_minari("test/nan-v0", [ep])
    with pytest.raises(DatasetError, match="'rewards' holds 1 non-finite"):
        load_dataset("test/nan-v0")


def test_minari_dataset_by_directory(toy_id, minari_root):
    dataset_id, _ = toy_id
    _, info = load_dataset(minari_root / dataset_id)
    assert info.source == "minari" and info.num_transitions == 9

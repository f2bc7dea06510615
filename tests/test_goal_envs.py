"""Goal-reaching datasets (AntMaze, Adroit pen) recorded locally: flattening of Dict
observations, D4RL's AntMaze scoring (episode ends at the goal, 100 x success), the sparse
``mc_return`` rule, and the one-line reason for D4RL's own AntMaze files."""

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from goal_fixtures import build_tiny_antmaze, build_tiny_pen, goal_next_to_ant

from cql_modules.data import DatasetError, keys, load_dataset, make_env, normalized_score

GAMMA = 0.99
ANT = "test/antmaze/tiny-v0"
PEN = "test/pen/tiny-v0"
AG, DG = slice(0, 2), slice(2, 4)  # achieved_goal, desired_goal in the flattened AntMaze observation


@pytest.fixture(scope="module")
def goal_root(tmp_path_factory):
    """A Minari root with the tiny AntMaze and pen datasets, for this module."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        episodes = {ANT: build_tiny_antmaze(ANT), PEN: build_tiny_pen(PEN)}
        yield root, episodes


def flat(obs: dict) -> np.ndarray:
    return np.concatenate([obs["achieved_goal"], obs["desired_goal"], obs["observation"]], axis=-1)


def test_antmaze_flattening_refs_and_sparse_mc_return(goal_root):
    _, episodes = goal_root
    rb, info = load_dataset(ANT, normalize_states=False, reward_scale=10.0, reward_bias=-5.0, gamma=GAMMA)
    data = rb[: len(rb)]
    eps = episodes[ANT]
    # the goal is part of the observation, in the Dict's key order: achieved, desired, ant state
    assert info.observation_keys == ("achieved_goal", "desired_goal", "observation")
    assert info.observation_space.shape == (2 + 2 + 27,)
    obs = np.concatenate([flat(ep["observations"])[:-1] for ep in eps])
    next_obs = np.concatenate([flat(ep["observations"])[1:] for ep in eps])
    np.testing.assert_allclose(data[keys.OBSERVATION].numpy(), obs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data[keys.NEXT_OBSERVATION].numpy(), next_obs, rtol=1e-6, atol=1e-6)
    # sparse rewards from the goal distance, x10 - 5
    raw = (np.linalg.norm(next_obs[:, AG] - next_obs[:, DG], axis=-1) <= 0.45).astype(float)
    np.testing.assert_allclose(data[keys.REWARD].squeeze(-1).numpy(), 10 * raw - 5)
    # D4RL AntMaze: references 0 and 1, the sparse-reward mc_return rule
    assert info.sparse_reward and (info.ref_min_score, info.ref_max_score) == (0.0, 1.0)
    assert normalized_score(info, [0.0, 1.0]).tolist() == [0.0, 100.0]
    mc, start = data[keys.MC_RETURN].squeeze(-1).numpy(), 0
    for ep in eps:
        n, rewards = len(ep["rewards"]), 10 * ep["rewards"] - 5
        if ep["rewards"].max() == 0:  # never reached the goal: -5 / (1 - gamma) on every row
            expected = np.full(n, -5 / (1 - GAMMA))
        else:
            expected = np.array([sum(GAMMA**k * r for k, r in enumerate(rewards[t:])) for t in range(n)])
        np.testing.assert_allclose(mc[start : start + n], expected, rtol=1e-5)
        start += n
    assert {len(ep["rewards"]) for ep in eps} == {1, 30} and start == len(rb)  # both kinds present


def test_antmaze_env_is_the_datasets_and_ends_at_the_goal(goal_root):
    _, info = load_dataset(ANT, normalize_states=False)
    env = make_env(info)
    raw = gym.make(info.env_spec, continuing_task=False)
    for seed in (3, 4):
        td = env.reset(seed=seed)
        np.testing.assert_allclose(td[keys.OBSERVATION].numpy(), flat(raw.reset(seed=seed)[0]), rtol=1e-6, atol=1e-6)
    # the goal moved next to the ant: one step reaches it, the episode ends with reward 1
    gym_env = env.base_env._env
    td = env.reset(seed=5)
    goal_next_to_ant(gym_env, {"achieved_goal": td[keys.OBSERVATION][AG].double().numpy()})
    out = env.step(td.set(keys.ACTION, torch.zeros(8)))
    assert bool(out[keys.TERMINATED]) and float(out[keys.REWARD]) == 1.0
    assert gym_env.spec.max_episode_steps == 30 and not gym_env.unwrapped.continuing_task


def test_pen_env_flat_observations_and_success_key(goal_root):
    _, episodes = goal_root
    rb, info = load_dataset(PEN, normalize_states=False)
    assert info.observation_keys == () and not info.sparse_reward and info.env_spec.id == "AdroitHandPen-v1"
    obs = np.concatenate([ep["observations"][:-1] for ep in episodes[PEN]])
    np.testing.assert_allclose(rb[: len(rb)][keys.OBSERVATION].numpy(), obs, rtol=1e-6, atol=1e-6)
    from cql_modules.train.evaluation import env_success_keys

    assert env_success_keys(info) == ("success",)


def test_d4rl_antmaze_name_has_no_env_one_line(tmp_path, monkeypatch):
    """D4RL's antmaze-umaze-v2 file (29-dim observations) loads, but asking for its
    environment says why there is none and names the Minari port, in one line."""
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    n, rng = 20, np.random.default_rng(0)
    name = "Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    with h5py.File(tmp_path / name, "w") as f:
        f["observations"] = rng.normal(size=(n, 29)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"] = np.zeros(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % 10 == 9
    _, info = load_dataset("antmaze-umaze-v2")
    with pytest.raises(DatasetError) as err:
        make_env(info)
    message = str(err.value)
    assert "\n" not in message and "29-dim" in message and "dataset=D4RL/antmaze/umaze-v1" in message

"""D4RL-layout HDF5 files: qlearning_dataset semantics, keys, names, scores, bad files."""

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
from data_fixtures import write_d4rl

from cql_modules.data import (
    D4RL_DATASETS,
    DatasetError,
    DatasetNotFoundError,
    keys,
    load_dataset,
    make_env,
    normalized_score,
)

GAMMA = 0.5


def _all(buffer):
    """The whole storage in insertion order."""
    return buffer[: len(buffer)]


def test_keys_shapes_dtypes(tmp_path):
    write_d4rl(tmp_path / "toy.hdf5")
    buffer, info = load_dataset(tmp_path / "toy.hdf5", batch_size=5, normalize_states=False)
    batch = buffer.sample()
    assert batch.batch_size == torch.Size([5])
    for key in keys.TRANSITION_KEYS:
        assert key in batch.keys(include_nested=True), key
    for key in (keys.OBSERVATION, keys.ACTION, keys.NEXT_OBSERVATION, keys.REWARD, keys.MC_RETURN):
        assert batch[key].dtype == torch.float32
    for key in (keys.DONE, keys.TERMINATED, keys.TRUNCATED):
        assert batch[key].dtype == torch.bool and batch[key].shape == (5, 1)
    assert batch[keys.REWARD].shape == batch[keys.MC_RETURN].shape == (5, 1)
    assert batch[keys.OBSERVATION].shape == batch[keys.NEXT_OBSERVATION].shape == (5, 2)
    assert info.source == "d4rl" and info.env_id is None and info.ref_min_score is None


def test_without_next_observations_drops_timed_out_last_step(tmp_path):
    raw = write_d4rl(tmp_path / "toy.hdf5")
    buffer, info = load_dataset(tmp_path / "toy.hdf5", normalize_states=False, gamma=GAMMA)
    data = _all(buffer)
    kept = [0, 1, 2, 3, 4, 5, 7]  # row 6 (time-out) and row 8 (last row, not terminal) dropped
    assert info.num_transitions == len(data) == 7
    np.testing.assert_array_equal(data[keys.OBSERVATION].numpy(), raw["observations"][kept])
    np.testing.assert_array_equal(data[keys.NEXT_OBSERVATION].numpy(), raw["observations"][[k + 1 for k in kept]])
    np.testing.assert_array_equal(data[keys.REWARD].squeeze(-1).numpy(), raw["rewards"][kept])
    assert data[keys.TERMINATED].squeeze(-1).tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert data[keys.TRUNCATED].squeeze(-1).tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert data[keys.DONE].squeeze(-1).tolist() == [0, 0, 1, 0, 0, 1, 1]
    # mc_return by hand: episodes [1, 2, 3], [4, 5, 6] (7 dropped), [8]; nothing after the end
    expected = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 4 + 0.5 * 5 + 0.25 * 6, 5 + 0.5 * 6, 6, 8]
    np.testing.assert_allclose(data[keys.MC_RETURN].squeeze(-1).numpy(), expected)
    # complete episodes only (terminal, time-out): returns 6 and 15
    assert (info.episodes.count, info.episodes.return_min, info.episodes.return_max) == (2, 6.0, 15.0)


def test_with_next_observations_keeps_every_row(tmp_path):
    raw = write_d4rl(tmp_path / "toy.hdf5", next_observations=True)
    buffer, info = load_dataset(tmp_path / "toy.hdf5", normalize_states=False, gamma=GAMMA)
    data = _all(buffer)
    assert info.num_transitions == 9
    np.testing.assert_array_equal(data[keys.NEXT_OBSERVATION].numpy(), raw["next_observations"])
    assert data[keys.TERMINATED].squeeze(-1).tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert data[keys.TRUNCATED].squeeze(-1).tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1]
    mc = data[keys.MC_RETURN].squeeze(-1).numpy()
    np.testing.assert_allclose(mc[3:7], [4 + 2.5 + 1.5 + 0.875, 5 + 3 + 1.75, 6 + 3.5, 7])
    assert (info.episodes.count, info.episodes.return_max) == (2, 22.0)


def test_d4rl_name_resolves_to_cache_with_env_and_refs(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    entry = D4RL_DATASETS["halfcheetah-medium-v2"]
    assert entry.url == "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/halfcheetah_medium-v2.hdf5"
    write_d4rl(tmp_path / entry.filename)
    _, info = load_dataset("halfcheetah-medium-v2")
    assert info.env_id == "HalfCheetah-v5"
    assert (info.ref_min_score, info.ref_max_score) == (-280.178953, 12135.0)
    assert not info.sparse_reward
    assert D4RL_DATASETS["antmaze-umaze-v2"].sparse_reward and D4RL_DATASETS["antmaze-umaze-v2"].env_id is None


@pytest.mark.parametrize(
    "name, lo, hi",
    [("halfcheetah-medium-v2", -280.178953, 12135.0), ("hopper-medium-replay-v2", -20.272305, 3234.3),
     ("walker2d-medium-expert-v2", 1.629008, 4592.3)],
)  # fmt: skip
def test_normalized_score_d4rl_constants(name, lo, hi):
    assert normalized_score(name, lo) == pytest.approx(0.0)
    assert normalized_score(name, hi) == pytest.approx(100.0)
    mid = normalized_score(name, np.array([lo, (lo + hi) / 2]))
    assert isinstance(mid, np.ndarray)
    np.testing.assert_allclose(mid, [0.0, 50.0])
    assert normalized_score("halfcheetah-medium-v2", 4750.0) == pytest.approx(100 * (4750 + 280.178953) / 12415.178953)


def test_reward_modification_locomotion_range(tmp_path):
    write_d4rl(tmp_path / "toy.hdf5", next_observations=True)
    buffer, info = load_dataset(
        tmp_path / "toy.hdf5", normalize_states=False, normalize_reward=True, reward_scale=2.0, reward_bias=1.0
    )
    # complete-episode returns 6 and 22: r * 1000 / 16 * 2 + 1
    np.testing.assert_allclose(
        _all(buffer)[keys.REWARD].squeeze(-1).numpy(), np.arange(1, 10) * 1000 / 16 * 2 + 1, rtol=1e-6
    )
    assert info.reward_modification.range_factor == pytest.approx(1000 / 16)


def test_unknown_name_and_missing_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with pytest.raises(DatasetNotFoundError, match=r"hopper_medium-v2\.hdf5.*download=True.*rail\.eecs"):
        load_dataset("hopper-medium-v2")
    with pytest.raises(DatasetNotFoundError, match="HDF5 file not found"):
        load_dataset(tmp_path / "nope.hdf5")
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'hopper-mediocre-v2'"):
        load_dataset("hopper-mediocre-v2")


def test_corrupt_and_truncated_hdf5(tmp_path):
    write_d4rl(tmp_path / "good.hdf5")
    blob = (tmp_path / "good.hdf5").read_bytes()
    (tmp_path / "truncated.hdf5").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "garbage.hdf5").write_bytes(b"not an hdf5 file at all" * 10)
    for name in ("truncated.hdf5", "garbage.hdf5"):
        with pytest.raises(DatasetError, match="corrupt or truncated HDF5"):
            load_dataset(tmp_path / name)


def test_missing_keys_and_mismatched_rows(tmp_path):
    with h5py.File(tmp_path / "partial.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(DatasetError, match=r"missing keys \['actions', 'rewards', 'terminals'\]"):
        load_dataset(tmp_path / "partial.hdf5")
    write_d4rl(tmp_path / "short.hdf5", actions=np.zeros((4, 2), np.float32))
    with pytest.raises(DatasetError, match="'actions' has 4 rows"):
        load_dataset(tmp_path / "short.hdf5")


@pytest.mark.parametrize("key", ["observations", "rewards", "actions"])
def test_non_finite_values(tmp_path, key):
    arrays = write_d4rl(tmp_path / "ok.hdf5")
    bad = arrays[key].copy()
    bad.reshape(-1)[[1, 4]] = [np.nan, np.inf]
    write_d4rl(tmp_path / "bad.hdf5", **{key: bad})
    with pytest.raises(DatasetError, match=rf"'{key}' holds 2 non-finite values"):
        load_dataset(tmp_path / "bad.hdf5")


@pytest.mark.parametrize("storage", ["memory", "memmap"])
def test_sampled_rows_match_storage(tmp_path, storage):
    write_d4rl(tmp_path / "toy.hdf5")
    buffer, _ = load_dataset(tmp_path / "toy.hdf5", storage=storage, scratch_dir=tmp_path / "mm", batch_size=64)
    batch, everything = buffer.sample(), buffer[: len(buffer)]
    assert batch.batch_size == torch.Size([64]) and batch[keys.OBSERVATION].dtype == torch.float32
    for key in keys.TRANSITION_KEYS:
        torch.testing.assert_close(batch[key], everything[key][batch["index"]])
    assert len(set(batch["index"].tolist())) < 64  # uniform with replacement over 7 rows
    if storage == "memmap":
        assert any((tmp_path / "mm").rglob("*.memmap"))


def test_d4rl_env_and_download(tmp_path, monkeypatch):
    """download=True fetches the table's URL into the cache; the v5 env matches the data."""
    (tmp_path / "remote").mkdir()
    source = tmp_path / "remote" / "halfcheetah_medium-v2.hdf5"
    n = 20
    with h5py.File(source, "w") as f:
        f["observations"] = np.random.default_rng(0).normal(size=(n, 17)).astype(np.float32)
        f["actions"] = np.zeros((n, 6), np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % 10 == 9
    cache = tmp_path / "cache"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(cache))
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT (deprecation warnings) to the cwd
    entry = D4RL_DATASETS["halfcheetah-medium-v2"]
    monkeypatch.setitem(D4RL_DATASETS, "halfcheetah-medium-v2", dataclasses.replace(entry, url=source.as_uri()))
    buffer, info = load_dataset("halfcheetah-medium-v2", download=True)
    assert (cache / "halfcheetah_medium-v2.hdf5").is_file() and info.num_transitions == 18
    json.dumps(info.to_dict())
    env = make_env(info, seed=0)  # HalfCheetah-v5: float64 observations -> float32, normalized
    td = env.rollout(3)
    assert td[keys.OBSERVATION].dtype == torch.float32 and td[keys.OBSERVATION].shape == (3, 17)
    raw = make_env(info, normalizer=None, seed=0).reset()[keys.OBSERVATION]
    torch.testing.assert_close(td[keys.OBSERVATION][0], info.normalizer.normalize(raw))


def test_minari_download_failure_is_clear(tmp_path, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))

    def offline(dataset_id):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(minari, "download_dataset", offline)
    with pytest.raises(DatasetNotFoundError, match="could not download Minari dataset 'mujoco/hopper/medium-v0'"):
        load_dataset("mujoco/hopper/medium-v0", download=True)


def test_dataset_problem_without_loading(tmp_path, monkeypatch):
    from cql_modules.data import DEFAULT_DATASET_ID, dataset_problem

    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    assert "pass download=True" in dataset_problem("hopper-medium-v2")
    assert dataset_problem("hopper-medium-v2", download=True) is None
    assert dataset_problem(DEFAULT_DATASET_ID) is None  # built locally on first load
    assert "not found under" in dataset_problem("mujoco/hopper/medium-v0")
    assert "unknown dataset" in dataset_problem("no such thing")
    write_d4rl(tmp_path / "toy.hdf5")
    assert dataset_problem(str(tmp_path / "toy.hdf5")) is None


def test_empty_hdf5_and_bad_batch_sizes(tmp_path):
    """Issue 11 case 12: a 0-row file and non-positive batch sizes get one-line errors."""
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f["observations"] = np.zeros((0, 3), np.float32)
        f["actions"] = np.zeros((0, 2), np.float32)
        f["rewards"] = np.zeros((0,), np.float32)
        f["terminals"] = np.zeros((0,), bool)
    with pytest.raises(DatasetError, match="holds 0 transitions"):
        load_dataset(tmp_path / "empty.hdf5")
    write_d4rl(tmp_path / "toy.hdf5")
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            load_dataset(tmp_path / "toy.hdf5", batch_size=bad)


def test_hdf5_actions_outside_the_unit_box_are_refused(tmp_path):
    """A D4RL-format file is read with D4RL's [-1, 1] action box: other ranges are one line."""
    arrays = write_d4rl(tmp_path / "ok.hdf5")
    load_dataset(tmp_path / "ok.hdf5")
    write_d4rl(tmp_path / "torque.hdf5", actions=arrays["actions"] * 4)  # e.g. Pendulum's [-2, 2]
    with pytest.raises(DatasetError, match=r"actions range over \[-2, 2\], outside \[-1, 1\]"):
        load_dataset(tmp_path / "torque.hdf5")

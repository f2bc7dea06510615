"""Online pieces: env conventions, episode assembly + mc_return, replay modes and mixing,
online-row checkpoints, collector weight sync, regret bookkeeping, config checks."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from data_fixtures import pendulum_episode, write_minari
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cql_modules import CQLLoss, bounded_action_spec, make_actor, make_critic
from cql_modules.data import keys, load_dataset, make_env
from cql_modules.online import (
    RAW_RETURN_KEY,
    EpisodeRecord,
    EpisodeWriter,
    OnlineProgress,
    OnlineReplay,
    goal_reward_threshold,
    make_collector,
    make_online_env,
    mc_failure_reward,
    validate_finetune_config,
)
from cql_modules.train.config import ConfigError
from cql_modules.train.evaluation import env_success_keys
from cql_modules.train.update import UpdateStep, make_optimizer

GAMMA = 0.5
EP_LEN = 4  # online episodes (max_episode_steps) in these tests


@pytest.fixture(scope="module")
def dataset_id(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    rewards = [[-1.0 * (i + 1)] * 6 for i in range(4)]
    write_minari("test/online-v0", [pendulum_episode(6, r, seed=i) for i, r in enumerate(rewards)])
    yield "test/online-v0"
    mp.undo()


def load(dataset_id, **kw):
    kw = {"normalize_reward": True, "gamma": GAMMA, "batch_size": 8, **kw}
    return load_dataset(dataset_id, **kw)


def tiny_actor(info, seed=0):
    torch.manual_seed(seed)
    spec = bounded_action_spec(1, info.action_space.low, info.action_space.high)
    return make_actor(3, spec, hidden_dim=8, n_hidden_layers=1), spec


# ----------------------------------------------------------------------------- env + writer
def test_online_rows_reach_buffer_with_dataset_conventions(dataset_id):
    """An online episode, split over collector batches, lands in the buffer with the
    dataset's keys/dtypes, normalized observations, modified rewards and hand-computed
    mc_return; the raw return is kept for scores."""
    rb, info = load(dataset_id, capacity=24 + 10)
    assert info.reward_modification.range_factor != 1.0 and info.normalizer is not None
    actor, _ = tiny_actor(info)
    env = make_online_env(info, seed=7, max_episode_steps=EP_LEN)
    collector = make_collector(env, actor, frames_per_batch=3)
    replay = OnlineReplay(rb, mode="add")
    writer = EpisodeWriter(replay.extend, gamma=info.gamma, failure_reward=mc_failure_reward(info, rb))
    records, batches = [], []
    for batch in collector:
        batches.append(batch.clone())
        records += writer.add(batch)
        if records:
            break
    collector.shutdown()
    assert len(batches) == 2 and replay.num_online == EP_LEN and writer.pending_steps == 2
    assert len(rb) == info.num_transitions + EP_LEN

    rows = rb.storage.get(torch.arange(info.num_transitions, len(rb)))
    offline = rb.storage.get(torch.arange(2))
    for key in keys.TRANSITION_KEYS:
        assert rows.get(key).dtype == offline.get(key).dtype and rows.get(key).shape[1:] == offline.get(key).shape[1:]

    # replay the same episode in a raw env (no normalization, raw rewards) with the same actions
    actions = torch.cat(batches)[keys.ACTION][:EP_LEN]
    raw_env = make_env(info, normalizer=None, seed=7, max_episode_steps=EP_LEN)
    td = raw_env.reset()
    raw_obs, raw_next, raw_rew = [], [], []
    for a in actions:
        td["action"] = a
        td = raw_env.step(td)
        raw_obs.append(td["observation"])
        raw_next.append(td["next", "observation"])
        raw_rew.append(float(td["next", "reward"]))
        td = td["next"]
    norm = info.normalizer
    torch.testing.assert_close(rows[keys.OBSERVATION], norm.normalize(torch.stack(raw_obs)))
    torch.testing.assert_close(rows[keys.NEXT_OBSERVATION], norm.normalize(torch.stack(raw_next)))
    assert torch.equal(rows[keys.ACTION], actions)
    mod = np.array([info.reward_modification(r) for r in raw_rew])
    np.testing.assert_allclose(rows[keys.REWARD].squeeze(-1).numpy(), mod, rtol=1e-6)
    g = 0.5  # GAMMA, by hand: G3 = r3, G2 = r2 + g r3, ...
    expected_mc = [mod[0] + g * mod[1] + g**2 * mod[2] + g**3 * mod[3], mod[1] + g * mod[2] + g**2 * mod[3],
                   mod[2] + g * mod[3], mod[3]]
    np.testing.assert_allclose(rows[keys.MC_RETURN].squeeze(-1).numpy(), expected_mc, rtol=1e-5)
    assert rows[keys.DONE].squeeze(-1).tolist() == [False] * 3 + [True]
    assert rows[keys.TRUNCATED].squeeze(-1).tolist() == [False] * 3 + [True]
    assert not rows[keys.TERMINATED].any()
    (rec,) = records
    assert rec.length == EP_LEN and not rec.terminated and rec.success is None
    assert rec.raw_return == pytest.approx(sum(raw_rew), rel=1e-5)
    assert float(batches[1]["next", RAW_RETURN_KEY][0]) == pytest.approx(sum(raw_rew), rel=1e-5)  # RewardSum: raw
    assert rec.modified_return == pytest.approx(mod.sum(), rel=1e-5)


def synthetic_batch(rewards, dones, terminated=None, success=None, obs_dim=2):
    """[E, T] collector-like batch; observation = global step index."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    E, Tn = r.shape
    done = torch.as_tensor(dones, dtype=torch.bool).unsqueeze(-1)
    term = done.clone() if terminated is None else torch.as_tensor(terminated, dtype=torch.bool).unsqueeze(-1)
    step = torch.arange(E * Tn, dtype=torch.float32).reshape(E, Tn, 1).expand(E, Tn, obs_dim)
    nxt = {"observation": step + 0.5, "reward": r.unsqueeze(-1), "done": done, "terminated": term}
    if success is not None:
        nxt["is_success"] = torch.as_tensor(success, dtype=torch.bool)
    return TensorDict({"observation": step.clone(), "action": torch.zeros(E, Tn, 1), "next": nxt}, [E, Tn])


def test_writer_per_env_episodes_across_batches():
    written = []
    writer = EpisodeWriter(written.append, gamma=0.5)
    # env 0 ends an episode at t=1 and continues; env 1 runs through the batch
    r1 = writer.add(synthetic_batch([[1, 2, 4], [8, 8, 8]], [[0, 1, 0], [0, 0, 0]]))
    assert [rec.length for rec in r1] == [2] and writer.pending_steps == 4
    assert written[0][keys.MC_RETURN].squeeze(-1).tolist() == [2.0, 2.0]
    assert written[0][keys.TERMINATED].squeeze(-1).tolist() == [False, True]
    r2 = writer.add(synthetic_batch([[2, 0, 0], [0, 8, 0]], [[1, 0, 0], [0, 1, 0]],
                                    terminated=[[0, 0, 0], [0, 0, 0]]))
    assert [rec.length for rec in r2] == [2, 5] and writer.pending_steps == 3
    ep0, ep1 = written[1][:2], written[1][2:]
    assert ep0[keys.MC_RETURN].squeeze(-1).tolist() == [5.0, 2.0]  # 4 + 0.5 * 2
    assert ep0[keys.OBSERVATION][:, 0].tolist() == [2.0, 0.0]  # from batch 1 then batch 2
    assert ep1[keys.REWARD].squeeze(-1).tolist() == [8, 8, 8, 0, 8]
    assert ep1[keys.TRUNCATED].squeeze(-1).tolist() == [False] * 4 + [True]
    np.testing.assert_allclose(ep1[keys.MC_RETURN].squeeze(-1).numpy(), [8 + 4 + 2 + 0 + 0.5, 8 + 4 + 0 + 1,
                                                                           8 + 0 + 2, 0 + 4, 8])
    assert r2[1].raw_return == 32.0 and r2[1].success is None  # no RewardSum key: the stored rewards


def test_writer_sparse_failure_and_success():
    written = []
    writer = EpisodeWriter(written.append, gamma=0.9, failure_reward=-5.0, goal_reward=-5.0)
    # CORL's rule: an episode whose LAST reward is the failure value failed (G = r / (1 - gamma))
    recs = writer.add(synthetic_batch([[-5, -5, -5, -5, 5, -5, -5, 5, 5]], [[0, 0, 1, 0, 0, 1, 0, 0, 1]]))
    fail, late, goal = written[0][:3], written[0][3:6], written[0][6:]
    np.testing.assert_allclose(fail[keys.MC_RETURN].squeeze(-1).numpy(), [-50.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(late[keys.MC_RETURN].squeeze(-1).numpy(), [-50.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(goal[keys.MC_RETURN].squeeze(-1).numpy(), [-5 + 0.9 * 9.5, 9.5, 5.0], rtol=1e-6)
    assert [r.success for r in recs] == [False, True, True]  # goal reached (reward > -5) at some step
    # an info success key wins over the reward rule
    writer = EpisodeWriter(written.append, gamma=0.9, goal_reward=-5.0)
    recs = writer.add(synthetic_batch([[5, 5]], [[0, 1]], success=[[0, 0]]))
    assert recs[0].success is False


def test_sparse_dataset_failure_value(dataset_id):
    rb, info = load(dataset_id, sparse_reward=True)
    assert mc_failure_reward(info, rb) == pytest.approx(info.reward_modification(-4.0))
    _, dense = load(dataset_id)
    assert mc_failure_reward(dense, rb) is None and goal_reward_threshold(dense) is None
    assert goal_reward_threshold(info) == pytest.approx(info.reward_modification(0.0))


class _SuccessWrapper(gym.Wrapper):
    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "is_success": bool(reward > -0.5)}


def test_success_info_key_is_read(dataset_id):
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    env_id = "cqlm-test/SuccessPendulum-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda **kw: _SuccessWrapper(PendulumEnv(**kw)), max_episode_steps=EP_LEN)
    rb, info = load(dataset_id)
    info = dataclasses.replace(info, env_spec=None, env_id=env_id)
    assert env_success_keys(info) == ("is_success",)
    assert env_success_keys(dataclasses.replace(info, env_id="Pendulum-v1")) == ()
    env = make_online_env(info, seed=0)
    td = env.rollout(EP_LEN, break_when_any_done=False)
    assert td["next", "is_success"].dtype == torch.bool
    expected = (td["next", "reward"] / info.reward_modification.range_factor > -0.5).squeeze(-1)
    assert torch.equal(td["next", "is_success"].reshape(-1), expected)
    recs = EpisodeWriter(lambda _: None, gamma=0.9).add(td)
    assert recs[0].success == bool(expected.any())


# ----------------------------------------------------------------------------- replay
def marked_rows(n, value=1000.0):
    return TensorDict(
        {
            keys.OBSERVATION: torch.full((n, 3), value),
            keys.ACTION: torch.zeros(n, 1),
            keys.NEXT_OBSERVATION: torch.full((n, 3), value),
            keys.REWARD: torch.arange(n, dtype=torch.float32).unsqueeze(-1),
            keys.DONE: torch.zeros(n, 1, dtype=torch.bool),
            keys.TERMINATED: torch.zeros(n, 1, dtype=torch.bool),
            keys.TRUNCATED: torch.zeros(n, 1, dtype=torch.bool),
            keys.MC_RETURN: torch.zeros(n, 1),
        },
        [n],
    )


def online_fraction(batch):
    return float((batch[keys.OBSERVATION][:, 0] == 1000.0).float().mean())


def test_mixing_ratio_exact_per_batch(dataset_id):
    rb, info = load(dataset_id, batch_size=100)
    replay = OnlineReplay(rb, mode="mix", mixing_ratio=0.3, online_capacity=50)
    assert online_fraction(replay.sample()) == 0.0  # no online row yet: all offline
    replay.extend(marked_rows(5))
    batches = [replay.sample() for _ in range(10)]  # 1000 samples
    assert all(b.batch_size == torch.Size([100]) for b in batches)
    assert sorted(set(b.keys(True, True)) for b in batches[:1])[0] == set(keys.TRANSITION_KEYS)
    # exactly round(0.3 * 100) offline rows first, then the online ones, in every batch
    for b in batches:
        online = b[keys.OBSERVATION][:, 0] == 1000.0
        assert online.tolist() == [False] * 30 + [True] * 70
    assert len(rb) == info.num_transitions  # the offline buffer is untouched


def test_add_mode_uniform_over_union(dataset_id):
    torch.manual_seed(0)
    rb, info = load(dataset_id, batch_size=1000, capacity=48)
    replay = OnlineReplay(rb, mode="add")
    replay.extend(marked_rows(24))  # as many online rows as offline ones
    frac = online_fraction(replay.sample())
    assert abs(frac - 0.5) < 4 * (0.25 / 1000) ** 0.5  # binomial, 4 sigma


@pytest.mark.parametrize("mode", ["add", "mix"])
def test_online_rows_checkpoint_roundtrip(dataset_id, mode):
    kw = {"capacity": 24 + 10} if mode == "add" else {}
    rb, _ = load(dataset_id, **kw)
    replay = OnlineReplay(rb, mode=mode, online_capacity=10)
    replay.extend(marked_rows(4, 1000.0))
    early = replay.state_dict()
    replay.extend(marked_rows(3, 2000.0))
    late = replay.state_dict()

    def fresh():
        rb2, _ = load(dataset_id, **kw)
        return OnlineReplay(rb2, mode=mode, online_capacity=10)

    def contents(r):
        return r.storage.get(torch.arange(len(r.storage))).select(*keys.TRANSITION_KEYS)

    again = fresh()
    again.load_state_dict(late)
    assert again.num_online == 7 and len(again) == len(replay)
    assert (contents(again) == contents(replay)).all()
    assert again.writer.state_dict() == replay.writer.state_dict()
    # an older checkpoint (4 rows) restored from the newer rows file
    older = fresh()
    older.load_state_dict(late, num_online=4)
    ref = fresh()
    ref.load_state_dict(early)
    assert (contents(older) == contents(ref)).all() and older.num_online == 4


def test_mix_wraparound_positions(dataset_id):
    rb, _ = load(dataset_id)
    replay = OnlineReplay(rb, mode="mix", online_capacity=5)
    replay.extend(marked_rows(4, 1.0))
    with pytest.warns(UserWarning, match="storage full"):
        replay.extend(marked_rows(4, 2.0))  # wraps: 3 of the first rows overwritten
    state = replay.state_dict()
    assert state["first"] == 3
    rb2, _ = load(dataset_id)
    again = OnlineReplay(rb2, mode="mix", online_capacity=5)
    again.load_state_dict(state)
    obs = [r.storage.get(torch.arange(5))[keys.OBSERVATION][:, 0].tolist() for r in (again, replay)]
    assert obs[0] == obs[1] == [2.0, 2.0, 2.0, 1.0, 2.0]
    assert again.writer.state_dict()["_cursor"] == replay.writer.state_dict()["_cursor"] == 3


# ----------------------------------------------------------------------------- weight sync
def test_collector_policy_follows_updates(dataset_id):
    rb, info = load(dataset_id)
    actor, spec = tiny_actor(info)
    critic = make_critic(3, 1, hidden_dim=8, n_hidden_layers=1)
    loss = CQLLoss(actor, critic, action_spec=spec, num_actions=2)
    update = UpdateStep(loss, make_optimizer(loss, actor_lr=0.1, critic_lr=0.1))
    env = make_online_env(info, seed=0, max_episode_steps=EP_LEN)
    collector = make_collector(env, actor, frames_per_batch=2)
    assert collector.policy is actor  # same object: every optimizer step is seen at once
    probe = TensorDict({"observation": torch.randn(5, 3)}, [5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        before = collector.policy(probe.clone())["action"]
        update(rb.sample())
        after = collector.policy(probe.clone())["action"]
        expected = actor(probe.clone())["action"]
    assert not torch.equal(before, after) and torch.equal(after, expected)
    # and the collected actions come from the updated weights: saturate the policy's mean
    with torch.no_grad():
        actor.module[0].module[0][-1].bias[0] = 50.0  # loc of the tanh-Gaussian
    batch = next(iter(collector))
    collector.shutdown()
    assert torch.allclose(batch["action"], torch.full_like(batch["action"], float(spec.space.high)), atol=1e-3)


# ----------------------------------------------------------------------------- bookkeeping
def test_progress_regret_and_state():
    p = OnlineProgress()
    p.add_episodes([EpisodeRecord(10, -500.0, -5.0, False), EpisodeRecord(10, -100.0, -1.0, False)])
    m = p.metrics(ref_scores=(-1000.0, 0.0))
    assert m["train/episode_return"] == -300.0 and m["train/d4rl_normalized_episode_return"] == pytest.approx(70.0)
    assert m["train/regret"] == pytest.approx(0.3)  # mean(1 - [50, 90] / 100)
    assert "train/episode_return" not in p.metrics((-1000.0, 0.0))  # no new episode in this interval
    p2 = OnlineProgress()
    p2.add_episodes([EpisodeRecord(5, 1.0, 0, True, success=True), EpisodeRecord(5, 0.0, 0, False, success=False),
                     EpisodeRecord(5, 0.0, 0, False, success=False)])
    m2 = p2.metrics(None)
    assert m2["train/regret"] == pytest.approx(2 / 3) and m2["train/is_success"] == pytest.approx(1 / 3)
    assert p2.add_eval(80.0)["eval/regret"] == pytest.approx(0.2)
    assert p2.add_eval(100.0, success_rate=1.0) == pytest.approx({"eval/regret": 0.1, "eval/success_regret": 0.0})
    # CORL clips normalized scores to [0, 100] in both regrets
    p3 = OnlineProgress()
    p3.add_episodes([EpisodeRecord(10, 100.0, 0, False), EpisodeRecord(10, -2000.0, 0, False)])
    assert p3.metrics((-1000.0, 0.0))["train/regret"] == pytest.approx(0.5)  # scores 110 and -100
    assert p3.add_eval(120.0)["eval/regret"] == 0.0 and p3.add_eval(-50.0)["eval/regret"] == 0.5
    again = OnlineProgress.from_state_dict(p2.state_dict())
    assert again.state_dict() == p2.state_dict()


def test_config_validation():
    base = {"dataset": {"name": "cql-modules/pendulum/mixed-v0"}, "num_updates": 100, "online_updates": 100,
            "logger": {"every": 10}, "eval": {"every": 10}, "checkpoint": {"every": 0}}

    def cfg(**over):
        c = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        for key, value in over.items():
            head, _, tail = key.partition(".")
            if tail:
                c.setdefault(head, {})[tail] = value
            else:
                c[head] = value
        return c

    c = validate_finetune_config(cfg(), check_dataset=False)
    assert (c.n_offline, c.online_updates, c.total_updates, c.online_env_steps) == (100, 100, 200, 100)
    assert validate_finetune_config(cfg(offline_updates=0), check_dataset=False).n_offline == 0
    bad = {
        "online.utd_ratio": (0, "online.utd_ratio"),
        "online.mixing_ratio": (1.0, "online.mixing_ratio"),
        "online.replay": ("both", "online.replay"),
        "online.cql_alpha_online": (-1.0, "online.cql_alpha_online"),
        "online.frames_per_batch": (3, "online_updates"),
        "offline_updates": (15, "offline_updates"),
        "online.seed_offset": (10_000, "online.seed_offset"),
    }
    for key, (value, field_name) in bad.items():
        with pytest.raises(ConfigError, match=f"^{field_name}:"):
            validate_finetune_config(cfg(**{key: value}), check_dataset=False)

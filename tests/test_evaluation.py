"""Full-episode evaluation with the deterministic policy, normalized scores, regret."""
from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs import GymWrapper

from cql_modules import bounded_action_spec, make_actor
from cql_modules.data import DatasetError, normalized_score, reference_scores
from cql_modules.train.evaluation import EvalResult, evaluate, regret, score_regret


class Countdown(gym.Env):
    """Episodes of a seed-dependent length (3..11 steps, true termination); the reward is
    ``1 + action``, so a return reveals which actions were played."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = int(self.np_random.integers(3, 12))
        return np.array([self.left], np.float32), {}

    def step(self, action):
        self.left -= 1
        return np.array([self.left], np.float32), 1.0 + float(action[0]), self.left == 0, False, {}


def own_lengths(seed: int, n: int) -> list[int]:
    env = Countdown()
    return [int(env.reset(seed=seed + i)[0][0]) for i in range(n)]


@pytest.fixture
def actor():
    torch.manual_seed(0)
    a = make_actor(1, bounded_action_spec(1), hidden_dim=8, n_hidden_layers=1)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.5 * torch.randn_like(p))  # a non-trivial mean action
    return a


def deterministic_action(actor, obs: float) -> float:
    loc = actor.module[0](TensorDict({"observation": torch.tensor([[obs]], dtype=torch.float32)}, [1]))["loc"]
    return float(torch.tanh(loc).detach())


def test_each_episode_runs_to_its_own_end(actor):
    env = GymWrapper(Countdown())
    result = evaluate(env, actor, 6, seed=100)
    expected = own_lengths(100, 6)
    assert len(set(expected)) > 1  # lengths differ: a shared loop would cut the long ones
    assert result.lengths == expected
    for length, ret in zip(expected, result.returns):  # played tanh(mean) at every step
        assert ret == pytest.approx(sum(1 + deterministic_action(actor, k) for k in range(length, 0, -1)), rel=1e-5)


def test_evaluation_is_deterministic_and_seeded(actor):
    env = GymWrapper(Countdown())
    a = evaluate(env, actor, 4, seed=7)
    torch.manual_seed(123)  # the policy does not sample
    b = evaluate(env, actor, 4, seed=7)
    assert a.returns == b.returns
    assert evaluate(env, actor, 4, seed=8).lengths == own_lengths(8, 4)
    assert actor.training  # mode restored


def test_max_steps_caps_an_episode(actor):
    result = evaluate(GymWrapper(Countdown()), actor, 3, seed=0, max_steps=4)
    assert result.lengths == [min(n, 4) for n in own_lengths(0, 3)]


def test_metrics_use_corl_names(actor):
    result = evaluate(GymWrapper(Countdown()), actor, 3, seed=0, ref_scores=(0.0, 20.0))
    m = result.metrics()
    assert m["d4rl_normalized_score"] == pytest.approx(100 * np.mean(result.returns) / 20)
    assert m["eval/normalized_score_mean"] == m["d4rl_normalized_score"] == result.score
    assert m["eval_score"] == m["eval/return_mean"] == pytest.approx(np.mean(result.returns))
    assert {"eval/return_std", "eval/normalized_score_std", "eval/episode_length_mean"} <= m.keys()
    no_refs = EvalResult([1.0, 3.0], [2, 2])
    assert "d4rl_normalized_score" not in no_refs.metrics() and no_refs.score == 2.0


class GoalCountdown(Countdown):
    """Countdown whose info reports ``is_success`` (a plain Python bool) at the final step
    of the episodes of odd length."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.length = self.left
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"is_success": bool(terminated and self.length % 2)}


def test_success_keys_give_per_episode_successes(actor):
    env = GymWrapper(GoalCountdown())
    result = evaluate(env, actor, 6, seed=3, success_keys=("is_success",))
    expected = [n % 2 == 1 for n in own_lengths(3, 6)]
    assert 0 < sum(expected) < 6 and result.successes == expected
    assert result.metrics()["eval/success_rate"] == result.success_rate == pytest.approx(np.mean(expected))
    again = evaluate(env, actor, 6, seed=3, success_keys=("is_success",))  # the reader is installed once
    assert again.successes == expected and len(env.info_dict_reader) == 1
    plain = evaluate(GymWrapper(Countdown()), actor, 2, seed=3)
    assert plain.successes is None and "eval/success_rate" not in plain.metrics()


def test_normalized_score_and_regret():
    # the data layer's normalized_score, given the reference pair itself
    assert normalized_score((-20.272305, 3234.3), 3234.3) == pytest.approx(100.0)
    assert normalized_score((-20.272305, 3234.3), -20.272305) == pytest.approx(0.0)
    np.testing.assert_allclose(normalized_score((0.0, 10.0), [0.0, 5.0]), [0.0, 50.0])
    with pytest.raises(DatasetError, match="ref_max_score"):
        normalized_score((1.0, 1.0), 1.0)
    no_refs = SimpleNamespace(name="no-refs", ref_min_score=None, ref_max_score=None)
    assert reference_scores(no_refs, required=False) is None
    with pytest.raises(DatasetError, match="no reference scores"):
        reference_scores(no_refs)
    assert regret([1, 0, 1, 1]) == pytest.approx(0.25)
    assert score_regret([50.0, 100.0]) == pytest.approx(0.25)
    assert score_regret([-50.0, 150.0]) == pytest.approx(0.5)
    assert score_regret([-50.0, 150.0], clip=True) == pytest.approx(0.5 * (1.0 + 0.0))  # CORL: clipped to [0, 100]
    with pytest.raises(ValueError):
        regret([])


class FirstStepReward(Countdown):
    """Countdown whose reward is paid at the first step only (0 afterwards)."""

    def step(self, action):
        first = self.left == self.length
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward if first else 0.0, terminated, truncated, info

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.length = self.left
        return obs, info


def test_goal_reward_gives_successes_without_a_success_key(actor):
    """Sparse goal tasks without a success key: an episode succeeded when some step's reward
    exceeds ``goal_reward`` (CORL's is_goal_reached on raw rewards)."""
    first_rewards = [1.0 + deterministic_action(actor, float(n)) for n in own_lengths(5, 6)]
    threshold = float(np.median(first_rewards))
    expected = [r > threshold for r in first_rewards]
    result = evaluate(GymWrapper(FirstStepReward()), actor, 6, seed=5, goal_reward=threshold)
    assert 0 < sum(expected) < 6 and result.successes == expected
    assert result.metrics()["eval/success_rate"] == pytest.approx(np.mean(expected))

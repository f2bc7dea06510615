"""Run pieces of cql_modules.train: config validation, metric aggregation and the
NaN/inf guard, RNG capture/restore, atomic checkpoints and exact resume."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from cql_modules import CQLLoss, bounded_action_spec, make_actor, make_critic
from cql_modules.data import dataset_problem
from cql_modules.train.state import (
    LastGoodState,
    capture_rng_state,
    find_checkpoint,
    load_checkpoint,
    load_training_state,
    preserve_rng,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    training_state,
)
from cql_modules.train.config import ConfigError, OfflineConfig, validate_config
from cql_modules.train.loop import run_updates
from cql_modules.train.metrics import MetricAggregator, NonFiniteLossError
from cql_modules.train.update import UpdateStep, make_optimizer


# ----------------------------------------------------------------------------- helpers
def make_buffer(n: int = 64, batch_size: int = 8, generator: torch.Generator | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDict(
        {
            "observation": torch.randn(n, 3, generator=g),
            "action": torch.rand(n, 2, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, 3, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.rand(n, 1, generator=g) < 0.1,
            },
        },
        [n],
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(n), sampler=RandomSampler(), batch_size=batch_size,
                                generator=generator)
    rb.extend(data)
    return rb


def make_agent(seed: int = 0, lagrange: bool = True):
    torch.manual_seed(seed)
    spec = bounded_action_spec(2)
    actor = make_actor(3, spec, hidden_dim=8, n_hidden_layers=1)
    loss = CQLLoss(actor, make_critic(3, 2, hidden_dim=8, n_hidden_layers=1),
                   num_actions=2, lagrange=lagrange, target_action_gap=1.0, bc_steps=2)
    update = UpdateStep(loss, make_optimizer(loss, actor_lr=1e-3, critic_lr=1e-3), target_update_period=2)
    return loss, update


def run(update, rb, n):
    agg = MetricAggregator()
    run_updates(update, rb.sample, n, agg)
    return agg.flush()


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------- config
def test_default_config_is_valid():
    c = validate_config(OfflineConfig(), check_dataset=False)
    assert c.loss.cql_alpha == 10.0 and c.optim.actor_lr == 3e-5 and c.batch_size == 256


@pytest.mark.parametrize(
    "override, field",
    [
        ({"batch_size": -1}, "batch_size"),
        ({"num_updates": 0}, "num_updates"),
        ({"loss": {"cql_alpha": -1.0}}, "loss.cql_alpha"),
        ({"loss": {"gamma": 1.5}}, "loss.gamma"),
        ({"loss": {"loss_function": "huber"}}, "loss.loss_function"),
        ({"loss": {"target_entropy": "high"}}, "loss.target_entropy"),
        ({"optim": {"critic_lr": 0.0}}, "optim.critic_lr"),
        ({"optim": {"tau": 2.0}}, "optim.tau"),
        ({"network": {"hidden_dim": 0}}, "network.hidden_dim"),
        ({"eval": {"every": 1500}}, "eval.every"),
        ({"eval": {"n_episodes": 0}}, "eval.n_episodes"),
        ({"logger": {"backends": ["mlflow"]}}, "logger.backends"),
        ({"device": "tpu"}, "device"),
        ({"dataset": {"name": "no-such-dataset"}}, "dataset.name"),
        ({"dataset": {"name": "/no/such/file.hdf5"}}, "dataset.name"),
        ({"batch_size": "many"}, "batch_size"),  # type error, from the structured schema
        ({"loss": {"cql_alpah": 1.0}}, "cql_alpah"),  # unknown key
    ],
)
def test_invalid_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        validate_config(override)
    assert field in str(err.value)


def test_known_datasets_pass_the_name_check(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    assert dataset_problem("hopper-medium-v2", download=True) is None
    assert dataset_problem("pen-cloned-v1", download=True) is None
    assert dataset_problem("mujoco/hopper/medium-v0", download=True) is None
    assert dataset_problem("cql-modules/pendulum/mixed-v0") is None  # built locally
    assert "download" in dataset_problem("hopper-medium-v2")  # not cached, download off
    assert "unknown dataset" in dataset_problem("hopper-mediun-v2")


# ----------------------------------------------------------------------------- metrics
def test_aggregator_means_one_interval():
    agg = MetricAggregator()
    agg.reset(10)
    for v in (1.0, 2.0, 6.0):
        agg.add(TensorDict({"loss_qvalue": torch.tensor(v), "alpha": torch.tensor(2 * v)}, []))
    assert agg.flush() == {"loss_qvalue": 3.0, "alpha": 6.0}
    assert agg.start_update == 13 and agg.flush() == {}


def test_aggregator_reset_can_forget_the_metric_names():
    agg = MetricAggregator()
    agg.add({"loss_qvalue": torch.tensor(1.0), "bound_rate": torch.tensor(0.5)})
    assert agg.flush() == {"loss_qvalue": 1.0, "bound_rate": 0.5}
    agg.reset(7, clear_keys=True)  # e.g. the offline -> online boundary: another metric set
    agg.add({"loss_qvalue": torch.tensor(3.0)})
    assert agg.flush() == {"loss_qvalue": 3.0} and agg.start_update == 8


def test_aggregator_names_the_first_non_finite_loss_term():
    agg = MetricAggregator()
    agg.reset(100)
    for i in range(6):
        q = float("nan") if i >= 2 else 1.0  # critic breaks at update 103 ...
        a = float("inf") if i >= 4 else 1.0  # ... the actor two updates later
        agg.add({"loss_actor": torch.tensor(a), "loss_qvalue": torch.tensor(q), "average_qf1": torch.tensor(q)})
    with pytest.raises(NonFiniteLossError) as err:
        agg.flush()
    e = err.value
    assert e.term == "loss_qvalue" and e.first_update == 103 and e.last_update == 106
    assert "loss_qvalue" in str(e) and "\n" not in str(e)


def test_aggregator_prefers_the_critic_on_a_tie():
    agg = MetricAggregator()
    agg.add({"loss_actor": torch.tensor(float("nan")), "loss_qvalue": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteLossError, match="loss_qvalue"):
        agg.flush()


# ----------------------------------------------------------------------------- RNG
@pytest.mark.parametrize("own_generator", [False, True])
def test_rng_restore_reproduces_batches_and_samples(own_generator):
    gen = torch.Generator().manual_seed(5) if own_generator else None
    rb = make_buffer(generator=gen)
    seed_everything(3)
    state = capture_rng_state(rb)
    first = (rb.sample()["index"], torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state, rb)
    again = (rb.sample()["index"], torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert np.array_equal(first[2], again[2]) and first[3] == again[3]
    if own_generator:
        assert "replay_buffer" in state


def test_preserve_rng_leaves_the_streams_untouched():
    seed_everything(0)
    expected = torch.rand(2)
    seed_everything(0)
    with preserve_rng():
        torch.rand(100), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), expected)


# ----------------------------------------------------------------------------- checkpoints
def test_resume_is_exact_parameter_for_parameter(tmp_path):
    """N updates straight == N/2, checkpoint, fresh objects, restore, N/2."""
    N = 6
    seed_everything(1)
    loss_a, update_a = make_agent(seed=1)
    rb_a = make_buffer(seed=2)
    run(update_a, rb_a, N)

    seed_everything(1)
    loss_b, update_b = make_agent(seed=1)
    rb_b = make_buffer(seed=2)
    run(update_b, rb_b, N // 2)
    path = save_checkpoint(training_state(loss_b, update_b, replay_buffer=rb_b, extra={"note": "x"}),
                             tmp_path / "ck" / "last.pt")
    del loss_b, update_b
    torch.manual_seed(12345)  # a fresh process: other RNG state, other init
    loss_c, update_c = make_agent(seed=99)
    rb_c = make_buffer(seed=2)
    extra = load_training_state(load_checkpoint(path), loss_c, update_c, replay_buffer=rb_c)
    assert extra == {"note": "x"} and update_c.n_steps == N // 2 and int(loss_c.n_updates) == N // 2
    run(update_c, rb_c, N - N // 2)

    assert_same_state(loss_a, loss_c)  # actor, critics, target critics, log_alpha(_prime), n_updates
    assert update_a.n_steps == update_c.n_steps == N
    oa, oc = update_a.optimizer.state_dict()["state"], update_c.optimizer.state_dict()["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], oc[i][k])


def test_training_state_is_a_copy():
    loss, update = make_agent()
    state = training_state(loss, update)
    run(update, make_buffer(), 2)
    assert not torch.equal(state["loss"]["log_alpha"], loss.state_dict()["log_alpha"])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 1, "step": 1}, path)

    def torn_save(obj, f):  # dies half-way through writing
        f.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"version": 1, "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode


def test_find_checkpoint(tmp_path):
    assert find_checkpoint(tmp_path) is None
    path = save_checkpoint({"step": 0}, tmp_path / "checkpoints" / "last.pt")
    assert find_checkpoint(tmp_path) == path == find_checkpoint(path) == find_checkpoint(path.parent)


def test_last_good_state_keeps_a_snapshot():
    loss, update = make_agent()
    good = LastGoodState()
    good.keep(lambda: training_state(loss, update))
    assert good.step == 0
    with torch.no_grad():
        next(loss.actor_network.parameters()).fill_(math.nan)
    assert all(torch.isfinite(v).all() for v in good.state["loss"].values() if v.is_floating_point())


LOSS_OVERRIDES = {  # a valid non-default command-line value for the arguments a rule below cannot make
    "loss_function": "l1", "reduction": "sum", "target_entropy": -1.5, "critic_compute_dtype": "bfloat16",
    "fused_critic": False, "clip_diff_min": -100.0, "clip_diff_max": 100.0, "gamma": 0.5,
    "use_prioritized_weights": False,
}


def _other_value(name, default):
    if name in LOSS_OVERRIDES:
        return LOSS_OVERRIDES[name]
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    return default / 2 if default else 0.5


def test_every_loss_argument_is_reachable_from_the_recipe_config_with_the_same_default(monkeypatch):
    """CQLLoss's signature is the one source of the loss defaults: every constructor argument
    (the networks and the action spec aside) is a ``loss.*`` field of the recipe config with the
    same default, and a command-line value reaches the constructor."""
    import inspect
    from dataclasses import asdict
    from pathlib import Path

    import gymnasium as gym
    from hydra import compose, initialize_config_dir

    from cql_modules.train import build
    from cql_modules.train.config import LOSS_NON_CONFIG_ARGS, register_configs

    params = {name: p.default for name, p in inspect.signature(CQLLoss.__init__).parameters.items()
              if name not in LOSS_NON_CONFIG_ARGS}
    assert {"fused_critic", "reduction", "critic_compute_dtype"} <= params.keys()
    assert asdict(OfflineConfig().loss) == params

    register_configs()
    overrides = {name: _other_value(name, default) for name, default in params.items()}
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        default_cfg = compose("offline_cql", overrides=["dataset.name=x"])
        cfg = compose("offline_cql", overrides=["dataset.name=x"] + [f"loss.{k}={v}" for k, v in overrides.items()])
    # the recipe's own config file and the embedded dataset's preset leave every default but cql_alpha
    assert {k: v for k, v in dict(default_cfg.loss).items() if v != params[k]} == {"cql_alpha": 1.0}

    received = {}

    class Stop(Exception):
        pass

    def recording_loss(actor, critic, *, action_spec, **kwargs):
        received.update(kwargs)
        raise Stop

    monkeypatch.setattr(build, "CQLLoss", recording_loss)
    info = type("Info", (), {"observation_space": gym.spaces.Box(-1, 1, (3,)), "action_space": gym.spaces.Box(-1, 1, (2,))})
    with pytest.raises(Stop):
        build.build_learner(validate_config(cfg, check_dataset=False), info)
    assert received == overrides


# ----------------------------------------------------------------------------- the run engine
class CountingHooks:
    """RunHooks that record what the engine asks of them."""

    name = "counting"

    def __init__(self):
        self.intervals, self.saved, self.loaded, self.closed = [], [], None, 0

    def updates(self, engine, n):
        self.intervals.append((engine.update.n_steps, n))
        engine.updates(n)

    def metrics(self, step):
        return {"hook/step": float(step)}

    def on_evaluation(self, step, result, record):
        return {}

    def state_dict(self):
        return {"intervals": list(self.intervals)}

    def load_state_dict(self, state, checkpoint_dir):
        self.loaded = state

    def save(self, state, checkpoint_dir):
        self.saved.append(state["intervals"][-1][0] + state["intervals"][-1][1])

    def summary(self, summary):
        return {"hook_intervals": len(self.intervals)}

    def plot(self, engine, summary):
        return {"title": "test"}

    def final_line(self, summary):
        return "done"

    def close(self):
        self.closed += 1


def _engine(tmp_path, hooks, **changes):
    from types import SimpleNamespace

    import gymnasium as gym

    from cql_modules.train.loop import RunEngine

    c = validate_config({"logger": {"every": 4, "backends": [], "progress": False}, "eval": {"every": 0},
                         "checkpoint": {"every": 8}, **changes}, check_dataset=False)
    info = SimpleNamespace(name="test", num_transitions=64, normalizer=None, reward_modification=None,
                           ref_min_score=None, ref_max_score=None, behaviour_score=None, episodes=None,
                           sparse_reward=False, observation_space=gym.spaces.Box(-1, 1, (3,)),
                           action_space=gym.spaces.Box(-1, 1, (2,)))
    loss, update = make_agent()
    rb = make_buffer()
    return RunEngine(c, tmp_path, info, loss.actor_network, loss, update, sample=rb.sample, replay_buffer=rb,
                     hooks=hooks)


def test_engine_intervals_boundaries_hooks_and_resume(tmp_path, capsys):
    """Intervals end at logging steps and at a phase boundary; the hooks' metrics are logged,
    their state checkpointed (their files first) and given back on resume."""
    from cql_modules.train.run_logger import read_metrics

    hooks = CountingHooks()
    summary = _engine(tmp_path, hooks).run(10, boundaries=(6,)).finish()
    assert hooks.intervals == [(0, 4), (4, 2), (6, 2), (8, 2)]  # 4 | boundary 6 | 8 | total 10
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [4, 6, 8, 10]
    assert all(r["hook/step"] == r["step"] for r in read_metrics(tmp_path / "metrics.jsonl"))
    assert hooks.saved == [6, 8, 10] and hooks.closed == 1  # boundary, checkpoint.every, end
    assert summary["status"] == "completed" and summary["hook_intervals"] == 4 and summary["updates"] == 10
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done"

    again = CountingHooks()
    engine = _engine(tmp_path, again, resume=True)
    assert engine.update.n_steps == 10 and again.loaded == {"intervals": hooks.intervals}
    engine.run_logger.close()


def test_engine_keeps_the_last_good_state_on_preemption(tmp_path, capsys):
    import signal

    from cql_modules.train.cli import Preempted

    class PreemptedInSecondInterval(CountingHooks):
        def updates(self, engine, n):
            if engine.update.n_steps == 4:
                engine.updates(1)
                raise Preempted(signal.SIGTERM)
            super().updates(engine, n)

    engine = _engine(tmp_path, PreemptedInSecondInterval())
    with pytest.raises(Preempted):
        engine.run(8).finish()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert state["step"] == 4 and summary["status"] == "preempted" and summary["updates"] == 4
    assert "preempted after update 5; last good state (update 4)" in capsys.readouterr().err

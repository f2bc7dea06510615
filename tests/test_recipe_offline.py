"""recipes/offline_cql.py end to end on a tiny locally built dataset: every logger backend
that needs no network, run files, exact resume (also after a kill mid-checkpoint), the
NaN guard, config presets and validation, a --multirun sweep with the joblib launcher."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cql_modules.train.config import ConfigError, register_configs, validate_config
from cql_modules.train.state import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
register_configs()  # the schema configs/offline_cql.yaml names (the recipe registers it too)
CONFIGS = ROOT / "configs"
DATASET = "test/pendulum/tiny-v0"
TINY = [
    f"dataset.name={DATASET}",
    "network.hidden_dim=8",
    "network.actor_n_hidden_layers=1",
    "network.q_n_hidden_layers=1",
    "loss.num_actions=2",
    "batch_size=16",
    "num_updates=4",
    "logger.every=2",
    "logger.backends=[]",
    "logger.progress=false",
    "eval.every=4",
    "eval.n_episodes=1",
    "eval.max_episode_steps=10",
    "checkpoint.every=2",
    "num_threads=1",
]


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A Minari root holding a tiny Pendulum dataset (8 episodes), built in about a second."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        mp.delenv("WANDB_MODE", raising=False)
        from cql_modules.data import BehaviourSpec, build_minari_dataset

        build_minari_dataset(DATASET, "Pendulum-v1",
                             [BehaviourSpec("random", 4), BehaviourSpec("scripted", 4, noise_std=0.3)],
                             reference_episodes=2, num_envs=4, progress=False)
        yield root


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("offline_cql_recipe", ROOT / "recipes" / "offline_cql.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("offline_cql", overrides=[*TINY, *overrides])


def run(recipe, run_dir, *overrides):
    return recipe.train(config(*overrides), run_dir)


def final_state(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")


def assert_same_training(a, b):
    assert a["step"] == b["step"]
    for k in a["loss"]:
        assert torch.equal(a["loss"][k], b["loss"][k]), k
    for i, s in a["optimizer"]["state"].items():
        for k in s:
            assert torch.equal(s[k], b["optimizer"]["state"][i][k])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


TIMING = ("train/updates_per_s", "eval/seconds")


def metric_records(run_dir):
    with open(Path(run_dir) / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("backend", ["csv", "tensorboard", "wandb"])
def test_end_to_end_with_each_logger(recipe, minari_root, tmp_path, capsys, backend):
    summary = run(recipe, tmp_path, f"logger.backends=[{backend}]")
    assert summary["status"] == "completed" and summary["updates"] == 4
    assert summary["final_normalized_score"] is not None and summary["behaviour_normalized_score"] is not None
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("final normalized_score: ")

    for name in ("metrics.jsonl", "summary.json", "learning_curve.png", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4]
    corl = {"policy_loss", "alpha_loss", "alpha", "log_pi", "qf1_loss", "qf2_loss", "average_qf1",
            "average_target_q", "cql_q1_rand", "cql_q1_current_actions", "cql_q1_next_actions", "cql_std_q1",
            "cql_qf1_diff", "cql_min_qf1_loss", "loss_qvalue", "loss_actor", "train/updates_per_s"}
    assert corl <= records[0].keys()
    assert {"d4rl_normalized_score", "eval/return_mean", "eval/return_std"} <= records[1].keys()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["config"]["network"]["hidden_dim"] == 8 and saved["wall_time_s"] > 0

    logs = {
        "csv": lambda: list(tmp_path.glob("csv/*/scalars/qf1_loss.csv")),
        "tensorboard": lambda: list(tmp_path.glob("tensorboard/**/events.out.tfevents.*")),
        "wandb": lambda: list(tmp_path.glob("wandb/offline-run-*/run-*.wandb")),
    }[backend]()
    assert logs, f"no {backend} log written"


def test_resume_continues_exactly(recipe, minari_root, tmp_path):
    """8 updates straight == 4 updates + resume + 4 updates, parameter for parameter."""
    run(recipe, tmp_path / "straight", "num_updates=8")
    run(recipe, tmp_path / "halves", "num_updates=4")
    summary = run(recipe, tmp_path / "halves", "num_updates=8", "resume=true")
    assert summary["updates"] == 8
    assert_same_training(final_state(tmp_path / "straight"), final_state(tmp_path / "halves"))
    assert metric_records(tmp_path / "straight") == metric_records(tmp_path / "halves")


class Killed(BaseException):
    """A hard kill (SIGKILL, power loss): no handler of the recipe runs."""


def test_killed_while_writing_a_checkpoint_loses_only_that_interval(recipe, minari_root, tmp_path, monkeypatch):
    run(recipe, tmp_path / "straight", "num_updates=6")
    real_save, calls = torch.save, []

    def dies_on_second_checkpoint(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"torn")
            raise Killed  # the process dies mid-write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dies_on_second_checkpoint)
    with pytest.raises(Killed):
        run(recipe, tmp_path / "killed", "num_updates=6")
    monkeypatch.undo()
    assert final_state(tmp_path / "killed")["step"] == 2  # the previous checkpoint is intact
    run(recipe, tmp_path / "killed", "num_updates=6", "resume=true")
    assert_same_training(final_state(tmp_path / "straight"), final_state(tmp_path / "killed"))
    assert metric_records(tmp_path / "straight") == metric_records(tmp_path / "killed")


def test_ctrl_c_keeps_the_last_good_state(recipe, minari_root, tmp_path, monkeypatch, capsys):
    run(recipe, tmp_path / "straight", "num_updates=6")

    class CtrlCAtFifthUpdate(recipe.UpdateStep):
        def __call__(self, batch):
            if self.n_steps == 4:
                raise KeyboardInterrupt
            return super().__call__(batch)

    monkeypatch.setattr(recipe, "UpdateStep", CtrlCAtFifthUpdate)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, tmp_path / "stopped", "num_updates=6")
    monkeypatch.undo()
    assert final_state(tmp_path / "stopped")["step"] == 4
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["status"] == "interrupted"
    assert "interrupted after update 4; last good state (update 4)" in capsys.readouterr().err
    run(recipe, tmp_path / "stopped", "num_updates=6", "resume=true")
    assert_same_training(final_state(tmp_path / "straight"), final_state(tmp_path / "stopped"))


def test_nan_guard_stops_with_the_last_good_state(recipe, minari_root, tmp_path, monkeypatch, capsys):
    class BreaksAtThirdUpdate(recipe.UpdateStep):
        def __call__(self, batch):
            if self.n_steps == 2:  # the 3rd update: inside the interval (2, 4]
                with torch.no_grad():
                    next(iter(self.loss.qvalue_network_params.values(True, True))).fill_(float("nan"))
            return super().__call__(batch)

    monkeypatch.setattr(recipe, "UpdateStep", BreaksAtThirdUpdate)
    summary = run(recipe, tmp_path, "num_updates=6")
    err = capsys.readouterr().err.strip().splitlines()
    assert summary["status"] == "diverged" and "loss_qvalue" in summary["message"]
    assert any(line.startswith("stopped: non-finite loss_qvalue") for line in err)
    state = final_state(tmp_path)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["loss"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


# ----------------------------------------------------------------------------- configs
def test_every_dataset_preset_composes_and_validates():
    presets = sorted(str(p.relative_to(CONFIGS / "dataset").with_suffix(""))
                     for p in (CONFIGS / "dataset").rglob("*.yaml") if not p.name.startswith("_"))
    assert len(presets) >= 15 + 6 + 8 + 9 + 6 + 8 + 1
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfgs = {p: validate_config(compose("offline_cql", overrides=[f"dataset={p}"]), check_dataset=False)
                for p in presets}
    for p, c in cfgs.items():
        assert c.dataset.name.startswith(p) or p.startswith(("D4RL", "mujoco", "cql-modules")), p

    hop, hop_replay = cfgs["hopper-medium-v2"], cfgs["hopper-medium-replay-v2"]
    assert hop.dataset.normalize_reward and not hop_replay.dataset.normalize_reward
    for c in (hop, hop_replay, cfgs["halfcheetah-medium-expert-v2"], cfgs["mujoco/walker2d/expert-v0"]):
        assert (c.loss.cql_alpha, c.optim.actor_lr, c.optim.critic_lr) == (10, 3e-5, 3e-4)
        assert c.network.q_n_hidden_layers == c.network.actor_n_hidden_layers == 3
        assert c.loss.importance_sample and not c.loss.lagrange and c.dataset.normalize and c.num_updates == 1_000_000
    for c in (cfgs["antmaze-large-diverse-v2"], cfgs["D4RL/antmaze/umaze-v1"]):
        assert (c.loss.cql_alpha, c.loss.target_action_gap, c.loss.clip_diff_min) == (5, 0.8, -200)
        assert c.loss.lagrange and c.loss.max_target_backup and not c.dataset.normalize
        assert (c.dataset.reward_scale, c.dataset.reward_bias) == (10, -5)
        assert (c.network.q_n_hidden_layers, c.optim.actor_lr) == (5, 1e-4)
    for c in (cfgs["pen-human-v1"], cfgs["D4RL/relocate/cloned-v2"]):
        assert (c.loss.cql_alpha, c.loss.lagrange, c.loss.target_action_gap) == (1, True, 5)


def test_default_run_is_the_embedded_dataset():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        c = validate_config(compose("offline_cql"), check_dataset=False)
    assert c.dataset.name == "cql-modules/pendulum/mixed-v0" and c.num_updates <= 20_000


def test_command_line_overrides_are_checked():
    with pytest.raises(ConfigError, match="loss.cql_alpha"):
        validate_config(config("loss.cql_alpha=-1"), check_dataset=False)
    with pytest.raises(ConfigError, match="batch_size"):
        validate_config(config("batch_size=-256"), check_dataset=False)
    with pytest.raises(ConfigError, match="dataset.name"):
        validate_config(config("dataset.name=hoper-medium-v2"))
    with pytest.raises((HydraException, OmegaConfBaseException), match="batch_size"):
        config("batch_size=lots")
    with pytest.raises((HydraException, OmegaConfBaseException), match="cql_alpah"):
        config("loss.cql_alpah=1")
    with pytest.raises((HydraException, OmegaConfBaseException), match="dataset"):
        config("dataset=hopper-medium-v3")


def test_command_line_run_with_an_invalid_value_fails_at_start(minari_root, tmp_path):
    """The real command line; the run dir still gets summary.json / metrics.jsonl / the PNG."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}
    cmd = [sys.executable, str(ROOT / "recipes" / "offline_cql.py"), *TINY, "loss.cql_alpha=-1",
           f"hydra.run.dir={tmp_path}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "loss.cql_alpha: must be >= 0" in out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss.cql_alpha" in summary["message"]
    assert (tmp_path / "metrics.jsonl").is_file() and (tmp_path / "learning_curve.png").is_file()


def test_multirun_sweep_with_the_joblib_launcher(minari_root, tmp_path):
    """The real command line: `--multirun seed=0,1 hydra/launcher=joblib`."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}
    cmd = [sys.executable, str(ROOT / "recipes" / "offline_cql.py"), "--multirun", "seed=0,1",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={tmp_path}",
           *TINY, "num_updates=2", "eval.every=2"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in summaries) == [0, 1]


def test_continuous_recipes_refuse_discrete_actions():
    from types import SimpleNamespace

    import gymnasium as gym

    from cql_modules.train.build import build_learner
    from cql_modules.train.config import ConfigError, OfflineConfig

    info = SimpleNamespace(name="x/cartpole-v0", action_space=gym.spaces.Discrete(2),
                           observation_space=gym.spaces.Box(-1, 1, (4,)))
    with pytest.raises(ConfigError, match="needs continuous"):
        build_learner(OfflineConfig(), info)


def test_a_sweep_whose_jobs_fail_exits_with_their_code(tmp_path):
    """Hydra's basic launcher runs every job (the sweep goes on), then exits with the first
    failure's code and one summary line."""
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    cmd = [sys.executable, str(ROOT / "recipes" / "offline_cql.py"), "--multirun", "seed=0,1",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY, f"dataset.name={bad}", "eval.every=0"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "sweep: 2 of 2 jobs failed (data, data)" in out.stderr and "Traceback" not in out.stderr

"""Exported policies (TorchScript, ONNX through onnxruntime) equal the eager actor with the
dataset's normalization, and play a full episode in the real environment."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tiny_runs import load_recipe, run_recipe
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cql_modules.export import FORMATS, export_policy, load_actor, load_policy
from cql_modules.train.state import load_checkpoint, save_checkpoint

pytest_plugins = ("run_fixtures",)  # minari_root, tiny_run, tiny_finetune_run


@pytest.fixture(scope="module")
def sharp_checkpoint(tiny_run, tmp_path_factory):
    """The tiny run's checkpoint with a random, large actor output layer: after 8 updates the
    policy is near zero; this one also saturates the tanh (the clamp matters)."""
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    last = [k for k in state["loss"] if k.startswith("actor_network.") and k.endswith(".weight")][-1]
    g = torch.Generator().manual_seed(0)
    state["loss"][last] = 2 * torch.randn(state["loss"][last].shape, generator=g)
    state["loss"][last.replace(".weight", ".bias")].zero_()
    return save_checkpoint(state, tmp_path_factory.mktemp("sharp") / "sharp.pt")


def eager_actions(checkpoint, observations: torch.Tensor) -> np.ndarray:
    """The training code's own path: ObservationNorm arithmetic + actor in deterministic mode."""
    actor, normalizer, _ = load_actor(checkpoint)
    with set_exploration_type(ExplorationType.DETERMINISTIC), torch.no_grad():
        td = actor(TensorDict({"observation": normalizer.normalize(observations)}, [len(observations)]))
    return td["action"].numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_policy_equals_the_eager_actor(sharp_checkpoint, tmp_path, fmt):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(1000, 3, generator=g) * torch.tensor([1.0, 1.0, 8.0])  # Pendulum: cos, sin, velocity
    expected = eager_actions(sharp_checkpoint, obs)
    assert (np.abs(expected) > 1.99999).mean() > 0.05 and (np.abs(expected) < 1.5).mean() > 0.05  # both regimes

    policy = load_policy(export_policy(sharp_checkpoint, tmp_path / f"policy.{fmt}", format=fmt))
    got = policy(obs.numpy())
    assert got.shape == (1000, 1) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(policy(obs[7].numpy()) - expected[7]).max() < 1e-5  # a single observation
    assert policy.metadata["format"] == fmt and policy.metadata["action_high"] == [2.0]


def test_exported_policy_plays_an_episode_in_the_real_env(tiny_run, tmp_path):
    """One full Pendulum-v1 episode (its 200-step time limit) from raw observations."""
    for fmt in FORMATS:
        policy = load_policy(export_policy(tiny_run, tmp_path / f"policy.{fmt}", format=fmt))
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=0)
        steps, done = 0, False
        while not done:
            action = policy(obs)
            assert env.action_space.contains(action)
            obs, _, terminated, truncated, _ = env.step(action)
            steps, done = steps + 1, terminated or truncated
        assert steps == 200


def test_torchscript_file_runs_without_this_package(tiny_run, tmp_path):
    """A fresh interpreter with only torch: torch.jit.load and call."""
    path = export_policy(tiny_run, tmp_path / "policy.pt")
    code = ("import sys, torch; sys.modules['cql_modules'] = None; m = torch.jit.load(sys.argv[1]); "
            "print(tuple(m(torch.zeros(4, 3)).shape))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(4, 1)"


def test_bad_inputs(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="format must be one of torchscript, onnx"):
        export_policy(tiny_run, tmp_path / "p", format="tflite")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        export_policy(tmp_path / "nothing", tmp_path / "p")
    state = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    state["loss"] = {k: v for k, v in state["loss"].items() if not k.startswith("actor_network.")}
    no_actor = save_checkpoint(state, tmp_path / "no_actor.pt")
    with pytest.raises(ValueError, match="holds no continuous CQL actor"):
        export_policy(no_actor, tmp_path / "p")
    # recipes/evaluate.py on such a checkpoint (e.g. a discrete run's): one line, exit 2
    assert load_recipe("evaluate").main([str(no_actor), "eval.n_episodes=1"]) == 2


# ----------------------------------------------------------------------------- recipes/evaluate.py
def test_evaluate_appends_to_the_summary(tiny_run, tmp_path):
    """The real command line; the run's own seeds: episode 0 repeats its last evaluation."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    before = json.loads((run_dir / "summary.json").read_text())
    out = run_recipe(str(run_dir), "eval.n_episodes=3", cwd=tmp_path, recipe="evaluate.py")
    assert out.stdout.strip().splitlines()[-1].startswith("3 episodes at update 8: normalized_score ")
    load_recipe("evaluate").main([str(run_dir / "checkpoints" / "last.pt"), "eval.n_episodes=2", "num_threads=1"])

    after = json.loads((run_dir / "summary.json").read_text())
    extra = after.pop("reevaluations")
    assert after == before  # the original fields are untouched
    assert [e["n_episodes"] for e in extra] == [3, 2] and all(e["step"] == 8 for e in extra)
    first, second = extra
    assert first["returns"][0] == pytest.approx(before["final_return"], rel=1e-6)
    assert second["returns"] == pytest.approx(first["returns"][:2], rel=1e-6)
    assert first["return_mean"] == pytest.approx(np.mean(first["returns"]))


def test_evaluate_a_fine_tuning_run(tiny_finetune_run, tmp_path, capsys):
    """Its own schema (online fields); the final policy: episode 0 repeats the last evaluation."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_finetune_run, run_dir)
    assert load_recipe("evaluate").main([str(run_dir), "eval.n_episodes=2"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    (record,) = summary["reevaluations"]
    assert record["step"] == 12 and record["returns"][0] == pytest.approx(summary["final_return"], rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["{run}", "loss.cql_alpha=5"], "loss.cql_alpha=5: not an allowed override"),
    (["{run}", "eval.n_episodes=0"], "eval.n_episodes: must be > 0"),
    (["{missing}"], "no checkpoint at"),
])
def test_evaluate_errors_are_one_line(tiny_run, tmp_path, capsys, args, message):
    argv = [a.format(run=tiny_run, missing=tmp_path / "nothing") for a in args]
    assert load_recipe("evaluate").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_evaluate_needs_the_runs_summary(tiny_run, tmp_path, capsys):
    """A checkpoint copied out of its run: nothing to append to, one line, nothing written."""
    (tmp_path / "elsewhere").mkdir()
    lone = shutil.copy(tiny_run / "checkpoints" / "last.pt", tmp_path / "elsewhere" / "last.pt")
    assert load_recipe("evaluate").main([str(lone)]) == 2
    assert "no summary.json in" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["elsewhere", "last.pt"]


def test_a_rewritten_summary_keeps_its_reevaluations(tmp_path):
    """A resumed run rewrites summary.json: the recipes/evaluate.py results stay."""
    from cql_modules.train.run_logger import RunLogger

    (tmp_path / "summary.json").write_text(json.dumps({"status": "preempted", "reevaluations": [{"n_episodes": 100}]}))
    with RunLogger(tmp_path, []) as run_logger:
        run_logger.write_summary({"status": "completed", "updates": 10})
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "status": "completed", "updates": 10, "reevaluations": [{"n_episodes": 100}]}

"""CORL's AntMaze and Adroit fine-tuning presets end to end on tiny local datasets, through
the recipe's real command line: a few hundred offline updates, a few hundred online steps,
tiny networks (the presets' depths: 5-layer AntMaze critics). Checked against hand
computations: the success rate and 100 x success score, the reward modification and the
sparse ``mc_return`` rule of the online rows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from goal_fixtures import PEN_REFS, build_tiny_antmaze, build_tiny_pen

ROOT = Path(__file__).resolve().parents[1]
ANT, PEN = "test/antmaze/tiny-v0", "test/pen/tiny-v0"
GAMMA = 0.99
TINY = ["offline_updates=200", "online_updates=200", "batch_size=32", "network.hidden_dim=16", "loss.num_actions=4",
        "eval.every=200", "eval.n_episodes=2", "logger.every=100", "checkpoint.every=0", "logger.backends=[]",
        "logger.progress=false", "num_threads=1"]


@pytest.fixture(scope="module")
def goal_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        build_tiny_antmaze(ANT)
        build_tiny_pen(PEN)
        yield root


def finetune(run_dir: Path, *overrides: str) -> tuple[dict, list[dict], dict]:
    """Run ``recipes/finetune_cql.py`` as a user types it; (summary, metrics, online rows)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune_cql.py"), *overrides, *TINY,
                          f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final normalized_score" in out.stdout.strip().splitlines()[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = torch.load(run_dir / "checkpoints" / "online_rows.pt", weights_only=True)
    return summary, metrics, rows


def episodes_of(rows: dict) -> list[slice]:
    done = rows["next"]["done"].squeeze(-1).numpy()
    ends = np.flatnonzero(done) + 1
    return [slice(a, b) for a, b in zip(np.r_[0, ends[:-1]], ends)]


@pytest.mark.parametrize("preset", ["cql/antmaze-umaze", "cal_ql/antmaze-umaze"])
def test_antmaze_preset_end_to_end(goal_root, tmp_path, preset):
    summary, metrics, saved = finetune(tmp_path / "run", f"finetune={preset}", f"dataset.name={ANT}")
    c = summary["config"]
    # CORL's AntMaze settings reached the run
    assert (c["network"]["q_n_hidden_layers"], c["loss"]["lagrange"], c["loss"]["target_action_gap"]) == (5, True, 0.8)
    assert (c["loss"]["max_target_backup"], c["loss"]["clip_diff_min"]) == (True, -200.0)
    assert (c["dataset"]["reward_scale"], c["dataset"]["reward_bias"], c["dataset"]["normalize"]) == (10.0, -5.0, False)
    assert summary["status"] == "completed" and summary["online_env_steps"] == 200
    # evaluation: success from info["success"], normalized score = 100 x success (D4RL AntMaze)
    evals = [m for m in metrics if "eval/success_rate" in m]
    assert [m["step"] for m in evals] == [200, 400]
    for m in evals:
        assert m["d4rl_normalized_score"] == pytest.approx(100 * m["eval/success_rate"])
        assert m["eval/return_mean"] == pytest.approx(m["eval/success_rate"])  # sparse 0/1 return, ends at goal
    # online rows: reward x10 - 5 of the sparse reward computed from the goal distance
    rows = saved["rows"]
    n = saved["num_online"]
    assert n > 0 and rows["observation"].shape == (n, 31)
    nxt = rows["next"]["observation"].double().numpy()
    raw = (np.linalg.norm(nxt[:, 0:2] - nxt[:, 2:4], axis=-1) <= 0.45).astype(float)
    np.testing.assert_allclose(rows["next"]["reward"].squeeze(-1).numpy(), 10 * raw - 5)
    # mc_return: the sparse rule for failed episodes, the discounted sum otherwise
    mc = rows["mc_return"].squeeze(-1).double().numpy()
    rewards = 10 * raw - 5
    for ep in episodes_of(rows):
        r = rewards[ep]
        if (r == -5).all():
            expected = np.full(len(r), -5 / (1 - GAMMA))
        else:
            expected = np.array([sum(GAMMA**k * x for k, x in enumerate(r[t:])) for t in range(len(r))])
        np.testing.assert_allclose(mc[ep], expected, rtol=1e-5)
    if preset.startswith("cal_ql"):
        assert saved["mode"] == "mix"


def test_pen_preset_end_to_end(goal_root, tmp_path):
    summary, metrics, saved = finetune(tmp_path / "run", "finetune=cal_ql/pen-cloned", f"dataset.name={PEN}")
    assert summary["status"] == "completed" and summary["config"]["loss"]["calibrated"]
    lo, hi = PEN_REFS
    evals = [m for m in metrics if "eval/success_rate" in m]
    assert len(evals) == 2
    for m in evals:  # success from info["success"]; score from D4RL's pen references
        assert 0.0 <= m["eval/success_rate"] <= 1.0
        assert m["d4rl_normalized_score"] == pytest.approx(100 * (m["eval/return_mean"] - lo) / (hi - lo))
    rows = saved["rows"]
    assert rows["observation"].shape == (saved["num_online"], 45)
    # dense rewards, unmodified: each episode's mc_return is its plain discounted return-to-go
    rewards, mc = rows["next"]["reward"].squeeze(-1).double().numpy(), rows["mc_return"].squeeze(-1).double().numpy()
    for ep in episodes_of(rows):
        r = rewards[ep]
        expected = np.array([sum(GAMMA**k * x for k, x in enumerate(r[t:])) for t in range(len(r))])
        np.testing.assert_allclose(mc[ep], expected, rtol=1e-4)

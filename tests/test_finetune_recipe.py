"""recipes/finetune_cql.py end to end on a tiny dataset: both phases, the switches at the
boundary, replay modes, and resuming at the boundary (bitwise) and inside the online phase."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import pendulum_episode, write_minari
from omegaconf import OmegaConf

from cql_modules.train.state import capture_rng_state, load_checkpoint
from cql_modules.data import keys

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("finetune_cql", ROOT / "recipes" / "finetune_cql.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset_id(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    episodes = [pendulum_episode(6, [-1.0 * (i + 1)] * 6, seed=i) for i in range(4)]
    write_minari("test/finetune-v0", episodes, ref=(-1500.0, -100.0))
    yield "test/finetune-v0"
    mp.undo()


def cfg(dataset_id, *overrides):
    base = {
        "seed": 0, "device": "cpu", "num_updates": 4, "offline_updates": 4, "online_updates": 4, "batch_size": 8,
        "dataset": {"name": dataset_id, "normalize_reward": True},
        "network": {"hidden_dim": 8, "actor_n_hidden_layers": 1, "q_n_hidden_layers": 1},
        "loss": {"num_actions": 2, "calibrated": True, "cql_alpha": 1.0},
        "eval": {"every": 2, "n_episodes": 1, "max_episode_steps": 5},
        "logger": {"every": 2, "backends": [], "progress": False},
        "checkpoint": {"every": 0},
        "online": {"max_episode_steps": 3},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.from_dotlist(list(overrides)))


def records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_offline_then_online_end_to_end(recipe, dataset_id, tmp_path):
    summary = recipe.train(cfg(dataset_id, "online.cql_alpha_online=0.5"), tmp_path)
    assert summary["status"] == "completed" and summary["updates"] == 8
    assert summary["offline_updates"] == 4 and summary["online_updates"] == 4
    assert summary["online_env_steps"] == 4 and summary["online_episodes"] == 1  # 3-step episodes
    assert summary["offline_normalized_score"] == summary["evaluations"][1]["normalized_score"]
    assert summary["final_normalized_score"] is not None and summary["eval_regret"] is not None
    assert summary["train_regret"] is not None

    recs = {r["step"]: r for r in records(tmp_path)}
    assert sorted(recs) == [2, 4, 6, 8]
    assert [recs[s]["train/online"] for s in (2, 4, 6, 8)] == [0.0, 0.0, 1.0, 1.0]
    assert [recs[s]["train/cql_alpha"] for s in (2, 4, 6, 8)] == [1.0, 1.0, 0.5, 0.5]  # switched at the boundary
    assert all("bound_rate_cql_q1_current_actions" in recs[s] for s in (2, 8))  # Cal-QL kept online
    assert "eval/regret" in recs[6] and "eval/regret" not in recs[4]
    assert recs[8]["train/episodes"] == 1.0 and "train/d4rl_normalized_episode_return" in recs[8]

    rows = load_checkpoint(tmp_path / "checkpoints" / "online_rows.pt")
    assert rows["num_online"] == 3 and rows["mode"] == "add"
    assert rows["rows"]["mc_return"].shape == (3, 1)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["extra"]["online"]["progress"]["env_steps"] == 4
    assert (tmp_path / "learning_curve.png").is_file() and (tmp_path / "summary.json").is_file()


def test_mix_mode_and_calibration_off_online(recipe, dataset_id, tmp_path):
    c = cfg(dataset_id, "online.replay=mix", "online.mixing_ratio=0.5", "online.calibrated=false",
            "online.frames_per_batch=2", "online.utd_ratio=1")
    summary = recipe.train(c, tmp_path)
    assert summary["status"] == "completed"
    recs = {r["step"]: r for r in records(tmp_path)}
    assert "bound_rate_cql_q1_current_actions" in recs[4]
    assert "bound_rate_cql_q1_current_actions" not in recs[8]  # CORL: calibration off online
    rows = load_checkpoint(tmp_path / "checkpoints" / "online_rows.pt")
    assert rows["mode"] == "mix" and rows["num_online"] == 3


def _same_state(a, b):
    for key in ("loss", "optimizer", "update_step", "rng"):
        assert _equal(a[key], b[key]), key
    assert a["extra"]["online"] == b["extra"]["online"]


def _equal(x, y):
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    return x == y


def test_resume_at_the_boundary_is_exact(recipe, dataset_id, tmp_path):
    """Offline phase done and checkpointed, then resumed for the online phase: the same
    parameters, optimizer, RNG, online rows and counters as an uninterrupted run."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    recipe.train(cfg(dataset_id), straight)
    recipe.train(cfg(dataset_id, "online_updates=0"), split)  # stops at the boundary
    summary = recipe.train(cfg(dataset_id, "resume=true"), split)
    assert summary["updates"] == 8
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    _same_state(a, b)
    rows_a = load_checkpoint(straight / "checkpoints" / "online_rows.pt")
    rows_b = load_checkpoint(split / "checkpoints" / "online_rows.pt")
    assert _equal(rows_a, rows_b)

    def timeless(rs):
        return [{k: v for k, v in r.items() if "per_s" not in k and "seconds" not in k} for r in rs]

    assert timeless(records(straight)) == timeless(records(split))


def test_resume_inside_the_online_phase(recipe, dataset_id, tmp_path):
    """Mid-online: parameters, optimizer, buffer (online rows), counters and RNG come back
    exactly; the environment restarts a fresh episode (the unfinished one is dropped), so the
    continuation is not bitwise that of an uninterrupted run."""
    recipe.train(cfg(dataset_id), tmp_path)  # offline 4 + online 4, checkpoint at update 8
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    saved_rows = load_checkpoint(tmp_path / "checkpoints" / "online_rows.pt")

    run = recipe.setup(cfg(dataset_id, "online_updates=8", "resume=true"), tmp_path)
    run.run_logger.close()
    online = run.hooks
    assert run.update.n_steps == 8 and online.replay.num_online == saved_rows["num_online"] == 3
    assert _equal(run.loss.state_dict(), saved["loss"])
    assert _equal(run.update.optimizer.state_dict(), saved["optimizer"])
    assert online.progress.state_dict() == saved["extra"]["online"]["progress"]
    n_off = online.replay.num_offline
    stored = online.replay.storage.get(torch.arange(n_off, n_off + 3)).select(*keys.TRANSITION_KEYS)
    assert _equal(stored.to_dict(), saved_rows["rows"])
    assert torch.equal(capture_rng_state()["torch"], saved["rng"]["torch"])

    summary = recipe.train(cfg(dataset_id, "online_updates=8", "resume=true"), tmp_path)
    assert summary["updates"] == 12 and summary["online_env_steps"] == 8
    rows = load_checkpoint(tmp_path / "checkpoints" / "online_rows.pt")
    assert rows["num_online"] >= 3
    assert _equal({k: v[:3] if not isinstance(v, dict) else {kk: vv[:3] for kk, vv in v.items()}
                   for k, v in rows["rows"].items()}, saved_rows["rows"])  # the old rows kept, in order
    steps = [r["step"] for r in records(tmp_path)]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_every_preset_composes_and_validates(recipe):
    """configs/finetune_cql.yaml with each preset of configs/finetune/ (a preset selects its
    dataset with `override /dataset`) gives a valid config."""
    from hydra import compose, initialize_config_dir

    from cql_modules.online import validate_finetune_config

    base = ROOT / "configs" / "finetune"
    presets = sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")
                     if not p.name.startswith("_"))
    assert {"pendulum", "default", "cql/antmaze-umaze", "cal_ql/antmaze-umaze", "cql/pen-cloned",
            "cal_ql/relocate-cloned"} <= set(presets)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        for preset in presets:
            c = validate_finetune_config(compose("finetune_cql", overrides=[f"finetune={preset}"]), check_dataset=False)
            if preset.startswith(("cql/", "cal_ql/")):
                assert c.dataset.name.startswith("D4RL/") and c.n_offline == c.online_updates == 1_000_000
                assert (c.online.replay == "mix") == preset.startswith("cal_ql/") == c.loss.calibrated
            if "antmaze" in preset:
                assert (c.loss.cql_alpha, c.online.cql_alpha_online, c.dataset.reward_scale) == (5.0, 5.0, 10.0)
        default = compose("finetune_cql")
        c = validate_finetune_config(default, check_dataset=False)
        assert c.dataset.name == "cql-modules/pendulum/mixed-v0" and c.online_updates > 0

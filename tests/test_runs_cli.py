"""Runs you can trust (issue 11, cases 1, 2, 4-9, 13): the recipe's real command line
(``@hydra.main`` + :func:`cql_modules.train.cli.guarded`), called in-process on tiny runs.

Each test reproduces one case of the issue; the number is in the test's name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import ROOT, run_recipe, tiny_overrides

from cql_modules.train.cli import EXIT_CODES
from cql_modules.train.run_logger import read_metrics
from cql_modules.train.state import load_checkpoint, previous_checkpoint

pytest_plugins = ("run_fixtures",)  # minari_root, offline_recipe and the in-process `cli`

SHORT = tiny_overrides(num_updates=4, **{"logger.every": 2, "eval.every": 4, "checkpoint.every": 2})
KEPT_FILES = ("summary.json", "learning_curve.png", "metrics.jsonl", "run_config.yaml", "checkpoints/last.pt")


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every run file's bytes; not Hydra's own (``.hydra/``, the job log) nor the launch record."""
    files = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert set(KEPT_FILES) <= set(files)
    return {k: v for k, v in files.items() if not k.startswith(".hydra") and not k.endswith((".log", "launches.jsonl"))}


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]


def untimed(records: list[dict]) -> list[dict]:
    """Metric records without the clock's readings (speed, durations)."""
    return [{k: v for k, v in r.items() if not k.endswith(("per_s", "seconds", "time_s"))} for r in records]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def done(cli, tmp_path) -> Path:
    """A completed tiny run (4 updates, checkpoints at 2 and 4)."""
    run_dir = tmp_path / "run"
    code, err = cli(*SHORT, "network.hidden_dim=6", "logger.backends=[csv,tensorboard]", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    return run_dir


def test_case1_resume_restores_the_runs_own_config(cli, done):
    code, err = cli("resume=true", f"hydra.run.dir={done}", "num_updates=6")  # as the README says, plus a longer run
    assert code == 0, err
    s = summary(done)
    assert s["status"] == "completed" and s["updates"] == 6
    assert s["config"]["network"]["hidden_dim"] == 6 and s["config"]["num_updates"] == 6  # what was used
    assert steps(done) == [2, 4, 6]
    launches = [json.loads(ln) for ln in (done / "launches.jsonl").read_text().splitlines()]
    assert launches[-1]["changed"] == {"num_updates": [4, 6]}


def test_case2_and_case4_changed_hyperparameters_are_refused_and_nothing_is_touched(cli, done):
    before = snapshot(done)
    code, err = cli("resume=true", f"hydra.run.dir={done}", "loss.cql_alpha=50", "optim.critic_lr=0.01", "seed=7")
    assert code == EXIT_CODES["config"] and len(err) == 1, err
    for field in ("loss.cql_alpha: saved", "requested 50.0", "optim.critic_lr", "seed: saved 0, requested 7"):
        assert field in err[0]
    assert snapshot(done) == before


def test_case4_a_failed_resume_leaves_the_run_as_it_was(cli, done):
    for path in (done / "checkpoints" / "last.pt", previous_checkpoint(done / "checkpoints" / "last.pt")):
        path.write_bytes(path.read_bytes()[:100])  # both checkpoints truncated
    before = snapshot(done)
    code, err = cli("resume=true", f"hydra.run.dir={done}", "num_updates=6")
    assert code == EXIT_CODES["checkpoint"] and len(err) == 1 and "corrupt" in err[0], err
    assert snapshot(done) == before and summary(done)["status"] == "completed"


def test_case5_a_new_run_never_overwrites_a_run(cli, done):
    before = snapshot(done)
    code, err = cli(*SHORT, f"hydra.run.dir={done}")
    assert code == EXIT_CODES["run_dir"] and len(err) == 1 and "resume=true" in err[0], err
    assert snapshot(done) == before and load_checkpoint(done / "checkpoints" / "last.pt")["step"] == 4


def test_case5_a_run_dir_in_use_by_another_process_is_refused(cli, done):
    import fcntl

    before = snapshot(done)
    with open(done / ".lock", "a") as lock:  # what a running launch holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, err = cli("resume=true", f"hydra.run.dir={done}", "num_updates=6")
    assert code == EXIT_CODES["run_dir"] and len(err) == 1 and "in use by another process" in err[0], err
    assert snapshot(done) == before


def test_case6_resume_without_a_checkpoint_starts_clean_and_logs_each_step_once(cli, tmp_path):
    run_dir = tmp_path / "run"
    assert cli(*SHORT, "logger.backends=[csv]", f"hydra.run.dir={run_dir}")[0] == 0
    logged = read_metrics(run_dir / "metrics.jsonl")
    for path in (run_dir / "checkpoints").iterdir():  # as if killed before the first checkpoint
        path.unlink()
    (run_dir / "summary.json").unlink()
    code, err = cli("resume=true", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert steps(run_dir) == [2, 4]
    for csv in (run_dir / "csv").glob("**/*.csv"):
        rows = [int(float(ln.split(",")[0])) for ln in csv.read_text().splitlines()]
        assert rows == sorted(set(rows)), csv
    assert untimed(read_metrics(run_dir / "metrics.jsonl")) == untimed(logged)  # the same run, from scratch


def test_case7_a_corrupt_checkpoint_is_named_and_the_previous_one_is_used(cli, done):
    last = done / "checkpoints" / "last.pt"
    assert load_checkpoint(previous_checkpoint(last))["step"] == 2  # the previous checkpoint is kept
    last.write_bytes(last.read_bytes()[:1000])
    code, err = cli("resume=true", f"hydra.run.dir={done}", "num_updates=6")
    assert code == 0, err
    said = [ln for ln in (done / "offline_cql.log").read_text().splitlines() if "WARNING" in ln]  # Hydra's job log
    assert len(said) == 1 and "is corrupt" in said[0]
    assert "resuming from the previous checkpoint" in said[0] and "(update 2)" in said[0]
    assert steps(done) == [2, 4, 6] and summary(done)["updates"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_case8_an_unavailable_device_is_refused_before_any_data_is_loaded(cli, tmp_path):
    # a dataset that does not exist: had anything looked at the data first, it would be the error
    code, err = cli(*SHORT, "device=cuda", "dataset.name=no-such/dataset-v0", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_CODES["environment"] and len(err) == 1 and "device=cpu" in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_case8_the_library_checks_the_device_too():
    """``setup_run`` / ``resolve_device`` called from Python run the same check as the command line."""
    from types import SimpleNamespace

    from cql_modules.train.build import resolve_device, setup_run
    from cql_modules.train.cli import EnvironmentProblem

    with pytest.raises(EnvironmentProblem, match="CUDA is not available.*use device=cpu"):
        setup_run(SimpleNamespace(num_threads=0, seed=0, device="cuda"))
    with pytest.raises(EnvironmentProblem, match="^device=cuda:1: CUDA is not available"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["offline_cql", "finetune_cql", "discrete_cql"])
def test_case9_every_recipe_exits_2_on_hydras_own_command_line_errors(name, cli, tmp_path):
    code, err = cli("loss.cql_alph=5", f"hydra.run.dir={tmp_path / 'run'}", recipe=name)
    assert code == EXIT_CODES["config"] and any("loss.cql_alph" in line for line in err)
    assert not (tmp_path / "run").exists()


def test_case9_unknown_keys_are_refused_also_when_added_with_plus(cli, tmp_path):
    code, err = cli(*SHORT, "+loss.cql_alph=5", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_CODES["config"] and len(err) == 1, err
    assert "loss.cql_alph" in err[0] and "loss.cql_alpha?" in err[0]
    code, err = cli(*SHORT, "loss.cql_alph=5", f"hydra.run.dir={tmp_path / 'run2'}")  # Hydra's own refusal
    assert code == EXIT_CODES["config"] and "loss.cql_alph" in err[0] and not (tmp_path / "run2").exists()


@pytest.mark.parametrize("override, kind", [
    ("batch_size=-1", "config"),
    ("dataset.name=no-such/dataset-v0", "data"),
    ("dataset.name={hdf5}", "data"),
])
def test_case13_errors_inside_a_run_are_one_line_with_their_exit_code(cli, tmp_path, override, kind):
    broken = tmp_path / "broken.hdf5"
    broken.write_bytes(b"not an hdf5 file")
    run_dir = tmp_path / "run"
    code, err = cli(*SHORT, override.format(hdf5=broken), f"hydra.run.dir={run_dir}")
    assert code == EXIT_CODES[kind] and len(err) == 1 and "Traceback" not in err[0], err
    assert summary(run_dir)["status"] == "failed"
    assert cli(*SHORT, f"hydra.run.dir={run_dir}")[0] == 0  # a failed start holds no run: the dir can be reused


def test_case13_the_traceback_comes_back_with_hydra_full_error(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    code, err = cli(*SHORT, "batch_size=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == EXIT_CODES["config"] and "Traceback (most recent call last):" in err and len(err) > 3


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_diverged_run_exits_with_its_own_code(cli, tmp_path):
    run_dir = tmp_path / "run"
    code, err = cli(*SHORT, "dataset.reward_scale=1e38", f"hydra.run.dir={run_dir}")  # rewards overflow to inf
    assert code == EXIT_CODES["diverged"] and summary(run_dir)["status"] == "diverged", err
    assert any(line.startswith("stopped: non-finite") for line in err)


def test_resume_config_rules(offline_recipe):  # imported: it registers the config schema
    """The saved values win; named resumable fields change; a group override is compared
    field by field; a saved config the schema no longer fits is refused, not half-loaded."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cql_modules.train.cli import ResumeConfigError, resume_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        requested = compose("offline_cql", overrides=["num_updates=7", "dataset=hopper-medium-v2"])
        saved = compose("offline_cql", overrides=["network.hidden_dim=32"])
    config, changed = resume_config(saved, requested, ["num_updates"])
    assert config.network.hidden_dim == 32 and config.num_updates == 7 and config.resume
    assert config.dataset.name == saved.dataset.name and changed == {"num_updates": (saved.num_updates, 7)}
    with pytest.raises(ResumeConfigError, match=r"dataset.name: saved '.*', requested 'hopper-medium-v2'"):
        resume_config(saved, requested, ["dataset"])
    old = OmegaConf.create(OmegaConf.to_container(saved))
    old.network.width = 3  # a field this version does not have
    with pytest.raises(ResumeConfigError, match="does not fit this version's schema"):
        resume_config(old, requested, [])


def test_case9_the_library_refuses_unknown_keys_too():
    from hydra import compose, initialize_config_dir

    from cql_modules.train.config import ConfigError, OfflineConfig, validate_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("offline_cql", overrides=["+loss.cql_alph=5"])
    with pytest.raises(ConfigError, match=r"loss\.cql_alph \(did you mean loss\.cql_alpha\?\)"):
        validate_config(cfg, check_dataset=False)
    with pytest.raises(ConfigError, match=r"netwrk \(did you mean network\?\)"):  # a plain dict, checked by schema
        validate_config({"netwrk": {"hidden_dim": 8}}, OfflineConfig, check_dataset=False)


def test_ctrl_c_saves_and_exits_130(cli, tmp_path, monkeypatch):
    from cql_modules.train.loop import RunEngine

    def ctrl_c(engine, n):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunEngine, "updates", ctrl_c)
    run_dir = tmp_path / "run"
    code, err = cli(*SHORT, f"hydra.run.dir={run_dir}")
    assert code == EXIT_CODES["interrupted"] and summary(run_dir)["status"] == "interrupted"
    assert err[-1].startswith("interrupted: rerun the same command with resume=true")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 0


@pytest.fixture(scope="module")
def online_run(minari_root, tmp_path_factory) -> Path:
    """A tiny fine-tuning run whose last two checkpoints (updates 12 and 16) both have online rows."""
    run_dir = tmp_path_factory.mktemp("runs") / "online"
    run_recipe(*tiny_overrides(), "offline_updates=4", "online_updates=12", "online.max_episode_steps=2",
               f"hydra.run.dir={run_dir}", cwd=run_dir.parent, recipe="finetune_cql.py")
    return run_dir


@pytest.mark.parametrize("damage, said", [
    ({"online_rows.pt": "truncate"}, "online_rows.pt is corrupt"),
    ({"online_rows.pt": "online_rows.prev.pt"}, "does not hold the online rows of checkpoint"),  # older rows
    ({"last.pt": "truncate", "online_rows.prev.pt": "truncate"}, None),  # last.prev.pt's own rows are gone
])
def test_case7_fine_tuning_falls_back_to_the_previous_checkpoint_with_its_own_online_rows(
        online_run, cli, tmp_path, damage, said):
    """The online rows are part of their checkpoint: unusable rows make the resume use the
    previous checkpoint with the previous rows (one warning), never one checkpoint with the
    other's rows; with no usable pair the resume stops with one line (exit 4), touching nothing."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(online_run, run_dir)
    ckpt = run_dir / "checkpoints"
    prev_step = load_checkpoint(ckpt / "last.prev.pt")["step"]
    assert load_checkpoint(ckpt / "online_rows.prev.pt")["num_online"] < load_checkpoint(ckpt / "online_rows.pt")["num_online"]
    for name, how in damage.items():
        (ckpt / name).write_bytes((ckpt / name).read_bytes()[:1000] if how == "truncate" else (ckpt / how).read_bytes())
    before = snapshot(run_dir)
    job_log = run_dir / "finetune_cql.log"
    logged = job_log.read_text().count("\n")

    code, err = cli("resume=true", f"hydra.run.dir={run_dir}", "online_updates=16", recipe="finetune_cql")
    if said is None:
        assert code == EXIT_CODES["checkpoint"] and len(err) == 1 and "online_rows.prev.pt" in err[0], err
        assert snapshot(run_dir) == before
        return
    assert code == 0, err
    warnings = [ln for ln in job_log.read_text().splitlines()[logged:] if "WARNING" in ln]
    assert len(warnings) == 1 and said in warnings[0], warnings
    assert f"resuming from the previous checkpoint {ckpt / 'last.prev.pt'} (update {prev_step})" in warnings[0]
    assert steps(run_dir) == sorted(set(steps(run_dir))) and summary(run_dir)["updates"] == 20

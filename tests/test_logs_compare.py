"""Logs researchers compare: hyper-parameters logged as such (TensorBoard's HParams in the
run's own event file, with the evaluation metrics declared; the W&B run's config) and the
learning-curve image logged at the end (TensorBoard image, W&B media)."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cql_modules.train.run_logger import HPARAM_METRICS, RunLogger

CONFIG = {"seed": 3, "loss": {"cql_alpha": 5.0, "clip_diff_min": float("-inf")}, "dataset": {"name": "x/y-v0"},
          "logger": {"backends": ["tensorboard", "wandb"]}}


@pytest.fixture
def logged(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_logger = RunLogger(tmp_path, ["tensorboard", "wandb"], exp_name="run", config=CONFIG)
    run_logger.log({"loss_qvalue": 1.0}, 2)
    run_logger.log({"loss_qvalue": 0.5, "d4rl_normalized_score": 42.0}, 4)
    assert run_logger.plot(title="t") == tmp_path / "learning_curve.png"
    wandb_config = dict(run_logger.loggers["wandb"].experiment.config)
    run_logger.close()
    return tmp_path, wandb_config


def test_tensorboard_hparams_and_image_in_the_runs_own_event_file(logged):
    run_dir, _ = logged
    (run,) = [p.parent for p in (run_dir / "tensorboard").glob("**/events.out.tfevents.*")]  # one run, no sub-run
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["loss.cql_alpha"].number_value == 5.0 and start.hparams["seed"].number_value == 3
    assert start.hparams["dataset.name"].string_value == "x/y-v0"
    assert start.hparams["loss.clip_diff_min"].string_value == "-inf"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert [s.step for s in events.Scalars("d4rl_normalized_score")] == [4]  # the declared metric's values
    (image,) = events.Images("learning_curve")
    assert image.step == 4 and image.width == 600 and image.height == 400


def test_wandb_config_and_image(logged):
    run_dir, config = logged
    assert config["loss"]["cql_alpha"] == 5.0 and config["seed"] == 3 and config["dataset"]["name"] == "x/y-v0"
    (run,) = run_dir.glob("wandb/offline-run-*")  # offline unless asked
    assert list(run.glob("files/media/images/learning_curve_*.png"))

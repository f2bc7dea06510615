"""Offline Conservative Q-Learning, end to end.

    python recipes/offline_cql.py                                   # embedded Pendulum dataset, minutes on a CPU
    python recipes/offline_cql.py dataset=hopper-medium-v2 seed=3   # CORL's tuned D4RL setup
    python recipes/offline_cql.py loss.cql_alpha=5 optim.critic_lr=1e-4 logger.backends=[wandb]
    python recipes/offline_cql.py --multirun seed=0,1,2 dataset=hopper-medium-v2,walker2d-medium-v2
    python recipes/offline_cql.py resume=true hydra.run.dir=<run dir>   # continue a stopped run

Config: configs/offline_cql.yaml + a preset of configs/dataset/; every field (see
``cql_modules.train.config.OfflineConfig``) can be overridden on the command line.
Outputs (Hydra's run dir): metrics.jsonl, summary.json, learning_curve.png,
checkpoints/last.pt, and the csv/tensorboard/wandb logs.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cql_modules.train.build import build_learner, load_data, setup_run
from cql_modules.train.cli import hydra_entry
from cql_modules.train.config import register_configs, validate_config
from cql_modules.train.loop import RunEngine
from cql_modules.train.summary import fmt
from cql_modules.train.update import UpdateStep

log = logging.getLogger("offline_cql")
register_configs()


def train(cfg, run_dir: str | Path) -> dict:
    """Run offline CQL with config ``cfg`` in ``run_dir``; return the summary dict."""
    c = validate_config(cfg)  # fails here, naming the field, on any invalid value
    device = setup_run(c)  # seeds torch / numpy / python, sets torch's threads, picks the device

    # 1. Data: a replay buffer of (normalized) transitions; the evaluation env applies the
    #    same observation normalization.
    rb, info = load_data(c, device)
    log.info("dataset %s: %d transitions, behaviour normalized score %s", info.name, info.num_transitions,
             fmt(info.behaviour_score))

    # 2. Networks, the CQL loss and the update step (one backward, one Adam step, Polyak targets).
    actor, loss, update = build_learner(c, info, device, update_cls=UpdateStep)

    # 3. Train: batches sampled uniformly from the dataset, one update each. The engine runs
    #    `logger.every` updates without a host sync, then logs (CORL's metric names) and checks
    #    for NaN/inf; evaluates every `eval.every` updates; checkpoints; resumes with
    #    resume=true; keeps the last good state on NaN, Ctrl-C or preemption.
    engine = RunEngine(c, run_dir, info, actor, loss, update, sample=rb.sample, replay_buffer=rb, device=device)
    return engine.run(c.num_updates, desc="offline CQL").finish()


main = hydra_entry(train, "offline_cql")  # one-line errors with exit codes, resume from the run's own config, SIGTERM = Ctrl-C

if __name__ == "__main__":
    main()

"""Offline-to-online fine-tuning with CQL or Cal-QL, end to end.

    python recipes/finetune_cql.py                                  # embedded Pendulum dataset, minutes on a CPU
    python recipes/finetune_cql.py finetune=cal_ql/antmaze-umaze    # CORL's Cal-QL AntMaze run (gymnasium-robotics)
    python recipes/finetune_cql.py online.replay=mix online.mixing_ratio=0.25 online.utd_ratio=2
    python recipes/finetune_cql.py resume=true hydra.run.dir=<run dir>   # continue, in either phase

Phase 1 (``offline_updates``): offline CQL exactly as ``recipes/offline_cql.py``. Phase 2
(``online_updates``): a TorchRL ``Collector`` runs the stochastic policy in the dataset's
environment (same state normalization, same reward modification), finished episodes get
their Monte-Carlo returns and join the replay (``online.replay``: ``add`` = CORL's single
buffer, ``mix`` = Cal-QL's fixed offline/online ratio), ``online.utd_ratio`` updates per
environment step, the CQL weight switched to ``online.cql_alpha_online`` at the boundary and
Cal-QL's calibration kept (``online.calibrated=true``, the original Cal-QL) or dropped
(``false``, CORL). The deterministic policy is evaluated every ``eval.every`` updates in both
phases, on its own environment and seeds.

Outputs (Hydra's run dir): metrics.jsonl, summary.json (offline and final scores, regrets),
learning_curve.png, checkpoints/last.pt + checkpoints/online_rows.pt, csv/tensorboard/wandb.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cql_modules.online import OnlineReplay, register_finetune_configs, validate_finetune_config
from cql_modules.online.phase import OnlinePhase
from cql_modules.train.build import build_learner, load_data, setup_run
from cql_modules.train.cli import hydra_entry
from cql_modules.train.loop import RunEngine
from cql_modules.train.summary import fmt

log = logging.getLogger("finetune_cql")
register_finetune_configs()


def setup(cfg, run_dir: str | Path) -> RunEngine:
    """Validate the config, load the data, build the networks and the online phase and, with
    ``resume=true``, restore the last checkpoint (parameters, optimizer, counters, RNG, online rows)."""
    c = validate_finetune_config(cfg)
    device = setup_run(c)  # seeds, torch threads, device

    # 1. Data: the offline buffer, with room for the online rows ("add") or beside an online
    #    buffer ("mix").
    rb, info = load_data(c, device)
    replay = OnlineReplay(rb, mode=c.online.replay, mixing_ratio=c.online.mixing_ratio,
                          online_capacity=c.online.buffer_capacity or max(c.online_env_steps, 1),
                          batch_size=c.batch_size, device=device)
    log.info("dataset %s: %d transitions, behaviour normalized score %s", info.name, info.num_transitions,
             fmt(info.behaviour_score))

    # 2. Networks, the CQL loss and the update step, as offline.
    actor, loss, update = build_learner(c, info, device)

    # 3. From update `n_offline` on, each interval first collects: F env steps with the stochastic
    #    policy, finished episodes -> mc_return -> replay, then F * utd_ratio updates.
    online = OnlinePhase(c, info, actor, loss, replay, device)
    return RunEngine(c, run_dir, info, actor, loss, update, sample=replay.sample, replay_buffer=replay.buffer,
                     device=device, hooks=online)


def train(cfg, run_dir: str | Path) -> dict:
    """Run offline-to-online fine-tuning with config ``cfg`` in ``run_dir``; return the summary."""
    engine = setup(cfg, run_dir)
    c = engine.c
    return engine.run(c.total_updates, boundaries=(c.n_offline,), desc="finetune CQL").finish()


main = hydra_entry(train, "finetune_cql")  # one-line errors with exit codes, resume from the run's own config, SIGTERM = Ctrl-C

if __name__ == "__main__":
    main()

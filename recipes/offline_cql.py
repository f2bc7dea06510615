"""Offline Conservative Q-Learning, end to end.

    python recipes/offline_cql.py                                   # embedded Pendulum dataset, minutes on a CPU
    python recipes/offline_cql.py dataset=hopper-medium-v2 seed=3   # CORL's tuned D4RL setup
    python recipes/offline_cql.py loss.cql_alpha=5 optim.critic_lr=1e-4 logger.backends=[wandb]
    python recipes/offline_cql.py --multirun seed=0,1,2 dataset=hopper-medium-v2,walker2d-medium-v2
    python recipes/offline_cql.py resume=true hydra.run.dir=<run dir>   # continue a stopped run

Config: configs/offline_cql.yaml + a preset of configs/dataset/; every field (see
``cql_modules.training.OfflineConfig``) can be overridden on the command line.
Outputs (Hydra's run dir): metrics.jsonl, summary.json, learning_curve.png,
checkpoints/last.pt, and the csv/tensorboard/wandb logs.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cql_modules import training as T
from cql_modules.train.evaluation import evaluate
from cql_modules.train.run_logger import record_failure
from cql_modules.train.update import UpdateStep

log = logging.getLogger("offline_cql")
T.register_configs()


def train(cfg, run_dir: str | Path) -> dict:
    """Run offline CQL with config ``cfg`` in ``run_dir``; return the summary dict."""
    start_time = time.perf_counter()
    c = T.validate_config(cfg)  # fails here, naming the field, on any invalid value
    run_dir = Path(run_dir)
    device = T.setup_run(c)  # seeds torch / numpy / python, sets torch's threads, picks the device

    # 1. Data: a replay buffer of (normalized) transitions, and an evaluation env that
    #    applies the same observation normalization (None with eval.every=0).
    rb, info = T.load_data(c, device)
    env = T.make_eval_env(c, info, device)
    eval_seed, refs, behaviour = c.seed + c.eval.seed_offset, T.ref_scores(info), info.behaviour_score
    log.info("dataset %s: %d transitions, behaviour normalized score %s", info.name, info.num_transitions,
             T.fmt(behaviour))

    # 2. Networks, loss and the update step (one backward, one Adam step, Polyak targets).
    actor, loss, update = T.build_learner(c, info, device, update_cls=UpdateStep)

    # 3. Logging, and resuming from the last checkpoint when asked.
    ckpt_path = run_dir / c.checkpoint.dir / "last.pt"
    run_logger, saved, resume_from = T.open_run(c, run_dir, info, loss, update, replay_buffer=rb)
    history = saved["history"] if saved else {"evals": [], "wall_time": 0.0, "train_time": 0.0}
    if resume_from:
        log.info("resumed from %s at update %d", resume_from, update.n_steps)
    wall_before = history["wall_time"]

    def snapshot() -> dict:
        history["wall_time"] = wall_before + time.perf_counter() - start_time
        return T.run_state(c, info, loss, update, history=history, run_logger=run_logger, replay_buffer=rb)

    # 4. The loop: `logger.every` updates with no host sync, then one sync for the metrics
    #    and the NaN/inf guard; an evaluation every `eval.every` updates; checkpoints only
    #    of states whose interval was finite.
    aggregator, last_good = T.MetricAggregator(), T.LastGoodState()
    aggregator.reset(update.n_steps)
    last_good.keep(snapshot)
    status, message = "completed", None
    bar = tqdm(total=c.num_updates, initial=update.n_steps, unit="upd", desc="offline CQL",
               disable=not c.logger.progress, dynamic_ncols=True, mininterval=0.5)
    try:
        while update.n_steps < c.num_updates:
            n_updates = min(c.logger.every - update.n_steps % c.logger.every, c.num_updates - update.n_steps)
            tick = time.perf_counter()
            T.run_updates(update, rb.sample, n_updates, aggregator, device=device, on_update=bar.update)
            metrics = aggregator.flush()  # one host sync; raises NonFiniteLossError
            elapsed, step = time.perf_counter() - tick, update.n_steps
            history["train_time"] += elapsed
            metrics["train/updates_per_s"] = n_updates / elapsed
            if c.eval.every and (step % c.eval.every == 0 or step == c.num_updates):
                with T.preserve_rng(rb):  # evaluating never moves the training random streams
                    result = evaluate(env, actor, c.eval.n_episodes, seed=eval_seed,
                                      max_steps=c.eval.max_episode_steps, ref_scores=refs)
                metrics.update(result.metrics())
                history["evals"].append({"step": step, "normalized_score": result.normalized_mean,
                                         "return_mean": result.return_mean})
                bar.set_postfix(score=f"{result.score:.1f}", refresh=False)
            run_logger.log(metrics, step)
            last_good.keep(snapshot)
            if (c.checkpoint.every and step % c.checkpoint.every == 0) or step == c.num_updates:
                T.save_checkpoint(last_good.state, ckpt_path)
    except T.NonFiniteLossError as err:  # stop, keeping the last good state
        status, message = "diverged", f"stopped: {err}"
    except KeyboardInterrupt:  # Ctrl-C: keep the last good state, then stop
        status, message = "interrupted", f"interrupted after update {update.n_steps}"
    finally:
        bar.close()
    if status != "completed":
        T.save_checkpoint(last_good.state, ckpt_path)
        message += f"; last good state (update {last_good.step}) saved to {ckpt_path}"

    # 5. Summary, learning curve, final line.
    history["wall_time"] = wall_before + time.perf_counter() - start_time
    summary = T.make_summary(c, info, history, updates=update.n_steps, status=status, message=message,
                             checkpoint=ckpt_path, run_dir=run_dir)
    run_logger.write_summary(summary)
    run_logger.plot(title=f"CQL on {info.name}", reference_lines={"behaviour policy (dataset mean)": behaviour,
                                                                  "expert reference": 100.0 if refs else None})
    run_logger.close()
    if message:
        print(message, file=sys.stderr)
    if status == "interrupted":
        raise KeyboardInterrupt
    print(f"final normalized_score: {T.fmt(summary['final_normalized_score'])}")
    return summary


@hydra.main(config_path="../configs", config_name="offline_cql", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = train(cfg, run_dir)
    except Exception as err:  # e.g. an invalid config: the run dir still gets its summary
        record_failure(run_dir, err, cfg)
        raise
    if summary["status"] != "completed" and HydraConfig.get().mode.name == "RUN":
        sys.exit(1)
    return summary["final_normalized_score"]  # the objective for Hydra sweepers


if __name__ == "__main__":
    main()

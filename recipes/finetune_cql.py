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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cql_modules import CQLLoss
from cql_modules import online as O
from cql_modules import training as T
from cql_modules.train.evaluation import env_success_keys, evaluate, score_regret
from cql_modules.train.run_logger import RunLogger
from cql_modules.train.update import UpdateStep

log = logging.getLogger("finetune_cql")
O.register_finetune_configs()
ONLINE_ROWS_FILE = "online_rows.pt"


@dataclass
class Run:
    """Everything a run holds once set up (and, with ``resume``, restored)."""

    c: O.FinetuneConfig
    run_dir: Path
    device: torch.device
    info: Any
    replay: O.OnlineReplay
    eval_env: Any
    actor: Any
    loss: CQLLoss
    update: UpdateStep
    run_logger: RunLogger
    history: dict
    progress: O.OnlineProgress
    resume_from: Optional[Path]
    success_keys: tuple = ()  #: the info keys in which the evaluation env reports success

    @property
    def refs(self) -> tuple[float, float] | None:
        return T.ref_scores(self.info)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / self.c.checkpoint.dir


def setup(cfg, run_dir: str | Path) -> Run:
    """Validate the config, load the data, build the networks and, with ``resume=true``,
    restore the last checkpoint (parameters, optimizer, counters, RNG, online rows)."""
    c = O.validate_finetune_config(cfg)
    run_dir = Path(run_dir)
    device = T.setup_run(c)  # seeds, torch threads, device

    # Data (the offline buffer, with room for the online rows in "add" mode), evaluation env,
    # networks / loss / update step: the offline recipe's pieces.
    rb, info = T.load_data(c, device)
    replay = O.OnlineReplay(rb, mode=c.online.replay, mixing_ratio=c.online.mixing_ratio,
                            online_capacity=c.online.buffer_capacity or max(c.online_env_steps, 1),
                            batch_size=c.batch_size, device=device)
    eval_env = T.make_eval_env(c, info, device)
    success_keys = env_success_keys(info) if eval_env is not None else ()
    log.info("dataset %s: %d transitions, behaviour normalized score %s", info.name, info.num_transitions,
             T.fmt(info.behaviour_score))
    actor, loss, update = T.build_learner(c, info, device)

    # Logging and resuming (either phase): the online counters and rows come back too.
    run_logger, extra, resume_from = T.open_run(c, run_dir, info, loss, update, replay_buffer=replay.buffer)
    history = {"evals": [], "wall_time": 0.0, "train_time": 0.0, "offline_score": None}
    progress = O.OnlineProgress()
    if extra is not None:
        history, online_state = extra["history"], extra["online"]
        progress = O.OnlineProgress.from_state_dict(online_state["progress"])
        if online_state["num_online"]:
            rows = T.load_checkpoint(resume_from.parent / ONLINE_ROWS_FILE)
            replay.load_state_dict(rows, num_online=online_state["num_online"])
        log.info("resumed from %s at update %d (%d online rows)", resume_from, update.n_steps, replay.num_online)
    return Run(c, run_dir, device, info, replay, eval_env, actor, loss, update, run_logger, history, progress,
               resume_from, success_keys)


def train(cfg, run_dir: str | Path) -> dict:
    """Run offline-to-online fine-tuning with config ``cfg`` in ``run_dir``; return the summary."""
    start_time = time.perf_counter()
    r = setup(cfg, run_dir)
    c, info, replay, loss, update, actor, progress, history = (r.c, r.info, r.replay, r.loss, r.update, r.actor,
                                                                r.progress, r.history)
    device, refs, run_logger, ckpt_path = r.device, r.refs, r.run_logger, r.ckpt_dir / "last.pt"
    n_offline, total = c.n_offline, c.total_updates
    eval_seed = c.seed + c.eval.seed_offset
    wall_before = history["wall_time"]

    def snapshot() -> dict:
        history["wall_time"] = wall_before + time.perf_counter() - start_time
        return T.run_state(c, info, loss, update, history=history, run_logger=run_logger,
                           replay_buffer=replay.buffer,
                           online={"progress": progress.state_dict(), "num_online": replay.num_online})

    def save(state: dict) -> None:
        n_rows = state["extra"]["online"]["num_online"]
        if n_rows:  # the online rows first: last.pt never points at rows that are not on disk
            T.save_checkpoint(replay.state_dict(n_rows), r.ckpt_dir / ONLINE_ROWS_FILE)
        T.save_checkpoint(state, ckpt_path)

    # The online phase's pieces, built at the boundary (or on resuming inside the phase).
    collector = batches = writer = None

    def start_online():
        if c.online.cql_alpha_online is not None:
            loss.cql_alpha = float(c.online.cql_alpha_online)
        loss.calibrated = c.loss.calibrated and c.online.calibrated
        make_kwargs = {"max_episode_steps": c.online.max_episode_steps} if c.online.max_episode_steps else {}
        # a fresh episode from a seed fixed by the checkpoint's counters (a simulator's
        # mid-episode state is not restorable: an unfinished episode is dropped on resume)
        env = O.make_online_env(info, seed=c.seed + c.online.seed_offset + progress.episodes, device=device,
                                **make_kwargs)
        col = O.make_collector(env, actor, frames_per_batch=c.online.frames_per_batch)
        wri = O.EpisodeWriter(replay.extend, gamma=info.gamma, goal_reward=O.goal_reward_threshold(info),
                              failure_reward=O.mc_failure_reward(info, replay.offline))
        log.info("online phase: cql_alpha %s, calibrated %s, replay %s", loss.cql_alpha, loss.calibrated,
                 c.online.replay)
        return col, iter(col), wri

    # The loop: `logger.every` updates without host sync, then metrics, evaluation and
    #    checkpoints; in the online phase every collector batch of F steps is followed by
    #    F * utd_ratio updates.
    per_batch = c.online.frames_per_batch * c.online.utd_ratio
    aggregator, last_good = T.MetricAggregator(), T.LastGoodState()
    aggregator.reset(update.n_steps)
    last_good.keep(snapshot)
    status, message = "completed", None
    bar = tqdm(total=total, initial=update.n_steps, unit="upd", desc="finetune CQL",
               disable=not c.logger.progress, dynamic_ncols=True, mininterval=0.5)
    try:
        while update.n_steps < total:
            step0 = update.n_steps
            online = step0 >= n_offline
            stop = min(step0 + c.logger.every - step0 % c.logger.every, total if online else n_offline)
            tick = time.perf_counter()
            if not online:
                T.run_updates(update, replay.sample, stop - step0, aggregator, device=device, on_update=bar.update)
            else:
                if collector is None:
                    collector, batches, writer = start_online()
                    # the metric set may change at the boundary (Cal-QL's bound rates off)
                    aggregator.reset(step0, clear_keys=True)
                for _ in range((stop - step0) // per_batch):
                    batch = next(batches)
                    progress.env_steps += batch.numel()
                    progress.add_episodes(writer.add(batch))
                    T.run_updates(update, replay.sample, per_batch, aggregator, device=device, on_update=bar.update)
            metrics = aggregator.flush()  # one host sync; raises NonFiniteLossError
            elapsed, step = time.perf_counter() - tick, update.n_steps
            history["train_time"] += elapsed
            metrics["train/updates_per_s"] = (step - step0) / elapsed
            metrics["train/online"] = float(online)
            metrics["train/cql_alpha"] = loss.cql_alpha
            if online:
                metrics.update(progress.metrics(refs))
                metrics["train/online_rows"] = float(replay.num_online)
            if c.eval.every and (step % c.eval.every == 0 or step in (n_offline, total)):
                with T.preserve_rng(replay.buffer):  # evaluating never moves the training random streams
                    result = evaluate(r.eval_env, actor, c.eval.n_episodes, seed=eval_seed,
                                      max_steps=c.eval.max_episode_steps, ref_scores=refs,
                                      success_keys=r.success_keys)
                metrics.update(result.metrics())
                success = eval_success_rate(result, info)
                if success is not None:
                    metrics["eval/success_rate"] = success
                if online:
                    metrics.update(progress.add_eval(result.normalized_mean, success))
                if step == n_offline:
                    history["offline_score"] = result.score
                history["evals"].append({"step": step, "online": online, "success_rate": success,
                                         "normalized_score": result.normalized_mean, "return_mean": result.return_mean})
                bar.set_postfix(score=f"{result.score:.1f}", refresh=False)
            run_logger.log(metrics, step)
            last_good.keep(snapshot)
            if (c.checkpoint.every and step % c.checkpoint.every == 0) or step in (n_offline, total):
                save(last_good.state)
    except T.NonFiniteLossError as err:
        save(last_good.state)
        status = "diverged"
        message = f"stopped: {err}; last good state (update {last_good.step}) saved to {ckpt_path}"
    finally:
        bar.close()
        if collector is not None:
            collector.shutdown()

    # Summary (offline -> final score, regrets), learning curve, final line.
    history["wall_time"] = wall_before + time.perf_counter() - start_time
    summary = T.make_summary(c, info, history, updates=update.n_steps, status=status, message=message,
                             checkpoint=ckpt_path, run_dir=run_dir)
    online_evals = [e["normalized_score"] for e in history["evals"]
                    if e["online"] and e["normalized_score"] is not None]
    summary.update({
        "offline_updates": n_offline,
        "online_updates": max(0, update.n_steps - n_offline),
        "offline_normalized_score": history["offline_score"] if refs else None,
        "online_env_steps": progress.env_steps,
        "online_episodes": progress.episodes,
        "eval_regret": score_regret(online_evals, clip=True) if online_evals else None,
        "train_regret": progress.metrics(refs).get("train/regret"),
    })
    run_logger.write_summary(summary)
    run_logger.plot(title=f"CQL {info.name}: online from update {n_offline}",
                    reference_lines={"behaviour policy (dataset)": info.behaviour_score,
                                     "offline phase result": summary["offline_normalized_score"]},
                    vertical_lines={"offline -> online": n_offline if 0 < n_offline < total else None})
    run_logger.close()
    if message:
        print(message, file=sys.stderr)
    print(f"offline normalized_score: {T.fmt(summary['offline_normalized_score'])}  "
          f"final normalized_score: {T.fmt(summary['final_normalized_score'])}")
    return summary


def eval_success_rate(result, info) -> float | None:
    """Success rate of an evaluation: the env's success flags when it reports them
    (``evaluate(success_keys=...)``), else for sparse-reward (goal) tasks CORL's
    goal-reached rule, a positive raw reward at some step (raw rewards are >= 0 there:
    return > 0)."""
    if result.successes is not None:
        return result.success_rate
    if info.sparse_reward:
        return float(np.mean(np.asarray(result.returns) > 0.0))
    return None


@hydra.main(config_path="../configs", config_name="finetune_cql", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg, HydraConfig.get().runtime.output_dir)
    if summary["status"] != "completed" and HydraConfig.get().mode.name == "RUN":
        sys.exit(1)
    return summary["final_normalized_score"]  # the objective for Hydra sweepers


if __name__ == "__main__":
    main()

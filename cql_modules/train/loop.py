"""The run engine both recipes share: one training loop with small hooks.

:class:`RunEngine` owns everything a run does around the updates themselves:

* resuming from the last checkpoint (parameters, optimizer, counters, RNG, logs rewound to
  the checkpoint's step, the hooks' own state);
* the loop: ``logger.every`` updates with no host sync, then one sync for the metrics and
  the NaN/inf guard (:class:`~cql_modules.train.metrics.MetricAggregator`), an evaluation
  every ``eval.every`` updates, a checkpoint every ``checkpoint.every`` updates, only ever
  of states whose interval was finite;
* stopping: a NaN/inf loss (status ``diverged``), Ctrl-C (``interrupted``) and preemption
  (``preempted``) keep the last good state; then ``summary.json``, the learning curve and
  one final line.

A recipe changes the loop through :class:`RunHooks`: how an interval's updates are made
(the online phase collects environment steps before its updates), extra metrics, extra
evaluation records, checkpointed state and summary fields.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tensordict import TensorDictBase
from tqdm.auto import tqdm

from cql_modules.data.scores import reference_scores
from cql_modules.train.build import make_eval_env
from cql_modules.train.cli import Preempted
from cql_modules.train.config import ConfigError, config_to_dict
from cql_modules.train.evaluation import env_success_keys, evaluate
from cql_modules.train.metrics import MetricAggregator, NonFiniteLossError
from cql_modules.train.run_logger import RunLogger
from cql_modules.train.state import (
    LastGoodState,
    check_same_data,
    data_fingerprint,
    load_resume_checkpoint,
    load_training_state,
    preserve_rng,
    save_checkpoint,
    training_state,
)
from cql_modules.train.summary import fmt, make_summary, run_name

log = logging.getLogger(__name__)

__all__ = ["RunHooks", "RunEngine", "run_updates"]

CHECKPOINT_FILE = "last.pt"


def run_updates(update_step: Callable[[TensorDictBase], TensorDictBase], sample: Callable[[], TensorDictBase],
                n: int, aggregator: MetricAggregator, *, device: torch.device | None = None,
                on_update: Callable[[], Any] | None = None) -> None:
    """The hot loop: ``n`` times sample a batch, update, accumulate the metrics. No host sync."""
    for _ in range(n):
        batch = sample()
        if device is not None and batch.device != device:
            batch = batch.to(device, non_blocking=True)
        aggregator.add(update_step(batch))
        if on_update is not None:
            on_update()


class RunHooks:
    """What a recipe adds to the shared loop; every hook has a do-nothing default.

    ``name``: the key under which :meth:`state_dict` is checkpointed (None: no state).
    """

    name: str | None = None

    def updates(self, engine: RunEngine, n: int) -> None:
        """Make the ``n`` updates of one logging interval (default: ``engine.updates(n)``)."""
        engine.updates(n)

    def metrics(self, step: int) -> dict[str, float]:
        """Metrics logged with every interval's training metrics."""
        return {}

    def on_evaluation(self, step: int, result: Any, record: dict[str, Any]) -> dict[str, float]:
        """After an evaluation: extra metrics; may add fields to the history ``record``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path) -> None:
        """On resume, before the learner: the :meth:`state_dict` saved in the file ``checkpoint``;
        the files :meth:`save` wrote with it are ``state.saved_with(checkpoint, name)``. A file
        that is unusable raises ``CorruptCheckpointError``: the previous checkpoint is tried then."""

    def save(self, state: dict[str, Any], checkpoint_dir: Path) -> None:
        """Write files the checkpoint refers to (before it: it never points at missing files)."""

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Extra ``summary.json`` fields."""
        return {}

    def plot(self, engine: RunEngine, summary: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the learning-curve plot."""
        info = engine.info
        return {"title": f"CQL on {info.name}",
                "reference_lines": {"behaviour policy (dataset mean)": info.behaviour_score,
                                    "expert reference": 100.0 if engine.refs else None}}

    def final_line(self, summary: dict[str, Any]) -> str:
        return f"final normalized_score: {fmt(summary['final_normalized_score'])}"

    def close(self) -> None:
        """The loop has ended (release environments, collectors)."""


class RunEngine:
    """One run: logging, resume, the loop, evaluation, checkpoints, stopping, summary.

    Args:
        c: the validated config (:class:`~cql_modules.train.config.OfflineConfig` or a subclass).
        run_dir: the run directory (Hydra's output dir).
        info: the dataset's ``DatasetInfo``.
        actor, loss, update: from :func:`~cql_modules.train.build.build_learner`.
        sample: draws one training batch.
        replay_buffer: the buffer whose random stream the checkpoint saves (and evaluation
            leaves untouched).
        device: where the updates run.
        hooks: the recipe's :class:`RunHooks`.

    With ``c.resume`` the last checkpoint is restored when the engine is built.
    """

    def __init__(self, c: Any, run_dir: str | Path, info: Any, actor: Any, loss: torch.nn.Module, update: Any, *,
                 sample: Callable[[], TensorDictBase], replay_buffer: Any = None,
                 device: torch.device | str = "cpu", hooks: RunHooks | None = None) -> None:
        self.start_time = time.perf_counter()
        self.c, self.run_dir, self.info = c, Path(run_dir), info
        self.actor, self.loss, self.update = actor, loss, update
        self.sample, self.replay_buffer, self.device = sample, replay_buffer, torch.device(device)
        self.hooks = hooks or RunHooks()
        self.refs = reference_scores(info, required=False)
        self.eval_env = make_eval_env(c, info, self.device)
        self.success_keys = env_success_keys(info) if self.eval_env is not None else ()
        self.checkpoint_path = self.run_dir / c.checkpoint.dir / CHECKPOINT_FILE
        self.aggregator, self.last_good = MetricAggregator(), LastGoodState()
        self.history: dict[str, Any] = {"evals": [], "wall_time": 0.0, "train_time": 0.0}
        self.status, self.message = "completed", None
        self._stopped: KeyboardInterrupt | None = None  # Ctrl-C or Preempted, re-raised by finish()
        self._bar = None
        self.resumed_from = self._open()
        self.wall_before = self.history["wall_time"]

    # ------------------------------------------------------------------ resume
    def _open(self) -> Path | None:
        """Open the run logger; with ``resume`` restore the last checkpoint into the learner."""
        c = self.c
        found = load_resume_checkpoint(c.checkpoint.load_from or self.run_dir, subdir=c.checkpoint.dir,
                                       companion=self._restore_hooks) if c.resume else None
        if c.resume and found is None and c.checkpoint.load_from:
            raise ConfigError(f"checkpoint.load_from: no checkpoint at {c.checkpoint.load_from}")
        state, path = found or (None, None)
        if state is not None:  # all that may refuse the checkpoint, before any run file is opened
            extra = load_training_state(state, self.loss, self.update, replay_buffer=self.replay_buffer)
        self.run_logger = RunLogger(self.run_dir, c.logger.backends, exp_name=run_name(c), config=config_to_dict(c),
                                    project=c.logger.project, group=c.logger.group, wandb_mode=c.logger.wandb_mode,
                                    resume_state=state and state["extra"]["logger"])
        if state is None:
            if c.resume:  # killed before its first checkpoint: start clean, the logs included
                log.warning("resume=true but no checkpoint under %s: starting from scratch", self.run_dir)
                self.run_logger.rewind(0)
            return None
        self.run_logger.rewind(self.update.n_steps, source_dir=path.parent.parent)
        self.history = extra["history"]
        log.info("resumed from %s at update %d", path, self.update.n_steps)
        return path

    def _restore_hooks(self, state: dict[str, Any], path: Path) -> None:
        """Part of choosing the checkpoint: its data must be this run's, and the hooks' files
        saved with it must be usable (else the previous checkpoint is tried, with its own)."""
        check_same_data(state["extra"]["data"], self.info)
        if self.hooks.name is not None:
            self.hooks.load_state_dict(state["extra"][self.hooks.name], path)

    def snapshot(self) -> dict[str, Any]:
        """The run's checkpoint as of now (a CPU copy): the learner, RNG and this run's records."""
        self.history["wall_time"] = self.wall_before + time.perf_counter() - self.start_time
        extra = {"history": self.history, "logger": self.run_logger.state_dict(), "config": config_to_dict(self.c),
                 "data": data_fingerprint(self.info)}
        if self.hooks.name is not None:
            extra[self.hooks.name] = self.hooks.state_dict()
        return training_state(self.loss, self.update, replay_buffer=self.replay_buffer, extra=extra)

    def save(self, state: dict[str, Any]) -> None:
        if self.hooks.name is not None:
            self.hooks.save(state["extra"][self.hooks.name], self.checkpoint_path.parent)
        save_checkpoint(state, self.checkpoint_path)

    # ------------------------------------------------------------------ the loop
    def updates(self, n: int) -> None:
        """``n`` updates on batches from ``sample`` (the hooks' building block)."""
        run_updates(self.update, self.sample, n, self.aggregator, device=self.device, on_update=self._bar.update)

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate the deterministic policy (never moving a training random stream); record it."""
        c = self.c
        with preserve_rng(self.replay_buffer):
            result = evaluate(self.eval_env, self.actor, c.eval.n_episodes, seed=c.seed + c.eval.seed_offset,
                              max_steps=c.eval.max_episode_steps, ref_scores=self.refs,
                              success_keys=self.success_keys, goal_reward=0.0 if self.info.sparse_reward else None)
        record = {"step": step, "normalized_score": result.normalized_mean, "return_mean": result.return_mean,
                  "success_rate": result.success_rate}
        metrics = {**result.metrics(), **self.hooks.on_evaluation(step, result, record)}
        self.history["evals"].append(record)
        self._bar.set_postfix(score=f"{result.score:.1f}", refresh=False)
        return metrics

    def run(self, total: int, *, boundaries: tuple[int, ...] = (), desc: str = "CQL") -> RunEngine:
        """Train until update ``total``. Intervals also end at each of ``boundaries`` (a
        phase switch), which, like ``total``, is always evaluated and checkpointed."""
        c, update = self.c, self.update
        stops = sorted({b for b in boundaries if 0 < b < total} | {total})
        self.aggregator.reset(update.n_steps)
        self.last_good.keep(self.snapshot)
        self._bar = tqdm(total=total, initial=update.n_steps, unit="upd", desc=desc, disable=not c.logger.progress,
                         dynamic_ncols=True, mininterval=0.5)
        try:
            while update.n_steps < total:
                step0 = update.n_steps
                stop = min(step0 + c.logger.every - step0 % c.logger.every, next(s for s in stops if s > step0))
                tick = time.perf_counter()
                self.hooks.updates(self, stop - step0)
                metrics = self.aggregator.flush()  # one host sync; raises NonFiniteLossError
                elapsed, step = time.perf_counter() - tick, update.n_steps
                self.history["train_time"] += elapsed
                metrics["train/updates_per_s"] = (step - step0) / elapsed
                metrics.update(self.hooks.metrics(step))
                if c.eval.every and (step % c.eval.every == 0 or step in stops):
                    metrics.update(self.evaluate(step))
                self.run_logger.log(metrics, step)
                self.last_good.keep(self.snapshot)
                if (c.checkpoint.every and step % c.checkpoint.every == 0) or step in stops:
                    self.save(self.last_good.state)
        except NonFiniteLossError as err:  # stop, keeping the last good state
            self.status, self.message = "diverged", f"stopped: {err}"
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGUSR1 (Preempted): keep the last good state
            preempted = isinstance(stop, Preempted)
            self.status = "preempted" if preempted else "interrupted"
            self.message, self._stopped = f"{self.status} after update {update.n_steps}", stop
        finally:
            self._bar.close()
            self.hooks.close()
        if self.status != "completed":
            self.save(self.last_good.state)
            self.message += f"; last good state (update {self.last_good.step}) saved to {self.checkpoint_path}"
            if self._stopped is not None:  # it may have come between logging an interval and keeping its state:
                self.run_logger.rewind(self.last_good.step)  # the records end where the saved state does
                self.history = self.last_good.state["extra"]["history"]
        return self

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and the learning curve, print the final line (the message
        to stderr); re-raise a Ctrl-C or preemption once everything is saved."""
        self.history["wall_time"] = self.wall_before + time.perf_counter() - self.start_time
        saved = self.update.n_steps if self.status == "completed" else self.last_good.step  # what a resume continues
        summary = make_summary(self.c, self.info, self.history, updates=saved, status=self.status,
                               message=self.message, checkpoint=self.checkpoint_path, run_dir=self.run_dir)
        summary.update(self.hooks.summary(summary))
        self.run_logger.write_summary(summary)
        self.run_logger.plot(**self.hooks.plot(self, summary))
        self.run_logger.close()
        if self.message:
            print(self.message, file=sys.stderr)
        if self._stopped is not None:
            raise self._stopped
        print(self.hooks.final_line(summary))
        return summary

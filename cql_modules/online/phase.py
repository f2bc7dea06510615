"""The online phase of fine-tuning as hooks of the run engine (:class:`OnlinePhase`).

From update ``n_offline`` on, every interval of the shared loop becomes::

    for each collector batch:                 # frames_per_batch env steps, stochastic policy
        finished episodes -> mc_return -> replay
        frames_per_batch * utd_ratio updates

At the boundary the CQL weight switches to ``online.cql_alpha_online`` and Cal-QL's
calibration is kept or dropped (``online.calibrated``). The phase checkpoints its counters
and the online replay rows (``online_rows.pt`` beside ``last.pt``), and adds the online
metrics (``train/regret``, ``eval/regret``, success rates) and summary fields.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cql_modules.data.scores import reference_scores
from cql_modules.online.config import FinetuneConfig
from cql_modules.online.env import goal_reward_threshold, make_collector, make_online_env, mc_failure_reward
from cql_modules.online.episodes import EpisodeWriter
from cql_modules.online.progress import OnlineProgress
from cql_modules.online.replay import OnlineReplay
from cql_modules.train.evaluation import score_regret
from cql_modules.train.loop import RunEngine, RunHooks
from cql_modules.train.state import CorruptCheckpointError, load_checkpoint, save_checkpoint, saved_with
from cql_modules.train.summary import fmt

log = logging.getLogger(__name__)

__all__ = ["OnlinePhase", "ONLINE_ROWS_FILE"]

ONLINE_ROWS_FILE = "online_rows.pt"


class OnlinePhase(RunHooks):
    """Hooks of :class:`~cql_modules.train.loop.RunEngine` for offline-to-online fine-tuning."""

    name = "online"

    def __init__(self, c: FinetuneConfig, info: Any, actor: Any, loss: Any, replay: OnlineReplay, device) -> None:
        self.c, self.info, self.actor, self.loss, self.replay, self.device = c, info, actor, loss, replay, device
        self.n_offline = c.n_offline
        self.per_batch = c.online.frames_per_batch * c.online.utd_ratio
        self.refs = reference_scores(info, required=False)
        self.progress = OnlineProgress()
        self.offline_score: float | None = None
        self.collector = self.batches = self.writer = None

    def start(self) -> None:
        """The boundary (or a resume inside the phase): switch the loss, build env + collector."""
        c = self.c
        if c.online.cql_alpha_online is not None:
            self.loss.cql_alpha = float(c.online.cql_alpha_online)
        self.loss.calibrated = c.loss.calibrated and c.online.calibrated
        make_kwargs = {"max_episode_steps": c.online.max_episode_steps} if c.online.max_episode_steps else {}
        # a fresh episode from a seed fixed by the checkpoint's counters (a simulator's
        # mid-episode state is not restorable: an unfinished episode is dropped on resume)
        env = make_online_env(self.info, seed=c.seed + c.online.seed_offset + self.progress.episodes,
                              device=self.device, **make_kwargs)
        self.collector = make_collector(env, self.actor, frames_per_batch=c.online.frames_per_batch)
        self.batches = iter(self.collector)
        self.writer = EpisodeWriter(self.replay.extend, gamma=self.info.gamma,
                                    goal_reward=goal_reward_threshold(self.info),
                                    failure_reward=mc_failure_reward(self.info, self.replay.offline))
        log.info("online phase: cql_alpha %s, calibrated %s, replay %s", self.loss.cql_alpha, self.loss.calibrated,
                 c.online.replay)

    def online(self, step: int) -> bool:
        return step >= self.n_offline

    # ------------------------------------------------------------------ the loop
    def updates(self, engine: RunEngine, n: int) -> None:
        if not self.online(engine.update.n_steps):
            engine.updates(n)
            return
        if self.collector is None:
            self.start()
            engine.aggregator.reset(engine.update.n_steps, clear_keys=True)  # Cal-QL's bound rates may go
        for _ in range(n // self.per_batch):
            batch = next(self.batches)
            self.progress.env_steps += batch.numel()
            self.progress.add_episodes(self.writer.add(batch))
            engine.updates(self.per_batch)

    def metrics(self, step: int) -> dict[str, float]:
        m = {"train/online": float(self.online(step - 1)), "train/cql_alpha": self.loss.cql_alpha}
        if self.online(step - 1):
            m.update(self.progress.metrics(self.refs))
            m["train/online_rows"] = float(self.replay.num_online)
        return m

    def on_evaluation(self, step: int, result: Any, record: dict[str, Any]) -> dict[str, float]:
        online = self.online(step - 1)
        record["online"] = online
        if step == self.n_offline:
            self.offline_score = result.score
        return self.progress.add_eval(result.normalized_mean, result.success_rate) if online else {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"progress": self.progress.state_dict(), "num_online": self.replay.num_online,
                "offline_score": self.offline_score}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path) -> None:
        if state["num_online"]:  # the rows saved with this checkpoint (last.prev.pt: online_rows.prev.pt)
            path = saved_with(checkpoint, ONLINE_ROWS_FILE)
            if not path.is_file():
                raise CorruptCheckpointError(f"{path}, the online rows of checkpoint {checkpoint}, is missing")
            rows = load_checkpoint(path)  # unreadable: CorruptCheckpointError
            try:  # they may be newer (a stop between writing them and the checkpoint): rows are only
                # ever appended, and load_state_dict checks those up to the checkpoint's count are there
                self.replay.load_state_dict(rows, num_online=state["num_online"])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CorruptCheckpointError(f"{path} does not hold the online rows of checkpoint {checkpoint} "
                                             f"({err})") from err
        self.progress = OnlineProgress.from_state_dict(state["progress"])
        self.offline_score = state["offline_score"]

    def save(self, state: dict[str, Any], checkpoint_dir: Path) -> None:
        if state["num_online"]:
            save_checkpoint(self.replay.state_dict(state["num_online"]), checkpoint_dir / ONLINE_ROWS_FILE)

    def close(self) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None

    # ------------------------------------------------------------------ the end
    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        online_scores = [e["normalized_score"] for e in summary["evaluations"]
                         if e["online"] and e["normalized_score"] is not None]
        return {
            "offline_updates": self.n_offline,
            "online_updates": max(0, summary["updates"] - self.n_offline),
            "offline_normalized_score": self.offline_score if self.refs else None,
            "online_env_steps": self.progress.env_steps,
            "online_episodes": self.progress.episodes,
            "eval_regret": score_regret(online_scores, clip=True) if online_scores else None,
            "train_regret": self.progress.metrics(self.refs).get("train/regret"),
        }

    def plot(self, engine: RunEngine, summary: dict[str, Any]) -> dict[str, Any]:
        total = self.c.total_updates
        return {"title": f"CQL {self.info.name}: online from update {self.n_offline}",
                "reference_lines": {"behaviour policy (dataset)": self.info.behaviour_score,
                                    "offline phase result": summary["offline_normalized_score"]},
                "vertical_lines": {"offline -> online": self.n_offline if 0 < self.n_offline < total else None}}

    def final_line(self, summary: dict[str, Any]) -> str:
        line = (f"offline normalized_score: {fmt(summary['offline_normalized_score'])}  "
                f"final normalized_score: {fmt(summary['final_normalized_score'])}")
        success = summary["evaluations"][-1].get("success_rate") if summary["evaluations"] else None
        if success is not None:
            line += f"  final success_rate: {fmt(success)}"
        if summary["train_regret"] is not None:
            line += f"  regret: {fmt(summary['train_regret'])}"
        return line

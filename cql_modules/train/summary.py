"""What a run reports: its ``summary.json`` record, its experiment name, number formatting."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cql_modules.train.config import config_to_dict

__all__ = ["make_summary", "run_name", "fmt"]


def run_name(cfg: Any) -> str:
    """``logger.name``, else ``cql-<dataset>-seed<seed>`` (a file name's stem; ``/`` -> ``-``)."""
    if cfg.logger.name:
        return cfg.logger.name
    name = cfg.dataset.name
    if Path(name).expanduser().exists():
        name = Path(name).stem
    return "cql-" + re.sub(r"[^\w.-]+", "-", name).strip("-") + f"-seed{cfg.seed}"


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def make_summary(
    cfg: Any,
    info: Any,
    history: dict[str, Any],
    *,
    updates: int,
    status: str = "completed",
    message: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of a run: final/best scores, speed, wall time, config."""
    evals = history.get("evals", [])
    scores = [e["normalized_score"] for e in evals if e.get("normalized_score") is not None]
    returns = [e["return_mean"] for e in evals]
    train_time = float(history.get("train_time", 0.0))
    episodes = getattr(info, "episodes", None)
    return {
        "status": status,
        "message": message,
        "dataset": str(info.name),
        "seed": cfg.seed,
        "updates": int(updates),
        "final_normalized_score": scores[-1] if scores else None,
        "best_normalized_score": max(scores) if scores else None,
        "final_return": returns[-1] if returns else None,
        "best_return": max(returns) if returns else None,
        "behaviour_normalized_score": getattr(info, "behaviour_score", None),
        "behaviour_return": getattr(episodes, "return_mean", None),
        "updates_per_s": updates / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "wall_time_s": float(history.get("wall_time", 0.0)),
        "evaluations": evals,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "run_dir": None if run_dir is None else str(run_dir),
        "config": config_to_dict(cfg),
    }

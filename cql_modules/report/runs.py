"""Run directories and how they are grouped: a :class:`Run` per directory holding a
``summary.json`` or ``metrics.jsonl``, :class:`Group` s of completed runs per dataset and
variant (the hyper-parameters that differ between runs of a dataset), and each dataset's domain."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cql_modules.train.run_logger import METRICS_FILE, REEVALUATIONS, SUMMARY_FILE, flatten_config, read_metrics

__all__ = ["BOOKKEEPING", "Group", "Run", "domain_of", "find_runs", "group_runs", "variant_keys"]

#: config fields that do not define an experiment (never make two runs different variants)
BOOKKEEPING = ("seed", "resume", "device", "num_threads", "compile", "cuda_graph", "logger.", "checkpoint.", "dataset.name",
               "dataset.download")
DOMAINS = {  # dataset name pattern -> domain, first match wins
    r"(halfcheetah|hopper|walker2d|ant)[-/](random|medium|expert|simple|full)": "locomotion",
    r"antmaze": "antmaze",
    r"(pen|door|hammer|relocate)[-/]": "adroit",
    r"pointmaze": "pointmaze",
}



@dataclass
class Run:
    """One run directory: its summary (None if it has none yet) and metrics records."""

    path: Path
    summary: dict[str, Any] | None
    records: list[dict[str, Any]]

    @property
    def status(self) -> str:
        if self.summary is None:
            return "no summary (running or killed)"
        return str(self.summary.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def config(self) -> dict[str, Any]:
        return flatten_config((self.summary or {}).get("config") or {})

    @property
    def dataset(self) -> str:
        return str((self.summary or {}).get("dataset") or self.config.get("dataset.name") or "unknown")

    @property
    def reevaluation(self) -> dict[str, Any] | None:
        """The last ``recipes/evaluate.py`` result of the run, if any."""
        found = (self.summary or {}).get(REEVALUATIONS) or []
        return found[-1] if found else None

    def get(self, key: str) -> float | None:
        value = (self.summary or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Group:
    """The completed runs of one dataset and variant."""

    dataset: str
    variant: str
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> np.ndarray:
        return np.array([v for v in (r.get(key) for r in self.runs) if v is not None], dtype=np.float64)

    @property
    def domain(self) -> str:
        return domain_of(self.dataset)


def domain_of(dataset: str) -> str:
    """``locomotion`` / ``antmaze`` / ``adroit`` / ``pointmaze``, else the dataset's first
    name component (``cql-modules/pendulum/mixed-v0`` -> ``pendulum``)."""
    name = dataset.lower()
    for pattern, domain in DOMAINS.items():
        if re.search(pattern, name):
            return domain
    parts = [p for p in re.split(r"[/]", name) if p]
    return (parts[1] if len(parts) > 2 else parts[0]).split("-")[0] if parts else "unknown"


def find_runs(dirs: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run directory (holding summary.json or metrics.jsonl) under ``dirs``, sorted."""
    runs: dict[Path, Run] = {}
    for top in dirs:
        top = Path(top)
        if not top.is_dir():
            raise FileNotFoundError(f"{top}: not a directory (give an outputs/ or multirun/ directory or a run dir)")
        for root, subdirs, files in os.walk(top):
            if SUMMARY_FILE in files or METRICS_FILE in files:
                path = Path(root).resolve()
                summary = None
                if SUMMARY_FILE in files:
                    try:
                        summary = json.loads((path / SUMMARY_FILE).read_text())
                    except json.JSONDecodeError:
                        summary = {"status": "unreadable summary.json"}
                runs[path] = Run(path, summary, read_metrics(path / METRICS_FILE))
                subdirs.clear()  # nothing below a run directory is another run
            else:
                subdirs.sort()
    return [runs[p] for p in sorted(runs)]


def variant_keys(runs: Sequence[Run]) -> list[str]:
    """Config fields whose values differ between runs *of the same dataset* (bookkeeping
    fields excluded): a sweep's own axes, not what dataset presets set differently."""
    keys: set[str] = set()
    for dataset in {r.dataset for r in runs}:
        configs = [r.config for r in runs if r.dataset == dataset]
        keys |= {k for k in set().union(*configs) if not k.startswith(BOOKKEEPING)
                 and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1}
    return sorted(keys)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Completed runs grouped by (dataset, variant); the variant names the differing fields."""
    done = [r for r in runs if r.completed]
    keys = variant_keys(done)
    groups: dict[tuple[str, str], Group] = {}
    for run in done:
        config = run.config
        variant = ", ".join(f"{k}={config[k]}" for k in keys if k in config) or "CQL"
        groups.setdefault((run.dataset, variant), Group(run.dataset, variant)).runs.append(run)
    return [groups[k] for k in sorted(groups)]


"""Aggregate scores with confidence intervals (rliable) and reference tables."""
from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cql_modules.report.runs import Group

__all__ = ["DEFAULT_REFERENCE", "aggregate", "mean_std", "read_reference"]

DEFAULT_REFERENCE = Path(__file__).parents[1] / "refdata" / "corl_cql.csv"


def read_reference(path: str | os.PathLike | None = DEFAULT_REFERENCE) -> tuple[dict[str, dict[str, float]], str]:
    """A reference table: CSV with ``dataset,last_mean,last_std,best_mean,best_std,seeds``
    after ``#`` comment lines (the first one names the source). Returns (rows by dataset,
    source line)."""
    if path is None:
        return {}, ""
    lines = Path(path).read_text().splitlines()
    comments = [re.sub(r"^#\s*(source:\s*)?", "", ln, flags=re.IGNORECASE).strip() for ln in lines if ln.startswith("#")]
    rows = csv.DictReader(ln for ln in lines if ln.strip() and not ln.startswith("#"))
    table = {r["dataset"]: {k: float(v) for k, v in r.items() if k != "dataset" and v not in ("", None)}
             for r in rows}
    return table, (comments[0] if comments else str(path))


def mean_std(values, digits: int = 1) -> str:
    """``"mean ± std"`` over seeds (sample std, ddof 1), the mean alone for one value, ``"n/a"``
    for none; ``None`` and non-finite values are left out. The one formatting of a seed
    spread in every table the project writes."""
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.{digits}f}" if v.size == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


# ----------------------------------------------------------------------------- aggregates
def _mean_of_task_means(*tasks: np.ndarray) -> float:
    return float(np.mean([t.mean() for t in tasks]))


def _aggregates(*tasks: np.ndarray) -> np.ndarray:
    """[mean over tasks of the task means, IQM of all runs] (rliable's aggregate_iqm)."""
    from rliable import metrics

    return np.array([_mean_of_task_means(*tasks), metrics.aggregate_iqm(np.concatenate(tasks))])


def aggregate(groups: Sequence[Group], *, key: str = "final_normalized_score", reps: int = 2000,
              seed: int = 0) -> list[dict[str, Any]]:
    """Per variant, per domain and over all domains: mean and IQM of ``key`` over the runs
    of the groups, with 95% stratified-bootstrap CIs (rliable, percentile method; each
    dataset's runs are resampled separately, so datasets may have different seed counts)."""
    try:
        from rliable import library as rly
    except (ImportError, TypeError) as err:  # TypeError: arch < 8 under pandas >= 3 (rliable 1.2 needs arch < 8)
        raise ModuleNotFoundError(f"the report's confidence intervals need rliable ({type(err).__name__}: {err}); "
                                  "pip install 'cql-modules[report]' (rliable 1.2 with arch<8 needs pandas<3)",
                                  name="rliable") from err
    # rliable imports absl.logging, whose handler holds the sys.stderr of that moment and closes it
    # when logging is reconfigured (Hydra does, per run) unless it is the sys.stderr of then: a
    # redirected stream (a test's capture, a notebook's) would be closed under its owner
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__

    rows = []
    for variant in sorted({g.variant for g in groups}):
        mine = [g for g in groups if g.variant == variant and g.values(key).size]
        domains = sorted({g.domain for g in mine})
        scopes = [(d, [g for g in mine if g.domain == d]) for d in domains]
        if len(domains) > 1:
            scopes.append(("all", mine))
        for domain, members in scopes:
            tasks = [g.values(key) for g in members]
            with warnings.catch_warnings():  # arch's notice about rliable's random_state argument
                warnings.simplefilter("ignore", FutureWarning)
                point, interval = rly.get_interval_estimates({"x": tasks}, _aggregates, reps=reps,
                                                             random_state=np.random.RandomState(seed))
            rows.append({"variant": variant, "domain": domain, "datasets": [g.dataset for g in members],
                         "runs": int(sum(t.size for t in tasks)),
                         "mean": float(point["x"][0]), "mean_ci": tuple(float(v) for v in interval["x"][:, 0]),
                         "iqm": float(point["x"][1]), "iqm_ci": tuple(float(v) for v in interval["x"][:, 1])})
    return rows



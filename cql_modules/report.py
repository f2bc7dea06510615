"""A report from run directories: per-dataset tables, aggregate scores with confidence
intervals, learning curves (``python recipes/report.py <outputs or multirun dir> ...``).

* Runs are the directories holding a ``summary.json`` or a ``metrics.jsonl`` (found
  recursively). Only runs whose summary says ``completed`` are averaged; every other run
  (failed, diverged, interrupted, preempted, or no summary: still running or killed) is
  listed with its status, never averaged.
* Runs are grouped by dataset and *variant*: the hyper-parameters that differ between the
  runs given (the seed and bookkeeping fields such as logging, checkpoints, threads and
  device excluded), so a sweep over ``loss.cql_alpha`` gives one row per value.
* Per dataset and variant: final and best normalized score (mean +- sample std over seeds,
  ddof 1), the behaviour policy's score, updates, wall time and updates/s (means over seeds).
* Per domain (locomotion, antmaze, adroit, ...) and overall, per variant: the mean (mean over
  datasets of the per-dataset mean) and the interquartile mean (rliable's IQM: the 25%
  trimmed mean of all runs' scores) of the final normalized scores, with 95% percentile
  confidence intervals from rliable's stratified bootstrap (runs resampled within each
  dataset).
* Optional reference columns (e.g. CORL's published CQL scores, ``refdata/corl_cql.csv``)
  matched by dataset name.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cql_modules.train.run_logger import METRICS_FILE, SUMMARY_FILE, read_metrics

__all__ = ["Run", "Group", "find_runs", "group_runs", "domain_of", "read_reference", "aggregate",
           "plot_curves", "write_report", "DEFAULT_REFERENCE"]

DEFAULT_REFERENCE = Path(__file__).parent / "refdata" / "corl_cql.csv"
SCORE_KEY, RETURN_KEY = "d4rl_normalized_score", "eval_score"
#: config fields that do not define an experiment (never make two runs different variants)
BOOKKEEPING = ("seed", "resume", "device", "num_threads", "compile", "logger.", "checkpoint.", "dataset.name",
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
        return _flatten((self.summary or {}).get("config") or {})

    @property
    def dataset(self) -> str:
        return str((self.summary or {}).get("dataset") or self.config.get("dataset.name") or "unknown")

    @property
    def reevaluation(self) -> dict[str, Any] | None:
        """The last ``recipes/evaluate.py`` result of the run, if any."""
        found = (self.summary or {}).get("reevaluations") or []
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


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    """Config fields whose values differ between ``runs`` (bookkeeping fields excluded)."""
    configs = [r.config for r in runs]
    keys = sorted(set().union(*configs)) if configs else []
    return [k for k in keys if not k.startswith(BOOKKEEPING)
            and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


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


def read_reference(path: str | os.PathLike | None = DEFAULT_REFERENCE) -> tuple[dict[str, dict[str, float]], str]:
    """A reference table: CSV with ``dataset,last_mean,last_std,best_mean,best_std,seeds``
    after ``#`` comment lines (the first one names the source). Returns (rows by dataset,
    source line)."""
    if path is None:
        return {}, ""
    lines = Path(path).read_text().splitlines()
    comments = [re.sub(r"^#\s*(source:\s*)?", "", ln, flags=re.I).strip() for ln in lines if ln.startswith("#")]
    rows = csv.DictReader(ln for ln in lines if ln.strip() and not ln.startswith("#"))
    table = {r["dataset"]: {k: float(v) for k, v in r.items() if k != "dataset" and v not in ("", None)}
             for r in rows}
    return table, (comments[0] if comments else str(path))


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
    from rliable import library as rly

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


# ----------------------------------------------------------------------------- figures
def _curve(run: Run) -> tuple[str, dict[int, float]]:
    key = SCORE_KEY if any(SCORE_KEY in r for r in run.records) else RETURN_KEY
    return key, {int(r["step"]): float(r[key]) for r in run.records if isinstance(r.get(key), (int, float))}


def plot_curves(groups: Sequence[Group], out_dir: str | os.PathLike) -> dict[str, Path]:
    """One PNG per dataset: per variant the mean over seeds (at the evaluation steps all its
    seeds share), a +-1 std band and each seed thin; a dotted line at the offline -> online
    boundary of fine-tuning runs. Returns {dataset: png path}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cql_modules._io import atomic_write

    out_dir = Path(out_dir)
    paths = {}
    for dataset in sorted({g.dataset for g in groups}):
        fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
        key = SCORE_KEY
        for i, group in enumerate(g for g in groups if g.dataset == dataset):
            curves = [_curve(r) for r in group.runs]
            key = curves[0][0]
            steps = sorted(set.intersection(*(set(c) for _, c in curves)))
            if not steps:
                continue
            values = np.array([[c[s] for s in steps] for _, c in curves])
            for _, c in curves:
                ax.plot(sorted(c), [c[s] for s in sorted(c)], color=f"C{i}", alpha=0.25, linewidth=0.8)
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, color=f"C{i}", label=f"{group.variant} ({len(values)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
            boundaries = {r.get("offline_updates") for r in group.runs if (r.get("online_updates") or 0) > 0}
            for b in sorted(x for x in boundaries if x):
                ax.axvline(b, linestyle=":", color="0.3", label="offline -> online")
        behaviour = [v for g in groups if g.dataset == dataset for v in g.values("behaviour_normalized_score")]
        if behaviour and key == SCORE_KEY:
            ax.axhline(float(np.mean(behaviour)), linestyle="--", color="0.5", label="behaviour policy (dataset)")
        ax.set_xlabel("updates")
        ax.set_ylabel("normalized score" if key == SCORE_KEY else "return")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"curve_{re.sub(r'[^A-Za-z0-9.-]+', '_', dataset).strip('_')}.png"
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        paths[dataset] = path
    return paths


# ----------------------------------------------------------------------------- report.md
def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_std(values: np.ndarray) -> str:
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return _num(values[0])
    return f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def _mean(values: np.ndarray, digits: int = 1) -> str:
    return _num(float(values.mean()) if values.size else None, digits)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def write_report(dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 reference: str | os.PathLike | None = DEFAULT_REFERENCE, reps: int = 2000,
                 seed: int = 0, command: str | None = None) -> Path:
    """Collect the runs under ``dirs`` and write ``out_dir/report.md`` plus one learning-curve
    PNG per dataset; returns the report's path. ``command``: the command line, quoted in the
    report."""
    from cql_modules._io import atomic_write

    runs = find_runs(dirs)
    groups = group_runs(runs)
    ref, ref_source = read_reference(reference)
    out_dir = Path(out_dir)
    curves = plot_curves(groups, out_dir)
    use_ref = any(g.dataset in ref for g in groups)
    use_reeval = any(r.reevaluation for g in groups for r in g.runs)
    use_online = any((r.get("online_updates") or 0) > 0 for g in groups for r in g.runs)  # fine-tuning runs

    lines = ["# CQL results", "",
             f"{len(runs)} runs found under {', '.join(str(d) for d in dirs)}: "
             f"{sum(r.completed for r in runs)} completed (averaged), "
             f"{sum(not r.completed for r in runs)} not (listed below, never averaged).", ""]
    if command:
        lines[2:2] = [f"Generated by `{command}`.", ""]
    # per dataset
    header = ["dataset", "variant", "seeds", "final", "best", "behaviour", "updates", "wall time", "updates/s"]
    if use_online:
        header += ["offline phase", "eval regret"]
    if use_reeval:
        header.append("re-evaluated")
    if use_ref:
        header += ["reference last", "reference best"]
    rows = []
    for g in groups:
        row = [g.dataset, g.variant, str(len(g.runs)), _mean_std(g.values("final_normalized_score")),
               _mean_std(g.values("best_normalized_score")), _mean(g.values("behaviour_normalized_score")),
               _mean(g.values("updates"), 0), _duration(float(g.values("wall_time_s").mean())),
               _mean(g.values("updates_per_s"))]
        if use_online:
            row += [_mean_std(g.values("offline_normalized_score")), _mean(g.values("eval_regret"), 3)]
        if use_reeval:
            found = [r.reevaluation for r in g.runs if r.reevaluation]
            scores = np.array([e["normalized_score_mean"] for e in found if e.get("normalized_score_mean") is not None])
            episodes = sorted({e["n_episodes"] for e in found})
            row.append(f"{_mean_std(scores)} ({len(found)} runs x {'/'.join(map(str, episodes))} episodes)"
                       if found else "")
        if use_ref:
            r = ref.get(g.dataset, {})
            row += [f"{_num(r.get('last_mean'), 2)} ± {_num(r.get('last_std'), 2)}" if r else "",
                    f"{_num(r.get('best_mean'), 2)} ± {_num(r.get('best_std'), 2)}" if r else ""]
        rows.append(row)
    lines += ["## Per dataset", "",
              "Normalized scores (100 = expert reference, 0 = random): mean ± sample std over seeds; "
              "final = the last evaluation, best = the best evaluation of each run; behaviour = the "
              "dataset's mean episode; updates, wall time and updates/s are means over seeds"
              + ("; fine-tuning runs: final = after the online phase, offline phase = the score at its end, "
                 "eval regret = CORL's mean(1 - clip(score / 100, 0, 1)) over the online evaluations"
                 if use_online else "")
              + ("; re-evaluated = the last `recipes/evaluate.py` result of each run" if use_reeval else "") + ".", "",
              *_table(header, rows, ["---"] * 2 + ["---:"] * (len(header) - 2)), ""]
    # aggregates
    agg = aggregate(groups, reps=reps, seed=seed)
    if agg:
        header = ["variant", "domain", "datasets", "runs", "mean", "mean 95% CI", "IQM", "IQM 95% CI"]
        if use_ref:
            header.append("reference mean (last)")
        rows = []
        for a in agg:
            row = [a["variant"], a["domain"], str(len(a["datasets"])), str(a["runs"]), _num(a["mean"]),
                   _ci(a["mean_ci"]), _num(a["iqm"]), _ci(a["iqm_ci"])]
            if use_ref:
                known = [ref[d]["last_mean"] for d in a["datasets"] if d in ref]
                row.append(_num(float(np.mean(known)), 2) if len(known) == len(a["datasets"]) else "")
            rows.append(row)
        lines += ["## Per domain and overall (final normalized score)", "",
                  "mean = mean over datasets of the per-dataset mean; IQM = interquartile mean of all runs "
                  f"(rliable); 95% CIs: rliable's stratified bootstrap over seeds ({reps} resamples, "
                  "percentile method).", "", *_table(header, rows, ["---"] * 2 + ["---:"] * (len(header) - 2)), ""]
    if use_ref:
        lines += [f"Reference: {ref_source}", ""]
    # curves
    if curves:
        lines += ["## Learning curves", "", "Mean over seeds (line), ± 1 std (band), each seed (thin).", ""]
        lines += [f"![{d}]({p.name})" for d, p in curves.items()] + [""]
    # runs not averaged
    others = [r for r in runs if not r.completed]
    lines += ["## Runs not included", ""]
    if others:
        rows = [[str(_relative(r.path, dirs)), r.dataset, r.status,
                 str(max((int(x["step"]) for x in r.records if "step" in x), default=0)),
                 str((r.summary or {}).get("message") or "").replace("|", "/").splitlines()[0][:120]
                 if (r.summary or {}).get("message") else ""] for r in others]
        lines += _table(["run", "dataset", "status", "last logged update", "message"], rows, ["---"] * 5)
    else:
        lines.append("None: every run found completed.")
    path = out_dir / "report.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def _relative(path: Path, dirs: Sequence[str | os.PathLike]) -> Path:
    """``path`` relative to the common directory of ``dirs``."""
    return path.relative_to(os.path.commonpath([Path(d).resolve() for d in dirs]))

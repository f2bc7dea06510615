"""A report from run directories: per-dataset tables, aggregate scores with confidence
intervals, learning curves (``python recipes/report.py <outputs or multirun dir> ...``).

* Runs are the directories holding a ``summary.json`` or a ``metrics.jsonl`` (found
  recursively). Only runs whose summary says ``completed`` are averaged; every other run
  (failed, diverged, interrupted, preempted, or no summary: still running or killed) is
  listed with its status, never averaged.
* Runs are grouped by dataset and *variant*: the hyper-parameters that differ between runs
  of the same dataset (the seed and bookkeeping fields such as logging, checkpoints, threads
  and device excluded; what dataset presets set differently is not a variant), so a sweep
  over ``loss.cql_alpha`` gives one row per value and dataset.
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
from cql_modules.report.figures import plot_curves
from cql_modules.report.markdown import write_report
from cql_modules.report.runs import Group, Run, domain_of, find_runs, group_runs
from cql_modules.report.stats import DEFAULT_REFERENCE, aggregate, read_reference

__all__ = [
           "DEFAULT_REFERENCE",
           "Group",
           "Run",
           "aggregate",
           "domain_of",
           "find_runs",
           "group_runs",
           "plot_curves",
           "read_reference",
           "write_report",
]

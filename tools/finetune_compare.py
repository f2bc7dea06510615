"""Compare fine-tuning variants (e.g. CQL vs Cal-QL) over seeds from their run directories.

    python tools/finetune_compare.py multirun/finetune_cql/<time> [more dirs] --out docs/pointmaze
    python tools/finetune_compare.py Cal-QL=runs/calql control=runs/control --out docs/pointmaze

Variants are the config fields that differ between the runs (as ``recipes/report.py``
groups them), or, with ``NAME=DIR`` arguments, the runs under each DIR named NAME (e.g. an
offline-only control beside fine-tuning runs, whose configs differ in many fields).

Per variant, mean ± std over seeds of: the score at the end of the offline phase, the
final score, the mean of the last ``--tail`` evaluations of each phase, the success rates at
the end of each phase (where the env reports success), the initial dip (the offline score minus the lowest score of the evaluations
in the first ``--window`` online updates, 0 if none is lower), CORL's training regret
(mean of 1 - success over the online training episodes) and the evaluation regret (mean of
1 - clip(score / 100, 0, 1) over the online evaluations). Writes ``finetune_table.md`` and
the learning curves (seed bands, the phase boundary dotted) with ``cql_modules.report``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cql_modules.report import find_runs, group_runs, plot_curves
from cql_modules.report.figures import SCORE_KEY
from cql_modules.report.runs import Group
from cql_modules.report.stats import mean_std


def dip(run, window: int) -> float | None:
    boundary, offline = run.get("offline_updates"), run.get("offline_normalized_score")
    if boundary is None or offline is None:
        return None
    early = [r[SCORE_KEY] for r in run.records
             if SCORE_KEY in r and boundary < r["step"] <= boundary + window]
    return max(0.0, offline - min(early)) if early else None


def tail_mean(run, end: int | None, n: int) -> float | None:
    """Mean score of the last ``n`` evaluations at or before update ``end`` (one evaluation
    swings by tens of points on sparse tasks; this is the steadier number)."""
    if end is None:
        return None
    scores = [r[SCORE_KEY] for r in run.records if SCORE_KEY in r and r["step"] <= end][-n:]
    return float(np.mean(scores)) if scores else None


def success_at(run, step: int | None) -> float | None:
    """The evaluation success rate logged at update ``step`` (None: not logged)."""
    found = [r["eval/success_rate"] for r in run.records if r.get("step") == step and "eval/success_rate" in r]
    return found[-1] if found else None


def table(groups, window: int, tail: int) -> str:
    header = ["variant", "seeds", "offline score", "final score", f"offline, mean of last {tail} evals",
              f"final, mean of last {tail} evals", "offline success", "final success",
              f"dip (first {window} online updates)",
              "train regret", "eval regret", "wall (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        runs = g.runs
        lines.append("| " + " | ".join([
            g.variant, str(len(runs)),
            mean_std(r.get("offline_normalized_score") for r in runs),
            mean_std(r.get("final_normalized_score") for r in runs),
            mean_std(tail_mean(r, r.get("offline_updates"), tail) for r in runs),
            mean_std(tail_mean(r, r.get("updates"), tail) for r in runs),
            mean_std(success_at(r, r.get("offline_updates")) for r in runs),
            mean_std(success_at(r, r.get("updates")) for r in runs),
            mean_std(dip(r, window) for r in runs),
            mean_std(r.get("train_regret") for r in runs),
            mean_std(r.get("eval_regret") for r in runs),
            mean_std((r.get("wall_time_s") or 0) / 60 for r in runs),
        ]) + " |")
    return "\n".join(lines) + "\n"


def named_groups(specs: list[str]) -> tuple[list, list[Group]]:
    """``NAME=DIR`` arguments (split at the first ``=``: a NAME has none, a DIR may): (all runs
    found, one group per NAME and dataset)."""
    found, groups = [], []
    for spec in specs:
        name, _, top = spec.partition("=")
        runs = find_runs([top])
        found += runs
        done = [r for r in runs if r.completed]
        groups += [Group(d, name, [r for r in done if r.dataset == d]) for d in sorted({r.dataset for r in done})]
    return found, groups


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run directories (searched recursively), or NAME=DIR")
    parser.add_argument("--out", default=".")
    parser.add_argument("--window", type=int, default=2000, help="online updates in which the dip is looked for")
    parser.add_argument("--tail", type=int, default=3, help="evaluations averaged at the end of each phase")
    args = parser.parse_args(argv)
    named = ["=" in d for d in args.dirs]
    if any(named) and not all(named):
        parser.error("give every directory as NAME=DIR, or none")
    try:
        if all(named):
            runs, groups = named_groups(args.dirs)
        else:
            runs = find_runs(args.dirs)
            groups = group_runs(runs)
    except FileNotFoundError as err:
        parser.error(str(err))
    not_done = [r for r in runs if not r.completed]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(groups, args.window, args.tail)
    if not_done:
        text += "\nnot averaged: " + ", ".join(f"{r.path.name} ({r.status})" for r in not_done) + "\n"
    (out / "finetune_table.md").write_text(text)
    print(text, end="")
    for path in plot_curves(groups, out).values():
        print(f"curves: {path}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Does CQL learn the same with bf16 critics? fp32 vs ``loss.critic_compute_dtype=bfloat16``.

Runs ``recipes/offline_cql.py`` (default: the embedded dataset) for each seed in fp32 and
in bf16, then tabulates, per precision, the final and best normalized score (mean +- std
over seeds, from each run's ``summary.json``) and the Q-value scale: ``average_qf1`` (the
mean Q(s, a) of dataset actions, CORL's name) at the end of training and averaged over
the last 10% of its logged values (from ``metrics.jsonl``).

    python benchmarks/bf16_learning.py                          # 3 seeds x {fp32, bf16}
    python benchmarks/bf16_learning.py --jobs 2 --threads 1     # two runs at a time
    python benchmarks/bf16_learning.py --seeds 0,1,2 -- dataset=hopper-medium-v2 num_updates=100000
    python benchmarks/bf16_learning.py --tabulate benchmarks/results/bf16-learning-<time>   # table only

Arguments after ``--`` are passed to every run as Hydra overrides.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cql_modules.report.stats import mean_std

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = {"fp32": [], "bf16": ["loss.critic_compute_dtype=bfloat16"]}


def run_one(out: Path, precision: str, seed: int, threads: int, overrides: list[str]) -> int:
    run_dir = out / f"{precision}-seed{seed}"
    cmd = [sys.executable, str(ROOT / "recipes" / "offline_cql.py"), f"seed={seed}", f"num_threads={threads}",
           f"hydra.run.dir={run_dir}", *PRECISIONS[precision], *overrides]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{precision} seed {seed}: exit {rc} ({run_dir})", flush=True)
    return rc


def read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    qf1 = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            key = next((k for k in rec if k == "average_qf1" or k.endswith("/average_qf1")), None)
            if key is not None and rec[key] is not None:
                qf1.append(float(rec[key]))
    tail = qf1[-max(1, len(qf1) // 10):] if qf1 else []
    return {"final": summary.get("final_normalized_score"), "best": summary.get("best_normalized_score"),
            "updates_per_s": summary.get("updates_per_s"), "average_qf1_final": qf1[-1] if qf1 else None,
            "average_qf1_last10pct": statistics.mean(tail) if tail else None}


def tabulate(out: Path) -> dict:
    runs: dict[str, list[dict]] = {}
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        precision = run_dir.name.split("-seed")[0]
        runs.setdefault(precision, []).append({"run": run_dir.name, **read_run(run_dir)})
    print("| precision | runs | final score | best score | average_qf1 (end) | average_qf1 (last 10%) |")
    print("|---|---:|---:|---:|---:|---:|")
    for precision, rs in runs.items():
        print(f"| {precision} | {len(rs)} | {mean_std([r['final'] for r in rs])} | {mean_std([r['best'] for r in rs])} "
              f"| {mean_std([r['average_qf1_final'] for r in rs])} "
              f"| {mean_std([r['average_qf1_last10pct'] for r in rs])} |")
    (out / "table.json").write_text(json.dumps(runs, indent=2))
    return runs


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--precisions", default="fp32,bf16", help=f"from {list(PRECISIONS)}")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--out", default=None, help="default benchmarks/results/bf16-learning-<time>")
    p.add_argument("--tabulate", default=None, help="only tabulate the runs in this directory")
    a = p.parse_args(argv)
    if a.tabulate:
        return tabulate(Path(a.tabulate))
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"bf16-learning-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    jobs = [(prec, int(s)) for s in a.seeds.split(",") for prec in a.precisions.split(",")]
    with ThreadPoolExecutor(a.jobs) as pool:
        rcs = list(pool.map(lambda j: run_one(out, j[0], j[1], a.threads, overrides), jobs))
    if any(rcs):
        print(f"{sum(1 for r in rcs if r)} run(s) failed: see their stdout.log", flush=True)
    return tabulate(out)


if __name__ == "__main__":
    main()

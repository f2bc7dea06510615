#!/usr/bin/env python
"""The README's speed table from ``bench_update.py`` result files (one per thread count).

    python benchmarks/speed_table.py benchmarks/results/amd-epyc-2t.json benchmarks/results/amd-epyc-1t.json

One row per implementation, per file: median updates/s, paired ratios against the
CORL-structured update and TorchRL's ``CQLLoss`` (median [range across rounds]), % of the
same run's fp32 matmul peak, and whether the issue's targets are met (fp32 rows: >= 1.25x
CORL-structured, >= 1.5x torchrl; >= 80 % of the fp32 peak at 2 threads, >= 85 % at 1);
then each run's machine line (CPU, caches, ISA flags, peaks, quiet rounds).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"ours:eager": "ours, fp32 (default)", "ours:eager-2048-blocks": "ours, fp32, 2048-row blocks",
         "ours:bf16-critic": "ours, `critic_compute_dtype=bfloat16`", "corl-structured": "CORL-structured update",
         "torchrl-cql": "torchrl `CQLLoss`", "torchrl-sac": "torchrl `SACLoss` (backbone)"}
TARGETS = {"corl": 1.25, "torchrl_cql": 1.5}
PEAK_TARGET = {1: 0.85, 2: 0.80}


def _paired(r: dict, key: str) -> str:
    med, lo, hi = (r.get(f"ratio_vs_{key}_paired_{s}") for s in ("median", "min", "max"))
    return "n/a" if med is None else f"{med:.2f}x [{lo:.2f}-{hi:.2f}]"


def table(paths: list[Path]) -> str:
    lines = ["| CPU, threads | implementation | updates/s | vs CORL-structured (paired) | vs torchrl CQLLoss (paired) "
             "| % of fp32 peak | targets |", "|---|---|---:|---:|---:|---:|---|"]
    notes = []
    for path in paths:
        res = json.loads(path.read_text())
        m, threads = res["machine"], res["config"]["threads"]
        where = f"{m['cpu_model']}, {threads}t"
        for r in res["results"]:
            if r["status"] != "ok":
                continue
            frac = r.get("fraction_fp32_peak")
            target = ""
            if r["name"].startswith("ours:") and "bf16" not in r["name"]:
                ok = [(r.get(f"ratio_vs_{k}_paired_median") or 0) >= v for k, v in TARGETS.items()]
                ok.append(frac is not None and frac >= PEAK_TARGET.get(threads, 0.8))
                target = " / ".join(("met" if o else "not met") for o in ok)
            lines.append(f"| {where} | {NAMES.get(r['name'], r['name'])} | {r['updates_per_s_median']:.2f} "
                         f"| {_paired(r, 'corl')} | {_paired(r, 'torchrl_cql')} "
                         f"| {f'{100 * frac:.0f}%' if frac else 'n/a'} | {target} |")
        pk = res["peaks"]
        shapes = ", ".join(f"{s} {v['gflops']:.0f}" for s, v in pk["fp32"]["by_shape"].items() if v.get("gflops"))
        quiet = min((r.get("quiet_rounds", 0) for r in res["results"] if r["status"] == "ok"), default=0)
        notes.append(f"- {path.name}: {m['cpu_model']}, caches per core {m.get('cpu_caches_per_core_bytes')}, "
                     f"flags {m.get('cpu_flags')}, torch {m['torch']}, {threads} threads; fp32 peak "
                     f"{pk['fp32']['gflops']:.0f} GFLOP/s ({shapes}), bf16 peak {pk['bf16']['gflops']:.0f}; "
                     f"{res['config']['rounds']} rounds, >= {quiet} quiet per row; loadavg {m.get('loadavg_start')}")
    lines.append("")
    lines.append("targets column (fp32 rows): >= 1.25x CORL-structured / >= 1.5x torchrl / >= 80% (2t) or 85% (1t) "
                 "of the fp32 peak")
    return "\n".join(lines + notes)


if __name__ == "__main__":
    print(table([Path(p) for p in sys.argv[1:]]))

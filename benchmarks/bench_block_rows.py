#!/usr/bin/env python
"""Update steps/s of ours (fused critic) as a function of the fused critic's block size.

One ``CQLLoss`` + ``UpdateStep`` at CORL's shape (``bench_update.py``'s builder); each
round times ``--steps`` updates per block size, block sizes alternating (order rotated
per round), so that the noise of shared cores hits every size alike. Prints the median
rate per size and its ratio to the cache-derived size
(``cql_modules.objectives.cache_blocking.default_block_rows``, ``CQLLoss``'s default), paired
per round.

    python benchmarks/bench_block_rows.py --threads 2 --rows 256,512,1024,2048,4096,8192
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_update  # noqa: E402 (a sibling script, importable once its folder is on sys.path)


def main(argv=None) -> dict:
    p = bench_update.single_mode_parser(__doc__)
    p.add_argument("--rows", default="256,512,1024,2048,4096,8192", help="comma-separated block sizes (rows)")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    from cql_modules.objectives.cache_blocking import cpu_cache_bytes

    step, loss = bench_update.build_single_mode(a)
    device = torch.device("cpu")
    default = loss.default_fused_block_rows()
    sizes = sorted({int(r) for r in a.rows.split(",") if r} | {default})
    rates: dict[int, list[float]] = {r: [] for r in sizes}
    best: dict[int, float] = {r: math.inf for r in sizes}  # fastest single step: robust to contention
    # CPU time of this process per step: with 1 thread, unaffected by time spent descheduled
    cpu: dict[int, list[float]] = {r: [] for r in sizes}
    for r in sizes:  # warm-up (allocations of each block size)
        loss.fused_block_rows = r
        step()
    for rnd in range(a.rounds):
        order = sizes[rnd % len(sizes):] + sizes[: rnd % len(sizes)]
        for r in order:
            loss.fused_block_rows = r
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                t1 = time.perf_counter()
                step()
                best[r] = min(best[r], time.perf_counter() - t1)
            rates[r].append(a.steps / (time.perf_counter() - t0))
            cpu[r].append((time.process_time() - c0) / a.steps)
        print(f"round {rnd + 1}: " + ", ".join(f"{r}: {rates[r][-1]:.2f}" for r in sizes), flush=True)
    res = {"threads": torch.get_num_threads(), "mode": a.mode, "cpu": bench_update.machine_info(device)["cpu_model"],
           "caches": cpu_cache_bytes(), "default_block_rows": default, "rates": rates,
           "best_step_ms": {r: 1e3 * t for r, t in best.items()},
           "cpu_ms_per_step": {r: [1e3 * t for t in ts] for r, ts in cpu.items()}}
    print(f"\n{res['cpu']}, {res['threads']} threads, caches {res['caches']}, default block rows {default}")
    print("| block rows | updates/s (median) | paired vs default [range] | fastest step ms | CPU ms/step (median) |\n"
          "|---:|---:|---:|---:|---:|")
    for r in sizes:
        pair = [u / v for u, v in zip(rates[r], rates[default])]
        print(f"| {r}{' (default)' if r == default else ''} | {statistics.median(rates[r]):.2f} "
              f"| {statistics.median(pair):.3f}x [{min(pair):.3f}-{max(pair):.3f}] | {1e3 * best[r]:.1f} "
              f"| {1e3 * statistics.median(cpu[r]):.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Speed of one hidden layer of the fused critic pass in two memory layouts.

``FusedCriticGrad`` folds each bias into its matmul: activations carry a column of ones
(``[K, rows, width + 1]``, row stride 257 floats at width 256) and weights an extra bias
row. The alternative keeps activations contiguous (``[K, rows, width]``), writes the bias
into the output first (an in-cache copy) and accumulates the matmul onto it; its bias
gradient is a row sum of the output gradient. Timed per layout: forward, input gradient
(dX, the same in both) and weight (+ bias) gradient, best of ``--trials`` (process CPU
time with 1 thread, so that time spent descheduled by other processes does not count;
wall time otherwise), in GFLOP/s of the layer's 2 * K * rows * width^2 FLOPs.

    python benchmarks/bench_layer_layouts.py --threads 1 --rows 448,2046
"""
from __future__ import annotations

import argparse
import time

import torch


def best_time(fn, trials: int, cpu_clock: bool) -> float:
    clock = time.process_time if cpu_clock else time.perf_counter
    fn()
    best = float("inf")
    for _ in range(trials):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def layouts(K: int, rows: int, width: int) -> dict:
    h_aug = torch.randn(K, rows, width + 1)  # previous layer's output + the ones column
    h_aug[..., -1] = 1.0
    w_aug = torch.randn(K, width + 1, width)  # W^T with the bias as its last row
    out_aug = torch.empty(K, rows, width + 1)
    h = h_aug[..., :-1].contiguous()
    w_t, bias = w_aug[:, :-1].contiguous(), w_aug[:, -1:].clone()
    out = torch.empty(K, rows, width)
    g = torch.randn(K, rows, width)
    w = w_t.transpose(1, 2).contiguous()
    dx = torch.empty(K, rows, width)
    gw_aug, gw, gb = torch.zeros(K, width + 1, width), torch.zeros(K, width, width), torch.zeros(K, 1, width)
    return {
        "forward, ones column (stride width+1)": lambda: torch.bmm(h_aug, w_aug, out=out_aug[..., :-1]),
        "forward, contiguous, bias copy + baddbmm_": lambda: out.copy_(bias.expand(K, rows, width)).baddbmm_(h, w_t),
        "dX (both layouts)": lambda: torch.bmm(g, w, out=dx),
        "dW + bias grad, ones column": lambda: gw_aug.baddbmm_(h_aug.transpose(1, 2), g),
        "dW + bias grad, contiguous + row sum": lambda: (gw.baddbmm_(h.transpose(1, 2), g),
                                                         gb.add_(g.sum(1, keepdim=True))),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", default="448,2046", help="rows per block")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--critics", type=int, default=2)
    p.add_argument("--trials", type=int, default=25)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res: dict = {}
    print(f"{a.threads} thread(s), {'CPU' if a.threads == 1 else 'wall'} time, best of {a.trials}; GFLOP/s")
    print("| rows | " + " | ".join(layouts(1, 2, 2)) + " |\n|---:|" + "---:|" * 5)
    for rows in (int(r) for r in a.rows.split(",")):
        flops = 2 * a.critics * rows * a.width * a.width
        res[rows] = {k: flops / best_time(fn, a.trials, a.threads == 1) / 1e9
                     for k, fn in layouts(a.critics, rows, a.width).items()}
        print(f"| {rows} | " + " | ".join(f"{v:.0f}" for v in res[rows].values()) + " |")
    return res


if __name__ == "__main__":
    main()

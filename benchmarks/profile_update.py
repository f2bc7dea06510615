#!/usr/bin/env python
"""Where the time of our update step goes, by phase and by kind of work.

Runs ``UpdateStep``'s operations (``bench_update.build_ours``, CORL's shape) phase by
phase -- replay-buffer sample, ``zero_grad``, loss forward, backward, Adam, Polyak
update -- and reports:

* each phase's wall time per step, measured without the profiler (median over steps);
* within each phase, from ``torch.profiler`` (same steps, shapes recorded), the self time
  of the ATen kernels by kind: the critics' penalty pass (the 2 x (1 + 3N) x B rows; what
  the FLOP count is about), its matmuls and its element-wise work (ReLU, masks, the
  per-block dLoss/dQ), other matmuls (actor passes, the actor term's and the target's
  critic passes), Adam's kernels, and everything else (element-wise, reductions, copies,
  sampling); "unattributed" is the phase's time outside ATen kernels (Python,
  TensorDict, dispatch, the autograd engine).

    python benchmarks/profile_update.py --threads 1 --mode eager --steps 10
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_update  # noqa: E402 (a sibling script, importable once its folder is on sys.path)

PHASES = ("sample", "zero_grad", "loss forward", "backward", "optimizer step", "target update")
MATMULS = {"mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::addbmm", "aten::addmm_",
           "aten::matmul", "aten::linear"}
KINDS = ("critic penalty matmuls", "critic penalty element-wise", "other matmuls", "Adam kernels",
         "other element-wise & kernels")


def phased_step(update, sample, times: dict[str, list[float]] | None = None) -> None:
    """``UpdateStep.__call__``'s operations, one labelled phase at a time."""
    from cql_modules.train.update import LOSS_KEYS

    def run(name, fn):
        t0 = time.perf_counter()
        with record_function(f"phase: {name}"):
            out = fn()
        if times is not None:
            times[name].append(time.perf_counter() - t0)
        return out

    batch = run("sample", sample)
    run("zero_grad", lambda: update.optimizer.zero_grad(set_to_none=True))
    out = run("loss forward", lambda: update.loss(batch))
    total = sum(out[k] for k in LOSS_KEYS if k in out.keys())
    run("backward", total.backward)
    run("optimizer step", update.optimizer.step)
    run("target update", update.target_updater.step)


def _kind(evt, phase: str, min_penalty_rows: int) -> str:
    name = evt.name
    # the penalty pass: inside FusedCriticGrad, or (autograd path) an operand with more
    # rows than the actor's [s, s'] pass
    parent, fused = evt.cpu_parent, False
    while parent is not None and not fused:
        fused, parent = parent.name == "FusedCriticGrad", parent.cpu_parent
    shapes = [s for s in (evt.input_shapes or []) if s]
    big = fused or (phase in ("loss forward", "backward")
                    and any(len(s) >= 2 and max(s[-2:]) >= min_penalty_rows for s in shapes))
    if name in MATMULS:
        return KINDS[0] if big else KINDS[2]
    if "adam" in name.lower() or "_foreach" in name:
        return KINDS[3]
    return KINDS[1] if big else KINDS[4]


def main(argv=None) -> dict:
    a = bench_update.single_mode_parser(__doc__).parse_args(argv)
    step, _ = bench_update.build_single_mode(a)
    device = torch.device("cpu")
    update = step.update
    for _ in range(3):
        phased_step(update, step.sample)

    times: dict[str, list[float]] = defaultdict(list)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        phased_step(update, step.sample, times)
    step_ms = 1e3 * (time.perf_counter() - t0) / a.steps
    wall = {ph: 1e3 * statistics.median(times[ph]) for ph in PHASES}

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            phased_step(update, step.sample)
    min_penalty_rows = 2 * a.batch_size + 1
    by = {ph: defaultdict(float) for ph in PHASES}
    prof_phase = defaultdict(float)
    for evt in prof.events():
        if evt.name.startswith("phase: "):
            prof_phase[evt.name[7:]] += evt.cpu_time_total / 1e3 / a.steps
            continue
        if not evt.name.startswith("aten::") or evt.self_cpu_time_total <= 0:
            continue
        parent = evt.cpu_parent
        while parent is not None and not parent.name.startswith("phase: "):
            parent = parent.cpu_parent
        if parent is not None:
            by[parent.name[7:]][_kind(evt, parent.name[7:], min_penalty_rows)] += evt.self_cpu_time_total / 1e3 / a.steps

    rows = []
    for ph in PHASES:
        kernels = sum(by[ph].values())
        # the profiled phase's time outside kernels, scaled to the unprofiled wall time
        scale = wall[ph] / prof_phase[ph] if prof_phase[ph] else 0.0
        rows.append({"phase": ph, "wall_ms": wall[ph], "profiled_ms": prof_phase[ph],
                     **{k: by[ph][k] * scale for k in KINDS},
                     "unattributed": max(0.0, prof_phase[ph] - kernels) * scale})
    total = {k: sum(r[k] for r in rows) for k in ("wall_ms", *KINDS, "unattributed")}
    flops = bench_update.flop_counts(a.batch_size, a.num_actions, a.hidden, 3)["cql_spec_minimal"]
    print(f"\n{bench_update.machine_info(device)['cpu_model']}, {torch.get_num_threads()} threads, mode {a.mode}: "
          f"{step_ms:.1f} ms/step ({1e3 / step_ms:.2f} updates/s, {flops / step_ms / 1e6:.0f} GFLOP/s); "
          "kernel columns are profiler self times rescaled to the unprofiled wall time of their phase")
    print("| phase | wall ms/step | " + " | ".join(KINDS) + " | unattributed (Python, dispatch, autograd) |")
    print("|---|---:|" + "---:|" * (len(KINDS) + 1))
    for r in [*rows, {"phase": "**total**", **total}]:
        print(f"| {r['phase']} | {r['wall_ms']:.2f} | " + " | ".join(f"{r[k]:.2f}" for k in KINDS)
              + f" | {r['unattributed']:.2f} |")
    res = {"threads": torch.get_num_threads(), "mode": a.mode, "step_ms": step_ms, "phases": rows, "total": total,
           "machine": bench_update.machine_info(device),
           "top_ops": bench_update.profile_step(step, f"ours:{a.mode}", a.steps, device, row_limit=15)["top_ops"]}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()

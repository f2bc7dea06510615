#!/usr/bin/env python
"""Speed benchmark of one complete CQL update step.

Times, in one process, alternating implementations round by round (so that the noise of
shared cores hits every implementation alike) and reporting medians of the per-round
rates:

* ``ours:<mode>``  this project's ``CQLLoss`` stepped by ``cql_modules.train.update.UpdateStep``
  (one row per mode of ``OUR_MODES`` selected with ``--modes``);
* ``torchrl-cql``  ``torchrl.objectives.CQLLoss`` set up and stepped like TorchRL's own
  ``sota-implementations/cql/cql_offline.py`` (three Adams grouped, ``loss_actor`` /
  ``loss_actor_bc`` switch, ``loss_qvalue + loss_cql``, ``loss_alpha``, SoftUpdate);
* ``torchrl-sac``  ``torchrl.objectives.SACLoss`` stepped like ``sota-implementations/sac``
  (CQL's cost relative to its SAC backbone).

A step is: sample a batch from a ``TensorDictReplayBuffer`` (``LazyTensorStorage`` over a
synthetic dataset), loss, backward, optimizer step(s), Polyak update. All implementations
use the same networks (``make_actor`` / ``make_critic``), batch and number of sampled
actions. The fp32 and bf16 matrix-multiply peaks are measured in the same run, and every
rate is converted to an achieved fraction of the fp32 peak with an analytic FLOP count
(see ``flop_counts``).

Usage::

    python benchmarks/bench_update.py                      # CORL shape, eager
    python benchmarks/bench_update.py --modes eager,compile
    python benchmarks/bench_update.py --profile            # + torch.profiler of ours:eager
    python benchmarks/bench_update.py --baselines none --modes eager --rounds 3   # quick A/B

Writes ``benchmarks/results/<device>-<date>-<time>.json`` (or ``--json PATH``) and prints a
markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

# --------------------------------------------------------------------------------------
# Modes of our step: name -> keyword arguments per component ("loss": CQLLoss,
# "optimizer": make_optimizer, "step": UpdateStep; "loss_attrs": attributes set on the
# built loss, a callable value is called with the loss). Adding a fast mode is one line; a
# mode whose kwargs the installed code does not accept is reported as "unsupported".
OUR_MODES: dict[str, dict[str, dict]] = {
    "eager": {},
    "compile": {"step": {"compile": True}},
    "compile-max-autotune": {"step": {"compile": "max-autotune-no-cudagraphs"}},
    "bf16-critic": {"loss": {"critic_compute_dtype": torch.bfloat16}},
    "compile-bf16-critic": {"loss": {"critic_compute_dtype": torch.bfloat16}, "step": {"compile": True}},
    # CUDA graphs through inductor (on CPU the same as "compile"); --cuda-graph instead
    # captures the whole step (loss, backward, Adam, SoftUpdate): UpdateStep(cuda_graph=True)
    "compile-reduce-overhead": {"step": {"compile": "reduce-overhead"}},
    "eager-foreach-adam": {"optimizer": {"fused": False}},
    # fused-pass blocks of 2048 rows at any thread count (the default before cache_blocking's rule)
    "eager-2048-blocks": {"loss_attrs": {"fused_block_rows": lambda loss: 2048}},
    "eager-autograd-critic": {"loss": {"fused_critic": False}},
    # UpdateStep's opt-in glibc tuning is process-wide: every row built after this one (the
    # baselines included) runs with it; run it alone for a clean A/B.
    "eager-tuned-malloc": {"step": {"tune_allocator": True}},
}
MODE_COMPONENTS = ("loss", "optimizer", "step", "loss_attrs")


PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BASELINE_NAMES = ("corl-structured", "torchrl-cql", "torchrl-sac")
# every row gets a ratio against each of these rows' rates (median and paired per round)
REFERENCES = {"corl": "corl-structured", "torchrl_cql": "torchrl-cql"}

SCHEMA_VERSION = 1
OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
NUM_CRITICS = 2

if importlib.util.find_spec("cql_modules") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if str(Path(__file__).resolve().parent) not in sys.path:  # sibling contestants (corl_structured.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*[Tt]arget network updater.*")
    warnings.filterwarnings("ignore", message=".*lock_.*")


# ======================================================================================
# FLOP accounting
# ======================================================================================
def mlp_linear_dims(in_dim: int, hidden: int, layers: int, out_dim: int) -> list[tuple[int, int]]:
    """(in, out) of every Linear of an MLP with ``layers`` hidden layers of width ``hidden``."""
    dims, width = [], in_dim
    for _ in range(layers):
        dims.append((width, hidden))
        width = hidden
    dims.append((width, out_dim))
    return dims


def row_costs(dims: list[tuple[int, int]]) -> dict[str, int]:
    """FLOPs per input row of one MLP pass, by what the pass must differentiate.

    A Linear with ``in`` inputs and ``out`` outputs costs ``2*in*out`` FLOPs per row forward
    (one multiply-add per weight). Backward: the weight gradient ``dW = X^T dY`` costs the
    same again, the input gradient ``dX = dY W`` too. Bias, activation, tanh-Gaussian and
    logsumexp element-wise work, and the optimizer (O(#params)), are ignored (< 1%).

    * ``fwd``          forward only (targets, detached samples):            F
    * ``param_grad``   grads for the weights, input is data (no dX at the first layer):
                       F + F + (F - f1) = 3F - f1
    * ``input_grad``   frozen weights, gradient to the input (actor term through detached
                       critics: dX at every layer, no dW):                  2F
    with F = sum over layers of 2*in*out and f1 the first layer's share.
    """
    F = sum(2 * i * o for i, o in dims)
    f1 = 2 * dims[0][0] * dims[0][1]
    return {"fwd": F, "param_grad": 3 * F - f1, "input_grad": 2 * F}


def flop_counts(B: int, N: int, hidden: int, layers: int, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM,
                K: int = NUM_CRITICS) -> dict[str, float]:
    """Analytic FLOPs of one update (matmuls only), for each accounting.

    Actor: ``obs -> hidden x layers -> 2*act`` (loc, log-std); critic: ``obs+act -> ... -> 1``.
    Rows per network (B batch, N sampled actions per proposal, K critics):

    ``cql_spec_minimal`` (the spec's update, done once; used for every CQL row's GFLOP/s):
        actor  : B rows param_grad (a_pi, log pi at s; the N penalty samples at s share this
                 distribution) + B rows fwd (pi(.|s') for the target and penalty actions,
                 detached)
        critics: K*(3N+1)*B rows param_grad (Q(s,a) and 3N proposals, all at s)
                 + K*B rows input_grad (actor term, critic weights detached)
                 + K*B rows fwd (target critics at (s', a'))
    ``ours_evaluated``: as minimal, but the actor runs s and s' as one stacked [2, B] pass,
        so its backward covers 2B rows.
    ``torchrl_cql_evaluated`` (what torchrl 0.14.1 CQLLoss computes): actor 2B rows
        param_grad (loss_actor and loss_actor_bc each sample at s) + (1+2N)B rows fwd
        (target at s', N repeated states at s and at s'); critics as minimal
        (K*B TD + 3*K*N*B penalty rows param_grad, K*B input_grad, K*B fwd target).
    ``corl_structured_evaluated`` (``benchmarks/corl_structured.py``, CORL's trainer): actor
        B param_grad (policy at s) + B fwd (target action at s') + 2NB fwd (N repeated
        states at s and at s'); critics K*(3N+1)*B param_grad + K*B full backward (the
        actor loss also forms the critics' weight gradients, which CORL then discards:
        3F per row) + K*B fwd target.
    ``sac_minimal`` (= TorchRL SACLoss, used for the SAC row's GFLOP/s): actor B param_grad
        + B fwd; critics K*B param_grad + K*B input_grad + K*B fwd.
    """
    a = row_costs(mlp_linear_dims(obs_dim, hidden, layers, 2 * act_dim))
    c = row_costs(mlp_linear_dims(obs_dim + act_dim, hidden, layers, 1))
    critic_common = K * B * c["input_grad"] + K * B * c["fwd"]
    cql_critic = K * (3 * N + 1) * B * c["param_grad"] + critic_common
    return {
        "cql_spec_minimal": B * a["param_grad"] + B * a["fwd"] + cql_critic,
        "ours_evaluated": 2 * B * a["param_grad"] + cql_critic,
        "torchrl_cql_evaluated": 2 * B * a["param_grad"] + (1 + 2 * N) * B * a["fwd"] + cql_critic,
        "corl_structured_evaluated": B * a["param_grad"] + (1 + 2 * N) * B * a["fwd"]
        + K * (3 * N + 1) * B * c["param_grad"] + K * B * 3 * c["fwd"] + K * B * c["fwd"],
        "sac_minimal": B * a["param_grad"] + B * a["fwd"] + K * B * c["param_grad"] + critic_common,
    }


# ======================================================================================
# Machine, peaks, memory
# ======================================================================================
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat (steal counted as busy)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    total = sum(f[:8])
    return total - idle, total


class RoundMeter:
    """Wall time of a timed round, and how much of the machine *other* processes used
    meanwhile: (machine busy CPU - this process's CPU) / machine CPU capacity. On shared
    cores a round with a high foreign load is slowed by contention (2 OpenMP threads
    spin-waiting on each other suffer far more than 2x), so the JSON keeps it per round."""

    def __enter__(self):
        self.t0, self.p0, self.s0 = time.perf_counter(), time.process_time(), _cpu_ticks()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        ours = self.cpu = time.process_time() - self.p0
        s1 = _cpu_ticks()
        self.foreign = None
        if self.s0 and s1 and s1[1] > self.s0[1]:
            hz = os.sysconf("SC_CLK_TCK")
            busy, total = (s1[0] - self.s0[0]) / hz, (s1[1] - self.s0[1]) / hz
            self.foreign = min(1.0, max(0.0, (busy - ours) / total))
        return False


def machine_info(device: torch.device) -> dict:
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
    }
    for mod in ("torchrl", "tensordict"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            info[mod] = None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = m.group(1).strip() if m else platform.processor()
        flags = set((re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M) or [None, ""])[1].split())
        info["cpu_flags"] = sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                                                              "amx_bf16", "amx_tile", "amx_fp16"})
    except OSError:
        info["cpu_model"] = platform.processor() or None
        info["cpu_flags"] = []
    info["cpu_caches_per_core_bytes"] = _cpu_caches()
    try:  # totals over the machine's cores, as lscpu states them ("2 MiB (2 instances)")
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        info["lscpu_caches"] = dict(re.findall(r"^(L\w+) cache:\s+(.+)$", lscpu, re.M))
    except (OSError, subprocess.SubprocessError):
        info["lscpu_caches"] = None
    info["device"] = str(device)
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu_model"]
    try:
        root = Path(__file__).resolve().parent.parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                            timeout=5).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "cql_modules"], cwd=root,
                                                capture_output=True, text=True, timeout=5).stdout.strip())
    except Exception:
        info["git_commit"], info["git_dirty"] = None, None
    return info


def _cpu_caches() -> dict[str, int] | None:
    try:
        from cql_modules.objectives.cache_blocking import cpu_cache_bytes
    except ImportError:  # an older checkout
        return None
    return cpu_cache_bytes()


def matmul_peak(dtype: torch.dtype, shapes: dict[str, tuple[int, int, int]], device: torch.device,
                seconds: float, trials: int = 3) -> dict:
    """Best GFLOP/s of ``torch.mm`` ([m,k] @ [k,n], 2*m*k*n FLOPs) over shapes and trials;
    a 4-tuple shape ``(b, m, k, n)`` times ``torch.bmm`` (what the vmapped ensemble runs), a
    shape whose name contains "oneDNN" times oneDNN's linear (faster than ``torch.mm`` on
    some CPUs: the peak is the best GEMM torch offers, whichever the update uses)."""
    by_shape = {}
    for name, shape in shapes.items():
        b, (m, k, n) = (shape[0], shape[1:]) if len(shape) == 4 else (1, shape)
        mm = torch.bmm if len(shape) == 4 else torch.mm
        lead = (b,) if len(shape) == 4 else ()
        onednn = "oneDNN" in name
        if onednn:
            op = torch.ops.mkldnn._linear_pointwise
            mm = lambda x, w: op(x, w, None, "none", [None], "")  # noqa: E731 (x @ w^T)
        try:
            x = torch.randn(*lead, m, k, device=device).to(dtype)
            y = torch.randn(*lead, *((n, k) if onednn else (k, n)), device=device).to(dtype)
            for _ in range(2):
                mm(x, y)
            _sync(device)
            best = 0.0
            for _ in range(trials):
                it, t0 = 0, time.perf_counter()
                while True:
                    mm(x, y)
                    it += 1
                    if it % 4 == 0 or seconds <= 0:
                        _sync(device)
                        dt = time.perf_counter() - t0
                        if dt >= seconds:
                            break
                best = max(best, 2 * b * m * k * n * it / dt / 1e9)
            by_shape[name] = {"b": b, "m": m, "k": k, "n": n, "gflops": best}
        except Exception as e:  # e.g. a dtype without a kernel on this machine
            by_shape[name] = {"b": b, "m": m, "k": k, "n": n, "gflops": None, "error": repr(e)}
    vals = [v["gflops"] for v in by_shape.values() if v["gflops"]]
    return {"gflops": max(vals) if vals else None, "by_shape": by_shape}


def _allocator_tuned() -> bool | None:
    """Whether cql_modules' process-wide glibc tuning (UpdateStep) ran in this process:
    then every row, baselines included, ran with it."""
    try:
        from cql_modules.train.update import tune_cpu_allocator
    except ImportError:
        return None
    info = getattr(tune_cpu_allocator, "cache_info", None)
    return bool(info().currsize) if info else None


def _proc_status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _peak_tensor_bytes(step: Callable[[], object]) -> int:
    """Peak of live CPU tensor bytes allocated during ``step()`` above those alive before
    it, from the profiler's allocation/free records (allocator-independent: glibc
    tuning that keeps freed pages resident does not hide or inflate it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise RuntimeError("the profiler recorded no memory events")
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def measure_step_memory(step: Callable[[], object], device: torch.device) -> dict:
    """Peak memory of one update step (sampling included), after warm-up.

    ``step_increase_mb``: the step's peak of live tensor memory above what was alive
    before it (activations, gradients, temporaries): ``torch.cuda.max_memory_allocated``
    on CUDA, the profiler's allocation records on CPU. ``peak_mb``: on CUDA the absolute
    allocated peak, on CPU the process's peak RSS so far (VmHWM / ru_maxrss).
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"method": "torch.cuda.max_memory_allocated", "peak_mb": peak / 2**20,
                "step_increase_mb": (peak - base) / 2**20}
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        increase = _peak_tensor_bytes(step)
    hwm = _proc_status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": "torch.profiler memory records; peak_mb = process VmHWM",
            "peak_mb": hwm / 1024, "step_increase_mb": increase / 2**20}


# ======================================================================================
# Data and implementations
# ======================================================================================
def make_replay_buffer(size: int, batch_size: int, device: torch.device, seed: int):
    from tensordict import TensorDict
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
    from torchrl.data.replay_buffers.samplers import RandomSampler

    g = torch.Generator().manual_seed(seed)
    data = TensorDict(
        {
            "observation": torch.randn(size, OBS_DIM, generator=g),
            "action": torch.rand(size, ACT_DIM, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(size, OBS_DIM, generator=g),
                "reward": torch.randn(size, 1, generator=g),
                "done": torch.rand(size, 1, generator=g) < 0.001,
                "terminated": torch.rand(size, 1, generator=g) < 0.001,
            },
        },
        [size],
    )
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(size, device=device), sampler=RandomSampler(),
                                batch_size=batch_size)
    rb.extend(data)
    return rb


def _nets(args, device):
    from cql_modules import bounded_action_spec, make_actor, make_critic

    spec = bounded_action_spec(ACT_DIM)
    actor = make_actor(OBS_DIM, spec, hidden_dim=args.hidden, n_hidden_layers=args.layers, device=device)
    critic = make_critic(OBS_DIM, ACT_DIM, hidden_dim=args.hidden, n_hidden_layers=args.layers, device=device)
    return actor, critic


def _accepts(fn, kwargs: dict) -> list[str]:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    return [k for k in kwargs if k not in params]


def build_ours(mode: str, args, device, rb):
    from cql_modules import CQLLoss
    from cql_modules.train.update import UpdateStep, make_optimizer

    mode_kwargs = OUR_MODES[mode]
    bad = [c for c in mode_kwargs if c not in MODE_COMPONENTS]
    if bad:
        raise ValueError(f"mode {mode!r}: unknown components {bad}; use {MODE_COMPONENTS}")
    loss_kw, opt_kw, step_kw, loss_attrs = (mode_kwargs.get(c, {}) for c in MODE_COMPONENTS)
    missing = _accepts(CQLLoss.__init__, loss_kw) + _accepts(make_optimizer, opt_kw) + _accepts(UpdateStep.__init__, step_kw)
    if missing:
        raise NotImplementedError(f"unsupported: CQLLoss/make_optimizer/UpdateStep do not accept {missing}")
    actor, critic = _nets(args, device)
    loss = CQLLoss(actor, critic, num_qvalue_nets=NUM_CRITICS, num_actions=args.num_actions, **loss_kw).to(device)
    for name, value in loss_attrs.items():
        if not hasattr(loss, name):
            raise NotImplementedError(f"unsupported: CQLLoss has no attribute {name!r}")
        setattr(loss, name, value(loss) if callable(value) else value)
    if args.cuda_graph:  # the whole step captured once and replayed (UpdateStep's cuda_graph)
        opt_kw = {**opt_kw, "capturable": True}
        step_kw = {**step_kw, "cuda_graph": True, "cuda_graph_warmup": args.cuda_graph_warmup}
    update = UpdateStep(loss, make_optimizer(loss, **opt_kw), tau=5e-3, **step_kw)

    def step():
        return update(rb.sample())

    step.update, step.sample = update, rb.sample  # for profile_update.py's phase breakdown
    return step, loss


def build_corl_structured(args, device, rb):
    """``benchmarks/corl_structured.py``: two critic modules, three Adams, three backwards."""
    from cql_modules import make_critic
    from corl_structured import CORLStructuredCQL

    actor, critic_1 = _nets(args, device)
    critic_2 = make_critic(OBS_DIM, ACT_DIM, hidden_dim=args.hidden, n_hidden_layers=args.layers, device=device)
    update = CORLStructuredCQL(actor.module[0].module, critic_1.module, critic_2.module, ACT_DIM,
                               num_actions=args.num_actions)

    def step():
        return update.train(rb.sample())

    return step, update


def build_torchrl_cql(args, device, rb):
    """torchrl.objectives.CQLLoss as sota-implementations/cql/cql_offline.py sets it up."""
    from torchrl.objectives import CQLLoss as TorchRLCQLLoss
    from torchrl.objectives import SoftUpdate, group_optimizers

    actor, critic = _nets(args, device)
    loss = TorchRLCQLLoss(actor, critic, loss_function="l2", temperature=1.0, min_q_weight=10.0,
                          max_q_backup=False, deterministic_backup=False, num_random=args.num_actions,
                          with_lagrange=False, lagrange_thresh=5.0)
    loss.make_value_estimator(gamma=0.99, device=device)
    target_updater = SoftUpdate(loss, tau=5e-3)
    actor_opt = torch.optim.Adam(loss.actor_network_params.flatten_keys().values(), lr=3e-5, weight_decay=0.0)
    critic_opt = torch.optim.Adam(loss.qvalue_network_params.flatten_keys().values(), lr=3e-4, weight_decay=0.0)
    alpha_opt = torch.optim.Adam([loss.log_alpha], lr=3e-5, weight_decay=0.0)
    optimizer = group_optimizers(actor_opt, critic_opt, alpha_opt)
    policy_eval_start = torch.tensor(0, device=device)
    it = [0]

    def update(data, iteration):  # cql_offline.py's update()
        loss_vals = loss(data.to(device))
        actor_loss = torch.where(iteration >= policy_eval_start, loss_vals["loss_actor"], loss_vals["loss_actor_bc"])
        q_loss = loss_vals["loss_qvalue"] + loss_vals["loss_cql"]
        alpha_prime_loss = loss_vals.get("loss_alpha_prime", None)
        if alpha_prime_loss is None:
            alpha_prime_loss = 0
        total = actor_loss + q_loss + loss_vals["loss_alpha"] + alpha_prime_loss
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        target_updater.step()
        return total.detach(), loss_vals.detach()

    def step():
        it[0] += 1
        return update(rb.sample(), torch.tensor(it[0], device=device))

    return step, loss


def build_torchrl_sac(args, device, rb):
    """torchrl.objectives.SACLoss as sota-implementations/sac sets it up."""
    from torchrl.objectives import SACLoss, SoftUpdate, group_optimizers

    actor, critic = _nets(args, device)
    loss = SACLoss(actor_network=actor, qvalue_network=critic, num_qvalue_nets=NUM_CRITICS, loss_function="l2",
                   delay_actor=False, delay_qvalue=True, alpha_init=1.0)
    loss.make_value_estimator(gamma=0.99)
    target_updater = SoftUpdate(loss, tau=5e-3)
    optimizer = group_optimizers(
        torch.optim.Adam(list(loss.actor_network_params.flatten_keys().values()), lr=3e-4),
        torch.optim.Adam(list(loss.qvalue_network_params.flatten_keys().values()), lr=3e-4),
        torch.optim.Adam([loss.log_alpha], lr=3e-4),
    )

    def step():
        loss_td = loss(rb.sample())
        (loss_td["loss_actor"] + loss_td["loss_qvalue"] + loss_td["loss_alpha"]).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        target_updater.step()
        return loss_td.detach()

    return step, loss


# ======================================================================================
# Driver
# ======================================================================================
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="width of actor and critic hidden layers")
    p.add_argument("--layers", type=int, default=3, help="hidden layers of actor and critics")
    p.add_argument("--num-actions", type=int, default=10, help="N sampled actions per proposal (TorchRL num_random)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed updates per implementation per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates per implementation before the rounds")
    p.add_argument("--dataset-size", type=int, default=100_000)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="capture our whole update step in a CUDA graph (tensordict's CudaGraphModule); needs --device cuda")
    p.add_argument("--cuda-graph-warmup", type=int, default=3, help="eager steps before the capture")
    p.add_argument("--modes", default="eager", help=f"comma-separated modes of ours, from {list(OUR_MODES)}")
    p.add_argument("--baselines", default=",".join(BASELINE_NAMES),
                   help=f"comma-separated from {list(BASELINE_NAMES)}, or 'none'")
    p.add_argument("--quiet-load", type=float, default=0.10,
                   help="a round is 'quiet' when other processes used less than this fraction of the machine")
    p.add_argument("--min-quiet-rounds", type=int, default=0,
                   help="run extra rounds (up to --max-rounds) until every implementation has this many quiet rounds")
    p.add_argument("--max-rounds", type=int, default=20)
    p.add_argument("--no-memory", action="store_true", help="skip the per-step peak-memory measurement")
    p.add_argument("--peak-seconds", type=float, default=0.3, help="time per shape and trial of the matmul peak")
    p.add_argument("--peak-square", type=int, default=2048, help="size of the square matmul of the peak")
    p.add_argument("--profile", action="store_true", help="torch.profiler breakdown of ours (first mode)")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-shapes", action="store_true", help="group the profile by input shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None, help="free text stored in the JSON (e.g. what changed)")
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/<device>-<date>-<time>.json)")
    return p.parse_args(argv)


def single_mode_parser(doc: str) -> argparse.ArgumentParser:
    """Options of the scripts that time or profile one of our modes alone (CPU)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mode", default="eager", help=f"one of {list(OUR_MODES)}")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--num-actions", type=int, default=10)
    p.add_argument("--json", default=None)
    return p


def build_single_mode(a: argparse.Namespace):
    """``(step, loss)`` of ``a.mode`` at ``a``'s shape and threads over a 20k-transition buffer."""
    if a.threads:
        torch.set_num_threads(a.threads)
    _quiet_warnings()
    bargs = parse_args(["--batch-size", str(a.batch_size), "--hidden", str(a.hidden),
                        "--num-actions", str(a.num_actions), "--dataset-size", "20000"])
    device = torch.device("cpu")
    torch.manual_seed(0)
    rb = make_replay_buffer(bargs.dataset_size, a.batch_size, device, 0)
    return build_ours(a.mode, bargs, device, rb)


def _fmt(x, spec=".2f", none="n/a"):
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _paired(r: dict, key: str) -> str:
    """'1.23x [1.20-1.27]': the paired ratio's median and its range across rounds."""
    med, lo, hi = (r.get(f"ratio_vs_{key}_paired_{s}") for s in ("median", "min", "max"))
    return "n/a" if med is None else f"{med:.2f}x [{lo:.2f}-{hi:.2f}]"


def _kept(r: dict) -> str:
    kept = r.get("kept_buffers_mb")
    return f" (+{kept:.0f} kept)" if kept else ""


def render_table(res: dict) -> str:
    lines = [
        "| implementation | updates/s (median) | vs CORL-structured, paired [range] | vs torchrl CQLLoss, paired [range] "
        "| GFLOP/s | % of fp32 peak | best round | median of quiet rounds (n) | others' CPU load (median) "
        "| ms/update | step peak tensor MB (+ kept between steps) | % of bf16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {r.get('error', '')[:100]} | | | | | | | | | | |")
            continue
        mem = r.get("memory") or {}
        name = r["name"] + (" *" if r["flops_accounting"] == "sac_minimal" else "")
        frac = r["fraction_fp32_peak"]
        load = r["foreign_load_median"]
        lines.append(
            f"| {name} | {_fmt(r['updates_per_s_median'])} | {_paired(r, 'corl')} | {_paired(r, 'torchrl_cql')} "
            f"| {_fmt(r['gflops_per_s'], '.1f')} | {_fmt(100 * frac if frac else None, '.1f')}% "
            f"| {_fmt(r['updates_per_s_best'])} | {_fmt(r['updates_per_s_quiet_median'])} ({r['quiet_rounds']}) "
            f"| {_fmt(100 * load if load is not None else None, '.0f')}% | {_fmt(r['ms_per_update_median'], '.1f')} "
            f"| {_fmt(mem.get('step_increase_mb'), '.0f')}{_kept(r)} "
            f"| {_fmt(100 * r['fraction_bf16_peak'] if r['fraction_bf16_peak'] else None, '.1f')}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the benchmark; returns the dict written as JSON. Process-wide settings it
    touches (torch threads with --threads, glibc malloc thresholds for the memory probe,
    warning filters) are restored on return, so it can be called from tests."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            _quiet_warnings()
            return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.cuda_graph and device.type != "cuda":
        raise SystemExit("--cuda-graph needs --device cuda (CUDA graphs exist only on NVIDIA GPUs)")
    if args.cuda_graph:  # the capture happens during the untimed warm-up
        args.warmup = max(args.warmup, args.cuda_graph_warmup + 2)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in OUR_MODES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}; known: {list(OUR_MODES)}")
    baselines = [] if args.baselines in ("", "none") else [b for b in args.baselines.split(",") if b]
    if [b for b in baselines if b not in BASELINE_NAMES]:
        raise SystemExit(f"unknown baselines in {baselines}; known: {list(BASELINE_NAMES)}")

    started = _dt.datetime.now()
    machine = machine_info(device)
    machine["loadavg_start"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"# CQL update benchmark  ({machine['device_name']}, {machine['torch_threads']} threads, "
          f"torch {machine['torch']}, torchrl {machine['torchrl']})", flush=True)

    # ---- matmul peaks (shapes: a square one, and the critic's dominant layer shapes)
    R = (3 * args.num_actions + 1) * args.batch_size  # rows of one critic's penalty pass
    h = args.hidden
    shapes = {f"square {args.peak_square}": (args.peak_square,) * 3,
              f"critic fwd/dX [{R}x{h}]@[{h}x{h}]": (R, h, h),
              f"critic dW [{h}x{R}]@[{R}x{h}]": (h, R, h),
              f"critic ensemble bmm [{NUM_CRITICS}x{R}x{h}]@[{NUM_CRITICS}x{h}x{h}]": (NUM_CRITICS, R, h, h)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        shapes[f"square {args.peak_square} oneDNN linear"] = (args.peak_square,) * 3
    # measured now and again after the rounds; the best of both is "the peak" (a peak
    # measured while other processes compete would overstate every fraction of it)
    with RoundMeter() as m:
        peaks = {k: matmul_peak(dt, shapes, device, args.peak_seconds) for k, dt in PEAK_DTYPES.items()}
    for v in peaks.values():
        v["start_gflops"] = v["gflops"]
    peaks_load = [m.foreign]
    print(f"matmul peak: fp32 {_fmt(peaks['fp32']['gflops'], '.0f')} GFLOP/s, "
          f"bf16 {_fmt(peaks['bf16']['gflops'], '.0f')} GFLOP/s", flush=True)

    flops = flop_counts(args.batch_size, args.num_actions, args.hidden, args.layers)

    # ---- build and warm up every implementation
    torch.manual_seed(args.seed)
    rb = make_replay_buffer(args.dataset_size, args.batch_size, device, args.seed)
    impls: list[dict] = []  # built ones: {"rec", "step"}
    records: list[dict] = []  # every requested row, failed ones included
    specs = [(f"ours:{m}", "ours", lambda m=m: build_ours(m, args, device, rb), "cql_spec_minimal", "ours_evaluated")
             for m in modes]
    if "corl-structured" in baselines:
        specs.append(("corl-structured", "baseline", lambda: build_corl_structured(args, device, rb),
                      "cql_spec_minimal", "corl_structured_evaluated"))
    if "torchrl-cql" in baselines:
        specs.append(("torchrl-cql", "baseline", lambda: build_torchrl_cql(args, device, rb), "cql_spec_minimal",
                      "torchrl_cql_evaluated"))
    if "torchrl-sac" in baselines:
        specs.append(("torchrl-sac", "baseline", lambda: build_torchrl_sac(args, device, rb), "sac_minimal",
                      "sac_minimal"))
    for name, kind, build, acc, evaluated in specs:
        rec = {"name": name, "kind": kind, "status": "ok", "flops_accounting": acc,
               "reference_flops": flops[acc], "evaluated_flops": flops[evaluated]}
        try:
            torch.manual_seed(args.seed)
            step, module = build()
            rec["num_parameters"] = sum(p.numel() for p in module.parameters())
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step()
            _sync(device)
            rec["warmup_s"] = time.perf_counter() - t0
            # buffers a loss keeps between steps (our fused pass's workspace): memory the
            # step's transient peak does not show
            kept = getattr(module, "_fused_workspace", {}).values()
            rec["kept_buffers_mb"] = sum(t.numel() * t.element_size() for t in kept) / 2**20
            print(f"  built {name}: warm-up {args.warmup} steps in {rec['warmup_s']:.1f}s", flush=True)
            impls.append({"rec": rec, "step": step})
        except NotImplementedError as e:
            rec.update(status="unsupported", error=str(e))
        except Exception as e:  # keep the other rows
            rec.update(status="failed", error=f"{type(e).__name__}: {e}")
            print(f"  {name} FAILED: {rec['error']}", flush=True)
        rec.setdefault("updates_per_s_rounds", [])
        rec.setdefault("foreign_load_rounds", [])
        rec.setdefault("updates_per_cpu_s_rounds", [])
        records.append(rec)

    # ---- sampling alone (part of every step above)
    t_sample = []
    for _ in range(max(1, args.rounds)):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            rb.sample()
        _sync(device)
        t_sample.append((time.perf_counter() - t0) / args.steps)

    # ---- timed rounds, alternating (rotated order each round); with --min-quiet-rounds,
    # extra rounds (up to --max-rounds) until every implementation has that many quiet ones
    def _needs_more(r: int) -> bool:
        if r < args.rounds:
            return True
        if r >= max(args.rounds, args.max_rounds) or not args.min_quiet_rounds:
            return False
        return any(sum(f is not None and f < args.quiet_load for f in i["rec"]["foreign_load_rounds"])
                   < args.min_quiet_rounds for i in impls)

    r = 0
    while impls and _needs_more(r):
        order = impls[r % len(impls):] + impls[: r % len(impls)] if impls else []
        for impl in order:
            _sync(device)
            with RoundMeter() as m:
                for _ in range(args.steps):
                    impl["step"]()
                _sync(device)
            impl["rec"]["updates_per_s_rounds"].append(args.steps / m.wall)
            impl["rec"]["foreign_load_rounds"].append(m.foreign)
            # per CPU-second of this process: with 1 thread, time spent descheduled by other
            # processes does not count (cache sharing still does)
            impl["rec"]["updates_per_cpu_s_rounds"].append(args.steps / m.cpu if m.cpu > 0 else None)
        summary = ", ".join(
            f"{i['rec']['name']} {i['rec']['updates_per_s_rounds'][-1]:.2f}"
            f" (others {_fmt(100 * i['rec']['foreign_load_rounds'][-1] if i['rec']['foreign_load_rounds'][-1] is not None else None, '.0f')}%)"
            for i in impls)
        extra = " (extra)" if r >= args.rounds else ""
        print(f"  round {r + 1}/{args.rounds}{extra}: {summary} updates/s", flush=True)
        r += 1

    # ---- peaks again: keep the best of the two measurements, per shape
    with RoundMeter() as m:
        peaks_end = {k: matmul_peak(dt, shapes, device, args.peak_seconds) for k, dt in PEAK_DTYPES.items()}
    peaks_load.append(m.foreign)
    for k, end in peaks_end.items():
        for shape, v in end["by_shape"].items():
            old_v = peaks[k]["by_shape"][shape]
            if v["gflops"] and (old_v["gflops"] is None or v["gflops"] > old_v["gflops"]):
                peaks[k]["by_shape"][shape] = v
        vals = [v["gflops"] for v in peaks[k]["by_shape"].values() if v["gflops"]]
        peaks[k]["gflops"] = max(vals) if vals else None
        peaks[k]["start_end_gflops"] = [peaks[k].get("start_gflops"), end["gflops"]]
    peaks["foreign_load_start_end"] = peaks_load

    # ---- memory of one step (after timing: profiling slows it)
    if not args.no_memory:
        for impl in impls:
            try:
                impl["rec"]["memory"] = measure_step_memory(impl["step"], device)
                impl["rec"]["memory"]["batch_size"] = args.batch_size
            except Exception as e:  # pragma: no cover
                impl["rec"]["memory"] = {"error": repr(e)}

    # ---- profile
    profile = None
    if args.profile and impls and impls[0]["rec"]["kind"] == "ours":
        with RoundMeter() as m:
            profile = profile_step(impls[0]["step"], impls[0]["rec"]["name"], args.profile_steps, device,
                                   shapes=args.profile_shapes)
        profile["foreign_load"] = m.foreign
        print(f"(others' CPU load during the profile: {_fmt(100 * m.foreign if m.foreign is not None else None, '.0f')}%)")

    # ---- assemble
    refs = {key: next((r for r in records if r["name"] == name and r["updates_per_s_rounds"]), None)
            for key, name in REFERENCES.items()}
    for rec in records:
        ups = rec["updates_per_s_rounds"]
        med = statistics.median(ups) if ups else None
        rec["updates_per_s_median"] = med
        rec["updates_per_s_best"] = max(ups) if ups else None
        quiet = [u for u, f in zip(ups, rec["foreign_load_rounds"]) if f is not None and f < args.quiet_load]
        rec["updates_per_s_quiet_median"] = statistics.median(quiet) if quiet else None
        rec["quiet_rounds"] = len(quiet)
        loads = [f for f in rec["foreign_load_rounds"] if f is not None]
        rec["foreign_load_median"] = statistics.median(loads) if loads else None
        per_cpu = [u for u in rec["updates_per_cpu_s_rounds"] if u]
        rec["updates_per_cpu_s_median"] = statistics.median(per_cpu) if per_cpu else None
        rec["ms_per_update_median"] = 1e3 / med if med else None
        rec["hours_per_million_updates"] = 1e6 / med / 3600 if med else None  # CORL: 11.5 h on a GTX 1080 Ti
        for key, ref in refs.items():
            ref_ups = ref["updates_per_s_rounds"] if ref else []
            rec[f"ratio_vs_{key}"] = med / statistics.median(ref_ups) if med and ref_ups else None
            # paired: the ratio within each round (both ran a few seconds apart), then the
            # median; min/max: the spread of the paired ratio across rounds
            pairs = [u / v for u, v in zip(ups, ref_ups)]
            rec[f"ratio_vs_{key}_paired_rounds"] = pairs
            for stat, fn in (("median", statistics.median), ("min", min), ("max", max)):
                rec[f"ratio_vs_{key}_paired_{stat}"] = fn(pairs) if pairs else None
            # the same from updates per CPU-second (contention-robust at 1 thread)
            cpu_pairs = [u / v for u, v in zip(rec["updates_per_cpu_s_rounds"], ref["updates_per_cpu_s_rounds"])
                         if u and v] if ref else []
            rec[f"ratio_vs_{key}_cpu_paired_median"] = statistics.median(cpu_pairs) if cpu_pairs else None
        rec["gflops_per_s"] = med * rec["reference_flops"] / 1e9 if med else None
        rec["gflops_per_s_evaluated"] = med * rec["evaluated_flops"] / 1e9 if med else None
        for key in PEAK_DTYPES:
            pk = peaks[key]["gflops"]
            rec[f"fraction_{key}_peak"] = rec["gflops_per_s"] / pk if med and pk else None
    machine["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    machine["glibc_allocator_tuned"] = _allocator_tuned()
    result = {
        "schema_version": SCHEMA_VERSION,
        "timestamp": started.isoformat(timespec="seconds"),
        "label": args.label,
        "config": {
            "batch_size": args.batch_size, "hidden": args.hidden, "layers": args.layers,
            "num_actions": args.num_actions, "obs_dim": OBS_DIM, "act_dim": ACT_DIM, "num_critics": NUM_CRITICS,
            "dataset_size": args.dataset_size, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
            "device": str(device), "threads": torch.get_num_threads(), "modes": modes, "baselines": baselines,
            "cuda_graph": args.cuda_graph,
            "seed": args.seed, "our_modes_table": {m: repr(kw) for m, kw in OUR_MODES.items()},
        },
        "machine": machine,
        "peaks": peaks,
        "flops_per_update": {**flops, "percentages_use": "cql_spec_minimal for every CQL row, sac_minimal for SAC",
                             "formula": flop_counts.__doc__.strip()},
        "sampling_ms_median": 1e3 * statistics.median(t_sample),
        "results": records,
        "profile": profile,
        "wall_s": (_dt.datetime.now() - started).total_seconds(),
    }

    slug = re.sub(r"[^a-z0-9]+", "-", str(machine["device_name"] or device.type).lower()).strip("-")[:40]
    path = Path(args.json) if args.json else (
        Path(__file__).resolve().parent / "results"
        / f"{slug}-{machine['torch_threads']}t-{started:%Y%m%d-%H%M%S}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))

    # ---- report
    print()
    print(render_table(result))
    print()
    print(f"* SAC row: GFLOP/s from SAC's own update ({flops['sac_minimal'] / 1e9:.2f} GFLOP); CQL rows use "
          f"the spec's minimal CQL update ({flops['cql_spec_minimal'] / 1e9:.2f} GFLOP; ours evaluates "
          f"{flops['ours_evaluated'] / 1e9:.2f}, torchrl CQLLoss {flops['torchrl_cql_evaluated'] / 1e9:.2f}).")
    fp32_bf16 = " | ".join(f"{k}: {_fmt(peaks[k]['gflops'], '.0f')} GFLOP/s (" + ", ".join(
        f"{s} {_fmt(x['gflops'], '.0f')}" for s, x in peaks[k]["by_shape"].items()) + ")" for k in PEAK_DTYPES)
    print(f"matmul peaks -- {fp32_bf16}")
    pk = peaks["fp32"]["gflops"]
    if pk:
        print(f"fp32 bound: {pk * 1e9 / flops['cql_spec_minimal']:.1f} CQL updates/s at 100% of the fp32 peak")
    print(f"batch sampling alone: {result['sampling_ms_median']:.2f} ms; glibc allocator tuned by UpdateStep "
          f"(opt-in, process-wide): {machine['glibc_allocator_tuned']}")
    if machine["torch_threads"] == 1:
        print("updates per CPU-second of this process (1 thread: time descheduled by others not counted), paired "
              "ratios vs CORL-structured / torchrl: " + ", ".join(
                  f"{r['name']} {_fmt(r.get('updates_per_cpu_s_median'))} "
                  f"({_fmt(r.get('ratio_vs_corl_cpu_paired_median'))}x / "
                  f"{_fmt(r.get('ratio_vs_torchrl_cql_cpu_paired_median'))}x)" for r in records if r["status"] == "ok"))
    loads = [f for r in records for f in r["foreign_load_rounds"] if f is not None]
    busy = sum(f >= args.quiet_load for f in loads)
    if busy:
        print(f"WARNING: {busy} of {len(loads)} timed rounds ran while other processes used >= "
              f"{100 * args.quiet_load:.0f}% of the machine's CPU (up to {100 * max(loads):.0f}%): such rounds are "
              f"not comparable; prefer the quiet-round medians / paired ratios, or rerun with --min-quiet-rounds")
    peak_loads = [f for f in peaks["foreign_load_start_end"] if f is not None]
    if peak_loads and min(peak_loads) >= args.quiet_load:
        print(f"WARNING: both matmul-peak measurements ran under contention ({[round(100 * f) for f in peak_loads]}% "
              f"foreign load): the peaks are understated and the '% of peak' columns overstated")
    mem_method = next((r["memory"].get("method") for r in records if r.get("memory")), None)
    if mem_method:
        print(f"step memory via {mem_method}; process peak RSS so far (MB): " + ", ".join(
            f"{r['name']} {_fmt(r['memory'].get('peak_mb'), '.0f')}" for r in records if r.get("memory")))
    print(f"machine: {machine['cpu_model']} ({machine['cpu_affinity']} usable cpus, flags {machine['cpu_flags']}), "
          f"{machine['torch_threads']} torch threads, torch {machine['torch']}, torchrl {machine['torchrl']}, "
          f"tensordict {machine['tensordict']}, device {machine['device_name']}, "
          f"loadavg {machine['loadavg_start']} -> {machine['loadavg_end']}")
    print(f"wrote {path}")
    return result


def profile_step(step, name: str, n: int, device: torch.device, row_limit: int = 25, shapes: bool = False) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    with profile(activities=acts, record_shapes=shapes) as prof:
        for _ in range(n):
            step()
        _sync(device)
    ka = prof.key_averages(group_by_input_shape=shapes)
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    rows = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
    top = [{"op": e.key + (f" {e.input_shapes}" if shapes else ""), "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / n,
            "self_cpu_pct": 100 * e.self_cpu_time_total / total, "calls_per_step": e.count / n,
            "cpu_total_ms_per_step": e.cpu_time_total / 1e3 / n} for e in rows]
    print(f"\n## torch.profiler: {name}, {n} steps, top {row_limit} ops by self CPU time "
          f"(total self CPU {total / 1e3 / n:.1f} ms/step)")
    print("| op | self CPU ms/step | % | calls/step |")
    print("|---|---:|---:|---:|")
    for t in top:
        print(f"| {t['op']} | {t['self_cpu_ms_per_step']:.2f} | {t['self_cpu_pct']:.1f} | {t['calls_per_step']:.0f} |")
    return {"implementation": name, "steps": n, "self_cpu_ms_per_step_total": total / 1e3 / n, "top_ops": top}


if __name__ == "__main__":
    main()

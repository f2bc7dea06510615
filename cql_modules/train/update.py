"""The CQL update step shared by the recipes and the benchmark.

One backward pass over the sum of the losses is exact here: ``CQLLoss`` routes gradients
(actor loss -> policy only, temperature losses -> their scalars only, critic loss ->
critics only), so the sum's gradient equals CORL's four separate backward passes, at a
fraction of the cost (no retained graphs). All parameter groups are stepped by one Adam
(``foreach``/``fused`` kernels) with per-group learning rates.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import SoftUpdate

from cql_modules.objectives.cql import CQLLoss

__all__ = ["make_optimizer", "UpdateStep", "LOSS_KEYS", "tune_cpu_allocator", "cuda_graph_problem"]

LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha", "loss_alpha_prime")


@functools.cache
def tune_cpu_allocator(mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed activation buffers in glibc's heap instead of returning them to the OS.

    A CQL update allocates and frees ~16 MB activations dozens of times; by default glibc
    serves such sizes with fresh ``mmap`` pages whose first-touch page faults cost more
    than the ReLUs themselves. Raising the mmap and trim thresholds (``mallopt``) made the
    CORL-shape CPU update 1.5x faster on the plain autograd path (8.9 -> 13.1 updates/s,
    see benchmarks/). Opt-in (``UpdateStep(tune_allocator=True)``): it changes the whole
    process. A no-op off glibc. Returns True when applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        )
    except (OSError, AttributeError):
        return False


def make_optimizer(
    loss: CQLLoss,
    *,
    actor_lr: float = 3e-5,
    critic_lr: float = 3e-4,
    alpha_lr: float | None = None,
    alpha_prime_lr: float | None = None,
    fused: bool | None = None,
    capturable: bool = False,
) -> torch.optim.Adam:
    """Adam over the actor, the critic ensemble, log_alpha and log_alpha_prime.

    CORL's defaults: alpha lr = policy lr, alpha' lr = critic lr. Param groups are named
    (``group["name"]``) so schedulers and logs can find them.
    """
    groups = [
        {"name": "actor", "params": list(loss.actor_network.parameters()), "lr": actor_lr},
        {"name": "critic", "params": list(loss.qvalue_network_params.values(True, True)), "lr": critic_lr},
    ]
    if loss.auto_alpha:
        groups.append({"name": "alpha", "params": [loss.log_alpha], "lr": actor_lr if alpha_lr is None else alpha_lr})
    if loss.lagrange:
        groups.append({"name": "alpha_prime", "params": [loss.log_alpha_prime],
                       "lr": critic_lr if alpha_prime_lr is None else alpha_prime_lr})
    device = loss.action_low.device
    if fused is None:
        fused = device.type in ("cuda", "cpu")
    kwargs = {"fused": True} if fused else {"foreach": True}
    # capturable: the step counters live on the device, so a CUDA graph can replay Adam
    return torch.optim.Adam(groups, capturable=capturable, **kwargs)


class UpdateStep:
    """``step(batch) -> metrics``: loss, one backward, one optimizer step, Polyak update.

    After the optimizer step it calls ``loss.count_update()``: the behaviour-cloning
    warm-up counts optimizer updates (docs/cql.md, section 3).

    Args:
        loss: the :class:`CQLLoss`.
        optimizer: from :func:`make_optimizer`.
        tau: Polyak rate of the target critics (TorchRL ``SoftUpdate``).
        target_update_period: update the targets every this many steps.
        compile: wrap the loss forward + backward in ``torch.compile`` (``True`` or a
            compile mode such as ``"max-autotune-no-cudagraphs"``).
        tune_allocator: on CPU, apply :func:`tune_cpu_allocator` (process-wide; off by
            default: the fused critic pass reuses its buffers and no longer needs it).
        cuda_graph: capture the whole step (zero_grad, loss, backward, Adam, Polyak update)
            once in a CUDA graph (tensordict's ``CudaGraphModule``) and replay it: no
            per-kernel launch or Python cost. Needs the loss on a CUDA device, an optimizer
            made with ``capturable=True`` and ``target_update_period=1`` (a replayed graph
            runs no Python branch; the BC warm-up is a ``torch.where`` on a device counter,
            so it replays correctly). Batches must keep one shape.
        cuda_graph_warmup: eager steps before the capture (``torch.compile`` needs a few).

    Returns detached metric tensors (no host sync): aggregate them over a logging
    interval and call ``.item()`` once per interval.
    """

    def __init__(
        self,
        loss: CQLLoss,
        optimizer: torch.optim.Optimizer,
        *,
        tau: float = 5e-3,
        target_update_period: int = 1,
        compile: bool | str = False,
        tune_allocator: bool = False,
        cuda_graph: bool = False,
        cuda_graph_warmup: int = 3,
    ) -> None:
        if tune_allocator and loss.action_low.device.type == "cpu":
            tune_cpu_allocator()
        self.loss = loss
        self.optimizer = optimizer
        self.target_updater = SoftUpdate(loss, tau=tau)
        self.target_update_period = int(target_update_period)
        self.n_steps = 0
        fn: Callable[[TensorDictBase], TensorDictBase] = self._loss_and_grad
        if compile:
            mode = compile if isinstance(compile, str) else None
            fn = torch.compile(fn, mode=mode, dynamic=False)
        self._loss_and_grad_fn = fn
        self._graph = None
        if cuda_graph:
            problem = cuda_graph_problem(loss, optimizer, self.target_update_period)
            if problem:
                raise ValueError(f"cuda_graph: {problem}")
            from tensordict.nn import CudaGraphModule

            self._graph = CudaGraphModule(self._step, warmup=cuda_graph_warmup, in_keys=[], out_keys=[],
                                          device=loss.action_low.device)

    def _loss_and_grad(self, batch: TensorDictBase) -> TensorDictBase:
        out = self.loss(batch)
        total = sum(out[k] for k in LOSS_KEYS if k in out.keys())
        total.backward()
        return out.detach()

    def _step(self, batch: TensorDictBase, update_target: bool = True) -> TensorDictBase:
        self.optimizer.zero_grad(set_to_none=True)
        out = self._loss_and_grad_fn(batch)
        self.optimizer.step()
        self.loss.count_update()  # the BC warm-up counts optimizer updates
        if update_target:
            self.target_updater.step()
        return out

    def __call__(self, batch: TensorDictBase) -> TensorDict:
        if self._graph is not None:
            out = self._graph(batch)
        else:
            out = self._step(batch, update_target=(self.n_steps + 1) % self.target_update_period == 0)
        self.n_steps += 1
        return out


def cuda_graph_problem(loss: CQLLoss, optimizer: torch.optim.Optimizer, target_update_period: int) -> str | None:
    """Why :class:`UpdateStep` cannot replay this setup as a CUDA graph (None if it can)."""
    device = loss.action_low.device
    if device.type != "cuda":
        return f"needs the loss on a CUDA device, it is on {device} (use the CPU path without cuda_graph)"
    if not all(group.get("capturable") for group in optimizer.param_groups):
        return "the optimizer must be capturable: make_optimizer(..., capturable=True)"
    if target_update_period != 1:
        return f"target_update_period must be 1 (a replayed graph runs no Python branch), got {target_update_period}"
    return None

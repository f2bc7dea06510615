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

__all__ = ["make_optimizer", "UpdateStep", "LOSS_KEYS", "tune_cpu_allocator"]

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
    return torch.optim.Adam(groups, **kwargs)


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

    def _loss_and_grad(self, batch: TensorDictBase) -> TensorDictBase:
        out = self.loss(batch)
        total = sum(out[k] for k in LOSS_KEYS if k in out.keys())
        total.backward()
        return out.detach()

    def __call__(self, batch: TensorDictBase) -> TensorDict:
        self.optimizer.zero_grad(set_to_none=True)
        out = self._loss_and_grad_fn(batch)
        self.optimizer.step()
        self.loss.count_update()  # the BC warm-up counts optimizer updates
        self.n_steps += 1
        if self.n_steps % self.target_update_period == 0:
            self.target_updater.step()
        return out

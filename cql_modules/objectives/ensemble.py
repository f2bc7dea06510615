"""The critic ensemble of a loss: K critics as stacked parameters, evaluated in one call.

Shared by the losses of :mod:`cql_modules.objectives`. The ensemble follows TorchRL's
functional conventions (``convert_to_functional``, parameters stacked on a leading dim,
``vmap`` over them like ``SACLoss``) so that a critic may be any ``TensorDictModuleBase``
(e.g. ``TensorDictSequential(encoder, ValueOperator(...))``); a plain ReLU MLP inside a
``TensorDictModule`` takes explicit batched matmuls instead, and on CPU the fused
cache-blocked gradient of :mod:`cql_modules.objectives.fused` (docs/cql.md, section 7).
"""
from __future__ import annotations

import copy

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.objectives.utils import _vmap_func

from cql_modules.modules import ensemble_mlp, is_relu_mlp
from cql_modules.objectives.cache_blocking import default_block_rows
from cql_modules.objectives.fused import FusedCriticConfig, FusedCriticGrad

__all__ = [
    "CriticEnsembleMixin",
    "bounded_action_spec_of",
    "check_loss_options",
    "read_key",
    "reinit_parameters",
]


def check_loss_options(
    *, num_qvalue_nets: int, temperature: float, cql_alpha: float, reduction: str, loss_function: str
) -> None:
    """The constructor checks both losses share: one message per invalid value."""
    if num_qvalue_nets < 1:
        raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if cql_alpha < 0:
        raise ValueError(f"cql_alpha must be >= 0, got {cql_alpha}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if loss_function not in ("l2", "l1", "smooth_l1"):
        raise ValueError(f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}")


def reinit_parameters(module: nn.Module) -> None:
    """Re-draw a module's parameters with its own init (top-most ``reset_parameters``)."""
    if callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()
        return
    for child in module.children():
        reinit_parameters(child)


def bounded_action_spec_of(actor: TensorDictModuleBase, action_spec):
    """The actor's bounded action spec: ``action_spec`` itself, or the one entry of the
    actor's (composite) spec with finite bounds (its log-prob and loc/scale have none)."""
    if action_spec is None:
        action_spec = getattr(actor, "spec", None)
        if action_spec is not None and hasattr(action_spec, "keys"):  # Composite keyed by out_keys
            keys = action_spec.keys(True, True)
            bounded = [k for k in actor.out_keys if k in keys and hasattr(getattr(action_spec[k], "space", None), "low")]
            action_spec = action_spec[bounded[-1]] if bounded else None
    if action_spec is None or not hasattr(getattr(action_spec, "space", None), "low"):
        raise ValueError(
            "CQLLoss needs a bounded action spec for its uniform proposal: pass action_spec=Bounded(...) "
            "or build the actor with one (cql_modules.make_actor)"
        )
    return action_spec


def read_key(td: TensorDictBase, key: NestedKey) -> torch.Tensor:
    """``td[key]``, or a ``KeyError`` naming the missing key."""
    value = td.get(key, None)
    if value is None:
        raise KeyError(
            f"the batch has no entry {unravel_key(key)!r} (present: {sorted(map(str, td.keys(True, True)))}); "
            "add it or point the loss to yours with loss.set_keys(...)"
        )
    return value


class CriticEnsembleMixin:
    """Critic-ensemble methods of a ``LossModule`` (mixed into :class:`~cql_modules.CQLLoss`).

    The loss provides ``tensor_keys.action`` / ``tensor_keys.state_action_value``,
    ``action_low`` (device and dtype), ``critic_compute_dtype``, ``fused_critic``,
    ``fused_block_rows`` and ``reduction``, and declares ``qvalue_network``,
    ``qvalue_network_params`` and ``target_qvalue_network_params`` as annotations.
    """

    def _setup_critic_ensemble(self, qvalue_network, num_qvalue_nets: int) -> None:
        """K independently initialised copies (each re-runs its own ``reset_parameters``),
        stacked by ``convert_to_functional`` (also for K = 1), with target copies."""
        if isinstance(qvalue_network, (list, tuple)):
            critics = list(qvalue_network)
            if len(critics) != num_qvalue_nets:
                raise ValueError(
                    f"got {len(critics)} critics but num_qvalue_nets={num_qvalue_nets}; "
                    "pass one critic or exactly num_qvalue_nets of them"
                )
        else:
            critics = [qvalue_network]
            for _ in range(num_qvalue_nets - 1):
                c = copy.deepcopy(qvalue_network)
                reinit_parameters(c)
                critics.append(c)
        if not isinstance(critics[0], TensorDictModuleBase):
            raise TypeError(
                "qvalue_network must be a TensorDictModuleBase (e.g. a ValueOperator from "
                f"cql_modules.make_critic), got {type(critics[0]).__name__}"
            )
        self.convert_to_functional(critics, "qvalue_network", num_qvalue_nets, create_target_params=True)
        # From one module, TensorDict.from_modules returns expanded views, not leaf parameters:
        # without this, a single critic would never train.
        params = self.qvalue_network_params
        expanded = [(k, v) for k, v in params.items(True, True) if v.requires_grad and not isinstance(v, nn.Parameter)]
        if expanded:
            params.unlock_()
            for key, value in expanded:
                params.set(key, nn.Parameter(value.detach().clone()))
            params.lock_()
        self.num_qvalue_nets = num_qvalue_nets
        self._fused_workspace: dict = {}  # the fused pass's buffers, reused across updates (fused.py)
        # Fast path for plain ReLU MLP critics: explicit batched matmuls (ensemble_mlp).
        self._fast_critic = isinstance(critics[0], TensorDictModule) and is_relu_mlp(getattr(critics[0], "module", None))
        if self._fast_critic:
            linear_idx = [str(i) for i, m in enumerate(critics[0].module.children()) if isinstance(m, nn.Linear)]
            self._q_weight_keys = [("module", i, "weight") for i in linear_idx]
            self._q_bias_keys = [("module", i, "bias") for i in linear_idx]
        # Generic path, as TorchRL's SACLoss: the critic module vmapped over the stacked params.
        self._vmap_critic = _vmap_func(self.qvalue_network, (None, 0), randomness=self.vmap_randomness)

    def _critic_obs_keys(self) -> list[NestedKey]:
        return [k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action]

    def _critic_inputs(self, td: TensorDictBase, actions: torch.Tensor, next_state: bool = False) -> list[torch.Tensor]:
        """The critic's inputs in its ``in_keys`` order for ``actions`` ``[B, M, A]``: the
        observations of ``td`` (batch ``[B]``, under ``"next"`` if ``next_state``)
        broadcast to ``[B, M, *]``."""
        inputs = []
        for key in self.qvalue_network.in_keys:
            if key == self.tensor_keys.action:
                inputs.append(actions)
            else:
                x = read_key(td, unravel_key(("next", key)) if next_state else key)
                inputs.append(x[:, None].expand(*actions.shape[:2], *x.shape[1:]))
        return inputs

    def _q_values(self, params: TensorDictBase, inputs: list[torch.Tensor]) -> torch.Tensor:
        """All K critics on inputs ``[B, M, *]`` in one batched call -> ``[K, B, M]``."""
        lead = inputs[0].shape[:2]
        if self._fast_critic:
            x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
            weights = [params.get(k) for k in self._q_weight_keys]
            biases = [params.get(k) for k in self._q_bias_keys]
            q = ensemble_mlp(weights, biases, x.reshape(-1, x.shape[-1]), self.critic_compute_dtype)
            return q.reshape(-1, *lead)
        critic_in = TensorDict(dict(zip(self.qvalue_network.in_keys, inputs)), batch_size=lead)
        dtype = self.critic_compute_dtype
        with torch.autocast(inputs[0].device.type, dtype=dtype, enabled=dtype is not None):
            out = self._vmap_critic(critic_in, params)
        q = out.get(self.tensor_keys.state_action_value, None)
        if q is None:
            raise KeyError(
                f"CQLLoss: the critic wrote no {self.tensor_keys.state_action_value!r} (it wrote "
                f"{sorted(map(str, out.keys(True, True)))}); name its output with loss.set_keys(state_action_value=...)"
            )
        if q.shape[1:] != (*lead, 1):
            raise ValueError(
                f"CQLLoss: the critic's {self.tensor_keys.state_action_value!r} has shape {tuple(q.shape[1:])} for "
                f"inputs of batch {tuple(lead)}; it must be {(*lead, 1)} (keep the trailing value dim of 1)"
            )
        # bf16 under autocast -> the loss's dtype; float64 critics keep float64
        return q.squeeze(-1).to(torch.promote_types(q.dtype, self.action_low.dtype))

    def _use_fused_critic(self, inputs: list[torch.Tensor]) -> bool:
        if self.fused_critic is False or not self._fast_critic or self.reduction == "none":
            return False
        # the fused pass forms parameter gradients only: critic inputs that need a gradient
        # (a shared encoder in front of the critic) take the plain path
        if not torch.is_grad_enabled() or any(x.requires_grad for x in inputs):
            return False
        if torch.compiler.is_compiling():  # inductor fuses the plain graph itself
            return False
        return self.fused_critic is True or self.action_low.device.type == "cpu"

    def default_fused_block_rows(self) -> int:
        """Rows per block of the fused pass when ``fused_block_rows`` is None, from this
        ensemble's widest layer, depth and compute dtype (objectives/cache_blocking.py)."""
        weights = [self.qvalue_network_params.get(k) for k in self._q_weight_keys]
        width = max(w.shape[1] for w in weights)  # widest layer output
        return default_block_rows(width, self.num_qvalue_nets, len(weights) - 1,
                                  self.critic_compute_dtype or weights[0].dtype)

    def _critic_q(self, td, actions, y, log_density, mc_return, alpha_prime, state_weight, options):
        """Q of all K critics at the dataset action and the 3N proposals, one batched call,
        ``[K, B, 1 + 3N]``; plus the fused path's gradient carrier (or None)."""
        inputs = self._critic_inputs(td, actions)
        params = self.qvalue_network_params
        if not self._use_fused_critic(inputs):
            return self._q_values(params, inputs), None
        # same Q values; the critic gradient is formed block by block (fused.py)
        x = torch.cat(inputs, dim=-1)
        rows = self.fused_block_rows or self.default_fused_block_rows()
        cfg = FusedCriticConfig(options, rows, self.critic_compute_dtype, self._fused_workspace)
        return FusedCriticGrad.apply(
            cfg, x.reshape(-1, x.shape[-1]), y, log_density, mc_return, alpha_prime, state_weight,
            *[params.get(k) for k in self._q_weight_keys], *[params.get(k) for k in self._q_bias_keys],
        )

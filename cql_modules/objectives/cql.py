"""Conservative Q-Learning (and Cal-QL) as a TorchRL ``LossModule``.

The math is fixed by ``cql-spec.md`` (CQL reference code + CORL). Section numbers in
comments refer to that spec. Differences from ``torchrl.objectives.CQLLoss`` (all
regression-tested, see ``tests/test_loss_defects.py``):

* Lagrange: alpha' multiplies the penalty, and its loss is detached from the critic.
* The logsumexp runs over all 3N sampled actions of a state, not over 3 values per action.
* Actions sampled at s' are scored as Q(s, a_next), not Q(s', a_next).
* The penalty is per state ([B]); nothing grows with B^2.
* Max-target backup: min over critics first, then max over actions, with the entropy of
  the arg-max action; random actions are drawn inside the action spec's bounds.
* Ensemble copies keep the critic's own initialisation (TorchRL re-samples expanded
  parameters uniformly between their min and max, destroying orthogonal init).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torch.func import functional_call, vmap
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import _reduce, distance_loss

from cql_modules.objectives.fused import FusedCriticConfig, FusedCriticGrad
from cql_modules.modules import ensemble_mlp, is_relu_mlp

__all__ = ["CQLLoss"]


def _reinit(module: nn.Module) -> None:
    """Re-draw a module's parameters with its own init (top-most ``reset_parameters``)."""
    if callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()
        return
    for child in module.children():
        _reinit(child)


class CQLLoss(LossModule):
    r"""Conservative Q-Learning loss (Kumar et al., 2020) with CORL's conventions.

    Computes, for one batch of transitions, the SAC actor and temperature losses and the
    critic loss ``sum_k TD_k + penalty_k`` where the conservative penalty of critic k is
    ``cql_alpha * mean(tau * logsumexp(X_k / tau) - Q_k(s, a))`` over 3N sampled actions
    (uniform, pi(.|s), pi(.|s'), all scored at s), optionally weighted by a Lagrange
    multiplier alpha' and calibrated by Monte-Carlo returns (Cal-QL).

    Args:
        actor_network: a ``ProbabilisticActor`` whose ``get_dist`` returns a tanh-squashed
            distribution (e.g. :func:`cql_modules.make_actor`).
        qvalue_network: one critic (e.g. :func:`cql_modules.make_critic`), a
            ``TensorDictModule`` whose ``module`` maps its ``in_keys`` (observation
            keys and the action key) to Q; or a list of ``num_qvalue_nets`` critics.
            A single critic is copied ``num_qvalue_nets`` times and each copy is
            re-initialised with its own ``reset_parameters``. The ensemble is stored as
            stacked parameters and evaluated in one batched call.

    Keyword Args:
        num_qvalue_nets: ensemble size K (>= 2 for the min over critics).
        action_spec: bounded action spec; defaults to the actor's spec. Its bounds
            define the uniform proposal of the penalty.
        gamma: discount.
        num_actions: N, sampled actions per proposal.
        importance_sample: subtract proposal log-densities (CQL(H) with IS) or use the
            3N+1 raw values (dataset action included).
        lagrange, target_action_gap: learn alpha' to keep the gap at the target.
        temperature: tau of the logsumexp.
        cql_alpha: penalty weight.
        max_target_backup, backup_entropy: TD-target options (spec section 3).
        clip_diff_min, clip_diff_max: clamp of the per-state gap.
        bc_steps: number of initial updates with a behaviour-cloning actor loss.
        alpha_multiplier, auto_alpha, target_entropy: SAC temperature (section 1);
            ``target_entropy="auto"`` is ``-|A|``.
        calibrated: Cal-QL lower bound by ``mc_return``.
        loss_function: TD distance, ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses of the
            batch shape).
        critic_compute_dtype: optional lower precision (``torch.bfloat16`` or
            ``"bfloat16"``) for the critic ensemble's hidden layers, where nearly all
            FLOPs are. Master weights, gradients, the last layer and every loss formula
            stay in full precision. Off by default: check learning before using it.
        fused_critic: compute the critic loss's gradient block by block with
            :class:`cql_modules.objectives.fused.FusedCriticGrad` (same values and
            gradients, far less memory traffic). ``None`` (default): on for ReLU-MLP
            critics on CPU with a ``"mean"``/``"sum"`` reduction (also with
            ``critic_compute_dtype``); ``False``: plain autograd; ``True``: on wherever it applies.

    The output holds ``loss_actor``, ``loss_qvalue``, ``loss_alpha`` (and
    ``loss_alpha_prime`` with ``lagrange``), to be summed and back-propagated once, plus
    detached metrics with CORL's names. The per-sample TD error is written to the input
    under ``td_error`` for prioritised replay.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from cql_modules import CQLLoss, make_actor, make_critic
        >>> actor = make_actor(3, 2, hidden_dim=32)
        >>> critic = make_critic(3, 2, hidden_dim=32)
        >>> loss = CQLLoss(actor, critic, num_actions=4)
        >>> updater = SoftUpdate(loss, tau=5e-3)
        >>> B = 8
        >>> batch = TensorDict({
        ...     "observation": torch.randn(B, 3),
        ...     "action": torch.rand(B, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, 3), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, [B])
        >>> out = loss(batch)
        >>> total = out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]
        >>> total.backward()
        >>> updater.step()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensor keys read and written by the loss (configure with ``set_keys``).

        Attributes:
            observation: observation key (documentation only: the networks' own
                ``in_keys`` decide what they read).
            action: dataset action.
            reward, done, terminated: read under ``"next"``; only ``terminated`` stops
                bootstrapping (time-limit truncation does not).
            state_action_value: the critic's output key.
            mc_return: Monte-Carlo return-to-go (Cal-QL).
            priority: where the per-sample TD error is written.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        state_action_value: NestedKey = "state_action_value"
        mc_return: NestedKey = "mc_return"
        priority: NestedKey = "td_error"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    actor_network: TensorDictModule
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        action_spec=None,
        gamma: float = 0.99,
        num_actions: int = 10,
        importance_sample: bool = True,
        lagrange: bool = False,
        target_action_gap: float = -1.0,
        temperature: float = 1.0,
        cql_alpha: float = 10.0,
        max_target_backup: bool = False,
        backup_entropy: bool = False,
        clip_diff_min: float = -math.inf,
        clip_diff_max: float = math.inf,
        bc_steps: int = 0,
        alpha_multiplier: float = 1.0,
        auto_alpha: bool = True,
        target_entropy: float | str = "auto",
        calibrated: bool = False,
        loss_function: str = "l2",
        reduction: str = "mean",
        critic_compute_dtype: torch.dtype | str | None = None,
        fused_critic: bool | None = None,
    ) -> None:
        super().__init__()
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {cql_alpha}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}")

        self.actor_network = actor_network

        # Critic ensemble: K independently initialised copies, stacked.
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
                _reinit(c)
                critics.append(c)
        if not isinstance(getattr(critics[0], "module", None), nn.Module):
            raise TypeError(
                "qvalue_network must be a TensorDictModule with a `module` (e.g. a ValueOperator "
                "from cql_modules.make_critic)"
            )
        self.convert_to_functional(
            critics if num_qvalue_nets > 1 else critics[0],
            "qvalue_network",
            num_qvalue_nets if num_qvalue_nets > 1 else None,
            create_target_params=True,
        )
        self.num_qvalue_nets = num_qvalue_nets
        # Names of the stacked parameters relative to the critic's inner module, for
        # torch.func.functional_call (keys look like ("module", "0", "weight")).
        self._q_param_keys = [k for k in self.qvalue_network_params.keys(True, True)]
        for k in self._q_param_keys:
            if k[0] != "module":
                raise TypeError(f"critic parameter {k} is outside its `module`; wrap the critic in a ValueOperator")
        self._q_param_names = [".".join(k[1:]) for k in self._q_param_keys]
        # Fast path for plain ReLU MLP critics: explicit batched matmuls (ensemble_mlp).
        self._fast_critic = is_relu_mlp(critics[0].module)
        if self._fast_critic:
            linear_idx = [str(i) for i, m in enumerate(critics[0].module.children()) if isinstance(m, nn.Linear)]
            self._q_weight_keys = [("module", i, "weight") for i in linear_idx]
            self._q_bias_keys = [("module", i, "bias") for i in linear_idx]

        # Action bounds (uniform proposal, target entropy).
        if action_spec is None:
            action_spec = getattr(actor_network, "spec", None)
            if action_spec is not None and hasattr(action_spec, "keys"):  # Composite keyed by out_keys
                # a ProbabilisticActor writes its sampled action last (after loc/scale)
                key = actor_network.out_keys[-1]
                action_spec = action_spec[key] if key in action_spec.keys(True, True) else None
        if action_spec is None or not hasattr(getattr(action_spec, "space", None), "low"):
            raise ValueError(
                "CQLLoss needs a bounded action spec for its uniform proposal: pass action_spec=Bounded(...) "
                "or build the actor with one (cql_modules.make_actor)"
            )
        low = torch.as_tensor(action_spec.space.low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(action_spec.space.high, dtype=torch.float32).reshape(-1)
        if not torch.isfinite(low).all() or not torch.isfinite(high).all() or not (high > low).all():
            raise ValueError(f"action bounds must be finite with high > low, got low={low}, high={high}")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        action_dim = low.numel()
        # log density of the uniform proposal: -sum_j log(high_j - low_j)
        self.register_buffer("uniform_log_density", -torch.log(high - low).sum())
        if target_entropy == "auto":
            target_entropy = -float(action_dim)
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy)))

        # Temperatures.
        self.auto_alpha = auto_alpha
        self.alpha_multiplier = float(alpha_multiplier)
        if auto_alpha:
            self.log_alpha = nn.Parameter(torch.zeros(()))
        self.lagrange = lagrange
        if lagrange:
            self.log_alpha_prime = nn.Parameter(torch.ones(()))  # CORL starts at 1.0

        self.gamma = float(gamma)
        self.num_actions = int(num_actions)
        self.importance_sample = importance_sample
        self.target_action_gap = float(target_action_gap)
        self.temperature = float(temperature)
        self.cql_alpha = float(cql_alpha)
        self.max_target_backup = max_target_backup
        self.backup_entropy = backup_entropy
        self.clip_diff_min = float(clip_diff_min)
        self.clip_diff_max = float(clip_diff_max)
        self.bc_steps = int(bc_steps)
        self.calibrated = calibrated
        self.loss_function = loss_function
        self.reduction = reduction
        if isinstance(critic_compute_dtype, str):
            critic_compute_dtype = getattr(torch, critic_compute_dtype, None)
            if not isinstance(critic_compute_dtype, torch.dtype):
                raise ValueError("critic_compute_dtype must name a torch float dtype, e.g. 'bfloat16'")
        self.critic_compute_dtype = critic_compute_dtype
        self.fused_critic = fused_critic
        # rows per block of the fused critic pass: activations of a block stay in L2
        self.fused_block_rows = 2048
        # Update counter for the BC warm-up; a buffer so that it is checkpointed.
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ helpers
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass  # the TD target is computed in the loss (spec section 3), no estimator

    @property
    def in_keys(self):
        obs_keys = [*self.actor_network.in_keys, *self._critic_obs_keys()]
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.terminated),
            *obs_keys,
            *[("next", k) for k in obs_keys],
        ]
        if self.calibrated:
            keys.append(self.tensor_keys.mc_return)
        return list(dict.fromkeys(unravel_key(k) for k in keys))

    @property
    def out_keys(self):
        keys = ["loss_actor", "loss_qvalue", "loss_alpha"]
        return keys + ["loss_alpha_prime"] if self.lagrange else keys

    def _sample_policy(self, dist, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` reparameterised samples ``[n, *batch, A]`` and their log-probs ``[n, *batch]``.

        Overridable: tests replace it to feed identical samples to a reference.
        """
        if hasattr(dist, "rsample_and_log_prob"):
            # scores the exact pre-tanh value (stable when tanh saturates)
            return dist.rsample_and_log_prob((n,))
        action = dist.rsample((n,))
        return action, dist.log_prob(action)

    def _sample_uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform actions inside the action spec, ``[*shape, A]``."""
        u = torch.rand(*shape, self.action_low.numel(), device=self.action_low.device, dtype=self.action_low.dtype)
        return self.action_low + (self.action_high - self.action_low) * u

    def _q_values(self, params: TensorDictBase, obs_td: TensorDictBase, action: torch.Tensor) -> torch.Tensor:
        """All K critics at (obs, action) in one batched call -> ``[K, *action.shape[:-1]]``.

        ``obs_td`` holds the critic's non-action inputs with batch ``[B]``; ``action`` is
        ``[*lead, B, A]`` and the observations are broadcast over ``lead``.
        """
        lead = action.shape[:-1]
        inputs = self._critic_inputs(obs_td, action)
        if self._fast_critic:
            x = torch.cat(inputs, dim=-1) if len(inputs) > 1 else inputs[0]
            weights = [params.get(k) for k in self._q_weight_keys]
            biases = [params.get(k) for k in self._q_bias_keys]
            q = ensemble_mlp(weights, biases, x.reshape(-1, x.shape[-1]), self.critic_compute_dtype)
            return q.reshape(-1, *lead)
        module = self.qvalue_network.module
        p = {name: params.get(key) for name, key in zip(self._q_param_names, self._q_param_keys)}

        def q(p_k):
            return functional_call(module, p_k, tuple(inputs))

        dtype = self.critic_compute_dtype
        with torch.autocast(action.device.type, dtype=dtype, enabled=dtype is not None):
            out = q(p).unsqueeze(0) if self.num_qvalue_nets == 1 else vmap(q)(p)
        return out.squeeze(-1).to(action.dtype)

    def _critic_inputs(
        self, obs_td: TensorDictBase, action: torch.Tensor, state_major: bool = False
    ) -> list[torch.Tensor]:
        """The critic's inputs in its ``in_keys`` order, the ``[B]`` observations broadcast
        to ``action``'s leading dims: ``[*lead, B, A]``, or ``[B, M, A]`` if state-major."""
        lead = action.shape[:-1]
        inputs = []
        for key in self.qvalue_network.in_keys:
            if key == self.tensor_keys.action:
                inputs.append(action)
            else:
                x = obs_td.get(key)
                x = x[:, None] if state_major else x
                inputs.append(x.expand(*lead, x.shape[-1]))
        return inputs

    def _fused_config(self) -> FusedCriticConfig:
        # built per call: recipes switch options (e.g. calibration) between phases
        return FusedCriticConfig(
            num_actions=self.num_actions,
            importance_sample=self.importance_sample,
            temperature=self.temperature,
            clip_diff_min=self.clip_diff_min,
            clip_diff_max=self.clip_diff_max,
            calibrated=self.calibrated,
            loss_function=self.loss_function,
            block_rows=self.fused_block_rows,
            compute_dtype=self.critic_compute_dtype,
        )

    def _use_fused_critic(self) -> bool:
        if self.fused_critic is False or not self._fast_critic or self.reduction == "none":
            return False
        if not torch.is_grad_enabled():
            return False
        if torch.compiler.is_compiling():  # inductor fuses the plain graph itself
            return False
        return self.fused_critic is True or self.action_low.device.type == "cpu"

    @property
    def alpha(self) -> torch.Tensor:
        if self.auto_alpha:
            return self.log_alpha.exp() * self.alpha_multiplier
        return torch.full((), self.alpha_multiplier, device=self.action_low.device)

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch_shape = tensordict.batch_size
        td = tensordict.reshape(-1) if len(batch_shape) != 1 else tensordict
        keys = self.tensor_keys
        N = self.num_actions
        action = td.get(keys.action)
        B = action.shape[0]
        reward = td.get(("next", keys.reward)).reshape(B)
        terminated = td.get(("next", keys.terminated)).reshape(B)

        # ---- one actor pass at s and s' (stacked on a leading dim of 2)
        obs_now = td.select(*self.actor_network.in_keys)
        obs_next = td.get("next").select(*self.actor_network.in_keys)
        obs_both = TensorDict(
            {k: torch.stack([obs_now.get(k), obs_next.get(k)]) for k in self.actor_network.in_keys},
            batch_size=[2, B],
        )
        dist = self.actor_network.get_dist(obs_both)
        n_target = N if self.max_target_backup else 1
        # index 0..n_target-1: a_pi (at s) / target actions (at s'); the next N: penalty actions
        actions, log_probs = self._sample_policy(dist, n_target + N)  # [n, 2, B, A], [n, 2, B]
        a_pi, logp_pi = actions[0, 0], log_probs[0, 0]
        a_target, logp_target = actions[:n_target, 1].detach(), log_probs[:n_target, 1].detach()
        a_cur, logp_cur = actions[n_target:, 0].detach(), log_probs[n_target:, 0].detach()
        a_next, logp_next = actions[n_target:, 1].detach(), log_probs[n_target:, 1].detach()

        # ---- section 1: temperature
        alpha = self.alpha
        if self.auto_alpha:
            loss_alpha = -(self.log_alpha * (logp_pi + self.target_entropy).detach())
        else:
            loss_alpha = torch.zeros_like(logp_pi)
        alpha_d = alpha.detach()

        # ---- section 2: actor (critic parameters detached)
        obs_now_q = self._critic_obs(td)
        q_pi = self._q_values(self.qvalue_network_params.detach(), obs_now_q, a_pi[None])
        loss_actor = alpha_d * logp_pi - q_pi[:, 0].amin(0)
        if self.bc_steps > 0:
            bc_logp = self._bc_log_prob(dist, action)
            loss_actor = torch.where(
                self.n_updates < self.bc_steps, alpha_d * logp_pi - bc_logp, loss_actor
            )

        # ---- section 3: TD target (no gradient)
        with torch.no_grad():
            next_q_td = self._critic_obs(td.get("next"))
            q_targ = self._q_values(self.target_qvalue_network_params, next_q_td, a_target)  # [K, n_t, B]
            q_targ_min = q_targ.amin(0)  # min over critics first ...
            if self.max_target_backup:
                v_next, idx = q_targ_min.max(0)  # ... then max over actions
                logp_v = logp_target.gather(0, idx[None]).squeeze(0)
            else:
                v_next, logp_v = q_targ_min[0], logp_target[0]
            if self.backup_entropy:
                v_next = v_next - alpha_d * logp_v
            y = reward + self.gamma * (~terminated.bool()).to(reward.dtype) * v_next

        # ---- section 4: Q at the dataset action and the 3N proposals, one batched call
        a_rand = self._sample_uniform((N, B))
        all_actions = torch.cat([action[None].to(a_rand.dtype), a_rand, a_next, a_cur], dim=0)  # [1+3N, B, A]
        mc = td.get(keys.mc_return).reshape(B).to(y.dtype) if self.calibrated else None
        if self.lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            penalty_scale = alpha_prime.detach() * self.cql_alpha
        else:
            penalty_scale = torch.full((), self.cql_alpha, device=y.device, dtype=y.dtype)
        carrier = None
        if self._use_fused_critic():
            # same Q values; the critic gradient is formed block by block (fused_critic.py)
            log_density = torch.cat(
                [torch.zeros_like(logp_next[:1]), self.uniform_log_density.expand(N, B), logp_next, logp_cur]
            ).T  # [B, 1+3N]
            x = torch.cat(self._critic_inputs(obs_now_q, all_actions.transpose(0, 1), state_major=True), dim=-1)
            params = self.qvalue_network_params
            q_sm, carrier = FusedCriticGrad.apply(
                self._fused_config(), x.reshape(-1, x.shape[-1]), y, log_density, mc, penalty_scale,
                1.0 / B if self.reduction == "mean" else 1.0,
                *[params.get(k) for k in self._q_weight_keys], *[params.get(k) for k in self._q_bias_keys],
            )
            q_all = q_sm.transpose(1, 2)  # [K, 1+3N, B], no autograd graph
        else:
            q_all = self._q_values(self.qvalue_network_params, obs_now_q, all_actions)  # [K, 1+3N, B]
        q_data = q_all[:, 0]
        q_rand, q_next, q_cur = q_all[:, 1 : 1 + N], q_all[:, 1 + N : 1 + 2 * N], q_all[:, 1 + 2 * N :]
        metrics = {}
        if self.calibrated:
            with torch.no_grad():
                for k in range(self.num_qvalue_nets):
                    metrics[f"bound_rate_cql_q{k + 1}_current_actions"] = (q_cur[k] < mc).float().mean()
                    metrics[f"bound_rate_cql_q{k + 1}_next_actions"] = (q_next[k] < mc).float().mean()
            q_cur_b, q_next_b = torch.maximum(q_cur, mc), torch.maximum(q_next, mc)
        else:
            q_cur_b, q_next_b = q_cur, q_next

        if self.importance_sample:
            x = torch.cat(
                [q_rand - self.uniform_log_density, q_next_b - logp_next, q_cur_b - logp_cur], dim=1
            )  # [K, 3N, B]
        else:
            x = torch.cat([q_rand, q_data[:, None], q_next_b, q_cur_b], dim=1)  # [K, 3N+1, B]
        ood = self.temperature * torch.logsumexp(x / self.temperature, dim=1)  # [K, B]
        gap = (ood - q_data).clamp(self.clip_diff_min, self.clip_diff_max)  # [K, B]

        if self.lagrange:
            shifted = gap - self.target_action_gap
            penalty = penalty_scale * shifted  # [K, B]
            loss_alpha_prime = -0.5 * alpha_prime * self.cql_alpha * shifted.detach().sum(0)  # [B]
        else:
            penalty = self.cql_alpha * gap

        td_loss = distance_loss(q_data, y.expand_as(q_data), self.loss_function)  # [K, B]
        loss_qvalue = (td_loss + penalty).sum(0)  # [B]

        # ---- write-back and outputs
        td_error = (q_data.detach() - y).abs().amax(0)
        tensordict.set(keys.priority, td_error.reshape(batch_shape))
        if self.training:
            self.n_updates.add_(1)

        out_shape = batch_shape if self.reduction == "none" else None

        def red(x):
            x = _reduce(x, self.reduction)
            return x.reshape(out_shape) if out_shape is not None else x

        out = {
            "loss_actor": red(loss_actor),
            "loss_qvalue": red(loss_qvalue) if carrier is None else red(loss_qvalue) + carrier,
            "loss_alpha": red(loss_alpha),
        }
        if self.lagrange:
            out["loss_alpha_prime"] = red(loss_alpha_prime)
            metrics["alpha_prime"] = alpha_prime
            metrics["alpha_prime_loss"] = loss_alpha_prime.mean()
        with torch.no_grad():
            metrics.update(
                policy_loss=loss_actor.mean(),
                alpha_loss=loss_alpha.mean(),
                alpha=alpha_d,
                log_pi=logp_pi.mean(),
                average_target_q=v_next.mean(),
            )
            # CORL's cql_std_q: spread of the raw (Cal-QL-bounded) values incl. Q(s, a)
            std = torch.cat([q_rand, q_data[:, None], q_next_b, q_cur_b], dim=1).std(1).mean(-1)
            for k in range(self.num_qvalue_nets):
                i = k + 1
                metrics[f"qf{i}_loss"] = td_loss[k].mean()
                metrics[f"average_qf{i}"] = q_data[k].mean()
                metrics[f"cql_q{i}_rand"] = q_rand[k].mean()
                metrics[f"cql_q{i}_current_actions"] = q_cur[k].mean()
                metrics[f"cql_q{i}_next_actions"] = q_next[k].mean()
                metrics[f"cql_std_q{i}"] = std[k]
                metrics[f"cql_qf{i}_diff"] = gap[k].mean()
                metrics[f"cql_min_qf{i}_loss"] = penalty[k].mean()
        out.update({k: t.detach() for k, t in metrics.items()})
        return TensorDict(out, batch_size=[])

    def _critic_obs_keys(self) -> list[NestedKey]:
        return [k for k in self.qvalue_network.in_keys if k != self.tensor_keys.action]

    def _critic_obs(self, td: TensorDictBase) -> TensorDictBase:
        return td.select(*self._critic_obs_keys())

    def _bc_log_prob(self, dist, action: torch.Tensor) -> torch.Tensor:
        # log pi(a|s) of the dataset action. Dataset actions may sit exactly on the bounds,
        # where the tanh inverse is infinite: shrink them by 1e-6 of the range.
        eps = 1e-6 * (self.action_high - self.action_low)
        a = action.clamp(self.action_low + eps, self.action_high - eps)
        return dist.log_prob(torch.stack([a, a]))[0]

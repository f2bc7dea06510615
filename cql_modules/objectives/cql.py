"""Conservative Q-Learning (and Cal-QL) as a TorchRL ``LossModule``.

The equations are in docs/cql.md; every term is a pure function of
:mod:`cql_modules.objectives.terms`, and :meth:`CQLLoss.forward` only samples the actions,
evaluates the networks and combines the named terms. Differences from
``torchrl.objectives.CQLLoss`` (all regression-tested, ``tests/test_loss_defects.py``;
docs/cql.md, section 10):

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

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torch.distributions import Distribution
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators, _reduce

from cql_modules.objectives import terms
from cql_modules.objectives.ensemble import (
    CriticEnsembleMixin,
    bounded_action_spec_of,
    check_loss_options,
    read_key,
)

__all__ = ["CQLLoss"]


class _Samples(NamedTuple):
    """The actions one forward draws (docs/cql.md, section 1), state-major."""

    dist: Distribution  # pi(.|s) and pi(.|s'), batch [2, B]
    a_pi: torch.Tensor  # [B, A] reparameterised, at s
    log_prob_pi: torch.Tensor  # [B]
    a_target: torch.Tensor  # [B, n, A] at s' (n = N with max-target backup, else 1), detached
    log_prob_target: torch.Tensor  # [B, n]
    proposals: torch.Tensor  # [B, 3N, A]: N uniform, N from pi(.|s'), N from pi(.|s), detached
    log_density: torch.Tensor  # [B, 3N] their log-densities


def _check_stochastic_actor(actor) -> None:
    """CQL needs reparameterised samples with finite log-probs (tanh-Gaussian in CORL)."""
    # a plain TensorDictModule's get_dist returns a Delta: inf log-probs, NaN temperature loss
    classes = [c for m in actor.modules() if isinstance(c := getattr(m, "distribution_class", None), type)]
    if not callable(getattr(actor, "get_dist", None)) or not classes:
        raise TypeError(
            f"CQLLoss needs a stochastic actor (a ProbabilisticActor, e.g. with TanhNormal as "
            f"cql_modules.make_actor builds), got {type(actor).__name__}"
        )
    delta = [c.__name__ for c in classes if "Delta" in c.__name__]
    if delta:
        raise ValueError(
            f"CQLLoss needs an actor distribution with a finite log_prob; {delta[0]} has none. "
            "Use TanhNormal (cql_modules.make_actor)"
        )


def _per_action_bounds(bound: torch.Tensor) -> torch.Tensor:
    """A spec's bound as ``[action_dim]``: a batched env's spec (``[*envs, action_dim]``)
    has one row per env, which must agree."""
    rows = bound.reshape(-1, bound.shape[-1]) if bound.ndim > 1 else bound.reshape(1, -1)
    if not (rows == rows[0]).all():
        raise ValueError(f"CQLLoss needs one set of action bounds; the spec's rows differ: {bound}")
    return rows[0].clone()


class CQLLoss(CriticEnsembleMixin, LossModule):
    r"""Conservative Q-Learning loss (Kumar et al., 2020) with CORL's conventions.

    Computes, for one batch of transitions, the SAC actor and temperature losses and the
    critic loss ``sum_k TD_k + penalty_k`` where the conservative penalty of critic k is
    ``cql_alpha * mean(tau * logsumexp(X_k / tau) - Q_k(s, a))`` over 3N sampled actions
    (uniform, pi(.|s), pi(.|s'), all scored at s), optionally weighted by a Lagrange
    multiplier alpha' and calibrated by Monte-Carlo returns (Cal-QL).

    Args:
        actor_network: a ``ProbabilisticActor`` whose ``get_dist`` returns a tanh-squashed
            distribution (e.g. :func:`cql_modules.make_actor`).
        qvalue_network: one critic (e.g. :func:`cql_modules.make_critic`), any
            ``TensorDictModuleBase`` reading its ``in_keys`` (observation keys and the
            action key) and writing ``state_action_value`` (e.g. a
            ``TensorDictSequential(encoder, ValueOperator(...))``); or a list of
            ``num_qvalue_nets`` critics. A single critic is copied ``num_qvalue_nets``
            times and each copy is re-initialised with its own ``reset_parameters``. The
            ensemble is stored as stacked parameters (TorchRL's ``convert_to_functional``)
            and evaluated in one batched call: explicit batched matmuls for a ReLU MLP
            inside a ``TensorDictModule``, ``vmap`` over the parameters otherwise.

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
        max_target_backup, backup_entropy: TD-target options (docs/cql.md, section 4).
        clip_diff_min, clip_diff_max: clamp of the per-state gap.
        bc_steps: number of initial optimizer updates with a behaviour-cloning actor
            loss; updates are counted by :meth:`count_update` (``UpdateStep`` calls it,
            other pipelines call it or :meth:`register_update_counter`).
        alpha_multiplier, auto_alpha, target_entropy: SAC temperature (docs/cql.md,
            section 2);
            ``target_entropy="auto"`` is ``-|A|``.
        calibrated: Cal-QL lower bound by ``mc_return``.
        loss_function: TD distance, ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses of the
            batch shape). Importance weights of prioritized replay (key
            ``priority_weight``, TorchRL's convention) weight the per-sample losses:
            ``sum(w l) / sum(w)``, ``sum(w l)`` or ``w l``.
        critic_compute_dtype: optional lower precision (``torch.bfloat16`` or
            ``"bfloat16"``) for the critic ensemble's hidden layers, where nearly all
            FLOPs are. Master weights, gradients, the last layer and every loss formula
            stay in full precision. Off by default: check learning before using it.
        fused_critic: compute the critic loss's gradient block by block with
            :class:`cql_modules.objectives.fused.FusedCriticGrad` (same values and
            gradients, far less memory traffic). ``None`` (default): on for ReLU-MLP
            critics on CPU with a ``"mean"``/``"sum"`` reduction (also with
            ``critic_compute_dtype``); ``False``: plain autograd; ``True``: on wherever it
            applies. It steps aside (plain autograd) whenever the critic's inputs require
            a gradient (e.g. a shared encoder in front of the critic) and under
            ``torch.compile``, so it never changes a result. It reuses buffers kept in the
            loss across updates: one instance computes one loss at a time (give each
            thread its own copy).
        use_prioritized_weights: as in TorchRL's losses: ``"auto"`` or ``True`` reads the
            importance weights (``priority_weight``) when the batch has them, ``False``
            ignores them.

    The output holds ``loss_actor``, ``loss_qvalue``, ``loss_alpha`` (and
    ``loss_alpha_prime`` with ``lagrange``), to be summed and back-propagated once, plus
    detached metrics with CORL's names. The per-sample TD error is written to the input
    under ``td_error`` for prioritised replay. The TD target is TD(0) computed inside the
    loss; :meth:`make_value_estimator` can only change its discount.

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
            action: dataset action.
            reward, terminated: read under ``"next"``; only ``terminated`` stops
                bootstrapping (time-limit truncation does not).
            state_action_value: the critic's output key (read on the generic critic path).
            mc_return: Monte-Carlo return-to-go (Cal-QL).
            priority: where the per-sample TD error is written.
            priority_weight: importance weights of prioritized replay (read if present).

        The observation keys are the networks' own ``in_keys``.
        """

        action: NestedKey = "action"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"
        state_action_value: NestedKey = "state_action_value"
        mc_return: NestedKey = "mc_return"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0

    actor_network: TensorDictModule
    qvalue_network: TensorDictModuleBase
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModuleBase | list[TensorDictModuleBase],
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
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        super().__init__()
        check_loss_options(num_qvalue_nets=num_qvalue_nets, temperature=temperature, cql_alpha=cql_alpha,
                           reduction=reduction, loss_function=loss_function)
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")

        _check_stochastic_actor(actor_network)
        self.actor_network = actor_network

        self._setup_critic_ensemble(qvalue_network, num_qvalue_nets)

        # Action bounds (uniform proposal, target entropy).
        action_spec = bounded_action_spec_of(actor_network, action_spec)
        low, high = (_per_action_bounds(torch.as_tensor(b, dtype=torch.float32))
                     for b in (action_spec.space.low, action_spec.space.high))
        # an Unbounded spec holds float32's max: finite, but high - low overflows to inf
        if not torch.isfinite(high - low).all() or not (high > low).all():
            raise ValueError(
                f"CQLLoss needs finite action bounds with high > low for its uniform proposal, got low={low}, "
                f"high={high}; pass action_spec=Bounded(low, high, shape=(action_dim,))"
            )
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
        self.use_prioritized_weights = use_prioritized_weights
        # Rows per block of the fused critic pass; None: from the thread count and the L3
        # size (objectives/cache_blocking.py).
        self.fused_block_rows: int | None = None
        # Optimizer updates counted so far (BC warm-up); a buffer so that it is checkpointed.
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ TorchRL contract
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass  # the TD target is computed in the loss (docs/cql.md, section 4), no estimator

    def make_value_estimator(self, value_type=None, **hyperparams):
        """Set the discount of the loss's own TD(0) target (docs/cql.md, section 4).

        ``make_value_estimator(gamma=0.9)``, ``make_value_estimator(ValueEstimators.TD0,
        gamma=0.9)`` and ``make_value_estimator(TD0Estimator, gamma=0.9, value_network=None)``
        change the discount actually used. Any other estimator or hyper-parameter raises
        ``ValueError``: the CQL target (min over target critics at policy actions) is not a
        state-value estimator.
        """
        from torchrl.objectives.value import TD0Estimator

        unsupported = {k: v for k, v in hyperparams.items() if k != "gamma" and not (k == "value_network" and v is None)}
        if value_type not in (None, ValueEstimators.TD0, TD0Estimator) or unsupported:
            raise ValueError(
                f"{type(self).__name__} computes its own TD(0) target (docs/cql.md, section 4): make_value_estimator accepts "
                "only ValueEstimators.TD0 / TD0Estimator and gamma=..., got "
                f"value_type={value_type!r} with {sorted(unsupported) or 'no other'} hyper-parameters"
            )
        if "gamma" in hyperparams:
            self.gamma = float(hyperparams["gamma"])
        self.value_type = ValueEstimators.TD0
        return self

    def count_update(self) -> None:
        """Count one optimizer update (the behaviour-cloning warm-up runs for ``bc_steps``
        of them). ``UpdateStep`` calls it after each optimizer step; another pipeline calls
        it there too, or uses :meth:`register_update_counter`."""
        self.n_updates.add_(1)

    def register_update_counter(self, optimizer: torch.optim.Optimizer):
        """Count every ``optimizer.step()`` with :meth:`count_update` (a step post-hook);
        returns the hook's handle (``handle.remove()`` stops counting)."""
        return optimizer.register_step_post_hook(lambda *_: self.count_update())

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

    @property
    def alpha(self) -> torch.Tensor:
        if self.auto_alpha:
            return self.log_alpha.exp() * self.alpha_multiplier
        return torch.full((), self.alpha_multiplier, device=self.action_low.device)

    @property
    def alpha_prime(self) -> torch.Tensor | None:
        return terms.lagrange_multiplier(self.log_alpha_prime) if self.lagrange else None

    # ------------------------------------------------------------------ sampling
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

    def _sample(self, td: TensorDictBase) -> _Samples:
        """One policy pass at s and s' and every action the loss needs (docs/cql.md, section 1)."""
        keys = self.actor_network.in_keys
        obs = TensorDict(
            {k: torch.stack([read_key(td, k), read_key(td, unravel_key(("next", k)))]) for k in keys},
            batch_size=[2, td.shape[0]],
        )
        dist = self.actor_network.get_dist(obs)
        N = self.num_actions
        n_target = N if self.max_target_backup else 1
        # index 0..n_target-1: a_pi (at s) / target actions (at s'); the next N: proposals
        actions, log_probs = self._sample_policy(dist, n_target + N)  # [n, 2, B, A], [n, 2, B]
        actions, log_probs = actions.transpose(0, 2), log_probs.transpose(0, 2)  # [B, 2, n, A], [B, 2, n]
        a_next, a_cur = actions[:, 1, n_target:].detach(), actions[:, 0, n_target:].detach()
        lp_next, lp_cur = log_probs[:, 1, n_target:].detach(), log_probs[:, 0, n_target:].detach()
        a_rand = self._sample_uniform((N, td.shape[0])).transpose(0, 1)
        return _Samples(
            dist=dist,
            a_pi=actions[:, 0, 0],
            log_prob_pi=log_probs[:, 0, 0],
            a_target=actions[:, 1, :n_target].detach(),
            log_prob_target=log_probs[:, 1, :n_target].detach(),
            proposals=torch.cat([a_rand, a_next, a_cur], dim=1),
            log_density=torch.cat([self.uniform_log_density.expand_as(lp_next), lp_next, lp_cur], dim=1),
        )

    # ------------------------------------------------------------------ critic options
    def _critic_options(self) -> terms.CriticLossOptions:
        # built per call: recipes switch options (e.g. calibration) between phases
        return terms.CriticLossOptions(
            num_actions=self.num_actions,
            importance_sample=self.importance_sample,
            temperature=self.temperature,
            clip_diff_min=self.clip_diff_min,
            clip_diff_max=self.clip_diff_max,
            cql_alpha=self.cql_alpha,
            target_action_gap=self.target_action_gap,
            loss_function=self.loss_function,
        )

    def _bc_log_prob(self, dist, action: torch.Tensor) -> torch.Tensor:
        # log pi(a|s) of the dataset action. Dataset actions may sit exactly on the bounds,
        # where the tanh inverse is infinite: shrink them by 1e-6 of the range.
        eps = 1e-6 * (self.action_high - self.action_low)
        a = action.clamp(self.action_low + eps, self.action_high - eps)
        return dist.log_prob(torch.stack([a, a]))[0]

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch_shape = tensordict.batch_size
        td = tensordict.reshape(-1) if len(batch_shape) != 1 else tensordict
        keys = self.tensor_keys
        action = read_key(td, keys.action)
        B = action.shape[0]
        weights = self._maybe_get_priority_weight(td)
        weights = weights.reshape(B) if weights is not None else None
        smp = self._sample(td)
        alpha, alpha_prime = self.alpha, self.alpha_prime

        # temperature and actor (critic parameters detached)
        loss_alpha = (
            terms.temperature_loss(self.log_alpha, smp.log_prob_pi, self.target_entropy)
            if self.auto_alpha else torch.zeros_like(smp.log_prob_pi)
        )
        q_pi = self._q_values(self.qvalue_network_params.detach(), self._critic_inputs(td, smp.a_pi[:, None]))
        loss_actor = terms.actor_loss(alpha, smp.log_prob_pi, q_pi[..., 0])
        if self.bc_steps > 0:
            bc = terms.bc_actor_loss(alpha, smp.log_prob_pi, self._bc_log_prob(smp.dist, action))
            loss_actor = torch.where(self.n_updates < self.bc_steps, bc, loss_actor)

        # TD target (no gradient)
        with torch.no_grad():
            inputs = self._critic_inputs(td, smp.a_target, next_state=True)
            q_next = self._q_values(self.target_qvalue_network_params, inputs)
            reward = read_key(td, unravel_key(("next", keys.reward))).reshape(B)
            terminated = read_key(td, unravel_key(("next", keys.terminated))).reshape(B)
            y, v_next = terms.td_target(
                reward, terminated, self.gamma,
                q_next, smp.log_prob_target, alpha.detach(),
                max_target_backup=self.max_target_backup, backup_entropy=self.backup_entropy,
            )

        # critic: TD distance + conservative penalty, from one batched critic call
        mc = read_key(td, keys.mc_return).reshape(B).to(y.dtype) if self.calibrated else None
        actions = torch.cat([action[:, None].to(smp.proposals.dtype), smp.proposals], dim=1)  # [B, 1+3N, A]
        options = self._critic_options()
        q, carrier = self._critic_q(td, actions, y, smp.log_density, mc, alpha_prime, self._state_weight(B, weights),
                                    options)
        critic = terms.critic_loss_terms(q[..., 0], q[..., 1:], y, smp.log_density, mc, alpha_prime, options)
        loss_qvalue = (critic.td + critic.penalty).sum(0)  # [B]

        # reduction, write-back and metrics
        tensordict.set(keys.priority, (q[..., 0].detach() - y).abs().amax(0).reshape(batch_shape))
        losses = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, "loss_alpha": loss_alpha}
        if self.lagrange:
            losses["loss_alpha_prime"] = terms.alpha_prime_loss(alpha_prime, self.cql_alpha, critic.gap,
                                                                self.target_action_gap)
        out = {name: self._reduce(value, weights, batch_shape) for name, value in losses.items()}
        if carrier is not None:
            out["loss_qvalue"] = out["loss_qvalue"] + carrier
        with torch.no_grad():
            out.update(self._metrics(losses, critic, q, mc, smp, alpha, alpha_prime, v_next))
        return TensorDict(out, batch_size=[])

    def _state_weight(self, B: int, weights: torch.Tensor | None) -> torch.Tensor:
        """d(reduced loss) / d(per-sample loss) for the fused critic pass."""
        if weights is None:
            return self.action_low.new_full((B,), 1.0 / B if self.reduction == "mean" else 1.0)
        return weights / weights.sum() if self.reduction == "mean" else weights

    def _reduce(self, value: torch.Tensor, weights: torch.Tensor | None, batch_shape: torch.Size) -> torch.Tensor:
        value = _reduce(value, self.reduction, weights=weights)
        return value.reshape(batch_shape) if self.reduction == "none" else value

    def _metrics(self, losses, critic: terms.CriticTerms, q, mc, smp: _Samples, alpha, alpha_prime, v_next) -> dict:
        """Detached metrics with CORL's names (docs/cql.md, section 6)."""
        N = self.num_actions
        q_data, q_rand = q[..., 0], q[..., 1 : 1 + N]
        q_next, q_cur = q[..., 1 + N : 1 + 2 * N], q[..., 1 + 2 * N :]
        metrics = {
            "policy_loss": losses["loss_actor"].mean(),
            "alpha_loss": losses["loss_alpha"].mean(),
            "alpha": alpha.detach(),
            "log_pi": smp.log_prob_pi.mean(),
            "average_target_q": v_next.mean(),
        }
        if self.lagrange:
            metrics["alpha_prime"] = alpha_prime
            metrics["alpha_prime_loss"] = losses["loss_alpha_prime"].mean()
        # CORL's cql_std_q: spread of the raw (Cal-QL-bounded) values incl. Q(s, a)
        std = torch.cat([q[..., : 1 + N], critic.q_policy], dim=-1).std(-1).mean(-1)
        for k in range(self.num_qvalue_nets):
            i = k + 1
            metrics[f"qf{i}_loss"] = critic.td[k].mean()
            metrics[f"average_qf{i}"] = q_data[k].mean()
            metrics[f"cql_q{i}_rand"] = q_rand[k].mean()
            metrics[f"cql_q{i}_current_actions"] = q_cur[k].mean()
            metrics[f"cql_q{i}_next_actions"] = q_next[k].mean()
            metrics[f"cql_std_q{i}"] = std[k]
            metrics[f"cql_qf{i}_diff"] = critic.gap[k].mean()
            metrics[f"cql_min_qf{i}_loss"] = critic.penalty[k].mean()
            if mc is not None:
                metrics[f"bound_rate_cql_q{i}_current_actions"] = (q_cur[k] < mc[:, None]).float().mean()
                metrics[f"bound_rate_cql_q{i}_next_actions"] = (q_next[k] < mc[:, None]).float().mean()
        return {name: value.detach() for name, value in metrics.items()}

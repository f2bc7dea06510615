"""Discrete-action Conservative Q-Learning (CQL(H) on a DQN backbone) as a TorchRL ``LossModule``.

The equations are in ``docs/cql.md`` (section 11). Differences from
``torchrl.objectives.DiscreteCQLLoss`` (each regression-tested in ``tests/test_discrete_loss.py``):

* the penalty has a weight ``cql_alpha`` (optionally a Lagrange multiplier) and a temperature;
* the TD target can be double-DQN (online arg-max, target value), and K Q-networks can be
  ensembled (min over the ensemble in the target);
* the TD loss has no factor 0.5 and ``td_error`` is the absolute error with the batch shape;
* :meth:`DiscreteCQLLoss.cql_loss` computes its own Q values (no prior ``value_loss`` call);
* priority weights scale every per-sample loss (TorchRL's ``priority_weight`` convention).
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
from torchrl.data.utils import _find_action_space
from torchrl.modules.tensordict_module.actors import QValueActor
from torchrl.objectives.common import LossModule
from torchrl.modules.tensordict_module.common import ensure_tensordict_compatible
from torchrl.objectives.utils import _reduce, _vmap_func

from cql_modules.objectives.cql import CQLLoss
from cql_modules.objectives.ensemble import check_loss_options, read_key, reinit_parameters
from cql_modules.objectives.terms import (
    alpha_prime_loss,
    conservative_gap,
    conservative_penalty,
    lagrange_multiplier,
    td_distance,
)

__all__ = ["DiscreteCQLLoss"]


class DiscreteCQLLoss(LossModule):
    r"""Conservative Q-Learning for discrete actions (Kumar et al., 2020, CQL(H) with DQN).

    With K Q-networks :math:`Q_k` (target copies :math:`\bar Q_k`), a batch of transitions
    :math:`(s, a, r, s', d)` (:math:`d` = terminated) and :math:`\tau` the temperature:

    .. math::

        \hat Q(s', b) &= \min_k \bar Q_k(s', b) \\
        y &= r + \gamma (1 - d)\, \hat Q(s', b^*), \quad
        b^* = \begin{cases}
            \arg\max_b \min_k Q_k(s', b) & \text{double DQN} \\
            \arg\max_b \hat Q(s', b) & \text{otherwise}
        \end{cases} \\
        \mathrm{gap}_k &= \tau \log \sum_b \exp(Q_k(s, b) / \tau) - Q_k(s, a) \\
        L_Q &= \sum_k \Big[ \ell\big(Q_k(s, a), y\big) + \alpha \, \mathrm{gap}_k \Big]

    where :math:`\ell` is ``(x - y)^2`` (``"l2"``) or the smooth-L1 / L1 distance, and
    :math:`\alpha` is ``cql_alpha``. With ``lagrange=True`` the penalty becomes
    :math:`\alpha \alpha' (\mathrm{gap}_k - g)` with :math:`\alpha' = \exp(\log\alpha')`
    clamped to [0, 1e6] and detached, :math:`g` = ``target_action_gap``, and
    :math:`\alpha'` minimises :math:`-\tfrac12 \alpha' \alpha \sum_k(\mathrm{gap}_k - g)`
    (gap detached; the continuous loss's Lagrange term), i.e. it grows while the gap is above :math:`g`. :math:`y` carries no
    gradient. Priority weights :math:`w` (key ``priority_weight``) weight each sample's
    loss: ``mean`` is :math:`\sum w L / \sum w`, ``sum`` is :math:`\sum w L`, ``none`` is
    :math:`w L`.

    Args:
        value_network: a ``QValueActor`` (or any ``TensorDictModule`` writing the
            ``action_value`` key, ``[*batch, num_actions]``), or a plain ``nn.Module``
            mapping observations to action values (wrapped into a ``QValueActor``, which
            then needs ``action_space``); or a list of ``num_qvalue_nets`` such networks.
            A single network is copied ``num_qvalue_nets`` times and each copy re-drawn
            with its own initialisation.

    Keyword Args:
        num_qvalue_nets: ensemble size K (default 1: a DQN).
        action_space: ``"one-hot"``, ``"categorical"`` or a TorchRL spec; defaults to the
            value network's spec. Categorical actions are integers of shape ``[*batch]``
            or ``[*batch, 1]``; one-hot actions are ``[*batch, num_actions]``.
        gamma: discount.
        cql_alpha: penalty weight alpha (>= 0; 0 gives plain (double) DQN).
        temperature: tau of the logsumexp (> 0).
        double_dqn: double-DQN target (online arg-max, target value).
        loss_function: TD distance, ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        lagrange, target_action_gap: learn alpha' so that the gap stays at the target.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses, batch shape).
        use_prioritized_weights: ``"auto"`` (use ``priority_weight`` when the batch has it),
            ``True`` or ``False``.

    The output holds ``loss_qvalue`` (TD + penalty; and ``loss_alpha_prime`` with
    ``lagrange``), to be summed and back-propagated once, plus detached metrics with
    CORL's names. ``|Q(s, a) - y|`` (max over the ensemble) is written to the input under
    ``td_error`` with the input's batch shape. Target networks follow TorchRL's
    convention (``target_value_network_params``): update them with ``SoftUpdate`` or
    ``HardUpdate``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP, QValueActor
        >>> from torchrl.objectives import HardUpdate
        >>> from cql_modules import DiscreteCQLLoss
        >>> spec = Categorical(3)
        >>> actor = QValueActor(MLP(in_features=4, out_features=3, num_cells=[32]), in_keys=["observation"], spec=spec)
        >>> loss = DiscreteCQLLoss(actor, cql_alpha=1.0, double_dqn=True)
        >>> updater = HardUpdate(loss, value_network_update_interval=100)
        >>> B = 8
        >>> batch = TensorDict({
        ...     "observation": torch.randn(B, 4), "action": torch.randint(3, (B,)),
        ...     "next": {"observation": torch.randn(B, 4), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, [B])
        >>> out = loss(batch)
        >>> out["loss_qvalue"].backward()
        >>> updater.step()
        >>> batch["td_error"].shape
        torch.Size([8])
    """

    @dataclass
    class _AcceptedKeys:
        """Tensor keys read and written by the loss (configure with ``set_keys``).

        Attributes:
            action: dataset action (categorical or one-hot).
            action_value: where the value network writes ``Q(s, .)``.
            reward, done, terminated: read under ``"next"``; only ``terminated`` stops
                bootstrapping (time-limit truncation does not).
            priority: where the per-sample absolute TD error is written.
            priority_weight: per-sample importance weights of a prioritized buffer.
        """

        action: NestedKey = "action"
        action_value: NestedKey = "action_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        value_network: QValueActor | nn.Module | list,
        *,
        num_qvalue_nets: int = 1,
        action_space=None,
        gamma: float = 0.99,
        cql_alpha: float = 1.0,
        temperature: float = 1.0,
        double_dqn: bool = False,
        loss_function: str = "l2",
        lagrange: bool = False,
        target_action_gap: float = 0.0,
        reduction: str = "mean",
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        super().__init__()
        check_loss_options(num_qvalue_nets=num_qvalue_nets, temperature=temperature, cql_alpha=cql_alpha,
                           reduction=reduction, loss_function=loss_function)

        nets = list(value_network) if isinstance(value_network, (list, tuple)) else [value_network]
        if len(nets) not in (1, num_qvalue_nets):
            raise ValueError(f"got {len(nets)} value networks but num_qvalue_nets={num_qvalue_nets}")
        nets = [ensure_tensordict_compatible(n, wrapper_type=QValueActor, action_space=action_space) for n in nets]
        while len(nets) < num_qvalue_nets:
            nets.append(copy.deepcopy(nets[0]))
            reinit_parameters(nets[-1])
        if action_space is None:
            action_space = getattr(nets[0], "spec", None)
        if action_space is None:
            raise ValueError(
                "DiscreteCQLLoss needs the action space: pass action_space='categorical' / 'one-hot' "
                "(or a spec), or a QValueActor built with one"
            )
        self.action_space = _find_action_space(action_space)
        if self.action_space not in ("categorical", "one_hot"):
            raise ValueError(f"action_space must be categorical or one-hot, got {self.action_space!r}")

        self.convert_to_functional(
            nets if num_qvalue_nets > 1 else nets[0],
            "value_network",
            num_qvalue_nets if num_qvalue_nets > 1 else None,
            create_target_params=True,
        )
        self.num_qvalue_nets = num_qvalue_nets
        self.gamma = float(gamma)
        self.cql_alpha = float(cql_alpha)
        self.temperature = float(temperature)
        self.double_dqn = double_dqn
        self.loss_function = loss_function
        self.lagrange = lagrange
        self.target_action_gap = float(target_action_gap)
        if lagrange:
            self.log_alpha_prime = nn.Parameter(torch.ones(()))  # as CQLLoss (CORL starts at 1.0)
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass  # the TD target is computed in the loss (docstring), no value estimator

    # the same rule as the continuous loss: only TD(0) and its gamma can be set
    make_value_estimator = CQLLoss.make_value_estimator

    @property
    def in_keys(self):
        obs = self.value_network.in_keys
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.terminated),
            *obs,
            *[("next", k) for k in obs],
        ]
        return list(dict.fromkeys(unravel_key(k) for k in keys))

    @property
    def out_keys(self):
        return ["loss_qvalue", "loss_alpha_prime"] if self.lagrange else ["loss_qvalue"]

    # ------------------------------------------------------------------ terms
    def action_values(self, params: TensorDictBase, obs: TensorDictBase) -> torch.Tensor:
        """``Q_k(s, .)`` of every network for observations ``obs`` ``[N]``: ``[K, N, num_actions]``."""
        net = self.value_network
        if self.num_qvalue_nets == 1:
            with params.to_module(net):
                return net(obs.copy()).get(self.tensor_keys.action_value).unsqueeze(0)
        return _vmap_func(net, (None, 0))(obs, params).get(self.tensor_keys.action_value)

    def action_index(self, action: torch.Tensor, num_actions: int) -> torch.Tensor:
        """The dataset action as an integer index ``[N]`` (from categorical or one-hot)."""
        if self.action_space == "one_hot":
            if action.shape[-1] != num_actions:
                raise ValueError(f"one-hot actions need a last dim of {num_actions}, got shape {tuple(action.shape)}")
            return action.reshape(-1, num_actions).to(torch.uint8).argmax(-1)
        return action.reshape(-1).long()

    def td_target(self, reward, terminated, q_next_online, q_next_target) -> torch.Tensor:
        """``y = r + gamma (1 - d) min_k Qbar_k(s', b*)`` (no gradient), ``[N]``."""
        with torch.no_grad():
            q_hat = q_next_target.amin(0)  # [N, A]
            if self.double_dqn:
                b_star = q_next_online.amin(0).argmax(-1, keepdim=True)
                v_next = q_hat.gather(-1, b_star).squeeze(-1)
            else:
                v_next = q_hat.amax(-1)
            return reward + self.gamma * (~terminated.bool()).to(reward.dtype) * v_next

    def cql_gap(self, q: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
        """``tau logsumexp(Q_k(s, .) / tau) - Q_k(s, a)``, ``[K, N]``: the continuous gap with
        every action as a proposal of log-density 0 (an exact sum, nothing sampled)."""
        return conservative_gap(
            q_data, q, q.new_zeros(()), importance_sample=True, temperature=self.temperature,
            clip_diff_min=-math.inf, clip_diff_max=math.inf,
        )

    def cql_loss(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The weighted penalty ``cql_alpha * sum_k gap_k`` alone, reduced, from the input only."""
        td = self._flat(tensordict)
        q = self.action_values(self.value_network_params, td.select(*self.value_network.in_keys))
        q_data = q.gather(-1, self.action_index(td.get(self.tensor_keys.action), q.shape[-1])[None, :, None].expand(
            q.shape[0], -1, 1)).squeeze(-1)
        penalty = conservative_penalty(self.cql_gap(q, q_data), self.cql_alpha, self._alpha_prime(), self.target_action_gap)
        return self._reduce(penalty.sum(0), tensordict)

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        td = self._flat(tensordict)
        for key in self.in_keys:
            read_key(td, key)  # a missing entry is a KeyError naming it
        keys = self.tensor_keys
        obs_keys = self.value_network.in_keys
        obs_now, obs_next = td.select(*obs_keys), td.get("next").select(*obs_keys)
        B = td.shape[0]
        reward = td.get(("next", keys.reward)).reshape(B)
        terminated = td.get(("next", keys.terminated)).reshape(B)

        # online Q at s (and at s' for the double-DQN arg-max) in one call
        if self.double_dqn:
            q_both = self.action_values(self.value_network_params, torch.cat([obs_now, obs_next]))
            q, q_next_online = q_both[:, :B], q_both[:, B:].detach()
        else:
            q, q_next_online = self.action_values(self.value_network_params, obs_now), None
        q_next_target = self.action_values(self.target_value_network_params.detach(), obs_next)
        y = self.td_target(reward.to(q.dtype), terminated, q_next_online, q_next_target)

        a_idx = self.action_index(td.get(keys.action), q.shape[-1])
        q_data = q.gather(-1, a_idx[None, :, None].expand(q.shape[0], -1, 1)).squeeze(-1)  # [K, B]
        td_loss = td_distance(q_data, y, self.loss_function)  # [K, B]
        gap = self.cql_gap(q, q_data)  # [K, B]
        alpha_prime = self._alpha_prime()
        penalty = conservative_penalty(gap, self.cql_alpha, alpha_prime, self.target_action_gap)
        metrics = {}
        if self.lagrange:
            loss_alpha_prime = alpha_prime_loss(alpha_prime, self.cql_alpha, gap, self.target_action_gap)  # [B]
            metrics["alpha_prime"] = alpha_prime
            metrics["alpha_prime_loss"] = loss_alpha_prime.mean()
        loss_qvalue = (td_loss + penalty).sum(0)  # [B]

        td_error = (q_data.detach() - y).abs().amax(0)
        tensordict.set(keys.priority, td_error.reshape(tensordict.batch_size))

        out = {"loss_qvalue": self._reduce(loss_qvalue, tensordict)}
        if self.lagrange:
            out["loss_alpha_prime"] = self._reduce(loss_alpha_prime, tensordict)
        with torch.no_grad():
            metrics["average_target_q"] = y.mean()
            metrics["td_error"] = td_error.mean()
            for k in range(self.num_qvalue_nets):
                i = k + 1
                metrics[f"qf{i}_loss"] = td_loss[k].mean()
                metrics[f"average_qf{i}"] = q_data[k].mean()
                metrics[f"average_all_qf{i}"] = q[k].mean()  # Q over all actions, dataset or not
                metrics[f"cql_std_q{i}"] = q[k].std(-1).mean()
                metrics[f"cql_qf{i}_diff"] = gap[k].mean()
                metrics[f"cql_min_qf{i}_loss"] = penalty[k].mean()
        out.update({k: v.detach() for k, v in metrics.items()})
        return TensorDict(out, batch_size=[])

    # ------------------------------------------------------------------ helpers
    def count_update(self) -> None:
        """Part of the recipes' update-step protocol (``UpdateStep`` calls it after each
        optimizer step); this loss has no warm-up phase, so there is nothing to count."""

    def _alpha_prime(self) -> torch.Tensor | None:
        return lagrange_multiplier(self.log_alpha_prime) if self.lagrange else None

    def _flat(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.reshape(-1) if tensordict.ndim != 1 else tensordict

    def _reduce(self, loss: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        """TorchRL's weighted reduction of a per-sample loss ``[N]``; ``"none"`` keeps the batch shape."""
        weights = self._maybe_get_priority_weight(tensordict)
        if weights is not None:
            weights = weights.reshape(-1).to(loss.dtype)
        out = _reduce(loss, self.reduction, weights=weights)
        return out.reshape(tensordict.batch_size) if self.reduction == "none" else out

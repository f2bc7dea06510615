"""The terms of the CQL / Cal-QL loss as small pure functions (docs/cql.md, sections 2-6).

Every formula of :class:`~cql_modules.objectives.cql.CQLLoss` lives here once. The loss
combines these terms; the fused CPU critic pass (:mod:`cql_modules.objectives.fused`)
differentiates :func:`critic_loss_terms` block by block instead of restating it.

Shapes: ``B`` states, ``K`` critics, ``N`` = ``num_actions``. The critic-loss terms read
one state-major tensor ``q`` of shape ``[K, B, 1 + 3N]``: column 0 is ``Q_k(s, a)`` at the
dataset action, then N uniform actions, N actions drawn from ``pi(.|s')`` and N from
``pi(.|s)`` — all scored at the state ``s`` of the transition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torchrl.objectives.utils import distance_loss

__all__ = [
    "CriticLossOptions",
    "CriticTerms",
    "actor_loss",
    "alpha_prime_loss",
    "bc_actor_loss",
    "calibrate",
    "conservative_gap",
    "conservative_penalty",
    "critic_loss_terms",
    "lagrange_multiplier",
    "td_distance",
    "td_target",
    "temperature_loss",
]


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: torch.Tensor) -> torch.Tensor:
    r"""SAC temperature loss per sample (docs/cql.md, section 2).

    .. math:: L_\alpha = -\log\alpha \cdot \mathrm{sg}\big(\log\pi(a_\pi|s) + \bar{H}\big)

    with ``sg`` = stop-gradient and :math:`\bar{H}` the target entropy (``-|A|``).
    """
    return -(log_alpha * (log_prob + target_entropy).detach())


def actor_loss(alpha: torch.Tensor, log_prob: torch.Tensor, q_pi: torch.Tensor) -> torch.Tensor:
    r"""SAC actor loss per sample (docs/cql.md, section 3).

    .. math:: L_\pi = \mathrm{sg}(\alpha)\,\log\pi(a_\pi|s) - \min_k Q_k(s, a_\pi)

    ``q_pi``: ``[K, B]``, computed with *detached* critic parameters by the caller so that
    this term trains the policy only.
    """
    return alpha.detach() * log_prob - q_pi.amin(0)


def bc_actor_loss(alpha: torch.Tensor, log_prob: torch.Tensor, log_prob_data: torch.Tensor) -> torch.Tensor:
    r"""Behaviour-cloning warm-up actor loss per sample (docs/cql.md, section 3).

    .. math:: L_\pi^{BC} = \mathrm{sg}(\alpha)\,\log\pi(a_\pi|s) - \log\pi(a|s)

    with ``a`` the dataset action.
    """
    return alpha.detach() * log_prob - log_prob_data


def td_target(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    q_next: torch.Tensor,
    log_prob_next: torch.Tensor,
    alpha: torch.Tensor,
    *,
    max_target_backup: bool,
    backup_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""TD(0) target ``(y, V')``, both ``[B]`` (docs/cql.md, section 4).

    .. math::
        m_n = \min_k Q'_k(s', a'_n), \qquad
        V' = \begin{cases} \max_n m_n & \text{max-target backup} \\ m_1 & \text{else}\end{cases}

        V' \leftarrow V' - \alpha \log\pi(a'_{n^*}|s') \ \text{(backup entropy)}, \qquad
        y = r + \gamma\,(1 - d)\,V'

    ``q_next``: ``[K, B, n]`` target critics at the ``n`` actions ``a'_n ~ pi(.|s')``
    (``n = N`` with max-target backup, else 1); ``log_prob_next``: ``[B, n]``;
    ``terminated`` (``d``): true termination only, time-limit truncation bootstraps.
    The min over critics comes first, then the max over actions; the entropy term uses
    the log-prob of the arg-max action ``n*``.
    """
    per_action = q_next.amin(0)  # min over critics first ...
    if max_target_backup:
        v_next, idx = per_action.max(-1)  # ... then max over actions
        log_prob_v = log_prob_next.gather(-1, idx[:, None]).squeeze(-1)
    else:
        v_next, log_prob_v = per_action[:, 0], log_prob_next[:, 0]
    if backup_entropy:
        v_next = v_next - alpha * log_prob_v
    y = reward + gamma * (~terminated.bool()).to(reward.dtype) * v_next
    return y, v_next


def calibrate(q: torch.Tensor, mc_return: torch.Tensor) -> torch.Tensor:
    r"""Cal-QL's lower bound (docs/cql.md, section 5): :math:`\max(Q, G^{MC})`, elementwise
    (``mc_return`` broadcast against ``q``)."""
    return torch.maximum(q, mc_return)


def conservative_gap(
    q_data: torch.Tensor,
    q_proposals: torch.Tensor,
    log_density: torch.Tensor,
    *,
    importance_sample: bool,
    temperature: float,
    clip_diff_min: float,
    clip_diff_max: float,
) -> torch.Tensor:
    r"""The per-state conservative gap of each critic (docs/cql.md, section 5).

    .. math::
        X = \begin{cases}
            [\,Q(s, a_j) - \log\mu_j(a_j)\,]_{j=1}^{3N} & \text{importance sampling} \\
            [\,Q(s, a_j)\,]_{j=1}^{3N} \cup \{Q(s, a)\} & \text{else (3N + 1 values)}
        \end{cases}

        \mathrm{gap} = \mathrm{clamp}\big(\tau \log\textstyle\sum \exp(X / \tau) - Q(s, a),
        \ c_{\min}, c_{\max}\big)

    ``q_data``: ``[..., B]``; ``q_proposals``: ``[..., B, 3N]`` (already calibrated with
    Cal-QL); ``log_density``: ``[B, 3N]`` log-densities of the proposals that drew them
    (uniform, pi(.|s'), pi(.|s)). The logsumexp runs over all 3N values of a state.
    """
    if importance_sample:
        x = q_proposals - log_density
    else:
        x = torch.cat([q_data[..., None], q_proposals], dim=-1)
    ood = temperature * torch.logsumexp(x / temperature, dim=-1)
    return (ood - q_data).clamp(clip_diff_min, clip_diff_max)


def conservative_penalty(
    gap: torch.Tensor,
    cql_alpha: float,
    alpha_prime: torch.Tensor | None,
    target_action_gap: float,
) -> torch.Tensor:
    r"""The penalty added to each critic's TD loss (docs/cql.md, section 5).

    .. math::
        P = \begin{cases}
            \mathrm{sg}(\alpha')\,\alpha_{CQL}\,(\mathrm{gap} - g_{target}) & \text{Lagrange} \\
            \alpha_{CQL}\,\mathrm{gap} & \text{else}
        \end{cases}

    ``alpha_prime`` is None without Lagrange; it never receives gradient from here.
    """
    if alpha_prime is None:
        return cql_alpha * gap
    return alpha_prime.detach() * cql_alpha * (gap - target_action_gap)


def lagrange_multiplier(log_alpha_prime: torch.Tensor) -> torch.Tensor:
    r"""The Lagrange multiplier from its learned log (docs/cql.md, section 5):
    :math:`\alpha' = \mathrm{clamp}(e^{\log\alpha'}, 0, 10^6)` (CQL's reference code)."""
    return log_alpha_prime.exp().clamp(0.0, 1e6)


def alpha_prime_loss(
    alpha_prime: torch.Tensor, cql_alpha: float, gap: torch.Tensor, target_action_gap: float
) -> torch.Tensor:
    r"""Lagrange multiplier loss per sample, ``gap``: ``[K, B]`` (docs/cql.md, section 5).

    .. math:: L_{\alpha'} = -\tfrac12\,\alpha'\,\alpha_{CQL} \sum_k \mathrm{sg}(\mathrm{gap}_k - g_{target})

    The gap is detached: the critics never receive gradient from this term.
    """
    return -0.5 * alpha_prime * cql_alpha * (gap - target_action_gap).detach().sum(0)


def td_distance(q_data: torch.Tensor, y: torch.Tensor, loss_function: str) -> torch.Tensor:
    r"""Per-critic TD loss :math:`\ell(Q_k(s, a), y)` (docs/cql.md, section 4): TorchRL's
    ``distance_loss`` (``"l2"``: squared error, ``"l1"``, ``"smooth_l1"``)."""
    return distance_loss(q_data, y.expand_as(q_data), loss_function)


@dataclass(frozen=True)
class CriticLossOptions:
    """The loss options that shape the critic loss (read from ``CQLLoss`` per call)."""

    num_actions: int
    importance_sample: bool
    temperature: float
    clip_diff_min: float
    clip_diff_max: float
    cql_alpha: float
    target_action_gap: float
    loss_function: str


class CriticTerms(NamedTuple):
    """The named terms of the critic loss, each ``[K, B]`` unless noted."""

    td: torch.Tensor  # TD distance per critic
    gap: torch.Tensor  # conservative gap per critic
    penalty: torch.Tensor  # conservative penalty per critic
    q_policy: torch.Tensor  # [K, B, 2N] Q at the policy proposals, Cal-QL-calibrated


def critic_loss_terms(
    q_data: torch.Tensor,
    q_proposals: torch.Tensor,
    y: torch.Tensor,
    log_density: torch.Tensor,
    mc_return: torch.Tensor | None,
    alpha_prime: torch.Tensor | None,
    opts: CriticLossOptions,
) -> CriticTerms:
    r"""All critic-loss terms of every critic and state (docs/cql.md, sections 4-6).

    The critic loss of state ``s`` is :math:`\sum_k \ell_k + P_k`. Args: ``q_data``
    ``[K, B]`` and ``q_proposals`` ``[K, B, 3N]`` (columns 0 and 1.. of the state-major Q
    tensor, see the module docstring); ``y`` ``[B]`` TD targets; ``log_density``
    ``[B, 3N]`` proposal log-densities; ``mc_return`` ``[B]`` (Cal-QL) or None;
    ``alpha_prime`` the Lagrange multiplier or None.
    """
    n = opts.num_actions
    q_policy = q_proposals[..., n:]
    if mc_return is not None:
        q_policy = calibrate(q_policy, mc_return[:, None])
        q_proposals = torch.cat([q_proposals[..., :n], q_policy], dim=-1)
    gap = conservative_gap(
        q_data,
        q_proposals,
        log_density,
        importance_sample=opts.importance_sample,
        temperature=opts.temperature,
        clip_diff_min=opts.clip_diff_min,
        clip_diff_max=opts.clip_diff_max,
    )
    penalty = conservative_penalty(gap, opts.cql_alpha, alpha_prime, opts.target_action_gap)
    return CriticTerms(td_distance(q_data, y, opts.loss_function), gap, penalty, q_policy)

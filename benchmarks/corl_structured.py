"""A CQL update with CORL's structure: the benchmark's reference contestant.

Written from the algorithm (``docs/cql.md``) in the layout of CORL's ``ContinuousCQL``
trainer (``algorithms/offline/cql.py``), so that ``bench_update.py`` can time this
project's update against the structure most CQL users run:

* two critics as two independent ``nn.Module`` s (no stacked ensemble), each evaluated
  on its own, one call per proposal (random / current / next actions);
* N policy actions sampled by repeating the states (CORL's ``extend_and_repeat`` then
  one actor pass over ``[B, N]`` states), for s and for s';
* one loss per optimizer, one backward each, in CORL's order: alpha, actor, critics
  (``qf_loss.backward(retain_graph=True)`` as CORL writes it), each with its own
  ``torch.optim.Adam`` (PyTorch's default implementation on the device);
* the actor loss differentiates through the (non-detached) critics, whose gradients the
  critic optimizer's ``zero_grad`` then discards, as in CORL;
* Polyak update parameter by parameter (CORL's ``soft_update``).

The math is the same as ``cql_modules.CQLLoss`` with its defaults (importance-sampled
logsumexp over the 3N proposals, all scored at s; no Lagrange, no max-target backup, no
backup entropy, auto alpha): ``tests/test_benchmark_smoke.py`` checks the loss values and
the critic gradients against ``CQLLoss`` on one batch with the same samples. The
networks are this project's (``make_actor``'s MLP and tanh-Gaussian head, two
``make_critic`` MLPs); the policy distribution is built as CORL builds it
(``TransformedDistribution(Normal, TanhTransform(cache_size=1))``, log-prob summed over
the action dimensions), which for bounds [-1, 1] is ``CQLLoss``'s ``TanhNormal``.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution
from torch.nn import functional as F

__all__ = ["CORLStructuredCQL"]


def extend_and_repeat(tensor: torch.Tensor, dim: int, repeat: int) -> torch.Tensor:
    """CORL's helper: insert ``dim`` and repeat the tensor ``repeat`` times along it."""
    return tensor.unsqueeze(dim).repeat_interleave(repeat, dim=dim)


class CORLStructuredCQL:
    """``train(batch) -> dict``: one CQL update in CORL's structure.

    Args:
        policy_net: module ``obs -> (loc, scale)`` (``make_actor(...).module[0].module``).
        critic_1, critic_2: modules ``(obs, act) -> [..., 1]`` (``make_critic(...).module``).
        action_dim: A; actions live in [-1, 1] (CORL's ``max_action = 1``).
    """

    def __init__(self, policy_net: nn.Module, critic_1: nn.Module, critic_2: nn.Module, action_dim: int, *,
                 gamma: float = 0.99, num_actions: int = 10, cql_alpha: float = 10.0, temperature: float = 1.0,
                 policy_lr: float = 3e-5, qf_lr: float = 3e-4, tau: float = 5e-3) -> None:
        self.policy_net, self.critic_1, self.critic_2 = policy_net, critic_1, critic_2
        self.target_critic_1 = copy.deepcopy(critic_1)
        self.target_critic_2 = copy.deepcopy(critic_2)
        device = next(critic_1.parameters()).device
        self.log_alpha = nn.Parameter(torch.zeros((), device=device))
        self.action_dim = action_dim
        self.target_entropy = -float(action_dim)
        self.gamma, self.num_actions, self.cql_alpha = gamma, num_actions, cql_alpha
        self.temperature, self.tau = temperature, tau
        self.actor_optimizer = torch.optim.Adam(policy_net.parameters(), policy_lr)
        self.critic_optimizer = torch.optim.Adam(list(critic_1.parameters()) + list(critic_2.parameters()), qf_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], policy_lr)  # CORL: alpha lr = policy lr

    def parameters(self):
        yield from self.policy_net.parameters()
        yield from self.critic_1.parameters()
        yield from self.critic_2.parameters()
        yield self.log_alpha

    # ---------------------------------------------------------------- networks
    def actor(self, obs: torch.Tensor, repeat: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CORL's ``TanhGaussianPolicy.forward``: ``(actions, log_pi)``, ``[B, (repeat,) A]``."""
        if repeat is not None:
            obs = extend_and_repeat(obs, 1, repeat)
        loc, scale = self.policy_net(obs)
        dist = TransformedDistribution(Normal(loc, scale), TanhTransform(cache_size=1))
        action = dist.rsample()
        return action, dist.log_prob(action).sum(-1)

    def random_actions(self, batch_size: int) -> torch.Tensor:
        """``[B, N, A]`` uniform in [-1, 1] (CORL's ``new_empty(...).uniform_(-1, 1)``)."""
        return self.log_alpha.new_empty(batch_size, self.num_actions, self.action_dim).uniform_(-1, 1)

    @staticmethod
    def q(critic: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """CORL's ``FullyConnectedQFunction.forward``: ``[B]``, or ``[B, N]`` for ``[B, N, A]`` actions."""
        if actions.ndim == 3 and obs.ndim == 2:
            n = actions.shape[1]
            obs = extend_and_repeat(obs, 1, n).reshape(-1, obs.shape[-1])
            return critic(obs, actions.reshape(-1, actions.shape[-1])).squeeze(-1).reshape(-1, n)
        return critic(obs, actions).squeeze(-1)

    # ---------------------------------------------------------------- losses
    def losses(self, obs, actions, next_obs, rewards, dones) -> dict[str, torch.Tensor]:
        """Alpha, policy and critic losses (scalars) of one batch, CORL's formulas and order."""
        new_actions, log_pi = self.actor(obs)
        alpha_loss = -(self.log_alpha * (log_pi + self.target_entropy).detach()).mean()
        # detached: in CORL this gradient reaches log_alpha.grad only after the alpha step
        # and is zeroed before the next one, so it changes nothing
        alpha = self.log_alpha.exp().detach()
        q_new = torch.min(self.q(self.critic_1, obs, new_actions), self.q(self.critic_2, obs, new_actions))
        policy_loss = (alpha * log_pi - q_new).mean()

        q1_pred = self.q(self.critic_1, obs, actions)
        q2_pred = self.q(self.critic_2, obs, actions)
        new_next_actions, _ = self.actor(next_obs)
        target_q = torch.min(self.q(self.target_critic_1, next_obs, new_next_actions),
                             self.q(self.target_critic_2, next_obs, new_next_actions))
        td_target = (rewards + (1.0 - dones) * self.gamma * target_q).detach()
        qf1_loss = F.mse_loss(q1_pred, td_target)
        qf2_loss = F.mse_loss(q2_pred, td_target)

        B = obs.shape[0]
        rand = self.random_actions(B)
        cur, cur_logp = (t.detach() for t in self.actor(obs, repeat=self.num_actions))
        nxt, nxt_logp = (t.detach() for t in self.actor(next_obs, repeat=self.num_actions))
        random_density = self.action_dim * math.log(0.5)  # CORL's np.log(0.5 ** A)
        penalties = []
        for critic, q_pred in ((self.critic_1, q1_pred), (self.critic_2, q2_pred)):
            cat = torch.cat([self.q(critic, obs, rand) - random_density,
                             self.q(critic, obs, nxt) - nxt_logp,
                             self.q(critic, obs, cur) - cur_logp], dim=1)  # [B, 3N]
            ood = torch.logsumexp(cat / self.temperature, dim=1) * self.temperature
            penalties.append(self.cql_alpha * (ood - q_pred).mean())
        qf_loss = qf1_loss + qf2_loss + penalties[0] + penalties[1]
        return {"loss_alpha": alpha_loss, "loss_actor": policy_loss, "loss_qvalue": qf_loss}

    # ---------------------------------------------------------------- update
    def train(self, batch) -> dict[str, torch.Tensor]:
        """One update from a TensorDict batch (observation, action, next/{observation,
        reward, terminated}): three backward passes and three optimizer steps, then the
        Polyak update, in CORL's order."""
        B = batch.batch_size[0]
        out = self.losses(batch["observation"], batch["action"], batch["next", "observation"],
                          batch["next", "reward"].reshape(B), batch["next", "terminated"].reshape(B).float())
        self.alpha_optimizer.zero_grad()
        out["loss_alpha"].backward()
        self.alpha_optimizer.step()
        self.actor_optimizer.zero_grad()
        out["loss_actor"].backward()
        self.actor_optimizer.step()
        self.critic_optimizer.zero_grad()
        out["loss_qvalue"].backward(retain_graph=True)
        self.critic_optimizer.step()
        with torch.no_grad():
            for target, source in ((self.target_critic_1, self.critic_1), (self.target_critic_2, self.critic_2)):
                for tp, sp in zip(target.parameters(), source.parameters()):
                    tp.data.copy_((1 - self.tau) * tp.data + self.tau * sp.data)
        return {k: v.detach() for k, v in out.items()}

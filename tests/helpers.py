"""Small builders shared by the loss tests (tiny nets keep the suite fast)."""
from __future__ import annotations

import torch
from tensordict import TensorDict

from cql_modules import CQLLoss, bounded_action_spec, make_actor, make_critic

OBS, ACT = 3, 2


def make_batch(B: int = 16, obs_dim: int = OBS, act_dim: int = ACT, low=-1.0, high=1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    low_t = torch.as_tensor(low, dtype=torch.float32).expand(act_dim)
    high_t = torch.as_tensor(high, dtype=torch.float32).expand(act_dim)
    action = low_t + (high_t - low_t) * torch.rand(B, act_dim, generator=g)
    return TensorDict(
        {
            "observation": torch.randn(B, obs_dim, generator=g),
            "action": action,
            "mc_return": torch.randn(B, 1, generator=g),
            "next": {
                "observation": torch.randn(B, obs_dim, generator=g),
                "reward": torch.randn(B, 1, generator=g),
                "done": torch.rand(B, 1, generator=g) < 0.3,
                "terminated": torch.rand(B, 1, generator=g) < 0.3,
            },
        },
        [B],
    )


def make_loss(hidden: int = 16, layers: int = 2, low=-1.0, high=1.0, perturb: float = 0.3, seed: int = 0, **kwargs):
    """A CQLLoss over tiny nets whose weights are perturbed so that Q values and policy
    means are far from their near-zero initialisation (formulas then matter)."""
    torch.manual_seed(seed)
    spec = bounded_action_spec(ACT, low, high)
    actor = make_actor(OBS, spec, hidden_dim=hidden, n_hidden_layers=layers)
    critic = make_critic(OBS, ACT, hidden_dim=hidden, n_hidden_layers=layers)
    loss = CQLLoss(actor, critic, **kwargs)
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(perturb * torch.randn_like(p))
        for p in loss.target_qvalue_network_params.values(True, True):
            p.add_(perturb * torch.randn_like(p))
        for p in actor.parameters():
            if p.ndim > 0:
                p.add_(0.5 * perturb * torch.randn_like(p))
    return loss

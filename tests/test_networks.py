"""Network builders: CORL's actor head, shapes, deterministic mode."""
from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from cql_modules import bounded_action_spec, make_actor, make_critic
from cql_modules.modules import TanhGaussianHead


def test_head_log_std_is_clamped_to_corl_range():
    head = TanhGaussianHead(log_std_multiplier=1.0, log_std_offset=-1.0)
    raw = torch.tensor([[0.0, 100.0], [0.0, -100.0], [0.0, 1.5]])  # loc | raw log-std (A=1)
    _, scale = head(raw)
    assert torch.allclose(scale[:, 0], torch.tensor([math.exp(2.0), math.exp(-20.0), math.exp(0.5)]))


def test_head_multiplier_and_offset_are_learnable():
    head = TanhGaussianHead(2.0, 0.5)
    _, scale = head(torch.tensor([[0.0, 0.25]]))
    assert torch.allclose(scale, torch.tensor([[math.exp(2.0 * 0.25 + 0.5)]]))
    assert {n for n, _ in head.named_parameters()} == {"log_std_multiplier", "log_std_offset"}


def test_actor_deterministic_action_is_tanh_of_mean_within_bounds():
    spec = bounded_action_spec(2, [0.0, -3.0], [2.0, -1.0])
    actor = make_actor(4, spec, hidden_dim=16)
    td = TensorDict({"observation": torch.randn(5, 4)}, [5])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = actor(td.clone())["action"]
    loc, _ = actor.module[0](td.clone()).get("loc"), None
    expected = spec.space.low + (spec.space.high - spec.space.low) * (torch.tanh(loc) + 1) / 2
    assert torch.allclose(a, expected, atol=1e-6)
    with set_exploration_type(ExplorationType.RANDOM):
        s = actor(td.clone())["action"]
    assert ((s >= spec.space.low) & (s <= spec.space.high)).all()


def test_critic_depth_follows_n_hidden_layers():
    critic = make_critic(4, 2, hidden_dim=8, n_hidden_layers=5)
    assert sum(isinstance(m, torch.nn.Linear) for m in critic.modules()) == 6


def test_ensemble_mlp_batched_and_per_member_forms_agree():
    from cql_modules.modules import ensemble_mlp

    torch.manual_seed(0)
    K, R = 3, 50
    shapes = [(16, 5), (16, 16), (1, 16)]
    ws = [torch.randn(K, *s, requires_grad=True) for s in shapes]
    bs = [torch.randn(K, s[0], requires_grad=True) for s in shapes]
    x = torch.randn(R, 5)
    grads = []
    for batched in (True, False):
        out = ensemble_mlp(ws, bs, x, batched=batched)
        assert out.shape == (K, R, 1)
        g = torch.autograd.grad(out.square().sum(), ws + bs)
        grads.append((out.detach(), g))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-4)
    for k in range(K):  # member k is a plain MLP with its own weights
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = h @ w[k].T + b[k]
            h = torch.relu(h) if i < 2 else h
        assert torch.allclose(grads[1][0][k], h.detach(), atol=1e-5)

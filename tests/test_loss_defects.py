"""One regression test per defect of docs/cql.md, section 10, plus gradient routing."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cql_modules import CQLLoss, MLP, make_actor, make_critic
from cql_reference import critic_layers, mlp, record_samples
from helpers import ACT, OBS, make_batch, make_loss


def _critic_grads(loss):
    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                      for p in loss.qvalue_network_params.values(True, True)])


def _zero(loss):
    for p in loss.parameters():
        p.grad = None


def _grad_of(loss, td, key_or_keys, seed=0):
    _zero(loss)
    torch.manual_seed(seed)
    out = loss(td.clone())
    keys = [key_or_keys] if isinstance(key_or_keys, str) else key_or_keys
    sum(out[k] for k in keys).backward()
    return out


# ---------------------------------------------------------------- gradient routing
PARAM_GROUPS = {
    "actor": lambda loss: list(loss.actor_network.parameters()),
    "critic": lambda loss: list(loss.qvalue_network_params.values(True, True)),
    "log_alpha": lambda loss: [loss.log_alpha],
    "log_alpha_prime": lambda loss: [loss.log_alpha_prime],
}


@pytest.mark.parametrize(
    "key,reaches",
    [("loss_actor", {"actor"}), ("loss_qvalue", {"critic"}), ("loss_alpha", {"log_alpha"}),
     ("loss_alpha_prime", {"log_alpha_prime"})],
)
def test_each_loss_reaches_only_its_own_parameters(key, reaches):
    """Actor loss -> policy only (critic detached); critic loss -> critics only; each
    temperature loss -> its own scalar only. This is what makes one backward of the sum exact."""
    loss = make_loss(lagrange=True)
    with torch.no_grad():  # non-zero temperatures, so that a leaked gradient would show
        loss.log_alpha.fill_(0.3)
        loss.log_alpha_prime.fill_(math.log(3.0))
    _grad_of(loss, make_batch(), key)
    for name, params in PARAM_GROUPS.items():
        total = sum(float(p.grad.abs().sum()) for p in params(loss) if p.grad is not None)
        assert (total > 0) == (name in reaches), (key, name, total)


@pytest.mark.parametrize("alpha_prime", [0.5, 3.0, 10.0])
def test_defect1_penalty_weight_is_alpha_prime_times_cql_alpha(alpha_prime):
    """Critic gradient = grad TD + alpha' * cql_alpha * grad(sum_k mean gap_k), even when
    all losses are summed (TorchRL's gives a weight 1 - 0.5 alpha' that flips sign at 2)."""
    cql_alpha, tag = 5.0, 0.3
    td = make_batch()
    losses = {c: make_loss(lagrange=True, cql_alpha=c, target_action_gap=tag) for c in (0.0, cql_alpha)}
    for lo in losses.values():
        with torch.no_grad():
            lo.log_alpha_prime.fill_(math.log(alpha_prime))
    all_keys = ["loss_actor", "loss_qvalue", "loss_alpha", "loss_alpha_prime"]
    _grad_of(losses[0.0], td, all_keys)
    g_td = _critic_grads(losses[0.0])
    _grad_of(losses[cql_alpha], td, all_keys)
    g_total = _critic_grads(losses[cql_alpha])
    # the gradient of sum_k mean(gap_k) alone: non-Lagrange critic losses at cql_alpha 1 and 0
    gap_one, gap_zero = make_loss(cql_alpha=1.0), make_loss(cql_alpha=0.0)
    _grad_of(gap_one, td, "loss_qvalue")
    _grad_of(gap_zero, td, "loss_qvalue")
    g_gap = _critic_grads(gap_one) - _critic_grads(gap_zero)
    assert g_gap.abs().max() > 1e-3
    assert torch.allclose(g_total - g_td, alpha_prime * cql_alpha * g_gap, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- defect 2
def test_defect2_logsumexp_over_all_3n_actions_per_state():
    N = 4
    loss = make_loss(num_actions=N)
    td = make_batch(B=6)
    rec = record_samples(loss)
    out = loss(td)
    c = critic_layers(loss, 0)
    s = td["observation"].double()

    def Q(a):
        return mlp(c, torch.cat([s.expand(*a.shape[:-1], -1), a.double()], -1))[..., 0]

    log_u = -math.log(2.0) * ACT
    nt = 1
    q_rand = Q(rec["uniform"]) - log_u  # [N, B]
    q_next = Q(rec["actions"][nt:, 1]) - rec["logp"][nt:, 1].double()
    q_cur = Q(rec["actions"][nt:, 0]) - rec["logp"][nt:, 0].double()
    q_data = Q(td["action"])
    per_state = torch.logsumexp(torch.cat([q_rand, q_next, q_cur]), 0)  # over 3N values
    per_action = torch.logsumexp(torch.stack([q_rand, q_next, q_cur], -1), -1)  # TorchRL's [B*N, 3]
    right = (per_state - q_data).mean()
    wrong = (per_action - q_data).mean()
    assert abs(right - wrong) > 1e-2  # the test can tell them apart
    assert torch.allclose(out["cql_qf1_diff"].double(), right, atol=1e-5)


# ---------------------------------------------------------------- defect 3
def test_defect3_next_actions_scored_at_current_state():
    loss = make_loss(num_actions=4)
    td = make_batch(B=6)
    td["next", "observation"] = td["observation"] + 5.0  # s' far from s
    rec = record_samples(loss)
    out = loss(td)
    c = critic_layers(loss, 0)
    a_next = rec["actions"][1:, 1].double()

    def Q(obs):
        return mlp(c, torch.cat([obs.double().expand(4, -1, -1), a_next], -1))[..., 0].mean()

    at_s, at_s2 = Q(td["observation"]), Q(td["next", "observation"])
    assert abs(at_s - at_s2) > 1e-2
    assert torch.allclose(out["cql_q1_next_actions"].double(), at_s, atol=1e-5)


# ---------------------------------------------------------------- defect 4
def test_defect4_penalty_is_per_state_and_memory_linear_in_batch():
    B, N, hidden = 256, 10, 8
    loss = make_loss(hidden=hidden, num_actions=N, reduction="none", lagrange=True)
    td = make_batch(B=B)
    max_numel = 0

    def pack(t):
        nonlocal max_numel
        max_numel = max(max_numel, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss(td)
    for key in ("loss_qvalue", "loss_actor", "loss_alpha", "loss_alpha_prime"):
        assert out[key].shape == (B,)
    assert td["td_error"].shape == (B,)
    # the largest saved activation is K * (3N+1) * B * hidden, far below B^2 * N
    assert max_numel <= 2 * (3 * N + 1) * B * max(hidden, OBS + ACT)
    assert max_numel < B * B * N


# ---------------------------------------------------------------- defect 5
def test_defect5_max_backup_min_over_critics_then_max_with_entropy():
    N = 5
    loss = make_loss(num_actions=N, max_target_backup=True, backup_entropy=True)
    with torch.no_grad():
        loss.log_alpha.fill_(0.5)
    td = make_batch(B=8)
    rec = record_samples(loss)
    out = loss(td)
    s2 = td["next", "observation"].double()
    a_t = rec["actions"][:N, 1].double()
    qs = torch.stack([mlp(critic_layers(loss, k, target=True), torch.cat([s2.expand(N, -1, -1), a_t], -1))[..., 0]
                      for k in range(2)])  # [K, N, B]
    right_v, idx = qs.min(0).values.max(0)
    wrong_v = qs.max(1).values.min(0).values  # TorchRL's max-then-min
    alpha = math.exp(0.5)
    right = right_v - alpha * rec["logp"][:N, 1].double().gather(0, idx[None])[0]
    assert (right_v - wrong_v).abs().max() > 1e-3
    assert torch.allclose(out["average_target_q"].double(), right.mean(), atol=1e-5)


def test_defect5_random_actions_respect_the_action_spec():
    low, high = [0.0, -3.0], [2.0, -1.0]
    loss = make_loss(num_actions=50, low=low, high=high)
    rec = record_samples(loss)
    loss(make_batch(B=64, low=low, high=high))
    u = rec["uniform"].reshape(-1, ACT)
    lo, hi = torch.tensor(low), torch.tensor(high)
    assert (u >= lo).all() and (u <= hi).all()
    assert torch.allclose(u.min(0).values, lo, atol=0.01) and torch.allclose(u.max(0).values, hi, atol=0.01)
    assert torch.allclose(loss.uniform_log_density, -torch.log(hi - lo).sum())


# ---------------------------------------------------------------- CORL's two defects
def _linears(module):
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_corl_defect_every_critic_has_the_same_depth_and_init():
    layers = 4
    critic = make_critic(OBS, ACT, hidden_dim=32, n_hidden_layers=layers)
    loss = CQLLoss(make_actor(OBS, ACT, hidden_dim=32), critic, num_qvalue_nets=3)
    weights = [critic_layers(loss, k) for k in range(3)]
    for w in weights:
        assert len(w) == layers + 1
        for W, b in w[:-1]:
            # orthogonal with gain sqrt(2): W W^T = 2 I (rows <= cols) or W^T W = 2 I
            G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
            assert torch.allclose(G, 2 * torch.eye(G.shape[0], dtype=G.dtype), atol=1e-4)
            assert b.abs().max() == 0
        Wl, bl = w[-1]
        assert torch.allclose(Wl @ Wl.T, torch.tensor([[1e-4]], dtype=Wl.dtype), rtol=1e-3)
    # copies are independent draws, not expansions or uniform re-samples
    assert not torch.allclose(weights[0][0][0], weights[1][0][0])


def test_corl_defect_actor_gets_orthogonal_init():
    actor = make_actor(OBS, ACT, hidden_dim=32, n_hidden_layers=3)
    lin = _linears(actor)
    assert len(lin) == 4
    for layer in lin[:-1]:
        W = layer.weight.detach()
        G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
        assert torch.allclose(G, 2 * torch.eye(G.shape[0]), atol=1e-4)
    W = lin[-1].weight.detach()
    assert torch.allclose(W @ W.T, 1e-4 * torch.eye(W.shape[0]), atol=1e-6)


def test_no_orthogonal_init_keeps_xavier_last_layer():
    mlp_ = MLP(5, 2, hidden_dim=16, n_hidden_layers=2, orthogonal_init=False)
    last = _linears(mlp_)[-1]
    bound = 1e-2 * math.sqrt(6 / (16 + 2))
    assert last.weight.abs().max() <= bound and last.bias.abs().max() == 0

"""DiscreteCQLLoss against an independent float64 computation, gradient routing, the points
where it differs from torchrl's DiscreteCQLLoss, and a learning check on a tiny task."""
from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Categorical, OneHot
from torchrl.modules import MLP, QValueActor
from torchrl.objectives import DiscreteCQLLoss as TorchRLDiscreteCQLLoss
from torchrl.objectives import HardUpdate, SoftUpdate

from cql_modules.objectives.discrete import DiscreteCQLLoss
from test_contract import LossContract

OBS, NA, B = 3, 4, 12
TOL = dict(rtol=1e-5, atol=1e-5)


def make_actor(one_hot: bool = False, seed: int = 0, obs_key="observation", action_value_key="action_value"):
    torch.manual_seed(seed)
    net = MLP(in_features=OBS, out_features=NA, num_cells=[16], activation_class=nn.ReLU)
    spec = OneHot(NA) if one_hot else Categorical(NA)
    return QValueActor(net, in_keys=[obs_key], spec=spec, action_value_key=action_value_key)


def make_loss(one_hot: bool = False, seed: int = 0, perturb: float = 0.5, **kwargs) -> DiscreteCQLLoss:
    """A loss whose online and target networks differ (so that double DQN matters)."""
    loss = DiscreteCQLLoss(make_actor(one_hot, seed), **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            p.add_(perturb * torch.randn(p.shape, generator=g))
        for p in loss.target_value_network_params.values(True, True):
            p.add_(perturb * torch.randn(p.shape, generator=g))
    return loss


def make_batch(one_hot: bool = False, batch=(B,), seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(NA, batch, generator=g)
    return TensorDict(
        {
            "observation": torch.randn(*batch, OBS, generator=g),
            "action": nn.functional.one_hot(a, NA) if one_hot else a,
            "next": {
                "observation": torch.randn(*batch, OBS, generator=g),
                "reward": torch.randn(*batch, 1, generator=g),
                "done": torch.rand(*batch, 1, generator=g) < 0.3,
                "terminated": torch.rand(*batch, 1, generator=g) < 0.3,
            },
        },
        list(batch),
    )


# ---------------------------------------------------------------- independent float64 reference
def _mlp64(params, x):
    """Q(x, .) of the Linear-ReLU-Linear net from its parameters (float64, plain torch)."""
    leaves = [v.double() for v in params.values(True, True)]  # w0, b0, w1, b1 in module order
    w0, b0, w1, b1 = leaves
    return torch.relu(x @ w0.T + b0) @ w1.T + b1


def reference(loss: DiscreteCQLLoss, batch: TensorDict, params=None, *, alpha_prime=None, weights=None):
    """Per-sample critic loss, td_error and per-network terms, all in float64."""
    K = loss.num_qvalue_nets
    params = loss.value_network_params if params is None else params
    online = [params] if K == 1 else [params[k] for k in range(K)]
    target_p = loss.target_value_network_params
    target = [target_p] if K == 1 else [target_p[k] for k in range(K)]
    s, s2 = batch["observation"].double(), batch["next", "observation"].double()
    r = batch["next", "reward"].double().reshape(-1)
    d = batch["next", "terminated"].reshape(-1).double()
    a = batch["action"]
    a = a.argmax(-1) if a.ndim == 2 else a
    tau, gamma = loss.temperature, loss.gamma
    q_next_t = torch.stack([_mlp64(p, s2) for p in target])  # [K, B, A]
    if loss.double_dqn:
        b_star = torch.stack([_mlp64(p, s2) for p in online]).min(0).values.argmax(-1)
        v = q_next_t.min(0).values[torch.arange(len(r)), b_star]
    else:
        v = q_next_t.min(0).values.max(-1).values
    y = r + gamma * (1 - d) * v
    per_sample, td_err, gaps, tds = torch.zeros_like(r), torch.zeros_like(r), [], []
    for p in online:
        q = _mlp64(p, s)
        q_a = q[torch.arange(len(r)), a]
        diff = q_a - y
        td = diff**2 if loss.loss_function == "l2" else torch.where(diff.abs() < 1, 0.5 * diff**2, diff.abs() - 0.5)
        gap = tau * torch.log(torch.exp(q / tau).sum(-1)) - q_a
        pen = loss.cql_alpha * gap if alpha_prime is None else alpha_prime * loss.cql_alpha * (gap - loss.target_action_gap)
        per_sample = per_sample + td + pen
        td_err = torch.maximum(td_err, diff.abs())
        gaps.append(gap)
        tds.append(td)
    w = torch.ones_like(r) if weights is None else weights.double()
    return dict(per_sample=per_sample, mean=(w * per_sample).sum() / w.sum(), sum=(w * per_sample).sum(),
                td_error=td_err, y=y, gaps=torch.stack(gaps), tds=torch.stack(tds))


CASES = [
    ("default", {}),
    ("double_dqn", dict(double_dqn=True)),
    ("temperature", dict(temperature=0.3)),
    ("alpha", dict(cql_alpha=4.0, gamma=0.9)),
    ("alpha_zero", dict(cql_alpha=0.0)),
    ("ensemble", dict(num_qvalue_nets=3)),
    ("ensemble_double", dict(num_qvalue_nets=3, double_dqn=True, temperature=2.0)),
    ("smooth_l1", dict(loss_function="smooth_l1")),
    ("one_hot", dict(one_hot=True)),
    ("one_hot_double_ensemble", dict(one_hot=True, double_dqn=True, num_qvalue_nets=2)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_loss_matches_float64_reference(name, kwargs):
    loss = make_loss(**kwargs)
    batch = make_batch(kwargs.get("one_hot", False))
    out = loss(batch)
    ref = reference(loss, batch)
    assert torch.allclose(out["loss_qvalue"].double(), ref["mean"], **TOL)
    assert torch.allclose(batch["td_error"].double(), ref["td_error"], **TOL)
    assert torch.allclose(out["average_target_q"].double(), ref["y"].mean(), **TOL)
    for k in range(loss.num_qvalue_nets):
        assert torch.allclose(out[f"cql_qf{k + 1}_diff"].double(), ref["gaps"][k].mean(), **TOL)
        assert torch.allclose(out[f"qf{k + 1}_loss"].double(), ref["tds"][k].mean(), **TOL)


def test_double_dqn_changes_the_target():
    """The fixture's online and target nets disagree: the two targets must differ."""
    batch = make_batch()
    plain, double = make_loss()(batch.clone()), make_loss(double_dqn=True)(batch.clone())
    assert not torch.allclose(plain["average_target_q"], double["average_target_q"])


def test_lagrange_matches_reference_and_routes_gradients():
    loss = make_loss(lagrange=True, target_action_gap=0.5, cql_alpha=2.0)
    with torch.no_grad():
        loss.log_alpha_prime.fill_(math.log(3.0))
    batch = make_batch()
    out = loss(batch)
    ref = reference(loss, batch, alpha_prime=3.0)
    assert torch.allclose(out["loss_qvalue"].double(), ref["mean"], **TOL)
    # -1/2 alpha' cql_alpha sum_k (gap_k - g), gap detached (the continuous loss's term)
    expected = (-0.5 * 3.0 * 2.0 * (ref["gaps"] - 0.5).sum(0)).mean()
    assert torch.allclose(out["loss_alpha_prime"].double(), expected, **TOL)
    net_params = list(loss.value_network_params.values(True, True))
    g = torch.autograd.grad(out["loss_alpha_prime"], [loss.log_alpha_prime, *net_params], allow_unused=True)
    assert g[0] is not None and all(x is None for x in g[1:])
    g = torch.autograd.grad(out["loss_qvalue"], [loss.log_alpha_prime], allow_unused=True)
    assert g[0] is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_priority_weights(reduction):
    """TorchRL's convention: mean = sum(w L) / sum(w), sum = sum(w L), none = w L."""
    loss = make_loss(reduction=reduction)
    batch = make_batch()
    w = torch.rand(B, generator=torch.Generator().manual_seed(3)) + 0.1
    batch["priority_weight"] = w
    out = loss(batch)
    ref = reference(loss, batch, weights=w)
    expected = ref["per_sample"] * w.double() if reduction == "none" else ref[reduction]
    assert torch.allclose(out["loss_qvalue"].double(), expected, **TOL)
    loss.use_prioritized_weights = False
    unweighted = loss(batch)["loss_qvalue"]
    assert not torch.allclose(unweighted, out["loss_qvalue"])


def test_reduction_none_and_extra_batch_dims():
    loss = make_loss(reduction="none", double_dqn=True)
    batch = make_batch(batch=(3, 4))
    out = loss(batch)
    assert out["loss_qvalue"].shape == (3, 4) and batch["td_error"].shape == (3, 4)
    ref = reference(loss, batch.reshape(-1))
    assert torch.allclose(out["loss_qvalue"].reshape(-1).double(), ref["per_sample"], **TOL)
    assert torch.allclose(batch["td_error"].reshape(-1).double(), ref["td_error"], **TOL)


def test_categorical_action_with_trailing_dim():
    loss = make_loss()
    batch = make_batch()
    a = loss(batch.clone())["loss_qvalue"]
    batch["action"] = batch["action"].unsqueeze(-1)
    assert torch.allclose(loss(batch)["loss_qvalue"], a)


def test_nested_keys_via_set_keys():
    actor = make_actor(obs_key=("agent", "observation"), action_value_key=("agent", "action_value"))
    loss = DiscreteCQLLoss(actor, double_dqn=True)
    loss.set_keys(action=("agent", "action"), action_value=("agent", "action_value"),
                  reward=("agent", "reward"), terminated=("agent", "terminated"), priority=("agent", "td_error"))
    flat = make_batch()
    nested = TensorDict({
        ("agent", "observation"): flat["observation"], ("agent", "action"): flat["action"],
        ("next", "agent", "observation"): flat["next", "observation"],
        ("next", "agent", "reward"): flat["next", "reward"], ("next", "agent", "terminated"): flat["next", "terminated"],
    }, [B])
    out = loss(nested)
    ref = reference(loss, flat)
    assert torch.allclose(out["loss_qvalue"].double(), ref["mean"], **TOL)
    assert nested["agent", "td_error"].shape == (B,)
    assert ("agent", "action") in loss.in_keys and ("next", "agent", "observation") in loss.in_keys


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kwargs", [dict(), dict(double_dqn=True, num_qvalue_nets=2, temperature=0.5)])
def test_gradients_match_float64_reference(kwargs):
    """d loss / d online params equal the float64 autograd of the reference; target params
    (and the online net at s' used by the double-DQN arg-max) receive nothing."""
    loss = make_loss(cql_alpha=2.0, **kwargs)
    batch = make_batch()
    params = list(loss.value_network_params.values(True, True))
    grads = torch.autograd.grad(loss(batch)["loss_qvalue"], params)
    p64 = loss.value_network_params.detach().apply(lambda x: x.double().requires_grad_())
    ref = reference(loss, batch, params=p64)["mean"]
    ref_grads = torch.autograd.grad(ref, list(p64.values(True, True)))
    for g, rg in zip(grads, ref_grads):
        assert torch.allclose(g.double(), rg, rtol=1e-4, atol=1e-5)
    assert all(not p.requires_grad for p in loss.target_value_network_params.values(True, True))


@pytest.mark.parametrize("updater", ["soft", "hard"])
def test_target_updates(updater):
    """TorchRL's updaters find the loss's target parameters (they copy the online ones
    on their first step; then Polyak averaging or a copy every N steps)."""
    loss = make_loss()
    up = SoftUpdate(loss, tau=0.25) if updater == "soft" else HardUpdate(loss, value_network_update_interval=2)
    up.step()
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            p.add_(1.0)
    online = loss.value_network_params.detach().clone()
    target = loss.target_value_network_params.detach().clone()
    up.step()
    if updater == "soft":
        expected = target.apply(lambda t, o: 0.75 * t + 0.25 * o, online)
    else:
        assert (loss.target_value_network_params.detach() == target).all()
        up.step()
        expected = online
    got = loss.target_value_network_params.detach()
    for k, v in expected.items(True, True):
        assert torch.allclose(got[k], v)


# ---------------------------------------------------------------- differences from torchrl
def _torchrl_pair(gamma=0.99):
    """Our loss and torchrl's on the same network; target = online, plain max target."""
    actor = make_actor()
    ours = DiscreteCQLLoss(actor, gamma=gamma)
    theirs = TorchRLDiscreteCQLLoss(actor, action_space="categorical")
    theirs.make_value_estimator(gamma=gamma)
    return ours, theirs


def test_vs_torchrl_same_terms_but_no_half_and_absolute_td_error():
    """With alpha=1, tau=1, K=1, plain max: torchrl's loss_qvalue is half our TD term,
    its loss_cql our gap; its td_error is squared [B, 1], ours absolute [B]."""
    ours, theirs = _torchrl_pair()
    b1, b2 = make_batch(), make_batch()
    out, ref = ours(b1), theirs(b2)
    assert torch.allclose(ref["loss_qvalue"], 0.5 * out["qf1_loss"], **TOL)
    assert torch.allclose(ref["loss_cql"], out["cql_qf1_diff"], **TOL)
    assert b2["td_error"].shape == (B, 1) and b1["td_error"].shape == (B,)
    assert torch.allclose(b2["td_error"].squeeze(-1), b1["td_error"] ** 2, **TOL)


def test_vs_torchrl_penalty_weight_and_temperature():
    """torchrl has neither: ours scales the gap by cql_alpha and uses tau logsumexp(Q/tau)."""
    batch = make_batch()
    base = make_loss()(batch.clone())["cql_qf1_diff"]
    assert torch.allclose(make_loss(cql_alpha=3.0)(batch.clone())["cql_min_qf1_loss"], 3.0 * base, **TOL)
    loss = make_loss(temperature=0.2)
    ref = reference(loss, batch.clone())
    assert torch.allclose(loss(batch.clone())["cql_qf1_diff"].double(), ref["gaps"][0].mean(), **TOL)
    assert not torch.allclose(ref["gaps"][0].mean().float(), base)


def test_vs_torchrl_cql_loss_standalone():
    """torchrl's cql_loss needs value_loss to have written pred_val first; ours does not."""
    ours, theirs = _torchrl_pair()
    with pytest.raises(KeyError):
        theirs.cql_loss(make_batch())
    got = ours.cql_loss(make_batch())
    assert torch.allclose(got, ours(make_batch())["cql_min_qf1_loss"], **TOL)


def test_accepts_plain_module_with_action_space():
    torch.manual_seed(0)
    loss = DiscreteCQLLoss(nn.Linear(OBS, NA), action_space="one-hot")
    loss(make_batch(one_hot=True))["loss_qvalue"].backward()
    with pytest.raises(ValueError, match="action"):
        DiscreteCQLLoss(nn.Linear(OBS, NA))


# ---------------------------------------------------------------- learning
def _train_bandit(cql_alpha: float, steps: int = 150) -> tuple[float, float]:
    """Tiny offline task (a contextual bandit: one-step episodes): 2-d states, 4 actions,
    reward 1 for the right one of actions 0 / 1, and the data only holds actions 0 and 1.
    The last layer starts optimistic for the unseen actions 2 and 3 (bias +2): an
    over-estimation that TD learning on the data never corrects. Returns
    (mean Q of dataset actions, mean Q of unseen actions) over the dataset states."""
    torch.manual_seed(0)
    net = MLP(in_features=2, out_features=4, num_cells=[32], activation_class=nn.ReLU)
    with torch.no_grad():
        net[-1].bias.copy_(torch.tensor([0.0, 0.0, 2.0, 2.0]))
    actor = QValueActor(net, in_keys=["observation"], spec=Categorical(4))
    loss = DiscreteCQLLoss(actor, cql_alpha=cql_alpha, gamma=0.9)
    updater = SoftUpdate(loss, tau=0.05)
    opt = torch.optim.Adam(loss.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    n = 256
    s = torch.randn(n, 2, generator=g)
    a = torch.randint(2, (n,), generator=g)
    data = TensorDict({
        "observation": s, "action": a,
        "next": {"observation": torch.randn(n, 2, generator=g), "reward": (a == (s[:, :1] > 0).long().squeeze(-1)).float()[:, None],
                 "terminated": torch.ones(n, 1, dtype=torch.bool)},
    }, [n])
    for _ in range(steps):
        batch = data[torch.randint(n, (64,), generator=g)]
        opt.zero_grad()
        loss(batch)["loss_qvalue"].backward()
        opt.step()
        updater.step()
    with torch.no_grad():
        q = actor(data.select("observation").clone())["action_value"]
    return q[:, :2].mean().item(), q[:, 2:].mean().item()


def test_cql_keeps_unseen_actions_below_dataset_actions():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention
    try:
        seen, unseen = _train_bandit(cql_alpha=1.0)
        seen0, unseen0 = _train_bandit(cql_alpha=0.0)
    finally:
        torch.set_num_threads(threads)
    assert unseen < seen - 0.5, (seen, unseen)
    assert unseen0 > seen0, (seen0, unseen0)


# ---------------------------------------------------------------- TorchRL LossModule contract
class TestDiscreteCQLContract(LossContract):
    CONFIGS = {
        "default": {},
        "double_ensemble": dict(double_dqn=True, num_qvalue_nets=2),
        "lagrange_temperature_smooth_l1": dict(lagrange=True, target_action_gap=0.3, temperature=0.5,
                                               loss_function="smooth_l1"),
    }
    REQUIRED_KEYS = ["action", ("next", "reward"), ("next", "terminated"), "observation", ("next", "observation")]
    NETWORK_FIELDS = ("action", "action_value")

    def make_loss(self, config, **overrides):
        loss = make_loss(**{**config, **overrides})
        if loss.lagrange:
            with torch.no_grad():
                loss.log_alpha_prime.fill_(0.7)
        return loss

    def make_batch(self, B):
        return make_batch(batch=(B,))

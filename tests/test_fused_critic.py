"""The block-wise critic gradient (cql_modules/objectives/fused.py) equals autograd's."""
from __future__ import annotations

import pytest
import torch

from cql_modules import CQLLoss
from helpers import make_batch, make_loss
from test_loss_formula import CASES

EXTRA = [
    ("l1", {"loss_function": "l1"}),
    ("smooth_l1", {"loss_function": "smooth_l1"}),
    # the clamp mask with tau != 1 (some states clipped, some not)
    ("temperature_clip", {"temperature": 0.5, "clip_diff_min": 2.5, "clip_diff_max": 4.0}),
]


def _grads(loss, td, fused: bool, seed: int = 0, scale: float = 1.0):
    loss.fused_critic = fused
    for p in loss.parameters():
        p.grad = None
    torch.manual_seed(seed)
    out = loss(td.clone())
    total = out["loss_actor"] + scale * out["loss_qvalue"] + out["loss_alpha"]
    if "loss_alpha_prime" in out.keys():
        total = total + out["loss_alpha_prime"]
    total.backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    return out, grads


def _compare(loss, td, scale: float = 1.0, block_rows: int | None = None):
    # in float64 the two paths agree to rounding: any formula difference shows
    loss, td = loss.double(), td.double()
    if block_rows is not None:
        loss.fused_block_rows = block_rows
    out_a, g_a = _grads(loss, td, fused=False, scale=scale)
    out_f, g_f = _grads(loss, td, fused=True, scale=scale)
    assert g_a.keys() == g_f.keys()
    for name in g_a:
        assert torch.allclose(g_f[name], g_a[name], rtol=1e-10, atol=1e-12), name
    for key in out_a.keys():
        assert torch.allclose(out_f[key], out_a[key], rtol=1e-10, atol=1e-12), key


@pytest.mark.parametrize("name,kwargs", CASES + EXTRA, ids=[c[0] for c in CASES + EXTRA])
def test_fused_critic_gradient_equals_autograd(name, kwargs):
    # 3 layers so that every kind of layer (first, hidden, last) is exercised
    loss = make_loss(layers=3, **kwargs)
    with torch.no_grad():
        if loss.auto_alpha:
            loss.log_alpha.fill_(0.3)
        if loss.lagrange:
            loss.log_alpha_prime.fill_(1.1)
    # small blocks: several blocks and a ragged last one
    _compare(loss, make_batch(B=23), block_rows=5 * (1 + 3 * loss.num_actions))


def test_fused_critic_sum_reduction_and_upstream_scale():
    loss = make_loss(reduction="sum")
    _compare(loss, make_batch(B=9), scale=0.37)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_critic_with_priority_weights(reduction):
    """Importance weights of prioritized replay shape the fused gradient like autograd's."""
    loss = make_loss(reduction=reduction, calibrated=True)
    td = make_batch(B=11)
    td["priority_weight"] = torch.linspace(0.2, 3.0, 11)
    _compare(loss, td, block_rows=4 * (1 + 3 * loss.num_actions))


def test_fused_critic_is_chosen_where_it_applies():
    loss = make_loss()
    inputs = [torch.zeros(2, 3)]
    assert loss._use_fused_critic(inputs)  # CPU, ReLU MLP, mean reduction
    assert not make_loss(reduction="none")._use_fused_critic(inputs)
    assert make_loss(critic_compute_dtype="bfloat16")._use_fused_critic(inputs)
    assert not make_loss(fused_critic=False)._use_fused_critic(inputs)
    # inputs that need a gradient (a shared encoder): plain autograd, even when forced
    assert not make_loss(fused_critic=True)._use_fused_critic([torch.zeros(2, 3, requires_grad=True)])
    with torch.no_grad():
        assert not loss._use_fused_critic(inputs)  # nothing to differentiate


def test_fused_critic_calibration_ties_split_the_gradient_like_torch_maximum():
    """Q == mc_return exactly: torch.maximum sends half of the gradient to each side."""
    loss = make_loss(layers=3, calibrated=True)
    last = loss._q_weight_keys[-1]
    with torch.no_grad():
        loss.qvalue_network_params.get(last).zero_()
        loss.qvalue_network_params.get(loss._q_bias_keys[-1]).fill_(0.5)
    td = make_batch(B=7)
    td["mc_return"] = torch.full((7, 1), 0.5)
    _compare(loss, td)


def test_bf16_fused_critic_gradients_match_bf16_autograd():
    """bf16 hidden layers: the fused gradient equals autograd's to bf16 rounding, and both
    stay within bf16 error of the fp32 gradient."""
    loss = make_loss(layers=3, hidden=32, calibrated=True)
    td = make_batch(B=20)
    _, exact = _grads(loss, td, fused=False)
    loss.critic_compute_dtype = torch.bfloat16
    _, fused = _grads(loss, td, fused=True)
    _, plain = _grads(loss, td, fused=False)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    for name, g in exact.items():
        if "qvalue" in name:
            assert rel(fused[name], plain[name]) < 1e-2, name
            assert rel(fused[name], g) < 6e-2 and rel(plain[name], g) < 6e-2, name


def test_fused_critic_backward_twice_with_retained_graph():
    loss = make_loss()
    out = loss(make_batch())
    out["loss_qvalue"].backward(retain_graph=True)
    first = [p.grad.clone() for p in loss.qvalue_network_params.values(True, True)]
    out["loss_qvalue"].backward()
    for g1, p in zip(first, loss.qvalue_network_params.values(True, True)):
        assert torch.allclose(p.grad, 2 * g1)


def test_fused_critic_single_linear_layer_critic():
    """A TorchRL MLP of depth 0 (one Linear) is a ReLU MLP too: fused equals autograd."""
    from torchrl.modules import MLP, ValueOperator

    from cql_modules import make_actor

    torch.manual_seed(0)
    critic = ValueOperator(MLP(in_features=5, out_features=1, depth=0, num_cells=[]), in_keys=["observation", "action"])
    loss = CQLLoss(make_actor(3, 2, hidden_dim=8), critic, num_actions=3)
    assert loss._use_fused_critic([torch.zeros(2, 5)])
    _compare(loss, make_batch(B=9))


def test_fused_critic_float32_matches_autograd():
    """float32 (the float64 tests above check the formulas): the same loss and gradients as
    autograd up to float32 rounding, every kind of layer and several blocks included."""
    loss = make_loss(layers=3)
    td = make_batch(B=23)
    loss.fused_block_rows = 5 * (1 + 3 * loss.num_actions)
    out_a, g_a = _grads(loss, td, fused=False)
    out_f, g_f = _grads(loss, td, fused=True)
    assert g_a.keys() == g_f.keys()
    for name in g_a:
        scale = g_a[name].abs().max()
        assert (g_f[name] - g_a[name]).abs().max() <= 1e-5 * scale + 1e-7, name
    for key in out_a.keys():
        assert torch.allclose(out_f[key], out_a[key], rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("critics", [1, 3])
def test_fused_critic_other_ensemble_sizes_equal_autograd(critics):
    loss = make_loss(layers=3, num_qvalue_nets=critics, calibrated=True)
    _compare(loss, make_batch(B=13), block_rows=4 * (1 + 3 * loss.num_actions))


def test_fused_critic_workspace_is_reused_and_follows_shapes():
    """The pass's buffers live in the loss across updates (no large allocation per block)
    and are re-made when a shape changes: results stay exact for each batch size."""
    loss = make_loss(layers=3)
    _compare(loss, make_batch(B=23))
    buffers = {k: t.data_ptr() for k, t in loss._fused_workspace.items()}
    assert buffers
    _compare(loss, make_batch(B=23, seed=1))
    assert {k: t.data_ptr() for k, t in loss._fused_workspace.items()} == buffers
    _compare(loss, make_batch(B=9))  # a smaller block: new buffers, still exact
    assert {k: t.data_ptr() for k, t in loss._fused_workspace.items()} != buffers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_critic_propagates_nan_like_autograd(dtype):
    """A NaN critic weight makes the critic loss NaN on both paths: a ReLU that maps NaN
    to 0 (oneDNN's fused one, aten's _add_relu) would hide a diverged critic from the
    recipes' NaN guard."""
    loss = make_loss(layers=3).to(dtype)
    td = make_batch(B=7).to(dtype)
    with torch.no_grad():
        next(iter(loss.qvalue_network_params.values(True, True)))[0, 0, 0] = float("nan")
    for fused in (False, True):
        loss.fused_critic = fused
        assert torch.isnan(loss(td.clone())["loss_qvalue"]), fused

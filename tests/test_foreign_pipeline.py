"""CQLLoss inside a pipeline built only from stock TorchRL pieces: set-ups a user may
bring (single critic, image observations, critics off the fast path, odd specs and
actors) run with the right numbers or fail with one clear message."""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torchrl.data import Bounded, Unbounded
from torchrl.modules import MLP, Actor, ProbabilisticActor, TanhDelta, TanhNormal, ValueOperator

from cql_modules import CQLLoss
from cql_modules.modules import is_relu_mlp

OBS, ACT, B = 3, 2, 8


def _actor(obs_key="observation", flatten=False, spec=None, dist=TanhNormal):
    layers = [nn.Flatten(-2)] if flatten else []
    in_f = 2 * 4 if flatten else OBS
    net = nn.Sequential(*layers, MLP(in_features=in_f, out_features=2 * ACT, num_cells=[16]), NormalParamExtractor())
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=[obs_key], out_keys=["loc", "scale"]), in_keys=["loc", "scale"],
        spec=spec if spec is not None else Bounded(-1.0, 1.0, (ACT,)), distribution_class=dist,
        distribution_kwargs={"low": -1.0, "high": 1.0},
    )


def _critic(act=nn.ReLU, **kw):
    return ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[16, 16], activation_class=act, **kw),
                         in_keys=["observation", "action"])


def _batch(obs_key="observation", obs_shape=(OBS,)):
    return TensorDict({
        obs_key: torch.randn(B, *obs_shape), "action": torch.rand(B, ACT) * 2 - 1,
        "next": {obs_key: torch.randn(B, *obs_shape), "reward": torch.randn(B, 1),
                 "terminated": torch.zeros(B, 1, dtype=torch.bool)},
    }, [B])


def test_single_critic_is_trained():
    torch.manual_seed(0)
    loss = CQLLoss(_actor(), _critic(), num_qvalue_nets=1)
    params = dict(loss.named_parameters())
    assert any(k.startswith("qvalue_network_params") for k in params)
    w = loss.qvalue_network_params.get(("module", "0", "weight"))
    before = w.detach().clone()
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    out = loss(_batch())
    (out["loss_qvalue"] + out["loss_actor"]).backward()
    opt.step()
    assert w.is_leaf and not torch.equal(before, w.detach())


def test_image_observations_equal_the_same_networks_on_flat_observations():
    """[B, 2, 4] observations through a flattening encoder give the loss of the same
    networks fed the flattened [B, 8] observations."""
    torch.manual_seed(0)
    actor = _actor("pixels", flatten=True)
    enc = nn.Sequential(nn.Flatten(-2), nn.Linear(8, 8), nn.Tanh())
    head = MLP(in_features=8 + ACT, out_features=1, num_cells=[16])
    critic = TensorDictSequential(TensorDictModule(enc, ["pixels"], ["emb"]), ValueOperator(head, in_keys=["emb", "action"]))
    batch = _batch("pixels", (2, 4))
    flat_actor = ProbabilisticActor(
        TensorDictModule(nn.Sequential(*list(actor.module[0].module)[1:]), in_keys=["flat"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"], spec=Bounded(-1.0, 1.0, (ACT,)), distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
    )
    flat_critic = TensorDictSequential(TensorDictModule(enc[1:], ["flat"], ["emb"]), ValueOperator(head, in_keys=["emb", "action"]))
    flat = batch.clone()
    for k in ("pixels", ("next", "pixels")):
        flat[k[:-1] + ("flat",) if isinstance(k, tuple) else "flat"] = batch[k].flatten(-2)
    del flat["pixels"], flat["next", "pixels"]
    outs = []
    for a, c, td in ((actor, critic, batch), (flat_actor, flat_critic, flat)):
        loss = CQLLoss(a, c, num_qvalue_nets=1)
        torch.manual_seed(1)
        outs.append(loss(td.clone()))
    for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
        torch.testing.assert_close(outs[0][key], outs[1][key])


@pytest.mark.parametrize("variant", ["no last bias", "weight_norm"])
def test_critics_off_the_fast_path_take_the_generic_path(variant):
    critic = _critic(bias_last_layer=False) if variant == "no last bias" else _critic()
    if variant == "weight_norm":
        weight_norm(critic.module[2])
    assert not is_relu_mlp(critic.module)
    torch.manual_seed(0)
    out = CQLLoss(_actor(), critic, num_qvalue_nets=2)(_batch())
    assert torch.isfinite(out["loss_qvalue"])


def test_float64_critic_keeps_float64_q_values():
    critic = _critic(act=nn.Tanh).double()
    with torch.no_grad():
        critic.module[-1].bias.fill_(1000.123456789)
    loss = CQLLoss(_actor().double(), critic, num_qvalue_nets=1)  # loss.double() not called
    batch = _batch().double()
    out = loss(batch.clone())
    assert out["average_qf1"].item() == critic(batch.clone())["state_action_value"].mean().item()


def test_batched_env_spec_gives_the_per_env_action_dim():
    loss = CQLLoss(_actor(spec=Bounded(-1.0, 1.0, (4, ACT))), _critic())
    assert loss.action_low.shape == (ACT,) and loss.target_entropy.item() == -ACT


def test_unbounded_spec_is_refused():
    with pytest.raises(ValueError, match="finite action bounds"):
        CQLLoss(_actor(spec=Unbounded((ACT,))), _critic())


def test_deterministic_actors_are_refused():
    det = Actor(nn.Sequential(nn.Linear(OBS, ACT), nn.Tanh()), in_keys=["observation"], spec=Bounded(-1.0, 1.0, (ACT,)))
    with pytest.raises(TypeError, match="stochastic actor"):
        CQLLoss(det, _critic())
    with pytest.raises(ValueError, match="TanhDelta has none"):
        CQLLoss(_actor(dist=TanhDelta), _critic())


def test_critic_without_trailing_value_dim_is_refused():
    class Q(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(OBS + ACT, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, o, a):
            return self.net(torch.cat([o, a], -1)).squeeze(-1)

    critic = TensorDictModule(Q(), in_keys=["observation", "action"], out_keys=["state_action_value"])
    with pytest.raises(ValueError, match="trailing value dim"):
        CQLLoss(_actor(), critic, max_target_backup=True)(_batch())

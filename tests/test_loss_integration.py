"""CQLLoss inside TorchRL pipelines: SoftUpdate, replay buffers, nested keys, compile,
devices, and a small learning test showing the conservative effect."""
from __future__ import annotations

import doctest

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

import cql_modules.objectives.cql
import cql_modules.modules
from cql_modules import CQLLoss, make_actor, make_critic
from helpers import ACT, OBS, make_batch, make_loss


def test_docstring_examples_run():
    for mod in (cql_modules.objectives.cql, cql_modules.modules):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_soft_update_moves_targets_by_tau():
    loss = make_loss()
    updater = SoftUpdate(loss, tau=0.1)
    before = loss.target_qvalue_network_params.clone()
    params = loss.qvalue_network_params.detach().clone()
    updater.step()
    after = loss.target_qvalue_network_params
    for key in params.keys(True, True):
        expected = 0.9 * before.get(key) + 0.1 * params.get(key)
        assert torch.allclose(after.get(key), expected, atol=1e-6)


def test_update_step_from_replay_buffer():
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(100), batch_size=32)
    rb.extend(make_batch(B=100).exclude("mc_return"))
    loss = make_loss()
    updater = SoftUpdate(loss, tau=5e-3)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    for _ in range(3):
        batch = rb.sample()
        out = loss(batch)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        opt.step()
        opt.zero_grad()
        updater.step()
        assert batch["td_error"].shape == (32,)
        assert all(torch.isfinite(v).all() for v in out.values())


def test_nested_keys():
    obs_key, act_key = ("agent", "obs"), ("agent", "action")
    actor = make_actor(OBS, ACT, hidden_dim=16, observation_key=obs_key, action_key=act_key)
    critic = make_critic(OBS, ACT, hidden_dim=16, observation_key=obs_key, action_key=act_key)
    loss = CQLLoss(actor, critic, num_actions=3)
    loss.set_keys(action=act_key, reward=("agent", "reward"), terminated=("agent", "terminated"),
                  priority=("agent", "td_error"))
    B = 8
    td = TensorDict({
        "agent": {"obs": torch.randn(B, OBS), "action": torch.rand(B, ACT) * 2 - 1},
        "next": {"agent": {"obs": torch.randn(B, OBS), "reward": torch.randn(B, 1),
                           "terminated": torch.zeros(B, 1, dtype=torch.bool)}},
    }, [B])
    flat = TensorDict({
        "observation": td["agent", "obs"], "action": td["agent", "action"],
        "next": {"observation": td["next", "agent", "obs"], "reward": td["next", "agent", "reward"],
                 "terminated": td["next", "agent", "terminated"]},
    }, [B])
    flat_loss = CQLLoss(make_actor(OBS, ACT, hidden_dim=16), make_critic(OBS, ACT, hidden_dim=16), num_actions=3)
    flat_loss.load_state_dict(loss.state_dict())
    torch.manual_seed(0)
    out = loss(td)
    torch.manual_seed(0)
    ref = flat_loss(flat)
    assert torch.allclose(out["loss_qvalue"], ref["loss_qvalue"])
    assert td["agent", "td_error"].shape == (B,)
    assert ("next", "agent", "reward") in loss.in_keys


def test_compiles_without_graph_breaks():
    import torch._dynamo as dynamo

    loss = make_loss(lagrange=True, calibrated=True, bc_steps=2, max_target_backup=True, backup_entropy=True)
    dynamo.reset()
    explanation = dynamo.explain(loss)(make_batch())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    loss = make_loss()
    td = make_batch()
    torch.manual_seed(0)
    cpu = loss(td.clone())
    loss_cuda = loss.to("cuda")
    out = loss_cuda(td.to("cuda"))
    assert out["loss_qvalue"].device.type == "cuda"
    assert torch.isfinite(out["loss_qvalue"]).all() and cpu["loss_qvalue"].isfinite()


def _q(loss, obs, act, k=0):
    """Q of critic k at obs [B, O] and actions [B, A] or [M, B, A] (-> [B] or [M, B])."""
    actions = act.transpose(0, 1) if act.ndim == 3 else act[:, None]  # [B, M, A]
    with torch.no_grad():
        inputs = loss._critic_inputs(TensorDict({"observation": obs}, [obs.shape[0]]), actions)
        q = loss._q_values(loss.qvalue_network_params, inputs)[k]  # [B, M]
    return q.T if act.ndim == 3 else q[:, 0]


@pytest.mark.parametrize("cql_alpha", [0.0, 5.0])
def test_cql_pushes_down_out_of_distribution_actions(cql_alpha):
    """1-step task, reward = action, dataset actions in [0, 0.3]. Without CQL the critic
    extrapolates the linear reward to a = 0.9; with CQL, Q(s, 0.9) < Q(s, a_data)."""
    torch.manual_seed(0)
    n, obs_dim = 512, 2
    obs = torch.randn(n, obs_dim)
    act = 0.3 * torch.rand(n, 1)
    data = TensorDict({
        "observation": obs, "action": act,
        "next": {"observation": obs, "reward": act.clone(), "done": torch.ones(n, 1, dtype=torch.bool),
                 "terminated": torch.ones(n, 1, dtype=torch.bool)},
    }, [n])
    loss = CQLLoss(make_actor(obs_dim, 1, hidden_dim=32, n_hidden_layers=2),
                   make_critic(obs_dim, 1, hidden_dim=32, n_hidden_layers=2),
                   num_actions=4, cql_alpha=cql_alpha)
    opt = torch.optim.Adam([p for n_, p in loss.named_parameters() if "qvalue" in n_], lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, n, (64,))
        out = loss(data[idx])
        opt.zero_grad()
        out["loss_qvalue"].backward()
        opt.step()
    q_data = _q(loss, obs, act).mean()
    q_ood = _q(loss, obs, torch.full((n, 1), 0.9)).mean()
    if cql_alpha > 0:
        assert q_ood < q_data - 0.1, (q_ood, q_data)
    else:
        assert q_ood > q_data, (q_ood, q_data)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_generic_critic_path_matches_fast_path(activation):
    """A critic that is not a plain ReLU MLP goes through vmap(functional_call); a TorchRL
    ReLU MLP takes the batched-matmul path. Both equal the per-critic module call."""
    from torch import nn
    from torchrl.modules import MLP as TorchRLMLP, ValueOperator

    act_cls = nn.ReLU if activation == "relu" else nn.Tanh
    critic = ValueOperator(TorchRLMLP(in_features=OBS + ACT, out_features=1, num_cells=[16, 16],
                                      activation_class=act_cls), in_keys=["observation", "action"])
    loss = CQLLoss(make_actor(OBS, ACT, hidden_dim=16), critic, num_actions=3)
    assert loss._fast_critic == (activation == "relu")
    td = make_batch(B=8)
    actions = torch.rand(5, 8, ACT) * 2 - 1
    q = _q(loss, td["observation"], actions)  # critic 0, [5, 8]
    for n in range(5):
        x = TensorDict({"observation": td["observation"], "action": actions[n]}, [8])
        with loss.qvalue_network_params[0].to_module(critic):
            expected = critic(x)["state_action_value"].squeeze(-1)
        assert torch.allclose(q[n], expected, atol=1e-6)

"""TorchRL's ``LossModule`` contract, checked over several loss configurations.

In the style of torchrl's own loss tests: :class:`LossContract` holds the generic checks
and knows nothing about CQL; a subclass supplies the loss and the batches through two
hooks and lists its configurations. To run the same contract on another loss (e.g.
``DiscreteCQLLoss``)::

    from test_contract import LossContract

    class TestDiscreteCQLContract(LossContract):
        CONFIGS = {"default": {}, "no_double_q": {"double_q": False}}
        REQUIRED_KEYS = ["action", ("next", "reward"), ("next", "terminated"), "observation"]

        def make_loss(self, config, **overrides): ...  # a fresh loss, deterministic given the config
        def make_batch(self, B): ...                   # a TensorDict batch [B] with every key

Every ``test_*`` method then runs once per entry of ``CONFIGS`` (``pytest_generate_tests``
below parametrizes the ``config`` argument).
"""
from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator, TD1Estimator

from cql_modules import CQLLoss, bounded_action_spec, make_actor, make_critic
from helpers import ACT, OBS, make_batch, make_loss

LOSS_KEYS = ("loss_actor", "loss_qvalue", "loss_alpha", "loss_alpha_prime")
TOL = dict(rtol=1e-5, atol=1e-6)


def _losses(out):
    return {k: out[k] for k in out.keys() if isinstance(k, str) and k.startswith("loss_")}


def _params_grads(loss):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in loss.named_parameters()}


class LossContract:
    """Generic checks of a TorchRL loss. Subclasses set ``CONFIGS`` / ``REQUIRED_KEYS`` and
    implement :meth:`make_loss` and :meth:`make_batch`."""

    CONFIGS: dict[str, dict] = {}
    #: batch entries whose absence must raise a KeyError naming them
    REQUIRED_KEYS: list = []
    #: accepted keys read under "next" in the batch
    NEXT_FIELDS = ("reward", "terminated", "done")
    #: accepted keys the loss writes (not read)
    OUTPUT_FIELDS = ("priority",)
    #: accepted keys read when present (not in ``in_keys``)
    OPTIONAL_FIELDS = ("priority_weight",)
    #: accepted keys that must also match the networks' in_keys (renamed with the networks,
    #: e.g. tests/test_loss_integration.py::test_nested_keys)
    NETWORK_FIELDS = ("action", "state_action_value")

    @staticmethod
    def pytest_generate_tests(metafunc):
        if "config" in metafunc.fixturenames:
            configs = metafunc.cls.CONFIGS
            metafunc.parametrize("config", list(configs.values()), ids=list(configs))

    def make_loss(self, config: dict, **overrides):
        raise NotImplementedError

    def make_batch(self, B: int) -> TensorDict:
        raise NotImplementedError

    def run(self, loss, batch, seed: int = 0):
        torch.manual_seed(seed)
        return loss(batch)

    # ---------------------------------------------------------------- outputs
    def test_outputs_are_scalar_losses_and_detached_metrics(self, config):
        loss = self.make_loss(config)
        out = self.run(loss, self.make_batch(8))
        assert set(_losses(out)) == set(loss.out_keys)
        for key, value in out.items():
            assert value.shape == (), key
            assert torch.isfinite(value).all(), key
            if not key.startswith("loss_"):
                assert not value.requires_grad, key

    def test_reduction_none_gives_per_sample_losses_whose_mean_is_the_loss(self, config):
        batch = self.make_batch(8)
        mean = _losses(self.run(self.make_loss(config), batch.clone()))
        per_sample = _losses(self.run(self.make_loss(config, reduction="none"), batch.clone()))
        for key, value in per_sample.items():
            assert value.shape == (8,), key
            assert torch.allclose(value.mean(), mean[key], **TOL), key

    def test_priority_written_back_per_sample(self, config):
        loss = self.make_loss(config)
        batch = self.make_batch(8)
        self.run(loss, batch)
        assert batch.get(loss.tensor_keys.priority).shape == (8,)

    def test_state_dict_round_trip(self, config):
        loss, other = self.make_loss(config), self.make_loss(config)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(1.0)
        other.load_state_dict(loss.state_dict())
        batch = self.make_batch(8)
        a, b = _losses(self.run(loss, batch.clone())), _losses(self.run(other, batch.clone()))
        for key in a:
            assert torch.allclose(a[key], b[key]), key

    # ---------------------------------------------------------------- prioritized replay
    def _weighted_batch(self, B: int = 12):
        """A batch sampled from a plain TensorDictReplayBuffer whose storage holds the
        importance weights under TorchRL's key (what a prioritized sampler writes)."""
        data = self.make_batch(B)
        data.set("priority_weight", torch.linspace(0.1, 2.0, B))
        rb = TensorDictReplayBuffer(storage=LazyTensorStorage(B), batch_size=B)
        rb.extend(data)
        return rb.sample()

    def test_priority_weights_weight_the_per_sample_losses(self, config):
        batch = self._weighted_batch()
        w = batch.get("priority_weight")
        unweighted = self.make_loss(config, reduction="none")
        per_sample = _losses(self.run(unweighted, batch.exclude("priority_weight")))
        weighted = _losses(self.run(self.make_loss(config), batch.clone()))
        weighted_none = _losses(self.run(self.make_loss(config, reduction="none"), batch.clone()))
        for key, value in per_sample.items():
            assert torch.allclose(weighted[key], (w * value).sum() / w.sum(), **TOL), key
            assert torch.allclose(weighted_none[key], w * value, **TOL), key
        ignoring = self.make_loss(config, use_prioritized_weights=False)
        plain = _losses(self.run(ignoring, batch.clone()))
        for key, value in per_sample.items():
            assert torch.allclose(plain[key], value.mean(), **TOL), key

    def test_priority_weights_weight_the_gradients(self, config):
        """The gradient of the weighted mean equals that of sum(w * l) / sum(w) formed from
        the unweighted per-sample losses (whatever path computes the gradient)."""
        batch = self._weighted_batch()
        w = batch.get("priority_weight")
        weighted = self.make_loss(config)
        sum(_losses(self.run(weighted, batch.clone())).values()).backward()
        reference = self.make_loss(config, reduction="none")
        per_sample = _losses(self.run(reference, batch.exclude("priority_weight")))
        (sum(per_sample.values()) * w).sum().div(w.sum()).backward()
        got, want = _params_grads(weighted), _params_grads(reference)
        for name, g in want.items():
            if g is not None:
                assert torch.allclose(got[name], g, rtol=1e-4, atol=1e-6), name

    # ---------------------------------------------------------------- keys
    def test_missing_key_raises_keyerror_naming_it(self, config):
        loss = self.make_loss(config)
        for key in self.REQUIRED_KEYS:
            with pytest.raises(KeyError) as err:
                self.run(loss, self.make_batch(4).exclude(key))
            assert repr(key) in err.value.args[0], (key, err.value.args[0])

    def _batch_key(self, field: str, key):
        return ("next", key) if field in self.NEXT_FIELDS else key

    def test_every_accepted_key_is_read_or_written(self, config):
        """Renaming an entry in the batch and in ``set_keys`` gives the same losses; each
        read key, renamed in the batch only, is missed (KeyError) or ignored if optional."""
        loss = self.make_loss(config)
        batch = self._weighted_batch(8)
        reference = _losses(self.run(loss, batch.clone()))
        for field in loss.tensor_keys.__dataclass_fields__:
            if field in self.OUTPUT_FIELDS or field in self.NETWORK_FIELDS:
                continue  # written, or tied to the networks' keys (tested separately)
            old = self._batch_key(field, getattr(loss.tensor_keys, field))
            if old not in batch.keys(True, True) or (old not in loss.in_keys and field not in self.OPTIONAL_FIELDS):
                continue  # not read in this configuration (e.g. mc_return without Cal-QL)
            new_name = f"renamed_{field}"
            renamed = batch.clone()
            renamed.rename_key_(old, self._batch_key(field, new_name))
            moved = self.make_loss(config)
            moved.set_keys(**{field: new_name})
            out = _losses(self.run(moved, renamed.clone()))
            for key, value in reference.items():
                assert torch.allclose(out[key], value, **TOL), (field, key)
            stale = _losses_or_error(lambda: self.run(self.make_loss(config), renamed.clone()))
            assert stale is KeyError or any(
                not torch.allclose(stale[k], reference[k], **TOL) for k in reference
            ), f"{field} is accepted by set_keys but never read"
        moved = self.make_loss(config)
        moved.set_keys(priority="my_priority")
        batch = self.make_batch(8)
        self.run(moved, batch)
        assert "my_priority" in batch.keys()

    def test_set_keys_rejects_unknown_keys(self, config):
        with pytest.raises(ValueError):
            self.make_loss(config).set_keys(not_a_key="x")

    # ---------------------------------------------------------------- value estimator
    def test_make_value_estimator_gamma_changes_the_discount(self, config):
        batch = self.make_batch(8)
        expected = _losses(self.run(self.make_loss(config, gamma=0.5), batch.clone()))
        for args, kwargs in [((), {"gamma": 0.5}), ((ValueEstimators.TD0,), {"gamma": 0.5}),
                             ((TD0Estimator,), {"gamma": 0.5, "value_network": None})]:
            loss = self.make_loss(config, gamma=0.9)
            assert loss.make_value_estimator(*args, **kwargs) is loss
            out = _losses(self.run(loss, batch.clone()))
            for key, value in expected.items():
                assert torch.allclose(out[key], value, **TOL), (args, key)

    @pytest.mark.parametrize("args,kwargs", [
        ((ValueEstimators.TD1,), {}), ((ValueEstimators.GAE,), {}), ((TD1Estimator,), {"gamma": 0.5}),
        ((ValueEstimators.TD0,), {"gamma": 0.5, "lmbda": 0.9}), ((TD0Estimator,), {"value_network": nn.Linear(1, 1)}),
    ], ids=["TD1", "GAE", "TD1Estimator", "TD0_lmbda", "TD0_value_network"])
    def test_make_value_estimator_rejects_what_it_cannot_do(self, config, args, kwargs):
        loss = self.make_loss(config)
        with pytest.raises(ValueError, match="make_value_estimator"):
            loss.make_value_estimator(*args, **kwargs)


def _losses_or_error(fn):
    try:
        return _losses(fn())
    except KeyError:
        return KeyError


class TestCQLContract(LossContract):
    CONFIGS = {
        "default": {},
        "fused_off": {"fused_critic": False},
        "lagrange_calibrated": {"lagrange": True, "target_action_gap": 0.5, "calibrated": True},
        "max_backup_entropy_no_is": {"max_target_backup": True, "backup_entropy": True, "importance_sample": False},
        "three_critics_fixed_alpha": {"num_qvalue_nets": 3, "auto_alpha": False, "clip_diff_max": 1.0},
        "bc_warmup_l1": {"bc_steps": 5, "loss_function": "smooth_l1"},
    }
    REQUIRED_KEYS = ["action", ("next", "reward"), ("next", "terminated"), "observation", ("next", "observation")]

    def make_loss(self, config, **overrides):
        kwargs = {"num_actions": 3, **config, **overrides}
        loss = make_loss(**kwargs)
        if loss.lagrange:
            with torch.no_grad():
                loss.log_alpha_prime.fill_(0.7)
        return loss

    def make_batch(self, B):
        return make_batch(B=B)

    def test_calibrated_needs_mc_return(self, config):
        if not config.get("calibrated"):
            pytest.skip("Cal-QL only")
        with pytest.raises(KeyError, match="mc_return"):
            self.run(self.make_loss(config), self.make_batch(4).exclude("mc_return"))


# -------------------------------------------------------------------- CQL-specific contract
class _Encoder(nn.Module):
    def __init__(self, out: int = 4):
        super().__init__()
        self.lin = nn.Linear(OBS, out)

    def forward(self, obs):
        return torch.tanh(self.lin(obs))


def _encoder_grads(fused_critic, compiled: bool = False):
    """A shared encoder writes "hidden" in front of the loss; the critic reads it."""
    torch.manual_seed(0)
    encoder = TensorDictModule(_Encoder(), in_keys=["observation"], out_keys=["hidden"])
    next_encoder = TensorDictModule(encoder.module, in_keys=[("next", "observation")], out_keys=[("next", "hidden")])
    actor = make_actor(OBS, ACT, hidden_dim=8)
    critic = make_critic(4, ACT, hidden_dim=8, observation_key="hidden")
    loss = CQLLoss(actor, critic, num_actions=3, fused_critic=fused_critic)
    batch = next_encoder(encoder(make_batch(B=6)))
    fn = loss
    if compiled:
        import torch._dynamo as dynamo

        dynamo.reset()
        fn = torch.compile(loss, backend="aot_eager")
    torch.manual_seed(1)
    fn(batch)["loss_qvalue"].backward()
    return [p.grad.clone() for p in encoder.parameters()], [
        p.grad.clone() for p in loss.qvalue_network_params.values(True, True)
    ]


def test_shared_encoder_gets_the_same_gradient_for_every_fused_setting():
    ref_enc, ref_critic = _encoder_grads(False)
    assert all(g.abs().sum() > 0 for g in ref_enc)
    for fused in (None, True):
        enc, crit = _encoder_grads(fused)
        for a, b in zip(enc + crit, ref_enc + ref_critic):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), fused


def test_shared_encoder_gradient_under_compile_equals_eager():
    ref_enc, _ = _encoder_grads(False)
    for fused in (None, True):
        enc, _ = _encoder_grads(fused, compiled=True)
        for a, b in zip(enc, ref_enc):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), fused
    import torch._dynamo as dynamo

    dynamo.reset()


def test_tensordict_sequential_critic_with_encoder():
    """A critic that is a TensorDictSequential(encoder, ValueOperator): each ensemble member
    evaluates its own encoder + head (vmap over the stacked parameters); the encoders train."""
    from torchrl.modules import ValueOperator

    torch.manual_seed(0)
    enc = TensorDictModule(_Encoder(), in_keys=["observation"], out_keys=["hidden"])
    head = ValueOperator(MLP(in_features=4 + ACT, out_features=1, num_cells=[8]), in_keys=["hidden", "action"])
    critic = TensorDictSequential(enc, head)
    loss = CQLLoss(make_actor(OBS, ACT, hidden_dim=8), critic, num_actions=3)
    assert not loss._fast_critic
    batch = make_batch(B=6)
    out = loss(batch)
    out["loss_qvalue"].backward()
    params = loss.qvalue_network_params
    enc_grad = params.get(("module", "0", "module", "lin", "weight")).grad
    assert enc_grad.shape[0] == 2 and (enc_grad.abs().sum((1, 2)) > 0).all()
    # the values are the members' own module calls
    actions = torch.rand(6, 2, ACT) * 2 - 1
    with torch.no_grad():
        q = loss._q_values(params, loss._critic_inputs(batch, actions))  # [K, B, M]
        for k in range(2):
            for m in range(2):
                x = TensorDict({"observation": batch["observation"], "action": actions[:, m]}, [6])
                with params[k].to_module(critic):
                    expected = critic(x)["state_action_value"].squeeze(-1)
                assert torch.allclose(q[k, :, m], expected, atol=1e-6)


def test_critic_output_key_is_set_keys_state_action_value():
    from torchrl.modules import ValueOperator

    critic = ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[8], activation_class=nn.Tanh),
                           in_keys=["observation", "action"], out_keys=["my_q"])
    loss = CQLLoss(make_actor(OBS, ACT, hidden_dim=8), critic, num_actions=3)
    with pytest.raises(KeyError):
        loss(make_batch(B=4))
    loss.set_keys(state_action_value="my_q")
    assert torch.isfinite(loss(make_batch(B=4))["loss_qvalue"])


def test_actor_with_return_log_prob_and_bounded_spec_is_accepted():
    from tensordict.nn import NormalParamExtractor
    from torchrl.modules import ProbabilisticActor, TanhNormal

    spec = bounded_action_spec(ACT, [0.0, -2.0], [1.0, 2.0])
    module = TensorDictModule(nn.Sequential(nn.Linear(OBS, 2 * ACT), NormalParamExtractor()),
                              in_keys=["observation"], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(module, in_keys=["loc", "scale"], out_keys=["action"], spec=spec,
                               distribution_class=TanhNormal,
                               distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
                               return_log_prob=True)
    loss = CQLLoss(actor, make_critic(OBS, ACT, hidden_dim=8), num_actions=3)
    assert torch.equal(loss.action_low, spec.space.low) and torch.equal(loss.action_high, spec.space.high)
    assert torch.isfinite(loss(make_batch(B=4, low=[0.0, -2.0], high=[1.0, 2.0]))["loss_qvalue"])

"""Actor and critic builders with CORL's architecture and initialisation.

CORL's offline CQL script has two initialisation defects (docs/cql.md, section 10): its
second critic ignores ``q_n_hidden_layers`` and its actor never receives the orthogonal
init. Here every network is built by the same :class:`MLP`, whose ``reset_parameters``
applies CORL's init (docs/cql.md, section 8), so the actor and *every* critic of the
ensemble get the same depth and init (``CQLLoss`` re-runs ``reset_parameters`` on each
ensemble copy, see ``cql_modules.objectives.cql``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torchrl.data import Bounded
from torchrl.modules import MLP as TorchRLMLP, ProbabilisticActor, TanhNormal, ValueOperator

__all__ = [
    "MLP",
    "TanhGaussianHead",
    "make_actor",
    "make_critic",
    "bounded_action_spec",
    "is_relu_mlp",
    "ensemble_mlp",
]


class MLP(nn.Sequential):
    """Linear/ReLU stack; ``forward(*inputs)`` concatenates its inputs on the last dim.

    ``reset_parameters`` implements CORL's ``init_module_weights``: with
    ``orthogonal_init`` the hidden layers get orthogonal weights (gain sqrt(2)) and zero
    bias, the last layer orthogonal weights with gain 1e-2; without it the hidden layers
    keep PyTorch's default and the last layer gets Xavier-uniform (gain 1e-2). The last
    bias is always zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dim: int = 256,
        n_hidden_layers: int = 3,
        orthogonal_init: bool = True,
    ):
        if n_hidden_layers < 1:
            raise ValueError(f"n_hidden_layers must be >= 1, got {n_hidden_layers}")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.orthogonal_init = orthogonal_init
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        linears = [m for m in self if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            layer.reset_parameters()
            if self.orthogonal_init:
                nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
                nn.init.zeros_(layer.bias)
        last = linears[-1]
        if self.orthogonal_init:
            nn.init.orthogonal_(last.weight, gain=1e-2)
        else:
            nn.init.xavier_uniform_(last.weight, gain=1e-2)
        nn.init.zeros_(last.bias)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=-1)
        return super().forward(x)


class TanhGaussianHead(nn.Module):
    """Splits ``[..., 2A]`` into (loc, scale) with CORL's log-std parametrisation.

    ``log_std = clamp(multiplier * raw + offset, -20, 2)``; multiplier and offset are
    learnable scalars, as in CORL's ``TanhGaussianPolicy`` (its ``Scalar`` modules).
    """

    def __init__(self, log_std_multiplier: float = 1.0, log_std_offset: float = -1.0):
        super().__init__()
        self.log_std_multiplier = nn.Parameter(torch.tensor(float(log_std_multiplier)))
        self.log_std_offset = nn.Parameter(torch.tensor(float(log_std_offset)))

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_log_std = raw.chunk(2, dim=-1)
        log_std = (self.log_std_multiplier * raw_log_std + self.log_std_offset).clamp(-20.0, 2.0)
        return loc, log_std.exp()


def is_relu_mlp(module: nn.Module) -> bool:
    """True for a ``Sequential`` of alternating ``Linear``/``ReLU`` ending in a ``Linear``
    whose forward concatenates its inputs (this module's :class:`MLP`, TorchRL's ``MLP``
    with ``activation_class=nn.ReLU``): such critics take :func:`ensemble_mlp`."""
    if not isinstance(module, (MLP, TorchRLMLP)):
        return False
    kids = list(module.children())
    if len(kids) % 2 == 0:
        return False
    # plain Linear layers only: the fast path reads .weight and .bias directly
    return all(
        isinstance(m, nn.ReLU) if i % 2 else
        isinstance(m, nn.Linear) and m.bias is not None and not parametrize.is_parametrized(m)
        for i, m in enumerate(kids)
    )


def ensemble_mlp(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    x: torch.Tensor,
    compute_dtype: torch.dtype | None = None,
    batched: bool | None = None,
) -> torch.Tensor:
    """K ReLU MLPs with stacked parameters on a shared input, ``[R, in] -> [K, R, out]``.

    Written out instead of ``vmap(functional_call)`` because it is measurably faster: the
    ReLU runs in place on each matmul's fresh output (one full-size temporary and one
    memory pass fewer per layer) and the shared input is never copied K times. On CPU the
    K members run as K plain ``F.linear`` calls, which MKL executes ~10% faster than the
    equivalent ``baddbmm`` (CORL shape, 2 cores: 53 vs 59 ms for forward + backward of the
    penalty pass); on accelerators one ``baddbmm`` per layer keeps the kernel count low.

    Args:
        weights: ``[K, out_i, in_i]`` per layer; biases: ``[K, out_i]`` per layer.
        x: ``[R, in]`` input shared by the K networks.
        compute_dtype: e.g. ``torch.bfloat16``: hidden layers run in that dtype (master
            weights and gradients stay in their own dtype); the last layer runs in the
            parameters' dtype so that Q values keep full precision for the TD error.
        batched: force the ``baddbmm`` (True) or per-member (False) form; default: per
            member on CPU, batched elsewhere.
    """
    out_dtype = weights[-1].dtype
    last = len(weights) - 1
    dtypes = [out_dtype if i == last else (compute_dtype or w.dtype) for i, w in enumerate(weights)]
    if batched is None:
        batched = x.device.type != "cpu"
    if not batched:
        members = []
        for k in range(weights[0].shape[0]):
            h = x
            for i, (w, b) in enumerate(zip(weights, biases)):
                h = F.linear(h.to(dtypes[i]), w[k].to(dtypes[i]), b[k].to(dtypes[i]))
                if i < last:
                    h = torch.relu_(h)
            members.append(h)
        return torch.stack(members)
    h = x.expand(weights[0].shape[0], *x.shape)
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.to(dtypes[i]).unsqueeze(1), h.to(dtypes[i]), w.to(dtypes[i]).transpose(1, 2))
        if i < last:
            h = torch.relu_(h)
    return h


def bounded_action_spec(
    action_dim: int,
    low: float | Sequence[float] | torch.Tensor = -1.0,
    high: float | Sequence[float] | torch.Tensor = 1.0,
) -> Bounded:
    """A ``Bounded`` action spec of shape ``[action_dim]``."""
    low_t = torch.as_tensor(low, dtype=torch.float32).expand(action_dim).clone()
    high_t = torch.as_tensor(high, dtype=torch.float32).expand(action_dim).clone()
    return Bounded(low=low_t, high=high_t, shape=(action_dim,), dtype=torch.float32)


def _as_spec(action_spec: Bounded | int) -> Bounded:
    if isinstance(action_spec, int):
        return bounded_action_spec(action_spec)
    if not hasattr(action_spec, "space") or not hasattr(action_spec.space, "low"):
        raise TypeError(
            f"action_spec must be a bounded TorchRL spec or an int, got {type(action_spec).__name__}; "
            "build one with cql_modules.modules.bounded_action_spec(dim, low, high)"
        )
    return action_spec


def make_actor(
    observation_dim: int,
    action_spec: Bounded | int,
    *,
    hidden_dim: int = 256,
    n_hidden_layers: int = 3,
    log_std_multiplier: float = 1.0,
    log_std_offset: float = -1.0,
    orthogonal_init: bool = True,
    observation_key: str | tuple = "observation",
    action_key: str | tuple = "action",
    device: torch.device | str | None = None,
) -> ProbabilisticActor:
    """CORL's tanh-Gaussian policy as a TorchRL ``ProbabilisticActor``.

    Args:
        observation_dim: flat observation size.
        action_spec: a ``Bounded`` spec (its bounds scale the tanh) or the action
            dimension for ``[-1, 1]`` actions.

    Example:
        >>> from cql_modules import make_actor
        >>> from tensordict import TensorDict
        >>> import torch
        >>> actor = make_actor(17, 6, hidden_dim=32)
        >>> td = actor(TensorDict({"observation": torch.randn(4, 17)}, [4]))
        >>> td["action"].shape
        torch.Size([4, 6])
    """
    spec = _as_spec(action_spec)
    action_dim = spec.shape[-1]
    net = nn.Sequential(
        MLP(observation_dim, 2 * action_dim, hidden_dim, n_hidden_layers, orthogonal_init),
        TanhGaussianHead(log_std_multiplier, log_std_offset),
    )
    module = TensorDictModule(net, in_keys=[observation_key], out_keys=["loc", "scale"])
    actor = ProbabilisticActor(
        module,
        in_keys=["loc", "scale"],
        out_keys=[action_key],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        return_log_prob=False,
    )
    return actor.to(device) if device is not None else actor


def make_critic(
    observation_dim: int,
    action_dim: int,
    *,
    hidden_dim: int = 256,
    n_hidden_layers: int = 3,
    orthogonal_init: bool = True,
    observation_key: str | tuple = "observation",
    action_key: str | tuple = "action",
    device: torch.device | str | None = None,
) -> ValueOperator:
    """One Q(s, a) critic as a TorchRL ``ValueOperator`` writing ``state_action_value``.

    ``CQLLoss`` turns it into an ensemble of ``num_qvalue_nets`` independently
    initialised copies of the same depth, stored as stacked parameters.

    Example:
        >>> from cql_modules import make_critic
        >>> from tensordict import TensorDict
        >>> import torch
        >>> critic = make_critic(17, 6, hidden_dim=32)
        >>> td = TensorDict({"observation": torch.randn(4, 17), "action": torch.rand(4, 6)}, [4])
        >>> critic(td)["state_action_value"].shape
        torch.Size([4, 1])
    """
    net = MLP(observation_dim + action_dim, 1, hidden_dim, n_hidden_layers, orthogonal_init)
    critic = ValueOperator(net, in_keys=[observation_key, action_key])
    return critic.to(device) if device is not None else critic

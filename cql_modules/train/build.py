"""The build steps of a run from its config: seeds and device, the data (replay buffer +
dataset info), the evaluation env, and the learner (actor, :class:`~cql_modules.CQLLoss`,
update step)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from cql_modules.data import DatasetError, load_dataset, make_env
from cql_modules.modules import bounded_action_spec, make_actor, make_critic
from cql_modules.objectives.cql import CQLLoss
from cql_modules.train.cli import check_device
from cql_modules.train.config import PRECISION_DTYPES, ConfigError, OfflineConfig
from cql_modules.train.state import seed_everything
from cql_modules.train.update import UpdateStep, make_optimizer

__all__ = ["setup_run", "resolve_device", "load_data", "make_eval_env", "native_bf16", "critic_compute_dtype",
           "build_learner"]


def setup_run(c: OfflineConfig) -> torch.device:
    """Seed every generator with ``c.seed``, apply ``c.num_threads``; return the device
    (:func:`resolve_device`: :class:`~cql_modules.train.cli.EnvironmentProblem` if unusable)."""
    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    seed_everything(c.seed)
    return resolve_device(c.device)


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA if available, else CPU; an explicit device must be usable here
    (:func:`~cql_modules.train.cli.check_device`, which the recipes' command line also runs
    before anything is loaded)."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_data(c: OfflineConfig, device: torch.device | str = "cpu", **kwargs):
    """:func:`~cql_modules.data.load_dataset` with the config's dataset, batch size and gamma;
    returns ``(replay_buffer, info)``."""
    d = c.dataset
    return load_dataset(d.name, batch_size=c.batch_size, normalize_states=d.normalize,
                        normalize_reward=d.normalize_reward, reward_scale=d.reward_scale,
                        reward_bias=d.reward_bias, gamma=c.loss.gamma, download=d.download, device=device, **kwargs)


def make_eval_env(c: OfflineConfig, info: Any, device: torch.device | str = "cpu"):
    """The evaluation env (seed ``seed + eval.seed_offset``, the dataset's observation
    normalization), None with ``eval.every=0``."""
    if not c.eval.every:
        return None
    try:
        return make_env(info, seed=c.seed + c.eval.seed_offset, device=device)
    except DatasetError as err:
        raise ConfigError(f"eval.every: cannot evaluate on {info.name} ({err}); eval.every=0 trains without") from err


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU with bf16 units, or a CPU
    with AVX512_BF16 or AMX-BF16 (torch's cpuinfo flags). Elsewhere oneDNN emulates bf16,
    slower than fp32, so ``precision=auto`` stays fp32 and ``precision=bf16`` is refused."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def critic_compute_dtype(c: OfflineConfig, device: torch.device | str) -> str | None:
    """``CQLLoss``'s ``critic_compute_dtype`` for this run: ``loss.critic_compute_dtype`` if given
    (``validate_config`` refuses it together with a ``precision`` other than fp32), else
    ``precision`` (``auto``: bf16 where :func:`native_bf16`). :class:`ConfigError` for bf16 on a
    device without native bf16 matmul."""
    if c.loss.critic_compute_dtype is not None:
        return c.loss.critic_compute_dtype
    precision = c.precision
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    elif precision == "bf16" and not native_bf16(device):
        raise ConfigError(f"precision: bf16 needs native bf16 matmul (AVX512_BF16 or AMX on a CPU, a bf16 GPU), which "
                          f"device {device} lacks; use precision=auto (bf16 only where native) or precision=fp32")
    return PRECISION_DTYPES[precision]


def build_learner(c: OfflineConfig, info: Any, device: torch.device | str = "cpu", *,
                  update_cls: type = UpdateStep):
    """``(actor, loss, update_step)`` from the config: CORL's networks, :class:`CQLLoss` (every
    ``loss.*`` field is one of its arguments), Adam and ``update_cls``
    (:class:`~cql_modules.train.update.UpdateStep` or a subclass: one backward, one Adam
    step, Polyak targets)."""
    if len(getattr(info.action_space, "shape", ()) or ()) != 1 or not hasattr(info.action_space, "low"):
        raise ConfigError(f"dataset.name: {info.name} has {info.action_space} actions; this recipe needs continuous "
                          "(Box) ones (recipes/discrete_cql.py handles discrete actions)")
    obs_dim, act_dim = info.observation_space.shape[0], info.action_space.shape[0]
    action_spec = bounded_action_spec(act_dim, info.action_space.low, info.action_space.high)
    n = c.network
    actor = make_actor(obs_dim, action_spec, hidden_dim=n.hidden_dim, n_hidden_layers=n.actor_n_hidden_layers,
                       log_std_multiplier=n.log_std_multiplier, log_std_offset=n.log_std_offset,
                       orthogonal_init=n.orthogonal_init)
    critic = make_critic(obs_dim, act_dim, hidden_dim=n.hidden_dim, n_hidden_layers=n.q_n_hidden_layers,
                         orthogonal_init=n.orthogonal_init)
    loss_kwargs = {**asdict(c.loss), "critic_compute_dtype": critic_compute_dtype(c, device)}
    try:
        loss = CQLLoss(actor, critic, action_spec=action_spec, **loss_kwargs).to(device)
    except ValueError as err:  # a combination the field checks cannot see
        raise ConfigError(f"loss: {err}") from err
    optimizer = make_optimizer(loss, actor_lr=c.optim.actor_lr, critic_lr=c.optim.critic_lr,
                               alpha_lr=c.optim.alpha_lr, alpha_prime_lr=c.optim.alpha_prime_lr,
                               capturable=c.cuda_graph)
    try:
        update = update_cls(loss, optimizer, tau=c.optim.tau, target_update_period=c.optim.target_update_period,
                            compile=c.compile, tune_allocator=c.tune_allocator, cuda_graph=c.cuda_graph)
    except ValueError as err:  # cuda_graph on a device or setup it cannot replay
        raise ConfigError(str(err)) from err
    return actor, loss, update

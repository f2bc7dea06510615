"""Loop pieces shared by the recipes (offline CQL, offline-to-online fine-tuning).

Nothing here knows about a particular recipe; a recipe strings the pieces together:

* configuration: :class:`OfflineConfig` (a Hydra structured config; every field is
  overridable from the command line) and :func:`validate_config`, which fails at start
  with the field name (``batch_size: must be > 0, got -1``);
* :class:`MetricAggregator`: sums the detached metric tensors of every update on the
  device and syncs with the host once per logging interval; its sums double as the
  NaN/inf guard (a sum is finite iff every summand is), raising
  :class:`NonFiniteLossError` naming the loss term;
* RNG, checkpoints, :class:`LastGoodState` and the data fingerprint live in
  :mod:`cql_modules.train.state` (imported here for the recipes);
* :func:`run_updates`: the hot loop (sample, update, accumulate; no host sync);
* the build steps of a run from its config: :func:`load_data` (replay buffer + dataset
  info), :func:`make_eval_env`, :func:`build_learner` (actor, :class:`~cql_modules.CQLLoss`,
  update step) and :func:`open_run` (run logger, resuming from the checkpoint that
  :func:`run_state` describes).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tensordict import TensorDictBase

from cql_modules.data import DatasetError, dataset_problem, load_dataset, make_env
from cql_modules.objectives.cql import CQLLoss
from cql_modules.modules import bounded_action_spec, make_actor, make_critic
from cql_modules.train.state import (  # noqa: F401  (re-exported: the recipes use them through this module)
    CHECKPOINT_VERSION,
    LastGoodState,
    capture_rng_state,
    check_same_data,
    data_fingerprint,
    find_checkpoint,
    load_checkpoint,
    load_training_state,
    preserve_rng,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    training_state,
)
from cql_modules.train.update import LOSS_KEYS, UpdateStep, make_optimizer

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "NetworkConfig",
    "LossConfig",
    "OptimConfig",
    "EvalConfig",
    "LoggerConfig",
    "CheckpointConfig",
    "OfflineConfig",
    "register_configs",
    "validate_config",
    "resolve_device",
    "setup_run",
    "MetricAggregator",
    "NonFiniteLossError",
    "capture_rng_state",
    "restore_rng_state",
    "preserve_rng",
    "seed_everything",
    "training_state",
    "load_training_state",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "LastGoodState",
    "run_updates",
    "load_data",
    "make_eval_env",
    "build_learner",
    "open_run",
    "run_state",
    "ref_scores",
    "config_to_dict",
    "data_fingerprint",
    "check_same_data",
    "make_summary",
    "run_name",
    "fmt",
    "CHECKPOINT_VERSION",
]

LOGGER_BACKENDS = ("csv", "tensorboard", "wandb")


# ----------------------------------------------------------------------------- config
@dataclass
class DatasetConfig:
    """Which data and how it is prepared (cql-spec section 6)."""

    name: str = "cql-modules/pendulum/mixed-v0"  #: Minari id, D4RL name, HDF5 file or Minari dir
    normalize: bool = True  #: state normalization (dataset mean/std, std + 1e-3)
    normalize_reward: bool = False  #: CORL's return-range reward scaling
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    download: bool = False  #: allow downloading a D4RL file / Minari dataset


@dataclass
class NetworkConfig:
    """Actor / critic architecture (``make_actor`` / ``make_critic``)."""

    hidden_dim: int = 256
    actor_n_hidden_layers: int = 3
    q_n_hidden_layers: int = 3
    orthogonal_init: bool = True
    log_std_multiplier: float = 1.0
    log_std_offset: float = -1.0


@dataclass
class LossConfig:
    """Keyword arguments of :class:`cql_modules.CQLLoss` (same names, same defaults)."""

    num_qvalue_nets: int = 2
    gamma: float = 0.99
    num_actions: int = 10
    importance_sample: bool = True
    lagrange: bool = False
    target_action_gap: float = -1.0
    temperature: float = 1.0
    cql_alpha: float = 10.0
    max_target_backup: bool = False
    backup_entropy: bool = False
    clip_diff_min: float = -math.inf
    clip_diff_max: float = math.inf
    bc_steps: int = 0
    alpha_multiplier: float = 1.0
    auto_alpha: bool = True
    target_entropy: Any = "auto"  #: "auto" (= -|A|) or a number
    calibrated: bool = False
    loss_function: str = "l2"
    critic_compute_dtype: Optional[str] = None  #: e.g. "bfloat16" for the critics' hidden layers


@dataclass
class OptimConfig:
    """Adam learning rates (``make_optimizer``) and the target-network update (``UpdateStep``)."""

    actor_lr: float = 3e-5
    critic_lr: float = 3e-4
    alpha_lr: Optional[float] = None  #: None: actor_lr (CORL)
    alpha_prime_lr: Optional[float] = None  #: None: critic_lr (CORL)
    tau: float = 5e-3
    target_update_period: int = 1


@dataclass
class EvalConfig:
    """Full-episode evaluation of the deterministic policy."""

    every: int = 5000  #: updates between evaluations (0: no evaluation)
    n_episodes: int = 10
    seed_offset: int = 10_000  #: evaluation env seed = seed + seed_offset (+ episode index)
    max_episode_steps: Optional[int] = None  #: None: the env's own time limit


@dataclass
class LoggerConfig:
    """Where metrics go. ``metrics.jsonl``, ``summary.json`` and the PNG are always written."""

    backends: list = field(default_factory=lambda: ["csv", "tensorboard"])  #: csv / tensorboard / wandb
    every: int = 1000  #: updates per logging interval (one host sync per interval)
    project: str = "cql-modules"
    group: Optional[str] = None
    name: Optional[str] = None  #: experiment name; None: cql-<dataset>-seed<seed>
    wandb_mode: Optional[str] = None  #: None: $WANDB_MODE, else "offline"
    progress: bool = True  #: tqdm progress bar


@dataclass
class CheckpointConfig:
    every: int = 50_000  #: updates between periodic checkpoints (0: final only)
    dir: str = "checkpoints"  #: relative to the run directory
    load_from: Optional[str] = None  #: checkpoint file or run directory to resume from


@dataclass
class OfflineConfig:
    """Top-level configuration of ``recipes/offline_cql.py`` (CORL's offline CQL defaults)."""

    seed: int = 0
    device: str = "auto"  #: auto (cuda if available) / cpu / cuda / cuda:N
    num_updates: int = 1_000_000
    batch_size: int = 256
    compile: bool = False  #: torch.compile the loss forward + backward
    num_threads: Optional[int] = None  #: torch CPU threads (None: torch's default)
    resume: bool = False  #: continue from the checkpoint in checkpoint.load_from or the run dir
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register_configs(name: str = "offline_cql_schema", node: type = OfflineConfig) -> None:
    """Store ``node`` in Hydra's ``ConfigStore`` so a YAML can use it as its schema
    (``defaults: [offline_cql_schema, _self_, ...]``): overrides are type-checked and
    unknown keys rejected, both with the full key in the message."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the field name."""


def _to_object(cfg: Any, schema: type) -> Any:
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from err


def validate_config(cfg: Any, schema: type = OfflineConfig, *, check_dataset: bool = True) -> Any:
    """Type-check ``cfg`` (a ``DictConfig``/dict or a dataclass) against ``schema`` and
    range-check its values; return the dataclass object. Raises :class:`ConfigError`
    whose message starts with the offending field, e.g. ``loss.cql_alpha: must be >= 0``.

    A recipe with more fields subclasses :class:`OfflineConfig` and adds its own checks
    after calling this.
    """
    c = _to_object(cfg, schema)

    def check(ok: bool, key: str, msg: str) -> None:
        if not ok:
            value = c
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{key}: {msg}, got {value!r}")

    def positive(key: str, allow_zero: bool = False) -> None:
        value = c
        for part in key.split("."):
            value = getattr(value, part)
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        check(ok, key, "must be >= 0" if allow_zero else "must be > 0")

    check(c.seed >= 0, "seed", "must be >= 0")
    check(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", c.device)), "device", "must be auto, cpu, mps, cuda or cuda:N")
    positive("num_updates")
    positive("batch_size")
    if c.num_threads is not None:
        positive("num_threads")
    # dataset
    check(bool(c.dataset.name), "dataset.name", "must name a dataset")
    check(math.isfinite(c.dataset.reward_scale) and c.dataset.reward_scale != 0, "dataset.reward_scale",
          "must be finite and non-zero")
    check(math.isfinite(c.dataset.reward_bias), "dataset.reward_bias", "must be finite")
    if check_dataset:
        problem = dataset_problem(c.dataset.name, c.dataset.download)
        if problem:
            raise ConfigError(f"dataset.name: {problem}")
    # network
    positive("network.hidden_dim")
    positive("network.actor_n_hidden_layers")
    positive("network.q_n_hidden_layers")
    # loss
    positive("loss.num_qvalue_nets")
    check(0 < c.loss.gamma <= 1, "loss.gamma", "must be in (0, 1]")
    positive("loss.num_actions")
    positive("loss.temperature")
    positive("loss.cql_alpha", allow_zero=True)
    check(c.loss.clip_diff_min <= c.loss.clip_diff_max, "loss.clip_diff_min", "must be <= loss.clip_diff_max")
    positive("loss.bc_steps", allow_zero=True)
    positive("loss.alpha_multiplier", allow_zero=True)
    te = c.loss.target_entropy
    check(te == "auto" or (isinstance(te, (int, float)) and not isinstance(te, bool) and math.isfinite(te)),
          "loss.target_entropy", "must be 'auto' or a number")
    check(c.loss.loss_function in ("l2", "l1", "smooth_l1"), "loss.loss_function", "must be l2, l1 or smooth_l1")
    check(math.isfinite(c.loss.target_action_gap), "loss.target_action_gap", "must be finite")
    check(c.loss.critic_compute_dtype in (None, "bfloat16", "float16", "float32"), "loss.critic_compute_dtype",
          "must be null, bfloat16, float16 or float32")
    # optim
    for key in ("actor_lr", "critic_lr"):
        positive(f"optim.{key}")
    for key in ("alpha_lr", "alpha_prime_lr"):
        if getattr(c.optim, key) is not None:
            positive(f"optim.{key}")
    check(0 < c.optim.tau <= 1, "optim.tau", "must be in (0, 1]")
    positive("optim.target_update_period")
    # eval / logger / checkpoint
    positive("eval.every", allow_zero=True)
    positive("eval.n_episodes")
    positive("eval.seed_offset", allow_zero=True)
    if c.eval.max_episode_steps is not None:
        positive("eval.max_episode_steps")
    positive("logger.every")
    check(isinstance(c.logger.backends, (list, tuple)) and all(b in LOGGER_BACKENDS for b in c.logger.backends),
          "logger.backends", f"must be a list of {', '.join(LOGGER_BACKENDS)}")
    check(c.logger.wandb_mode in (None, "online", "offline", "disabled"), "logger.wandb_mode",
          "must be online, offline or disabled")
    check(c.eval.every % c.logger.every == 0, "eval.every", f"must be a multiple of logger.every ({c.logger.every})")
    positive("checkpoint.every", allow_zero=True)
    check(c.checkpoint.every % c.logger.every == 0, "checkpoint.every",
          f"must be a multiple of logger.every ({c.logger.every})")
    return c


def setup_run(cfg: Any) -> torch.device:
    """Seed every generator with ``cfg.seed``, apply ``cfg.num_threads``, return the device."""
    if getattr(cfg, "num_threads", None):
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    return resolve_device(cfg.device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- metrics
class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; ``term`` names it, ``step`` bounds the interval."""

    def __init__(self, term: str, value: float, first_update: int, last_update: int):
        self.term, self.value = term, value
        self.first_update, self.last_update = first_update, last_update
        super().__init__(
            f"non-finite {term} ({value}) between updates {first_update} and {last_update}"
        )


class MetricAggregator:
    """Sum the scalar metrics of a ``TensorDict`` over an interval; ``flush`` once.

    ``add`` stacks the metrics into one tensor and adds it to a running sum on the device
    (no host sync). ``flush`` moves the sums to the host in one transfer and returns the
    means. A sum is finite iff all its summands are, so ``flush`` also detects any NaN/inf
    of the interval; the update at which each metric first went non-finite is tracked on
    the device too, so the error names the loss term that broke first.
    """

    def __init__(self, loss_keys: tuple[str, ...] = LOSS_KEYS) -> None:
        self.loss_keys = tuple(loss_keys)
        self._keys: list[str] | None = None
        self._fast = False
        self._sum: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None
        self.count = 0
        self.start_update = 0

    def reset(self, start_update: int = 0, *, clear_keys: bool = False) -> None:
        """Start a new interval at ``start_update``. ``clear_keys=True`` also forgets the
        metric names, for when the set of metrics changes (e.g. Cal-QL's bound rates at
        the offline -> online boundary)."""
        self._sum, self._first_bad, self.count = None, None, 0
        self.start_update = start_update
        if clear_keys:
            self._keys, self._fast = None, False

    def add(self, metrics: TensorDictBase | dict[str, torch.Tensor]) -> None:
        if self._keys is None:
            self._keys = [k for k in metrics.keys() if isinstance(k, str)]
            # fast path: the metrics are 0-d float tensors, always in the same order
            self._fast = list(metrics.keys()) == self._keys and all(
                metrics[k].ndim == 0 and metrics[k].is_floating_point() for k in self._keys)
        if self._fast:
            vec = torch.stack(list(metrics.values())).detach().float()
        else:
            vec = torch.stack([metrics[k].detach().float().mean() for k in self._keys])
        bad = ~torch.isfinite(vec)
        if self._sum is None:
            self._sum = vec.clone()
            self._first_bad = torch.where(bad, 0, -1)
        else:
            self._sum += vec
            self._first_bad = torch.where(bad & (self._first_bad < 0), self.count, self._first_bad)
        self.count += 1

    def flush(self) -> dict[str, float]:
        """Means over the interval (one host sync); raises :class:`NonFiniteLossError`."""
        if self._sum is None or self.count == 0:
            return {}
        host = torch.cat([self._sum / self.count, self._first_bad.to(self._sum.dtype)]).tolist()
        n = len(self._keys)
        means, first_bad = dict(zip(self._keys, host[:n])), dict(zip(self._keys, host[n:]))
        start, count = self.start_update, self.count
        self.reset(start + count)
        bad = [k for k in self._keys if not math.isfinite(means[k])]
        if bad:
            ranked = sorted(bad, key=lambda k: (k not in self.loss_keys, first_bad[k],
                                                self._rank(k)))
            term = ranked[0]
            at = start + int(first_bad[term]) + 1
            raise NonFiniteLossError(term, means[term], at, start + count)
        return means

    def _rank(self, key: str) -> int:
        # critic first: a broken critic is the usual root cause of a broken actor loss
        order = ("loss_qvalue", "loss_alpha_prime", "loss_actor", "loss_alpha")
        return order.index(key) if key in order else len(order)


# ----------------------------------------------------------------------------- hot loop
def run_updates(
    update_step: Callable[[TensorDictBase], TensorDictBase],
    sample: Callable[[], TensorDictBase],
    n: int,
    aggregator: MetricAggregator,
    *,
    device: torch.device | None = None,
    on_update: Callable[[], None] | None = None,
) -> None:
    """``n`` updates: sample a batch, update, accumulate metrics. No host sync."""
    for _ in range(n):
        batch = sample()
        if device is not None and batch.device != device:
            batch = batch.to(device, non_blocking=True)
        aggregator.add(update_step(batch))
        if on_update is not None:
            on_update()


# ----------------------------------------------------------------------------- run setup
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


def build_learner(c: OfflineConfig, info: Any, device: torch.device | str = "cpu", *,
                  update_cls: type = UpdateStep):
    """``(actor, loss, update_step)`` from the config: CORL's networks, :class:`CQLLoss`, Adam
    and ``update_cls`` (:class:`~cql_modules.train.update.UpdateStep` or a subclass: one backward,
    one Adam step, Polyak targets)."""
    obs_dim, act_dim = info.observation_space.shape[0], info.action_space.shape[0]
    action_spec = bounded_action_spec(act_dim, info.action_space.low, info.action_space.high)
    n = c.network
    actor = make_actor(obs_dim, action_spec, hidden_dim=n.hidden_dim, n_hidden_layers=n.actor_n_hidden_layers,
                       log_std_multiplier=n.log_std_multiplier, log_std_offset=n.log_std_offset,
                       orthogonal_init=n.orthogonal_init)
    critic = make_critic(obs_dim, act_dim, hidden_dim=n.hidden_dim, n_hidden_layers=n.q_n_hidden_layers,
                         orthogonal_init=n.orthogonal_init)
    loss = CQLLoss(actor, critic, action_spec=action_spec, **asdict(c.loss)).to(device)
    optimizer = make_optimizer(loss, actor_lr=c.optim.actor_lr, critic_lr=c.optim.critic_lr,
                               alpha_lr=c.optim.alpha_lr, alpha_prime_lr=c.optim.alpha_prime_lr)
    update = update_cls(loss, optimizer, tau=c.optim.tau, target_update_period=c.optim.target_update_period,
                        compile=c.compile)
    return actor, loss, update


def open_run(c: OfflineConfig, run_dir: str | os.PathLike, info: Any, loss: torch.nn.Module, update: Any,
             replay_buffer: Any = None):
    """The run's :class:`~cql_modules.train.run_logger.RunLogger` and, with ``resume=true``, the last
    checkpoint (``checkpoint.load_from`` or the run dir) restored into ``loss`` / ``update``
    (parameters, optimizer, counters, RNG) after checking it was trained on the same data.

    Returns ``(run_logger, extra, checkpoint_path)``: the checkpoint's ``extra`` dict and
    path, or ``(run_logger, None, None)`` when starting fresh.
    """
    from cql_modules.train.run_logger import RunLogger  # cql_modules.train.run_logger imports this module

    run_dir = Path(run_dir)
    resume_from = find_checkpoint(c.checkpoint.load_from or run_dir, subdir=c.checkpoint.dir) if c.resume else None
    if c.resume and resume_from is None and c.checkpoint.load_from:
        raise ConfigError(f"checkpoint.load_from: no checkpoint at {c.checkpoint.load_from}")
    state = load_checkpoint(resume_from) if resume_from else None
    run_logger = RunLogger(run_dir, c.logger.backends, exp_name=run_name(c),
                           config=config_to_dict(c), project=c.logger.project, group=c.logger.group,
                           wandb_mode=c.logger.wandb_mode, resume_state=state and state["extra"]["logger"])
    if state is None:
        if c.resume:
            log.warning("resume=true but no checkpoint under %s: starting from scratch", run_dir)
        return run_logger, None, None
    check_same_data(state["extra"]["data"], info)
    extra = load_training_state(state, loss, update, replay_buffer=replay_buffer)
    run_logger.rewind(update.n_steps, source_dir=resume_from.parent.parent)
    return run_logger, extra, resume_from


def run_state(c: OfflineConfig, info: Any, loss: torch.nn.Module, update: Any, *, history: dict[str, Any],
              run_logger: Any, replay_buffer: Any = None, **extra: Any) -> dict[str, Any]:
    """:func:`training_state` of a recipe's run, as :func:`open_run` reads it back: its
    ``extra`` holds ``history``, the run logger's state, the config and the data
    fingerprint, plus the recipe's own ``extra`` entries."""
    extra = {"history": history, "logger": run_logger.state_dict(), "config": config_to_dict(c),
             "data": data_fingerprint(info), **extra}
    return training_state(loss, update, replay_buffer=replay_buffer, extra=extra)


def ref_scores(info: Any) -> tuple[float, float] | None:
    """The dataset's ``(ref_min_score, ref_max_score)`` for normalized scores, None if unknown."""
    return (info.ref_min_score, info.ref_max_score) if info.ref_min_score is not None else None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-friendly dict of a dataclass / DictConfig (inf kept as float)."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# ----------------------------------------------------------------------------- run records
def run_name(cfg: Any) -> str:
    """``logger.name``, else ``cql-<dataset>-seed<seed>`` (a file name's stem; ``/`` -> ``-``)."""
    if cfg.logger.name:
        return cfg.logger.name
    name = cfg.dataset.name
    if Path(name).expanduser().exists():
        name = Path(name).stem
    return "cql-" + re.sub(r"[^\w.-]+", "-", name).strip("-") + f"-seed{cfg.seed}"


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def make_summary(
    cfg: Any,
    info: Any,
    history: dict[str, Any],
    *,
    updates: int,
    status: str = "completed",
    message: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` of a run: final/best scores, speed, wall time, config."""
    evals = history.get("evals", [])
    scores = [e["normalized_score"] for e in evals if e.get("normalized_score") is not None]
    returns = [e["return_mean"] for e in evals]
    train_time = float(history.get("train_time", 0.0))
    episodes = getattr(info, "episodes", None)
    return {
        "status": status,
        "message": message,
        "dataset": str(info.name),
        "seed": cfg.seed,
        "updates": int(updates),
        "final_normalized_score": scores[-1] if scores else None,
        "best_normalized_score": max(scores) if scores else None,
        "final_return": returns[-1] if returns else None,
        "best_return": max(returns) if returns else None,
        "behaviour_normalized_score": getattr(info, "behaviour_score", None),
        "behaviour_return": getattr(episodes, "return_mean", None),
        "updates_per_s": updates / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "wall_time_s": float(history.get("wall_time", 0.0)),
        "evaluations": evals,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "run_dir": None if run_dir is None else str(run_dir),
        "config": config_to_dict(cfg),
    }

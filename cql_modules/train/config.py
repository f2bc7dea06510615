"""The recipes' configuration: structured schemas (every field overridable from the
command line) and :func:`validate_config`, which fails at start naming the field
(``batch_size: must be > 0, got -1``).

The loss section is not written out: :class:`LossConfig` is derived from
``CQLLoss.__init__``'s signature, so every constructor argument is settable from the
command line with the constructor's own default (one source of defaults).
"""
from __future__ import annotations

import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, is_dataclass, make_dataclass
from typing import Any, Callable, Optional

from cql_modules.data import dataset_problem
from cql_modules.objectives.cql import CQLLoss

__all__ = [
    "ConfigError",
    "PRECISIONS",
    "PRECISION_DTYPES",
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
    "unknown_keys",
    "check_keys",
    "check_cql_learner",
    "loss_fields",
    "config_to_dict",
]

LOGGER_BACKENDS = ("csv", "tensorboard", "wandb")
#: ``precision`` -> ``CQLLoss(critic_compute_dtype=...)`` (applied in ``train/build.py``)
PRECISION_DTYPES = {"fp32": None, "bf16": "bfloat16"}
#: values of ``precision``: ``auto`` resolves to one of PRECISION_DTYPES per device
PRECISIONS = (*PRECISION_DTYPES, "auto")
#: ``CQLLoss`` arguments that are objects built by the recipe, not configuration values.
LOSS_NON_CONFIG_ARGS = ("self", "actor_network", "qvalue_network", "action_spec")


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the field name."""


@dataclass
class DatasetConfig:
    """Which data and how it is prepared (``cql_modules.data.load_dataset``)."""

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


def _config_type(hint: Any) -> Any:
    """The OmegaConf type of a constructor argument: its one primitive type (Optional when
    None is allowed), else ``Any`` (e.g. ``float | str`` for ``target_entropy``)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = typing.get_args(hint) if union else (hint,)
    primitives = [m for m in members if m in (bool, int, float, str)]
    if len(primitives) != 1:
        return Any
    return Optional[primitives[0]] if type(None) in members else primitives[0]


def loss_fields(loss_cls: type = CQLLoss, skip: tuple[str, ...] = LOSS_NON_CONFIG_ARGS) -> list[tuple[str, Any, Any]]:
    """``make_dataclass`` fields of a loss's keyword arguments (same names, types, defaults)."""
    hints = typing.get_type_hints(loss_cls.__init__)
    return [(name, _config_type(hints.get(name, type(p.default))), field(default=p.default))
            for name, p in inspect.signature(loss_cls.__init__).parameters.items()
            if name not in skip and p.kind is not inspect.Parameter.VAR_KEYWORD]


LossConfig = make_dataclass("LossConfig", loss_fields())
LossConfig.__module__ = __name__
LossConfig.__doc__ = ("Keyword arguments of :class:`cql_modules.CQLLoss`, derived from its signature: "
                      "same names, same defaults (``loss.<name>=...`` on the command line).")


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
    tune_allocator: bool = False  #: raise glibc's malloc thresholds (process-wide; see UpdateStep)
    cuda_graph: bool = False  #: replay the whole update step as one CUDA graph (CUDA only; see UpdateStep)
    num_threads: Optional[int] = None  #: torch CPU threads (None: torch's default)
    precision: str = "fp32"  #: critics' hidden layers: fp32, bf16, auto (bf16 where the device has native bf16 matmul)
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


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-friendly dict of a dataclass / DictConfig (inf kept as float)."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def unknown_keys(cfg: Any, schema: type | None = None) -> list[str]:
    """Keys of ``cfg`` (a ``DictConfig`` or dict) that ``schema`` (default: the config's own
    structured type) does not have, each with the closest known key, e.g. ``["loss.cql_alph
    (did you mean loss.cql_alpha?)"]``. Hydra lets ``+key=value`` add such keys to a typed
    config, and a merge into the schema would drop them without a word."""
    from omegaconf import DictConfig, OmegaConf

    found: list[str] = []

    def walk(node: Any, ref: Any, prefix: str) -> None:
        if not is_dataclass(OmegaConf.get_type(ref)):
            return  # a dict- or Any-typed field takes any key
        for key in node:
            if key not in ref:
                close = difflib.get_close_matches(str(key), [str(k) for k in ref], n=1)
                found.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
                continue
            child, ref_child = node._get_node(key), ref._get_node(key)  # nodes keep their schema type
            if isinstance(child, DictConfig) and isinstance(ref_child, DictConfig) \
                    and not child._is_none() and not ref_child._is_none() and not ref_child._is_missing():
                walk(child, ref_child, f"{prefix}{key}.")

    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    schema = schema or OmegaConf.get_type(node)
    if is_dataclass(schema):
        walk(node, OmegaConf.structured(schema), "")
    return found


def check_keys(cfg: Any, schema: type | None = None) -> None:
    """Raise :class:`ConfigError` listing the :func:`unknown_keys` of ``cfg``, if any."""
    unknown = unknown_keys(cfg, schema)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; check the spelling "
                          "(python <recipe> --cfg job lists every key)")


def _to_object(cfg: Any, schema: type) -> Any:
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from err


class _Checker:
    """Range checks that raise :class:`ConfigError` naming the dotted field."""

    def __init__(self, c: Any) -> None:
        self.c = c

    def value(self, key: str) -> Any:
        value = self.c
        for part in key.split("."):
            value = getattr(value, part)
        return value

    def __call__(self, ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}, got {self.value(key)!r}")

    def positive(self, key: str, allow_zero: bool = False, optional: bool = False) -> None:
        value = self.value(key)
        if optional and value is None:
            return
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value >= 0 if allow_zero else value > 0))
        self(ok, key, "must be >= 0" if allow_zero else "must be > 0")


def check_cql_learner(check: _Checker, c: Any) -> None:
    """Range checks of the ``network``, ``loss`` and ``optim`` sections of :class:`OfflineConfig`."""
    for key in ("hidden_dim", "actor_n_hidden_layers", "q_n_hidden_layers"):
        check.positive(f"network.{key}")
    # loss (CQLLoss checks its arguments too; these name the config field)
    for key in ("num_qvalue_nets", "num_actions", "temperature"):
        check.positive(f"loss.{key}")
    for key in ("cql_alpha", "bc_steps", "alpha_multiplier"):
        check.positive(f"loss.{key}", allow_zero=True)
    check(0 < c.loss.gamma <= 1, "loss.gamma", "must be in (0, 1]")
    check(c.loss.clip_diff_min <= c.loss.clip_diff_max, "loss.clip_diff_min", "must be <= loss.clip_diff_max")
    te = c.loss.target_entropy
    check(te == "auto" or (isinstance(te, (int, float)) and not isinstance(te, bool) and math.isfinite(te)),
          "loss.target_entropy", "must be 'auto' or a number")
    check(c.loss.loss_function in ("l2", "l1", "smooth_l1"), "loss.loss_function", "must be l2, l1 or smooth_l1")
    check(c.loss.reduction in ("mean", "sum"), "loss.reduction", "must be mean or sum (an update needs a scalar loss)")
    check(math.isfinite(c.loss.target_action_gap), "loss.target_action_gap", "must be finite")
    check(c.loss.critic_compute_dtype in (None, "bfloat16", "float16", "float32"), "loss.critic_compute_dtype",
          "must be null, bfloat16, float16 or float32")
    check(c.precision in PRECISIONS, "precision", f"must be {', '.join(PRECISIONS)}")
    # precision is the recipe's switch and sets loss.critic_compute_dtype (the loss's own,
    # lower-level argument, which also takes float16): one of the two, never both.
    check(c.precision == "fp32" or c.loss.critic_compute_dtype is None, "precision",
          f"sets loss.critic_compute_dtype (given as {c.loss.critic_compute_dtype}); set only one of them")
    # optim
    for key in ("actor_lr", "critic_lr"):
        check.positive(f"optim.{key}")
    for key in ("alpha_lr", "alpha_prime_lr"):
        check.positive(f"optim.{key}", optional=True)
    check(0 < c.optim.tau <= 1, "optim.tau", "must be in (0, 1]")
    check.positive("optim.target_update_period")


def validate_config(cfg: Any, schema: type = OfflineConfig, *, check_dataset: bool = True,
                    learner_checks: Callable[[_Checker, Any], None] = check_cql_learner) -> Any:
    """Type-check ``cfg`` (a ``DictConfig``/dict or a dataclass) against ``schema`` and
    range-check its values; return the dataclass object. Raises :class:`ConfigError`
    whose message starts with the offending field, e.g. ``loss.cql_alpha: must be >= 0``.

    A recipe with more fields subclasses :class:`OfflineConfig` and adds its own checks
    after calling this; one with another learner (``recipes/discrete_cql.py``) passes its
    own ``learner_checks`` for the ``network``, ``loss`` and ``optim`` sections.
    """
    c = _to_object(cfg, schema)
    check = _Checker(c)
    check(c.seed >= 0, "seed", "must be >= 0")
    check(bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", c.device)), "device", "must be auto, cpu, mps, cuda or cuda:N")
    check.positive("num_updates")
    check.positive("batch_size")
    check.positive("num_threads", optional=True)
    # dataset
    check(bool(c.dataset.name), "dataset.name", "must name a dataset")
    check(math.isfinite(c.dataset.reward_scale) and c.dataset.reward_scale != 0, "dataset.reward_scale",
          "must be finite and non-zero")
    check(math.isfinite(c.dataset.reward_bias), "dataset.reward_bias", "must be finite")
    if check_dataset:
        problem = dataset_problem(c.dataset.name, c.dataset.download)
        if problem:
            raise ConfigError(f"dataset.name: {problem}")
    learner_checks(check, c)
    # eval / logger / checkpoint
    check.positive("eval.every", allow_zero=True)
    check.positive("eval.n_episodes")
    check.positive("eval.seed_offset", allow_zero=True)
    check.positive("eval.max_episode_steps", optional=True)
    check.positive("logger.every")
    check(isinstance(c.logger.backends, (list, tuple)) and all(b in LOGGER_BACKENDS for b in c.logger.backends),
          "logger.backends", f"must be a list of {', '.join(LOGGER_BACKENDS)}")
    check(c.logger.wandb_mode in (None, "online", "offline", "disabled"), "logger.wandb_mode",
          "must be online, offline or disabled")
    check(c.eval.every % c.logger.every == 0, "eval.every", f"must be a multiple of logger.every ({c.logger.every})")
    check.positive("checkpoint.every", allow_zero=True)
    check(c.checkpoint.every % c.logger.every == 0, "checkpoint.every",
          f"must be a multiple of logger.every ({c.logger.every})")
    return c

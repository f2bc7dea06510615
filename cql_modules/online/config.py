"""Configuration of offline-to-online fine-tuning: the offline schema plus the two phase
lengths and the online phase's fields, with their checks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from cql_modules.train.config import ConfigError, OfflineConfig, register_configs, validate_config

__all__ = ["OnlineConfig", "FinetuneConfig", "register_finetune_configs", "validate_finetune_config"]


@dataclass
class OnlineConfig:
    """The online phase of offline-to-online fine-tuning (CORL's ``finetune`` / Cal-QL)."""

    utd_ratio: int = 1  #: updates per collected environment step
    frames_per_batch: int = 1  #: env steps per collector batch (1: CORL's step-update alternation)
    cql_alpha_online: Optional[float] = None  #: CQL weight from the boundary on (None: loss.cql_alpha)
    calibrated: bool = True  #: keep Cal-QL's calibration online (Cal-QL); false: switch it off (CORL)
    replay: str = "add"  #: "add": online rows join the offline buffer (CORL CQL); "mix": fixed ratio (Cal-QL)
    mixing_ratio: float = 0.5  #: "mix": fraction of each batch drawn from the OFFLINE data (CORL's name)
    buffer_capacity: Optional[int] = None  #: online rows kept (None: every online step, nothing overwritten)
    seed_offset: int = 1  #: training env seed = seed + seed_offset (evaluation: seed + eval.seed_offset)
    max_episode_steps: Optional[int] = None  #: None: the env's own time limit


@dataclass
class FinetuneConfig(OfflineConfig):
    """Top-level configuration of ``recipes/finetune_cql.py``: the offline fields plus the
    two phase lengths and :class:`OnlineConfig`. ``num_updates`` (set by the dataset
    presets) is the offline phase's length unless ``offline_updates`` is given."""

    offline_updates: Optional[int] = None  #: None: num_updates
    online_updates: int = 1_000_000  #: updates in the online phase (env steps = online_updates / utd_ratio)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    @property
    def n_offline(self) -> int:
        return int(self.num_updates if self.offline_updates is None else self.offline_updates)

    @property
    def total_updates(self) -> int:
        return self.n_offline + int(self.online_updates)

    @property
    def online_env_steps(self) -> int:
        return int(self.online_updates) // int(self.online.utd_ratio)


def register_finetune_configs(name: str = "finetune_cql_schema") -> None:
    """Store :class:`FinetuneConfig` in Hydra's ``ConfigStore`` (typed overrides)."""
    register_configs(name, FinetuneConfig)


def validate_finetune_config(cfg: Any, *, check_dataset: bool = True) -> FinetuneConfig:
    """:func:`cql_modules.train.config.validate_config` plus the online fields; raises
    :class:`~cql_modules.train.config.ConfigError` naming the field."""
    c = validate_config(cfg, FinetuneConfig, check_dataset=check_dataset)
    o = c.online

    def check(ok: bool, key: str, msg: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}, got {value!r}")

    if c.offline_updates is not None:
        check(c.offline_updates >= 0, "offline_updates", "must be >= 0", c.offline_updates)
    check(c.online_updates >= 0, "online_updates", "must be >= 0", c.online_updates)
    check(c.total_updates > 0, "online_updates", "offline_updates + online_updates must be > 0", c.online_updates)
    check(o.utd_ratio >= 1, "online.utd_ratio", "must be >= 1", o.utd_ratio)
    check(o.frames_per_batch >= 1, "online.frames_per_batch", "must be >= 1", o.frames_per_batch)
    per_batch = o.frames_per_batch * o.utd_ratio
    check(c.online_updates % per_batch == 0, "online_updates",
          f"must be a multiple of online.frames_per_batch * online.utd_ratio ({per_batch})", c.online_updates)
    check(c.logger.every % per_batch == 0, "logger.every",
          f"must be a multiple of online.frames_per_batch * online.utd_ratio ({per_batch})", c.logger.every)
    check(c.n_offline % c.logger.every == 0, "offline_updates" if c.offline_updates is not None else "num_updates",
          f"must be a multiple of logger.every ({c.logger.every}): the phases switch at a logging boundary",
          c.n_offline)
    if o.cql_alpha_online is not None:
        check(math.isfinite(o.cql_alpha_online) and o.cql_alpha_online >= 0, "online.cql_alpha_online",
              "must be >= 0", o.cql_alpha_online)
    check(o.replay in ("add", "mix"), "online.replay", "must be 'add' or 'mix'", o.replay)
    check(0.0 < o.mixing_ratio < 1.0, "online.mixing_ratio", "must be in (0, 1)", o.mixing_ratio)
    if o.buffer_capacity is not None:
        check(o.buffer_capacity >= 1, "online.buffer_capacity", "must be >= 1", o.buffer_capacity)
    check(o.seed_offset >= 0, "online.seed_offset", "must be >= 0", o.seed_offset)
    check(o.seed_offset != c.eval.seed_offset, "online.seed_offset",
          f"must differ from eval.seed_offset ({c.eval.seed_offset}): separate training/evaluation seeds",
          o.seed_offset)
    if o.max_episode_steps is not None:
        check(o.max_episode_steps >= 1, "online.max_episode_steps", "must be >= 1", o.max_episode_steps)
    return c

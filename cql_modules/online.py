"""Offline-to-online pieces: the online environment, the collector, episode assembly with
Monte-Carlo returns, the offline/online replay, and online bookkeeping (regret).

The online phase of ``recipes/finetune_cql.py`` strings them together::

    env = make_online_env(info, seed=seed)               # dataset normalization + reward modification
    collector = make_collector(env, actor, frames_per_batch=1)   # stochastic policy, same actor object
    replay = OnlineReplay(rb, mode="add", online_capacity=n)     # CORL: one buffer; "mix": Cal-QL's ratio
    writer = EpisodeWriter(replay.extend, gamma=info.gamma, failure_reward=mc_failure_reward(info, rb),
                           goal_reward=goal_reward_threshold(info))
    progress = OnlineProgress()
    for batch in collector:                              # [frames_per_batch] transitions
        episodes = writer.add(batch)                     # finished episodes -> mc_return -> replay
        progress.add_episodes(episodes)                  # train/episode_return, train/regret, ...
        for _ in range(frames_per_batch * utd_ratio):
            update(replay.sample())

Conventions (the buffer's, so online rows look exactly like offline ones):

* observations are normalized by the dataset's ``ObservationNorm`` (``make_env``);
* rewards get the dataset's reward modification as a TorchRL ``RewardScaling`` transform
  (:meth:`RewardModification.transform`), and a ``RewardSum`` placed *before* it keeps the
  raw episode return (``("next", RAW_RETURN_KEY)``) for scores and regret;
* ``mc_return`` is computed when an episode ends (terminated or truncated) with the data
  layer's :func:`~cql_modules.data.return_to_go`, the dataset's gamma and its sparse-reward
  rule, so every stored row, offline or online, has a valid Monte-Carlo return. Hence online
  transitions reach the replay when their episode ends (CORL's CQL adds them at once; the
  delay is at most one episode).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import (
    LazyTensorStorage,
    OfflineToOnlineReplayBuffer,
    ReplayBuffer,
    TensorDictReplayBuffer,
)
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs import TransformedEnv
from torchrl.envs.transforms import RewardSum, SelectTransform
from torchrl.envs.utils import ExplorationType

from cql_modules import training as T
from cql_modules.data import DatasetError, DatasetInfo, keys, make_env, make_replay_buffer, return_to_go
from cql_modules.train.evaluation import (
    SUCCESS_KEYS,  # the success-reading pieces live with the evaluation (re-exported here)
    SuccessInfoReader,
    add_success_reader,
    env_success_keys,
    normalized_score,
    regret,
    score_regret,
)

__all__ = [
    "SUCCESS_KEYS",
    "RAW_RETURN_KEY",
    "OnlineConfig",
    "FinetuneConfig",
    "register_finetune_configs",
    "validate_finetune_config",
    "env_success_keys",
    "SuccessInfoReader",
    "add_success_reader",
    "make_online_env",
    "make_collector",
    "mc_failure_reward",
    "goal_reward_threshold",
    "EpisodeRecord",
    "EpisodeWriter",
    "OnlineReplay",
    "OnlineProgress",
]

#: where the online env writes the undiscounted episode return of the *raw* rewards.
RAW_RETURN_KEY = "episode_raw_return"
#: the keys stored per transition (the data layer's, :mod:`cql_modules.data.keys`).
STORED_KEYS = keys.TRANSITION_KEYS
_STEP_KEYS = tuple(k for k in STORED_KEYS if k != keys.MC_RETURN)


# ----------------------------------------------------------------------------- config
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
class FinetuneConfig(T.OfflineConfig):
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
    T.register_configs(name, FinetuneConfig)


def validate_finetune_config(cfg: Any, *, check_dataset: bool = True) -> FinetuneConfig:
    """:func:`cql_modules.training.validate_config` plus the online fields; raises
    :class:`~cql_modules.training.ConfigError` naming the field."""
    c = T.validate_config(cfg, FinetuneConfig, check_dataset=check_dataset)
    o = c.online

    def check(ok: bool, key: str, msg: str, value: Any) -> None:
        if not ok:
            raise T.ConfigError(f"{key}: {msg}, got {value!r}")

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


# ----------------------------------------------------------------------------- environment
def make_online_env(
    info: DatasetInfo,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    success_keys: Sequence[str] | None | Literal["auto"] = "auto",
    **make_kwargs,
) -> TransformedEnv:
    """The training environment of the online phase: :func:`cql_modules.data.make_env`
    (same ``ObservationNorm`` as the buffer) + ``RewardSum`` of the raw rewards (written
    to ``RAW_RETURN_KEY``) + the dataset's reward modification (``RewardScaling``), so the
    collected ``("next", "reward")`` is on the buffer's scale.

    Args:
        info: the loaded dataset's :class:`DatasetInfo`.
        seed: seeds the environment, after every transform is in place (set it before a
            ``Collector`` is built: the collector resets the env when constructed).
        success_keys: info keys to read as success flags; ``"auto"`` probes the env
            (:func:`env_success_keys`); None or ``()`` for none.
        make_kwargs: ``gym.make`` arguments (e.g. ``max_episode_steps``).
    """
    env = make_env(info, device=device, **make_kwargs)
    if success_keys == "auto":
        success_keys = env_success_keys(info, **make_kwargs)
    add_success_reader(env, success_keys or ())
    env.append_transform(RewardSum(in_keys=[keys.REWARD[1]], out_keys=[RAW_RETURN_KEY]))
    mod = info.reward_modification
    if not mod.is_identity:
        factor = mod.range_factor * mod.scale
        if factor < 1e-6:  # RewardScaling clamps its scale to >= 1e-6
            raise DatasetError(f"online reward modification needs a scale >= 1e-6, got {factor}")
        env.append_transform(mod.transform())
    if seed is not None:
        env.set_seed(seed)
    return env


def make_collector(env, policy, *, frames_per_batch: int = 1, device: str | torch.device | None = None) -> Collector:
    """A TorchRL ``Collector`` running ``policy`` **stochastically** (``ExplorationType.RANDOM``)
    in ``env`` forever (``total_frames=-1``), ``frames_per_batch`` steps per batch.

    In one process the collector calls the very ``policy`` object it was given, so every
    optimizer step on the actor is seen by the next collected action (no weight copy).
    Seed ``env`` before calling this (the collector resets it when built).
    """
    return Collector(
        env,
        policy,
        frames_per_batch=frames_per_batch,
        total_frames=-1,
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
        device=device,
    )


def mc_failure_reward(info: DatasetInfo, replay_buffer=None) -> float | None:
    """The sparse-reward failure value of the dataset's ``mc_return`` (None when dense).

    The data layer uses the modified minimum raw reward of the dataset (-5 on AntMaze);
    read from ``info.mc_failure_reward`` when the data layer records it, else the minimum
    reward of the (offline, modified) buffer, which is the same number.
    """
    if not info.sparse_reward:
        return None
    value = getattr(info, "mc_failure_reward", None)
    if value is not None:
        return float(value)
    if replay_buffer is None:
        raise ValueError("a sparse-reward dataset needs the replay buffer (or info.mc_failure_reward)")
    storage = replay_buffer.storage
    rewards = storage.get(torch.arange(info.num_transitions)).get(keys.REWARD)
    return float(rewards.min())


# ----------------------------------------------------------------------------- episodes
@dataclass
class EpisodeRecord:
    """One finished online episode."""

    length: int
    raw_return: float  #: undiscounted return of the raw rewards (the modified ones if the env has no RewardSum)
    modified_return: float  #: undiscounted return of the stored (modified) rewards
    terminated: bool
    success: Optional[bool] = None  #: None when the env reports no success signal


def _flag(td: TensorDictBase, key, fallback: torch.Tensor) -> torch.Tensor:
    value = td.get(key, None)
    return fallback.clone() if value is None else value.reshape(fallback.shape).bool()


class EpisodeWriter:
    """Buffers the transitions of unfinished episodes per environment; when an episode ends
    (``("next", "done")``: terminated or truncated) computes its ``mc_return`` with the data
    layer's :func:`~cql_modules.data.return_to_go` and writes it.

    Args:
        write: called with one ``TensorDict`` [n] of finished transitions (the keys of
            :mod:`cql_modules.data.keys`) per :meth:`add` that finished any episode.
        gamma: the dataset's discount (``info.gamma``).
        failure_reward: the sparse-reward failure value (:func:`mc_failure_reward`).
        success_keys: info keys (``("next", key)``) marking success; checked in this order.
        goal_reward: when no success key is present, a step whose *stored* reward exceeds
            this reached the goal (AntMaze: raw reward > 0, i.e. modified reward > -5;
            CORL's ``is_goal_reached`` fallback). None: no reward-based success.
    """

    def __init__(
        self,
        write: Callable[[TensorDictBase], Any],
        *,
        gamma: float,
        failure_reward: float | None = None,
        success_keys: Sequence[str] = SUCCESS_KEYS,
        goal_reward: float | None = None,
    ) -> None:
        self.write = write
        self.gamma = float(gamma)
        self.failure_reward = failure_reward
        self.success_keys = tuple(success_keys)
        self.goal_reward = goal_reward
        self.pending: dict[int, list[TensorDict]] = {}

    @property
    def pending_steps(self) -> int:
        return sum(p.shape[0] for parts in self.pending.values() for p in parts)

    def reset(self) -> None:
        """Drop the unfinished episodes (e.g. the env was reset from outside)."""
        self.pending.clear()

    def _select(self, batch: TensorDictBase) -> TensorDict:
        """The stored keys (+ raw return and success flags), float32/bool, cloned."""
        shape = batch.batch_size
        done = batch.get(keys.DONE).reshape(*shape, 1).bool()
        terminated = _flag(batch, keys.TERMINATED, done)
        out = TensorDict(
            {
                keys.OBSERVATION: batch.get(keys.OBSERVATION).float(),
                keys.ACTION: batch.get(keys.ACTION).float(),
                keys.NEXT_OBSERVATION: batch.get(keys.NEXT_OBSERVATION).float(),
                keys.REWARD: batch.get(keys.REWARD).reshape(*shape, 1).float(),
                keys.DONE: done,
                keys.TERMINATED: terminated,
                keys.TRUNCATED: _flag(batch, keys.TRUNCATED, done & ~terminated),
            },
            batch_size=shape,
        ).clone()
        raw = batch.get(("next", RAW_RETURN_KEY), None)
        if raw is not None:
            out.set("_raw_return", raw.reshape(*shape).double().clone())
        for k in self.success_keys:
            flag = batch.get(("next", k), None)
            if flag is not None:
                out.set("_success", flag.reshape(*shape).bool().clone())
                break
        return out

    def add(self, batch: TensorDictBase) -> list[EpisodeRecord]:
        """Consume one collector batch ([T] for one env, [E, T] for E envs, time last)."""
        if batch.ndim == 1:
            batch = batch.unsqueeze(0)
        elif batch.ndim > 2:
            batch = batch.reshape(-1, batch.shape[-1])
        data = self._select(batch)
        done = data.get(keys.DONE).squeeze(-1)
        finished, records = [], []
        for e in range(data.shape[0]):
            start = 0
            for t in done[e].nonzero().squeeze(-1).tolist():
                parts = self.pending.pop(e, []) + [data[e, start : t + 1]]
                episode = torch.cat(parts) if len(parts) > 1 else parts[0]
                rows, record = self._finish(episode)
                finished.append(rows)
                records.append(record)
                start = t + 1
            if start < data.shape[1]:
                self.pending.setdefault(e, []).append(data[e, start:])
        if finished:
            self.write(torch.cat(finished) if len(finished) > 1 else finished[0])
        return records

    def _finish(self, episode: TensorDict) -> tuple[TensorDict, EpisodeRecord]:
        n = episode.shape[0]
        rewards = episode.get(keys.REWARD).squeeze(-1).double().numpy()
        ends = np.zeros(n, dtype=bool)
        ends[-1] = True
        mc = return_to_go(rewards, ends, self.gamma, self.failure_reward)
        modified_return = float(rewards.sum())
        raw = episode.get("_raw_return", None)
        success = None
        if "_success" in episode.keys():
            success = bool(episode.get("_success").any())
        elif self.goal_reward is not None:
            success = bool((rewards > self.goal_reward).any())
        record = EpisodeRecord(
            length=n,
            raw_return=float(raw[-1]) if raw is not None else modified_return,
            modified_return=modified_return,
            terminated=bool(episode.get(keys.TERMINATED)[-1]),
            success=success,
        )
        rows = episode.select(*_STEP_KEYS)
        rows.set(keys.MC_RETURN, torch.from_numpy(mc.astype(np.float32)).unsqueeze(-1))
        return rows, record


def goal_reward_threshold(info: DatasetInfo) -> float | None:
    """CORL's ``is_goal_reached`` fallback for sparse-reward (goal) tasks without a success
    info key: a raw reward > 0 reached the goal, i.e. a stored reward > modification(0)."""
    return float(info.reward_modification(0.0)) if info.sparse_reward else None


# ----------------------------------------------------------------------------- replay
class OnlineReplay:
    """Where online transitions go and where training batches come from.

    ``mode="add"`` (CORL's CQL fine-tuning): online rows are written into the offline
    buffer and batches are uniform over all rows. With ``online_capacity`` the storage
    keeps room for that many online rows (a larger copy is made when the loaded buffer is
    too small: ``self.offline`` is then that copy); once full, the oldest rows are
    overwritten round-robin, as CORL's buffer does.

    ``mode="mix"`` (Cal-QL): online rows go to a separate buffer and every batch holds
    exactly ``round(mixing_ratio * batch_size)`` offline rows followed by the online rest
    (TorchRL's :class:`~torchrl.data.OfflineToOnlineReplayBuffer`; the offline side
    samples the offline storage without copying it). Until the first online episode
    ends, batches are all offline.

    :meth:`state_dict` holds the online rows in the order they were added (the offline
    rows are re-read from the dataset on resume), :meth:`load_state_dict` puts them back
    at the same storage positions.
    """

    def __init__(
        self,
        offline: TensorDictReplayBuffer,
        *,
        mode: Literal["add", "mix"] = "add",
        mixing_ratio: float = 0.5,
        online_capacity: int | None = None,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if mode not in ("add", "mix"):
            raise ValueError(f"mode must be 'add' or 'mix', got {mode!r}")
        self.mode = mode
        self.offline = offline
        self.num_offline = len(offline)
        self.num_online = 0
        batch_size = batch_size or getattr(offline, "batch_size", None)
        if not batch_size:
            raise ValueError("batch_size is needed (the offline buffer has none)")
        self.batch_size = int(batch_size)
        if mode == "add":
            if online_capacity is not None and offline.storage.max_size < self.num_offline + online_capacity:
                # room for the online rows: the same rows in a larger storage (one copy); load the
                # dataset with capacity=len + online rows to avoid it
                data = offline.storage.get(torch.arange(self.num_offline)).select(*STORED_KEYS)
                offline = make_replay_buffer(data, batch_size=self.batch_size,
                                             capacity=self.num_offline + int(online_capacity), device=device)
                self.offline = offline
            self.buffer = offline
            self.storage = offline.storage
            self.writer = offline.writer
            self._base = self.num_offline
        else:
            if not 0.0 < mixing_ratio < 1.0:
                raise ValueError(f"mixing_ratio must be in (0, 1), got {mixing_ratio}")
            if online_capacity is None or online_capacity < 1:
                raise ValueError("mode='mix' needs online_capacity >= 1")
            self.n_offline_per_batch = round(mixing_ratio * self.batch_size)
            # a second view of the offline storage (no copy) whose samples hold exactly the
            # stored keys (not the buffer's "index"), so they concatenate with the online ones
            view = ReplayBuffer(storage=offline.storage, sampler=RandomSampler(), batch_size=self.n_offline_per_batch,
                                transform=SelectTransform(*STORED_KEYS))
            self.buffer = OfflineToOnlineReplayBuffer(
                view,
                online_storage=LazyTensorStorage(int(online_capacity), device=device),
                offline_fraction=mixing_ratio,
                batch_size=self.batch_size,
            )
            self.storage = self.buffer.online_buffer.storage
            self.writer = self.buffer.online_buffer.writer
            self._base = 0
        self.capacity = int(self.storage.max_size)
        self._warned_wrap = False

    @property
    def mixing_ratio(self) -> float | None:
        return self.buffer.offline_fraction if self.mode == "mix" else None

    def __len__(self) -> int:
        return len(self.buffer)

    def sample(self) -> TensorDictBase:
        if self.mode == "mix" and self.num_online == 0:
            with warnings.catch_warnings():  # offline view sampled at the full batch size
                warnings.simplefilter("ignore", UserWarning)
                return self.buffer.sample()
        return self.buffer.sample()

    def extend(self, data: TensorDictBase) -> None:
        """Add online transitions (keys of :mod:`cql_modules.data.keys`)."""
        n = data.shape[0]
        if not self._warned_wrap and self._base + self.num_online + n > self.capacity:
            self._warned_wrap = True
            what = "offline and online rows" if self.mode == "add" else "online rows"
            warnings.warn(f"replay storage full ({self.capacity} rows): the oldest {what} are being overwritten")
        self.buffer.extend(data.select(*STORED_KEYS))
        self.num_online += n

    # -- checkpointing ------------------------------------------------------------------
    def _positions(self, num_online: int) -> tuple[int, torch.Tensor]:
        """(global index of the first kept online row, storage positions of the kept rows)."""
        m = min(num_online, self.capacity)
        first = num_online - m
        return first, (self._base + first + torch.arange(m)) % self.capacity

    def state_dict(self, num_online: int | None = None) -> dict[str, Any]:
        """The online rows (plain tensors, ``torch.load(weights_only=True)``-safe) as of
        ``num_online`` added rows (default: all so far; a smaller count describes an
        earlier moment, e.g. the last good state, as long as no row was overwritten since)."""
        n = self.num_online if num_online is None else int(num_online)
        if n > self.num_online:
            raise ValueError(f"num_online {n} > rows added so far ({self.num_online})")
        first, pos = self._positions(n)
        rows = self.storage.get(pos) if len(pos) else None
        return {
            "mode": self.mode,
            "num_offline": self.num_offline,
            "num_online": n,
            "first": first,
            "rows": None if rows is None else rows.select(*STORED_KEYS).to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], num_online: int | None = None) -> None:
        """Put back the online rows of :meth:`state_dict` on a freshly built replay (same
        dataset, same capacity). ``num_online``: restore the moment when that many rows had
        been added (a checkpoint older than the saved rows)."""
        if state["mode"] != self.mode:
            raise ValueError(f"saved online rows are for mode={state['mode']!r}, this replay is {self.mode!r}")
        if state["num_offline"] != self.num_offline:
            raise ValueError(f"saved online rows follow {state['num_offline']} offline rows, not {self.num_offline}")
        if self.num_online:
            raise ValueError("load_state_dict needs a replay without online rows")
        n = state["num_online"] if num_online is None else int(num_online)
        if n == 0:
            return
        rows = TensorDict(state["rows"], batch_size=[state["num_online"] - state["first"]])
        first, pos = self._positions(n)
        lo, hi = first - state["first"], n - state["first"]
        if lo < 0 or hi > rows.shape[0]:
            raise ValueError(f"the saved online rows ({state['first']}..{state['num_online']}) do not cover "
                             f"rows {first}..{n} of the checkpoint")
        rows = rows[lo:hi]
        cursor = int(pos[0])
        written = self.writer.state_dict()
        self.writer.load_state_dict({**written, "_cursor": cursor})
        self.buffer.extend(rows)  # "mix": OfflineToOnlineReplayBuffer routes it to the online buffer
        self.num_online = n


# ----------------------------------------------------------------------------- bookkeeping
@dataclass
class OnlineProgress:
    """Counters and histories of the online phase, checkpointed with the run.

    ``train/regret`` is CORL's, over every online training episode so far: Cal-QL's
    ``mean(1 - success)`` when the env reports success (goal tasks), else CQL's
    ``mean(1 - clip(normalized_return / 100, 0, 1))``. ``eval/regret`` is
    ``mean(1 - clip(normalized_score / 100, 0, 1))`` over the online phase's evaluations.
    """

    env_steps: int = 0
    episodes: int = 0
    train_returns: list = field(default_factory=list)  #: raw returns of the online training episodes
    train_successes: list = field(default_factory=list)  #: success flags (empty without a success signal)
    eval_scores: list = field(default_factory=list)  #: normalized scores of the online evaluations
    eval_successes: list = field(default_factory=list)  #: success rates of the online evaluations
    _interval: list = field(default_factory=list, repr=False)

    def add_episodes(self, records: Sequence[EpisodeRecord]) -> None:
        for r in records:
            self.episodes += 1
            self.train_returns.append(float(r.raw_return))
            if r.success is not None:
                self.train_successes.append(float(r.success))
            self._interval.append(r)

    def metrics(self, ref_scores: tuple[float, float] | None = None) -> dict[str, float]:
        """Training-episode metrics of the episodes finished since the last call (CORL's
        names under ``train/``) and the running ``train/regret``."""
        m: dict[str, float] = {"train/env_steps": float(self.env_steps), "train/episodes": float(self.episodes)}
        interval, self._interval = self._interval, []
        if interval:
            returns = [r.raw_return for r in interval]
            m["train/episode_return"] = float(np.mean(returns))
            m["train/episode_length"] = float(np.mean([r.length for r in interval]))
            if ref_scores is not None:
                m["train/d4rl_normalized_episode_return"] = float(np.mean(normalized_score(returns, *ref_scores)))
            flags = [r.success for r in interval if r.success is not None]
            if flags:
                m["train/is_success"] = float(np.mean(flags))
        if self.train_successes:  # CORL Cal-QL (goal tasks): mean(1 - success)
            m["train/regret"] = regret(self.train_successes)
        elif self.train_returns and ref_scores is not None:  # CORL CQL: mean(1 - clip(normalized, 0, 1))
            m["train/regret"] = score_regret(normalized_score(self.train_returns, *ref_scores), clip=True)
        return m

    def add_eval(self, normalized_score: float | None, success_rate: float | None = None) -> dict[str, float]:
        """Record an online evaluation; returns ``eval/regret`` (CORL's CQL:
        ``mean(1 - clip(score / 100, 0, 1))`` over the online evaluations so far) and, with a
        success signal, ``eval/success_regret`` (``mean(1 - success_rate)``)."""
        m: dict[str, float] = {}
        if normalized_score is not None:
            self.eval_scores.append(float(normalized_score))
            m["eval/regret"] = score_regret(self.eval_scores, clip=True)
        if success_rate is not None:
            self.eval_successes.append(float(success_rate))
            m["eval/success_regret"] = regret(self.eval_successes)
        return m

    def state_dict(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "train_returns": list(self.train_returns),
            "train_successes": list(self.train_successes),
            "eval_scores": list(self.eval_scores),
            "eval_successes": list(self.eval_successes),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> OnlineProgress:
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in state.items()})

"""Where online transitions go and where training batches come from: CORL's single buffer
(``add``) or Cal-QL's fixed offline/online ratio (``mix``), with the online rows checkpointed."""
from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage, OfflineToOnlineReplayBuffer, ReplayBuffer, TensorDictReplayBuffer
from torchrl.data.replay_buffers import RandomSampler
from torchrl.envs.transforms import SelectTransform

from cql_modules.data import keys, make_replay_buffer

__all__ = ["OnlineReplay"]


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
                data = offline.storage.get(torch.arange(self.num_offline)).select(*keys.TRANSITION_KEYS)
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
                                transform=SelectTransform(*keys.TRANSITION_KEYS))
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
        self.buffer.extend(data.select(*keys.TRANSITION_KEYS))
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
            "rows": None if rows is None else rows.select(*keys.TRANSITION_KEYS).to_dict(),
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
        # the writer's position: TorchRL's writers have no setter; their public state dict
        # holds it under "_cursor"
        written = self.writer.state_dict()
        self.writer.load_state_dict({**written, "_cursor": cursor})
        self.buffer.extend(rows)  # "mix": OfflineToOnlineReplayBuffer routes it to the online buffer
        self.num_online = n

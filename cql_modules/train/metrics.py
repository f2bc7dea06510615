"""Metric aggregation over a logging interval, doubling as the NaN/inf guard.

:class:`MetricAggregator` sums the detached metric tensors of every update on the device
and syncs with the host once per logging interval; a sum is finite iff every summand is,
so the same sums detect any NaN/inf, and :class:`NonFiniteLossError` names the loss term
that broke first.
"""
from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase

from cql_modules.train.update import LOSS_KEYS

__all__ = ["MetricAggregator", "NonFiniteLossError"]


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

"""Normalized scores: ``100 * (return - ref_min) / (ref_max - ref_min)`` (D4RL convention)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .d4rl import D4RL_DATASETS
from .errors import DatasetError


def reference_scores(dataset: Any, *, required: bool = True) -> tuple[float, float] | None:
    """(ref_min_score, ref_max_score) of a dataset; a dataset without them raises
    :class:`DatasetError`, or gives None with ``required=False``.

    ``dataset`` is a :class:`~cql_modules.data.DatasetInfo` (its stored refs; read by duck typing,
    as ``info.py`` uses this module), a D4RL name (the D4RL table), a
    local Minari id (``ref_min_score`` / ``ref_max_score`` of its metadata) or the pair itself.
    """
    if isinstance(dataset, tuple):
        refs, name = dataset, str(dataset)
    elif hasattr(dataset, "ref_min_score"):  # a DatasetInfo
        refs, name = (dataset.ref_min_score, dataset.ref_max_score), dataset.name
    elif dataset in D4RL_DATASETS:
        entry = D4RL_DATASETS[dataset]
        refs, name = (entry.ref_min_score, entry.ref_max_score), dataset
    else:
        from .minari_source import open_minari

        metadata = open_minari(dataset).storage.metadata
        refs, name = (metadata.get("ref_min_score"), metadata.get("ref_max_score")), dataset
    if (refs[0] is None or refs[1] is None) and not required:
        return None
    if refs[0] is None or refs[1] is None:
        raise DatasetError(f"dataset '{name}' has no reference scores (ref_min_score/ref_max_score)")
    if not refs[1] > refs[0]:
        raise DatasetError(f"dataset '{name}': ref_max_score ({refs[1]}) must be > ref_min_score ({refs[0]})")
    return float(refs[0]), float(refs[1])


def normalized_score(dataset: Any, returns):
    """Normalized score of episode return(s): a float for a float, an array for an array.
    ``dataset``: anything :func:`reference_scores` accepts."""
    lo, hi = reference_scores(dataset)
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(score) if score.ndim == 0 else score

"""Normalized scores: ``100 * (return - ref_min) / (ref_max - ref_min)`` (D4RL convention)."""

from __future__ import annotations

import numpy as np

from .d4rl import D4RL_DATASETS
from .errors import DatasetError
from .info import DatasetInfo


def reference_scores(dataset: DatasetInfo | str) -> tuple[float, float]:
    """(ref_min_score, ref_max_score) of a dataset.

    ``dataset`` is a :class:`DatasetInfo` (its stored refs), a D4RL name (the D4RL table) or a
    local Minari id (``ref_min_score`` / ``ref_max_score`` of its metadata).
    """
    if isinstance(dataset, DatasetInfo):
        refs, name = (dataset.ref_min_score, dataset.ref_max_score), dataset.name
    elif dataset in D4RL_DATASETS:
        entry = D4RL_DATASETS[dataset]
        refs, name = (entry.ref_min_score, entry.ref_max_score), dataset
    else:
        from .minari_source import open_minari

        metadata = open_minari(dataset).storage.metadata
        refs, name = (metadata.get("ref_min_score"), metadata.get("ref_max_score")), dataset
    if refs[0] is None or refs[1] is None:
        raise DatasetError(f"dataset '{name}' has no reference scores (ref_min_score/ref_max_score)")
    return float(refs[0]), float(refs[1])


def normalized_score(dataset: DatasetInfo | str, returns):
    """Normalized score of episode return(s): a float for a float, an array for an array."""
    lo, hi = reference_scores(dataset)
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(score) if score.ndim == 0 else score

"""Learning curves per dataset: mean over seeds with a band, each seed, the phase boundary."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cql_modules.report.runs import Group, Run

__all__ = ["RETURN_KEY", "SCORE_KEY", "plot_curves"]

SCORE_KEY, RETURN_KEY = "d4rl_normalized_score", "eval_score"


def _curve(run: Run) -> tuple[str, dict[int, float]]:
    key = SCORE_KEY if any(SCORE_KEY in r for r in run.records) else RETURN_KEY
    return key, {int(r["step"]): float(r[key]) for r in run.records if isinstance(r.get(key), (int, float))}


def plot_curves(groups: Sequence[Group], out_dir: str | os.PathLike) -> dict[str, Path]:
    """One PNG per dataset: per variant the mean over seeds (at the evaluation steps all its
    seeds share), a +-1 std band and each seed thin; a dotted line at the offline -> online
    boundary of fine-tuning runs. Returns {dataset: png path}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from cql_modules.atomic import atomic_write

    out_dir = Path(out_dir)
    paths = {}
    for dataset in sorted({g.dataset for g in groups}):
        fig, ax = plt.subplots(figsize=(6.4, 4), dpi=100)
        key = SCORE_KEY
        marked: set = set()  # phase boundaries already drawn (one line and legend entry each)
        for i, group in enumerate(g for g in groups if g.dataset == dataset):
            curves = [_curve(r) for r in group.runs]
            key = curves[0][0]
            steps = sorted(set.intersection(*(set(c) for _, c in curves)))
            if not steps:
                continue
            values = np.array([[c[s] for s in steps] for _, c in curves])
            for _, c in curves:
                ax.plot(sorted(c), [c[s] for s in sorted(c)], color=f"C{i}", alpha=0.25, linewidth=0.8)
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, color=f"C{i}", label=f"{group.variant} ({len(values)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
            boundaries = {r.get("offline_updates") for r in group.runs if (r.get("online_updates") or 0) > 0}
            for b in sorted(x for x in boundaries if x and x not in marked):
                ax.axvline(b, linestyle=":", color="0.3", label=None if marked else "offline -> online")
                marked.add(b)
        behaviour = [v for g in groups if g.dataset == dataset for v in g.values("behaviour_normalized_score")]
        if behaviour and key == SCORE_KEY:
            ax.axhline(float(np.mean(behaviour)), linestyle="--", color="0.5", label="behaviour policy (dataset)")
        ax.set_xlabel("updates")
        ax.set_ylabel("normalized score" if key == SCORE_KEY else "return")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
        fig.tight_layout()
        path = out_dir / f"curve_{re.sub(r'[^A-Za-z0-9.-]+', '_', dataset).strip('_')}.png"
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        paths[dataset] = path
    return paths



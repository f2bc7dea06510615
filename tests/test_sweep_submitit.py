"""A real sweep through hydra-submitit-launcher's ``submitit_local`` launcher: the same
submitit code path as ``submitit_slurm`` (pickled job, job environment, signal handlers,
result pickles), with local processes instead of sbatch."""
from __future__ import annotations

import json

from tiny_runs import run_recipe, tiny_overrides

pytest_plugins = ("run_fixtures",)  # minari_root, tiny_run, tiny_finetune_run


def test_two_job_multirun_through_submitit_local(minari_root, tmp_path):
    sweep = tmp_path / "sweep"
    run_recipe("--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
               "seed=0,1", *tiny_overrides(), f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(summaries) == ["0_seed0", "1_seed1"]
    assert all(s["status"] == "completed" and s["updates"] == 8 for s in summaries.values())
    assert sorted(s["seed"] for s in summaries.values()) == [0, 1]
    # each job ran as a submitit job: its own folder with the submitted and the result pickles
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # "%j": the submission
    assert len(jobs) == 2
    for job in jobs:
        names = sorted(p.name for p in job.iterdir())
        assert any(n.endswith("_submitted.pkl") for n in names) and any(n.endswith("_result.pkl") for n in names)
        assert any(n.endswith("_log.out") for n in names), names

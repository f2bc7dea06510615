"""A real sweep through hydra-submitit-launcher's ``submitit_local`` launcher: the same
submitit code path as ``submitit_slurm`` (pickled job, job environment, signal handlers,
result pickles), with local processes instead of sbatch."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_runs import ROOT, tiny_overrides

pytest_plugins = ("run_fixtures",)  # minari_root, tiny_run, tiny_finetune_run


def submitit_task_of(sweep: Path, run_dir: Path) -> int:
    """The pid of the submitit task process (``python -m submitit.core._submit``) of ``sweep``
    running in ``run_dir``: the one holding the run's metrics.jsonl open."""
    metrics = str(run_dir / "metrics.jsonl")
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "submitit.core._submit" in cmdline and str(sweep) in cmdline and any(
                    os.readlink(fd) == metrics for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    raise LookupError(f"no submitit task writes {metrics}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the job's process through /proc")
def test_two_job_sweep_through_submitit_with_a_preempted_job_requeued(minari_root, tmp_path):
    """A real 2-job ``--multirun`` through ``submitit_local``; job 0 gets SIGUSR2 (the signal
    submitit has SLURM send before a time limit or preemption) after its second logged interval,
    long before its only periodic checkpoint (the last update): the run saves the state it had
    then, submitit's own handler requeues the job (the launcher's ``checkpoint``), it runs again
    in the same run directory, and ``resume=true`` continues from that saved state."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "recipes" / "offline_cql.py"), "--multirun", "hydra/launcher=submitit_local",
           "hydra.launcher.timeout_min=10", "seed=0,1", "resume=true",
           *tiny_overrides(num_updates=1000, **{"logger.every": 100, "checkpoint.every": 1000, "eval.every": 1000}),
           f"hydra.sweep.dir={sweep}"]
    preempted = sweep / "0_seed0"
    with subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as launcher:
        deadline = time.monotonic() + 240
        metrics = preempted / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # job 0 logged 2 intervals
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()[-3000:]
            time.sleep(0.1)
        assert not (preempted / "checkpoints" / "last.pt").exists()  # no periodic checkpoint to fall back on
        os.kill(submitit_task_of(sweep, preempted), signal.SIGUSR2)
        out, _ = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, out[-3000:]

    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(summaries) == ["0_seed0", "1_seed1"]
    assert all(s["status"] == "completed" and s["updates"] == 1000 for s in summaries.values())
    for name, launches in (("0_seed0", 2), ("1_seed1", 1)):  # job 0: its start and the requeued one
        assert len((sweep / name / "launches.jsonl").read_text().splitlines()) == launches, name
        steps = [json.loads(line)["step"] for line in (sweep / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(100, 1001, 100)), name  # no step twice, none missing
    # each job ran as a submitit job: its folder holds the submitted and the result pickles, and the logs
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # "%j": the submission
    assert len(jobs) == 2
    for job in jobs:
        names = sorted(p.name for p in job.iterdir())
        assert any(n.endswith("_submitted.pkl") for n in names) and any(n.endswith("_result.pkl") for n in names)
    requeued = [job.name for job in jobs if any("Requeued job" in p.read_text() for p in job.glob("*_log.*"))]
    assert len(requeued) == 1, requeued
    # the first launch saved its state at the signal, and the requeued one went on from there
    said = "\n".join(p.read_text() for p in (sweep / ".submitit" / requeued[0]).glob("*_log.*"))
    saved = re.search(r"preempted after update \d+; last good state \(update (\d+)\) saved", said)
    resumed = re.search(r"resumed from \S+last\.pt at update (\d+)", (preempted / "offline_cql.log").read_text())
    assert saved and resumed and 0 < int(saved[1]) == int(resumed[1]) < 1000, said[-3000:]

"""Runs you can trust (issue 11, case 3 and the fault-injection test): real signals sent to a
real ``python recipes/offline_cql.py`` process, and ``kill -9`` at random points, each
followed by the README's resume command."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import ROOT, tiny_overrides

from cql_modules.train.cli import EXIT_CODES
from cql_modules.train.run_logger import read_metrics
from cql_modules.train.state import load_checkpoint

pytest_plugins = ("run_fixtures",)  # minari_root: the tiny dataset, once per session

N = 300  # updates of the fault-injection run; a few seconds of training
LOGGED = {"logger.every": 10, "checkpoint.every": 30, "eval.every": 150, "logger.backends": "[csv,tensorboard]"}
TIMING = ("per_s", "seconds", "time_s")


def start(run_dir: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(run_dir.parent / f"{run_dir.name}.stderr", "a") as err:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "offline_cql.py"), *args,
                                 f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def last_step(run_dir: Path) -> int:
    records = read_metrics(run_dir / "metrics.jsonl")
    return records[-1]["step"] if records else 0


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Until ``run_dir`` has logged ``step`` (the run must still be going)."""
    deadline = time.monotonic() + timeout
    while last_step(run_dir) < step:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before update {step}"
        assert time.monotonic() < deadline, f"no update {step} after {timeout} s"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def untimed(tree):
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items()
                if not k.endswith(TIMING) and k not in ("run_dir", "checkpoint", "message", "resume")}
    if isinstance(tree, list):
        return [untimed(v) for v in tree]
    return tree


def logged_steps(run_dir: Path) -> dict[str, list[int]]:
    """The steps of every log: metrics.jsonl, each CSV file, each TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {"metrics.jsonl": [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]}
    for csv in (run_dir / "csv").glob("**/*.csv"):
        out[csv.name] = [int(float(ln.split(",")[0])) for ln in csv.read_text().splitlines()]
    for events in {p.parent for p in (run_dir / "tensorboard").glob("**/events.out.tfevents.*")}:
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[f"tensorboard:{tag}"] = [e.step for e in acc.Scalars(tag)]
    return out


def test_case3_sigterm_and_sigusr1_save_the_state_and_say_requeue(minari_root, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(num_updates=100_000, **{**LOGGED, "eval.every": 0})
    saved = 0
    for i, sig in enumerate((signal.SIGTERM, signal.SIGUSR1)):  # SLURM: SIGTERM on preemption, USR1 by --signal
        proc = start(run_dir, *overrides, *(["resume=true"] if i else []))  # the same command, resume=true
        wait_for_step(proc, run_dir, saved + 40)
        proc.send_signal(sig)
        assert finish(proc) == EXIT_CODES["preempted"]
        summary = json.loads((run_dir / "summary.json").read_text())
        step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
        # a signal between logging an interval and keeping its state cuts the logs back to
        # the saved state: the logs end where the checkpoint is, at most one interval earlier
        every = int(LOGGED["logger.every"])
        assert summary["status"] == "preempted" and summary["updates"] == step == last_step(run_dir) >= saved + 40 - every
        stderr = (tmp_path / "run.stderr").read_text()
        assert sig.name in stderr and "resume=true" in stderr
        assert "Traceback" not in stderr and "leaked semaphore" not in stderr
        saved = step
    for name, steps in logged_steps(run_dir).items():  # the second launch went on from the first one's state
        assert steps == sorted(set(steps)) and steps[-1] == saved, name


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(minari_root, tmp_path):
    overrides = tiny_overrides(num_updates=N, **LOGGED)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start(straight, *overrides)
    seed = int(os.environ.get("KILL_SEED", random.randrange(10_000)))
    print(f"kill points drawn with KILL_SEED={seed}")  # shown if the test fails: rerun with it
    rng = random.Random(seed)
    points = [rng.randrange(10, 30, 10), rng.randrange(40, N - 30, 10)]  # before the first checkpoint, after it
    for i, point in enumerate(points):
        args = overrides if i == 0 else ["resume=true"]  # the README's resume command, as is
        proc = start(killed, *args)
        wait_for_step(proc, killed, point)
        proc.kill()  # SIGKILL: nothing is saved, nothing is flushed
        proc.wait()
    assert finish(start(killed, "resume=true")) == 0
    assert finish(reference) == 0

    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, killed))
    assert a["step"] == b["step"] == N
    for key in a["loss"]:
        assert torch.equal(a["loss"][key], b["loss"][key]), key
    assert untimed(read_metrics(killed / "metrics.jsonl")) == untimed(read_metrics(straight / "metrics.jsonl"))
    s_a, s_b = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert untimed(s_b) == untimed(s_a) and s_b["status"] == "completed"
    for name, steps in logged_steps(killed).items():
        assert steps == sorted(set(steps)) and steps[-1] == N, name  # no step logged twice, anywhere


def test_a_launchers_sigusr2_stops_like_sigterm_and_its_handler_runs_after():
    """SIGUSR2 is taken only where a launcher handles it (submitit); its handler (checkpoint,
    requeue, exit) is not lost: :meth:`Preempted.chain` calls it once the state is saved."""
    from cql_modules.train.cli import Preempted, preemption_signals

    usr2 = signal.SIGUSR2
    before = signal.getsignal(usr2)
    signal.signal(usr2, signal.SIG_DFL)
    try:
        with preemption_signals():
            assert signal.getsignal(usr2) == signal.SIG_DFL  # no launcher handler: its default stays
        calls = []
        signal.signal(usr2, lambda signum, frame: calls.append(signum))
        launcher = signal.getsignal(usr2)
        with pytest.raises(Preempted) as stop, preemption_signals():
            os.kill(os.getpid(), usr2)
            time.sleep(5)  # the handler interrupts this in the main thread
        assert stop.value.signal == "SIGUSR2" and calls == []  # not yet: the run saves first
        assert signal.getsignal(usr2) is launcher  # restored on the way out
        stop.value.chain()
        assert calls == [usr2]
    finally:
        signal.signal(usr2, before)

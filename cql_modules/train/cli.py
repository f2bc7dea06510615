"""The command-line shell of a recipe: one-line errors with exit codes, strict configs,
resume from the run's own configuration, a run directory that is never overwritten, and
preemption (SIGTERM / SIGUSR1, and SIGUSR2 where a launcher such as submitit handles it)
handled like Ctrl-C.

A recipe gets all of it with ``main = hydra_entry(train, "offline_cql")``, or puts
:func:`guarded` under its own ``@hydra.main``.

Exit codes (README, "Runs and failures"):

====  =====================================================================
0     completed
1     unexpected error (full traceback)
2     invalid configuration (value, unknown key, changed field on resume; Hydra's own
      command-line errors too)
3     data problem (unknown dataset, invalid ``dataset.*`` value, unreadable / invalid data)
4     checkpoint problem (corrupt and no previous one, other data)
5     environment problem (device not available, package missing)
6     run directory already holds a run (use ``resume=true`` or a new dir), or another
      process is running in it
7     training diverged (NaN/inf; the last good state is saved)
75    preempted (SIGTERM / SIGUSR1 / a launcher's SIGUSR2; state saved): requeue with
      ``resume=true`` (75 is ``EX_TEMPFAIL`` of sysexits.h: "temporary failure, retry"); where
      a launcher had its own handler for the signal (submitit: checkpoint, ``scontrol requeue``,
      exit), that handler runs once the state is saved and decides the exit
130   interrupted (Ctrl-C; state saved)
====  =====================================================================

The traceback of an expected error is printed only with ``HYDRA_FULL_ERROR=1``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cql_modules.atomic import atomic_write
from cql_modules.train.config import ConfigError, check_keys
from cql_modules.train.state import (
    CheckpointError,
    find_checkpoint,
    load_resume_checkpoint,
)

log = logging.getLogger(__name__)

__all__ = ["EXIT_CODES", "Preempted", "RunDirError", "EnvironmentProblem", "ResumeConfigError",
           "guarded", "check_device", "resume_config", "holds_run", "RUN_CONFIG_FILE",
           "RESUMABLE_FIELDS", "preemption_signals"]

EXIT_CODES = {"config": 2, "data": 3, "checkpoint": 4, "environment": 5, "run_dir": 6, "diverged": 7,
              "preempted": 75, "interrupted": 130}
RUN_CONFIG_FILE = "run_config.yaml"  #: the run's configuration, written once when the run is created
LAUNCHES_FILE = "launches.jsonl"  #: one line per launch into the run dir: overrides and what they changed
#: Fields a resume may change: they decide how long and how visibly a run goes on, not what it learns.
RESUMABLE_FIELDS = ("resume", "num_updates", "online_updates", "num_threads", "eval.every", "logger.every",
                    "logger.progress", "logger.backends", "logger.wandb_mode", "checkpoint.every")


class Preempted(KeyboardInterrupt):
    """Raised in the main thread by a preemption signal (:class:`preemption_signals`): a loop
    that keeps its last good state on Ctrl-C does so here too (it is a ``KeyboardInterrupt``)
    and marks the run ``preempted``. ``previous``: the signal's handler before ours, if it was
    a callable (a launcher's), for :meth:`chain`."""

    def __init__(self, signum: int, previous: Callable[[int, Any], Any] | None = None, frame: Any = None) -> None:
        self.signum, self.signal = signum, signal.Signals(signum).name
        self.previous, self._frame = previous, frame
        super().__init__(f"preempted by {self.signal}")

    def chain(self) -> None:
        """Call the launcher's own handler of the signal, once the state is saved (submitit's
        checkpoints the job, requeues it and exits)."""
        if self.previous is not None:
            self.previous(self.signum, self._frame)


class RunDirError(RuntimeError):
    """The run directory already holds a run."""


class EnvironmentProblem(RuntimeError):
    """The machine cannot run the configuration (device, missing package)."""


class ResumeConfigError(ValueError):
    """A configuration the run cannot take: a resume changing fields that define the
    experiment, or a key the schema does not have."""


# ----------------------------------------------------------------------------- checks
def check_device(device: str) -> None:
    """Raise :class:`EnvironmentProblem` if ``device`` cannot be used here (before any data is loaded)."""
    if device in ("auto", "cpu"):
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem(f"device={device}: CUDA is not available on this machine "
                                     f"(torch {torch.__version__}); use device=cpu or device=auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise EnvironmentProblem(f"device={device}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                                     "use device=cuda:0 or device=auto")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem("device=mps: MPS is not available on this machine; use device=cpu or device=auto")


# ----------------------------------------------------------------------------- run directory
def holds_run(run_dir: Path, ckpt_subdir: str = "checkpoints") -> bool:
    """A run lives in ``run_dir``: its config, a checkpoint, logged metrics or a final summary
    (the ``failed`` summary of a run that never started does not count)."""
    summary = run_dir / "summary.json"
    return ((run_dir / RUN_CONFIG_FILE).is_file() or _has_results(run_dir, ckpt_subdir)
            or (summary.is_file() and _status(run_dir) != "failed"))


def _explicit_keys(overrides: list[str]) -> list[str]:
    """The config keys (or groups) named on the command line; ``hydra.*`` excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_delete():
            raise ResumeConfigError(f"{o.input_line}: deleting a field is not allowed on resume")
        key = o.key_or_group if not o.package else f"{o.package}.{o.key_or_group}"
        if not key.startswith("hydra.") and key != "hydra":
            keys.append(key)
    return keys


def resume_config(saved: Any, requested: Any, explicit: list[str] | None) -> tuple[Any, dict[str, tuple]]:
    """The configuration a resume runs with: ``saved`` (the run's own), with the fields named
    on the command line (``explicit``; None: every field) taken from ``requested`` if they are
    :data:`RESUMABLE_FIELDS`. Any other requested difference raises
    :class:`ResumeConfigError` listing field, saved and requested value. Returns
    ``(config, changes)``, ``changes``: field -> (saved, requested)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    saved_c = OmegaConf.to_container(saved, resolve=True)
    requested_c = OmegaConf.to_container(requested, resolve=True)

    def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(tree, dict):
            out: dict[str, Any] = {}
            for k, v in tree.items():
                out.update(leaves(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: tree}

    old, new = leaves(saved_c), leaves(requested_c)
    names = explicit if explicit is not None else list(new)
    named = [k for k in new if k != "resume" and any(k == n or k.startswith(n + ".") for n in names)]
    changed = {k: (old.get(k), new[k]) for k in named if old.get(k, new[k]) != new[k]}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_FIELDS}
    if refused:
        listed = "; ".join(f"{k}: saved {a!r}, requested {b!r}" for k, (a, b) in sorted(refused.items()))
        raise ResumeConfigError(f"resume cannot change what the run is: {listed}. Drop these overrides to "
                                "continue the run, or start a new run in a new hydra.run.dir")
    try:
        config = OmegaConf.merge(requested, saved)  # the requested node keeps its schema type
    except OmegaConfBaseException as err:
        raise ResumeConfigError(f"the run's saved configuration does not fit this version's schema "
                                f"({str(err).splitlines()[0]}); resume it with the version that made it") from err
    for k, (_, b) in changed.items():
        OmegaConf.update(config, k, b, merge=False)
    config.resume = True
    return config, changed


# ----------------------------------------------------------------------------- signals
class preemption_signals:
    """Context: SIGTERM and SIGUSR1 raise :class:`Preempted` in the main thread (once; a
    second signal while the state is being saved is logged and ignored), and so does SIGUSR2
    where a launcher has installed a handler for it (submitit's time-limit / preemption
    signal; without one SIGUSR2 keeps its default). A handler installed before ours travels
    on the :class:`Preempted` (:meth:`Preempted.chain`)."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)
    LAUNCHER_SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None),) if s)  #: taken only from a launcher

    def __enter__(self) -> preemption_signals:
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (a launcher may run a job in another thread)
        for s in self.SIGNALS + self.LAUNCHER_SIGNALS:
            if s in self.SIGNALS or callable(signal.getsignal(s)):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            previous = self._old.get(signum)
            raise Preempted(signum, previous if callable(previous) else None, frame)
        log.warning("%s received while stopping: ignored", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------- errors
def _error_class(err: BaseException) -> str | None:
    """The exit-code class of an expected error, None for an unexpected one."""
    from cql_modules.data import DatasetError

    if isinstance(err, RunDirError):
        return "run_dir"
    if isinstance(err, CheckpointError):
        return "checkpoint"
    if isinstance(err, DatasetError) or (isinstance(err, ConfigError) and str(err).startswith("dataset.")):
        return "data"  # the data, or the dataset.* fields that name and prepare it
    if isinstance(err, (ConfigError, ResumeConfigError)):
        return "config"
    if isinstance(err, (EnvironmentProblem, ModuleNotFoundError, torch.OutOfMemoryError)):
        return "environment"
    return None


def _one_line(kind: str, err: BaseException) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ModuleNotFoundError) and "pip install" not in message:
        message += " (install the extras: pip install 'cql-modules[all]')"
    return f"{kind.replace('_', ' ')} error: {message}"


# ----------------------------------------------------------------------------- the wrapper
class _Started:
    """How many tasks :func:`guarded` has started in this process (Hydra's own errors come
    before), and the expected-error kinds of the sweep jobs that failed (a sweep goes on)."""

    count = 0
    failures: list[str] = []


def guarded(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a recipe's Hydra task (see the module docstring for what it adds)."""

    @functools.wraps(task)
    def wrapper(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig

        _Started.count += 1
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        single = hydra_cfg.mode.name == "RUN"
        try:
            lock = _lock(run_dir)
        except RunDirError as err:  # another process runs here: touch nothing
            print(_one_line("run_dir", err), file=sys.stderr)
            if single:
                sys.exit(EXIT_CODES["run_dir"])
            _Started.failures.append("run_dir")
            return None
        try:
            return _launch(task, cfg, hydra_cfg, run_dir, single)
        finally:
            if lock is not None:
                lock.close()

    return wrapper


def _lock(run_dir: Path) -> Any:
    """An exclusive lock on ``run_dir`` for this process's lifetime (released by the OS even on
    ``kill -9``); :class:`RunDirError` if another process holds it. None where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a")  # noqa: SIM115  (held open: the lock lives as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunDirError(f"{run_dir} is in use by another process; wait for it to end, or choose a new "
                          "hydra.run.dir") from None
    return handle


def _launch(task: Callable[[Any], Any], cfg: Any, hydra_cfg: Any, run_dir: Path, single: bool) -> Any:
    """:func:`guarded`'s work once it holds the run directory."""
    from omegaconf import OmegaConf

    run_config = run_dir / RUN_CONFIG_FILE
    before = run_config.read_bytes() if run_config.is_file() else None
    ckpt_subdir = str(OmegaConf.select(cfg, "checkpoint.dir", default="checkpoints"))
    fresh = not holds_run(run_dir, ckpt_subdir)
    try:
        check_keys(cfg)  # before anything else (validate_config checks them again)
        check_device(str(cfg.device))
        changes: dict[str, tuple] = {}
        if not fresh:
            if not cfg.resume:
                raise RunDirError(f"{run_dir} already holds a run; continue it with resume=true, or choose "
                                  "a new hydra.run.dir")
            saved = _saved_config(run_dir, ckpt_subdir)
            if saved is not None:
                cfg, changes = resume_config(saved, cfg, _explicit_keys(list(hydra_cfg.overrides.task)))
        with atomic_write(run_config) as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=True))
        with open(run_dir / LAUNCHES_FILE, "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resume": bool(cfg.resume),
                                "overrides": list(hydra_cfg.overrides.task),
                                "changed": {k: list(v) for k, v in changes.items()}}) + "\n")
        for k, (a, b) in changes.items():
            log.info("resume: %s %r -> %r", k, a, b)
        with preemption_signals():
            result = task(cfg)
        if single and _status(run_dir) == "diverged":
            sys.exit(EXIT_CODES["diverged"])
        return result
    except KeyboardInterrupt as err:
        code = EXIT_CODES["preempted" if isinstance(err, Preempted) else "interrupted"]
        print(f"{str(err) or 'interrupted'}: rerun the same command with resume=true hydra.run.dir={run_dir} "
              "to continue", file=sys.stderr)
        if isinstance(err, Preempted):
            err.chain()  # the state is saved: now the launcher's own handler (submitit: requeue, exit)
        sys.exit(code)  # a sweep stops too: the signal was for the whole process
    except Exception as err:
        # A new run records its failure; a resume leaves the run's files as they were.
        kind = _error_class(err)
        if not fresh or not _has_results(run_dir, ckpt_subdir):
            _restore(run_config, before)
        if fresh:
            from cql_modules.train.run_logger import record_failure

            record_failure(run_dir, _one_line(kind or "unexpected", err), cfg)
        if kind is None:
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        print(_one_line(kind, err), file=sys.stderr)
        if single:
            sys.exit(EXIT_CODES[kind])
        _Started.failures.append(kind)
        return None


def _saved_config(run_dir: Path, ckpt_subdir: str) -> Any:
    """The run's own configuration: ``run_config.yaml``, else the checkpoint's copy."""
    from omegaconf import OmegaConf

    if (run_dir / RUN_CONFIG_FILE).is_file():
        return OmegaConf.load(run_dir / RUN_CONFIG_FILE)
    found = load_resume_checkpoint(run_dir, subdir=ckpt_subdir)
    config = found and found[0].get("extra", {}).get("config")
    return None if config is None else OmegaConf.create(config)


def _status(run_dir: Path) -> str | None:
    """``summary.json``'s status; None if absent, "unreadable" if it cannot be read."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def _has_results(run_dir: Path, ckpt_subdir: str = "checkpoints") -> bool:
    """A checkpoint or logged metrics."""
    metrics = run_dir / "metrics.jsonl"
    logged = metrics.is_file() and metrics.stat().st_size > 0
    return logged or find_checkpoint(run_dir, subdir=ckpt_subdir) is not None


def _restore(path: Path, content: bytes | None) -> None:
    """Put a file back as it was before this launch (removed if it did not exist)."""
    if content is None:
        path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_bytes() != content:
        with atomic_write(path, "wb") as f:
            f.write(content)


def hydra_entry(train: Callable[[Any, Path], dict], config_name: str) -> Callable[[], Any]:
    """A recipe's command line: Hydra with ``configs/<config_name>.yaml`` and :func:`guarded`
    around ``train(cfg, run_dir)``; Hydra's sweepers get the final normalized score."""
    import hydra

    @functools.wraps(train)  # Hydra unwraps to ``train``: configs/ and the job name come from the recipe's file
    def task(cfg: Any) -> float | None:
        from hydra.core.hydra_config import HydraConfig

        return train(cfg, Path(HydraConfig.get().runtime.output_dir))["final_normalized_score"]

    entry = hydra.main(config_path="../configs", config_name=config_name, version_base="1.3")(guarded(task))

    @functools.wraps(entry)
    def main() -> Any:
        started, failed = _Started.count, len(_Started.failures)
        try:
            result = entry()
        except SystemExit as stop:  # Hydra could not compose the command line: a config error
            if stop.code == 1 and _Started.count == started:
                sys.exit(EXIT_CODES["config"])
            raise
        # In-process sweep jobs (Hydra's basic launcher) that failed with an expected error: the
        # sweep ran on, but its exit code is the first failure's, so scripts can tell.
        kinds = _Started.failures[failed:]
        if kinds:
            print(f"sweep: {len(kinds)} of {_Started.count - started} jobs failed ({', '.join(kinds)}); "
                  "see the lines above", file=sys.stderr)
            sys.exit(EXIT_CODES[kinds[0]])
        return result

    return main


"""Training state: seeding, RNG capture/restore, checkpoints and the data fingerprint.

* :func:`seed_everything`, :func:`capture_rng_state` / :func:`restore_rng_state` (torch CPU +
  CUDA, numpy, python, the replay buffer's own generator if it has one) and
  :func:`preserve_rng`, so that evaluation never moves the training random stream;
* :func:`training_state` / :func:`load_training_state`: parameters, target networks,
  optimizer, temperatures, update counters and RNG as one CPU dict;
* :func:`save_checkpoint` (atomic, keeping the previous checkpoint beside the last one) /
  :func:`load_checkpoint` (a file that cannot be read raises :class:`CorruptCheckpointError`
  naming it as corrupt) / :func:`find_checkpoint` / :func:`load_resume_checkpoint` (falls
  back to the previous checkpoint, with its own files: :func:`saved_with`);
* :class:`LastGoodState`: the state at the last finite logging boundary;
* :func:`data_fingerprint` / :func:`check_same_data`: a checkpoint resumes only on the data
  it was trained on.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cql_modules.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "CorruptCheckpointError",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "preserve_rng",
    "training_state",
    "load_training_state",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "previous_checkpoint",
    "saved_with",
    "load_resume_checkpoint",
    "LastGoodState",
    "data_fingerprint",
    "check_same_data",
]

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, wrong version, other data)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint, or a file saved with it, that cannot be read or does not belong to it:
    a resume falls back to the previous checkpoint."""


# ----------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _buffer_generator(replay_buffer: Any) -> torch.Generator | None:
    # TorchRL keeps a buffer's own generator in the private ``_rng`` and has no getter for it
    gen = getattr(replay_buffer, "_rng", None) if replay_buffer is not None else None
    return gen if isinstance(gen, torch.Generator) else None


def capture_rng_state(replay_buffer: Any = None) -> dict[str, Any]:
    """Every random stream the training loop draws from, as checkpointable values.

    TorchRL's ``RandomSampler`` draws batch indices with ``torch.randint(...,
    generator=storage._rng)``, i.e. from torch's global generator unless the buffer was
    given its own (``ReplayBuffer(generator=...)`` / ``set_rng``); both are captured.
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = _buffer_generator(replay_buffer)
    if gen is not None:
        state["replay_buffer"] = gen.get_state()
    return state


def restore_rng_state(state: dict[str, Any], replay_buffer: Any = None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen = _buffer_generator(replay_buffer)
    if gen is not None and "replay_buffer" in state:
        gen.set_state(state["replay_buffer"])


@contextlib.contextmanager
def preserve_rng(replay_buffer: Any = None) -> Iterator[None]:
    """Run a block (e.g. evaluation) without moving any training random stream."""
    state = capture_rng_state(replay_buffer)
    try:
        yield
    finally:
        restore_rng_state(state, replay_buffer)


# ----------------------------------------------------------------------------- state
def _cpu_clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_clone(v) for v in obj)
    return copy.deepcopy(obj)


def training_state(
    loss: torch.nn.Module,
    update_step: Any,
    *,
    replay_buffer: Any = None,
    step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue training exactly, as a CPU copy (safe to keep).

    ``loss.state_dict()`` holds the actor, the critic ensemble, the target critics,
    ``log_alpha`` / ``log_alpha_prime`` and the ``n_updates`` buffer; the optimizer holds
    Adam's moments; ``update_step.n_steps`` drives the target-update period; the RNG
    states make the following batches and policy samples identical. ``extra`` holds the
    recipe's own values (normalizer, evaluation history, wall time, config, ...).
    """
    return {
        "version": CHECKPOINT_VERSION,
        "step": int(update_step.n_steps if step is None else step),
        "loss": _cpu_clone(loss.state_dict()),
        "optimizer": _cpu_clone(update_step.optimizer.state_dict()),
        "update_step": {"n_steps": int(update_step.n_steps)},
        "rng": _cpu_clone(capture_rng_state(replay_buffer)),
        "extra": _cpu_clone(extra or {}),
    }


def load_training_state(
    state: dict[str, Any], loss: torch.nn.Module, update_step: Any, *, replay_buffer: Any = None
) -> dict[str, Any]:
    """Inverse of :func:`training_state`; returns its ``extra`` dict."""
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint version {state.get('version')} != {CHECKPOINT_VERSION}")
    loss.load_state_dict(state["loss"])
    update_step.optimizer.load_state_dict(state["optimizer"])
    update_step.n_steps = int(state["update_step"]["n_steps"])
    restore_rng_state(state["rng"], replay_buffer)
    return state.get("extra", {})


# ----------------------------------------------------------------------------- checkpoints
def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint ``path`` replaced: ``last.pt`` ->
    ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def saved_with(checkpoint: str | os.PathLike, name: str) -> Path:
    """The file ``name`` (e.g. ``online_rows.pt``) saved together with ``checkpoint``: beside
    it, and the previous one beside the previous checkpoint (``last.prev.pt`` ->
    ``online_rows.prev.pt``), so a checkpoint is never paired with another one's files."""
    checkpoint = Path(checkpoint)
    path = checkpoint.with_name(name)
    return previous_checkpoint(path) if checkpoint.stem.endswith(".prev") else path


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, *, keep_previous: bool = True) -> Path:
    """``torch.save`` atomically (temp file, fsync, ``os.replace``): a reader sees the old
    file or the new one, never a half-written one.

    ``keep_previous``: the file being replaced becomes :func:`previous_checkpoint` first
    (a hard link, then ``os.replace``), so at every instant both names hold a complete
    checkpoint and a resume has one to fall back to.
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
        if keep_previous and path.is_file():
            prev = previous_checkpoint(path)
            link = prev.with_name(f".{prev.name}.link")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.link(path, link)
            os.replace(link, prev)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only``: plain
    tensors, numbers, strings, lists and dicts only). Raises :class:`CorruptCheckpointError`
    if the file cannot be read (truncated, not a checkpoint)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises RuntimeError, OSError, pickle and zip errors here
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt (holds a {type(state).__name__}, not a dict)")
    return state


def find_checkpoint(where: str | os.PathLike, name: str = "last.pt", subdir: str = "checkpoints") -> Path | None:
    """A checkpoint file given itself, its directory, or a run directory; None if absent."""
    where = Path(where).expanduser()
    for candidate in (where, where / name, where / subdir / name):
        if candidate.is_file():
            return candidate
    return None


def load_resume_checkpoint(where: str | os.PathLike, name: str = "last.pt", subdir: str = "checkpoints", *,
                           companion: Callable[[dict[str, Any], Path], Any] | None = None,
                           ) -> tuple[dict[str, Any], Path] | None:
    """``(state, path)`` of the checkpoint to resume from (see :func:`find_checkpoint`), None
    if there is none. ``companion(state, path)`` reads what else the checkpoint needs (the
    files saved with it, :func:`saved_with`). If the checkpoint or a companion file cannot be
    used (:class:`CorruptCheckpointError`), the previous checkpoint kept beside it is used,
    with its own files and a warning naming both; if that fails too,
    :class:`CheckpointError` says so."""
    path = find_checkpoint(where, name, subdir)
    if path is None:
        return None

    def load(p: Path) -> dict[str, Any]:
        state = load_checkpoint(p)
        if companion is not None:
            companion(state, p)
        return state

    try:
        return load(path), path
    except CorruptCheckpointError as err:
        prev = previous_checkpoint(path)
        if not prev.is_file():
            raise CheckpointError(f"{err}; no previous checkpoint to fall back to: start a new run "
                                  "(a new hydra.run.dir)") from err
        try:
            state = load(prev)
        except CorruptCheckpointError as err2:
            raise CheckpointError(f"{err}; the previous one is unusable too ({err2})") from err2
        log.warning("%s; resuming from the previous checkpoint %s (update %s)", err, prev, state.get("step"))
        return state, prev


class LastGoodState:
    """The training state at the last logging boundary whose metrics were all finite.

    ``keep(fn)`` stores ``fn()`` (a CPU copy, e.g. :func:`training_state`); when the
    NaN guard fires the recipe writes ``state`` out, so no update of a broken interval
    is ever checkpointed.
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def keep(self, make_state: Callable[[], dict[str, Any]]) -> None:
        self.state = make_state()

    @property
    def step(self) -> int | None:
        return None if self.state is None else int(self.state["step"])


# ----------------------------------------------------------------------------- data
def data_fingerprint(info: Any) -> dict[str, Any]:
    """What a checkpoint must agree on with the data it resumes on (a ``DatasetInfo``)."""
    normalizer = getattr(info, "normalizer", None)
    modification = getattr(info, "reward_modification", None)
    return {
        "name": str(info.name),
        "num_transitions": int(info.num_transitions),
        "normalizer": None if normalizer is None else normalizer.state_dict(),
        "reward_modification": None if modification is None else modification.to_dict(),
    }


def check_same_data(saved: dict[str, Any], info: Any) -> None:
    """Raise :class:`CheckpointError` if the dataset (its size, normalizer or reward
    modification) changed since the checkpoint was written: the saved networks would see
    differently scaled inputs."""
    now = data_fingerprint(info)
    problems = []
    if saved["num_transitions"] != now["num_transitions"]:
        problems.append(f"{saved['num_transitions']} transitions then, {now['num_transitions']} now")
    a, b = saved["normalizer"], now["normalizer"]
    if (a is None) != (b is None) or (a is not None and not all(torch.allclose(a[k], b[k]) for k in ("loc", "scale"))):
        problems.append("the state normalizer differs")
    if saved["reward_modification"] != now["reward_modification"]:
        problems.append(f"reward modification {saved['reward_modification']} then, {now['reward_modification']} now")
    if problems:
        raise CheckpointError(f"cannot resume: dataset '{now['name']}' changed since the checkpoint: "
                              + "; ".join(problems))

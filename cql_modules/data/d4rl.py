"""D4RL datasets: the name table, the local cache, download, and the HDF5 reader.

The ``d4rl`` package is not needed (it does not import with current gym/mujoco): files are
read directly with h5py. Layout: ``observations``, ``actions``, ``rewards``, ``terminals``
(true termination), ``timeouts`` (time-limit truncation), optionally ``next_observations``.

Semantics follow ``d4rl.qlearning_dataset``: episodes end at ``terminals | timeouts``; when
``next_observations`` is absent the next observation is the following row, so the last step
of a timed-out episode (and a non-terminal last row of the file), whose next observation is
unknown, is dropped. With ``next_observations`` every row is kept.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_write
from .errors import DatasetError, DatasetNotFoundError
from .transitions import Transitions

_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"


@dataclass(frozen=True)
class D4RLEntry:
    """What is known about one D4RL dataset name."""

    url: str
    env_id: str | None  # gymnasium environment to evaluate in (None: none available)
    ref_min_score: float
    ref_max_score: float
    sparse_reward: bool = False

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


def _table() -> dict[str, D4RLEntry]:
    # (gymnasium v5 equivalent, D4RL ref_min_score, ref_max_score) from d4rl/infos.py.
    # Ant-v5 observations (105) differ from D4RL ant (111), so it has no evaluation env.
    locomotion = {
        "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
        "hopper": ("Hopper-v5", -20.272305, 3234.3),
        "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
        "ant": (None, -325.6, 3879.7),
    }
    kinds = ("random", "medium", "expert", "medium-replay", "medium-expert", "full-replay")
    table = {
        f"{env}-{kind}-v2": D4RLEntry(
            f"{_BASE_URL}/gym_mujoco_v2/{env}_{kind.replace('-', '_')}-v2.hdf5", env_id, lo, hi
        )
        for env, (env_id, lo, hi) in locomotion.items()
        for kind in kinds
    }
    antmaze = {  # name -> (maze file name, multistart/multigoal flags); no gymnasium env
        "umaze": "u-maze_noisy_multistart_False_multigoal_False",
        "umaze-diverse": "u-maze_noisy_multistart_True_multigoal_True",
        "medium-play": "big-maze_noisy_multistart_True_multigoal_False",
        "medium-diverse": "big-maze_noisy_multistart_True_multigoal_True",
        "large-play": "hardest-maze_noisy_multistart_True_multigoal_False",
        "large-diverse": "hardest-maze_noisy_multistart_True_multigoal_True",
    }
    for name, stem in antmaze.items():
        table[f"antmaze-{name}-v2"] = D4RLEntry(
            f"{_BASE_URL}/ant_maze_v2/Ant_maze_{stem}_sparse_fixed.hdf5", None, 0.0, 1.0, sparse_reward=True
        )
    adroit = {  # d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE of the -v1 hand tasks; no gymnasium env
        "pen": (96.262799, 3258.3708),
        "door": (-56.512763, 2880.5693),
        "hammer": (-274.856578, 12794.134825),
        "relocate": (-6.425911, 4233.877797),
    }
    for task, (lo, hi) in adroit.items():
        for kind in ("human", "cloned", "expert"):
            table[f"{task}-{kind}-v1"] = D4RLEntry(f"{_BASE_URL}/hand_dapg_v1/{task}-{kind}-v1.hdf5", None, lo, hi)
    return table


D4RL_DATASETS: dict[str, D4RLEntry] = _table()


def d4rl_cache_dir() -> Path:
    """``$D4RL_DATASET_DIR`` if set, else ``~/.d4rl/datasets`` (d4rl's own default)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets")).expanduser()


def resolve_d4rl_name(name: str, download: bool = False) -> Path:
    """Path of the cached HDF5 file of a D4RL name, downloading it if asked."""
    entry = D4RL_DATASETS[name]
    path = d4rl_cache_dir() / entry.filename
    if path.exists():
        return path
    if not download:
        raise DatasetNotFoundError(
            f"D4RL dataset '{name}' not found at {path} (cache: $D4RL_DATASET_DIR or ~/.d4rl/datasets); "
            f"pass download=True to fetch it from {entry.url}"
        )
    _download(entry.url, path)
    return path


def _download(url: str, path: Path) -> None:
    """Download to a temporary file in the cache, then move it into place atomically."""
    from tqdm.auto import tqdm

    try:
        with atomic_write(path, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {path.name}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:  # URLError and socket errors are OSErrors
        raise DatasetNotFoundError(f"could not download {url} to {path}: {err}") from err


_REQUIRED = ("observations", "actions", "rewards", "terminals")


def read_d4rl_hdf5(path: str | os.PathLike) -> Transitions:
    """Read a D4RL-layout HDF5 file into :class:`Transitions` (``qlearning_dataset`` semantics)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"HDF5 file not found: {path} (check the path, or give a D4RL name)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in _REQUIRED if k not in f]
            if missing:
                raise DatasetError(f"{path}: not a D4RL dataset, missing keys {missing} (has {sorted(f.keys())})")
            data = {k: f[k][()] for k in (*_REQUIRED, "timeouts", "next_observations") if k in f}
    except DatasetError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/RuntimeError on truncated or corrupt files
        raise DatasetError(f"{path}: corrupt or truncated HDF5 file ({type(err).__name__}: {err})") from err

    obs, actions = data["observations"], data["actions"]
    rewards = data["rewards"].reshape(-1)
    terminals = data["terminals"].reshape(-1).astype(bool)
    timeouts = data["timeouts"].reshape(-1).astype(bool) if "timeouts" in data else np.zeros_like(terminals)
    n = len(rewards)
    if n == 0:
        raise DatasetError(f"{path}: the file holds 0 transitions (an empty or unfinished export?)")
    for k in ("observations", "actions", "terminals"):
        if len(data[k]) != n:
            raise DatasetError(f"{path}: '{k}' has {len(data[k])} rows but 'rewards' has {n}")
    if len(timeouts) != n:
        raise DatasetError(f"{path}: 'timeouts' has {len(timeouts)} rows but 'rewards' has {n}")
    if obs.ndim != 2 or actions.ndim != 2:
        raise DatasetError(f"{path}: expected 2-D observations and actions, got {obs.shape} and {actions.shape}")

    ends = terminals | timeouts
    ends[-1] = True
    if "next_observations" in data:
        next_obs = data["next_observations"]
        if next_obs.shape != obs.shape:
            raise DatasetError(f"{path}: 'next_observations' has shape {next_obs.shape}, expected {obs.shape}")
        return Transitions(obs, actions, rewards, next_obs, terminals, timeouts, ends)

    # Next observation = following row; unknown after a time-out and after the last row.
    next_obs = np.concatenate([obs[1:], obs[-1:]])
    keep = ~(timeouts & ~terminals)
    keep[-1] = terminals[-1]
    episode = np.concatenate(([0], np.cumsum(ends[:-1])))
    ep_timeout = timeouts[ends]  # did episode e end by a time-out?
    ep_kept = episode[keep]
    kept_ends = np.append(ep_kept[1:] != ep_kept[:-1], True)
    kept_terminals = terminals[keep]
    kept_timeouts = kept_ends & ep_timeout[ep_kept] & ~kept_terminals
    return Transitions(
        obs[keep], actions[keep], rewards[keep], next_obs[keep], kept_terminals, kept_timeouts, kept_ends
    )

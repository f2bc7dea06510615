"""Load time of a synthetic D4RL-layout HDF5 file (default: 2M transitions, 17-d obs, 6-d actions).

    python benchmarks/bench_load.py [--transitions 2000000] [--storage memory|memmap]

Episodes are 1000 steps ending in a time-out (every 7th ends early by termination), without
``next_observations`` (so the qlearning-style dropping runs). Reports seconds per phase.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from cql_modules.data import keys, load_dataset


def write_synthetic(path: Path, n: int, obs_dim: int = 17, act_dim: int = 6, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[999::1000] = True
    terminals = np.zeros(n, dtype=bool)
    terminals[500::7000] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, obs_dim), dtype=np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = rng.standard_normal(n, dtype=np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=2_000_000)
    parser.add_argument("--storage", default="memory", choices=["memory", "memmap"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.hdf5"
        start = time.perf_counter()
        write_synthetic(path, args.transitions)
        size = path.stat().st_size / 2**20
        print(f"wrote {args.transitions} transitions in {time.perf_counter() - start:.2f}s ({size:.0f} MiB)")
        for _ in range(args.repeats):
            start = time.perf_counter()
            buffer, info = load_dataset(path, storage=args.storage, scratch_dir=Path(tmp) / "mm", normalize_reward=True)
            loaded = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(100):
                batch = buffer.sample()
            sample = (time.perf_counter() - start) / 100
            print(
                f"load_dataset ({args.storage}): {loaded:.2f}s for {info.num_transitions} transitions "
                f"({info.episodes.count} episodes); sample(256): {sample * 1e3:.2f} ms; "
                f"obs {tuple(batch[keys.OBSERVATION].shape)} {batch[keys.OBSERVATION].dtype}"
            )
            del buffer


if __name__ == "__main__":
    main()

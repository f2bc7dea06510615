"""Block size of the fused critic pass (``fused.py``) from the thread count and the L3 size.

Besides its GEMMs, which the T threads share, every block costs a fixed serial amount
(Python and the block's dLoss/dQ by autograd, ~1 ms per block at CORL's shape). So the
rows per block grow with T, keeping that serial part the same fraction of a block:
``ROWS_PER_THREAD`` rows per thread. Measured on an AMD EPYC (Zen 4, 1 MiB L2 per core,
32 MiB L3) with ``benchmarks/bench_block_rows.py``: at 1 thread 2048 rows beat 1024, 2976,
4096 and 8192 by 2-8% in fp32 and in bf16; at 2 threads 4096 beat 2048 by 1.6% paired over
8 rounds and by 3-4% in two shorter sweeps.
The values a block's backward re-reads, the hidden activations of its K critics, stay
within the L3 cache: at 8192 rows (48 MiB of them at CORL's shape) both thread counts were
slower. Before the pass became allocation-free, an L2-derived size (448 rows
at 1 thread) measured 7% slower than 2048.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

__all__ = ["ROWS_PER_THREAD", "cpu_cache_bytes", "default_block_rows"]

ROWS_PER_THREAD = 2048
_SIZE = re.compile(r"^(\d+)\s*([KMG]?)", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
FALLBACK_L3_BYTES = 32 << 20  # when sysfs says nothing (non-Linux)


@functools.cache
def cpu_cache_bytes() -> dict[str, int]:
    """Per-core data cache sizes of CPU 0 from sysfs, e.g. ``{"L1d": 32768, "L2": 1048576,
    "L3": 33554432}`` (an L3 is shared: its full size). Empty off Linux."""
    out: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            m = _SIZE.match((index / "size").read_text().strip())
        except OSError:
            continue
        if m is None or kind == "Instruction":
            continue
        name = f"L{level}" + ("d" if kind == "Data" else "")
        out[name] = int(m.group(1)) * _UNITS[m.group(2).upper()]
    return out


def default_block_rows(hidden_width: int, n_critics: int, n_hidden_layers: int,
                       dtype: torch.dtype = torch.float32, threads: int | None = None,
                       l3_bytes: int | None = None) -> int:
    """``ROWS_PER_THREAD x threads`` rows (default: torch's thread count, at most the usable
    CPUs), at most as many as keep a block's hidden activations in the L3 cache
    (``n_critics x n_hidden_layers x hidden_width`` values of ``dtype`` per row); a
    multiple of 64, at least 64.

    >>> default_block_rows(256, 2, 3, torch.float32, threads=2, l3_bytes=32 << 20)
    4096
    """
    l3 = l3_bytes if l3_bytes is not None else cpu_cache_bytes().get("L3", FALLBACK_L3_BYTES)
    if threads is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, min(torch.get_num_threads(), usable))
    row_bytes = max(1, n_critics * n_hidden_layers) * hidden_width * torch.empty((), dtype=dtype).element_size()
    return max(64, min(ROWS_PER_THREAD * threads, l3 // row_bytes) // 64 * 64)

"""Block size of the fused critic pass (``fused.py``) from the CPU's cache sizes.

The fused pass runs forward, dLoss/dQ and backward for a block of rows while the
block's activations are still in cache. Small blocks keep each layer's matmul operands
in the cores' private L2 (the matmuls then run near their peak) but cost one Python
iteration of ~25 operations per critic each; large blocks spill to L3 or DRAM. Measured on an AMD
EPYC (Zen 4, 1 MiB L2 per core, 1 thread, CORL's shape): the fused pass takes the same
time for blocks of 124 to 992 rows and 10% / 30% / 50% more at 2046 / 4092 / 7936 rows.
The default takes the middle of that plateau: one layer's activation block of all K
critics (``K x rows x (width + 1)`` values) fills the L2 of the cores running the
matmuls. ``benchmarks/bench_block_rows.py`` measures the update rate around this choice.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

__all__ = ["cpu_cache_bytes", "default_block_rows"]

_SIZE = re.compile(r"^(\d+)\s*([KMG]?)", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
FALLBACK_L2_BYTES = 1 << 20  # when sysfs says nothing (non-Linux): 1 MiB per core


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


def default_block_rows(hidden_width: int, n_critics: int, dtype: torch.dtype = torch.float32,
                       threads: int | None = None, l2_bytes: int | None = None) -> int:
    """Rows per block such that one layer's activation block of all critics
    (``n_critics x rows x (hidden_width + 1)`` values of ``dtype``) fills the L2 of the
    ``threads`` cores running the matmuls (default: torch's thread count, at most the
    usable CPUs), rounded down to a multiple of 64, at least 64.

    >>> default_block_rows(256, 2, torch.float32, threads=1, l2_bytes=1 << 20)
    448
    """
    l2 = l2_bytes if l2_bytes is not None else cpu_cache_bytes().get("L2", FALLBACK_L2_BYTES)
    if threads is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, min(torch.get_num_threads(), usable))
    row_bytes = n_critics * (hidden_width + 1) * torch.empty((), dtype=dtype).element_size()
    return max(64, (threads * l2 // row_bytes) // 64 * 64)

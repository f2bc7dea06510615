#!/usr/bin/env python
"""The CPU result files of ``benchmarks/README.md``, one command per machine.

Waits until the machine is quiet (1-minute load average below ``--max-load``, checked
every 30 s, up to ``--wait-minutes``), then runs, each in its own process, and writes
``benchmarks/results/<cpu>-<what>.json`` (``<cpu>`` e.g. ``amd-epyc``):

* ``<cpu>-2t.json`` / ``<cpu>-1t.json``: ``bench_update.py`` at 2 and 1 threads, 5 rounds:
  ours (eager fp32, eager with fixed 2048-row blocks, bf16 critics), the CORL-structured
  update and torchrl's ``CQLLoss``;
* ``<cpu>-blocks-2t.json`` / ``<cpu>-blocks-1t.json``: ``bench_block_rows.py``;
* ``<cpu>-profile-1t.json``: ``profile_update.py`` (phase x kind-of-work table).

    python benchmarks/cpu_suite.py                 # all of it (~12 min on a quiet 2-core machine)
    python benchmarks/cpu_suite.py --only 2t,1t    # the two speed tables only
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = ["--rounds", "5", "--modes", "eager,eager-2048-blocks,bf16-critic", "--baselines", "corl-structured,torchrl-cql"]


def cpu_slug() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1) if m else "cpu"
    except OSError:
        model = "cpu"
    model = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*$|\d+-Core", " ", model)
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") or "cpu"


def jobs(name: str) -> dict[str, list[str]]:
    out = HERE / "results"
    return {
        "2t": ["bench_update.py", "--threads", "2", *COMMON, "--json", f"{out}/{name}-2t.json"],
        "1t": ["bench_update.py", "--threads", "1", *COMMON, "--json", f"{out}/{name}-1t.json"],
        "blocks-2t": ["bench_block_rows.py", "--threads", "2", "--json", f"{out}/{name}-blocks-2t.json"],
        "blocks-1t": ["bench_block_rows.py", "--threads", "1", "--json", f"{out}/{name}-blocks-1t.json"],
        "profile-1t": ["profile_update.py", "--threads", "1", "--json", f"{out}/{name}-profile-1t.json"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default=None, help="file prefix (default: from the CPU model, e.g. amd-epyc)")
    p.add_argument("--only", default=None, help="comma-separated subset of: 2t,1t,blocks-2t,blocks-1t,profile-1t")
    p.add_argument("--max-load", type=float, default=0.5)
    p.add_argument("--wait-minutes", type=float, default=0.0, help="how long to wait for a quiet machine")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    todo = jobs(a.name or cpu_slug())
    if a.only:
        todo = {k: v for k, v in todo.items() if k in a.only.split(",")}
    if a.dry_run:
        for cmd in todo.values():
            print(f"python benchmarks/{cmd[0]} " + " ".join(str(Path(c).relative_to(HERE.parent)) if c.startswith("/")
                                                             else c for c in cmd[1:]))
        return
    deadline = time.time() + 60 * a.wait_minutes
    for key, cmd in todo.items():
        while os.getloadavg()[0] > a.max_load and time.time() < deadline:
            time.sleep(30)
        print(f"== {key} (load average {os.getloadavg()[0]:.2f}): {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True)
    speed = [cmd[-1] for key, cmd in todo.items() if key in ("2t", "1t")]
    if speed:
        subprocess.run([sys.executable, str(HERE / "speed_table.py"), *speed], check=True)


if __name__ == "__main__":
    main()

"""Atomic file writing: the one helper every run file goes through.

A reader (a resumed run, a report, a person) sees the old file or the new one, never a
half-written one, even if the process is killed mid-write (``kill -9``, preemption).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success flush, fsync and
    ``os.replace`` it onto ``path`` (with ordinary permissions: ``mkstemp`` creates files
    readable by their owner only); on error remove it and leave ``path`` as it was.

    ``mode`` is ``"w"`` or ``"wb"``. Yields the open file object, which also carries the
    temporary path as ``.name`` for writers that want a file name (e.g. ``savefig``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

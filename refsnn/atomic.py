"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over
it. An interrupt leaves the old file or the new one, never half a file (checkpoints, run
reports, the data cache)."""
from __future__ import annotations

import os

__all__ = ["temporary_name", "atomic_write", "atomic_write_text"]


def temporary_name(path: str | os.PathLike) -> str:
    """``<folder>/.<name>.<pid>.tmp``: ``refsnn.data.prepare`` deletes these when their process
    is gone."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write) -> None:
    """``write(binary file)`` into a temporary file beside ``path``, then rename it over
    ``path``; the folder is created when missing."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))

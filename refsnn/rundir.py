"""A run directory (``--out``): what ``refsnn.train`` writes there and the lock that keeps a
second run out of it.

    last.npz        checkpoint after every epoch (and on Ctrl-C)
    best.npz        checkpoint of the best validation accuracy
    metrics.jsonl   one JSON line per finished epoch; always the history of last.npz (the
                    checkpoint holds the lines too, and the file is rewritten from them on resume)
    report.json     the final report
    .lock           held (``flock``) while a run works in the folder; the kernel releases it when
                    the process ends, however it ends, so a lock left by a killed run is no lock
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os

from .atomic import atomic_write_text

__all__ = ["RunDir", "RunDirBusy", "RUN_FILES"]

# every file a run writes (``--force`` deletes these and nothing else)
RUN_FILES = ("last.npz", "best.npz", "metrics.jsonl", "report.json", "curves.png", "firing_rates.png",
             "energy.png")


class RunDirBusy(ValueError):
    """Another process holds the run directory's lock."""


class RunDir:
    """The files of one run under ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.last = os.path.join(self.path, "last.npz")
        self.best = os.path.join(self.path, "best.npz")
        self.metrics = os.path.join(self.path, "metrics.jsonl")
        self.report = os.path.join(self.path, "report.json")
        self.lock_path = os.path.join(self.path, ".lock")

    def holds_run(self) -> bool:
        return os.path.exists(self.last)

    def create(self) -> None:
        """Make the folder; ``--out`` naming a file or an unwritable place is a sentence."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path}: is a file, not a folder")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {self.path}: cannot create the folder ({exc.strerror})") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ValueError(f"--out {self.path}: the folder is not writable")

    @contextlib.contextmanager
    def locked(self):
        """Hold the folder's lock for the ``with`` block; a RunDirBusy error when another live
        process holds it. Stale temporary files of an interrupted write are removed."""
        import fcntl
        self.create()
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ValueError(f"--out {self.path}: cannot write in the folder ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 100, 0).decode("utf-8", "replace").strip() or "?"
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunDirBusy(f"--out {self.path}: another run (pid {holder}) is training in this "
                                     f"folder; wait for it to finish, or give another --out") from None
                raise
            # the holder before us may have unlinked the file after we opened it: lock the live one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.remove_temporary_files()
            yield self
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)

    def remove_temporary_files(self) -> list[str]:
        """Delete ``.<name>.<pid>.tmp`` files left by a write that was killed (only the lock
        holder writes here, so every one of them is stale)."""
        stale = glob.glob(os.path.join(glob.escape(self.path), ".*.tmp"))
        for path in stale:
            with contextlib.suppress(OSError):
                os.remove(path)
        return stale

    def clear(self) -> list[str]:
        """``--force``: delete the previous run's files (RUN_FILES only; anything else stays)."""
        removed = []
        for name in RUN_FILES:
            path = os.path.join(self.path, name)
            if os.path.exists(path):
                os.remove(path)
                removed.append(name)
        return removed

    def write_metrics(self, lines: list[dict]) -> None:
        """Replace metrics.jsonl by ``lines`` (atomically)."""
        atomic_write_text(self.metrics, "".join(json.dumps(line) + "\n" for line in lines))

    def append_metrics(self, line: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(line) + "\n")

    def read_metrics(self) -> list[dict]:
        """The lines of metrics.jsonl that parse (an empty list when there is none)."""
        if not os.path.exists(self.metrics):
            return []
        out = []
        with open(self.metrics) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return [x for x in out if isinstance(x, dict)]

"""Process-level performance settings.

Every training step allocates the same sequence of large activation arrays. glibc returns
freed blocks above 128 KiB to the kernel, so each new array page-faults again: on this machine
kind a fresh 50 MB array costs 13 ms of page faults against 1.4 ms of arithmetic on it. Raising
glibc's mmap and trim thresholds keeps freed blocks (up to 32 MiB each, glibc's limit) in the
heap for reuse. The resident size stays at the peak of a step instead of falling between steps.

``keep_freed_memory()`` is called once when refsnn is imported; it does nothing on a C library
other than glibc.

``passive_thread_wait()`` sets ``OMP_WAIT_POLICY=passive`` unless the user set it: Numba's
OpenMP workers otherwise spin for a while after each parallel region. On a machine with as many
busy processes as cores (2 here) the spinning threads take turns from the ones doing the work;
a test run under load took several times longer. It must run before Numba starts its thread
pool, so refsnn's ``__init__`` calls it first.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "passive_thread_wait"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse. Returns True if applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    _done = ok
    return ok


def passive_thread_wait() -> str:
    """Set ``OMP_WAIT_POLICY=passive`` unless already set; returns the policy in effect."""
    return os.environ.setdefault("OMP_WAIT_POLICY", "passive")

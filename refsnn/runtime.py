"""Process-level performance settings.

Every training step allocates the same sequence of large activation arrays. glibc serves
blocks above 128 KiB with fresh pages from mmap and unmaps them on free, so each new array
page-faults again: on this machine kind a fresh 50 MB array costs 13 ms of page faults against
1.4 ms of arithmetic on it. ``keep_freed_memory()`` tells glibc to serve every block from the
heap (``M_MMAP_MAX = 0``; raising the mmap threshold alone stops at glibc's 32 MiB limit, below
an im2col matrix of the paper preset or a CMQKA map at 16k tokens) and to keep up to 1 GiB of
freed memory at the heap's top (``M_TRIM_THRESHOLD``). Freed blocks are then reused by the next
step. Measured here: a CMQKA forward + backward at N = 16384 went from 2.66 s to 1.64 s, a
paper-preset stage-2 convolution from 87 to 75 ms; the peak resident size of a paper training
step grew by 2% (2.54 -> 2.60 GB), and the resident size stays near that peak between steps.

``keep_freed_memory()`` is called once when refsnn is imported; it does nothing on a C library
other than glibc, or when the environment sets ``REFSNN_KEEP_FREED_MEMORY=0``.

``allow_vector_memory_checks()`` raises LLVM's limit on the run-time alias checks a loop may
need before it is vectorised (``-vectorize-memory-check-threshold``, 128 by default, to 1024).
A channel loop of the Winograd transforms (``refsnn.kernels.winograd``) reads up to 24 rows and
writes 6, each a separate pointer to LLVM (144 checks); at the default LLVM left all but one of a kernel's
loops scalar ("too many memory checks needed" in its remarks), and the transforms ran at half
the speed (F(4x4) at 48->48 @32: 0.111 -> 0.071 ms per sample for the input transform; the
convolution's forward + backward 24.6 -> 19.4 ms). The option is global to the process's LLVM:
Numba code compiled after refsnn is imported may be vectorised where it was not; results do not
change (no fast-math: the same operations in the same order per element), and a loop whose
checks fail at run time takes its scalar version. Numba's cache does not record LLVM options:
kernels cached before are used as they are. ``REFSNN_VECTORIZE_CHECKS=0`` leaves LLVM's
default; it is also left alone on LLVM versions outside 11-22 (an unknown option would end
the process).

``passive_thread_wait()`` sets ``OMP_WAIT_POLICY=passive`` unless the user set it: Numba's
OpenMP workers otherwise spin for a while after each parallel region. On a machine with as many
busy processes as cores (2 here) the spinning threads take turns from the ones doing the work;
a test run under load took several times longer. It must run before Numba starts its thread
pool, so refsnn's ``__init__`` calls it first.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "allow_vector_memory_checks", "passive_thread_wait",
           "limit_threads", "threads_for", "SERIAL_WORK", "VECTOR_MEMORY_CHECKS"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed ones for reuse. Returns
    True if applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("REFSNN_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1 and ok
    _done = ok
    return ok


VECTOR_MEMORY_CHECKS = 1024
_vector_checks_set = False


def allow_vector_memory_checks() -> bool:
    """Raise LLVM's limit on a vectorised loop's run-time alias checks (see the module's
    docstring). Returns True if the option is in effect."""
    global _vector_checks_set
    if _vector_checks_set:
        return True
    if os.environ.get("REFSNN_VECTORIZE_CHECKS") == "0":
        return False
    try:
        import llvmlite.binding as llvm
        major = llvm.llvm_version_info[0]
    except (ImportError, AttributeError, IndexError):
        return False
    if not 11 <= major <= 22:
        return False
    llvm.set_option("refsnn", f"-vectorize-memory-check-threshold={VECTOR_MEMORY_CHECKS}")
    _vector_checks_set = True
    return True


def passive_thread_wait() -> str:
    """Set ``OMP_WAIT_POLICY=passive`` unless already set; returns the policy in effect.

    Warns when Numba's OpenMP pool already runs without a policy (something called
    ``numba.set_num_threads`` or a parallel function before refsnn was imported): its workers
    then spin-wait between regions and, beside OpenBLAS's threads, made a ``cpu`` training
    step 3-4x slower here."""
    was_set = "OMP_WAIT_POLICY" in os.environ
    policy = os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if not was_set and parallel is not None and getattr(parallel, "_is_initialized", False) \
            and getattr(parallel, "_threading_layer", None) == "omp":
        import warnings
        warnings.warn("Numba's OpenMP threads started before refsnn was imported, without "
                      "OMP_WAIT_POLICY; they spin-wait and slow refsnn's steps several times. "
                      "Import refsnn before using Numba's threads, or start Python with "
                      "OMP_WAIT_POLICY=passive.", RuntimeWarning, stacklevel=3)
    return policy


@contextlib.contextmanager
def limit_threads(n: int | None):
    """Run the body with ``n`` Numba and BLAS threads (``None`` or 0: leave them as they are),
    restoring the previous counts after it."""
    if not n:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits
    before = numba.get_num_threads()
    numba.set_num_threads(int(n))
    try:
        with threadpool_limits(int(n)):
            yield
    finally:
        numba.set_num_threads(before)


# Below this many elements a parallel Numba kernel runs on the calling thread alone: waking
# the passive-waiting OpenMP workers costs 50-100 us on this machine kind, more than two
# threads save on a small map (a `tiny` step: 53 ms with two threads, 35 with one).
SERIAL_WORK = 1 << 16


@contextlib.contextmanager
def threads_for(work: int):
    """Run the body with one Numba thread when ``work`` (elements the kernel touches) is below
    ``SERIAL_WORK``, else as configured. Results do not change: refsnn's kernels give the same
    bytes for any thread count."""
    import numba
    before = numba.get_num_threads()
    if work >= SERIAL_WORK or before == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)

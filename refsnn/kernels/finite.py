"""Counting NaN and inf at memory speed: the scan behind ``refsnn.checks.check_finite``.

Every public op checks its float arguments for NaN and inf. ``np.isfinite(x).all()`` writes a
boolean temporary of x's length and runs on one thread: at a `paper` convolution's shapes the
checks of x, weight and dy took 2 of its 19 ms. A float is NaN or ±inf exactly when its
exponent bits are all ones, so ``count_nonfinite`` views a contiguous array as unsigned
integers of its width and counts those: an integer sum, which LLVM vectorises (a float
reduction it would not, without fast-math). One thread: 0.22 ms for a 6.3 MB float32 array
where ``np.isfinite(x).all()`` takes 0.39; a ``prange`` version over blocks took 0.43 (waking
the passive OpenMP workers costs more than the scan).
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["count_nonfinite", "count_nonfinite_numpy"]

# all-ones exponent of each float width, as the unsigned integer of that width
_EXPONENT = {np.dtype(np.float32): (np.uint32, np.uint32(0x7F800000)),
             np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000))}


@nb.njit(nogil=True, cache=True)
def _count_kernel(bits, exponent):
    """The elements of bits ``[L]`` (unsigned) whose exponent field is all ones."""
    n = 0
    for i in range(bits.size):
        n += (bits[i] & exponent) == exponent
    return n


def count_nonfinite(x: np.ndarray) -> int:
    """The number of NaN and ±inf values in x (any shape and dtype; float32 and float64 arrays
    in C order are counted by the kernel, others by ``count_nonfinite_numpy``)."""
    spec = _EXPONENT.get(x.dtype)
    if spec is None or not x.flags.c_contiguous:
        return count_nonfinite_numpy(x)
    uint, exponent = spec
    return int(_count_kernel(x.reshape(-1).view(uint), exponent))


def count_nonfinite_numpy(x: np.ndarray) -> int:
    """Twin of ``count_nonfinite``."""
    if not np.issubdtype(x.dtype, np.inexact):
        return 0
    return int(x.size - np.count_nonzero(np.isfinite(x)))

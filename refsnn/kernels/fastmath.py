"""A vectorisable exp for Numba kernels.

``math.exp`` on float32 compiles to a scalar libm call that LLVM cannot vectorise; in the LIF
backward it took three quarters of the time. ``fexp`` on float32 is the Cephes ``expf``
polynomial (max relative error 8.1e-8, about 1.3 ulp, over [-87, 88]; the test suite checks it),
with 2^n built by an LLVM bitcast, so loops using it vectorise. On float64 it is ``math.exp``.
Call it only from Numba code.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

__all__ = ["fexp"]

_HI = np.float32(88.3762626647949)
_LO = np.float32(-87.3365447504)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P = tuple(np.float32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32 bit pattern as a float32 (no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def fexp(x):
    """exp(x); float32 through a vectorisable polynomial inside Numba code."""
    return math.exp(x)


@overload(fexp, inline="always")
def _fexp_overload(x):
    if x == types.float32:
        p0, p1, p2, p3, p4, p5 = _P

        def fexp32(x):
            x = min(max(x, _LO), _HI)
            n = np.floor(x * _LOG2E + _HALF)          # np.floor keeps float32; math.floor gives int
            r = x - n * _LN2_HI - n * _LN2_LO
            y = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + _ONE
            return y * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))

        return fexp32

    def exp64(x):
        return math.exp(x)

    return exp64

"""LIF time loops (SPEC section 2): Numba kernels and their plain-NumPy twins.

Arrays are viewed as ``[T, M]`` (time first, every other axis flattened). The kernels walk
blocks of M in parallel and time inside each block, so the membrane of a block stays in cache
and the inner loop over M is contiguous.

Option codes (plain ints, so one compiled kernel serves every option):
    surrogate  0 sigmoid, 1 atan, 2 fast_sigmoid
    spike_fn   0 heaviside, 1 smooth (SPEC section 12; test only)
    hard_reset 1 hard (V = H(1-S) + v_reset S), 0 soft (V = H - v_th S)

Arithmetic is written in the same order in kernel and twin (and as SPEC writes it), with every
scalar cast to the array dtype, so the two agree bit for bit in float32 and float64.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["SURROGATE_CODES", "lif_forward_kernel", "lif_backward_kernel",
           "lif_forward_numpy", "lif_backward_numpy"]

SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "fast_sigmoid": 2}
_BLOCK = 2048


@nb.njit(cache=True, inline="always")
def _spike(x, one, pi, spike_fn, surrogate, alpha):
    """S as a function of x = H - v_th. ``one`` and ``pi`` carry x's dtype: numba would
    promote a float32 mixed with a Python literal to float64, and the twin would not."""
    zero = one - one
    if spike_fn == 0:
        return one if x >= zero else zero
    two = one + one
    half = one / two
    if surrogate == 0:
        return one / (one + math.exp(-alpha * x))
    if surrogate == 1:
        return half + math.atan(pi / two * alpha * x) / pi
    return half + x / (one + alpha * abs(x))


@nb.njit(cache=True, inline="always")
def _surrogate_grad(x, one, pi, surrogate, alpha):
    """dS/dH at x = H - v_th (the surrogate derivative of SPEC section 2)."""
    two = one + one
    if surrogate == 0:
        s = one / (one + math.exp(-alpha * x))
        return alpha * s * (one - s)
    if surrogate == 1:
        u = pi / two * alpha * x
        return (alpha / two) / (one + u * u)
    d = alpha * abs(x) + one
    return one / (d * d)


@nb.njit(parallel=True, cache=True)
def lif_forward_kernel(x, spikes, h, tau, v_th, v_reset, hard_reset, decay_input,
                       surrogate, alpha, spike_fn, one, pi):
    """Fill ``spikes`` and ``h`` ([T, M], x's dtype) from ``x``. Float scalars have x's dtype."""
    T, M = x.shape
    r = v_reset if hard_reset else one - one
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in nb.prange(nblocks):
        start = blk * _BLOCK
        stop = min(M, start + _BLOCK)
        v = np.empty(stop - start, dtype=x.dtype)
        v[:] = r
        for t in range(T):
            for j in range(stop - start):
                m = start + j
                vp = v[j]
                if decay_input:
                    hv = vp + (x[t, m] - (vp - r)) / tau
                else:
                    hv = vp - (vp - r) / tau + x[t, m]
                s = _spike(hv - v_th, one, pi, spike_fn, surrogate, alpha)
                h[t, m] = hv
                spikes[t, m] = s
                if hard_reset:
                    v[j] = hv * (one - s) + v_reset * s
                else:
                    v[j] = hv - v_th * s


@nb.njit(parallel=True, cache=True)
def lif_backward_kernel(dspikes, h, spikes, dx, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, surrogate, alpha, one, pi):
    """Fill ``dx`` ([T, M]) by backpropagation through time (SPEC section 2)."""
    T, M = dspikes.shape
    leak = one - one / tau
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in nb.prange(nblocks):
        start = blk * _BLOCK
        stop = min(M, start + _BLOCK)
        dv = np.zeros(stop - start, dtype=dx.dtype)
        for t in range(T - 1, -1, -1):
            for j in range(stop - start):
                m = start + j
                hv = h[t, m]
                s = spikes[t, m]
                g = _surrogate_grad(hv - v_th, one, pi, surrogate, alpha)
                if hard_reset:
                    if detach_reset:
                        dvdh = one - s
                    else:
                        dvdh = (one - s) + (v_reset - hv) * g
                else:
                    if detach_reset:
                        dvdh = one
                    else:
                        dvdh = one - v_th * g
                dh = dspikes[t, m] * g + dv[j] * dvdh
                dv[j] = dh * leak
                if decay_input:
                    dx[t, m] = dh / tau
                else:
                    dx[t, m] = dh


# --------------------------------------------------------------------------------------------
# NumPy twins: the same equations vectorised over M, a Python loop over T. Test oracles.
# --------------------------------------------------------------------------------------------

def _spike_numpy(x, spike_fn, surrogate, alpha):
    dt = x.dtype.type
    if spike_fn == 0:
        return (x >= 0).astype(x.dtype)
    if surrogate == 0:
        return dt(1) / (dt(1) + np.exp(-alpha * x))
    if surrogate == 1:
        pi = dt(math.pi)
        return dt(0.5) + np.arctan(pi / dt(2) * alpha * x) / pi
    return dt(0.5) + x / (dt(1) + alpha * np.abs(x))


def _surrogate_grad_numpy(x, surrogate, alpha):
    dt = x.dtype.type
    if surrogate == 0:
        s = dt(1) / (dt(1) + np.exp(-alpha * x))
        return alpha * s * (dt(1) - s)
    if surrogate == 1:
        pi = dt(math.pi)
        u = pi / dt(2) * alpha * x
        return (alpha / dt(2)) / (dt(1) + u * u)
    d = alpha * np.abs(x) + dt(1)
    return dt(1) / (d * d)


def lif_forward_numpy(x, tau, v_th, v_reset, hard_reset, decay_input, surrogate, alpha, spike_fn):
    """Twin of ``lif_forward_kernel``; returns (spikes, h)."""
    T, M = x.shape
    r = v_reset if hard_reset else x.dtype.type(0)
    spikes = np.empty_like(x)
    h = np.empty_like(x)
    v = np.full(M, r, dtype=x.dtype)
    for t in range(T):
        if decay_input:
            hv = v + (x[t] - (v - r)) / tau
        else:
            hv = v - (v - r) / tau + x[t]
        s = _spike_numpy(hv - v_th, spike_fn, surrogate, alpha)
        h[t] = hv
        spikes[t] = s
        if hard_reset:
            v = hv * (1 - s) + v_reset * s
        else:
            v = hv - v_th * s
    return spikes, h


def lif_backward_numpy(dspikes, h, spikes, tau, v_th, v_reset, hard_reset, decay_input,
                       detach_reset, surrogate, alpha):
    """Twin of ``lif_backward_kernel``; returns dx."""
    T, M = dspikes.shape
    one = tau - tau + 1
    leak = one - one / tau
    dx = np.empty(dspikes.shape, dtype=h.dtype)
    dv = np.zeros(M, dtype=h.dtype)
    for t in range(T - 1, -1, -1):
        hv = h[t]
        s = spikes[t]
        g = _surrogate_grad_numpy(hv - v_th, surrogate, alpha)
        if hard_reset:
            dvdh = (one - s) if detach_reset else (one - s) + (v_reset - hv) * g
        else:
            dvdh = one if detach_reset else one - v_th * g
        dh = dspikes[t] * g + dv * dvdh
        dv = dh * leak
        dx[t] = dh / tau if decay_input else dh
    return dx

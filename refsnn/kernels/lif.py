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

from .fastmath import fexp

__all__ = ["SURROGATE_CODES", "lif_forward_kernel", "lif_backward_kernel",
           "lif_forward_numpy", "lif_backward_numpy"]

SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "fast_sigmoid": 2}
_BLOCK = 2048


@nb.njit(cache=True, inline="always")
def _spikes_into(hs, out, n, v_th, one, pi, spike_fn, surrogate, alpha):
    """out[:n] = S(hs[:n] - v_th). One simple loop per option, so each one vectorises."""
    zero = one - one
    two = one + one
    half = one / two
    if spike_fn == 0:
        for j in range(n):
            out[j] = one if hs[j] - v_th >= zero else zero
    elif surrogate == 0:
        for j in range(n):
            out[j] = one / (one + fexp(-alpha * (hs[j] - v_th)))
    elif surrogate == 1:
        for j in range(n):
            out[j] = half + math.atan(pi / two * alpha * (hs[j] - v_th)) / pi
    else:
        for j in range(n):
            x = hs[j] - v_th
            out[j] = half + x / (one + alpha * abs(x))


@nb.njit(cache=True, inline="always")
def _surrogate_into(hs, out, n, v_th, one, pi, surrogate, alpha):
    """out[:n] = dS/dH at hs[:n] (the surrogate derivative of SPEC section 2)."""
    two = one + one
    if surrogate == 0:
        for j in range(n):
            sg = one / (one + fexp(-alpha * (hs[j] - v_th)))
            out[j] = alpha * sg * (one - sg)
    elif surrogate == 1:
        for j in range(n):
            u = pi / two * alpha * (hs[j] - v_th)
            out[j] = (alpha / two) / (one + u * u)
    else:
        for j in range(n):
            d = alpha * abs(hs[j] - v_th) + one
            out[j] = one / (d * d)


@nb.njit(parallel=True, cache=True)
def lif_forward_kernel(x, spikes, h, v_last, tau, v_th, v_reset, hard_reset, decay_input,
                       surrogate, alpha, spike_fn, one, pi):
    """Fill ``spikes`` and ``h`` ([T, M], x's dtype) from ``x``, and ``v_last`` ([M]) with the
    membrane after the last step. Float scalars have x's dtype.

    A NaN or inf anywhere in a neuron's input leaves its final membrane non-finite (NaN stays
    NaN; +inf fires and resets to inf * 0 = NaN, or inf - v_th; -inf stays -inf or meets +inf
    in the next charge), so checking ``v_last`` replaces a scan of all of x."""
    T, M = x.shape
    r = v_reset if hard_reset else one - one
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in nb.prange(nblocks):
        start = blk * _BLOCK
        n = min(M, start + _BLOCK) - start
        v = np.empty(n, dtype=x.dtype)
        v[:] = r
        for t in range(T):
            xs = x[t, start:start + n]
            hs = h[t, start:start + n]
            ss = spikes[t, start:start + n]
            if decay_input:
                for j in range(n):
                    hs[j] = v[j] + (xs[j] - (v[j] - r)) / tau
            else:
                for j in range(n):
                    hs[j] = v[j] - (v[j] - r) / tau + xs[j]
            _spikes_into(hs, ss, n, v_th, one, pi, spike_fn, surrogate, alpha)
            if hard_reset:
                for j in range(n):
                    v[j] = hs[j] * (one - ss[j]) + v_reset * ss[j]
            else:
                for j in range(n):
                    v[j] = hs[j] - v_th * ss[j]
        v_last[start:start + n] = v


@nb.njit(parallel=True, cache=True)
def lif_backward_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, surrogate, alpha, spike_fn, one, pi):
    """Fill ``dx`` ([T, M]) by backpropagation through time (SPEC section 2). The spikes are
    recomputed from ``h`` with the forward's own expression (identical values, fewer bytes)."""
    T, M = dspikes.shape
    leak = one - one / tau
    nblocks = (M + _BLOCK - 1) // _BLOCK
    for blk in nb.prange(nblocks):
        start = blk * _BLOCK
        n = min(M, start + _BLOCK) - start
        dv = np.zeros(n, dtype=dx.dtype)
        g = np.empty(n, dtype=dx.dtype)
        dvdh = np.empty(n, dtype=dx.dtype)
        for t in range(T - 1, -1, -1):
            hs = h[t, start:start + n]
            ds = dspikes[t, start:start + n]
            dxs = dx[t, start:start + n]
            _surrogate_into(hs, g, n, v_th, one, pi, surrogate, alpha)
            if hard_reset:
                _spikes_into(hs, dvdh, n, v_th, one, pi, spike_fn, surrogate, alpha)
                if detach_reset:
                    for j in range(n):
                        dvdh[j] = one - dvdh[j]
                else:
                    for j in range(n):
                        dvdh[j] = (one - dvdh[j]) + (v_reset - hs[j]) * g[j]
            elif detach_reset:
                for j in range(n):
                    dvdh[j] = one
            else:
                for j in range(n):
                    dvdh[j] = one - v_th * g[j]
            for j in range(n):
                dh = ds[j] * g[j] + dv[j] * dvdh[j]
                dv[j] = dh * leak
                dxs[j] = dh / tau if decay_input else dh


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
    """Twin of ``lif_forward_kernel``; returns (spikes, h, v_last)."""
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
    return spikes, h, v


def lif_backward_numpy(dspikes, h, tau, v_th, v_reset, hard_reset, decay_input,
                       detach_reset, surrogate, alpha, spike_fn):
    """Twin of ``lif_backward_kernel``; returns dx."""
    T, M = dspikes.shape
    one = tau - tau + 1
    leak = one - one / tau
    dx = np.empty(dspikes.shape, dtype=h.dtype)
    dv = np.zeros(M, dtype=h.dtype)
    for t in range(T - 1, -1, -1):
        hv = h[t]
        s = _spike_numpy(hv - v_th, spike_fn, surrogate, alpha)
        g = _surrogate_grad_numpy(hv - v_th, surrogate, alpha)
        if hard_reset:
            dvdh = (one - s) if detach_reset else (one - s) + (v_reset - hv) * g
        else:
            dvdh = one if detach_reset else one - v_th * g
        dh = dspikes[t] * g + dv * dvdh
        dv = dh * leak
        dx[t] = dh / tau if decay_input else dh
    return dx

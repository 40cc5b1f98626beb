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

__all__ = ["SURROGATE_CODES", "lif_charge", "lif_charge_backward", "spike", "surrogate_grad",
           "reset", "reset_grad", "neuron_step", "neuron_step_backward", "lif_forward_kernel",
           "lif_forward_smooth_kernel", "lif_backward_sigmoid_kernel", "lif_backward_atan_kernel",
           "lif_backward_fast_sigmoid_kernel", "lif_backward_smooth_kernel", "forward_kernel",
           "backward_kernel", "neuron_forward_kernel", "neuron_backward_kernel",
           "lif_forward_numpy", "lif_backward_numpy"]

SURROGATE_CODES = {"sigmoid": 0, "atan": 1, "fast_sigmoid": 2}
_BLOCK = 2048


# --------------------------------------------------------------------------------------------
# The neuron step, written once (SPEC section 2). Every kernel that runs a LIF (the forward and
# backward below, the attention LIF of ``refsnn.kernels.qk``) calls these scalar functions;
# Numba inlines them, so a loop over neurons that calls them compiles as if written out.
# A neuron type (``refsnn.functional.neurons``) supplies its own charge and charge_backward
# with the signatures of ``lif_charge`` / ``lif_charge_backward``; fire and reset are shared.
# --------------------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def lif_charge(v, x, tau, r, decay_input):
    """Charge: H[t] from V[t-1] = v and X[t] = x (r: the resting potential)."""
    if decay_input:
        return v + (x - (v - r)) / tau
    return v - (v - r) / tau + x


@nb.njit(cache=True, inline="always")
def lif_charge_backward(dh, tau, decay_input, one):
    """dL/dH[t] -> (dL/dV[t-1] through the charge, dL/dX[t])."""
    return dh * (one - one / tau), (dh / tau if decay_input else dh)


@nb.njit(cache=True, inline="always")
def spike(u, spike_fn, surrogate, alpha, one, pi):
    """Fire: S at u = H - v_th. Heaviside (fires at u = 0), or the surrogate's primitive in
    smooth mode (SPEC section 12)."""
    zero = one - one
    two = one + one
    if spike_fn == 0:
        return one if u >= zero else zero
    if surrogate == 0:
        return one / (one + fexp(-alpha * u))
    if surrogate == 1:
        return one / two + math.atan(pi / two * alpha * u) / pi
    return one / two + u / (one + alpha * abs(u))


@nb.njit(cache=True, inline="always")
def surrogate_grad(u, surrogate, alpha, one, pi):
    """dS/dH at u = H - v_th (the surrogate derivative of SPEC section 2)."""
    two = one + one
    if surrogate == 0:
        sg = one / (one + fexp(-alpha * u))
        return alpha * sg * (one - sg)
    if surrogate == 1:
        w = pi / two * alpha * u
        return (alpha / two) / (one + w * w)
    d = alpha * abs(u) + one
    return one / (d * d)


@nb.njit(cache=True, inline="always")
def reset(hv, s, v_th, v_reset, hard_reset, one):
    """Reset: V[t] from H[t] and S[t]."""
    if hard_reset:
        return hv * (one - s) + v_reset * s
    return hv - v_th * s


@nb.njit(cache=True, inline="always")
def reset_grad(hv, s, g, v_th, v_reset, hard_reset, detach_reset, one):
    """dV[t]/dH[t] (g = dS/dH; a detached reset drops the path through S)."""
    if hard_reset:
        if detach_reset:
            return one - s
        return (one - s) + (v_reset - hv) * g
    if detach_reset:
        return one
    return one - v_th * g


@nb.njit(cache=True, inline="always")
def neuron_step(v, x, tau, v_th, v_reset, hard_reset, decay_input, spike_fn, surrogate, alpha,
                one, pi, charge):
    """One time step of one neuron: charge, fire, reset. Returns (H, S, V)."""
    r = v_reset if hard_reset else one - one
    hv = charge(v, x, tau, r, decay_input)
    s = spike(hv - v_th, spike_fn, surrogate, alpha, one, pi)
    return hv, s, reset(hv, s, v_th, v_reset, hard_reset, one)


@nb.njit(cache=True, inline="always")
def neuron_step_backward(ds, dv, hv, tau, v_th, v_reset, hard_reset, decay_input, detach_reset,
                         spike_fn, surrogate, alpha, one, pi, charge_backward):
    """One step of backpropagation through time for one neuron: from dL/dS[t] = ds, dL/dV[t]
    = dv and the charged H[t] (the spike is recomputed from it), returns (dL/dV[t-1], dL/dX[t])."""
    u = hv - v_th
    g = surrogate_grad(u, surrogate, alpha, one, pi)
    s = spike(u, spike_fn, surrogate, alpha, one, pi)
    dh = ds * g + dv * reset_grad(hv, s, g, v_th, v_reset, hard_reset, detach_reset, one)
    return charge_backward(dh, tau, decay_input, one)


# --------------------------------------------------------------------------------------------
# Time loops over blocks of neurons
# --------------------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _forward_loop(xs, hs, ss, v, n, tau, v_th, v_reset, hard_reset, decay_input, surrogate,
                  alpha, spike_fn, one, pi, charge):
    """One time step of a block of n neurons."""
    for j in range(n):
        hv, s, vn = neuron_step(v[j], xs[j], tau, v_th, v_reset, hard_reset, decay_input,
                                spike_fn, surrogate, alpha, one, pi, charge)
        hs[j] = hv
        ss[j] = s
        v[j] = vn


@nb.njit(cache=True, inline="always")
def _forward_block(x, spikes, h, v_last, blk, tau, v_th, v_reset, hard_reset, decay_input,
                   surrogate, alpha, spike_fn, one, pi, charge):
    T, M = x.shape
    start = blk * _BLOCK
    n = min(M, start + _BLOCK) - start
    v = np.empty(n, dtype=x.dtype)
    v[:] = v_reset if hard_reset else one - one
    for t in range(T):
        xs, hs, ss = x[t, start:start + n], h[t, start:start + n], spikes[t, start:start + n]
        _forward_loop(xs, hs, ss, v, n, tau, v_th, v_reset, hard_reset, decay_input,
                      surrogate, alpha, spike_fn, one, pi, charge)
    v_last[start:start + n] = v


@nb.njit(cache=True, inline="always")
def _backward_loop(ds, hs, dxs, dv, n, tau, v_th, v_reset, hard_reset, decay_input,
                   detach_reset, surrogate, alpha, spike_fn, one, pi, charge_backward):
    """One step back in time of a block of n neurons."""
    for j in range(n):
        dvp, dxj = neuron_step_backward(ds[j], dv[j], hs[j], tau, v_th, v_reset, hard_reset,
                                        decay_input, detach_reset, spike_fn, surrogate,
                                        alpha, one, pi, charge_backward)
        dv[j] = dvp
        dxs[j] = dxj


@nb.njit(cache=True, inline="always")
def _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                    detach_reset, surrogate, alpha, spike_fn, one, pi, charge_backward):
    T, M = dspikes.shape
    start = blk * _BLOCK
    n = min(M, start + _BLOCK) - start
    dv = np.zeros(n, dtype=dx.dtype)
    for t in range(T - 1, -1, -1):
        ds, hs, dxs = dspikes[t, start:start + n], h[t, start:start + n], dx[t, start:start + n]
        _backward_loop(ds, hs, dxs, dv, n, tau, v_th, v_reset, hard_reset, decay_input,
                       detach_reset, surrogate, alpha, spike_fn, one, pi, charge_backward)


# One kernel per spike function (and, backward, per surrogate), each compiled on first use:
# the options are literals inside it, so its loop has no branches and vectorises (1.2-1.6x
# faster than one kernel with the options as runtime values), and a model compiles only the
# kernels of its own options (the Heaviside forward and one surrogate's backward: 3 of the
# 12 CPU seconds that compiling every option took, issue 13's time to first step).

@nb.njit(parallel=True, cache=True)
def lif_forward_kernel(x, spikes, h, v_last, tau, v_th, v_reset, hard_reset, decay_input,
                       surrogate, alpha, spike_fn, one, pi):
    """Fill ``spikes`` and ``h`` ([T, M], x's dtype; spikes may be uint8) from ``x``, and
    ``v_last`` ([M]) with the membrane after the last step; Heaviside spikes (``spike_fn`` is
    ignored: ``forward_kernel`` picks). Float scalars have x's dtype.

    A NaN or inf anywhere in a neuron's input leaves its final membrane non-finite (NaN stays
    NaN; +inf fires and resets to inf * 0 = NaN, or inf - v_th; -inf stays -inf or meets +inf
    in the next charge), so checking ``v_last`` replaces a scan of all of x."""
    for blk in nb.prange((x.shape[1] + _BLOCK - 1) // _BLOCK):
        _forward_block(x, spikes, h, v_last, blk, tau, v_th, v_reset, hard_reset, decay_input,
                       0, alpha, 0, one, pi, lif_charge)


@nb.njit(parallel=True, cache=True)
def lif_forward_smooth_kernel(x, spikes, h, v_last, tau, v_th, v_reset, hard_reset, decay_input,
                              surrogate, alpha, spike_fn, one, pi):
    """``lif_forward_kernel`` for smooth spikes (SPEC section 12; tests only)."""
    for blk in nb.prange((x.shape[1] + _BLOCK - 1) // _BLOCK):
        _forward_block(x, spikes, h, v_last, blk, tau, v_th, v_reset, hard_reset, decay_input,
                       surrogate, alpha, spike_fn, one, pi, lif_charge)


@nb.njit(parallel=True, cache=True)
def lif_backward_sigmoid_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                                detach_reset, surrogate, alpha, spike_fn, one, pi):
    """Fill ``dx`` ([T, M]) by backpropagation through time (SPEC section 2), Heaviside spikes
    and the sigmoid surrogate. The spikes are recomputed from ``h`` with the forward's own
    expression (identical values, fewer bytes)."""
    for blk in nb.prange((dspikes.shape[1] + _BLOCK - 1) // _BLOCK):
        _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, 0, alpha, 0, one, pi, lif_charge_backward)


@nb.njit(parallel=True, cache=True)
def lif_backward_atan_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                             detach_reset, surrogate, alpha, spike_fn, one, pi):
    """``lif_backward_sigmoid_kernel`` with the atan surrogate."""
    for blk in nb.prange((dspikes.shape[1] + _BLOCK - 1) // _BLOCK):
        _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, 1, alpha, 0, one, pi, lif_charge_backward)


@nb.njit(parallel=True, cache=True)
def lif_backward_fast_sigmoid_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                                     detach_reset, surrogate, alpha, spike_fn, one, pi):
    """``lif_backward_sigmoid_kernel`` with the fast-sigmoid surrogate."""
    for blk in nb.prange((dspikes.shape[1] + _BLOCK - 1) // _BLOCK):
        _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, 2, alpha, 0, one, pi, lif_charge_backward)


@nb.njit(parallel=True, cache=True)
def lif_backward_smooth_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                               detach_reset, surrogate, alpha, spike_fn, one, pi):
    """The backward for smooth spikes, any surrogate (tests only)."""
    for blk in nb.prange((dspikes.shape[1] + _BLOCK - 1) // _BLOCK):
        _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, surrogate, alpha, spike_fn, one, pi, lif_charge_backward)


_BACKWARD_KERNELS = (lif_backward_sigmoid_kernel, lif_backward_atan_kernel,
                     lif_backward_fast_sigmoid_kernel)


def forward_kernel(spike_fn: int):
    """The LIF forward kernel for a spike function code (all share one signature)."""
    return lif_forward_kernel if spike_fn == 0 else lif_forward_smooth_kernel


def backward_kernel(spike_fn: int, surrogate: int):
    """The LIF backward kernel for a spike function and surrogate code."""
    return _BACKWARD_KERNELS[surrogate] if spike_fn == 0 else lif_backward_smooth_kernel


# Kernels of any neuron type: its charge and charge_backward are arguments (Numba compiles one
# specialisation per type, inlined as above). Not cached on disk: a dispatcher argument has no
# stable cache key, so each process compiles a new type once at its first use.

@nb.njit(parallel=True)
def neuron_forward_kernel(x, spikes, h, v_last, tau, v_th, v_reset, hard_reset, decay_input,
                          surrogate, alpha, spike_fn, one, pi, charge):
    """``lif_forward_kernel`` with the neuron type's ``charge``."""
    for blk in nb.prange((x.shape[1] + _BLOCK - 1) // _BLOCK):
        _forward_block(x, spikes, h, v_last, blk, tau, v_th, v_reset, hard_reset, decay_input,
                       surrogate, alpha, spike_fn, one, pi, charge)


@nb.njit(parallel=True)
def neuron_backward_kernel(dspikes, h, dx, tau, v_th, v_reset, hard_reset, decay_input,
                           detach_reset, surrogate, alpha, spike_fn, one, pi, charge_backward):
    """``lif_backward_kernel`` with the neuron type's ``charge_backward``."""
    for blk in nb.prange((dspikes.shape[1] + _BLOCK - 1) // _BLOCK):
        _backward_block(dspikes, h, dx, blk, tau, v_th, v_reset, hard_reset, decay_input,
                        detach_reset, surrogate, alpha, spike_fn, one, pi, charge_backward)


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


def lif_forward_numpy(x, tau, v_th, v_reset, hard_reset, decay_input, surrogate, alpha, spike_fn,
                      charge=lif_charge.py_func):
    """Twin of ``lif_forward_kernel``; returns (spikes, h, v_last). ``charge``: the neuron
    type's charge as plain Python (``.py_func``), applied to whole rows."""
    T, M = x.shape
    r = v_reset if hard_reset else x.dtype.type(0)
    spikes = np.empty_like(x)
    h = np.empty_like(x)
    v = np.full(M, r, dtype=x.dtype)
    for t in range(T):
        hv = charge(v, x[t], tau, r, decay_input)
        s = _spike_numpy(hv - v_th, spike_fn, surrogate, alpha)
        h[t] = hv
        spikes[t] = s
        if hard_reset:
            v = hv * (1 - s) + v_reset * s
        else:
            v = hv - v_th * s
    return spikes, h, v


def lif_backward_numpy(dspikes, h, tau, v_th, v_reset, hard_reset, decay_input,
                       detach_reset, surrogate, alpha, spike_fn,
                       charge_backward=lif_charge_backward.py_func):
    """Twin of ``lif_backward_kernel``; returns dx. ``charge_backward`` as plain Python."""
    T, M = dspikes.shape
    one = tau - tau + 1
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
        dv, dx[t] = charge_backward(dh, tau, decay_input, one)
    return dx

"""BatchNorm feeding LIF neurons, fused (SPEC sections 3 and 2): Numba kernels and their
plain-NumPy twins.

Arrays are ``[T, B, C, P]`` (time, samples, channels, positions): BatchNorm's statistics are
per channel over T, B and P; a LIF neuron is one (b, c, p) followed over T.

Forward: the caller computes the batch statistics (``refsnn.kernels.norm.bn_stats_kernel``, a
pass that cannot be merged: every value needs the mean) and folds them into a per-channel
``scale`` and ``shift``; the forward kernel then normalises, applies the affine and runs the
LIF time recursion in one pass, writing the spikes and the charged membrane H (the LIF
backward's input) but never the normalised map. The arithmetic is the unfused chain's, in the
same order (``x * scale + shift`` in x's dtype, then ``refsnn.kernels.lif.neuron_step``), so
spikes and H are bit for bit those of BatchNorm followed by LIF.

Backward: the backward kernel runs the LIF's backpropagation through time
(``neuron_step_backward``) and, in the same pass, accumulates BatchNorm's two per-channel sums
(of dL/dy and dL/dy * x̂, float64); a second pass over the same channels, still in cache, turns
the dL/dy it stored into dL/dx. The sums add the values per position over b and t (newest
first, as the recursion produces them), then the positions in order: a fixed order that
vectorises without reassociating the LIF arithmetic, but not the order of
``bn_backward_kernel``, so the weight and bias gradients and dx agree with the unfused chain to
float64 rounding of the sums (see tests/test_bnlif.py).

Memory order. Both kernels work on units of whole channels, ``k`` consecutive ones
(``channels_per_unit``), so that each step reads runs of k * P contiguous values (rows of P
alone, 256 bytes at P = 64, were too short for the hardware prefetchers when the arrays come
from memory, as they do in a model: 3x slower than from cache). The forward's units are
(sample, channel group) with t inside (the fused op runs it with one channel per unit, as fast
in a model's step as longer units); the backward's are channel groups with b and t inside,
so that every channel's sums are made by one unit in the fixed order above: the results do not
depend on k or on the number of threads.

The twins reproduce the kernels' order exactly: they agree bit for bit, except where a value
passes through the surrogate's exp or atan, whose float32 results (the kernels' vectorised
``fexp`` against numpy's exp) may differ in the last bit, as between ``refsnn.kernels.lif``
and its twin.

One kernel per spike function (and, backward, per surrogate), as in ``refsnn.kernels.lif``:
the options are literals inside it, so its loops vectorise, and a model compiles only its own
(``forward_kernel``, ``backward_kernel`` pick). Option codes are those of
``refsnn.kernels.lif``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .lif import (lif_backward_numpy, lif_charge, lif_charge_backward, lif_forward_numpy,
                  neuron_step, neuron_step_backward)

__all__ = ["channels_per_unit", "bn_lif_forward_kernel", "bn_lif_forward_smooth_kernel",
           "bn_lif_backward_sigmoid_kernel", "bn_lif_backward_atan_kernel",
           "bn_lif_backward_fast_sigmoid_kernel", "bn_lif_backward_smooth_kernel",
           "forward_kernel", "backward_kernel", "bn_lif_forward_numpy", "bn_lif_backward_numpy"]

UNIT_VALUES = 2048


def channels_per_unit(C: int, P: int, values: int = UNIT_VALUES) -> int:
    """Channels per unit of work: about ``values`` neurons (a run of that many contiguous
    values per step), at least one channel."""
    return max(1, min(C, values // max(P, 1)))


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _forward_row(xs, a, b, hs, ss, v, P, tau, v_th, v_reset, hard_reset, decay_input, surrogate,
                 alpha, spike_fn, one, pi):
    """One time step of the P neurons of one (sample, channel)."""
    for p in range(P):
        y = xs[p] * a + b          # BatchNorm's affine, as bn_apply_kernel writes it
        hv, s, vn = neuron_step(v[p], y, tau, v_th, v_reset, hard_reset, decay_input, spike_fn,
                                surrogate, alpha, one, pi, lif_charge)
        hs[p] = hv
        ss[p] = s
        v[p] = vn


@nb.njit(cache=True, inline="always")
def _forward_unit(x, scale, shift, spikes, h, v_last, u, k, tau, v_th, v_reset, hard_reset,
                  decay_input, surrogate, alpha, spike_fn, one, pi):
    """Unit u: sample u // groups, channels [c0, c1) of its group, every time step."""
    T, B, C, P = x.shape
    groups = (C + k - 1) // k
    bi = u // groups
    c0 = (u % groups) * k
    c1 = min(C, c0 + k)
    v = np.empty((c1 - c0) * P, dtype=x.dtype)
    v[:] = v_reset if hard_reset else one - one
    for t in range(T):
        for c in range(c0, c1):
            o = (c - c0) * P
            _forward_row(x[t, bi, c], scale[c], shift[c], h[t, bi, c], spikes[t, bi, c],
                         v[o:o + P], P, tau, v_th, v_reset, hard_reset, decay_input, surrogate,
                         alpha, spike_fn, one, pi)
    for c in range(c0, c1):
        o = (c - c0) * P
        v_last[bi, c] = v[o:o + P]


@nb.njit(parallel=True, cache=True)
def bn_lif_forward_kernel(x, scale, shift, spikes, h, v_last, k, tau, v_th, v_reset, hard_reset,
                          decay_input, surrogate, alpha, spike_fn, one, pi):
    """x ``[T, B, C, P]``, scale and shift ``[C]`` (x's dtype) -> spikes, h ``[T, B, C, P]``
    and v_last ``[B, C, P]`` (the membrane after the last step; non-finite iff a neuron's input
    was, as in ``lif_forward_kernel``); Heaviside spikes (``spike_fn`` is ignored:
    ``forward_kernel`` picks). k: channels per unit (``channels_per_unit``)."""
    T, B, C, P = x.shape
    for u in nb.prange(B * ((C + k - 1) // k)):
        _forward_unit(x, scale, shift, spikes, h, v_last, u, k, tau, v_th, v_reset, hard_reset,
                      decay_input, 0, alpha, 0, one, pi)


@nb.njit(parallel=True, cache=True)
def bn_lif_forward_smooth_kernel(x, scale, shift, spikes, h, v_last, k, tau, v_th, v_reset,
                                 hard_reset, decay_input, surrogate, alpha, spike_fn, one, pi):
    """``bn_lif_forward_kernel`` for smooth spikes (SPEC section 12; tests only)."""
    T, B, C, P = x.shape
    for u in nb.prange(B * ((C + k - 1) // k)):
        _forward_unit(x, scale, shift, spikes, h, v_last, u, k, tau, v_th, v_reset, hard_reset,
                      decay_input, surrogate, alpha, spike_fn, one, pi)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _backward_row(ds, hs, xs, dys, dv, acc_d, acc_dx, mu, istd, P, tau, v_th, v_reset,
                  hard_reset, decay_input, detach_reset, surrogate, alpha, spike_fn, one, pi):
    """One step back in time of the P neurons of one (sample, channel): dL/dy into dys, and
    BatchNorm's sums per position."""
    for p in range(P):
        dvp, dy = neuron_step_backward(ds[p], dv[p], hs[p], tau, v_th, v_reset, hard_reset,
                                       decay_input, detach_reset, spike_fn, surrogate, alpha,
                                       one, pi, lif_charge_backward)
        dv[p] = dvp
        dys[p] = dy
    # a second loop over the row (in cache) reads the stored values, as the unfused BN does
    for p in range(P):
        g = dys[p]
        acc_d[p] += g
        acc_dx[p] += g * ((xs[p] - mu) * istd)


@nb.njit(cache=True, inline="always")
def _backward_unit(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias, g, k,
                   tau, v_th, v_reset, hard_reset, decay_input, detach_reset, surrogate, alpha,
                   spike_fn, one, pi):
    """Channel group g: channels [c0, c1), every sample and time step."""
    T, B, C, P = x.shape
    c0 = g * k
    c1 = min(C, c0 + k)
    m = (c1 - c0) * P
    acc_d = np.zeros(m)
    acc_dx = np.zeros(m)
    dv = np.empty(m, dtype=dx.dtype)
    for bi in range(B):
        dv[:] = 0
        for t in range(T - 1, -1, -1):
            for c in range(c0, c1):
                o = (c - c0) * P
                _backward_row(dspikes[t, bi, c], h[t, bi, c], x[t, bi, c], dx[t, bi, c],
                              dv[o:o + P], acc_d[o:o + P], acc_dx[o:o + P], mean[c], inv_std[c],
                              P, tau, v_th, v_reset, hard_reset, decay_input, detach_reset,
                              surrogate, alpha, spike_fn, one, pi)
    n = T * B * P
    for c in range(c0, c1):
        o = (c - c0) * P
        sd = 0.0
        sdx = 0.0
        for p in range(P):
            sd += acc_d[o + p]
            sdx += acc_dx[o + p]
        dbias[c] = sd
        dweight[c] = sdx
    # dL/dy -> dL/dx over the unit's values, which the pass above left in cache
    for t in range(T):
        for bi in range(B):
            for c in range(c0, c1):
                mu = mean[c]
                istd = inv_std[c]
                scale = weight[c] * istd
                out = dx[t, bi, c]
                if training:
                    xs = x[t, bi, c]
                    a = dbias[c] / n
                    b = dweight[c] / n
                    for p in range(P):
                        out[p] = (out[p] - a - ((xs[p] - mu) * istd) * b) * scale
                else:
                    for p in range(P):
                        out[p] = out[p] * scale


@nb.njit(parallel=True, cache=True)
def bn_lif_backward_sigmoid_kernel(dspikes, h, x, mean, inv_std, weight, training, dx, dweight,
                                   dbias, k, tau, v_th, v_reset, hard_reset, decay_input,
                                   detach_reset, surrogate, alpha, spike_fn, one, pi):
    """dspikes, h, x ``[T, B, C, P]``; mean, inv_std, weight ``[C]`` float64 -> dx
    ``[T, B, C, P]`` (x's dtype), dweight[c] = sum(dy * x̂), dbias[c] = sum(dy) (float64);
    Heaviside spikes, the sigmoid surrogate. k: channels per unit (``channels_per_unit``)."""
    for g in nb.prange((x.shape[2] + k - 1) // k):
        _backward_unit(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias, g, k,
                       tau, v_th, v_reset, hard_reset, decay_input, detach_reset, 0, alpha, 0,
                       one, pi)


@nb.njit(parallel=True, cache=True)
def bn_lif_backward_atan_kernel(dspikes, h, x, mean, inv_std, weight, training, dx, dweight,
                                dbias, k, tau, v_th, v_reset, hard_reset, decay_input,
                                detach_reset, surrogate, alpha, spike_fn, one, pi):
    """``bn_lif_backward_sigmoid_kernel`` with the atan surrogate."""
    for g in nb.prange((x.shape[2] + k - 1) // k):
        _backward_unit(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias, g, k,
                       tau, v_th, v_reset, hard_reset, decay_input, detach_reset, 1, alpha, 0,
                       one, pi)


@nb.njit(parallel=True, cache=True)
def bn_lif_backward_fast_sigmoid_kernel(dspikes, h, x, mean, inv_std, weight, training, dx,
                                        dweight, dbias, k, tau, v_th, v_reset, hard_reset,
                                        decay_input, detach_reset, surrogate, alpha, spike_fn,
                                        one, pi):
    """``bn_lif_backward_sigmoid_kernel`` with the fast-sigmoid surrogate."""
    for g in nb.prange((x.shape[2] + k - 1) // k):
        _backward_unit(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias, g, k,
                       tau, v_th, v_reset, hard_reset, decay_input, detach_reset, 2, alpha, 0,
                       one, pi)


@nb.njit(parallel=True, cache=True)
def bn_lif_backward_smooth_kernel(dspikes, h, x, mean, inv_std, weight, training, dx, dweight,
                                  dbias, k, tau, v_th, v_reset, hard_reset, decay_input,
                                  detach_reset, surrogate, alpha, spike_fn, one, pi):
    """The backward for smooth spikes, any surrogate (tests only)."""
    for g in nb.prange((x.shape[2] + k - 1) // k):
        _backward_unit(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias, g, k,
                       tau, v_th, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                       alpha, spike_fn, one, pi)


_BACKWARD_KERNELS = (bn_lif_backward_sigmoid_kernel, bn_lif_backward_atan_kernel,
                     bn_lif_backward_fast_sigmoid_kernel)


def forward_kernel(spike_fn: int):
    """The fused forward kernel for a spike function code (all share one signature)."""
    return bn_lif_forward_kernel if spike_fn == 0 else bn_lif_forward_smooth_kernel


def backward_kernel(spike_fn: int, surrogate: int):
    """The fused backward kernel for a spike function and surrogate code."""
    return _BACKWARD_KERNELS[surrogate] if spike_fn == 0 else bn_lif_backward_smooth_kernel


# --------------------------------------------------------------------------------------------
# NumPy twins: the same values in the same order (test oracles).
# --------------------------------------------------------------------------------------------

def bn_lif_forward_numpy(x, scale, shift, tau, v_th, v_reset, hard_reset, decay_input, surrogate,
                         alpha, spike_fn):
    """Twin of ``bn_lif_forward_kernel``; returns (spikes, h, v_last)."""
    T, B, C, P = x.shape
    y = x * scale[:, None] + shift[:, None]
    spikes, h, v = lif_forward_numpy(y.reshape(T, -1), tau, v_th, v_reset, hard_reset,
                                     decay_input, surrogate, alpha, spike_fn)
    return spikes.reshape(x.shape), h.reshape(x.shape), v.reshape(B, C, P)


def bn_lif_backward_numpy(dspikes, h, x, mean, inv_std, weight, training, tau, v_th, v_reset,
                          hard_reset, decay_input, detach_reset, surrogate, alpha, spike_fn):
    """Twin of ``bn_lif_backward_kernel``; returns (dx, dweight, dbias)."""
    T, B, C, P = x.shape
    dy = lif_backward_numpy(dspikes.reshape(T, -1), h.reshape(T, -1), tau, v_th, v_reset,
                            hard_reset, decay_input, detach_reset, surrogate, alpha,
                            spike_fn).reshape(x.shape)
    xhat = (x.astype(np.float64) - mean[:, None]) * inv_std[:, None]
    acc_d = np.zeros((C, P))
    acc_dx = np.zeros((C, P))
    for bi in range(B):                 # the kernel's order: b, then t newest first
        for t in range(T - 1, -1, -1):
            g = dy[t, bi].astype(np.float64)
            acc_d += g
            acc_dx += g * xhat[t, bi]
    # cumsum adds strictly left to right, as the kernel's loop over positions
    dbias = np.cumsum(acc_d, axis=1)[:, -1]
    dweight = np.cumsum(acc_dx, axis=1)[:, -1]
    scale = (weight * inv_std)[:, None]
    if training:
        n = T * B * P
        dx = (dy - (dbias / n)[:, None] - xhat * (dweight / n)[:, None]) * scale
    else:
        dx = dy * scale
    return dx.astype(x.dtype), dweight, dbias

"""BatchNorm feeding LIF neurons, fused (SPEC sections 3 and 2): Numba kernels and their
plain-NumPy twins.

Arrays are ``[T, B, C, P]`` (time, samples, channels, positions): BatchNorm's statistics are
per channel over T, B and P; a LIF neuron is one (b, c, p) followed over T.

Forward: the caller computes the batch statistics (``refsnn.kernels.norm.bn_stats_kernel``, a
pass that cannot be merged: every value needs the mean) and folds them into a per-channel
``scale`` and ``shift``; ``bn_lif_forward_kernel`` then normalises, applies the affine and runs
the LIF time recursion in one pass, writing the spikes and the charged membrane H (the LIF
backward's input) but never the normalised map. The arithmetic is the unfused chain's, in the
same order (``x * scale + shift`` in x's dtype, then ``refsnn.kernels.lif.neuron_step``), so
spikes and H are bit for bit those of BatchNorm followed by LIF.

Backward: ``bn_lif_backward_kernel`` runs the LIF's backpropagation through time
(``neuron_step_backward``) and, in the same pass, accumulates BatchNorm's two per-channel sums
(of dL/dy and dL/dy * x̂, float64); a second pass turns the dL/dy it stored into dL/dx. The
sums add the values per position over b and t (newest first, as the recursion produces them),
then the positions in order: a fixed order that vectorises without reassociating the LIF
arithmetic, but not the order of ``bn_backward_kernel``, so the weight and bias gradients
and dx agree with the unfused chain to float64 rounding of the sums (see tests/test_bnlif.py).
The twins reproduce the kernels' order exactly: they agree bit for bit, except where a value
passes through the surrogate's exp or atan, whose float32 results (the kernels' vectorised
``fexp`` against numpy's exp) may differ in the last bit, as between ``refsnn.kernels.lif``
and its twin.

Option codes are those of ``refsnn.kernels.lif``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .lif import (lif_backward_numpy, lif_charge, lif_charge_backward, lif_forward_numpy,
                  neuron_step, neuron_step_backward)

__all__ = ["bn_lif_forward_kernel", "bn_lif_backward_kernel", "bn_lif_forward_numpy",
           "bn_lif_backward_numpy"]


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


@nb.njit(parallel=True, cache=True)
def bn_lif_forward_kernel(x, scale, shift, spikes, h, v_last, tau, v_th, v_reset, hard_reset,
                          decay_input, surrogate, alpha, spike_fn, one, pi):
    """x ``[T, B, C, P]``, scale and shift ``[C]`` (x's dtype) -> spikes, h ``[T, B, C, P]``
    and v_last ``[B, C, P]`` (the membrane after the last step; non-finite iff a neuron's input
    was, as in ``lif_forward_kernel``)."""
    T, B, C, P = x.shape
    for bc in nb.prange(B * C):
        bi = bc // C
        c = bc % C
        a = scale[c]
        b = shift[c]
        v = np.empty(P, dtype=x.dtype)
        v[:] = v_reset if hard_reset else one - one
        for t in range(T):
            # a literal spike_fn leaves the branch-free loop that vectorises (as in kernels.lif)
            if spike_fn == 0:
                _forward_row(x[t, bi, c], a, b, h[t, bi, c], spikes[t, bi, c], v, P, tau, v_th,
                             v_reset, hard_reset, decay_input, surrogate, alpha, 0, one, pi)
            else:
                _forward_row(x[t, bi, c], a, b, h[t, bi, c], spikes[t, bi, c], v, P, tau, v_th,
                             v_reset, hard_reset, decay_input, surrogate, alpha, spike_fn, one,
                             pi)
        v_last[bi, c] = v


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


@nb.njit(parallel=True, cache=True)
def bn_lif_backward_kernel(dspikes, h, x, mean, inv_std, weight, training, dx, dweight, dbias,
                           tau, v_th, v_reset, hard_reset, decay_input, detach_reset, surrogate,
                           alpha, spike_fn, one, pi):
    """dspikes, h, x ``[T, B, C, P]``; mean, inv_std, weight ``[C]`` float64 -> dx
    ``[T, B, C, P]`` (x's dtype), dweight[c] = sum(dy * x̂), dbias[c] = sum(dy) (float64)."""
    T, B, C, P = x.shape
    n = T * B * P
    for c in nb.prange(C):
        mu = mean[c]
        istd = inv_std[c]
        acc_d = np.zeros(P)
        acc_dx = np.zeros(P)
        dv = np.empty(P, dtype=dx.dtype)
        for bi in range(B):
            dv[:] = 0
            for t in range(T - 1, -1, -1):
                ds, hs, xs, dys = dspikes[t, bi, c], h[t, bi, c], x[t, bi, c], dx[t, bi, c]
                # literal surrogate and spike_fn: one vectorised loop each (as in kernels.lif)
                if spike_fn == 0 and surrogate == 0:
                    _backward_row(ds, hs, xs, dys, dv, acc_d, acc_dx, mu, istd, P, tau, v_th,
                                  v_reset, hard_reset, decay_input, detach_reset, 0, alpha, 0,
                                  one, pi)
                elif spike_fn == 0 and surrogate == 1:
                    _backward_row(ds, hs, xs, dys, dv, acc_d, acc_dx, mu, istd, P, tau, v_th,
                                  v_reset, hard_reset, decay_input, detach_reset, 1, alpha, 0,
                                  one, pi)
                elif spike_fn == 0:
                    _backward_row(ds, hs, xs, dys, dv, acc_d, acc_dx, mu, istd, P, tau, v_th,
                                  v_reset, hard_reset, decay_input, detach_reset, 2, alpha, 0,
                                  one, pi)
                else:
                    _backward_row(ds, hs, xs, dys, dv, acc_d, acc_dx, mu, istd, P, tau, v_th,
                                  v_reset, hard_reset, decay_input, detach_reset, surrogate,
                                  alpha, spike_fn, one, pi)
        sd = 0.0
        sdx = 0.0
        for p in range(P):
            sd += acc_d[p]
            sdx += acc_dx[p]
        dbias[c] = sd
        dweight[c] = sdx
        scale = weight[c] * istd
        a = sd / n
        b = sdx / n
        for t in range(T):
            for bi in range(B):
                out = dx[t, bi, c]
                xs = x[t, bi, c]
                if training:
                    for p in range(P):
                        out[p] = (out[p] - a - ((xs[p] - mu) * istd) * b) * scale
                else:
                    for p in range(P):
                        out[p] = out[p] * scale


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

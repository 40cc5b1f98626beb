"""BatchNorm over ``[M, C, P]`` (statistics per channel over M and P): Numba kernels and their
NumPy twins.

One thread per channel. Sums accumulate in float64 (two passes: mean, then the centred sum of
squares), so float32 statistics are more accurate than a float32 reduction. The reductions may
be reassociated (``fastmath={"reassoc"}``) so that LLVM vectorises them: a strict-order float64
sum is bound by the add latency (4x slower here). The order is fixed by the compiled code, so
results are deterministic; kernel and twin agree to rounding (rtol 1e-5 in float32, 1e-12 in
float64), not bit for bit. The
backward recomputes x̂ from x, the mean and 1/std instead of keeping an x̂-sized array.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["bn_stats_kernel", "bn_apply_kernel", "bn_backward_kernel",
           "bn_stats_numpy", "bn_apply_numpy", "bn_backward_numpy"]


@nb.njit(parallel=True, cache=True, fastmath={"reassoc"})
def bn_stats_kernel(x, mean, var):
    """mean[c], var[c] (biased) of x[:, c, :], float64."""
    M, C, P = x.shape
    n = M * P
    for c in nb.prange(C):
        s = 0.0
        for m in range(M):
            row = x[m, c]
            for p in range(P):
                s += row[p]
        mu = s / n
        q = 0.0
        for m in range(M):
            row = x[m, c]
            for p in range(P):
                d = row[p] - mu
                q += d * d
        mean[c] = mu
        var[c] = q / n


@nb.njit(parallel=True, cache=True)
def bn_apply_kernel(x, scale, shift, y):
    """y = x * scale[c] + shift[c]; scale and shift in x's dtype (folded in float64 by the caller)."""
    M, C, P = x.shape
    for c in nb.prange(C):
        a = scale[c]
        b = shift[c]
        for m in range(M):
            src = x[m, c]
            dst = y[m, c]
            for p in range(P):
                dst[p] = src[p] * a + b


@nb.njit(parallel=True, cache=True, fastmath={"reassoc"})
def bn_backward_kernel(dy, x, mean, inv_std, weight, training, dx, dweight, dbias):
    """dx, dweight[c] = sum(dy * x̂), dbias[c] = sum(dy); x̂ = (x - mean) * inv_std."""
    M, C, P = x.shape
    n = M * P
    for c in nb.prange(C):
        mu = mean[c]
        istd = inv_std[c]
        sd = 0.0
        sdx = 0.0
        for m in range(M):
            g = dy[m, c]
            v = x[m, c]
            for p in range(P):
                sd += g[p]
                sdx += g[p] * ((v[p] - mu) * istd)
        dbias[c] = sd
        dweight[c] = sdx
        scale = weight[c] * istd
        if training:
            a = sd / n
            b = sdx / n
            for m in range(M):
                g = dy[m, c]
                v = x[m, c]
                out = dx[m, c]
                for p in range(P):
                    out[p] = (g[p] - a - ((v[p] - mu) * istd) * b) * scale
        else:
            for m in range(M):
                g = dy[m, c]
                out = dx[m, c]
                for p in range(P):
                    out[p] = g[p] * scale


def bn_stats_numpy(x):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2))
    centred = x64 - mean[:, None]
    return mean, np.einsum("mcp,mcp->c", centred, centred) / (x.shape[0] * x.shape[2])


def bn_apply_numpy(x, scale, shift):
    return x * scale[:, None] + shift[:, None]


def bn_backward_numpy(dy, x, mean, inv_std, weight, training):
    xhat = (x.astype(np.float64) - mean[:, None]) * inv_std[:, None]
    dy64 = dy.astype(np.float64)
    dbias = dy64.sum(axis=(0, 2))
    dweight = np.einsum("mcp,mcp->c", dy64, xhat)
    scale = weight.astype(np.float64) * inv_std
    if training:
        n = x.shape[0] * x.shape[2]
        dx = (dy64 - (dbias / n)[:, None] - xhat * (dweight / n)[:, None]) * scale[:, None]
    else:
        dx = dy64 * scale[:, None]
    return dx.astype(x.dtype), dweight, dbias

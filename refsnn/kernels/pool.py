"""Max pooling (kernel k, stride s, padding p; padding counts as -inf): Numba and NumPy twin.

The forward records, per output, the flat input index of the first maximum in row-major
window order (SPEC section 3); the backward sends the gradient there. Overlapping windows add.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["maxpool_forward_kernel", "maxpool_backward_kernel", "maxpool_forward_numpy",
           "maxpool_backward_numpy"]


@nb.njit(parallel=True, cache=True)
def maxpool_forward_kernel(x, k, s, p, y, argmax):
    """x [M, H, W] -> y [M, Ho, Wo]; argmax [M, Ho, Wo] holds h*W + w of the chosen input."""
    M, H, W = x.shape
    _, Ho, Wo = y.shape
    HW = H * W
    P = Ho * Wo
    xf = x.reshape(M * HW)
    yf = y.reshape(M * P)
    af = argmax.reshape(M * P)
    for m in nb.prange(M):
        src = np.uint64(m * HW)
        dst = m * P
        for ho in range(Ho):
            h0 = ho * s - p
            for wo in range(Wo):
                w0 = wo * s - p
                if h0 >= 0 and w0 >= 0 and h0 + k <= H and w0 + k <= W:
                    # interior window: no bounds checks; strict '>' keeps the first maximum
                    best_idx = h0 * W + w0
                    best = xf[src + np.uint64(best_idx)]
                    for kh in range(k):
                        row = (h0 + kh) * W + w0
                        for kw in range(k):
                            v = xf[src + np.uint64(row + kw)]
                            if v > best:
                                best = v
                                best_idx = row + kw
                else:
                    best = xf[src]
                    best_idx = -1
                    for kh in range(k):
                        h = h0 + kh
                        if h < 0 or h >= H:
                            continue
                        for kw in range(k):
                            w = w0 + kw
                            if w < 0 or w >= W:
                                continue
                            v = xf[src + np.uint64(h * W + w)]
                            if best_idx < 0 or v > best:   # padding is -inf: never chosen
                                best = v
                                best_idx = h * W + w
                yf[dst + ho * Wo + wo] = best
                af[dst + ho * Wo + wo] = best_idx


@nb.njit(parallel=True, cache=True)
def maxpool_backward_kernel(dy, argmax, H, W, dx):
    """dx [M, H, W] (zeroed) += dy at the recorded positions; one thread per plane."""
    M, Ho, Wo = dy.shape
    P = Ho * Wo
    HW = H * W
    dyf = dy.reshape(M * P)
    af = argmax.reshape(M * P)
    dxf = dx.reshape(M * HW)
    for m in nb.prange(M):
        base = np.uint64(m * HW)
        for i in range(np.uint64(m * P), np.uint64((m + 1) * P)):
            dxf[base + np.uint64(af[i])] += dyf[i]


def maxpool_forward_numpy(x, k, s, p):
    M, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    xp = np.full((M, H + 2 * p, W + 2 * p), -np.inf, dtype=x.dtype)
    xp[:, p:p + H, p:p + W] = x
    y = np.full((M, Ho, Wo), -np.inf, dtype=x.dtype)
    argmax = np.full((M, Ho, Wo), -1, dtype=np.int64)
    hh, ww = np.meshgrid(np.arange(Ho) * s - p, np.arange(Wo) * s - p, indexing="ij")
    for kh in range(k):
        for kw in range(k):
            v = xp[:, kh:kh + s * (Ho - 1) + 1:s, kw:kw + s * (Wo - 1) + 1:s]
            better = v > y              # strict, visiting taps in row-major order
            y = np.where(better, v, y)
            idx = np.broadcast_to((hh + kh) * W + (ww + kw), argmax.shape)
            argmax = np.where(better, idx, argmax)
    return y, argmax


def maxpool_backward_numpy(dy, argmax, H, W):
    M = dy.shape[0]
    dx = np.zeros((M, H * W), dtype=dy.dtype)
    rows = np.broadcast_to(np.arange(M)[:, None, None], argmax.shape)
    np.add.at(dx, (rows.ravel(), argmax.ravel()), dy.ravel())
    return dx.reshape(M, H, W)

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
    for m in nb.prange(M):
        for ho in range(Ho):
            for wo in range(Wo):
                best = x[m, 0, 0]
                best_idx = -1
                for kh in range(k):
                    h = ho * s - p + kh
                    if h < 0 or h >= H:
                        continue
                    for kw in range(k):
                        w = wo * s - p + kw
                        if w < 0 or w >= W:
                            continue
                        v = x[m, h, w]
                        if best_idx < 0 or v > best:   # strict: ties keep the first
                            best = v
                            best_idx = h * W + w
                y[m, ho, wo] = best
                argmax[m, ho, wo] = best_idx


@nb.njit(parallel=True, cache=True)
def maxpool_backward_kernel(dy, argmax, H, W, dx):
    """dx [M, H, W] (zeroed) += dy at the recorded positions; one thread per plane."""
    M, Ho, Wo = dy.shape
    for m in nb.prange(M):
        for ho in range(Ho):
            for wo in range(Wo):
                idx = argmax[m, ho, wo]
                dx[m, idx // W, idx % W] += dy[m, ho, wo]


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

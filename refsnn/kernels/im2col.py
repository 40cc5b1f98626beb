"""im2col / col2im and the transposes around one big GEMM (Numba, with NumPy twins).

A convolution of ``x [N, C, H, W]`` with ``w [O, C, KH, KW]`` is computed as one GEMM
``w.reshape(O, C*KH*KW) @ cols`` with ``cols [C*KH*KW, N*Ho*Wo]``: row ``(c, kh, kw)`` holds
the input plane shifted by the tap, for every sample. One large GEMM runs near the BLAS peak;
many small per-sample GEMMs do not. The GEMM result ``[O, N*Ho*Wo]`` is transposed back to
``[N, O, Ho, Wo]`` (with the bias added in the same pass), and the backward transposes the
upstream gradient the other way.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["im2col", "col2im", "nchw_to_cm", "cm_to_nchw", "im2col_numpy", "col2im_numpy",
           "nchw_to_cm_numpy", "cm_to_nchw_numpy", "conv_out_size"]


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@nb.njit(parallel=True, cache=True)
def _im2col_kernel(x, KH, KW, stride, pad, Ho, Wo, cols):
    N, C, H, W = x.shape
    P = Ho * Wo
    for r in nb.prange(C * KH * KW):
        c = r // (KH * KW)
        kh = (r // KW) % KH
        kw = r % KW
        for n in range(N):
            base = n * P
            for ho in range(Ho):
                h = ho * stride - pad + kh
                row = base + ho * Wo
                if h < 0 or h >= H:
                    for wo in range(Wo):
                        cols[r, row + wo] = 0
                else:
                    for wo in range(Wo):
                        w = wo * stride - pad + kw
                        if w >= 0 and w < W:
                            cols[r, row + wo] = x[n, c, h, w]
                        else:
                            cols[r, row + wo] = 0


@nb.njit(parallel=True, cache=True)
def _col2im_kernel(dcols, KH, KW, stride, pad, Ho, Wo, dx):
    """dx[n, c] = sum over taps of the matching rows of dcols; dx must be zeroed.
    Each (n, c) plane is owned by one thread, so the overlapping taps never race."""
    N, C, H, W = dx.shape
    P = Ho * Wo
    for nc in nb.prange(N * C):
        n = nc // C
        c = nc % C
        base = n * P
        for kh in range(KH):
            for kw in range(KW):
                r = (c * KH + kh) * KW + kw
                for ho in range(Ho):
                    h = ho * stride - pad + kh
                    if h < 0 or h >= H:
                        continue
                    row = base + ho * Wo
                    for wo in range(Wo):
                        w = wo * stride - pad + kw
                        if w >= 0 and w < W:
                            dx[n, c, h, w] += dcols[r, row + wo]


@nb.njit(parallel=True, cache=True)
def _cm_to_nchw_kernel(y2, bias, has_bias, y):
    """y[n, o, p] = y2[o, n*P + p] (+ bias[o])."""
    N, O, P = y.shape
    for no in nb.prange(N * O):
        n = no // O
        o = no % O
        b = bias[o] if has_bias else y2[0, 0] - y2[0, 0]
        base = n * P
        for p in range(P):
            y[n, o, p] = y2[o, base + p] + b


@nb.njit(parallel=True, cache=True)
def _nchw_to_cm_kernel(dy, dy2):
    """dy2[o, n*P + p] = dy[n, o, p]."""
    N, O, P = dy.shape
    for no in nb.prange(N * O):
        n = no // O
        o = no % O
        base = n * P
        for p in range(P):
            dy2[o, base + p] = dy[n, o, p]


def im2col(x, KH, KW, stride, pad, out=None):
    """x ``[N, C, H, W]`` -> cols ``[C*KH*KW, N*Ho*Wo]`` (into ``out`` when given)."""
    N, C, H, W = x.shape
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    if out is None:
        out = np.empty((C * KH * KW, N * Ho * Wo), dtype=x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), KH, KW, stride, pad, Ho, Wo, out)
    return out


def col2im(dcols, x_shape, KH, KW, stride, pad):
    """Adjoint of ``im2col``: cols-shaped gradient -> ``[N, C, H, W]``."""
    N, C, H, W = x_shape
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    dx = np.zeros(x_shape, dtype=dcols.dtype)
    _col2im_kernel(dcols, KH, KW, stride, pad, Ho, Wo, dx)
    return dx


def cm_to_nchw(y2, N, bias=None):
    """``[O, N*P]`` -> ``[N, O, P]``, adding ``bias [O]`` when given."""
    O = y2.shape[0]
    P = y2.shape[1] // N
    y = np.empty((N, O, P), dtype=y2.dtype)
    has_bias = bias is not None
    _cm_to_nchw_kernel(y2, bias if has_bias else np.zeros(1, dtype=y2.dtype), has_bias, y)
    return y


def nchw_to_cm(dy, out=None):
    """``[N, O, P]`` -> ``[O, N*P]``."""
    N, O, P = dy.shape
    if out is None:
        out = np.empty((O, N * P), dtype=dy.dtype)
    _nchw_to_cm_kernel(np.ascontiguousarray(dy), out)
    return out


# ---------------------------------------------------------------- NumPy twins (test oracles)

def im2col_numpy(x, KH, KW, stride, pad):
    N, C, H, W = x.shape
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((C, KH, KW, N, Ho, Wo), dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            patch = xp[:, :, kh:kh + stride * (Ho - 1) + 1:stride, kw:kw + stride * (Wo - 1) + 1:stride]
            cols[:, kh, kw] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(C * KH * KW, N * Ho * Wo)


def col2im_numpy(dcols, x_shape, KH, KW, stride, pad):
    N, C, H, W = x_shape
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    d = dcols.reshape(C, KH, KW, N, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for kh in range(KH):
        for kw in range(KW):
            dxp[:, :, kh:kh + stride * (Ho - 1) + 1:stride, kw:kw + stride * (Wo - 1) + 1:stride] += \
                d[:, kh, kw].transpose(1, 0, 2, 3)
    return dxp[:, :, pad:pad + H, pad:pad + W].copy()


def cm_to_nchw_numpy(y2, N, bias=None):
    O = y2.shape[0]
    y = y2.reshape(O, N, -1).transpose(1, 0, 2).copy()
    if bias is not None:
        y += bias[None, :, None]
    return y


def nchw_to_cm_numpy(dy):
    N, O, P = dy.shape
    return dy.transpose(1, 0, 2).reshape(O, N * P).copy()

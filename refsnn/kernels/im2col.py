"""im2col / col2im and the transposes around a GEMM, for a chunk of samples (Numba, with
NumPy twins).

A convolution of ``x [N, C, H, W]`` with ``w [O, C, KH, KW]`` over the samples ``n0:n1`` is
the GEMM ``w.reshape(O, C*KH*KW) @ cols`` with ``cols [C*KH*KW, (n1-n0)*Ho*Wo]``: row
``(c, kh, kw)`` holds the input plane shifted by the tap, for every sample of the chunk. The
GEMM result ``[O, (n1-n0)*Ho*Wo]`` is transposed back to ``[N, O, Ho, Wo]`` (with the bias
added in the same pass; not needed for a one-sample chunk), and the backward transposes the
upstream gradient the other way. The kernels are serial and release the GIL:
``refsnn.kernels.conv_chunked`` runs one chunk per thread (see there for why).
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["im2col", "col2im", "nchw_to_cm", "cm_to_nchw", "im2col_numpy", "col2im_numpy",
           "nchw_to_cm_numpy", "cm_to_nchw_numpy", "conv_out_size"]


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@nb.njit(cache=True, inline="always")
def _valid_range(pad, k, stride, size, out_size):
    """Output positions o whose input index o*stride - pad + k lies in [0, size)."""
    lo = 0
    while lo < out_size and lo * stride - pad + k < 0:
        lo += 1
    hi = out_size
    while hi > lo and (hi - 1) * stride - pad + k >= size:
        hi -= 1
    return lo, hi


# Index arithmetic in these kernels is unsigned (np.uint64): with signed indices Numba adds a
# negative-index wraparound check to every access, which stops LLVM from vectorising the copy
# loops (measured 4x slower). Unsigned and signed integers must not be mixed (Numba would
# promote the sum to float64), hence the explicit conversions.


@nb.njit(nogil=True, cache=True)
def _im2col_kernel(x, n0, n1, KH, KW, stride, pad, Ho, Wo, cols):
    """cols[(c, kh, kw), (n - n0)*P + p] for the samples n0 <= n < n1 (serial, releases the GIL:
    ``conv_chunked`` runs one chunk of samples per thread)."""
    N, C, H, W = x.shape
    P = Ho * Wo
    xf = x.reshape(N * C * H * W)
    zero = np.zeros(1, dtype=x.dtype)[0]
    ustride = np.uint64(stride)
    same = stride == 1 and Ho == H and Wo == W
    for r in range(C * KH * KW):
        c = r // (KH * KW)
        kh = (r // KW) % KH
        kw = r % KW
        h_lo, h_hi = _valid_range(pad, kh, stride, H, Ho)
        w_lo, w_hi = _valid_range(pad, kw, stride, W, Wo)
        out = cols[r]
        for n in range(n0, n1):
            base = np.uint64((n - n0) * P)
            if same:
                # a 'same' stride-1 tap is one shifted copy of the plane: the interior rows in
                # one contiguous run, then the column that wrapped into the next row zeroed
                first = (n * C + c) * H * W + (kh - pad) * W + (kw - pad) + h_lo * W
                start = np.uint64(h_lo * W)
                stop = np.uint64(h_hi * W)
                for i in range(np.uint64(0), start):
                    out[base + i] = zero
                # the run's first and last values can lie one before or after x (the wrapped
                # columns, zeroed below): they are not read
                i_lo = np.uint64(max(0, -first))
                i_hi = np.uint64(max(0, min(h_hi * W - h_lo * W, N * C * H * W - first)))
                src = np.uint64(max(0, first))
                for i in range(i_lo, i_hi):
                    out[base + start + i] = xf[src + i - i_lo]
                for i in range(stop, np.uint64(P)):
                    out[base + i] = zero
                for ho in range(h_lo, h_hi):
                    row = base + np.uint64(ho * W)
                    for wo in range(0, w_lo):
                        out[row + np.uint64(wo)] = zero
                    for wo in range(w_hi, Wo):
                        out[row + np.uint64(wo)] = zero
                continue
            for ho in range(Ho):
                d = base + np.uint64(ho * Wo)
                if ho < h_lo or ho >= h_hi:
                    for wo in range(np.uint64(0), np.uint64(Wo)):
                        out[d + wo] = zero
                    continue
                s0 = np.uint64(((n * C + c) * H + ho * stride - pad + kh) * W + w_lo * stride + kw - pad)
                for wo in range(np.uint64(0), np.uint64(w_lo)):
                    out[d + wo] = zero
                d1 = d + np.uint64(w_lo)
                for i in range(np.uint64(0), np.uint64(w_hi - w_lo)):
                    out[d1 + i] = xf[s0 + i * ustride]
                for wo in range(np.uint64(w_hi), np.uint64(Wo)):
                    out[d + wo] = zero


@nb.njit(nogil=True, cache=True)
def _col2im_kernel(dcols, n0, n1, KH, KW, stride, pad, Ho, Wo, dx):
    """dx[n] = sum over taps of the matching rows of dcols, for n0 <= n < n1 (overwritten, not
    accumulated; serial, releases the GIL: each chunk of samples is owned by one thread)."""
    N, C, H, W = dx.shape
    P = Ho * Wo
    dxf = dx.reshape(N * C * H * W)
    zero = np.zeros(1, dtype=dx.dtype)[0]
    ustride = np.uint64(stride)
    for i in range(np.uint64(n0 * C * H * W), np.uint64(n1 * C * H * W)):
        dxf[i] = zero
    for n in range(n0, n1):
        base = (n - n0) * P
        for c in range(C):
            nc = n * C + c
            for kh in range(KH):
                h_lo, h_hi = _valid_range(pad, kh, stride, H, Ho)
                for kw in range(KW):
                    w_lo, w_hi = _valid_range(pad, kw, stride, W, Wo)
                    src = dcols[(c * KH + kh) * KW + kw]
                    count = np.uint64(w_hi - w_lo)
                    for ho in range(h_lo, h_hi):
                        d0 = np.uint64((nc * H + ho * stride - pad + kh) * W + w_lo * stride + kw - pad)
                        s0 = np.uint64(base + ho * Wo + w_lo)
                        for i in range(np.uint64(0), count):
                            dxf[d0 + i * ustride] += src[s0 + i]


@nb.njit(nogil=True, cache=True)
def _cm_to_nchw_kernel(y2, n0, n1, bias, has_bias, y):
    """y[n, o, p] = y2[o, (n - n0)*P + p] (+ bias[o]) for n0 <= n < n1."""
    N, O, P = y.shape
    for n in range(n0, n1):
        base = np.uint64((n - n0) * P)
        for o in range(O):
            b = bias[o] if has_bias else bias[0] - bias[0]
            src = y2[o]
            dst = y[n, o]
            for p in range(np.uint64(0), np.uint64(P)):
                dst[p] = src[base + p] + b


@nb.njit(nogil=True, cache=True)
def _nchw_to_cm_kernel(dy, n0, n1, dy2):
    """dy2[o, (n - n0)*P + p] = dy[n, o, p] for n0 <= n < n1."""
    N, O, P = dy.shape
    for n in range(n0, n1):
        base = np.uint64((n - n0) * P)
        for o in range(O):
            src = dy[n, o]
            dst = dy2[o]
            for p in range(np.uint64(0), np.uint64(P)):
                dst[base + p] = src[p]


def im2col(x, KH, KW, stride, pad, out=None, n0=0, n1=None):
    """x ``[N, C, H, W]`` -> cols ``[C*KH*KW, (n1-n0)*Ho*Wo]`` of the samples ``n0:n1`` (all by
    default), into ``out`` when given."""
    N, C, H, W = x.shape
    n1 = N if n1 is None else n1
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    if out is None:
        out = np.empty((C * KH * KW, (n1 - n0) * Ho * Wo), dtype=x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), n0, n1, KH, KW, stride, pad, Ho, Wo, out)
    return out


def col2im(dcols, x_shape, KH, KW, stride, pad, out=None, n0=0, n1=None):
    """Adjoint of ``im2col``: cols-shaped gradient of the samples ``n0:n1`` -> ``out[n0:n1]``
    (``out [N, C, H, W]``, allocated when not given; its other samples are not touched)."""
    N, C, H, W = x_shape
    n1 = N if n1 is None else n1
    Ho, Wo = conv_out_size(H, KH, stride, pad), conv_out_size(W, KW, stride, pad)
    dx = np.empty(x_shape, dtype=dcols.dtype) if out is None else out
    _col2im_kernel(dcols, n0, n1, KH, KW, stride, pad, Ho, Wo, dx)
    return dx


def cm_to_nchw(y2, N, bias=None, out=None, n0=0):
    """``[O, n*P]`` -> ``out[n0:n0+n]`` of ``[N, O, P]`` (allocated with n = N when not given),
    adding ``bias [O]`` when given."""
    O = y2.shape[0]
    if out is None:
        out = np.empty((N, O, y2.shape[1] // N), dtype=y2.dtype)
    n1 = n0 + y2.shape[1] // out.shape[2]
    has_bias = bias is not None
    _cm_to_nchw_kernel(y2, n0, n1, bias if has_bias else np.zeros(1, dtype=y2.dtype), has_bias, out)
    return out


def nchw_to_cm(dy, out=None, n0=0, n1=None):
    """``[N, O, P]`` -> ``[O, (n1-n0)*P]`` of the samples ``n0:n1``."""
    N, O, P = dy.shape
    n1 = N if n1 is None else n1
    if out is None:
        out = np.empty((O, (n1 - n0) * P), dtype=dy.dtype)
    _nchw_to_cm_kernel(np.ascontiguousarray(dy), n0, n1, out)
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

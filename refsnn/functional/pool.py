"""Pooling as forward/backward pairs (SPEC section 3).

``maxpool2d``    x ``[N, C, H, W]``, kernel 3, stride 2, padding 1 by default; padding is -inf;
                 on ties the gradient goes to the first maximum in row-major window order.
``mean_pool``    the head's global average over time and tokens: x ``[T, B, C, N]`` -> ``[B, C]``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..kernels import BACKENDS
from ..kernels import pool as _k
from ..checks import check_choice, check_float_array
from ..runtime import threads_for

__all__ = ["maxpool2d_forward", "maxpool2d_backward", "mean_pool_forward", "mean_pool_backward",
           "MaxPool2dCache", "MeanPoolCache"]


class MaxPool2dCache(NamedTuple):
    argmax: np.ndarray          # [N*C, Ho, Wo] int64: flat index of each window's maximum
    x_shape: tuple              # (N, C, H, W)
    backend: str                # "numba" | "numpy"


def maxpool2d_forward(x, *, kernel_size=3, stride=2, padding=1, backend="numba", check=True):
    """y ``[N, C, Ho, Wo]`` with Ho = (H + 2p - k) // s + 1 (= ceil(H/2) for 3, 2, 1)."""
    check_float_array(x, "x", ndim=4, finite=check)
    if not (kernel_size >= 1 and stride >= 1 and 0 <= padding <= kernel_size // 2):
        raise ValueError(f"kernel_size/stride/padding: expected k >= 1, s >= 1, 0 <= p <= k // 2, "
                         f"got {kernel_size}, {stride}, {padding}")
    N, C, H, W = x.shape
    Ho, Wo = (H + 2 * padding - kernel_size) // stride + 1, (W + 2 * padding - kernel_size) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x: spatial size {H}x{W} is too small for max pooling {kernel_size}/{stride}/{padding}")
    check_choice("backend", backend, BACKENDS)
    x3 = np.ascontiguousarray(x).reshape(N * C, H, W)
    if backend == "numba":
        y = np.empty((N * C, Ho, Wo), dtype=x.dtype)
        argmax = np.empty((N * C, Ho, Wo), dtype=np.int64)
        with threads_for(x3.size):
            _k.maxpool_forward_kernel(x3, kernel_size, stride, padding, y, argmax)
    else:
        y, argmax = _k.maxpool_forward_numpy(x3, kernel_size, stride, padding)
    return y.reshape(N, C, Ho, Wo), MaxPool2dCache(argmax, x.shape, backend)


def maxpool2d_backward(dy, cache, *, check=True):
    argmax, (N, C, H, W), backend = cache
    check_float_array(dy, "dy", ndim=4, finite=check)
    if dy.shape != (N, C) + argmax.shape[1:]:
        raise ValueError(f"dy: expected shape {(N, C) + argmax.shape[1:]}, got {dy.shape}")
    dy3 = np.ascontiguousarray(dy).reshape(argmax.shape)
    if backend == "numba":
        dx = np.zeros((N * C, H, W), dtype=dy.dtype)
        with threads_for(dx.size):
            _k.maxpool_backward_kernel(dy3, argmax, H, W, dx)
    else:
        dx = _k.maxpool_backward_numpy(dy3, argmax, H, W)
    return dx.reshape(N, C, H, W)


class MeanPoolCache(NamedTuple):
    shape: tuple                # (T, B, C, N) of the input


def mean_pool_forward(x, *, check=True):
    """``[T, B, C, N]`` -> ``[B, C]``: the mean over time steps and tokens."""
    if check:
        check_float_array(x, "x", ndim=4)
    T, B, C, N = x.shape
    return x.mean(axis=(0, 3)), MeanPoolCache(x.shape)


def mean_pool_backward(dy, cache):
    (T, B, C, N), = cache
    check_float_array(dy, "dy", ndim=2)
    if dy.shape != (B, C):
        raise ValueError(f"dy: expected shape {(B, C)}, got {dy.shape}")
    scale = dy.dtype.type(1.0 / (T * N))
    return np.broadcast_to((dy * scale)[None, :, :, None], (T, B, C, N)).copy()

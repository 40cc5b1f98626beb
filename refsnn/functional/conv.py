"""Convolutions and linear maps as forward/backward pairs (SPEC section 3).

``conv2d``   x ``[N, C, H, W]`` (the caller merges T and B), weight OIHW, optional bias.
``conv1x1``  a 1x1 convolution over tokens: x ``[M, C, N]`` (M = T*B), weight ``[O, C]``.
``linear``   x ``[B, I]``, weight ``[O, I]``.
Each cache (a NamedTuple ``<Op>Cache``) carries ``macs``, the multiply-accumulates the op
executed, for energy accounting. Shapes and dtypes
are always checked; ``check=False`` skips the scans for NaN and inf (the modules use it on
activations inside a network, where the LIF neurons and the loss catch non-finite values).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..kernels import im2col as _k
from ..kernels.conv_chunked import (CONV1X1_CHUNK_MIN_MACS, conv1x1_chunked_backward,
                                    conv1x1_chunked_forward, conv2d_chunked_backward,
                                    conv2d_chunked_forward, conv2d_prepare)
from ..checks import check_float_array

__all__ = ["conv2d_forward", "conv2d_backward", "conv1x1_forward", "conv1x1_backward",
           "linear_forward", "linear_backward", "Conv2dCache", "Conv1x1Cache", "LinearCache"]


def _check_weight(weight, name, ndim, in_channels, x_dtype, finite=True):
    check_float_array(weight, name, ndim=ndim, finite=finite)
    if weight.shape[1] != in_channels:
        raise ValueError(f"x: has {in_channels} channels on axis 1, but {name} of shape "
                         f"{weight.shape} expects {weight.shape[1]}")
    if weight.dtype != x_dtype:
        raise ValueError(f"{name}: expected dtype {x_dtype} (x's), got {weight.dtype}")


def _check_bias(bias, out_channels, x_dtype, finite=True):
    if bias is None:
        return
    check_float_array(bias, "bias", ndim=1, finite=finite)
    if bias.shape != (out_channels,):
        raise ValueError(f"bias: expected shape ({out_channels},), got {bias.shape}")
    if bias.dtype != x_dtype:
        raise ValueError(f"bias: expected dtype {x_dtype} (x's), got {bias.dtype}")


class Conv2dCache(NamedTuple):
    x: np.ndarray               # [N, C, H, W] (im2col is recomputed in backward, not kept)
    weight: np.ndarray          # [O, C, KH, KW]
    has_bias: bool
    stride: int
    padding: int
    macs: int                   # multiply-accumulates executed
    prepared: object = None     # what the backward reuses (the Winograd path's transformed weight)


def conv2d_forward(x, weight, bias=None, *, stride=1, padding=0, check=True):
    """y ``[N, O, Ho, Wo]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, KH, KW]``) + bias."""
    check_float_array(x, "x", ndim=4, finite=check)
    _check_weight(weight, "weight", 4, x.shape[1], x.dtype, check)
    _check_bias(bias, weight.shape[0], x.dtype, check)
    if stride < 1 or padding < 0:
        raise ValueError(f"stride/padding: expected stride >= 1 and padding >= 0, got {stride}, {padding}")
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    Ho, Wo = _k.conv_out_size(H, KH, stride, padding), _k.conv_out_size(W, KW, stride, padding)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x: spatial size {H}x{W} is too small for a {KH}x{KW} kernel with padding {padding}")
    prepared = conv2d_prepare(x.shape, weight, stride, padding)
    y = conv2d_chunked_forward(x, weight, bias, stride, padding, prepared)
    return y, Conv2dCache(x, weight, bias is not None, stride, padding, int(O * C * KH * KW * N * Ho * Wo),
                          prepared)


def conv2d_backward(dy, cache, *, need_dx=True, check=True):
    """Returns ``(dx, dweight, dbias)``; dbias is None without a bias, dx is None with
    ``need_dx=False`` (the first layer of a network, whose input is data)."""
    x, weight, has_bias, stride, padding = cache.x, cache.weight, cache.has_bias, cache.stride, cache.padding
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    check_float_array(dy, "dy", ndim=4, finite=check)
    Ho, Wo = _k.conv_out_size(H, KH, stride, padding), _k.conv_out_size(W, KW, stride, padding)
    if dy.shape != (N, O, Ho, Wo):
        raise ValueError(f"dy: expected shape {(N, O, Ho, Wo)}, got {dy.shape}")
    dy = dy.astype(x.dtype, copy=False)
    dx, dweight = conv2d_chunked_backward(dy, x, weight, stride, padding, need_dx, cache.prepared)
    dbias = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dweight, dbias


class Conv1x1Cache(NamedTuple):
    x: np.ndarray               # [M, C, N]
    weight: np.ndarray          # [O, C]
    has_bias: bool
    macs: int


def conv1x1_forward(x, weight, bias=None, *, check=True):
    """y ``[M, O, N]`` = weight ``[O, C]`` applied to every token of x ``[M, C, N]`` (+ bias)."""
    check_float_array(x, "x", ndim=3, finite=check)
    _check_weight(weight, "weight", 2, x.shape[1], x.dtype, check)
    _check_bias(bias, weight.shape[0], x.dtype, check)
    M, C, N = x.shape
    macs = int(M * N * C * weight.shape[0])
    if macs >= CONV1X1_CHUNK_MIN_MACS:
        y = conv1x1_chunked_forward(x, weight, bias)
    else:
        y = np.matmul(weight, x)
        if bias is not None:
            y += bias[:, None]
    return y, Conv1x1Cache(x, weight, bias is not None, macs)


def conv1x1_backward(dy, cache, *, check=True):
    """Returns ``(dx, dweight, dbias)``."""
    x, weight, has_bias, _ = cache
    M, C, N = x.shape
    check_float_array(dy, "dy", ndim=3, finite=check)
    if dy.shape != (M, weight.shape[0], N):
        raise ValueError(f"dy: expected shape {(M, weight.shape[0], N)}, got {dy.shape}")
    dy = dy.astype(x.dtype, copy=False)
    if M * C * N * weight.shape[0] >= CONV1X1_CHUNK_MIN_MACS:
        return conv1x1_chunked_backward(dy, x, weight, need_bias=has_bias)
    dx = np.matmul(weight.T, dy)
    # per-sample GEMMs then a sum: faster at these small shapes than transposing to one GEMM
    dweight = np.matmul(dy, x.transpose(0, 2, 1)).sum(axis=0)
    dbias = dy.sum(axis=(0, 2)) if has_bias else None
    return dx, dweight, dbias


class LinearCache(NamedTuple):
    x: np.ndarray               # [B, I]
    weight: np.ndarray          # [O, I]
    has_bias: bool
    macs: int


def linear_forward(x, weight, bias=None, *, check=True):
    """y ``[B, O]`` = x ``[B, I]`` weightᵀ + bias."""
    check_float_array(x, "x", ndim=2, finite=check)
    _check_weight(weight, "weight", 2, x.shape[1], x.dtype, check)
    _check_bias(bias, weight.shape[0], x.dtype, check)
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight, bias is not None, int(x.shape[0] * x.shape[1] * weight.shape[0]))


def linear_backward(dy, cache, *, check=True):
    """Returns ``(dx, dweight, dbias)``."""
    x, weight, has_bias, _ = cache
    check_float_array(dy, "dy", ndim=2, finite=check)
    if dy.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"dy: expected shape {(x.shape[0], weight.shape[0])}, got {dy.shape}")
    dy = dy.astype(x.dtype, copy=False)
    return dy @ weight, dy.T @ x, (dy.sum(axis=0) if has_bias else None)

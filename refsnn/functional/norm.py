"""BatchNorm as a forward/backward pair (SPEC section 3).

x ``[M, C, P]``: statistics per channel over M (time and batch merged) and P (spatial positions
or tokens) together. Train mode normalises with the batch statistics (biased variance) and
returns the updated running statistics (momentum 0.1, unbiased variance, as PyTorch); eval mode
uses the running statistics. Statistics and gradients accumulate in float64 (Numba kernels in
``refsnn.kernels.norm``; ``backend="numpy"`` runs the twins).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..kernels import BACKENDS
from ..kernels import norm as _k
from ..checks import check_choice, check_float_array
from ..runtime import threads_for

__all__ = ["batchnorm_forward", "batchnorm_backward", "batchnorm_statistics", "BatchNormCache",
           "BN_MOMENTUM", "BN_EPS"]

BN_MOMENTUM = 0.1       # weight of the batch in the running statistics (PyTorch's default)
BN_EPS = 1e-5           # added to the variance


class BatchNormCache(NamedTuple):
    x: np.ndarray               # [M, C, P], contiguous
    mean: np.ndarray            # [C] float64: the statistics used (batch or running)
    inv_std: np.ndarray         # [C] float64
    weight: np.ndarray          # [C]
    training: bool              # batch statistics (their gradient flows) or running ones
    backend: str                # "numba" | "numpy"


def batchnorm_forward(x, weight, bias, running_mean, running_var, *, training=True,
                      momentum=BN_MOMENTUM, eps=BN_EPS, repeats=1, backend="numba", check=True):
    """Returns ``(y, cache, new_running_mean, new_running_var)``.

    The running statistics are returned, not updated in place, so the op stays a pure function.
    ``repeats``: x stands for that many identical copies along M (an input repeated over time
    and normalised once): the batch statistics are those of the copies already, and only the
    unbiased correction of the running variance counts ``repeats * M * P`` values.
    ``check=False`` skips the scan for NaN and inf (shapes are always checked).
    """
    check_float_array(x, "x", ndim=3, finite=check)
    M, C, P = x.shape
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check_float_array(a, name, ndim=1, finite=check)
        if a.shape != (C,):
            raise ValueError(f"{name}: expected shape ({C},) for x with {C} channels, got {a.shape}")
    check_choice("backend", backend, BACKENDS)
    x = np.ascontiguousarray(x)
    mean, inv_std, scale, shift, new_mean, new_var = batchnorm_statistics(
        x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
        eps=eps, repeats=repeats, backend=backend)
    if backend == "numba":
        y = np.empty_like(x)
        with threads_for(x.size):
            _k.bn_apply_kernel(x, scale, shift, y)
    else:
        y = _k.bn_apply_numpy(x, scale, shift)
    return y, BatchNormCache(x, mean, inv_std, weight, training, backend), new_mean, new_var


def batchnorm_statistics(x, weight, bias, running_mean, running_var, *, training, momentum,
                         eps, repeats, backend):
    """The per-channel numbers of a BatchNorm forward on checked, contiguous x ``[M, C, P]``:
    ``(mean, inv_std, scale, shift, new_running_mean, new_running_var)`` (mean, inv_std
    float64; ``y = x * scale + shift`` with scale and shift folded in float64 and cast to x's
    dtype). Shared by ``batchnorm_forward`` and the fused BN+LIF (``refsnn.functional.bnlif``),
    so that both compute the same values."""
    C = x.shape[1]
    if training:
        count = x.shape[0] * x.shape[2]
        if count < 2:
            raise ValueError(f"x: BatchNorm in train mode needs more than one value per channel, got shape {x.shape}")
        if backend == "numba":
            mean, var = np.empty(C), np.empty(C)
            with threads_for(x.size):
                _k.bn_stats_kernel(x, mean, var)
        else:
            mean, var = _k.bn_stats_numpy(x)
        total = count * repeats
        m = momentum
        new_mean = ((1 - m) * running_mean + m * mean).astype(running_mean.dtype)
        new_var = ((1 - m) * running_var + m * var * (total / (total - 1))).astype(running_var.dtype)
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
        new_mean, new_var = running_mean, running_var
    inv_std = 1.0 / np.sqrt(var + eps)
    scale64 = inv_std * weight
    scale = scale64.astype(x.dtype)
    shift = (bias - mean * scale64).astype(x.dtype)
    return mean, inv_std, scale, shift, new_mean, new_var


def batchnorm_backward(dy, cache, *, check=True):
    """Returns ``(dx, dweight, dbias)``."""
    x, mean, inv_std, weight, training, backend = cache
    check_float_array(dy, "dy", ndim=3, finite=check)
    if dy.shape != x.shape:
        raise ValueError(f"dy: expected shape {x.shape}, got {dy.shape}")
    dy = np.ascontiguousarray(dy, dtype=x.dtype)
    if backend == "numba":
        C = x.shape[1]
        dx = np.empty_like(x)
        dweight, dbias = np.empty(C), np.empty(C)
        with threads_for(x.size):
            _k.bn_backward_kernel(dy, x, mean, inv_std, weight.astype(np.float64), training, dx,
                                  dweight, dbias)
    else:
        dx, dweight, dbias = _k.bn_backward_numpy(dy, x, mean, inv_std, weight, training)
    return dx, dweight.astype(weight.dtype), dbias.astype(weight.dtype)

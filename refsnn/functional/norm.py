"""BatchNorm as a forward/backward pair (SPEC section 3).

x ``[M, C, P]``: statistics per channel over M (time and batch merged) and P (spatial positions
or tokens) together. Train mode normalises with the batch statistics (biased variance) and
returns the updated running statistics (momentum 0.1, unbiased variance, as PyTorch); eval mode
uses the running statistics.
"""
from __future__ import annotations

import numpy as np

from .checks import check_float_array

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def batchnorm_forward(x, weight, bias, running_mean, running_var, *, training=True,
                      momentum=0.1, eps=1e-5, repeats=1, check=True):
    """Returns ``(y, cache, new_running_mean, new_running_var)``.

    The running statistics are returned, not updated in place, so the op stays a pure function.
    ``repeats``: x stands for that many identical copies along M (an input repeated over time
    and normalised once): the batch statistics are those of the copies already, and only the
    unbiased correction of the running variance counts ``repeats * M * P`` values.
    """
    if check:
        check_float_array(x, "x", ndim=3)
        C = x.shape[1]
        for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
            check_float_array(a, name, ndim=1)
            if a.shape != (C,):
                raise ValueError(f"{name}: expected shape ({C},) for x with {C} channels, got {a.shape}")
    M, C, P = x.shape
    dt = x.dtype.type
    if training:
        count = M * P
        if count < 2:
            raise ValueError(f"x: BatchNorm in train mode needs more than one value per channel, got shape {x.shape}")
        mean = x.mean(axis=(0, 2))
        centred = x - mean[:, None]
        var = np.einsum("mcp,mcp->c", centred, centred) / dt(count)
        inv_std = dt(1) / np.sqrt(var + dt(eps))
        xhat = centred * inv_std[:, None]
        m = dt(momentum)
        total = count * repeats
        new_mean = (dt(1) - m) * running_mean + m * mean.astype(running_mean.dtype)
        new_var = (dt(1) - m) * running_var + m * (var * dt(total / (total - 1))).astype(running_var.dtype)
    else:
        inv_std = (dt(1) / np.sqrt(running_var + dt(eps))).astype(x.dtype)
        xhat = (x - running_mean.astype(x.dtype)[:, None]) * inv_std[:, None]
        new_mean, new_var = running_mean, running_var
    y = xhat * weight[:, None] + bias[:, None]
    cache = dict(xhat=xhat, inv_std=inv_std, weight=weight, training=training)
    return y, cache, new_mean, new_var


def batchnorm_backward(dy, cache):
    """Returns ``(dx, dweight, dbias)``."""
    xhat = cache["xhat"]
    check_float_array(dy, "dy", ndim=3)
    if dy.shape != xhat.shape:
        raise ValueError(f"dy: expected shape {xhat.shape}, got {dy.shape}")
    dy = dy.astype(xhat.dtype, copy=False)
    dbias = dy.sum(axis=(0, 2))
    dweight = np.einsum("mcp,mcp->c", dy, xhat)
    scale = cache["weight"] * cache["inv_std"]
    if cache["training"]:
        M, C, P = xhat.shape
        n = xhat.dtype.type(M * P)
        dx = (dy - (dbias / n)[:, None] - xhat * (dweight / n)[:, None]) * scale[:, None]
    else:
        dx = dy * scale[:, None]
    return dx, dweight, dbias

"""Softmax cross-entropy with label smoothing, as a forward/backward pair (SPEC section 3).

With smoothing eps and K classes the target of a sample with label y is
``q = (1 - eps) onehot(y) + eps / K`` (PyTorch's convention); the loss is the batch mean of
``-sum_k q_k log softmax(z)_k``. Soft targets ``[B, K]`` (rows summing to 1, e.g. mixup) are
accepted in place of integer labels.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks import check_array, check_float_array

__all__ = ["cross_entropy_forward", "cross_entropy_backward", "softmax", "CrossEntropyCache"]


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _targets(labels, B, K, label_smoothing, dtype):
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        check_float_array(labels, "labels")
        if labels.shape != (B, K):
            raise ValueError(f"labels: expected soft targets of shape {(B, K)}, got {labels.shape}")
        q = labels.astype(dtype, copy=True)
        if np.abs(q.sum(axis=1) - 1).max() > 1e-4 or (q < 0).any():
            raise ValueError("labels: soft targets must be non-negative rows summing to 1")
    else:
        check_array(labels, "labels", ndim=1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        if labels.shape != (B,):
            raise ValueError(f"labels: expected shape ({B},), got {labels.shape}")
        if B and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"labels: expected class indices in [0, {K}), got range "
                             f"[{labels.min()}, {labels.max()}]")
        q = np.zeros((B, K), dtype=dtype)
        q[np.arange(B), labels] = 1
    if label_smoothing:
        q = q * dtype.type(1 - label_smoothing) + dtype.type(label_smoothing / K)
    return q


class CrossEntropyCache(NamedTuple):
    p: np.ndarray               # [B, K] softmax probabilities
    q: np.ndarray               # [B, K] targets (smoothed one-hot or soft)


def cross_entropy_forward(logits, labels, *, label_smoothing=0.0):
    """logits ``[B, K]``; labels int ``[B]`` or soft ``[B, K]``. Returns ``(loss, cache)``."""
    check_float_array(logits, "logits", ndim=2)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")
    B, K = logits.shape
    if B == 0:
        raise ValueError("logits: empty batch")
    q = _targets(labels, B, K, label_smoothing, logits.dtype)
    z = logits - logits.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(z).sum(axis=1, keepdims=True))
    log_p = z - logsumexp
    loss = float(-(q * log_p).sum() / B)
    return loss, CrossEntropyCache(np.exp(log_p), q)


def cross_entropy_backward(cache, dloss=1.0):
    """dL/dlogits ``[B, K]`` for an upstream scalar gradient ``dloss``."""
    p, q = cache
    return (p - q) * p.dtype.type(dloss / p.shape[0])

"""Gradient-checking utilities (SPEC section 12), used by the test suite and usable by ports.

The check contracts the op's outputs with a random upstream gradient ``dout`` (a scalar
function ``L = sum(out * dout)``) and compares the analytic input gradient with float64 central
finite differences of L, per tensor, with the metric
``||g - g_fd|| / max(||g|| + ||g_fd||, 1e-8)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["gradient_error", "numerical_gradient"]


def gradient_error(g: np.ndarray, g_fd: np.ndarray) -> float:
    """SPEC section 12's per-tensor metric (robust to true gradients of zero)."""
    g = np.asarray(g, dtype=np.float64).ravel()
    g_fd = np.asarray(g_fd, dtype=np.float64).ravel()
    if g.shape != g_fd.shape:
        raise ValueError(f"g_fd: expected shape {g.shape}, got {g_fd.shape}")
    return float(np.linalg.norm(g - g_fd) / max(np.linalg.norm(g) + np.linalg.norm(g_fd), 1e-8))


def numerical_gradient(loss: Callable[[], float], x: np.ndarray, *, eps: float = 1e-6,
                       indices: Sequence[tuple] | None = None) -> np.ndarray:
    """Central differences of ``loss()`` with respect to the array ``x`` (perturbed in place and
    restored). With ``indices`` only those entries are computed; the result then has one value
    per index, in order. ``x`` must be float64 for meaningful results."""
    if x.dtype != np.float64:
        raise ValueError(f"x: finite differences need float64, got {x.dtype}")
    if indices is None:
        indices = list(np.ndindex(x.shape))
        out = np.zeros(x.shape)
        flat = out.reshape(-1)
    else:
        flat = out = np.zeros(len(indices))
    for i, idx in enumerate(indices):
        old = x[idx]
        x[idx] = old + eps
        plus = loss()
        x[idx] = old - eps
        minus = loss()
        x[idx] = old
        flat[i] = (plus - minus) / (2 * eps)
    return out

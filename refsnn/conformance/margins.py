"""Distance of every real-input neuron to its threshold, read from the caches of a module tree.

Real-input neurons are the ``refsnn.nn.layers.LIF`` modules (each fed a BatchNorm output); the
attention LIFs live inside the Q-K cores and are fed integer sums, which SPEC section 10
exempts from the margin.
"""
from __future__ import annotations

import numpy as np

from ..nn.layers import LIF

__all__ = ["lif_margin"]


def lif_margin(module) -> tuple[float, int]:
    """(min |H - v_th| over every LIF module's last forward, number of neuron-steps seen)."""
    best, seen = np.inf, 0
    for name, m in module.named_modules():
        if not isinstance(m, LIF):
            continue
        cache = m._cache
        if cache is None:
            raise ValueError(f"{name}: LIF has no forward cache (run forward first)")
        v_th = cache.options["v_threshold"]
        gap = np.abs(cache.h - v_th)
        best = min(best, float(gap.min()))
        seen += gap.size
    if seen == 0:
        raise ValueError("module has no LIF neurons")
    return best, seen

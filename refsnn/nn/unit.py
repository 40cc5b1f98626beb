"""The Conv-BN-LIF unit: ``LIF(Pool(BN(Conv(x))))`` (the pool optional), the step every
embedding, MLP, attention projection and fusion of the hierarchy repeats.

The unit is not a Module: it registers its layers on the module that owns it under flat
names, ``{prefix}_conv``, ``{prefix}_bn``, ``{prefix}_pool``, ``{prefix}_lif`` (the names of
docs/naming.md and QKFormer), and chains them: ``forward`` conv -> BN -> pool -> LIF,
``backward`` the reverse. Parameter names, ``state_dict`` keys and the order of registration
(hence of initialisation and of ``parameters()``) are those of writing the layers by hand.

``repeat_to=(T, B)``: the input ``[T', B', ...]`` stands for one repeated over time (and
samples): conv, BN (whose running variance counts every copy) and pool run once, and their
output is broadcast to ``[T, B, ...]`` before the LIF; the backward sums the copies' gradients
(SPEC section 6: identical results, at a fraction of the cost).

Fused: without a pool or a repeat, and while no energy counter is attached, BN and LIF run as
one op (``refsnn.functional.bnlif``: one pass over memory each way; the same
spikes and running statistics bit for bit, gradients to float64 rounding). The layers keep
their parameters, buffers and names; the BatchNorm layer runs the fused op
(``BatchNorm.forward_with_lif`` / ``backward_with_lif``), which the profiler charges to
``bn+lif``.
"""
from __future__ import annotations

import numpy as np

from ..functional.bnlif import bn_lif_fusable
from .module import Module

__all__ = ["ConvBNLIF"]


class ConvBNLIF:
    """``ConvBNLIF(owner, prefix, conv, bn, lif, pool=None)``: registers the layers on
    ``owner`` (in the order conv, bn, pool, lif) and chains them.

    ``forward(x, repeat_to=None) -> spikes``; ``backward(dspikes, **conv_options) -> dx``
    (``conv_options``: e.g. ``need_dx=False`` for a Conv2d reading data).
    """

    __slots__ = ("conv", "bn", "pool", "lif", "_repeat", "_fused")

    def __init__(self, owner: Module, prefix: str, conv: Module, bn: Module, lif: Module,
                 pool: Module | None = None):
        layers = (("conv", conv), ("bn", bn), ("pool", pool), ("lif", lif))
        for role, layer in layers:
            if layer is not None:
                setattr(owner, f"{prefix}_{role}", layer)
        self.conv, self.bn, self.pool, self.lif = conv, bn, pool, lif
        self._repeat = ()
        self._fused = None          # the BNLIFCache of a fused forward, else None

    def forward(self, x: np.ndarray, repeat_to: tuple | None = None) -> np.ndarray:
        """x ``[T', B', ...]`` -> spikes ``[T', B', ...]`` (``[*repeat_to, ...]`` with
        ``repeat_to``)."""
        # the axes of [T', B'] that stand for repeat_to's copies; BN counts them, the
        # backward sums their gradients
        spread = () if repeat_to is None else \
            tuple(i for i in (0, 1) if x.shape[i] == 1 and repeat_to[i] > 1)
        repeats = int(np.prod([repeat_to[i] for i in spread], dtype=np.int64)) if spread else 1
        self._fused = None
        if not spread and self._fusable():
            spikes, self._fused = self.bn.forward_with_lif(self.conv.forward(x), self.lif)
            return spikes
        h = self.bn.forward(self.conv.forward(x), repeats=repeats)
        if self.pool is not None:
            h = self.pool.forward(h)
        self._repeat = spread
        if spread:
            h = np.broadcast_to(h, tuple(repeat_to) + h.shape[2:])
        return self.lif.forward(h)

    def _fusable(self) -> bool:
        return (self.pool is None and self.bn.counter is None and self.lif.counter is None
                and bn_lif_fusable(**self.lif.neuron))

    def backward(self, dspikes: np.ndarray, **conv_options) -> np.ndarray:
        if self._fused is not None:
            return self.conv.backward(self.bn.backward_with_lif(dspikes, self._fused), **conv_options)
        dh = self.lif.backward(dspikes)
        if self._repeat:
            dh = dh.sum(axis=self._repeat, keepdims=True)
        if self.pool is not None:
            dh = self.pool.backward(dh)
        return self.conv.backward(self.bn.backward(dh), **conv_options)

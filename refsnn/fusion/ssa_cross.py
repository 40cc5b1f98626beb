"""``ssa-cross`` (SPEC section 8, S-CMRL style): cross-modal spiking self-attention with an
explicit N x N map, quadratic in N; the baseline that CMQKA's linear cost is measured against.

Direction a<-v (``audio_from_visual``, a ``refsnn.nn.attention.SSACrossAttention``)::

    Q = LIF(BN(Conv1x1(X_a)))   K = LIF(BN(Conv1x1(X_v)))   V = LIF(BN(Conv1x1(X_v)))
    per head: attn = Q Kᵀ  [N, N]         (explicit map: 2·T·B·D·N² multiply-accumulates)
    Y_{a<-v} = LIF(BN(Conv1x1 with bias(LIF_0.5((attn V) * 0.125))))
    X_a' = X_a + alpha * Y_{a<-v}

and v<-a mirrors it (``visual_from_audio``, ``X_v' = X_v + beta * Y_{v<-a}``). Both directions
read the pre-fusion maps; the residual options are those of CMQKA (section 5: "scalar",
"channel", "fixed"). SPEC section 8 writes the direction as ``LIF(BN(Conv1x1((Q_a K_vᵀ) V_v *
0.125)))``; the attention LIF (v_th 0.5) of Spikformer's SSA (section 4) sits between the
scaled product and the projection, so that the projection reads spikes like every other layer.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_positive_int
from ..functional.norm import BN_EPS, BN_MOMENTUM
from ..nn.attention import SSACrossAttention
from .base import ResidualCrossFusion, common_options

__all__ = ["SSACrossFusion", "build"]


class SSACrossFusion(ResidualCrossFusion):
    """``SSACrossFusion(dim, heads, *, residual="scalar", scale=0.125, neuron=None,
    attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32)``.

    ``forward(x_audio, x_visual) -> (y_audio, y_visual)`` and ``backward(dy_audio, dy_visual)
    -> (dx_audio, dx_visual)`` on ``[T, B, dim, N]`` maps (see the module docstring).
    Parameters: ``audio_from_visual.{q,k,v,proj}_{conv,bn}.*``, ``visual_from_audio.*``,
    ``alpha``, ``beta``. Counters: the two ``ssa`` cores (``macs``, ``comparisons``).
    """

    def __init__(self, dim, heads, *, residual="scalar", scale=0.125, neuron=None,
                 attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32):
        super().__init__(dim, mask_from="query_modality", residual=residual, dtype=dtype)
        self.heads = check_positive_int(heads, "heads")
        direction = dict(scale=scale, neuron=neuron, attention_neuron=attention_neuron,
                         bn_momentum=bn_momentum, bn_eps=bn_eps, rng=rng, dtype=dtype)
        self.audio_from_visual = SSACrossAttention(dim, heads, **direction)
        self.visual_from_audio = SSACrossAttention(dim, heads, **direction)


def build(c, stage, dim, heads, *, rng, dtype, previous=None) -> SSACrossFusion:
    """The ``ssa-cross`` mode after every stage, with CMQKA's ``cmqka_residual``."""
    return SSACrossFusion(dim, heads, residual=c.cmqka_residual, **common_options(c, rng=rng, dtype=dtype))

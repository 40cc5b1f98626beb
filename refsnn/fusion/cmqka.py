"""CMQKA: cross-modal Q-K attention (SPEC section 5).

Audio and visual token maps of one stage, ``X_a, X_v : [T, B, D, N]``. Direction a<-v has its
own weights (``audio_from_visual``)::

    mask_from = "query_modality":  Q from X_a, K from X_v     (default)
    mask_from = "key_modality":    Q from X_v, K from X_a
    Q = LIF(BN(Conv1x1(X_q)))   K = LIF(BN(Conv1x1(X_k)))
    A = LIF_0.5(per-head channel sum of Q)     mask = "token" (default; QKTA core)
    A = LIF_0.5(per-channel token sum of Q)    mask = "channel" (QKCA core)
    Y_{a<-v} = LIF(BN(Conv1x1 with bias(A * K)))
    X_a' = X_a + alpha * Y_{a<-v}

and v<-a mirrors it (``visual_from_audio``, ``X_v' = X_v + beta * Y_{v<-a}``). Both directions
read the pre-fusion maps. ``residual``: "scalar" (learnable ``alpha``, ``beta`` of shape [1],
init 0.5), "channel" (learnable [D], init 0.5) or "fixed" (the constant 0.5, no parameter).
The outputs are real-valued (spikes plus alpha times spikes); so may the inputs be.

The cost is linear in N: no array with N x N elements is allocated or kept (the tests check
every array of the caches and the peak of the temporaries).

``CMQKA`` is a ``refsnn.fusion.base.ResidualCrossFusion`` (the two directions and the
residual) whose directions are ``refsnn.nn.attention.QKCrossAttention``; ``build`` makes it from
the config (registered as the ``cmqka`` mode in ``refsnn.fusion.registry``).
"""
from __future__ import annotations

import numpy as np

from ..checks import check_choice, check_positive_int
from ..functional.norm import BN_EPS, BN_MOMENTUM
from ..nn.attention import QK_MODES, QKCrossAttention
from .base import ResidualCrossFusion, common_options

__all__ = ["CMQKA", "build"]


class CMQKA(ResidualCrossFusion):
    """Cross-modal Q-K attention (SPEC section 5).

    ``CMQKA(dim, heads, *, mask="token", mask_from="query_modality", residual="scalar",
    neuron=None, attention_neuron=None, attention_backend="packed", packed_spikes=False,
    bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32)``; the options are those of
    the module docstring and of ``refsnn.nn.attention`` (``packed_spikes``: Q and K as
    bit-packed spikes between their neurons and the core) (``neuron`` / ``attention_neuron``: ``lif_forward`` keyword
    arguments, e.g. ``Config.neuron_kwargs()`` / ``Config.attention_neuron_kwargs()``).
    Parameters: ``audio_from_visual.*``, ``visual_from_audio.*``, ``alpha``, ``beta``.
    """

    def __init__(self, dim, heads, *, mask="token", mask_from="query_modality", residual="scalar",
                 neuron=None, attention_neuron=None, attention_backend="packed", packed_spikes=False,
                 bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32):
        super().__init__(dim, mask_from=mask_from, residual=residual, dtype=dtype)
        self.mask = check_choice("mask", mask, QK_MODES)
        self.heads = check_positive_int(heads, "heads")
        direction = dict(neuron=neuron, attention_neuron=attention_neuron,
                         attention_backend=attention_backend, packed_spikes=packed_spikes,
                         bn_momentum=bn_momentum,
                         bn_eps=bn_eps, rng=rng, dtype=dtype)
        self.audio_from_visual = QKCrossAttention(dim, heads, mask, **direction)
        self.visual_from_audio = QKCrossAttention(dim, heads, mask, **direction)


def build(c, stage, dim, heads, *, rng, dtype, previous=None) -> CMQKA:
    """The ``cmqka`` mode: the same CMQKA after every stage, options ``cmqka_mask``,
    ``cmqka_mask_from``, ``cmqka_residual`` and ``attention_backend`` of the config."""
    return CMQKA(dim, heads, mask=c.cmqka_mask, mask_from=c.cmqka_mask_from,
                 residual=c.cmqka_residual, attention_backend=c.attention_backend,
                 **common_options(c, rng=rng, dtype=dtype))

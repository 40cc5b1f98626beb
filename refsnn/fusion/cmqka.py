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

``ResidualCrossFusion`` holds the wiring and the residual; a fusion mode with the same shape
(two directions, ``forward(x_q, x_k) -> y`` / ``backward(dy) -> (dx_q, dx_k)``, residual as in
section 5, e.g. the ``ssa-cross`` baseline with ``refsnn.nn.attention.SSACrossAttention``)
subclasses it and builds its two direction modules.
"""
from __future__ import annotations

import numpy as np

from ..checks import check_float_array, check_positive_int
from ..nn.attention import QK_MODES, QKCrossAttention, check_token_map, sum_counts
from ..nn.module import Module, Parameter

__all__ = ["CMQKA", "ResidualCrossFusion", "MASK_FROM", "RESIDUALS", "RESIDUAL_INIT"]

MASK_FROM = ("query_modality", "key_modality")
RESIDUALS = ("scalar", "channel", "fixed")
RESIDUAL_INIT = 0.5


def _choice(name: str, value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


class ResidualCrossFusion(Module):
    """Two cross-attention directions and the residual of SPEC section 5.

    Subclasses assign ``self.audio_from_visual`` and ``self.visual_from_audio`` (modules with
    ``forward(x_q, x_k) -> y`` and ``backward(dy) -> (dx_q, dx_k)``) after calling this
    ``__init__``. Registers ``alpha`` and ``beta`` unless ``residual="fixed"``.
    """

    def __init__(self, dim, *, mask_from="query_modality", residual="scalar", dtype=np.float32):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.mask_from = _choice("mask_from", mask_from, MASK_FROM)
        self.residual = _choice("residual", residual, RESIDUALS)
        self.dtype = np.dtype(dtype)
        if residual != "fixed":
            shape = (1,) if residual == "scalar" else (self.dim,)
            self.alpha = Parameter(np.full(shape, RESIDUAL_INIT, dtype=self.dtype))
            self.beta = Parameter(np.full(shape, RESIDUAL_INIT, dtype=self.dtype))
        self._cache = None

    # -- residual weights -------------------------------------------------------------------
    def _weight(self, which: str) -> np.ndarray:
        """alpha or beta, shaped to broadcast over ``[T, B, D, N]``."""
        if self.residual == "fixed":
            return np.full((1, 1, 1, 1), RESIDUAL_INIT, dtype=self.dtype)
        value = getattr(self, which).value
        return value.reshape(1, 1, -1, 1)

    def _accumulate_weight_grad(self, which: str, dy: np.ndarray, y: np.ndarray) -> None:
        if self.residual == "fixed":
            return
        # contractions without a [T, B, D, N] temporary
        if self.residual == "channel":
            grad = np.einsum("tbdn,tbdn->d", dy, y)
        else:
            grad = np.vdot(dy, y).reshape(1)
        getattr(self, which).grad += grad

    # -- wiring -----------------------------------------------------------------------------
    def _inputs(self, x_a, x_v):
        """(x_q, x_k) of a<-v and of v<-a."""
        if self.mask_from == "query_modality":
            return (x_a, x_v), (x_v, x_a)
        return (x_v, x_a), (x_a, x_v)

    def forward(self, x_audio, x_visual):
        """x_audio, x_visual ``[T, B, D, N]`` (same shape) -> (y_audio, y_visual)."""
        check_token_map(x_audio, "x_audio", self.dim, self.dtype)
        check_token_map(x_visual, "x_visual", self.dim, self.dtype, x_audio, "x_audio")
        in_av, in_va = self._inputs(x_audio, x_visual)
        y_av = self.audio_from_visual.forward(*in_av)
        y_va = self.visual_from_audio.forward(*in_va)
        self._cache = (y_av, y_va, x_audio.shape)
        out_a = self._weight("alpha") * y_av
        out_a += x_audio                    # in place: one new map per output, not two
        out_v = self._weight("beta") * y_va
        out_v += x_visual
        return out_a, out_v

    def backward(self, dy_audio, dy_visual):
        """-> (dx_audio, dx_visual); accumulates alpha.grad and beta.grad. Never mutates the
        upstream gradients."""
        if self._cache is None:
            raise ValueError("backward: no forward cache (call forward first)")
        y_av, y_va, shape = self._cache
        for name, g in (("dy_audio", dy_audio), ("dy_visual", dy_visual)):
            check_float_array(g, name, ndim=4)
            if g.shape != shape:
                raise ValueError(f"{name}: expected shape {shape} (the forward's), got {g.shape}")
        self._accumulate_weight_grad("alpha", dy_audio, y_av)
        self._accumulate_weight_grad("beta", dy_visual, y_va)
        dq_av, dk_av = self.audio_from_visual.backward(self._weight("alpha") * dy_audio)
        dq_va, dk_va = self.visual_from_audio.backward(self._weight("beta") * dy_visual)
        if self.mask_from == "query_modality":      # a<-v read (X_a, X_v); v<-a read (X_v, X_a)
            dx_a, dx_v = dq_av + dk_va, dk_av + dq_va
        else:                                       # a<-v read (X_v, X_a); v<-a read (X_a, X_v)
            dx_a, dx_v = dk_av + dq_va, dq_av + dk_va
        dx_a += dy_audio
        dx_v += dy_visual
        return dx_a, dx_v

    @property
    def attention_counts(self) -> dict:
        """The last forward's counts of both directions' attention cores, summed."""
        return sum_counts(self.audio_from_visual.attention_counts,
                          self.visual_from_audio.attention_counts)


class CMQKA(ResidualCrossFusion):
    """Cross-modal Q-K attention (SPEC section 5).

    ``CMQKA(dim, heads, *, mask="token", mask_from="query_modality", residual="scalar",
    neuron=None, attention_neuron=None, attention_backend="packed", bn_momentum=0.1,
    bn_eps=1e-5, rng, dtype=np.float32)``; the options are those of the module docstring and
    of ``refsnn.nn.attention`` (``neuron`` / ``attention_neuron``: ``lif_forward`` keyword
    arguments, e.g. ``Config.neuron_kwargs()`` / ``Config.attention_neuron_kwargs()``).
    Parameters: ``audio_from_visual.*``, ``visual_from_audio.*``, ``alpha``, ``beta``.
    """

    def __init__(self, dim, heads, *, mask="token", mask_from="query_modality", residual="scalar",
                 neuron=None, attention_neuron=None, attention_backend="packed", bn_momentum=0.1,
                 bn_eps=1e-5, rng, dtype=np.float32):
        super().__init__(dim, mask_from=mask_from, residual=residual, dtype=dtype)
        self.mask = _choice("mask", mask, QK_MODES)
        self.heads = check_positive_int(heads, "heads")
        direction = dict(neuron=neuron, attention_neuron=attention_neuron,
                         attention_backend=attention_backend, bn_momentum=bn_momentum,
                         bn_eps=bn_eps, rng=rng, dtype=dtype)
        self.audio_from_visual = QKCrossAttention(dim, heads, mask, **direction)
        self.visual_from_audio = QKCrossAttention(dim, heads, mask, **direction)

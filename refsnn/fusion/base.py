"""What the fusion modes share: the builder interface, the options every mode takes from the
config, the two-direction residual wiring of SPEC section 5 and the checks of a fusion's
inputs and upstream gradients.

A fusion module has ``forward(x_audio, x_visual) -> (y_audio, y_visual)`` and
``backward(dy_audio, dy_visual) -> (dx_audio, dx_visual)`` on ``[T, B, D, N]`` token maps. A
fusion mode is a module class and a ``FusionBuilder`` that makes it from the config;
``refsnn.fusion.registry`` maps the mode's name (config field ``fusion``) to the builder.

This package knows no ``Config`` class: a builder reads the config's fields by name (``c`` is a
``refsnn.models.Config`` or any object with the same fields), so nothing here imports upward.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from ..checks import check_choice, check_float_array, check_positive_int
from ..nn.attention import check_token_map, sum_counts
from ..nn.counting import CONTAINER
from ..nn.module import Module, Parameter

__all__ = [
    "FusionBuilder", "common_options", "ResidualCrossFusion", "ResidualCrossCache", "MASK_FROM",
    "RESIDUALS", "RESIDUAL_INIT", "TOKEN_INIT_STD", "check_upstream",
]

# Which modality gives the queries of direction a<-v (SPEC section 5), and the residual forms.
MASK_FROM = ("query_modality", "key_modality")
RESIDUALS = ("scalar", "channel", "fixed")
RESIDUAL_INIT = 0.5

# Learnable tokens ~ N(0, 1) [choice]: they enter convs and BatchNorm next to (mbt) or in
# place of (factorized) stage outputs of order 1 (sums of spike maps). ViT-style models use
# N(0, 0.02²) behind a LayerNorm; here BN's eps would swamp such a variance and the bottleneck
# queries would never fire.
TOKEN_INIT_STD = 1.0


class FusionBuilder(Protocol):
    """Makes the fusion module placed after ``stage`` (1, 2, 3) of width ``dim`` with ``heads``
    heads, from the config ``c``. ``previous`` is the module this mode built for the stage
    before (None at stage 1), for modes that link their stages (``mbt``). Parameters are drawn
    from ``rng`` in construction order."""

    def __call__(self, c, stage: int, dim: int, heads: int, *, rng: np.random.Generator,
                 dtype, previous: Module | None) -> Module: ...


def common_options(c, *, rng, dtype) -> dict:
    """The keyword arguments every attention-based mode takes from the config: the neurons
    (``neuron_kwargs``, ``attention_neuron_kwargs``), BatchNorm's settings, ``rng``, ``dtype``."""
    return dict(neuron=c.neuron_kwargs(), attention_neuron=c.attention_neuron_kwargs(),
                bn_momentum=c.bn_momentum, bn_eps=c.bn_eps, rng=rng, dtype=dtype)


def check_upstream(dy_audio, dy_visual, shape_audio: tuple, shape_visual: tuple) -> None:
    """A fusion backward's upstream gradients: float ``[T, B, D, N]`` of the forward's shapes."""
    for name, g, shape in (("dy_audio", dy_audio, shape_audio), ("dy_visual", dy_visual, shape_visual)):
        check_float_array(g, name, ndim=4)
        if g.shape != shape:
            raise ValueError(f"{name}: expected shape {shape} (the forward's), got {g.shape}")


class ResidualCrossCache(NamedTuple):
    y_av: np.ndarray        # direction a<-v's output [T, B, D, N]
    y_va: np.ndarray        # direction v<-a's output
    shape: tuple            # the inputs' shape


class ResidualCrossFusion(Module):
    """Two cross-attention directions and the residual of SPEC section 5::

        X_a' = X_a + alpha * Y_{a<-v}(X_q, X_k)      X_v' = X_v + beta * Y_{v<-a}(X_q, X_k)

    with (X_q, X_k) = (X_a, X_v) for a<-v when ``mask_from="query_modality"`` (the reverse for
    ``"key_modality"``); both directions read the pre-fusion maps. ``residual``: "scalar"
    (learnable ``alpha``, ``beta`` of shape [1], init 0.5), "channel" (learnable [D], init
    0.5) or "fixed" (the constant 0.5, no parameter).

    Subclasses assign ``self.audio_from_visual`` and ``self.visual_from_audio`` (modules with
    ``forward(x_q, x_k) -> y`` and ``backward(dy) -> (dx_q, dx_k)``) after calling this
    ``__init__`` (CMQKA, ``ssa-cross``), or override ``forward`` / ``backward`` and use the
    residual helpers ``_weight`` and ``_accumulate_weight_grad`` (``factorized``).
    """

    # the residual weights scale spike maps: they fold into the next layers' weights (SPEC
    # section 7), so the fusion's energy is that of its directions
    energy_role = CONTAINER

    def __init__(self, dim, *, mask_from="query_modality", residual="scalar", dtype=np.float32):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.mask_from = check_choice("mask_from", mask_from, MASK_FROM)
        self.residual = check_choice("residual", residual, RESIDUALS)
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
        self._cache = ResidualCrossCache(y_av, y_va, x_audio.shape)
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
        check_upstream(dy_audio, dy_visual, shape, shape)
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

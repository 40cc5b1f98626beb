"""``mbt`` (SPEC section 8; MBT, seed 003): attention bottlenecks. Cross-modal information
flows only through B bottleneck tokens ``Z : [T, B_batch, D, B]``.

At a stage s >= ``mbt_from_stage`` (MBT's L_f; earlier stages are ``concat``)::

    Z = learnable tokens [D, B] (broadcast)        at the first mbt stage
      = Carry(Z_out of stage s-1)                  later: Carry = Conv1x1 with bias when the
                                                   width changes, else the identity
    per modality m:  U_m = [X_m ; Z]               (N + B tokens)
                     Y_m = SSA_m(U_m)              one Spikformer SSA block (section 4;
                                                   explicit (N+B) x (N+B) map)
                     X_m' = X_m + Y_m[:, :N]       (residual add)
                     Z_m = Z + Y_m[:, N:]
    Z_out = (Z_a + Z_v) / 2                        carried to stage s+1

X_a' depends on X_a and Z only (and X_v' on X_v and Z); Z_out mixes both modalities, so the
visual stream reaches the audio stream only through the bottleneck values of the next stage.

Stage modules are linked through ``previous`` (the ``MBTFusion`` of stage s-1, or None): stage s
reads ``previous``'s Z_out in its forward, and its backward hands the gradient of that Z_out
back to ``previous``, whose own backward (which must come later, as in ``SNNergy.backward``,
stages 3, 2, 1) adds it. A backward in the wrong order raises instead of dropping the gradient.

Energy (SPEC section 7): the Q, K, V projections read ``[X_m ; Z]``, spike events in the N
token columns and analog values in the B bottleneck columns. Their convs
(``BottleneckConv1x1``) count ACs for the events of the token columns and MACs for the
bottleneck columns. The carry conv reads analog values (``reads="analog"``: MACs).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks import check_positive_int
from ..functional.norm import BN_EPS, BN_MOMENTUM
from ..nn.attention import SSAttention, check_token_map, sum_counts
from ..nn.counting import CONTAINER
from ..nn.layers import Conv1x1
from ..nn.module import Module, Parameter
from . import concat
from .base import TOKEN_INIT_STD, check_upstream, common_options

__all__ = ["MBTFusion", "BottleneckSSA", "BottleneckConv1x1", "build", "BOTTLENECKS", "FROM_STAGE"]

BOTTLENECKS = 4     # bottleneck tokens (MBT's B; config field mbt_bottlenecks)
FROM_STAGE = 1      # the first stage with bottlenecks (MBT's L_f; config field mbt_from_stage)


class BottleneckConv1x1(Conv1x1):
    """A Conv1x1 whose input's last ``analog_tokens`` token columns are analog (the
    bottlenecks) and the others carry spike events. Energy: ACs for the events of the spike
    columns, MACs for the analog columns (while those events are known; an analog input is
    all MACs)."""

    analog_tokens = 0

    def _input_events(self, x):
        if not self.analog_tokens:
            return super()._input_events(x)
        return self.counter.events(x[..., :x.shape[3] - self.analog_tokens])

    def energy_counts(self):
        counts = super().energy_counts()
        if counts is None or counts.kind != "ac" or not self.analog_tokens:
            return counts
        M, C, _ = self._cache.x.shape                   # M = T * B (folded)
        return counts._replace(macs=float(M * self.analog_tokens * C * self.out_channels))


class BottleneckSSA(SSAttention):
    """Spikformer SSA block (``SSAttention``) over ``[tokens ; bottlenecks]`` whose Q, K, V
    convs are ``BottleneckConv1x1`` (same parameters, names and initialisation)."""

    def __init__(self, dim, heads, *, bottlenecks, **kw):
        super().__init__(dim, heads, **kw)
        for name in ("q", "k", "v"):
            getattr(self, f"{name}_conv").analog_tokens = bottlenecks

    input_conv = BottleneckConv1x1


class MBTCache(NamedTuple):
    tokens: int             # N, the token columns before the bottlenecks
    shape: tuple            # the inputs' shape [T, B, D, N]


class MBTFusion(Module):
    """``MBTFusion(dim, heads, *, bottlenecks=4, previous=None, neuron=None,
    attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32)``: one mbt
    stage (module docstring). ``previous``: the ``MBTFusion`` of the stage before, or None for
    the first mbt stage (which owns the learnable tokens). ``bottlenecks=0`` is allowed: the
    streams are then independent (two SSA layers, nothing carried).

    Parameters (docs/fusion.md): ``bottleneck_tokens [dim, B]`` (first mbt stage) or
    ``carry_conv.weight [dim, dim_prev]``, ``carry_conv.bias [dim]`` (a later stage whose width
    differs), ``audio_attn.*``, ``visual_attn.*`` (SSA blocks: ``q``, ``k``, ``v``, ``proj``
    conv and BN). Counters: the ``ssa`` cores (``macs`` = 2·T·B·D·(N+B)², ``comparisons``).
    Energy: a container (its tokens are values its layers read).
    """

    energy_role = CONTAINER

    def __init__(self, dim, heads, *, bottlenecks=BOTTLENECKS, previous=None, neuron=None,
                 attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.heads = check_positive_int(heads, "heads")
        if isinstance(bottlenecks, bool) or not isinstance(bottlenecks, (int, np.integer)) \
                or bottlenecks < 0:
            raise ValueError(f"bottlenecks: expected a non-negative integer, got {bottlenecks!r}")
        self.bottlenecks = int(bottlenecks)
        self.dtype = np.dtype(dtype)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        if previous is not None:
            if not isinstance(previous, MBTFusion):
                raise ValueError(f"previous: expected the MBTFusion of the stage before or None, "
                                 f"got {type(previous).__name__}")
            if previous.bottlenecks != self.bottlenecks:
                raise ValueError(f"previous: carries {previous.bottlenecks} bottlenecks, this stage "
                                 f"expects {self.bottlenecks}")
            if previous._next is not None:
                raise ValueError("previous: already feeds another stage's MBTFusion")
            if previous.dtype != self.dtype:
                raise ValueError(f"previous: dtype {previous.dtype}, expected {self.dtype}")
        # plain attributes, not children: each stage's parameters belong to that stage alone
        object.__setattr__(self, "_previous", previous)
        object.__setattr__(self, "_next", None)
        if previous is not None:
            object.__setattr__(previous, "_next", self)
        if self.bottlenecks and previous is None:
            self.bottleneck_tokens = Parameter(
                rng.normal(0.0, TOKEN_INIT_STD, (self.dim, self.bottlenecks)).astype(self.dtype))
        elif self.bottlenecks and previous.dim != self.dim:
            self.carry_conv = Conv1x1(previous.dim, self.dim, bias=True, rng=rng, dtype=dtype,
                                      reads="analog")
        block = dict(bottlenecks=self.bottlenecks, neuron=neuron, attention_neuron=attention_neuron,
                     bn_momentum=bn_momentum, bn_eps=bn_eps, rng=rng, dtype=dtype)
        self.audio_attn = BottleneckSSA(self.dim, heads, **block)
        self.visual_attn = BottleneckSSA(self.dim, heads, **block)
        self._cache = None
        self._out = None            # Z_out of the last forward, read by the next stage
        self._pending = None        # gradient of Z_out handed back by the next stage
        self._awaiting = False      # the next stage read Z_out and has not run its backward

    @property
    def previous(self):
        return self._previous

    @property
    def bottleneck_out(self) -> np.ndarray | None:
        """Z_out ``[T, B, D, bottlenecks]`` of the last forward (None before the first)."""
        return self._out

    # ------------------------------------------------------------------ bottlenecks in
    def _bottlenecks_in(self, T: int, B: int) -> np.ndarray:
        """Z ``[T, B, D, bottlenecks]`` of this stage."""
        if not self.bottlenecks:
            return np.zeros((T, B, self.dim, 0), dtype=self.dtype)
        if self._previous is None:
            p = self.bottleneck_tokens.value
            return np.ascontiguousarray(np.broadcast_to(p[None, None], (T, B) + p.shape))
        z = self._previous._out
        expected = (T, B, self._previous.dim, self.bottlenecks)
        if z is None or z.shape != expected:
            raise ValueError(f"previous: the previous stage's bottlenecks are "
                             f"{None if z is None else z.shape}, expected {expected}: run the "
                             f"previous stage's forward on the same batch first")
        object.__setattr__(self._previous, "_awaiting", True)
        if "carry_conv" not in self._children:
            return z
        return self.carry_conv.forward(z)

    # ------------------------------------------------------------------ passes
    def forward(self, x_audio, x_visual):
        """x_audio, x_visual ``[T, B, D, N]`` -> (y_audio, y_visual); keeps Z_out for the next
        stage."""
        check_token_map(x_audio, "x_audio", self.dim, self.dtype)
        check_token_map(x_visual, "x_visual", self.dim, self.dtype, x_audio, "x_audio")
        T, B, _, N = x_audio.shape
        self._out, self._pending, self._awaiting = None, None, False
        z = self._bottlenecks_in(T, B)
        y = {}
        for name, x, attn in (("audio", x_audio, self.audio_attn), ("visual", x_visual, self.visual_attn)):
            # spike events in the N token columns; the bottleneck columns are analog (the
            # BottleneckConv1x1 projections count them in MACs)
            y[name] = attn.forward(np.concatenate([x, z], axis=3))
        self._out = z + 0.5 * (y["audio"][..., N:] + y["visual"][..., N:])
        self._cache = MBTCache(N, x_audio.shape)
        return x_audio + y["audio"][..., :N], x_visual + y["visual"][..., :N]

    def backward(self, dy_audio, dy_visual):
        """-> (dx_audio, dx_visual); accumulates the parameters' grads and hands the gradient
        of the carried bottlenecks to the previous stage. Never mutates the upstream
        gradients."""
        if self._cache is None:
            raise ValueError("backward: no forward cache (call forward first)")
        if self._awaiting:
            raise ValueError("backward: the next stage's MBTFusion read this stage's bottlenecks "
                             "and has not run its backward yet; run backward in reverse stage order")
        N, shape = self._cache
        check_upstream(dy_audio, dy_visual, shape, shape)
        T, B, D, _ = shape
        dz_out = self._pending
        self._pending = None
        if dz_out is None:
            dz_out = np.zeros((T, B, D, self.bottlenecks), dtype=self.dtype)
        dz = dz_out.copy()
        dx = {}
        half = self.dtype.type(0.5) * dz_out
        for name, g, attn in (("audio", dy_audio, self.audio_attn), ("visual", dy_visual, self.visual_attn)):
            g = g.astype(self.dtype, copy=False)
            du = attn.backward(np.concatenate([g, half], axis=3))
            dx[name] = du[..., :N] + g
            dz += du[..., N:]
        if self.bottlenecks:
            self._send_back(dz)
        return dx["audio"], dx["visual"]

    def _send_back(self, dz: np.ndarray) -> None:
        """dz: gradient of this stage's Z ``[T, B, D, bottlenecks]``."""
        if self._previous is None:
            self.bottleneck_tokens.grad += dz.sum(axis=(0, 1))
            return
        if "carry_conv" in self._children:
            dz = self.carry_conv.backward(dz)
        prev = self._previous
        object.__setattr__(prev, "_pending", dz if prev._pending is None else prev._pending + dz)
        object.__setattr__(prev, "_awaiting", False)

    @property
    def attention_counts(self) -> dict:
        """The last forward's counts of both SSA cores, summed."""
        return sum_counts(self.audio_attn.attention_counts, self.visual_attn.attention_counts)


def build(c, stage, dim, heads, *, rng, dtype, previous=None):
    """The ``mbt`` mode: ``concat`` before stage ``mbt_from_stage``, then an ``MBTFusion`` with
    ``mbt_bottlenecks`` tokens linked to the ``MBTFusion`` of the stage before (if any)."""
    if stage < c.mbt_from_stage:
        return concat.build(c, stage, dim, heads, rng=rng, dtype=dtype, previous=previous)
    return MBTFusion(dim, heads, bottlenecks=c.mbt_bottlenecks,
                     previous=previous if isinstance(previous, MBTFusion) else None,
                     **common_options(c, rng=rng, dtype=dtype))

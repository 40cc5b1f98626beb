"""``factorized`` (SPEC section 8; DeepAVFusion, seed 002): factorized audio-visual
interactions through aggregation tokens, pairs and fusion tokens, linear in N.

Per stage, with learnable aggregation tokens ``A_a, A_v : [D, n]`` (n = n_a = n_v,
``factorized_agg_tokens``, default 8) and fusion tokens ``F0 : [D, F]``
(``factorized_fusion_tokens``, default 16), each broadcast over T and B::

    aggregate   g_m = TokenAttn(queries A_m, keys and values X_m)           [T,B,D,n]   (m = a, v)
    pairs       P[:, i*n_v + j] = [g_a[:, i] ; g_v[:, j]]                    [T,B,2D,n_a*n_v]
                P' = LIF(BN(Conv1x1(P)))           (projection 2D -> D, no bias)
    fuse        Fz = TokenAttn(queries F0, keys and values P')              [T,B,D,F]
    read        X_m' = X_m + alpha_m * TokenAttn(queries X_m, keys and values Fz)

where ``TokenAttn(x_q, x_kv) = LIF(BN(Conv1x1 with bias(LIF_0.5((Q Kᵀ) V * 0.125))))`` with
``Q = LIF(BN(Conv1x1(x_q)))``, ``K``, ``V = LIF(BN(Conv1x1(x_kv)))``: Spikformer's SSA of
section 4 with queries and keys from token sets of different sizes
(``refsnn.nn.attention.SSACrossAttention``).
The explicit maps are [n, N] (aggregate), [F, n_a·n_v] (fuse) and [N, F] (read): linear in N.
alpha_m is ``alpha`` for audio and ``beta`` for visual, with CMQKA's residual options.

[choices] SPEC section 8 writes the attention as ``LIF(BN(Conv1x1((Q Kᵀ) V * s)))``; the
attention LIF of section 4 (v_th 0.5) sits before the projection, as in SSA, so every conv but
those on the learnable tokens reads spikes. The fusion tokens are queries only (the read uses
the fuse output Fz, not F0 + Fz), and no token is carried from one stage to the next.

The learnable tokens are analog inputs: their query projections count multiply-accumulates
(SPEC section 7), once per batch (``TokenQueryAttention``); in eval mode they do not depend on
the input at all.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks import check_positive_int
from ..functional.norm import BN_EPS, BN_MOMENTUM
from ..nn.attention import SSACrossAttention, attention_neurons, check_token_map, sum_counts
from ..nn.layers import LIF, BatchNorm, Conv1x1
from ..nn.module import Parameter
from ..nn.unit import ConvBNLIF
from .base import TOKEN_INIT_STD, ResidualCrossFusion, check_upstream, common_options

__all__ = ["FactorizedFusion", "TokenQueryAttention", "pair_tokens", "pair_tokens_backward", "build",
           "FUSION_TOKENS", "AGG_TOKENS"]

FUSION_TOKENS = 16  # F (config field factorized_fusion_tokens)
AGG_TOKENS = 8      # n = n_a = n_v (config field factorized_agg_tokens)


# --------------------------------------------------------------------------------------------
# Attention with learnable-token queries
# --------------------------------------------------------------------------------------------

class TokenQueryAttention(SSACrossAttention):
    """SSA block whose queries come from learnable tokens ``[dim, n]``, shared by every time
    step and sample: ``forward(tokens [dim, n], x_kv [T, B, dim, Nk]) -> y [T, B, dim, n]``,
    ``backward(dy) -> (dtokens [dim, n], dx_kv)``.

    ``q_conv`` and ``q_bn`` run once per forward on ``[1, 1, dim, n]`` (BatchNorm's statistics
    are those of the T·B identical copies, its running variance counts them all); ``q_lif``
    runs over the broadcast ``[T, B, dim, n]``. The result equals the block applied to the
    broadcast tokens, and the query projection costs n·dim² MACs per batch instead of per time
    step and sample (in eval mode it does not depend on the input at all). Children and names
    as ``SSACrossAttention``.
    """

    def __init__(self, dim, heads, **kw):
        super().__init__(dim, heads, **kw)
        self.q_conv.reads = "analog"        # learnable tokens: MACs, whatever their values

    def forward(self, tokens, x_kv):
        self._check_input(x_kv, "x_kv")
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 2 or tokens.shape[0] != self.dim \
                or tokens.dtype != self.dtype:
            raise ValueError(f"tokens: expected a [{self.dim}, n] array of dtype {self.dtype}, got "
                             f"{getattr(tokens, 'shape', type(tokens).__name__)}")
        T, B = x_kv.shape[:2]
        x = np.array(tokens[None, None])
        q = self.q.forward(x, repeat_to=(T, B))      # one projection, broadcast to [T, B]
        return self.proj.forward(self.ssa.forward(q, self.k.forward(x_kv), self.v.forward(x_kv)))

    def backward(self, dy):
        dq, dk, dv = self.ssa.backward(self.proj.backward(dy))
        # every copy of the shared projection receives its gradient: the unit sums them
        dtokens = self.q.backward(dq)[0, 0]
        return dtokens, self.k.backward(dk) + self.v.backward(dv)


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------

def pair_tokens(g_a: np.ndarray, g_v: np.ndarray) -> np.ndarray:
    """g_a ``[T, B, D, n_a]``, g_v ``[T, B, D, n_v]`` -> ``[T, B, 2D, n_a*n_v]``: token
    ``i*n_v + j`` is the channel concatenation ``[g_a[..., i] ; g_v[..., j]]`` (a copy; no
    arithmetic)."""
    n_a, n_v = g_a.shape[3], g_v.shape[3]
    return np.concatenate([np.repeat(g_a, n_v, axis=3), np.tile(g_v, (1, 1, 1, n_a))], axis=2)


def pair_tokens_backward(dp: np.ndarray, n_a: int, n_v: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of ``pair_tokens``: every g_a token sums the n_v pairs it entered, every g_v
    token the n_a pairs. Returns ``(dg_a, dg_v)``."""
    T, B, D2 = dp.shape[:3]
    D = D2 // 2
    grid = dp.reshape(T, B, D2, n_a, n_v)
    return grid[:, :, :D].sum(axis=4), grid[:, :, D:].sum(axis=3)


# --------------------------------------------------------------------------------------------
# The fusion module
# --------------------------------------------------------------------------------------------

class FactorizedCache(NamedTuple):
    y_a: np.ndarray         # audio read-out [T, B, D, N_a]
    y_v: np.ndarray         # visual read-out [T, B, D, N_v]
    shapes: tuple           # (x_audio.shape, x_visual.shape)


class FactorizedFusion(ResidualCrossFusion):
    """``FactorizedFusion(dim, heads, *, fusion_tokens=16, agg_tokens=8, residual="scalar",
    neuron=None, attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng,
    dtype=np.float32)``: the ``factorized`` mode of the module docstring.

    ``forward(x_audio, x_visual) -> (y_audio, y_visual)``, ``backward(dy_audio, dy_visual) ->
    (dx_audio, dx_visual)`` on ``[T, B, dim, N]`` maps (N may differ between the modalities).
    Parameters (docs/fusion.md): ``alpha``, ``beta``, ``audio_agg_tokens [dim, n]``,
    ``visual_agg_tokens [dim, n]``, ``fusion_tokens [dim, F]``, ``audio_aggregate.*``,
    ``visual_aggregate.*``, ``pair_conv.weight [dim, 2 dim]``, ``pair_bn.*``, ``fuse.*``,
    ``audio_read.*``, ``visual_read.*`` (each ``*`` an SSA block: ``TokenQueryAttention`` for
    the aggregations and ``fuse``, ``SSACrossAttention`` for the reads).
    """

    def __init__(self, dim, heads, *, fusion_tokens=FUSION_TOKENS, agg_tokens=AGG_TOKENS, residual="scalar",
                 neuron=None, attention_neuron=None, bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng,
                 dtype=np.float32):
        super().__init__(dim, residual=residual, dtype=dtype)
        self.heads = check_positive_int(heads, "heads")
        self.n_fusion = check_positive_int(fusion_tokens, "fusion_tokens")
        self.n_agg = check_positive_int(agg_tokens, "agg_tokens")
        for name, n in (("fusion_tokens", self.n_fusion), ("agg_tokens", self.n_agg)):
            if n < 2:
                # BatchNorm over the copies of one token normalises it away (to BN's bias)
                raise ValueError(f"{name}: expected at least 2 learnable tokens (BatchNorm of their "
                                 f"query projection needs two distinct values), got {n}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        D = self.dim
        for name, n in (("audio_agg_tokens", self.n_agg), ("visual_agg_tokens", self.n_agg),
                        ("fusion_tokens", self.n_fusion)):
            setattr(self, name, Parameter(rng.normal(0.0, TOKEN_INIT_STD, (D, n)).astype(self.dtype)))
        block = dict(neuron=neuron, attention_neuron=attention_neuron, bn_momentum=bn_momentum,
                     bn_eps=bn_eps, rng=rng, dtype=dtype)
        self.audio_aggregate = TokenQueryAttention(D, heads, **block)
        self.visual_aggregate = TokenQueryAttention(D, heads, **block)
        self.pair = ConvBNLIF(self, "pair", Conv1x1(2 * D, D, bias=False, rng=rng, dtype=dtype),
                              BatchNorm(D, momentum=bn_momentum, eps=bn_eps, dtype=dtype),
                              LIF(**attention_neurons(neuron, attention_neuron)[0]))
        self.fuse = TokenQueryAttention(D, heads, **block)
        self.audio_read = SSACrossAttention(D, heads, **block)
        self.visual_read = SSACrossAttention(D, heads, **block)

    def forward(self, x_audio, x_visual):
        """x_audio ``[T, B, D, N_a]``, x_visual ``[T, B, D, N_v]`` -> (y_audio, y_visual)."""
        check_token_map(x_audio, "x_audio", self.dim, self.dtype)
        check_token_map(x_visual, "x_visual", self.dim, self.dtype)
        if x_visual.shape[:2] != x_audio.shape[:2]:
            raise ValueError(f"x_visual: expected [T, B] = {x_audio.shape[:2]} (those of x_audio), "
                             f"got shape {x_visual.shape}")
        g_a = self.audio_aggregate.forward(self.audio_agg_tokens.value, x_audio)
        g_v = self.visual_aggregate.forward(self.visual_agg_tokens.value, x_visual)
        p = self.pair.forward(pair_tokens(g_a, g_v))
        f = self.fuse.forward(self.fusion_tokens.value, p)
        y_a = self.audio_read.forward(x_audio, f)
        y_v = self.visual_read.forward(x_visual, f)
        self._cache = FactorizedCache(y_a, y_v, (x_audio.shape, x_visual.shape))
        return x_audio + self._weight("alpha") * y_a, x_visual + self._weight("beta") * y_v

    def backward(self, dy_audio, dy_visual):
        """-> (dx_audio, dx_visual); accumulates every parameter's grad. Never mutates the
        upstream gradients."""
        if self._cache is None:
            raise ValueError("backward: no forward cache (call forward first)")
        y_a, y_v, shapes = self._cache
        check_upstream(dy_audio, dy_visual, *shapes)
        self._accumulate_weight_grad("alpha", dy_audio, y_a)
        self._accumulate_weight_grad("beta", dy_visual, y_v)
        dx_a, df_a = self.audio_read.backward(self._weight("alpha") * dy_audio)
        dx_v, df_v = self.visual_read.backward(self._weight("beta") * dy_visual)
        dtok_f, dp = self.fuse.backward(df_a + df_v)
        self.fusion_tokens.grad += dtok_f
        dpairs = self.pair.backward(dp)
        dg_a, dg_v = pair_tokens_backward(dpairs, self.n_agg, self.n_agg)
        dtok_a, dkv_a = self.audio_aggregate.backward(dg_a)
        dtok_v, dkv_v = self.visual_aggregate.backward(dg_v)
        self.audio_agg_tokens.grad += dtok_a
        self.visual_agg_tokens.grad += dtok_v
        dx_a += dkv_a
        dx_a += dy_audio
        dx_v += dkv_v
        dx_v += dy_visual
        return dx_a, dx_v

    @property
    def attention_counts(self) -> dict:
        """The last forward's counts of the five attention cores, summed."""
        return sum_counts(*(m.attention_counts for m in (
            self.audio_aggregate, self.visual_aggregate, self.fuse, self.audio_read,
            self.visual_read)))


def build(c, stage, dim, heads, *, rng, dtype, previous=None) -> FactorizedFusion:
    """The ``factorized`` mode after every stage, options ``factorized_fusion_tokens``,
    ``factorized_agg_tokens`` and CMQKA's ``cmqka_residual``."""
    return FactorizedFusion(dim, heads, fusion_tokens=c.factorized_fusion_tokens,
                            agg_tokens=c.factorized_agg_tokens, residual=c.cmqka_residual,
                            **common_options(c, rng=rng, dtype=dtype))

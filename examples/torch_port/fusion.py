"""The baseline fusion modes of SPEC section 8 in PyTorch (``ssa-cross``, ``mbt``,
``factorized``), with refsnn's parameter names (docs/fusion.md) so that refsnn's state_dicts
load one to one. Written from SPEC section 8 and docs/fusion.md's choices where SPEC is terse;
imports nothing from refsnn.

Token maps are channels-last ``[T, B, N, D]``, as everywhere in the port. Every attention is
the Spikformer SSA block of SPEC section 4 (``SSACrossAttention``: ``Q, K, V = LIF(BN(Conv1x1
(.)))`` without bias, per head ``LIF_att((Q Kᵀ) V * 0.125)`` with the explicit map, then
``LIF(BN(Conv1x1 with bias(.)))``); the projection neurons are the config's neuron, the
attention LIF the config's attention neuron.

    ssa-cross    X_a' = X_a + alpha * SSA(Q from X_a; K, V from X_v), and the mirror (beta)
    mbt          U_m = [X_m ; Z] (N + Bn tokens), Y_m = SSA_m(U_m), X_m' = X_m + Y_m[:N],
                 Z_out = Z + (Y_a[N:] + Y_v[N:]) / 2 carried to the next stage (through
                 ``carry_conv`` when the width changes); Z = the learnable ``bottleneck_tokens``
                 at the first mbt stage (``mbt_from_stage``; earlier stages are concat)
    factorized   g_m = SSA(Q from m_agg_tokens; K, V from X_m); pairs [g_a[i] ; g_v[j]] at token
                 i*n + j -> pair_lif(pair_bn(pair_conv)); Fz = SSA(Q from fusion_tokens; K, V
                 from the pairs); X_m' = X_m + alpha_m * SSA(Q from X_m; K, V from Fz)

Learnable query tokens (factorized) are shared by every time step and sample: their ``q_conv``
and ``q_bn`` run once on ``[n, D]`` (BatchNorm's statistics are those of the T*B identical
copies; the running variance counts every copy), ``q_lif`` on the broadcast ``[T, B, n, D]``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import PortConfig
from .lif import lif
from .model import CMQKA, BatchNorm, ResidualCrossFusion, SSACrossAttention
from .ops import ssa

__all__ = ["SSACrossFusion", "MBTFusion", "FactorizedFusion", "TokenQueryAttention",
           "pair_tokens", "build_fusion"]


def _block(cfg: PortConfig, dim: int, heads: int) -> SSACrossAttention:
    return SSACrossAttention(dim, heads, cfg.neuron(), cfg.attention_neuron(), cfg.bn_momentum,
                             cfg.bn_eps)


class SSACrossFusion(ResidualCrossFusion):
    """``ssa-cross`` (S-CMRL style): CMQKA's wiring and residual with SSA directions
    (``audio_from_visual``: queries from X_a, keys and values from X_v)."""

    def __init__(self, cfg: PortConfig, dim: int, heads: int):
        super().__init__(dim, mask_from="query_modality", residual=cfg.cmqka_residual)
        self.audio_from_visual = _block(cfg, dim, heads)
        self.visual_from_audio = _block(cfg, dim, heads)


class MBTFusion(nn.Module):
    """One ``mbt`` stage. ``previous``: the MBTFusion of the stage before (its ``bottleneck_out``
    is this stage's input Z), or None at the first mbt stage, which owns ``bottleneck_tokens
    [D, Bn]``. ``previous`` is kept as a plain reference, not a child, so each stage's
    parameters are its own (``fusion{s}.*``); autograd carries the gradient of Z back."""

    def __init__(self, cfg: PortConfig, dim: int, heads: int, previous: "MBTFusion | None"):
        super().__init__()
        self.dim, self.bottlenecks = dim, cfg.mbt_bottlenecks
        self.__dict__["previous"] = previous            # not registered as a submodule
        self.bottleneck_out = None
        if previous is None:
            self.bottleneck_tokens = nn.Parameter(torch.zeros(dim, self.bottlenecks))
        elif previous.dim != dim:
            self.carry_conv = nn.Linear(previous.dim, dim, bias=True)
        self.audio_attn = SSAttentionOnTokens(cfg, dim, heads)
        self.visual_attn = SSAttentionOnTokens(cfg, dim, heads)

    def _bottlenecks_in(self, T: int, B: int) -> torch.Tensor:
        """Z ``[T, B, Bn, D]``."""
        if self.previous is None:
            return self.bottleneck_tokens.t().expand(T, B, self.bottlenecks, self.dim)
        z = self.previous.bottleneck_out
        if z is None or z.shape[:2] != (T, B):
            raise ValueError("mbt: the previous stage's bottlenecks are missing or of another batch; "
                             "run the stages in order on one batch")
        return self.carry_conv(z) if hasattr(self, "carry_conv") else z

    def forward(self, x_a, x_v):
        T, B, N, _ = x_a.shape
        z = self._bottlenecks_in(T, B)
        y_a = self.audio_attn(torch.cat([x_a, z], dim=2))
        y_v = self.visual_attn(torch.cat([x_v, z], dim=2))
        self.bottleneck_out = z + 0.5 * (y_a[:, :, N:] + y_v[:, :, N:])
        return x_a + y_a[:, :, :N], x_v + y_v[:, :, :N]


class SSAttentionOnTokens(SSACrossAttention):
    """SSA self-attention over one token map (``forward(u) = SSA(Q, K, V from u)``), named as
    refsnn's ``BottleneckSSA`` (``q_conv`` ... ``proj_bn``)."""

    def __init__(self, cfg: PortConfig, dim: int, heads: int):
        super().__init__(dim, heads, cfg.neuron(), cfg.attention_neuron(), cfg.bn_momentum, cfg.bn_eps)

    def forward(self, u):
        return super().forward(u, u)


class TokenQueryAttention(SSACrossAttention):
    """SSA block whose queries are learnable tokens ``[D, n]`` shared by every step and sample:
    ``forward(tokens [D, n], x_kv [T, B, Nk, D]) -> [T, B, n, D]``."""

    def forward(self, tokens, x_kv):
        T, B = x_kv.shape[:2]
        h = self.q_bn.forward_shared(self.q_conv(tokens.t()), T * B)        # [n, D], once
        q = lif(h.expand(T, B, *h.shape), self.neuron)
        k = self.project(self.k_conv, self.k_bn, x_kv)
        v = self.project(self.v_conv, self.v_bn, x_kv)
        return self.project(self.proj_conv, self.proj_bn,
                            ssa(q, k, v, self.heads, 0.125, self.attention_neuron))


def pair_tokens(g_a: torch.Tensor, g_v: torch.Tensor) -> torch.Tensor:
    """g_a ``[T, B, n_a, D]``, g_v ``[T, B, n_v, D]`` -> ``[T, B, n_a n_v, 2D]``: token
    ``i*n_v + j`` is ``[g_a[i] ; g_v[j]]``."""
    n_a, n_v = g_a.shape[2], g_v.shape[2]
    return torch.cat([g_a.repeat_interleave(n_v, dim=2), g_v.repeat(1, 1, n_a, 1)], dim=3)


class FactorizedFusion(ResidualCrossFusion):
    """``factorized`` (DeepAVFusion): aggregation tokens, pairs, fusion tokens (module
    docstring). Residual weights as CMQKA's (``alpha`` for audio, ``beta`` for visual)."""

    def __init__(self, cfg: PortConfig, dim: int, heads: int):
        super().__init__(dim, residual=cfg.cmqka_residual)
        n, F_ = cfg.factorized_agg_tokens, cfg.factorized_fusion_tokens
        self.audio_agg_tokens = nn.Parameter(torch.zeros(dim, n))
        self.visual_agg_tokens = nn.Parameter(torch.zeros(dim, n))
        self.fusion_tokens = nn.Parameter(torch.zeros(dim, F_))
        args = (dim, heads, cfg.neuron(), cfg.attention_neuron(), cfg.bn_momentum, cfg.bn_eps)
        self.audio_aggregate = TokenQueryAttention(*args)
        self.visual_aggregate = TokenQueryAttention(*args)
        self.pair_conv = nn.Linear(2 * dim, dim, bias=False)
        self.pair_bn = BatchNorm(dim, cfg.bn_momentum, cfg.bn_eps)
        self.pair_neuron = cfg.neuron()                 # the projection neuron
        self.fuse = TokenQueryAttention(*args)
        self.audio_read = SSACrossAttention(*args)
        self.visual_read = SSACrossAttention(*args)

    def forward(self, x_a, x_v):
        g_a = self.audio_aggregate(self.audio_agg_tokens, x_a)
        g_v = self.visual_aggregate(self.visual_agg_tokens, x_v)
        p = lif(self.pair_bn(self.pair_conv(pair_tokens(g_a, g_v))), self.pair_neuron)
        f = self.fuse(self.fusion_tokens, p)
        alpha, beta = self.weights()
        return x_a + alpha * self.audio_read(x_a, f), x_v + beta * self.visual_read(x_v, f)


def build_fusion(cfg: PortConfig, stage: int, dim: int, heads: int, previous=None):
    """The ``cfg.fusion`` module after ``stage`` (1-3), or None for an identity stage (concat,
    and mbt before ``mbt_from_stage``). ``previous``: what this returned for the stage before."""
    if cfg.fusion == "concat" or (cfg.fusion == "mbt" and stage < cfg.mbt_from_stage):
        return None
    if cfg.fusion == "cmqka":
        return CMQKA(dim, heads, mask=cfg.cmqka_mask, mask_from=cfg.cmqka_mask_from,
                     residual=cfg.cmqka_residual, neuron=cfg.neuron(),
                     attention_neuron=cfg.attention_neuron(), momentum=cfg.bn_momentum,
                     eps=cfg.bn_eps)
    if cfg.fusion == "ssa-cross":
        return SSACrossFusion(cfg, dim, heads)
    if cfg.fusion == "mbt":
        return MBTFusion(cfg, dim, heads, previous if isinstance(previous, MBTFusion) else None)
    if cfg.fusion == "factorized":
        return FactorizedFusion(cfg, dim, heads)
    raise ValueError(f"fusion: expected one of cmqka, concat, ssa-cross, mbt, factorized, got {cfg.fusion!r}")

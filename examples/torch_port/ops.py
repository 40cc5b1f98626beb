"""Q-K attention (SPEC section 4) and the layers of section 3 that need more than torch's own.

Layout inside the port is channels-last: token maps are ``[T, B, N, D]`` (SPEC writes
``[T, B, D, N]``; ``adapter.py`` transposes at the boundary), feature maps are
``[T*B, C, H, W]`` tensors in ``torch.channels_last`` memory format.

The attention ops are plain autograd expressions: the gradients SPEC section 4 gives
(``dK = A * dZ``; ``dA`` the sum of ``K * dZ`` over the broadcast axis; ``dQ`` the attention
LIF's gradient broadcast back over the summed axis) are exactly what autograd derives from
``P = sum(Q)``, ``A = LIF(P)``, ``Z = A * K``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .lif import LIFOptions, lif

__all__ = ["qk_token", "qk_channel", "ssa", "batch_norm", "max_pool", "pack_bits", "unpack_bits",
           "ATTENTION_LIF"]

# The attention neuron: the default neuron with v_th = 0.5 (SPEC section 4).
ATTENTION_LIF = LIFOptions(v_threshold=0.5)


def _check_heads(d: int, heads: int) -> int:
    if heads < 1 or d % heads:
        raise ValueError(f"heads: expected a divisor of the width {d}, got {heads}")
    return d // heads


def qk_token(q: torch.Tensor, k: torch.Tensor, heads: int,
             neuron: LIFOptions = ATTENTION_LIF) -> tuple[torch.Tensor, torch.Tensor]:
    """QKTA. q, k: ``[T, B, N, D]``. Returns (Z ``[T, B, N, D]``, A ``[T, B, N, heads]``).

    P[t,b,n,i] = sum of head i's channels of Q; A = LIF(P); Z[..., c] = A[..., head(c)] K[..., c].
    Token n of Z depends on token n of Q and K only.
    """
    T, B, N, D = q.shape
    d = _check_heads(D, heads)
    p = q.reshape(T, B, N, heads, d).sum(-1)
    a = lif(p, neuron)
    z = (a.unsqueeze(-1) * k.reshape(T, B, N, heads, d)).reshape(T, B, N, D)
    return z, a


def qk_channel(q: torch.Tensor, k: torch.Tensor,
               neuron: LIFOptions = ATTENTION_LIF) -> tuple[torch.Tensor, torch.Tensor]:
    """QKCA. q, k: ``[T, B, N, D]``. Returns (Z ``[T, B, N, D]``, A ``[T, B, D]``).

    P[t,b,c] = sum over tokens of Q; A = LIF(P); Z[t,b,n,c] = A[t,b,c] K[t,b,n,c].
    """
    p = q.sum(2)
    a = lif(p, neuron)
    return a.unsqueeze(2) * k, a


def ssa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float = 0.125,
        neuron: LIFOptions = ATTENTION_LIF) -> torch.Tensor:
    """Spikformer SSA (the quadratic reference of SPEC section 4). q ``[T, B, N, D]``; k, v
    ``[T, B, Nk, D]`` (Nk = N for self-attention; another token set for the fusion baselines
    of SPEC section 8, whose queries attend to bottleneck, aggregation or fusion tokens).

    Per head, ``attn = Q_h K_h^T`` (an explicit N x Nk map), then ``LIF((attn V_h) * scale)``,
    evaluated in this order on purpose (the N Nk cost is the point of the comparison).
    """
    T, B, N, D = q.shape
    d = _check_heads(D, heads)
    if k.shape != v.shape or k.shape[:2] != (T, B) or k.shape[3] != D:
        raise ValueError(f"k, v: expected [T, B, Nk, D] = [{T}, {B}, Nk, {D}] (those of q), got "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")

    def split(x):  # [T,B,n,D] -> [T,B,h,n,d]
        return x.reshape(T, B, x.shape[2], heads, d).transpose(2, 3)

    attn = split(q) @ split(k).transpose(-1, -2)
    y = (attn @ split(v)) * scale
    return lif(y.transpose(2, 3).reshape(T, B, N, D), neuron)


def batch_norm(x: torch.Tensor, bn: "torch.nn.Module", training: bool, tokens: bool) -> torch.Tensor:
    """BatchNorm over every axis but the channel axis (SPEC section 3).

    ``tokens=True``: ``x`` is ``[..., C]`` (channels last; T, B and tokens together);
    ``tokens=False``: ``x`` is a ``[M, C, H, W]`` feature map. Running statistics use momentum
    ``bn.momentum`` and the unbiased variance, and replace the batch statistics in eval mode.
    """
    if not tokens:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            training, bn.momentum, bn.eps)
    shape = x.shape
    y = F.batch_norm(x.reshape(-1, shape[-1]), bn.running_mean, bn.running_var, bn.weight,
                     bn.bias, training, bn.momentum, bn.eps)
    return y.reshape(shape)


def max_pool(x: torch.Tensor) -> torch.Tensor:
    """MaxPool2d(3, 2, 1) on ``[M, C, H, W]``; padding is -inf. torch's CPU kernel keeps the
    first maximum of the window in row-major order (it replaces the running maximum only on a
    strictly larger value), which is SPEC's tie rule; ``tests/test_torch_port.py`` checks it."""
    return F.max_pool2d(x, 3, 2, 1)


def pack_bits(spikes: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """Pack 0/1 values along ``axis`` into 64-bit words (SPEC section 4): bit i of word w holds
    element 64*w + i; padding bits are 0. torch has no unsigned 64-bit arithmetic, so the words
    are int64 with the same bit pattern (``.numpy().view(np.uint64)`` gives the uint64 words)."""
    x = spikes.movedim(axis, -1).to(torch.int64)
    if ((x != 0) & (x != 1)).any():
        raise ValueError("spikes: expected binary values (0 or 1)")
    L = x.shape[-1]
    W = -(-L // 64)
    x = F.pad(x, (0, 64 * W - L)).reshape(*x.shape[:-1], W, 64)
    # distinct powers of two: their sum is their bitwise OR (bit 63 is int64's sign bit)
    weights = torch.bitwise_left_shift(torch.ones(64, dtype=torch.int64), torch.arange(64))
    return (x * weights).sum(-1).movedim(-1, axis)


def unpack_bits(words: torch.Tensor, length: int, axis: int = -1) -> torch.Tensor:
    """Inverse of ``pack_bits``: int64 (or uint64-pattern) words -> uint8 0/1 with ``length``
    elements on ``axis``."""
    w = words.movedim(axis, -1).to(torch.int64)
    bits = torch.bitwise_right_shift(w.unsqueeze(-1), torch.arange(64)) & 1
    bits = bits.reshape(*w.shape[:-1], -1)[..., :length]
    return bits.to(torch.uint8).movedim(-1, axis)

"""The building blocks of an SNNergy stream (SPEC section 6): the SPEDS patch embeddings,
the spiking MLP, the residual Q-K block, and a stage (embedding + blocks).

Feature maps are ``[T, B, C, H, W]``; blocks work on token maps ``[T, B, C, N]`` (N = H*W,
row-major), which are free reshapes of the same memory. Names follow docs/naming.md.
"""
from __future__ import annotations

import numpy as np

from .layers import LIF, BatchNorm, Conv1x1, Conv2d, MaxPool2d
from .module import Module, ModuleList

__all__ = ["PatchEmbedInit", "PatchEmbedStage", "SMLP", "Block", "Stage"]


def _register_sum(counter, total, stream, spikes):
    """Energy bookkeeping: ``total = stream + spikes`` carries the events of both."""
    if counter is not None:
        before = counter.events(stream)
        counter.register(total, None if before is None else before + int(np.count_nonzero(spikes)))


class PatchEmbedInit(Module):
    """SPEDS-1 (QKFormer ``PatchEmbedInit``; convolutions without bias). Divides H and W by 4.
    The layers are held directly (``proj1_conv``, ``proj1_bn``) so parameter names stay flat,
    as in QKFormer.

    u = LIF(MaxPool(BN(conv3x3(x))))            in -> dim/2, H/2
    a = LIF(MaxPool(BN(conv3x3(u))))            dim/2 -> dim, H/4
    a = LIF(BN(conv3x3(a)))                     dim -> dim
    r = LIF(BN(conv1x1 stride 2 (u)))           dim/2 -> dim, H/4
    out = a + r

    When the input repeats over time (``x`` has T = 1 and ``steps`` > 1), conv0, BN0 and the
    pool run once and their output is broadcast to the time steps before the first LIF
    (SPEC section 6: identical results).
    """

    def __init__(self, in_channels, dim, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        bn = bn or {}
        half = dim // 2
        self.proj0_conv = Conv2d(in_channels, half, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.proj0_bn = BatchNorm(half, dtype=dtype, **bn)
        self.proj0_pool = MaxPool2d()
        self.proj0_lif = LIF(**neuron)
        self.proj1_conv = Conv2d(half, dim, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.proj1_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.proj1_pool = MaxPool2d()
        self.proj1_lif = LIF(**neuron)
        self.proj2_conv = Conv2d(dim, dim, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.proj2_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.proj2_lif = LIF(**neuron)
        self.res_conv = Conv2d(half, dim, 1, 2, 0, bias=False, rng=rng, dtype=dtype)
        self.res_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.res_lif = LIF(**neuron)
        self._steps = None

    def forward(self, x, steps: int):
        """x ``[T', B, C, H, W]`` with T' = steps, or T' = 1 for an input repeated over steps."""
        repeated = x.shape[0] == 1 and steps > 1
        y = self.proj0_pool.forward(self.proj0_bn.forward(self.proj0_conv.forward(x),
                                                          repeats=steps if repeated else 1))
        if repeated:
            y = np.broadcast_to(y, (steps,) + y.shape[1:])
        self._steps = (steps, repeated)
        u = self.proj0_lif.forward(y)
        a = self.proj1_lif.forward(self.proj1_pool.forward(self.proj1_bn.forward(self.proj1_conv.forward(u))))
        a = self.proj2_lif.forward(self.proj2_bn.forward(self.proj2_conv.forward(a)))
        r = self.res_lif.forward(self.res_bn.forward(self.res_conv.forward(u)))
        return a + r

    def backward(self, dout, need_dx=True):
        steps, repeated = self._steps
        da = self.proj2_conv.backward(self.proj2_bn.backward(self.proj2_lif.backward(dout)))
        du = self.proj1_conv.backward(self.proj1_bn.backward(self.proj1_pool.backward(self.proj1_lif.backward(da))))
        du += self.res_conv.backward(self.res_bn.backward(self.res_lif.backward(dout)))
        dy = self.proj0_lif.backward(du)
        if repeated:
            dy = dy.sum(axis=0, keepdims=True)
        return self.proj0_conv.backward(self.proj0_bn.backward(self.proj0_pool.backward(dy)), need_dx=need_dx)


class PatchEmbedStage(Module):
    """SPEDS-2/3: halves H and W.

    a = LIF(MaxPool(BN(conv3x3(x))))            Cin -> dim
    a = LIF(BN(conv3x3(a)))                     dim -> dim
    r = LIF(BN(conv1x1 stride 2 (x)))           Cin -> dim
    out = a + r
    """

    def __init__(self, in_channels, dim, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        bn = bn or {}
        self.proj1_conv = Conv2d(in_channels, dim, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.proj1_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.proj1_pool = MaxPool2d()
        self.proj1_lif = LIF(**neuron)
        self.proj2_conv = Conv2d(dim, dim, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.proj2_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.proj2_lif = LIF(**neuron)
        self.res_conv = Conv2d(in_channels, dim, 1, 2, 0, bias=False, rng=rng, dtype=dtype)
        self.res_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.res_lif = LIF(**neuron)

    def forward(self, x):
        a = self.proj1_lif.forward(self.proj1_pool.forward(self.proj1_bn.forward(self.proj1_conv.forward(x))))
        a = self.proj2_lif.forward(self.proj2_bn.forward(self.proj2_conv.forward(a)))
        r = self.res_lif.forward(self.res_bn.forward(self.res_conv.forward(x)))
        return a + r

    def backward(self, dout):
        da = self.proj2_conv.backward(self.proj2_bn.backward(self.proj2_lif.backward(dout)))
        dx = self.proj1_conv.backward(self.proj1_bn.backward(self.proj1_pool.backward(self.proj1_lif.backward(da))))
        dx += self.res_conv.backward(self.res_bn.backward(self.res_lif.backward(dout)))
        return dx


class SMLP(Module):
    """Spiking MLP on tokens: LIF(BN(Conv1x1(x))) -> LIF(BN(Conv1x1(.))), both convs with bias."""

    def __init__(self, dim, hidden, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        bn = bn or {}
        self.fc1_conv = Conv1x1(dim, hidden, bias=True, rng=rng, dtype=dtype)
        self.fc1_bn = BatchNorm(hidden, dtype=dtype, **bn)
        self.fc1_lif = LIF(**neuron)
        self.fc2_conv = Conv1x1(hidden, dim, bias=True, rng=rng, dtype=dtype)
        self.fc2_bn = BatchNorm(dim, dtype=dtype, **bn)
        self.fc2_lif = LIF(**neuron)

    def forward(self, x):
        h = self.fc1_lif.forward(self.fc1_bn.forward(self.fc1_conv.forward(x)))
        return self.fc2_lif.forward(self.fc2_bn.forward(self.fc2_conv.forward(h)))

    def backward(self, dout):
        dh = self.fc2_conv.backward(self.fc2_bn.backward(self.fc2_lif.backward(dout)))
        return self.fc1_conv.backward(self.fc1_bn.backward(self.fc1_lif.backward(dh)))


class Block(Module):
    """x = x + attn(x); x = x + mlp(x)   on tokens ``[T, B, C, N]``."""

    def __init__(self, attn: Module, mlp: SMLP):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x):
        a = self.attn.forward(x)
        x1 = x + a
        _register_sum(self.counter, x1, x, a)
        m = self.mlp.forward(x1)
        x2 = x1 + m
        _register_sum(self.counter, x2, x1, m)
        return x2

    def backward(self, dout):
        dx = dout + self.mlp.backward(dout)
        return dx + self.attn.backward(dx)


class Stage(Module):
    """A patch embedding followed by Q-K blocks: feature map in, token map ``[T, B, C, N]`` out."""

    def __init__(self, embed: Module, blocks):
        super().__init__()
        self.embed = embed
        self.blocks = ModuleList(blocks)
        self._spatial = None

    def forward(self, x, steps: int | None = None):
        y = self.embed.forward(x, steps) if isinstance(self.embed, PatchEmbedInit) else self.embed.forward(x)
        T, B, C, H, W = y.shape
        self._spatial = (H, W)
        tokens = y.reshape(T, B, C, H * W)
        if self.counter is not None:
            self.counter.register(tokens, self.counter.events(y))
        for block in self.blocks:
            tokens = block.forward(tokens)
        return tokens

    @property
    def spatial(self):
        return self._spatial

    def backward(self, dtokens, need_dx=True):
        for block in reversed(list(self.blocks)):
            dtokens = block.backward(dtokens)
        T, B, C, N = dtokens.shape
        dy = dtokens.reshape(T, B, C, *self._spatial)
        if isinstance(self.embed, PatchEmbedInit):
            return self.embed.backward(dy, need_dx=need_dx)
        return self.embed.backward(dy)

"""The building blocks of an SNNergy stream (SPEC section 6): the SPEDS patch embeddings,
the spiking MLP, the residual Q-K block, and a stage (embedding + blocks).

Feature maps are ``[T, B, C, H, W]``; blocks work on token maps ``[T, B, C, N]`` (N = H*W,
row-major), which are free reshapes of the same memory. Names follow docs/naming.md.
"""
from __future__ import annotations

import numpy as np

from .counting import CONTAINER, register_sum
from .layers import LIF, BatchNorm, Conv1x1, Conv2d, MaxPool2d
from .module import Module, ModuleList
from .unit import ConvBNLIF

__all__ = ["PatchEmbedInit", "PatchEmbedStage", "SMLP", "Block", "Stage"]


class PatchEmbedInit(Module):
    """SPEDS-1 (QKFormer ``PatchEmbedInit``; convolutions without bias). Divides H and W by 4.
    Each line is a Conv-BN-LIF unit (``refsnn.nn.unit``) whose layers are held directly
    (``proj1_conv``, ``proj1_bn``) so parameter names stay flat, as in QKFormer.

    u = LIF(MaxPool(BN(conv3x3(x))))            proj0: in -> dim/2, H/2
    a = LIF(MaxPool(BN(conv3x3(u))))            proj1: dim/2 -> dim, H/4
    a = LIF(BN(conv3x3(a)))                     proj2: dim -> dim
    r = LIF(BN(conv1x1 stride 2 (u)))           res:   dim/2 -> dim, H/4
    out = a + r

    When the input repeats over time (``x`` has T = 1 and ``steps`` > 1), conv0, BN0 and the
    pool run once and their output is broadcast to the time steps before the first LIF
    (SPEC section 6: identical results). conv0 reads the stream's data: analog (MACs).
    """

    energy_role = CONTAINER

    def __init__(self, in_channels, dim, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        half = dim // 2
        self.proj0 = _conv_unit(self, "proj0", in_channels, half, 3, 1, 1, neuron, rng, dtype, bn,
                                pool=True, reads="analog")
        self.proj1 = _conv_unit(self, "proj1", half, dim, 3, 1, 1, neuron, rng, dtype, bn, pool=True)
        self.proj2 = _conv_unit(self, "proj2", dim, dim, 3, 1, 1, neuron, rng, dtype, bn)
        self.res = _conv_unit(self, "res", half, dim, 1, 2, 0, neuron, rng, dtype, bn)

    def conv_sides(self, side: int) -> tuple[dict, int]:
        """For an input of ``side`` x ``side``: each convolution module's input side, and the
        output's side (the pools and the strided res halve, rounding up)."""
        half = -(-side // 2)
        quarter = -(-half // 2)
        return {self.proj0_conv: side, self.proj1_conv: half, self.proj2_conv: quarter,
                self.res_conv: half}, quarter

    def forward(self, x, steps: int):
        """x ``[T', B, C, H, W]`` with T' = steps, or T' = 1 for an input repeated over steps."""
        u = self.proj0.forward(x, repeat_to=(steps, x.shape[1]))
        a = self.proj2.forward(self.proj1.forward(u))
        return a + self.res.forward(u)

    def backward(self, dout, need_dx=True):
        du = self.proj1.backward(self.proj2.backward(dout))
        du += self.res.backward(dout)
        return self.proj0.backward(du, need_dx=need_dx)


class PatchEmbedStage(Module):
    """SPEDS-2/3: halves H and W. Conv-BN-LIF units, names flat as in ``PatchEmbedInit``.

    a = LIF(MaxPool(BN(conv3x3(x))))            proj1: Cin -> dim
    a = LIF(BN(conv3x3(a)))                     proj2: dim -> dim
    r = LIF(BN(conv1x1 stride 2 (x)))           res:   Cin -> dim
    out = a + r
    """

    energy_role = CONTAINER

    def __init__(self, in_channels, dim, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        self.proj1 = _conv_unit(self, "proj1", in_channels, dim, 3, 1, 1, neuron, rng, dtype, bn,
                                pool=True)
        self.proj2 = _conv_unit(self, "proj2", dim, dim, 3, 1, 1, neuron, rng, dtype, bn)
        self.res = _conv_unit(self, "res", in_channels, dim, 1, 2, 0, neuron, rng, dtype, bn)

    def conv_sides(self, side: int) -> tuple[dict, int]:
        """As ``PatchEmbedInit.conv_sides``."""
        half = -(-side // 2)
        return {self.proj1_conv: side, self.proj2_conv: half, self.res_conv: side}, half

    def forward(self, x):
        return self.proj2.forward(self.proj1.forward(x)) + self.res.forward(x)

    def backward(self, dout):
        dx = self.proj1.backward(self.proj2.backward(dout))
        dx += self.res.backward(dout)
        return dx


def _conv_unit(owner, prefix, in_channels, out_channels, kernel, stride, padding, neuron, rng,
               dtype, bn, pool=False, reads="spikes") -> ConvBNLIF:
    """A SPEDS Conv-BN-(MaxPool-)LIF unit on ``owner`` (convolution without bias)."""
    conv = Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False, rng=rng, dtype=dtype,
                  reads=reads)
    return ConvBNLIF(owner, prefix, conv, BatchNorm(out_channels, dtype=dtype, **(bn or {})),
                     LIF(**neuron), pool=MaxPool2d() if pool else None)


class SMLP(Module):
    """Spiking MLP on tokens: LIF(BN(Conv1x1(x))) -> LIF(BN(Conv1x1(.))), both convs with bias
    (units ``fc1``, ``fc2``)."""

    energy_role = CONTAINER

    def __init__(self, dim, hidden, *, neuron, rng, dtype=np.float32, bn=None):
        super().__init__()
        bn = bn or {}
        self.fc1 = ConvBNLIF(self, "fc1", Conv1x1(dim, hidden, bias=True, rng=rng, dtype=dtype),
                             BatchNorm(hidden, dtype=dtype, **bn), LIF(**neuron))
        self.fc2 = ConvBNLIF(self, "fc2", Conv1x1(hidden, dim, bias=True, rng=rng, dtype=dtype),
                             BatchNorm(dim, dtype=dtype, **bn), LIF(**neuron))

    def forward(self, x):
        return self.fc2.forward(self.fc1.forward(x))

    def backward(self, dout):
        return self.fc1.backward(self.fc2.backward(dout))


class Block(Module):
    """x = x + attn(x); x = x + mlp(x)   on tokens ``[T, B, C, N]``. Each sum carries the
    events of both its terms (``register_sum``, for energy accounting)."""

    energy_role = CONTAINER

    def __init__(self, attn: Module, mlp: SMLP):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x):
        a = self.attn.forward(x)
        x1 = x + a
        register_sum(self.counter, x1, x, a)
        m = self.mlp.forward(x1)
        x2 = x1 + m
        register_sum(self.counter, x2, x1, m)
        return x2

    def backward(self, dout):
        dx = dout + self.mlp.backward(dout)
        return dx + self.attn.backward(dx)


class Stage(Module):
    """A patch embedding followed by Q-K blocks: feature map in, token map ``[T, B, C, N]`` out.

    ``steps`` (forward) and ``need_dx`` (backward) go to the embedding when given: the first
    stage's ``PatchEmbedInit`` takes them (an input repeated over time; data needs no dx)."""

    energy_role = CONTAINER

    def __init__(self, embed: Module, blocks):
        super().__init__()
        self.embed = embed
        self.blocks = ModuleList(blocks)
        self._spatial = None

    def forward(self, x, steps: int | None = None):
        y = self.embed.forward(x) if steps is None else self.embed.forward(x, steps)
        T, B, C, H, W = y.shape
        self._spatial = (H, W)
        tokens = y.reshape(T, B, C, H * W)
        for block in self.blocks:
            tokens = block.forward(tokens)
        return tokens

    @property
    def spatial(self):
        return self._spatial

    def backward(self, dtokens, need_dx: bool | None = None):
        for block in reversed(list(self.blocks)):
            dtokens = block.backward(dtokens)
        T, B, C, N = dtokens.shape
        dy = dtokens.reshape(T, B, C, *self._spatial)
        return self.embed.backward(dy) if need_dx is None else self.embed.backward(dy, need_dx=need_dx)

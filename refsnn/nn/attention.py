"""Spiking attention blocks (SPEC section 4) on token maps ``[T, B, C, N]``.

    QKAttention(dim, heads, mode="token"|"channel")   QKTA / QKCA block of QKFormer
    SSAttention(dim, heads)                           Spikformer SSA block (explicit N x N map)
    QKCrossAttention, SSACrossAttention               the same with Q from one map and K (, V)
                                                      from another: the pieces of the
                                                      cross-modal fusions (refsnn.fusion)

A block is: projections ``Q = LIF(BN(Conv1x1(x)))`` (no bias; likewise K, and V for SSA), the
attention core (a child module ``qk`` or ``ssa`` over ``refsnn.functional.attention``), then
``LIF(BN(Conv1x1 with bias(Z)))``. Each projection is a Conv-BN-LIF unit (``self.q``,
``self.k``, ``self.v``, ``self.proj``; ``refsnn.nn.unit``) whose layers are children named as
docs/naming.md says: ``q_conv``, ``q_bn``, ``q_lif``, ``k_conv``, ..., ``proj_conv``,
``proj_bn``, ``proj_lif``.

Options: ``neuron`` (keyword arguments of ``lif_forward`` for the projection neurons,
``Config.neuron_kwargs()``), ``attention_neuron`` (the attention LIF; default: ``neuron`` with
``v_threshold=0.5``, as ``Config.attention_neuron_kwargs()``), ``attention_backend`` ("packed":
bit-packed Numba kernels, the default; "dense": NumPy), ``bn_momentum``, ``bn_eps``, ``rng``
(a ``numpy.random.Generator``), ``dtype``.

``packed_spikes=True`` (Q-K blocks; off by default): on the packed backend the Q and K neurons
emit bit-packed spikes in the layout of the core (``lif_forward``'s ``pack``: no float map of
Q or K is written, the core runs on the bits); Z comes out as a float map of the block's dtype
for the output convolution. The same results; off by default because the packed LIF kernel
it compiles costs 3-5 CPU s more before a model's first step, for a step no faster at the
presets' shapes (docs/attention.md).

Operation counts: the cores ``qk`` / ``ssa`` hold the last forward's counts in ``op_counts``
(see refsnn.functional.attention for the names); the blocks' ``attention_counts`` returns the
same numbers (summed over their cores). Energy: the cores are synapses that compute their own
``energy_counts()`` from what they read (refsnn.nn.counting); the blocks are containers.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..functional.attention import (ATTENTION_BACKENDS, ATTENTION_V_THRESHOLD, attention_options,
                                    qk_channel_backward, qk_channel_forward, qk_token_backward,
                                    qk_token_forward, ssa_backward, ssa_forward)
from ..checks import check_choice, check_float_array, check_positive_int
from ..kernels.bitpack import PackedSpikes
from ..functional.norm import BN_EPS, BN_MOMENTUM
from .layers import LIF, BatchNorm, Conv1x1
from .counting import CONTAINER, SYNAPSE, SynapseCounts
from .module import Module
from .unit import ConvBNLIF

__all__ = ["QKCore", "SSACore", "QKAttention", "QKCrossAttention", "SSAttention",
           "SSACrossAttention", "QK_MODES", "attention_neurons", "sum_counts", "check_token_map"]

QK_MODES = ("token", "channel")


def attention_neurons(neuron: dict | None, attention_neuron: dict | None) -> tuple[dict, dict]:
    """(projection neuron, attention neuron) keyword dicts; the attention neuron defaults to
    the projection neuron with v_threshold = 0.5 (SPEC section 4)."""
    for name, value in (("neuron", neuron), ("attention_neuron", attention_neuron)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{name}: expected a dict of lif_forward keyword arguments or None, "
                             f"got {type(value).__name__}")
    neuron = dict(neuron or {})
    if attention_neuron is None:
        attention_neuron = {**neuron, "v_threshold": ATTENTION_V_THRESHOLD}
    return neuron, dict(attention_neuron)


def sum_counts(*counts: dict) -> dict:
    """Key-wise sum of operation-count dicts."""
    out: dict[str, int] = {}
    for c in counts:
        for key, value in c.items():
            out[key] = out.get(key, 0) + int(value)
    return out


def check_token_map(x, name: str, dim: int, dtype, like: np.ndarray | None = None,
                    like_name: str = "") -> None:
    """A module input: a finite ``[T, B, dim, N]`` array of the module's dtype (and, given
    ``like``, of its shape; ``like_name`` names it in the message)."""
    check_float_array(x, name, ndim=4)
    if x.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (the module's), got {x.dtype}")
    if x.shape[2] != dim:
        raise ValueError(f"{name}: expected [T, B, {dim}, N], got shape {x.shape}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name}: expected the shape of {like_name} {like.shape}, got {x.shape}")


def _check_backend(backend, attention_neuron: dict) -> str:
    check_choice("attention_backend", backend, ATTENTION_BACKENDS)
    opts = attention_options(attention_neuron)
    if opts["spike_fn"] == "smooth" and backend == "packed":
        raise ValueError("attention_backend: smooth spikes (spike_fn='smooth', SPEC section 12) "
                         "have no bit-packed form; use attention_backend='dense'")
    return backend


# --------------------------------------------------------------------------------------------
# Cores: no parameters; the layers whose op counts energy accounting reads (``*.qk``)
# --------------------------------------------------------------------------------------------

class QKRead(NamedTuple):
    """What a Q-K core read in its last forward with a counter attached."""
    q_elements: int
    steps: int


class SSARead(NamedTuple):
    """What an SSA core read in its last forward with a counter attached."""
    q_spikes: int
    q_elements: int
    v_spikes: int
    v_elements: int
    steps: int


class QKCore(Module):
    """The Q-K attention core: ``forward(q, k) -> z``; ``backward(dz) -> (dq, dk)``.

    mode "token" (QKTA, per-head channel sums) or "channel" (QKCA, per-channel token sums).
    Energy (a synapse, SPEC section 7): one AC per Q spike summed and one per K spike kept;
    the ANN reference, one MAC per element of Q for the sum and one for the mask.
    """

    energy_role = SYNAPSE
    op_kind = "attention"
    _q_read: "QKRead | None" = None     # what the last counted forward read
    z_dtype = None                      # Z's float dtype from packed q and k (None: float32)

    def __init__(self, heads, mode="token", *, neuron=None, backend="packed"):
        super().__init__()
        check_choice("mode", mode, QK_MODES)
        self.heads = check_positive_int(heads, "heads")
        self.mode = mode
        self.neuron = {"v_threshold": ATTENTION_V_THRESHOLD} if neuron is None else dict(neuron)
        self.backend = _check_backend(backend, self.neuron)
        self._cache = None
        self.op_counts = {}

    def forward(self, q, k):
        # q, k: float maps, or PackedSpikes from neurons that emit them (then Z in the dtype of
        # the module that set ``z_dtype``, float32 by default)
        z_dtype = self.z_dtype if isinstance(q, PackedSpikes) and isinstance(k, PackedSpikes) else None
        if self.mode == "token":
            z, cache = qk_token_forward(q, k, self.heads, neuron=self.neuron, backend=self.backend,
                                        z_dtype=z_dtype)
        else:
            z, cache = qk_channel_forward(q, k, neuron=self.neuron, backend=self.backend,
                                          z_dtype=z_dtype)
        self._cache = cache
        self.op_counts = dict(cache.counts)
        if self.counter is not None:
            self._q_read = QKRead(int(q.size), int(q.shape[0]))
        return z

    def backward(self, dz):
        if self.mode == "token":
            return qk_token_backward(dz, self._cache)
        return qk_channel_backward(dz, self._cache)

    def energy_counts(self) -> SynapseCounts | None:
        if self._q_read is None or not self.op_counts:
            return None
        c = self.op_counts
        q_elements, steps = float(self._q_read.q_elements), self._q_read.steps
        return SynapseCounts("ac", 0.0, float(c["additions"] + c["kept"]), 2.0 * q_elements / steps,
                             c["additions"], int(q_elements), c.get("popcount_words", 0),
                             c.get("and_words", 0))


class SSACore(Module):
    """Spikformer SSA core: ``forward(q, k, v) -> LIF_0.5((Q Kᵀ) V * scale)``;
    ``backward(dout) -> (dq, dk, dv)``.

    Energy (a synapse, SPEC section 7): the map is evaluated as (Q Kᵀ) V, so each Q spike
    meets every key (N_k ACs) and each V spike feeds every query (N_q ACs; N_q differs from
    N_k when the queries are another token set, as in the factorized baseline). The ANN
    reference: the op's MACs once per sample.
    """

    energy_role = SYNAPSE
    op_kind = "attention"
    _spikes_read: "SSARead | None" = None   # what the last counted forward read

    def __init__(self, heads, *, scale=0.125, neuron=None):
        super().__init__()
        self.heads = check_positive_int(heads, "heads")
        self.scale = scale
        self.neuron = {"v_threshold": ATTENTION_V_THRESHOLD} if neuron is None else dict(neuron)
        attention_options(self.neuron)         # validate now, not at the first forward
        self._cache = None
        self.op_counts = {}

    def forward(self, q, k, v):
        out, cache = ssa_forward(q, k, v, self.heads, self.scale, neuron=self.neuron)
        self._cache = cache
        self.op_counts = dict(cache.counts)
        if self.counter is not None:
            self._spikes_read = SSARead(int(np.count_nonzero(q)), int(q.size),
                                        int(np.count_nonzero(v)), int(v.size), int(q.shape[0]))
        return out

    def backward(self, dout):
        return ssa_backward(dout, self._cache)

    def energy_counts(self) -> SynapseCounts | None:
        if self._spikes_read is None or not self.op_counts:
            return None
        c = self.op_counts
        q_spikes, q_neurons, v_spikes, v_neurons, steps = self._spikes_read
        n_k = c["macs"] / (2 * c["comparisons"])
        n_q = n_k * q_neurons / v_neurons
        return SynapseCounts("ac", 0.0, float(n_k * q_spikes + n_q * v_spikes), c["macs"] / steps,
                             q_spikes + v_spikes, int(2 * c["comparisons"]))


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class _ProjectedAttention(Module):
    """Shared plumbing: named Conv1x1-BN-LIF projections around an attention core."""

    energy_role = CONTAINER

    def __init__(self, dim, heads, neuron, attention_neuron, bn_momentum, bn_eps, rng, dtype):
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.heads = check_positive_int(heads, "heads")
        if self.dim % self.heads:
            raise ValueError(f"heads: expected a divisor of dim = {self.dim}, got {heads}")
        self.neuron, self.attention_neuron = attention_neurons(neuron, attention_neuron)
        self._bn = dict(momentum=bn_momentum, eps=bn_eps, dtype=dtype)
        self.dtype = np.dtype(dtype)

    # the conv class of the Q, K (, V) projections (mbt's blocks use one that knows which of
    # its input columns are analog); the output projection is always a Conv1x1
    input_conv = Conv1x1

    def _add_projection(self, name: str, bias: bool, rng, pack=None) -> None:
        """The Conv-BN-LIF unit ``self.<name>`` with layers ``<name>_conv``, ``_bn``, ``_lif``;
        ``pack``: its LIF emits bit-packed spikes in that layout (``lif_forward``'s option)."""
        conv = (Conv1x1 if name == "proj" else self.input_conv)(self.dim, self.dim, bias=bias, rng=rng,
                                                                 dtype=self.dtype)
        neuron = self.neuron if pack is None else {**self.neuron, "pack": pack}
        setattr(self, name, ConvBNLIF(self, name, conv, BatchNorm(self.dim, **self._bn),
                                      LIF(**neuron)))

    def _check_input(self, x, name: str, like: np.ndarray | None = None) -> None:
        check_token_map(x, name, self.dim, self.dtype, like, "the query input")

    @property
    def attention_counts(self) -> dict:
        """The last forward's counts of the attention core(s)."""
        return sum_counts(*(m.op_counts for _, m in self.named_modules() if m.op_kind == "attention"))


def _qk_spike_layout(mode: str, d: int, backend: str, neuron: dict):
    """The ``pack`` option of the Q and K neurons with ``packed_spikes=True``: on the packed
    backend they emit their spikes bit-packed in the layout the core reads (QKTA a head's d
    channels, QKCA the tokens: the core then runs on the bits, and no float map of Q or K is
    written); None (float spikes) for the dense backend, smooth spikes or another neuron type."""
    if backend != "packed" or neuron.get("spike_fn", "heaviside") != "heaviside" \
            or neuron.get("neuron_type", "lif") != "lif" or neuron.get("spike_dtype") is not None:
        return None
    return (2, d) if mode == "token" else 3


class _QKBlock(_ProjectedAttention):
    def __init__(self, dim, heads, mode="token", *, neuron=None, attention_neuron=None,
                 attention_backend="packed", packed_spikes=False, bn_momentum=BN_MOMENTUM,
                 bn_eps=BN_EPS, rng, dtype=np.float32):
        super().__init__(dim, heads, neuron, attention_neuron, bn_momentum, bn_eps, rng, dtype)
        if not isinstance(packed_spikes, bool):
            raise ValueError(f"packed_spikes: expected True or False, got {packed_spikes!r}")
        pack = _qk_spike_layout(mode, self.dim // self.heads, attention_backend, self.neuron) \
            if packed_spikes else None
        self._add_projection("q", False, rng, pack)
        self._add_projection("k", False, rng, pack)
        self.qk = QKCore(self.heads, mode, neuron=self.attention_neuron, backend=attention_backend)
        self.qk.z_dtype = self.dtype
        self._add_projection("proj", True, rng)
        self.mode = mode
        self.attention_backend = attention_backend

    def _forward(self, x_q, x_k):
        return self.proj.forward(self.qk.forward(self.q.forward(x_q), self.k.forward(x_k)))

    def _backward(self, dy):
        dq, dk = self.qk.backward(self.proj.backward(dy))
        return self.q.backward(dq), self.k.backward(dk)


class QKAttention(_QKBlock):
    """QKFormer's Q-K attention block (Q and K from the same map): ``forward(x) -> y``,
    ``backward(dy) -> dx``; x, y ``[T, B, dim, N]``. mode "token" = QKTA, "channel" = QKCA.
    Keyword arguments as in the module docstring; ``rng`` is required."""

    def forward(self, x):
        self._check_input(x, "x")
        return self._forward(x, x)

    def backward(self, dy):
        dx_q, dx_k = self._backward(dy)
        return dx_q + dx_k


class QKCrossAttention(_QKBlock):
    """Q-K attention block with Q from ``x_q`` and K from ``x_k`` (both ``[T, B, dim, N]``):
    ``forward(x_q, x_k) -> y``, ``backward(dy) -> (dx_q, dx_k)``. One direction of CMQKA."""

    def forward(self, x_q, x_k):
        self._check_input(x_q, "x_q")
        self._check_input(x_k, "x_k", like=x_q)
        return self._forward(x_q, x_k)

    def backward(self, dy):
        return self._backward(dy)


class _SSABlock(_ProjectedAttention):
    def __init__(self, dim, heads, *, scale=0.125, neuron=None, attention_neuron=None,
                 bn_momentum=BN_MOMENTUM, bn_eps=BN_EPS, rng, dtype=np.float32):
        super().__init__(dim, heads, neuron, attention_neuron, bn_momentum, bn_eps, rng, dtype)
        self._add_projection("q", False, rng)
        self._add_projection("k", False, rng)
        self._add_projection("v", False, rng)
        self.ssa = SSACore(self.heads, scale=scale, neuron=self.attention_neuron)
        self._add_projection("proj", True, rng)

    def _forward(self, x_q, x_kv):
        q = self.q.forward(x_q)
        k = self.k.forward(x_kv)
        v = self.v.forward(x_kv)
        return self.proj.forward(self.ssa.forward(q, k, v))

    def _backward(self, dy):
        dq, dk, dv = self.ssa.backward(self.proj.backward(dy))
        return self.q.backward(dq), self.k.backward(dk) + self.v.backward(dv)


class SSAttention(_SSABlock):
    """Spikformer SSA block (``stage3_attention="ssa"``): ``forward(x) -> y``,
    ``backward(dy) -> dx``. SSA is dense only (no ``attention_backend``)."""

    def forward(self, x):
        self._check_input(x, "x")
        return self._forward(x, x)

    def backward(self, dy):
        dx_q, dx_kv = self._backward(dy)
        return dx_q + dx_kv


class SSACrossAttention(_SSABlock):
    """Spikformer SSA block with Q from ``x_q`` ``[T, B, dim, N]`` and K, V from ``x_kv``
    ``[T, B, dim, Nk]`` (the S-CMRL-style ``ssa-cross`` direction with Nk = N, or queries
    attending to another token set): ``forward(x_q, x_kv) -> y`` ``[T, B, dim, N]``,
    ``backward(dy) -> (dx_q, dx_kv)``."""

    def forward(self, x_q, x_kv):
        self._check_input(x_q, "x_q")
        self._check_input(x_kv, "x_kv")
        if x_kv.shape[:2] != x_q.shape[:2]:
            raise ValueError(f"x_kv: expected [T, B] = {x_q.shape[:2]} (those of x_q), got shape "
                             f"{x_kv.shape}")
        return self._forward(x_q, x_kv)

    def backward(self, dy):
        return self._backward(dy)

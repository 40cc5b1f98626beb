"""Spiking attention cores (SPEC section 4) as forward/backward pairs.

    qk_token_forward(q, k, heads)   QKTA: A = LIF_0.5(per-head channel sums of Q)  [T,B,h,N]
    qk_channel_forward(q, k)        QKCA: A = LIF_0.5(per-channel token sums of Q) [T,B,D]
                                    both: Z = A * K (A broadcast), linear in N
    ssa_forward(q, k, v, heads)     Spikformer SSA: LIF_0.5((Q Kᵀ) V * scale) per head, with the
                                    explicit N x N map (quadratic in N; the reference to beat);
                                    k, v may hold another token count Nk (cross-attention)

q, k, v are ``[T, B, D, N]`` binary spike maps of any real or integer dtype, or bool (checked
binary, never cast). Outputs and gradients are float: float64 if an input is float64, else
float32; the Q-K ops take ``z_dtype=np.uint8`` for a consumer that reads Z as spikes.

The Q-K ops also take q and k bit-packed (``refsnn.kernels.bitpack.PackedSpikes``, either or
both), in the layout their packed core reads: QKTA a head's d = D/h channels (the spikes
viewed ``[T, B, h, d, N]``, packed along axis 3: ``qk_token_layout(x, heads)``), QKCA the
tokens (``[T, B, D, N]`` along axis 3: ``qk_channel_layout(x)``). Their padding bits must be
0 (the core flags a set one while it reads the words; the op then names the argument). From
packed spikes the forward is one pass over the words: the packed core
(``refsnn.kernels.qk``) for ``z_dtype=Z_PACKED`` (Z in the same layout), else
``refsnn.kernels.qk_fused.qk_*_from_words`` writing the unpacked Z directly. The backward is the same whatever the forms: dz, dq,
dk are float ``[T, B, D, N]`` (for packed q and k float32, or float64 with ``z_dtype=np.float64``;
float64 beside a float64 array).

Options (keyword-only, beyond the SPEC section 11 signatures):
    neuron   keyword arguments of ``lif_forward`` for the attention LIF; they update the
             defaults ``{"v_threshold": 0.5}`` (``Config.attention_neuron_kwargs()`` gives the
             model's). ``spike_fn="smooth"`` (SPEC section 12) lets q, k, v be real-valued and
             needs ``backend="dense"``.
    backend  "packed" (default; Numba kernels: one pass over the unpacked maps that sums Q,
             runs the attention LIF, writes Z and packs K to bits for the backward,
             ``refsnn.kernels.qk_fused``; the backward reads K packed, ``refsnn.kernels.qk``)
             or "dense" (NumPy on unpacked arrays). Both give identical spikes, Z and gradients.
    z_dtype  (Q-K ops) the dtype of Z: None (the float rule above), numpy.uint8, or
             ``Z_PACKED`` ("packed": PackedSpikes in the op's layout). A model whose neurons
             emit uint8 spikes (``lif_forward(..., spike_dtype=np.uint8)``) and whose consumer
             of Z reads spikes keeps the whole op at a byte per spike; packed spikes in and
             out, at an eighth of a byte.

Caches are NamedTuples (``QKTokenCache``, ``QKChannelCache``, ``SSACache``); each holds
``counts`` (str -> int), what the op executed on its input:
    additions        Q spikes summed into P (one accumulate each)
    selects          K spikes the mask was applied to
    kept             K spikes kept (= spikes of Z; SPEC section 7 counts one AC each)
    comparisons      threshold comparisons of the attention LIF (one per attention neuron and
                     time step: T*B*h*N for QKTA, T*B*D for QKCA, T*B*D*N for SSA)
    popcount_words   uint64 words of Q in the bit-packed form (packed backend only: the
                     popcounts a binary core executes; the fused kernel sums the same bits)
    and_words        uint64 words of K ANDed with the mask (packed backend only)
    macs             SSA only: multiply-accumulates of Q Kᵀ and (Q Kᵀ) V, 2*T*B*D*N*Nk
                     (2*T*B*D*N² for self-attention)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..kernels import BACKENDS
from ..kernels import qk as _k
from ..kernels import qk_fused as _f
from ..kernels.bitpack import PackedSpikes, check_packed, num_words, pack_bits, padding_set
from ..checks import (check_array, check_binary, check_choice, check_finite, check_float_array,
                      check_positive_int)
from .lif import LIFCache, _options as _lif_options, _typed_args as _lif_typed_args
from .lif import LIF_DEFAULTS, lif_backward, lif_forward

__all__ = ["qk_token_forward", "qk_token_backward", "qk_channel_forward", "qk_channel_backward",
           "ssa_forward", "ssa_backward", "attention_options", "ATTENTION_BACKENDS",
           "ATTENTION_V_THRESHOLD", "QKTokenCache", "QKChannelCache", "SSACache", "Z_PACKED",
           "qk_token_layout", "qk_channel_layout"]

ATTENTION_BACKENDS = ("packed", "dense")
ATTENTION_V_THRESHOLD = 0.5         # the attention LIF's threshold (SPEC section 4)
Z_PACKED = "packed"                 # z_dtype for Z as PackedSpikes (the ops' input layout)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
# the attention neuron: lif_forward's defaults but the threshold (no neuron_type: always a LIF)
_NEURON_DEFAULTS = {**LIF_DEFAULTS, "v_threshold": ATTENTION_V_THRESHOLD}


def attention_options(neuron: dict | None) -> dict:
    """Complete, validated ``lif_forward`` keyword arguments of an attention LIF: the defaults
    ``{"v_threshold": 0.5}`` (and lif_forward's others) updated by ``neuron``."""
    if neuron is None:
        neuron = {}
    if not isinstance(neuron, dict):
        raise ValueError(f"neuron: expected a dict of lif_forward keyword arguments or None, "
                         f"got {type(neuron).__name__}")
    unknown = sorted(set(neuron) - set(_NEURON_DEFAULTS) - {"backend"})
    if unknown:
        raise ValueError(f"neuron: unknown LIF option(s) {unknown}; known: "
                         f"{sorted(_NEURON_DEFAULTS) + ['backend']}")
    merged = {**_NEURON_DEFAULTS, **neuron}
    backend = merged.pop("backend", "numba")
    check_choice("neuron: backend", backend, BACKENDS)
    opts = _lif_options(**merged)
    opts["backend"] = backend
    return opts


def _lif_kwargs(opts: dict) -> dict:
    """lif_forward keyword arguments from validated options."""
    return {k: opts[k] for k in (*_NEURON_DEFAULTS, "backend")}


def _compute_dtype(*arrays) -> np.dtype:
    return np.dtype(np.float64) if any(a.dtype == np.float64 for a in arrays) else np.dtype(np.float32)


def _check_inputs(arrays: dict, neuron, backend, own_tokens: tuple = ()) -> tuple[dict, np.dtype]:
    """Validate q, k (, v) and the options; returns (LIF options, compute dtype). Every array
    has the first one's shape, except that those named in ``own_tokens`` may have their own
    token count N (equal among themselves)."""
    check_choice("backend", backend, ATTENTION_BACKENDS)
    opts = attention_options(neuron)
    smooth = opts["spike_fn"] == "smooth"
    if smooth and backend == "packed":
        raise ValueError("backend: smooth spikes (spike_fn='smooth', SPEC section 12) have no "
                         "bit-packed form; use backend='dense'")
    first_name, first = next(iter(arrays.items()))
    check_array(first, first_name, ndim=4)
    token_ref = {}
    for name, x in arrays.items():
        check_array(x, name, ndim=4)
        if name in own_tokens:
            ref_name, ref = token_ref.setdefault("ref", (name, x))
            if x.shape[:3] != first.shape[:3] or x.shape[3] != ref.shape[3]:
                raise ValueError(f"{name}: expected [T, B, D] = {first.shape[:3]} (those of "
                                 f"{first_name}) and the token count of {ref_name}, got {x.shape}")
        elif x.shape != first.shape:
            raise ValueError(f"{name}: expected the shape of {first_name} {first.shape}, got {x.shape}")
        if min(x.shape) < 1:
            raise ValueError(f"{name}: expected [T, B, D, N] with every axis >= 1, got {x.shape}")
        if smooth:
            check_float_array(x, name)
        elif backend == "dense":
            check_binary(x, name)          # the packed path validates while packing
    return opts, _compute_dtype(*arrays.values())


def _check_heads(heads, D: int) -> int:
    heads = check_positive_int(heads, "heads")
    if D % heads:
        raise ValueError(f"heads: expected a divisor of the channel count D = {D}, got {heads}")
    return heads


def _check_cache(cache, kind: type, op: str):
    if not isinstance(cache, kind):
        raise ValueError(f"cache: expected the {kind.__name__} returned by {op}_forward, got "
                         f"{type(cache).__name__}")
    return cache


def _check_grad(dy, name: str, shape: tuple, dtype, backend: str) -> np.ndarray:
    """dy: float, the forward output's shape. Finiteness is checked here on the dense paths;
    the packed backward kernels find an inf or NaN while they read dy (no extra scan)."""
    check_float_array(dy, name, ndim=4, finite=backend != "packed")
    if dy.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the forward's output), got {dy.shape}")
    return np.ascontiguousarray(dy, dtype=dtype)


def _z_dtype(z_dtype, dtype: np.dtype):
    """np.dtype of Z, or Z_PACKED."""
    if z_dtype is None:
        return dtype
    if isinstance(z_dtype, str) and z_dtype == Z_PACKED:
        return Z_PACKED
    try:
        zt = np.dtype(z_dtype)
    except TypeError:
        zt = None
    if zt not in (np.dtype(np.uint8), dtype):
        raise ValueError(f"z_dtype: expected None, numpy.uint8, {dtype} (the op's float dtype) or "
                         f"{Z_PACKED!r}, got {z_dtype!r}")
    return zt


# --------------------------------------------------------------------------------------------
# Packed spikes (PackedSpikes) in and out. Each op has its layout, the one its packed core
# reads: QKTA a head's d channels (the spikes viewed [T, B, h, d, N], packed along axis 3),
# QKCA the tokens ([T, B, D, N] packed along axis 3).
# --------------------------------------------------------------------------------------------

def qk_token_layout(x: np.ndarray, heads: int) -> PackedSpikes:
    """Spikes ``[T, B, D, N]`` as ``qk_token_forward`` reads them packed: a head's d = D/heads
    channels, ``pack_spikes(x.reshape(T, B, heads, d, N), axis=3)`` (words ``[T, B, heads,
    ceil(d/64), N]``)."""
    check_array(x, "x", ndim=4)
    T, B, D, N = x.shape
    heads = _check_heads(heads, D)
    words = pack_bits(x.reshape(T, B, heads, D // heads, N), axis=3, name="x")
    return PackedSpikes(words, D // heads, 3)


def qk_channel_layout(x: np.ndarray) -> PackedSpikes:
    """Spikes ``[T, B, D, N]`` as ``qk_channel_forward`` reads them packed: the tokens,
    ``pack_spikes(x, axis=3)`` (words ``[T, B, D, ceil(N/64)]``)."""
    check_array(x, "x", ndim=4)
    return PackedSpikes(pack_bits(x, axis=3, name="x"), x.shape[3], 3)


_TOKEN_HINT = "QKTA reads a head's channels: refsnn.functional.attention.qk_token_layout(x, heads)"
_CHANNEL_HINT = "QKCA reads the tokens: refsnn.functional.attention.qk_channel_layout(x)"


def _packed_inputs(arrays: dict, mode: str, heads, neuron, backend):
    """q, k of which one at least is PackedSpikes. Returns (opts, dtype, shape [T, B, D, N],
    {name: PackedSpikes}) with both in the op's layout (an array among them packed here, and
    checked binary while packed)."""
    check_choice("backend", backend, ATTENTION_BACKENDS)
    opts = attention_options(neuron)
    if opts["spike_fn"] == "smooth":
        raise ValueError("q, k: smooth spikes (spike_fn='smooth', SPEC section 12) are real-valued "
                         "arrays; PackedSpikes hold binary spikes")
    token = mode == "token"
    hint = _TOKEN_HINT if token else _CHANNEL_HINT
    shape = None
    packed = {}
    for name, x in arrays.items():
        if not isinstance(x, PackedSpikes):
            continue
        p = check_packed(x, name, ndim=5 if token else 4, axis=3, layout=hint)
        if token:
            T, B, h, _, N = p.words.shape
            if h != heads:
                raise ValueError(f"{name}: expected words [T, B, heads={heads}, Wd, N], got shape "
                                 f"{p.words.shape} ({hint})")
            s = (T, B, h * p.length, N)
        else:
            s = p.shape
        if shape is not None and s != shape:
            raise ValueError(f"{name}: expected the spikes of shape {shape} (those of q), got {s}")
        shape = s
        packed[name] = p
    for name, x in arrays.items():
        if name in packed:
            continue
        check_array(x, name, ndim=4)
        if x.shape != shape:
            raise ValueError(f"{name}: expected the shape {shape} of the packed "
                             f"{next(iter(packed))}, got {x.shape}")
        if token:
            T, B, D, N = shape
            words = pack_bits(x.reshape(T, B, heads, D // heads, N), axis=3, name=name)
            packed[name] = PackedSpikes(words, D // heads, 3)
        else:
            packed[name] = PackedSpikes(pack_bits(x, axis=3, name=name), shape[3], 3)
    floats = [x for x in arrays.values() if not isinstance(x, PackedSpikes)]
    return opts, _compute_dtype(*floats) if floats else None, shape, {n: packed[n] for n in arrays}


def _check_padding(name: str, packed: dict, kernel_flagged: bool) -> None:
    """After a packed core flagged a padding bit: name the argument."""
    if not kernel_flagged:
        return
    for arg, p in packed.items():
        if padding_set(*p):
            raise ValueError(f"{arg}: bits past length {p.length} are set on axis {p.axis} of the "
                             f"words (shape {p.words.shape}); expected 0 (a wrong length, or words "
                             f"not from pack_bits)")
    raise AssertionError(f"{name}: the kernel flagged a padding bit that padding_set does not find")


def _z_words(kw: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Z's words from K's and A (a word per A entry, broadcast on kw's axis 2)."""
    mask = np.where(a != 0, _ALL_ONES, np.uint64(0))
    return kw & mask.reshape(a.shape[:2] + (1,) + a.shape[2:])


def _spike_view(x: np.ndarray) -> np.ndarray:
    """C-contiguous, bool viewed as uint8 (the kernels read any numeric dtype as it is)."""
    x = np.ascontiguousarray(x)
    return x.view(np.uint8) if x.dtype == np.bool_ else x


def _fused_core(name, run, q, k, shape, lif, z_dtype):
    """Run a fused kernel on q, k viewed as ``shape``; if it met a value other than 0 and 1,
    name the first one (in q's and k's own indices)."""
    z, kw, a, h, counts, bad = run(_spike_view(q).reshape(shape), _spike_view(k).reshape(shape),
                                   lif, z_dtype)
    if bad:
        check_binary(q, "q")
        check_binary(k, "k")
        raise AssertionError(f"{name}: the kernel flagged a value that check_binary accepts")
    return z, kw, a, h, counts


def _packed_counts(counts: dict, q_words: int, k_words: int, comparisons: int) -> dict:
    counts.update(popcount_words=int(q_words), and_words=int(k_words), comparisons=int(comparisons))
    return counts


def _dense_core(q, k, opts, dtype, z_dtype, sums, mask):
    """The dense Q-K core: A = LIF(sums(Q)), Z = mask(A, K). Returns (z, k, a, LIF cache, counts)."""
    kf = np.ascontiguousarray(k, dtype=dtype)
    a, lif_cache = lif_forward(sums(np.asarray(q, dtype=dtype)), **_lif_kwargs(opts))
    z = mask(a, kf)
    counts = _k.dense_counts(q, k, z)
    counts["comparisons"] = int(a.size)
    return z.astype(z_dtype, copy=False), kf, a, lif_cache, counts


# --------------------------------------------------------------------------------------------
# QKTA
# --------------------------------------------------------------------------------------------

class QKTokenCache(NamedTuple):
    """What ``qk_token_backward`` needs. ``k``: K packed ``[T, B*h, Wd, N]`` uint64 (packed
    backend) or K ``[T, B, D, N]`` float (dense); ``a`` ``[T, B, h, N]``; ``lif`` the attention
    LIF's cache."""
    backend: str
    shape: tuple
    dtype: np.dtype
    heads: int
    k: np.ndarray
    a: np.ndarray
    lif: LIFCache
    counts: dict


def _inputs(q, k, mode: str, heads, neuron, backend, z_dtype):
    """Validated inputs: (opts, dtype, shape [T, B, D, N], q, k, packed). ``packed``: both as
    PackedSpikes of the op's layout when either came packed and the packed core runs, else
    None (q, k then arrays: packed ones unpacked for the dense backend). With packed q and k
    the float dtype is float32, or float64 when ``z_dtype`` asks for it."""
    if not (isinstance(q, PackedSpikes) or isinstance(k, PackedSpikes)):
        opts, dtype = _check_inputs({"q": q, "k": k}, neuron, backend)
        return opts, dtype, q.shape, q, k, None
    if mode == "token":
        heads = check_positive_int(heads, "heads")
    opts, dtype, shape, packed = _packed_inputs({"q": q, "k": k}, mode, heads, neuron, backend)
    if dtype is None:
        wide = not isinstance(z_dtype, str) and z_dtype is not None \
            and np.dtype(z_dtype) == np.float64
        dtype = np.dtype(np.float64 if wide else np.float32)
    if backend == "dense":
        q, k = (p.unpack(dtype).reshape(shape) for p in packed.values())
        return opts, dtype, shape, q, k, None
    packed = {n: PackedSpikes(np.ascontiguousarray(p.words), p.length, p.axis)
              for n, p in packed.items()}
    return opts, dtype, shape, q, k, packed


def _dense_z(z: np.ndarray, zt, packer) -> "np.ndarray | PackedSpikes":
    return packer(z) if zt == Z_PACKED else z


def qk_token_forward(q, k, heads, *, neuron=None, backend="packed", z_dtype=None):
    """Token attention: z ``[T, B, D, N]`` = A[head(c), n] * K[c, n], A = LIF(sum_{c in head} Q).

    q, k: arrays ``[T, B, D, N]`` or ``PackedSpikes`` in this op's layout
    (``qk_token_layout``); ``z_dtype=Z_PACKED`` returns Z in that layout.
    Returns ``(z, cache)``; ``cache.counts`` as in the module docstring.
    """
    opts, dtype, shape, q, k, packed = _inputs(q, k, "token", heads, neuron, backend, z_dtype)
    T, B, D, N = shape
    heads = _check_heads(heads, D)
    zt = _z_dtype(z_dtype, dtype)
    d = D // heads
    Wd = num_words(d)
    shape_a = (T, B, heads, N)
    words_shape = (T, B, heads, Wd, N)
    if backend == "packed":
        lif = _lif_typed_args(opts, dtype)
        if packed is not None:
            # a head's d channels are one [Wd, N] slab of words: K stays packed for the backward
            kc = packed["k"].words.reshape(T, B * heads, Wd, N)
            qc = packed["q"].words.reshape(T, B * heads, Wd, N)
            if zt == Z_PACKED:      # the packed core: words in, words out
                zw, a, h, counts, padded = _k.qk_token_packed(qc, kc, lif, length=d)
                z = PackedSpikes(zw.reshape(words_shape), d, 3)
            else:                   # one pass from the words to the unpacked Z
                z, a, h, counts, padded = _f.qk_token_from_words(qc, kc, d, lif, zt)
                z = z.reshape(shape)
            _check_padding("qk_token", packed, padded)
        else:
            # a head's d channels are one [d, N] slab; K is packed per head, word w holding its
            # channels 64w .. 64w+63, so the backward never reads another head's bits
            z, kc, a, h, counts = _fused_core("qk_token", _f.qk_token_fused, q, k,
                                              (T, B * heads, d, N), lif,
                                              np.uint8 if zt == Z_PACKED else zt)
            z = PackedSpikes(_z_words(kc, a).reshape(words_shape), d, 3) if zt == Z_PACKED \
                else z.reshape(shape)
        a = a.reshape(shape_a)
        words = T * B * heads * Wd * N
        counts = _packed_counts(counts, words, words, np.prod(shape_a))
        lif_cache = LIFCache(h.reshape(T, -1), dict(opts), shape_a)
    else:
        z, kc, a, lif_cache, counts = _dense_core(q, k, opts, dtype,
                                                  np.uint8 if zt == Z_PACKED else zt,
                                                  lambda x: _k.token_sums(x, heads), _k.token_mask)
        z = _dense_z(z, zt, lambda x: qk_token_layout(x, heads))
    return z, QKTokenCache(backend, shape, dtype, heads, kc, a, lif_cache, counts)


def qk_token_backward(dz, cache):
    """Returns ``(dq, dk)``, each ``[T, B, D, N]``: dK = A * dZ; dA = the head's channel sum of
    K * dZ; dP = the attention LIF's backward of dA; dQ = dP broadcast over the head's channels.
    Never mutates ``dz``."""
    backend, shape, dtype, heads, k, a, lif_cache, _ = _check_cache(cache, QKTokenCache, "qk_token")
    dz = _check_grad(dz, "dz", shape, dtype, backend)
    T, B, D, N = shape
    d = D // heads
    if backend == "packed":
        dk, da, finite = _k.qk_token_backward_packed(k, a.reshape(T, B * heads, N),
                                                     dz.reshape(T, B * heads, d, N))
        if not finite:
            check_finite(dz, "dz")
        dk, da = dk.reshape(T, B, D, N), da.reshape(T, B, heads, N)
    else:
        dk, da = _k.qk_token_backward_dense(k, a, dz)
    dp = lif_backward(da, lif_cache)
    dq = np.repeat(dp[:, :, :, None, :], d, axis=3).reshape(T, B, D, N)
    return dq, dk


# --------------------------------------------------------------------------------------------
# QKCA
# --------------------------------------------------------------------------------------------

class QKChannelCache(NamedTuple):
    """What ``qk_channel_backward`` needs. ``k``: K packed ``[T, B*D, WN]`` uint64 (packed) or
    K ``[T, B, D, N]`` float (dense); ``a`` ``[T, B, D]``."""
    backend: str
    shape: tuple
    dtype: np.dtype
    k: np.ndarray
    a: np.ndarray
    lif: LIFCache
    counts: dict


def qk_channel_forward(q, k, *, neuron=None, backend="packed", z_dtype=None):
    """Channel attention: z ``[T, B, D, N]`` = A[c] * K[c, n], A = LIF(sum_n Q[c, n]).

    q, k: arrays ``[T, B, D, N]`` or ``PackedSpikes`` in this op's layout
    (``qk_channel_layout``); ``z_dtype=Z_PACKED`` returns Z in that layout.
    Returns ``(z, cache)``; ``cache.counts`` as in the module docstring.
    """
    opts, dtype, shape, q, k, packed = _inputs(q, k, "channel", None, neuron, backend, z_dtype)
    T, B, D, N = shape
    zt = _z_dtype(z_dtype, dtype)
    WN = num_words(N)
    shape_a = (T, B, D)
    words_shape = (T, B, D, WN)
    if backend == "packed":
        lif = _lif_typed_args(opts, dtype)
        if packed is not None:
            kc = packed["k"].words.reshape(T, B * D, WN)
            qc = packed["q"].words.reshape(T, B * D, WN)
            if zt == Z_PACKED:
                zw, a, h, counts, padded = _k.qk_channel_packed(qc, kc, lif, length=N)
                z = PackedSpikes(zw.reshape(words_shape), N, 3)
            else:
                z, a, h, counts, padded = _f.qk_channel_from_words(qc, kc, N, lif, zt)
                z = z.reshape(shape)
            _check_padding("qk_channel", packed, padded)
        else:
            z, kc, a, h, counts = _fused_core("qk_channel", _f.qk_channel_fused, q, k,
                                              (T, B * D, N), lif, np.uint8 if zt == Z_PACKED else zt)
            z = PackedSpikes(_z_words(kc, a).reshape(words_shape), N, 3) if zt == Z_PACKED \
                else z.reshape(shape)
        a = a.reshape(shape_a)
        words = T * B * D * WN
        counts = _packed_counts(counts, words, words, np.prod(shape_a))
        lif_cache = LIFCache(h.reshape(T, -1), dict(opts), shape_a)
    else:
        z, kc, a, lif_cache, counts = _dense_core(q, k, opts, dtype,
                                                  np.uint8 if zt == Z_PACKED else zt,
                                                  _k.channel_sums, _k.channel_mask)
        z = _dense_z(z, zt, qk_channel_layout)
    return z, QKChannelCache(backend, shape, dtype, kc, a, lif_cache, counts)


def qk_channel_backward(dz, cache):
    """Returns ``(dq, dk)``: dK = A * dZ; dA = the token sum of K * dZ; dP = the attention
    LIF's backward of dA; dQ = dP broadcast over tokens. Never mutates ``dz``."""
    backend, shape, dtype, k, a, lif_cache, _ = _check_cache(cache, QKChannelCache, "qk_channel")
    dz = _check_grad(dz, "dz", shape, dtype, backend)
    T, B, D, N = shape
    if backend == "packed":
        dk, da, finite = _k.qk_channel_backward_packed(k, a.reshape(T, B * D), dz.reshape(T, B * D, N))
        if not finite:
            check_finite(dz, "dz")
        dk, da = dk.reshape(T, B, D, N), da.reshape(T, B, D)
    else:
        dk, da = _k.qk_channel_backward_dense(k, a, dz)
    dp = lif_backward(da, lif_cache)
    dq = np.ascontiguousarray(np.broadcast_to(dp[:, :, :, None], (T, B, D, N)))
    return dq, dk


# --------------------------------------------------------------------------------------------
# SSA (quadratic reference)
# --------------------------------------------------------------------------------------------

def _ssa_slices(x: np.ndarray, heads: int) -> np.ndarray:
    """``[T, B, D, N]`` -> ``[T*B*h, d, N]`` view: one (time, sample, head) slice per row."""
    T, B, D, N = x.shape
    return x.reshape(T * B * heads, D // heads, N)


class SSACache(NamedTuple):
    """What ``ssa_backward`` needs: q, k, v as float (the map is recomputed from them), the
    LIF's cache, the scale; ``shape`` is q's."""
    shape: tuple
    dtype: np.dtype
    heads: int
    scale: float
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    lif: LIFCache
    counts: dict


def ssa_forward(q, k, v, heads, scale=0.125, *, neuron=None):
    """Spiking self-attention with an explicit map: per head, attn = Q Kᵀ ``[N, Nk]``, then
    out = LIF_0.5((attn V) * scale), ``[T, B, D, N]``.

    q ``[T, B, D, N]``; k, v ``[T, B, D, Nk]``: Nk = N for self-attention; another count lets
    queries attend to a different token set (bottleneck or aggregation tokens of the fusion
    baselines). Evaluated in this order on purpose (the N·Nk cost is the point of the
    comparison; without a softmax Q (Kᵀ V) would be linear). One (time, sample, head) slice at
    a time, so at most one N x Nk map is alive; the backward recomputes it instead of caching
    T*B*h of them. ``cache.counts``: ``macs`` = 2·T·B·D·N·Nk, ``comparisons`` = T·B·D·N.
    """
    opts, dtype = _check_inputs({"q": q, "k": k, "v": v}, neuron, "dense", own_tokens=("k", "v"))
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    T, B, D, N = q.shape
    Nk = k.shape[3]
    heads = _check_heads(heads, D)
    qf, kf, vf = (np.ascontiguousarray(x, dtype=dtype) for x in (q, k, v))
    qs, ks, vs = (_ssa_slices(x, heads) for x in (qf, kf, vf))
    x = np.empty((T, B, D, N), dtype=dtype)
    xs = _ssa_slices(x, heads)
    attn = np.empty((N, Nk), dtype=dtype)
    for i in range(qs.shape[0]):
        np.matmul(qs[i].T, ks[i], out=attn)        # attn[n, m] = sum_c Q[c, n] K[c, m]
        np.matmul(vs[i], attn.T, out=xs[i])        # x[c, n] = sum_m attn[n, m] V[c, m]
    del attn
    x *= dtype.type(scale)
    out, lif_cache = lif_forward(x, **_lif_kwargs(opts))
    counts = dict(macs=int(2 * T * B * D * N * Nk), comparisons=int(x.size))
    return out, SSACache(q.shape, dtype, heads, float(scale), qf, kf, vf, lif_cache, counts)


def ssa_backward(dout, cache):
    """Returns ``(dq, dk, dv)`` with the shapes of q, k, v. Never mutates ``dout``."""
    shape, dtype, heads, scale, q, k, v, lif_cache, _ = _check_cache(cache, SSACache, "ssa")
    dout = _check_grad(dout, "dout", shape, dtype, "dense")
    dx = lif_backward(dout, lif_cache)
    dx *= dtype.type(scale)
    qs, ks, vs = (_ssa_slices(x, heads) for x in (q, k, v))
    dxs = _ssa_slices(dx, heads)
    dq = np.empty(q.shape, dtype=dtype)
    dk, dv = (np.empty(k.shape, dtype=dtype) for _ in range(2))
    dqs, dks, dvs = (_ssa_slices(g, heads) for g in (dq, dk, dv))
    attn = np.empty((dq.shape[3], dk.shape[3]), dtype=dtype)
    dattn = np.empty_like(attn)
    for i in range(qs.shape[0]):
        np.matmul(qs[i].T, ks[i], out=attn)
        np.matmul(dxs[i], attn, out=dvs[i])         # dV[c, m] = sum_n dx[c, n] attn[n, m]
        np.matmul(dxs[i].T, vs[i], out=dattn)       # dattn[n, m] = sum_c dx[c, n] V[c, m]
        np.matmul(ks[i], dattn.T, out=dqs[i])       # dQ[c, n] = sum_m dattn[n, m] K[c, m]
        np.matmul(qs[i], dattn, out=dks[i])         # dK[c, m] = sum_n dattn[n, m] Q[c, n]
    return dq, dk, dv

"""Bit packing of spike maps into uint64 words (SPEC section 4), Numba kernels and NumPy twins.

Bit ``i`` of word ``w`` holds element ``64*w + i`` of the packed axis; padding bits (past the
axis length) are 0. Any axis can be packed: the array is viewed as ``[P, L, Q]`` (everything
before the axis, the axis, everything after) and packed to ``[P, ceil(L/64), Q]``, so packing a
middle axis keeps the trailing axis contiguous (QKTA packs a head's channels and keeps tokens
contiguous; QKCA packs the tokens).

``PackedSpikes(words, length, axis)`` is the packed form as a value: the words, and what
``unpack_bits`` needs to restore the spikes (``pack_spikes`` makes one; the Q-K ops of
``refsnn.functional.attention`` take and return them).

Packing validates as it reads: a value other than 0 or 1 (a 2, a 0.5, a NaN) is never cast,
it raises ``ValueError`` naming the first offending index. ``popcount64`` compiles to the
hardware ``popcnt`` (an LLVM ``ctpop``; ``np.bitwise_count`` does not compile in Numba 0.68).
"""
from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import intrinsic

from ..checks import check_array, check_binary

__all__ = ["PackedSpikes", "pack_spikes", "check_packed", "padding_set", "pack_bits", "unpack_bits", "num_words", "popcount64", "pack_kernel",
           "pack_kernel_serial", "pack_last_kernel", "pack_last_kernel_serial", "unpack_kernel",
           "unpack_kernel_serial", "unpack_last_kernel", "unpack_last_kernel_serial", "work_units",
           "pack_numpy", "unpack_numpy", "use_parallel", "PARALLEL_MIN_WORK", "WORD_BITS"]

WORD_BITS = 64


@intrinsic
def popcount64(typingctx, x):
    """Number of set bits of a 64-bit integer, as int64 (an int64 result keeps Numba from
    promoting ``int64 + uint64`` sums to float64)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(x), codegen


def num_words(length: int) -> int:
    """Words needed for ``length`` bits."""
    return -(-int(length) // WORD_BITS)


_QBLOCK = 256   # trailing-axis block: a block of output words stays in L1 while 64 rows are read
_WBLOCK = 64    # words per work unit when packing the last axis
# Below this many elements of work a kernel runs on the calling thread: waking the worker
# threads costs ~20 us on an idle machine and milliseconds on a busy one, more than the work.
PARALLEL_MIN_WORK = 1 << 16


def use_parallel(work: int, parallel: bool | None, min_work: int = PARALLEL_MIN_WORK) -> bool:
    """``parallel=None`` decides by size (``work >= min_work``); True / False force the
    variant (tests use both)."""
    return work >= min_work if parallel is None else bool(parallel)


@nb.njit(cache=True, inline="always")
def unit_block(u, W, Q, qblock):
    """``(p, w, q0, nq)`` of unit u of a ``[P, W words, Q]`` layout cut into word rows and blocks
    of ``qblock`` positions: row p, word w, positions q0 .. q0 + nq (the packing kernels' and
    the packed LIF's units)."""
    nqb = (Q + qblock - 1) // qblock
    p = u // (W * nqb)
    rem = u - p * W * nqb
    w = rem // nqb
    q0 = (rem - w * nqb) * qblock
    return p, w, q0, min(Q, q0 + qblock) - q0


@nb.njit(cache=True, inline="always")
def _pack_unit(x, out, bad, u):
    """Pack one unit of a ``[P, L, Q]`` array (Q > 1): the word row (p, w), a block of Q.

    Eight rows at a time go into a byte plane (uint8 lanes: 8x more per vector than shifting
    each row into 64-bit words), then the planes merge into the words: byte i of a
    little-endian word holds its bits 8i .. 8i+7."""
    P, L, Q = x.shape
    W = out.shape[1]
    p, w, q0, nq = unit_block(u, W, Q, _QBLOCK)
    l0 = w * 64
    nbits = min(64, L - l0)
    planes = np.zeros((8, nq), dtype=np.uint8)
    # (v != 0) xor (v == 1) is 1 exactly for values other than 0 and 1 (NaN included); kept
    # per column (no scalar reduction), so the loop stays vectorised
    flags = np.zeros(nq, dtype=np.uint8)
    for j in range(nbits):
        sh = np.uint8(j % 8)
        row = x[p, l0 + j, q0:q0 + nq]
        plane = planes[j // 8]
        for q in range(nq):
            v = row[q]
            b = np.uint8(v == 1)
            flags[q] |= np.uint8(v != 0) ^ b
            plane[q] |= b << sh
    o = out[p, w, q0:q0 + nq]
    for q in range(nq):
        word = np.uint64(0)
        for i in range(8):
            word |= np.uint64(planes[i, q]) << np.uint64(8 * i)
        o[q] = word
    badacc = np.uint8(0)
    for q in range(nq):
        badacc |= flags[q]
    bad[u] = badacc


@nb.njit(cache=True, inline="always")
def _pack_last_unit(x, out, bad, u):
    """Pack one unit of a ``[P, L]`` array along L: row p, a block of _WBLOCK words."""
    P, L = x.shape
    W = out.shape[1]
    nwb = (W + _WBLOCK - 1) // _WBLOCK
    p = u // nwb
    w0 = (u - p * nwb) * _WBLOCK
    w1 = min(W, w0 + _WBLOCK)
    badacc = np.uint64(0)
    for w in range(w0, w1):
        l0 = w * 64
        acc = np.uint64(0)
        if l0 + 64 <= L:    # constant trip count: LLVM vectorises the word
            seg = x[p, l0:l0 + 64]
            for j in range(64):
                v = seg[j]
                b = np.uint64(v == 1)
                badacc |= np.uint64(v != 0) ^ b
                acc |= b << np.uint64(j)
        else:
            for j in range(L - l0):
                v = x[p, l0 + j]
                b = np.uint64(v == 1)
                badacc |= np.uint64(v != 0) ^ b
                acc |= b << np.uint64(j)
        out[p, w] = acc
    bad[u] = badacc


@nb.njit(cache=True, inline="always")
def _unpack_unit(words, out, u):
    """Unpack one unit of ``[P, W, Q]`` words (Q > 1) into ``[P, L, Q]``: a byte plane of 8
    rows at a time is cut from the words, then each row is read from the plane in uint8 lanes."""
    P, L, Q = out.shape
    W = words.shape[1]
    p, w, q0, nq = unit_block(u, W, Q, _QBLOCK)
    l0 = w * 64
    src = words[p, w, q0:q0 + nq]
    plane = np.empty(nq, dtype=np.uint8)
    for j in range(min(64, L - l0)):
        if j % 8 == 0:
            for q in range(nq):
                plane[q] = np.uint8((src[q] >> np.uint64(j)) & np.uint64(0xFF))
        sh = np.uint8(j % 8)
        dst = out[p, l0 + j, q0:q0 + nq]
        for q in range(nq):
            dst[q] = (plane[q] >> sh) & np.uint8(1)


@nb.njit(cache=True, inline="always")
def _unpack_last_unit(words, out, u):
    """Unpack one unit of ``[P, W]`` words into ``[P, L]``: row p, a block of _WBLOCK words."""
    P, L = out.shape
    W = words.shape[1]
    nwb = (W + _WBLOCK - 1) // _WBLOCK
    p = u // nwb
    w0 = (u - p * nwb) * _WBLOCK
    for w in range(w0, min(W, w0 + _WBLOCK)):
        l0 = w * 64
        word = words[p, w]
        if l0 + 64 <= L:
            dst = out[p, l0:l0 + 64]
            for j in range(64):
                dst[j] = (word >> np.uint64(j)) & np.uint64(1)
        else:
            for j in range(L - l0):
                out[p, l0 + j] = (word >> np.uint64(j)) & np.uint64(1)


def work_units(P: int, L: int, Q: int) -> int:
    """Work units of the (un)pack kernels for ``[P, L, Q]`` spikes (``bad`` entries of pack)."""
    W = num_words(L)
    return P * -(-W // _WBLOCK) if Q == 1 else P * W * -(-Q // _QBLOCK)


# Each kernel comes twice, parallel and serial, with the same unit body (see PARALLEL_MIN_WORK).

@nb.njit(parallel=True, cache=True)
def pack_kernel(x, out, bad):
    """x ``[P, L, Q]`` (any numeric dtype, Q > 1) -> out ``[P, W, Q]`` uint64, W = ceil(L/64).
    ``bad[u]`` (``work_units`` entries) is nonzero when unit u met a value other than 0 and 1;
    the caller then reports the first such index."""
    for u in nb.prange(bad.size):
        _pack_unit(x, out, bad, u)


@nb.njit(cache=True)
def pack_kernel_serial(x, out, bad):
    for u in range(bad.size):
        _pack_unit(x, out, bad, u)


@nb.njit(parallel=True, cache=True)
def pack_last_kernel(x, out, bad):
    """x ``[P, L]`` -> out ``[P, W]`` uint64 (packing the contiguous axis); ``bad`` as above."""
    for u in nb.prange(bad.size):
        _pack_last_unit(x, out, bad, u)


@nb.njit(cache=True)
def pack_last_kernel_serial(x, out, bad):
    for u in range(bad.size):
        _pack_last_unit(x, out, bad, u)


@nb.njit(parallel=True, cache=True)
def unpack_kernel(words, out, units):
    """words ``[P, W, Q]`` uint64 (Q > 1) -> out ``[P, L, Q]`` (any numeric dtype), 0 or 1."""
    for u in nb.prange(units):
        _unpack_unit(words, out, u)


@nb.njit(cache=True)
def unpack_kernel_serial(words, out, units):
    for u in range(units):
        _unpack_unit(words, out, u)


@nb.njit(parallel=True, cache=True)
def unpack_last_kernel(words, out, units):
    """words ``[P, W]`` uint64 -> out ``[P, L]`` (unpacking the contiguous axis)."""
    for u in nb.prange(units):
        _unpack_last_unit(words, out, u)


@nb.njit(cache=True)
def unpack_last_kernel_serial(words, out, units):
    for u in range(units):
        _unpack_last_unit(words, out, u)


def pack_numpy(x3: np.ndarray) -> np.ndarray:
    """Twin of ``pack_kernel`` (valid binary input): ``[P, L, Q]`` -> ``[P, W, Q]`` uint64."""
    P, L, Q = x3.shape
    W = num_words(L)
    bits = np.zeros((P, W * WORD_BITS, Q), dtype=np.uint64)
    bits[:, :L] = (x3 == 1)
    shifts = np.arange(WORD_BITS, dtype=np.uint64)[None, None, :, None]
    return np.bitwise_or.reduce(bits.reshape(P, W, WORD_BITS, Q) << shifts, axis=2)


def unpack_numpy(words3: np.ndarray, length: int, dtype=np.uint8) -> np.ndarray:
    """Twin of ``unpack_kernel``: ``[P, W, Q]`` uint64 -> ``[P, length, Q]``."""
    P, W, Q = words3.shape
    shifts = np.arange(WORD_BITS, dtype=np.uint64)[None, None, :, None]
    bits = (words3[:, :, None, :] >> shifts) & np.uint64(1)
    return bits.reshape(P, W * WORD_BITS, Q)[:, :length].astype(dtype)


def _axis(axis, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"{name}: expected an integer in [{-ndim}, {ndim}) for an array of "
                         f"{ndim} dimensions, got {axis!r}")
    return int(axis) % ndim


def _pqr(shape: tuple, axis: int) -> tuple[int, int, int]:
    P = int(np.prod(shape[:axis], dtype=np.int64))
    Q = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return P, shape[axis], Q


def pack_bits(spikes: np.ndarray, axis: int = -1, *, name: str = "spikes",
              parallel: bool | None = None) -> np.ndarray:
    """Pack a binary array along ``axis`` into uint64 words.

    spikes: any shape, bool or any real/integer dtype holding only 0 and 1.
    Returns uint64 of spikes' shape with ``axis`` replaced by ``ceil(length / 64)``.
    ``name`` is the argument named in error messages (callers pass "q", "k"); ``parallel``
    forces the parallel / serial kernel (default: by size).
    """
    check_array(spikes, name, min_ndim=1)
    ax = _axis(axis, spikes.ndim)
    if spikes.dtype == np.bool_:
        spikes = spikes.view(np.uint8)
    elif not (np.issubdtype(spikes.dtype, np.integer) or np.issubdtype(spikes.dtype, np.floating)):
        raise ValueError(f"{name}: expected a binary spike array of a real or integer dtype, "
                         f"got {spikes.dtype}")
    P, L, Q = _pqr(spikes.shape, ax)
    W = num_words(L)
    out = np.empty((P, W, Q), dtype=np.uint64)
    if out.size:
        x = np.ascontiguousarray(spikes)
        bad = np.empty(work_units(P, L, Q), dtype=np.uint64)
        par = use_parallel(x.size, parallel)
        if Q == 1:
            (pack_last_kernel if par else pack_last_kernel_serial)(x.reshape(P, L), out.reshape(P, W), bad)
        else:
            (pack_kernel if par else pack_kernel_serial)(x.reshape(P, L, Q), out, bad)
        if bad.any():
            check_binary(spikes, name)       # raises, naming the first offending index
            raise AssertionError("pack_kernel flagged a value that check_binary accepts")
    return out.reshape(spikes.shape[:ax] + (W,) + spikes.shape[ax + 1:])


def unpack_bits(words: np.ndarray, length: int, axis: int = -1, *, dtype=np.uint8,
                parallel: bool | None = None) -> np.ndarray:
    """Inverse of ``pack_bits``: uint64 words -> 0/1 array with ``length`` elements on ``axis``.

    ``dtype`` (default uint8) is the output dtype; the attention ops unpack straight to float.
    Padding bits must be 0 (a set padding bit means ``length`` is not the packed length).
    """
    check_array(words, "words", min_ndim=1)
    if words.dtype != np.uint64:
        raise ValueError(f"words: expected dtype uint64 (from pack_bits), got {words.dtype}")
    ax = _axis(axis, words.ndim)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length: expected a non-negative integer, got {length!r}")
    P, W, Q = _pqr(words.shape, ax)
    if W != num_words(length):
        raise ValueError(f"length: {length} elements need {num_words(length)} words, but words has "
                         f"{W} on axis {ax} (shape {words.shape})")
    w3 = np.ascontiguousarray(words).reshape(P, W, Q)
    tail = int(length) % WORD_BITS
    if W and tail and (w3[:, W - 1, :] >> np.uint64(tail)).any():
        raise ValueError(f"words: padding bits past length {length} are set; expected 0 "
                         f"(wrong length, or not produced by pack_bits)")
    out = np.empty((P, int(length), Q), dtype=dtype)
    if out.size:
        par = use_parallel(out.size, parallel)
        if Q == 1:
            kernel = unpack_last_kernel if par else unpack_last_kernel_serial
            kernel(w3.reshape(P, W), out.reshape(P, int(length)), work_units(P, int(length), Q))
        else:
            kernel = unpack_kernel if par else unpack_kernel_serial
            kernel(w3, out, work_units(P, int(length), Q))
    return out.reshape(words.shape[:ax] + (int(length),) + words.shape[ax + 1:])


# --------------------------------------------------------------------------------------------
# The packed form as a value
# --------------------------------------------------------------------------------------------

class PackedSpikes(NamedTuple):
    """Binary spikes bit-packed along one axis: ``words`` (uint64) is ``pack_bits(spikes,
    axis)``, ``length`` the spikes' length on that axis, ``axis`` its (non-negative) index.
    Padding bits (past ``length`` in each axis' last word) are 0.

    ``shape`` / ``size`` / ``ndim`` describe the unpacked spikes; ``count_nonzero()`` counts
    them; ``unpack(dtype)`` restores them. The one packed representation of refsnn: ``pack_spikes`` makes it, the Q-K ops take
    and return it (``refsnn.functional.attention`` says which axis each op wants)."""
    words: np.ndarray
    length: int
    axis: int

    @property
    def shape(self) -> tuple:
        s = self.words.shape
        return s[:self.axis] + (int(self.length),) + s[self.axis + 1:]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return self.words.ndim

    def count_nonzero(self) -> int:
        """The number of spikes (set bits; padding bits are 0)."""
        return int(np.bitwise_count(self.words).sum(dtype=np.int64))

    def unpack(self, dtype=np.uint8, *, parallel: bool | None = None) -> np.ndarray:
        """The spikes, ``shape``, as 0/1 of ``dtype``."""
        return unpack_bits(self.words, self.length, self.axis, dtype=dtype, parallel=parallel)


def pack_spikes(spikes: np.ndarray, axis: int = -1, *, name: str = "spikes",
                parallel: bool | None = None) -> PackedSpikes:
    """``PackedSpikes`` of a binary array packed along ``axis`` (``pack_bits``'s checks)."""
    words = pack_bits(spikes, axis, name=name, parallel=parallel)
    return PackedSpikes(words, int(spikes.shape[_axis(axis, spikes.ndim)]), _axis(axis, spikes.ndim))


def check_packed(p, name: str, *, ndim: int, axis: int, layout: str = "") -> PackedSpikes:
    """Validate a ``PackedSpikes`` argument: uint64 words of ``ndim`` dimensions packed along
    ``axis``, with as many words on it as ``length`` needs. ``layout`` (how to make the
    expected form) ends the messages. Padding bits are the caller's to check (the Q-K
    kernels flag them while they read the words)."""
    hint = f" ({layout})" if layout else ""
    if not isinstance(p, PackedSpikes):
        raise ValueError(f"{name}: expected PackedSpikes, got {type(p).__name__}")
    words, length, ax = p
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64:
        raise ValueError(f"{name}: expected uint64 words (PackedSpikes.words, from pack_bits), got "
                         f"{getattr(words, 'dtype', type(words).__name__)}")
    if words.ndim != ndim:
        raise ValueError(f"{name}: expected words of {ndim} dimensions, got shape {words.shape}{hint}")
    if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)) or ax != axis:
        raise ValueError(f"{name}: expected spikes packed along axis {axis}, got axis {ax!r}{hint}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"{name}: expected a positive integer length, got {length!r}")
    if words.shape[axis] != num_words(length):
        raise ValueError(f"{name}: length {length} needs {num_words(length)} words on axis {axis}, "
                         f"but words has shape {words.shape}")
    if min(words.shape) < 1:
        raise ValueError(f"{name}: expected every axis >= 1, got words of shape {words.shape}")
    return PackedSpikes(words, int(length), int(ax))


def padding_set(words: np.ndarray, length: int, axis: int) -> bool:
    """Whether a bit past ``length`` is set in the last word along ``axis`` (NumPy; for
    naming the argument after a kernel flagged one)."""
    tail = int(length) % WORD_BITS
    if not tail:
        return False
    last = np.take(words, words.shape[axis] - 1, axis=axis)
    return bool((last >> np.uint64(tail)).any())

"""Q-K cores on unpacked spike maps in one pass (SPEC section 4), with their NumPy twins.

(The last section: from packed Q and K to an unpacked Z, ``qk_*_from_words``.)

The packed kernels of ``refsnn.kernels.qk`` need Q and K as bits; from float32 maps, packing
both and unpacking Z cost 25x the packed core (issue 13). These kernels read the maps as they
are (float32, float64, uint8: one specialisation each), once:

    Q rows       summed per head (QKTA) / per channel (QKCA) and checked binary as they are read
    A = LIF(P)   ``neuron_step`` of ``refsnn.kernels.lif`` (the LIF step written once)
    K rows       checked binary, copied to Z where A fires (else 0), and packed to bits: the
                 backward reads K packed, as the packed kernels' cache keeps it

so the traffic is Q and K read once and Z written once, the minimum for unpacked maps. Z has
the dtype the caller allocates (float for the public ops, uint8 for a binary consumer).

Layouts (T first; G merges batch and head / batch and channel):
    QKTA   q, k, z  [T, G, d, N]     kw [T, G, Wd, N] uint64 (Wd = ceil(d/64): a head's
           channels, bit c % 64 of word c // 64)                  a, h [T, G, N]
    QKCA   q, k, z  [T, G, N]        kw [T, G, WN] uint64 (WN = ceil(N/64))   a, h [T, G]

Per work unit (QKTA: a group and a block of TOKEN_BLOCK tokens; QKCA: a group): ``counts[u]``
= [additions (Q spikes summed), selects (K spikes), kept (Z spikes)] as the packed kernels,
and ``bad[u]`` nonzero when the unit read a value other than 0 and 1 (NaN included); the
caller then names the first such index (``refsnn.checks.check_binary``).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
from numba.core import types
from numba.extending import overload

from .bitpack import PARALLEL_MIN_WORK, popcount64
from .lif import lif_charge, lif_forward_numpy, neuron_step
from .qk import _attention_step, _pad_mask, _store_unit, token_block, token_units

__all__ = ["qk_token_fused_kernel", "qk_channel_fused_kernel", "qk_token_fused", "qk_channel_fused", "run_units",
           "qk_token_words_kernel", "qk_channel_words_kernel", "qk_token_from_words",
           "qk_channel_from_words", "qk_token_from_words_numpy", "qk_channel_from_words_numpy",
           "qk_token_fused_numpy", "qk_channel_fused_numpy"]


def _flag(x):
    """Nonzero (a uint8) when x is neither 0 nor 1; OR-accumulated over a pass. Numba only."""


def _bit(x):
    """x == 1 as a bool (x already checked binary). Numba only."""


# Per dtype, the form that LLVM vectorises (measured on [32, 1024] blocks in L1: 4.5 G elements/s
# for the float32 Q sum with the xor form, 1.0 with x * (x - 1) != 0; uint8 9 G/s with the mask)
@overload(_flag, inline="always")
def _flag_impl(x):
    if isinstance(x, types.Integer) and not x.signed:
        return lambda x: np.uint8(x > 1)
    return lambda x: np.uint8(x != 0) ^ np.uint8(x == 1)


@overload(_bit, inline="always")
def _bit_impl(x):
    if isinstance(x, types.Integer) and not x.signed:
        return lambda x: x != 0
    return lambda x: x == 1


@nb.njit(cache=True, inline="always")
def _token_unit(q, k, z, kw, a, h, counts, bad, u, tau, v_th, v_reset, hard_reset, decay_input, one):
    T, G, d, N = q.shape
    g, n0, m = token_block(u, N)
    zero = one - one
    v = np.empty(m, dtype=a.dtype)
    v[:] = v_reset if hard_reset else zero
    acc = np.empty(m, dtype=np.int32)
    planes = np.empty((8, m), dtype=np.uint8)
    fire = np.empty(m, dtype=z.dtype)
    flags = np.zeros(m, dtype=np.uint8)     # per token, not a scalar: the loops stay vectorised
    adds = 0
    sel = 0
    kept = 0
    # Rows as slices (an index n0 + j would pay Numba's negative-index fix per element and
    # not vectorise: 0.6 vs 3.3 G elements/s). K is packed a byte plane at a time (8
    # channels in uint8 lanes, 1.4x faster than shifting into uint64 words per channel), the
    # planes then merged into the words, bit c % 64 of word c // 64 being byte (c % 64) // 8.
    for t in range(T):
        acc[:] = 0
        for c in range(d):
            qrow = q[t, g, c, n0:n0 + m]
            for j in range(m):
                x = qrow[j]
                flags[j] |= _flag(x)
                acc[j] += np.int32(_bit(x))
        arow, hrow = a[t, g, n0:n0 + m], h[t, g, n0:n0 + m]
        for j in range(m):
            adds += acc[j]
            hv, s, v[j] = neuron_step(v[j], a.dtype.type(acc[j]), tau, v_th, v_reset, hard_reset,
                                      decay_input, 0, 0, one, one, one, lif_charge)
            hrow[j] = hv      # charged from the sum P, exact in the LIF dtype
            arow[j] = s
            fire[j] = s
        for c in range(d):
            krow, zrow = k[t, g, c, n0:n0 + m], z[t, g, c, n0:n0 + m]
            plane = planes[(c % 64) // 8]
            sh = np.uint8(c % 8)
            if c % 8 == 0:
                plane[:] = 0
            for j in range(m):
                x = krow[j]
                flags[j] |= _flag(x)
                zrow[j] = x * fire[j]        # exact: both 0 or 1 once checked
                plane[j] |= np.uint8(_bit(x)) << sh
            if c % 64 == 63 or c == d - 1:
                used = (c % 64) // 8 + 1
                wrow = kw[t, g, c // 64, n0:n0 + m]
                for j in range(m):
                    w = np.uint64(0)
                    for i in range(used):
                        w |= np.uint64(planes[i, j]) << np.uint64(8 * i)
                    wrow[j] = w
                # K spikes and kept spikes from the packed words: no counters in the pass
                for j in range(m):
                    pk = popcount64(wrow[j])
                    sel += pk
                    if fire[j] != 0:
                        kept += pk
    badacc = np.uint8(0)
    for j in range(m):
        badacc |= flags[j]
    _store_unit(counts, bad, u, adds, sel, kept, badacc)


@nb.njit(cache=True, nogil=True)
def qk_token_fused_kernel(q, k, z, kw, a, h, counts, bad, u0, u1, tau, v_th, v_reset, hard_reset,
                          decay_input, one):
    """QKTA core on unpacked q, k ``[T, G, d, N]``: fills z (q's shape, any numeric dtype),
    kw, a, h, counts ``[units, 3]`` and bad ``[units]`` (units = ``token_units(G, N)``) for
    the units u0 .. u1 - 1."""
    for u in range(u0, u1):
        _token_unit(q, k, z, kw, a, h, counts, bad, u, tau, v_th, v_reset, hard_reset,
                    decay_input, one)


@nb.njit(cache=True, inline="always")
def _channel_unit(q, k, z, kw, a, h, counts, bad, g, tau, v_th, v_reset, hard_reset, decay_input, one):
    T, G, N = q.shape
    WN = kw.shape[2]
    zero = one - one
    xb = np.empty(1, dtype=a.dtype)     # carries the LIF dtype (an int -> float cast gives float64)
    v = v_reset if hard_reset else zero
    badacc = np.uint8(0)
    adds = 0
    sel = 0
    kept = 0
    for t in range(T):
        p = 0
        qrow = q[t, g]
        for n in range(N):
            x = qrow[n]
            badacc |= _flag(x)
            p += np.int64(_bit(x))
        adds += p
        hv, s, v = _attention_step(v, p, xb, tau, v_th, v_reset, hard_reset, decay_input, one)
        h[t, g] = hv
        a[t, g] = s
        on = s != zero
        f = z.dtype.type(s)
        krow, zrow, wrow = k[t, g], z[t, g], kw[t, g]
        for w in range(WN):
            n0 = w * 64
            acc = np.uint64(0)
            if n0 + 64 <= N:            # a constant trip count: the word vectorises
                seg, zseg = krow[n0:n0 + 64], zrow[n0:n0 + 64]
                for j in range(64):
                    x = seg[j]
                    badacc |= _flag(x)
                    zseg[j] = x * f
                    acc |= np.uint64(_bit(x)) << np.uint64(j)
            else:
                for j in range(N - n0):
                    x = krow[n0 + j]
                    badacc |= _flag(x)
                    zrow[n0 + j] = x * f
                    acc |= np.uint64(_bit(x)) << np.uint64(j)
            wrow[w] = acc
            cnt = popcount64(acc)
            sel += cnt
            if on:
                kept += cnt
    _store_unit(counts, bad, g, adds, sel, kept, badacc)


@nb.njit(cache=True, nogil=True)
def qk_channel_fused_kernel(q, k, z, kw, a, h, counts, bad, u0, u1, tau, v_th, v_reset,
                            hard_reset, decay_input, one):
    """QKCA core on unpacked q, k ``[T, G, N]``: fills z, kw ``[T, G, WN]``, a, h ``[T, G]``,
    counts ``[G, 3]`` and bad ``[G]`` for the groups u0 .. u1 - 1."""
    for g in range(u0, u1):
        _channel_unit(q, k, z, kw, a, h, counts, bad, g, tau, v_th, v_reset, hard_reset,
                      decay_input, one)


# --------------------------------------------------------------------------------------------
# Wrappers: allocate, run, sum the unit counts. ``lif``: the typed LIF scalars of
# ``refsnn.functional.lif._typed_args`` (their dtype is the LIF dtype).
# --------------------------------------------------------------------------------------------

def _scalars(lif: dict):
    return (lif["tau"], lif["v_th"], lif["v_reset"], lif["hard_reset"], lif["decay_input"],
            lif["tau"].dtype.type(1.0))


# The kernels are serial and release the GIL; the wrappers spread their units over Python
# threads (numba.get_num_threads() of them, the caller's included) in chunks taken one at a
# time. A parallel=True kernel compiled in twice the time (QKTA 5.0 against 2.4 CPU s, issue
# 13's time to first step) for the same speed; chunks taken as threads come free also keep
# both cores busy when another process holds one.
_CHUNKS_PER_THREAD = 4
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)


def _pool_for(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    with _lock:
        # a forked child inherits the pool object but not its threads: make a new one there
        if _pool is None or _pool_key[0] < workers or _pool_key[1] != os.getpid():
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="refsnn-qk")
            _pool_key = (workers, os.getpid())
        return _pool


def run_units(kernel, units: int, args: tuple, work: int, lead: int = 8) -> None:
    """``kernel(*args[:lead], u0, u1, *args[lead:])`` over units 0 .. units - 1: on this thread
    when ``work`` (elements) is below ``PARALLEL_MIN_WORK`` or one thread is set, else in
    chunks over ``numba.get_num_threads()`` threads."""
    threads = min(nb.get_num_threads(), units)
    if threads <= 1 or work < PARALLEL_MIN_WORK:
        kernel(*args[:lead], 0, units, *args[lead:])
        return
    step = max(1, -(-units // (threads * _CHUNKS_PER_THREAD)))
    bounds = [(u0, min(units, u0 + step)) for u0 in range(0, units, step)]
    pool = _pool_for(threads - 1)
    chunks = iter(bounds)
    lock = threading.Lock()

    def drain():
        while True:
            with lock:
                nxt = next(chunks, None)
            if nxt is None:
                return
            kernel(*args[:lead], nxt[0], nxt[1], *args[lead:])

    helpers = [pool.submit(drain) for _ in range(threads - 1)]
    drain()
    for f in helpers:
        f.result()          # re-raises a helper's exception


def _counts(units: np.ndarray) -> dict:
    tot = units.sum(axis=0)
    return dict(additions=int(tot[0]), selects=int(tot[1]), kept=int(tot[2]))


def qk_token_fused(q: np.ndarray, k: np.ndarray, lif: dict, z_dtype):
    """QKTA on q, k ``[T, G, d, N]`` (C-contiguous, one dtype). Returns (z, kw, a, h, counts,
    bad): ``bad`` True when q or k held a value other than 0 and 1 (outputs then invalid)."""
    T, G, d, N = q.shape
    dtype = lif["tau"].dtype
    z = np.empty(q.shape, dtype=z_dtype)
    kw = np.empty((T, G, -(-d // 64), N), dtype=np.uint64)
    a = np.empty((T, G, N), dtype=dtype)
    h = np.empty((T, G, N), dtype=dtype)
    units = np.empty((token_units(G, N), 3), dtype=np.int64)
    bad = np.empty(units.shape[0], dtype=np.uint8)
    run_units(qk_token_fused_kernel, units.shape[0], (q, k, z, kw, a, h, units, bad, *_scalars(lif)),
              q.size)
    return z, kw, a, h, _counts(units), bool(bad.any())


def qk_channel_fused(q: np.ndarray, k: np.ndarray, lif: dict, z_dtype):
    """QKCA on q, k ``[T, G, N]``; as ``qk_token_fused`` (kw ``[T, G, WN]``, a, h ``[T, G]``)."""
    T, G, N = q.shape
    dtype = lif["tau"].dtype
    z = np.empty(q.shape, dtype=z_dtype)
    kw = np.empty((T, G, -(-N // 64)), dtype=np.uint64)
    a = np.empty((T, G), dtype=dtype)
    h = np.empty((T, G), dtype=dtype)
    units = np.empty((G, 3), dtype=np.int64)
    bad = np.empty(G, dtype=np.uint8)
    run_units(qk_channel_fused_kernel, G, (q, k, z, kw, a, h, units, bad, *_scalars(lif)), q.size)
    return z, kw, a, h, _counts(units), bool(bad.any())


# --------------------------------------------------------------------------------------------
# NumPy twins (valid binary input): the same outputs from whole-array operations.
# --------------------------------------------------------------------------------------------

def _lif_twin(p, lif):
    T = p.shape[0]
    a, h = lif_forward_numpy(p.reshape(T, -1).astype(lif["tau"].dtype), lif["tau"], lif["v_th"],
                             lif["v_reset"], lif["hard_reset"], lif["decay_input"], 0, lif["tau"], 0)[:2]
    return a.reshape(p.shape), h.reshape(p.shape)


def _pack_twin(bits: np.ndarray, axis: int) -> np.ndarray:
    from .bitpack import pack_numpy
    shape = bits.shape
    P = int(np.prod(shape[:axis]))
    Q = int(np.prod(shape[axis + 1:]))
    w = pack_numpy(bits.reshape(P, shape[axis], Q))
    return w.reshape(shape[:axis] + (w.shape[1],) + shape[axis + 1:])


def qk_token_fused_numpy(q, k, lif, z_dtype):
    """Twin of ``qk_token_fused`` (without ``bad``)."""
    qb, kb = q == 1, k == 1
    a, h = _lif_twin(qb.sum(axis=2), lif)
    zb = kb & (a[:, :, None, :] != 0)
    counts = dict(additions=int(qb.sum()), selects=int(kb.sum()), kept=int(zb.sum()))
    return zb.astype(z_dtype), _pack_twin(kb, 2), a, h, counts


def qk_channel_fused_numpy(q, k, lif, z_dtype):
    """Twin of ``qk_channel_fused`` (without ``bad``)."""
    qb, kb = q == 1, k == 1
    a, h = _lif_twin(qb.sum(axis=2), lif)
    zb = kb & (a[:, :, None] != 0)
    counts = dict(additions=int(qb.sum()), selects=int(kb.sum()), kept=int(zb.sum()))
    return zb.astype(z_dtype), _pack_twin(kb, 2), a, h, counts


# --------------------------------------------------------------------------------------------
# From packed Q and K (PackedSpikes in the ops' layouts) to an unpacked Z in one pass: Q's
# words popcounted, the attention LIF, Z written from K's bits where A fires. One inlined LIF
# step (the packed cores of refsnn.kernels.qk inline four per option and compile 3x longer),
# and no second pass to unpack Z.
# --------------------------------------------------------------------------------------------

@nb.njit(cache=True, inline="always")
def _token_words_unit(qw, kw, z, a, h, counts, bad, pad, u, tau, v_th, v_reset, hard_reset,
                      decay_input, one):
    T, G, Wd, N = qw.shape
    d = z.shape[2]
    g, n0, m = token_block(u, N)
    zero = one - one
    v = np.empty(m, dtype=a.dtype)
    v[:] = v_reset if hard_reset else zero
    acc = np.empty(m, dtype=np.int64)
    fire = np.empty(m, dtype=z.dtype)
    adds = 0
    sel = 0
    kept = 0
    padacc = np.uint64(0)
    for t in range(T):
        acc[:] = 0
        for w in range(Wd):
            qrow = qw[t, g, w, n0:n0 + m]
            for j in range(m):
                acc[j] += popcount64(qrow[j])
        arow, hrow = a[t, g, n0:n0 + m], h[t, g, n0:n0 + m]
        for j in range(m):
            adds += acc[j]
            hv, s, v[j] = neuron_step(v[j], a.dtype.type(acc[j]), tau, v_th, v_reset, hard_reset,
                                      decay_input, 0, 0, one, one, one, lif_charge)
            hrow[j] = hv
            arow[j] = s
            fire[j] = s
        for w in range(Wd):
            krow = kw[t, g, w, n0:n0 + m]
            for j in range(m):
                pk = popcount64(krow[j])
                sel += pk
                if fire[j] != 0:
                    kept += pk
            for c in range(64 * w, min(d, 64 * w + 64)):
                sh = np.uint64(c - 64 * w)
                zrow = z[t, g, c, n0:n0 + m]
                for j in range(m):
                    zrow[j] = z.dtype.type((krow[j] >> sh) & np.uint64(1)) * fire[j]
        qlast, klast = qw[t, g, Wd - 1, n0:n0 + m], kw[t, g, Wd - 1, n0:n0 + m]
        for j in range(m):
            padacc |= (qlast[j] | klast[j]) & pad
    _store_unit(counts, bad, u, adds, sel, kept, padacc)


@nb.njit(cache=True, nogil=True)
def qk_token_words_kernel(qw, kw, z, a, h, counts, bad, pad, u0, u1, tau, v_th, v_reset,
                          hard_reset, decay_input, one):
    """QKTA from packed qw, kw ``[T, G, Wd, N]`` to an unpacked z ``[T, G, d, N]`` (any numeric
    dtype): fills z, a, h ``[T, G, N]``, counts ``[units, 3]`` and bad ``[units]`` (the OR of
    Q's and K's bits in ``pad``, the padding of each token's last word) for units u0 .. u1 - 1."""
    for u in range(u0, u1):
        _token_words_unit(qw, kw, z, a, h, counts, bad, pad, u, tau, v_th, v_reset, hard_reset,
                          decay_input, one)


@nb.njit(cache=True, inline="always")
def _channel_words_unit(qw, kw, z, a, h, counts, bad, pad, g, tau, v_th, v_reset, hard_reset,
                        decay_input, one):
    T, G, WN = qw.shape
    N = z.shape[2]
    zero = one - one
    xb = np.empty(1, dtype=a.dtype)     # carries the LIF dtype (an int -> float cast gives float64)
    v = v_reset if hard_reset else zero
    adds = 0
    sel = 0
    kept = 0
    padacc = np.uint64(0)
    for t in range(T):
        p = 0
        qrow = qw[t, g]
        for w in range(WN):
            p += popcount64(qrow[w])
        adds += p
        hv, s, v = _attention_step(v, p, xb, tau, v_th, v_reset, hard_reset, decay_input, one)
        h[t, g] = hv
        a[t, g] = s
        on = s != zero
        f = z.dtype.type(s)
        krow, zrow = kw[t, g], z[t, g]
        for w in range(WN):
            kv = krow[w]
            cnt = popcount64(kv)
            sel += cnt
            if on:
                kept += cnt
            n0 = w * 64
            if n0 + 64 <= N:            # a constant trip count: the word vectorises
                seg = zrow[n0:n0 + 64]
                for j in range(64):
                    seg[j] = z.dtype.type((kv >> np.uint64(j)) & np.uint64(1)) * f
            else:
                for j in range(N - n0):
                    zrow[n0 + j] = z.dtype.type((kv >> np.uint64(j)) & np.uint64(1)) * f
        padacc |= (qrow[WN - 1] | krow[WN - 1]) & pad
    _store_unit(counts, bad, g, adds, sel, kept, padacc)


@nb.njit(cache=True, nogil=True)
def qk_channel_words_kernel(qw, kw, z, a, h, counts, bad, pad, u0, u1, tau, v_th, v_reset,
                            hard_reset, decay_input, one):
    """QKCA from packed qw, kw ``[T, G, WN]`` to an unpacked z ``[T, G, N]``; a, h ``[T, G]``,
    counts ``[G, 3]``, bad ``[G]`` as ``qk_token_words_kernel``, for the groups u0 .. u1 - 1."""
    for g in range(u0, u1):
        _channel_words_unit(qw, kw, z, a, h, counts, bad, pad, g, tau, v_th, v_reset, hard_reset,
                            decay_input, one)


def qk_token_from_words(qw: np.ndarray, kw: np.ndarray, d: int, lif: dict, z_dtype):
    """QKTA from packed spikes ``[T, G, Wd, N]`` (a head's d channels; C-contiguous) to Z
    ``[T, G, d, N]`` of ``z_dtype``. Returns (z, a, h, counts, padded): ``padded`` True when Q
    or K had a bit set past d (the outputs are then invalid)."""
    T, G, Wd, N = qw.shape
    dtype = lif["tau"].dtype
    z = np.empty((T, G, d, N), dtype=z_dtype)
    a = np.empty((T, G, N), dtype=dtype)
    h = np.empty((T, G, N), dtype=dtype)
    units = np.empty((token_units(G, N), 3), dtype=np.int64)
    bad = np.empty(units.shape[0], dtype=np.uint64)
    run_units(qk_token_words_kernel, units.shape[0],
              (qw, kw, z, a, h, units, bad, _pad_mask(d, Wd), *_scalars(lif)), z.size)
    return z, a, h, _counts(units), bool(bad.any())


def qk_channel_from_words(qw: np.ndarray, kw: np.ndarray, N: int, lif: dict, z_dtype):
    """QKCA from packed spikes ``[T, G, WN]`` (the N tokens) to Z ``[T, G, N]``; as
    ``qk_token_from_words`` (a, h ``[T, G]``)."""
    T, G, WN = qw.shape
    dtype = lif["tau"].dtype
    z = np.empty((T, G, N), dtype=z_dtype)
    a = np.empty((T, G), dtype=dtype)
    h = np.empty((T, G), dtype=dtype)
    units = np.empty((G, 3), dtype=np.int64)
    bad = np.empty(G, dtype=np.uint64)
    run_units(qk_channel_words_kernel, G, (qw, kw, z, a, h, units, bad, _pad_mask(N, WN),
                                           *_scalars(lif)), z.size)
    return z, a, h, _counts(units), bool(bad.any())


def qk_token_from_words_numpy(qw, kw, d: int, lif, z_dtype):
    """Twin of ``qk_token_from_words`` (valid words): unpack, then ``qk_token_fused_numpy``."""
    from .bitpack import unpack_numpy
    T, G, Wd, N = qw.shape
    q, k = (unpack_numpy(w.reshape(T * G, Wd, N), d).reshape(T, G, d, N) for w in (qw, kw))
    z, _, a, h, counts = qk_token_fused_numpy(q, k, lif, z_dtype)
    return z, a, h, counts


def qk_channel_from_words_numpy(qw, kw, N: int, lif, z_dtype):
    """Twin of ``qk_channel_from_words`` (valid words)."""
    from .bitpack import unpack_numpy
    T, G, WN = qw.shape
    q, k = (unpack_numpy(w.reshape(T * G, WN, 1), N).reshape(T, G, N) for w in (qw, kw))
    z, _, a, h, counts = qk_channel_fused_numpy(q, k, lif, z_dtype)
    return z, a, h, counts

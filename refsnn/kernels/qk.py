"""Binary Q-K attention cores (SPEC section 4) on bit-packed spikes, with dense NumPy twins.

The core is: sums of Q (per head over channels for QKTA, per channel over tokens for QKCA),
the attention LIF over time on those integer sums (v_th = 0.5 by default), and the mask
Z = A * K. The packed kernels do all three in one pass per work unit, time innermost-but-one
so the membrane stays in registers / L1:

    P = popcount sum over the words of Q          (one popcount per Q word)
    A = LIF(P)  written with H (the membrane before firing, for the backward)
    Z = K AND (all-ones if A else 0)              (one AND per K word)

Layouts (T first; G merges batch and head / batch and channel):
    QKTA   qw, kw, zw [T, G=B*h, Wd, N]  uint64, Wd = ceil(d/64) words per head and token
           a, h       [T, G, N]          float (the LIF dtype)
    QKCA   qw, kw, zw [T, G=B*D, WN]     uint64, WN = ceil(N/64) words per channel
           a, h       [T, G]

The attention LIF runs on the sums converted to the LIF dtype through ``neuron_step`` of
``refsnn.kernels.lif`` (the one definition of charge, fire and reset), so A and H equal
``lif_forward`` on the same sums bit for bit (the sums are exact integers in float32 up to
2**24). Smooth spikes (SPEC section 12) have no packed form: the callers reject them.

``counts`` receive, per work unit: [additions (Q spikes summed), selects (K spikes the mask is
applied to), kept (K spikes kept = Z spikes)].

The backward kernels take K packed (the forward's cache keeps K at 1 bit per spike):
    dK = A * dZ      dA = sum of dZ over the set bits of K (a head's channels / a channel's tokens)
Sums run in a fixed sequential order (channels in order for QKTA, tokens in order for QKCA);
the twins sum in the same order (``np.cumsum`` is sequential), so both agree bit for bit.

Every kernel exists as a parallel (prange over work units) and a serial variant with one
inlined unit body; the wrappers run small inputs serially (``bitpack.PARALLEL_MIN_WORK``).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .bitpack import popcount64, use_parallel
from .lif import lif_charge, lif_forward_numpy, neuron_step

# The packed cores touch each word once (~1 ns per word here); waking the second worker thread
# (OMP_WAIT_POLICY=passive, see refsnn.runtime) costs 50-70 us on an idle machine, so the
# parallel variant pays off from about 2^18 words (measured: QKTA at 131,072 words 0.115 ms
# serial vs 0.108 ms parallel, at 524,288 words 0.419 vs 0.236 ms).
PACKED_PARALLEL_MIN_WORDS = 1 << 18

__all__ = ["PACKED_PARALLEL_MIN_WORDS", "qk_token_packed_kernel", "qk_channel_packed_kernel",
           "qk_token_backward_kernel",
           "qk_channel_backward_kernel", "qk_token_packed_kernel_serial",
           "qk_channel_packed_kernel_serial", "qk_token_backward_kernel_serial",
           "qk_channel_backward_kernel_serial", "qk_token_packed", "qk_channel_packed",
           "qk_token_backward_packed", "qk_channel_backward_packed", "token_units",
           "qk_token_dense", "qk_channel_dense", "qk_token_backward_dense",
           "qk_channel_backward_dense", "dense_counts", "token_sums", "channel_sums",
           "token_mask", "channel_mask", "TOKEN_BLOCK"]

TOKEN_BLOCK = 1024      # tokens per QKTA work unit: the unit's membranes and masks stay in L1
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@nb.njit(cache=True, inline="always")
def _store_unit(counts, bad, u, adds, sel, kept, flag):
    """A work unit's counters (additions, selects, kept) and its bad-input flag."""
    counts[u, 0] = adds
    counts[u, 1] = sel
    counts[u, 2] = kept
    bad[u] = flag


@nb.njit(cache=True, inline="always")
def _attention_step(v, p, xb, tau, v_th, v_reset, hard_reset, decay_input, one):
    """The attention LIF (Heaviside) on a count p of Q spikes: ``(h, spike, v)``. ``xb``: a
    one-element buffer of the LIF dtype; a scalar int -> float conversion in Numba gives
    float64, and float32 arithmetic must stay float32 to match lif_forward."""
    xb[0] = p
    return neuron_step(v, xb[0], tau, v_th, v_reset, hard_reset, decay_input, 0, 0, one, one,
                       one, lif_charge)


@nb.njit(cache=True, inline="always")
def _token_step_one_word(qrow, krow, zrow, hrow, arow, v, m, pad, tau, v_th, v_reset, one,
                         hard_reset, decay_input):
    """One time step of a QKTA unit whose heads fit one word (d <= 64), fused in one loop
    over the tokens: popcount, charge, fire, reset, mask. Called with literal option flags,
    so each call compiles to a branch-free, vectorised loop (1.7x faster than the
    multi-pass step). Returns (additions, selects, kept, the OR of Q's and K's bits in
    ``pad``: the padding bits, which must be 0)."""
    zero = one - one
    adds = 0
    sel = 0
    kept = 0
    padacc = np.uint64(0)
    for j in range(m):
        qv = qrow[j]
        kv = krow[j]
        padacc |= (qv | kv) & pad
        p = popcount64(qv)
        adds += p
        hrow[j] = p                 # the sum P, exact in the LIF dtype (below 2**24 / 2**53)
        hv, s, v[j] = neuron_step(v[j], hrow[j], tau, v_th, v_reset, hard_reset, decay_input,
                                  0, 0, one, one, one, lif_charge)
        hrow[j] = hv
        arow[j] = s
        pk = popcount64(kv)
        sel += pk
        if s != zero:
            zrow[j] = kv
            kept += pk
        else:
            zrow[j] = 0
    return adds, sel, kept, padacc


@nb.njit(cache=True, inline="always")
def _lif_row(hrow, arow, v, m, tau, v_th, v_reset, one, hard_reset, decay_input):
    """One time step of the attention LIF over a row of m sums (hrow holds P; gets H)."""
    for j in range(m):
        hrow[j], arow[j], v[j] = neuron_step(v[j], hrow[j], tau, v_th, v_reset, hard_reset,
                                             decay_input, 0, 0, one, one, one, lif_charge)


@nb.njit(cache=True, inline="always")
def token_block(u, N):
    """``(g, n0, m)`` of token unit u: group g, tokens n0 .. n0 + m (blocks of TOKEN_BLOCK)."""
    nblk = (N + TOKEN_BLOCK - 1) // TOKEN_BLOCK
    g = u // nblk
    n0 = (u - g * nblk) * TOKEN_BLOCK
    return g, n0, min(N, n0 + TOKEN_BLOCK) - n0


@nb.njit(cache=True, inline="always")
def _token_unit(qw, kw, zw, a, h, counts, bad, pad, u, tau, v_th, v_reset, hard_reset,
                decay_input, one):
    """QKTA forward of unit u: group g (sample and head), a block of TOKEN_BLOCK tokens.

    Heads of one word take the fused step above. Wider heads sum several words first; then
    the LIF steps the block's tokens in one loop (the reset and charge options compile to
    selects, so the loop vectorises). ``bad[u]``: Q's and K's bits in ``pad`` (the padding
    bits of each token's last word), ORed: nonzero when the words were not validly packed."""
    T, G, Wd, N = qw.shape
    zero = one - one
    r = v_reset if hard_reset else zero
    g, n0, m = token_block(u, N)
    v = np.empty(m, dtype=a.dtype)
    v[:] = r
    acc = np.empty(m, dtype=np.int64)
    mask = np.empty(m, dtype=np.uint64)
    adds = 0
    sel = 0
    kept = 0
    padacc = np.uint64(0)
    if Wd == 1:
        for t in range(T):
            qrow, krow, zrow = qw[t, g, 0, n0:n0 + m], kw[t, g, 0, n0:n0 + m], zw[t, g, 0, n0:n0 + m]
            hrow, arow = h[t, g, n0:n0 + m], a[t, g, n0:n0 + m]
            if hard_reset and decay_input:
                c = _token_step_one_word(qrow, krow, zrow, hrow, arow, v, m, pad, tau, v_th,
                                         v_reset, one, True, True)
            elif hard_reset:
                c = _token_step_one_word(qrow, krow, zrow, hrow, arow, v, m, pad, tau, v_th,
                                         v_reset, one, True, False)
            elif decay_input:
                c = _token_step_one_word(qrow, krow, zrow, hrow, arow, v, m, pad, tau, v_th,
                                         v_reset, one, False, True)
            else:
                c = _token_step_one_word(qrow, krow, zrow, hrow, arow, v, m, pad, tau, v_th,
                                         v_reset, one, False, False)
            adds += c[0]
            sel += c[1]
            kept += c[2]
            padacc |= c[3]
        _store_unit(counts, bad, u, adds, sel, kept, padacc)
        return
    for t in range(T):
        acc[:] = 0
        for w in range(Wd):
            qrow = qw[t, g, w, n0:n0 + m]
            for j in range(m):
                acc[j] += popcount64(qrow[j])
        arow = a[t, g, n0:n0 + m]
        hrow = h[t, g, n0:n0 + m]
        for j in range(m):
            adds += acc[j]
            hrow[j] = acc[j]       # the sum P, exact in the LIF dtype (below 2**24 / 2**53)
        # literal option flags, as for one-word heads: a branch-free loop per option
        if hard_reset and decay_input:
            _lif_row(hrow, arow, v, m, tau, v_th, v_reset, one, True, True)
        elif hard_reset:
            _lif_row(hrow, arow, v, m, tau, v_th, v_reset, one, True, False)
        elif decay_input:
            _lif_row(hrow, arow, v, m, tau, v_th, v_reset, one, False, True)
        else:
            _lif_row(hrow, arow, v, m, tau, v_th, v_reset, one, False, False)
        for j in range(m):
            mask[j] = _ALL_ONES if arow[j] != zero else np.uint64(0)
        for w in range(Wd):
            krow = kw[t, g, w, n0:n0 + m]
            zrow = zw[t, g, w, n0:n0 + m]
            for j in range(m):
                kv = krow[j]
                zv = kv & mask[j]
                zrow[j] = zv
                sel += popcount64(kv)
                kept += popcount64(zv)
        qlast, klast = qw[t, g, Wd - 1, n0:n0 + m], kw[t, g, Wd - 1, n0:n0 + m]
        for j in range(m):
            padacc |= (qlast[j] | klast[j]) & pad
    _store_unit(counts, bad, u, adds, sel, kept, padacc)


@nb.njit(cache=True, inline="always")
def _channel_unit(qw, kw, zw, a, h, counts, bad, pad, g, tau, v_th, v_reset, hard_reset,
                  decay_input, one):
    """QKCA forward of group g (sample and channel); ``bad[g]`` as in ``_token_unit`` (the
    padding of each row's last word)."""
    T, G, WN = qw.shape
    r = v_reset if hard_reset else one - one
    xb = np.empty(1, dtype=a.dtype)     # the LIF dtype (_attention_step)
    v = r
    adds = 0
    sel = 0
    kept = 0
    padacc = np.uint64(0)
    for t in range(T):
        p = 0
        qrow = qw[t, g]
        padacc |= (qrow[WN - 1] | kw[t, g, WN - 1]) & pad
        for w in range(WN):
            p += popcount64(qrow[w])
        adds += p
        hv, s, v = _attention_step(v, p, xb, tau, v_th, v_reset, hard_reset, decay_input, one)
        h[t, g] = hv
        a[t, g] = s
        mask = _ALL_ONES if s != 0 else np.uint64(0)
        krow = kw[t, g]
        zrow = zw[t, g]
        for w in range(WN):
            kv = krow[w]
            zv = kv & mask
            zrow[w] = zv
            sel += popcount64(kv)
            kept += popcount64(zv)
    _store_unit(counts, bad, g, adds, sel, kept, padacc)


@nb.njit(cache=True, inline="always")
def _token_backward_unit(kw, a, dz, dk, da, finite, u):
    """QKTA backward of unit u (as ``_token_unit``): dk = a * dz; da = the sum over the
    head's channels, in order, of dz where K is 1. ``finite[u]`` = the sum of dz * 0 over the
    unit: 0, or NaN when the unit read an inf or NaN (a check for free, during the pass)."""
    T, G, d, N = dz.shape
    g, n0, m = token_block(u, N)
    acc = np.empty(m, dtype=da.dtype)
    zero = acc.dtype.type(0)
    chk = zero
    for t in range(T):
        acc[:] = 0
        arow = a[t, g, n0:n0 + m]
        for c in range(d):
            krow = kw[t, g, c // 64, n0:n0 + m]
            sh = np.uint64(c % 64)
            dzrow = dz[t, g, c, n0:n0 + m]
            dkrow = dk[t, g, c, n0:n0 + m]
            for j in range(m):
                dzv = dzrow[j]
                dkrow[j] = arow[j] * dzv
                chk += dzv * zero
                if (krow[j] >> sh) & np.uint64(1):
                    acc[j] += dzv
        da[t, g, n0:n0 + m] = acc
    finite[u] = chk


@nb.njit(cache=True, inline="always")
def _channel_backward_unit(kw, a, dz, dk, da, finite, g):
    """QKCA backward of group g: dk = a * dz; da = the sum over tokens, in order, of dz where
    K is 1; ``finite[g]`` as in ``_token_backward_unit``."""
    T, G, N = dz.shape
    zero = da.dtype.type(0)
    chk = zero
    for t in range(T):
        av = a[t, g]
        acc = zero
        krow = kw[t, g]
        dzrow = dz[t, g]
        dkrow = dk[t, g]
        for n in range(N):
            dzv = dzrow[n]
            dkrow[n] = av * dzv
            chk += dzv * zero
            if (krow[n // 64] >> np.uint64(n % 64)) & np.uint64(1):
                acc += dzv
        da[t, g] = acc
    finite[g] = chk


# Each kernel comes twice, parallel and serial, over the same unit body (the wrappers pick
# one by size, see refsnn.kernels.bitpack.PARALLEL_MIN_WORK).

@nb.njit(parallel=True, cache=True)
def qk_token_packed_kernel(qw, kw, zw, a, h, counts, bad, pad, tau, v_th, v_reset,
                           hard_reset, decay_input, one):
    """QKTA core. qw, kw, zw ``[T, G, Wd, N]`` uint64; a, h ``[T, G, N]``; counts
    ``[G * ceil(N / TOKEN_BLOCK), 3]`` int64 and bad ``[units]`` uint64 (one row per unit);
    pad (uint64) the bits of a token's last word past the head's d channels. Float scalars
    have a's dtype."""
    for u in nb.prange(counts.shape[0]):
        _token_unit(qw, kw, zw, a, h, counts, bad, pad, u, tau, v_th, v_reset, hard_reset,
                    decay_input, one)


@nb.njit(cache=True)
def qk_token_packed_kernel_serial(qw, kw, zw, a, h, counts, bad, pad, tau, v_th, v_reset,
                                  hard_reset, decay_input, one):
    for u in range(counts.shape[0]):
        _token_unit(qw, kw, zw, a, h, counts, bad, pad, u, tau, v_th, v_reset, hard_reset,
                    decay_input, one)


@nb.njit(parallel=True, cache=True)
def qk_channel_packed_kernel(qw, kw, zw, a, h, counts, bad, pad, tau, v_th, v_reset,
                             hard_reset, decay_input, one):
    """QKCA core. qw, kw, zw ``[T, G, WN]`` uint64; a, h ``[T, G]``; counts ``[G, 3]``; bad
    ``[G]`` and pad as for QKTA (pad: the bits of a row's last word past N)."""
    for g in nb.prange(counts.shape[0]):
        _channel_unit(qw, kw, zw, a, h, counts, bad, pad, g, tau, v_th, v_reset, hard_reset,
                      decay_input, one)


@nb.njit(cache=True)
def qk_channel_packed_kernel_serial(qw, kw, zw, a, h, counts, bad, pad, tau, v_th, v_reset,
                                    hard_reset, decay_input, one):
    for g in range(counts.shape[0]):
        _channel_unit(qw, kw, zw, a, h, counts, bad, pad, g, tau, v_th, v_reset, hard_reset,
                      decay_input, one)


@nb.njit(parallel=True, cache=True)
def qk_token_backward_kernel(kw, a, dz, dk, da, finite):
    """QKTA backward. kw ``[T, G, Wd, N]`` uint64; a, da ``[T, G, N]``; dz, dk ``[T, G, d, N]``;
    finite ``[G * ceil(N / TOKEN_BLOCK)]`` (one entry per unit)."""
    for u in nb.prange(finite.shape[0]):
        _token_backward_unit(kw, a, dz, dk, da, finite, u)


@nb.njit(cache=True)
def qk_token_backward_kernel_serial(kw, a, dz, dk, da, finite):
    for u in range(finite.shape[0]):
        _token_backward_unit(kw, a, dz, dk, da, finite, u)


@nb.njit(parallel=True, cache=True)
def qk_channel_backward_kernel(kw, a, dz, dk, da, finite):
    """QKCA backward. kw ``[T, G, WN]`` uint64; a, da ``[T, G]``; dz, dk ``[T, G, N]``;
    finite ``[G]``."""
    for g in nb.prange(finite.shape[0]):
        _channel_backward_unit(kw, a, dz, dk, da, finite, g)


@nb.njit(cache=True)
def qk_channel_backward_kernel_serial(kw, a, dz, dk, da, finite):
    for g in range(finite.shape[0]):
        _channel_backward_unit(kw, a, dz, dk, da, finite, g)


# --------------------------------------------------------------------------------------------
# Python wrappers (allocate outputs, pick the parallel or serial kernel, sum the unit counts)
# --------------------------------------------------------------------------------------------

def token_units(G: int, N: int) -> int:
    """Work units of the QKTA kernels."""
    return G * -(-N // TOKEN_BLOCK)


def _lif_scalars(lif: dict):
    """The kernels' LIF arguments from ``refsnn.functional.lif``'s typed options."""
    return (lif["tau"], lif["v_th"], lif["v_reset"], lif["hard_reset"], lif["decay_input"],
            lif["tau"].dtype.type(1.0))


def _pad_mask(length: int | None, words: int) -> np.uint64:
    """The bits of the last of ``words`` words past ``length`` bits (0: no padding)."""
    tail = 0 if length is None else int(length) - 64 * (words - 1)
    if length is not None and not 0 < tail <= 64:
        raise ValueError(f"length: {length} bits do not fill the last of {words} words")
    return np.uint64(0) if tail in (0, 64) else np.uint64(_ALL_ONES ^ np.uint64((1 << tail) - 1))


def qk_token_packed(qw: np.ndarray, kw: np.ndarray, lif: dict, *, length: int | None = None,
                    parallel: bool | None = None):
    """QKTA core on packed spikes ``[T, G, Wd, N]``. ``lif``: typed LIF scalars (tau, v_th,
    v_reset, hard_reset, decay_input; the floats' dtype is the LIF dtype). ``length``: the
    head's d channels (the bits past it in a token's last word must be 0; default 64 * Wd).
    ``parallel`` forces the parallel / serial kernel (default: by size).
    Returns (zw, a, h, counts, padded): counts a dict of additions, selects, kept; padded True
    when Q or K had a padding bit set (the outputs are then invalid)."""
    T, G, Wd, N = qw.shape
    dtype = lif["tau"].dtype
    pad = _pad_mask(length, Wd)
    zw = np.empty_like(qw)
    a = np.empty((T, G, N), dtype=dtype)
    h = np.empty((T, G, N), dtype=dtype)
    units = np.zeros((token_units(G, N), 3), dtype=np.int64)
    bad = np.zeros(units.shape[0], dtype=np.uint64)
    kernel = qk_token_packed_kernel if use_parallel(qw.size, parallel, PACKED_PARALLEL_MIN_WORDS) \
        else qk_token_packed_kernel_serial
    kernel(qw, kw, zw, a, h, units, bad, pad, *_lif_scalars(lif))
    return zw, a, h, _count_dict(units), bool(bad.any())


def qk_channel_packed(qw: np.ndarray, kw: np.ndarray, lif: dict, *, length: int | None = None,
                      parallel: bool | None = None):
    """QKCA core on packed spikes ``[T, G, WN]``; as ``qk_token_packed`` (``length``: the
    token count N), a and h ``[T, G]``."""
    T, G, WN = qw.shape
    dtype = lif["tau"].dtype
    pad = _pad_mask(length, WN)
    zw = np.empty_like(qw)
    a = np.empty((T, G), dtype=dtype)
    h = np.empty((T, G), dtype=dtype)
    units = np.zeros((G, 3), dtype=np.int64)
    bad = np.zeros(G, dtype=np.uint64)
    kernel = qk_channel_packed_kernel if use_parallel(qw.size, parallel, PACKED_PARALLEL_MIN_WORDS) \
        else qk_channel_packed_kernel_serial
    kernel(qw, kw, zw, a, h, units, bad, pad, *_lif_scalars(lif))
    return zw, a, h, _count_dict(units), bool(bad.any())


def qk_token_backward_packed(kw: np.ndarray, a: np.ndarray, dz: np.ndarray, *,
                             parallel: bool | None = None):
    """QKTA backward on packed K ``[T, G, Wd, N]``, a ``[T, G, N]``, dz ``[T, G, d, N]``.
    Returns (dk ``[T, G, d, N]``, da ``[T, G, N]``, finite): ``finite`` is False when dz holds
    an inf or NaN (found during the pass, without a separate scan)."""
    T, G, d, N = dz.shape
    dk = np.empty_like(dz)
    da = np.empty((T, G, N), dtype=dz.dtype)
    finite = np.empty(token_units(G, N), dtype=dz.dtype)
    kernel = qk_token_backward_kernel if use_parallel(dz.size, parallel) else qk_token_backward_kernel_serial
    kernel(kw, a, dz, dk, da, finite)
    return dk, da, bool(np.isfinite(finite).all())


def qk_channel_backward_packed(kw: np.ndarray, a: np.ndarray, dz: np.ndarray, *,
                               parallel: bool | None = None):
    """QKCA backward on packed K ``[T, G, WN]``, a ``[T, G]``, dz ``[T, G, N]``.
    Returns (dk ``[T, G, N]``, da ``[T, G]``, finite) as ``qk_token_backward_packed``."""
    T, G, N = dz.shape
    dk = np.empty_like(dz)
    da = np.empty((T, G), dtype=dz.dtype)
    finite = np.empty(G, dtype=dz.dtype)
    kernel = qk_channel_backward_kernel if use_parallel(dz.size, parallel) else qk_channel_backward_kernel_serial
    kernel(kw, a, dz, dk, da, finite)
    return dk, da, bool(np.isfinite(finite).all())


def _count_dict(units: np.ndarray) -> dict:
    tot = units.sum(axis=0)
    return dict(additions=int(tot[0]), selects=int(tot[1]), kept=int(tot[2]))


# --------------------------------------------------------------------------------------------
# Dense twins on unpacked spikes ``[T, B, D, N]`` (float). The pieces are shared with the
# dense backend of refsnn.functional.attention, which runs the LIF through lif_forward.
# --------------------------------------------------------------------------------------------

def token_sums(q: np.ndarray, heads: int) -> np.ndarray:
    """P ``[T, B, h, N]``: per-head channel sums of q ``[T, B, D, N]``."""
    T, B, D, N = q.shape
    return q.reshape(T, B, heads, D // heads, N).sum(axis=3)


def channel_sums(q: np.ndarray) -> np.ndarray:
    """P ``[T, B, D]``: per-channel token sums of q ``[T, B, D, N]``."""
    return q.sum(axis=3)


def token_mask(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Z = A (``[T, B, h, N]``, broadcast over each head's channels) * K ``[T, B, D, N]``."""
    T, B, D, N = k.shape
    heads = a.shape[2]
    return (a[:, :, :, None, :] * k.reshape(T, B, heads, D // heads, N)).reshape(T, B, D, N)


def channel_mask(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Z = A (``[T, B, D]``, broadcast over tokens) * K ``[T, B, D, N]``."""
    return a[:, :, :, None] * k


def _lif_numpy(p: np.ndarray, lif: dict):
    T = p.shape[0]
    # [:2]: spikes and membranes (the twin also returns the final membrane)
    a, h = lif_forward_numpy(p.reshape(T, -1), lif["tau"], lif["v_th"], lif["v_reset"],
                             lif["hard_reset"], lif["decay_input"], lif["surrogate"], lif["alpha"], 0)[:2]
    return a.reshape(p.shape), h.reshape(p.shape)


def dense_counts(q, k, z) -> dict:
    return dict(additions=int(np.count_nonzero(q)), selects=int(np.count_nonzero(k)),
                kept=int(np.count_nonzero(z)))


def qk_token_dense(q: np.ndarray, k: np.ndarray, heads: int, lif: dict, *, count: bool = True):
    """Twin of ``qk_token_packed`` on dense spikes q, k ``[T, B, D, N]`` of the LIF dtype.
    Returns (z ``[T, B, D, N]``, a, h ``[T, B, h, N]``, counts); ``count=False`` skips the
    counting passes (counts None), for timing the bare dense core."""
    a, h = _lif_numpy(token_sums(q, heads), lif)
    z = token_mask(a, k)
    return z, a, h, dense_counts(q, k, z) if count else None


def qk_channel_dense(q: np.ndarray, k: np.ndarray, lif: dict, *, count: bool = True):
    """Twin of ``qk_channel_packed``. Returns (z ``[T, B, D, N]``, a, h ``[T, B, D]``, counts)."""
    a, h = _lif_numpy(channel_sums(q), lif)
    z = channel_mask(a, k)
    return z, a, h, dense_counts(q, k, z) if count else None


def qk_token_backward_dense(k: np.ndarray, a: np.ndarray, dz: np.ndarray):
    """Twin of ``qk_token_backward_kernel``: k, dz ``[T, B, D, N]``; a ``[T, B, h, N]``.
    Returns (dk ``[T, B, D, N]``, da ``[T, B, h, N]``)."""
    T, B, D, N = dz.shape
    heads = a.shape[2]
    dk = token_mask(a, dz)
    kdz = (k * dz).reshape(T, B, heads, D // heads, N)
    da = np.cumsum(kdz, axis=3)[:, :, :, -1, :]      # sequential over channels, as the kernel
    return dk, np.ascontiguousarray(da)


def qk_channel_backward_dense(k: np.ndarray, a: np.ndarray, dz: np.ndarray):
    """Twin of ``qk_channel_backward_kernel``: k, dz ``[T, B, D, N]``; a ``[T, B, D]``.
    Returns (dk, da ``[T, B, D]``)."""
    dk = channel_mask(a, dz)
    da = np.cumsum(k * dz, axis=3)[..., -1]           # sequential over tokens, as the kernel
    return dk, np.ascontiguousarray(da)

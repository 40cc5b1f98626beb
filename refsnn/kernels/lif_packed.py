"""LIF neurons that emit their spikes bit-packed (SPEC sections 2 and 4): Numba kernels and
their NumPy twin.

For a LIF whose only consumer is a binary op (the Q and K neurons of a Q-K attention block),
spikes as uint64 words are what the consumer reads: 1 bit per spike written instead of the
4 bytes of a float32 map, and no packing pass afterwards. The time recursion is
``refsnn.kernels.lif.neuron_step`` (the one definition of charge, fire and reset), so the
charged membranes H are those of ``lif_forward_kernel`` bit for bit, and the bits are its
spikes.

Layout: x, h ``[T, P, L, Q]``; the spikes are packed along L (bit i of word w holds element
64·w + i, as ``refsnn.kernels.bitpack.pack_bits``; padding bits 0) into words ``[T, P, W, Q]``,
W = ceil(L/64); v_last ``[P, L, Q]`` the membranes after the last step (non-finite iff a
neuron's input was, as in ``lif_forward_kernel``). Two kernels, one per case:

    lif_pack_kernel        Q > 1 (a middle axis: a head's channels, tokens contiguous). Unit:
                           a word row (p, w) and a block of QBLOCK positions; each of the
                           word's 64 rows runs its neurons over time, its bits going into byte
                           planes (uint8 lanes vectorise 8x wider than shifting into words),
                           merged into the words at the end.
    lif_pack_last_kernel   Q = 1 (the contiguous axis: tokens). Unit: row p, WBLOCK words;
                           per step, the block's neurons write their spikes as bytes to a
                           buffer in L1 (the loop of the uint8-spike LIF), then each word is
                           packed from 64 bytes in a loop of constant trip count.

Heaviside spikes only (smooth spikes are not 0/1), the ``"lif"`` neuron type. The kernels are
serial and release the GIL; ``lif_forward_packed`` spreads their units over threads
(``refsnn.kernels.qk_fused.run_units``: half the compile time of a ``parallel=True`` kernel).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .bitpack import num_words, pack_numpy, unit_block
from .lif import lif_charge, lif_forward_numpy, neuron_step
from .qk_fused import run_units

__all__ = ["lif_pack_kernel", "lif_pack_last_kernel", "lif_pack_units", "lif_forward_packed",
           "lif_forward_packed_numpy", "QBLOCK", "WBLOCK"]

QBLOCK = 4096  # positions per unit (Q > 1)
WBLOCK = 32     # words per unit (Q = 1): 2048 neurons, as refsnn.kernels.lif's blocks


@nb.njit(cache=True, inline="always")
def _pack_unit(x, scale, shift, affine, words, h, v_last, u, tau, v_th, v_reset, hard_reset,
               decay_input, one):
    T, P, L, Q = x.shape
    W = words.shape[2]
    p, w, q0, nq = unit_block(u, W, Q, QBLOCK)
    l0 = w * 64
    zero = one - one
    planes = np.zeros((T, 8, nq), dtype=np.uint8)
    v = np.empty(nq, dtype=x.dtype)
    for j in range(min(64, L - l0)):
        v[:] = v_reset if hard_reset else zero
        sh = np.uint8(j % 8)
        sa = scale[p, l0 + j] if affine else one
        sb = shift[p, l0 + j] if affine else zero
        for t in range(T):
            xs, hs = x[t, p, l0 + j, q0:q0 + nq], h[t, p, l0 + j, q0:q0 + nq]
            plane = planes[t, j // 8]
            for i in range(nq):
                # BatchNorm's affine as refsnn.kernels.bnlif applies it (x * scale + shift)
                y = xs[i] * sa + sb if affine else xs[i]
                hv, s, vn = neuron_step(v[i], y, tau, v_th, v_reset, hard_reset,
                                        decay_input, 0, 0, one, one, one, lif_charge)
                hs[i] = hv
                v[i] = vn
                plane[i] |= np.uint8(s != zero) << sh
        v_last[p, l0 + j, q0:q0 + nq] = v
    for t in range(T):
        out = words[t, p, w, q0:q0 + nq]
        for i in range(nq):
            word = np.uint64(0)
            for b in range(8):
                word |= np.uint64(planes[t, b, i]) << np.uint64(8 * b)
            out[i] = word


@nb.njit(cache=True, inline="always")
def _pack_last_unit(x, scale, shift, affine, words, h, v_last, u, tau, v_th, v_reset, hard_reset,
                    decay_input, one):
    T, P, L = x.shape
    W = words.shape[2]
    nwb = (W + WBLOCK - 1) // WBLOCK
    p = u // nwb
    w0 = (u - p * nwb) * WBLOCK
    w1 = min(W, w0 + WBLOCK)
    l0 = w0 * 64
    n = min(L, w1 * 64) - l0
    zero = one - one
    v = np.empty(n, dtype=x.dtype)
    v[:] = v_reset if hard_reset else zero
    sb = np.empty(n, dtype=np.uint8)        # the step's spikes as bytes, then packed
    sa = scale[p] if affine else one
    sf = shift[p] if affine else zero
    for t in range(T):
        xs, hs = x[t, p, l0:l0 + n], h[t, p, l0:l0 + n]
        for j in range(n):
            y = xs[j] * sa + sf if affine else xs[j]
            hv, s, vn = neuron_step(v[j], y, tau, v_th, v_reset, hard_reset, decay_input,
                                    0, 0, one, one, one, lif_charge)
            hs[j] = hv
            v[j] = vn
            sb[j] = np.uint8(s != zero)
        for w in range(w0, w1):
            o = (w - w0) * 64
            acc = np.uint64(0)
            if o + 64 <= n:         # a constant trip count: the word's loop vectorises
                seg = sb[o:o + 64]
                for j in range(64):
                    acc |= np.uint64(seg[j]) << np.uint64(j)
            else:
                for j in range(n - o):
                    acc |= np.uint64(sb[o + j]) << np.uint64(j)
            words[t, p, w] = acc
    v_last[p, l0:l0 + n] = v


@nb.njit(cache=True, nogil=True)
def lif_pack_kernel(x, scale, shift, affine, words, h, v_last, u0, u1, tau, v_th, v_reset,
                    hard_reset, decay_input, one):
    """x, h ``[T, P, L, Q]`` (Q > 1), words ``[T, P, W, Q]`` uint64, v_last ``[P, L, Q]``;
    units u0 .. u1 - 1 of ``lif_pack_units(P, L, Q)``. ``affine``: the neurons' input is x *
    scale + shift, scale and shift ``[P, L]`` (one BatchNorm channel per row), else x (scale and
    shift unread). Float scalars have x's dtype."""
    for u in range(u0, u1):
        _pack_unit(x, scale, shift, affine, words, h, v_last, u, tau, v_th, v_reset, hard_reset,
                   decay_input, one)


@nb.njit(cache=True, nogil=True)
def lif_pack_last_kernel(x, scale, shift, affine, words, h, v_last, u0, u1, tau, v_th, v_reset,
                         hard_reset, decay_input, one):
    """x, h ``[T, P, L]``, words ``[T, P, W]`` uint64, v_last ``[P, L]``; scale and shift
    ``[P]`` (one channel per row) when ``affine``."""
    for u in range(u0, u1):
        _pack_last_unit(x, scale, shift, affine, words, h, v_last, u, tau, v_th, v_reset,
                        hard_reset, decay_input, one)


def lif_pack_units(P: int, L: int, Q: int) -> int:
    """Work units of the kernels for ``[T, P, L, Q]``."""
    W = num_words(L)
    return P * -(-W // WBLOCK) if Q == 1 else P * W * -(-Q // QBLOCK)


def lif_forward_packed(x4: np.ndarray, lif: dict, scale=None, shift=None):
    """Run the kernels on x4 ``[T, P, L, Q]`` (C-contiguous float32 / float64). ``lif``: the
    typed scalars of ``refsnn.functional.lif._typed_args``. ``scale``, ``shift`` (x's dtype,
    ``[P, L]``, or ``[P]`` when Q = 1 and the rows have one channel): the neurons' input is ``x4 * scale + shift`` (the fused
    BatchNorm's affine), else x4. Returns (words ``[T, P, W, Q]``, h ``[T, P, L, Q]``, v_last
    ``[P, L, Q]``)."""
    T, P, L, Q = x4.shape
    W = num_words(L)
    words = np.empty((T, P, W, Q), dtype=np.uint64)
    h = np.empty_like(x4)
    v_last = np.empty(x4.shape[1:], dtype=x4.dtype)
    scalars = (lif["tau"], lif["v_th"], lif["v_reset"], lif["hard_reset"], lif["decay_input"],
               x4.dtype.type(1.0))
    units = lif_pack_units(P, L, Q)
    affine = scale is not None
    # a per-row scale on the contiguous axis: the last-axis kernel; a scale per element of the
    # packed axis ([P, L]) runs the middle-axis kernel, with Q = 1 too
    if Q == 1 and not (affine and scale.ndim == 2):
        if not affine:      # unread; the same array types as the affine call (one compile)
            scale = shift = np.zeros(1, dtype=x4.dtype)
        run_units(lif_pack_last_kernel, units,
                  (x4.reshape(T, P, L), scale, shift, affine, words.reshape(T, P, W),
                   h.reshape(T, P, L), v_last.reshape(P, L), *scalars), x4.size, lead=7)
    else:
        if not affine:
            scale = shift = np.zeros((1, 1), dtype=x4.dtype)
        run_units(lif_pack_kernel, units, (x4, scale, shift, affine, words, h, v_last, *scalars),
                  x4.size, lead=7)
    return words, h, v_last


def lif_forward_packed_numpy(x4: np.ndarray, lif: dict, scale=None, shift=None):
    """Twin of ``lif_forward_packed``: ``lif_forward_numpy``'s spikes packed by ``pack_numpy``."""
    T, P, L, Q = x4.shape
    if scale is not None:
        shape = (1, P, L, 1) if scale.ndim == 2 else (1, P, 1, 1)
        x4 = x4 * scale.reshape(shape) + shift.reshape(shape)
    s, h, v_last = lif_forward_numpy(x4.reshape(T, -1), lif["tau"], lif["v_th"], lif["v_reset"],
                                     lif["hard_reset"], lif["decay_input"], 0, lif["alpha"], 0)
    words = pack_numpy(s.reshape(T * P, L, Q)).reshape(T, P, -1, Q)
    return words, h.reshape(x4.shape), v_last.reshape(x4.shape[1:])

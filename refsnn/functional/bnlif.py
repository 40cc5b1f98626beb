"""BatchNorm feeding LIF neurons, fused, as a forward/backward pair: ``LIF(BN(x))`` in one pass
over memory forward (after BatchNorm's statistics) and one backward, whose second sweep over
each group of channels finds its values still in cache (SPEC sections 3 and 2; kernels in
``refsnn.kernels.bnlif``).

x ``[T, B, C, P]``: BatchNorm's statistics per channel over T, B and P (as
``batchnorm_forward`` on ``[T*B, C, P]``), then LIF neurons over T. Same results as
``batchnorm_forward`` followed by ``lif_forward``: spikes, the LIF's state and the running
statistics bit for bit; gradients to float64 rounding of BatchNorm's sums, which add in
another fixed order. The normalised map is never stored.

The LIF options are those of ``lif_forward``; the fused kernels run the ``"lif"`` neuron type
with spikes in x's dtype (``bn_lif_fusable`` says whether a set of options qualifies), or, with
``pack`` (``(2, group)`` or ``3`` on ``[T, B, C, P]``: the Q-K ops' layouts), as ``PackedSpikes``
from the packed LIF kernels of ``refsnn.kernels.lif_packed`` (the same affine and neuron step,
so the same membranes and cache).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..checks import NonFiniteError, check_finite, check_float_array
from ..kernels import bnlif as _k
from ..runtime import threads_for
from .lif import SPIKE_FNS, _typed_args, lif_options
from .norm import BN_EPS, BN_MOMENTUM, batchnorm_statistics

__all__ = ["bn_lif_forward", "bn_lif_backward", "bn_lif_fusable", "BNLIFCache"]


def bn_lif_fusable(**neuron) -> bool:
    """Whether ``lif_forward(**neuron)`` runs in the fused kernels (the LIF neuron type, spikes
    in the input's dtype)."""
    return neuron.get("neuron_type", "lif") == "lif" and neuron.get("spike_dtype") is None


class BNLIFCache(NamedTuple):
    x: np.ndarray               # [T, B, C, P], contiguous: BatchNorm's input
    h: np.ndarray               # [T, B, C, P]: the charged membrane
    mean: np.ndarray            # [C] float64: the statistics used (batch or running)
    inv_std: np.ndarray         # [C] float64
    weight: np.ndarray          # [C]
    training: bool
    lif: dict                   # lif_options
    shape: tuple                # x's shape as given


def bn_lif_forward(x, weight, bias, running_mean, running_var, *, training=True, momentum=BN_MOMENTUM,
                   eps=BN_EPS, check=True, **neuron):
    """x ``[T, B, C, ...]`` -> ``(spikes, cache, new_running_mean, new_running_var)``; spikes
    in x's shape and dtype. ``neuron``: the keywords of ``lif_forward`` (``backend`` too).
    ``check=False`` skips the scan of x for NaN and inf (a non-finite input still raises, from
    the final membrane, as in ``lif_forward``)."""
    check_float_array(x, "x", min_ndim=3, finite=check)
    if x.shape[0] == 0:
        raise ValueError("x: expected T >= 1 time steps on axis 0, got T = 0")
    options = lif_options(**neuron)
    if not bn_lif_fusable(**options):
        raise ValueError(f"neuron: the fused BN+LIF runs neuron_type='lif' with spike_dtype=None, "
                         f"got neuron_type={options['neuron_type']!r}, spike_dtype={options['spike_dtype']}")
    T, B, C = x.shape[:3]
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check_float_array(a, name, ndim=1, finite=check)
        if a.shape != (C,):
            raise ValueError(f"{name}: expected shape ({C},) for x with {C} channels, got {a.shape}")
    x4 = np.ascontiguousarray(x).reshape(T, B, C, -1)
    backend = options["backend"]
    mean, inv_std, scale, shift, new_mean, new_var = batchnorm_statistics(
        x4.reshape(T * B, C, -1), weight, bias, running_mean, running_var, training=training,
        momentum=momentum, eps=eps, repeats=1, backend=backend)
    if options["pack"] is not None:     # spikes bit-packed as they fire: refsnn.kernels.lif_packed
        spikes, h = _forward_packed(x4, x.shape, scale, shift, options)
        cache = BNLIFCache(x4, h, mean, inv_std, weight, bool(training), options, x.shape)
        return spikes, cache, new_mean, new_var
    a = _typed_args(options, x.dtype)
    args = (a["tau"], a["v_th"], a["v_reset"], a["hard_reset"], a["decay_input"], a["surrogate"],
            a["alpha"], SPIKE_FNS.index(options["spike_fn"]))
    if backend == "numba":
        spikes, h = np.empty_like(x4), np.empty_like(x4)
        v_last = np.empty(x4.shape[1:], dtype=x.dtype)
        # one (sample, channel) per unit: in a model's steps as fast as longer units or
        # faster (benchmarks/README.md, BN+LIF); the backward's units are longer
        with threads_for(x4.size):
            _k.forward_kernel(args[-1])(x4, scale, shift, spikes, h, v_last, 1, *args,
                                        x.dtype.type(1.0), x.dtype.type(math.pi))
    else:
        spikes, h, v_last = _k.bn_lif_forward_numpy(x4, scale, shift, *args)
    if not np.isfinite(v_last).all():
        check_finite(x, "x")
        raise NonFiniteError("x: the membrane overflowed to inf or NaN (inputs of about 1e38)")
    cache = BNLIFCache(x4, h, mean, inv_std, weight, bool(training), options, x.shape)
    return spikes.reshape(x.shape), cache, new_mean, new_var


def bn_lif_backward(dspikes, cache: BNLIFCache, *, check=True):
    """dL/dspikes (the forward's shape) -> ``(dx, dweight, dbias)``; dx in x's dtype, the
    parameter gradients in the weight's."""
    if not isinstance(cache, BNLIFCache):
        raise ValueError(f"cache: expected the BNLIFCache returned by bn_lif_forward, got {type(cache).__name__}")
    x, h, mean, inv_std, weight, training, o, shape = cache
    check_float_array(dspikes, "dspikes", finite=check)
    if dspikes.shape != shape:
        raise ValueError(f"dspikes: expected shape {shape} (the forward's), got {dspikes.shape}")
    ds = np.ascontiguousarray(dspikes, dtype=x.dtype).reshape(x.shape)
    a = _typed_args(o, x.dtype)
    args = (a["tau"], a["v_th"], a["v_reset"], a["hard_reset"], a["decay_input"], o["detach_reset"],
            a["surrogate"], a["alpha"], SPIKE_FNS.index(o["spike_fn"]))
    w64 = weight.astype(np.float64)
    if o["backend"] == "numba":
        C = x.shape[2]
        dx = np.empty_like(x)
        dweight, dbias = np.empty(C), np.empty(C)
        k = _k.channels_per_unit(C, x.shape[3])
        with threads_for(x.size):
            _k.backward_kernel(args[-1], args[-3])(ds, h, x, mean, inv_std, w64, training, dx,
                                                   dweight, dbias, k, *args, x.dtype.type(1.0),
                                                   x.dtype.type(math.pi))
    else:
        dx, dweight, dbias = _k.bn_lif_backward_numpy(ds, h, x, mean, inv_std, w64, training,
                                                      *args)
    return dx.reshape(shape), dweight.astype(weight.dtype), dbias.astype(weight.dtype)


def _forward_packed(x4, shape, scale, shift, options):
    """``bn_lif_forward`` with ``pack`` (``lif_forward``'s option): the spikes as PackedSpikes,
    H as the float kernel's bit for bit (the same affine, then ``neuron_step``), so the cache
    and the backward are unchanged. The layouts of the Q-K ops: ``(2, group)``, a group of
    channels per word row, or the positions of ``[T, B, C, P]`` (axis 3)."""
    from ..kernels import lif_packed as _kp       # the packed LIF's kernels (issue 13)
    from ..kernels.bitpack import PackedSpikes
    from .lif import _pack_view
    T, B, C, P = x4.shape
    view, split, axis = _pack_view(shape, options["pack"])
    if len(shape) != 4 or axis != 3:       # (2, group) splits axis 2, so packs the new axis 3
        raise ValueError(f"pack: the fused BN+LIF packs [T, B, C, P] along the positions (3) or "
                         f"the channels in groups ((2, group)), got {options['pack']} for x of "
                         f"shape {shape}")
    group = options["pack"][1]
    if group is None:      # rows (b, c): one channel each
        sc, sh = np.tile(scale, B), np.tile(shift, B)
    else:                  # rows (b, group g), element l: channel g * group + l
        sc, sh = (np.tile(v.reshape(C // group, group), (B, 1)) for v in (scale, shift))
    x_view = x4.reshape(view)
    a = _typed_args(options, x4.dtype)
    run = _kp.lif_forward_packed if options["backend"] == "numba" else _kp.lif_forward_packed_numpy
    words, h, v_last = run(x_view, a, sc, sh)
    if not np.isfinite(v_last).all():
        check_finite(x4, "x")
        raise NonFiniteError("x: the membrane overflowed to inf or NaN (inputs of about 1e38)")
    words = words.reshape(split[:axis] + (words.shape[2],) + split[axis + 1:])
    return PackedSpikes(words, view[2], axis), h.reshape(x4.shape)

"""The LIF neuron, multi-step (SPEC section 2), as a forward/backward pair.

Per element, for t = 0..T-1, with r = v_reset (hard reset) or 0 (soft reset, v_reset=None),
V[-1] = r::

    charge  H[t] = V[t-1] + (X[t] - (V[t-1] - r)) / tau      decay_input=True
            H[t] = V[t-1] - (V[t-1] - r) / tau + X[t]        decay_input=False
    fire    S[t] = 1 if H[t] - v_th >= 0 else 0              (fires at equality)
    reset   V[t] = H[t] (1 - S[t]) + v_reset S[t]            hard reset
            V[t] = H[t] - v_th S[t]                          soft reset

The backward uses a surrogate derivative g = dS/dH (``sigmoid``, ``atan``, ``fast_sigmoid``).
``spike_fn="smooth"`` (test only, SPEC section 12) replaces the Heaviside by the surrogate's
primitive so that finite differences can check the backward.

The time loop runs in Numba (``refsnn.kernels.lif``); ``backend="numpy"`` runs the twin.

Neuron types. Charge, fire and reset are written once, as inlined Numba functions in
``refsnn.kernels.lif``; a neuron type (in the manner of SpikingJelly's ``BaseNode``) keeps fire
and reset and supplies its own charge, with the charge's backward. ``NEURON_TYPES`` maps a name
to its ``NeuronType``; ``register_neuron`` adds one, and ``lif_forward(x, neuron_type=name)``
(or ``refsnn.nn.LIF(neuron_type=name)``) runs it. ``docs/extending.md`` shows an IF neuron.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, NamedTuple

import numpy as np

from ..kernels import BACKENDS
from ..kernels import lif as _k
from ..kernels import lif_packed as _kp
from ..kernels.bitpack import PackedSpikes
from ..checks import NonFiniteError, check_choice, check_finite, check_float_array
from ..runtime import threads_for

__all__ = ["lif_forward", "lif_backward", "SURROGATES", "SPIKE_FNS", "DEFAULT_ALPHA", "LIFCache", "NeuronType",
           "NEURON_TYPES", "register_neuron", "lif_options", "LIF_DEFAULTS"]

SURROGATES = ("sigmoid", "atan", "fast_sigmoid")
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}
SPIKE_FNS = ("heaviside", "smooth")
# spike dtypes besides the input's: bytes for a consumer that reads spikes (the Q-K ops)
SPIKE_DTYPES = (np.uint8,)


class NeuronType(NamedTuple):
    """A neuron type: the pieces of its step that differ from the LIF's.

    charge           ``charge(v, x, tau, r, decay_input) -> H``: the membrane after input x
                     from V[t-1] = v (r: the resting potential, v_reset or 0). A Numba
                     function (``@numba.njit(inline="always")``) that also runs on NumPy
                     arrays through its ``py_func`` (the NumPy twin uses that).
    charge_backward  ``charge_backward(dh, tau, decay_input, one) -> (dV[t-1], dX[t])``: the
                     charge's local backward, dL/dH to the gradients of its two inputs.
    name             the name ``lif_forward(neuron_type=...)`` takes.

    Fire (Heaviside, or the surrogate's primitive in smooth mode), the surrogate derivative and
    reset are shared (``refsnn.kernels.lif``), as are every option of ``lif_forward``."""
    name: str
    charge: Callable
    charge_backward: Callable


NEURON_TYPES: dict[str, NeuronType] = {
    "lif": NeuronType("lif", _k.lif_charge, _k.lif_charge_backward),
}


def register_neuron(name: str, charge, charge_backward) -> NeuronType:
    """Add a neuron type under ``name`` (see ``NeuronType`` for the two functions); returns it.
    Registering a taken name raises ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if name in NEURON_TYPES:
        raise ValueError(f"name: neuron type {name!r} is already registered")
    for arg, fn in (("charge", charge), ("charge_backward", charge_backward)):
        if not hasattr(fn, "py_func"):
            raise ValueError(f"{arg}: expected a Numba function (numba.njit), got {type(fn).__name__}")
    NEURON_TYPES[name] = NeuronType(name, charge, charge_backward)
    return NEURON_TYPES[name]


class LIFCache(NamedTuple):
    """What the backward needs: the charged membrane H ``[T, M]`` (the spikes are recomputed
    from it), the options (``lif_options``) and the input shape."""
    h: np.ndarray
    options: dict
    shape: tuple


def _check_pack(pack, spike_dtype, spike_fn, neuron_type):
    """``pack``: None, an axis, or (axis, group); see ``lif_forward``."""
    if pack is None:
        return None
    form = pack if isinstance(pack, tuple) else (pack, None)
    ok = len(form) == 2 and all(v is None or (isinstance(v, (int, np.integer))
                                              and not isinstance(v, bool)) for v in form) \
        and form[0] is not None and (form[1] is None or form[1] >= 1)
    if not ok:
        raise ValueError(f"pack: expected None, an axis (int) or (axis, group) with group >= 1, "
                         f"got {pack!r}")
    if spike_dtype is not None or spike_fn != "heaviside" or neuron_type != "lif":
        raise ValueError(f"pack: packed spikes come from the 'lif' neuron type with Heaviside "
                         f"spikes and spike_dtype None, got neuron_type={neuron_type!r}, "
                         f"spike_fn={spike_fn!r}, spike_dtype={spike_dtype!r}")
    return (int(form[0]), None if form[1] is None else int(form[1]))


def _pack_view(shape: tuple, pack: tuple):
    """x's shape -> ([T, P, L, Q], the packed spikes' unpacked shape, its axis) for ``pack``."""
    axis, group = pack
    ndim = len(shape)
    if not -ndim <= axis < ndim or axis % ndim == 0:
        raise ValueError(f"pack: expected an axis in [1, {ndim}) or [-{ndim - 1}, 0) for x of "
                         f"{ndim} dimensions (axis 0 is time), got {axis}")
    axis %= ndim
    L = shape[axis]
    if group is not None and L % group:
        raise ValueError(f"pack: group {group} does not divide axis {axis} of x (length {L}, "
                         f"shape {shape})")
    split = shape[:axis] + ((L // group, group) if group else (L,)) + shape[axis + 1:]
    ax = axis + (1 if group else 0)
    T = shape[0]
    P = int(np.prod(split[1:ax], dtype=np.int64))
    Q = int(np.prod(split[ax + 1:], dtype=np.int64))
    return (T, P, split[ax], Q), split, ax


def lif_options(*, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=True,
                surrogate="sigmoid", alpha=None, spike_fn="heaviside", neuron_type="lif",
                spike_dtype=None, pack=None, backend="numba") -> dict:
    """The validated options of ``lif_forward`` (same keywords and defaults) as a dict, without
    running a neuron: modules check their options with it at construction."""
    check_choice("backend", backend, BACKENDS)
    options = _options(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha,
                       spike_fn, neuron_type)
    if spike_dtype is not None:
        try:
            known = np.dtype(spike_dtype) in SPIKE_DTYPES
        except TypeError:
            known = False
        if not known:
            raise ValueError(f"spike_dtype: expected None (the input's dtype) or one of "
                             f"{[np.dtype(t).name for t in SPIKE_DTYPES]}, got {spike_dtype!r}")
        if spike_fn != "heaviside":
            raise ValueError("spike_dtype: smooth spikes (spike_fn='smooth') are not 0/1; "
                             "leave spike_dtype None")
        spike_dtype = np.dtype(spike_dtype)
    options["spike_dtype"] = spike_dtype
    options["pack"] = _check_pack(pack, spike_dtype, spike_fn, neuron_type)
    options["backend"] = backend
    return options


# The neuron's parameters (not how it runs: neuron_type, spike_dtype, backend) with
# lif_options' defaults: Config and the attention neurons take their defaults from here.
LIF_DEFAULTS = {name: inspect.signature(lif_options).parameters[name].default
                for name in ("tau", "v_threshold", "v_reset", "decay_input", "detach_reset",
                             "surrogate", "alpha", "spike_fn")}


def _options(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, spike_fn,
             neuron_type="lif"):
    check_choice("neuron_type", neuron_type, tuple(NEURON_TYPES))
    check_choice("surrogate", surrogate, SURROGATES)
    check_choice("spike_fn", spike_fn, SPIKE_FNS)
    for name, value in (("tau", tau), ("v_threshold", v_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if decay_input and not tau > 1.0:
        raise ValueError(f"tau: expected tau > 1 for a decaying neuron, got {tau}")
    if not decay_input and not tau > 0.0:
        raise ValueError(f"tau: expected tau > 0, got {tau}")
    if v_reset is not None and (isinstance(v_reset, bool) or not math.isfinite(v_reset)):
        raise ValueError(f"v_reset: expected a finite number or None (soft reset), got {v_reset!r}")
    if alpha is None:
        alpha = DEFAULT_ALPHA[surrogate]
    elif isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha: expected a positive number (or None for the default), got {alpha!r}")
    return dict(tau=float(tau), v_threshold=float(v_threshold),
                v_reset=None if v_reset is None else float(v_reset),
                decay_input=bool(decay_input), detach_reset=bool(detach_reset),
                surrogate=surrogate, alpha=float(alpha), spike_fn=spike_fn,
                neuron_type=neuron_type)


def _typed_args(options, dtype):
    dt = np.dtype(dtype).type
    hard = options["v_reset"] is not None
    return dict(tau=dt(options["tau"]), v_th=dt(options["v_threshold"]),
                v_reset=dt(options["v_reset"] if hard else 0.0), hard_reset=hard,
                decay_input=options["decay_input"],
                surrogate=_k.SURROGATE_CODES[options["surrogate"]], alpha=dt(options["alpha"]))


def lif_forward(x, *, tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True,
                detach_reset=True, surrogate="sigmoid", alpha=None, spike_fn="heaviside",
                neuron_type="lif", spike_dtype=None, pack=None, backend="numba"):
    """Run LIF neurons (or another ``neuron_type`` of ``NEURON_TYPES``) over time.

    x: ``[T, ...]`` float32 or float64 input current, time first, T >= 1.
    Returns ``(spikes, cache)``; spikes has x's shape and dtype (0/1, or the smooth values), or
    ``spike_dtype`` (numpy.uint8: a byte per spike, for a consumer that reads spikes, such as
    the Q-K ops; written by the kernel directly, no conversion pass).

    ``pack``: spikes bit-packed by the kernel as they fire (``refsnn.kernels.lif_packed``), a
    ``PackedSpikes``: ``axis`` (>= 1; packed along it), or ``(axis, group)`` (the axis split
    into (length/group, group) and each group packed on its own, starting a new word: the
    layout of ``refsnn.functional.attention.qk_token_layout`` is ``(2, D // heads)`` on
    ``[T, B, D, N]``; ``qk_channel_layout``'s is ``3``). Equal to ``pack_spikes`` of the
    unpacked spikes (of x viewed with the split axis).
    """
    check_float_array(x, "x", min_ndim=1, finite=False)      # non-finite input: see below
    if x.shape[0] == 0:
        raise ValueError("x: expected T >= 1 time steps on axis 0, got T = 0")
    options = lif_options(tau=tau, v_threshold=v_threshold, v_reset=v_reset,
                          decay_input=decay_input, detach_reset=detach_reset, surrogate=surrogate,
                          alpha=alpha, spike_fn=spike_fn, neuron_type=neuron_type,
                          spike_dtype=spike_dtype, pack=pack, backend=backend)
    if options["pack"] is not None:
        return _lif_forward_packed(x, options)
    T = x.shape[0]
    x2 = np.ascontiguousarray(x).reshape(T, -1)
    a = _typed_args(options, x.dtype)
    args = (a["tau"], a["v_th"], a["v_reset"], a["hard_reset"], a["decay_input"], a["surrogate"],
            a["alpha"], SPIKE_FNS.index(spike_fn))
    neuron = NEURON_TYPES[neuron_type]
    if backend == "numba":
        spikes = np.empty(x2.shape, dtype=options["spike_dtype"] or x.dtype)
        h = np.empty_like(x2)
        v_last = np.empty(x2.shape[1], dtype=x.dtype)
        consts = (x.dtype.type(1.0), x.dtype.type(math.pi))
        with threads_for(x2.size):
            if neuron_type == "lif":        # the compiled, disk-cached kernel
                _k.forward_kernel(args[-1])(x2, spikes, h, v_last, *args, *consts)
            else:
                _k.neuron_forward_kernel(x2, spikes, h, v_last, *args, *consts, neuron.charge)
    else:
        spikes, h, v_last = _k.lif_forward_numpy(x2, *args, charge=neuron.charge.py_func)
        spikes = spikes.astype(options["spike_dtype"] or x.dtype, copy=False)
    # any NaN or inf in x leaves the final membrane non-finite: one check of M values instead
    # of a scan of all T * M inputs (the scan runs only to name the first bad index)
    if not np.isfinite(v_last).all():
        check_finite(x, "x")
        raise NonFiniteError("x: the membrane overflowed to inf or NaN (inputs of about 1e38)")
    return spikes.reshape(x.shape), LIFCache(h, options, x.shape)


def _lif_forward_packed(x: np.ndarray, options: dict):
    view, split, axis = _pack_view(x.shape, options["pack"])
    x4 = np.ascontiguousarray(x).reshape(view)
    a = _typed_args(options, x.dtype)
    if options["backend"] == "numba":
        words, h, v_last = _kp.lif_forward_packed(x4, a)
    else:
        words, h, v_last = _kp.lif_forward_packed_numpy(x4, a)
    if not np.isfinite(v_last).all():
        check_finite(x, "x")
        raise NonFiniteError("x: the membrane overflowed to inf or NaN (inputs of about 1e38)")
    words = words.reshape(split[:axis] + (words.shape[2],) + split[axis + 1:])
    return PackedSpikes(words, view[2], axis), LIFCache(h.reshape(x.shape[0], -1), options, x.shape)


def lif_backward(dspikes, cache: LIFCache, *, check=True):
    """Gradient of the loss with respect to x, given dL/dspikes (``[T, ...]``). Never mutates
    ``dspikes``. ``check=False`` skips the scan of dspikes for NaN and inf."""
    if not isinstance(cache, LIFCache):
        raise ValueError(f"cache: expected the LIFCache returned by lif_forward, got {type(cache).__name__}")
    h, o, shape = cache
    check_float_array(dspikes, "dspikes", finite=check)
    if dspikes.shape != shape:
        raise ValueError(f"dspikes: expected shape {shape} (the forward's), got {dspikes.shape}")
    dtype = h.dtype
    ds = np.ascontiguousarray(dspikes, dtype=dtype).reshape(shape[0], -1)
    a = _typed_args(o, dtype)
    args = (a["tau"], a["v_th"], a["v_reset"], a["hard_reset"], a["decay_input"], o["detach_reset"],
            a["surrogate"], a["alpha"], SPIKE_FNS.index(o["spike_fn"]))
    neuron = NEURON_TYPES[o["neuron_type"]]
    if o["backend"] == "numba":
        dx = np.empty_like(ds)
        consts = (dtype.type(1.0), dtype.type(math.pi))
        with threads_for(ds.size):
            if o["neuron_type"] == "lif":
                _k.backward_kernel(args[-1], args[-3])(ds, h, dx, *args, *consts)
            else:
                _k.neuron_backward_kernel(ds, h, dx, *args, *consts, neuron.charge_backward)
    else:
        dx = _k.lif_backward_numpy(ds, h, *args, charge_backward=neuron.charge_backward.py_func)
    return dx.reshape(shape)

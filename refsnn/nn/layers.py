"""Layer modules: thin classes over the functional pairs, holding parameters and one cache.

Layouts are time-major (SPEC section 1): feature maps ``[T, B, C, H, W]``, token maps
``[T, B, C, N]``. Convolutions, BatchNorm and pooling treat time steps as more samples: they
derive from ``TimeFolded``, which folds ``[T, B, ...]`` into ``[T*B, ...]`` around the
functional op in one place. Initialisation follows
PyTorch's defaults: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with
a = sqrt(5)), BatchNorm weight 1 and bias 0.

Modules check shapes and dtypes of every input but do not scan activations for NaN or inf:
inside a network a non-finite value reaches a LIF neuron, which detects it (see
``refsnn.functional.lif``), and training checks the loss. The functional ops scan by default.

Energy (SPEC section 7; ``refsnn.nn.counting``): every layer declares its ``energy_role``.
Conv2d, Conv1x1 and Linear are synapses: while an ``EventCounter`` is attached
(``refsnn.energy`` does it) they note what their input carried (``reads="spikes"``: the events
the counter finds; ``reads="analog"``: data, tokens, pooled features) and ``energy_counts()``
turns that and the op's MACs into ``SynapseCounts``. LIF neurons count their spikes;
BatchNorm and max pooling are free.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..functional import conv as F
from ..checks import check_choice, check_float_array
from ..functional.bnlif import bn_lif_backward, bn_lif_forward
from ..functional.lif import LIFCache, lif_backward, lif_forward, lif_options
from ..kernels.bitpack import PackedSpikes
from ..functional.norm import BN_EPS, BN_MOMENTUM, batchnorm_backward, batchnorm_forward
from ..functional.pool import maxpool2d_backward, maxpool2d_forward
from .counting import FREE, NEURON, READS, SYNAPSE, NeuronCounts, SynapseCounts, synapse_counts
from .module import Module, Parameter

__all__ = ["TimeFolded", "Synapse", "Conv2d", "Conv1x1", "Linear", "BatchNorm", "LIF", "MaxPool2d",
           "uniform_init"]


def uniform_init(rng: np.random.Generator, shape, fan_in: int, dtype) -> np.ndarray:
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _need_rng(rng, owner):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{owner}: rng must be a numpy.random.Generator (randomness is passed "
                         f"explicitly), got {type(rng).__name__}")
    return rng


def _check_channels(x, channels):
    if x.shape[2] != channels:
        raise ValueError(f"x: expected {channels} channels on axis 2 of [T, B, C, ...], got shape {x.shape}")


class InputRead(NamedTuple):
    """What a synapse's input carried in the last forward with a counter attached."""
    events: int | None          # spike events; None: analog
    elements: int
    steps: int                  # time steps of the input (1 for an input repeated over time)
    output_shape: tuple         # of the layer's output ([T, B, ...] or [B, out])


class Synapse:
    """Mixin of the layers whose arithmetic costs energy: Conv2d, Conv1x1, Linear.

    ``reads``: ``"spikes"`` (default; the attached EventCounter finds the events, and counts
    an input it knows as analog in MACs) or ``"analog"`` (always MACs). The layer's cache
    carries ``macs``.
    """

    energy_role = SYNAPSE
    op_kind = "conv"
    reads = "spikes"
    _read: InputRead | None = None

    def _set_reads(self, reads: str) -> None:
        self.reads = check_choice("reads", reads, READS)

    def _note_input(self, x: np.ndarray, steps: int, output_shape: tuple) -> None:
        """Called while a counter is attached: the input's events, elements and time steps."""
        events = None if self.reads == "analog" else self._input_events(x)
        self._read = InputRead(events, int(x.size), int(steps), tuple(map(int, output_shape)))

    @property
    def last_read(self) -> InputRead | None:
        """What the last forward with a counter attached read (None before one)."""
        return self._read

    def _input_events(self, x: np.ndarray) -> int | None:
        return self.counter.events(x)

    def energy_counts(self) -> SynapseCounts | None:
        """The last counted forward's MACs or ACs (None before one)."""
        if self._read is None or self._cache is None:
            return None
        events, elements, steps, _ = self._read
        return synapse_counts(self._cache.macs, events, elements, steps)


class TimeFolded(Module):
    """A layer that treats time steps as more samples: ``forward`` takes ``[T, B, ...]``,
    runs ``forward_folded`` on ``[T*B, ...]`` (the functional op's layout) and restores
    ``[T, B, ...]``; ``backward`` does the same around ``backward_folded``. The folds are
    free reshapes of contiguous arrays. Keyword options pass through (``repeats`` of
    BatchNorm, ``need_dx`` of Conv2d; ``backward_folded`` may return None for no dx).

    Subclasses define ``forward_folded(x, **options)`` and ``backward_folded(dy, **options)``
    (a subclass without them is refused when it is defined), set ``input_ndim`` (rank of
    ``[T, B, ...]``; None: at least 3) and, when the channel axis is checked, ``in_channels``.
    ``backward`` takes T and B from ``dy`` (``[T, B, ...]`` like the forward's output).
    """

    input_ndim: int | None = None
    in_channels: int | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [m for m in ("forward_folded", "backward_folded") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"{cls.__name__}: a TimeFolded layer defines {' and '.join(missing)}")

    def forward(self, x, **options):
        if self.input_ndim is None:
            check_float_array(x, "x", min_ndim=3, finite=False)
        else:
            check_float_array(x, "x", ndim=self.input_ndim, finite=False)
        if self.in_channels is not None:
            _check_channels(x, self.in_channels)
        T, B = x.shape[:2]
        y = self.forward_folded(x.reshape((T * B,) + x.shape[2:]), **options)
        y = y.reshape((T, B) + y.shape[1:])
        if self.counter is not None:
            self._note_input(x, T, y.shape)
        return y

    def backward(self, dy, **options):
        T, B = dy.shape[:2]
        dx = self.backward_folded(dy.reshape((T * B,) + dy.shape[2:]), **options)
        return None if dx is None else dx.reshape((T, B) + dx.shape[1:])

    def _note_input(self, x, steps: int, output_shape: tuple) -> None:
        """While an EventCounter is attached: what the input carried (synapses record it)."""


class Conv2d(Synapse, TimeFolded):
    """2-D convolution on ``[T, B, C, H, W]`` (T and B folded); weight OIHW. ``reads``: see
    ``Synapse``."""

    input_ndim = 5

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, bias=True,
                 *, rng, dtype=np.float32, reads="spikes"):
        super().__init__()
        _need_rng(rng, "Conv2d")
        self._set_reads(reads)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = Parameter(uniform_init(rng, (out_channels, in_channels, kernel_size, kernel_size),
                                             fan_in, dtype))
        self.bias = Parameter(uniform_init(rng, (out_channels,), fan_in, dtype)) if bias else None
        self._cache = None

    def forward_folded(self, x):
        y, self._cache = F.conv2d_forward(x, self.weight.value,
                                          None if self.bias is None else self.bias.value,
                                          stride=self.stride, padding=self.padding, check=False)
        return y

    def backward_folded(self, dy, need_dx=True):
        """Returns dx (None with ``need_dx=False``: skips the input-gradient GEMM)."""
        dx, dw, db = F.conv2d_backward(dy, self._cache, need_dx=need_dx, check=False)
        _accumulate(self, dw, db)
        return dx



class Conv1x1(Synapse, TimeFolded):
    """1x1 convolution over tokens ``[T, B, C, N]`` (T and B folded); weight ``[out, in]``.
    ``reads``: see ``Synapse``."""

    input_ndim = 4

    def __init__(self, in_channels, out_channels, bias=True, *, rng, dtype=np.float32,
                 reads="spikes"):
        super().__init__()
        _need_rng(rng, "Conv1x1")
        self._set_reads(reads)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.weight = Parameter(uniform_init(rng, (out_channels, in_channels), in_channels, dtype))
        self.bias = Parameter(uniform_init(rng, (out_channels,), in_channels, dtype)) if bias else None
        self._cache = None

    def forward_folded(self, x):
        y, self._cache = F.conv1x1_forward(x, self.weight.value,
                                           None if self.bias is None else self.bias.value, check=False)
        return y

    def backward_folded(self, dy):
        dx, dw, db = F.conv1x1_backward(dy, self._cache, check=False)
        _accumulate(self, dw, db)
        return dx



def _accumulate(layer, dweight, dbias) -> None:
    layer.weight.grad += dweight
    if layer.bias is not None:
        layer.bias.grad += dbias


class Linear(Synapse, Module):
    """Fully connected layer on ``[B, in]``; weight ``[out, in]``. ``reads``: see ``Synapse``
    (the head of SNNergy reads pooled features: ``"analog"``)."""

    def __init__(self, in_features, out_features, bias=True, *, rng, dtype=np.float32,
                 reads="spikes"):
        super().__init__()
        _need_rng(rng, "Linear")
        self._set_reads(reads)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(uniform_init(rng, (out_features, in_features), in_features, dtype))
        self.bias = Parameter(uniform_init(rng, (out_features,), in_features, dtype)) if bias else None
        self._cache = None

    def forward(self, x):
        y, cache = F.linear_forward(x, self.weight.value, None if self.bias is None else self.bias.value,
                                    check=False)
        self._cache = cache
        if self.counter is not None:
            self._note_input(x, 1, y.shape)
        return y

    def backward(self, dy):
        dx, dw, db = F.linear_backward(dy, self._cache, check=False)
        _accumulate(self, dw, db)
        return dx


class BatchNorm(TimeFolded):
    """BatchNorm over ``[T, B, C, ...]``: per-channel statistics over every other axis
    (T and B folded, the positions flattened). Energy: free (it folds into the preceding
    convolution at inference)."""

    energy_role = FREE
    op_kind = "bn"
    # the fused BN + LIF of a Conv-BN-LIF unit runs here (refsnn.nn.unit); profiled apart
    op_methods = {"forward": "bn", "backward": "bn", "forward_with_lif": "bn+lif",
                  "backward_with_lif": "bn+lif"}

    def __init__(self, channels, *, momentum=BN_MOMENTUM, eps=BN_EPS, dtype=np.float32):
        super().__init__()
        self.channels = self.in_channels = int(channels)
        self.momentum, self.eps = float(momentum), float(eps)
        self.weight = Parameter(np.ones(channels, dtype=dtype))
        self.bias = Parameter(np.zeros(channels, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(channels, dtype=dtype))
        self.register_buffer("running_var", np.ones(channels, dtype=dtype))
        self._cache = None

    def forward_folded(self, x, repeats: int = 1):
        """x ``[T*B, C, ...]``; ``repeats`` > 1 when x (with T = 1) stands for an input
        repeated over that many time steps (see ``batchnorm_forward``)."""
        M, C = x.shape[:2]
        y, self._cache, mean, var = batchnorm_forward(
            x.reshape(M, C, -1), self.weight.value, self.bias.value, self.running_mean,
            self.running_var, training=self.training, momentum=self.momentum, eps=self.eps,
            repeats=repeats, check=False)
        if self.training:
            self.set_buffer("running_mean", mean)
            self.set_buffer("running_var", var)
        return y.reshape(x.shape)

    def backward_folded(self, dy):
        M, C = dy.shape[:2]
        dx, dw, db = batchnorm_backward(dy.reshape(M, C, -1), self._cache, check=False)
        self.weight.grad += dw
        self.bias.grad += db
        return dx.reshape(dy.shape)

    def forward_with_lif(self, h, lif: "LIF"):
        """``lif(self(h))`` as one op (``refsnn.functional.bnlif``) on h ``[T, B, C, ...]``:
        returns ``(spikes, cache)`` for ``backward_with_lif``; updates the running statistics,
        and leaves ``lif`` describing its last forward (readers of its membrane: the
        conformance margins; the same array, no copy)."""
        spikes, cache, mean, var = bn_lif_forward(
            h, self.weight.value, self.bias.value, self.running_mean, self.running_var,
            training=self.training, momentum=self.momentum, eps=self.eps, check=False,
            **lif.neuron)
        if self.training:
            self.set_buffer("running_mean", mean)
            self.set_buffer("running_var", var)
        lif._cache = LIFCache(cache.h.reshape(cache.shape[0], -1), cache.lif, cache.shape)
        return spikes, cache

    def backward_with_lif(self, dspikes, cache):
        """dL/dspikes -> dL/dh of ``forward_with_lif``; accumulates the weight and bias grads."""
        dh, dw, db = bn_lif_backward(dspikes, cache, check=False)
        self.weight.grad += dw
        self.bias.grad += db
        return dh


class LIF(Module):
    """Multi-step LIF neurons over ``[T, ...]`` (SPEC section 2). No parameters.

    Keyword arguments are those of ``refsnn.functional.lif_forward``. While an EventCounter is
    attached, the forward counts its spikes and neurons (elements of ``[T, ...]``):
    ``energy_counts()``, the firing rate of the energy report.
    """

    energy_role = NEURON
    op_kind = "lif"
    _fired: NeuronCounts | None = None

    def __init__(self, **neuron):
        super().__init__()
        self.neuron = dict(neuron)
        # validate the options now, not at the first forward
        lif_options(**self.neuron)
        self._cache = None

    def forward(self, x):
        spikes, self._cache = lif_forward(x, **self.neuron)
        if self.counter is not None:
            # packed spikes (``pack=``) count their set bits
            fired = spikes.count_nonzero() if isinstance(spikes, PackedSpikes) else np.count_nonzero(spikes)
            self._fired = NeuronCounts(int(fired), int(x.size))
        return spikes

    def backward(self, dspikes):
        return lif_backward(dspikes, self._cache, check=False)

    def energy_counts(self) -> NeuronCounts | None:
        """Spikes and neurons of the last forward with a counter attached."""
        return self._fired


class MaxPool2d(TimeFolded):
    """Max pooling on ``[T, B, C, H, W]`` (kernel 3, stride 2, padding 1 by default). Energy:
    free (comparisons are not counted, SPEC section 7)."""

    energy_role = FREE
    op_kind = "pool"

    input_ndim = 5

    def __init__(self, kernel_size=3, stride=2, padding=1):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._cache = None

    def forward_folded(self, x):
        y, self._cache = maxpool2d_forward(x, kernel_size=self.kernel_size, stride=self.stride,
                                           padding=self.padding, check=False)
        return y

    def backward_folded(self, dy):
        return maxpool2d_backward(dy, self._cache, check=False)

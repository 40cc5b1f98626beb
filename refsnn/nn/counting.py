"""Event counting and the energy declarations of modules (SPEC section 7).

Every module class declares what ``refsnn.energy`` counts for it in ``energy_role``:

    SYNAPSE     a layer whose arithmetic costs energy (convolutions, linear maps, attention
                cores): ``energy_counts()`` returns its last forward's ``SynapseCounts``
    NEURON      spiking neurons (LIF): ``energy_counts()`` returns ``NeuronCounts`` (a firing
                rate; SPEC section 7 does not count LIF updates)
    FREE        costs nothing by convention: BatchNorm (folds into the preceding convolution),
                max pooling (comparisons)
    CONTAINER   its work is that of its children (its own parameters, if any, scale maps that
                fold into the next weights, or are values its children read)

``refsnn.energy.report`` walks the modules and raises on a module that declares nothing.
A synapse also declares what it reads (``reads``): ``"spikes"`` (spike maps or sums of them;
the EventCounter finds the events, and a map it knows as analog is counted in MACs) or
``"analog"`` (data, learnable tokens, pooled features: always MACs).

An ``EventCounter`` attached to every module of a network (``attach(model, counter)``) lets a
layer learn how many spike events its input carries:

* a binary map (every value 0 or 1): its spikes;
* a sum of spike maps with unit coefficients (every value a non-negative integer, e.g. the
  residual stream ``embed + attn + mlp``): the sum of its values, i.e. the spikes of all its
  constituent maps;
* an array registered by the code that built it (``register``), e.g. a fusion output
  ``x + alpha * y`` whose constituents are the spikes of x plus those of y (the scale folds
  into the next layer's weights);
* anything else (images, spectrograms, pooled features, learnable tokens): analog, ``None``,
  and the layer is counted in multiply-accumulates.

Arrays are recognised by identity (the counter keeps a reference, so an id is never reused
while it is registered). Nothing is counted when no counter is attached.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["EventCounter", "attach", "detach", "register_sum", "register_added", "SYNAPSE",
           "NEURON", "FREE", "CONTAINER", "ENERGY_ROLES", "READS", "SynapseCounts",
           "NeuronCounts", "synapse_counts"]

SYNAPSE, NEURON, FREE, CONTAINER = "synapse", "neuron", "free", "container"
ENERGY_ROLES = (SYNAPSE, NEURON, FREE, CONTAINER)
READS = ("spikes", "analog")


class SynapseCounts(NamedTuple):
    """What a synapse's last forward executed, for the whole batch (SPEC section 7)."""
    kind: str                   # "mac" (analog input) or "ac" (spike events)
    macs: float                 # multiply-accumulates, charged at E_MAC
    acs: float                  # accumulates (events x fan-out), charged at E_AC
    ann_macs: float             # the ANN reference's MACs (the op once per sample, T = 1)
    input_events: int = 0       # spike events read (0 for an analog input)
    input_elements: int = 0     # elements those events are counted over (0: no firing rate)
    popcount_words: int = 0     # machine words of the bit-packed kernels, reported beside
    and_words: int = 0          # the energy (not in it)


class NeuronCounts(NamedTuple):
    """Spikes emitted and neurons updated (elements of ``[T, ...]``) in the last forward."""
    spikes: int
    neurons: int


def synapse_counts(macs: int, events: int | None, elements: int, steps: int,
                   analog_macs: int = 0) -> SynapseCounts:
    """A dense op of ``macs`` multiply-accumulates over an input of ``elements`` values and
    ``steps`` time steps: MACs when the input is analog (``events`` None), else ACs = events
    x fan-out (MACs per input element) plus ``analog_macs`` for analog parts of the input.
    The ANN reference runs the op once per sample: ``macs / steps``."""
    macs = float(macs)
    ann = macs / steps
    if events is None:
        return SynapseCounts("mac", macs, 0.0, ann)
    fanout = macs / elements
    return SynapseCounts("ac", float(analog_macs), events * fanout, ann, events, elements)


class EventCounter:
    def __init__(self):
        self._known: dict[int, tuple[np.ndarray, int | None]] = {}

    def register(self, x: np.ndarray, events: int | None) -> None:
        """Declare that ``x`` carries ``events`` spike events (None: analog)."""
        self._known[id(x)] = (x, None if events is None else int(events))

    def mark_analog(self, x: np.ndarray) -> None:
        self.register(x, None)

    def events(self, x: np.ndarray) -> int | None:
        """Spike events of ``x``: as registered (``x`` or the array it is a reshaped view of),
        else from its values (see the module docstring); None: analog."""
        for candidate in (x, x.base):
            hit = self._known.get(id(candidate))
            if hit is not None and hit[0] is candidate and candidate.size == x.size:
                return hit[1]
        if x.size == 0:
            return 0
        if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
            if ((x == 0) | (x == 1)).all():
                return int(np.count_nonzero(x))
            if (x >= 0).all() and (x == np.round(x)).all():
                return int(x.sum(dtype=np.float64))
        return None

    def clear(self) -> None:
        self._known.clear()


def register_sum(counter: EventCounter | None, total: np.ndarray, stream: np.ndarray,
                 spikes: np.ndarray) -> None:
    """``total = stream + spikes`` (a residual add) carries the events of both."""
    if counter is not None:
        before = counter.events(stream)
        counter.register(total, None if before is None else before + int(np.count_nonzero(spikes)))


def register_added(counter: EventCounter | None, y: np.ndarray, x: np.ndarray) -> None:
    """``y = x + alpha * Y`` (a fusion's output; ``y is x`` for the identity) carries the
    events of x plus the spikes of the added maps: the scale folds into the next layer's
    weights, and a spike is an element where y differs from x."""
    if counter is not None and y is not x:
        before = counter.events(x)
        counter.register(y, None if before is None else before + int(np.count_nonzero(y - x)))


def attach(model, counter: EventCounter | None) -> None:
    """Give every module of ``model`` the counter (None detaches)."""
    for _, module in model.named_modules():
        object.__setattr__(module, "counter", counter)


def detach(model) -> None:
    attach(model, None)

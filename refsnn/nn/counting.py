"""Event counting for energy accounting (SPEC section 7).

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

import numpy as np

__all__ = ["EventCounter", "attach", "detach"]


class EventCounter:
    def __init__(self):
        self._known: dict[int, tuple[np.ndarray, int | None]] = {}

    def register(self, x: np.ndarray, events: int | None) -> None:
        """Declare that ``x`` carries ``events`` spike events (None: analog)."""
        self._known[id(x)] = (x, None if events is None else int(events))

    def mark_analog(self, x: np.ndarray) -> None:
        self.register(x, None)

    def events(self, x: np.ndarray) -> int | None:
        hit = self._known.get(id(x))
        if hit is not None and hit[0] is x:
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


def attach(model, counter: EventCounter | None) -> None:
    """Give every module of ``model`` the counter (None detaches)."""
    for _, module in model.named_modules():
        object.__setattr__(module, "counter", counter)


def detach(model) -> None:
    attach(model, None)

"""Where the time of a training step goes, by op kind.

    with OpProfiler(model) as prof:
        ... forward, backward, optimizer ...
    prof.shares(total_seconds)    # {"conv": 0.41, "bn": 0.12, ...}

Every module's ``forward`` and ``backward`` is timed (exclusive of the modules it calls) and
charged to a kind: ``fusion`` for anything inside a fusion module (``fusion1``...), else the
kind its class declares in ``op_kind``: ``conv`` (Conv2d, Conv1x1, Linear), ``bn``, ``lif``,
``attention`` (the Q-K and SSA cores), ``pool``; time outside every module (data, loss, optimizer, glue) is ``other`` when a total is
given. The wrappers are instance attributes, removed on exit.
"""
from __future__ import annotations

import time
from collections import defaultdict

__all__ = ["OpProfiler", "KINDS"]

KINDS = ("conv", "bn", "lif", "attention", "fusion", "pool", "other")


def _kind(name: str, module):
    if name.split(".", 1)[0].startswith("fusion"):
        return "fusion"
    return module.op_kind    # declared by the layer class; None for containers (their own
                             # time is glue: "other")


class OpProfiler:
    def __init__(self, model):
        self.model = model
        self.seconds = defaultdict(float)
        self._stack = []            # [start, time spent in children]
        self._wrapped = []

    def _wrap(self, module, method, kind):
        inner = getattr(module, method)
        stack, seconds = self._stack, self.seconds

        def timed(*args, **kwargs):
            stack.append([time.perf_counter(), 0.0])
            try:
                return inner(*args, **kwargs)
            finally:
                start, children = stack.pop()
                elapsed = time.perf_counter() - start
                if kind is not None:
                    seconds[kind] += elapsed - children
                    if stack:
                        stack[-1][1] += elapsed
                elif stack:
                    stack[-1][1] += children     # a container: pass its children's time up

        object.__setattr__(module, method, timed)
        self._wrapped.append((module, method))

    def __enter__(self):
        for name, module in self.model.named_modules():
            kind = _kind(name, module) if name else None
            for method in ("forward", "backward"):
                if hasattr(module, method):
                    self._wrap(module, method, kind)
        return self

    def __exit__(self, *exc):
        for module, method in self._wrapped:
            try:
                object.__delattr__(module, method)
            except AttributeError:
                pass
        self._wrapped.clear()
        return False

    def shares(self, total: float | None = None) -> dict:
        """Fraction of ``total`` (default: the timed sum) per kind; ``other`` is the rest."""
        timed = sum(self.seconds.values())
        total = timed if total is None else total
        out = {k: self.seconds.get(k, 0.0) / total for k in KINDS if k != "other"}
        out["other"] = max(0.0, total - timed) / total
        return out

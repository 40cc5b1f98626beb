"""Where the time of a training step goes, by op kind.

    with OpProfiler(model) as prof:
        ... forward, backward, optimizer ...
    prof.shares(total_seconds)    # {"conv": 0.41, "bn": 0.12, ...}

Every module's ``forward`` and ``backward`` (the methods its class lists in ``op_methods``) is
timed, exclusive of the modules it calls, and charged to a kind: ``fusion`` for anything
inside a fusion module (``fusion1``...), else the kind the class declares for the method
(``op_methods``, by default its ``op_kind``): ``conv`` (Conv2d, Conv1x1, Linear), ``bn``,
``lif``, ``bn+lif`` (BatchNorm and LIF fused, run by the BatchNorm of a Conv-BN-LIF unit),
``attention`` (the Q-K and SSA cores), ``pool``; time outside every module (data, loss,
optimizer, glue) is ``other`` when a total is given. The wrappers are instance attributes,
removed on exit.
"""
from __future__ import annotations

import time
from collections import defaultdict

__all__ = ["OpProfiler", "KINDS"]

KINDS = ("conv", "bn", "lif", "bn+lif", "attention", "fusion", "pool", "other")


def _kind(name: str, module, method: str):
    if name.split(".", 1)[0].startswith("fusion"):
        return "fusion"
    # declared by the layer class; None for containers (their own time is glue: "other")
    return module.op_methods[method] or module.op_kind


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
            for method in module.op_methods:
                if hasattr(module, method):
                    self._wrap(module, method, _kind(name, module, method) if name else None)
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

"""Parameter and Module: thin holders of arrays and caches around the functional pairs.

A Module registers Parameters, buffers (non-learnable state such as BatchNorm running
statistics) and child Modules by attribute assignment. Names are dotted paths
(``audio.stage1.embed.proj1_conv.weight``). ``backward`` of every module *accumulates* into
``Parameter.grad``; call ``zero_grad()`` before each step.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..atomic import atomic_write

__all__ = ["Parameter", "Module", "ModuleList", "save_npz_atomic", "load_npz"]


class Parameter:
    """A learnable array ``value`` and its gradient ``grad`` (same shape and dtype)."""

    __slots__ = ("value", "grad")

    def __init__(self, value: np.ndarray):
        if not isinstance(value, np.ndarray):
            raise ValueError(f"Parameter: expected a numpy.ndarray, got {type(value).__name__}")
        self.value = value
        self.grad = np.zeros_like(value)

    @property
    def shape(self) -> tuple:
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.value.shape}, dtype={self.value.dtype})"


class Module:
    """Base class. Subclasses implement ``forward`` and ``backward`` over functional pairs."""

    counter = None      # an EventCounter while energy is being measured (refsnn.nn.counting)
    # What refsnn.energy counts for this module: "synapse", "neuron", "free" or "container"
    # (refsnn.nn.counting). Every module class declares one; energy.report refuses a module
    # that does not, rather than leaving it out of the count.
    energy_role: str | None = None
    op_kind: str | None = None      # "conv", "bn", "lif", "attention", "pool" (profiling)
    # the methods refsnn.profiling times, and the kind each is charged to (None: op_kind)
    op_methods: dict = {"forward": None, "backward": None}

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_children", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call Module.__init__() first")
        for registry in (self._params, self._children, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Non-learnable state saved in ``state_dict`` (e.g. running statistics)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def set_buffer(self, name: str, value: np.ndarray) -> None:
        if name not in self._buffers:
            raise KeyError(f"{type(self).__name__} has no buffer {name!r}")
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # -- traversal ------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator["Module"]:
        return iter(self._children.values())

    def parameters(self, prefix: str = "") -> "OrderedDict[str, Parameter]":
        """All learnable parameters, by dotted name, in registration order."""
        out: OrderedDict[str, Parameter] = OrderedDict()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._params.items():
                out[f"{mod_name}.{name}" if mod_name else name] = p
        return out

    def buffers(self, prefix: str = "") -> "OrderedDict[str, np.ndarray]":
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for mod_name, module in self.named_modules(prefix):
            for name, b in module._buffers.items():
                out[f"{mod_name}.{name}" if mod_name else name] = b
        return out

    def num_parameters(self) -> int:
        return int(sum(p.value.size for p in self.parameters().values()))

    # -- modes and gradients --------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters().values():
            p.grad[...] = 0

    def clear_cache(self) -> None:
        """Drop every forward cache (frees activation memory, e.g. after evaluation)."""
        for _, module in self.named_modules():
            if "_cache" in module.__dict__:
                object.__setattr__(module, "_cache", None)

    def astype(self, dtype) -> "Module":
        """Cast every parameter (and its grad) and float buffer in place; returns self."""
        dtype = np.dtype(dtype)
        for _, module in self.named_modules():
            for p in module._params.values():
                p.value = p.value.astype(dtype)
                p.grad = np.zeros_like(p.value)
            for name, b in list(module._buffers.items()):
                if np.issubdtype(b.dtype, np.floating):
                    module.set_buffer(name, b.astype(dtype))
        return self

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter value and buffer, by dotted name."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for name, p in self.parameters().items():
            out[name] = p.value.copy()
        for name, b in self.buffers().items():
            out[name] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, checking names and shapes first.

        Nothing is modified unless every key matches: a missing, extra or mis-shaped key raises
        ``ValueError`` listing all problems.
        """
        params = self.parameters()
        buffers = self.buffers()
        expected = {**{k: p.value for k, p in params.items()}, **buffers}
        problems = []
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing:
            problems.append(f"missing keys: {missing}")
        if extra and strict:
            problems.append(f"unexpected keys: {extra}")
        for k, ref in expected.items():
            if k in state:
                arr = np.asarray(state[k])
                if arr.shape != ref.shape:
                    problems.append(f"{k}: expected shape {ref.shape}, got {arr.shape}")
                elif not _castable(arr.dtype, ref.dtype):
                    # int -> float, bool, complex or text would load a silently wrong model
                    want = "floating" if ref.dtype.kind == "f" else str(ref.dtype)
                    problems.append(f"{k}: expected a {want} array, got dtype {arr.dtype} (a lossy cast is refused)")
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for k, p in params.items():
            p.value[...] = np.asarray(state[k], dtype=p.value.dtype)
        for mod_name, module in self.named_modules():
            for name, b in list(module._buffers.items()):
                key = f"{mod_name}.{name}" if mod_name else name
                module.set_buffer(name, np.array(state[key], dtype=b.dtype, copy=True))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to an ``.npz`` file atomically."""
        save_npz_atomic(path, self.state_dict())

    def load(self, path: str | os.PathLike, strict: bool = True) -> None:
        self.load_state_dict(load_npz(path), strict=strict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_parameters():,} parameters)"


def _castable(source: np.dtype, target: np.dtype) -> bool:
    """Whether ``load_state_dict`` may copy a ``source`` array into a ``target`` one: floats
    into floats (either precision; a checkpoint moves between float32 and float64 models),
    integers into integers without loss; nothing else."""
    if target.kind == "f":
        return source.kind == "f"
    return source.kind in "iu" and target.kind in "iu" and np.can_cast(source, target, casting="safe")


class ModuleList(Module):
    """An ordered list of modules named ``0``, ``1``, ... (as in ``blocks.0.attn``)."""

    energy_role = "container"

    def __init__(self, modules=()):
        super().__init__()
        self._items = []
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> None:
        if not isinstance(module, Module):
            raise ValueError(f"ModuleList: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._items)), module)
        self._items.append(module)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Module:
        return self._items[i]


def save_npz_atomic(path: str | os.PathLike, arrays: dict) -> None:
    """``np.savez`` to a temporary file in the same folder, then rename over ``path``.

    An interrupt leaves either the old file or the new one, never half a file.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: expected a file name ending in .npz, got {path!r}")
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_npz(path: str | os.PathLike) -> "OrderedDict[str, np.ndarray]":
    """Read every array of an ``.npz`` (no pickles). A missing or corrupt file is a ValueError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    import zipfile
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable .npz file (not a zip archive; truncated or corrupt?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return OrderedDict((k, data[k]) for k in data.files)
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, pickled object arrays ...
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None

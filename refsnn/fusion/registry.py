"""The fusion modes by name (config field ``fusion``): the one table from which the model
builds its fusion modules, ``Config`` takes the allowed values and the command lines their
help.

    register_fusion(name, build)    add a mode (``build`` a ``refsnn.fusion.base.FusionBuilder``)
    fusion_modes()                  the registered names, in registration order
    build_fusion(c, stage, ...)     the module of mode ``c.fusion`` after ``stage``

A mode is its own module (the fusion class and its ``build``) plus one line below, or one
``register_fusion`` call from the user's code before the config is made (docs/extending.md).
"""
from __future__ import annotations

from ..checks import check_choice
from ..nn.module import Module
from . import cmqka, concat, factorized, mbt, ssa_cross
from .base import FusionBuilder

__all__ = ["register_fusion", "unregister_fusion", "fusion_modes", "build_fusion"]

_BUILDERS: dict[str, FusionBuilder] = {}


def register_fusion(name: str, build: FusionBuilder) -> FusionBuilder:
    """Make ``build`` the builder of fusion mode ``name``; returns ``build``. A name already
    registered is an error (unregister it first)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"name: expected a non-empty fusion mode name without surrounding spaces, "
                         f"got {name!r}")
    if not callable(build):
        raise ValueError(f"build: expected a callable (c, stage, dim, heads, *, rng, dtype, previous) "
                         f"-> Module, got {type(build).__name__}")
    if name in _BUILDERS:
        raise ValueError(f"name: fusion mode {name!r} is already registered (by "
                         f"{_BUILDERS[name].__module__}.{_BUILDERS[name].__qualname__})")
    _BUILDERS[name] = build
    return build


def unregister_fusion(name: str) -> None:
    """Remove mode ``name`` (a test's toy mode, say)."""
    check_choice("name", name, fusion_modes())
    del _BUILDERS[name]


def fusion_modes() -> tuple[str, ...]:
    """The registered fusion modes, in registration order (the built-in ones first)."""
    return tuple(_BUILDERS)


def build_fusion(c, stage: int, dim: int, heads: int, *, rng, dtype, previous: Module | None = None
                 ) -> Module:
    """The fusion module of mode ``c.fusion`` placed after ``stage`` (1, 2, 3), of width ``dim``
    with ``heads`` heads. ``c``: a ``refsnn.models.Config`` (or an object with its fields);
    ``previous``: the module built for the stage before (None at stage 1)."""
    check_choice("c.fusion", c.fusion, fusion_modes())
    check_choice("stage", stage, (1, 2, 3))
    module = _BUILDERS[c.fusion](c, stage, dim, heads, rng=rng, dtype=dtype, previous=previous)
    if not isinstance(module, Module):
        raise ValueError(f"fusion mode {c.fusion!r}: its builder returned a {type(module).__name__}, "
                         f"expected a refsnn.nn.Module")
    return module


# The built-in modes (SPEC sections 5 and 8), one line each.
register_fusion("cmqka", cmqka.build)
register_fusion("concat", concat.build)
register_fusion("ssa-cross", ssa_cross.build)
register_fusion("mbt", mbt.build)
register_fusion("factorized", factorized.build)

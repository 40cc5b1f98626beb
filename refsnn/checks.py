"""Argument checks shared by every op: clear ``ValueError`` messages naming the argument.

Nothing is silently broadcast or cast: a shape mismatch, a non-finite value or a non-binary
spike map is an error that says which argument, what was expected and what arrived.
"""
from __future__ import annotations

import numpy as np

from .kernels.finite import count_nonfinite

__all__ = [
    "NonFiniteError", "check_array", "check_float_array", "check_shape", "check_finite", "check_binary",
    "check_same_shape", "check_positive_int", "check_choice", "FLOAT_DTYPES",
]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NonFiniteError(ValueError):
    """An array holds NaN or inf (bad input, or a computation that overflowed)."""


def check_array(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None) -> np.ndarray:
    """Require an ndarray of a given rank; return it unchanged."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {x.ndim} (shape {x.shape})")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got {x.ndim} (shape {x.shape})")
    return x


def check_float_array(x, name: str, *, ndim: int | None = None, min_ndim: int | None = None,
                      finite: bool = True) -> np.ndarray:
    """Require a float32 / float64 ndarray (optionally of a given rank) with finite values."""
    check_array(x, name, ndim=ndim, min_ndim=min_ndim)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {x.dtype}")
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: np.ndarray, name: str) -> None:
    if x.size and count_nonfinite(x):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise NonFiniteError(f"{name}: contains NaN or inf (first at index {tuple(int(i) for i in bad)})")


def check_shape(x: np.ndarray, name: str, expected: tuple) -> None:
    """``expected`` may hold None for a free axis."""
    ok = x.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name}: expected shape {shown}, got {x.shape}")


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name}: expected the shape of {a_name} {a.shape}, got {b.shape}")


def check_binary(x, name: str) -> np.ndarray:
    """Require an array of 0s and 1s (any real or integer dtype, or bool). Never casts."""
    check_array(x, name)
    if x.dtype == np.bool_:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{name}: expected a binary spike array of a real or integer dtype, got {x.dtype}")
    if x.size:
        bad = (x != 0) & (x != 1)       # NaN compares unequal to both, so it is caught here
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name}: expected binary spikes (0 or 1), found {x[idx]!r} at index {idx}")
    return x


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices):
    """Require ``value`` to be one of ``choices`` (the option list its owner defines); return it.

    The one "expected one of" error of refsnn: it names the argument, lists the choices in
    their order and shows what arrived. ``True`` is not the choice ``1`` (nor the reverse), and
    a value that cannot be compared to a choice (an array) is refused.
    """
    try:
        known = any(isinstance(value, bool) == isinstance(c, bool) and bool(value == c)
                    for c in choices)
    except (TypeError, ValueError):
        known = False
    if not known:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value

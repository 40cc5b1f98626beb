"""Checks of a data set's folder layout: errors that name the path and show the expected layout."""
from __future__ import annotations

import os

__all__ = ["LayoutError", "require_dir", "require_file"]


class LayoutError(ValueError):
    """The data set root does not have the expected files or folders."""


def require_dir(path: str, what: str, layout: str) -> str:
    if not os.path.isdir(path):
        raise LayoutError(f"{what} not found: {path}\nexpected layout:\n{layout}")
    return path


def require_file(path: str, what: str, layout: str) -> str:
    if not os.path.isfile(path):
        raise LayoutError(f"{what} not found: {path}\nexpected layout:\n{layout}")
    return path

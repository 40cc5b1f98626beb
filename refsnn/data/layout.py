"""Checks of a data set's folder layout: errors that name the path and show the expected layout."""
from __future__ import annotations

import os

__all__ = ["LayoutError", "require_dir", "require_file", "text_rows"]


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


def text_rows(path: str):
    """``(line number, stripped text)`` of the non-blank lines of a list file (a BOM is ignored)."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if text:
                yield lineno, text

"""Checks of a data set's folder layout: errors that name the path and show the expected layout."""
from __future__ import annotations

import codecs
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
    """``(line number, stripped text)`` of the non-blank lines of a list file (a BOM is ignored).
    A line that is not UTF-8 is an error naming the file, the line and the byte."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                             f"{exc.start + 1}); save the file as UTF-8") from None
        if text:
            yield lineno, text

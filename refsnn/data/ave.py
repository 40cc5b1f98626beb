"""AVE (Tian et al. 2018, Audio-Visual Event localisation), SPEC section 9.

Clip label = Category of its row; the whole 10 s clip is used [choice]; frames at 1 fps.
Classes: the categories of ``Annotations.txt``, sorted alphabetically. Splits: the official
``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``. A video id listed more than once (AVE has
4143 rows for 4097 ids) keeps its first row, reading train, then val, then test, each file top
to bottom; the other rows are dropped and reported.
"""
from __future__ import annotations

import os

from .base import ClipSource, Manifest
from .layout import LayoutError, require_dir, require_file, text_rows

__all__ = ["LAYOUT", "DEFAULTS", "VAL_FROM", "scan", "read_rows"]

LAYOUT = """\
<root>/
  AVE/<VideoID>.mp4          the 10 s videos (h264 + aac)
  Annotations.txt            header line, then rows Category&VideoID&Quality&StartTime&EndTime
  trainSet.txt               rows in the same format, no header
  valSet.txt
  testSet.txt"""
DEFAULTS = dict(num_frames=10, fps=1.0)
VAL_FROM = "file"
_SPLIT_FILES = (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt"))
_FIELDS = "Category&VideoID&Quality&StartTime&EndTime"


def read_rows(path: str, *, header: bool) -> list[tuple[int, str, str]]:
    """Rows of an AVE annotation file -> ``[(line number, category, video id)]``.

    ``header``: the first line is skipped when it starts with ``Category&``. A row without 5
    ``&``-separated fields, with an empty category or id, or with non-numeric times is an error
    naming the file and line.
    """
    rows = []
    for lineno, text in text_rows(path):
        if header and lineno == 1 and text.startswith("Category&"):
            continue
        fields = [p.strip() for p in text.split("&")]
        problem = None
        if len(fields) != 5:
            problem = f"expected 5 fields {_FIELDS}, got {len(fields)}"
        elif not fields[0] or not fields[1]:
            problem = "empty Category or VideoID"
        else:
            try:
                float(fields[3]), float(fields[4])
            except ValueError:
                problem = f"StartTime and EndTime must be numbers, got {fields[3]!r} and {fields[4]!r}"
        if problem:
            raise ValueError(f"{path}:{lineno}: malformed row {text!r}: {problem}")
        rows.append((lineno, fields[0], fields[1]))
    return rows


def scan(root: str, params: dict) -> Manifest:
    require_dir(root, "AVE root", LAYOUT)
    video_dir = require_dir(os.path.join(root, "AVE"), "AVE video folder", LAYOUT)
    annotations = require_file(os.path.join(root, "Annotations.txt"), "AVE Annotations.txt", LAYOUT)
    class_names = sorted({cat for _, cat, _ in read_rows(annotations, header=True)})
    if not class_names:
        raise LayoutError(f"{annotations}: no annotation rows (expected a header line and then rows {_FIELDS})")
    index = {c: i for i, c in enumerate(class_names)}
    clips, notes, kept_at = [], [], {}
    for split, filename in _SPLIT_FILES:
        path = require_file(os.path.join(root, filename), f"AVE split file {filename}", LAYOUT)
        rows = read_rows(path, header=False)
        if not rows:
            raise ValueError(f"{path}: empty split file (no rows); the {split} split would be empty")
        for lineno, category, video_id in rows:
            if category not in index:
                raise ValueError(f"{path}:{lineno}: unknown class name {category!r} "
                                 f"(not a Category of Annotations.txt; known: {class_names})")
            where = f"{filename}:{lineno}"
            if video_id in kept_at:
                notes.append((video_id, f"repeated video id: row {where} dropped, kept {kept_at[video_id]}"))
                continue
            kept_at[video_id] = where
            mp4 = os.path.join(video_dir, f"{video_id}.mp4")
            clips.append(ClipSource(video_id, split, index[category], mp4, "video", mp4, "video"))
    return Manifest("ave", class_names, clips, notes)

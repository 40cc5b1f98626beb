"""CREMA-D (Cao et al. 2014), SPEC section 9.

Audio from ``AudioWAV/<clip>.wav``; frames from ``VideoFlash/<clip>.flv`` (at ``fps``) or, when
present, a folder ``VideoFlash/<clip>/`` of pre-extracted frames (all its images, in name order).
Labels NEU HAP SAD FEA DIS ANG -> 0..5. Splits ``train.csv`` / ``test.csv`` with rows
``clip,EMO`` (an optional first line ``clip,...`` is a header); validation is a seeded 10% of
train. A clip listed twice keeps its first row (train before test); the others are reported.
"""
from __future__ import annotations

import os

from .base import ClipSource, Manifest
from .layout import LayoutError, require_dir, require_file, text_rows

__all__ = ["LAYOUT", "DEFAULTS", "VAL_FROM", "CLASS_NAMES", "scan", "read_split"]

LAYOUT = """\
<root>/
  AudioWAV/<clip>.wav        e.g. 1001_DFA_ANG_XX.wav
  VideoFlash/<clip>.flv      or VideoFlash/<clip>/ holding pre-extracted frames (.jpg/.png)
  train.csv                  rows clip,EMO (EMO one of NEU HAP SAD FEA DIS ANG)
  test.csv"""
CLASS_NAMES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
DEFAULTS = dict(num_frames=4, fps=2.0)
VAL_FROM = "train"


def read_split(path: str) -> list[tuple[int, str, str]]:
    """Rows ``clip,EMO`` -> ``[(line number, clip, EMO)]``; malformed rows name file and line."""
    rows = []
    for lineno, text in text_rows(path):
        fields = [p.strip() for p in text.split(",")]
        if lineno == 1 and fields[0].lower() == "clip":
            continue                                       # header
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"{path}:{lineno}: malformed row {text!r}: expected 'clip,EMO' "
                             f"like '1001_DFA_ANG_XX,ANG'")
        clip, emo = fields
        parts = clip.split("_")
        if len(parts) != 4 or not parts[0].isdigit() or os.sep in clip or "/" in clip:
            raise ValueError(f"{path}:{lineno}: malformed clip name {clip!r}: expected "
                             f"<actor>_<sentence>_<emotion>_<level> like 1001_DFA_ANG_XX")
        if emo not in CLASS_NAMES:
            raise ValueError(f"{path}:{lineno}: unknown class name {emo!r} (known: {CLASS_NAMES})")
        if parts[2] != emo:
            raise ValueError(f"{path}:{lineno}: label {emo} disagrees with the emotion {parts[2]!r} "
                             f"in the clip name {clip}")
        rows.append((lineno, clip, emo))
    return rows


def scan(root: str, params: dict) -> Manifest:
    require_dir(root, "CREMA-D root", LAYOUT)
    audio_dir = require_dir(os.path.join(root, "AudioWAV"), "CREMA-D AudioWAV folder", LAYOUT)
    video_dir = require_dir(os.path.join(root, "VideoFlash"), "CREMA-D VideoFlash folder", LAYOUT)
    clips, notes, kept_at = [], [], {}
    for split, filename in (("train", "train.csv"), ("test", "test.csv")):
        path = require_file(os.path.join(root, filename), f"CREMA-D split file {filename}", LAYOUT)
        rows = read_split(path)
        if not rows:
            raise ValueError(f"{path}: empty split file (no rows); the {split} split would be empty")
        for lineno, clip, emo in rows:
            where = f"{filename}:{lineno}"
            if clip in kept_at:
                notes.append((clip, f"repeated clip: row {where} dropped, kept {kept_at[clip]}"))
                continue
            kept_at[clip] = where
            frames_dir = os.path.join(video_dir, clip)
            if os.path.isdir(frames_dir):
                visual, kind = frames_dir, "frames_dir"
            else:
                visual, kind = os.path.join(video_dir, f"{clip}.flv"), "video"
            clips.append(ClipSource(clip, split, CLASS_NAMES.index(emo),
                                    os.path.join(audio_dir, f"{clip}.wav"), "file", visual, kind))
    if not clips:
        raise LayoutError(f"{root}: no clips listed in train.csv / test.csv\nexpected layout:\n{LAYOUT}")
    return Manifest("cremad", list(CLASS_NAMES), clips, notes)

"""What a prepared cache records so that damage and staleness are noticed (issue 15).

- The stacked arrays (``audio.npy``, ``frames.npy``): their size and SHA-256 in ``index.json``.
  Loading compares the sizes (cheap) and scans the audio for NaN or inf; ``prepare`` compares the
  checksums and rebuilds what does not match.
- The sources of the clips ``prepare`` skipped: each file's size and modification time, so that a
  clip fixed at the source after it was skipped is noticed by ``train`` (which then names the
  clip and the command that picks it up) and decoded by the next ``prepare``.
- The sources of the clips it decoded, fingerprinted before decoding (in the clip file, as
  ``sources``, and per row in ``index.json``): a source replaced since (another size or
  modification time) makes the entry stale; ``prepare`` decodes it again. A source that is gone
  is no change for a decoded clip (the cache keeps what it decoded; the data set may have moved).
- A per-clip file (``clips/<id>.npz``) that is not a readable clip of the cache is deleted and
  decoded again by ``prepare``.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

__all__ = ["CacheDamaged", "file_record", "array_file_ok", "source_fingerprint", "changed_sources",
           "replaced_sources", "read_json", "clip_file_ok", "clip_file_sources", "first_non_finite_row"]


class CacheDamaged(ValueError):
    """A file of a prepared cache is truncated, edited or otherwise unusable."""


def file_record(path: str) -> dict:
    """Size and SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def array_file_ok(path: str, record: dict | None, *, checksum: bool) -> bool:
    """Whether ``path`` exists with the recorded size (and, with ``checksum``, content)."""
    if record is None or not os.path.isfile(path) or os.path.getsize(path) != record.get("bytes"):
        return False
    return not checksum or file_record(path)["sha256"] == record.get("sha256")


def read_json(path: str, what: str):
    """A JSON file of the cache; a truncated or edited one is CacheDamaged naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheDamaged(f"{path}: the cache's {what} is damaged ({type(exc).__name__}: {exc})") from None


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None, None]
    return [path, st.st_size, st.st_mtime_ns]


def source_fingerprint(src) -> list:
    """``[[path, size, mtime_ns], ...]`` of a clip's source files (None for a missing one)."""
    paths = [os.path.abspath(src.audio_path)]
    if os.path.abspath(src.visual_path) not in paths:
        paths.append(os.path.abspath(src.visual_path))
    return [_stat(p) for p in paths]


def changed_sources(recorded: list) -> list[str]:
    """The paths of a recorded fingerprint whose file changed (or appeared, or went) since."""
    return [path for path, size, mtime in recorded if _stat(path)[1:] != [size, mtime]]


def replaced_sources(recorded: list) -> list[str]:
    """The paths of a decoded clip's recorded fingerprint whose file is there with another size or
    modification time (a file that is gone is no change: the cache keeps the clip)."""
    out = []
    for path, size, mtime in recorded:
        now = _stat(path)[1:]
        if now[0] is not None and now != [size, mtime]:
            out.append(path)
    return out


def clip_file_sources(path: str) -> list:
    """The source fingerprint stored in a clip file (``[]`` for a file written before they were
    recorded, or one that cannot be read: its content is checked elsewhere)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["sources"])) if "sources" in z.files else []
    except Exception:                        # BadZipFile, KeyError, ValueError, ...
        return []


def clip_file_ok(path: str, size: int, frames: int) -> bool:
    """Whether ``clips/<id>.npz`` holds a usable clip: audio ``[1,S,S]`` float32 and finite,
    frames ``[F,3,S,S]`` uint8."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            audio, fr = z.get("audio"), z.get("frames")
    except Exception:                        # BadZipFile, a truncated member, ...
        return False
    return (audio is not None and fr is not None and audio.shape == (1, size, size) and audio.dtype == np.float32
            and fr.shape == (frames, 3, size, size) and fr.dtype == np.uint8 and bool(np.isfinite(audio).all()))


def first_non_finite_row(audio: np.ndarray, rows: np.ndarray, chunk: int = 256) -> int | None:
    """The first of ``rows`` of ``audio`` ``[N, ...]`` holding NaN or inf (read in chunks), or None."""
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        bad = ~np.isfinite(audio[part]).reshape(len(part), -1).all(axis=1)
        if bad.any():
            return int(part[int(np.argmax(bad))])
    return None

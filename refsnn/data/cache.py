"""The prepared cache of a real data set: its key, its layout and loading it.

A cache lives in ``<cache root>/<data set>/<key>/`` where ``key`` names the image size and frame
count and ends in a hash of every preprocessing parameter (``params.json`` beside it holds them),
so a cache built with other parameters is never reused: asking for one that does not exist while
others do is an error that lists how they differ.

```
<cache root>/<name>/<key>/params.json      preprocessing parameters (hashed into the key)
                          clips/<id>.npz   one per decoded clip: audio [1,S,S] float32, frames [F,3,S,S] uint8
                          audio.npy        [N,1,S,S] float32   every prepared clip, stacked at the
                          frames.npy       [N,F,3,S,S] uint8   end of prepare
                          index.json       class names and, per row, clip id, split, label; the skipped
                                           clips with their reasons (written last: marks completeness)
                          report.json      the report of the last prepare that changed the cache
```
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..atomic import atomic_write, atomic_write_text, temporary_name
from . import audio as _audio
from .base import Dataset, check_split, prepared_dataset, validation_split
from .integrity import CacheDamaged, changed_sources, first_non_finite_row, read_json, replaced_sources
from .resize import RESIZE_METHOD

__all__ = [
    "FORMAT_VERSION", "COMMON_DEFAULTS", "default_cache_root", "cache_params",
    "cache_dir", "load_cached", "prepare_command", "temporary_name", "atomic_write", "atomic_write_text",
    "atomic_save_npz",
]

FORMAT_VERSION = 1
COMMON_DEFAULTS = dict(min_seconds=0.25, silence_threshold=1e-4)


def default_cache_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "refsnn")


def cache_params(name: str, image_size: int, **options) -> dict:
    """Every parameter that changes what prepare writes, with the data set's defaults filled in."""
    module = prepared_dataset(name)
    known = {**COMMON_DEFAULTS, **module.DEFAULTS}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; known: {sorted(known)}")
    opts = {**known, **options}
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size: expected an integer >= 8, got {image_size!r}")
    nf = opts["num_frames"]
    if isinstance(nf, bool) or not isinstance(nf, (int, np.integer)) or nf < 1:
        raise ValueError(f"num_frames: expected a positive integer, got {nf!r}")
    for key in ("fps", "min_seconds", "silence_threshold"):
        if key in opts:
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or (key != "fps" and v == 0)):
                raise ValueError(f"{key}: expected a {'positive' if key == 'fps' else 'non-negative'} number, got {v!r}")
            opts[key] = float(v)
    return {
        "format": FORMAT_VERSION, "dataset": name, "image_size": int(image_size), "num_frames": int(nf),
        "sample_rate": _audio.SAMPLE_RATE, "n_fft": _audio.N_FFT, "hop": _audio.HOP,
        "log_eps": _audio.LOG_EPS, "resize": RESIZE_METHOD,
        **{k: v for k, v in opts.items() if k != "num_frames"},
    }


def cache_dir(cache_root: str | os.PathLike | None, name: str, params: dict) -> str:
    blob = json.dumps(params, sort_keys=True).encode()
    key = f"s{params['image_size']}-f{params['num_frames']}-{hashlib.sha256(blob).hexdigest()[:12]}"
    return os.path.join(os.fspath(cache_root or default_cache_root()), name, key)


def atomic_save_npz(path: str, arrays: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def prepare_command(name: str, root, cache, params: dict) -> str:
    """The command line that builds the cache ``params`` describe."""
    module = prepared_dataset(name)
    parts = ["python -m refsnn.data.prepare", f"--data {name}", f"--root {root or '<path to the data set>'}"]
    if cache is not None:
        parts.append(f"--cache {cache}")
    parts.append(f"--image-size {params['image_size']}")
    defaults = {**COMMON_DEFAULTS, **module.DEFAULTS}
    for key in sorted(defaults):
        if params.get(key, defaults[key]) != defaults[key]:
            parts.append(f"--{key.replace('_', '-')} {params[key]:g}")
    return " ".join(parts)


def _read_json(path: str) -> dict:
    return read_json(path, os.path.basename(path))


def _differences(found: dict, wanted: dict) -> list[str]:
    keys = sorted(set(found) | set(wanted))
    return [f"{k}: cache has {found.get(k)!r}, asked {wanted.get(k)!r}" for k in keys if found.get(k) != wanted.get(k)]


def check_params_file(directory: str, params: dict) -> None:
    """The cache in ``directory`` must have been made with exactly ``params``."""
    found = _read_json(os.path.join(directory, "params.json"))
    diff = _differences(found, params)
    if diff:
        raise ValueError(f"cache {directory} was made with other parameters ({'; '.join(diff)}); "
                         f"delete it or use another --cache")


def _missing_cache_error(name, root, cache, params, directory) -> ValueError:
    module = prepared_dataset(name)
    command = prepare_command(name, root, cache, params)
    parent = os.path.dirname(directory)
    others = []
    if os.path.isdir(parent):
        for key in sorted(os.listdir(parent)):
            p = os.path.join(parent, key, "params.json")
            if os.path.isfile(p):
                others.append((key, _differences(_read_json(p), params)))
    if others:
        listing = "\n".join(f"  {key}: {'; '.join(diff)}" for key, diff in others)
        return ValueError(f"{name}: no cache prepared with these parameters in {parent}; the caches there "
                          f"were made with other parameters and are not reused:\n{listing}\n"
                          f"prepare one with:\n  {command}")
    return ValueError(f"{name}: no prepared cache at {directory}.\nPrepare it from the data set files with:\n"
                      f"  {command}\nexpected layout of --root:\n{module.LAYOUT}")


def load_cached(name: str, split: str, *, root=None, cache=None, image_size: int = 64, seed: int = 0,
                **options) -> Dataset:
    """One split of a prepared cache (arrays memory-mapped). Errors say how to prepare it; a
    damaged or stale cache (``refsnn.data.integrity``) is a CacheDamaged error naming the file
    and the command that repairs it."""
    check_split(split)
    params = cache_params(name, image_size, **options)
    directory = cache_dir(cache, name, params)
    command = prepare_command(name, root, cache, params)
    if not os.path.isfile(os.path.join(directory, "params.json")):
        raise _missing_cache_error(name, root, cache, params, directory)
    try:
        check_params_file(directory, params)
        index_path = os.path.join(directory, "index.json")
        if not os.path.isfile(index_path):
            raise ValueError(f"{name}: the cache {directory} is incomplete (prepare was interrupted); run again "
                             f"(it resumes):\n  {command}")
        index = read_json(index_path, "index")
        audio, frames = _open_arrays(directory, index, params)
        _check_sources(index)
        rows = _split_rows(name, split, directory, index, seed)
        row = first_non_finite_row(audio, rows)
        if row is not None:
            raise CacheDamaged(f"{os.path.join(directory, 'audio.npy')}: row {row} (clip "
                               f"{index['clip_ids'][row]}) holds NaN or inf")
    except CacheDamaged as exc:
        if root is None:                          # the data set folder prepare recorded, so the command runs
            command = prepare_command(name, _recorded_root(directory), cache, params)
        raise CacheDamaged(f"{name}: {exc}\nrepair it with (prepare decodes what is damaged or stale again):\n"
                           f"  {command}") from None
    labels = np.asarray(index["labels"], dtype=np.int64)
    return Dataset(name, split, index["class_names"], audio, frames, labels, index["clip_ids"], rows=rows)


def _recorded_root(directory: str) -> str | None:
    """The data set folder the cache was prepared from (index.json, else report.json), or None."""
    for file in ("index.json", "report.json"):
        try:
            with open(os.path.join(directory, file), encoding="utf-8") as f:
                root = json.load(f).get("root")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(root, str) and root:
            return root
    return None


def _open_arrays(directory: str, index: dict, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """audio.npy and frames.npy memory-mapped, after their sizes are compared with index.json's."""
    recorded = index.get("arrays") or {}
    out = []
    for fname in ("audio.npy", "frames.npy"):
        path = os.path.join(directory, fname)
        rec = recorded.get(fname)
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if rec is not None and size != rec.get("bytes"):
            raise CacheDamaged(f"{path}: {'missing' if size is None else f'{size} bytes'}, prepare wrote "
                               f"{rec.get('bytes')} (truncated or replaced)")
        try:
            out.append(np.load(path, mmap_mode="r", allow_pickle=False))
        except (ValueError, OSError, EOFError) as exc:
            raise CacheDamaged(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    audio, frames = out
    n = len(index["clip_ids"])
    s, f = params["image_size"], params["num_frames"]
    if audio.shape != (n, 1, s, s) or frames.shape != (n, f, 3, s, s) or len(index["labels"]) != n:
        raise CacheDamaged(f"{directory}: inconsistent (arrays {audio.shape}, {frames.shape} for {n} clips)")
    return audio, frames


def _check_sources(index: dict) -> None:
    """A clip skipped by prepare whose source changed since (fixed?), or a decoded clip whose
    source was replaced since (``integrity.replaced_sources``), makes the cache stale."""
    if not os.path.isdir(index.get("root") or ""):
        return                                    # the data set is not here: nothing to compare with
    rows = index.get("sources")
    for clip_id, recorded in zip(index["clip_ids"], rows if isinstance(rows, list) else ()):
        replaced = replaced_sources(recorded or [])
        if replaced:
            raise CacheDamaged(f"clip {clip_id}: its source {replaced[0]} was replaced since prepare decoded it; "
                               f"the cache is stale")
    for entry in index.get("skipped", []):
        changed = changed_sources(entry.get("source") or [])
        if changed:
            raise CacheDamaged(f"clip {entry['clip_id']} was skipped by prepare ({entry.get('reason')}) but its "
                               f"source {changed[0]} has changed since; the cache is stale")


def _split_rows(name: str, split: str, directory: str, index: dict, seed: int) -> np.ndarray:
    splits = np.asarray(index["splits"])
    if split in ("train", "val") and prepared_dataset(name).VAL_FROM == "train":
        train_rows = np.nonzero(splits == "train")[0]
        keep, held_out = validation_split(len(train_rows), seed)
        rows = train_rows[keep if split == "train" else held_out]
    else:
        rows = np.nonzero(splits == split)[0]
    if rows.size == 0:
        skipped = [s_ for s_ in index.get("skipped", []) if s_.get("split") == split]
        raise ValueError(f"{name}: the {split} split is empty in {directory} ({len(skipped)} of its clips were "
                         f"skipped during prepare; see report.json there)")
    return rows

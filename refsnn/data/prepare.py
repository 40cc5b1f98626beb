"""Decode a real data set once into the cache that training reads (SPEC section 9).

    python -m refsnn.data.prepare --data {ave,cremad,urbansound8k-av} --root PATH
        [--cache DIR] [--image-size N] [--num-frames F] [--fps R] [--min-seconds S]
        [--silence-threshold A] [--strict] [--workers W] [--no-progress]

- Resumable: a clip whose file is already in the cache is not decoded again; each clip is
  written through a temporary file and a rename, so an interrupt leaves no half file.
- A clip that cannot be decoded (missing, corrupt or truncated file, no audio track, silent or
  shorter than ``--min-seconds``) is skipped and named with the reason in the final report;
  ``--strict`` stops at the first one instead. Layout problems (missing root or split file, a
  malformed row, an unknown class, an empty split) are always errors.
- ``--cache`` defaults to ``~/.cache/refsnn``; the cache of one parameter set lives in its own
  folder (``refsnn.data.cache``), so other parameters never reuse it.
- ``mpiexec -n K python -m refsnn.data.prepare ...`` decodes on K ranks (``refsnn.distributed``):
  rank 0 lists the clips still to decode, rank r decodes every K-th of them from position r
  (disjoint shares, so no two ranks write one file), and rank 0 alone writes ``params.json``,
  the stacked arrays, ``index.json`` and ``report.json``, after every rank has finished: the
  cache is the one a single process makes. Under ``--strict`` a rank that meets a bad clip tells
  the others at once; every rank stops after its clip in progress with that rank's message.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from .audio import read_audio, spectrogram_from_waveform
from .base import ClipSource, MediaError, PreparedDataset, dataset_names, prepared_dataset
from .cache import (COMMON_DEFAULTS, atomic_save_npz, atomic_write_text,
                    cache_dir, cache_params, check_params_file, temporary_name)
from .integrity import (CacheDamaged, array_file_ok, clip_file_ok, clip_file_sources, file_record, read_json,
                        replaced_sources, source_fingerprint)
from .video import decode_audio_track, decode_frames, frames_to_input, read_image, read_image_folder

__all__ = ["PrepareReport", "PrepareError", "CacheWriteError", "prepare", "decode_clip", "main"]


class PrepareError(ValueError):
    """``--strict``: a clip could not be decoded."""


class CacheWriteError(ValueError):
    """``prepare`` has to write in the cache and cannot (a read-only folder, ``--cache`` naming a
    file, a full disk). A complete cache in which nothing changed is only read."""


def _writing(path: str, write, *args) -> None:
    """``write(*args)``, whose ``OSError`` becomes a ``CacheWriteError`` naming ``path``."""
    try:
        write(*args)
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: str, exc: OSError) -> CacheWriteError:
    return CacheWriteError(f"cannot write in the cache: {path}: {exc.strerror or exc}. --cache must name a "
                           f"writable folder (a complete cache can be read from a read-only one: training, "
                           f"evaluation and prepare only read it)")


@dataclass
class PrepareReport:
    """What one ``prepare`` run did. ``skipped``: ``[(clip_id, reason)]`` of clips left out;
    ``notes``: ``[(clip_id, text)]`` of rows dropped while reading the lists (repeated ids)."""
    name: str
    cache_dir: str
    listed: int
    decoded: int
    reused: int
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    split_counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    root: str = ""                               # the data set folder (absolute)

    @property
    def prepared(self) -> int:
        return self.decoded + self.reused

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"prepare {self.name}: {self.listed} clips listed, {self.decoded} decoded now, "
                 f"{self.reused} already in the cache, {len(self.skipped)} skipped ({self.seconds:.1f} s)",
                 f"cache: {self.cache_dir}",
                 "clips per split: " + ", ".join(f"{k} {v}" for k, v in self.split_counts.items())]
        if self.skipped:
            lines.append(f"skipped clips ({len(self.skipped)}):")
            lines += [f"  {clip}: {reason}" for clip, reason in self.skipped]
        if self.notes:
            lines.append(f"dropped rows ({len(self.notes)}):")
            lines += [f"  {clip}: {text}" for clip, text in self.notes]
        return "\n".join(lines)


def decode_clip(src: ClipSource, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """One clip -> (audio ``[1,S,S]`` float32 log-spectrogram, frames ``[F,3,S,S]`` uint8).

    Raises ``MediaError`` with the reason when the clip cannot be used.
    """
    size, count = params["image_size"], params["num_frames"]
    duration = None
    if src.visual_kind == "video":
        raw, duration = decode_frames(src.visual_path, params["fps"])
    elif src.visual_kind == "frames_dir":
        raw = read_image_folder(src.visual_path)
    elif src.visual_kind == "image":
        raw = read_image(src.visual_path)[None]
    else:
        raise ValueError(f"visual_kind: unknown {src.visual_kind!r}")
    if src.audio_kind == "video":
        same_file = src.audio_path == src.visual_path
        wave, rate = decode_audio_track(src.audio_path, duration if same_file else None)
    elif src.audio_kind == "file":
        wave, rate = read_audio(src.audio_path)
    else:
        raise ValueError(f"audio_kind: unknown {src.audio_kind!r}")
    audio = spectrogram_from_waveform(wave, rate, size, min_seconds=params["min_seconds"],
                                      silence_threshold=params["silence_threshold"])
    return audio, frames_to_input(raw, size, count)


def _clip_path(clips_dir: str, clip_id: str) -> str:
    parts = clip_id.split("/")
    if not clip_id or any(p in ("", ".", "..") for p in parts) or "\\" in clip_id:
        raise ValueError(f"clip id {clip_id!r} cannot name a cache file")
    return os.path.join(clips_dir, *parts) + ".npz"


def _remove_stale_temporaries(folder: str) -> None:
    """Delete the temporary files of writers that were killed (``.<name>.<pid>.tmp``, pid gone)."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            try:
                pid = int(name[:-4].rsplit(".", 1)[1])
                os.kill(pid, 0)
                alive = True
            except (ValueError, IndexError, ProcessLookupError):
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                try:
                    os.remove(os.path.join(dirpath, name))
                except OSError:                  # a read-only cache: the file is never read, leave it
                    pass


def _decode_and_store(src: ClipSource, params: dict, path: str) -> None:
    sources = source_fingerprint(src)            # before decoding: a change made meanwhile is noticed later
    audio, frames = decode_clip(src, params)
    arrays = {"audio": audio, "frames": frames, "sources": np.array(json.dumps(sources))}
    _writing(path, atomic_save_npz, path, arrays)


def _run_decoding(todo, params, clips_dir, *, strict, progress, workers, name, stop=lambda: False):
    """Decode ``todo`` clips; returns ``[(clip_id, reason)]`` of the ones skipped. ``stop()``
    true (another rank failed) submits no further clip."""
    from tqdm import tqdm
    skipped = []
    bar = tqdm(total=len(todo), desc=f"prepare {name}", unit="clip", disable=not progress, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        pending = {}
        queue = iter(todo)

        def submit_next():
            src = next(queue, None)
            if src is not None and not stop():
                pending[pool.submit(_decode_and_store, src, params, _clip_path(clips_dir, src.clip_id))] = src

        for _ in range(2 * workers):
            submit_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                src = pending.pop(fut)
                try:
                    fut.result()
                except MediaError as exc:
                    if strict:
                        raise PrepareError(f"{name}: clip {src.clip_id} ({src.split}): {exc} "
                                           f"[--strict; without it the clip is skipped and reported]") from None
                    skipped.append((src.clip_id, str(exc)))
                bar.update(1)
                submit_next()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    order = {src.clip_id: i for i, src in enumerate(todo)}
    return sorted(skipped, key=lambda s: order[s[0]])


def _write_params(directory: str, params: dict) -> None:
    """params.json: checked against ``params``, written when missing or damaged (the folder's name
    is the hash of ``params``, so they are what it holds)."""
    path = os.path.join(directory, "params.json")
    if os.path.isfile(path):
        try:
            check_params_file(directory, params)
            return
        except CacheDamaged:
            pass
    _writing(path, atomic_write_text, path, json.dumps(params, sort_keys=True, indent=1))


def _clip_file_present(path: str) -> bool:
    """A clip file that is there and a zip archive counts as decoded; a damaged one, or a stale
    one (a source replaced since it was decoded), is deleted (decoded again). Its content is
    checked when the arrays are stacked."""
    if not os.path.isfile(path):
        return False
    if zipfile.is_zipfile(path) and not replaced_sources(clip_file_sources(path)):
        return True
    _writing(path, os.remove, path)
    return False


def _write_report(directory: str, report: PrepareReport) -> None:
    """report.json; in a cache that cannot be written (read-only, complete) it is left as it is."""
    try:
        atomic_write_text(os.path.join(directory, "report.json"), json.dumps(report.to_dict(), indent=1))
    except OSError as exc:
        print(f"note: {directory} is not writable ({exc.strerror}); the cache is complete, report.json "
              f"was not updated", file=sys.stderr)


def _index_is_current(directory: str, index: dict) -> bool:
    """The cache already holds ``index`` (checksums of its arrays included)."""
    try:
        found = read_json(os.path.join(directory, "index.json"), "index")
    except (CacheDamaged, OSError):
        return False
    if not isinstance(found, dict) or {k: v for k, v in found.items() if k != "arrays"} != index:
        return False
    records = found.get("arrays") or {}
    return all(array_file_ok(os.path.join(directory, f), records.get(f), checksum=True)
               for f in ("audio.npy", "frames.npy"))


def _consolidate(directory, manifest, ready, params, skipped, notes, root) -> tuple[list, bool]:
    """Stack the per-clip files of ``ready`` clips into the arrays training reads; index.json
    last, with the arrays' sizes and checksums and the skipped clips' source fingerprints.
    Returns the clips whose files were not usable (deleted; nothing is written then) and whether
    the cache changed (a cache that already holds all this is only read). A write that fails is
    a ``CacheWriteError`` naming the file."""
    clips_dir = os.path.join(directory, "clips")
    index = {
        "format": params["format"], "name": manifest.name, "class_names": list(manifest.class_names),
        "val_from": prepared_dataset(params["dataset"]).VAL_FROM, "root": os.path.abspath(os.fspath(root)),
        "clip_ids": [c.clip_id for c in ready], "splits": [c.split for c in ready],
        "labels": [int(c.label) for c in ready],
        "skipped": [{"clip_id": c, "split": s, "reason": r, "source": src} for c, s, r, src in skipped],
        "notes": [{"clip_id": c, "text": t} for c, t in notes],
        "sources": [clip_file_sources(_clip_path(clips_dir, c.clip_id)) for c in ready],   # per row
    }
    if _index_is_current(directory, index):
        return [], False
    try:
        return _restack(directory, ready, params, index), True
    except OSError as exc:
        raise _cannot_write(directory, exc) from None


def _restack(directory, ready, params, index) -> list:
    """The writing half of ``_consolidate`` (same return)."""
    clips_dir = os.path.join(directory, "clips")
    index_path = os.path.join(directory, "index.json")
    if os.path.exists(index_path):
        os.remove(index_path)                    # readers see "incomplete" until the new one is in place
    s, fr = params["image_size"], params["num_frames"]
    bad = [src for src in ready if not clip_file_ok(_clip_path(clips_dir, src.clip_id), s, fr)]
    if bad:
        for src in bad:
            os.remove(_clip_path(clips_dir, src.clip_id))
        return bad
    names = ("audio.npy", "frames.npy")
    tmp = {f: temporary_name(os.path.join(directory, f)) for f in names}
    audio = np.lib.format.open_memmap(tmp["audio.npy"], mode="w+", dtype=np.float32, shape=(len(ready), 1, s, s))
    frames = np.lib.format.open_memmap(tmp["frames.npy"], mode="w+", dtype=np.uint8,
                                       shape=(len(ready), fr, 3, s, s))
    for i, src in enumerate(ready):
        with np.load(_clip_path(clips_dir, src.clip_id), allow_pickle=False) as arrays:
            audio[i], frames[i] = arrays["audio"], arrays["frames"]
    audio.flush()
    frames.flush()
    del audio, frames
    for f in names:
        os.replace(tmp[f], os.path.join(directory, f))
    index["arrays"] = {f: file_record(os.path.join(directory, f)) for f in names}
    atomic_write_text(index_path, json.dumps(index))
    return []


def prepare(name: str, root, cache=None, *, image_size: int = 64, strict: bool = False,
            progress: bool = True, workers: int = 1, comm=None, **options) -> PrepareReport:
    """Decode data set ``name`` from ``root`` into its cache under ``cache`` (default ``~/.cache/refsnn``).

    ``options``: ``num_frames``, ``fps`` (video data sets), ``min_seconds``, ``silence_threshold``.
    ``comm``: a ``refsnn.distributed`` communicator to share the decoding among its ranks (the
    command line passes ``world()``; default: this process alone). Every rank returns the report
    (also printed by the command line and saved as ``report.json`` when the cache changed: a
    complete cache in which nothing changed is only read, so it may be read-only).
    """
    from ..distributed import SingleProcess
    comm = comm or SingleProcess()
    source = prepared_dataset(name)
    if root is None:
        raise ValueError(f"root: the folder of the {name} data set is required\n"
                         f"expected layout:\n{source.LAYOUT}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    start = time.perf_counter()
    params = cache_params(name, image_size, **options)
    manifest = source.scan(os.fspath(root), params)
    directory = cache_dir(cache, name, params)
    done = _open_cache(directory, params, manifest, comm)
    todo = [c for c in manifest.clips if c.clip_id not in done]
    skipped = _decode_share(todo[comm.rank::comm.size], params, directory, manifest, comm, strict=strict,
                            progress=progress, workers=workers, name=name)
    skipped_ids = {c for c, _ in skipped}
    ready = [c for c in manifest.clips if c.clip_id not in skipped_ids]
    if not ready:
        raise ValueError(f"{name}: no clip of {root} could be decoded ({len(skipped)} skipped); "
                         f"first reasons: {skipped[:3]}")
    counts = {}
    for c in ready:
        counts[c.split] = counts.get(c.split, 0) + 1
    report = PrepareReport(name, directory, len(manifest.clips), len(todo) - len(skipped), len(done),
                           skipped, list(manifest.notes), counts, time.perf_counter() - start,
                           os.path.abspath(os.fspath(root)))
    error = None
    if comm.is_root:
        try:
            _finish_cache(directory, manifest, ready, params, report, root, start, workers=workers)
        except ValueError as exc:
            error = exc
    comm.agree(error)                                     # no rank returns before the cache is complete
    return report


def _open_cache(directory: str, params: dict, manifest, comm) -> set:
    """Create the cache folder, write its parameters, remove stale temporaries (rank 0) and
    return the ids of the clips already decoded, the same set on every rank."""
    try:
        os.makedirs(os.path.join(directory, "clips"), exist_ok=True)
    except OSError as exc:
        raise CacheWriteError(f"--cache {directory}: cannot create the cache folder ({exc.strerror}); give a "
                              f"writable --cache") from None
    error, done = None, None
    if comm.is_root:          # one writer; other nodes' temporaries look stale by pid, so one cleaner
        try:
            _write_params(directory, params)
            _remove_stale_temporaries(directory)
            clips_dir = os.path.join(directory, "clips")
            done = {c.clip_id for c in manifest.clips if _clip_file_present(_clip_path(clips_dir, c.clip_id))}
        except ValueError as exc:
            error = exc
    comm.agree(error)
    return comm.bcast(done)                               # one set, so the shares are disjoint


def _decode_share(share: list, params: dict, directory: str, manifest, comm, *, strict: bool, progress: bool,
                  workers: int, name: str) -> list:
    """Decode this rank's ``share`` of the clips; every rank returns all ranks' skipped clips
    ``(clip_id, reason)`` in the manifest's order. A failure on any rank stops them all."""
    error, skipped = None, []
    try:
        with threadpool_limits(limits=1, user_api="blas"):     # small matmuls: BLAS threads only cost here
            skipped = _run_decoding(share, params, os.path.join(directory, "clips"), strict=strict,
                                    progress=progress and comm.is_root, workers=workers, name=name,
                                    stop=comm.peer_failed)
    except (PrepareError, CacheWriteError) as exc:
        error = exc
        comm.announce_failure()
    comm.agree(error)
    order = {c.clip_id: i for i, c in enumerate(manifest.clips)}
    return sorted((s for part in comm.allgather(skipped) for s in part), key=lambda s: order[s[0]])


def _finish_cache(directory: str, manifest, ready: list, params: dict, report: PrepareReport, root, start: float,
                  *, workers: int) -> None:
    """Rank 0: stack the decoded clips into the cache's arrays and index, decode again the clip
    files found damaged while stacking, and write ``report.json`` when the cache changed."""
    split_of = {c.clip_id: c.split for c in manifest.clips}
    by_id = {c.clip_id: c for c in manifest.clips}
    skipped_rows = [(c, split_of[c], r, source_fingerprint(by_id[c])) for c, r in report.skipped]
    bad, changed = _consolidate(directory, manifest, ready, params, skipped_rows, manifest.notes, root)
    if bad:                          # damaged clip files: deleted by _consolidate, decoded again here
        with threadpool_limits(limits=1, user_api="blas"):
            again = _run_decoding(bad, params, os.path.join(directory, "clips"), strict=False, progress=False,
                                  workers=workers, name=report.name)
        if again:
            raise ValueError(f"{report.name}: the cached file of clip {again[0][0]} was damaged and the clip no "
                             f"longer decodes ({again[0][1]}); run prepare again to leave it out")
        _consolidate(directory, manifest, ready, params, skipped_rows, manifest.notes, root)
        report.decoded += len(bad)
        report.reused -= len(bad)
    report.seconds = time.perf_counter() - start
    if changed or report.decoded or not os.path.isfile(os.path.join(directory, "report.json")):
        _write_report(directory, report)                  # a cache that only was read keeps its report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m refsnn.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, choices=dataset_names(PreparedDataset),
                   help="data set name")
    p.add_argument("--root", required=True, help="folder of the data set as distributed")
    p.add_argument("--cache", default=None, help="cache root (default ~/.cache/refsnn)")
    p.add_argument("--image-size", type=int, default=64, help="spectrogram and frame side (64 for the cpu "
                                                               "config, 32 tiny, 128 paper)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the data set's)")
    p.add_argument("--fps", type=float, default=None, help="frame sampling rate of videos (default: the data set's)")
    p.add_argument("--min-seconds", type=float, default=COMMON_DEFAULTS["min_seconds"],
                   help="shorter audio is skipped as very short")
    p.add_argument("--silence-threshold", type=float, default=COMMON_DEFAULTS["silence_threshold"],
                   help="audio whose peak amplitude is below this is skipped as silent")
    p.add_argument("--strict", action="store_true", help="fail on the first undecodable clip instead of skipping it")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    from ..distributed import RankFailure, world
    args = _parser().parse_args(argv)
    options = {"min_seconds": args.min_seconds, "silence_threshold": args.silence_threshold}
    if args.num_frames is not None:
        options["num_frames"] = args.num_frames
    if args.fps is not None:
        options["fps"] = args.fps
    comm = world()
    try:
        report = prepare(args.data, args.root, args.cache, image_size=args.image_size, strict=args.strict,
                         progress=not args.no_progress, workers=args.workers, comm=comm, **options)
    except (ValueError, RankFailure) as exc:      # layout, row, option and --strict errors
        if comm.is_root:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    if comm.is_root:
        print(report)
    return 0


if __name__ == "__main__":
    from ..distributed import run_main
    sys.exit(run_main(main))

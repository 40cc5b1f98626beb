"""The data set interface shared by the synthetic and the real data sets, and the registry of
data sets by name.

A data set is a module (or any object) in one of two protocols, registered under its name by
one ``register_dataset`` line in ``refsnn/data/__init__.py``:

    PreparedDataset   read from files: ``scan`` lists the clips of a folder laid out as
                      ``LAYOUT``; ``refsnn.data.prepare`` decodes them once into a cache with
                      the options ``DEFAULTS``; ``VAL_FROM`` says where validation clips come
                      from (ave, cremad, urbansound8k-av)
    GeneratedDataset  made in memory: ``load(split, seed=, image_size=, **options)`` returns
                      the split (synthetic)

A ``Dataset`` holds, for N clips, the audio log-spectrograms ``[N, 1, H, W]`` float32, the
frames ``[N, F, 3, H, W]`` (uint8 in a cache, converted to float32 in [0, 1] on access), the
integer labels and the clip ids. The arrays may be memory-mapped ``.npy`` files; a split is a
set of rows of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence, Union, runtime_checkable

import numpy as np

from ..checks import check_choice

__all__ = [
    "MediaError", "Item", "Dataset", "ClipSource", "Manifest", "SPLITS", "VAL_SOURCES",
    "validation_split", "check_split", "PreparedDataset", "GeneratedDataset", "register_dataset",
    "unregister_dataset", "dataset_names", "dataset_source", "prepared_dataset",
]

SPLITS = ("train", "val", "test")
# Where a prepared data set's validation clips come from: its own split file, or a seeded 10%
# of its train clips (``validation_split``).
VAL_SOURCES = ("file", "train")


class MediaError(ValueError):
    """A single clip cannot be decoded (corrupt, truncated, missing track, silent, too short).

    ``prepare`` skips such a clip and names it with this message in its report, or stops with
    it under ``--strict``.
    """


class Item(NamedTuple):
    audio: np.ndarray    # [1, H, W] float32 log-spectrogram
    frames: np.ndarray   # [F, 3, H, W] float32 in [0, 1]
    label: int
    clip_id: str


@dataclass(frozen=True)
class ClipSource:
    """Where one clip's inputs come from, as found by a data set's ``scan``.

    ``audio_kind``: ``file`` (wav ... via soundfile) or ``video`` (the audio track of
    ``audio_path``, decoded by ffmpeg). ``visual_kind``: ``video`` (frames at the data set's
    fps), ``frames_dir`` (a folder of images, in name order) or ``image`` (one still image).
    """
    clip_id: str
    split: str
    label: int
    audio_path: str
    audio_kind: str
    visual_path: str
    visual_kind: str


@dataclass
class Manifest:
    """The clips a data set's files describe, before decoding."""
    name: str
    class_names: list
    clips: list                                  # [ClipSource]
    notes: list = field(default_factory=list)    # [(clip_id, text)]: rows dropped while scanning


def check_split(split: str) -> str:
    return check_choice("split", split, SPLITS)


def validation_split(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of ``round(fraction * n)`` of ``n`` train clips (at least 1 when n >= 2).

    Returns sorted ``(train_rows, val_rows)`` into the original train rows. Data sets without a
    validation file (CREMA-D, UrbanSound8K-AV) use it with fraction 0.1 (SPEC section 9).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    n_val = int(round(fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    else:
        n_val = 0
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class Dataset:
    """N clips of one split; rows ``rows`` of (possibly memory-mapped) arrays.

    Attributes: ``name``, ``split``, ``class_names``, ``num_classes``, ``image_size``,
    ``num_frames`` (F), ``clip_ids``, ``labels`` (int64 ``[N]``).
    """

    def __init__(self, name: str, split: str, class_names: Sequence[str], audio: np.ndarray,
                 frames: np.ndarray, labels: np.ndarray, clip_ids: Sequence[str],
                 rows: np.ndarray | None = None):
        n_total = audio.shape[0]
        if audio.ndim != 4 or audio.shape[1] != 1 or audio.shape[2] != audio.shape[3]:
            raise ValueError(f"audio: expected [N, 1, S, S], got {audio.shape}")
        if audio.dtype != np.float32:
            raise ValueError(f"audio: expected float32, got {audio.dtype}")
        if frames.ndim != 5 or frames.shape[0] != n_total or frames.shape[2] != 3 \
                or frames.shape[3:] != audio.shape[2:]:
            raise ValueError(f"frames: expected [{n_total}, F, 3, {audio.shape[2]}, {audio.shape[3]}], got {frames.shape}")
        if frames.dtype not in (np.uint8, np.float32):
            raise ValueError(f"frames: expected uint8 or float32, got {frames.dtype}")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n_total,):
            raise ValueError(f"labels: expected shape ({n_total},), got {labels.shape}")
        if len(clip_ids) != n_total:
            raise ValueError(f"clip_ids: expected {n_total} ids, got {len(clip_ids)}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"labels: expected values in [0, {len(class_names)}), got [{labels.min()}, {labels.max()}]")
        self.name = name
        self.split = split
        self.class_names = list(class_names)
        self._audio = audio
        self._frames = frames
        self._all_labels = labels
        self._all_clip_ids = list(clip_ids)
        self._rows = np.arange(n_total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = labels[self._rows]
        self.labels.setflags(write=False)
        self.clip_ids = [self._all_clip_ids[r] for r in self._rows]

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self._audio.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self._frames.shape[1])

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, split={self.split!r}, clips={len(self)}, classes={self.num_classes}, "
                f"image_size={self.image_size}, frames={self.num_frames})")

    # -- access -----------------------------------------------------------------------------
    def _check_indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(f"indices: expected a 1-D sequence of integers, got shape {idx.shape} dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"indices: expected values in [-{n}, {n}), got [{idx.min()}, {idx.max()}]")
        return idx % n if n else idx

    def arrays(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(audio [n,1,H,W] float32, frames [n,F,3,H,W] float32 in [0,1], labels [n] int64)``.

        Fresh arrays: the caller may modify them.
        """
        idx = self._check_indices(indices)
        rows = self._rows[idx]
        audio = np.ascontiguousarray(self._audio[rows], dtype=np.float32)   # fancy indexing copies
        raw = self._frames[rows]
        if raw.dtype == np.uint8:
            frames = np.empty(raw.shape, dtype=np.float32)
            np.divide(raw, np.float32(255.0), out=frames)
        else:
            frames = np.array(raw, dtype=np.float32)
        return audio, frames, self.labels[idx].copy()

    def __getitem__(self, i) -> Item:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"index: expected an integer, got {type(i).__name__} (use arrays() for many)")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} clips")
        audio, frames, labels = self.arrays([int(i)])
        return Item(audio[0], frames[0], int(labels[0]), self.clip_ids[int(i) % n])

    def subset(self, indices, split: str | None = None) -> "Dataset":
        """A view of some clips (no copy of the arrays)."""
        idx = self._check_indices(indices)
        return Dataset(self.name, split or self.split, self.class_names, self._audio, self._frames,
                       self._all_labels, self._all_clip_ids, rows=self._rows[idx])


# --------------------------------------------------------------------------------------------
# The two kinds of data set, and the registry
# --------------------------------------------------------------------------------------------

@runtime_checkable
class PreparedDataset(Protocol):
    """A data set read from files, decoded once by ``refsnn.data.prepare`` into a cache that
    ``refsnn.data.load_dataset`` reads (memory-mapped).

    ``LAYOUT``    the folder layout ``scan`` expects, shown in every error about the files
    ``DEFAULTS``  its decoding options and their defaults: ``num_frames`` (frames kept per clip)
                  and, for video, ``fps``; they are hashed into the cache's key
    ``VAL_FROM``  "file" (the files list a validation split) or "train" (a seeded 10% of train)
    ``scan(root, params) -> Manifest``  the clips under ``root`` with their split and label,
                  before decoding; ``params`` are the cache parameters (``DEFAULTS`` filled in,
                  ``image_size``, ...). Bad files raise an error naming file and line.
    """

    LAYOUT: str
    DEFAULTS: dict
    VAL_FROM: str

    def scan(self, root: str, params: dict) -> Manifest: ...


@runtime_checkable
class GeneratedDataset(Protocol):
    """A data set made in memory from a seed: no files, no cache.

    ``DEFAULTS``  its options and their defaults
    ``check_options(options) -> dict``  the options validated, ``DEFAULTS`` filled in; errors
                  name the option (the command lines check ``--data-option`` with it up front)
    ``load(split, *, seed, image_size, **options) -> Dataset``  one split, ``split`` in
                  ``SPLITS``; the same arguments give the same clips
    """

    DEFAULTS: dict

    def check_options(self, options: dict) -> dict: ...

    def load(self, split: str, *, seed: int, image_size: int, **options) -> Dataset: ...


DatasetSource = Union[PreparedDataset, GeneratedDataset]
_SOURCES: dict[str, DatasetSource] = {}


def _missing_members(source, protocol) -> list[str]:
    members = [*protocol.__annotations__,
               *(m for m in ("scan", "check_options", "load") if m in dir(protocol))]
    return [m for m in dict.fromkeys(members) if not hasattr(source, m)]


def register_dataset(name: str, source: DatasetSource) -> DatasetSource:
    """Make ``source`` (a module or object following ``PreparedDataset`` or
    ``GeneratedDataset``) the data set ``name``; returns ``source``. An incomplete source or a
    name already registered is an error."""
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
        raise ValueError(f"name: expected a non-empty data set name without spaces around it or "
                         f"'/', got {name!r}")
    if name in _SOURCES:
        raise ValueError(f"name: data set {name!r} is already registered ({_SOURCES[name]!r})")
    if not isinstance(source, (PreparedDataset, GeneratedDataset)):
        raise ValueError(
            f"source: {source!r} follows neither data set protocol: as a PreparedDataset it lacks "
            f"{_missing_members(source, PreparedDataset)}, as a GeneratedDataset "
            f"{_missing_members(source, GeneratedDataset)} (docs/extending.md)")
    if not isinstance(source.DEFAULTS, dict):
        raise ValueError(f"source: DEFAULTS must be a dict of options, got {type(source.DEFAULTS).__name__}")
    if isinstance(source, PreparedDataset):
        check_choice(f"source: VAL_FROM of data set {name!r}", source.VAL_FROM, VAL_SOURCES)
        if not isinstance(source.DEFAULTS.get("num_frames"), int):
            raise ValueError(f"source: DEFAULTS of data set {name!r} must give an integer 'num_frames'")
    _SOURCES[name] = source
    return source


def unregister_dataset(name: str) -> None:
    """Remove data set ``name`` (a test's toy data set, say)."""
    check_choice("name", name, dataset_names())
    del _SOURCES[name]


def dataset_names(kind: type | None = None) -> tuple[str, ...]:
    """The registered data sets in registration order; ``kind=PreparedDataset`` (or
    ``GeneratedDataset``) keeps those of that protocol."""
    return tuple(n for n, s in _SOURCES.items() if kind is None or isinstance(s, kind))


def dataset_source(name: str) -> DatasetSource:
    """The module or object registered as data set ``name``."""
    return _SOURCES[check_choice("name", name, dataset_names())]


def prepared_dataset(name: str) -> PreparedDataset:
    """The registered ``PreparedDataset`` ``name``; a generated one is an error saying so."""
    source = dataset_source(name)
    if not isinstance(source, PreparedDataset):
        raise ValueError(f"name: {name!r} is generated in memory from a seed; there is nothing to "
                         f"prepare (data sets with files: {list(dataset_names(PreparedDataset))})")
    return source

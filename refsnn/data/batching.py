"""Batches of a ``Dataset``: seeded order, resumable mid-epoch, assembled by a prefetch thread.

The order of epoch ``e`` is a pure function of ``(seed, e)``: ``PCG64([seed, e]).permutation(N)``
(or ``0..N-1`` without shuffling); batch ``b`` holds positions ``b*B .. (b+1)*B - 1`` of it, and
its ``transform`` (augmentations) draws from its own generator ``PCG64([seed, e, b, 1])``. So an
iterator started at ``start_batch=b`` yields exactly the batches ``b, b+1, ...`` of an
uninterrupted epoch, bit for bit, which is how training resumes from a checkpoint.
"""
from __future__ import annotations

import queue
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .base import Dataset

__all__ = ["Batch", "BatchIterator", "epoch_order"]


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch. ``labels_b`` and ``lam`` are set by mixup: the loss is
    ``lam * CE(logits, labels) + (1 - lam) * CE(logits, labels_b)``; otherwise ``labels_b`` is
    None and ``lam`` is 1."""
    audio: np.ndarray          # [B, 1, H, W] float32
    frames: np.ndarray         # [B, F, 3, H, W] float32 in [0, 1] (mixup: convex combinations)
    labels: np.ndarray         # [B] int64
    clip_ids: tuple
    index: int = 0             # batch number within the epoch
    labels_b: np.ndarray | None = None
    lam: float = 1.0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def replace(self, **changes) -> "Batch":
        return replace(self, **changes)

    def targets(self, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
        """Soft targets ``[B, num_classes]`` float32: (mixed) one-hot labels, optionally smoothed."""
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing: expected a value in [0, 1), got {smoothing}")
        eye = np.eye(num_classes, dtype=np.float32)
        t = eye[self.labels] if self.labels_b is None else \
            np.float32(self.lam) * eye[self.labels] + np.float32(1.0 - self.lam) * eye[self.labels_b]
        return t * np.float32(1.0 - smoothing) + np.float32(smoothing / num_classes)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Positions ``0..n-1`` in the order of epoch ``epoch``."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n).astype(np.int64)


def _make_batch(dataset, order, batch_size, b, seed, epoch, transform) -> Batch:
    idx = order[b * batch_size:(b + 1) * batch_size]
    audio, frames, labels = dataset.arrays(idx)
    batch = Batch(audio, frames, labels, tuple(dataset.clip_ids[i] for i in idx), index=b)
    if transform is not None:
        batch = transform(batch, np.random.Generator(np.random.PCG64([seed, epoch, b, 1])))
        if not isinstance(batch, Batch):
            raise ValueError(f"transform: expected it to return a Batch, got {type(batch).__name__}")
    return batch


_END = object()


def _producer(dataset, order, batch_size, first, last, seed, epoch, transform, out: queue.Queue,
              stop: threading.Event) -> None:
    # a plain function, not a method: the thread must not keep the iterator alive, so that
    # dropping the iterator lets the finalizer stop the thread
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for b in range(first, last):
            if stop.is_set() or not put(_make_batch(dataset, order, batch_size, b, seed, epoch, transform)):
                return
        put(_END)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        put(exc)


def _shutdown(stop: threading.Event, out: queue.Queue, thread: threading.Thread) -> None:
    stop.set()
    while True:                       # unblock a producer waiting on a full queue
        try:
            out.get_nowait()
        except queue.Empty:
            break
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout=10.0)


class BatchIterator:
    """Iterate over one epoch of ``dataset`` in batches (a one-pass iterator).

    ``len()`` is the number of batches this iterator yields (``num_batches - start_batch``);
    ``num_batches`` is the epoch's total. ``prefetch`` batches are assembled ahead by a
    background thread (0: in the caller's thread); an exception there is re-raised here. The
    thread stops when the epoch ends, on ``close()``, on leaving a ``with`` block, or when the
    iterator is garbage-collected. ``transform(batch, rng) -> batch`` runs in that thread.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 epoch: int = 0, drop_last: bool = False, start_batch: int = 0, prefetch: int = 2,
                 transform: Callable | None = None):
        n = len(dataset)
        for name, value, low in (("batch_size", batch_size, 1), ("seed", seed, 0), ("epoch", epoch, 0),
                                 ("start_batch", start_batch, 0), ("prefetch", prefetch, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if n == 0:
            raise ValueError("dataset: expected at least one clip, got an empty data set")
        if drop_last and batch_size > n:
            raise ValueError(f"batch_size: {batch_size} is larger than the data set ({n} clips) with "
                             f"drop_last=True, which would give no batch at all")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform: expected a callable transform(batch, rng), got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed, self.epoch = int(seed), int(epoch)
        self.num_batches = n // self.batch_size if drop_last else -(-n // self.batch_size)
        if start_batch > self.num_batches:
            raise ValueError(f"start_batch: expected at most {self.num_batches} (batches in the epoch), got {start_batch}")
        self.start_batch = int(start_batch)
        self.prefetch = int(prefetch)
        self.transform = transform
        self._order = epoch_order(n, self.seed, self.epoch, shuffle)
        self._next = self.start_batch
        self._thread = None
        self._queue = None
        self._finalizer = None
        self._finished = False

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def __iter__(self) -> "BatchIterator":
        return self

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        self._thread = threading.Thread(
            target=_producer, name="refsnn-batch-prefetch", daemon=True,
            args=(self.dataset, self._order, self.batch_size, self._next, self.num_batches, self.seed,
                  self.epoch, self.transform, self._queue, stop))
        self._finalizer = weakref.finalize(self, _shutdown, stop, self._queue, self._thread)
        self._thread.start()

    def __next__(self) -> Batch:
        if self._finished or self._next >= self.num_batches:
            self.close()
            raise StopIteration
        if self.prefetch == 0:
            batch = _make_batch(self.dataset, self._order, self.batch_size, self._next, self.seed,
                                self.epoch, self.transform)
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
            if item is _END:
                self.close()
                raise StopIteration
            if isinstance(item, BaseException):
                self.close()
                raise item
            batch = item
        self._next += 1
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (idempotent); the iterator yields nothing more."""
        self._finished = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

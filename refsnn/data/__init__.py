"""Data sets of refsnn (SPEC section 9): one interface for the embedded synthetic task and the
real AVE, CREMA-D and UrbanSound8K-AV data sets, a seeded batch iterator and augmentations.

    from refsnn.data import load_dataset, BatchIterator
    train = load_dataset("synthetic", "train", image_size=64)
    for batch in BatchIterator(train, 8, seed=0, epoch=0):
        batch.audio, batch.frames, batch.labels      # [8,1,64,64], [8,4,3,64,64], [8]

Real data sets are decoded once by ``python -m refsnn.data.prepare`` (or
``refsnn.data.prepare.prepare``) into a cache; ``load_dataset`` reads that cache. See docs/data.md.
This package knows no model, and the model knows no data set.
"""
from __future__ import annotations

from .base import SPLITS, Dataset, Item, MediaError
from .batching import Batch, BatchIterator, epoch_order
from .cache import REAL_DATASETS, default_cache_root, load_cached

__all__ = [
    "DATASETS", "SPLITS", "load_dataset", "Dataset", "Item", "Batch", "BatchIterator", "epoch_order",
    "MediaError", "default_cache_root",
]

DATASETS = ("synthetic", "ave", "cremad", "urbansound8k-av")


def load_dataset(name: str, split: str, *, root=None, cache=None, image_size: int = 64, seed: int = 0,
                 **options) -> Dataset:
    """One split (``train``, ``val`` or ``test``) of data set ``name``.

    ``synthetic``: generated in memory from ``seed``; options ``n_train``, ``n_val``, ``n_test``,
    ``num_frames``, ``noise``, ``duration`` (``refsnn.data.synthetic``).
    ``ave``, ``cremad``, ``urbansound8k-av``: read from the cache that ``prepare`` wrote under
    ``cache`` (default ``~/.cache/refsnn``); options ``num_frames``, ``fps``, ``min_seconds``,
    ``silence_threshold`` select which cache. ``seed`` draws the 10% validation hold-out of data
    sets without a validation file. ``root`` is only used to print the prepare command when the
    cache is missing.
    """
    if name == "synthetic":
        from . import synthetic
        return synthetic.load(split, seed=seed, image_size=image_size, **options)
    if name not in REAL_DATASETS:
        raise ValueError(f"name: expected one of {list(DATASETS)}, got {name!r}")
    return load_cached(name, split, root=root, cache=cache, image_size=image_size, seed=seed, **options)

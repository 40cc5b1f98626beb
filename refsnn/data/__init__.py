"""Data sets of refsnn (SPEC section 9): one interface for the embedded synthetic task and the
real AVE, CREMA-D and UrbanSound8K-AV data sets, a seeded batch iterator and augmentations.

    from refsnn.data import load_dataset, BatchIterator
    train = load_dataset("synthetic", "train", image_size=64)
    for batch in BatchIterator(train, 8, seed=0, epoch=0):
        batch.audio, batch.frames, batch.labels      # [8,1,64,64], [8,4,3,64,64], [8]

Real data sets are decoded once by ``python -m refsnn.data.prepare`` (or
``refsnn.data.prepare.prepare``) into a cache; ``load_dataset`` reads that cache. See docs/data.md.
Each data set is a module registered below by name (``refsnn.data.base``: the two protocols and
the registry; docs/extending.md: adding one). This package knows no model, and the model knows
no data set.
"""
from __future__ import annotations

from . import ave, cremad, synthetic, urbansound8k_av
from .base import (SPLITS, Dataset, GeneratedDataset, Item, MediaError, PreparedDataset,
                   dataset_names, dataset_source, register_dataset, unregister_dataset)
from .batching import Batch, BatchIterator, epoch_order
from .cache import cache_params, default_cache_root, load_cached

__all__ = [
    "SPLITS", "load_dataset", "Dataset", "Item", "Batch", "BatchIterator", "epoch_order",
    "MediaError", "default_cache_root", "PreparedDataset", "GeneratedDataset", "register_dataset",
    "unregister_dataset", "dataset_names", "check_options",
]


def load_dataset(name: str, split: str, *, root=None, cache=None, image_size: int = 64, seed: int = 0,
                 **options) -> Dataset:
    """One split (``train``, ``val`` or ``test``) of the registered data set ``name``.

    ``synthetic``: generated in memory from ``seed``; options ``n_train``, ``n_val``, ``n_test``,
    ``num_frames``, ``noise``, ``duration`` (``refsnn.data.synthetic``).
    ``ave``, ``cremad``, ``urbansound8k-av``: read from the cache that ``prepare`` wrote under
    ``cache`` (default ``~/.cache/refsnn``); options ``num_frames``, ``fps``, ``min_seconds``,
    ``silence_threshold`` select which cache. ``seed`` draws the 10% validation hold-out of data
    sets without a validation file. ``root`` is only used to print the prepare command when the
    cache is missing.
    """
    source = dataset_source(name)
    if isinstance(source, GeneratedDataset):
        return source.load(split, seed=seed, image_size=image_size, **options)
    return load_cached(name, split, root=root, cache=cache, image_size=image_size, seed=seed, **options)


def check_options(name: str, image_size: int, options: dict) -> dict:
    """The options of data set ``name`` validated (unknown keys and bad values are errors naming
    them), with its defaults filled in: a generated data set's ``check_options``, or a prepared
    one's cache parameters (``refsnn.data.cache.cache_params``)."""
    source = dataset_source(name)
    if isinstance(source, GeneratedDataset):
        return source.check_options(options)
    return cache_params(name, image_size, **options)


# The data sets, one line each (SPEC section 9).
register_dataset("synthetic", synthetic)
register_dataset("ave", ave)
register_dataset("cremad", cremad)
register_dataset("urbansound8k-av", urbansound8k_av)

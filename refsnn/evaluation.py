"""Evaluation and data splits, shared by ``refsnn.train``, ``refsnn.evaluate`` and
``refsnn.summary``: load a data set's three splits (preparing a real data set's cache on first
use), measure a model on one split, and parse the ``--data-option KEY=VALUE`` items.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .checks import check_choice
from .functional.loss import cross_entropy_forward

__all__ = ["Interrupted", "load_splits", "check_data_options", "evaluate", "parse_data_options", "model_inputs", "energy_batches", "progress_bar"]


class Interrupted(Exception):
    """An evaluation stopped by its ``stop`` callable (Ctrl-C during the final test)."""


def parse_data_options(items) -> dict:
    """``--data-option KEY=VALUE`` items -> dict with numbers parsed (``n_train=400`` -> 400)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--data-option: expected KEY=VALUE, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def check_data_options(name: str, image_size: int, options: dict) -> None:
    """A ValueError naming ``--data-option`` when data set ``name`` does not take ``options``."""
    from .data import check_options
    try:
        check_options(name, image_size, options)
    except ValueError as exc:
        raise ValueError(f"--data-option: {exc}") from None


def load_splits(name: str, *, image_size: int, seed: int = 0, root=None, cache=None,
                prepare_if_missing: bool = True, progress: bool = True, **options) -> dict:
    """``{"train": Dataset, "val": ..., "test": ...}`` of data set ``name``. For a real data set
    whose cache is missing and a ``root`` given, runs ``refsnn.data.prepare`` first (with its
    progress bar). ``options`` are the data set's (``--data-option``)."""
    from .data import dataset_names, load_dataset
    from .data.base import PreparedDataset, dataset_source
    check_choice("--data", name, dataset_names())
    check_data_options(name, image_size, options)
    if isinstance(dataset_source(name), PreparedDataset) and root is not None and prepare_if_missing:
        try:
            load_dataset(name, "train", root=root, cache=cache, image_size=image_size, seed=seed, **options)
        except ValueError as exc:
            if not os.path.isdir(os.fspath(root)):
                raise ValueError(f"--root {root}: no such folder") from None
            if "prepare" not in str(exc):
                raise
            from .data.integrity import CacheDamaged
            from .data.prepare import prepare
            from .distributed import world
            comm = world()                      # under mpiexec the ranks share the decoding
            why = (f"the cache of {name} is damaged or stale ({str(exc).splitlines()[0]}); repairing it"
                   if isinstance(exc, CacheDamaged) else f"no prepared cache for {name} at this image size; preparing it")
            if comm.is_root:
                print(f"{why} from {root}", file=sys.stderr)
            rep = prepare(name, root, cache, image_size=image_size, progress=progress, comm=comm, **options)
            if comm.is_root:
                print(rep.summary() if hasattr(rep, "summary") else rep, file=sys.stderr)
    return {split: load_dataset(name, split, root=root, cache=cache, image_size=image_size, seed=seed,
                                **options) for split in ("train", "val", "test")}


def model_inputs(batch, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A batch's (audio ``[B, 1, H, W]``, frames ``[B, F, 3, H, W]``) in the model's dtype."""
    return batch.audio.astype(dtype, copy=False), batch.frames.astype(dtype, copy=False)


def progress_bar(iterable, enabled: bool, **kwargs):
    """``iterable`` wrapped in a tqdm bar when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


def evaluate(model, dataset, *, batch_size: int = 32, progress: bool = False, desc: str = "eval",
             stop=None, comm=None) -> dict:
    """Loss (no smoothing), accuracy, per-class accuracy and confusion matrix (rows: true
    class, columns: predicted) of ``model`` in eval mode on ``dataset``. ``stop()``, checked
    before every batch, ends it early with ``Interrupted`` when it returns true.

    ``comm``: a ``refsnn.distributed`` communicator of several ranks shares the batches (batch
    i on rank i mod K) and returns the same dict on every rank, equal to one process's: the
    batches are the same, and the losses are summed in batch order."""
    from .data import BatchIterator
    if comm is not None and comm.size > 1:
        return _evaluate_sharded(model, dataset, batch_size, progress, desc, stop, comm)
    K = model.config.classes
    was_training = model.training
    model.eval()
    confusion = np.zeros((K, K), dtype=np.int64)
    loss_sum, n = 0.0, 0
    it = BatchIterator(dataset, min(batch_size, len(dataset)), shuffle=False, drop_last=False)
    try:
        for batch in progress_bar(it, progress, desc=desc, total=len(it)):
            if stop is not None and stop():
                raise Interrupted(f"{desc} stopped after {n} of {len(dataset)} clips")
            logits = model.forward(*model_inputs(batch, model.dtype))
            loss, _ = cross_entropy_forward(logits, batch.labels)
            loss_sum += loss * len(batch)
            n += len(batch)
            np.add.at(confusion, (batch.labels, logits.argmax(axis=1)), 1)
    finally:
        it.close()
        model.clear_cache()
        model.train(was_training)
    return _result(confusion, loss_sum, n)


def _result(confusion, loss_sum, n) -> dict:
    K = confusion.shape[0]
    per_class = [float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None for k in range(K)]
    return {"loss": loss_sum / n, "accuracy": float(np.trace(confusion) / n),
            "per_class_accuracy": per_class, "confusion": confusion.tolist(), "samples": n}


def _evaluate_sharded(model, dataset, batch_size, progress, desc, stop, comm) -> dict:
    """``evaluate`` on ranks: in round j rank r runs batch j*K + r (if there is one); a status
    check per round stops every rank together on an error or a stop."""
    from .data import BatchIterator
    E = min(batch_size, len(dataset))
    count = -(-len(dataset) // E)
    mine = list(range(comm.rank, count, comm.size))
    rows = [np.arange(i * E, min((i + 1) * E, len(dataset))) for i in mine]
    it = BatchIterator(dataset.subset(np.concatenate(rows)), E, shuffle=False) if rows else iter(())
    was_training = model.training
    model.eval()
    results, done = {}, 0
    try:
        for j in progress_bar(range(-(-count // comm.size)), progress and comm.is_root, desc=desc):
            error = None
            try:
                if j < len(mine):
                    batch = next(it)
                    logits = model.forward(*model_inputs(batch, model.dtype))
                    loss, _ = cross_entropy_forward(logits, batch.labels)
                    results[mine[j]] = (loss * len(batch), batch.labels, logits.argmax(axis=1))
            except Exception as exc:        # noqa: BLE001 - every rank learns of it below
                error = exc
            if comm.agree(error, stop is not None and bool(stop())):
                raise Interrupted(f"{desc} stopped after {done} of {len(dataset)} clips")
            done = min(len(dataset), (j + 1) * comm.size * E)
    finally:
        if rows:
            it.close()
        model.clear_cache()
        model.train(was_training)
    merged = {i: r for part in comm.allgather(results) for i, r in part.items()}
    confusion = np.zeros((model.config.classes,) * 2, dtype=np.int64)
    loss_sum, n = 0.0, 0
    for i in range(count):                      # batch order: the single-process sum
        part_loss, labels, predicted = merged[i]
        loss_sum += part_loss
        n += len(labels)
        np.add.at(confusion, (labels, predicted), 1)
    return _result(confusion, loss_sum, n)


def energy_batches(dataset, dtype, *, batch_size: int, count: int) -> list:
    """The first ``count`` batches of ``dataset`` in order, as model inputs: what the energy
    report (SPEC section 7) is measured on."""
    from .data import BatchIterator
    batches = []
    with BatchIterator(dataset, min(batch_size, len(dataset)), shuffle=False) as it:
        for b in it:
            if len(batches) >= count:
                break
            batches.append(model_inputs(b, dtype))
    return batches

"""Checkpoints: one ``.npz`` (no pickles) holding everything a run needs to continue exactly.

Keys
    ``config``            the model Config as JSON (a 0-d unicode array)
    ``meta``              JSON: epoch, batch within the epoch, global step, the epoch's running
                          sums, best validation accuracy, class names, training options, RNG
                          states, library versions
    ``model.<name>``      every parameter and buffer (BatchNorm statistics), named as in
                          docs/naming.md
    ``optim.<key>``       optimizer state (moments, step count, hyperparameters)
    ``sched.<key>``       learning-rate schedule state

Written atomically (temporary file + rename): an interrupt leaves the previous file intact.
A plain ``state_dict`` ``.npz`` (``Module.save``) carries no config: load it with
``model.load(path)`` into a model built from the right config.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields

import numpy as np

from .models.configs import Config
from .nn.module import load_npz, save_npz_atomic

__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "parse_overrides", "Checkpoint",
           "config_differences", "versions"]


class Checkpoint:
    """What ``load_checkpoint`` returns: ``config``, ``meta``, ``model_state``, ``optim_state``,
    ``sched_state`` (the last three dicts of arrays); ``stat``: (mtime in ns, size) of the file
    read."""

    def __init__(self, path, config, meta, model_state, optim_state, sched_state, stat=None):
        self.path = path
        self.stat = stat
        self.config = config
        self.meta = meta
        self.model_state = model_state
        self.optim_state = optim_state
        self.sched_state = sched_state


def versions() -> dict:
    import numba
    import scipy

    from . import __version__
    return {"refsnn": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "scipy": scipy.__version__}


def save_checkpoint(path, model, *, optimizer=None, schedule=None, meta: dict | None = None) -> None:
    arrays = {"config": np.array(model.config.to_json()),
              "meta": np.array(json.dumps(meta or {}, sort_keys=True))}
    for k, v in model.state_dict().items():
        arrays[f"model.{k}"] = v
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[f"optim.{k}"] = v
    if schedule is not None:
        for k, v in schedule.state_dict().items():
            arrays[f"sched.{k}"] = v
    save_npz_atomic(path, arrays)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint; a missing, corrupt or foreign file is a ValueError naming it."""
    path = os.fspath(path)
    st = os.stat(path) if os.path.isfile(path) else None
    arrays = load_npz(path)
    if "config" not in arrays:
        raise ValueError(f"{path}: not a refsnn checkpoint (no 'config' entry; keys start with "
                         f"{sorted(arrays)[:3]})")
    try:
        config = Config.from_json(str(arrays["config"]))
        meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable config or meta entry ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its meta entry is not a JSON object (edited by hand?)")

    def part(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    model_state = part("model.")
    for name, a in model_state.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ValueError(f"{path}: parameter {name} contains NaN or inf; this checkpoint cannot be used "
                             f"(an earlier one, or a new run, can)")
    return Checkpoint(path, config, meta, model_state, part("optim."), part("sched."),
                      stat=None if st is None else (st.st_mtime_ns, st.st_size))


def load_model(path, *, dtype=np.float32):
    """The model stored in a checkpoint, weights and BatchNorm statistics loaded, in eval mode;
    ``model.checkpoint_meta`` holds the checkpoint's meta (class names, epoch, ...)."""
    from .models.snnergy import SNNergy
    ck = load_checkpoint(path)
    model = SNNergy(ck.config, dtype=dtype)
    try:
        model.load_state_dict(ck.model_state)
    except ValueError as exc:
        raise ValueError(f"{ck.path}: weights do not fit its config ({exc})") from None
    model.eval()
    model.checkpoint_meta = ck.meta
    return model


def config_differences(a: Config, b: Config, ignore=("classes",)) -> list[str]:
    """Fields where two configs differ, as ``name: a != b`` strings."""
    out = []
    for f in fields(Config):
        if f.name in ignore:
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if va != vb:
            out.append(f"{f.name}: {va!r} != {vb!r}")
    return out


def parse_overrides(items) -> dict:
    """``["key=value", ...]`` (command-line ``--set``) -> dict; the Config coerces the types."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out

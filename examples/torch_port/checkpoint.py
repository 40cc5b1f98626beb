"""refsnn checkpoints (``.npz``) <-> the torch port.

Two layouts are read, both ``.npz`` without pickles, weights named as in docs/naming.md
(every parameter and the BatchNorm buffers ``running_mean`` / ``running_var``; Conv1x1 over
tokens ``[out, in]``, 3x3 convs OIHW; float32 or float64):

* a **state_dict** file (refsnn's ``Module.save``): one array per name, nothing else (the port
  adds ``__config__``, the config as JSON, which refsnn's ``Module.load`` does not accept:
  write it with ``with_config=False`` for refsnn);
* a **training checkpoint** (``refsnn.checkpoint.save_checkpoint``, e.g. a run's ``best.npz``):
  ``config`` (the Config as JSON), ``meta``, ``model.<name>`` (the weights), ``optim.*`` and
  ``sched.*`` (optimizer and schedule state, ignored here).

A missing key, an unexpected key or a wrong shape is an error naming every problem; nothing is
loaded unless all match. ``save_checkpoint(..., layout="training")`` writes a file that
``refsnn.checkpoint.load_model`` reads (config, empty meta, ``model.<name>``).
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import torch

from .config import PortConfig
from .model import SNNergy

__all__ = ["load_checkpoint", "save_checkpoint", "read_checkpoint", "model_from_checkpoint",
           "state_dict_to_numpy"]


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict | None]:
    """(weights by name, config dict or None) of either layout."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    if "config" in arrays and any(k.startswith("model.") for k in arrays):
        weights = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
        return weights, json.loads(str(arrays["config"]))
    config = json.loads(str(arrays["__config__"])) if "__config__" in arrays else None
    return {k: v for k, v in arrays.items() if not k.startswith("__")}, config


def load_checkpoint(model: torch.nn.Module, path, strict: bool = True) -> dict | None:
    """Copy the weights of a checkpoint (either layout) into ``model``; returns its config dict
    (or None). Names and shapes are checked first."""
    weights, config = read_checkpoint(path)
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing:
        problems.append(f"missing keys {missing}")
    if extra and strict:
        problems.append(f"unexpected keys {extra}")
    for k in sorted(set(own) & set(weights)):
        if tuple(weights[k].shape) != tuple(own[k].shape):
            problems.append(f"{k}: expected shape {tuple(own[k].shape)}, got {weights[k].shape}")
    if problems:
        raise ValueError(f"{os.fspath(path)}: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(torch.from_numpy(np.ascontiguousarray(weights[k])).to(t.dtype))
    return config


def state_dict_to_numpy(model: torch.nn.Module, dtype=None) -> dict[str, np.ndarray]:
    out = {}
    for k, t in model.state_dict().items():
        a = t.detach().cpu().numpy()
        out[k] = a.astype(dtype) if dtype is not None else a.copy()
    return out


def save_checkpoint(model: torch.nn.Module, path, *, layout: str = "state_dict", dtype=None,
                    with_config: bool = True) -> None:
    """Write the weights (refsnn names) to ``path`` (``.npz``) atomically.

    ``layout="state_dict"``: one array per name (plus ``__config__`` for an SNNergy unless
    ``with_config=False``); ``layout="training"``: refsnn's training-checkpoint keys
    (``config``, ``meta``, ``model.<name>``; needs an SNNergy), for ``refsnn.checkpoint.load_model``.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: expected a file name ending in .npz, got {path!r}")
    if layout not in ("state_dict", "training"):
        raise ValueError(f"layout: expected 'state_dict' or 'training', got {layout!r}")
    weights = state_dict_to_numpy(model, dtype)
    if layout == "training":
        if not isinstance(model, SNNergy):
            raise ValueError("layout='training' needs an SNNergy (the file stores its config)")
        arrays = {"config": np.array(json.dumps(model.cfg.to_dict(), sort_keys=True)),
                  "meta": np.array("{}")}
        arrays.update({f"model.{k}": v for k, v in weights.items()})
    else:
        arrays = weights
        if with_config and isinstance(model, SNNergy):
            arrays["__config__"] = np.array(json.dumps(model.cfg.to_dict(), sort_keys=True))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def model_from_checkpoint(path, cfg: PortConfig | None = None, dtype=torch.float32) -> SNNergy:
    """Build an SNNergy from a checkpoint: ``cfg``, or else the config stored in the file."""
    _, stored = read_checkpoint(path)
    if cfg is None:
        if stored is None:
            raise ValueError(f"{os.fspath(path)}: the file stores no config; pass cfg")
        cfg = PortConfig.from_dict(stored)
    model = SNNergy(cfg).to(dtype)
    load_checkpoint(model, path)
    return model

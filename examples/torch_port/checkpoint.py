"""refsnn checkpoints (``.npz``) <-> the torch port.

Accepted format: an ``.npz`` (no pickles) whose arrays are the model's ``state_dict`` under
refsnn's names (docs/naming.md): every parameter and the BatchNorm buffers ``running_mean`` /
``running_var``, float32 or float64, shapes as in the naming contract (Conv1x1 over tokens
``[out, in]``, 3x3 convs OIHW). Keys that begin with ``__`` (metadata such as ``__config__``,
a JSON string of the config's fields) are read as metadata, not weights. Any other key the
model does not have, a missing key or a wrong shape is an error naming every problem.

``save_checkpoint`` writes the same format (plus ``__config__``), which refsnn's
``Module.load`` reads.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import torch

from .config import PortConfig
from .model import SNNergy

__all__ = ["load_checkpoint", "save_checkpoint", "read_npz", "model_from_checkpoint",
           "state_dict_to_numpy"]


def read_npz(path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Returns (weights, metadata) of an ``.npz``; metadata are the ``__``-prefixed keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz ({exc})") from None
    meta = {k: v for k, v in arrays.items() if k.startswith("__")}
    return {k: v for k, v in arrays.items() if not k.startswith("__")}, meta


def load_checkpoint(model: torch.nn.Module, path, strict: bool = True) -> dict[str, np.ndarray]:
    """Copy the weights of an ``.npz`` into ``model`` (names and shapes checked first; nothing
    is changed unless all match). Returns the metadata arrays."""
    weights, meta = read_npz(path)
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
    return meta


def state_dict_to_numpy(model: torch.nn.Module, dtype=None) -> dict[str, np.ndarray]:
    out = {}
    for k, t in model.state_dict().items():
        a = t.detach().cpu().numpy()
        out[k] = a.astype(dtype) if dtype is not None else a.copy()
    return out


def save_checkpoint(model: torch.nn.Module, path, dtype=None) -> None:
    """Write the state_dict (refsnn names) to ``path`` (``.npz``), atomically; an SNNergy also
    stores its config as ``__config__``."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path: expected a file name ending in .npz, got {path!r}")
    arrays = state_dict_to_numpy(model, dtype)
    if isinstance(model, SNNergy):
        arrays["__config__"] = np.array(json.dumps(model.cfg.to_dict(), sort_keys=True))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def model_from_checkpoint(path, cfg: PortConfig | None = None, dtype=torch.float32) -> SNNergy:
    """Build an SNNergy from a checkpoint: ``cfg``, or else the checkpoint's ``__config__``."""
    _, meta = read_npz(path)
    if cfg is None:
        if "__config__" not in meta:
            raise ValueError(f"{os.fspath(path)}: no __config__ in the file; pass cfg")
        cfg = PortConfig.from_json(str(meta["__config__"]))
    model = SNNergy(cfg).to(dtype)
    load_checkpoint(model, path)
    return model

"""The on-disk format of conformance vectors (SPEC section 10) and its tolerances.

::

    <root>/MANIFEST.json                          versions and the sha256 of every file below
    <root>/vectors/<suite>/<case>/case.json       op, parameters, layout, dtype, seed,
                                                  per-tensor tolerances, spike margin
    <root>/vectors/<suite>/<case>/inputs.npz      inputs, parameters, upstream gradients
    <root>/vectors/<suite>/<case>/expected.npz    outputs, spikes, gradients (+ margin.* tensors)

Every file is written byte-for-byte deterministically: ``.npz`` members in sorted order with a
fixed zip timestamp (``np.savez`` stamps the current time), JSON with sorted keys.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import OrderedDict

import numpy as np

from ..checks import check_choice

__all__ = ["FORMAT", "SPEC_VERSION", "TOLERANCES", "ATOL_ONLY", "KINDS", "write_npz", "read_npz", "write_json",
           "sha256_file", "output_spec", "tolerance_for", "case_dir", "MANIFEST_NAME",
           "IntegrityError", "check_integrity", "load_manifest", "case_files"]

FORMAT = "refsnn-conformance/1"
SPEC_VERSION = "1.1"
MANIFEST_NAME = "MANIFEST.json"
CASE_FILES = ("case.json", "inputs.npz", "expected.npz")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# SPEC section 10. "value" covers every forward output that is not a spike map; "gradient"
# every derivative. Spikes, integers (words, op counts, labels) are exact in any dtype.
TOLERANCES = {
    "float64": {"value": {"rtol": 1e-10, "atol": 1e-12}, "gradient": {"rtol": 1e-10, "atol": 1e-12}},
    "float32": {"value": {"rtol": 1e-5, "atol": 1e-6}, "gradient": {"rtol": 1e-4, "atol": 1e-5}},
}
KINDS = ("spikes", "value", "gradient", "integer")
# A gradient whose true value is 0 (a bias feeding BatchNorm in train mode) is pure rounding
# noise: ~1e-15 in float64, but up to ~1e-5 in float32 (a sum of T*B*N terms of magnitude ~10
# cancelling to 0), the size of the float32 gradient atol itself. Its float32 atol is therefore
# 1e-4; float64 keeps 1e-12.
ATOL_ONLY = {"float64": 1e-12, "float32": 1e-4}


def output_spec(kind: str, *, float32: bool = True, atol_only: bool = False, margin: str | None = None,
                note: str | None = None) -> dict:
    """The case.json entry of one expected tensor: how it is compared, in each dtype.

    ``atol_only`` marks a gradient whose true value is 0 (a bias feeding BatchNorm in train
    mode), compared with ``atol`` alone since it is pure rounding noise. ``margin`` names the
    ``expected.npz`` tensor holding ``H - v_th`` of each spike, reported for flipped spikes.
    """
    check_choice("kind", kind, KINDS)
    spec: dict = {"kind": kind}
    if kind in ("spikes", "integer"):
        spec["compare"] = "exact"
        spec["tolerance"] = {"float64": {"rtol": 0.0, "atol": 0.0},
                             "float32": {"rtol": 0.0, "atol": 0.0} if float32 else None}
    else:
        spec["compare"] = "atol_only" if atol_only else "allclose"
        tol = {}
        for dtype in ("float64", "float32"):
            if dtype == "float32" and not float32:
                tol[dtype] = None
                continue
            t = dict(TOLERANCES[dtype][kind])
            if atol_only:
                t = {"rtol": 0.0, "atol": ATOL_ONLY[dtype]}
            tol[dtype] = t
        spec["tolerance"] = tol
    if margin is not None:
        spec["margin"] = margin
    if note is not None:
        spec["note"] = note
    return spec


def tolerance_for(spec: dict, dtype: str) -> dict | None:
    return spec["tolerance"].get(dtype)


def write_npz(path: str, arrays: dict) -> None:
    """Deterministic ``.npz`` (stored, sorted members, fixed timestamps, no pickles)."""
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                a = np.asarray(arrays[name])
                if a.dtype == object:
                    raise ValueError(f"{path}: array {name!r} has dtype object (pickles are not allowed)")
                buf = io.BytesIO()
                # (np.ascontiguousarray would turn a 0-d array into shape (1,))
                a = a if a.flags.c_contiguous else a.copy(order="C")
                np.lib.format.write_array(buf, a, allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())


def read_npz(path: str) -> "OrderedDict[str, np.ndarray]":
    with np.load(path, allow_pickle=False) as data:
        return OrderedDict((k, data[k]) for k in data.files)


def write_json(path: str, obj) -> None:
    text = json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n"
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_dir(suite: str, case: str) -> str:
    return f"vectors/{suite}/{case}"


def case_files(suite: str, case: str) -> list[str]:
    return [f"{case_dir(suite, case)}/{name}" for name in CASE_FILES]


class IntegrityError(ValueError):
    """Vectors that do not match MANIFEST.json; ``problems`` lists (file, reason)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {r}" for f, r in problems))


def load_manifest(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no MANIFEST.json (pass --manifest, or --vectors <root>/vectors)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def check_integrity(root: str, manifest: dict, selected: list[tuple[str, str]]) -> None:
    """Every file of the selected cases must exist and match its sha256; files in those case
    folders that the manifest does not list are refused too. Raises IntegrityError naming them."""
    files = manifest["files"]
    problems = []
    for suite, case in selected:
        for rel in case_files(suite, case):
            full = os.path.join(root, rel)
            if rel not in files:
                problems.append((rel, "not listed in MANIFEST.json"))
            elif not os.path.isfile(full):
                problems.append((rel, "missing"))
            else:
                got = sha256_file(full)
                if got != files[rel]:
                    problems.append((rel, f"sha256 {got[:16]}... does not match the manifest's "
                                          f"{files[rel][:16]}... (modified or corrupt)"))
        folder = os.path.join(root, case_dir(suite, case))
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                rel = f"{case_dir(suite, case)}/{name}"
                if rel not in files:
                    problems.append((rel, "unlisted file in a case folder"))
    if problems:
        raise IntegrityError(problems)

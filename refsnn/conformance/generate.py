"""``python -m refsnn.conformance generate --out DIR``: write every suite of SPEC section 10.

The output is deterministic: two runs on the same machine and library versions give
byte-identical files (cases draw from seeds derived from their names, ``.npz`` files carry a
fixed timestamp, JSON has sorted keys). ``DIR/MANIFEST.json`` lists the sha256 of every file.
"""
from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
import time

import numpy as np

from ..checks import check_choice
from .format import (FORMAT, MANIFEST_NAME, SPEC_VERSION, case_dir, load_manifest, sha256_file,
                     write_json, write_npz)

__all__ = ["SUITES", "GENERATOR_VERSION", "generate", "build_suite", "write_case"]

GENERATOR_VERSION = "1"

# suite name -> module under refsnn.conformance.suites providing cases()
SUITES = {
    "lif": "lif",
    "layers": "layers",
    "qk": "qk",
    "cmqka": "cmqka",
    "bitpack": "bitpack",
    "snnergy-tiny": "snnergy",
    "snnergy-small": "snnergy_small",
    "energy": "energy",
}


def build_suite(suite: str):
    check_choice("suite", suite, sorted(SUITES))
    module = importlib.import_module(f"refsnn.conformance.suites.{SUITES[suite]}")
    cases = module.cases()
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuntimeError(f"suite {suite}: duplicate case names {dup}")
    return cases


def write_case(root: str, case) -> dict[str, str]:
    """Write one case's three files; returns {relative path: sha256}."""
    rel = case_dir(case.suite, case.name)
    folder = os.path.join(root, rel)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, "case.json"), case.to_json())
    write_npz(os.path.join(folder, "inputs.npz"), case.inputs)
    write_npz(os.path.join(folder, "expected.npz"), case.expected)
    return {f"{rel}/{name}": sha256_file(os.path.join(folder, name))
            for name in ("case.json", "inputs.npz", "expected.npz")}


def _versions() -> dict:
    import numba

    from .. import __version__
    return {"refsnn": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "python": platform.python_version()}


def generate(out: str, suites: list[str] | None = None, log=print) -> dict:
    """Write the selected suites (all by default) under ``out`` and (re)write the manifest.

    A suite is regenerated as a whole (its old folder is removed first, so a renamed case
    leaves nothing stale). Suites not selected keep their manifest entries.
    """
    selected = list(SUITES) if not suites else list(dict.fromkeys(suites))
    for s in selected:
        check_choice("suite", s, sorted(SUITES))
    manifest_path = os.path.join(out, MANIFEST_NAME)
    old = load_manifest(manifest_path) if (suites and os.path.isfile(manifest_path)) else None
    files: dict[str, str] = {}
    cases_by_suite: dict[str, list[str]] = {}
    if old is not None:
        for s, names in old.get("suites", {}).items():
            if s not in selected:
                cases_by_suite[s] = names
                prefix = f"vectors/{s}/"
                files.update({k: v for k, v in old["files"].items() if k.startswith(prefix)})
    for s in selected:
        t0 = time.perf_counter()
        cases = build_suite(s)
        shutil.rmtree(os.path.join(out, "vectors", s), ignore_errors=True)
        for case in cases:
            files.update(write_case(out, case))
        cases_by_suite[s] = [c.name for c in cases]
        log(f"{s}: {len(cases)} cases ({time.perf_counter() - t0:.1f} s)")
    manifest = {
        "format": FORMAT, "spec_version": SPEC_VERSION, "generator": f"refsnn.conformance {GENERATOR_VERSION}",
        "versions": _versions(),
        "suites": {s: cases_by_suite[s] for s in sorted(cases_by_suite)},
        "files": {k: files[k] for k in sorted(files)},
    }
    write_json(manifest_path, manifest)
    size = sum(os.path.getsize(os.path.join(out, k)) for k in files)
    log(f"wrote {len(files)} files, {size / 1e6:.2f} MB, manifest {manifest_path}")
    return manifest


def main(args) -> int:
    try:
        generate(args.out, args.suite)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

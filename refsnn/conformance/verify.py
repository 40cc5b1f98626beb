"""``python -m refsnn.conformance verify --adapter pkg.module:run``: run a port on the vectors.

An adapter is ``run(case: dict, inputs: dict[str, ndarray]) -> dict[str, ndarray]``: ``case``
is the case.json document (with ``dtype`` set to the run's dtype), ``inputs`` the arrays of
inputs.npz (float arrays cast to the run's dtype). It returns every tensor listed under
``case["outputs"]``. Per tensor the verifier prints the max abs / rel error and the number of
mismatches, and for each flipped spike its distance to threshold. Before anything runs, every
selected file is checked against MANIFEST.json's sha256; a tampered file is refused by name.

Exit codes: 0 every selected case passed; 1 some case failed (or none ran); 2 the vectors were
refused or the command line was wrong.
"""
from __future__ import annotations

import copy
import fnmatch
import importlib
import json
import os
import sys
import time
import traceback

import numpy as np

from .format import IntegrityError, MANIFEST_NAME, check_integrity, load_manifest, read_npz, tolerance_for

__all__ = ["verify", "compare_tensor", "load_adapter", "select_cases", "VerifyResult"]

MAX_FLIPS_SHOWN = 5


def load_adapter(spec: str):
    """``pkg.module:function`` -> the function (the current directory is importable)."""
    if ":" not in spec:
        raise ValueError(f"--adapter: expected 'pkg.module:function', got {spec!r}")
    module_name, func_name = spec.rsplit(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--adapter: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"--adapter: {module_name!r} has no callable {func_name!r}")
    return fn


def select_cases(manifest: dict, suites=None, pattern=None) -> list[tuple[str, str]]:
    known = manifest["suites"]
    if suites:
        unknown = sorted(set(suites) - set(known))
        if unknown:
            raise ValueError(f"--suite: unknown suite(s) {unknown}; the vectors hold {sorted(known)}")
    out = []
    for suite in known:
        if suites and suite not in suites:
            continue
        for case in known[suite]:
            if pattern and not (fnmatch.fnmatchcase(case, pattern)
                                or fnmatch.fnmatchcase(f"{suite}/{case}", pattern)):
                continue
            out.append((suite, case))
    return out


def compare_tensor(spec: dict, expected: np.ndarray, got, dtype: str,
                   margin: np.ndarray | None = None) -> dict:
    """Compare one output (``spec`` its case.json entry) in a run of ``dtype``; returns a
    JSON-able record with ``ok``, the errors, the mismatches and the flipped spikes."""
    tol = tolerance_for(spec, dtype)
    rec: dict = {"kind": spec["kind"], "compare": spec["compare"], "size": int(expected.size),
                 "rtol": tol["rtol"], "atol": tol["atol"]}
    if got is None:
        rec.update(ok=False, problem="missing from the adapter's outputs")
        return rec
    try:
        g = np.asarray(got)
    except Exception as exc:  # an object that is not array-like
        rec.update(ok=False, problem=f"not an array ({type(got).__name__}: {exc})")
        return rec
    if g.shape != expected.shape:
        rec.update(ok=False, problem=f"shape {tuple(g.shape)}, expected {tuple(expected.shape)}")
        return rec
    if spec["kind"] in ("value", "gradient") and g.ndim > 0 and np.issubdtype(g.dtype, np.floating) \
            and g.dtype != np.dtype(dtype):
        rec.update(ok=False, problem=f"dtype {g.dtype} in a {dtype} run")
        return rec
    if not (np.issubdtype(g.dtype, np.number) or g.dtype == np.bool_):
        rec.update(ok=False, problem=f"dtype {g.dtype} is not numeric")
        return rec
    if spec["kind"] == "integer" and np.issubdtype(expected.dtype, np.integer):
        if np.issubdtype(g.dtype, np.floating):
            if not np.all(np.isfinite(g)) or not np.all(g == np.round(g)):
                rec.update(ok=False, problem="non-integer values in an integer output")
                return rec
        # compare integers as integers: uint64 words do not fit float64 exactly
        ge = g.astype(expected.dtype) if g.dtype != expected.dtype else g
        diff_mask = ge != expected
        e_f = expected.astype(np.float64)
        d_abs = np.abs(ge.astype(np.float64) - e_f)
    else:
        e_f = expected.astype(np.float64)
        g_f = g.astype(np.float64)
        d_abs = np.abs(g_f - e_f)
        d_abs = np.where(np.isnan(d_abs), np.inf, d_abs)
        diff_mask = d_abs > tol["atol"] + tol["rtol"] * np.abs(e_f)
    n_bad = int(diff_mask.sum())
    rec["max_abs"] = float(d_abs.max()) if d_abs.size else 0.0
    scale = np.abs(e_f)
    big = scale > tol["atol"]
    rec["max_rel"] = float((d_abs[big] / scale[big]).max()) if big.any() else 0.0
    rec["mismatches"] = n_bad
    if n_bad and spec["kind"] == "spikes":
        flips = []
        for idx in np.argwhere(diff_mask)[:MAX_FLIPS_SHOWN]:
            idx_t = tuple(int(i) for i in idx)
            flip = {"index": list(idx_t), "expected": float(expected[idx_t]), "got": float(g_f[idx_t])}
            if margin is not None:
                flip["h_minus_v_th"] = float(margin[idx_t])
            flips.append(flip)
        rec["flips"] = flips
        if margin is not None:
            rec["min_flip_distance"] = float(np.abs(margin[diff_mask]).min())
    rec["ok"] = n_bad == 0
    return rec


class VerifyResult:
    def __init__(self):
        self.cases: list[dict] = []

    def counts(self) -> dict:
        out = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
        for c in self.cases:
            out[c["status"]] += 1
        return out

    @property
    def ok(self) -> bool:
        n = self.counts()
        return n["failed"] == 0 and n["error"] == 0 and n["passed"] > 0


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x else "0"


def _tensor_line(name: str, rec: dict) -> str:
    head = f"    {'ok ' if rec['ok'] else 'BAD'} {name:<44}"
    if "problem" in rec:
        return f"{head} {rec['problem']}"
    tol = "exact" if rec["compare"] == "exact" else (
        f"atol {rec['atol']:g} only" if rec["compare"] == "atol_only" else
        f"rtol {rec['rtol']:g} atol {rec['atol']:g}")
    line = (f"{head} max_abs {_fmt(rec['max_abs'])}  max_rel {_fmt(rec['max_rel'])}  "
            f"mismatches {rec['mismatches']}/{rec['size']}  ({tol})")
    for f in rec.get("flips", []):
        where = f"; |H - v_th| = {abs(f['h_minus_v_th']):.3g}" if "h_minus_v_th" in f else ""
        line += f"\n        flipped spike at {tuple(f['index'])}: expected {f['expected']:g}, got {f['got']:g}{where}"
    return line


def _cast_inputs(inputs: dict, dtype: str) -> dict:
    out = {}
    for k, a in inputs.items():
        out[k] = a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a
    return out


def run_case(adapter, root: str, suite: str, name: str, dtype: str) -> dict:
    folder = os.path.join(root, "vectors", suite, name)
    with open(os.path.join(folder, "case.json"), encoding="utf-8") as f:
        case = json.load(f)
    record = {"suite": suite, "case": name, "op": case["op"]}
    if dtype == "float32" and not case.get("float32", False):
        record.update(status="skipped", reason="float64-only case")
        return record
    inputs = _cast_inputs(read_npz(os.path.join(folder, "inputs.npz")), dtype)
    expected = read_npz(os.path.join(folder, "expected.npz"))
    case_arg = copy.deepcopy(case)
    case_arg["dtype"] = dtype
    t0 = time.perf_counter()
    try:
        outputs = adapter(case_arg, dict(inputs))
    except Exception as exc:
        record.update(status="error", seconds=time.perf_counter() - t0,
                      error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=6))
        return record
    record["seconds"] = time.perf_counter() - t0
    if not isinstance(outputs, dict):
        record.update(status="error", error=f"adapter returned {type(outputs).__name__}, not a dict")
        return record
    tensors = {}
    for out_name, spec in case["outputs"].items():
        margin = expected.get(spec["margin"]) if "margin" in spec else None
        tensors[out_name] = compare_tensor(spec, expected[out_name], outputs.get(out_name), dtype, margin)
    record["tensors"] = tensors
    record["status"] = "passed" if all(t["ok"] for t in tensors.values()) else "failed"
    return record


def verify(adapter, vectors: str, *, suites=None, pattern=None, dtype="float64", manifest_path=None,
           quiet=False, out=sys.stdout) -> VerifyResult:
    """Check integrity, then run every selected case. Raises IntegrityError / ValueError."""
    if dtype not in ("float64", "float32"):
        raise ValueError(f"--dtype: expected float64 or float32, got {dtype!r}")
    root = os.path.dirname(os.path.abspath(vectors))
    manifest_path = manifest_path or os.path.join(root, MANIFEST_NAME)
    manifest = load_manifest(manifest_path)
    selected = select_cases(manifest, suites, pattern)
    if not selected:
        raise ValueError("no case matches --suite/--case")
    check_integrity(root, manifest, selected)
    result = VerifyResult()
    for suite, name in selected:
        rec = run_case(adapter, root, suite, name, dtype)
        result.cases.append(rec)
        status = rec["status"]
        label = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}[status]
        timing = f"  ({rec['seconds']:.3f} s)" if "seconds" in rec else ""
        print(f"{label:<5} {suite}/{name}{timing}", file=out)
        if status == "error":
            print(f"    {rec['error']}", file=out)
        for t_name, t in rec.get("tensors", {}).items():
            if not quiet or not t["ok"]:
                print(_tensor_line(t_name, t), file=out)
    n = result.counts()
    print(f"\n{n['passed']} passed, {n['failed']} failed, {n['error']} errors, {n['skipped']} skipped "
          f"({dtype})", file=out)
    return result


def main(args) -> int:
    try:
        adapter = load_adapter(args.adapter)
        result = verify(adapter, args.vectors, suites=args.suite, pattern=args.case, dtype=args.dtype,
                        manifest_path=args.manifest, quiet=args.quiet)
    except IntegrityError as exc:
        print("refused: the vectors do not match MANIFEST.json:", file=sys.stderr)
        for f, reason in exc.problems:
            print(f"  {f}: {reason}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report:
        report = {"adapter": args.adapter, "dtype": args.dtype, "vectors": os.path.abspath(args.vectors),
                  "summary": result.counts(), "ok": result.ok, "cases": result.cases}
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, allow_nan=True)
    return 0 if result.ok else 1

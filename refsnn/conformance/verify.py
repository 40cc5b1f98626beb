"""``python -m refsnn.conformance verify --adapter pkg.module:run``: run a port on the vectors.

An adapter is ``run(case: dict, inputs: dict[str, ndarray]) -> dict[str, ndarray]``: ``case``
is the case.json document (with ``dtype`` set to the run's dtype), ``inputs`` the arrays of
inputs.npz (float arrays cast to the run's dtype). It returns every tensor listed under
``case["outputs"]``. Per tensor the verifier prints the max abs / rel error and the number of
mismatches, and for each flipped spike its distance to threshold. Before anything runs, every
selected file is checked against MANIFEST.json's sha256; a tampered file is refused by name.

Exit codes: 0 every selected case ran and passed; 1 some case failed, erred or did not run;
2 the vectors were refused or the command line was wrong; 130 the adapter raised
KeyboardInterrupt (the remaining cases did not run).

A false pass is ruled out: anything the adapter raises (``SystemExit`` and
``KeyboardInterrupt`` included) is reported against its case, a run counts as passed only when
every selected case ran and passed, and the ``--report`` file is written in every outcome (it
is first written as ``"complete": false`` before any case runs, so even a process killed
mid-run, or an adapter calling ``os._exit``, leaves a report that says the run did not finish).
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

from ..checks import check_choice
from .format import IntegrityError, MANIFEST_NAME, check_integrity, load_manifest, read_npz, tolerance_for

__all__ = ["verify", "compare_tensor", "load_adapter", "select_cases", "VerifyResult"]

MAX_FLIPS_SHOWN = 5


def load_adapter(spec: str):
    """``pkg.module:function`` -> the function (the current directory is importable). An
    import that raises anything, ``SystemExit`` included, is a ValueError naming the module."""
    if ":" not in spec:
        raise ValueError(f"--adapter: expected 'pkg.module:function', got {spec!r}")
    module_name, func_name = spec.rsplit(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--adapter: cannot import {module_name!r} ({exc})") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a SystemExit(0) at import must not pass
        raise ValueError(f"--adapter: importing {module_name!r} raised {_describe(exc)}") from None
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


def _problem(spec: dict, expected: np.ndarray, got, dtype: str):
    """``(array, None)`` when ``got`` can be compared with ``expected``, else ``(None, why)``."""
    if got is None:
        return None, "missing from the adapter's outputs"
    try:
        g = np.asarray(got)
    except Exception as exc:  # an object that is not array-like
        return None, f"not an array ({type(got).__name__}: {exc})"
    if g.shape != expected.shape:
        return None, f"shape {tuple(g.shape)}, expected {tuple(expected.shape)}"
    # every rank, 0-d included: a float64 loss in a float32 run was computed in float64
    if spec["kind"] in ("value", "gradient") and np.issubdtype(g.dtype, np.floating) \
            and g.dtype != np.dtype(dtype):
        return None, f"dtype {g.dtype} in a {dtype} run"
    if not (np.issubdtype(g.dtype, np.number) or g.dtype == np.bool_):
        return None, f"dtype {g.dtype} is not numeric"
    if spec["kind"] == "integer" and np.issubdtype(expected.dtype, np.integer) \
            and np.issubdtype(g.dtype, np.floating) \
            and (not np.all(np.isfinite(g)) or not np.all(g == np.round(g))):
        return None, "non-integer values in an integer output"
    return g, None


def _differences(spec: dict, expected: np.ndarray, g: np.ndarray, tol: dict):
    """``(diff_mask, abs_error, expected as float64)``: where g is out of tolerance."""
    e_f = expected.astype(np.float64)
    if spec["kind"] == "integer" and np.issubdtype(expected.dtype, np.integer):
        # compare integers as integers: uint64 words do not fit float64 exactly
        ge = g.astype(expected.dtype) if g.dtype != expected.dtype else g
        return ge != expected, np.abs(ge.astype(np.float64) - e_f), e_f
    d_abs = np.abs(g.astype(np.float64) - e_f)
    d_abs = np.where(np.isnan(d_abs), np.inf, d_abs)
    return d_abs > tol["atol"] + tol["rtol"] * np.abs(e_f), d_abs, e_f


def _flips(expected, g, diff_mask, margin) -> dict:
    """The first flipped spikes (with their distance to the threshold when ``margin`` is given)."""
    flips = []
    for idx in np.argwhere(diff_mask)[:MAX_FLIPS_SHOWN]:
        idx_t = tuple(int(i) for i in idx)
        flip = {"index": list(idx_t), "expected": float(expected[idx_t]), "got": float(g[idx_t])}
        if margin is not None:
            flip["h_minus_v_th"] = float(margin[idx_t])
        flips.append(flip)
    out = {"flips": flips}
    if margin is not None:
        out["min_flip_distance"] = float(np.abs(margin[diff_mask]).min())
    return out


def compare_tensor(spec: dict, expected: np.ndarray, got, dtype: str,
                   margin: np.ndarray | None = None) -> dict:
    """Compare one output (``spec`` its case.json entry) in a run of ``dtype``; returns a
    JSON-able record with ``ok``, the errors, the mismatches and the flipped spikes."""
    tol = tolerance_for(spec, dtype)
    rec: dict = {"kind": spec["kind"], "compare": spec["compare"], "size": int(expected.size),
                 "rtol": tol["rtol"], "atol": tol["atol"]}
    g, problem = _problem(spec, expected, got, dtype)
    if problem is not None:
        rec.update(ok=False, problem=problem)
        return rec
    diff_mask, d_abs, e_f = _differences(spec, expected, g, tol)
    n_bad = int(diff_mask.sum())
    rec["max_abs"] = float(d_abs.max()) if d_abs.size else 0.0
    scale = np.abs(e_f)
    big = scale > tol["atol"]
    rec["max_rel"] = float((d_abs[big] / scale[big]).max()) if big.any() else 0.0
    rec["mismatches"] = n_bad
    if n_bad and spec["kind"] == "spikes":
        rec.update(_flips(expected, g, diff_mask, margin))
    rec["ok"] = n_bad == 0
    return rec


STATUSES = ("passed", "failed", "error", "skipped", "not-run")


class VerifyResult:
    """Per-case records (``status`` one of STATUSES). ``interrupted``: the adapter raised
    KeyboardInterrupt; the cases after it are recorded as ``not-run``."""

    def __init__(self):
        self.cases: list[dict] = []
        self.selected = 0
        self.interrupted = False

    def counts(self) -> dict:
        out = {s: 0 for s in STATUSES}
        for c in self.cases:
            out[c["status"]] += 1
        return out

    @property
    def complete(self) -> bool:
        """Every selected case has a record and none was left unrun."""
        return len(self.cases) == self.selected and self.counts()["not-run"] == 0

    @property
    def ok(self) -> bool:
        """True only when every selected case ran and none failed or erred (skipped float64-only
        cases aside), and at least one passed."""
        n = self.counts()
        return (self.complete and not self.interrupted and n["failed"] == 0 and n["error"] == 0
                and n["passed"] > 0)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    except BaseException as exc:  # noqa: BLE001 - SystemExit(0) from an adapter is not a pass
        record.update(status="error", seconds=time.perf_counter() - t0, error=_describe(exc),
                      traceback=traceback.format_exc(limit=6))
        if isinstance(exc, KeyboardInterrupt):
            record["interrupted"] = True
        return record
    record["seconds"] = time.perf_counter() - t0
    if not isinstance(outputs, dict):
        record.update(status="error", error=f"adapter returned {type(outputs).__name__}, not a dict")
        return record
    tensors = {}
    try:
        for out_name, spec in case["outputs"].items():
            margin = expected.get(spec["margin"]) if "margin" in spec else None
            tensors[out_name] = compare_tensor(spec, expected[out_name], outputs.get(out_name), dtype,
                                               margin)
    except BaseException as exc:  # noqa: BLE001 - the returned objects are the adapter's code too
        record.update(status="error", error=f"reading the adapter's outputs raised {_describe(exc)}",
                      traceback=traceback.format_exc(limit=6))
        if isinstance(exc, KeyboardInterrupt):
            record["interrupted"] = True
        return record
    record["tensors"] = tensors
    record["status"] = "passed" if all(t["ok"] for t in tensors.values()) else "failed"
    return record


def verify(adapter, vectors: str, *, suites=None, pattern=None, dtype="float64", manifest_path=None,
           quiet=False, out=sys.stdout, result: VerifyResult | None = None) -> VerifyResult:
    """Check integrity, then run every selected case. Raises IntegrityError / ValueError.

    Whatever the adapter raises is recorded against its case; after a KeyboardInterrupt the
    remaining cases are recorded as ``not-run`` and ``result.interrupted`` is set. ``result``:
    an existing VerifyResult to fill (the command line keeps it to write the report)."""
    check_choice("--dtype", dtype, ("float64", "float32"))
    root = os.path.dirname(os.path.abspath(vectors))
    manifest_path = manifest_path or os.path.join(root, MANIFEST_NAME)
    manifest = load_manifest(manifest_path)
    selected = select_cases(manifest, suites, pattern)
    if not selected:
        raise ValueError("no case matches --suite/--case")
    check_integrity(root, manifest, selected)
    result = VerifyResult() if result is None else result
    result.selected = len(selected)
    for i, (suite, name) in enumerate(selected):
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
        if rec.get("interrupted"):
            result.interrupted = True
            rest = selected[i + 1:]
            result.cases.extend({"suite": s_, "case": n_, "status": "not-run",
                                 "reason": "the adapter raised KeyboardInterrupt on an earlier case"}
                                for s_, n_ in rest)
            print(f"interrupted: {len(rest)} case(s) did not run", file=out)
            break
    n = result.counts()
    print(f"\n{n['passed']} passed, {n['failed']} failed, {n['error']} errors, {n['skipped']} skipped"
          f"{', %d not run' % n['not-run'] if n['not-run'] else ''} ({dtype})", file=out)
    return result


def _write_report(path: str, args, result: VerifyResult, *, complete: bool, error: str | None = None,
                  exit_code: int | None = None) -> None:
    """The JSON report; ``complete`` false until the run has finished (see the module docstring)."""
    report = {"adapter": args.adapter, "dtype": args.dtype, "vectors": os.path.abspath(args.vectors),
              "complete": complete, "exit_code": exit_code, "error": error,
              "selected": result.selected, "interrupted": result.interrupted,
              "summary": result.counts(), "ok": bool(complete and result.ok), "cases": result.cases}
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def main(args) -> int:
    result = VerifyResult()
    if args.report:
        try:
            _write_report(args.report, args, result, complete=False,
                          error="the run has not finished (it was killed or has not ended)")
        except OSError as exc:
            print(f"error: --report: cannot write {args.report!r} ({exc.strerror or exc})", file=sys.stderr)
            return 2
    error, code = None, None
    try:
        adapter = load_adapter(args.adapter)
        verify(adapter, args.vectors, suites=args.suite, pattern=args.case, dtype=args.dtype,
               manifest_path=args.manifest, quiet=args.quiet, result=result)
    except IntegrityError as exc:
        print("refused: the vectors do not match MANIFEST.json:", file=sys.stderr)
        for f, reason in exc.problems:
            print(f"  {f}: {reason}", file=sys.stderr)
        error, code = f"refused: {exc}", 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        error, code = str(exc), 2
    if code is None:
        code = 130 if result.interrupted else (0 if result.ok else 1)
        if not result.ok and not result.interrupted and not result.complete:
            error = "not every selected case ran"
    if args.report:
        # complete: every selected case has its verdict (exit 0 or 1); not after a refusal
        # or an interrupt
        _write_report(args.report, args, result, complete=code in (0, 1), error=error, exit_code=code)
    return code

"""This tree against another commit, measured in one run: the ratio new/old of each measure.

    python benchmarks/bench_against.py --rev HEAD~1                     # every measure
    python benchmarks/bench_against.py --rev b01be2c --measures step-tiny,step-cpu --rounds 5
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_against.py --rev HEAD~1

The other commit is checked out into a temporary git worktree. Every measure runs in a fresh
child process with that tree (or this one) first on ``sys.path``; the two trees alternate,
round after round, so a change in the machine's load falls on both. A side's figure is the
fastest of its rounds (the load only ever adds time); the ratio is new / old, so below 1.0
means this tree is faster. Each child warms up first (Numba compiles into each tree's own
cache, so the first round of a new tree pays no compile time in its timed part).

Measures (each the fastest of a few repetitions inside the child):
  step-tiny, step-cpu, step-paper   a training step (forward, CE, backward, AdamW), batch 8
  cmqka-1k, cmqka-4k                CMQKA forward + backward, T=4, B=1, D=256, 8 heads, N tokens
  qkta-4k, qkca-4k                  the public qk_token_forward (8 heads) / qk_channel_forward
                                    from float32 spike maps [4, 1, 256, 4096] at a 15% rate
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Each snippet defines ``run()`` (the timed work) after its set-up; the driver times it.
_STEP = """
from benchmarks.common import training_step
from refsnn.models import config
model, run = training_step(config({preset!r}), 8)
"""
_CMQKA = """
import numpy as np
from refsnn.fusion import CMQKA
rng = np.random.Generator(np.random.PCG64(0))
m = CMQKA(256, 8, rng=rng)
xa = (rng.random((4, 1, 256, {n})) < 0.15).astype(np.float32)
xv = (rng.random((4, 1, 256, {n})) < 0.15).astype(np.float32)
def run():
    ya, yv = m.forward(xa, xv)
    m.backward(np.ones_like(ya), np.ones_like(yv))
"""
_QK = """
import numpy as np
from refsnn.functional import {op}
rng = np.random.Generator(np.random.PCG64(0))
q = (rng.random((4, 1, 256, 4096)) < 0.15).astype(np.float32)
k = (rng.random((4, 1, 256, 4096)) < 0.15).astype(np.float32)
def run():
    {op}(q, k{heads})
"""
MEASURES = {
    "step-tiny": (_STEP.format(preset="tiny"), 10),
    "step-cpu": (_STEP.format(preset="cpu"), 5),
    "step-paper": (_STEP.format(preset="paper"), 2),
    "cmqka-1k": (_CMQKA.format(n=1024), 5),
    "cmqka-4k": (_CMQKA.format(n=4096), 3),
    "qkta-4k": (_QK.format(op="qk_token_forward", heads=", 8"), 7),
    "qkca-4k": (_QK.format(op="qk_channel_forward", heads=""), 7),
}

_CHILD = """
import sys, time, json
sys.path.insert(0, {tree!r})
import refsnn  # first: process settings before Numba starts threads
from benchmarks.common import set_threads
set_threads({threads})
{setup}
run(); run()
best = float("inf")
for _ in range({repeat}):
    t0 = time.perf_counter(); run(); best = min(best, time.perf_counter() - t0)
print(json.dumps({{"seconds": best}}))
"""


def run_child(tree: str, measure: str, threads: int) -> float:
    setup, repeat = MEASURES[measure]
    code = _CHILD.format(tree=tree, threads=threads, setup=setup, repeat=repeat)
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{measure} in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def checkout(rev: str, where: str) -> str:
    path = os.path.join(where, "old")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, rev], check=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the commit to compare against (e.g. HEAD~1, a hash)")
    ap.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated, from {', '.join(MEASURES)}")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two trees per measure")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        ap.error(f"--measures: unknown {', '.join(unknown)}; expected some of {', '.join(MEASURES)}")
    if args.rounds < 1 or args.threads < 1:
        ap.error("--rounds and --threads must be at least 1")
    sys.path.insert(0, ROOT)
    from benchmarks.common import blas_report, machine
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", args.rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}; threads {args.threads}")
    print(f"new = this tree (HEAD {head}, with uncommitted changes), old = {rev}; "
          f"fastest of {args.rounds} alternating rounds\n")
    print(f"{'measure':12s} {'old ms':>10s} {'new ms':>10s} {'new/old':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        old = checkout(args.rev, tmp)
        try:
            for m in measures:
                best = {"old": float("inf"), "new": float("inf")}
                for _ in range(args.rounds):
                    best["old"] = min(best["old"], run_child(old, m, args.threads))
                    best["new"] = min(best["new"], run_child(ROOT, m, args.threads))
                print(f"{m:12s} {best['old'] * 1e3:10.1f} {best['new'] * 1e3:10.1f} "
                      f"{best['new'] / best['old']:8.3f}", flush=True)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old], check=False)


if __name__ == "__main__":
    main()

"""The fused BatchNorm + LIF kernels of this tree against those of another commit, inside real
training steps (issue 13): the time of every fused forward and backward kernel call of a step,
summed, with the arrays as warm or cold as the model leaves them.

    python benchmarks/bench_bnlif_model.py --rev 86f1738 --preset paper --threads 1 --steps 3

One process: the other commit's ``refsnn/kernels/bnlif.py`` is loaded from git beside this
tree's, and the two sides alternate step after step on the same model (``refsnn.functional.
bnlif`` calls whichever side's kernels are switched in; both compute the same values). A side's
figure is its fastest step. ``--threads 1`` (the default) times with the thread's CPU time,
which other processes on the machine do not inflate; with more threads, wall time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import blas_report, machine, set_threads, training_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_rev(rev: str):
    """The other commit's kernels module, imported under its own name."""
    src = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:refsnn/kernels/bnlif.py"],
                         check=True, capture_output=True, text=True).stdout
    src = src.replace("from .lif import", "from refsnn.kernels.lif import")
    src = src.replace("from .fastmath import", "from refsnn.kernels.fastmath import")
    folder = tempfile.mkdtemp(prefix="bnlif-rev-")
    path = os.path.join(folder, "bnlif_rev.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("bnlif_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Side:
    """What ``refsnn.functional.bnlif`` reads from its kernels module, timed per call."""

    def __init__(self, module, totals, clock):
        self._m, self._totals, self._clock = module, totals, clock
        self.bn_lif_forward_numpy = module.bn_lif_forward_numpy
        self.bn_lif_backward_numpy = module.bn_lif_backward_numpy
        self.channels_per_unit = getattr(module, "channels_per_unit", lambda C, P: 1)

    def _timed(self, name, fn):
        def run(*args):
            t0 = self._clock()
            fn(*args)
            self._totals[name] = self._totals.get(name, 0.0) + self._clock() - t0
        return run

    def forward_kernel(self, spike_fn):
        m = self._m
        if hasattr(m, "forward_kernel"):
            return self._timed("forward", m.forward_kernel(spike_fn))
        # the kernels before issue 13's units: one kernel for every option, no unit size
        return self._timed("forward", lambda x, sc, sh, s, h, v, k, *a:
                           m.bn_lif_forward_kernel(x, sc, sh, s, h, v, *a))

    def backward_kernel(self, spike_fn, surrogate):
        m = self._m
        if hasattr(m, "backward_kernel"):
            return self._timed("backward", m.backward_kernel(spike_fn, surrogate))
        return self._timed("backward", lambda ds, h, x, mu, istd, w, tr, dx, dw, db, k, *a:
                           m.bn_lif_backward_kernel(ds, h, x, mu, istd, w, tr, dx, dw, db, *a))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the commit whose kernels to compare against")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side, alternating")
    args = ap.parse_args()
    set_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"machine: {machine()}\nBLAS: {blas_report()}\nthreads {args.threads}, clock "
          f"{clock.__name__}, preset {args.preset}, batch 8")
    import refsnn.functional.bnlif as fused
    from refsnn.kernels import bnlif as this
    from refsnn.models import config
    totals: dict = {}
    sides = {"old": _Side(_load_rev(args.rev), totals, clock), "new": _Side(this, totals, clock)}
    _, step = training_step(config(args.preset), 8)
    best = {name: None for name in sides}
    try:
        for rnd in range(args.steps + 1):          # round 0 warms up (compiles) both sides
            for name, side in sides.items():
                fused._k = side
                totals.clear()
                t0 = clock()
                step()
                row = (clock() - t0, totals.get("forward", 0.0), totals.get("backward", 0.0))
                if rnd and (best[name] is None or row[0] < best[name][0]):
                    best[name] = row
    finally:
        fused._k = this
    print(f"{'':5s} {'step s':>8s} {'fused fwd s':>12s} {'fused bwd s':>12s}")
    for name in sides:
        print(f"{name:5s} {best[name][0]:8.3f} {best[name][1]:12.3f} {best[name][2]:12.3f}")
    ratio = [n / o for n, o in zip(best["new"], best["old"])]
    print(f"{'new/old':7s} {ratio[0]:6.3f} {ratio[1]:12.3f} {ratio[2]:12.3f}   (fastest step of "
          f"each side; the kernels' totals are those of that step)")


if __name__ == "__main__":
    main()

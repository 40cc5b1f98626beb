"""Whole-model benchmark: training-step time (forward + cross-entropy + backward + AdamW) and
peak memory of the presets at batch 8, the share of step time per op kind, and the growth of
the step time from 64x64 to 128x128 inputs. Each measurement runs in its own process, so the
peak resident memory is that of the configuration alone.

    python benchmarks/bench_model.py [--configs tiny,cpu,paper] [--threads 2] [--steps 5]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_model.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def measure(preset: str, image_size: int | None, batch: int, steps: int, threads: int | None) -> dict:
    """Runs in a child process: one model, warm-up, ``steps`` timed steps, one profiled step."""
    import resource
    import time

    import numpy as np

    from benchmarks.common import set_threads, training_step
    from refsnn.models import config
    from refsnn.profiling import OpProfiler

    set_threads(threads)
    overrides = {} if image_size is None else {"image_size": image_size}
    model, step = training_step(config(preset, **overrides), batch)

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with OpProfiler(model) as prof:
        t0 = time.perf_counter()
        step()
        total = time.perf_counter() - t0
    return {"preset": preset, "image_size": model.config.image_size, "batch": batch, "params": model.num_parameters(),
            "step_s": float(np.median(times)), "step_min_s": float(np.min(times)),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "shares": prof.shares(total)}


def run_child(preset, image_size, batch, steps, threads):
    args = [sys.executable, __file__, "--child", preset, "--batch", str(batch), "--steps", str(steps)]
    if image_size:
        args += ["--image-size", str(image_size)]
    if threads:
        args += ["--threads", str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,cpu,paper")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.image_size, args.batch, args.steps, args.threads)))
        return
    from benchmarks.common import blas_report, machine
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}; threads {args.threads or os.cpu_count()}")
    print(f"\n== training step (forward + CE + backward + AdamW), batch {args.batch}, median of {args.steps} ==")
    from refsnn.profiling import KINDS as kinds
    print(f"{'preset':8s} {'params':>10s} {'step ms':>9s} {'peak GiB':>9s}   " + " ".join(f"{k:>9s}" for k in kinds))
    results = {}
    for preset in args.configs.split(","):
        r = run_child(preset, None, args.batch, args.steps, args.threads)
        results[preset] = r
        print(f"{preset:8s} {r['params']:10,d} {r['step_s'] * 1e3:9.1f} {r['peak_rss_gib']:9.2f}   "
              + " ".join(f"{100 * r['shares'][k]:8.1f}%" for k in kinds))
    print("\n== step time growth from 64x64 to 128x128 inputs (cpu preset) ==")
    small = results.get("cpu") or run_child("cpu", 64, args.batch, args.steps, args.threads)
    large = run_child("cpu", 128, args.batch, args.steps, args.threads)
    print(f"64x64: {small['step_s'] * 1e3:.1f} ms   128x128: {large['step_s'] * 1e3:.1f} ms   "
          f"ratio {large['step_s'] / small['step_s']:.2f} (4x the pixels and tokens)")


if __name__ == "__main__":
    main()

"""Data-parallel training over MPI: what two ranks cost here, and what K machines would gain.

    python benchmarks/bench_distributed.py                 # cpu and paper presets, one run
    python benchmarks/bench_distributed.py --presets cpu --steps 5

For each preset, in one run of this script:
1. one process with 2 threads runs training steps (forward, loss, backward, AdamW) on a batch
   of B clips;
2. ``mpiexec -n 2`` runs the same steps as refsnn.train does with 2 ranks of 1 thread: each rank
   a micro-batch of B/2 clips, then the reproducible reduction (``GradientAccumulator.finish``:
   Alltoall + float64 sums in rank order + Allgather), then AdamW. It reports the step time,
   the reduction's time after a barrier (pure communication, without waiting for the slower
   rank) and the bytes each rank sends, and for comparison MPI's own ``Allreduce`` (whose sum
   order is MPI's choice) of the same vector;
3. a ring-allreduce model for K = 2..64 machines at 10 and 100 Gb/s: each machine (2 cores,
   like this one) computes one step on its own B clips in the time measured here, the faster of
   its two layouts (1 rank x 2 threads, or 2 ranks x 1 thread without the reduction); weak
   scaling, the global batch is K x B. Then the allreduce of the gradient, T = 2 (K-1)/K x bytes
   / bandwidth + 2 (K-1) x latency; predicted parallel efficiency = compute / (compute + T)
   (refsnn reduces after the backward, without overlap).

The machine is shared with other jobs: compare the ratios of one run, not absolute times. On
an oversubscribed machine one process with 2 threads suffers most: every parallel region
waits until both of its threads get a core.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import blas_report, machine, set_threads  # noqa: E402  (imports refsnn first)

LATENCY_S = {10: 20e-6, 100: 5e-6}        # per message, typical TCP on 10 GbE / RDMA on 100 Gb/s
BATCH = {"tiny": 8, "cpu": 8, "paper": 8}


def _model_and_batch(preset: str, batch: int, seed: int):
    from refsnn.models import SNNergy, config
    c = config(preset)
    model = SNNergy(c, seed=0)
    rng = np.random.default_rng(seed)
    S = c.image_size
    audio = rng.normal(size=(batch, 1, S, S)).astype(np.float32)
    visual = rng.random((batch, c.T, 3, S, S)).astype(np.float32)
    labels = np.arange(seed * batch, (seed + 1) * batch) % c.classes
    return model, audio, visual, labels


def _step_fn(model, audio, visual, labels, accumulator=None):
    """One refsnn.train step; returns a function that runs it and returns (total, reduce) s."""
    from refsnn.functional import cross_entropy_backward, cross_entropy_forward
    from refsnn.optim import AdamW, default_decay_filter
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.06, decay_filter=default_decay_filter)

    def step():
        t0 = time.perf_counter()
        if accumulator is not None:
            accumulator.begin()
        model.zero_grad()
        _, cache = cross_entropy_forward(model.forward(audio, visual), labels)
        model.backward(cross_entropy_backward(cache))
        t_reduce = 0.0
        if accumulator is not None:
            accumulator.add()
            accumulator.comm.barrier()            # the reduction alone, not the wait for the slower rank
            t1 = time.perf_counter()
            accumulator.finish()
            t_reduce = time.perf_counter() - t1
        opt.step()
        model.clear_cache()
        return time.perf_counter() - t0, t_reduce

    return step


def one_process(preset: str, batch: int, steps: int) -> dict:
    set_threads(2)
    model, audio, visual, labels = _model_and_batch(preset, batch, 0)
    step = _step_fn(model, audio, visual, labels)
    step()                                        # warm-up: compilation, first allocations
    times = [step()[0] for _ in range(steps)]
    grad_bytes = sum(p.value.nbytes for p in model.parameters().values())
    return {"step_s": float(np.median(times)), "step_min_s": float(min(times)), "grad_bytes": grad_bytes,
            "params": model.num_parameters()}


def worker(preset: str, batch: int, steps: int) -> None:
    """Run under mpiexec: each rank a micro-batch of batch / K clips, 1 thread."""
    from refsnn.distributed import GradientAccumulator, world
    comm = world()
    set_threads(1)
    model, audio, visual, labels = _model_and_batch(preset, batch // comm.size, comm.rank)
    acc = GradientAccumulator(model, comm, accumulate=1)
    step = _step_fn(model, audio, visual, labels, acc)
    step()
    runs = [step() for _ in range(steps)]
    # MPI's own Allreduce of the same vector, for comparison (its summation order is MPI's)
    from mpi4py import MPI
    vec = np.ones(acc.length, dtype=acc.dtype)
    out = np.empty_like(vec)
    native = []
    for _ in range(steps + 1):
        comm.barrier()
        t0 = time.perf_counter()
        comm.comm.Allreduce(vec, out, op=MPI.SUM)
        native.append(time.perf_counter() - t0)
    everyone = comm.allgather(runs)
    if comm.is_root:
        totals = [max(r[i][0] for r in everyone) for i in range(steps)]
        reduces = [max(r[i][1] for r in everyone) for i in range(steps)]
        print(json.dumps({"step_s": float(np.median(totals)), "step_min_s": float(min(totals)),
                          "reduce_s": float(np.median(reduces)), "reduce_min_s": float(min(reduces)),
                          "native_allreduce_s": float(np.median(native[1:])),
                          "bytes_per_rank": acc.bytes_per_step, "vector_length": acc.length,
                          "blas": blas_report()}))


def two_ranks(preset: str, batch: int, steps: int) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = ["mpiexec", "-n", "2", sys.executable, os.path.abspath(__file__), "--worker", "--presets", preset,
           "--batch", str(batch), "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ring_model(compute_s: float, grad_bytes: int) -> list[dict]:
    rows = []
    for K in (2, 4, 8, 16, 32, 64):
        row = {"K": K}
        for gbps, latency in LATENCY_S.items():
            t = 2 * (K - 1) / K * grad_bytes * 8 / (gbps * 1e9) + 2 * (K - 1) * latency
            row[f"{gbps}G_allreduce_s"] = t
            row[f"{gbps}G_efficiency"] = compute_s / (compute_s + t)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 8)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    presets = args.presets.split(",")
    if args.worker:
        worker(presets[0], args.batch, args.steps)
        return 0
    print(f"machine: {machine()}")
    set_threads(2)
    print(f"BLAS (1 process): {blas_report()}")
    results = {}
    for preset in presets:
        batch = args.batch or BATCH.get(preset, 8)
        one = one_process(preset, batch, args.steps)
        two = two_ranks(preset, batch, args.steps)
        results[preset] = (batch, one, two)
        print(f"\n== {preset}: {one['params']:,} parameters, batch {batch} per step "
              f"({batch // 2} per rank with 2 ranks)")
        if preset == presets[0]:
            print(f"BLAS (each rank): {two['blas']}")
        print("| layout | step s (median) | step s (min) | reduction s | reduction / step | bytes sent per rank |")
        print("|---|---|---|---|---|---|")
        print(f"| 1 rank x 2 threads | {one['step_s']:.3f} | {one['step_min_s']:.3f} | - | - | - |")
        print(f"| 2 ranks x 1 thread | {two['step_s']:.3f} | {two['step_min_s']:.3f} | {two['reduce_s'] * 1e3:.1f} ms"
              f" | {two['reduce_s'] / two['step_s']:.2%} | {two['bytes_per_rank'] / 1e6:.1f} MB |")
        print(f"2 ranks / 1 rank step time: {two['step_s'] / one['step_s']:.2f}; gradient "
              f"{one['grad_bytes'] / 1e6:.1f} MB float32 ({two['vector_length']:,} values with BatchNorm "
              f"statistics); MPI's own Allreduce of it {two['native_allreduce_s'] * 1e3:.1f} ms "
              f"(reproducible reduction / Allreduce: {two['reduce_s'] / two['native_allreduce_s']:.2f})")
        compute = min(one["step_s"], two["step_s"] - two["reduce_s"])
        print(f"ring-allreduce model (each machine: B = {batch} clips in {compute:.3f} s, the faster layout, "
              f"{one['grad_bytes'] / 1e6:.1f} MB gradient; latency 20 us at 10 Gb/s, 5 us at 100 Gb/s)")
        print("| K | allreduce 10 Gb/s | efficiency 10 Gb/s | allreduce 100 Gb/s | efficiency 100 Gb/s |")
        print("|---|---|---|---|---|")
        for row in ring_model(compute, one["grad_bytes"]):
            print(f"| {row['K']} | {row['10G_allreduce_s'] * 1e3:.1f} ms | {row['10G_efficiency']:.1%} | "
                  f"{row['100G_allreduce_s'] * 1e3:.2f} ms | {row['100G_efficiency']:.1%} |")
    if "paper" in results:
        _, _, two = results["paper"]
        share = two["reduce_s"] / two["step_s"]
        print(f"\ncommunication overhead of a paper step at K = 2 on this machine: {share:.2%} "
              f"({'below' if share < 0.10 else 'NOT below'} 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

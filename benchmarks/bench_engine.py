"""Engine benchmark: LIF and Conv2d forward+backward, as ratios measured in one run.

    python benchmarks/bench_engine.py                      # the machine's BLAS settings
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_engine.py

Prints (1) LIF forward+backward at T=4 and 1M neurons: the Numba kernel, its NumPy twin and,
when torch and spikingjelly are installed, SpikingJelly's multi-step LIFNode on the CPU with the
same threads; (2) Conv2d forward+backward at the stage shapes of the `cpu` and `paper` configs
(batch 8, T=4) in GFLOP/s beside numpy's matmul peak measured in the same run, and the ratio to
torch.nn.functional.conv2d when torch is installed, with the algorithm refsnn chose (im2col, or
Winograd F(2x2, 3x3) / F(4x4, 3x3): their GFLOP/s count the direct convolution's 2*MACs, as
cuDNN and oneDNN report theirs, so they can exceed the matmul peak); refsnn and torch run in turn, and the
fastest runs are compared (other processes only ever add time); (3, ``--parts bnlif``)
BatchNorm + LIF forward+backward, fused (``refsnn.functional.bnlif``) against the two ops
chained, at the output shape of each stage's first convolution (``--cold``: inputs from
memory); (4, ``--parts conv1x1``) the 1x1 convolution over tokens forward+backward (dx, dW, dbias) at the transformer shapes of each
stage (attention projections d->d, SMLP d->h and h->d), against the torch port's equivalent
(``torch.nn.functional.linear`` on channels-last tokens ``[T*B, N, C]``: one GEMM).

    python benchmarks/bench_engine.py --parts conv --configs paper --rounds 9
    python benchmarks/bench_engine.py --parts conv --threads 1 --clock thread   # under load
    python benchmarks/bench_engine.py --parts conv1x1 --configs paper --rounds 9
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import blas_report, machine, set_threads, timeit  # noqa: E402
from refsnn.functional import (conv1x1_backward, conv1x1_forward, conv2d_backward, conv2d_forward,  # noqa: E402
                               lif_backward, lif_forward)
from refsnn.models import config  # noqa: E402


def conv_shapes(name: str, batch: int):
    """(label, N, Cin, Cout, H, stride) of every 3x3 conv in the config's patch embeddings."""
    c = config(name)
    c1, c2, c3 = c.stage_dims
    H = c.image_size
    N = batch * c.T
    s1 = -(-H // 2)
    s2 = -(-s1 // 2)
    s3 = -(-s2 // 2)
    s4 = -(-s3 // 2)
    return [
        (f"{name} stage1 proj1 {c1 // 2}->{c1} @{s1}", N, c1 // 2, c1, s1),
        (f"{name} stage1 proj2 {c1}->{c1} @{s2}", N, c1, c1, s2),
        (f"{name} stage2 proj1 {c1}->{c2} @{s2}", N, c1, c2, s2),
        (f"{name} stage2 proj2 {c2}->{c2} @{s3}", N, c2, c2, s3),
        (f"{name} stage3 proj1 {c2}->{c3} @{s3}", N, c2, c3, s3),
        (f"{name} stage3 proj2 {c3}->{c3} @{s4}", N, c3, c3, s4),
    ]


def bench_lif(threads):
    print("\n== LIF forward+backward, T=4, 1,048,576 neurons, float32 ==")
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 1.0, size=(4, 1 << 20)).astype(np.float32)
    ds = rng.normal(size=x.shape).astype(np.float32)

    def run(backend):
        def step():
            s, c = lif_forward(x, backend=backend)
            lif_backward(ds, c)
        return step

    t_numba = timeit(run("numba"), repeat=15)
    t_numpy = timeit(run("numpy"), repeat=5)
    print(f"refsnn Numba kernel   {t_numba * 1e3:8.2f} ms")
    print(f"refsnn NumPy twin     {t_numpy * 1e3:8.2f} ms   (kernel is {t_numpy / t_numba:.1f}x faster)")
    try:
        import torch
        from spikingjelly.activation_based import neuron, surrogate
    except Exception as exc:  # optional comparison
        print(f"SpikingJelly          not installed ({type(exc).__name__}); skipped")
        return
    torch.set_num_threads(threads or os.cpu_count())
    node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=True,
                          step_mode="m")
    xt = torch.from_numpy(x.reshape(4, 1024, 1024)).requires_grad_(True)
    dst = torch.from_numpy(ds.reshape(4, 1024, 1024))

    def sj_step():
        node.reset()
        xt.grad = None
        out = node(xt)
        out.backward(dst)

    t_sj = timeit(sj_step, repeat=7)
    print(f"SpikingJelly LIFNode  {t_sj * 1e3:8.2f} ms   (multi-step, {torch.get_num_threads()} threads)")
    print(f"ratio SpikingJelly / refsnn = {t_sj / t_numba:.2f}x  (target >= 2)")


def bench_bnlif(batch, names, rounds, clock=time.perf_counter, cold=False):
    """BatchNorm feeding LIF, forward + backward: the fused op against the two ops chained, at
    the shapes of the first Conv-BN-LIF unit of each stage (conv output [T, B, C, H, W]).
    ``cold``: before each timed run, write a 128 MB array (evicting the inputs from the caches,
    as a model's other layers do between a unit's forward and backward)."""
    from refsnn.functional import batchnorm_backward, batchnorm_forward
    from refsnn.functional.bnlif import bn_lif_backward, bn_lif_forward
    print(f"\n== BatchNorm + LIF forward+backward (train mode), batch {batch}, float32 ==")
    print(f"fused and unfused run in turn, {rounds} rounds; fastest run (median in brackets); "
          f"inputs {'cold (caches flushed before each run)' if cold else 'warm'}")
    flush = np.zeros(32 << 20, np.float32) if cold else None

    def before():
        flush[::16] += 1            # one write per cache line
    print(f"{'shape':34s} {'unfused ms':>18s} {'fused ms':>18s} {'fused/unfused':>13s}")
    rng = np.random.default_rng(0)
    for name in names:
        c = config(name)
        for label, N, cin, cout, H in conv_shapes(name, batch)[::2]:
            T, B = c.T, N // c.T
            x = rng.normal(0.5, 1.5, size=(T, B, cout, H, H)).astype(np.float32)
            ds = rng.normal(size=x.shape).astype(np.float32)
            w, b = np.ones(cout, np.float32), np.zeros(cout, np.float32)
            rm, rv = np.zeros(cout, np.float32), np.ones(cout, np.float32)

            def unfused():
                y, bc, _, _ = batchnorm_forward(x.reshape(T * B, cout, -1), w, b, rm, rv, check=False)
                s, lc = lif_forward(y.reshape(x.shape))
                batchnorm_backward(lif_backward(ds, lc, check=False).reshape(T * B, cout, -1), bc,
                                   check=False)

            def fused():
                s, cache, _, _ = bn_lif_forward(x, w, b, rm, rv, check=False)
                bn_lif_backward(ds, cache, check=False)

            (tu, mu), (tf, mf) = _interleaved([unfused, fused], rounds, clock,
                                              before if cold else None)
            shape = f"{name} {cout}x{H}x{H} (T{T} B{B})"
            print(f"{shape:34s} {tu * 1e3:8.2f} ({mu * 1e3:7.2f}) {tf * 1e3:8.2f} ({mf * 1e3:7.2f}) "
                  f"{tf / tu:12.2f}x")


def _interleaved(fns, rounds, clock=time.perf_counter, before=None):
    """Fastest and median time of each function in ``fns``, run in turn ``rounds`` times (after
    one warm-up each), so that load from other processes falls on all of them alike.
    ``before``: called (untimed) before each timed run."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            if before is not None:
                before()
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [(min(ts), float(np.median(ts))) for ts in times]


def _peak(rounds, clock=time.perf_counter):
    """numpy matmul GFLOP/s at 2048^3 from the fastest of ``rounds`` runs."""
    rng = np.random.default_rng(0)
    a, b = rng.random((2048, 2048), dtype=np.float32), rng.random((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    (fast, _), = _interleaved([lambda: np.matmul(a, b, out=out)], rounds, clock)
    return 2 * 2048 ** 3 / fast / 1e9


def bench_conv(batch, names, rounds, clock=time.perf_counter):
    print(f"\n== Conv2d 3x3 pad 1 forward+backward (dx, dW), batch {batch} x T, float32 ==")
    print("refsnn and torch run in turn, {} rounds; times are the fastest run (median in "
          "brackets), ratios of the fastest runs; clock: {}".format(rounds, clock.__name__))
    try:
        import torch
        import torch.nn.functional as tF
    except Exception:
        torch = None
    peak = _peak(rounds, clock)
    print(f"numpy matmul peak (2048^3, fastest of {rounds}, measured now): {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    print("GFLOP/s: the direct convolution's FLOPs over the time (Winograd does fewer multiplies)")
    print(f"{'shape':34s} {'ms':>16s} {'GFLOP/s':>8s} {'% peak':>7s} {'torch ms':>16s} {'refsnn/torch':>12s}  algorithm")
    for name in names:
        for label, N, cin, cout, H in conv_shapes(name, batch):
            x = (rng.random((N, cin, H, H)) < 0.2).astype(np.float32)
            w = rng.normal(0, 0.1, size=(cout, cin, 3, 3)).astype(np.float32)
            dy = rng.normal(size=(N, cout, H, H)).astype(np.float32)

            def step():
                _, cache = conv2d_forward(x, w, None, stride=1, padding=1)
                conv2d_backward(dy, cache)

            fns = [step]
            if torch is not None:
                xt = torch.from_numpy(x).requires_grad_(True)
                wt = torch.from_numpy(w).requires_grad_(True)
                dyt = torch.from_numpy(dy)

                def tstep():
                    xt.grad = None
                    wt.grad = None
                    tF.conv2d(xt, wt, padding=1).backward(dyt)

                fns.append(tstep)
            res = _interleaved(fns, rounds, clock)
            (t, tm) = res[0]
            flops = 3 * 2 * N * cout * cin * 9 * H * H        # forward, dW and dX
            line = (f"{label:34s} {t * 1e3:7.2f} ({tm * 1e3:6.2f}) {flops / t / 1e9:8.1f} "
                    f"{100 * flops / t / 1e9 / peak:6.0f}%")
            if torch is not None:
                tt, ttm = res[1]
                line += f" {tt * 1e3:7.2f} ({ttm * 1e3:6.2f}) {t / tt:12.2f}"
            print(line + "  " + _conv_algorithm(x.shape, w.shape), flush=True)
    print(f"numpy matmul peak again after the table: {_peak(rounds, clock):.0f} GFLOP/s")


def _conv_algorithm(x_shape, w_shape) -> str:
    from refsnn.kernels import winograd as WG
    if WG.winograd_applies(x_shape, w_shape, 1, 1):
        m = WG.tile_size(x_shape)
        return f"Winograd F({m}x{m}, 3x3)"
    return "im2col + GEMM"


def conv1x1_shapes(name: str, batch: int):
    """(label, M, C, N, O) of the 1x1 convolutions over tokens of each stage of the config: the
    attention projections d->d and the SMLP's d->h and h->d (M = batch*T, N tokens)."""
    c = config(name)
    M = batch * c.T
    shapes = []
    for s, (d, n) in enumerate(zip(c.stage_dims, c.stage_tokens), start=1):
        h = int(c.mlp_ratio * d)
        for cin, cout in ((d, d), (d, h), (h, d)):
            shapes.append((f"{name} stage{s} {cin}->{cout} N={n}", M, cin, n, cout))
    return shapes


def bench_conv1x1(batch, names, rounds, threads, clock=time.perf_counter):
    print(f"\n== Conv1x1 over tokens forward+backward (dx, dW, dbias), batch {batch} x T, float32 ==")
    print("refsnn [M, C, N] against torch's F.linear on [M, N, C] (the port's layout), in turn, "
          "{} rounds; fastest run (median in brackets); clock: {}".format(rounds, clock.__name__))
    try:
        import torch
        import torch.nn.functional as tF
        torch.set_num_threads(threads or os.cpu_count())
    except Exception:
        torch = None
    peak = _peak(rounds, clock)
    print(f"numpy matmul peak (2048^3, fastest of {rounds}, measured now): {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    print(f"{'shape':34s} {'ms':>16s} {'GFLOP/s':>8s} {'% peak':>7s} {'torch ms':>16s} {'refsnn/torch':>12s}")
    for name in names:
        for label, M, cin, N, cout in conv1x1_shapes(name, batch):
            x = (rng.random((M, cin, N)) < 0.2).astype(np.float32)
            w = rng.normal(0, 0.1, size=(cout, cin)).astype(np.float32)
            b = rng.normal(0, 0.1, size=cout).astype(np.float32)
            dy = rng.normal(size=(M, cout, N)).astype(np.float32)

            def step():
                _, cache = conv1x1_forward(x, w, b, check=False)
                conv1x1_backward(dy, cache, check=False)

            fns = [step]
            if torch is not None:
                xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).requires_grad_(True)
                wt = torch.from_numpy(w).requires_grad_(True)
                bt = torch.from_numpy(b).requires_grad_(True)
                dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 2, 1)))

                def tstep():
                    xt.grad = wt.grad = bt.grad = None
                    tF.linear(xt, wt, bt).backward(dyt)

                fns.append(tstep)
            res = _interleaved(fns, rounds, clock)
            (t, tm) = res[0]
            flops = 3 * 2 * M * cout * cin * N        # forward, dW and dX
            line = (f"{label:34s} {t * 1e3:7.2f} ({tm * 1e3:6.2f}) {flops / t / 1e9:8.1f} "
                    f"{100 * flops / t / 1e9 / peak:6.0f}%")
            if torch is not None:
                tt, ttm = res[1]
                line += f" {tt * 1e3:7.2f} ({ttm * 1e3:6.2f}) {t / tt:12.2f}"
            print(line, flush=True)
    print(f"numpy matmul peak again after the table: {_peak(rounds, clock):.0f} GFLOP/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="threads for numba, BLAS and torch")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--configs", default="cpu,paper")
    ap.add_argument("--rounds", type=int, default=7, help="conv: runs of refsnn and torch, in turn")
    ap.add_argument("--parts", default="lif,conv", help="which parts to run (lif, conv, bnlif, conv1x1)")
    ap.add_argument("--cold", action="store_true",
                    help="bnlif: flush the caches before each timed run (inputs from memory)")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="conv, conv1x1: 'thread' times the calling thread's CPU time, which other processes "
                         "do not inflate; only with --threads 1 (all work then runs in that thread)")
    args = ap.parse_args()
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread: needs --threads 1 (other threads' work would not be counted)")
    set_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}")
    parts = args.parts.split(",")
    if "lif" in parts:
        bench_lif(args.threads)
    if "conv" in parts:
        bench_conv(args.batch, args.configs.split(","), args.rounds,
                   time.thread_time if args.clock == "thread" else time.perf_counter)
    if "conv1x1" in parts:
        bench_conv1x1(args.batch, args.configs.split(","), args.rounds, args.threads,
                      time.thread_time if args.clock == "thread" else time.perf_counter)
    if "bnlif" in parts:
        bench_bnlif(args.batch, args.configs.split(","), args.rounds,
                    time.thread_time if args.clock == "thread" else time.perf_counter, args.cold)


if __name__ == "__main__":
    main()

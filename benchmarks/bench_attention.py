"""Binary attention benchmark (issue 3): every figure is a ratio measured in this one run.

    python benchmarks/bench_attention.py                 # T=4, B=1, D=256, 8 heads
    python benchmarks/bench_attention.py --quick         # smaller N lists, fewer repeats
    python benchmarks/bench_attention.py --threads 1 --parts 14   # one thread; parts 1 and 4
    python benchmarks/bench_attention.py --parts 5                # issue 13's ratios and GB/s
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_attention.py
    OMP_WAIT_POLICY=active python benchmarks/bench_attention.py    # spinning workers, for comparison (README.md, Threads)

(1) The attention core (sums, attention LIF, mask) on pre-packed uint64 spikes against the
    dense float32 NumPy twin of the same core (refsnn.kernels.qk.qk_*_dense without the
    counting passes), for QKTA and QKCA at N in {256, 1024, 4096, 16384}; then the same with
    packing Q and K from float32 spikes included, and the whole packed functional forward
    (packing, core, unpacking Z to float32).
(2) Wall time of a whole CMQKA module forward + backward (float32, train mode) against N, as
    t(2N) / t(N), beside the Spikformer SSA block's (explicit N x N map).
(3) Peak traced memory (tracemalloc: every NumPy allocation) of one forward + backward of both
    at their largest N.
(4) The packed QKTA kernel's achieved memory bandwidth (bytes read + written / time) against
    np.copyto moving the same number of bytes, measured in the same run.
(5) Issue 13 at the model's shapes [T=4, B=8, D=256, N=4096], 15% spikes: the public
    qk_token_forward / qk_channel_forward from float32 maps, from uint8 maps (as
    ``lif_forward(..., spike_dtype=np.uint8)`` emits them; Z as uint8) and from packed spikes
    (``PackedSpikes`` in each op's layout; Z as float32, and Z packed), against the dense
    NumPy version of the same op (sum per head, LIF, broadcast, multiply); the model's chain
    (the Q and K LIFs and the op, Z float32) with the LIFs emitting float32 maps or packed
    spikes (``lif_forward(..., pack=...)``); pack_bits / unpack_bits of one float32 map in GB/s
    of the float32 map, beside np.copyto; and the floor of a public op from float32 maps: the
    machine's read and write bandwidth (parallel Numba loops over one map; writes into a reused
    buffer and into a fresh one, whose pages are touched first) and the time to read Q and
    write a new float32 Z at those rates, beside the time 5x the dense version allows.

Times are the fastest of the repeats (the machine is shared; see ``timed``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tracemalloc

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import blas_report, machine, set_threads, timed  # noqa: E402
from refsnn.functional.attention import (Z_PACKED, attention_options,  # noqa: E402
                                         qk_channel_forward, qk_channel_layout, qk_token_forward,
                                         qk_token_layout)
from refsnn.functional.lif import _typed_args  # noqa: E402
from refsnn.fusion import CMQKA  # noqa: E402
from refsnn.kernels import qk as K  # noqa: E402
from refsnn.kernels.bitpack import pack_bits, unpack_bits  # noqa: E402
from refsnn.nn.attention import SSAttention  # noqa: E402

T, B, D, HEADS = 4, 1, 256, 8
RATE = 0.15        # firing rate of Q and K: typical of trained spiking transformers (10-20%)


def rng_of(seed):
    return np.random.Generator(np.random.PCG64(seed))


def timeit(fn, repeat):
    """Fastest of ``repeat`` runs: the ratios here use the code's cost, not the load's."""
    return timed(fn, repeat)[0]


def spikes(rng, N):
    return (rng.random((T, B, D, N)) < RATE).astype(np.float32)


def pack_token(x):
    d = D // HEADS
    N = x.shape[-1]
    return pack_bits(x.reshape(T, B, HEADS, d, N), axis=3).reshape(T, B * HEADS, -1, N)


def pack_channel(x):
    return pack_bits(x, axis=3).reshape(T, B * D, -1)


def bench_core(Ns, repeat):
    print(f"\n== (1) attention core, T={T} B={B} D={D} heads={HEADS}, firing rate {RATE}, float32 ==")
    lif = _typed_args(attention_options(None), np.float32)
    print(f"{'mode':8}{'N':>7}{'dense ms':>11}{'packed ms':>11}{'speedup':>9}"
          f"{'+pack ms':>10}{'speedup':>9}{'functional ms':>15}{'speedup':>9}")
    rows = []
    for mode in ("token", "channel"):
        for N in Ns:
            rng = rng_of(N)
            q, k = spikes(rng, N), spikes(rng, N)
            if mode == "token":
                qw, kw = pack_token(q), pack_token(k)
                t_dense = timeit(lambda: K.qk_token_dense(q, k, HEADS, lif, count=False), repeat)
                t_core = timeit(lambda: K.qk_token_packed(qw, kw, lif), repeat)
                t_pack = timeit(lambda: K.qk_token_packed(pack_token(q), pack_token(k), lif), repeat)
                t_fun = timeit(lambda: qk_token_forward(q, k, HEADS), repeat)
            else:
                qw, kw = pack_channel(q), pack_channel(k)
                t_dense = timeit(lambda: K.qk_channel_dense(q, k, lif, count=False), repeat)
                t_core = timeit(lambda: K.qk_channel_packed(qw, kw, lif), repeat)
                t_pack = timeit(lambda: K.qk_channel_packed(pack_channel(q), pack_channel(k), lif), repeat)
                t_fun = timeit(lambda: qk_channel_forward(q, k), repeat)
            rows.append((mode, N, t_dense, t_core))
            print(f"{mode:8}{N:>7}{t_dense * 1e3:>11.3f}{t_core * 1e3:>11.3f}{t_dense / t_core:>8.1f}x"
                  f"{t_pack * 1e3:>10.3f}{t_dense / t_pack:>8.1f}x{t_fun * 1e3:>15.3f}{t_dense / t_fun:>8.1f}x")
    return rows


def bench_bandwidth(N, repeat):
    print(f"\n== (4) packed QKTA kernel bandwidth at N={N} ==")
    rng = rng_of(7)
    lif = _typed_args(attention_options(None), np.float32)
    qw, kw = pack_token(spikes(rng, N)), pack_token(spikes(rng, N))
    zw, a, h, _, _ = K.qk_token_packed(qw, kw, lif)
    moved = qw.nbytes + kw.nbytes + zw.nbytes + a.nbytes + h.nbytes      # read + written
    t_kernel = timeit(lambda: K.qk_token_packed(qw, kw, lif), repeat)
    # a copy of S bytes reads S and writes S: copy half the kernel's traffic
    src = np.ones(moved // 2, dtype=np.uint8)
    dst = np.empty_like(src)
    t_copy = timeit(lambda: np.copyto(dst, src), repeat)
    gbs_kernel = moved / t_kernel / 1e9
    gbs_copy = 2 * src.nbytes / t_copy / 1e9
    print(f"kernel: {moved / 1e6:.2f} MB in {t_kernel * 1e3:.3f} ms = {gbs_kernel:.1f} GB/s "
          f"(allocation of its outputs included)")
    print(f"np.copyto of {src.nbytes / 1e6:.2f} MB (read + write {2 * src.nbytes / 1e6:.2f} MB): "
          f"{t_copy * 1e3:.3f} ms = {gbs_copy:.1f} GB/s")
    print(f"kernel / copy bandwidth: {gbs_kernel / gbs_copy:.2f}")


def bench_model_shapes(repeat):
    """(5): issue 13's acceptance figures, every time the fastest of ``repeat`` interleaved runs."""
    T5, B5, D5, N5 = 4, 8, 256, 4096
    print(f"\n== (5) public Q-K ops at [T={T5}, B={B5}, D={D5}, N={N5}], {HEADS} heads, rate {RATE} ==")
    rng = rng_of(13)
    q, k = ((rng.random((T5, B5, D5, N5)) < RATE).astype(np.float32) for _ in range(2))
    # the model's own representation: spikes as a LIF emits them for a binary consumer
    from refsnn.functional.lif import lif_forward
    q8 = lif_forward(q.astype(np.float32) * 2, spike_dtype=np.uint8)[0]
    k8 = lif_forward(k.astype(np.float32) * 2, spike_dtype=np.uint8)[0]
    assert np.array_equal(q8, q) and np.array_equal(k8, k)      # input 2 fires, 0 does not
    lif = _typed_args(attention_options(None), np.float32)
    d = D5 // HEADS
    q5 = q.reshape(T5, B5, HEADS, d, N5)
    words = pack_bits(q5, axis=3)
    qt, kt = qk_token_layout(q, HEADS), qk_token_layout(k, HEADS)
    qc, kc = qk_channel_layout(q), qk_channel_layout(k)
    src = np.ones(q.nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    # the model's chain: the Q and K LIFs (currents at about 15% firing) and the op, with the
    # LIFs emitting float32 maps, or packed spikes in the op's layout (Z float32 in both)
    xq, xk = (rng.normal(size=q.shape).astype(np.float32) * np.float32(1.9) for _ in range(2))

    def chain(mode, packed):
        pack = ((2, d) if mode == "token" else 3) if packed else None
        qs, ks = lif_forward(xq, pack=pack)[0], lif_forward(xk, pack=pack)[0]
        return qk_token_forward(qs, ks, HEADS) if mode == "token" else qk_channel_forward(qs, ks)

    runs = {
        "token dense NumPy": lambda: K.qk_token_dense(q, k, HEADS, lif, count=False),
        "token from float32": lambda: qk_token_forward(q, k, HEADS),
        "token from uint8": lambda: qk_token_forward(q8, k8, HEADS, z_dtype=np.uint8),
        "token from packed": lambda: qk_token_forward(qt, kt, HEADS),
        "token packed, Z packed": lambda: qk_token_forward(qt, kt, HEADS, z_dtype=Z_PACKED),
        "channel dense NumPy": lambda: K.qk_channel_dense(q, k, lif, count=False),
        "channel from float32": lambda: qk_channel_forward(q, k),
        "channel from uint8": lambda: qk_channel_forward(q8, k8, z_dtype=np.uint8),
        "channel from packed": lambda: qk_channel_forward(qc, kc),
        "channel packed, Z packed": lambda: qk_channel_forward(qc, kc, z_dtype=Z_PACKED),
        "token chain, LIF float32": lambda: chain("token", False),
        "token chain, LIF packed": lambda: chain("token", True),
        "channel chain, LIF float32": lambda: chain("channel", False),
        "channel chain, LIF packed": lambda: chain("channel", True),
        "pack_bits": lambda: pack_bits(q5, axis=3),
        "unpack_bits": lambda: unpack_bits(words, d, axis=3, dtype=np.float32),
        "np.copyto": lambda: np.copyto(dst, src),
    }
    for fn in runs.values():
        fn()                                    # compile and warm up
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):                     # interleaved: the load hits all alike
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, 1, warmup=0)[0])
    for name, t in best.items():
        print(f"{name:26}{t * 1e3:9.2f} ms")
    for mode in ("token", "channel"):
        dense = best[f"{mode} dense NumPy"]
        print(f"{mode}: from float32 {dense / best[f'{mode} from float32']:.2f}x the dense version "
              f"(target >= 5); from uint8 {dense / best[f'{mode} from uint8']:.2f}x, from packed "
              f"{dense / best[f'{mode} from packed']:.2f}x (Z float32), "
              f"{dense / best[f'{mode} packed, Z packed']:.2f}x (Z packed) (target >= 10)")
    for mode in ("token", "channel"):
        print(f"{mode} chain (Q, K LIFs + op, Z float32): LIFs emitting packed spikes "
              f"{best[f'{mode} chain, LIF float32'] / best[f'{mode} chain, LIF packed']:.2f}x "
              f"the chain with float32 maps")
    gb = q.nbytes / 1e9
    print(f"pack_bits {gb / best['pack_bits']:.1f} GB/s, unpack_bits {gb / best['unpack_bits']:.1f} GB/s "
          f"of float32 map (target >= 8); np.copyto {2 * gb / best['np.copyto']:.1f} GB/s read + write")
    mask = K.qk_token_dense(q, k, HEADS, lif, count=False)[1]            # [T, B, heads, N]
    _memory_floor(q, repeat, best["token dense NumPy"], float(np.mean(mask != 0)))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _read_all(a):
    total = 0.0
    for i in numba.prange(a.size):
        total += a[i]
    return total


@numba.njit(parallel=True, cache=True)
def _write_all(a, value):
    for i in numba.prange(a.size):
        a[i] = value


def _memory_floor(q, repeat, dense_token, kept):
    """Read / write bandwidth over one map like q, and the floor they set on an op that reads
    q (and k where the mask keeps a token: the fraction ``kept``) and returns a new float32
    map of q's size."""
    flat = q.reshape(-1)
    out = np.empty_like(flat)
    _read_all(flat)
    _write_all(out, np.float32(1))
    read = min(timed(lambda: _read_all(flat), 1, warmup=0)[0] for _ in range(repeat))
    write = min(timed(lambda: _write_all(out, np.float32(2)), 1, warmup=0)[0] for _ in range(repeat))
    fresh = min(timed(lambda: _write_all(np.empty_like(flat), np.float32(2)), 1, warmup=0)[0]
                for _ in range(repeat))
    gb = q.nbytes / 1e9
    print(f"memory: read {gb / read:.1f} GB/s, write {gb / write:.1f} GB/s (reused buffer), "
          f"{gb / fresh:.1f} GB/s (fresh buffer)")
    print(f"floor of the public token op from float32 maps: read Q, write a new float32 Z "
          f"{(read + fresh) * 1e3:.1f} ms; and read K where the mask keeps the token ({kept:.1%} of "
          f"them) {(read * (1 + kept) + fresh) * 1e3:.1f} ms; 5x the dense token op is "
          f"{dense_token / 5 * 1e3:.1f} ms")


def _fwd_bwd_cmqka(N, mask):
    rng = rng_of(N + 1)
    m = CMQKA(D, HEADS, mask=mask, rng=rng_of(0))
    x_a = spikes(rng, N) + spikes(rng, N)
    x_v = spikes(rng, N) + spikes(rng, N)
    dy_a, dy_v = rng.normal(size=x_a.shape).astype(np.float32), rng.normal(size=x_a.shape).astype(np.float32)

    def step():
        m.forward(x_a, x_v)
        m.backward(dy_a, dy_v)
    return step


def _fwd_bwd_ssa(N):
    rng = rng_of(N + 2)
    m = SSAttention(D, HEADS, rng=rng_of(0))
    x = spikes(rng, N) + spikes(rng, N)
    dy = rng.normal(size=x.shape).astype(np.float32)

    def step():
        m.forward(x)
        m.backward(dy)
    return step


def bench_scaling(cm_Ns, ssa_Ns, repeat):
    print(f"\n== (2) module forward + backward, T={T} B={B} D={D} heads={HEADS}, float32 "
          f"(fastest / median of {max(2, repeat // 2)}) ==")
    results = {}
    for label, Ns, make in (("CMQKA token", cm_Ns, lambda N: _fwd_bwd_cmqka(N, "token")),
                            ("CMQKA channel", cm_Ns, lambda N: _fwd_bwd_cmqka(N, "channel")),
                            ("SSA block", ssa_Ns, _fwd_bwd_ssa)):
        times = [timed(make(N), repeat=max(2, repeat // 2)) for N in Ns]
        results[label] = (Ns, times)
        line = ", ".join(f"N={N}: {t * 1e3:.0f} / {m * 1e3:.0f} ms" for N, (t, m) in zip(Ns, times))
        ratios = ", ".join(f"t({2 * a})/t({a}) = {tb[0] / ta[0]:.2f}"
                           for a, ta, tb in zip(Ns, times, times[1:]))
        # one noisy step can hide the trend: the growth per doubling over the whole range
        per_doubling = (times[-1][0] / times[0][0]) ** (1 / (len(Ns) - 1))
        print(f"{label:14} {line}\n{'':14} {ratios}\n{'':14} over N={Ns[0]}..{Ns[-1]}: "
              f"x{per_doubling:.2f} per doubling")
    return results


def bench_memory(cm_N, ssa_N):
    print("\n== (3) peak traced memory of one forward + backward (tracemalloc) ==")
    for label, step in ((f"CMQKA token  N={cm_N}", _fwd_bwd_cmqka(cm_N, "token")),
                        (f"CMQKA channel N={cm_N}", _fwd_bwd_cmqka(cm_N, "channel")),
                        (f"SSA block    N={ssa_N}", _fwd_bwd_ssa(ssa_N))):
        step()          # compile and warm up outside the measurement
        tracemalloc.start()
        tracemalloc.reset_peak()
        step()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        one_map = T * B * D * int(label.split("N=")[1]) * 4
        print(f"{label}: {peak / 2**20:8.1f} MiB  ({peak / one_map:.1f} x one [T,B,D,N] float32 map)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller N lists and fewer repeats")
    ap.add_argument("--threads", type=int, default=None, help="numba and BLAS threads")
    ap.add_argument("--parts", default="12345", help="which measurements to run, e.g. 14")
    args = ap.parse_args()
    set_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}")
    print(f"numba {numba.__version__}: {numba.get_num_threads()} threads, threading layer "
          f"{numba.config.THREADING_LAYER!r}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if args.quick:
        core_Ns, cm_Ns, ssa_Ns, repeat = [256, 1024, 4096], [1024, 2048, 4096], [512, 1024], 5
    else:
        core_Ns, cm_Ns, ssa_Ns, repeat = [256, 1024, 4096, 16384], [1024, 2048, 4096, 8192, 16384], \
            [512, 1024, 2048, 4096], 11
    if "1" in args.parts:
        bench_core(core_Ns, repeat)
    if "4" in args.parts:
        bench_bandwidth(core_Ns[-1], repeat)
    if "2" in args.parts:
        bench_scaling(cm_Ns, ssa_Ns, repeat)
    if "3" in args.parts:
        bench_memory(cm_Ns[-1], ssa_Ns[-1])
    if "5" in args.parts:
        bench_model_shapes(repeat)
    print(f"\nthreading layer that ran: {numba.threading_layer()}")


if __name__ == "__main__":
    main()

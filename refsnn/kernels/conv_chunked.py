"""Convolution as im2col + GEMM over chunks of samples, one chunk per thread.

A convolution of ``x [N, C, H, W]`` with ``w [O, C, KH, KW]`` runs chunk by chunk: the samples
``n0:n1`` of a chunk are unrolled into ``cols [C*KH*KW, (n1-n0)*P]`` (``P = Ho*Wo``) and
multiplied by the weight with a single-threaded BLAS call; the chunks are spread over as many
Python threads as BLAS has threads (the im2col kernels and numpy's GEMM release the GIL).

Why not one big multi-threaded GEMM over all samples (refsnn up to issue 13): on a machine
shared with other processes, OpenBLAS's threads wait for each other at every block of a GEMM,
and a descheduled thread stalls the other; chunks handed out one at a time keep both cores busy
whatever the load (measured here at load ~6: 3-36x slower than torch before, 0.7-2.7x after).
It also needs no ``[K, N*P]`` matrix for the whole batch (56 MB at the `paper` stage 2), no
transpose of the output for chunks of one sample (``y[n] = w @ cols`` is already NCHW), and
the chunk's matrix stays in cache between the im2col and the GEMM.

The 3x3 stride-1 'same' convolutions with many channels go to ``refsnn.kernels.winograd`` (the
same chunks and pool, fewer multiplies).

A 1x1 convolution over tokens (``x [M, C, N]``, ``w [O, C]``; ``conv1x1_chunked_*``) runs the
same way without im2col: one GEMM per sample, the weight gradient accumulated in place per
chunk. Before (numpy's stacked matmul over all samples with 2-thread OpenBLAS, then a sum of
``[M, O, C]`` per-sample products) the backward ran at ~85 GFLOP/s on two cores, about the
speed of one core: OpenBLAS splits each small per-sample GEMM over both threads.

The chunking depends on the shape only (never on the thread count), and the per-chunk weight
gradients are summed in chunk order, so results are the same with any number of threads.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import im2col as _k
from . import winograd as _wg

__all__ = ["conv2d_prepare", "one_blas_thread", "conv2d_chunked_forward", "conv2d_chunked_backward",
           "conv1x1_chunked_forward", "conv1x1_chunked_backward", "chunk_bounds", "CHUNK_MIN_COLUMNS", "MIN_CHUNKS",
           "CONV1X1_CHUNK_MIN_MACS", "CONV2D_POOL_MIN_MACS"]

# a chunk holds whole samples and at least this many output positions (GEMM columns), so that
# one GEMM per chunk runs near the single-thread BLAS peak, and the per-chunk calls cost little
# (measured in bench_engine.py; 1024 rather than 512: the `cpu` shapes 5-15% faster, 2026-11-29)
CHUNK_MIN_COLUMNS = 1024
# ...but the batch is cut into at least this many chunks when it has the samples, so that two
# threads (or more) always have work to share
MIN_CHUNKS = 4


def chunk_bounds(N: int, P: int) -> list[tuple[int, int]]:
    """``[(n0, n1), ...]``: consecutive chunks of the N samples (P output positions each).
    Also the `tiny` convolutions (0.6-1.2 M multiply-accumulates) run in chunks: as one chunk
    on the calling thread, each call alone was 1.4-3.8x faster, but the `tiny` training step
    1.47x slower (bench_against.py, 7 rounds)."""
    per_chunk = max(1, min(-(-CHUNK_MIN_COLUMNS // P), -(-N // MIN_CHUNKS)))
    return [(a, min(N, a + per_chunk)) for a in range(0, N, per_chunk)]


_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0
_blas = None
_blas_scipy = None


def _blas_libraries(with_scipy: bool = False):
    """threadpoolctl's controllers of numpy's BLAS, and of scipy's (its own OpenBLAS, which the
    1x1 convolution's in-place GEMM uses; imported then, ~0.3 s) with ``with_scipy``; cached.
    scipy's is listed, loaded and set only for the ops that call it, so that the other
    convolutions do exactly what they did before it was used."""
    global _blas, _blas_scipy
    if with_scipy:
        if _blas_scipy is None:
            from scipy.linalg import blas  # noqa: F401  (loaded before the listing)
            _blas_scipy = _list_blas(lambda path: "scipy" in path and "numpy" not in path)
        return _blas_libraries() + _blas_scipy
    if _blas is None:
        _blas = _list_blas(lambda path: "numpy" in path) or _list_blas(lambda path: True)[:1]
    return _blas


def _list_blas(keep):
    """Controllers of the loaded BLAS libraries whose folder name passes ``keep``."""
    from threadpoolctl import ThreadpoolController
    return [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and keep(os.path.basename(os.path.dirname(lib.filepath)))]


# Below this many multiply-accumulates a convolution's chunks all run on the calling thread
# (BLAS with its own threads): handing chunks to the pool's threads costs more than it saves
# there (idle machine, `tiny` step 38-42 ms with the pool, 28 ms without; `cpu` shapes, all
# above it, 8-10% faster with the pool)
CONV2D_POOL_MIN_MACS = 1 << 24


def _run_chunks(count: int, task, scipy_blas: bool = False, pool: bool = True) -> None:
    """``task(i)`` for i in range(count), over as many threads as numpy's BLAS has (this one
    included), each thread's BLAS calls single-threaded; a thread takes the next chunk when it
    has finished one. With one BLAS thread (or one chunk) everything runs here, BLAS with
    numpy's thread count. ``scipy_blas``: the tasks call scipy's BLAS too, which is then set like
    numpy's (it may have been loaded after the caller limited the threads). ``pool=False``: every
chunk here, as with one BLAS thread."""
    libs = _blas_libraries(scipy_blas)
    threads = libs[0].num_threads if libs else 1
    workers = min(count, threads) if pool else 1
    with _blas_threads(libs, 1 if workers > 1 else threads):
        if workers <= 1:
            for i in range(count):
                task(i)
        else:
            _run_on_pool(count, task, workers)


@contextlib.contextmanager
def _blas_threads(libs, n: int):
    """The BLAS libraries ``libs`` (threadpoolctl controllers) on n threads for the body; each
    one changed is restored after it."""
    changed = [(lib, lib.num_threads) for lib in libs if lib.num_threads != n]
    for lib, _ in changed:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


def _run_on_pool(count: int, task, workers: int) -> None:
    """``task(i)`` for i in range(count) on this thread and ``workers - 1`` pool threads."""
    global _pool, _pool_size, _pool_pid
    with _lock:
        # a forked child inherits the pool object but not its threads: make a new one there
        if _pool is None or _pool_size < workers - 1 or _pool_pid != os.getpid():
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="refsnn-conv")
            _pool_size = workers - 1
            _pool_pid = os.getpid()
        pool = _pool
    next_chunk = itertools.count()      # next() on it is atomic under the GIL
    failed = []

    def drain():
        for i in iter(next_chunk.__next__, None):
            if i >= count or failed:
                return
            try:
                task(i)
            except BaseException as exc:    # stop the others early; re-raised below
                failed.append(exc)
                raise

    helpers = [pool.submit(drain) for _ in range(workers - 1)]
    try:
        drain()
    finally:
        for h in helpers:
            h.exception()               # waits; the first failure is raised below
    if failed:
        raise failed[0]


def one_blas_thread(fn, *args):
    """``fn(*args)`` with numpy's BLAS on one thread. A small GEMM on two threads wakes
    OpenBLAS's second thread, which then spins until its timeout (about 0.1 s), taking a core
    from the ops that follow: with the Winograd weight transforms (GEMMs of 36 x 9 x C O) run
    that way a `paper` training step took 1.3x as long, every op kind alike."""
    with _blas_threads(_blas_libraries(), 1):
        return fn(*args)


def conv2d_prepare(x_shape, weight, stride, padding):
    """What the forward and the backward of this convolution share: on the Winograd path
    (``refsnn.kernels.winograd``) a ``winograd.Prepared`` holding the transformed weight, to
    which the forward adds its input transforms; None on im2col's."""
    if _wg.winograd_applies(x_shape, weight.shape, stride, padding):
        return _wg.Prepared(one_blas_thread(_wg.weight_transform, weight, _wg.tile_size(x_shape)))
    return None


def conv2d_chunked_forward(x, weight, bias, stride, padding, prepared=None):
    """y ``[N, O, Ho, Wo]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, KH, KW]``) + bias ``[O]``
    (or None); x and weight of one float dtype, shapes already checked by the caller.
    ``prepared``: ``conv2d_prepare``'s result for this weight, if the caller has it.

    3x3 stride-1 convolutions with enough channels and work run by Winograd's F(4x4, 3x3) or
    F(2x2, 3x3) (``winograd.winograd_applies``, ``winograd.tile_size``), the others by im2col +
    GEMM."""
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    Ho, Wo = _k.conv_out_size(H, KH, stride, padding), _k.conv_out_size(W, KW, stride, padding)
    P, K = Ho * Wo, C * KH * KW
    pool = N * P * O * K >= CONV2D_POOL_MIN_MACS
    if _wg.winograd_applies(x.shape, weight.shape, stride, padding):
        return _wg.winograd_forward(x, weight, bias, lambda count, task: _run_chunks(count, task, pool=pool),
                                    prepared=prepared)
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(weight).reshape(O, K)
    y = np.empty((N, O, P), dtype=x.dtype)
    bounds = chunk_bounds(N, P)

    def task(i):
        n0, n1 = bounds[i]
        cols = _k.im2col(x, KH, KW, stride, padding, n0=n0, n1=n1)
        if n1 - n0 == 1:
            np.matmul(w2, cols, out=y[n0])
            if bias is not None:
                y[n0] += bias[:, None]
        else:
            _k.cm_to_nchw(w2 @ cols, N, bias, out=y, n0=n0)

    _run_chunks(len(bounds), task, pool=pool)
    return y.reshape(N, O, Ho, Wo)


def conv2d_chunked_backward(dy, x, weight, stride, padding, need_dx=True, prepared=None):
    """``(dx, dweight)`` of ``conv2d_chunked_forward`` for the upstream gradient dy
    ``[N, O, Ho, Wo]`` (x's dtype); dx is None with ``need_dx=False``."""
    N, C, H, W = x.shape
    O, _, KH, KW = weight.shape
    Ho, Wo = _k.conv_out_size(H, KH, stride, padding), _k.conv_out_size(W, KW, stride, padding)
    P, K = Ho * Wo, C * KH * KW
    pool = N * P * O * K >= CONV2D_POOL_MIN_MACS
    if _wg.winograd_applies(x.shape, weight.shape, stride, padding):
        return _wg.winograd_backward(dy, x, weight, need_dx,
                                     lambda count, task: _run_chunks(count, task, pool=pool), prepared=prepared,
                                     serial=one_blas_thread)
    x = np.ascontiguousarray(x)
    dy3 = np.ascontiguousarray(dy).reshape(N, O, P)
    w2t = np.ascontiguousarray(weight.reshape(O, K).T)
    bounds = chunk_bounds(N, P)
    dwt_parts = np.empty((len(bounds), K, O), dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None

    def task(i):
        n0, n1 = bounds[i]
        # recomputing cols is cheaper than holding a KH*KW-times copy of every input between
        # passes; the chunk's matrix is reused for the input gradient's columns
        cols = _k.im2col(x, KH, KW, stride, padding, n0=n0, n1=n1)
        dy_chunk = dy3[n0] if n1 - n0 == 1 else _k.nchw_to_cm(dy3, n0=n0, n1=n1)
        # dW^T = cols @ dy^T: 10-25% faster in OpenBLAS than dy @ cols^T at these shapes
        np.matmul(cols, dy_chunk.T, out=dwt_parts[i])
        if need_dx:
            np.matmul(w2t, dy_chunk, out=cols)
            _k.col2im(cols, x.shape, KH, KW, stride, padding, out=dx, n0=n0, n1=n1)

    _run_chunks(len(bounds), task, pool=pool)
    dweight_t = np.add.reduce(dwt_parts, axis=0)     # in chunk order: the same for any thread count
    return dx, np.ascontiguousarray(dweight_t.T).reshape(weight.shape)


# ---------------------------------------------------------------- 1x1 convolution over tokens

# a 1x1 convolution of fewer multiply-accumulates (M*C*N*O) than this runs as numpy's stacked
# matmul instead (``refsnn.functional.conv1x1_forward`` decides): there the thread hand-off and
# the per-sample calls cost more than they save (the `tiny` and `cpu` shapes, 0.3-4 M, ran
# 1.2-9x slower chunked; the `paper` ones, 19-150 M, gain); measured with bench_engine.py
CONV1X1_CHUNK_MIN_MACS = 1 << 24

def _gemm(dtype):
    """BLAS ``?gemm`` of scipy for ``dtype`` (float32 or float64): C = alpha op(A) op(B) + beta C
    with C updated in place, which numpy's matmul cannot do."""
    from scipy.linalg import blas
    return blas.get_blas_funcs("gemm", dtype=dtype)


def conv1x1_chunked_forward(x, weight, bias):
    """y ``[M, O, N]`` = weight ``[O, C]`` @ x[m] (+ bias ``[O]``, or None) for every sample of
    x ``[M, C, N]`` (one float dtype, shapes checked by the caller).

    One GEMM per sample (``[O, C] @ [C, N]``, already ``[O, N]``: no transposes), the samples
    cut into chunks (``chunk_bounds``) spread over the threads with single-threaded BLAS; the
    bias is added to a chunk while it is in cache."""
    M, C, N = x.shape
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(weight)
    y = np.empty((M, w.shape[0], N), dtype=x.dtype)
    bounds = chunk_bounds(M, N)

    def task(i):
        m0, m1 = bounds[i]
        np.matmul(w, x[m0:m1], out=y[m0:m1])
        if bias is not None:
            y[m0:m1] += bias[:, None]

    _run_chunks(len(bounds), task)
    return y


def conv1x1_chunked_backward(dy, x, weight, need_bias=False):
    """``(dx, dweight, dbias)`` of ``conv1x1_chunked_forward`` for dy ``[M, O, N]`` (x's dtype);
    dbias is None unless ``need_bias``.

    Per chunk of samples: ``dx[m] = weightᵀ @ dy[m]``, and the chunk's weight gradient
    ``sum_m dy[m] @ x[m]ᵀ`` accumulated in place by BLAS (``beta = 1``: no ``[M, O, C]``
    temporary to sum afterwards, and no transposed copies of x and dy). The chunks' weight and
    bias gradients are then summed in chunk order: the same bytes for any thread count."""
    M, C, N = x.shape
    O = weight.shape[0]
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy)
    wt = np.ascontiguousarray(weight.T)
    gemm = _gemm(x.dtype)
    bounds = chunk_bounds(M, N)
    dx = np.empty_like(x)
    # part i is the chunk's dWᵀ [C, O] in Fortran order, i.e. its dW [O, C] in C order
    dw_parts = np.zeros((len(bounds), O, C), dtype=x.dtype)
    db_parts = np.empty((len(bounds), O), dtype=x.dtype) if need_bias else None
    ones = np.ones(N, dtype=x.dtype)

    def task(i):
        m0, m1 = bounds[i]
        np.matmul(wt, dy[m0:m1], out=dx[m0:m1])
        acc = dw_parts[i].T
        for m in range(m0, m1):
            # Fortran views: x[m].T is [N, C], dy[m].T is [N, O]; acc += (x[m].T)ᵀ @ dy[m].T
            acc = gemm(1.0, x[m].T, dy[m].T, beta=1.0, c=acc, trans_a=1, overwrite_c=1)
        if not np.shares_memory(acc, dw_parts[i]):
            dw_parts[i] = acc.T         # scipy copied (it does not with these layouts)
        if need_bias:
            # a matrix-vector product with ones: one pass over the chunk at BLAS speed, where
            # numpy's two-axis sum makes two
            np.add.reduce(np.matmul(dy[m0:m1], ones), axis=0, out=db_parts[i])

    _run_chunks(len(bounds), task, scipy_blas=True)
    dweight = np.add.reduce(dw_parts, axis=0)       # in chunk order
    dbias = np.add.reduce(db_parts, axis=0) if need_bias else None
    return dx, dweight, dbias

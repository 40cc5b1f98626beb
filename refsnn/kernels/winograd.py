"""3x3 stride-1 'same' convolution by Winograd's minimal filtering F(m x m, 3x3), m = 2 or 4
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), forward and
backward, over chunks of samples, channels last (Numba kernels with NumPy twins).

Each m x m block of outputs is computed from the a x a block (a = m + 2) of zero-padded input
around it: ``y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` per channel pair, summed over input channels.
With the transformed weights ``Ut [a², C, O]`` and the transformed input tiles
``V [a², tiles, C]`` the sum over channels is a² GEMMs ``M[k] = V[k] @ Ut[k]``: a² multiplies
per m² outputs where the direct convolution (im2col + GEMM) needs 9 m², so the GEMMs do 2.25x
(m = 2) or 4x (m = 4) fewer multiply-accumulates. At the `paper` stage shapes im2col's one GEMM
already ran near the BLAS peak and PyTorch's oneDNN was still 1.1-1.6x faster
(benchmarks/README.md): fewer multiplies is what is left.

The backward is the exact adjoint of that computation (every transform is linear):
``dM = A dY Aᵀ`` per output tile, ``dUt[k] = V[k]ᵀ @ dM[k]`` (then ``dg = Gᵀ dU G``) and
``dV[k] = dM[k] @ Ut[k]ᵀ`` (then ``dd = B dV Bᵀ``, added into the overlapping input windows).
In exact arithmetic all three equal the direct convolution's; in floating point they differ by
rounding: F(2x2, 3x3)'s coefficients are 0, ±1 and ±1/2 (float32 results within ~5e-7 of
im2col's, relative to the largest value), F(4x4, 3x3)'s go from 1/24 to 8 (~5e-6).

The tiles are transformed channels last: the transform kernels copy each sample of the NCHW
map to ``[h, w, c]`` with a zero border, in a buffer that stays in cache, so that each
transform is straight-line arithmetic vectorised over the channels (24-192 of them at the
`paper` shapes; ``refsnn.runtime.allow_vector_memory_checks`` lets LLVM vectorise those
loops); the output kernels write NCHW back the same way. Where the channels are few, B tiles
of a row go through the formulas together (``tiles_per_block``). The forward keeps its input
transforms V for the backward's weight gradient (``Prepared``; 2.25x (m = 4) to 4x (m = 2)
x's size while the layer's cache lives). The formulas and the kernels that run them
are generated from the matrices (``refsnn.kernels.winograd_codegen`` ->
``winograd_formulas.py``); the NumPy twins here run the same formulas' Python code on arrays.
The weights' transform and its adjoint are one GEMM each with G ⊗ G (``weight_transform``).
Tiles are numbered ``(n - n0, ti, tj)`` within a chunk; tile (ti, tj) produces outputs
``[m ti, m ti + m) x [m tj, m tj + m)`` from the padded input's ``[m ti, m ti + a) x
[m tj, m tj + a)``; sizes that are not multiples of m get a last tile cut at the border. The
kernels are serial and release the GIL; ``refsnn.kernels.conv_chunked``'s pool runs one chunk
per thread, and the weight gradient is summed over chunks in chunk order, so results are the
same for any thread count.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from . import winograd_formulas as _f
from .winograd_codegen import MATRICES

__all__ = ["winograd_applies", "tile_size", "winograd_forward", "winograd_backward", "matrices",
           "weight_transform", "weight_transform_adjoint",
           "input_transform", "output_transform", "grad_output_transform", "input_grad_transform",
           "to_tiles_layout_numpy", "from_tiles_layout_numpy", "input_transform_numpy", "output_transform_numpy",
           "grad_output_transform_numpy", "input_grad_transform_numpy", "stack_of",
           "winograd_chunk_bounds", "tiles_of", "WINOGRAD_MIN_CHANNELS", "WINOGRAD_MIN_MACS",
           "F4_MIN_SIZE", "CHUNK_MIN_TILES", "CHANNEL_BLOCK", "padded_channels", "Prepared",
           "tiles_per_block", "BLOCK_VALUES"]

# Where it applies (``winograd_applies``) and with which tiles (``tile_size``), measured with
# bench_engine.py --parts conv and at each stage shape alone (2 threads, idle, 2026-11-29, with
# the transforms reading NCHW, kept for the backward and blocked over tiles). From 8 channels:
# fewer make the GEMMs (K = C, or O columns) too skinny. From 2^27 multiply-accumulates (every
# `paper` stage convolution; no `cpu` or `tiny` one): the `cpu` shapes ran in 0.56-0.85x
# im2col's time by F(4x4) (0.64-0.92x torch's), but its four kernels take 11 CPU s to compile,
# and on a fresh clone the default `python -m refsnn.train` (the `cpu` preset) then showed its
# first progress after 27 s instead of 19 (issue 13 asks for 20), for a training step no faster
# (182 against 177 ms: the `cpu` convolutions are 2-5 ms each). The `tiny` shapes gain a few
# hundredths of a millisecond at most, or lose (4->8 @16: 1.8x im2col's time).
WINOGRAD_MIN_CHANNELS = 8
WINOGRAD_MIN_MACS = 1 << 27
# F(4x4, 3x3) from this height and width on, F(2x2, 3x3) below. At 8x8 (4 tiles per sample)
# F(4x4) took 0.9-1.0x F(2x2)'s time (32->32, 192->192), at 4x4 (one tile) 1.1x (64->64: 0.67-0.70x
# torch's time against 0.58-0.66x): kept from 4 on, so that a model compiles one set of
# kernels (F(2x2)'s take another 6 CPU s)
F4_MIN_SIZE = 4
# a chunk holds whole samples and at least this many tiles (the GEMMs' rows) when the batch
# allows it, and the batch is cut into at least MIN_CHUNKS chunks when it has the samples: one
# per core of the machine, 2 to 4. Not per thread: the chunks fix the order of the weight
# gradient's sum, which must not change with the thread count. On 2 cores 2 chunks beat 4
# where the maps are small (bench_engine.py, `paper` 192->192 @8 0.85x torch's time against
# 0.97x, 96->96 @16 0.65-0.69x against 0.73x: GEMMs of 256 rows instead of 128).
CHUNK_MIN_TILES = 512
MIN_CHUNKS = min(4, max(2, os.cpu_count() or 2))
# the channels of the tile layouts are padded to a multiple of this (``padded_channels``)
CHANNEL_BLOCK = 8
# the transforms run up to this many values per formula loop, tiles side by side
# (``tiles_per_block``)
BLOCK_VALUES = 64


def matrices(m: int):
    """(Bᵀ, G, Aᵀ) of F(m x m, 3x3) as float64 arrays."""
    return tuple(np.array([[float(v) for v in row] for row in T]) for T in MATRICES[m])


def winograd_applies(x_shape, w_shape, stride, padding) -> bool:
    """True for the convolutions this module computes, and where it is faster than im2col:
    3x3 kernels, stride 1, padding 1, at least ``WINOGRAD_MIN_CHANNELS`` input and output
    channels and ``WINOGRAD_MIN_MACS`` multiply-accumulates (as a direct convolution)."""
    N, C, H, W = x_shape
    O, _, KH, KW = w_shape
    return (KH == 3 and KW == 3 and stride == 1 and padding == 1
            and min(C, O) >= WINOGRAD_MIN_CHANNELS and N * H * W * O * C * 9 >= WINOGRAD_MIN_MACS)


def tile_size(x_shape) -> int:
    """m of the F(m x m, 3x3) used for inputs of this shape: 4 from ``F4_MIN_SIZE`` on, else 2."""
    return 4 if min(x_shape[2:]) >= F4_MIN_SIZE else 2


def tiles_of(H: int, W: int, m: int = 2) -> tuple[int, int]:
    return -(-H // m), -(-W // m)


def winograd_chunk_bounds(N: int, tiles_per_sample: int) -> list[tuple[int, int]]:
    """Consecutive chunks of whole samples; depends on the shape only, never on the threads."""
    per_chunk = max(1, min(-(-CHUNK_MIN_TILES // tiles_per_sample), -(-N // MIN_CHUNKS)))
    return [(a, min(N, a + per_chunk)) for a in range(0, N, per_chunk)]


def tiles_per_block(tiles_per_row: int, channels: int) -> int:
    """B, the tiles the transform kernels take together: the largest power of two that divides
    the tiles per row with B * channels <= ``BLOCK_VALUES`` (1 from 64 channels on). A
    formula loop over few channels (16 at the `cpu` stage 1) spent more time in its run-time
    alias checks than in its arithmetic: 45 ns per tile and channel at 16 channels, 13 at 192."""
    B = 1
    while 2 * B * channels <= BLOCK_VALUES and tiles_per_row % (2 * B) == 0:
        B *= 2
    return B


def stack_of(count: int, rows: int, cols: int, dtype, multiple: int = 1) -> np.ndarray:
    """An uninitialised C-contiguous ``[count, rows', cols]`` array, rows' >= rows a multiple of
    ``multiple`` chosen so that its matrices start in different sets of the L1 cache; the
    caller uses ``[:, :rows]``. The transforms touch all a² matrices once per tile: with the
    matrices a multiple of 4 KiB apart (``[16, 512, 48]`` float32 is) every stream falls into
    one set of the 8-way L1 cache, and the first version's transforms ran 5-10x slower."""
    rows = _padded_rows(count, -(-rows // multiple) * multiple, cols * np.dtype(dtype).itemsize, multiple)
    return np.empty((count, rows, cols), dtype=dtype)


@functools.lru_cache(maxsize=256)
def _padded_rows(count: int, rows: int, row_bytes: int, multiple: int = 1) -> int:
    """The fewest rows >= rows (at most 63 multiples of ``multiple`` more) that spread
    ``count`` matrices of that many rows over the most L1 sets (64 sets of 64-byte lines,
    4 KiB)."""
    best, best_sets = rows, -1
    for extra in range(0, 64 * multiple, multiple):
        stride = (rows + extra) * row_bytes
        sets = len({(k * stride) % 4096 // 64 for k in range(count)})
        if sets > best_sets:
            best, best_sets = rows + extra, sets
        if sets >= min(count, 64):
            break
    return best


def _k(m, dtype):
    """The formulas' typed constants (coefficients other than 0 and ±1) in dtype."""
    return tuple(np.dtype(dtype).type(v) for v in _f.CONSTANTS[m])


def _kernel(name, m):
    return getattr(_f, f"{name}_{m}")


def _twin(name, m, *args):
    """Runs every formula group of a transform on arrays (the Python code of the kernels' formulas)."""
    for group in _f.GROUPS[(name, m)]:
        group.py_func(*args)


# ---------------------------------------------------------------- wrappers

def padded_channels(C: int) -> int:
    """C rounded up to a multiple of ``CHANNEL_BLOCK`` (8, a 256-bit vector of float32, which is
    what LLVM uses here): the transforms' channel loops then have no scalar remainder. Blocks
    of 16 and 32 were measured too: the extra channels cost more than the remainder."""
    return -(-C // CHANNEL_BLOCK) * CHANNEL_BLOCK


def input_transform(x, n0=0, n1=None, m=2):
    """V ``[a², tiles', C']`` (a ``stack_of``: the first ``tiles`` rows are the result; C' =
    ``padded_channels(C)``, the extra channels zero) of the samples n0:n1 of x ``[N, C, H, W]``
    with a border of zeros, the tiles in sample, row, column order."""
    return _to_stack("input_transform", x, n0, n1, m)


def _to_stack(kernel, a, n0, n1, m):
    """The ``stack_of`` that transform ``kernel`` writes from the samples n0:n1 of the NCHW map a."""
    N, C, H, W = a.shape
    n1 = N if n1 is None else n1
    th, tw = tiles_of(H, W, m)
    Cp = padded_channels(C)
    B = tiles_per_block(tw, Cp)
    stack = stack_of((m + 2) ** 2, (n1 - n0) * th * tw, Cp, a.dtype, B)
    _kernel(kernel, m)(np.ascontiguousarray(a), n0, n1, B, stack, _k(m, a.dtype))
    return stack


def output_transform(M, y, n0=0, n1=None, m=2, bias=None):
    """Writes y[n0:n1] (``[N, O, H, W]``, C-contiguous) from M ``[a², >= tiles, O']`` (O' >= O;
    the tiles of those samples; its rows a multiple of ``tiles_per_block``) + bias ``[O]`` (or
    None); returns y."""
    n1 = y.shape[0] if n1 is None else n1
    Op = M.shape[2]
    B = tiles_per_block(tiles_of(y.shape[2], y.shape[3], m)[1], Op)
    has_bias = bias is not None
    b = np.zeros(Op, M.dtype)
    if has_bias:
        b[:len(bias)] = bias
    _kernel("output_transform", m)(np.ascontiguousarray(M), n0, n1, B, np.tile(b, B), has_bias, y,
                                   _k(m, M.dtype))
    return y


def grad_output_transform(dy, n0=0, n1=None, m=2):
    """dM ``[a², tiles', O']`` (a ``stack_of``, as V) of the samples n0:n1 of dy ``[N, O, H, W]``."""
    return _to_stack("grad_output_transform", dy, n0, n1, m)


def input_grad_transform(dV, dx, n0=0, n1=None, m=2):
    """Writes dx[n0:n1] (``[N, C, H, W]``, C-contiguous) from dV ``[a², >= tiles, C']`` (C' >=
    C; the tiles of those samples; its rows a multiple of ``tiles_per_block``); returns dx."""
    n1 = dx.shape[0] if n1 is None else n1
    B = tiles_per_block(tiles_of(dx.shape[2], dx.shape[3], m)[1], dV.shape[2])
    _kernel("input_grad_transform", m)(np.ascontiguousarray(dV), n0, n1, B, dx, _k(m, dV.dtype))
    return dx


@functools.lru_cache(maxsize=8)
def _g_kron_g(m: int, dtype) -> np.ndarray:
    """G ⊗ G ``[a², 9]`` in dtype: (G g Gᵀ)[p, q] = sum over (i, j) of G[p, i] G[q, j] g[i, j]
    (each coefficient the float64 product, rounded once)."""
    G = matrices(m)[1]
    return np.kron(G, G).astype(dtype)


def weight_transform(weight, m=2):
    """Ut ``[a², C', O]`` (a ``stack_of``: the first C rows) = G g Gᵀ for every filter g =
    weight[o, c] of weight ``[O, C, 3, 3]``: one GEMM with G ⊗ G (a kernel of the generated
    formulas took 1.6 CPU s to compile for F(4x4), more than the GEMM's time in a whole run)."""
    O, C = weight.shape[:2]
    a2 = (m + 2) ** 2
    Ut = stack_of(a2, C, O, weight.dtype)
    U = _g_kron_g(m, weight.dtype) @ weight.reshape(O * C, 9).T           # [a², O C]
    Ut[:, :C] = U.reshape(a2, O, C).transpose(0, 2, 1)
    return Ut


def weight_transform_adjoint(dUt, m=2, C=None):
    """dweight ``[O, C, 3, 3]`` = Gᵀ dU G for every dU = dUt[:, c, o], the adjoint of
    ``weight_transform`` (dUt ``[a², C, O]``, or a ``stack_of`` with C given)."""
    C = dUt.shape[1] if C is None else C
    a2, O = dUt.shape[0], dUt.shape[2]
    dU = np.ascontiguousarray(dUt[:, :C].transpose(0, 2, 1)).reshape(a2, O * C)
    return (_g_kron_g(m, dUt.dtype).T @ dU).T.reshape(O, C, 3, 3).copy()


# ---------------------------------------------------------------- NumPy twins (the tests' reference)
# The same formulas (their Python code, ``.py_func``) on arrays: every tile and channel at once,
# the channel index ``c`` an Ellipsis and the tile index ``t`` a full slice.

ALL = slice(None)


def to_tiles_layout_numpy(x, m=2, offset=1):
    N, C, H, W = x.shape
    th, tw = tiles_of(H, W, m)
    xp = np.zeros((N, m * th + 2 * offset, m * tw + 2 * offset, C), dtype=x.dtype)
    xp[:, offset:offset + H, offset:offset + W] = x.transpose(0, 2, 3, 1)
    return xp


def from_tiles_layout_numpy(yp, y_shape, offset=0):
    N, C, H, W = y_shape
    return np.ascontiguousarray(yp[:, offset:offset + H, offset:offset + W].transpose(0, 3, 1, 2))


def input_transform_numpy(xp, m=2):
    a = m + 2
    n, th, tw, C = xp.shape[0], (xp.shape[1] - 2) // m, (xp.shape[2] - 2) // m, xp.shape[3]
    windows = np.stack([np.stack([xp[:, i:i + m * th:m, j:j + m * tw:m] for j in range(a)])
                        for i in range(a)])                       # [a, a, n, th, tw, C]
    V = np.empty((a * a, n * th * tw, C), dtype=xp.dtype)
    _twin("input", m, windows.reshape(a, a, -1, C), Ellipsis, V, ALL, _k(m, xp.dtype))
    return V


def output_transform_numpy(M, tiles, m=2, bias=None):
    n, th, tw = tiles
    O = M.shape[2]
    M = M[:, :n * th * tw]
    tiles = np.empty((m, m, n, th, tw, O), dtype=M.dtype)
    b = np.zeros(O, M.dtype) if bias is None else bias
    _twin("output", m, M.reshape(M.shape[0], n, th, tw, O), ALL, Ellipsis, tiles, b,
                                 _k(m, M.dtype))
    return np.ascontiguousarray(tiles.transpose(2, 3, 0, 4, 1, 5)).reshape(n, m * th, m * tw, O)


def grad_output_transform_numpy(dyp, m=2):
    a = m + 2
    n, th, tw, O = dyp.shape[0], dyp.shape[1] // m, dyp.shape[2] // m, dyp.shape[3]
    tiles = dyp.reshape(n, th, m, tw, m, O).transpose(2, 4, 0, 1, 3, 5)  # [i, j, n, th, tw, O]
    dM = np.empty((a * a, n, th, tw, O), dtype=dyp.dtype)
    _twin("grad_output", m, tiles, Ellipsis, dM, ALL, _k(m, dyp.dtype))
    return dM.reshape(a * a, -1, O)


def input_grad_transform_numpy(dV, tiles, m=2):
    n, th, tw = tiles
    a, C = m + 2, dV.shape[2]
    v = dV[:, :n * th * tw].reshape(a * a, n, th, tw, C)
    dxp = np.zeros((n, m * th + 2, m * tw + 2, C), dtype=dV.dtype)
    dd = np.empty((a, a, n, th, tw, C), dtype=dV.dtype)
    _twin("input_grad", m, v, ALL, Ellipsis, dd, _k(m, dV.dtype))
    for ti in range(th):                     # tiles in order, as the kernel adds them
        for tj in range(tw):
            dxp[:, m * ti:m * ti + a, m * tj:m * tj + a] += dd[:, :, :, ti, tj].transpose(2, 0, 1, 3)
    return dxp


# ---------------------------------------------------------------- the convolution

class Prepared:
    """What a Winograd convolution's forward and backward share (``conv2d_prepare``'s result):
    ``Ut``, the transformed weight, and ``V``, the forward's input transforms per chunk (None
    until a forward with this object ran, and again once a backward used them: a second
    backward recomputes them)."""
    __slots__ = ("Ut", "V")

    def __init__(self, Ut):
        self.Ut = Ut
        self.V = None


def _plan(x, weight, Ut, m):
    """What the forward and the backward both start from: the tile size, x contiguous, the
    transformed weight's first C rows (computed unless given), the tiles per row and column,
    and the chunks."""
    m = tile_size(x.shape) if m is None else m
    x = np.ascontiguousarray(x)
    Ut = (weight_transform(weight, m) if Ut is None else Ut)[:, :x.shape[1]]
    th, tw = tiles_of(x.shape[2], x.shape[3], m)
    return m, x, Ut, th, tw, winograd_chunk_bounds(x.shape[0], th * tw)


def winograd_forward(x, weight, bias, run_chunks, prepared=None, m=None):
    """y ``[N, O, H, W]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, 3, 3]``, stride 1, padding 1)
    + bias (or None). ``run_chunks(count, task)`` runs ``task(i)`` for every chunk (the
    convolution thread pool); prepared: a ``Prepared`` of this weight and tile size, which then
    also keeps the input transforms for the backward; m: the tile size (``tile_size`` by
    default)."""
    m, x, Ut, th, tw, bounds = _plan(x, weight, None if prepared is None else prepared.Ut, m)
    N, C, H, W = x.shape
    O = weight.shape[0]
    y = np.empty((N, O, H, W), dtype=x.dtype)
    kept = [None] * len(bounds) if prepared is not None else None

    def task(i):
        n0, n1 = bounds[i]
        T = (n1 - n0) * th * tw
        V = input_transform(x, n0, n1, m)
        Op = padded_channels(O)
        M = stack_of(V.shape[0], T, Op, x.dtype, tiles_per_block(tw, Op))
        np.matmul(V[:, :T, :C], Ut, out=M[:, :T, :O])
        output_transform(M, y, n0, n1, m, bias)
        if kept is not None:        # for the backward; otherwise freed with the chunk
            kept[i] = V

    run_chunks(len(bounds), task)
    if prepared is not None:
        prepared.V = kept
    return y


def winograd_backward(dy, x, weight, need_dx, run_chunks, prepared=None, m=None, serial=None):
    """``(dx, dweight)`` of ``winograd_forward`` for dy ``[N, O, H, W]`` (x's dtype); dx is
    None with ``need_dx=False``; prepared and m as for the forward (the input transforms the
    forward kept are used, then released; without them they are recomputed). ``serial(fn,
    *args)`` runs the weight gradient's final transform (a GEMM; the caller's thread setting
    for it, ``conv_chunked.one_blas_thread``), by default as it is."""
    m, x, Ut, th, tw, bounds = _plan(x, weight, None if prepared is None else prepared.Ut, m)
    N, C, H, W = x.shape
    O = weight.shape[0]
    dy = np.ascontiguousarray(dy)
    a2 = (m + 2) ** 2
    dUt_parts = [stack_of(a2, C, O, x.dtype) for _ in bounds]
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    kept = None if prepared is None else prepared.V
    if prepared is not None:
        prepared.V = None

    def task(i):
        n0, n1 = bounds[i]
        T = (n1 - n0) * th * tw
        V = kept[i] if kept else input_transform(x, n0, n1, m)
        dM = grad_output_transform(dy, n0, n1, m)
        np.matmul(V[:, :T, :C].transpose(0, 2, 1), dM[:, :T, :O], out=dUt_parts[i][:, :C])
        if need_dx:
            np.matmul(dM[:, :T, :O], Ut.transpose(0, 2, 1), out=V[:, :T, :C])
            input_grad_transform(V, dx, n0, n1, m)
        if kept:
            kept[i] = None              # this chunk's share of the forward's memory, freed now

    run_chunks(len(bounds), task)
    dUt = dUt_parts[0]
    for part in dUt_parts[1:]:                   # in chunk order: the same for any thread count
        dUt[:, :C] += part[:, :C]
    return dx, (serial or _call)(weight_transform_adjoint, dUt, m, C)


def _call(fn, *args):
    return fn(*args)

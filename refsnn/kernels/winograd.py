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

The tiles are transformed channels last: a chunk of samples is first copied to ``[n, h, w, c]``
with a zero border, so that each transform is straight-line arithmetic vectorised over the
channels (24-192 of them at the `paper` shapes; ``refsnn.runtime.allow_vector_memory_checks``
lets LLVM vectorise those loops). The formulas and the kernels that run them
are generated from the matrices (``refsnn.kernels.winograd_codegen`` ->
``winograd_formulas.py``); the NumPy twins here run the same formulas' Python code on arrays.
Tiles are numbered ``(n - n0, ti, tj)`` within a chunk; tile (ti, tj) produces outputs
``[m ti, m ti + m) x [m tj, m tj + m)`` from the padded input's ``[m ti, m ti + a) x
[m tj, m tj + a)``; sizes that are not multiples of m get a last tile cut at the border. The
kernels are serial and release the GIL; ``refsnn.kernels.conv_chunked``'s pool runs one chunk
per thread, and the weight gradient is summed over chunks in chunk order, so results are the
same for any thread count.
"""
from __future__ import annotations

import functools

import numba as nb
import numpy as np

from . import winograd_formulas as _f
from .winograd_codegen import MATRICES

__all__ = ["winograd_applies", "tile_size", "winograd_forward", "winograd_backward", "matrices",
           "weight_transform", "weight_transform_adjoint", "to_tiles_layout", "from_tiles_layout",
           "input_transform", "output_transform", "grad_output_transform", "input_grad_transform",
           "weight_transform_numpy", "weight_transform_adjoint_numpy", "to_tiles_layout_numpy",
           "from_tiles_layout_numpy", "input_transform_numpy", "output_transform_numpy",
           "grad_output_transform_numpy", "input_grad_transform_numpy", "stack_of",
           "winograd_chunk_bounds", "tiles_of", "WINOGRAD_MIN_CHANNELS", "WINOGRAD_MIN_MACS",
           "F4_MIN_SIZE", "CHUNK_MIN_TILES", "CHANNEL_BLOCK", "padded_channels"]

# Where it applies (``winograd_applies``) and with which tiles (``tile_size``), measured with
# bench_engine.py --parts conv and at each stage shape alone (2 threads, idle, 2026-11-29):
# below this many multiply-accumulates (every `cpu` and `tiny` shape: 16->32 @16 1.11x, 64->32
# @8 1.08x im2col's time) the extra passes cost more than the GEMMs save; with fewer channels
# than this the GEMMs (K = C, or O columns) are too skinny (`paper` stage 1 proj1, 24 channels,
# took 0.79x im2col's time once the transforms were vectorised: refsnn.runtime).
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_MACS = 1 << 27
# F(4x4, 3x3) from this height and width on; smaller maps have too few tiles per sample
F4_MIN_SIZE = 16
# a chunk holds whole samples and at least this many tiles (the GEMMs' rows) when the batch
# allows it, and the batch is cut into at least MIN_CHUNKS chunks when it has the samples
CHUNK_MIN_TILES = 512
MIN_CHUNKS = 4
# the channels of the tile layouts are padded to a multiple of this (``padded_channels``)
CHANNEL_BLOCK = 8


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


def stack_of(count: int, rows: int, cols: int, dtype) -> np.ndarray:
    """An uninitialised C-contiguous ``[count, rows', cols]`` array, rows' >= rows chosen so that
    its matrices start in different sets of the L1 cache; the caller uses ``[:, :rows]``. The
    transforms touch all a² matrices once per tile: with the matrices a multiple of 4 KiB apart
    (``[16, 512, 48]`` float32 is) every stream falls into one set of the 8-way L1 cache, and
    the first version's transforms ran 5-10x slower."""
    return np.empty((count, _padded_rows(count, rows, cols * np.dtype(dtype).itemsize), cols), dtype=dtype)


@functools.lru_cache(maxsize=256)
def _padded_rows(count: int, rows: int, row_bytes: int) -> int:
    """The fewest rows >= rows (at most 63 more) that spread ``count`` matrices of that many
    rows over the most L1 sets (64 sets of 64-byte lines, 4 KiB)."""
    best, best_sets = rows, -1
    for extra in range(64):
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


# ---------------------------------------------------------------- layout kernels

@nb.njit(nogil=True, cache=True)
def _to_tiles_layout_kernel(x, n0, n1, offset, xp):
    """xp[n - n0, offset + h, offset + w, c] = x[n, c, h, w]; the rest of xp zero."""
    N, C, H, W = x.shape
    xp[:] = 0
    for n in range(n0, n1):
        for h in range(H):
            for c in range(C):
                src = x[n, c, h]
                dst = xp[n - n0, offset + h]
                for w in range(W):
                    dst[offset + w, c] = src[w]


@nb.njit(nogil=True, cache=True)
def _from_tiles_layout_kernel(yp, offset, n0, y):
    """y[n, c, h, w] = yp[n - n0, offset + h, offset + w, c] for the chunk's samples."""
    N, C, H, W = y.shape
    for n in range(n0, n0 + yp.shape[0]):
        for h in range(H):
            src = yp[n - n0, offset + h]
            for c in range(C):
                dst = y[n, c, h]
                for w in range(W):
                    dst[w] = src[offset + w, c]


# ---------------------------------------------------------------- wrappers

def padded_channels(C: int) -> int:
    """C rounded up to a multiple of ``CHANNEL_BLOCK`` (8, a 256-bit vector of float32, which is
    what LLVM uses here): the transforms' channel loops then have no scalar remainder. Blocks
    of 16 and 32 were measured too: the extra channels cost more than the remainder."""
    return -(-C // CHANNEL_BLOCK) * CHANNEL_BLOCK


def to_tiles_layout(x, m=2, offset=1, n0=0, n1=None):
    """The samples n0:n1 of x ``[N, C, H, W]`` channels last with a zero border:
    ``[n1-n0, m th + 2 offset, m tw + 2 offset, C']`` (C' = ``padded_channels(C)``, the extra
    channels zero), x[n, c, h, w] at (offset + h, offset + w)."""
    N, C, H, W = x.shape
    n1 = N if n1 is None else n1
    th, tw = tiles_of(H, W, m)
    xp = np.empty((n1 - n0, m * th + 2 * offset, m * tw + 2 * offset, padded_channels(C)), dtype=x.dtype)
    _to_tiles_layout_kernel(x, n0, n1, offset, xp)
    return xp


def from_tiles_layout(yp, y, offset=0, n0=0):
    """Writes y[n0:n0 + len(yp)] ``[N, C, H, W]`` from the channels-last yp (at offset)."""
    _from_tiles_layout_kernel(yp, offset, n0, y)
    return y


def input_transform(xp, m=2):
    """V ``[a², tiles', C]`` (a ``stack_of``: the first ``tiles`` rows are the result) of the
    padded channels-last chunk xp."""
    th, tw = (xp.shape[1] - 2) // m, (xp.shape[2] - 2) // m
    V = stack_of((m + 2) ** 2, xp.shape[0] * th * tw, xp.shape[3], xp.dtype)
    _kernel("input_transform", m)(xp, V, _k(m, xp.dtype))
    return V


def output_transform(M, tiles, m=2, bias=None):
    """yp ``[n, m th, m tw, O]`` from M ``[a², >= n th tw, O]`` (+ bias, zero beyond its length:
    M's channels may be padded); tiles = (n, th, tw)."""
    n, th, tw = tiles
    O = M.shape[2]
    yp = np.empty((n, m * th, m * tw, O), dtype=M.dtype)
    has_bias = bias is not None
    b = np.zeros(O if has_bias else 1, M.dtype)
    if has_bias:
        b[:len(bias)] = bias
    _kernel("output_transform", m)(np.ascontiguousarray(M), th, tw, b, has_bias, yp, _k(m, M.dtype))
    return yp


def grad_output_transform(dyp, m=2):
    """dM ``[a², tiles', O]`` (a ``stack_of``, as V) of dyp ``[n, m th, m tw, O]``."""
    th, tw = dyp.shape[1] // m, dyp.shape[2] // m
    dM = stack_of((m + 2) ** 2, dyp.shape[0] * th * tw, dyp.shape[3], dyp.dtype)
    _kernel("grad_output_transform", m)(dyp, dM, _k(m, dyp.dtype))
    return dM


def input_grad_transform(dV, tiles, m=2):
    """dxp ``[n, m th + 2, m tw + 2, C]`` from dV ``[a², >= n th tw, C]``; tiles = (n, th, tw)."""
    n, th, tw = tiles
    dxp = np.empty((n, m * th + 2, m * tw + 2, dV.shape[2]), dtype=dV.dtype)
    _kernel("input_grad_transform", m)(np.ascontiguousarray(dV), th, tw, dxp, _k(m, dV.dtype))
    return dxp


def weight_transform(weight, m=2):
    """Ut ``[a², C', O]`` (a ``stack_of``: the first C rows) = G g Gᵀ for every filter of
    weight ``[O, C, 3, 3]``."""
    O, C = weight.shape[:2]
    Ut = stack_of((m + 2) ** 2, C, O, weight.dtype)
    _kernel("weight_transform", m)(np.ascontiguousarray(weight), Ut, _k(m, weight.dtype))
    return Ut


def weight_transform_adjoint(dUt, m=2, C=None):
    """dweight ``[O, C, 3, 3]`` = Gᵀ dU G, the adjoint of ``weight_transform`` (dUt ``[a², C, O]``,
    or a ``stack_of`` with C given)."""
    C = dUt.shape[1] if C is None else C
    dweight = np.empty((dUt.shape[2], C, 3, 3), dtype=dUt.dtype)
    _kernel("weight_transform_adjoint", m)(np.ascontiguousarray(dUt), dweight, _k(m, dUt.dtype))
    return dweight


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


def weight_transform_numpy(weight, m=2):
    a = m + 2
    O, C = weight.shape[:2]
    Ut = np.empty((a * a, C, O), dtype=weight.dtype)
    _twin("weight", m, weight.transpose(2, 3, 1, 0), Ut, ALL, ALL, _k(m, weight.dtype))
    return Ut


def weight_transform_adjoint_numpy(dUt, m=2):
    C, O = dUt.shape[1:]
    dweight = np.empty((O, C, 3, 3), dtype=dUt.dtype)
    _twin("weight_adjoint", m, dUt, ALL, ALL, dweight.transpose(2, 3, 1, 0), _k(m, dUt.dtype))
    return dweight


# ---------------------------------------------------------------- the convolution

def _plan(x, weight, Ut, m):
    """What the forward and the backward both start from: the tile size, x contiguous, the
    transformed weight's first C rows (computed unless given), the tiles per row and column,
    and the chunks."""
    m = tile_size(x.shape) if m is None else m
    x = np.ascontiguousarray(x)
    Ut = (weight_transform(weight, m) if Ut is None else Ut)[:, :x.shape[1]]
    th, tw = tiles_of(x.shape[2], x.shape[3], m)
    return m, x, Ut, th, tw, winograd_chunk_bounds(x.shape[0], th * tw)


def winograd_forward(x, weight, bias, run_chunks, Ut=None, m=None):
    """y ``[N, O, H, W]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, 3, 3]``, stride 1, padding 1)
    + bias (or None). ``run_chunks(count, task)`` runs ``task(i)`` for every chunk (the
    convolution thread pool); Ut: ``weight_transform(weight, m)`` if the caller has it; m: the
    tile size (``tile_size`` by default)."""
    m, x, Ut, th, tw, bounds = _plan(x, weight, Ut, m)
    N, C, H, W = x.shape
    O = weight.shape[0]
    y = np.empty((N, O, H, W), dtype=x.dtype)

    def task(i):
        n0, n1 = bounds[i]
        T = (n1 - n0) * th * tw
        V = input_transform(to_tiles_layout(x, m, 1, n0, n1), m)
        M = stack_of(V.shape[0], T, padded_channels(O), x.dtype)
        np.matmul(V[:, :T, :C], Ut, out=M[:, :T, :O])
        from_tiles_layout(output_transform(M, (n1 - n0, th, tw), m, bias), y, 0, n0)

    run_chunks(len(bounds), task)
    return y


def winograd_backward(dy, x, weight, need_dx, run_chunks, Ut=None, m=None):
    """``(dx, dweight)`` of ``winograd_forward`` for dy ``[N, O, H, W]`` (x's dtype); dx is
    None with ``need_dx=False``; Ut and m as for the forward."""
    m, x, Ut, th, tw, bounds = _plan(x, weight, Ut, m)
    N, C, H, W = x.shape
    O = weight.shape[0]
    dy = np.ascontiguousarray(dy)
    a2 = (m + 2) ** 2
    dUt_parts = [stack_of(a2, C, O, x.dtype) for _ in bounds]
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None

    def task(i):
        n0, n1 = bounds[i]
        T = (n1 - n0) * th * tw
        # V is recomputed rather than kept from the forward: 2.25-4 times x's size per layer
        V = input_transform(to_tiles_layout(x, m, 1, n0, n1), m)
        dM = grad_output_transform(to_tiles_layout(dy, m, 0, n0, n1), m)
        np.matmul(V[:, :T, :C].transpose(0, 2, 1), dM[:, :T, :O], out=dUt_parts[i][:, :C])
        if need_dx:
            np.matmul(dM[:, :T, :O], Ut.transpose(0, 2, 1), out=V[:, :T, :C])
            from_tiles_layout(input_grad_transform(V, (n1 - n0, th, tw), m), dx, 1, n0)

    run_chunks(len(bounds), task)
    dUt = dUt_parts[0]
    for part in dUt_parts[1:]:                   # in chunk order: the same for any thread count
        dUt[:, :C] += part[:, :C]
    return dx, weight_transform_adjoint(dUt, m, C)

"""3x3 stride-1 'same' convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016), forward and backward, over chunks
of samples (Numba transforms with NumPy twins).

Each 2x2 block of outputs is computed from the 4x4 block of (zero-padded) input around it:
``y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` per channel pair, summed over input channels. With the
transformed weight ``U [16, O, C]`` and transformed input tiles ``V [16, C, tiles]`` the sum
over channels is 16 GEMMs ``M[k] = U[k] @ V[k]``: 16 multiplies per 4 outputs where the direct
convolution (im2col + GEMM) needs 36, so the GEMMs do 2.25 times fewer multiply-accumulates.
The GEMMs dominate at the `cpu` and `paper` stage shapes, where im2col's single GEMM already
runs near the BLAS peak and PyTorch's oneDNN was still 1.1-1.6x faster (benchmarks/README.md).

The backward is the exact adjoint of that computation (every transform is linear):
``dZ = A dY Aᵀ`` per output tile, ``dU[k] = dZ[k] @ V[k]ᵀ`` (then ``dg = Gᵀ dU G``) and
``dV[k] = U[k]ᵀ @ dZ[k]`` (then ``dd = B dV Bᵀ``, added into the overlapping input tiles). In
exact arithmetic all three equal the direct convolution's; in floating point they differ from
it by rounding only (the transforms' coefficients are 0, ±1 and ±1/2).

Tiles are numbered ``(n - n0, ti, tj)`` within a chunk: tile (ti, tj) produces outputs
``[2ti, 2ti+2) x [2tj, 2tj+2)`` from inputs ``[2ti-1, 2ti+3) x [2tj-1, 2tj+3)``; odd sizes get
a last tile that is cut at the border (its missing inputs are zero, its missing outputs are
not written). The kernels are serial and release the GIL; ``refsnn.kernels.conv_chunked``'s
pool runs one chunk per thread, and the weight gradient is summed over chunks in chunk order,
so results are the same for any thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["winograd_applies", "winograd_forward", "winograd_backward", "weight_transform",
           "weight_transform_adjoint", "weight_transform_numpy", "weight_transform_adjoint_numpy",
           "input_transform", "output_transform",
           "grad_output_transform", "input_grad_transform", "input_transform_numpy",
           "output_transform_numpy", "grad_output_transform_numpy", "input_grad_transform_numpy",
           "winograd_chunk_bounds", "WINOGRAD_MIN_CHANNELS", "WINOGRAD_MIN_MACS", "CHUNK_MIN_TILES"]

# G (4x3), Bᵀ (4x4), Aᵀ (2x4) of F(2x2, 3x3)
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
BT = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0],
               [0.0, 1.0, 0.0, -1.0]])
AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])

# Where it applies (``winograd_applies``), measured with bench_engine.py --parts conv and at
# each stage shape alone (2 threads, idle, 2026-11-29): with fewer channels than this the 16
# GEMMs (K = C) are too skinny to gain from the fewer multiplies (24->48 @64: 1.03x im2col's
# time; 16->32 @16: 1.15x), and below this many multiply-accumulates (every `cpu` and `tiny`
# shape) the transforms' extra passes cost more than the GEMMs save (64->64 @4: 1.08x).
# At the `paper` shapes with >= 48 channels it took 0.77-0.87x im2col's time.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_MACS = 1 << 27
# a chunk holds whole samples and at least this many tiles (the GEMMs' columns)
CHUNK_MIN_TILES = 512
MIN_CHUNKS = 4


def winograd_applies(x_shape, w_shape, stride, padding) -> bool:
    """True for the convolutions this module computes, and where it is faster than im2col:
    3x3 kernels, stride 1, padding 1, at least ``WINOGRAD_MIN_CHANNELS`` input and output
    channels and ``WINOGRAD_MIN_MACS`` multiply-accumulates (as a direct convolution)."""
    N, C, H, W = x_shape
    O, _, KH, KW = w_shape
    return (KH == 3 and KW == 3 and stride == 1 and padding == 1
            and min(C, O) >= WINOGRAD_MIN_CHANNELS and N * H * W * O * C * 9 >= WINOGRAD_MIN_MACS)


def tiles_of(H: int, W: int) -> tuple[int, int]:
    return -(-H // 2), -(-W // 2)


def winograd_chunk_bounds(N: int, tiles_per_sample: int) -> list[tuple[int, int]]:
    """Consecutive chunks of whole samples, each of at least ``CHUNK_MIN_TILES`` tiles when the
    batch allows it, and at least ``MIN_CHUNKS`` chunks when it has the samples. Depends on the
    shape only, never on the thread count."""
    per_chunk = max(1, min(-(-CHUNK_MIN_TILES // tiles_per_sample), -(-N // MIN_CHUNKS)))
    return [(a, min(N, a + per_chunk)) for a in range(0, N, per_chunk)]


# ---------------------------------------------------------------- stacks of 16 matrices

def stack16(rows: int, cols: int, dtype) -> np.ndarray:
    """An uninitialised ``[16, rows, cols]`` array whose 16 matrices lie 64 bytes more than a
    multiple of 4 KiB apart. The transforms read or write all 16 at once, one value each per
    tile: with the matrices a multiple of 4 KiB apart (``[16, 192, 128]`` float32 is) all 16
    streams fall into one set of the L1 cache, which has 8 ways, and the kernels ran 5-10x
    slower."""
    itemsize = np.dtype(dtype).itemsize
    size = rows * cols * itemsize
    stride = size + (64 - size % 4096) % 4096
    flat = np.empty(16 * stride // itemsize, dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, (16, rows, cols),
                                           (stride, cols * itemsize, itemsize))


def _as_stack16(a: np.ndarray) -> np.ndarray:
    """a ``[16, rows, cols]`` laid out as ``stack16`` lays it out (a itself when it is)."""
    out = stack16(a.shape[1], a.shape[2], a.dtype)
    if a.strides == out.strides:
        return a
    out[...] = a
    return out


# ---------------------------------------------------------------- weights

@nb.njit(nogil=True, cache=True)
def _weight_transform_kernel(weight, U):
    """U[4a + b, o, c] = (G g Gᵀ)[a, b] for every 3x3 filter g = weight[o, c]."""
    O, C = weight.shape[:2]
    half = weight.dtype.type(0.5)
    t = np.empty((4, 3), dtype=weight.dtype)
    for o in range(O):
        for c in range(C):
            for j in range(3):                  # G g: along the rows
                g0, g1, g2 = weight[o, c, 0, j], weight[o, c, 1, j], weight[o, c, 2, j]
                t[0, j] = g0
                t[1, j] = (g0 + g1 + g2) * half
                t[2, j] = (g0 - g1 + g2) * half
                t[3, j] = g2
            for a in range(4):                  # (G g) Gᵀ: along the columns
                U[4 * a, o, c] = t[a, 0]
                U[4 * a + 1, o, c] = (t[a, 0] + t[a, 1] + t[a, 2]) * half
                U[4 * a + 2, o, c] = (t[a, 0] - t[a, 1] + t[a, 2]) * half
                U[4 * a + 3, o, c] = t[a, 2]


@nb.njit(nogil=True, cache=True)
def _weight_transform_adjoint_kernel(dU, dweight):
    """dweight[o, c] = Gᵀ dU[:, o, c] G (3x3 from 4x4), the adjoint of the weight transform."""
    O, C = dweight.shape[:2]
    half = dU.dtype.type(0.5)
    q = np.empty((3, 4), dtype=dU.dtype)
    for o in range(O):
        for c in range(C):
            for b in range(4):                  # Gᵀ u: along the rows
                u0, u1, u2, u3 = dU[b, o, c], dU[4 + b, o, c], dU[8 + b, o, c], dU[12 + b, o, c]
                q[0, b] = u0 + (u1 + u2) * half
                q[1, b] = (u1 - u2) * half
                q[2, b] = (u1 + u2) * half + u3
            for i in range(3):                  # (Gᵀ u) G: along the columns
                dweight[o, c, i, 0] = q[i, 0] + (q[i, 1] + q[i, 2]) * half
                dweight[o, c, i, 1] = (q[i, 1] - q[i, 2]) * half
                dweight[o, c, i, 2] = (q[i, 1] + q[i, 2]) * half + q[i, 3]


def weight_transform(weight):
    """U ``[16, O, C]`` = G g Gᵀ for every (o, c) of weight ``[O, C, 3, 3]`` (weight's dtype)."""
    U = stack16(weight.shape[0], weight.shape[1], weight.dtype)
    _weight_transform_kernel(np.ascontiguousarray(weight), U)
    return U


def weight_transform_adjoint(dU):
    """dweight ``[O, C, 3, 3]`` = Gᵀ dU G, the adjoint of ``weight_transform`` (dU ``[16, O, C]``)."""
    dweight = np.empty(dU.shape[1:] + (3, 3), dtype=dU.dtype)
    _weight_transform_adjoint_kernel(_as_stack16(dU), dweight)
    return dweight


# ---------------------------------------------------------------- tile transforms (Numba)
# Each kernel works on one row of tiles at a time with loops over the tile column innermost,
# so that LLVM vectorises them (one tile at a time with bounds checks ran at ~1/10 the speed).
# The row and column passes' arithmetic is written out once per kernel and mirrored exactly,
# operation for operation, by the NumPy twins below.


@nb.njit(nogil=True, cache=True)
def _input_transform_kernel(x, n0, n1, V):
    """V[k, c, t] = (Bᵀ d B)[k] for every input tile d of the samples n0 <= n < n1."""
    N, C, H, W = x.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    Wp = 2 * tw + 2
    zero_row = np.zeros(W, dtype=x.dtype)
    d = np.zeros((4, Wp), dtype=x.dtype)        # the rows' combinations, padded: column j is w = j - 1
    for n in range(n0, n1):
        for c in range(C):
            plane = x[n, c]
            for ti in range(th):
                h = 2 * ti - 1
                x0 = plane[h] if h >= 0 else zero_row
                x1 = plane[h + 1]
                x2 = plane[h + 2] if h + 2 < H else zero_row
                x3 = plane[h + 3] if h + 3 < H else zero_row
                for w in range(W):              # Bᵀ d: along the rows
                    d[0, w + 1] = x0[w] - x2[w]
                    d[1, w + 1] = x1[w] + x2[w]
                    d[2, w + 1] = x2[w] - x1[w]
                    d[3, w + 1] = x1[w] - x3[w]
                t0 = ((n - n0) * th + ti) * tw
                for a in range(4):              # (Bᵀ d) B: along the columns
                    da = d[a]
                    v0 = V[4 * a, c, t0:t0 + tw]
                    v1 = V[4 * a + 1, c, t0:t0 + tw]
                    v2 = V[4 * a + 2, c, t0:t0 + tw]
                    v3 = V[4 * a + 3, c, t0:t0 + tw]
                    for tj in range(tw):
                        j = 2 * tj
                        v0[tj] = da[j] - da[j + 2]
                        v1[tj] = da[j + 1] + da[j + 2]
                        v2[tj] = da[j + 2] - da[j + 1]
                        v3[tj] = da[j + 1] - da[j + 3]


@nb.njit(nogil=True, cache=True)
def _output_transform_kernel(M, n0, n1, bias, has_bias, y):
    """y[n, o, 2ti:2ti+2, 2tj:2tj+2] = Aᵀ m A (+ bias[o]) for every tile m = M[:, o, t]."""
    N, O, H, W = y.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    s = np.empty((2, 4, tw), dtype=M.dtype)
    row = np.empty(2 * tw, dtype=M.dtype)
    for n in range(n0, n1):
        for o in range(O):
            b0 = bias[o] if has_bias else M.dtype.type(0)
            for ti in range(th):
                t0 = ((n - n0) * th + ti) * tw
                for b in range(4):              # Aᵀ m: along the rows
                    m0 = M[b, o, t0:t0 + tw]
                    m1 = M[4 + b, o, t0:t0 + tw]
                    m2 = M[8 + b, o, t0:t0 + tw]
                    m3 = M[12 + b, o, t0:t0 + tw]
                    for tj in range(tw):
                        s[0, b, tj] = m0[tj] + m1[tj] + m2[tj]
                        s[1, b, tj] = m1[tj] - m2[tj] - m3[tj]
                for a in range(2):              # (Aᵀ m) A: along the columns
                    h = 2 * ti + a
                    if h >= H:
                        continue
                    for tj in range(tw):
                        row[2 * tj] = s[a, 0, tj] + s[a, 1, tj] + s[a, 2, tj] + b0
                        row[2 * tj + 1] = s[a, 1, tj] - s[a, 2, tj] - s[a, 3, tj] + b0
                    out = y[n, o, h]
                    for w in range(W):
                        out[w] = row[w]


@nb.njit(nogil=True, cache=True)
def _grad_output_transform_kernel(dy, n0, n1, dM):
    """dM[k, o, t] = (A dY Aᵀ)[k] for every 2x2 tile dY of dy (zero beyond the border); the
    adjoint of ``_output_transform_kernel``."""
    N, O, H, W = dy.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    r = np.zeros((4, 2 * tw), dtype=dy.dtype)   # the rows of A dY; columns beyond W stay zero
    zero_row = np.zeros(W, dtype=dy.dtype)
    for n in range(n0, n1):
        for o in range(O):
            plane = dy[n, o]
            for ti in range(th):
                y0 = plane[2 * ti]
                y1 = plane[2 * ti + 1] if 2 * ti + 1 < H else zero_row
                for w in range(W):              # A dY, A = [[1, 0], [1, 1], [1, -1], [0, -1]]
                    r[0, w] = y0[w]
                    r[1, w] = y0[w] + y1[w]
                    r[2, w] = y0[w] - y1[w]
                    r[3, w] = -y1[w]
                t0 = ((n - n0) * th + ti) * tw
                for a in range(4):              # (A dY) Aᵀ: along the columns
                    ra = r[a]
                    m0 = dM[4 * a, o, t0:t0 + tw]
                    m1 = dM[4 * a + 1, o, t0:t0 + tw]
                    m2 = dM[4 * a + 2, o, t0:t0 + tw]
                    m3 = dM[4 * a + 3, o, t0:t0 + tw]
                    for tj in range(tw):
                        m0[tj] = ra[2 * tj]
                        m1[tj] = ra[2 * tj] + ra[2 * tj + 1]
                        m2[tj] = ra[2 * tj] - ra[2 * tj + 1]
                        m3[tj] = -ra[2 * tj + 1]


@nb.njit(nogil=True, cache=True)
def _input_grad_transform_kernel(dV, n0, n1, dx):
    """dx[n] = the sum over tiles of B dV Bᵀ, each added into its 4x4 input window, for
    n0 <= n < n1 (overwritten); the adjoint of ``_input_transform_kernel``. A pixel's (up to
    four) contributions are added in the order of their place (a, b) in their windows."""
    N, C, H, W = dx.shape
    th, tw = (H + 1) // 2, (W + 1) // 2
    e = np.empty((4, 4, tw), dtype=dV.dtype)    # dV Bᵀ of one row of tiles: [a, b, tj]
    dd = np.empty((th, 4, 4, tw), dtype=dV.dtype)  # B dV Bᵀ of every tile: [ti, a, b, tj]
    acc = np.empty((2 * th + 2, 2 * tw + 2), dtype=dV.dtype)   # the padded plane
    for n in range(n0, n1):
        for c in range(C):
            for ti in range(th):
                t0 = ((n - n0) * th + ti) * tw
                for a in range(4):              # dV Bᵀ: along the columns, B = (Bᵀ)ᵀ
                    v0 = dV[4 * a, c, t0:t0 + tw]
                    v1 = dV[4 * a + 1, c, t0:t0 + tw]
                    v2 = dV[4 * a + 2, c, t0:t0 + tw]
                    v3 = dV[4 * a + 3, c, t0:t0 + tw]
                    for tj in range(tw):
                        e[a, 0, tj] = v0[tj]
                        e[a, 1, tj] = v1[tj] - v2[tj] + v3[tj]
                        e[a, 2, tj] = v2[tj] + v1[tj] - v0[tj]
                        e[a, 3, tj] = -v3[tj]
                for b in range(4):              # B (dV Bᵀ): along the rows
                    for tj in range(tw):
                        dd[ti, 0, b, tj] = e[0, b, tj]
                        dd[ti, 1, b, tj] = e[1, b, tj] - e[2, b, tj] + e[3, b, tj]
                        dd[ti, 2, b, tj] = e[2, b, tj] + e[1, b, tj] - e[0, b, tj]
                        dd[ti, 3, b, tj] = -e[3, b, tj]
            acc[:, :] = 0
            for a in range(4):
                for b in range(4):
                    for ti in range(th):
                        dst = acc[2 * ti + a]
                        src = dd[ti, a, b]
                        for tj in range(tw):
                            dst[2 * tj + b] += src[tj]
            plane = dx[n, c]
            for h in range(H):
                for w in range(W):
                    plane[h, w] = acc[h + 1, w + 1]


def input_transform(x, n0=0, n1=None):
    """V ``[16, C, (n1-n0)*th*tw]`` (a ``stack16``) of x ``[N, C, H, W]`` for the samples n0:n1."""
    N, C, H, W = x.shape
    n1 = N if n1 is None else n1
    th, tw = tiles_of(H, W)
    V = stack16(C, (n1 - n0) * th * tw, x.dtype)
    _input_transform_kernel(x, n0, n1, V)
    return V


def output_transform(M, y, n0=0, n1=None, bias=None):
    """Writes y[n0:n1] ``[N, O, H, W]`` from M ``[16, O, tiles]`` (+ bias ``[O]``)."""
    n1 = y.shape[0] if n1 is None else n1
    has_bias = bias is not None
    _output_transform_kernel(_as_stack16(M), n0, n1, bias if has_bias else np.zeros(1, y.dtype), has_bias, y)
    return y


def grad_output_transform(dy, n0=0, n1=None):
    """dM ``[16, O, (n1-n0)*th*tw]`` (a ``stack16``) of dy ``[N, O, H, W]`` for the samples n0:n1."""
    N, O, H, W = dy.shape
    n1 = N if n1 is None else n1
    th, tw = tiles_of(H, W)
    dM = stack16(O, (n1 - n0) * th * tw, dy.dtype)
    _grad_output_transform_kernel(dy, n0, n1, dM)
    return dM


def input_grad_transform(dV, dx, n0=0, n1=None):
    """Writes dx[n0:n1] ``[N, C, H, W]`` from dV ``[16, C, tiles]``."""
    n1 = dx.shape[0] if n1 is None else n1
    _input_grad_transform_kernel(_as_stack16(dV), n0, n1, dx)
    return dx


# ---------------------------------------------------------------- NumPy twins (the tests' reference)
# The same operations in the same order as the kernels (so the two agree bit for bit), vectorised
# over all tiles; ``_*_reference`` in tests/test_winograd.py checks both against the matrices.

def input_transform_numpy(x):
    N, C, H, W = x.shape
    th, tw = tiles_of(H, W)
    xp = np.zeros((N, C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    rows = [xp[:, :, a:a + 2 * th:2, :] for a in range(4)]       # [N, C, th, Wp] each
    d = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
    V = np.empty((4, 4, C, N, th, tw), dtype=x.dtype)
    for a in range(4):
        col = [d[a][..., b:b + 2 * tw:2] for b in range(4)]       # [N, C, th, tw] each
        parts = [col[0] - col[2], col[1] + col[2], col[2] - col[1], col[1] - col[3]]
        for b in range(4):
            V[a, b] = parts[b].transpose(1, 0, 2, 3)
    return V.reshape(16, C, N * th * tw)


def output_transform_numpy(M, y_shape, bias=None):
    N, O, H, W = y_shape
    th, tw = tiles_of(H, W)
    m = M.reshape(4, 4, O, N, th, tw)
    s0 = m[0] + m[1] + m[2]                                       # [4 (b), O, N, th, tw]
    s1 = m[1] - m[2] - m[3]
    b0 = np.zeros(O, M.dtype) if bias is None else bias
    b0 = b0[:, None, None, None]
    Y = np.empty((O, N, th, 2, tw, 2), dtype=M.dtype)
    for a, s in enumerate((s0, s1)):
        Y[:, :, :, a, :, 0] = s[0] + s[1] + s[2] + b0
        Y[:, :, :, a, :, 1] = s[1] - s[2] - s[3] + b0
    y = Y.reshape(O, N, 2 * th, 2 * tw)[:, :, :H, :W].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(y)


def grad_output_transform_numpy(dy):
    N, O, H, W = dy.shape
    th, tw = tiles_of(H, W)
    dyp = np.zeros((N, O, 2 * th, 2 * tw), dtype=dy.dtype)
    dyp[:, :, :H, :W] = dy
    y0, y1 = dyp[:, :, 0::2, :], dyp[:, :, 1::2, :]               # [N, O, th, 2tw]
    r = [y0, y0 + y1, y0 - y1, -y1]
    dM = np.empty((4, 4, O, N, th, tw), dtype=dy.dtype)
    for a in range(4):
        c0, c1 = r[a][..., 0::2], r[a][..., 1::2]
        for b, v in enumerate((c0, c0 + c1, c0 - c1, -c1)):
            dM[a, b] = v.transpose(1, 0, 2, 3)
    return dM.reshape(16, O, N * th * tw)


def input_grad_transform_numpy(dV, x_shape):
    N, C, H, W = x_shape
    th, tw = tiles_of(H, W)
    v = dV.reshape(4, 4, C, N, th, tw).transpose(0, 1, 3, 2, 4, 5)  # [a, b, N, C, th, tw]
    e = np.empty((4, 4) + v.shape[2:], dtype=dV.dtype)             # [a, b, ...]
    for a in range(4):
        e[a, 0] = v[a, 0]
        e[a, 1] = v[a, 1] - v[a, 2] + v[a, 3]
        e[a, 2] = v[a, 2] + v[a, 1] - v[a, 0]
        e[a, 3] = -v[a, 3]
    dd = np.empty_like(e)
    dd[0] = e[0]
    dd[1] = e[1] - e[2] + e[3]
    dd[2] = e[2] + e[1] - e[0]
    dd[3] = -e[3]
    acc = np.zeros((N, C, 2 * th + 2, 2 * tw + 2), dtype=dV.dtype)
    for a in range(4):
        for b in range(4):
            acc[:, :, a:a + 2 * th:2, b:b + 2 * tw:2] += dd[a, b]
    return np.ascontiguousarray(acc[:, :, 1:H + 1, 1:W + 1])


def weight_transform_numpy(weight):
    half = weight.dtype.type(0.5)
    g = [weight[:, :, i, :] for i in range(3)]                    # [O, C, 3 (j)] each
    t = [g[0], (g[0] + g[1] + g[2]) * half, (g[0] - g[1] + g[2]) * half, g[2]]
    U = np.empty((4, 4) + weight.shape[:2], dtype=weight.dtype)
    for a in range(4):
        c0, c1, c2 = t[a][..., 0], t[a][..., 1], t[a][..., 2]
        for b, v in enumerate((c0, (c0 + c1 + c2) * half, (c0 - c1 + c2) * half, c2)):
            U[a, b] = v
    return U.reshape((16,) + weight.shape[:2])


def weight_transform_adjoint_numpy(dU):
    half = dU.dtype.type(0.5)
    u = dU.reshape((4, 4) + dU.shape[1:])                         # [a, b, O, C]
    q = [u[0] + (u[1] + u[2]) * half, (u[1] - u[2]) * half, (u[1] + u[2]) * half + u[3]]
    dweight = np.empty(dU.shape[1:] + (3, 3), dtype=dU.dtype)
    for i in range(3):
        r0, r1, r2, r3 = q[i][0], q[i][1], q[i][2], q[i][3]
        dweight[:, :, i, 0] = r0 + (r1 + r2) * half
        dweight[:, :, i, 1] = (r1 - r2) * half
        dweight[:, :, i, 2] = (r1 + r2) * half + r3
    return dweight


# ---------------------------------------------------------------- the convolution

def winograd_forward(x, weight, bias, run_chunks):
    """y ``[N, O, H, W]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, 3, 3]``, stride 1, padding 1)
    + bias (or None). ``run_chunks(count, task)`` runs ``task(i)`` for every chunk (the
    convolution thread pool)."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    x = np.ascontiguousarray(x)
    U = weight_transform(weight)
    th, tw = tiles_of(H, W)
    y = np.empty((N, O, H, W), dtype=x.dtype)
    bounds = winograd_chunk_bounds(N, th * tw)

    def task(i):
        n0, n1 = bounds[i]
        V = input_transform(x, n0, n1)
        M = np.matmul(U, V, out=stack16(O, V.shape[2], x.dtype))
        output_transform(M, y, n0, n1, bias)

    run_chunks(len(bounds), task)
    return y


def winograd_backward(dy, x, weight, need_dx, run_chunks):
    """``(dx, dweight)`` of ``winograd_forward`` for dy ``[N, O, H, W]`` (x's dtype); dx is
    None with ``need_dx=False``."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy)
    U = weight_transform(weight)
    Ut = _as_stack16(U.transpose(0, 2, 1))
    th, tw = tiles_of(H, W)
    bounds = winograd_chunk_bounds(N, th * tw)
    dU_parts = np.empty((len(bounds), 16, O, C), dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None

    def task(i):
        n0, n1 = bounds[i]
        # V is recomputed rather than kept from the forward: four times x's size at every layer
        V = input_transform(x, n0, n1)
        dM = grad_output_transform(dy, n0, n1)
        np.matmul(dM, V.transpose(0, 2, 1), out=dU_parts[i])
        if need_dx:
            dV = np.matmul(Ut, dM, out=V)
            input_grad_transform(dV, dx, n0, n1)

    run_chunks(len(bounds), task)
    dU = np.add.reduce(dU_parts, axis=0, out=stack16(O, C, x.dtype))   # in chunk order: the same for any thread count
    return dx, weight_transform_adjoint(dU)

"""3x3 stride-1 'same' convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), forward and backward, over
chunks of samples, channels last (Numba kernels with NumPy twins).

Each 2x2 block of outputs is computed from the 4x4 block of zero-padded input around it:
``y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` per channel pair, summed over input channels. With the
transformed weights ``Ut [16, C, O]`` and the transformed input tiles ``V [16, tiles, C]`` the
sum over channels is 16 GEMMs ``M[k] = V[k] @ Ut[k]``: 16 multiplies per 4 outputs where the
direct convolution (im2col + GEMM) needs 36, so the GEMMs do 2.25x fewer multiply-accumulates. At the `paper` stage shapes im2col's one
GEMM already ran near the BLAS peak and PyTorch's oneDNN was still 1.1-1.6x faster
(benchmarks/README.md); fewer multiplies is what is left.

The backward is the exact adjoint of that computation (every transform is linear):
``dM = A dY Aᵀ`` per output tile, ``dUt[k] = V[k]ᵀ @ dM[k]`` (then ``dg = Gᵀ dU G``) and
``dV[k] = dM[k] @ Ut[k]ᵀ`` (then ``dd = B dV Bᵀ``, added into the overlapping input windows). In
exact arithmetic all three equal the direct convolution's; in floating point they differ by
rounding (the coefficients are 0, ±1 and ±1/2). Larger tiles (F(4x4, 3x3): 4x fewer
multiplies) were not kept: their coefficients go up to 8 and down to 1/24 (float32 errors 10x
larger), and at H = 8 a sample has only 4 tiles, too few rows for the GEMMs.

The tiles are transformed channels last: a chunk of samples is first copied to ``[n, h, w, c]``
with a zero border, so that every step of a transform is a vector operation over the channels
(48-192 of them at the `paper` shapes), each formula written once (``_f_*``) and run by the
kernels on scalars and by the NumPy twins on arrays. Tiles are numbered ``(n - n0, ti, tj)``
within a chunk; tile (ti, tj) produces outputs ``[2ti, 2ti + 2) x [2tj, 2tj + 2)`` from the
padded input's ``[2ti, 2ti + 4) x [2tj, 2tj + 4)``; odd sizes get a last tile cut at the
border. The kernels are serial and release the GIL; ``refsnn.kernels.conv_chunked``'s
pool runs one chunk per thread, and the weight gradient is summed over chunks in chunk order,
so results are the same for any thread count.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["winograd_applies", "winograd_forward", "winograd_backward", "BT", "G", "AT",
           "weight_transform", "weight_transform_adjoint", "to_tiles_layout", "from_tiles_layout",
           "input_transform", "output_transform", "grad_output_transform", "input_grad_transform",
           "weight_transform_numpy", "weight_transform_adjoint_numpy", "to_tiles_layout_numpy",
           "from_tiles_layout_numpy", "input_transform_numpy", "output_transform_numpy",
           "grad_output_transform_numpy", "input_grad_transform_numpy", "stack_of",
           "winograd_chunk_bounds", "tiles_of", "WINOGRAD_MIN_CHANNELS",
           "WINOGRAD_MIN_MACS", "CHUNK_MIN_TILES"]

# Bᵀ (4x4), G (4x3), Aᵀ (2x4) of F(2x2, 3x3) (interpolation points 0, 1, -1): the formulas
# below are these matrices written out; tests/test_winograd.py checks one against the other
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# Where it applies (``winograd_applies``), measured with bench_engine.py --parts conv and at
# each stage shape alone (2 threads, idle, 2026-11-29): with fewer channels than this the
# GEMMs (K = C, or O columns) are too skinny to gain from the fewer multiplies, and below this
# many multiply-accumulates (every `cpu` and `tiny` shape) the extra passes cost more than the
# GEMMs save.
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_MACS = 1 << 27
# a chunk holds whole samples and at least this many tiles (the GEMMs' rows) when the batch
# allows it, and the batch is cut into at least MIN_CHUNKS chunks when it has the samples
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
    """Consecutive chunks of whole samples; depends on the shape only, never on the threads."""
    per_chunk = max(1, min(-(-CHUNK_MIN_TILES // tiles_per_sample), -(-N // MIN_CHUNKS)))
    return [(a, min(N, a + per_chunk)) for a in range(0, N, per_chunk)]


def stack_of(count: int, rows: int, cols: int, dtype) -> np.ndarray:
    """An uninitialised ``[count, rows, cols]`` array whose matrices lie 64 bytes more than a
    multiple of 4 KiB apart. The transforms touch all 16 matrices once per tile: with the
    matrices a multiple of 4 KiB apart (``[16, 128, 192]`` float32 is) every stream falls into
    one set of the 8-way L1 cache, and the first version's transforms ran 5-10x slower."""
    itemsize = np.dtype(dtype).itemsize
    size = rows * cols * itemsize
    stride = size + (64 - size % 4096) % 4096
    flat = np.empty(count * stride // itemsize, dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, (count, rows, cols), (stride, cols * itemsize, itemsize))



# ---------------------------------------------------------------- the formulas, written once
# Numba inlines them into the kernels (scalars; LLVM vectorises the loop over channels around
# them); the NumPy twins call the same functions' Python code (``.py_func``) on arrays.

@nb.njit(inline="always")
def _f_input(d00, d01, d02, d03, d10, d11, d12, d13, d20, d21, d22, d23, d30, d31, d32, d33):
    """Bᵀ d B of a 4x4 tile d, row-major."""
    r00, r01, r02, r03 = d00 - d20, d01 - d21, d02 - d22, d03 - d23      # Bᵀ d: the rows
    r10, r11, r12, r13 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
    r20, r21, r22, r23 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
    r30, r31, r32, r33 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
    return (r00 - r02, r01 + r02, r02 - r01, r01 - r03,                 # (Bᵀ d) B: the columns
            r10 - r12, r11 + r12, r12 - r11, r11 - r13,
            r20 - r22, r21 + r22, r22 - r21, r21 - r23,
            r30 - r32, r31 + r32, r32 - r31, r31 - r33)


@nb.njit(inline="always")
def _f_output(m00, m01, m02, m03, m10, m11, m12, m13, m20, m21, m22, m23, m30, m31, m32, m33):
    """Aᵀ m A of a 4x4 tile m: the 2x2 outputs, row-major."""
    s00, s01, s02, s03 = m00 + m10 + m20, m01 + m11 + m21, m02 + m12 + m22, m03 + m13 + m23
    s10, s11, s12, s13 = m10 - m20 - m30, m11 - m21 - m31, m12 - m22 - m32, m13 - m23 - m33
    return (s00 + s01 + s02, s01 - s02 - s03, s10 + s11 + s12, s11 - s12 - s13)


@nb.njit(inline="always")
def _f_grad_output(y00, y01, y10, y11):
    """A dY Aᵀ of a 2x2 tile dY (A = [[1, 0], [1, 1], [1, -1], [0, -1]]), row-major."""
    r00, r01 = y00, y01                                                  # A dY: the rows
    r10, r11 = y00 + y10, y01 + y11
    r20, r21 = y00 - y10, y01 - y11
    r30, r31 = -y10, -y11
    return (r00, r00 + r01, r00 - r01, -r01, r10, r10 + r11, r10 - r11, -r11,
            r20, r20 + r21, r20 - r21, -r21, r30, r30 + r31, r30 - r31, -r31)


@nb.njit(inline="always")
def _f_input_grad(v00, v01, v02, v03, v10, v11, v12, v13, v20, v21, v22, v23, v30, v31, v32, v33):
    """B v Bᵀ of a 4x4 tile v (B = Bᵀᵀ), row-major."""
    e00, e01, e02, e03 = v00, v01, v02, v03                              # B v: the rows
    e10, e11, e12, e13 = v10 - v20 + v30, v11 - v21 + v31, v12 - v22 + v32, v13 - v23 + v33
    e20, e21, e22, e23 = -v00 + v10 + v20, -v01 + v11 + v21, -v02 + v12 + v22, -v03 + v13 + v23
    e30, e31, e32, e33 = -v30, -v31, -v32, -v33
    return (e00, e01 - e02 + e03, -e00 + e01 + e02, -e03,                # (B v) Bᵀ: the columns
            e10, e11 - e12 + e13, -e10 + e11 + e12, -e13,
            e20, e21 - e22 + e23, -e20 + e21 + e22, -e23,
            e30, e31 - e32 + e33, -e30 + e31 + e32, -e33)


@nb.njit(inline="always")
def _f_weight(g00, g01, g02, g10, g11, g12, g20, g21, g22, half):
    """G g Gᵀ of a 3x3 filter g, row-major (half is 1/2 in g's type)."""
    t00, t01, t02 = g00, g01, g02                                        # G g: the rows
    t10, t11, t12 = (g00 + g10 + g20) * half, (g01 + g11 + g21) * half, (g02 + g12 + g22) * half
    t20, t21, t22 = (g00 - g10 + g20) * half, (g01 - g11 + g21) * half, (g02 - g12 + g22) * half
    t30, t31, t32 = g20, g21, g22
    return (t00, (t00 + t01 + t02) * half, (t00 - t01 + t02) * half, t02,   # (G g) Gᵀ
            t10, (t10 + t11 + t12) * half, (t10 - t11 + t12) * half, t12,
            t20, (t20 + t21 + t22) * half, (t20 - t21 + t22) * half, t22,
            t30, (t30 + t31 + t32) * half, (t30 - t31 + t32) * half, t32)


@nb.njit(inline="always")
def _f_weight_adjoint(u00, u01, u02, u03, u10, u11, u12, u13, u20, u21, u22, u23,
                      u30, u31, u32, u33, half):
    """Gᵀ u G of a 4x4 tile u: the 3x3 filter gradient, row-major."""
    q00, q01, q02, q03 = (u00 + (u10 + u20) * half, u01 + (u11 + u21) * half,    # Gᵀ u: the rows
                          u02 + (u12 + u22) * half, u03 + (u13 + u23) * half)
    q10, q11, q12, q13 = ((u10 - u20) * half, (u11 - u21) * half, (u12 - u22) * half,
                          (u13 - u23) * half)
    q20, q21, q22, q23 = ((u10 + u20) * half + u30, (u11 + u21) * half + u31,
                          (u12 + u22) * half + u32, (u13 + u23) * half + u33)
    return (q00 + (q01 + q02) * half, (q01 - q02) * half, (q01 + q02) * half + q03,   # (Gᵀ u) G
            q10 + (q11 + q12) * half, (q11 - q12) * half, (q11 + q12) * half + q13,
            q20 + (q21 + q22) * half, (q21 - q22) * half, (q21 + q22) * half + q23)


# ---------------------------------------------------------------- Numba kernels

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


@nb.njit(nogil=True, cache=True)
def _input_transform_kernel(xp, V):
    """V[:, t, c] = Bᵀ d B of every tile d of the padded channels-last xp ``[n, Hp, Wp, C]``."""
    n_, Hp, Wp, C = xp.shape
    th, tw = (Hp - 2) // 2, (Wp - 2) // 2
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                d0, d1, d2, d3 = (xp[n, 2 * ti, 2 * tj:2 * tj + 4], xp[n, 2 * ti + 1, 2 * tj:2 * tj + 4],
                                  xp[n, 2 * ti + 2, 2 * tj:2 * tj + 4], xp[n, 2 * ti + 3, 2 * tj:2 * tj + 4])
                for c in range(C):
                    v = _f_input(d0[0, c], d0[1, c], d0[2, c], d0[3, c], d1[0, c], d1[1, c], d1[2, c],
                                 d1[3, c], d2[0, c], d2[1, c], d2[2, c], d2[3, c], d3[0, c], d3[1, c],
                                 d3[2, c], d3[3, c])
                    V[0, t, c] = v[0]; V[1, t, c] = v[1]; V[2, t, c] = v[2]; V[3, t, c] = v[3]
                    V[4, t, c] = v[4]; V[5, t, c] = v[5]; V[6, t, c] = v[6]; V[7, t, c] = v[7]
                    V[8, t, c] = v[8]; V[9, t, c] = v[9]; V[10, t, c] = v[10]; V[11, t, c] = v[11]
                    V[12, t, c] = v[12]; V[13, t, c] = v[13]; V[14, t, c] = v[14]; V[15, t, c] = v[15]


@nb.njit(nogil=True, cache=True)
def _output_transform_kernel(M, th, tw, bias, has_bias, yp):
    """yp[n, 2ti + i, 2tj + j, :] = (Aᵀ M[:, t] A)[i, j] (+ bias) for every tile t."""
    n_, Hp, Wp, O = yp.shape
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                y0 = yp[n, 2 * ti, 2 * tj:2 * tj + 2]
                y1 = yp[n, 2 * ti + 1, 2 * tj:2 * tj + 2]
                for o in range(O):
                    y00, y01, y10, y11 = _f_output(
                        M[0, t, o], M[1, t, o], M[2, t, o], M[3, t, o], M[4, t, o], M[5, t, o],
                        M[6, t, o], M[7, t, o], M[8, t, o], M[9, t, o], M[10, t, o], M[11, t, o],
                        M[12, t, o], M[13, t, o], M[14, t, o], M[15, t, o])
                    b = bias[o] if has_bias else y00 - y00
                    y0[0, o] = y00 + b
                    y0[1, o] = y01 + b
                    y1[0, o] = y10 + b
                    y1[1, o] = y11 + b


@nb.njit(nogil=True, cache=True)
def _grad_output_transform_kernel(dyp, dM):
    """dM[:, t, o] = A dY Aᵀ of every 2x2 tile dY of dyp ``[n, 2th, 2tw, O]``."""
    n_, Hp, Wp, O = dyp.shape
    th, tw = Hp // 2, Wp // 2
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                y0 = dyp[n, 2 * ti, 2 * tj:2 * tj + 2]
                y1 = dyp[n, 2 * ti + 1, 2 * tj:2 * tj + 2]
                for o in range(O):
                    v = _f_grad_output(y0[0, o], y0[1, o], y1[0, o], y1[1, o])
                    dM[0, t, o] = v[0]; dM[1, t, o] = v[1]; dM[2, t, o] = v[2]; dM[3, t, o] = v[3]
                    dM[4, t, o] = v[4]; dM[5, t, o] = v[5]; dM[6, t, o] = v[6]; dM[7, t, o] = v[7]
                    dM[8, t, o] = v[8]; dM[9, t, o] = v[9]; dM[10, t, o] = v[10]; dM[11, t, o] = v[11]
                    dM[12, t, o] = v[12]; dM[13, t, o] = v[13]; dM[14, t, o] = v[14]; dM[15, t, o] = v[15]


@nb.njit(nogil=True, cache=True)
def _input_grad_transform_kernel(dV, th, tw, dxp):
    """dxp[n] = the sum over tiles (in order) of B dV[:, t] Bᵀ, each added into its 4x4
    window; dxp ``[n, 2th + 2, 2tw + 2, C]`` overwritten."""
    n_, Hp, Wp, C = dxp.shape
    dxp[:] = 0
    for n in range(n_):
        for ti in range(th):
            for tj in range(tw):
                t = (n * th + ti) * tw + tj
                x0, x1, x2, x3 = (dxp[n, 2 * ti, 2 * tj:2 * tj + 4], dxp[n, 2 * ti + 1, 2 * tj:2 * tj + 4],
                                  dxp[n, 2 * ti + 2, 2 * tj:2 * tj + 4], dxp[n, 2 * ti + 3, 2 * tj:2 * tj + 4])
                for c in range(C):
                    e = _f_input_grad(dV[0, t, c], dV[1, t, c], dV[2, t, c], dV[3, t, c], dV[4, t, c],
                                      dV[5, t, c], dV[6, t, c], dV[7, t, c], dV[8, t, c], dV[9, t, c],
                                      dV[10, t, c], dV[11, t, c], dV[12, t, c], dV[13, t, c],
                                      dV[14, t, c], dV[15, t, c])
                    x0[0, c] += e[0]; x0[1, c] += e[1]; x0[2, c] += e[2]; x0[3, c] += e[3]
                    x1[0, c] += e[4]; x1[1, c] += e[5]; x1[2, c] += e[6]; x1[3, c] += e[7]
                    x2[0, c] += e[8]; x2[1, c] += e[9]; x2[2, c] += e[10]; x2[3, c] += e[11]
                    x3[0, c] += e[12]; x3[1, c] += e[13]; x3[2, c] += e[14]; x3[3, c] += e[15]


@nb.njit(nogil=True, cache=True)
def _weight_transform_kernel(weight, Ut):
    """Ut[:, c, o] = G g Gᵀ of every filter g = weight[o, c] (weight ``[O, C, 3, 3]``)."""
    O, C = weight.shape[:2]
    half = weight.dtype.type(0.5)
    for c in range(C):
        for o in range(O):
            g = weight[o, c]
            v = _f_weight(g[0, 0], g[0, 1], g[0, 2], g[1, 0], g[1, 1], g[1, 2],
                          g[2, 0], g[2, 1], g[2, 2], half)
            Ut[0, c, o] = v[0]; Ut[1, c, o] = v[1]; Ut[2, c, o] = v[2]; Ut[3, c, o] = v[3]
            Ut[4, c, o] = v[4]; Ut[5, c, o] = v[5]; Ut[6, c, o] = v[6]; Ut[7, c, o] = v[7]
            Ut[8, c, o] = v[8]; Ut[9, c, o] = v[9]; Ut[10, c, o] = v[10]; Ut[11, c, o] = v[11]
            Ut[12, c, o] = v[12]; Ut[13, c, o] = v[13]; Ut[14, c, o] = v[14]; Ut[15, c, o] = v[15]


@nb.njit(nogil=True, cache=True)
def _weight_transform_adjoint_kernel(dUt, dweight):
    """dweight[o, c] = Gᵀ dU G of every tile dU = dUt[:, c, o] (dweight ``[O, C, 3, 3]``)."""
    O, C = dweight.shape[:2]
    half = dUt.dtype.type(0.5)
    for c in range(C):
        for o in range(O):
            v = _f_weight_adjoint(dUt[0, c, o], dUt[1, c, o], dUt[2, c, o], dUt[3, c, o],
                                  dUt[4, c, o], dUt[5, c, o], dUt[6, c, o], dUt[7, c, o],
                                  dUt[8, c, o], dUt[9, c, o], dUt[10, c, o], dUt[11, c, o],
                                  dUt[12, c, o], dUt[13, c, o], dUt[14, c, o], dUt[15, c, o], half)
            g = dweight[o, c]
            g[0, 0] = v[0]; g[0, 1] = v[1]; g[0, 2] = v[2]
            g[1, 0] = v[3]; g[1, 1] = v[4]; g[1, 2] = v[5]
            g[2, 0] = v[6]; g[2, 1] = v[7]; g[2, 2] = v[8]


# ---------------------------------------------------------------- wrappers

def to_tiles_layout(x, offset=1, n0=0, n1=None):
    """The samples n0:n1 of x ``[N, C, H, W]`` channels last with a zero border:
    ``[n1-n0, 2th + 2 offset, 2tw + 2 offset, C]``, x[n, c, h, w] at (offset + h, offset + w)."""
    N, C, H, W = x.shape
    n1 = N if n1 is None else n1
    th, tw = tiles_of(H, W)
    xp = np.empty((n1 - n0, 2 * th + 2 * offset, 2 * tw + 2 * offset, C), dtype=x.dtype)
    _to_tiles_layout_kernel(x, n0, n1, offset, xp)
    return xp


def from_tiles_layout(yp, y, offset=0, n0=0):
    """Writes y[n0:n0 + len(yp)] ``[N, C, H, W]`` from the channels-last yp (at offset)."""
    _from_tiles_layout_kernel(yp, offset, n0, y)
    return y


def input_transform(xp):
    """V ``[16, tiles, C]`` (a ``stack_of``) of the padded channels-last chunk xp."""
    th, tw = (xp.shape[1] - 2) // 2, (xp.shape[2] - 2) // 2
    V = stack_of(16, xp.shape[0] * th * tw, xp.shape[3], xp.dtype)
    _input_transform_kernel(xp, V)
    return V


def output_transform(M, tiles_hw, bias=None):
    """yp ``[n, 2th, 2tw, O]`` from M ``[16, tiles, O]`` (+ bias ``[O]``)."""
    th, tw = tiles_hw
    O = M.shape[2]
    yp = np.empty((M.shape[1] // (th * tw), 2 * th, 2 * tw, O), dtype=M.dtype)
    has_bias = bias is not None
    _output_transform_kernel(M, th, tw, bias if has_bias else np.zeros(1, M.dtype), has_bias, yp)
    return yp


def grad_output_transform(dyp):
    """dM ``[16, tiles, O]`` (a ``stack_of``) of dyp ``[n, 2th, 2tw, O]``."""
    th, tw = dyp.shape[1] // 2, dyp.shape[2] // 2
    dM = stack_of(16, dyp.shape[0] * th * tw, dyp.shape[3], dyp.dtype)
    _grad_output_transform_kernel(dyp, dM)
    return dM


def input_grad_transform(dV, tiles_hw):
    """dxp ``[n, 2th + 2, 2tw + 2, C]`` from dV ``[16, tiles, C]``."""
    th, tw = tiles_hw
    dxp = np.empty((dV.shape[1] // (th * tw), 2 * th + 2, 2 * tw + 2, dV.shape[2]), dtype=dV.dtype)
    _input_grad_transform_kernel(dV, th, tw, dxp)
    return dxp


def weight_transform(weight):
    """Ut ``[16, C, O]`` (a ``stack_of``) = G g Gᵀ for every filter of weight ``[O, C, 3, 3]``."""
    O, C = weight.shape[:2]
    Ut = stack_of(16, C, O, weight.dtype)
    _weight_transform_kernel(np.ascontiguousarray(weight), Ut)
    return Ut


def weight_transform_adjoint(dUt):
    """dweight ``[O, C, 3, 3]`` = Gᵀ dU G, the adjoint of ``weight_transform`` (dUt ``[16, C, O]``)."""
    C, O = dUt.shape[1:]
    dweight = np.empty((O, C, 3, 3), dtype=dUt.dtype)
    _weight_transform_adjoint_kernel(dUt, dweight)
    return dweight


# ---------------------------------------------------------------- NumPy twins (the tests' reference)
# The same formulas (their Python code) on arrays: every tile and channel at once.

def to_tiles_layout_numpy(x, offset=1):
    N, C, H, W = x.shape
    th, tw = tiles_of(H, W)
    xp = np.zeros((N, 2 * th + 2 * offset, 2 * tw + 2 * offset, C), dtype=x.dtype)
    xp[:, offset:offset + H, offset:offset + W] = x.transpose(0, 2, 3, 1)
    return xp


def from_tiles_layout_numpy(yp, y_shape, offset=0):
    N, C, H, W = y_shape
    return np.ascontiguousarray(yp[:, offset:offset + H, offset:offset + W].transpose(0, 3, 1, 2))


def input_transform_numpy(xp):
    th, tw = (xp.shape[1] - 2) // 2, (xp.shape[2] - 2) // 2
    d = [xp[:, i:i + 2 * th:2, j:j + 2 * tw:2] for i in range(4) for j in range(4)]
    return np.stack(_f_input.py_func(*d)).reshape(16, -1, xp.shape[3])


def output_transform_numpy(M, tiles_hw, bias=None):
    th, tw = tiles_hw
    O = M.shape[2]
    m = [M[k].reshape(-1, th, tw, O) for k in range(16)]
    y = _f_output.py_func(*m)
    b = y[0] - y[0] if bias is None else bias
    yp = np.empty((m[0].shape[0], th, 2, tw, 2, O), dtype=M.dtype)
    for i in range(2):
        for j in range(2):
            yp[:, :, i, :, j] = y[2 * i + j] + b
    return yp.reshape(-1, 2 * th, 2 * tw, O)


def grad_output_transform_numpy(dyp):
    th, tw = dyp.shape[1] // 2, dyp.shape[2] // 2
    y = [dyp[:, i::2, j::2] for i in range(2) for j in range(2)]
    return np.stack(_f_grad_output.py_func(*y)).reshape(16, -1, dyp.shape[3])


def input_grad_transform_numpy(dV, tiles_hw):
    th, tw = tiles_hw
    C = dV.shape[2]
    e = _f_input_grad.py_func(*[dV[k].reshape(-1, th, tw, C) for k in range(16)])
    dxp = np.zeros((e[0].shape[0], 2 * th + 2, 2 * tw + 2, C), dtype=dV.dtype)
    for ti in range(th):                     # tiles in order, as the kernel adds them
        for tj in range(tw):
            for k in range(16):
                dxp[:, 2 * ti + k // 4, 2 * tj + k % 4] += e[k][:, ti, tj]
    return dxp


def weight_transform_numpy(weight):
    g = [weight[:, :, i, j].T for i in range(3) for j in range(3)]          # [C, O] each
    return np.stack(_f_weight.py_func(*g, weight.dtype.type(0.5)))


def weight_transform_adjoint_numpy(dUt):
    d = _f_weight_adjoint.py_func(*dUt, dUt.dtype.type(0.5))                 # 9 x [C, O]
    return np.ascontiguousarray(np.stack(d, -1).reshape(*dUt.shape[1:], 3, 3).transpose(1, 0, 2, 3))


# ---------------------------------------------------------------- the convolution

def winograd_forward(x, weight, bias, run_chunks, Ut=None):
    """y ``[N, O, H, W]`` = conv(x ``[N, C, H, W]``, weight ``[O, C, 3, 3]``, stride 1, padding 1)
    + bias (or None). ``run_chunks(count, task)`` runs ``task(i)`` for every chunk (the
    convolution thread pool); Ut: ``weight_transform(weight)`` if the caller has it."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    x = np.ascontiguousarray(x)
    Ut = weight_transform(weight) if Ut is None else Ut
    th, tw = tiles_of(H, W)
    y = np.empty((N, O, H, W), dtype=x.dtype)
    bounds = winograd_chunk_bounds(N, th * tw)

    def task(i):
        n0, n1 = bounds[i]
        V = input_transform(to_tiles_layout(x, 1, n0, n1))
        M = np.matmul(V, Ut, out=stack_of(16, V.shape[1], O, x.dtype))
        from_tiles_layout(output_transform(M, (th, tw), bias), y, 0, n0)

    run_chunks(len(bounds), task)
    return y


def winograd_backward(dy, x, weight, need_dx, run_chunks, Ut=None):
    """``(dx, dweight)`` of ``winograd_forward`` for dy ``[N, O, H, W]`` (x's dtype); dx is
    None with ``need_dx=False``; Ut as for the forward."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    x = np.ascontiguousarray(x)
    dy = np.ascontiguousarray(dy)
    Ut = weight_transform(weight) if Ut is None else Ut
    th, tw = tiles_of(H, W)
    bounds = winograd_chunk_bounds(N, th * tw)
    dUt_parts = [stack_of(16, C, O, x.dtype) for _ in bounds]
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None

    def task(i):
        n0, n1 = bounds[i]
        # V is recomputed rather than kept from the forward: 4 times x's size at every layer
        V = input_transform(to_tiles_layout(x, 1, n0, n1))
        dM = grad_output_transform(to_tiles_layout(dy, 0, n0, n1))
        np.matmul(V.transpose(0, 2, 1), dM, out=dUt_parts[i])
        if need_dx:
            dV = np.matmul(dM, Ut.transpose(0, 2, 1), out=V)
            from_tiles_layout(input_grad_transform(dV, (th, tw)), dx, 1, n0)

    run_chunks(len(bounds), task)
    dUt = dUt_parts[0]
    for part in dUt_parts[1:]:                   # in chunk order: the same for any thread count
        dUt += part
    return dx, weight_transform_adjoint(dUt)

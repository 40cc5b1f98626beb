"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions (refsnn.kernels.winograd): each Numba
kernel equals its NumPy twin bit for bit, the generated formulas are the textbook matrices
(Bᵀ d B, Aᵀ m A, G g Gᵀ and their adjoints), the checked-in formulas are the generator's
output, the convolution equals the direct one (scipy correlation) and im2col's, its gradients
pass float64 finite differences, and it gives the same bytes for any thread count."""
import math

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st

from refsnn import functional as F
from refsnn.kernels import conv_chunked as CC
from refsnn.kernels import winograd as WG
from refsnn.kernels import winograd_codegen
from refsnn.testing import gradient_error, numerical_gradient

DTYPES = st.sampled_from([np.float32, np.float64])
TILES = st.sampled_from([2, 4])


def _run_here(count, task):
    for i in range(count):
        task(i)


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Every 3x3 stride-1 padding-1 convolution through Winograd, whatever its size."""
    monkeypatch.setattr(WG, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(WG, "WINOGRAD_MIN_MACS", 0)


def test_generated_formulas_are_up_to_date():
    with open(winograd_codegen.PATH) as f:
        assert f.read() == winograd_codegen.source(), "run python -m refsnn.kernels.winograd_codegen"


@settings(deadline=None, max_examples=30)
@given(m=TILES, N=st.integers(1, 3), C=st.integers(1, 10), O=st.integers(1, 10), H=st.integers(1, 9),
       W=st.integers(1, 9), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_transform_kernels_equal_twins(m, N, C, O, H, W, dtype, seed):
    _kernels_equal_twins(m, N, C, O, H, W, dtype, seed)


@pytest.mark.parametrize("m,N,C,O,H,W", [(4, 2, 8, 16, 9, 32), (2, 2, 3, 20, 5, 16), (4, 1, 8, 8, 8, 8)])
def test_transform_kernels_equal_twins_blocked(m, N, C, O, H, W):
    """Shapes whose tile rows go through the kernels several tiles at a time (B up to 8)."""
    tw = WG.tiles_of(H, W, m)[1]
    assert WG.tiles_per_block(tw, WG.padded_channels(C)) > 1
    _kernels_equal_twins(m, N, C, O, H, W, np.float32, 7)


def _kernels_equal_twins(m, N, C, O, H, W, dtype, seed):
    rng = np.random.default_rng(seed)
    th, tw = WG.tiles_of(H, W, m)
    T = N * th * tw
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    xp = WG.to_tiles_layout_numpy(x, m, 1)
    V = WG.input_transform(x, 0, N, m)
    np.testing.assert_array_equal(V[:, :T, :C], WG.input_transform_numpy(xp, m))
    assert not V[:, :T, C:].any()               # padded channels: transforms of zeros
    n0, n1 = (1, N) if N > 1 else (0, 1)        # a chunk that does not start at sample 0
    Tc = (n1 - n0) * th * tw
    np.testing.assert_array_equal(WG.input_transform(x, n0, n1, m)[:, :Tc, :C],
                                  WG.input_transform_numpy(WG.to_tiles_layout_numpy(x[n0:n1], m, 1), m))
    for Op in (O, WG.padded_channels(O) + 3):   # M with exactly O channels, and with more
        M = rng.normal(size=(V.shape[0], T, Op)).astype(dtype)
        bias = rng.normal(size=O).astype(dtype)
        for b in (bias, None):
            y = np.full((N + 1, O, H, W), np.nan, dtype=dtype)
            WG.output_transform(M, y, 1, N + 1, m, b)
            yp = WG.output_transform_numpy(M[..., :O], (N, th, tw), m, b)
            np.testing.assert_array_equal(y[1:], WG.from_tiles_layout_numpy(yp, (N, O, H, W), 0))
            assert np.isnan(y[0]).all()         # only the chunk's samples are written
    dy = rng.normal(size=(N + 1, O, H, W)).astype(dtype)
    dM = WG.grad_output_transform(dy, 1, N + 1, m)
    np.testing.assert_array_equal(dM[:, :T, :O],
                                  WG.grad_output_transform_numpy(WG.to_tiles_layout_numpy(dy[1:], m, 0), m))
    assert not dM[:, :T, O:].any()
    dV = rng.normal(size=(V.shape[0], T, C)).astype(dtype)
    dx = np.full((N + 1, C, H, W), np.nan, dtype=dtype)
    WG.input_grad_transform(dV, dx, 1, N + 1, m)
    np.testing.assert_array_equal(
        dx[1:], WG.from_tiles_layout_numpy(WG.input_grad_transform_numpy(dV, (N, th, tw), m), x.shape, 1))
    assert np.isnan(dx[0]).all()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("H,W", [(4, 6), (5, 3), (1, 1), (9, 8)])
def test_twins_are_the_textbook_matrices_and_their_adjoints(m, H, W):
    """Bᵀ d B, Aᵀ m A, G g Gᵀ written with the matrices; each backward transform is the
    adjoint of its forward one (<T a, b> = <a, T* b>), the layouts included."""
    rng = np.random.default_rng(H * 10 + W + m)
    BT, G, AT = WG.matrices(m)
    a = m + 2
    N, C, O = 2, 3, 2
    th, tw = WG.tiles_of(H, W, m)
    x = rng.normal(size=(N, C, H, W))
    xp = WG.to_tiles_layout_numpy(x, m, 1)
    win = np.stack([np.stack([xp[:, i:i + m * th:m, j:j + m * tw:m] for j in range(a)], -1)
                    for i in range(a)], -2)                          # [N, th, tw, C, a, a]
    V = np.einsum("pi,ntucij,qj->pqntuc", BT, win, BT).reshape(a * a, -1, C)
    np.testing.assert_allclose(WG.input_transform_numpy(xp, m), V, atol=1e-12)
    M = rng.normal(size=(a * a, N * th * tw, O))
    Y = np.einsum("ip,pqntuo,jq->ntiujo", AT, M.reshape(a, a, N, th, tw, O), AT)
    yp = WG.output_transform_numpy(M, (N, th, tw), m)
    np.testing.assert_allclose(yp, Y.reshape(N, m * th, m * tw, O), atol=1e-12)
    w = rng.normal(size=(O, C, 3, 3))
    Ut = np.einsum("pi,ocij,qj->pqco", G, w, G).reshape(a * a, C, O)
    np.testing.assert_allclose(WG.weight_transform(w, m)[:, :C], Ut, atol=1e-12)
    Ut32 = WG.weight_transform(w.astype(np.float32), m)
    assert Ut32.dtype == np.float32 and Ut32.flags.c_contiguous
    np.testing.assert_allclose(Ut32[:, :C], Ut, rtol=1e-6, atol=1e-6)
    y = WG.from_tiles_layout_numpy(yp, (N, O, H, W), 0)
    dy, dV, dUt = rng.normal(size=y.shape), rng.normal(size=V.shape), rng.normal(size=Ut.shape)
    dM = WG.grad_output_transform_numpy(WG.to_tiles_layout_numpy(dy, m, 0), m)
    assert np.isclose(np.sum(y * dy), np.sum(M * dM))
    dx = WG.from_tiles_layout_numpy(WG.input_grad_transform_numpy(dV, (N, th, tw), m), x.shape, 1)
    assert np.isclose(np.sum(V * dV), np.sum(x * dx))
    dw = WG.weight_transform_adjoint(dUt, m)
    assert np.isclose(np.sum(Ut * dUt), np.sum(w * dw))
    np.testing.assert_allclose(dw, np.einsum("pi,pqco,qj->ocij", G, dUt.reshape(a, a, C, O), G), atol=1e-12)
    padded = WG.stack_of(a * a, C, O, np.float64)           # a stack_of, C given
    padded[:, :C] = dUt
    np.testing.assert_array_equal(WG.weight_transform_adjoint(padded, m, C), dw)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("N,C,O,H,W", [(2, 3, 4, 9, 7), (3, 2, 2, 1, 1), (1, 5, 3, 2, 5)])
def test_winograd_matches_direct_correlation(m, N, C, O, H, W, winograd_everywhere, monkeypatch):
    monkeypatch.setattr(WG, "F4_MIN_SIZE", 1 if m == 4 else 10**6)
    rng = np.random.default_rng(N + C + H)
    x = rng.normal(size=(N, C, H, W))
    w = rng.normal(size=(O, C, 3, 3))
    b = rng.normal(size=O)
    assert WG.winograd_applies(x.shape, w.shape, 1, 1) and WG.tile_size(x.shape) == m
    y, _ = F.conv2d_forward(x, w, b, stride=1, padding=1)
    ref = np.zeros_like(y)
    for n in range(N):
        for o in range(O):
            ref[n, o] = b[o] + sum(scipy.signal.correlate2d(x[n, c], w[o, c], mode="same") for c in range(C))
    np.testing.assert_allclose(y, ref, atol=1e-12)


@settings(deadline=None, max_examples=12)
@given(m=TILES, N=st.integers(1, 3), C=st.integers(1, 3), O=st.integers(1, 3), H=st.integers(1, 6),
       W=st.integers(1, 6), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_winograd_gradients(m, N, C, O, H, W, bias, seed):
    """float64 central differences of <conv(x, w) + b, dy> against the Winograd backward."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(N, C, H, W)), rng.normal(size=(O, C, 3, 3))
    b = rng.normal(size=O) if bias else None
    dy = rng.normal(size=(N, O, H, W))
    dx, dw = WG.winograd_backward(dy, x, w, True, _run_here, m=m)
    assert WG.winograd_backward(dy, x, w, False, _run_here, m=m)[0] is None

    def loss():
        return float(np.sum(WG.winograd_forward(x, w, b, _run_here, m=m) * dy))

    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6
    assert gradient_error(dw, numerical_gradient(loss, w)) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,H", [(9, 3), (5, 16), (4, 7)])
def test_winograd_same_for_any_thread_count_and_close_to_im2col(N, H, dtype, winograd_everywhere,
                                                                 monkeypatch):
    """One or two BLAS threads (two pool workers): the same bytes; im2col's result to rounding
    (F(4x4, 3x3) at H = 16 and 7, F(2x2, 3x3) at 3)."""
    from threadpoolctl import threadpool_limits
    monkeypatch.setattr(CC, "CONV2D_POOL_MIN_MACS", 0)
    monkeypatch.setattr(WG, "CHUNK_MIN_TILES", 8)       # several chunks at these sizes
    rng = np.random.default_rng(N * H)
    x = (rng.random((N, 6, H, H)) < 0.3).astype(dtype)
    w = rng.normal(0, 0.3, size=(5, 6, 3, 3)).astype(dtype)
    b = rng.normal(size=5).astype(dtype)
    m = WG.tile_size(x.shape)
    assert len(WG.winograd_chunk_bounds(N, WG.tiles_of(H, H, m)[0] ** 2)) > 1
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            y = CC.conv2d_chunked_forward(x, w, b, 1, 1)
            dx, dw = CC.conv2d_chunked_backward(np.cos(y), x, w, 1, 1)
        results.append((y, dx, dw))
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)
    monkeypatch.setattr(WG, "WINOGRAD_MIN_CHANNELS", 10**9)    # im2col
    y0 = CC.conv2d_chunked_forward(x, w, b, 1, 1)
    dx0, dw0 = CC.conv2d_chunked_backward(np.cos(results[0][0]), x, w, 1, 1)
    tol = (1e-5 if m == 2 else 2e-5) if dtype == np.float32 else 1e-12
    for got, ref in zip(results[0], (y0, dx0, dw0)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_winograd_applies_only_where_it_was_measured_faster():
    assert WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 1, 1)        # paper stage 2
    assert WG.winograd_applies((32, 48, 32, 32), (48, 48, 3, 3), 1, 1)        # paper stage 1
    assert WG.winograd_applies((32, 24, 64, 64), (48, 24, 3, 3), 1, 1)        # paper stage 1 proj1
    assert WG.winograd_applies((32, 8, 128, 128), (16, 8, 3, 3), 1, 1)        # 8 channels
    assert not WG.winograd_applies((32, 4, 128, 128), (8, 4, 3, 3), 1, 1)     # 4 channels
    assert not WG.winograd_applies((32, 8, 32, 32), (16, 8, 3, 3), 1, 1)      # cpu: compile time
    assert not WG.winograd_applies((32, 64, 4, 4), (64, 64, 3, 3), 1, 1)      # cpu stage 3 proj2
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 2, 1)    # stride 2
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 1, 0)    # padding 0
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 1, 1), 1, 1)    # 1x1
    assert WG.tile_size((32, 96, 16, 16)) == 4 and WG.tile_size((32, 192, 8, 8)) == 4
    assert WG.tile_size((32, 64, 4, 4)) == 4 and WG.tile_size((32, 64, 3, 5)) == 2


def test_stack_of_spreads_the_matrices_over_cache_sets():
    for count, rows, cols, dtype in [(16, 512, 48, np.float32), (36, 128, 192, np.float32),
                                     (16, 5, 7, np.float64)]:
        s = WG.stack_of(count, rows, cols, dtype)
        assert s.flags.c_contiguous and s.shape[0] == count and s.shape[1] >= rows and s.shape[2] == cols
        sets = {(k * s.strides[0]) % 4096 // 64 for k in range(count)}
        reachable = 4096 // max(64, math.gcd(cols * s.itemsize, 4096))   # sets a whole row apart
        assert len(sets) >= min(count, reachable), sets


def test_the_forward_hands_its_transforms_to_the_backward(winograd_everywhere):
    """``Conv2dCache.prepared``: the Winograd path's transformed weight, computed once, and the
    forward's input transforms, used by the backward and then released; the results are those
    of a backward that computes both again, and a second backward from the same cache (which
    recomputes them) gives the same bytes."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 4, 6, 5)).astype(np.float32)
    w = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, stride=1, padding=1)
    m = WG.tile_size(x.shape)
    np.testing.assert_array_equal(cache.prepared.Ut, WG.weight_transform(w, m))
    bounds = WG.winograd_chunk_bounds(x.shape[0], np.prod(WG.tiles_of(6, 5, m)))
    assert len(cache.prepared.V) == len(bounds) > 1
    for V, (n0, n1) in zip(cache.prepared.V, bounds):
        T = (n1 - n0) * np.prod(WG.tiles_of(6, 5, m))
        np.testing.assert_array_equal(V[:, :T], WG.input_transform(x, n0, n1, m)[:, :T])
    dy = np.cos(y)
    dx, dw, _ = F.conv2d_backward(dy, cache)
    assert cache.prepared.V is None
    dx2, dw2 = CC.conv2d_chunked_backward(dy, x, w, 1, 1)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dw, dw2)
    dx3, dw3, _ = F.conv2d_backward(dy, cache)
    np.testing.assert_array_equal(dx, dx3)
    np.testing.assert_array_equal(dw, dw3)
    _, cache = F.conv2d_forward(x, w, stride=1, padding=1)
    dx4, dw4, _ = F.conv2d_backward(dy, cache, need_dx=False)
    assert dx4 is None
    np.testing.assert_array_equal(dw, dw4)
    assert F.conv2d_forward(x, w, stride=2, padding=1)[1].prepared is None      # im2col


_IN_BOUNDS_SCRIPT = r"""
import numpy as np
from refsnn.kernels import conv_chunked as CC, winograd as WG
from refsnn.kernels.conv_chunked import _run_chunks
rng = np.random.default_rng(0)
for N, C, O, H, W in [(3, 5, 7, 9, 10), (2, 3, 2, 1, 1), (2, 3, 2, 5, 1), (4, 9, 8, 2, 3)]:
    x = rng.normal(size=(N, C, H, W)).astype(np.float32)
    w = rng.normal(size=(O, C, 3, 3)).astype(np.float32)
    b = rng.normal(size=O).astype(np.float32)
    for m in (2, 4):
        y = WG.winograd_forward(x, w, b, _run_chunks, m=m)
        WG.winograd_backward(np.cos(y), x, w, True, _run_chunks, m=m)
        prepared = WG.Prepared(WG.weight_transform(w, m))     # the kept input transforms
        y = WG.winograd_forward(x, w, b, _run_chunks, prepared, m=m)
        WG.winograd_backward(np.cos(y), x, w, True, _run_chunks, prepared, m=m)
    for stride, pad in [(1, 1), (2, 1), (1, 0)]:
        if H + 2 * pad >= 3 and W + 2 * pad >= 3:
            y = CC.conv2d_chunked_forward(x, w, b, stride, pad)
            CC.conv2d_chunked_backward(np.cos(y), x, w, stride, pad)
print("in bounds")
"""


@pytest.mark.slow
def test_convolution_kernels_stay_in_bounds(tmp_path):
    """The Winograd and im2col kernels under Numba's bounds checking (NUMBA_BOUNDSCHECK=1, a
    fresh cache), odd sizes and one-pixel maps included: how an out-of-bounds read in im2col's
    same-padding path and a write past the chunk in the Winograd output were found."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _IN_BOUNDS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0 and "in bounds" in out.stdout, out.stderr[-3000:]


def test_the_weight_transforms_run_on_one_blas_thread(winograd_everywhere, monkeypatch):
    """A GEMM on two OpenBLAS threads leaves the second one spinning for ~0.1 s, which slowed
    every op after it (benchmarks/README.md): the Winograd weight transforms (small GEMMs) run
    on one, and the thread count is restored after them."""
    from threadpoolctl import threadpool_info, threadpool_limits
    seen = []

    def blas_threads():          # numpy's OpenBLAS (scipy's, if loaded, is not the one numpy calls)
        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]

    for name in ("weight_transform", "weight_transform_adjoint"):
        real = getattr(WG, name)
        monkeypatch.setattr(WG, name, lambda *a, real=real, name=name: (seen.append((name, blas_threads())), real(*a))[1])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 8)).astype(np.float32)
    w = rng.normal(size=(8, 8, 3, 3)).astype(np.float32)
    with threadpool_limits(2, user_api="blas"):
        y, cache = F.conv2d_forward(x, w, stride=1, padding=1)
        F.conv2d_backward(np.cos(y), cache)
        after = blas_threads()
    assert [name for name, _ in seen] == ["weight_transform", "weight_transform_adjoint"]
    assert all(set(threads) == {1} for _, threads in seen) and set(after) == {2}, (seen, after)

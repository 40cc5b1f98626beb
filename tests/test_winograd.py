"""Winograd F(2x2, 3x3) convolution (refsnn.kernels.winograd): each Numba transform equals its
NumPy twin bit for bit, the twins equal the textbook matrices (Bᵀ d B, Aᵀ m A, G g Gᵀ and their
adjoints) to rounding, the convolution equals the direct one (scipy correlation) and im2col's,
its gradients pass float64 finite differences, and it gives the same bytes for any thread count."""
import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st

from refsnn import functional as F
from refsnn.kernels import conv_chunked as CC
from refsnn.kernels import winograd as WG
from refsnn.testing import gradient_error, numerical_gradient

DTYPES = st.sampled_from([np.float32, np.float64])


def _run_here(count, task):
    for i in range(count):
        task(i)


@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Every 3x3 stride-1 padding-1 convolution through Winograd, whatever its size."""
    monkeypatch.setattr(WG, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(WG, "WINOGRAD_MIN_MACS", 0)


@settings(deadline=None, max_examples=25)
@given(N=st.integers(1, 3), C=st.integers(1, 4), O=st.integers(1, 4), H=st.integers(1, 9),
       W=st.integers(1, 9), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_transform_kernels_equal_twins(N, C, O, H, W, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    V = WG.input_transform(x)
    np.testing.assert_array_equal(V, WG.input_transform_numpy(x))
    n0, n1 = (1, N) if N > 1 else (0, 1)        # a chunk that does not start at sample 0
    np.testing.assert_array_equal(WG.input_transform(x, n0, n1), WG.input_transform_numpy(x[n0:n1]))
    M = rng.normal(size=(16, O, V.shape[2])).astype(dtype)
    bias = rng.normal(size=O).astype(dtype)
    y = np.full((N, O, H, W), np.nan, dtype=dtype)
    WG.output_transform(M, y, bias=bias)
    np.testing.assert_array_equal(y, WG.output_transform_numpy(M, y.shape, bias))
    WG.output_transform(M, y)
    np.testing.assert_array_equal(y, WG.output_transform_numpy(M, y.shape))
    dy = rng.normal(size=(N, O, H, W)).astype(dtype)
    np.testing.assert_array_equal(WG.grad_output_transform(dy), WG.grad_output_transform_numpy(dy))
    dV = rng.normal(size=(16, C, V.shape[2])).astype(dtype)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    np.testing.assert_array_equal(WG.input_grad_transform(dV, dx), WG.input_grad_transform_numpy(dV, x.shape))
    w = rng.normal(size=(O, C, 3, 3)).astype(dtype)
    np.testing.assert_array_equal(WG.weight_transform(w), WG.weight_transform_numpy(w))
    dU = rng.normal(size=(16, O, C)).astype(dtype)
    np.testing.assert_array_equal(WG.weight_transform_adjoint(dU), WG.weight_transform_adjoint_numpy(dU))


def _windows(x):
    """[N, C, th, tw, 4, 4] zero-padded input windows of the tiles."""
    N, C, H, W = x.shape
    th, tw = WG.tiles_of(H, W)
    xp = np.zeros((N, C, 2 * th + 2, 2 * tw + 2))
    xp[:, :, 1:H + 1, 1:W + 1] = x
    return np.stack([np.stack([xp[:, :, a:a + 2 * th:2, b:b + 2 * tw:2] for b in range(4)], -1)
                     for a in range(4)], -2)


@pytest.mark.parametrize("H,W", [(4, 6), (5, 3), (1, 1)])
def test_twins_are_the_textbook_matrices_and_their_adjoints(H, W):
    """Bᵀ d B, Aᵀ m A, G g Gᵀ written with the matrices; each backward transform is the
    adjoint of its forward one (<T a, b> = <a, T* b>)."""
    rng = np.random.default_rng(H * 10 + W)
    N, C, O = 2, 3, 2
    th, tw = WG.tiles_of(H, W)
    x = rng.normal(size=(N, C, H, W))
    V = np.einsum("ai,nctuij,bj->abcntu", WG.BT, _windows(x), WG.BT).reshape(16, C, -1)
    np.testing.assert_allclose(WG.input_transform_numpy(x), V, atol=1e-12)
    M = rng.normal(size=(16, O, N * th * tw))
    Y = np.einsum("ia,abontu,jb->notiuj", WG.AT, M.reshape(4, 4, O, N, th, tw), WG.AT)
    y = WG.output_transform_numpy(M, (N, O, H, W))
    np.testing.assert_allclose(y, Y.reshape(N, O, 2 * th, 2 * tw)[:, :, :H, :W], atol=1e-12)
    w = rng.normal(size=(O, C, 3, 3))
    U = np.einsum("ai,ocij,bj->aboc", WG.G, w, WG.G).reshape(16, O, C)
    np.testing.assert_allclose(WG.weight_transform_numpy(w), U, atol=1e-12)
    dy, dV, dU = rng.normal(size=y.shape), rng.normal(size=V.shape), rng.normal(size=U.shape)
    assert np.isclose(np.sum(y * dy), np.sum(M * WG.grad_output_transform_numpy(dy)))
    assert np.isclose(np.sum(V * dV), np.sum(x * WG.input_grad_transform_numpy(dV, x.shape)))
    assert np.isclose(np.sum(U * dU), np.sum(w * WG.weight_transform_adjoint_numpy(dU)))


@pytest.mark.parametrize("N,C,O,H,W", [(2, 3, 4, 9, 7), (3, 2, 2, 1, 1), (1, 5, 3, 2, 5)])
def test_winograd_matches_direct_correlation(N, C, O, H, W, winograd_everywhere):
    rng = np.random.default_rng(N + C + H)
    x = rng.normal(size=(N, C, H, W))
    w = rng.normal(size=(O, C, 3, 3))
    b = rng.normal(size=O)
    assert WG.winograd_applies(x.shape, w.shape, 1, 1)
    y, _ = F.conv2d_forward(x, w, b, stride=1, padding=1)
    ref = np.zeros_like(y)
    for n in range(N):
        for o in range(O):
            ref[n, o] = b[o] + sum(scipy.signal.correlate2d(x[n, c], w[o, c], mode="same") for c in range(C))
    np.testing.assert_allclose(y, ref, atol=1e-12)


@settings(deadline=None, max_examples=12)
@given(N=st.integers(1, 3), C=st.integers(1, 3), O=st.integers(1, 3), H=st.integers(1, 6),
       W=st.integers(1, 6), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_winograd_gradients(N, C, O, H, W, bias, seed):
    """float64 central differences of <conv(x, w) + b, dy> against the Winograd backward."""
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(N, C, H, W)), rng.normal(size=(O, C, 3, 3))
    b = rng.normal(size=O) if bias else None
    dy = rng.normal(size=(N, O, H, W))
    dx, dw = WG.winograd_backward(dy, x, w, True, _run_here)
    assert WG.winograd_backward(dy, x, w, False, _run_here)[0] is None

    def loss():
        return float(np.sum(WG.winograd_forward(x, w, b, _run_here) * dy))

    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6
    assert gradient_error(dw, numerical_gradient(loss, w)) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,H", [(9, 4), (5, 16), (4, 7)])
def test_winograd_same_for_any_thread_count_and_close_to_im2col(N, H, dtype, winograd_everywhere,
                                                                 monkeypatch):
    """One or two BLAS threads (two pool workers): the same bytes; im2col's result to rounding."""
    from threadpoolctl import threadpool_limits
    monkeypatch.setattr(CC, "CONV2D_POOL_MIN_MACS", 0)
    monkeypatch.setattr(WG, "CHUNK_MIN_TILES", 8)       # several chunks at these sizes
    rng = np.random.default_rng(N * H)
    x = (rng.random((N, 6, H, H)) < 0.3).astype(dtype)
    w = rng.normal(0, 0.3, size=(5, 6, 3, 3)).astype(dtype)
    b = rng.normal(size=5).astype(dtype)
    assert len(WG.winograd_chunk_bounds(N, WG.tiles_of(H, H)[0] ** 2)) > 1
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
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, ref in zip(results[0], (y0, dx0, dw0)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_winograd_applies_only_where_it_was_measured_faster():
    assert WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 1, 1)        # paper stage 2
    assert WG.winograd_applies((32, 48, 32, 32), (48, 48, 3, 3), 1, 1)        # paper stage 1
    assert not WG.winograd_applies((32, 24, 64, 64), (48, 24, 3, 3), 1, 1)    # 24 channels
    assert not WG.winograd_applies((32, 64, 4, 4), (64, 64, 3, 3), 1, 1)      # cpu: small
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 2, 1)    # stride 2
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 3, 3), 1, 0)    # padding 0
    assert not WG.winograd_applies((32, 96, 16, 16), (96, 96, 1, 1), 1, 1)    # 1x1


def test_stack16_spreads_the_matrices_over_cache_sets():
    for rows, cols, dtype in [(192, 128, np.float32), (96, 512, np.float32), (5, 7, np.float64)]:
        s = WG.stack16(rows, cols, dtype)
        assert s.shape == (16, rows, cols) and s.strides[1:] == (cols * s.itemsize, s.itemsize)
        assert s.strides[0] >= rows * cols * s.itemsize and s.strides[0] % 4096 == 64
        s[...] = 1.0                            # every element is inside its buffer
        assert WG._as_stack16(s) is s

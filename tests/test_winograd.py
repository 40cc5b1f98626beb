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
    th, tw = WG.tiles_of(H, W)
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    xp = WG.to_tiles_layout(x, 1)
    np.testing.assert_array_equal(xp, WG.to_tiles_layout_numpy(x, 1))
    n0, n1 = (1, N) if N > 1 else (0, 1)        # a chunk that does not start at sample 0
    np.testing.assert_array_equal(WG.to_tiles_layout(x, 1, n0, n1), WG.to_tiles_layout_numpy(x[n0:n1], 1))
    V = WG.input_transform(xp)
    np.testing.assert_array_equal(V, WG.input_transform_numpy(xp))
    M = rng.normal(size=(16, V.shape[1], O)).astype(dtype)
    bias = rng.normal(size=O).astype(dtype)
    yp = WG.output_transform(M, (th, tw), bias)
    np.testing.assert_array_equal(yp, WG.output_transform_numpy(M, (th, tw), bias))
    np.testing.assert_array_equal(WG.output_transform(M, (th, tw)), WG.output_transform_numpy(M, (th, tw)))
    y = np.full((N + 1, O, H, W), np.nan, dtype=dtype)
    WG.from_tiles_layout(yp, y, 0, 1)
    np.testing.assert_array_equal(y[1:], WG.from_tiles_layout_numpy(yp, (N, O, H, W), 0))
    assert np.isnan(y[0]).all()                 # only the chunk's samples are written
    dy = rng.normal(size=(N, O, H, W)).astype(dtype)
    dyp = WG.to_tiles_layout(dy, 0)
    np.testing.assert_array_equal(dyp, WG.to_tiles_layout_numpy(dy, 0))
    np.testing.assert_array_equal(WG.grad_output_transform(dyp), WG.grad_output_transform_numpy(dyp))
    dV = rng.normal(size=V.shape).astype(dtype)
    dxp = WG.input_grad_transform(dV, (th, tw))
    np.testing.assert_array_equal(dxp, WG.input_grad_transform_numpy(dV, (th, tw)))
    np.testing.assert_array_equal(WG.from_tiles_layout(dxp, np.empty_like(x), 1),
                                  WG.from_tiles_layout_numpy(dxp, x.shape, 1))
    w = rng.normal(size=(O, C, 3, 3)).astype(dtype)
    np.testing.assert_array_equal(WG.weight_transform(w), WG.weight_transform_numpy(w))
    dUt = rng.normal(size=(16, C, O)).astype(dtype)
    np.testing.assert_array_equal(WG.weight_transform_adjoint(dUt), WG.weight_transform_adjoint_numpy(dUt))


@pytest.mark.parametrize("H,W", [(4, 6), (5, 3), (1, 1)])
def test_twins_are_the_textbook_matrices_and_their_adjoints(H, W):
    """Bᵀ d B, Aᵀ m A, G g Gᵀ written with the matrices; each backward transform is the
    adjoint of its forward one (<T a, b> = <a, T* b>), the layouts included."""
    rng = np.random.default_rng(H * 10 + W)
    N, C, O = 2, 3, 2
    th, tw = WG.tiles_of(H, W)
    x = rng.normal(size=(N, C, H, W))
    xp = WG.to_tiles_layout_numpy(x, 1)
    win = np.stack([np.stack([xp[:, i:i + 2 * th:2, j:j + 2 * tw:2] for j in range(4)], -1)
                    for i in range(4)], -2)                          # [N, th, tw, C, 4, 4]
    V = np.einsum("ai,ntucij,bj->abntuc", WG.BT, win, WG.BT).reshape(16, -1, C)
    np.testing.assert_allclose(WG.input_transform_numpy(xp), V, atol=1e-12)
    M = rng.normal(size=(16, N * th * tw, O))
    Y = np.einsum("ia,abntuo,jb->ntiujo", WG.AT, M.reshape(4, 4, N, th, tw, O), WG.AT)
    yp = WG.output_transform_numpy(M, (th, tw))
    np.testing.assert_allclose(yp, Y.reshape(N, 2 * th, 2 * tw, O), atol=1e-12)
    w = rng.normal(size=(O, C, 3, 3))
    Ut = np.einsum("ai,ocij,bj->abco", WG.G, w, WG.G).reshape(16, C, O)
    np.testing.assert_allclose(WG.weight_transform_numpy(w), Ut, atol=1e-12)
    y = WG.from_tiles_layout_numpy(yp, (N, O, H, W), 0)
    dy, dV, dUt = rng.normal(size=y.shape), rng.normal(size=V.shape), rng.normal(size=Ut.shape)
    dM = WG.grad_output_transform_numpy(WG.to_tiles_layout_numpy(dy, 0))
    assert np.isclose(np.sum(y * dy), np.sum(M * dM))
    dx = WG.from_tiles_layout_numpy(WG.input_grad_transform_numpy(dV, (th, tw)), x.shape, 1)
    assert np.isclose(np.sum(V * dV), np.sum(x * dx))
    assert np.isclose(np.sum(Ut * dUt), np.sum(w * WG.weight_transform_adjoint_numpy(dUt)))


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


def test_stack_of_spreads_the_matrices_over_cache_sets():
    for rows, cols, dtype in [(128, 192, np.float32), (512, 96, np.float32), (5, 7, np.float64)]:
        s = WG.stack_of(16, rows, cols, dtype)
        assert s.shape == (16, rows, cols) and s.strides[1:] == (cols * s.itemsize, s.itemsize)
        assert s.strides[0] >= rows * cols * s.itemsize and s.strides[0] % 4096 == 64
        s[...] = 1.0                            # every element is inside its buffer


def test_the_forward_hands_its_transformed_weight_to_the_backward(winograd_everywhere):
    """``Conv2dCache.prepared``: the Winograd path's transformed weight, computed once; the
    results are those of a backward that computes it again."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)
    w = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, stride=1, padding=1)
    np.testing.assert_array_equal(cache.prepared, WG.weight_transform(w))
    dy = np.cos(y)
    dx, dw, _ = F.conv2d_backward(dy, cache)
    dx2, dw2 = CC.conv2d_chunked_backward(dy, x, w, 1, 1)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dw, dw2)
    assert F.conv2d_forward(x, w, stride=2, padding=1)[1].prepared is None      # im2col

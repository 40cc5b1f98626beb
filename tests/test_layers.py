"""Non-spiking ops (SPEC section 3): float64 finite differences contracted with a random
upstream gradient (SPEC section 12), kernels against their NumPy twins, and bad input."""
import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st

from refsnn import functional as F
from refsnn.kernels import im2col as K
from refsnn.kernels import pool as P
from refsnn.testing import gradient_error, numerical_gradient

FD = dict(deadline=None, max_examples=15)


def fd_check(forward, backward, arrays, rng, tol=1e-6):
    """forward(*arrays) -> out; backward(dout) -> grads (one per array). Checks each."""
    out = forward(*arrays)
    dout = rng.normal(size=np.shape(out))
    grads = backward(dout)

    def loss():
        return float(np.sum(forward(*arrays) * dout))

    for a, g in zip(arrays, grads):
        if g is None:
            continue
        err = gradient_error(g, numerical_gradient(loss, a))
        assert err < tol, err


# ---------------------------------------------------------------- convolution

@settings(**FD)
@given(N=st.integers(1, 3), C=st.integers(1, 3), O=st.integers(1, 3), H=st.integers(3, 7),
       W=st.integers(3, 6), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_gradients(N, C, O, H, W, k, stride, pad, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, H, W))
    w = rng.normal(size=(O, C, k, k))
    b = rng.normal(size=O) if bias else None
    arrays = [x, w] + ([b] if bias else [])
    cache = {}

    def forward(x, w, b=None):
        y, cache["c"] = F.conv2d_forward(x, w, b, stride=stride, padding=pad)
        return y

    def backward(dy):
        dx, dw, db = F.conv2d_backward(dy, cache["c"])
        return [dx, dw] + ([db] if bias else [])

    fd_check(forward, backward, arrays, rng)


def test_conv2d_matches_direct_correlation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 7))
    w = rng.normal(size=(4, 3, 3, 3))
    b = rng.normal(size=4)
    y, _ = F.conv2d_forward(x, w, b, stride=1, padding=1)
    ref = np.zeros_like(y)
    for n in range(2):
        for o in range(4):
            ref[n, o] = b[o] + sum(scipy.signal.correlate2d(x[n, c], w[o, c], mode="same") for c in range(3))
    np.testing.assert_allclose(y, ref, atol=1e-12)
    y2, _ = F.conv2d_forward(x, w, b, stride=2, padding=1)
    np.testing.assert_allclose(y2, ref[:, :, ::2, ::2], atol=1e-12)


@settings(deadline=None, max_examples=30)
@given(N=st.integers(1, 3), C=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9),
       k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       dtype=st.sampled_from([np.float32, np.float64]), chunk=st.tuples(st.integers(0, 2), st.integers(1, 3)),
       seed=st.integers(0, 2**16))
def test_im2col_kernels_equal_twins(N, C, H, W, k, stride, pad, dtype, chunk, seed):
    """The kernels on a chunk of samples n0:n1 (the whole batch included) against the twins
    on x[n0:n1]; col2im and cm_to_nchw must not touch the other samples."""
    if H + 2 * pad < k or W + 2 * pad < k:
        return
    n0 = min(chunk[0], N - 1)
    n1 = min(N, n0 + chunk[1])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    np.testing.assert_array_equal(K.im2col(x, k, k, stride, pad), K.im2col_numpy(x, k, k, stride, pad))
    cols = K.im2col(x, k, k, stride, pad, n0=n0, n1=n1)
    np.testing.assert_array_equal(cols, K.im2col_numpy(x[n0:n1], k, k, stride, pad))
    d = rng.normal(size=cols.shape).astype(dtype)
    out = np.full(x.shape, 7.0, dtype=dtype)
    K.col2im(d, x.shape, k, k, stride, pad, out=out, n0=n0, n1=n1)
    a, b = out[n0:n1], K.col2im_numpy(d, x[n0:n1].shape, k, k, stride, pad)
    if k == 1 and stride >= 1 and pad == 0:
        np.testing.assert_array_equal(a, b)
    else:  # both add the same taps; only the summation order may differ
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert np.all(out[:n0] == 7.0) and np.all(out[n1:] == 7.0)
    y2 = rng.normal(size=(3, N * 5)).astype(dtype)
    bias = rng.normal(size=3).astype(dtype)
    np.testing.assert_array_equal(K.cm_to_nchw(y2, N, bias), K.cm_to_nchw_numpy(y2, N, bias))
    y = np.full((N, 3, 5), 7.0, dtype=dtype)
    K.cm_to_nchw(y2[:, :(n1 - n0) * 5], N, bias, out=y, n0=n0)
    np.testing.assert_array_equal(y[n0:n1], K.cm_to_nchw_numpy(y2[:, :(n1 - n0) * 5], n1 - n0, bias))
    assert np.all(y[:n0] == 7.0) and np.all(y[n1:] == 7.0)
    dy = rng.normal(size=(N, 3, 5)).astype(dtype)
    np.testing.assert_array_equal(K.nchw_to_cm(dy), K.nchw_to_cm_numpy(dy))
    np.testing.assert_array_equal(K.nchw_to_cm(dy, n0=n0, n1=n1), K.nchw_to_cm_numpy(dy[n0:n1]))


@pytest.mark.parametrize("pool_min_macs", [0, None])
@pytest.mark.parametrize("N,H,k,stride,pad", [(9, 4, 3, 1, 1), (5, 32, 3, 1, 1), (6, 9, 3, 2, 1), (3, 5, 1, 1, 0)])
def test_conv2d_chunked_same_for_any_thread_count(N, H, k, stride, pad, pool_min_macs, monkeypatch):
    """Chunks of one or several samples, one or two BLAS threads (so one or two workers, or
    with a small convolution every chunk on the calling thread): the same bytes, equal to one
    GEMM over the whole batch (NumPy twins) to rounding."""
    from threadpoolctl import threadpool_limits
    from refsnn.kernels import conv_chunked as CC
    if pool_min_macs is not None:       # these shapes are small: make them use the pool
        monkeypatch.setattr(CC, "CONV2D_POOL_MIN_MACS", pool_min_macs)
    rng = np.random.default_rng(N)
    x = rng.normal(size=(N, 3, H, H)).astype(np.float32)
    w = rng.normal(size=(5, 3, k, k)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    bounds = CC.chunk_bounds(N, K.conv_out_size(H, k, stride, pad) ** 2)
    assert bounds[0][0] == 0 and bounds[-1][1] == N and all(a[1] == c[0] for a, c in zip(bounds, bounds[1:]))
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            y = CC.conv2d_chunked_forward(x, w, b, stride, pad)
            dy = np.cos(y)
            dx, dw = CC.conv2d_chunked_backward(dy, x, w, stride, pad)
            _, dw_only = CC.conv2d_chunked_backward(dy, x, w, stride, pad, need_dx=False)
        np.testing.assert_array_equal(dw_only, dw)
        results.append((y, dx, dw))
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)
    y, dx, dw = results[0]
    cols = K.im2col_numpy(x, k, k, stride, pad)
    y2 = w.reshape(5, -1) @ cols
    np.testing.assert_allclose(y, K.cm_to_nchw_numpy(y2, N, b).reshape(y.shape), rtol=1e-5, atol=1e-5)
    dy2 = K.nchw_to_cm_numpy(np.cos(y).reshape(N, 5, -1))
    np.testing.assert_allclose(dw, (dy2 @ cols.T).reshape(w.shape), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, K.col2im_numpy(w.reshape(5, -1).T @ dy2, x.shape, k, k, stride, pad),
                               rtol=1e-4, atol=1e-4)


def test_conv_chunks_run_once_each_and_failures_surface():
    """The chunk runner: every chunk exactly once over two threads, BLAS threads restored, and
    an exception in a chunk raised to the caller (also with the threads restored)."""
    from threadpoolctl import threadpool_info, threadpool_limits
    from refsnn.kernels.conv_chunked import _run_chunks
    with threadpool_limits(2, user_api="blas"):
        seen = []
        _run_chunks(9, seen.append)
        assert sorted(seen) == list(range(9))

        def bad(i):
            if i == 3:
                raise ValueError("chunk 3")

        with pytest.raises(ValueError, match="chunk 3"):
            _run_chunks(9, bad)
        assert all(i["num_threads"] == 2 for i in threadpool_info() if i["user_api"] == "blas")


def test_conv_chunks_in_a_forked_child():
    """A child forked after the chunk pool started gets its own pool (the parent's threads do
    not exist there) instead of waiting forever."""
    import multiprocessing
    from threadpoolctl import threadpool_limits
    from refsnn.kernels.conv_chunked import _run_chunks
    with threadpool_limits(2, user_api="blas"):
        _run_chunks(4, lambda i: None)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            assert pool.apply_async(_sum_of_chunks_under_two_threads).get(timeout=120) == 45


def _sum_of_chunks_under_two_threads():
    from threadpoolctl import threadpool_limits
    from refsnn.kernels.conv_chunked import _run_chunks
    seen = []
    with threadpool_limits(2, user_api="blas"):
        _run_chunks(10, seen.append)
    return sum(seen)


@settings(**FD)
@given(M=st.integers(1, 3), C=st.integers(1, 4), O=st.integers(1, 4), N=st.integers(1, 5),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv1x1_gradients(M, C, O, N, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(M, C, N)), rng.normal(size=(O, C))
    b = rng.normal(size=O) if bias else None
    cache = {}

    def forward(x, w, b=None):
        y, cache["c"] = F.conv1x1_forward(x, w, b)
        return y

    def backward(dy):
        dx, dw, db = F.conv1x1_backward(dy, cache["c"])
        return [dx, dw] + ([db] if bias else [])

    fd_check(forward, backward, [x, w] + ([b] if bias else []), rng)


@pytest.mark.parametrize("M,C,N,O", [(9, 3, 4, 5), (5, 4, 600, 3), (32, 6, 64, 7), (1, 2, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv1x1_chunked_same_for_any_thread_count(M, C, N, O, dtype):
    """Chunks of one or several samples, one or two BLAS threads: the same bytes (weight and
    bias gradients summed in chunk order), equal to plain NumPy products to rounding."""
    from threadpoolctl import threadpool_limits
    from refsnn.kernels import conv_chunked as CC
    rng = np.random.default_rng(M * N)
    x = rng.normal(size=(M, C, N)).astype(dtype)
    w = rng.normal(size=(O, C)).astype(dtype)
    b = rng.normal(size=O).astype(dtype)
    dy = rng.normal(size=(M, O, N)).astype(dtype)
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            y = CC.conv1x1_chunked_forward(x, w, b)
            dx, dw, db = CC.conv1x1_chunked_backward(dy, x, w, need_bias=True)
            _, dw_nb, db_nb = CC.conv1x1_chunked_backward(dy, x, w)
        assert db_nb is None
        np.testing.assert_array_equal(dw_nb, dw)
        results.append((y, dx, dw, db))
    for a, c in zip(*results):
        np.testing.assert_array_equal(a, c)
    y, dx, dw, db = results[0]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, np.einsum("oc,mcn->mon", w, x) + b[:, None], **tol)
    np.testing.assert_allclose(dx, np.einsum("oc,mon->mcn", w, dy), **tol)
    np.testing.assert_allclose(dw, np.einsum("mon,mcn->oc", dy, x), **tol)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2)), **tol)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype


@pytest.mark.parametrize("N", [256, 255])
def test_conv1x1_runs_chunked_from_its_size_on(N):
    """``conv1x1_forward/backward`` take the chunked path from CONV1X1_CHUNK_MIN_MACS
    multiply-accumulates on (16*64*256*64 = 2^24), numpy's stacked matmul below; both agree."""
    from refsnn.kernels import conv_chunked as CC
    rng = np.random.default_rng(N)
    x = (rng.random((16, 64, N)) < 0.2).astype(np.float32)
    w = rng.normal(size=(64, 64)).astype(np.float32)
    b = rng.normal(size=64).astype(np.float32)
    dy = rng.normal(size=(16, 64, N)).astype(np.float32)
    y, cache = F.conv1x1_forward(x, w, b)
    grads = F.conv1x1_backward(dy, cache)
    chunked = (CC.conv1x1_chunked_forward(x, w, b),) + CC.conv1x1_chunked_backward(dy, x, w, need_bias=True)
    stacked = (np.matmul(w, x) + b[:, None], np.matmul(w.T, dy),
               np.matmul(dy, x.transpose(0, 2, 1)).sum(axis=0), dy.sum(axis=(0, 2)))
    assert (cache.macs >= CC.CONV1X1_CHUNK_MIN_MACS) == (N == 256)
    for got, c, s in zip((y,) + grads, chunked, stacked):
        np.testing.assert_array_equal(got, c if N == 256 else s)
        np.testing.assert_allclose(c, s, rtol=1e-4, atol=1e-3)


@settings(**FD)
@given(B=st.integers(1, 4), I=st.integers(1, 5), O=st.integers(1, 4), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_linear_gradients(B, I, O, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(B, I)), rng.normal(size=(O, I))
    b = rng.normal(size=O) if bias else None
    cache = {}

    def forward(x, w, b=None):
        y, cache["c"] = F.linear_forward(x, w, b)
        return y

    def backward(dy):
        dx, dw, db = F.linear_backward(dy, cache["c"])
        return [dx, dw] + ([db] if bias else [])

    fd_check(forward, backward, [x, w] + ([b] if bias else []), rng)


# ---------------------------------------------------------------- BatchNorm

@settings(**FD)
@given(M=st.integers(1, 3), C=st.integers(1, 4), P=st.integers(1, 6), training=st.booleans(),
       seed=st.integers(0, 2**16))
def test_batchnorm_gradients(M, C, P, training, seed):
    if training and M * P < 4:
        # with 2 or 3 values per channel the normalised output is nearly constant and dx is of
        # the order of eps: finite differences then measure only rounding noise
        return
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=(M, C, P))
    w, b = rng.normal(size=C), rng.normal(size=C)
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, size=C)
    cache = {}

    def forward(x, w, b):
        y, cache["c"], _, _ = F.batchnorm_forward(x, w, b, rm, rv, training=training)
        return y

    def backward(dy):
        return list(F.batchnorm_backward(dy, cache["c"]))

    fd_check(forward, backward, [x, w, b], rng)


def test_batchnorm_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 3, 10))
    rm, rv = np.zeros(3), np.ones(3)
    y, _, new_mean, new_var = F.batchnorm_forward(x, np.ones(3), np.zeros(3), rm, rv, training=True)
    flat = x.transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(y.transpose(1, 0, 2).reshape(3, -1),
                               (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5),
                               atol=1e-12)
    np.testing.assert_allclose(new_mean, 0.1 * flat.mean(1), atol=1e-12)
    np.testing.assert_allclose(new_var, 0.9 + 0.1 * flat.var(1, ddof=1), atol=1e-12)  # unbiased
    assert (rm == 0).all() and (rv == 1).all()      # pure: inputs untouched
    y_eval, _, m2, v2 = F.batchnorm_forward(x, np.ones(3), np.zeros(3), new_mean, new_var, training=False)
    np.testing.assert_allclose(y_eval, (x - new_mean[:, None]) / np.sqrt(new_var[:, None] + 1e-5), atol=1e-12)
    assert m2 is new_mean and v2 is new_var


# ---------------------------------------------------------------- pooling

def _distinct(rng, shape):
    # a permutation: no ties, so finite differences never cross a max switch by accident
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0).astype(np.float64)


@settings(**FD)
@given(N=st.integers(1, 2), C=st.integers(1, 3), H=st.integers(1, 7), W=st.integers(1, 7),
       seed=st.integers(0, 2**16), backend=st.sampled_from(["numba", "numpy"]))
def test_maxpool_gradients(N, C, H, W, seed, backend):
    rng = np.random.default_rng(seed)
    x = _distinct(rng, (N, C, H, W))
    cache = {}

    def forward(x):
        y, cache["c"] = F.maxpool2d_forward(x, backend=backend)
        return y

    fd_check(forward, lambda dy: [F.maxpool2d_backward(dy, cache["c"])], [x], rng)


def test_maxpool_shape_and_tie_rule():
    x = np.zeros((1, 1, 5, 4))
    y, cache = F.maxpool2d_forward(x)
    assert y.shape == (1, 1, 3, 2)             # ceil(H/2), ceil(W/2)
    dx = F.maxpool2d_backward(np.ones_like(y), cache)
    # all ties: each window sends its gradient to its first (top-left) valid position
    expected = np.zeros((5, 4))
    for ho in range(3):
        for wo in range(2):
            expected[max(0, 2 * ho - 1), max(0, 2 * wo - 1)] += 1
    np.testing.assert_array_equal(dx[0, 0], expected)
    # padding is -inf: an all-negative map never selects the padding
    y, _ = F.maxpool2d_forward(-np.ones((1, 1, 3, 3)))
    assert (y == -1).all()


@settings(deadline=None, max_examples=30)
@given(M=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9), levels=st.integers(1, 4),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_maxpool_kernel_equals_twin(M, H, W, levels, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, size=(M, H, W)).astype(dtype)      # few levels: many ties
    Ho, Wo = (H - 1) // 2 + 1, (W - 1) // 2 + 1
    y = np.empty((M, Ho, Wo), dtype=dtype)
    am = np.empty((M, Ho, Wo), dtype=np.int64)
    P.maxpool_forward_kernel(x, 3, 2, 1, y, am)
    y2, am2 = P.maxpool_forward_numpy(x, 3, 2, 1)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(am, am2)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx = np.zeros((M, H, W), dtype=dtype)
    P.maxpool_backward_kernel(dy, am, H, W, dx)
    np.testing.assert_allclose(dx, P.maxpool_backward_numpy(dy, am2, H, W), rtol=1e-6, atol=1e-6)


def test_mean_pool_gradients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 4, 5))
    cache = {}

    def forward(x):
        y, cache["c"] = F.mean_pool_forward(x)
        return y

    fd_check(forward, lambda dy: [F.mean_pool_backward(dy, cache["c"])], [x], rng)
    np.testing.assert_allclose(forward(x), x.mean(axis=(0, 3)))


# ---------------------------------------------------------------- loss

@settings(**FD)
@given(B=st.integers(1, 4), K=st.integers(2, 6), smoothing=st.sampled_from([0.0, 0.1, 0.3]),
       soft=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_gradients(B, K, smoothing, soft, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(B, K)) * 3
    if soft:
        labels = rng.dirichlet(np.ones(K), size=B)
    else:
        labels = rng.integers(0, K, size=B)
    loss, cache = F.cross_entropy_forward(z, labels, label_smoothing=smoothing)
    g = F.cross_entropy_backward(cache)
    g_fd = numerical_gradient(lambda: F.cross_entropy_forward(z, labels, label_smoothing=smoothing)[0], z)
    assert gradient_error(g, g_fd) < 1e-6


def test_cross_entropy_value():
    z = np.array([[2.0, 0.0, -1.0]])
    p = np.exp(z) / np.exp(z).sum()
    loss, _ = F.cross_entropy_forward(z, np.array([0]), label_smoothing=0.3)
    q = np.array([0.7 + 0.1, 0.1, 0.1])
    assert abs(loss - float(-(q * np.log(p)).sum())) < 1e-12


# ---------------------------------------------------------------- bad input

def test_bad_inputs_name_the_argument():
    x = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError, match="x: has 3 channels on axis 1, but weight"):
        F.conv2d_forward(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="bias: expected shape"):
        F.conv2d_forward(x, np.zeros((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="x: expected 4 dimensions"):
        F.conv2d_forward(x[0], np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="x: contains NaN"):
        F.conv2d_forward(np.full_like(x, np.nan), np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="weight: expected dtype float64"):
        F.conv2d_forward(x, np.zeros((4, 3, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="running_var: expected shape"):
        F.batchnorm_forward(np.zeros((2, 3, 4)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(2))
    with pytest.raises(ValueError, match="labels: expected class indices"):
        F.cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels: expected integer"):
        F.cross_entropy_forward(np.zeros((2, 3)), np.array([0.0, 1.0]))
    _, cache = F.conv1x1_forward(np.zeros((2, 3, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dy: expected shape"):
        F.conv1x1_backward(np.zeros((2, 5, 5)), cache)


@settings(deadline=None, max_examples=30)
@given(M=st.integers(1, 4), C=st.integers(1, 5), P=st.integers(1, 40), training=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_batchnorm_kernels_equal_twins(M, C, P, training, dtype, seed):
    if training and M * P < 2:
        return
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(M, C, P)).astype(dtype)
    w, b = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    rm, rv = rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2, size=C).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    out = {}
    for backend in ("numba", "numpy"):
        y, cache, m, v = F.batchnorm_forward(x, w, b, rm, rv, training=training, backend=backend)
        out[backend] = (y, m, v) + F.batchnorm_backward(dy, cache)
    for a, c in zip(out["numba"], out["numpy"]):
        assert a.dtype == c.dtype
        np.testing.assert_allclose(a, c, **tol)

"""The packed Q-K attention kernels (refsnn.kernels.qk) against their dense NumPy twins:
spikes, membranes, Z and counts identical, gradients identical, the attention LIF identical
to lif_forward on the same sums."""
import numpy as np
from hypothesis import given, settings, strategies as st

from refsnn.functional.lif import _options, _typed_args, lif_forward
from refsnn.kernels import qk as K
from refsnn.kernels.bitpack import pack_bits, unpack_bits

LIF_OPTIONS = st.fixed_dictionaries(dict(
    tau=st.sampled_from([1.5, 2.0, 3.7]),
    v_threshold=st.sampled_from([0.5, 1.0, 2.5]),
    v_reset=st.sampled_from([0.0, -0.2, None]),
    decay_input=st.booleans(),
))
RATES = st.sampled_from([0.0, 0.05, 0.5, 1.0])


def _rng(seed):
    return np.random.Generator(np.random.PCG64(seed))


def _typed(opts, dtype):
    """The kernels' typed LIF scalars, as refsnn.functional.attention builds them."""
    full = _options(detach_reset=True, surrogate="sigmoid", alpha=None, spike_fn="heaviside", **opts)
    return _typed_args(full, dtype)


def _pair(seed, shape, rate_q, rate_k, dtype):
    rng = _rng(seed)
    return ((rng.random(shape) < rate_q).astype(dtype), (rng.random(shape) < rate_k).astype(dtype))


@settings(deadline=None, max_examples=40)
@given(T=st.integers(1, 4), B=st.integers(1, 3), heads=st.integers(1, 3),
       d=st.sampled_from([1, 3, 64, 65, 130]), N=st.sampled_from([1, 7, 64, 100, 1030]),
       rate_q=RATES, rate_k=RATES, opts=LIF_OPTIONS,
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_token_kernel_equals_twin(T, B, heads, d, N, rate_q, rate_k, opts, dtype, parallel, seed):
    D = heads * d
    q, k = _pair(seed, (T, B, D, N), rate_q, rate_k, dtype)
    lif = _typed(opts, dtype)
    qw = pack_bits(q.reshape(T, B, heads, d, N), axis=3).reshape(T, B * heads, -1, N)
    kw = pack_bits(k.reshape(T, B, heads, d, N), axis=3).reshape(T, B * heads, -1, N)
    zw, a, h, counts, padded = K.qk_token_packed(qw, kw, lif, length=d, parallel=parallel)
    assert not padded
    z_ref, a_ref, h_ref, counts_ref = K.qk_token_dense(q, k, heads, lif)
    z = unpack_bits(zw.reshape(T * B * heads, -1, N), d, axis=1).reshape(T, B, D, N)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(a.reshape(a_ref.shape), a_ref)
    np.testing.assert_array_equal(h.reshape(h_ref.shape), h_ref)
    assert counts == counts_ref
    assert a.dtype == h.dtype == dtype
    # the attention LIF equals lif_forward (the Numba LIF) on the same integer sums
    s, cache = lif_forward(K.token_sums(q, heads), **opts)
    np.testing.assert_array_equal(a.reshape(s.shape), s)
    np.testing.assert_array_equal(h.reshape(cache.h.shape), cache.h)


@settings(deadline=None, max_examples=40)
@given(T=st.integers(1, 4), B=st.integers(1, 3), D=st.integers(1, 6),
       N=st.sampled_from([1, 7, 63, 64, 65, 200, 1030]), rate_q=RATES, rate_k=RATES,
       opts=LIF_OPTIONS, dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_channel_kernel_equals_twin(T, B, D, N, rate_q, rate_k, opts, dtype, parallel, seed):
    q, k = _pair(seed, (T, B, D, N), rate_q, rate_k, dtype)
    lif = _typed(opts, dtype)
    qw = pack_bits(q, axis=3).reshape(T, B * D, -1)
    kw = pack_bits(k, axis=3).reshape(T, B * D, -1)
    zw, a, h, counts, padded = K.qk_channel_packed(qw, kw, lif, length=N, parallel=parallel)
    assert not padded
    z_ref, a_ref, h_ref, counts_ref = K.qk_channel_dense(q, k, lif)
    np.testing.assert_array_equal(unpack_bits(zw.reshape(T, B, D, -1), N, axis=3), z_ref)
    np.testing.assert_array_equal(a.reshape(a_ref.shape), a_ref)
    np.testing.assert_array_equal(h.reshape(h_ref.shape), h_ref)
    assert counts == counts_ref
    s, cache = lif_forward(K.channel_sums(q), **opts)
    np.testing.assert_array_equal(a.reshape(s.shape), s)
    np.testing.assert_array_equal(h.reshape(cache.h.shape), cache.h)


@settings(deadline=None, max_examples=30)
@given(mode=st.sampled_from(["token", "channel"]), length=st.sampled_from([1, 5, 63, 70, 127]),
       which=st.sampled_from(["q", "k"]), pos=st.integers(0, 10**6), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_packed_kernels_flag_padding_bits(mode, length, which, pos, parallel, seed):
    # a bit past ``length`` in a last word is flagged; the same words with every bit a real
    # spike (length = all the words' bits) are not
    T, G, N = 2, 3, 9
    rng = _rng(seed)
    shape = (T, G, length, N) if mode == "token" else (T, G, length)
    q, k = ((rng.random(shape) < 0.5).astype(np.float32) for _ in range(2))
    qw, kw = pack_bits(q, axis=2), pack_bits(k, axis=2)
    run = K.qk_token_packed if mode == "token" else K.qk_channel_packed
    lif = _typed(ATTENTION_LIF, np.float32)
    assert not run(qw, kw, lif, length=length, parallel=parallel)[-1]
    words = qw.shape[2]
    if length == 64 * words:
        return
    w = qw if which == "q" else kw
    bit = np.uint64(1) << np.uint64(length % 64 + pos % (64 - length % 64))
    if mode == "token":
        w[pos % T, pos % G, words - 1, pos % N] |= bit
    else:
        w[pos % T, pos % G, words - 1] |= bit
    assert run(qw, kw, lif, length=length, parallel=parallel)[-1]
    assert not run(qw, kw, lif, parallel=parallel)[-1]      # length None: every bit counts


@settings(deadline=None, max_examples=30)
@given(T=st.integers(1, 3), B=st.integers(1, 2), heads=st.integers(1, 3),
       d=st.sampled_from([1, 5, 64, 70]), N=st.sampled_from([1, 9, 1030]), rate=RATES,
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_token_backward_kernel_equals_twin(T, B, heads, d, N, rate, dtype, parallel, seed):
    D = heads * d
    rng = _rng(seed)
    k = (rng.random((T, B, D, N)) < rate).astype(dtype)
    a = (rng.random((T, B, heads, N)) < 0.5).astype(dtype)
    dz = rng.normal(size=(T, B, D, N)).astype(dtype)
    dz_before = dz.copy()
    kw = pack_bits(k.reshape(T, B, heads, d, N), axis=3).reshape(T, B * heads, -1, N)
    dk, da, finite = K.qk_token_backward_packed(kw, a.reshape(T, B * heads, N),
                                                dz.reshape(T, B * heads, d, N), parallel=parallel)
    assert finite
    dk_ref, da_ref = K.qk_token_backward_dense(k, a, dz)
    np.testing.assert_array_equal(dk.reshape(dk_ref.shape), dk_ref)
    np.testing.assert_array_equal(da.reshape(da_ref.shape), da_ref)
    np.testing.assert_array_equal(dz, dz_before)


@settings(deadline=None, max_examples=30)
@given(T=st.integers(1, 3), B=st.integers(1, 2), D=st.integers(1, 5),
       N=st.sampled_from([1, 63, 64, 65, 300]), rate=RATES,
       dtype=st.sampled_from([np.float32, np.float64]), parallel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_channel_backward_kernel_equals_twin(T, B, D, N, rate, dtype, parallel, seed):
    rng = _rng(seed)
    k = (rng.random((T, B, D, N)) < rate).astype(dtype)
    a = (rng.random((T, B, D)) < 0.5).astype(dtype)
    dz = rng.normal(size=(T, B, D, N)).astype(dtype)
    kw = pack_bits(k, axis=3).reshape(T, B * D, -1)
    dk, da, finite = K.qk_channel_backward_packed(kw, a.reshape(T, B * D), dz.reshape(T, B * D, N),
                                                  parallel=parallel)
    assert finite
    dk_ref, da_ref = K.qk_channel_backward_dense(k, a, dz)
    np.testing.assert_array_equal(dk.reshape(dk_ref.shape), dk_ref)
    np.testing.assert_array_equal(da.reshape(da_ref.shape), da_ref)


# ------------------------------------------------------------------ fused kernels (unpacked maps)

from refsnn.kernels import qk_fused as F  # noqa: E402

# (spike maps, LIF, Z) dtypes as the public ops combine them; few, each one a compilation
DTYPES = st.sampled_from([(np.float32, np.float32, np.float32), (np.float64, np.float64, np.float64),
                          (np.uint8, np.float32, np.uint8), (np.uint8, np.float32, np.float32),
                          (np.int64, np.float32, np.float32)])
ATTENTION_LIF = dict(tau=2.0, v_threshold=0.5, v_reset=0.0, decay_input=True)


@settings(deadline=None, max_examples=40)
@given(T=st.integers(1, 3), G=st.integers(1, 3), d=st.sampled_from([1, 7, 64, 65, 130]),
       N=st.sampled_from([1, 5, 64, 1030]), rate_q=RATES, rate_k=RATES, opts=LIF_OPTIONS,
       dtypes=DTYPES, seed=st.integers(0, 2**16))
def test_fused_token_kernel_equals_twin(T, G, d, N, rate_q, rate_k, opts, dtypes, seed):
    in_dtype, lif_dtype, z_dtype = dtypes
    q, k = _pair(seed, (T, G, d, N), rate_q, rate_k, in_dtype)
    lif = _typed(opts, lif_dtype)
    z, kw, a, h, counts, bad = F.qk_token_fused(q, k, lif, z_dtype)
    ref = F.qk_token_fused_numpy(q, k, lif, z_dtype)
    assert not bad and z.dtype == z_dtype
    for got, want in zip((z, kw, a, h), ref[:4]):
        np.testing.assert_array_equal(got, want)
    assert counts == ref[4]
    # and the packed kernel on the same bits gives the same A, H and packed K
    qw = pack_bits(q, axis=2)
    zw, a2, h2, counts2, padded = K.qk_token_packed(qw, kw, lif, length=d)
    assert not padded
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(h, h2)
    assert counts == counts2


@settings(deadline=None, max_examples=40)
@given(T=st.integers(1, 3), G=st.integers(1, 4), N=st.sampled_from([1, 5, 64, 65, 200]),
       rate_q=RATES, rate_k=RATES, opts=LIF_OPTIONS, dtypes=DTYPES, seed=st.integers(0, 2**16))
def test_fused_channel_kernel_equals_twin(T, G, N, rate_q, rate_k, opts, dtypes, seed):
    in_dtype, lif_dtype, z_dtype = dtypes
    q, k = _pair(seed, (T, G, N), rate_q, rate_k, in_dtype)
    lif = _typed(opts, lif_dtype)
    z, kw, a, h, counts, bad = F.qk_channel_fused(q, k, lif, z_dtype)
    zr, kwr, ar, hr, countsr = F.qk_channel_fused_numpy(q, k, lif, z_dtype)
    assert not bad and z.dtype == z_dtype
    for got, want in ((z, zr), (kw, kwr), (a, ar), (h, hr)):
        np.testing.assert_array_equal(got, want)
    assert counts == countsr
    zw, a2, h2, counts2, padded = K.qk_channel_packed(pack_bits(q, axis=2), kw, lif, length=N)
    assert not padded
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(h, h2)


@settings(deadline=None, max_examples=30)
@given(mode=st.sampled_from(["token", "channel"]), which=st.sampled_from(["q", "k"]),
       value=st.sampled_from([2.0, 0.5, -1.0, np.nan, np.inf, 1e-45]), pos=st.integers(0, 10**6),
       seed=st.integers(0, 2**16))
def test_fused_kernels_flag_non_binary_values(mode, which, value, pos, seed):
    shape = (2, 3, 5, 70) if mode == "token" else (2, 3, 70)
    q, k = _pair(seed, shape, 0.3, 0.3, np.float32)
    x = q if which == "q" else k
    x.reshape(-1)[pos % x.size] = value
    run = F.qk_token_fused if mode == "token" else F.qk_channel_fused
    assert run(q, k, _typed(ATTENTION_LIF, np.float32), np.float32)[-1]
    q8, k8 = (a.astype(np.uint8) for a in _pair(seed, shape, 0.3, 0.3, np.float32))
    (q8 if which == "q" else k8).reshape(-1)[pos % q8.size] = 2
    assert run(q8, k8, _typed(ATTENTION_LIF, np.float32), np.uint8)[-1]


@settings(deadline=None, max_examples=6)
@given(mode=st.sampled_from(["token", "channel"]), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_fused_kernels_on_threads_equal_twin(mode, threads, seed):
    # above PARALLEL_MIN_WORK elements the units are spread over Python threads in chunks:
    # every unit runs once, whatever the thread count
    import numba
    shape = (2, 5, 70, 700) if mode == "token" else (2, 150, 300)
    q, k = _pair(seed, shape, 0.3, 0.4, np.float32)
    lif = _typed(ATTENTION_LIF, np.float32)
    run, twin = (F.qk_token_fused, F.qk_token_fused_numpy) if mode == "token" else \
        (F.qk_channel_fused, F.qk_channel_fused_numpy)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = run(q, k, lif, np.float32)
    finally:
        numba.set_num_threads(before)
    want = twin(q, k, lif, np.float32)
    assert not got[-1]
    for g, w in zip(got[:4], want[:4]):
        np.testing.assert_array_equal(g, w)
    assert got[4] == want[4]


@settings(deadline=None, max_examples=40)
@given(mode=st.sampled_from(["token", "channel"]), T=st.integers(1, 3), G=st.integers(1, 4),
       length=st.sampled_from([1, 7, 64, 65, 130]), N=st.sampled_from([1, 5, 64, 1030]),
       rate_q=RATES, rate_k=RATES, opts=LIF_OPTIONS,
       dtypes=st.sampled_from([(np.float32, np.float32), (np.float64, np.float64),
                               (np.float32, np.uint8)]),
       seed=st.integers(0, 2**16))
def test_words_kernels_equal_twin(mode, T, G, length, N, rate_q, rate_k, opts, dtypes, seed):
    # from packed Q, K to an unpacked Z in one pass (refsnn.kernels.qk_fused.qk_*_from_words):
    # the twin unpacks and runs the fused twin; the packed core agrees on A and H
    lif_dtype, z_dtype = dtypes
    shape = (T, G, length, N) if mode == "token" else (T, G, length)
    q, k = _pair(seed, shape, rate_q, rate_k, np.float32)
    qw, kw = pack_bits(q, axis=2), pack_bits(k, axis=2)
    lif = _typed(opts, lif_dtype)
    run, twin, core = (F.qk_token_from_words, F.qk_token_from_words_numpy, K.qk_token_packed) \
        if mode == "token" else \
        (F.qk_channel_from_words, F.qk_channel_from_words_numpy, K.qk_channel_packed)
    z, a, h, counts, padded = run(qw, kw, length, lif, z_dtype)
    zr, ar, hr, countsr = twin(qw, kw, length, lif, z_dtype)
    assert not padded and z.dtype == z_dtype
    for got, want in ((z, zr), (a, ar), (h, hr)):
        np.testing.assert_array_equal(got, want)
    assert counts == countsr
    _, a2, h2, counts2, _ = core(qw, kw, lif, length=length)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(h, h2)
    assert counts == counts2
    if length % 64:     # a padding bit is flagged
        kw[-1, -1, -1] |= np.uint64(1) << np.uint64(63)
        assert run(qw, kw, length, lif, z_dtype)[-1]


@settings(deadline=None, max_examples=4)
@given(mode=st.sampled_from(["token", "channel"]), seed=st.integers(0, 2**16))
def test_words_kernels_on_threads_equal_twin(mode, seed):
    shape = (2, 5, 70, 700) if mode == "token" else (2, 150, 300)
    q, k = _pair(seed, shape, 0.3, 0.4, np.float32)
    qw, kw = pack_bits(q, axis=2), pack_bits(k, axis=2)
    lif = _typed(ATTENTION_LIF, np.float32)
    run, twin = (F.qk_token_from_words, F.qk_token_from_words_numpy) if mode == "token" else \
        (F.qk_channel_from_words, F.qk_channel_from_words_numpy)
    got, want = run(qw, kw, shape[2], lif, np.float32), twin(qw, kw, shape[2], lif, np.float32)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(g, w)
    assert got[3] == want[3]

"""The attention pairs of refsnn.functional.attention (SPEC sections 4, 11, 12): the worked
example, packed == dense, a plain-loop oracle of sections 2 and 4, smooth-mode finite
differences, operation counters and argument checks.

The plain-loop oracles (``lif_loop``, ``qk_loop``) are reused by tests/test_cmqka.py.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.functional.attention import (Z_PACKED, qk_channel_backward, qk_channel_forward,
                                         qk_channel_layout, qk_token_backward, qk_token_forward,
                                         qk_token_layout, ssa_backward, ssa_forward)
from refsnn.kernels.bitpack import PackedSpikes, num_words, pack_bits
from refsnn.testing import gradient_error, numerical_gradient
from test_lif import lif_loop as _lif_oracle

NEURONS = st.fixed_dictionaries(dict(
    tau=st.sampled_from([1.5, 2.0, 3.7]),
    v_threshold=st.sampled_from([0.5, 1.0]),
    v_reset=st.sampled_from([0.0, -0.2, None]),
    decay_input=st.booleans(),
    detach_reset=st.booleans(),
    surrogate=st.sampled_from(["sigmoid", "atan", "fast_sigmoid"]),
    alpha=st.sampled_from([None, 1.7]),
))


def rng_of(seed):
    return np.random.Generator(np.random.PCG64(seed))


def spikes(rng, shape, rate=0.4, dtype=np.float64):
    return (rng.random(shape) < rate).astype(dtype)


# ------------------------------------------------------------------ plain-loop oracles

_LIF_DEFAULTS = dict(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=True,
                     surrogate="sigmoid", alpha=None)


def lif_loop(x, ds, **neuron):
    """SPEC section 2 element by element (tests/test_lif.py's oracle): x, ds ``[T, M]`` ->
    (S, dX); ``ds=None`` when only S is wanted; options default as lif_forward's."""
    return _lif_oracle(x, np.zeros(x.shape) if ds is None else ds, **{**_LIF_DEFAULTS, **neuron})


def qk_loop(q, k, dz, mode, heads, neuron):
    """SPEC section 4 (QKTA ``mode="token"`` / QKCA ``"channel"``) element by element, with the
    attention LIF of section 2. Returns (z, dq, dk); ``dz=None`` skips the backward."""
    T, B, D, N = q.shape
    d = D // heads
    token = mode == "token"
    group = (lambda c, n: (c // d, n)) if token else (lambda c, n: (c,))
    a_shape = (T, B, heads, N) if token else (T, B, D)
    P = np.zeros(a_shape)
    for t in range(T):
        for b in range(B):
            for c in range(D):
                for n in range(N):
                    P[(t, b) + group(c, n)] += q[t, b, c, n]
    dA = np.zeros(a_shape)
    A, _ = lif_loop(P.reshape(T, -1), None, **neuron)
    A = A.reshape(a_shape)
    z = np.zeros(q.shape)
    dq, dk = np.zeros(q.shape), np.zeros(q.shape)
    for t in range(T):
        for b in range(B):
            for c in range(D):
                for n in range(N):
                    g = (t, b) + group(c, n)
                    z[t, b, c, n] = A[g] * k[t, b, c, n]
                    if dz is not None:
                        dk[t, b, c, n] = A[g] * dz[t, b, c, n]
                        dA[g] += k[t, b, c, n] * dz[t, b, c, n]
    if dz is None:
        return z, None, None
    _, dP = lif_loop(P.reshape(T, -1), dA.reshape(T, -1), **neuron)
    dP = dP.reshape(a_shape)
    for t in range(T):
        for b in range(B):
            for c in range(D):
                for n in range(N):
                    dq[t, b, c, n] = dP[(t, b) + group(c, n)]
    return z, dq, dk


def ssa_loop(q, k, v, dout, heads, scale, neuron):
    """Spikformer SSA (SPEC section 4) element by element; q ``[T, B, D, N]``, k, v
    ``[T, B, D, Nk]``. Returns (out, dq, dk, dv)."""
    T, B, D, N = q.shape
    Nk = k.shape[3]
    d = D // heads
    x = np.zeros(q.shape)
    attn = np.zeros((T, B, heads, N, Nk))
    for t in range(T):
        for b in range(B):
            for i in range(heads):
                cs = range(i * d, i * d + d)
                for n in range(N):
                    for m in range(Nk):
                        attn[t, b, i, n, m] = sum(q[t, b, c, n] * k[t, b, c, m] for c in cs)
                for c in cs:
                    for n in range(N):
                        x[t, b, c, n] = sum(attn[t, b, i, n, m] * v[t, b, c, m] for m in range(Nk)) * scale
    out, dx = lif_loop(x.reshape(T, -1), dout.reshape(T, -1), **neuron)
    dx = dx.reshape(q.shape) * scale
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(k.shape)
    for t in range(T):
        for b in range(B):
            for i in range(heads):
                cs = range(i * d, i * d + d)
                dattn = np.zeros((N, Nk))
                for n in range(N):
                    for m in range(Nk):
                        dattn[n, m] = sum(dx[t, b, c, n] * v[t, b, c, m] for c in cs)
                for c in cs:
                    for m in range(Nk):
                        dv[t, b, c, m] = sum(dx[t, b, c, n] * attn[t, b, i, n, m] for n in range(N))
                        dk[t, b, c, m] = sum(dattn[n, m] * q[t, b, c, n] for n in range(N))
                    for n in range(N):
                        dq[t, b, c, n] = sum(dattn[n, m] * k[t, b, c, m] for m in range(Nk))
    return out.reshape(q.shape), dq, dk, dv


# ------------------------------------------------------------------ SPEC section 4 worked example

def _rows(text):
    return np.array([[int(ch) for ch in row] for row in text.split()], dtype=np.float32)


WQ = np.stack([_rows("101 100 011 001"), _rows("011 001 110 000")])[:, None]   # [T=2, B=1, D=4, N=3]
WK = np.stack([_rows("110 011 101 111"), _rows("101 110 011 100")])[:, None]


@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_worked_example_token(backend):
    z, cache = qk_token_forward(WQ, WK, 2, backend=backend)
    np.testing.assert_array_equal(cache.a[:, 0], [[[1, 0, 1], [0, 1, 1]], [[0, 1, 1], [1, 1, 0]]])
    np.testing.assert_array_equal(z[0, 0], _rows("100 001 001 011"))
    np.testing.assert_array_equal(z[1, 0], _rows("001 010 010 100"))
    # P = head sums (2,0,1),(0,1,2) then (0,1,2),(1,1,0): the membranes before firing are P/2 at
    # t = 0 and V/2 + P/2 at t = 1 (hard reset to 0 where A fired)
    np.testing.assert_array_equal(cache.lif.h.reshape(2, 2, 3),
                                  [[[1, 0, 0.5], [0, 0.5, 1]], [[0, 0.5, 1], [0.5, 0.5, 0]]])
    assert cache.counts["additions"] == WQ.sum() and cache.counts["kept"] == z.sum()


@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_worked_example_channel(backend):
    z, cache = qk_channel_forward(WQ, WK, backend=backend)
    np.testing.assert_array_equal(cache.a[:, 0], [[1, 1, 1, 1], [1, 1, 1, 0]])
    np.testing.assert_array_equal(z[0], WK[0])
    np.testing.assert_array_equal(z[1, 0], _rows("101 110 011 000"))


# ------------------------------------------------------------------ packed == dense

@settings(deadline=None, max_examples=30)
@given(T=st.integers(1, 3), B=st.integers(1, 2), heads=st.integers(1, 3),
       d=st.sampled_from([1, 4, 64, 67]), N=st.sampled_from([1, 5, 64, 130]),
       rates=st.tuples(st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0.0, 0.3, 1.0])),
       neuron=NEURONS, dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_packed_equals_dense(T, B, heads, d, N, rates, neuron, dtype, seed):
    rng = rng_of(seed)
    shape = (T, B, heads * d, N)
    q, k = spikes(rng, shape, rates[0], dtype), spikes(rng, shape, rates[1], dtype)
    dz = rng.normal(size=shape).astype(dtype)
    for fwd, bwd, args in ((qk_token_forward, qk_token_backward, (heads,)),
                           (qk_channel_forward, qk_channel_backward, ())):
        zp, cp = fwd(q, k, *args, neuron=neuron, backend="packed")
        zd, cd = fwd(q, k, *args, neuron=neuron, backend="dense")
        np.testing.assert_array_equal(zp, zd)
        np.testing.assert_array_equal(cp.a, cd.a)
        assert zp.dtype == zd.dtype == dtype
        for name in ("additions", "selects", "kept", "comparisons"):
            assert cp.counts[name] == cd.counts[name]
        for gp, gd in zip(bwd(dz, cp), bwd(dz, cd)):
            np.testing.assert_array_equal(gp, gd)
            assert gp.dtype == dtype


# ------------------------------------------------------------------ oracle (real spikes)

@settings(deadline=None, max_examples=25)
@given(T=st.integers(1, 3), B=st.integers(1, 2), heads=st.integers(1, 2), d=st.integers(1, 3),
       N=st.integers(1, 4), mode=st.sampled_from(["token", "channel"]),
       backend=st.sampled_from(["packed", "dense"]), neuron=NEURONS, seed=st.integers(0, 2**16))
def test_qk_equals_plain_loop(T, B, heads, d, N, mode, backend, neuron, seed):
    rng = rng_of(seed)
    shape = (T, B, heads * d, N)
    q, k = spikes(rng, shape, 0.6), spikes(rng, shape, 0.6)
    dz = rng.normal(size=shape)
    z_ref, dq_ref, dk_ref = qk_loop(q, k, dz, mode, heads, neuron)
    if mode == "token":
        z, cache = qk_token_forward(q, k, heads, neuron=neuron, backend=backend)
        dq, dk = qk_token_backward(dz, cache)
    else:
        z, cache = qk_channel_forward(q, k, neuron=neuron, backend=backend)
        dq, dk = qk_channel_backward(dz, cache)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_allclose(dq, dq_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=15)
@given(T=st.integers(1, 2), B=st.integers(1, 2), heads=st.integers(1, 2), d=st.integers(1, 3),
       N=st.integers(1, 4), Nk=st.sampled_from([None, 1, 3]), neuron=NEURONS,
       scale=st.sampled_from([0.125, 0.3]), seed=st.integers(0, 2**16))
def test_ssa_equals_plain_loop(T, B, heads, d, N, Nk, neuron, scale, seed):
    rng = rng_of(seed)
    shape = (T, B, heads * d, N)
    q = spikes(rng, shape, 0.6)
    k, v = (spikes(rng, shape[:3] + (Nk or N,), 0.6) for _ in range(2))
    dout = rng.normal(size=shape)
    out_ref, *grads_ref = ssa_loop(q, k, v, dout, heads, scale, neuron)
    out, cache = ssa_forward(q, k, v, heads, scale, neuron=neuron)
    np.testing.assert_array_equal(out, out_ref)
    assert cache.counts["macs"] == 2 * T * B * heads * d * N * (Nk or N)
    for g, g_ref in zip(ssa_backward(dout, cache), grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ smooth mode, finite differences

def _smooth(neuron):
    return dict(neuron, spike_fn="smooth", detach_reset=False)


@settings(deadline=None, max_examples=20)
@given(T=st.integers(1, 3), heads=st.integers(1, 2), d=st.integers(1, 3), N=st.integers(1, 4),
       op=st.sampled_from(["token", "channel", "ssa"]), neuron=NEURONS, seed=st.integers(0, 2**16))
def test_smooth_mode_finite_differences(T, heads, d, N, op, neuron, seed):
    rng = rng_of(seed)
    neuron = _smooth(neuron)
    shape = (T, 2, heads * d, N)
    inputs = [rng.random(shape) for _ in range(2)]
    if op == "ssa":     # keys and values over their own token count
        inputs = [inputs[0]] + [rng.random(shape[:3] + (N + 1,)) for _ in range(2)]
    dout = rng.normal(size=shape)

    def run():
        if op == "token":
            return qk_token_forward(*inputs, heads, neuron=neuron, backend="dense")
        if op == "channel":
            return qk_channel_forward(*inputs, neuron=neuron, backend="dense")
        return ssa_forward(*inputs, heads, 0.3, neuron=neuron)

    out, cache = run()
    backward = {"token": qk_token_backward, "channel": qk_channel_backward, "ssa": ssa_backward}[op]
    grads = backward(dout, cache)

    def loss():
        return float(np.sum(run()[0] * dout))

    for x, g in zip(inputs, grads):
        g_fd = numerical_gradient(loss, x)
        # gradients of ~1e-5 (a weak smooth spike) meet the central differences' own rounding
        # (~1e-11 absolute) at a relative 1e-6: then the absolute agreement is what is checked
        assert gradient_error(g, g_fd) < 1e-6 or np.abs(g - g_fd).max() < 1e-9


# ------------------------------------------------------------------ counters

@settings(deadline=None, max_examples=20)
@given(T=st.integers(1, 3), B=st.integers(1, 2), heads=st.integers(1, 3), d=st.sampled_from([2, 70]),
       N=st.sampled_from([3, 64, 100]), seed=st.integers(0, 2**16))
def test_counters_report_what_ran(T, B, heads, d, N, seed):
    rng = rng_of(seed)
    D = heads * d
    q, k = spikes(rng, (T, B, D, N), 0.3), spikes(rng, (T, B, D, N), 0.5)
    z, c = qk_token_forward(q, k, heads)
    assert c.counts == dict(additions=q.sum(), selects=k.sum(), kept=z.sum(),
                               comparisons=T * B * heads * N,
                               popcount_words=T * B * heads * num_words(d) * N,
                               and_words=T * B * heads * num_words(d) * N)
    z, c = qk_channel_forward(q, k)
    assert c.counts == dict(additions=q.sum(), selects=k.sum(), kept=z.sum(),
                               comparisons=T * B * D, popcount_words=T * B * D * num_words(N),
                               and_words=T * B * D * num_words(N))
    z, c = qk_channel_forward(q, k, backend="dense")
    assert c.counts == dict(additions=q.sum(), selects=k.sum(), kept=z.sum(), comparisons=T * B * D)


def test_ssa_macs_grow_four_times_when_tokens_double():
    rng = rng_of(5)
    q, k, v = (spikes(rng, (2, 1, 8, 24)) for _ in range(3))
    _, c1 = ssa_forward(q, k, v, 2)
    _, c2 = ssa_forward(*(np.concatenate([x, x], axis=3) for x in (q, k, v)), 2)
    assert c1.counts["macs"] == 2 * 2 * 1 * 8 * 24 * 24
    assert c2.counts["macs"] == 4 * c1.counts["macs"]
    assert c2.counts["comparisons"] == 2 * c1.counts["comparisons"]


# ------------------------------------------------------------------ dtypes, purity, checks

def test_integer_and_bool_inputs_give_float32():
    q = WQ.astype(np.int64)
    k = WK.astype(bool)
    z, cache = qk_token_forward(q, k, 2)
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, qk_token_forward(WQ, WK, 2)[0])
    dq, dk = qk_token_backward(np.ones(z.shape, np.float32), cache)
    assert dq.dtype == dk.dtype == np.float32


@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_backward_never_mutates_dz(backend):
    rng = rng_of(9)
    q, k = spikes(rng, (2, 2, 6, 70)), spikes(rng, (2, 2, 6, 70))
    dz = rng.normal(size=q.shape)
    before = dz.copy()
    for fwd, bwd, args in ((qk_token_forward, qk_token_backward, (3,)),
                           (qk_channel_forward, qk_channel_backward, ())):
        _, cache = fwd(q, k, *args, backend=backend)
        bwd(dz, cache)
        np.testing.assert_array_equal(dz, before)
    _, cache = ssa_forward(q, k, k, 3)
    ssa_backward(dz, cache)
    np.testing.assert_array_equal(dz, before)


@pytest.mark.parametrize("backend", ["packed", "dense"])
@pytest.mark.parametrize("bad", [2.0, 0.5, np.nan])
def test_non_binary_spikes_are_rejected(backend, bad):
    k = WK.copy()
    k[1, 0, 2, 1] = bad
    with pytest.raises(ValueError, match=r"^k: expected binary spikes"):
        qk_token_forward(WQ, k, 2, backend=backend)
    with pytest.raises(ValueError, match=r"^k: expected binary spikes"):
        qk_channel_forward(WQ, k, backend=backend)
    with pytest.raises(ValueError, match=r"^v: expected binary spikes"):
        ssa_forward(WQ, WQ, k.copy(), 2)


def test_argument_checks():
    with pytest.raises(ValueError, match="smooth"):
        qk_token_forward(WQ, WK, 2, neuron=dict(spike_fn="smooth"))
    with pytest.raises(ValueError, match="backend"):
        qk_channel_forward(WQ, WK, backend="sparse")
    with pytest.raises(ValueError, match="heads: expected a divisor"):
        qk_token_forward(WQ, WK, 3)
    with pytest.raises(ValueError, match="heads: expected a positive integer"):
        ssa_forward(WQ, WQ, WQ, 0)
    with pytest.raises(ValueError, match=r"k: expected the shape of q"):
        qk_token_forward(WQ, WK[:, :, :, :2], 2)
    with pytest.raises(ValueError, match=r"v: expected \[T, B, D\] = \(2, 1, 4\) \(those of q\) and "
                                         r"the token count of k"):
        ssa_forward(WQ, WK[..., :2], WK, 2)
    with pytest.raises(ValueError, match=r"k: expected \[T, B, D\]"):
        ssa_forward(WQ, WK[:1], WK[:1], 2)
    with pytest.raises(ValueError, match="q: expected 4 dimensions"):
        qk_channel_forward(WQ[0], WK[0])
    with pytest.raises(ValueError, match="neuron: unknown LIF option"):
        qk_channel_forward(WQ, WK, neuron=dict(threshold=0.5))
    with pytest.raises(ValueError, match="scale"):
        ssa_forward(WQ, WQ, WQ, 2, scale=float("nan"))
    z, cache = qk_token_forward(WQ, WK, 2)
    with pytest.raises(ValueError, match=r"dz: expected shape"):
        qk_token_backward(z[:1], cache)
    with pytest.raises(ValueError, match="cache: expected the QKChannelCache returned by qk_channel_forward"):
        qk_channel_backward(z, cache)
    with pytest.raises(ValueError, match="dz: expected dtype float32 or float64"):
        qk_token_backward(z.astype(np.int32), cache)


@pytest.mark.parametrize("backend", ["packed", "dense"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradients_are_named(backend, bad):
    rng = rng_of(3)
    q, k = spikes(rng, (2, 1, 4, 70)), spikes(rng, (2, 1, 4, 70))
    dz = rng.normal(size=q.shape)
    dz[1, 0, 3, 66] = bad
    for fwd, bwd, args in ((qk_token_forward, qk_token_backward, (2,)),
                           (qk_channel_forward, qk_channel_backward, ())):
        _, cache = fwd(q, k, *args, backend=backend)
        with pytest.raises(ValueError, match=r"dz: contains NaN or inf \(first at index \(1, 0, 3, 66\)\)"):
            bwd(dz, cache)


# ------------------------------------------------------------------ packed spikes in and out

def _ops(heads):
    """(forward, backward, layout) of QKTA and QKCA with ``heads`` bound."""
    return (
        (lambda q, k, **kw: qk_token_forward(q, k, heads, **kw), qk_token_backward,
         lambda x: qk_token_layout(x, heads)),
        (qk_channel_forward, qk_channel_backward, qk_channel_layout),
    )


@settings(deadline=None, max_examples=20)
@given(T=st.integers(1, 3), B=st.integers(1, 2), heads=st.integers(1, 3),
       d=st.sampled_from([1, 5, 64, 70]), N=st.sampled_from([1, 5, 64, 70]),
       which=st.sampled_from(["both", "q", "k"]), z_dtype=st.sampled_from([None, np.uint8, Z_PACKED]),
       backend=st.sampled_from(["packed", "dense"]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_packed_inputs_equal_arrays(T, B, heads, d, N, which, z_dtype, backend, dtype, seed):
    # the ops from PackedSpikes (either or both of q, k) give the Z, A, counts and gradients
    # of the ops from the float arrays; float64 beside a packed input keeps float64
    rng = rng_of(seed)
    shape = (T, B, heads * d, N)
    q, k = spikes(rng, shape, 0.3, dtype), spikes(rng, shape, 0.5, dtype)
    dz = rng.normal(size=shape).astype(dtype)
    out_dtype = dtype if which != "both" else np.float32       # packed spikes alone: float32
    for fwd, bwd, layout in _ops(heads):
        z0, c0 = fwd(q.astype(out_dtype), k.astype(out_dtype), backend=backend)
        qi = layout(q) if which in ("both", "q") else q
        ki = layout(k) if which in ("both", "k") else k
        z, c = fwd(qi, ki, backend=backend, z_dtype=z_dtype)
        if z_dtype == Z_PACKED:
            assert isinstance(z, PackedSpikes) and z.axis == 3
            layout_z = layout(z0)
            assert z.length == layout_z.length and z.words.shape == layout_z.words.shape
            np.testing.assert_array_equal(z.words, layout_z.words)
        else:
            assert z.dtype == (z_dtype or out_dtype)
            np.testing.assert_array_equal(z, z0)
        np.testing.assert_array_equal(c.a, c0.a)
        assert c.counts == c0.counts
        for g, g0 in zip(bwd(dz, c), bwd(dz, c0)):
            assert g.dtype == out_dtype
            np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_worked_example_from_packed_spikes(backend):
    z, cache = qk_token_forward(qk_token_layout(WQ, 2), qk_token_layout(WK, 2), 2,
                                backend=backend, z_dtype=Z_PACKED)
    np.testing.assert_array_equal(z.unpack().reshape(2, 1, 4, 3)[:, 0],
                                  [_rows("100 001 001 011"), _rows("001 010 010 100")])
    # head 0 at t = 0: channels 0, 1 of tokens 0, 1, 2 -> bits (c = 0: K 1, 1, 0) kept where A fires
    assert z.words.shape == (2, 1, 2, 1, 3) and int(z.words[0, 0, 0, 0, 0]) == 0b01
    z, _ = qk_channel_forward(qk_channel_layout(WQ), qk_channel_layout(WK), backend=backend)
    np.testing.assert_array_equal(z[1, 0], _rows("101 110 011 000"))


def test_packed_input_checks():
    qt, kt = qk_token_layout(WQ, 2), qk_token_layout(WK, 2)
    qc = qk_channel_layout(WQ)
    with pytest.raises(ValueError, match=r"q: expected words of 5 dimensions, got shape \(2, 1, 4, 1\) "
                                         r"\(QKTA reads a head's channels"):
        qk_token_forward(qc, WK, 2)
    with pytest.raises(ValueError, match=r"q: expected words of 4 dimensions.*QKCA reads the tokens"):
        qk_channel_forward(qt, WK)
    with pytest.raises(ValueError, match=r"q: expected words \[T, B, heads=1, Wd, N\]"):
        qk_token_forward(qt, kt, 1)
    with pytest.raises(ValueError, match=r"k: expected spikes packed along axis 3, got axis 2"):
        qk_channel_forward(qc, PackedSpikes(pack_bits(WK, axis=2), 4, 2))
    with pytest.raises(ValueError, match=r"q: length 65 needs 2 words on axis 3"):
        qk_channel_forward(PackedSpikes(qc.words, 65, 3), WK)
    with pytest.raises(ValueError, match=r"q: expected uint64 words"):
        qk_channel_forward(PackedSpikes(qc.words.astype(np.int64), 3, 3), WK)
    with pytest.raises(ValueError, match=r"k: expected the shape \(2, 1, 4, 3\) of the packed q, "
                                         r"got \(2, 1, 4, 2\)"):
        qk_channel_forward(qc, WK[..., :2])
    with pytest.raises(ValueError, match=r"k: expected the spikes of shape \(2, 1, 4, 3\)"):
        qk_channel_forward(qc, qk_channel_layout(WK[..., :2]))
    k = WK.copy()
    k[0, 0, 1, 2] = 2
    with pytest.raises(ValueError, match=r"^k: expected binary spikes"):
        qk_token_forward(qt, k, 2)
    with pytest.raises(ValueError, match="smooth"):
        qk_channel_forward(qc, WK, neuron=dict(spike_fn="smooth"), backend="dense")
    with pytest.raises(ValueError, match="z_dtype: expected None, numpy.uint8"):
        qk_channel_forward(qc, WK, z_dtype="bits")
    with pytest.raises(ValueError, match="q: expected PackedSpikes"):
        from refsnn.kernels.bitpack import check_packed
        check_packed(WQ, "q", ndim=4, axis=3)


@pytest.mark.parametrize("mode", ["token", "channel"])
@pytest.mark.parametrize("which", ["q", "k"])
def test_padding_bits_are_rejected(mode, which):
    # a bit past the packed length (QKTA: a head's d = 2 channels; QKCA: N = 3 tokens) would be
    # summed or kept as a spike: the op refuses the words and names the argument
    qp, kp = (qk_token_layout(x, 2) if mode == "token" else qk_channel_layout(x) for x in (WQ, WK))
    p = qp if which == "q" else kp
    words = p.words.copy()
    words[(1, 0, 1, 0, 2) if mode == "token" else (1, 0, 3, 0)] |= np.uint64(1 << 40)
    bad = PackedSpikes(words, p.length, 3)
    args = (bad, kp) if which == "q" else (qp, bad)
    with pytest.raises(ValueError, match=rf"^{which}: bits past length {p.length} are set"):
        if mode == "token":
            qk_token_forward(*args, 2)
        else:
            qk_channel_forward(*args)

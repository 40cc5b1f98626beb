"""CMQKA (SPEC section 5): every option against a plain-loop oracle of sections 2, 4 and 5 with
real spikes, smooth-mode finite differences (alpha and beta included), packed == dense, names
and shapes of docs/naming.md, linear complexity from the operation counters, and no N x N
array anywhere."""
import itertools
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.fusion import CMQKA
from refsnn.functional.conv import conv1x1_backward, conv1x1_forward
from refsnn.functional.lif import LIFCache
from refsnn.functional.norm import batchnorm_backward, batchnorm_forward
from refsnn.kernels.bitpack import num_words
from refsnn.nn.attention import SSAttention
from refsnn.testing import gradient_error, numerical_gradient
from test_qk_functional import NEURONS, lif_loop, qk_loop

OPTIONS = list(itertools.product(("token", "channel"), ("query_modality", "key_modality"),
                                 ("scalar", "channel", "fixed")))
SMOOTH = dict(spike_fn="smooth", detach_reset=False)
EPS = 1e-5      # as tests/test_qk_modules.py: gradients after three LIF layers are ~1e-3


def rng_of(seed):
    return np.random.Generator(np.random.PCG64(seed))


def stream(rng, shape, dtype=np.float64):
    """A stage output: the sum of two spike maps (real-valued, as CMQKA receives it)."""
    return ((rng.random(shape) < 0.5) + (rng.random(shape) < 0.3)).astype(dtype)


def make(mask, mask_from, residual, seed=0, **kw):
    kw.setdefault("dtype", np.float64)
    m = CMQKA(4, 2, mask=mask, mask_from=mask_from, residual=residual, rng=rng_of(seed), **kw)
    if residual != "fixed":   # distinct values, so a swapped alpha / beta cannot pass
        m.alpha.value[...] = np.linspace(0.3, 0.9, m.alpha.value.size)
        m.beta.value[...] = np.linspace(1.1, 0.4, m.beta.value.size)
    return m


# ------------------------------------------------------------------ oracle (SPEC 2, 4, 5)

def _projection(module, name, x, neuron):
    """Conv1x1 -> BN (train) -> LIF of one projection, using the module's parameters; returns
    (spikes, backward) with backward(ds) -> (dx, dweight)."""
    conv, bn = getattr(module, f"{name}_conv"), getattr(module, f"{name}_bn")
    T, B, D, N = x.shape
    c, c_cache = conv1x1_forward(x.reshape(T * B, D, N), conv.weight.value,
                                 None if conv.bias is None else conv.bias.value)
    b, b_cache, _, _ = batchnorm_forward(c, bn.weight.value, bn.bias.value, bn.running_mean,
                                         bn.running_var, training=True)
    pre = b.reshape(T, -1)
    s, _ = lif_loop(pre, None, **neuron)

    def backward(ds):
        _, dpre = lif_loop(pre, ds.reshape(T, -1), **neuron)
        db, _, _ = batchnorm_backward(dpre.reshape(T * B, D, N), b_cache)
        dx, dw, _ = conv1x1_backward(db, c_cache)
        return dx.reshape(x.shape), dw

    return s.reshape(x.shape), backward


def _direction(module, x_q, x_k, mask, heads, neuron, att):
    q, q_back = _projection(module, "q", x_q, neuron)
    k, k_back = _projection(module, "k", x_k, neuron)
    z, _, _ = qk_loop(q, k, None, mask, heads, att)
    y, p_back = _projection(module, "proj", z, neuron)

    def backward(dy):
        dz, dw_proj = p_back(dy)
        _, dq, dk = qk_loop(q, k, dz, mask, heads, att)
        (dx_q, dw_q), (dx_k, dw_k) = q_back(dq), k_back(dk)
        return dx_q, dx_k, {"q_conv": dw_q, "k_conv": dw_k, "proj_conv": dw_proj}

    return y, backward


def cmqka_oracle(m, x, dy, mask, mask_from, residual, neuron, att):
    """x, dy: dicts over "a" (audio) and "v" (visual). Returns (out, dx, d_alpha_beta, dweights)."""
    # which stream feeds Q and which K, per direction (section 5)
    src = {"av": ("a", "v"), "va": ("v", "a")} if mask_from == "query_modality" else \
          {"av": ("v", "a"), "va": ("a", "v")}
    target = {"av": "a", "va": "v"}
    modules = {"av": m.audio_from_visual, "va": m.visual_from_audio}
    weight_names = {"av": "alpha", "va": "beta"}
    out, dx, dres, dweights = {}, {s: dy[s].copy() for s in "av"}, {}, {}
    for d in ("av", "va"):
        y, back = _direction(modules[d], x[src[d][0]], x[src[d][1]], mask, 2, neuron, att)
        w = 0.5 if residual == "fixed" else getattr(m, weight_names[d]).value.reshape(1, 1, -1, 1)
        s = target[d]
        out[s] = x[s] + w * y
        if residual == "scalar":
            dres[weight_names[d]] = np.array([np.sum(dy[s] * y)])
        elif residual == "channel":
            dres[weight_names[d]] = np.sum(dy[s] * y, axis=(0, 1, 3))
        dx_q, dx_k, dw = back(w * dy[s])
        dx[src[d][0]] += dx_q
        dx[src[d][1]] += dx_k
        dweights[d] = dw
    return out, dx, dres, dweights


def _check_against_oracle(m, mask, mask_from, residual, neuron, att, seed):
    rng = rng_of(seed)
    x = {s: stream(rng, (2, 2, 4, 5)) for s in "av"}
    dy = {s: rng.normal(size=(2, 2, 4, 5)) for s in "av"}
    out_ref, dx_ref, dres_ref, dw_ref = cmqka_oracle(m, x, dy, mask, mask_from, residual, neuron, att)
    m.zero_grad()
    y_a, y_v = m.forward(x["a"], x["v"])
    dx_a, dx_v = m.backward(dy["a"], dy["v"])
    np.testing.assert_array_equal(y_a, out_ref["a"])
    np.testing.assert_array_equal(y_v, out_ref["v"])
    np.testing.assert_allclose(dx_a, dx_ref["a"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx_v, dx_ref["v"], rtol=1e-10, atol=1e-12)
    params = m.parameters()
    for name, g in dres_ref.items():
        np.testing.assert_allclose(params[name].grad, g, rtol=1e-10, atol=1e-12)
    for d, prefix in (("av", "audio_from_visual"), ("va", "visual_from_audio")):
        for conv, g in dw_ref[d].items():
            np.testing.assert_allclose(params[f"{prefix}.{conv}.weight"].grad, g, rtol=1e-10,
                                       atol=1e-12, err_msg=f"{prefix}.{conv}")


@pytest.mark.parametrize("mask,mask_from,residual", OPTIONS)
@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_every_option_equals_plain_loop_oracle(mask, mask_from, residual, backend):
    m = make(mask, mask_from, residual, seed=1, attention_backend=backend)
    _check_against_oracle(m, mask, mask_from, residual, {}, {"v_threshold": 0.5}, seed=2)


@settings(deadline=None, max_examples=10)
@given(option=st.sampled_from(OPTIONS), neuron=NEURONS, att_threshold=st.sampled_from([0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_neuron_options_equal_plain_loop_oracle(option, neuron, att_threshold, seed):
    att = dict(neuron, v_threshold=att_threshold)
    m = make(*option, seed=seed, neuron=neuron, attention_neuron=att)
    _check_against_oracle(m, *option, neuron, att, seed=seed + 1)


# ------------------------------------------------------------------ smooth mode

def _sample(rng, shape, n):
    """n distinct random indices of an array of ``shape`` (finite differences on a sample)."""
    flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


@pytest.mark.parametrize("mask,mask_from,residual", OPTIONS)
def test_every_option_smooth_finite_differences(mask, mask_from, residual):
    m = make(mask, mask_from, residual, seed=3, neuron=SMOOTH, attention_backend="dense")
    rng = rng_of(4)
    x_a, x_v = stream(rng, (2, 2, 4, 3)), stream(rng, (2, 2, 4, 3))
    y_a, y_v = m.forward(x_a, x_v)
    dy_a, dy_v = rng.normal(size=y_a.shape), rng.normal(size=y_v.shape)
    m.zero_grad()
    dx_a, dx_v = m.backward(dy_a, dy_v)

    def loss():
        ya, yv = m.forward(x_a, x_v)
        return float(np.sum(ya * dy_a) + np.sum(yv * dy_v))

    for x, dx in ((x_a, dx_a), (x_v, dx_v)):
        idx = _sample(rng, x.shape, 12)
        g_fd = numerical_gradient(loss, x, eps=EPS, indices=idx)
        assert gradient_error(np.array([dx[i] for i in idx]), g_fd) < 1e-6
    params = m.parameters()
    names = [n for n in params if n in ("alpha", "beta")]
    assert names == ([] if residual == "fixed" else ["alpha", "beta"])
    for name in names:
        g_fd = numerical_gradient(loss, params[name].value, eps=EPS)
        assert gradient_error(params[name].grad, g_fd) < 1e-6, name
    for name in ("audio_from_visual.q_conv.weight", "audio_from_visual.k_conv.weight",
                 "visual_from_audio.q_conv.weight", "visual_from_audio.proj_conv.weight",
                 "visual_from_audio.k_bn.weight"):
        idx = _sample(rng, params[name].shape, 3)
        g_fd = numerical_gradient(loss, params[name].value, eps=EPS, indices=idx)
        assert gradient_error(np.array([params[name].grad[i] for i in idx]), g_fd) < 1e-6, name


# ------------------------------------------------------------------ backends, names, residual

@pytest.mark.parametrize("mask", ["token", "channel"])
def test_packed_equals_dense(mask):
    rng = rng_of(5)
    x_a, x_v = stream(rng, (2, 2, 8, 70), np.float32), stream(rng, (2, 2, 8, 70), np.float32)
    dy = rng.normal(size=x_a.shape).astype(np.float32)
    mods = [CMQKA(8, 2, mask=mask, attention_backend=b, rng=rng_of(6)) for b in ("packed", "dense")]
    outs = [m.forward(x_a, x_v) for m in mods]
    grads = [m.backward(dy, -dy) for m in mods]
    for a, b in zip(outs[0] + grads[0], outs[1] + grads[1]):
        np.testing.assert_array_equal(a, b)
    for (name, p), (_, p_ref) in zip(mods[0].parameters().items(), mods[1].parameters().items()):
        np.testing.assert_array_equal(p.grad, p_ref.grad, err_msg=name)


@pytest.mark.parametrize("residual,shape", [("scalar", (1,)), ("channel", (8,)), ("fixed", None)])
def test_names_shapes_and_initial_residual(residual, shape):
    m = CMQKA(8, 2, residual=residual, rng=rng_of(7))
    params = m.parameters()
    direction = {"q_conv.weight": (8, 8), "q_bn.weight": (8,), "q_bn.bias": (8,),
                 "k_conv.weight": (8, 8), "k_bn.weight": (8,), "k_bn.bias": (8,),
                 "proj_conv.weight": (8, 8), "proj_conv.bias": (8,), "proj_bn.weight": (8,),
                 "proj_bn.bias": (8,)}
    expected = {f"{d}.{k}": s for d in ("audio_from_visual", "visual_from_audio")
                for k, s in direction.items()}
    if shape is not None:
        expected.update(alpha=shape, beta=shape)
        assert (params["alpha"].value == 0.5).all() and (params["beta"].value == 0.5).all()
    assert {k: p.shape for k, p in params.items()} == expected
    assert [n for n, mod in m.named_modules() if type(mod).__name__ == "QKCore"] == \
        ["audio_from_visual.qk", "visual_from_audio.qk"]


def test_fixed_residual_is_half_and_gradients_accumulate():
    m = make("token", "query_modality", "fixed", seed=8)
    rng = rng_of(9)
    x_a, x_v = stream(rng, (1, 2, 4, 6)), stream(rng, (1, 2, 4, 6))
    y_a, _ = m.forward(x_a, x_v)
    y_av = m.audio_from_visual.forward(x_a, x_v)        # same weights, same batch: same output
    np.testing.assert_array_equal(y_a, x_a + 0.5 * y_av)
    s = make("token", "query_modality", "scalar", seed=8)
    s.forward(x_a, x_v)
    dy = rng.normal(size=x_a.shape)
    s.backward(dy, dy)
    once = s.alpha.grad.copy()
    s.backward(dy, dy)
    np.testing.assert_allclose(s.alpha.grad, 2 * once)


def test_argument_checks():
    rng = rng_of(10)
    for kw, match in ((dict(mask="spatial"), "mask"), (dict(mask_from="audio"), "mask_from"),
                      (dict(residual="learned"), "residual"),
                      (dict(neuron=SMOOTH), "attention_backend: smooth"),
                      (dict(attention_backend="sparse"), "attention_backend")):
        with pytest.raises(ValueError, match=match):
            CMQKA(4, 2, rng=rng, **kw)
    with pytest.raises(ValueError, match="heads: expected a divisor"):
        CMQKA(6, 4, rng=rng)
    m = CMQKA(4, 2, rng=rng)
    x = np.zeros((1, 2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="backward: no forward cache"):
        m.backward(x, x)
    with pytest.raises(ValueError, match=r"x_audio: expected dtype float32"):
        m.forward(x.astype(np.float64), x)
    with pytest.raises(ValueError, match=r"x_visual: expected the shape of x_audio"):
        m.forward(x, x[..., :2])
    with pytest.raises(ValueError, match=r"x_audio: expected \[T, B, 4, N\]"):
        m.forward(np.zeros((1, 2, 3, 3), np.float32), np.zeros((1, 2, 3, 3), np.float32))
    m.forward(x, x)
    with pytest.raises(ValueError, match="dy_visual: expected shape"):
        m.backward(x, x[:, :1])


# ------------------------------------------------------------------ linear complexity

@settings(deadline=None, max_examples=20)
@given(heads=st.integers(1, 3), d=st.sampled_from([1, 3, 66]), T=st.integers(1, 3),
       N=st.sampled_from([5, 17, 64, 128]), mask=st.sampled_from(["token", "channel"]),
       seed=st.integers(0, 2**16))
def test_counters_double_when_tokens_double(heads, d, T, N, mask, seed):
    D = heads * d
    m = CMQKA(D, heads, mask=mask, rng=rng_of(seed), dtype=np.float64).eval()
    rng = rng_of(seed + 1)
    x_a, x_v = stream(rng, (T, 1, D, N)), stream(rng, (T, 1, D, N))
    y_a, y_v = m.forward(x_a, x_v)
    c1 = m.attention_counts
    # eval mode: every layer but the attention core is per token, so tiling the input tiles the
    # projected Q and K spike maps exactly
    y2_a, y2_v = m.forward(np.concatenate([x_a, x_a], axis=3), np.concatenate([x_v, x_v], axis=3))
    c2 = m.attention_counts
    for name in ("additions", "selects"):
        assert c2[name] == 2 * c1[name], name
    if mask == "token":
        # the token mask never mixes tokens: the output, and every counter, tiles
        np.testing.assert_array_equal(y2_a, np.concatenate([y_a, y_a], axis=3))
        np.testing.assert_array_equal(y2_v, np.concatenate([y_v, y_v], axis=3))
        for name in ("kept", "comparisons", "popcount_words", "and_words"):
            assert c2[name] == 2 * c1[name], name
        assert c1["popcount_words"] == 2 * T * heads * num_words(d) * N
    else:
        # the channel mask's values may change (the sums double); its comparisons are one per
        # channel and time step, independent of N; the words double when N fills whole words
        assert c2["comparisons"] == c1["comparisons"] == 2 * T * D
        assert c1["popcount_words"] == c1["and_words"] == 2 * T * D * num_words(N)
        assert c2["popcount_words"] == 2 * T * D * num_words(2 * N)
        if N % 64 == 0:
            assert c2["popcount_words"] == 2 * c1["popcount_words"]
            assert c2["and_words"] == 2 * c1["and_words"]


def _arrays(obj, seen=None):
    """Every ndarray reachable from a cache (dicts, tuples, lists, LIFCache)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v, seen)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _arrays(v, seen)
    elif isinstance(obj, LIFCache):
        for name in LIFCache.__slots__:
            yield from _arrays(getattr(obj, name), seen)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mask", ["token", "channel"])
@pytest.mark.parametrize("backend", ["packed", "dense"])
def test_no_n_by_n_array_is_kept_or_allocated(mask, backend):
    T, B, D, N = 1, 1, 4, 4096        # N*N far above every legitimate array (T*B*D*N elements)
    rng = rng_of(11)
    x_a, x_v = stream(rng, (T, B, D, N), np.float32), stream(rng, (T, B, D, N), np.float32)
    m = CMQKA(D, 2, mask=mask, attention_backend=backend, rng=rng_of(12))
    m.forward(x_a, x_v)       # compile and warm up outside the measurement

    def step():
        y_a, y_v = m.forward(x_a, x_v)
        m.backward(y_a, y_v)

    peak = _peak_bytes(step)
    assert peak < N * N, f"peak traced memory {peak} bytes reaches an N x N map of bytes"
    kept = [a for _, mod in m.named_modules() for a in _arrays(mod.__dict__.get("_cache"))]
    assert kept, "the walk found no cached arrays"
    for a in kept:
        assert a.size < N * N and list(a.shape).count(N) <= 1, a.shape
    # the check has teeth: SSA at the same N allocates its N x N map and is caught
    ssa = SSAttention(D, 2, rng=rng_of(13))
    assert _peak_bytes(lambda: ssa.forward(x_a)) >= N * N


@pytest.mark.parametrize("mask", ["token", "channel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_spikes_between_neurons_and_core_change_nothing(mask, dtype):
    # packed_spikes=True: the Q and K neurons emit PackedSpikes (the fused BN+LIF writing bits)
    # and the core runs on them; outputs, gradients and running statistics are those of the
    # float maps, bit for bit
    from refsnn.kernels.bitpack import PackedSpikes
    rng = rng_of(4)
    x = {s: stream(rng, (3, 2, 8, 70)).astype(dtype) for s in "av"}
    dy = {s: rng.normal(size=(3, 2, 8, 70)).astype(dtype) for s in "av"}
    runs = []
    for packed in (False, True):
        m = CMQKA(8, 2, mask=mask, rng=rng_of(5), dtype=dtype, packed_spikes=packed)
        q = m.audio_from_visual.q.forward(x["a"])
        assert isinstance(q, PackedSpikes) == packed
        y = m.forward(x["a"], x["v"])
        dx = m.backward(dy["a"], dy["v"])
        runs.append((y, dx, [p.grad.copy() for p in m.parameters().values()],
                     [b.copy() for b in m.buffers().values()]))
    for a, b in zip(runs[0], runs[1]):
        for u, v in zip(a, b):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="packed_spikes: expected True or False"):
        CMQKA(8, 2, rng=rng_of(5), packed_spikes="yes")

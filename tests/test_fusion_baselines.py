"""Baseline fusion modes (SPEC section 8): ssa-cross, mbt, factorized. Smooth-mode finite
differences (SPEC section 12) of every mode in float64, oracles of the wiring, mbt's
information flow through the bottlenecks only, the growth of the counted operations with N,
float32 and float64, the registry's builders and argument checks."""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.fusion import CMQKA, ConcatFusion, FactorizedFusion, MBTFusion, SSACrossFusion
from refsnn.fusion import build_fusion as build, fusion_modes, register_fusion, unregister_fusion
from refsnn.fusion.factorized import TokenQueryAttention, pair_tokens, pair_tokens_backward
from refsnn.fusion.mbt import BottleneckConv1x1
from refsnn.models import config
from refsnn.nn.attention import SSACrossAttention
from refsnn.testing import gradient_error, numerical_gradient
from test_cmqka import _peak_bytes

# the NumPy LIF: these arrays are tiny and the parallel kernel's thread launches dominate
SMOOTH = dict(spike_fn="smooth", detach_reset=False, backend="numpy")
EPS = 1e-3


def fd(loss, x, indices=None, eps=EPS):
    """Richardson-extrapolated central differences (truncation O(eps^4)). Some gradients here
    are ~1e-7 (parameters up to ten LIF layers deep in factorized) while float64 rounding of a
    loss of order 10 is ~1e-15: the step must be large for the rounding noise (~1e-15 / eps)
    to stay below them, and with a large step plain central differences (truncation
    O(eps^2)) would not be accurate enough."""
    coarse = numerical_gradient(loss, x, eps=eps, indices=indices)
    fine = numerical_gradient(loss, x, eps=eps / 2, indices=indices)
    return (4 * fine - coarse) / 3


def rng_of(seed):
    return np.random.Generator(np.random.PCG64(seed))


def stream(rng, shape, dtype=np.float64):
    """A stage output: the sum of two spike maps (real-valued, as a fusion module receives it)."""
    return ((rng.random(shape) < 0.5) + (rng.random(shape) < 0.3)).astype(dtype)


def _sample(rng, shape, n):
    flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


def make(mode, dim=4, heads=2, seed=0, dtype=np.float64, previous=None, **kw):
    rng = rng_of(seed)
    if mode == "ssa-cross":
        m = SSACrossFusion(dim, heads, rng=rng, dtype=dtype, **kw)
    elif mode == "mbt":
        kw.setdefault("bottlenecks", 3)
        m = MBTFusion(dim, heads, previous=previous, rng=rng, dtype=dtype, **kw)
    elif mode == "factorized":
        # BatchNorm over two constant tokens maps them to +-1 whatever their values: three
        kw.setdefault("fusion_tokens", 3)
        kw.setdefault("agg_tokens", 3)
        m = FactorizedFusion(dim, heads, rng=rng, dtype=dtype, **kw)
    else:
        m = CMQKA(dim, heads, rng=rng, dtype=dtype, **kw)
    for name in ("alpha", "beta"):      # distinct values, so a swapped alpha / beta cannot pass
        if name in m.parameters():
            p = m.parameters()[name]
            p.value[...] = np.linspace(0.3, 0.9, p.value.size) * (1.0 if name == "alpha" else 1.7)
    return m


# ------------------------------------------------------------------ finite differences

def _fd_check(run, back, inputs, params, seed, n_entries=3, n_input_entries=10, tol=1e-6):
    """run() -> list of outputs; back(douts) -> list of input grads (same order as inputs).
    Central differences of L = sum(out * dout) on a sample of every input and on the largest
    entries of every parameter."""
    rng = rng_of(seed)
    outs = run()
    douts = [rng.normal(size=o.shape) for o in outs]
    for p in params.values():
        p.grad[...] = 0
    grads = back(douts)

    def loss():
        return float(sum(np.sum(o * d) for o, d in zip(run(), douts)))

    for i, (x, g) in enumerate(zip(inputs, grads)):
        idx = _sample(rng, x.shape, n_input_entries)
        g_fd = fd(loss, x, idx)
        assert gradient_error(np.array([g[j] for j in idx]), g_fd) < tol, f"input {i}"
    for name, p in params.items():
        # the entries with the largest analytic gradients: some tensors hold entries whose
        # gradient is ~1e-8, where the differences are rounding noise
        top = np.argsort(-np.abs(p.grad).ravel(), kind="stable")[:n_entries]
        idx = [tuple(int(i) for i in np.unravel_index(f, p.shape)) for f in top]
        g = np.array([p.grad[j] for j in idx])
        g_fd = fd(loss, p.value, idx)
        if name.endswith("proj_conv.bias"):
            # followed by train-mode BatchNorm: the true gradient is 0, both sides are
            # rounding noise, only an absolute comparison means anything
            assert np.abs(g).max() < 1e-12 and np.abs(g_fd).max() < 1e-7, (name, g, g_fd)
            continue
        assert gradient_error(g, g_fd) < tol, (name, g, g_fd)


def _pair_fd(m, shape_a, shape_v, seed, tol=1e-6):
    rng = rng_of(seed)
    x_a, x_v = stream(rng, shape_a), stream(rng, shape_v)
    _fd_check(lambda: list(m.forward(x_a, x_v)), lambda d: list(m.backward(*d)), [x_a, x_v],
              m.parameters(), seed + 1, tol=tol)


@pytest.mark.parametrize("residual", ["scalar", "channel", "fixed"])
def test_ssa_cross_smooth_finite_differences(residual):
    m = make("ssa-cross", residual=residual, seed=1, neuron=SMOOTH)
    assert ("alpha" in m.parameters()) == (residual != "fixed")
    _pair_fd(m, (2, 2, 4, 3), (2, 2, 4, 3), seed=2)


@pytest.mark.parametrize("residual", ["scalar", "channel"])
def test_factorized_smooth_finite_differences(residual):
    # different token counts per modality: the aggregation reads any N
    m = make("factorized", residual=residual, seed=3, neuron=SMOOTH)
    # parameters up to ten LIF layers deep have gradients of ~1e-5 at most, where the rounding
    # noise of the differences reaches ~5e-7 of them: SPEC section 12's whole-model bound
    _pair_fd(m, (2, 2, 4, 5), (2, 2, 4, 3), seed=4, tol=1e-5)


@pytest.mark.parametrize("widths", [(4, 8), (4, 4)])
def test_mbt_chain_smooth_finite_differences(widths):
    """Two linked stages (with the carry conv when the width changes): the gradient of the
    carried bottlenecks reaches the first stage's tokens and inputs."""
    m1 = make("mbt", dim=widths[0], seed=5, neuron=SMOOTH)
    m2 = make("mbt", dim=widths[1], seed=6, neuron=SMOOTH, previous=m1)
    assert ("carry_conv.weight" in m2.parameters()) == (widths[0] != widths[1])
    rng = rng_of(7)
    xs = [stream(rng, (2, 2, widths[0], 4)) for _ in range(2)] + \
         [stream(rng, (2, 2, widths[1], 3)) for _ in range(2)]

    def run():
        return [*m1.forward(xs[0], xs[1]), *m2.forward(xs[2], xs[3])]

    def back(d):
        g2 = m2.backward(d[2], d[3])
        return [*m1.backward(d[0], d[1]), *g2]

    params = {**{f"s1.{k}": p for k, p in m1.parameters().items()},
              **{f"s2.{k}": p for k, p in m2.parameters().items()}}
    _fd_check(run, back, xs, params, seed=8)


# ------------------------------------------------------------------ oracles

def test_pair_tokens_and_backward():
    rng = rng_of(10)
    g_a, g_v = rng.normal(size=(2, 1, 3, 4)), rng.normal(size=(2, 1, 3, 2))
    p = pair_tokens(g_a, g_v)
    assert p.shape == (2, 1, 6, 8)
    for i in range(4):
        for j in range(2):
            np.testing.assert_array_equal(p[:, :, :3, i * 2 + j], g_a[..., i])
            np.testing.assert_array_equal(p[:, :, 3:, i * 2 + j], g_v[..., j])
    dp = rng.normal(size=p.shape)
    dg_a, dg_v = pair_tokens_backward(dp, 4, 2)
    # the adjoint identity <pair(g), dp> = <g, pair_backward(dp)>
    np.testing.assert_allclose(np.sum(p * dp), np.sum(g_a * dg_a) + np.sum(g_v * dg_v), rtol=1e-12)


def test_ssa_cross_is_two_ssa_directions_with_residual():
    m = make("ssa-cross", seed=11)
    rng = rng_of(12)
    x_a, x_v = stream(rng, (2, 2, 4, 5)), stream(rng, (2, 2, 4, 5))
    y_a, y_v = m.forward(x_a, x_v)
    # train mode, same batch: the directions recompute the same outputs
    np.testing.assert_array_equal(y_a, x_a + m.alpha.value * m.audio_from_visual.forward(x_a, x_v))
    np.testing.assert_array_equal(y_v, x_v + m.beta.value * m.visual_from_audio.forward(x_v, x_a))
    assert [n for n, mod in m.named_modules() if type(mod).__name__ == "SSACore"] == \
        ["audio_from_visual.ssa", "visual_from_audio.ssa"]


def test_mbt_is_ssa_over_tokens_and_bottlenecks():
    m = make("mbt", seed=13, bottlenecks=2)
    rng = rng_of(14)
    x_a, x_v = stream(rng, (2, 3, 4, 5)), stream(rng, (2, 3, 4, 5))
    y_a, y_v = m.forward(x_a, x_v)
    z = np.broadcast_to(m.bottleneck_tokens.value, (2, 3, 4, 2))
    ref_a = m.audio_attn.forward(np.concatenate([x_a, z], axis=3))
    ref_v = m.visual_attn.forward(np.concatenate([x_v, z], axis=3))
    np.testing.assert_array_equal(y_a, x_a + ref_a[..., :5])
    np.testing.assert_array_equal(y_v, x_v + ref_v[..., :5])
    np.testing.assert_allclose(m.bottleneck_out, 0.5 * ((z + ref_a[..., 5:]) + (z + ref_v[..., 5:])),
                               rtol=0, atol=1e-15)


def test_factorized_wiring():
    m = make("factorized", seed=15, fusion_tokens=3, agg_tokens=2)
    rng = rng_of(16)
    x_a, x_v = stream(rng, (2, 2, 4, 6)), stream(rng, (2, 2, 4, 6))
    y_a, y_v = m.forward(x_a, x_v)

    g_a = m.audio_aggregate.forward(m.audio_agg_tokens.value, x_a)
    g_v = m.visual_aggregate.forward(m.visual_agg_tokens.value, x_v)
    assert g_a.shape == g_v.shape == (2, 2, 4, 2)
    p = m.pair_lif.forward(m.pair_bn.forward(m.pair_conv.forward(pair_tokens(g_a, g_v))))
    assert p.shape == (2, 2, 4, 4)
    f = m.fuse.forward(m.fusion_tokens.value, p)
    assert f.shape == (2, 2, 4, 3)
    np.testing.assert_array_equal(y_a, x_a + m.alpha.value * m.audio_read.forward(x_a, f))
    np.testing.assert_array_equal(y_v, x_v + m.beta.value * m.visual_read.forward(x_v, f))


@pytest.mark.parametrize("neuron", [None, SMOOTH])
def test_token_queries_computed_once_equal_the_broadcast_block(neuron):
    """TokenQueryAttention projects the tokens once; SSACrossAttention on the tokens broadcast
    over T and B (same parameters) is the definition."""
    rng = rng_of(50)
    # spiking: low thresholds, or this small block stays silent (see _chain)
    kw = dict(neuron=dict(v_threshold=0.3), attention_neuron=dict(v_threshold=0.05)) \
        if neuron is None else dict(neuron=neuron)
    once = TokenQueryAttention(4, 2, rng=rng_of(51), dtype=np.float64, **kw)
    ref = SSACrossAttention(4, 2, rng=rng_of(51), dtype=np.float64, **kw)
    tokens, x = rng.normal(size=(4, 3)), stream(rng, (3, 2, 4, 5))
    y = once.forward(tokens, x)
    y_ref = ref.forward(np.ascontiguousarray(np.broadcast_to(tokens, (3, 2, 4, 3))), x)
    if neuron is None:
        np.testing.assert_array_equal(y, y_ref)
        assert y.any()
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    for (name, b), (_, b_ref) in zip(once.buffers().items(), ref.buffers().items()):
        np.testing.assert_allclose(b, b_ref, rtol=1e-12, atol=1e-14, err_msg=name)
    dy = rng.normal(size=y.shape)
    d_tokens, dx = once.backward(dy)
    dq_ref, dx_ref = ref.backward(dy)
    np.testing.assert_allclose(d_tokens, dq_ref.sum(axis=(0, 1)), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-14)
    for (name, p), (_, p_ref) in zip(once.parameters().items(), ref.parameters().items()):
        np.testing.assert_allclose(p.grad, p_ref.grad, rtol=1e-10, atol=1e-14, err_msg=name)
    with pytest.raises(ValueError, match="tokens: expected a \\[4, n\\] array"):
        once.forward(tokens[:3], x)


# ------------------------------------------------------------------ mbt information flow

def _chain(bottlenecks, seed=17):
    # at these sizes (d = 2 channels per head, 9 tokens, T = 2) the default thresholds leave
    # nearly every projection and attention neuron silent; low thresholds make the layers
    # fire, so that information can flow at all
    kw = dict(bottlenecks=bottlenecks, neuron=dict(v_threshold=0.3),
              attention_neuron=dict(v_threshold=0.05))
    m1 = make("mbt", dim=4, seed=seed, **kw)
    m2 = make("mbt", dim=8, seed=seed + 1, previous=m1, **kw)
    return m1, m2


def _run(chain, xs):
    m1, m2 = chain
    out1 = m1.forward(xs[0], xs[1])
    out2 = m2.forward(xs[2], xs[3])
    return out1, out2, m1.bottleneck_out.copy()


def _inputs(seed):
    rng = rng_of(seed)
    return [stream(rng, (2, 3, 4, 6)) for _ in range(2)] + [stream(rng, (2, 3, 8, 4)) for _ in range(2)]


@pytest.mark.parametrize("other", [0, 1])        # perturb visual (1) or audio (0)
def test_mbt_modalities_meet_only_through_bottlenecks(other):
    chain = _chain(3)
    this = 1 - other
    xs = _inputs(19)
    base = _run(chain, xs)
    # a different input of the other modality at stage 1: this modality's stage-1 output is
    # unchanged, the bottlenecks change, and so does this modality's stage-2 output
    xs1 = list(xs)
    xs1[other] = stream(rng_of(20), xs[other].shape)
    pert = _run(chain, xs1)
    np.testing.assert_array_equal(pert[0][this], base[0][this])
    assert not np.array_equal(pert[2], base[2])
    assert not np.array_equal(pert[1][this], base[1][this])
    # the other modality changed at stage 2 only, bottlenecks the same: nothing reaches this
    # modality
    xs2 = list(xs)
    xs2[2 + other] = stream(rng_of(21), xs[2 + other].shape)
    same_z = _run(chain, xs2)
    np.testing.assert_array_equal(same_z[2], base[2])
    np.testing.assert_array_equal(same_z[1][this], base[1][this])
    assert not np.array_equal(same_z[1][other], base[1][other])


def test_mbt_with_zero_bottlenecks_keeps_streams_independent():
    chain = _chain(0)
    m1, m2 = chain
    assert not any("tokens" in k or "carry" in k for k in {**m1.parameters(), **m2.parameters()})
    xs = _inputs(22)
    base = _run(chain, xs)
    assert base[2].shape == (2, 3, 4, 0)
    xs_v = list(xs)
    xs_v[1], xs_v[3] = stream(rng_of(23), xs[1].shape), stream(rng_of(24), xs[3].shape)
    pert = _run(chain, xs_v)
    np.testing.assert_array_equal(pert[0][0], base[0][0])
    np.testing.assert_array_equal(pert[1][0], base[1][0])
    assert not np.array_equal(pert[1][1], base[1][1])
    # backward runs and gives the audio inputs a gradient that ignores the visual ones
    g = [np.ones_like(a) for a in (*pert[0], *pert[1])]
    d2 = m2.backward(g[2], g[3])
    d1 = m1.backward(g[0], g[1])
    assert d1[0].shape == xs[0].shape and d2[1].shape == xs[3].shape


def test_mbt_backward_order_and_missing_forward():
    m1, m2 = _chain(2)
    xs = _inputs(25)
    _run((m1, m2), xs)
    g = [np.ones_like(x) for x in xs]
    with pytest.raises(ValueError, match="reverse stage order"):
        m1.backward(g[0], g[1])
    m2.backward(g[2], g[3])
    m1.backward(g[0], g[1])
    fresh1, fresh2 = _chain(2, seed=30)
    with pytest.raises(ValueError, match="previous stage's forward"):
        fresh2.forward(xs[2], xs[3])
    fresh1.forward(xs[0][:, :2], xs[1][:, :2])           # another batch size
    with pytest.raises(ValueError, match="previous stage's bottlenecks"):
        fresh2.forward(xs[2], xs[3])


def test_mbt_gradients_accumulate_over_two_backwards():
    m1, m2 = _chain(2, seed=31)
    xs = _inputs(32)
    _run((m1, m2), xs)
    g = [rng_of(33).normal(size=x.shape) for x in xs]
    for m in (m1, m2):
        m.zero_grad()
    m2.backward(g[2], g[3])
    m1.backward(g[0], g[1])
    once = {k: p.grad.copy() for k, p in m1.parameters().items()}
    m2.backward(g[2], g[3])
    m1.backward(g[0], g[1])
    for k, p in m1.parameters().items():
        np.testing.assert_allclose(p.grad, 2 * once[k], rtol=1e-12, atol=1e-14, err_msg=k)


# ------------------------------------------------------------------ counted operations

@settings(deadline=None, max_examples=15)
@given(heads=st.integers(1, 2), d=st.integers(1, 3), T=st.integers(1, 2), N=st.integers(1, 24),
       seed=st.integers(0, 2**16))
def test_ssa_cross_core_grows_four_times_when_tokens_double(heads, d, T, N, seed):
    D = heads * d
    m = make("ssa-cross", dim=D, heads=heads, seed=seed)
    rng = rng_of(seed + 1)
    counts = []
    for n in (N, 2 * N):
        m.forward(stream(rng, (T, 2, D, n)), stream(rng, (T, 2, D, n)))
        counts.append(m.attention_counts)
    assert counts[0]["macs"] == 2 * 2 * T * 2 * D * N * N          # two directions
    assert counts[1]["macs"] == 4 * counts[0]["macs"]
    assert counts[1]["comparisons"] == 2 * counts[0]["comparisons"]


@settings(deadline=None, max_examples=15)
@given(heads=st.integers(1, 2), d=st.integers(1, 3), T=st.integers(1, 2), N=st.integers(1, 24),
       bottlenecks=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_mbt_core_grows_as_tokens_plus_bottlenecks_squared(heads, d, T, N, bottlenecks, seed):
    D = heads * d
    m = make("mbt", dim=D, heads=heads, seed=seed, bottlenecks=bottlenecks)
    rng = rng_of(seed + 1)
    for n in (N, 2 * N, 4 * N):
        m.forward(stream(rng, (T, 2, D, n)), stream(rng, (T, 2, D, n)))
        c = m.attention_counts
        assert c["macs"] == 2 * 2 * T * 2 * D * (n + bottlenecks) ** 2      # two modalities
        assert c["comparisons"] == 2 * T * 2 * D * (n + bottlenecks)


@settings(deadline=None, max_examples=15)
@given(heads=st.integers(1, 2), d=st.integers(1, 3), T=st.integers(1, 2), N=st.integers(1, 24),
       F=st.integers(2, 6), n=st.integers(2, 4), seed=st.integers(0, 2**16))
def test_factorized_cost_is_linear_in_tokens(heads, d, T, N, F, n, seed):
    D = heads * d
    m = make("factorized", dim=D, heads=heads, seed=seed, fusion_tokens=F, agg_tokens=n)
    rng = rng_of(seed + 1)
    macs = []
    for k in (1, 2, 3):
        m.forward(stream(rng, (T, 2, D, k * N)), stream(rng, (T, 2, D, k * N)))
        macs.append(m.attention_counts["macs"])
        # aggregation [n, N] and read [N, F] per modality, fusion [F, n*n]
        per = 2 * T * 2 * D
        assert macs[-1] == per * (2 * n * k * N + 2 * k * N * F + F * n * n)
    assert macs[2] - macs[1] == macs[1] - macs[0] > 0          # affine in N, never quadratic


@settings(deadline=None, max_examples=10)
@given(heads=st.integers(1, 2), d=st.integers(1, 3), T=st.integers(1, 2),
       N=st.sampled_from([4, 9, 16]), seed=st.integers(0, 2**16))
def test_cmqka_cost_is_linear_in_tokens(heads, d, T, N, seed):
    D = heads * d
    m = make("cmqka", dim=D, heads=heads, seed=seed, attention_backend="dense").eval()
    rng = rng_of(seed + 1)
    x_a, x_v = stream(rng, (T, 1, D, N)), stream(rng, (T, 1, D, N))
    m.forward(x_a, x_v)
    c1 = m.attention_counts
    m.forward(np.concatenate([x_a] * 4, axis=3), np.concatenate([x_v] * 4, axis=3))
    c4 = m.attention_counts
    for name in ("additions", "selects", "kept", "comparisons"):
        assert c4[name] == 4 * c1[name], name


def test_factorized_allocates_no_n_by_n_array():
    T, B, D, N = 1, 1, 4, 4096
    rng = rng_of(34)
    x_a, x_v = stream(rng, (T, B, D, N), np.float32), stream(rng, (T, B, D, N), np.float32)
    m = make("factorized", dim=D, seed=35, dtype=np.float32, fusion_tokens=16, agg_tokens=8)

    def step():
        y_a, y_v = m.forward(x_a, x_v)
        m.backward(y_a, y_v)

    step()
    assert _peak_bytes(step) < N * N
    s = make("ssa-cross", dim=D, seed=36, dtype=np.float32)      # the check has teeth
    assert _peak_bytes(lambda: s.forward(x_a, x_v)) >= N * N


# ------------------------------------------------------------------ energy bookkeeping

def _forward_counted(m, x_a, x_v):
    """One forward with an EventCounter attached (as refsnn.energy does)."""
    counting = pytest.importorskip("refsnn.nn.counting")
    counting.attach(m, counting.EventCounter())
    try:
        m.forward(x_a, x_v)
    finally:
        counting.detach(m)


def test_mbt_projections_report_analog_bottleneck_macs():
    m = make("mbt", dim=4, seed=37, bottlenecks=3, dtype=np.float32)
    rng = rng_of(38)
    x_a, x_v = stream(rng, (2, 3, 4, 5), np.float32), stream(rng, (2, 3, 4, 5), np.float32)
    m.forward(x_a, x_v)
    # without a counter nothing is recorded for energy
    assert m.audio_attn.q_conv.energy_counts() is None
    _forward_counted(m, x_a, x_v)
    convs = {n: mod for n, mod in m.named_modules() if isinstance(mod, BottleneckConv1x1)}
    assert sorted(convs) == sorted(f"{s}_attn.{p}_conv" for s in ("audio", "visual") for p in "qkv")
    for name, conv in convs.items():
        c = conv.energy_counts()
        x = x_a if name.startswith("audio") else x_v
        assert c.kind == "ac" and c.input_events == int(x.sum()), name     # the token columns' events
        assert c.macs == 2 * 3 * 3 * 4 * 4, name              # T*B*bottlenecks*C_in*C_out, analog
        assert c.input_elements == 2 * 3 * 4 * 8, name
        assert c.acs == pytest.approx(c.input_events * 4), name           # fan-out C_out
        assert conv._cache.macs == 2 * 3 * 8 * 4 * 4, name


def test_factorized_token_projections_count_once_per_batch_as_macs():
    m = make("factorized", dim=4, seed=39, dtype=np.float32, fusion_tokens=5, agg_tokens=3)
    rng = rng_of(40)
    x_a, x_v = stream(rng, (2, 3, 4, 6), np.float32), stream(rng, (2, 3, 4, 6), np.float32)
    _forward_counted(m, x_a, x_v)
    for name, n in (("audio_aggregate", 3), ("visual_aggregate", 3), ("fuse", 5)):
        c = getattr(m, name).q_conv.energy_counts()
        assert c.kind == "mac" and c.macs == n * 4 * 4, name     # once, analog
        assert getattr(m, name).k_conv.energy_counts().kind == "ac", name
    assert m.pair_conv.energy_counts().input_events == int(m.pair_conv._cache.x.sum())


# ------------------------------------------------------------------ dtypes, factory, checks

@pytest.mark.parametrize("mode", ["ssa-cross", "mbt", "factorized"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(mode, dtype):
    m = make(mode, dim=8, heads=2, seed=39, dtype=dtype)
    rng = rng_of(40)
    x_a, x_v = stream(rng, (2, 2, 8, 6), dtype), stream(rng, (2, 2, 8, 6), dtype)
    y_a, y_v = m.forward(x_a, x_v)
    assert y_a.dtype == y_v.dtype == dtype and y_a.shape == x_a.shape
    dy = rng.normal(size=x_a.shape).astype(dtype)
    dx_a, dx_v = m.backward(dy, dy)
    assert dx_a.dtype == dx_v.dtype == dtype
    assert all(p.grad.dtype == dtype for p in m.parameters().values())
    assert any(np.abs(p.grad).max() > 0 for p in m.parameters().values())


def test_build_factory():
    rng = rng_of(41)
    c = config("tiny", fusion="mbt", mbt_from_stage=2, mbt_bottlenecks=5)
    mods, previous = [], None
    for s, (dim, heads) in enumerate(zip(c.stage_dims, c.heads), start=1):
        previous = build(c, s, dim, heads, rng=rng, dtype=np.float32, previous=previous)
        mods.append(previous)
    assert isinstance(mods[0], ConcatFusion)
    assert isinstance(mods[1], MBTFusion) and mods[1].previous is None
    assert mods[2].previous is mods[1]
    assert mods[1].parameters()["bottleneck_tokens"].shape == (16, 5)
    p3 = mods[2].parameters()
    assert p3["carry_conv.weight"].shape == (32, 16) and "bottleneck_tokens" not in p3
    assert not any(k.startswith("previous") for k in p3)         # a link, not a child
    f = build(config("tiny", fusion="factorized", factorized_fusion_tokens=7,
                     factorized_agg_tokens=3, cmqka_residual="channel"),
              2, 16, 1, rng=rng, dtype=np.float64)
    shapes = {k: p.shape for k, p in f.parameters().items()}
    assert shapes["fusion_tokens"] == (16, 7) and shapes["audio_agg_tokens"] == (16, 3)
    assert shapes["alpha"] == (16,) and shapes["pair_conv.weight"] == (16, 32)
    assert isinstance(build(config("tiny", fusion="ssa-cross"), 1, 8, 1, rng=rng, dtype=np.float32),
                      SSACrossFusion)
    assert isinstance(build(config("tiny", fusion="concat"), 1, 8, 1, rng=rng, dtype=np.float32),
                      ConcatFusion)
    assert isinstance(build(config("tiny"), 1, 8, 1, rng=rng, dtype=np.float32), CMQKA)
    with pytest.raises(ValueError, match=r"c.fusion: expected one of \['cmqka', 'concat', 'ssa-cross', "
                                         r"'mbt', 'factorized'\], got 'late'"):
        build(SimpleNamespace(fusion="late"), 1, 8, 1, rng=rng, dtype=np.float32)
    with pytest.raises(ValueError, match="stage: expected one of"):
        build(config("tiny", fusion="mbt"), 4, 8, 1, rng=rng, dtype=np.float32)
    with pytest.raises(TypeError):
        ConcatFusion(8, 1)              # no width, no option: arguments are refused, not dropped


def test_registry_rules():
    assert fusion_modes()[:5] == ("cmqka", "concat", "ssa-cross", "mbt", "factorized")
    with pytest.raises(ValueError, match="fusion mode 'mbt' is already registered"):
        register_fusion("mbt", lambda *a, **k: ConcatFusion())
    with pytest.raises(ValueError, match="build: expected a callable"):
        register_fusion("broken", "not a function")
    with pytest.raises(ValueError, match="name: expected a non-empty"):
        register_fusion(" spaced", lambda *a, **k: ConcatFusion())
    with pytest.raises(ValueError, match="name: expected one of"):
        unregister_fusion("never-registered")
    register_fusion("returns-none", lambda *a, **k: None)
    try:
        with pytest.raises(ValueError, match="'returns-none': its builder returned a NoneType"):
            build(SimpleNamespace(fusion="returns-none"), 1, 8, 1, rng=rng_of(0), dtype=np.float32)
    finally:
        unregister_fusion("returns-none")
    assert "returns-none" not in fusion_modes()


def test_argument_checks():
    rng = rng_of(42)
    with pytest.raises(ValueError, match="previous: expected the MBTFusion"):
        MBTFusion(4, 2, previous=ConcatFusion(), rng=rng)
    first = MBTFusion(4, 2, bottlenecks=2, rng=rng)
    with pytest.raises(ValueError, match="previous: carries 2 bottlenecks"):
        MBTFusion(4, 2, bottlenecks=3, previous=first, rng=rng)
    MBTFusion(8, 2, bottlenecks=2, previous=first, rng=rng)
    with pytest.raises(ValueError, match="previous: already feeds"):
        MBTFusion(8, 2, bottlenecks=2, previous=first, rng=rng)
    with pytest.raises(ValueError, match="bottlenecks"):
        MBTFusion(4, 2, bottlenecks=-1, rng=rng)
    with pytest.raises(ValueError, match="fusion_tokens"):
        FactorizedFusion(4, 2, fusion_tokens=0, rng=rng)
    with pytest.raises(ValueError, match="agg_tokens: expected at least 2"):
        FactorizedFusion(4, 2, agg_tokens=1, rng=rng)
    with pytest.raises(ValueError, match="heads: expected a divisor"):
        SSACrossFusion(6, 4, rng=rng)
    with pytest.raises(ValueError, match="rng"):
        FactorizedFusion(4, 2, rng=1)
    x = np.zeros((1, 2, 4, 3), np.float32)
    for m in (SSACrossFusion(4, 2, rng=rng), MBTFusion(4, 2, rng=rng), FactorizedFusion(4, 2, rng=rng)):
        with pytest.raises(ValueError, match="backward: no forward cache"):
            m.backward(x, x)
        with pytest.raises(ValueError, match="x_audio: expected dtype float32"):
            m.forward(x.astype(np.float64), x)
        with pytest.raises(ValueError, match=r"x_visual: expected"):
            m.forward(x, np.zeros((1, 2, 5, 3), np.float32))
        m.forward(x, x)
        with pytest.raises(ValueError, match="dy_visual: expected shape"):
            m.backward(x, x[:, :1])

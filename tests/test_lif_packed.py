"""LIF neurons emitting bit-packed spikes (refsnn.kernels.lif_packed, ``lif_forward(pack=...)``):
the kernels against their NumPy twin, the packed spikes against ``pack_spikes`` of
``lif_forward``'s, the layouts the Q-K ops read, and the option checks."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from refsnn.functional.attention import qk_channel_layout, qk_token_layout
from refsnn.functional.lif import _options, _typed_args, lif_backward, lif_forward
from refsnn.kernels import lif_packed as KP
from refsnn.kernels.bitpack import PackedSpikes, pack_spikes

OPTIONS = st.fixed_dictionaries(dict(
    tau=st.sampled_from([1.5, 2.0, 3.7]),
    v_threshold=st.sampled_from([0.5, 1.0]),
    v_reset=st.sampled_from([0.0, -0.2, None]),
    decay_input=st.booleans(),
))


def _rng(seed):
    return np.random.Generator(np.random.PCG64(seed))


@settings(deadline=None, max_examples=40)
@given(T=st.integers(1, 4), P=st.integers(1, 3), L=st.sampled_from([1, 7, 64, 65, 130]),
       Q=st.sampled_from([1, 2, 9, 600]), opts=OPTIONS, dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_kernels_equal_twin(T, P, L, Q, opts, dtype, seed):
    # Q = 1 runs lif_pack_last_kernel, Q > 1 lif_pack_kernel (600: two position blocks at most)
    x = (_rng(seed).normal(size=(T, P, L, Q)) * 1.5).astype(dtype)
    lif = _typed_args(_options(detach_reset=True, surrogate="sigmoid", alpha=None,
                               spike_fn="heaviside", **opts), dtype)
    got = KP.lif_forward_packed(x, lif)
    want = KP.lif_forward_packed_numpy(x, lif)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@settings(deadline=None, max_examples=30)
@given(shape=st.sampled_from([(3, 2, 12, 70), (2, 1, 130, 5), (4, 2, 6, 200), (2, 140), (3, 70, 3)]),
       data=st.data(), opts=OPTIONS, backend=st.sampled_from(["numba", "numpy"]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_packed_spikes_are_the_spikes_packed(shape, data, opts, backend, dtype, seed):
    axis = data.draw(st.integers(1, len(shape) - 1))
    L = shape[axis]
    group = data.draw(st.sampled_from([None] + [g for g in (1, 2, 5, 35, 65) if L % g == 0]))
    x = (_rng(seed).normal(size=shape) * 1.5).astype(dtype)
    s0, c0 = lif_forward(x, backend=backend, **opts)
    p, c = lif_forward(x, pack=axis if group is None else (axis, group), backend=backend, **opts)
    if group is None:
        ref = pack_spikes(s0, axis=axis)
    else:
        ref = pack_spikes(s0.reshape(shape[:axis] + (L // group, group) + shape[axis + 1:]),
                          axis=axis + 1)
    assert isinstance(p, PackedSpikes)
    assert (p.length, p.axis) == (ref.length, ref.axis)
    np.testing.assert_array_equal(p.words, ref.words)
    np.testing.assert_array_equal(c.h, c0.h)
    # the backward reads the membranes only: the same gradient as from the unpacked spikes
    ds = _rng(seed + 1).normal(size=shape).astype(dtype)
    np.testing.assert_array_equal(lif_backward(ds, c), lif_backward(ds, c0))


def test_layouts_of_the_qk_ops():
    # pack=(2, d) emits qk_token_layout, pack=3 qk_channel_layout, from [T, B, D, N]
    x = (_rng(3).normal(size=(2, 2, 12, 70)) * 2).astype(np.float32)
    s, _ = lif_forward(x)
    for pack, ref in (((2, 4), qk_token_layout(s, 3)), (3, qk_channel_layout(s)),
                      (-1, qk_channel_layout(s))):
        p, _ = lif_forward(x, pack=pack)
        assert (p.length, p.axis) == (ref.length, ref.axis)
        np.testing.assert_array_equal(p.words, ref.words)


def test_pack_option_checks():
    x = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"pack: expected an axis in \[1, 3\)"):
        lif_forward(x, pack=0)
    with pytest.raises(ValueError, match=r"pack: expected an axis in \[1, 3\)"):
        lif_forward(x, pack=3)
    with pytest.raises(ValueError, match="pack: group 3 does not divide axis 2"):
        lif_forward(x, pack=(2, 3))
    with pytest.raises(ValueError, match=r"pack: expected None, an axis \(int\) or \(axis, group\)"):
        lif_forward(x, pack=(2, 0))
    with pytest.raises(ValueError, match=r"pack: expected None, an axis"):
        lif_forward(x, pack="tokens")
    with pytest.raises(ValueError, match="pack: packed spikes come from the 'lif' neuron type"):
        lif_forward(x, pack=2, spike_dtype=np.uint8)
    with pytest.raises(ValueError, match="pack: packed spikes come from"):
        lif_forward(x, pack=2, spike_fn="smooth")
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"x: contains NaN or inf \(first at index \(1, 2, 3\)\)"):
        lif_forward(bad, pack=2)


def test_lif_module_counts_packed_spikes():
    # an energy counter attached to an nn.LIF with pack= counts the set bits
    from refsnn.nn import LIF
    from refsnn.nn.counting import EventCounter, attach
    x = (_rng(8).normal(size=(3, 2, 6, 70)) * 2).astype(np.float32)
    counts = []
    for pack in (None, 3):
        m = LIF(pack=pack)
        attach(m, EventCounter())
        m.forward(x)
        counts.append(m.energy_counts())
    assert counts[0] == counts[1] and counts[0][0] > 0


@settings(deadline=None, max_examples=20)
@example(layout="token", training=True, backend="numba", dtype=np.float32, N=1, seed=0)
@given(layout=st.sampled_from(["token", "channel"]), training=st.booleans(),
       backend=st.sampled_from(["numba", "numpy"]), dtype=st.sampled_from([np.float32, np.float64]),
       N=st.sampled_from([1, 5, 64, 70]), seed=st.integers(0, 2**16))
def test_fused_bn_lif_emits_packed_spikes(layout, training, backend, dtype, N, seed):
    # bn_lif_forward(pack=...) gives the packed form of its float spikes, the same membranes,
    # running statistics and cache: the backward (hence training) is unchanged
    from refsnn.functional.bnlif import bn_lif_backward, bn_lif_forward
    rng = _rng(seed)
    T, B, C, heads = 3, 2, 12, 3
    x = (rng.normal(size=(T, B, C, N)) * 2 + 0.5).astype(dtype)
    w, b = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    rm, rv = rng.normal(size=C).astype(dtype), rng.random(C).astype(dtype) + 0.5
    pack = (2, C // heads) if layout == "token" else 3
    s0, c0, m0, v0 = bn_lif_forward(x, w, b, rm, rv, training=training, backend=backend)
    p, c, m, v = bn_lif_forward(x, w, b, rm, rv, training=training, backend=backend, pack=pack)
    ref = qk_token_layout(s0, heads) if layout == "token" else qk_channel_layout(s0)
    assert isinstance(p, PackedSpikes) and (p.length, p.axis) == (ref.length, ref.axis)
    np.testing.assert_array_equal(p.words, ref.words)
    for got, want in ((c.h, c0.h), (m, m0), (v, v0), (c.x, c0.x)):
        np.testing.assert_array_equal(got, want)
    ds = rng.normal(size=x.shape).astype(dtype)
    for got, want in zip(bn_lif_backward(ds, c), bn_lif_backward(ds, c0)):
        np.testing.assert_array_equal(got, want)


def test_fused_bn_lif_pack_checks():
    from refsnn.functional.bnlif import bn_lif_forward
    x = np.zeros((2, 1, 4, 3, 3), dtype=np.float32)
    p = np.ones(4, dtype=np.float32)
    with pytest.raises(ValueError, match=r"pack: the fused BN\+LIF packs \[T, B, C, P\]"):
        bn_lif_forward(x, p, p, p, p, pack=3)
    with pytest.raises(ValueError, match=r"pack: the fused BN\+LIF packs \[T, B, C, P\]"):
        bn_lif_forward(x.reshape(2, 1, 4, 9), p, p, p, p, pack=(3, 3))

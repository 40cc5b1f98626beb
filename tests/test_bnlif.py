"""The fused BatchNorm + LIF (refsnn.functional.bnlif, refsnn.kernels.bnlif): kernels equal
their NumPy twins exactly; the fused op equals the unfused chain (spikes, membrane and running
statistics bit for bit, gradients to float64 rounding of BatchNorm's sums); float64 finite
differences in smooth mode; the Conv-BN-LIF unit takes the fused path where it applies."""
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.functional import batchnorm_backward, batchnorm_forward, lif_backward, lif_forward
from refsnn.functional.bnlif import bn_lif_backward, bn_lif_forward
from refsnn.functional.lif import SPIKE_FNS, _typed_args, lif_options
from refsnn.kernels import bnlif as K
from refsnn.nn import LIF, BatchNorm, Conv1x1, MaxPool2d, Module
from refsnn.nn.counting import EventCounter, attach
from refsnn.nn.unit import ConvBNLIF
from refsnn.testing import gradient_error, numerical_gradient

DTYPES = (np.float32, np.float64)
NEURONS = [dict(), dict(v_reset=None), dict(decay_input=False, tau=1.5),
           dict(surrogate="atan", detach_reset=False), dict(surrogate="fast_sigmoid"),
           dict(spike_fn="smooth", detach_reset=False)]
# float64 sums in another order: dx and the parameter gradients differ by rounding only
GRAD_TOL = {np.float32: dict(rtol=3e-7, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}


def _inputs(rng, shape, dtype):
    C = shape[2]
    x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
    params = (rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype),
              rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype))
    return x, params


def _kernel_args(neuron, dtype):
    o = lif_options(**neuron)
    a = _typed_args(o, dtype)
    fwd = (a["tau"], a["v_th"], a["v_reset"], a["hard_reset"], a["decay_input"], a["surrogate"],
           a["alpha"], SPIKE_FNS.index(o["spike_fn"]))
    bwd = fwd[:5] + (o["detach_reset"],) + fwd[5:]
    return fwd, bwd


def _forward_kernel(fwd):
    return K.forward_kernel(fwd[-1])


def _backward_kernel(bwd):
    return K.backward_kernel(bwd[-1], bwd[-3])


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), dims=st.tuples(*[st.integers(1, 4)] * 3),
       P=st.integers(1, 40), dtype=st.sampled_from(DTYPES), which=st.integers(0, len(NEURONS) - 1),
       training=st.booleans(), k=st.integers(1, 5))
def test_kernels_equal_numpy_twins(seed, dims, P, dtype, which, training, k):
    """Any number of channels per unit k (the results do not depend on it)."""
    rng = np.random.default_rng(seed)
    T, B, C = dims
    x = (rng.standard_normal((T, B, C, P)) * 2).astype(dtype)
    scale, shift = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    fwd, bwd = _kernel_args(NEURONS[which], dtype)
    one, pi = dtype(1.0), dtype(math.pi)
    spikes, h = np.empty_like(x), np.empty_like(x)
    v_last = np.empty((B, C, P), dtype=dtype)
    _forward_kernel(fwd)(x, scale, shift, spikes, h, v_last, k, *fwd, one, pi)
    ds = rng.standard_normal(x.shape).astype(dtype)
    mean, inv_std = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    weight = rng.uniform(0.5, 1.5, C)
    dx = np.empty_like(x)
    dweight, dbias = np.empty(C), np.empty(C)
    _backward_kernel(bwd)(ds, h, x, mean, inv_std, weight, training, dx, dweight, dbias, k,
                          *bwd, one, pi)
    want_forward = K.bn_lif_forward_numpy(x, scale, shift, *fwd)
    want_backward = K.bn_lif_backward_numpy(ds, h, x, mean, inv_std, weight, training, *bwd)
    neuron = NEURONS[which]
    smooth = neuron.get("spike_fn") == "smooth"
    # fast_sigmoid is pure arithmetic: every value bit for bit. The sigmoid's exp (the kernels'
    # fexp against numpy's exp) and atan may differ in the last bit, as between
    # refsnn.kernels.lif and its twin (tests/test_lif.py), whose tolerances then apply to the
    # values that pass through them (the backward; the forward in smooth mode)
    exact = neuron.get("surrogate") == "fast_sigmoid"
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for got, want in zip((spikes, h, v_last), want_forward):
        if exact or not smooth:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, **tol)
    for got, want in zip((dx, dweight, dbias), want_backward):
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, **tol)


def test_kernels_equal_numpy_twins_exactly_on_a_large_row():
    """fast_sigmoid (no transcendental function): every output bit for bit, at a row longer
    than a vector and several channels."""
    rng = np.random.default_rng(11)
    for dtype in DTYPES:
        x = (rng.standard_normal((3, 2, 3, 1000)) * 2).astype(dtype)
        C = x.shape[2]
        scale, shift = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
        fwd, bwd = _kernel_args(dict(surrogate="fast_sigmoid", v_reset=None), dtype)
        one, pi = dtype(1.0), dtype(math.pi)
        spikes, h = np.empty_like(x), np.empty_like(x)
        v_last = np.empty(x.shape[1:], dtype=dtype)
        K.bn_lif_forward_kernel(x, scale, shift, spikes, h, v_last, 2, *fwd, one, pi)
        for got, want in zip((spikes, h, v_last), K.bn_lif_forward_numpy(x, scale, shift, *fwd)):
            np.testing.assert_array_equal(got, want)
        ds = rng.standard_normal(x.shape).astype(dtype)
        mean, inv_std, weight = rng.standard_normal(C), rng.uniform(0.5, 2, C), rng.uniform(0.5, 1.5, C)
        dx = np.empty_like(x)
        dweight, dbias = np.empty(C), np.empty(C)
        K.bn_lif_backward_fast_sigmoid_kernel(ds, h, x, mean, inv_std, weight, True, dx, dweight,
                                              dbias, 2, *bwd, one, pi)
        for got, want in zip((dx, dweight, dbias),
                             K.bn_lif_backward_numpy(ds, h, x, mean, inv_std, weight, True, *bwd)):
            np.testing.assert_array_equal(got, want)


def _run_kernels(x, scale, shift, ds, mean, inv_std, weight, k, neuron, training):
    dtype = x.dtype.type
    fwd, bwd = _kernel_args(neuron, dtype)
    one, pi = dtype(1.0), dtype(math.pi)
    T, B, C, P = x.shape
    spikes, h = np.empty_like(x), np.empty_like(x)
    v_last = np.empty((B, C, P), dtype=x.dtype)
    _forward_kernel(fwd)(x, scale, shift, spikes, h, v_last, k, *fwd, one, pi)
    dx = np.empty_like(x)
    dweight, dbias = np.empty(C), np.empty(C)
    _backward_kernel(bwd)(ds, h, x, mean, inv_std, weight, training, dx, dweight, dbias, k, *bwd,
                          one, pi)
    return spikes, h, v_last, dx, dweight, dbias


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("training", [True, False])
def test_results_do_not_depend_on_threads_or_unit_size(training):
    """Every channel's sums are made by one unit in a fixed order: every output bit for bit the
    same with 1 and 2 Numba threads and any number of channels per unit (the sigmoid's exp
    included: the same kernel runs every time)."""
    rng = np.random.default_rng(21)
    T, B, C, P = 4, 3, 7, 300
    x = (rng.standard_normal((T, B, C, P)) * 2).astype(np.float32)
    scale = rng.uniform(0.5, 2, C).astype(np.float32)
    shift = rng.standard_normal(C).astype(np.float32)
    ds = rng.standard_normal(x.shape).astype(np.float32)
    mean, inv_std, weight = rng.standard_normal(C), rng.uniform(0.5, 2, C), rng.uniform(0.5, 1.5, C)
    before = numba.get_num_threads()
    runs = []
    try:
        for threads, k in ((1, 1), (2, 1), (2, 2), (2, 3), (1, C), (2, K.channels_per_unit(C, P))):
            numba.set_num_threads(threads)
            runs.append(_run_kernels(x, scale, shift, ds, mean, inv_std, weight, k, {}, training))
        # the public op, which picks k itself, at both thread counts
        w, b = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        public = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            spikes, cache, m, v = bn_lif_forward(x, w, b, rm, rv, training=training)
            public.append((spikes, cache.h, m, v) + bn_lif_backward(ds, cache))
    finally:
        numba.set_num_threads(before)
    for run in runs[1:] + public[1:2]:
        ref = runs[0] if len(run) == 6 else public[0]
        for got, want in zip(run, ref):
            np.testing.assert_array_equal(got, want)
            assert got.tobytes() == want.tobytes()          # signs of zero too


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("which", range(len(NEURONS)))
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fused_equals_unfused_chain(dtype, training, which, backend):
    rng = np.random.default_rng(100 + which)
    shape = (4, 3, 5, 6, 7)
    T, B, C = shape[:3]
    x, (w, b, rm, rv) = _inputs(rng, shape, dtype)
    neuron = dict(NEURONS[which], backend=backend)
    spikes, cache, mean, var = bn_lif_forward(x, w, b, rm, rv, training=training, **neuron)
    y, bn_cache, mean2, var2 = batchnorm_forward(x.reshape(T * B, C, -1), w, b, rm, rv,
                                                 training=training, backend=backend)
    spikes2, lif_cache = lif_forward(y.reshape(shape), **neuron)
    assert spikes.dtype == dtype and spikes.shape == shape
    np.testing.assert_array_equal(spikes, spikes2)
    np.testing.assert_array_equal(cache.h.reshape(-1), lif_cache.h.reshape(-1))
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(var, var2)
    assert 0 < float(np.mean(spikes)) < 1
    ds = rng.standard_normal(shape).astype(dtype)
    dx, dw, db = bn_lif_backward(ds, cache)
    dy = lif_backward(ds, lif_cache)
    dx2, dw2, db2 = batchnorm_backward(dy.reshape(T * B, C, -1), bn_cache)
    assert dx.dtype == dtype and dw.dtype == dtype and dx.shape == shape
    np.testing.assert_allclose(dx, dx2.reshape(shape), **GRAD_TOL[dtype])
    np.testing.assert_allclose(dw, dw2, **GRAD_TOL[dtype])
    np.testing.assert_allclose(db, db2, **GRAD_TOL[dtype])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("which", [0, 3, 5])
def test_finite_differences_smooth_mode(training, which):
    """SPEC section 12: float64, smooth spikes, central differences contracted with a random
    upstream gradient, for x, weight and bias."""
    rng = np.random.default_rng(7 + which)
    shape = (3, 2, 3, 4)
    x, (w, b, rm, rv) = _inputs(rng, shape, np.float64)
    neuron = dict(NEURONS[which], spike_fn="smooth", detach_reset=False)
    dout = rng.standard_normal(shape)

    def loss():
        return float(np.sum(bn_lif_forward(x, w, b, rm, rv, training=training, **neuron)[0] * dout))

    _, cache, _, _ = bn_lif_forward(x, w, b, rm, rv, training=training, **neuron)
    dx, dw, db = bn_lif_backward(dout, cache)
    for analytic, array in ((dx, x), (dw, w), (db, b)):
        assert gradient_error(analytic, numerical_gradient(loss, array)) < 1e-6


def test_bad_input_is_named():
    rng = np.random.default_rng(3)
    x, (w, b, rm, rv) = _inputs(rng, (2, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="weight"):
        bn_lif_forward(x, w[:2], b, rm, rv)
    with pytest.raises(ValueError, match="neuron_type"):
        bn_lif_forward(x, w, b, rm, rv, spike_dtype=np.uint8)
    with pytest.raises(ValueError, match="T >= 1"):
        bn_lif_forward(x[:0], w, b, rm, rv)
    _, cache, _, _ = bn_lif_forward(x, w, b, rm, rv)
    with pytest.raises(ValueError, match="dspikes"):
        bn_lif_backward(np.ones((2, 2, 3, 5), np.float32), cache)
    bad = x.copy()
    bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x"):
        bn_lif_forward(bad, w, b, rm, rv, check=False)


def _owner(seed, pool=None, dtype=np.float32, **neuron):
    rng = np.random.default_rng(seed)
    owner = Module()
    unit = ConvBNLIF(owner, "fc", Conv1x1(4, 6, bias=True, rng=rng, dtype=dtype),
                     BatchNorm(6, dtype=dtype), LIF(**neuron), pool=pool)
    return owner, unit


def _unfused_reference(owner, x, dout):
    """The chain written by hand (the unit before fusion)."""
    h = owner.fc_conv.forward(x)
    spikes = owner.fc_lif.forward(owner.fc_bn.forward(h))
    dx = owner.fc_conv.backward(owner.fc_bn.backward(owner.fc_lif.backward(dout)))
    return spikes, dx


@pytest.mark.parametrize("training", [True, False])
def test_unit_fused_path_equals_layers_chained(training):
    x = np.random.default_rng(1).standard_normal((4, 2, 4, 10)).astype(np.float32) * 2
    dout = np.random.default_rng(2).standard_normal((4, 2, 6, 10)).astype(np.float32)
    a_owner, a = _owner(5)
    b_owner, _ = _owner(5)
    for o in (a_owner, b_owner):
        o.train(training)
    ya = a.forward(x)
    assert a._fused is not None
    dxa = a.backward(dout)
    yb, dxb = _unfused_reference(b_owner, x, dout)
    np.testing.assert_array_equal(ya, yb)
    # the LIF layer's cache describes the fused forward (its membrane, as the chain's)
    np.testing.assert_array_equal(a_owner.fc_lif._cache.h, b_owner.fc_lif._cache.h)
    for key, value in b_owner.state_dict().items():      # running statistics bit for bit
        np.testing.assert_array_equal(a_owner.state_dict()[key], value, err_msg=key)
    np.testing.assert_allclose(dxa, dxb, **GRAD_TOL[np.float32])
    pa, pb = a_owner.parameters(), b_owner.parameters()
    assert list(pa) == list(pb)
    for name in pa:
        np.testing.assert_allclose(pa[name].grad, pb[name].grad, rtol=1e-6, atol=1e-6, err_msg=name)


def test_unit_stays_unfused_with_a_counter_a_pool_or_another_neuron():
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 10)).astype(np.float32)
    owner, unit = _owner(5)
    attach(owner, EventCounter())
    unit.forward(x)
    assert unit._fused is None and owner.fc_lif.energy_counts() is not None
    attach(owner, None)
    unit.forward(x)
    assert unit._fused is not None
    _, unit = _owner(5, spike_dtype=np.uint8)
    unit.forward(x)
    assert unit._fused is None
    _, unit = _owner(5, pool=MaxPool2d())
    assert not unit._fusable()

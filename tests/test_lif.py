"""The LIF neuron (SPEC sections 2 and 12): worked examples, a plain-loop oracle, smooth-mode
finite differences, the Numba kernel against its NumPy twin, and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn.functional import lif_backward, lif_forward
from refsnn.testing import gradient_error, numerical_gradient

X = np.array([0.9, 0.9, 1.6, 0.2, 2.5, -0.4])
DS = np.array([1.0, 0.0, -0.5, 1.0, 0.25, 1.0])

OPTIONS = st.fixed_dictionaries(dict(
    tau=st.sampled_from([1.5, 2.0, 3.7]),
    v_threshold=st.sampled_from([0.5, 1.0, 1.3]),
    v_reset=st.sampled_from([0.0, -0.2, None]),
    decay_input=st.booleans(),
    detach_reset=st.booleans(),
    surrogate=st.sampled_from(["sigmoid", "atan", "fast_sigmoid"]),
    alpha=st.sampled_from([None, 1.7]),
))


def test_worked_example_defaults():
    s, cache = lif_forward(X[:, None])
    np.testing.assert_allclose(cache.h.ravel(), [0.45, 0.675, 1.1375, 0.1, 1.3, -0.2], atol=1e-12)
    np.testing.assert_array_equal(s.ravel(), [0, 0, 1, 0, 1, 0])
    dx = lif_backward(DS[:, None], cache).ravel()
    np.testing.assert_allclose(dx, [0.12159875, -0.11600382, -0.23200764, 0.0962528, 0.08894722,
                                    0.01619189], atol=1e-8)


def test_worked_example_soft_reset_attached():
    s, cache = lif_forward(X[:, None], v_reset=None, detach_reset=False)
    np.testing.assert_allclose(cache.h.ravel(), [0.45, 0.675, 1.1375, 0.16875, 1.334375, -0.0328125],
                               atol=1e-12)
    np.testing.assert_array_equal(s.ravel(), [0, 0, 1, 0, 1, 0])
    dx = lif_backward(DS[:, None], cache).ravel()
    np.testing.assert_allclose(dx, [0.16765185, -0.03729349, -0.22822973, 0.10498667, 0.08765439,
                                    0.03111787], atol=1e-8)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fires_at_equality(backend):
    # H = X / tau = 1 exactly at t = 0: fires
    s, _ = lif_forward(np.array([[2.0]]), backend=backend)
    assert s[0, 0] == 1.0
    s, _ = lif_forward(np.array([[np.nextafter(2.0, 0)]]), backend=backend)
    assert s[0, 0] == 0.0


# ---------------------------------------------------------------- the plain-loop oracle

def _surrogate(x, name, alpha):
    if name == "sigmoid":
        s = 1 / (1 + math.exp(-alpha * x))
        return alpha * s * (1 - s)
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)
    return 1 / (alpha * abs(x) + 1) ** 2


def lif_loop(x, ds, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha):
    """SPEC section 2 written out element by element, in plain Python."""
    alpha = alpha if alpha is not None else {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0}[surrogate]
    T, M = x.shape
    hard = v_reset is not None
    r = v_reset if hard else 0.0
    S = np.zeros((T, M))
    H = np.zeros((T, M))
    dX = np.zeros((T, M))
    for m in range(M):
        v = r
        for t in range(T):
            if decay_input:
                h = v + (x[t, m] - (v - r)) / tau
            else:
                h = v - (v - r) / tau + x[t, m]
            s = 1.0 if h - v_threshold >= 0 else 0.0
            H[t, m], S[t, m] = h, s
            v = h * (1 - s) + v_reset * s if hard else h - v_threshold * s
        dv = 0.0
        for t in reversed(range(T)):
            h, s = H[t, m], S[t, m]
            g = _surrogate(h - v_threshold, surrogate, alpha)
            if hard:
                dvdh = (1 - s) if detach_reset else (1 - s) + (v_reset - h) * g
            else:
                dvdh = 1.0 if detach_reset else 1 - v_threshold * g
            dh = ds[t, m] * g + dv * dvdh
            dv = dh * (1 - 1 / tau)
            dX[t, m] = dh / tau if decay_input else dh
    return S, dX


@settings(deadline=None, max_examples=40)
@given(opts=OPTIONS, T=st.integers(1, 6), M=st.integers(1, 9), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["numba", "numpy"]))
def test_matches_plain_loop(opts, T, M, seed, backend):
    if opts["decay_input"] is False and opts["tau"] <= 1:
        return
    rng = np.random.default_rng(seed)
    x = rng.normal(0.8, 1.2, size=(T, M))
    ds = rng.normal(size=(T, M))
    s_ref, dx_ref = lif_loop(x, ds, **opts)
    s, cache = lif_forward(x, backend=backend, **opts)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_allclose(lif_backward(ds, cache), dx_ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- smooth mode, finite differences

@settings(deadline=None, max_examples=30)
@given(opts=OPTIONS, T=st.integers(1, 5), seed=st.integers(0, 2**16), shape=st.sampled_from([(3,), (2, 3)]))
def test_smooth_mode_finite_differences(opts, T, seed, shape):
    opts = dict(opts, detach_reset=False)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.8, 1.0, size=(T,) + shape)
    dout = rng.normal(size=x.shape)
    _, cache = lif_forward(x, spike_fn="smooth", **opts)
    dx = lif_backward(dout, cache)

    def loss():
        return float(np.sum(lif_forward(x, spike_fn="smooth", **opts)[0] * dout))

    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6


# ---------------------------------------------------------------- kernel against twin

@settings(deadline=None, max_examples=40)
@given(opts=OPTIONS, spike_fn=st.sampled_from(["heaviside", "smooth"]),
       dtype=st.sampled_from([np.float32, np.float64]), T=st.integers(1, 5),
       M=st.sampled_from([1, 7, 2048, 2049, 5000]), seed=st.integers(0, 2**16))
def test_kernel_equals_twin(opts, spike_fn, dtype, T, M, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.8, 1.2, size=(T, M)).astype(dtype)
    ds = rng.normal(size=(T, M)).astype(dtype)
    s1, c1 = lif_forward(x, spike_fn=spike_fn, backend="numba", **opts)
    s2, c2 = lif_forward(x, spike_fn=spike_fn, backend="numpy", **opts)
    assert s1.dtype == s2.dtype == dtype
    if spike_fn == "heaviside":
        np.testing.assert_array_equal(s1, s2)          # pure arithmetic: bit-identical
        np.testing.assert_array_equal(c1.h, c2.h)
    dx1, dx2 = lif_backward(ds, c1), lif_backward(ds, c2)
    if dtype == np.float64:
        np.testing.assert_allclose(dx1, dx2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s1, s2, rtol=1e-12, atol=1e-12)
    else:  # exp/atan of numpy and libm may differ in the last float32 bit
        np.testing.assert_allclose(dx1, dx2, rtol=1e-5, atol=1e-6)


def test_backward_does_not_mutate_upstream():
    x = np.random.default_rng(0).normal(size=(4, 10))
    ds = np.random.default_rng(1).normal(size=(4, 10))
    keep = ds.copy()
    _, cache = lif_forward(x)
    lif_backward(ds, cache)
    np.testing.assert_array_equal(ds, keep)


def test_shape_is_preserved_for_any_rank():
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 5)).astype(np.float32)
    s, cache = lif_forward(x)
    assert s.shape == x.shape and s.dtype == np.float32
    assert lif_backward(np.ones_like(x), cache).shape == x.shape


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(surrogate="relu"), "surrogate"),
    (dict(tau=1.0), "tau"),
    (dict(tau=0.5, decay_input=False, v_reset=0.0, alpha=-1.0), "alpha"),
    (dict(alpha=-2.0), "alpha"),
    (dict(spike_fn="step"), "spike_fn"),
    (dict(v_threshold=float("nan")), "v_threshold"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lif_forward(np.zeros((2, 3)), **kwargs)


@pytest.mark.parametrize("x, match", [
    (np.zeros((0, 3)), "T = 0"),
    (np.array([[np.nan, 1.0]]), "NaN or inf"),
    (np.array([[np.inf, 1.0]]), "NaN or inf"),
    (np.zeros((2, 3), dtype=np.int64), "dtype"),
    (np.float64(1.0), "ndarray"),
])
def test_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        lif_forward(x)


def test_bad_upstream_gradient():
    _, cache = lif_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dspikes: expected shape"):
        lif_backward(np.zeros((2, 4)), cache)
    with pytest.raises(ValueError, match="dspikes"):
        lif_backward(np.full((2, 3), np.nan), cache)


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("t", [0, 2])
def test_non_finite_input_is_caught_from_the_final_membrane(v_reset, decay_input, bad, t):
    x = np.full((3, 4), 0.7, dtype=np.float32)
    x[t, 1] = bad
    with pytest.raises(ValueError, match=rf"x: contains NaN or inf \(first at index \({t}, 1\)\)"):
        lif_forward(x, v_reset=v_reset, decay_input=decay_input)
    with pytest.raises(ValueError, match="NaN or inf"):
        lif_forward(x, v_reset=v_reset, decay_input=decay_input, spike_fn="smooth")


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_uint8_spikes_equal_float_spikes(backend):
    x = np.random.default_rng(4).normal(0.8, 1.2, size=(4, 3000)).astype(np.float32)
    ds = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    s, c = lif_forward(x, backend=backend)
    s8, c8 = lif_forward(x, spike_dtype=np.uint8, backend=backend)
    assert s8.dtype == np.uint8
    np.testing.assert_array_equal(s8, s)
    np.testing.assert_array_equal(lif_backward(ds, c8), lif_backward(ds, c))
    with pytest.raises(ValueError, match="spike_dtype: expected None"):
        lif_forward(x, spike_dtype=np.int16)
    with pytest.raises(ValueError, match="spike_dtype: smooth spikes"):
        lif_forward(x, spike_dtype=np.uint8, spike_fn="smooth")

"""Adding a neuron type (docs/extending.md): a toy IF neuron (no leak: H = V + X) registered from
this file, checked against a plain loop, kernel against twin, smooth-mode finite differences,
and a model with it trained for one step through the public API."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refsnn import nn
from refsnn.functional import lif_backward, lif_forward
from refsnn.functional.lif import NEURON_TYPES, register_neuron
from refsnn.functional.loss import cross_entropy_backward, cross_entropy_forward
from refsnn.optim import SGD
from refsnn.testing import gradient_error, numerical_gradient


@numba.njit(inline="always")
def if_charge(v, x, tau, r, decay_input):
    """Integrate and fire: the membrane keeps all of its charge (no leak, no tau)."""
    return v + x


@numba.njit(inline="always")
def if_charge_backward(dh, tau, decay_input, one):
    return dh, dh


IF = NEURON_TYPES.get("if_test") or register_neuron("if_test", if_charge, if_charge_backward)


def if_loop(x, ds, v_th, v_reset):
    """SPEC section 2's fire and reset around the IF charge, as plain loops over floats
    (Heaviside forward; sigmoid surrogate, alpha 4, detached reset in the backward)."""
    T, M = x.shape
    S, H = np.zeros_like(x), np.zeros_like(x)
    dX = np.zeros_like(x)
    r = 0.0 if v_reset is None else v_reset
    for m in range(M):
        v = r
        for t in range(T):
            H[t, m] = v + x[t, m]
            S[t, m] = 1.0 if H[t, m] - v_th >= 0 else 0.0
            v = H[t, m] * (1 - S[t, m]) + r * S[t, m] if v_reset is not None else H[t, m] - v_th * S[t, m]
        dv = 0.0
        for t in reversed(range(T)):
            sg = 1 / (1 + np.exp(-4.0 * (H[t, m] - v_th)))
            g = 4.0 * sg * (1 - sg)
            dvdh = (1 - S[t, m]) if v_reset is not None else 1.0
            dh = ds[t, m] * g + dv * dvdh
            dv = dh
            dX[t, m] = dh
    return S, dX


@settings(deadline=None, max_examples=20)
@given(T=st.integers(1, 6), M=st.integers(1, 9), seed=st.integers(0, 2**16),
       v_reset=st.sampled_from([0.0, -0.3, None]), backend=st.sampled_from(["numba", "numpy"]))
def test_if_neuron_matches_plain_loop(T, M, seed, v_reset, backend):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.4, 0.8, size=(T, M))
    ds = rng.normal(size=(T, M))
    s_ref, dx_ref = if_loop(x, ds, 1.0, v_reset)
    s, cache = lif_forward(x, v_reset=v_reset, neuron_type="if_test", backend=backend)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_allclose(lif_backward(ds, cache), dx_ref, rtol=1e-12, atol=1e-12)


@settings(deadline=None, max_examples=15)
@given(dtype=st.sampled_from([np.float32, np.float64]), M=st.sampled_from([3, 2049]),
       soft=st.booleans(), detach=st.booleans(), seed=st.integers(0, 2**16))
def test_if_kernel_equals_twin(dtype, M, soft, detach, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.4, 1.0, size=(4, M)).astype(dtype)
    ds = rng.normal(size=x.shape).astype(dtype)
    kw = dict(neuron_type="if_test", v_reset=None if soft else 0.0, detach_reset=detach)
    s1, c1 = lif_forward(x, backend="numba", **kw)
    s2, c2 = lif_forward(x, backend="numpy", **kw)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(c1.h, c2.h)
    # the surrogate's exp may round differently in the kernel and in NumPy; without a leak
    # nothing damps the recursion, so a float32 difference reaches ~1e-6 in absolute terms on
    # O(1) gradients where terms cancel (seed 1365, M 2049): compare against the scale
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lif_backward(ds, c1), lif_backward(ds, c2), **tol)


def test_if_smooth_mode_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 1.0, size=(5, 2, 3))
    dout = rng.normal(size=x.shape)
    kw = dict(neuron_type="if_test", spike_fn="smooth", detach_reset=False)
    _, cache = lif_forward(x, **kw)
    dx = lif_backward(dout, cache)

    def loss():
        return float(np.sum(lif_forward(x, **kw)[0] * dout))

    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6


def test_if_differs_from_lif():
    # constant input 0.6: LIF (tau 2) settles at 0.6 and never fires; IF fires every other step
    x = np.full((4, 1), 0.6)
    assert lif_forward(x)[0].sum() == 0
    np.testing.assert_array_equal(lif_forward(x, neuron_type="if_test")[0].ravel(), [0, 1, 0, 1])


def test_unknown_or_duplicate_neuron_type():
    with pytest.raises(ValueError, match="neuron_type: expected one of"):
        lif_forward(np.zeros((2, 3)), neuron_type="izhikevich")
    with pytest.raises(ValueError, match="neuron_type: expected one of"):
        nn.LIF(neuron_type="izhikevich")
    with pytest.raises(ValueError, match="already registered"):
        register_neuron("if_test", if_charge, if_charge_backward)
    with pytest.raises(ValueError, match="charge: expected a Numba function"):
        register_neuron("if_plain", lambda v, x, tau, r, d: v + x, if_charge_backward)


class TinyIFNet(nn.Module):
    """Conv -> BatchNorm -> IF neurons -> mean over time and space -> Linear."""

    def __init__(self, rng):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1, rng=rng)
        self.bn = nn.BatchNorm(8)
        self.neurons = nn.LIF(neuron_type="if_test")
        self.head = nn.Linear(8, 3, rng=rng)

    def forward(self, x):
        s = self.neurons.forward(self.bn.forward(self.conv.forward(x)))
        self._shape = s.shape
        return self.head.forward(s.mean(axis=(0, 3, 4)))

    def backward(self, dy):
        T, B, C, H, W = self._shape
        ds = np.broadcast_to(self.head.backward(dy)[None, :, :, None, None] / (T * H * W),
                             self._shape).astype(np.float32)
        self.conv.backward(self.bn.backward(self.neurons.backward(ds)))


def test_model_with_if_neurons_trains_a_step():
    rng = np.random.default_rng(0)
    model = TinyIFNet(rng)
    x = rng.normal(0.5, 1.0, size=(4, 6, 2, 5, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=6)
    opt = SGD(model.parameters(), lr=0.5)
    before = {k: p.value.copy() for k, p in model.parameters().items()}
    model.zero_grad()
    loss, cache = cross_entropy_forward(model.forward(x), labels)
    model.backward(cross_entropy_backward(cache))
    assert np.abs(model.parameters()["conv.weight"].grad).sum() > 0   # gradient through IF
    opt.step()
    assert not np.array_equal(before["conv.weight"], model.parameters()["conv.weight"].value)
    loss2, _ = cross_entropy_forward(model.forward(x), labels)
    assert np.isfinite(loss) and np.isfinite(loss2)

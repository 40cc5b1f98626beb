"""The module system (SPEC section 11) and the layer modules over the functional pairs."""
import numpy as np
import pytest

from refsnn.nn import (LIF, BatchNorm, Conv1x1, Conv2d, Linear, MaxPool2d, Module, Parameter,
                       load_npz, save_npz_atomic)
from refsnn.testing import gradient_error, numerical_gradient


class Net(Module):
    def __init__(self, rng, dtype=np.float64):
        super().__init__()
        self.conv = Conv2d(2, 3, 3, 1, 1, bias=False, rng=rng, dtype=dtype)
        self.bn = BatchNorm(3, dtype=dtype)
        self.lif = LIF(spike_fn="smooth", detach_reset=False)
        self.pool = MaxPool2d()
        self.head = Linear(3, 2, rng=rng, dtype=dtype)

    def forward(self, x):
        y = self.pool.forward(self.lif.forward(self.bn.forward(self.conv.forward(x))))
        self._shape = y.shape
        return self.head.forward(y.mean(axis=(0, 3, 4)))

    def backward(self, dlogits):
        T, B, C, H, W = self._shape
        dfeat = self.head.backward(dlogits)
        dy = np.broadcast_to(dfeat[None, :, :, None, None] / (T * H * W), self._shape).copy()
        return self.conv.backward(self.bn.backward(self.lif.backward(self.pool.backward(dy))))


def test_dotted_names_and_buffers():
    net = Net(np.random.default_rng(0))
    assert list(net.parameters()) == ["conv.weight", "bn.weight", "bn.bias", "head.weight", "head.bias"]
    assert list(net.buffers()) == ["bn.running_mean", "bn.running_var"]
    assert set(net.state_dict()) == set(net.parameters()) | set(net.buffers())
    assert net.num_parameters() == 3 * 2 * 9 + 3 + 3 + 2 * 3 + 2


def test_pytorch_default_init_bounds():
    rng = np.random.default_rng(0)
    conv = Conv2d(4, 64, 3, bias=True, rng=rng)
    bound = 1 / np.sqrt(4 * 9)
    assert conv.weight.value.dtype == np.float32
    assert np.abs(conv.weight.value).max() <= bound and np.abs(conv.weight.value).max() > 0.9 * bound
    assert np.abs(conv.bias.value).max() <= bound
    bn = BatchNorm(5)
    assert (bn.weight.value == 1).all() and (bn.bias.value == 0).all()
    assert (bn.running_mean == 0).all() and (bn.running_var == 1).all()
    with pytest.raises(ValueError, match="rng"):
        Conv1x1(2, 3, rng=0)


def test_same_seed_same_weights():
    a, b = Net(np.random.default_rng(7)), Net(np.random.default_rng(7))
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)


def test_whole_net_smooth_mode_finite_differences():
    rng = np.random.default_rng(1)
    net = Net(rng)
    x = rng.normal(0.5, 1.0, size=(2, 3, 2, 5, 5))
    dout = rng.normal(size=(3, 2))
    net.zero_grad()
    net.forward(x)
    dx = net.backward(dout)

    def loss():
        return float(np.sum(net.forward(x) * dout))

    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6
    for name, p in net.parameters().items():
        assert gradient_error(p.grad, numerical_gradient(loss, p.value)) < 1e-6, name


def test_backward_accumulates_and_zero_grad_clears():
    rng = np.random.default_rng(2)
    lin = Linear(3, 2, rng=rng, dtype=np.float64)
    x = rng.normal(size=(4, 3))
    lin.forward(x)
    lin.backward(np.ones((4, 2)))
    g1 = lin.weight.grad.copy()
    lin.forward(x)
    lin.backward(np.ones((4, 2)))
    np.testing.assert_allclose(lin.weight.grad, 2 * g1)
    lin.zero_grad()
    assert (lin.weight.grad == 0).all() and (lin.bias.grad == 0).all()


def test_train_eval_switch_batchnorm():
    rng = np.random.default_rng(3)
    net = Net(rng)
    x = rng.normal(2.0, 1.0, size=(2, 4, 2, 5, 5))
    net.forward(x)
    rm = net.bn.running_mean.copy()
    assert not (rm == 0).all()
    net.eval()
    assert not net.training and not net.bn.training
    net.forward(x)
    np.testing.assert_array_equal(net.bn.running_mean, rm)    # eval does not update
    net.train()
    assert net.bn.training


def test_state_dict_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(4)
    a = Net(rng, dtype=np.float32)
    a.forward(rng.normal(size=(2, 2, 2, 5, 5)).astype(np.float32))   # move running stats
    path = tmp_path / "w.npz"
    a.save(path)
    b = Net(np.random.default_rng(99), dtype=np.float32)
    b.load(path)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
        assert b.state_dict()[k].dtype == v.dtype
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == set(a.state_dict())


def test_load_state_dict_errors_and_atomicity():
    rng = np.random.default_rng(5)
    net = Net(rng)
    state = net.state_dict()
    before = net.state_dict()
    bad = dict(state)
    del bad["conv.weight"]
    bad["extra.thing"] = np.zeros(2)
    bad["head.bias"] = np.zeros(3)
    with pytest.raises(ValueError) as e:
        net.load_state_dict(bad)
    msg = str(e.value)
    assert "missing keys: ['conv.weight']" in msg and "extra.thing" in msg and "head.bias: expected shape (2,)" in msg
    for k, v in before.items():           # nothing was modified
        np.testing.assert_array_equal(net.state_dict()[k], v)


def test_load_npz_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_npz(tmp_path / "missing.npz")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(bad)
    with pytest.raises(ValueError, match=".npz"):
        save_npz_atomic(tmp_path / "x.bin", {"a": np.zeros(1)})


def test_layer_shape_errors_name_the_problem():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="x: expected 5 dimensions"):
        Conv2d(2, 3, 3, rng=rng).forward(np.zeros((2, 2, 5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="x: expected 4 channels on axis 2"):
        BatchNorm(4).forward(np.zeros((2, 2, 3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="x: expected 3 channels on axis 2"):
        Conv1x1(3, 4, rng=rng).forward(np.zeros((2, 2, 5, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="surrogate"):
        LIF(surrogate="nope")
    with pytest.raises(ValueError, match="Parameter"):
        Parameter([1, 2])


def test_astype_casts_everything():
    net = Net(np.random.default_rng(8), dtype=np.float32).astype(np.float64)
    assert all(p.value.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters().values())
    assert all(b.dtype == np.float64 for b in net.buffers().values())


# ------------------------------------------------------------------ time folding, the unit

def test_time_folded_layers_equal_the_op_on_merged_steps():
    """Every TimeFolded layer on [T, B, ...] is its functional op on [T*B, ...] (one fold, no
    other change), and returns [T, B, ...] gradients."""
    from refsnn.functional import batchnorm_forward, conv2d_forward, maxpool2d_forward
    from refsnn.nn.layers import TimeFolded
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 2, 4, 6, 6))
    conv = Conv2d(4, 5, 3, 1, 1, rng=rng, dtype=np.float64)
    bn, pool = BatchNorm(4, dtype=np.float64), MaxPool2d()
    assert all(isinstance(m, TimeFolded) for m in (conv, bn, pool, Conv1x1(2, 2, rng=rng)))
    merged = x.reshape(6, 4, 6, 6)
    np.testing.assert_array_equal(conv.forward(x).reshape(6, 5, 6, 6),
                                  conv2d_forward(merged, conv.weight.value, conv.bias.value, padding=1)[0])
    np.testing.assert_array_equal(
        bn.forward(x).reshape(6, 4, 36),
        batchnorm_forward(merged.reshape(6, 4, 36), bn.weight.value, bn.bias.value,
                          np.zeros(4), np.ones(4))[0])
    np.testing.assert_array_equal(pool.forward(x).reshape(6, 4, 3, 3), maxpool2d_forward(merged)[0])
    for m in (conv, bn, pool):
        y = m.forward(x)
        assert m.backward(np.ones_like(y)).shape == x.shape
    assert conv.backward(np.ones((3, 2, 5, 6, 6)), need_dx=False) is None


def _unit(rng, pool=False):
    from refsnn.nn.unit import ConvBNLIF
    owner = Module()
    unit = ConvBNLIF(owner, "proj", Conv2d(2, 3, 3, 1, 1, bias=False, rng=rng, dtype=np.float64),
                     BatchNorm(3, dtype=np.float64), LIF(spike_fn="smooth", detach_reset=False),
                     pool=MaxPool2d() if pool else None)
    return owner, unit


def test_conv_bn_lif_unit_registers_flat_names_and_chains():
    owner, unit = _unit(np.random.default_rng(12), pool=True)
    assert [n for n, _ in owner.named_modules()][1:] == ["proj_conv", "proj_bn", "proj_pool", "proj_lif"]
    assert list(owner.parameters()) == ["proj_conv.weight", "proj_bn.weight", "proj_bn.bias"]
    x = np.random.default_rng(13).normal(size=(2, 2, 2, 6, 6))
    expected = owner.proj_lif.forward(owner.proj_pool.forward(owner.proj_bn.forward(owner.proj_conv.forward(x))))
    np.testing.assert_array_equal(unit.forward(x), expected)


@pytest.mark.parametrize("pool", [False, True])
def test_conv_bn_lif_unit_repeated_input_equals_copies(pool):
    """repeat_to: one conv/BN/pool on an input standing for T copies equals the unit on the
    T copies (train-mode BN statistics and running variance included), gradients summed."""
    T = 3
    x1 = np.random.default_rng(14).normal(size=(1, 2, 2, 6, 6))
    a_owner, a = _unit(np.random.default_rng(15), pool)
    b_owner, b = _unit(np.random.default_rng(15), pool)
    ya = a.forward(x1, repeat_to=(T, 2))
    yb = b.forward(np.repeat(x1, T, axis=0))
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a_owner.proj_bn.running_var, b_owner.proj_bn.running_var, rtol=1e-12)
    dy = np.random.default_rng(16).normal(size=ya.shape)
    dxa = a.backward(dy)
    dxb = b.backward(dy)
    np.testing.assert_allclose(dxa[0], dxb.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a_owner.proj_conv.weight.grad, b_owner.proj_conv.weight.grad,
                               rtol=1e-10, atol=1e-12)


def test_conv_bn_lif_unit_finite_differences():
    rng = np.random.default_rng(17)
    owner, unit = _unit(rng, pool=True)
    x = rng.normal(size=(1, 2, 2, 6, 6))
    dout = rng.normal(size=(2, 2, 3, 3, 3))

    def loss():
        return float(np.sum(unit.forward(x, repeat_to=(2, 2)) * dout))

    loss()
    owner.zero_grad()
    dx = unit.backward(dout)
    w = owner.proj_conv.weight
    assert gradient_error(dx, numerical_gradient(loss, x)) < 1e-6
    assert gradient_error(w.grad, numerical_gradient(loss, w.value)) < 1e-6


def test_removed_helpers_are_gone():
    import refsnn.energy
    import refsnn.testing
    assert not hasattr(Module, "add_module")
    assert not hasattr(refsnn.energy, "LayerEnergy") and not hasattr(refsnn.testing, "contract")


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, np.uint8])
def test_load_state_dict_refuses_lossy_casts(dtype):
    # an int64 weight used to load truncated (a model evaluating at chance); bool and complex too
    net = Net(np.random.default_rng(6))
    state = net.state_dict()
    before = net.state_dict()
    state["conv.weight"] = state["conv.weight"].astype(dtype)
    with pytest.raises(ValueError, match=rf"conv.weight: expected a floating array, got dtype {np.dtype(dtype)} "
                                         r"\(a lossy cast is refused\)"):
        net.load_state_dict(state)
    for k, v in before.items():
        np.testing.assert_array_equal(net.state_dict()[k], v)
    state = {k: v.astype(np.float64) for k, v in before.items()}     # float64 -> float32 is allowed
    net.load_state_dict(state)


def test_a_time_folded_layer_without_its_ops_is_refused_when_defined():
    from refsnn.nn.layers import TimeFolded
    with pytest.raises(TypeError, match="Half: a TimeFolded layer defines backward_folded"):
        class Half(TimeFolded):
            def forward_folded(self, x):
                return x

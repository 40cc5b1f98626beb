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

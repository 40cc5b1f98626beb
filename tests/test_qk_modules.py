"""Attention blocks of refsnn.nn.attention: names and shapes of docs/naming.md, packed ==
dense, smooth-mode finite differences of whole blocks, counters and argument checks."""
import numpy as np
import pytest

from refsnn.nn.attention import (QKAttention, QKCore, QKCrossAttention, SSACrossAttention,
                                 SSAttention)
from refsnn.testing import gradient_error, numerical_gradient

SMOOTH = dict(spike_fn="smooth", detach_reset=False)
# A block's input gradients are small (~1e-3, after three LIF layers): a step of 1e-5 keeps
# the rounding noise of the difference quotient well below them; truncation stays ~1e-10.
EPS = 1e-5


def rng_of(seed):
    return np.random.Generator(np.random.PCG64(seed))


def _inputs(seed, shape, dtype=np.float64, n=1):
    rng = rng_of(seed)
    # sums of spike maps, as blocks receive them (a residual stream)
    return [((rng.random(shape) < 0.4) + (rng.random(shape) < 0.3)).astype(dtype) for _ in range(n)]


def test_parameter_names_and_shapes():
    m = QKAttention(8, 2, "channel", rng=rng_of(0))
    shapes = {k: p.shape for k, p in m.parameters().items()}
    assert shapes == {"q_conv.weight": (8, 8), "q_bn.weight": (8,), "q_bn.bias": (8,),
                      "k_conv.weight": (8, 8), "k_bn.weight": (8,), "k_bn.bias": (8,),
                      "proj_conv.weight": (8, 8), "proj_conv.bias": (8,),
                      "proj_bn.weight": (8,), "proj_bn.bias": (8,)}
    assert set(m.state_dict()) == set(shapes) | {f"{p}_bn.running_{s}" for p in ("q", "k", "proj")
                                                 for s in ("mean", "var")}
    s = SSAttention(8, 2, rng=rng_of(0))
    assert set(s.parameters()) == set(shapes) | {"v_conv.weight", "v_bn.weight", "v_bn.bias"}
    assert dict(m.named_modules())["qk"].mode == "channel"
    assert "ssa" in dict(s.named_modules())


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_packed_equals_dense(mode):
    x, = _inputs(1, (2, 2, 12, 70), np.float32)
    dy = rng_of(2).normal(size=x.shape).astype(np.float32)
    mods = [QKAttention(12, 3, mode, attention_backend=b, rng=rng_of(3)) for b in ("packed", "dense")]
    ys = [m.forward(x) for m in mods]
    np.testing.assert_array_equal(ys[0], ys[1])
    dxs = [m.backward(dy) for m in mods]
    np.testing.assert_array_equal(dxs[0], dxs[1])
    for (name, p), (_, p_ref) in zip(mods[0].parameters().items(), mods[1].parameters().items()):
        np.testing.assert_array_equal(p.grad, p_ref.grad, err_msg=name)
    counts = [m.attention_counts for m in mods]
    assert {k: counts[0][k] for k in counts[1]} == counts[1]
    assert counts[0]["popcount_words"] > 0


def _fd_block(module, inputs, forward, backward, seed, n_param_entries=3):
    """Smooth-mode finite differences of a block on its inputs and a sample of every
    parameter's entries."""
    y = forward(*inputs)
    dy = rng_of(seed).normal(size=y.shape)
    module.zero_grad()
    grads = backward(dy)
    grads = grads if isinstance(grads, tuple) else (grads,)

    def loss():
        return float(np.sum(forward(*inputs) * dy))

    for x, g in zip(inputs, grads):
        assert gradient_error(g, numerical_gradient(loss, x, eps=EPS)) < 1e-6
    rng = rng_of(seed + 1)
    for name, p in module.parameters().items():
        if name.endswith("proj_conv.bias"):
            # followed by train-mode BatchNorm: the true gradient is 0, finite differences of
            # it are rounding noise, and SPEC's metric is meaningless on noise against noise
            assert np.abs(p.grad).max() < 1e-10
            continue
        idx = [tuple(int(rng.integers(0, s)) for s in p.shape) for _ in range(n_param_entries)]
        g_fd = numerical_gradient(loss, p.value, eps=EPS, indices=idx)
        g = np.array([p.grad[i] for i in idx])
        assert gradient_error(g, g_fd) < 1e-6, name


@pytest.mark.parametrize("mode", ["token", "channel"])
def test_qk_block_smooth_finite_differences(mode):
    m = QKAttention(4, 2, mode, neuron=SMOOTH, attention_backend="dense", rng=rng_of(4),
                    dtype=np.float64)
    _fd_block(m, _inputs(5, (2, 2, 4, 3)), m.forward, m.backward, 6)


def test_cross_blocks_smooth_finite_differences():
    m = QKCrossAttention(4, 2, "token", neuron=SMOOTH, attention_backend="dense", rng=rng_of(7),
                         dtype=np.float64)
    _fd_block(m, _inputs(8, (2, 2, 4, 3), n=2), m.forward, m.backward, 9)
    s = SSACrossAttention(4, 2, neuron=SMOOTH, rng=rng_of(10), dtype=np.float64)
    _fd_block(s, _inputs(11, (2, 2, 4, 3), n=2), s.forward, s.backward, 12)
    # queries attending to another token set (Nk = 2 against N = 3)
    x_q, = _inputs(19, (2, 2, 4, 3))
    x_kv, = _inputs(20, (2, 2, 4, 2))
    _fd_block(s, [x_q, x_kv], s.forward, s.backward, 21)


def test_ssa_block_smooth_finite_differences():
    m = SSAttention(4, 2, neuron=SMOOTH, scale=0.3, rng=rng_of(13), dtype=np.float64)
    _fd_block(m, _inputs(14, (2, 2, 4, 3)), m.forward, m.backward, 15)


def test_counts_and_eval_mode():
    m = QKAttention(8, 2, "token", rng=rng_of(16))
    x, = _inputs(17, (2, 1, 8, 10), np.float32)
    m.eval()
    y1 = m.forward(x)
    np.testing.assert_array_equal(m.forward(x), y1)        # eval: running statistics, no drift
    core = dict(m.named_modules())["qk"]
    assert core.op_counts == m.attention_counts and core.op_counts["comparisons"] == 2 * 1 * 2 * 10
    assert not hasattr(m, "op_counts")                    # counted once, at the core


def test_argument_checks():
    rng = rng_of(18)
    with pytest.raises(ValueError, match="smooth"):
        QKAttention(4, 2, neuron=SMOOTH, rng=rng)
    with pytest.raises(ValueError, match="mode"):
        QKAttention(4, 2, "spatial", rng=rng)
    with pytest.raises(ValueError, match="heads: expected a divisor"):
        QKAttention(6, 4, rng=rng)
    with pytest.raises(ValueError, match="attention_backend"):
        QKAttention(4, 2, attention_backend="gpu", rng=rng)
    with pytest.raises(ValueError, match="rng"):
        QKAttention(4, 2, rng=0)
    with pytest.raises(ValueError, match="neuron: expected a dict"):
        QKAttention(4, 2, neuron=1.0, rng=rng)
    with pytest.raises(ValueError, match="v_threshold"):
        QKCore(2, "token", neuron=dict(v_threshold="high"))
    m = QKAttention(4, 2, rng=rng)
    with pytest.raises(ValueError, match=r"x: expected dtype float32 \(the module's\)"):
        m.forward(np.zeros((1, 2, 4, 3)))
    with pytest.raises(ValueError, match=r"x: expected \[T, B, 4, N\]"):
        m.forward(np.zeros((1, 2, 5, 3), np.float32))
    c = QKCrossAttention(4, 2, rng=rng)
    with pytest.raises(ValueError, match="x_k: expected the shape of the query input"):
        c.forward(np.zeros((1, 2, 4, 3), np.float32), np.zeros((1, 2, 4, 4), np.float32))
    s = SSACrossAttention(4, 2, rng=rng)
    with pytest.raises(ValueError, match=r"x_kv: expected \[T, B\] = \(1, 2\)"):
        s.forward(np.zeros((1, 2, 4, 3), np.float32), np.zeros((2, 2, 4, 3), np.float32))

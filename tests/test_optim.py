"""Optimizers against hand-computed steps; exact state round trips; schedule and clipping."""
import math

import numpy as np
import pytest

from refsnn.nn import Parameter
from refsnn.optim import SGD, AdamW, CosineSchedule, clip_grad_norm, default_decay_filter, grad_norm


def params(dtype=np.float64):
    w = Parameter(np.array([[1.0, -2.0]], dtype=dtype))
    b = Parameter(np.array([0.5], dtype=dtype))
    return {"w": w, "b": b}


def test_sgd_momentum_weight_decay_by_hand():
    p = params()
    opt = SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)
    p["w"].grad[...] = [[0.2, 0.4]]
    opt.step()
    # step 1: g = grad + wd*w = [0.21, 0.38]; buf = g; w -= lr*buf
    np.testing.assert_allclose(p["w"].value, [[1 - 0.021, -2 - 0.038]], atol=1e-15)
    w1 = p["w"].value.copy()
    p["w"].grad[...] = [[0.2, 0.4]]
    opt.step()
    g = np.array([[0.2, 0.4]]) + 0.01 * w1
    buf = 0.9 * np.array([[0.21, 0.38]]) + g
    np.testing.assert_allclose(p["w"].value, w1 - 0.1 * buf, atol=1e-15)


def test_sgd_nesterov_by_hand():
    p = params()
    opt = SGD(p, lr=0.5, momentum=0.5, nesterov=True)
    p["b"].grad[...] = [2.0]
    opt.step()            # buf = 2; g = 2 + 0.5*2 = 3; b = 0.5 - 1.5
    np.testing.assert_allclose(p["b"].value, [-1.0])
    opt.step()            # buf = 0.5*2 + 2 = 3; g = 2 + 1.5 = 3.5; b = -1 - 1.75
    np.testing.assert_allclose(p["b"].value, [-2.75])
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)


def test_adamw_by_hand():
    p = params()
    opt = AdamW(p, lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    g = np.array([[0.3, -0.1]])
    w = p["w"].value.copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in (1, 2, 3):
        p["w"].grad[...] = g
        opt.step()
        w = w * (1 - 0.1 * 0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        w = w - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
        np.testing.assert_allclose(p["w"].value, w, rtol=1e-14)


def test_decay_filter_skips_vectors():
    p = params()
    opt = AdamW(p, lr=0.1, weight_decay=0.5, decay_filter=default_decay_filter)
    opt.step()                           # zero gradients: only the decay moves anything
    np.testing.assert_array_equal(p["b"].value, [0.5])
    np.testing.assert_allclose(p["w"].value, [[0.95, -1.9]])


@pytest.mark.parametrize("make", [
    lambda p: AdamW(p, lr=0.01, weight_decay=0.05),
    lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
])
def test_state_round_trip_continues_bit_exactly(make):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(2,)).astype(np.float32) for _ in range(6)]

    def run(split):
        p = params(np.float32)
        opt = make(p)
        sched = CosineSchedule(opt, total_steps=6, warmup_steps=2)
        for i, g in enumerate(grads):
            if i == split:
                state, sstate = opt.state_dict(), sched.state_dict()
                values = {k: v.value.copy() for k, v in p.items()}
                p = params(np.float32)
                for k in p:
                    p[k].value[...] = values[k]
                opt = make(p)
                sched = CosineSchedule(opt, total_steps=6, warmup_steps=2)
                opt.load_state_dict(state)
                sched.load_state_dict(sstate)
            p["w"].grad[...] = g[None]
            p["b"].grad[...] = g[:1]
            opt.step()
            sched.step()
        return p

    a, b = run(split=None), run(split=3)
    for k in a:
        np.testing.assert_array_equal(a[k].value, b[k].value)


def test_state_errors():
    p = params()
    opt = AdamW(p)
    state = opt.state_dict()
    del state["exp_avg.w"]
    with pytest.raises(ValueError, match="missing keys \\['exp_avg.w'\\]"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    state["exp_avg.w"] = np.zeros(3)
    with pytest.raises(ValueError, match="exp_avg.w: expected shape"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="parameters"):
        AdamW({})


def test_cosine_schedule_values():
    p = params()
    opt = SGD(p, lr=1.0)
    sched = CosineSchedule(opt, total_steps=10, warmup_steps=4, min_lr=0.1)
    lrs = [opt.lr]
    for _ in range(10):
        lrs.append(sched.step())
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lrs[4], 1.0)
    np.testing.assert_allclose(lrs[7], 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    np.testing.assert_allclose(lrs[10], 0.1)


def test_clip_grad_norm():
    p = params()
    p["w"].grad[...] = [[3.0, 0.0]]
    p["b"].grad[...] = [4.0]
    assert grad_norm(p) == 5.0
    assert clip_grad_norm(p, 1.0) == 5.0
    assert abs(grad_norm(p) - 1.0) < 1e-6
    assert clip_grad_norm(p, 10.0) == pytest.approx(1.0, abs=1e-6)   # below the limit: unchanged
    assert abs(grad_norm(p) - 1.0) < 1e-6

"""The SNNergy hierarchy (SPEC section 6): whole-model gradients in smooth mode, packed versus
dense attention, frame mapping, the compute-once stem, learning, and bad input."""
import json
import os

import numpy as np
import pytest
from nn_reference import state_cases, state_signature

from refsnn.functional import cross_entropy_backward, cross_entropy_forward
from refsnn.models import config
from refsnn.models.snnergy import SNNergy, frame_indices
from refsnn.testing import gradient_error, numerical_gradient


def inputs(c, B=2, F=None, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    S = c.image_size
    audio = rng.normal(0.0, 1.0, size=(B, 1, S, S)).astype(dtype)
    visual = rng.random((B, F or c.T, 3, S, S)).astype(dtype)
    return audio, visual


def test_parameter_counts_match_the_readme():
    counts = {name: SNNergy(config(name)).num_parameters() for name in ("tiny", "cpu", "paper")}
    assert counts == {"tiny": 68_576, "cpu": 266_160, "paper": 6_439_426}


def test_parameter_names_follow_docs_naming():
    names = set(SNNergy(config("tiny")).parameters())
    for expected in ["audio.stage1.embed.proj0_conv.weight", "visual.stage1.embed.res_bn.bias",
                     "audio.stage2.embed.proj1_conv.weight", "visual.stage3.blocks.0.attn.q_conv.weight",
                     "audio.stage3.blocks.0.mlp.fc2_conv.bias", "fusion1.audio_from_visual.k_conv.weight",
                     "fusion3.visual_from_audio.proj_conv.bias", "fusion2.alpha", "fusion2.beta",
                     "head.weight", "head.bias"]:
        assert expected in names, expected
    state = SNNergy(config("tiny")).state_dict()
    assert "visual.stage1.embed.proj0_bn.running_var" in state


def test_frame_indices():
    assert list(frame_indices(10, 4)) == [1, 3, 6, 8]        # SPEC section 6's example
    assert list(frame_indices(4, 4)) == [0, 1, 2, 3]
    assert list(frame_indices(1, 4)) == [0, 0, 0, 0]


@pytest.mark.parametrize("fusion", ["cmqka", "concat"])
def test_whole_tiny_model_smooth_mode_finite_differences(fusion):
    c = config("tiny", spike_fn="smooth", detach_reset=False, attention_backend="dense", fusion=fusion)
    model = SNNergy(c, seed=3, dtype=np.float64)
    audio, visual = inputs(c, B=2, F=3, seed=1, dtype=np.float64)
    labels = np.array([1, 7])

    def loss():
        return cross_entropy_forward(model.forward(audio, visual), labels)[0]

    model.zero_grad()
    _, cache = cross_entropy_forward(model.forward(audio, visual), labels)
    d_audio, d_visual = model.backward(cross_entropy_backward(cache), input_grads=True)
    grads = {k: p.grad.copy() for k, p in model.parameters().items()}
    rng = np.random.default_rng(0)

    def sample(shape, n):
        flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
        return [np.unravel_index(i, shape) for i in flat]

    for name, x, g in (("audio", audio, d_audio), ("visual", visual, d_visual)):
        idx = sample(x.shape, 12)
        err = gradient_error(np.array([g[i] for i in idx]), numerical_gradient(loss, x, indices=idx))
        assert err < 1e-5, (name, err)
    for name, p in model.parameters().items():
        idx = sample(p.value.shape, 2)
        g = np.array([grads[name][i] for i in idx])
        g_fd = numerical_gradient(loss, p.value, indices=idx)
        if name.endswith("_conv.bias"):
            # every conv bias here feeds BatchNorm in train mode: its true gradient is 0, so
            # both sides are rounding noise and only an absolute comparison means anything
            assert np.abs(g).max() < 1e-12 and np.abs(g_fd).max() < 1e-7, (name, g, g_fd)
            continue
        err = gradient_error(g, g_fd)
        assert err < 1e-5, (name, err)


def test_packed_and_dense_backends_give_identical_logits():
    c = config("tiny")
    audio, visual = inputs(c, B=3, F=5, seed=2)
    packed = SNNergy(c, seed=4)
    dense = SNNergy(c.replace(attention_backend="dense"), seed=4)
    dense.load_state_dict(packed.state_dict())
    lp, ld = packed.forward(audio, visual), dense.forward(audio, visual)
    np.testing.assert_array_equal(lp, ld)
    g = np.random.default_rng(0).normal(size=lp.shape).astype(np.float32)
    packed.backward(g)
    dense.backward(g)
    for (k, a), (_, b) in zip(packed.parameters().items(), dense.parameters().items()):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6, err_msg=k)


def test_repeated_input_computed_once_equals_full_time_steps():
    """A single frame repeated over T (stem computed once) equals T identical frames."""
    c = config("tiny", T=3)
    audio, visual = inputs(c, B=2, F=1, seed=5)
    once = SNNergy(c, seed=6)
    full = SNNergy(c, seed=6)
    l1 = once.forward(audio, visual[:, 0])                        # [B, 3, H, W]
    l2 = full.forward(audio, np.repeat(visual, c.T, axis=1))      # F = T identical frames
    np.testing.assert_allclose(l1, l2, rtol=1e-4, atol=1e-5)
    for k, v in once.buffers().items():
        np.testing.assert_allclose(v, full.buffers()[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_unimodal_variants(modality):
    c = config("tiny", modality=modality)
    model = SNNergy(c)
    assert not any(k.startswith("fusion") for k in model.parameters())
    other = "visual" if modality == "audio" else "audio"
    assert not any(k.startswith(other) for k in model.parameters())
    assert model.head.weight.value.shape == (10, 32)
    audio, visual = inputs(c)
    logits = model.forward(audio if modality == "audio" else None, visual if modality == "visual" else None)
    assert logits.shape == (2, 10)
    model.backward(np.ones_like(logits))


def test_train_eval_modes_and_eval_determinism():
    c = config("tiny")
    model = SNNergy(c)
    audio, visual = inputs(c)
    model.forward(audio, visual)
    model.eval()
    a = model.forward(audio, visual)
    b = model.forward(audio[:1], visual[:1])
    np.testing.assert_allclose(a[:1], b, rtol=1e-5, atol=1e-6)     # eval: per-sample, no batch stats


@pytest.mark.parametrize("make, match", [
    (lambda c, a, v: (a[:1], v), "visual: batch size 2 differs from audio's 1"),
    (lambda c, a, v: (a[:, :, :16], v), r"audio: expected shape \[B, 1, 32, 32\]"),
    (lambda c, a, v: (a, v[:, :, :2]), r"visual: expected shape \[B, F, 3, 32, 32\]"),
    (lambda c, a, v: (np.repeat(a, 2, axis=1), v), "audio: expected shape"),
    (lambda c, a, v: (a, v[:, :0]), "F = 0"),
    (lambda c, a, v: (a.astype(np.float64), v), "audio: expected dtype float32"),
    (lambda c, a, v: (a, v.copy() * np.nan), "visual: contains NaN"),
    (lambda c, a, v: (None, v), "audio: required"),
])
def test_bad_input_names_the_argument(make, match):
    c = config("tiny")
    model = SNNergy(c)
    a, v = make(c, *inputs(c))
    with pytest.raises(ValueError, match=match):
        model.forward(a, v)


@pytest.mark.slow
def test_cpu_model_memorises_eight_synthetic_samples():
    from refsnn.data import load_dataset
    from refsnn.optim import AdamW
    c = config("cpu", classes=8)
    data = load_dataset("synthetic", "train", image_size=c.image_size, seed=0)
    labels = np.array([data[i].label for i in range(len(data))])
    picks = [int(np.flatnonzero(labels == k)[0]) for k in range(8)]       # one sample per class
    audio = np.stack([data[i].audio for i in picks])
    visual = np.stack([data[i].frames for i in picks])
    y = labels[picks]
    model = SNNergy(c, seed=0)
    opt = AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(150):
        model.zero_grad()
        logits = model.forward(audio, visual)
        if (logits.argmax(1) == y).all():
            break
        _, cache = cross_entropy_forward(logits, y)
        model.backward(cross_entropy_backward(cache))
        opt.step()
    assert (model.forward(audio, visual).argmax(1) == y).all(), f"not memorised after {step + 1} steps"



def _reference(part: str) -> dict:
    with open(os.path.join(os.path.dirname(__file__), "data", "nn_reference.json")) as f:
        return json.load(f)[part]


@pytest.mark.parametrize("name, preset, overrides", list(state_cases()),
                         ids=[c[0] for c in state_cases()])
def test_parameter_names_and_init_unchanged(name, preset, overrides):
    """Parameter and state_dict names, shapes, order and initial values of every preset and
    fusion mode are those of the code before the Conv-BN-LIF units (tests/nn_reference.py):
    checkpoints and conformance vectors load unchanged."""
    assert state_signature(preset, overrides) == _reference("state")[name]

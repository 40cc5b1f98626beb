"""Every fusion mode inside the whole SNNergy model (SPEC sections 6 and 8): forward and
backward in float32, parameter names of docs/fusion.md, and smooth-mode finite differences of
the whole tiny model (SPEC section 12), as tests/test_model.py does for cmqka and concat."""
import numpy as np
import pytest

from refsnn.functional import cross_entropy_backward, cross_entropy_forward
from refsnn.fusion import CMQKA, ConcatFusion, FactorizedFusion, MBTFusion, SSACrossFusion
from refsnn.models import config
from refsnn.models.snnergy import SNNergy
from refsnn.testing import gradient_error, numerical_gradient
from test_fusion_baselines import fd
from test_model import inputs

MODES = {"cmqka": CMQKA, "concat": ConcatFusion, "ssa-cross": SSACrossFusion, "mbt": MBTFusion,
         "factorized": FactorizedFusion}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_runs_forward_and_backward(mode):
    c = config("tiny", fusion=mode)
    model = SNNergy(c, seed=1)
    assert [type(getattr(model, f"fusion{s}")) for s in (1, 2, 3)] == [MODES[mode]] * 3
    audio, visual = inputs(c, seed=2)
    logits = model.forward(audio, visual)
    assert logits.shape == (2, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
    model.zero_grad()
    d_audio, d_visual = model.backward(np.ones_like(logits), input_grads=True)
    assert d_audio.shape == audio.shape and d_visual.shape == visual.shape
    for name, p in model.parameters().items():
        assert np.isfinite(p.grad).all(), name
    # the fusion parameters are trained (the gradient reaches them)
    fusion = {k: p for k, p in model.parameters().items() if k.startswith("fusion")}
    assert (not fusion) == (mode == "concat")
    if fusion:
        assert any(np.abs(p.grad).max() > 0 for p in fusion.values())


@pytest.mark.parametrize("from_stage", [2, 3])
def test_mbt_from_stage(from_stage):
    c = config("tiny", fusion="mbt", mbt_from_stage=from_stage, mbt_bottlenecks=2)
    model = SNNergy(c, seed=3)
    kinds = [type(getattr(model, f"fusion{s}")) for s in (1, 2, 3)]
    assert kinds == [ConcatFusion] * (from_stage - 1) + [MBTFusion] * (4 - from_stage)
    names = set(model.parameters())
    assert f"fusion{from_stage}.bottleneck_tokens" in names
    assert ("fusion3.carry_conv.weight" in names) == (from_stage == 2)
    audio, visual = inputs(c, seed=4)
    logits = model.forward(audio, visual)
    model.backward(np.ones_like(logits))


def test_parameter_names_of_docs_fusion():
    expected = {
        "ssa-cross": ["fusion1.alpha", "fusion1.beta", "fusion1.audio_from_visual.v_conv.weight",
                      "fusion2.visual_from_audio.proj_conv.bias", "fusion3.audio_from_visual.k_bn.weight"],
        "mbt": ["fusion1.bottleneck_tokens", "fusion1.audio_attn.q_conv.weight",
                "fusion2.carry_conv.weight", "fusion2.carry_conv.bias", "fusion3.carry_conv.weight",
                "fusion3.visual_attn.v_bn.bias", "fusion3.audio_attn.proj_conv.bias"],
        "factorized": ["fusion1.alpha", "fusion2.beta", "fusion1.audio_agg_tokens",
                       "fusion1.visual_agg_tokens", "fusion2.fusion_tokens",
                       "fusion1.audio_aggregate.q_conv.weight", "fusion2.visual_aggregate.v_bn.weight",
                       "fusion3.pair_conv.weight", "fusion3.pair_bn.bias", "fusion1.fuse.k_conv.weight",
                       "fusion2.audio_read.proj_conv.bias", "fusion3.visual_read.q_bn.weight"],
    }
    for mode, names in expected.items():
        params = SNNergy(config("tiny", fusion=mode)).parameters()
        for name in names:
            assert name in params, (mode, name)
    mbt = SNNergy(config("tiny", fusion="mbt", mbt_bottlenecks=4)).parameters()
    assert mbt["fusion1.bottleneck_tokens"].shape == (8, 4)
    assert mbt["fusion2.carry_conv.weight"].shape == (16, 8)
    assert "fusion2.bottleneck_tokens" not in mbt
    fac = SNNergy(config("tiny", fusion="factorized")).parameters()
    assert fac["fusion3.fusion_tokens"].shape == (32, 16)
    assert fac["fusion3.audio_agg_tokens"].shape == (32, 8)
    assert fac["fusion3.pair_conv.weight"].shape == (32, 64)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ssa-cross", "mbt", "factorized"])
def test_whole_tiny_model_smooth_mode_finite_differences(mode):
    """tests/test_model.py's check for the baselines. The parameters checked are every fusion
    tensor that is special to the mode (tokens, carry conv, residual weights), a sample of the
    other fusion tensors and a few stream tensors; the inputs' gradients cover the rest."""
    c = config("tiny", spike_fn="smooth", detach_reset=False, attention_backend="dense",
               fusion=mode, mbt_bottlenecks=3, factorized_fusion_tokens=4, factorized_agg_tokens=3)
    model = SNNergy(c, seed=3, dtype=np.float64)
    audio, visual = inputs(c, B=2, F=3, seed=1, dtype=np.float64)
    labels = np.array([1, 7])

    def grad_fd(x, idx, name):
        # the pixels and the stage-1 stem feed the first max pools directly, whose kinks a step
        # of 1e-4 can cross: plain differences with a tiny step, as tests/test_model.py; the
        # later tensors have gradients down to ~1e-6, where a tiny step's rounding noise
        # matters: Richardson differences with a larger step
        if name in ("audio", "visual") or ".stage1.embed." in name:
            return numerical_gradient(loss, x, indices=idx)
        return fd(loss, x, idx, 1e-4)

    def loss():
        return cross_entropy_forward(model.forward(audio, visual), labels)[0]

    model.zero_grad()
    _, cache = cross_entropy_forward(model.forward(audio, visual), labels)
    d_audio, d_visual = model.backward(cross_entropy_backward(cache), input_grads=True)
    params = model.parameters()
    grads = {k: p.grad.copy() for k, p in params.items()}
    rng = np.random.default_rng(0)

    def sample(shape, n):
        flat = rng.choice(int(np.prod(shape)), size=min(n, int(np.prod(shape))), replace=False)
        return [np.unravel_index(i, shape) for i in flat]

    for name, x, g in (("audio", audio, d_audio), ("visual", visual, d_visual)):
        idx = sample(x.shape, 5)
        err = gradient_error(np.array([g[i] for i in idx]), grad_fd(x, idx, name))
        assert err < 1e-5, (name, err)
    fusion = [k for k in params if k.startswith("fusion")]
    special = [k for k in fusion if any(s in k for s in ("tokens", "carry", "alpha", "beta"))]
    others = [k for k in fusion if k not in special]
    chosen = special + [others[i] for i in rng.choice(len(others), size=4, replace=False)] + \
        ["audio.stage1.embed.proj0_conv.weight", "visual.stage3.blocks.0.attn.q_conv.weight"]
    if mode == "mbt":
        assert {"fusion1.bottleneck_tokens", "fusion2.carry_conv.weight", "fusion3.carry_conv.bias"} <= set(chosen)
    for name in chosen:
        p = params[name]
        idx = sample(p.value.shape, 1)
        g = np.array([grads[name][i] for i in idx])
        g_fd = grad_fd(p.value, idx, name)
        if name.endswith("proj_conv.bias"):
            # feeds BatchNorm in train mode: the true gradient is 0 (absolute comparison only)
            assert np.abs(g).max() < 1e-12 and np.abs(g_fd).max() < 1e-7, (name, g, g_fd)
            continue
        assert gradient_error(g, g_fd) < 1e-5, (name, gradient_error(g, g_fd))

"""Suite ``cmqka``: the cross-modal Q-K attention of SPEC section 5 with every option (mask,
mask_from, residual), as a module in train mode: outputs, input gradients, every parameter
gradient and the updated BatchNorm running statistics.

Parameter names are refsnn's (docs/naming.md, relative to ``fusion{s}``): ``audio_from_visual.
{q_conv,q_bn,k_conv,k_bn,proj_conv,proj_bn}.*``, ``visual_from_audio.*``, ``alpha``, ``beta``.
The draw is repeated with the next seed until every real-input neuron keeps |H - v_th| >= 1e-3.
"""
from __future__ import annotations

import itertools

import numpy as np

from ...fusion import CMQKA
from ..case import Case, case_seed, grad_out, lif_kwargs, neuron_params, rng_for, value_out
from ..margins import lif_margin

SUITE = "cmqka"
MARGIN = 1e-3
TOK = "[T, B, D, N]"
SHAPE = (2, 1, 8, 16)       # T, B, D, N
HEADS = 2


def _draw_state(rng, module) -> dict:
    """Every parameter and buffer of ``module`` drawn at random (alpha != beta, so a port that
    swaps them fails)."""
    state = {}
    for name, p in module.parameters().items():
        shape = p.value.shape
        if name.endswith("_conv.weight") or name.endswith("_conv.bias"):
            fan_in = module.dim
            state[name] = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
        elif name.endswith("_bn.weight"):
            state[name] = rng.uniform(0.8, 1.6, shape)
        elif name.endswith("_bn.bias"):
            state[name] = rng.uniform(0.3, 1.2, shape)
        elif name in ("alpha", "beta"):
            state[name] = rng.uniform(0.2, 0.45, shape) if name == "alpha" else rng.uniform(0.55, 0.9, shape)
        else:
            raise RuntimeError(f"unexpected parameter {name}")
    for name, b in module.buffers().items():
        state[name] = rng.normal(0, 0.2, b.shape) if name.endswith("running_mean") \
            else rng.uniform(0.5, 1.5, b.shape)
    return state


def _spike_sums(rng, shape):
    """A fused stage map: a sum of spike maps, one scaled (as after a residual of SPEC section 5)."""
    s = [(rng.random(shape) < 0.3).astype(np.float64) for _ in range(3)]
    return s[0] + s[1] + 0.5 * s[2]


def cmqka_case(name, description, *, mask, mask_from, residual, training=True, neuron=None,
               attention=None, shape=SHAPE, heads=HEADS):
    """``attention``: the attention neuron (default: ``neuron`` with v_th 0.5); ``shape``
    ``(T, B, D, N)``."""
    neuron = neuron or neuron_params()
    attention = attention or {**neuron, "v_threshold": 0.5}
    for attempt in range(500):
        seed = case_seed(SUITE, name, attempt)
        rng = rng_for(seed)
        module = CMQKA(shape[2], heads, mask=mask, mask_from=mask_from, residual=residual,
                       neuron=lif_kwargs(neuron), attention_neuron=lif_kwargs(attention),
                       rng=rng_for(seed + 1), dtype=np.float64)
        state = _draw_state(rng, module)
        module.load_state_dict(state)
        module.train(training)
        x_a, x_v = _spike_sums(rng, shape), _spike_sums(rng, shape)
        y_a, y_v = module.forward(x_a, x_v)
        reached, seen = lif_margin(module)
        if reached >= MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no seed kept the margin")
    dy_a, dy_v = rng.normal(0, 1, shape), rng.normal(0, 1, shape)
    module.zero_grad()
    dx_a, dx_v = module.backward(dy_a, dy_v)
    inputs = {"x_audio": x_a, "x_visual": x_v, "dy_audio": dy_a, "dy_visual": dy_v, **state}
    expected = {"y_audio": y_a, "y_visual": y_v, "dx_audio": dx_a, "dx_visual": dx_v}
    outputs = {"y_audio": value_out(), "y_visual": value_out(), "dx_audio": grad_out(),
               "dx_visual": grad_out()}
    layout = {k: TOK for k in expected}
    layout.update(x_audio=TOK, x_visual=TOK, dy_audio=TOK, dy_visual=TOK)
    for pname, p in module.parameters().items():
        key = f"grad.{pname}"
        expected[key] = p.grad.copy()
        # a bias feeding BatchNorm in train mode: true gradient 0, rounding noise only
        zero_grad = training and pname.endswith("proj_conv.bias")
        outputs[key] = grad_out(atol_only=zero_grad,
                                note="bias feeding BatchNorm in train mode: the true gradient is 0"
                                if zero_grad else None)
    for bname, b in module.buffers().items():
        expected[f"state.{bname}"] = np.array(b, copy=True)
        outputs[f"state.{bname}"] = value_out()
    params = {"dim": shape[2], "heads": heads, "mask": mask, "mask_from": mask_from,
              "residual": residual, "residual_fixed_value": 0.5 if residual == "fixed" else None,
              "training": training, "neuron": neuron, "attention_neuron": attention,
              "bn_momentum": 0.1, "bn_eps": 1e-5,
              "parameters": sorted(module.parameters()), "buffers": sorted(module.buffers())}
    return Case(suite=SUITE, name=name, op="cmqka", spec="SPEC section 5", description=description,
                params=params, layout=layout, inputs=inputs, expected=expected, outputs=outputs,
                seed=seed, spike_margin={"required": MARGIN, "reached": reached,
                                         "neurons": f"{seen} neuron-steps of the Q, K and output "
                                                    "LIFs of both directions",
                                         "exempt": "the attention LIFs (integer sums)",
                                         "seed_attempts": attempt + 1})


def cases() -> list[Case]:
    out = []
    for mask, mask_from, residual in itertools.product(("token", "channel"),
                                                       ("query_modality", "key_modality"),
                                                       ("scalar", "channel", "fixed")):
        name = f"{mask}-{mask_from.split('_')[0]}-{residual}"
        out.append(cmqka_case(name, f"CMQKA, mask={mask}, mask_from={mask_from}, "
                                    f"residual={residual}, train mode.",
                              mask=mask, mask_from=mask_from, residual=residual))
    out.append(cmqka_case("token-query-scalar-eval", "Eval mode: BatchNorm uses the running "
                          "statistics (given at random); they are returned unchanged.",
                          mask="token", mask_from="query_modality", residual="scalar", training=False))
    out.append(cmqka_case("token-query-scalar-neuron-options", "Neurons with atan surrogate, soft "
                          "reset, not detached (attention neuron likewise, v_th 0.5).",
                          mask="token", mask_from="query_modality", residual="scalar",
                          neuron=neuron_params(surrogate="atan", v_reset=None, detach_reset=False)))
    return out + batch_and_heads_cases() + attention_neuron_cases()


def batch_and_heads_cases() -> list[Case]:
    """B >= 2 with 1 and 3 heads, eval mode and neuron options beyond token-query-scalar
    (issue 15): a port that mixes the batch axis into a sum or a BatchNorm statistic, or whose
    head split assumes 2 heads, fails these (docs/conformance.md lists the mutations)."""
    wide, odd = (2, 3, 8, 16), (3, 2, 6, 9)            # (T, B, D, N)
    return [
        cmqka_case("batch3-heads1-token-key-channel", "B = 3, one head of 8 channels, mask_from="
                   "key_modality, per-channel residual, train mode.", mask="token",
                   mask_from="key_modality", residual="channel", shape=wide, heads=1),
        cmqka_case("batch2-heads3-token-query-scalar", "B = 2, three heads of 2 channels, T = 3, "
                   "9 tokens, train mode.", mask="token", mask_from="query_modality",
                   residual="scalar", shape=odd, heads=3),
        cmqka_case("batch2-heads3-token-key-fixed-eval", "B = 2, three heads, eval mode (the "
                   "given running statistics, returned unchanged), fixed residual 0.5.",
                   mask="token", mask_from="key_modality", residual="fixed", training=False,
                   shape=odd, heads=3),
        cmqka_case("batch3-channel-query-channel-neuron-options", "B = 3, channel mask; neurons "
                   "with fast_sigmoid surrogate, decay_input=False, tau 1.5, hard reset to -0.25 "
                   "not detached (attention neuron likewise, v_th 0.5).", mask="channel",
                   mask_from="query_modality", residual="channel", shape=wide, heads=2,
                   neuron=neuron_params(surrogate="fast_sigmoid", decay_input=False, tau=1.5,
                                        v_reset=-0.25, detach_reset=False)),
        cmqka_case("batch2-heads3-channel-key-scalar-neuron-options-eval", "B = 2, channel mask "
                   "from the key modality, eval mode; neurons with atan surrogate (alpha 3), "
                   "soft reset, tau 3 (attention neuron likewise, v_th 0.5).", mask="channel",
                   mask_from="key_modality", residual="scalar", training=False, shape=odd,
                   heads=3, neuron=neuron_params(surrogate="atan", alpha=3.0, v_reset=None, tau=3.0)),
    ]


def attention_neuron_cases() -> list[Case]:
    """The attention LIF with a hard reset to a nonzero v_reset and a custom-alpha sigmoid,
    unlike the projection neurons (issue 15): a port whose attention neuron ignores v_reset or
    alpha, or copies the projection neuron's options, fails these."""
    return [
        cmqka_case("attention-vreset-token-query-scalar", "Attention neuron: sigmoid with alpha "
                   "3, hard reset to v_reset = -0.5, not detached (v_th 0.5); projection neurons "
                   "default. B = 2, T = 3, 9 tokens.", mask="token", mask_from="query_modality",
                   residual="scalar", shape=(3, 2, 8, 9), heads=2,
                   attention=neuron_params(v_threshold=0.5, v_reset=-0.5, alpha=3.0,
                                           detach_reset=False)),
        cmqka_case("attention-vreset-channel-key-channel", "Attention neuron: sigmoid with alpha "
                   "6, hard reset to v_reset = 0.25 (v_th 0.5); projection neurons atan, soft "
                   "reset. B = 2, T = 3, channel mask from the key modality.", mask="channel",
                   mask_from="key_modality", residual="channel", shape=(3, 2, 8, 16), heads=2,
                   neuron=neuron_params(surrogate="atan", v_reset=None),
                   attention=neuron_params(v_threshold=0.5, v_reset=0.25, alpha=6.0)),
    ]

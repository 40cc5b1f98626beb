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


def cmqka_case(name, description, *, mask, mask_from, residual, training=True, neuron=None):
    neuron = neuron or neuron_params()
    attention = {**neuron, "v_threshold": 0.5}
    for attempt in range(500):
        seed = case_seed(SUITE, name, attempt)
        rng = rng_for(seed)
        module = CMQKA(SHAPE[2], HEADS, mask=mask, mask_from=mask_from, residual=residual,
                       neuron=lif_kwargs(neuron), attention_neuron=lif_kwargs(attention),
                       rng=rng_for(seed + 1), dtype=np.float64)
        state = _draw_state(rng, module)
        module.load_state_dict(state)
        module.train(training)
        x_a, x_v = _spike_sums(rng, SHAPE), _spike_sums(rng, SHAPE)
        y_a, y_v = module.forward(x_a, x_v)
        reached, seen = lif_margin(module)
        if reached >= MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no seed kept the margin")
    dy_a, dy_v = rng.normal(0, 1, SHAPE), rng.normal(0, 1, SHAPE)
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
    params = {"dim": SHAPE[2], "heads": HEADS, "mask": mask, "mask_from": mask_from,
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
    return out

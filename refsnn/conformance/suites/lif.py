"""Suite ``lif``: the LIF neuron of SPEC section 2 with every option combination, the smooth
mode of section 12, and the section 2 worked examples as cases of their own."""
from __future__ import annotations

import itertools

import numpy as np

from ...functional.lif import lif_backward, lif_forward
from ..case import Case, case_seed, grad_out, lif_kwargs, neuron_params, rng_for, spikes_out, value_out

SUITE = "lif"
MARGIN = 1e-3           # SPEC section 10: |H - v_th| >= 1e-3 for every real-input neuron
SHAPE = (5, 2, 4, 6)    # [T, B, C, N]
LAYOUT = "[T, B, C, N]"
CUSTOM = dict(tau_decay=1.5, tau_nodecay=3.0, v_threshold=0.75, v_reset=-0.25,
              alpha={"sigmoid": 3.0, "atan": 1.5, "fast_sigmoid": 10.0})


def draw_with_margin(rng, shape, params, loc, scale, margin=MARGIN, max_rounds=10_000):
    """Draw x ~ N(loc, scale) and redraw, element by element, the first time step at which a
    neuron comes within ``margin`` of its threshold, until none does. Returns (x, cache, spikes)."""
    x = rng.normal(loc, scale, shape)
    kw = lif_kwargs(params)
    T = shape[0]
    for _ in range(max_rounds):
        spikes, cache = lif_forward(x, **kw)
        h = cache.h.reshape(shape)
        bad = np.abs(h - params["v_threshold"]) < margin
        if not bad.any():
            return x, cache, spikes
        flat_bad = bad.reshape(T, -1)
        first_t = np.argmax(flat_bad, axis=0)
        cols = np.nonzero(flat_bad.any(axis=0))[0]
        xf = x.reshape(T, -1)
        xf[first_t[cols], cols] = rng.normal(loc, scale, cols.size)
    raise RuntimeError("draw_with_margin: no draw kept the margin")


def _lif_case(name, params, description, *, shape=SHAPE, loc=None, scale=1.0, x=None, dout=None):
    smooth = params["spike_fn"] == "smooth"
    # a case given its arrays (the worked examples) draws nothing and has no seed
    seed = None if x is not None and dout is not None else case_seed(SUITE, name)
    rng = rng_for(0 if seed is None else seed)
    if loc is None:
        loc = 0.9 * params["v_threshold"] * (1.0 if params["decay_input"] else 0.6)
    if x is None:
        if smooth:
            x = rng.normal(loc, scale, shape)
            spikes, cache = lif_forward(x, **lif_kwargs(params))
        else:
            x, cache, spikes = draw_with_margin(rng, shape, params, loc, scale)
    else:
        spikes, cache = lif_forward(x, **lif_kwargs(params))
    if dout is None:
        dout = rng.normal(0.0, 1.0, shape)
    dx = lif_backward(dout, cache)
    h = cache.h.reshape(shape)
    gap = h - params["v_threshold"]
    reached = float(np.abs(gap).min())
    if smooth:
        outputs = {"spikes": value_out(), "dx": grad_out()}
        margin = {"required": None, "reached": reached,
                  "note": "smooth mode: the output is a continuous function of H, no spike can flip"}
    else:
        if reached < MARGIN:
            raise RuntimeError(f"{name}: margin {reached} < {MARGIN}")
        outputs = {"spikes": spikes_out(margin="margin.spikes"), "dx": grad_out()}
        margin = {"required": MARGIN, "reached": reached,
                  "neurons": "every neuron of the case (all are fed real-valued input)"}
    layout = LAYOUT if len(shape) == 4 else "[T, M]"
    return Case(
        suite=SUITE, name=name, op="lif", spec="SPEC section 2 (smooth mode: section 12)",
        description=description, params=params,
        layout={"x": layout, "dout": layout, "spikes": layout, "dx": layout},
        inputs={"x": x, "dout": dout},
        expected={"spikes": spikes, "dx": dx, "margin.spikes": gap},
        outputs=outputs, seed=seed, spike_margin=margin)


def _tie_cases() -> list[Case]:
    """Inputs on a dyadic grid, so H hits v_th exactly in any binary float format (the
    situation of the attention LIF, whose inputs are integer sums): the neuron must fire at
    equality. These neurons are exempt from the margin, as SPEC section 10 exempts integer sums."""
    out = []
    for name, v_th, values, description in (
            ("exact-ties", 1.0, np.arange(0, 6) * 0.5,
             "Inputs in {0, 0.5, ..., 2.5} with tau 2 and v_th 1: H lands exactly on v_th often."),
            ("exact-ties-attention", 0.5, np.arange(0, 4, dtype=np.float64),
             "Integer inputs (sums of spikes) with v_th 0.5, the attention neuron of SPEC section 4.")):
        seed = case_seed(SUITE, name)
        rng = rng_for(seed)
        x = rng.choice(values, size=(6, 2, 3, 8))
        p = neuron_params(v_threshold=v_th)
        spikes, cache = lif_forward(x, **lif_kwargs(p))
        dout = rng.normal(0.0, 1.0, x.shape)
        gap = cache.h.reshape(x.shape) - v_th
        ties = int((gap == 0).sum())
        if ties == 0:
            raise RuntimeError(f"{name}: the draw produced no tie")
        layout = LAYOUT
        out.append(Case(
            suite=SUITE, name=name, op="lif", spec="SPEC section 2 (fire at H - v_th >= 0)",
            description=description, params=p,
            layout={"x": layout, "dout": layout, "spikes": layout, "dx": layout},
            inputs={"x": x, "dout": dout},
            expected={"spikes": spikes, "dx": lif_backward(dout, cache), "margin.spikes": gap},
            outputs={"spikes": spikes_out(margin="margin.spikes"), "dx": grad_out()}, seed=seed,
            spike_margin={"required": None, "reached": 0.0, "exact_ties": ties,
                          "note": "dyadic inputs: every H is exact in float32 and float64, "
                                  "ties with the threshold are exact and must fire"}))
    return out


def _option_name(v_reset, detach, decay, surrogate):
    return "-".join(("hard" if v_reset is not None else "soft", "detach" if detach else "nodetach",
                     "decay" if decay else "nodecay", surrogate))


def cases() -> list[Case]:
    out = []
    grid = list(itertools.product((0.0, None), (True, False), (True, False),
                                  ("sigmoid", "atan", "fast_sigmoid")))
    for v_reset, detach, decay, surrogate in grid:
        p = neuron_params(v_reset=v_reset, detach_reset=detach, decay_input=decay, surrogate=surrogate)
        out.append(_lif_case(_option_name(v_reset, detach, decay, surrogate), p,
                             "Default numbers (tau 2, v_th 1, v_reset 0, default alpha) with this "
                             "combination of reset, detach_reset, decay_input and surrogate."))
    for v_reset, detach, decay, surrogate in grid:
        p = neuron_params(tau=CUSTOM["tau_decay"] if decay else CUSTOM["tau_nodecay"],
                          v_threshold=CUSTOM["v_threshold"],
                          v_reset=None if v_reset is None else CUSTOM["v_reset"],
                          detach_reset=detach, decay_input=decay, surrogate=surrogate,
                          alpha=CUSTOM["alpha"][surrogate])
        out.append(_lif_case("custom-" + _option_name(v_reset, detach, decay, surrogate), p,
                             "Non-default tau, v_threshold, v_reset (hard reset to a nonzero "
                             "value) and alpha with this option combination."))
    for v_reset, detach, surrogate in itertools.product((0.0, None), (False, True),
                                                        ("sigmoid", "atan", "fast_sigmoid")):
        p = neuron_params(v_reset=v_reset, detach_reset=detach, surrogate=surrogate, spike_fn="smooth")
        name = "smooth-" + _option_name(v_reset, detach, True, surrogate)
        out.append(_lif_case(name, p, "Smooth mode (SPEC section 12): the Heaviside replaced by "
                                      "the surrogate's primitive; the backward is unchanged."))
    out.append(_lif_case("single-step", neuron_params(), "T = 1: charge from V = v_reset, fire, "
                         "no recurrence in the backward.", shape=(1, 3, 4, 5)))
    out.append(_lif_case("long-horizon", neuron_params(v_reset=None, detach_reset=False),
                         "T = 16 with soft reset, not detached: a long backward recursion.",
                         shape=(16, 2, 3, 4)))
    out.extend(_tie_cases())
    # SPEC section 2 worked example, exactly as printed (shape [T=6, 1])
    x = np.array([0.9, 0.9, 1.6, 0.2, 2.5, -0.4]).reshape(6, 1)
    ds = np.array([1.0, 0.0, -0.5, 1.0, 0.25, 1.0]).reshape(6, 1)
    out.append(_lif_case("worked-example-defaults", neuron_params(),
                         "SPEC section 2 worked example, defaults: one neuron, T = 6.",
                         shape=(6, 1), x=x, dout=ds))
    out.append(_lif_case("worked-example-soft-reset-not-detached",
                         neuron_params(v_reset=None, detach_reset=False),
                         "SPEC section 2 worked example, soft reset with detach_reset=False.",
                         shape=(6, 1), x=x, dout=ds))
    return out

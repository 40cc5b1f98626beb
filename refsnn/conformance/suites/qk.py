"""Suite ``qk``: the attention cores of SPEC section 4 (QKTA, QKCA, SSA), forward and backward,
with the section 4 worked example as cases of its own.

Inputs q, k (, v) are binary spike maps ``[T, B, D, N]`` stored as float64 0/1. The attention
LIF is fed integer sums (SSA: multiples of the scale 0.125), whose ties with the threshold 0.5
are exact: those neurons are exempt from the margin, and ports must fire at equality.
"""
from __future__ import annotations

import numpy as np

from ...functional.attention import (qk_channel_backward, qk_channel_forward, qk_token_backward,
                                     qk_token_forward, ssa_backward, ssa_forward)
from ..case import Case, case_seed, grad_out, lif_kwargs, neuron_params, rng_for, spikes_out

SUITE = "qk"
TOK = "[T, B, D, N]"


def attention_neuron(**overrides) -> dict:
    """The attention LIF of SPEC section 4 (v_th 0.5), every option spelled out."""
    return neuron_params(**{"v_threshold": 0.5, **overrides})


def _margin_note(gap: np.ndarray) -> dict:
    return {"required": None, "reached": float(np.abs(gap).min()), "exact_ties": int((gap == 0).sum()),
            "note": "attention LIF fed integer sums (SSA: multiples of the scale): exempt from "
                    "the margin, ties with v_th are exact and must fire"}


def _bits(rows: str) -> np.ndarray:
    return np.array([[int(c) for c in r] for r in rows.split()], dtype=np.float64)


def _draw(rng, shape, density):
    return (rng.random(shape) < density).astype(np.float64)


def qk_case(name, kind, description, *, shape=None, heads=1, density=0.5, neuron=None, q=None, k=None):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    neuron = neuron or attention_neuron()
    if q is None:
        q = _draw(rng, shape, density)      # density of Q sets how often the mask opens
        k = _draw(rng, shape, 0.5)
    T, B, D, N = q.shape
    dz = rng.normal(0, 1, q.shape)
    kw = lif_kwargs(neuron)
    if kind == "token":
        z, cache = qk_token_forward(q, k, heads, neuron=kw)
        dq, dk = qk_token_backward(dz, cache)
        h = cache.lif.h.reshape(T, B, heads, N)
        gap_z = np.repeat(h - neuron["v_threshold"], D // heads, axis=2)
        op, a_layout = "qk_token", "[T, B, heads, N]"
    else:
        z, cache = qk_channel_forward(q, k, neuron=kw)
        dq, dk = qk_channel_backward(dz, cache)
        h = cache.lif.h.reshape(T, B, D)
        gap_z = np.repeat((h - neuron["v_threshold"])[..., None], N, axis=3)
        op, a_layout = "qk_channel", "[T, B, D]"
    params = {"neuron": neuron}
    if kind == "token":
        params["heads"] = heads
        params["head_channels"] = "head i holds channels i*d .. i*d+d-1, d = D / heads"
    return Case(
        suite=SUITE, name=name, op=op, spec="SPEC section 4", description=description,
        params=params,
        layout={"q": TOK, "k": TOK, "dout": TOK, "z": TOK, "dq": TOK, "dk": TOK,
                "reference.a": a_layout, "margin.z": TOK},
        inputs={"q": q, "k": k, "dout": dz},
        expected={"z": z, "dq": dq, "dk": dk, "reference.a": cache.a.astype(np.float64),
                  "margin.z": gap_z},
        outputs={"z": spikes_out(margin="margin.z"), "dq": grad_out(), "dk": grad_out()},
        seed=seed, spike_margin=_margin_note(gap_z))


def ssa_case(name, description, *, shape, heads, density=0.5, scale=0.125, neuron=None):
    seed = case_seed(SUITE, name)
    rng = rng_for(seed)
    neuron = neuron or attention_neuron()
    q, k, v = (_draw(rng, shape, density) for _ in range(3))
    dout = rng.normal(0, 1, shape)
    out, cache = ssa_forward(q, k, v, heads, scale, neuron=lif_kwargs(neuron))
    dq, dk, dv = ssa_backward(dout, cache)
    gap = cache.lif.h.reshape(shape) - neuron["v_threshold"]
    params = {"heads": heads, "scale": scale, "neuron": neuron,
              "order": "per head: attn = Q_h^T K_h ([N, N], attn[n, m] = sum_c Q[c, n] K[c, m]); "
                       "x[c, n] = sum_m attn[n, m] V[c, m]; out = LIF(x * scale)"}
    return Case(
        suite=SUITE, name=name, op="ssa", spec="SPEC section 4 (quadratic reference)",
        description=description, params=params,
        layout={k_: TOK for k_ in ("q", "k", "v", "dout", "out", "dq", "dk", "dv", "margin.out")},
        inputs={"q": q, "k": k, "v": v, "dout": dout},
        expected={"out": out, "dq": dq, "dk": dk, "dv": dv, "margin.out": gap},
        outputs={"out": spikes_out(margin="margin.out"), "dq": grad_out(), "dk": grad_out(),
                 "dv": grad_out()},
        seed=seed, spike_margin=_margin_note(gap))


def cases() -> list[Case]:
    q_w = np.stack([_bits("101 100 011 001"), _bits("011 001 110 000")])[:, None]
    k_w = np.stack([_bits("110 011 101 111"), _bits("101 110 011 100")])[:, None]
    out = [
        qk_case("qkta-worked-example", "token", "SPEC section 4 worked example, QKTA "
                "(T=2, B=1, D=4, heads=2, N=3).", heads=2, q=q_w, k=k_w),
        qk_case("qkca-worked-example", "channel", "SPEC section 4 worked example, QKCA.", q=q_w, k=k_w),
        qk_case("qkta-basic", "token", "Two heads of 4 channels, 16 tokens.",
                shape=(3, 2, 8, 16), heads=2, density=0.2),
        qk_case("qkta-one-head-64", "token", "One head of exactly 64 channels (one packed word).",
                shape=(2, 2, 64, 6), heads=1, density=0.012),
        qk_case("qkta-word-boundary", "token", "Heads of 65 channels: a head spans two words.",
                shape=(2, 1, 130, 5), heads=2, density=0.012),
        qk_case("qkta-many-tokens", "token", "Three heads of 2 channels, 70 tokens.",
                shape=(2, 2, 6, 70), heads=3),
        qk_case("qkta-dense", "token", "Density 0.7: most head sums reach the threshold.",
                shape=(4, 2, 16, 9), heads=4, density=0.7),
        qk_case("qkta-silent", "token", "No Q spike: nothing passes the mask.",
                shape=(2, 2, 8, 5), heads=2, density=0.0),
        qk_case("qkta-neuron-options", "token", "Attention neuron with atan surrogate, soft reset, "
                "not detached, decay_input=False (a config may change the neuron).",
                shape=(3, 2, 8, 7), heads=2, density=0.2,
                neuron=attention_neuron(surrogate="atan", v_reset=None, detach_reset=False,
                                        decay_input=False, tau=1.5)),
        qk_case("qkca-basic", "channel", "8 channels, 16 tokens.", shape=(3, 2, 8, 16), density=0.05),
        qk_case("qkca-64-tokens", "channel", "Exactly 64 tokens (one packed word).",
                shape=(2, 2, 5, 64), density=0.05),
        qk_case("qkca-word-boundary", "channel", "70 tokens: two words per channel.",
                shape=(2, 2, 6, 70), density=0.02),
        qk_case("qkca-one-token", "channel", "One token.", shape=(4, 3, 6, 1)),
        qk_case("qkca-neuron-options", "channel", "Attention neuron with fast_sigmoid surrogate "
                "and hard reset not detached.", shape=(3, 2, 6, 5), density=0.2,
                neuron=attention_neuron(surrogate="fast_sigmoid", detach_reset=False)),
        ssa_case("ssa-basic", "SSA with two heads, 12 tokens.", shape=(2, 2, 8, 12), heads=2),
        ssa_case("ssa-one-head", "SSA with one head, sparse spikes.", shape=(3, 1, 6, 9), heads=1,
                 density=0.45),
    ]
    return out + reset_and_scale_cases()


def reset_and_scale_cases() -> list[Case]:
    """Attention neurons with a hard reset to a nonzero v_reset and a custom-alpha sigmoid, and
    SSA with non-default neurons and scale (issue 15). v_reset and the scales are dyadic, so
    the integer (or scaled) sums still meet the threshold exactly: ties stay exact in float32.
    A port whose attention neuron ignores v_reset or alpha, or whose SSA hard-codes the scale
    0.125 or the default neuron, fails these."""
    return [
        qk_case("qkta-hard-reset-vreset", "token", "Attention neuron: sigmoid with alpha 3, hard "
                "reset to v_reset = -0.5 (v_th 0.5); T = 4, B = 2, two heads.",
                shape=(4, 2, 8, 11), heads=2, density=0.2,
                neuron=attention_neuron(v_reset=-0.5, alpha=3.0)),
        qk_case("qkta-hard-reset-vreset-not-detached", "token", "Attention neuron: sigmoid with "
                "alpha 6, hard reset to v_reset = 0.25 not detached, tau 4; T = 4, B = 3, three "
                "heads.", shape=(4, 3, 6, 7), heads=3, density=0.25,
                neuron=attention_neuron(v_reset=0.25, alpha=6.0, detach_reset=False, tau=4.0)),
        qk_case("qkca-hard-reset-vreset", "channel", "Attention neuron: sigmoid with alpha 2.5, "
                "hard reset to v_reset = -0.5 not detached; T = 4, B = 2.", shape=(4, 2, 6, 9),
                density=0.06, neuron=attention_neuron(v_reset=-0.5, alpha=2.5, detach_reset=False)),
        ssa_case("ssa-scale-hard-reset-vreset", "SSA with scale 0.25, three heads, attention "
                 "neuron: sigmoid with alpha 3, hard reset to v_reset = -0.5.",
                 shape=(3, 2, 6, 8), heads=3, density=0.3, scale=0.25,
                 neuron=attention_neuron(v_reset=-0.5, alpha=3.0)),
        ssa_case("ssa-scale-neuron-options", "SSA with scale 0.0625, two heads, attention neuron: "
                 "atan (alpha 1.5), soft reset not detached, decay_input=False, tau 1.5.",
                 shape=(3, 2, 8, 10), heads=2, density=0.4, scale=0.0625,
                 neuron=attention_neuron(surrogate="atan", alpha=1.5, v_reset=None,
                                         detach_reset=False, decay_input=False, tau=1.5)),
    ]

"""Suite ``energy``: the operation counts of SPEC section 7 for the ``tiny`` SNNergy in eval
mode (``refsnn.energy.report``), float64 only: per layer (named by module path, docs/naming.md)
its MACs, ACs and ANN-reference MACs per sample and its input firing rate, and the totals.

Per layer, over the batch, divided by the batch size:
  * conv / Conv1x1 / linear with analog input (images, spectrograms, pooled features): MACs =
    its multiply-accumulates (a stem whose input repeats over T ran once, one whose frames
    differ ran T times); ACs 0; input firing rate -1 (not a spike map).
  * conv / Conv1x1 with spike-event input: ACs = events x MACs / input elements; events of a
    map are its spikes, of a sum of spike maps the spikes of every constituent, of a fusion
    output x + alpha*Y the events of x plus the spikes of Y.
  * a Q-K core (``<block>.attn.qk``, ``fusion{s}.<direction>.qk``): ACs = Q spikes + spikes
    kept by the mask (= spikes of Z); ANN MACs = 2 x elements of Q / T.
  * an SSA core (``<block>.attn.ssa``): ACs = N x (Q spikes + V spikes); ANN MACs =
    2 x B x D x N^2 (= its MACs / T).
  * ANN MACs of a conv / linear: its MACs / the time steps it ran.
Energy: E = 4.6 pJ x MACs + 0.9 pJ x ACs; the ANN reference 4.6 pJ x ANN MACs.
"""
from __future__ import annotations

import numpy as np

from ...energy import E_AC_PJ, E_MAC_PJ, report
from ...models import config as make_config
from ..case import Case, value_out
from .snnergy import draw_model

SUITE = "energy"
PER_LAYER = ("macs", "acs", "ann_macs", "input_firing_rate")
TOTALS = ("macs", "acs", "ann_macs", "snn_mJ", "ann_mJ")


def energy_case(name, description, *, overrides=None, frames=2):
    cfg = make_config("tiny", **(overrides or {}))
    d = draw_model(SUITE, name, cfg, training=False, frames=frames)
    model = d.model
    rep = report(model, [(d.audio, d.visual)])
    names = list(rep["layers"])
    expected = {}
    for key in PER_LAYER:
        values = [rep["layers"][n][key] for n in names]
        expected[f"layers.{key}"] = np.array([-1.0 if v is None else v for v in values], dtype=np.float64)
    for key in TOTALS:
        expected[f"totals.{key}"] = np.asarray(rep["totals"][key], dtype=np.float64)
    layout = {f"layers.{k}": "[L] in the order of params.layers" for k in PER_LAYER}
    layout.update({f"totals.{k}": "[] per sample" for k in TOTALS}, **d.layout)
    params = {"config": cfg.to_dict(), "training": False, "layers": names,
              "kinds": [rep["layers"][n]["kind"] for n in names],
              "E_MAC_pJ": E_MAC_PJ, "E_AC_pJ": E_AC_PJ, "per": "sample (batch totals / B)",
              "parameters": list(model.parameters()), "buffers": list(model.buffers()),
              "input_firing_rate": "input events / input elements; -1 for an analog input"}
    return Case(suite=SUITE, name=name, op="energy", spec="SPEC section 7", description=description,
                params=params, layout=layout, inputs=d.inputs, expected=expected,
                outputs={k: value_out(float32=False) for k in expected}, seed=d.seed, float32=False,
                spike_margin=d.spike_margin)


def cases() -> list[Case]:
    return [
        energy_case("tiny-frames", "The tiny preset, visual frames differing per step: the visual "
                    "stem runs T times, the audio stem once.", frames=2),
        energy_case("tiny-one-frame-ssa", "One visual frame (both stems run once); stage 3 SSA "
                    "(N ACs per Q and per V spike); CMQKA channel mask.",
                    overrides=dict(stage3_attention="ssa", cmqka_mask="channel"), frames=None),
    ]

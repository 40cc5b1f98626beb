"""Reference figures that a restructuring of refsnn.nn / refsnn.energy must leave unchanged
(issue 12): the energy report of the tiny and cpu presets in every fusion mode and modality,
and the parameter names, shapes, order and initial values of every preset and fusion mode.

    python tests/nn_reference.py tests/data/nn_reference.json     # (re)make the reference

The committed tests/data/nn_reference.json was made with the code before issue 12's
restructuring (commit b01be2c); tests/test_energy.py and tests/test_model.py compare against
it. Regenerate it only when a change of the counted figures or of the names is intended.
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from refsnn.energy import report
from refsnn.models import config
from refsnn.models.snnergy import SNNergy

FUSIONS = ("cmqka", "concat", "ssa-cross", "mbt", "factorized")


def energy_cases(preset: str):
    """(case name, config overrides) of every fusion mode and modality, plus SSA in stage 3
    and CMQKA's other mask options."""
    for f in FUSIONS:
        yield f"{preset}-{f}", dict(fusion=f)
    for m in ("audio", "visual"):
        yield f"{preset}-{m}", dict(modality=m)
    yield f"{preset}-ssa3", dict(stage3_attention="ssa")
    yield f"{preset}-cmqka-channel-key", dict(cmqka_mask="channel", cmqka_mask_from="key_modality",
                                              cmqka_residual="channel")


def energy_report(preset: str, overrides: dict, small: bool = False) -> dict:
    """``refsnn.energy.report`` of a seed-0 model whose BatchNorm biases are raised (so that
    every layer fires) on fixed batches: frames that differ per step, then a repeated frame.
    ``small``: one sample only (the paper preset)."""
    c = config(preset, **overrides)
    model = SNNergy(c, seed=0)
    rng = np.random.default_rng(3)
    for name, m in model.named_modules():
        if name.endswith("_bn"):
            m.bias.value[...] = rng.uniform(0.3, 1.5, m.bias.value.shape)
    rng = np.random.default_rng(7)
    S = c.image_size
    B = 1 if small else 2
    audio = rng.normal(size=(B, 1, S, S)).astype(np.float32)
    frames = rng.random((B, 3, 3, S, S)).astype(np.float32)
    batches = [(audio, frames)]
    if not small:
        batches.append((audio[:1] * 2, frames[:1, :1]))      # repeated frame: the stem runs once
    if c.modality == "audio":
        batches = [(a, None) for a, _ in batches]
    elif c.modality == "visual":
        batches = [(None, v) for _, v in batches]
    return report(model, batches)


def compact(rep: dict) -> dict:
    """Per-layer [kind, MACs, ACs, ANN MACs], totals and machine ops of a report."""
    return {"layers": {k: [v["kind"], v["macs"], v["acs"], v["ann_macs"]] for k, v in rep["layers"].items()},
            "totals": rep["totals"], "machine_ops": rep["machine_ops"], "samples": rep["samples"]}


def state_cases():
    for preset in ("tiny", "cpu", "paper"):
        for f in FUSIONS:
            yield f"{preset}-{f}", preset, dict(fusion=f)
        yield f"{preset}-audio", preset, dict(modality="audio")
        yield f"{preset}-visual", preset, dict(modality="visual")
        yield f"{preset}-ssa3", preset, dict(stage3_attention="ssa")
        yield f"{preset}-channel", preset, dict(cmqka_residual="channel")
        yield f"{preset}-fixed", preset, dict(cmqka_residual="fixed")


def state_signature(preset: str, overrides: dict) -> dict:
    """Names, shapes and order of ``parameters()`` and ``state_dict()``, and a hash of the
    initial values (seed 0)."""
    model = SNNergy(config(preset, **overrides), seed=0)
    params = [f"{k} {list(p.shape)}" for k, p in model.parameters().items()]
    state = model.state_dict()
    keys = [f"{k} {list(v.shape)} {v.dtype}" for k, v in state.items()]
    digest = hashlib.sha256()
    for v in state.values():
        digest.update(np.ascontiguousarray(v).tobytes())
    return {"parameters": hashlib.sha256("\n".join(params).encode()).hexdigest(),
            "state_dict": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
            "values": digest.hexdigest(), "count": len(keys)}


def make() -> dict:
    energy = {name: compact(energy_report(p, ov)) for p in ("tiny", "cpu")
              for name, ov in energy_cases(p)}
    states = {name: state_signature(p, ov) for name, p, ov in state_cases()}
    return {"energy": energy, "state": states}


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(make(), f, indent=0, sort_keys=False)
        f.write("\n")

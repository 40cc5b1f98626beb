"""Suite ``snnergy-tiny``: the whole SNNergy of SPEC section 6 at the ``tiny`` geometry
(image 32, dim 32, T 2), float64 only: logits, the cross-entropy loss (no label smoothing,
mean over the batch), every parameter gradient (named as in refsnn, docs/naming.md) and the
BatchNorm running statistics after the step.

Parameters start from refsnn's seeded PyTorch-default initialisation; BatchNorm weights and
biases, running statistics and the fusion residuals are then redrawn so that no parameter sits
at a symmetric value (alpha != beta) and spikes reach every stage. The seed is searched until
every real-input neuron keeps |H - v_th| >= 1e-6 (SPEC section 10); the margin is recorded.
"""
from __future__ import annotations

import numpy as np

from ...functional import cross_entropy_backward, cross_entropy_forward
from ...models import config as make_config
from ...models.snnergy import SNNergy
from ..case import Case, case_seed, grad_out, rng_for, value_out
from ..margins import lif_margin

SUITE = "snnergy-tiny"
MARGIN = 1e-6
BATCH = 2


def draw_state(model, rng) -> dict:
    """The model's initial state with BN parameters, running statistics and residual weights
    redrawn (see the module docstring)."""
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    for name, value in state.items():
        leaf = name.rsplit(".", 1)[-1]
        if "_bn." in name or name.startswith("bn."):
            if leaf == "weight":
                state[name] = rng.uniform(0.8, 1.6, value.shape)
            elif leaf == "bias":
                state[name] = rng.uniform(0.2, 1.0, value.shape)
            elif leaf == "running_mean":
                state[name] = rng.normal(0.0, 0.2, value.shape)
            elif leaf == "running_var":
                state[name] = rng.uniform(0.5, 1.5, value.shape)
        elif leaf == "alpha":
            state[name] = rng.uniform(0.2, 0.45, value.shape)
        elif leaf == "beta":
            state[name] = rng.uniform(0.55, 0.9, value.shape)
    return state


def calibrate(cfg, state, audio, visual) -> dict:
    """``state`` with the running statistics set to this batch's statistics (one train-mode
    forward with BatchNorm momentum 1), so an eval-mode network is as active as a training one
    (running statistics far from the data would silence the deeper stages)."""
    model = SNNergy(cfg.replace(bn_momentum=1.0), dtype=np.float64)
    model.load_state_dict(state)
    model.train()
    model.forward(audio, visual)
    return {**state, **{k: np.array(v, copy=True) for k, v in model.buffers().items()}}


def _inputs(rng, cfg, frames):
    S = cfg.image_size
    audio = rng.normal(0.0, 1.0, (BATCH, cfg.audio_channels, S, S)) if "audio" in cfg.modalities else None
    if "visual" not in cfg.modalities:
        return audio, None
    shape = (BATCH, cfg.visual_channels, S, S) if frames is None else (BATCH, frames, cfg.visual_channels, S, S)
    return audio, rng.uniform(0.0, 1.0, shape)


def _bn_fed_biases(model) -> set:
    """Biases of convolutions followed by BatchNorm: their true gradient is 0 in train mode."""
    names = set()
    for pname in model.parameters():
        if pname.endswith("_conv.bias"):
            prefix = pname[: -len("_conv.bias")]
            if f"{prefix}_bn.weight" in model.parameters():
                names.add(pname)
    return names


class Drawn:
    """A model whose draw kept the margin, with its state, batch and the search's record."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def draw_model(suite: str, name: str, cfg, *, training: bool, frames, accept=None) -> Drawn:
    """Search seeds until every real-input neuron of a forward keeps |H - v_th| >= MARGIN (and
    ``accept(model)``, if given, holds after the forward). Eval-mode models get the batch's
    statistics as running statistics (``calibrate``)."""
    for attempt in range(200):
        seed = case_seed(suite, name, attempt)
        rng = rng_for(seed)
        model = SNNergy(cfg, seed=seed % (2**31), dtype=np.float64)
        state = draw_state(model, rng)
        audio, visual = _inputs(rng, cfg, frames)
        if not training:
            state = calibrate(cfg, state, audio, visual)
        model.load_state_dict(state)
        model.train(training)
        labels = rng.integers(0, cfg.classes, BATCH).astype(np.int64)
        logits = model.forward(audio, visual)
        reached, seen = lif_margin(model)
        if reached >= MARGIN and (accept is None or accept(model)):
            break
    else:
        raise RuntimeError(f"{suite}/{name}: no seed kept the margin")
    inputs, layout = dict(state), {}
    if audio is not None:
        inputs["audio"] = audio
        layout["audio"] = "[B, 1, H, W] (repeated over the T steps)"
    if visual is not None:
        inputs["visual"] = visual
        layout["visual"] = ("[B, 3, H, W] (one frame, repeated over T)" if visual.ndim == 4 else
                            "[B, F, 3, H, W] (step t uses frame floor((2t+1) F / (2T)))")
    margin = {"required": MARGIN, "reached": reached, "seed_attempts": attempt + 1,
              "neurons": f"{seen} neuron-steps: every LIF fed a BatchNorm output",
              "exempt": "the attention LIFs (integer sums)"}
    return Drawn(model=model, seed=seed, audio=audio, visual=visual, labels=labels, logits=logits,
                 inputs=inputs, layout=layout, spike_margin=margin)


def snnergy_case(name, description, *, overrides=None, training=True, frames=2, suite=SUITE,
                 accept=None, spec="SPEC sections 3-6"):
    """A whole-model case of ``suite`` for the ``tiny`` preset with ``overrides``; ``accept``
    as in ``draw_model``."""
    cfg = make_config("tiny", **(overrides or {}))
    d = draw_model(suite, name, cfg, training=training, frames=frames, accept=accept)
    model, logits, labels = d.model, d.logits, d.labels
    loss, ce_cache = cross_entropy_forward(logits, labels, label_smoothing=0.0)
    model.zero_grad()
    model.backward(cross_entropy_backward(ce_cache, 1.0))
    inputs = {"labels": labels, **d.inputs}
    layout = {"labels": "[B] int64", "logits": "[B, classes]", "loss": "[] (a scalar)", **d.layout}
    expected = {"logits": logits, "loss": np.asarray(loss, dtype=np.float64)}
    outputs = {"logits": value_out(float32=False), "loss": value_out(float32=False)}
    zero = _bn_fed_biases(model) if training else set()
    for pname, p in model.parameters().items():
        expected[f"grad.{pname}"] = p.grad.copy()
        outputs[f"grad.{pname}"] = grad_out(
            float32=False, atol_only=pname in zero,
            note="bias feeding BatchNorm in train mode: the true gradient is 0" if pname in zero else None)
    for bname, b in model.buffers().items():
        expected[f"state.{bname}"] = np.array(b, copy=True)
        outputs[f"state.{bname}"] = value_out(float32=False)
    params = {"config": cfg.to_dict(), "training": training,
              "loss": {"kind": "softmax cross-entropy", "label_smoothing": 0.0, "reduction": "mean",
                       "dloss": 1.0},
              "parameters": list(model.parameters()), "buffers": list(model.buffers()),
              "naming": "docs/naming.md; grad.<name> is the gradient of <name>, state.<name> the "
                        "buffer after the forward"}
    return Case(suite=suite, name=name, op="snnergy", spec=spec, description=description,
                params=params, layout=layout, inputs=inputs, expected=expected, outputs=outputs,
                seed=d.seed, float32=False, spike_margin=d.spike_margin)


def cases() -> list[Case]:
    return [
        snnergy_case("train", "The tiny preset (CMQKA token mask, query modality, scalar residual) "
                     "in train mode; visual frames differ per step (F = T = 2)."),
        snnergy_case("eval", "Eval mode: BatchNorm uses the given running statistics (the "
                     "statistics of this batch); they are returned unchanged.", training=False),
        snnergy_case("ssa-channel-mask-one-frame", "stage3_attention='ssa', CMQKA channel mask with "
                     "mask_from='key_modality' and per-channel residuals; one visual frame "
                     "[B, 3, H, W] repeated over T (the stem may run once).",
                     overrides=dict(stage3_attention="ssa", cmqka_mask="channel",
                                    cmqka_mask_from="key_modality", cmqka_residual="channel"),
                     frames=None),
        snnergy_case("ten-frames-neuron-options", "F = 10 frames on T = 2 steps (frames 2 and 7); "
                     "fixed residual 0.5; neurons with atan surrogate and soft reset, not detached.",
                     overrides=dict(cmqka_residual="fixed", surrogate="atan", v_reset=None,
                                    detach_reset=False), frames=10),
        snnergy_case("concat-fusion", "fusion='concat' (late fusion: the modalities meet only in "
                     "the head).", overrides=dict(fusion="concat")),
        snnergy_case("visual-only", "modality='visual': one stream, head on its features.",
                     overrides=dict(modality="visual")),
    ]

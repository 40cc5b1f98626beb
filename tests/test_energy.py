"""Energy accounting (SPEC section 7) against hand-computed counts."""
import json
import os

import numpy as np
import pytest
from nn_reference import compact, energy_cases, energy_report

from refsnn.energy import format_report, report
from refsnn.models import config
from refsnn.models.snnergy import SNNergy
from refsnn.nn import LIF, Conv1x1, Conv2d, Linear, Module


class HandSet(Module):
    """stem conv (analog) -> LIF -> conv3x3 on spikes; tokens: Conv1x1 on spikes and on a
    residual sum of two spike maps; head on pooled features. Weights are set by hand so the
    spikes are known."""

    energy_role = "container"

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.stem = Conv2d(1, 2, 3, 1, 1, bias=False, rng=rng, dtype=np.float64)
        self.stem.weight.value[...] = 0
        self.stem.weight.value[:, 0, 1, 1] = 1.0            # each channel copies the input
        self.lif = LIF()
        self.conv = Conv2d(2, 3, 3, 1, 1, bias=False, rng=rng, dtype=np.float64)
        self.tok = Conv1x1(2, 4, rng=rng, dtype=np.float64)
        self.res = Conv1x1(2, 1, rng=rng, dtype=np.float64)
        self.head = Linear(2, 5, rng=rng, dtype=np.float64)

    def forward(self, audio, visual):
        x = audio[None]
        if self.counter is not None:
            self.counter.mark_analog(x)                     # data: integer values, yet analog
        y = self.stem.forward(x)                            # [1, B, 2, 4, 4], once per sample
        s = self.lif.forward(np.broadcast_to(y, (2,) + y.shape[1:]))   # T = 2
        self.conv.forward(s)
        tokens = s.reshape(2, s.shape[1], 2, 16)
        self.tok.forward(tokens)
        self.res.forward(tokens + tokens)                   # residual sum: every spike twice
        return self.head.forward(tokens.mean(axis=(0, 3)))


def test_hand_computed_macs_and_acs():
    net = HandSet()
    audio = np.zeros((3, 1, 4, 4))
    # 2.0 charges H = 1.0 = v_th at t = 0 (fires at equality), resets to 0, fires again at t = 1
    audio[0, 0, 0, 0] = audio[0, 0, 2, 3] = audio[1, 0, 3, 3] = 2.0
    audio[2, 0, 1, 1] = 1.0                                 # H = 0.5, 0.75: never fires
    rep = report(net, [(audio, None)])
    spikes = 3 * 2 * 2                                       # positions x channels x steps
    layers = rep["layers"]
    assert rep["samples"] == 3
    assert layers["stem"]["kind"] == "mac"
    assert layers["stem"]["macs"] == 2 * 1 * 9 * 16          # per sample, once (input repeats)
    assert layers["conv"]["acs"] == pytest.approx(spikes * 9 * 3 / 3)      # fan-out 9 x C_out
    assert layers["conv"]["input_firing_rate"] == pytest.approx(spikes / (2 * 3 * 2 * 16))
    assert layers["tok"]["acs"] == pytest.approx(spikes * 4 / 3)           # fan-out C_out
    assert layers["res"]["acs"] == pytest.approx(2 * spikes * 1 / 3)       # both constituents
    assert layers["head"]["kind"] == "mac" and layers["head"]["macs"] == 2 * 5
    assert rep["firing_rates"]["lif"] == pytest.approx(spikes / (2 * 3 * 2 * 16))
    # ANN reference: every layer once per sample, in MACs
    ann = 2 * 9 * 16 + 3 * 2 * 9 * 16 + 4 * 2 * 16 + 1 * 2 * 16 + 2 * 5
    assert rep["totals"]["ann_macs"] == pytest.approx(ann)
    energy = 4.6e-9 * (2 * 9 * 16 + 10) + 0.9e-9 * (spikes * 27 + spikes * 4 + 2 * spikes) / 3
    assert rep["totals"]["snn_mJ"] == pytest.approx(energy)
    assert net.training                                       # restored
    assert net.stem.counter is None                           # detached


def test_model_report_stems_and_totals():
    c = config("tiny", T=2)
    model = SNNergy(c)
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(2, 1, 32, 32)).astype(np.float32)
    frames = rng.random((2, 2, 3, 32, 32)).astype(np.float32)
    rep = report(model, [(audio, frames), (audio, frames[:, :1])])
    layers = rep["layers"]
    half = c.stage_dims[0] // 2
    assert layers["audio.stage1.embed.proj0_conv"]["macs"] == half * 1 * 9 * 32 * 32
    # frames differ per step in the first batch (T MACs), repeat in the second (once)
    assert layers["visual.stage1.embed.proj0_conv"]["macs"] == pytest.approx(half * 3 * 9 * 1024 * (2 + 1) / 2)
    assert layers["head"]["kind"] == "mac"
    assert all(layers[k]["kind"] == "ac" for k in layers if "blocks" in k or "fusion" in k)
    assert "visual.stage1.blocks.0.attn.qk" in layers and "fusion1.audio_from_visual.qk" in layers
    t = rep["totals"]
    assert t["snn_mJ"] > 0 and t["ann_mJ"] > t["snn_mJ"]
    assert rep["machine_ops"]["popcount_words"] > 0
    assert "per sample: SNN" in format_report(rep)


def test_report_needs_a_batch():
    with pytest.raises(ValueError, match="no batch"):
        report(SNNergy(config("tiny")), [])


@pytest.mark.parametrize("fusion", ["mbt", "factorized"])
def test_report_reads_mixed_inputs_and_unequal_token_sets(fusion):
    """mbt's projections read spike columns and analog bottleneck columns (ACs + MACs); the
    factorized SSA cores have fewer queries than keys, so a V spike feeds N_q queries."""
    from refsnn.fusion.mbt import BottleneckConv1x1
    from refsnn.nn.attention import SSACore
    model = SNNergy(config("tiny", T=2, fusion=fusion))
    for name, m in model.named_modules():          # make the fusion's Q and V neurons fire
        if name.startswith("fusion") and name.endswith(("q_bn", "v_bn")):
            m.bias.value[...] = 3.0
    rng = np.random.default_rng(1)
    audio = rng.normal(size=(2, 1, 32, 32)).astype(np.float32)
    frames = rng.random((2, 2, 3, 32, 32)).astype(np.float32)
    rep = report(model, [(audio, frames)])
    modules = dict(model.named_modules())
    checked = {"mixed": 0, "ssa": 0, "unequal": 0}
    for name, layer in rep["layers"].items():
        m = modules[name]
        if isinstance(m, BottleneckConv1x1) and m.analog_tokens:
            c = m.energy_counts()
            M, C, N = m._cache.x.shape
            assert layer["acs"] == pytest.approx(c.input_events * m.out_channels / 2)
            assert layer["macs"] == pytest.approx(M * m.analog_tokens * C * m.out_channels / 2)
            assert c.input_events == int(m._cache.x[..., :N - m.analog_tokens].sum())
            checked["mixed"] += 1
        elif isinstance(m, SSACore):
            parent = modules[name.rsplit(".", 1)[0]]
            q, k, v = (getattr(parent, f"{p}_lif").energy_counts() for p in "qkv")
            n_q, n_k = (c.neurons // (2 * 2 * parent.dim) for c in (q, k))     # T = B = 2
            assert layer["acs"] == pytest.approx((n_k * q.spikes + n_q * v.spikes) / 2)
            checked["ssa"] += 1
            checked["unequal"] += n_q != n_k and v.spikes > 0
    assert checked["ssa"] > 0
    assert checked["mixed" if fusion == "mbt" else "unequal"] > 0


def _energy_reference() -> dict:
    with open(os.path.join(os.path.dirname(__file__), "data", "nn_reference.json")) as f:
        return json.load(f)["energy"]


@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_reports_unchanged(preset):
    """Every fusion mode and modality of tiny and cpu reports, layer by layer, the figures of
    the code before the layers declared their energy (tests/nn_reference.py, exact)."""
    reference = _energy_reference()
    for name, overrides in energy_cases(preset):
        got = json.loads(json.dumps(compact(energy_report(preset, overrides))))
        assert list(got["layers"]) == list(reference[name]["layers"]), name
        assert got == reference[name], name


def test_undeclared_module_fails_loudly():
    """A module type that declares no energy_role is refused, not skipped."""
    from refsnn.energy import check_declarations
    from refsnn.nn import Parameter

    class Scale(Module):                      # a new layer with a parameter, no declaration
        def __init__(self):
            super().__init__()
            self.gain = Parameter(np.ones(1))

        def forward(self, x):
            return x * self.gain.value

    model = SNNergy(config("tiny", T=2))
    assert check_declarations(model)["fusion1.audio_from_visual.qk"] == "synapse"
    model.stage_gain = Scale()
    with pytest.raises(ValueError, match=r"stage_gain \(Scale\) declares no energy_role"):
        report(model, [(np.zeros((1, 1, 32, 32), np.float32), np.zeros((1, 3, 32, 32), np.float32))])

    class Odd(Module):
        energy_role = "synapse"               # a synapse must say what it counted
    model.stage_gain = Odd()
    with pytest.raises(ValueError, match="needs an energy_counts"):
        check_declarations(model)


def test_every_layer_of_every_mode_is_declared():
    """Every module of every fusion mode declares its role; every parameter belongs to a
    declared module, and every synapse and neuron reports after a counted forward."""
    from refsnn.energy import check_declarations
    for fusion in ("cmqka", "concat", "ssa-cross", "mbt", "factorized"):
        model = SNNergy(config("tiny", T=2, fusion=fusion, stage3_attention="ssa"))
        roles = check_declarations(model)
        assert set(roles.values()) <= {"synapse", "neuron", "free", "container"}
        rep = report(model, [(np.ones((1, 1, 32, 32), np.float32), np.ones((1, 3, 32, 32), np.float32))])
        synapses = {n for n, r in roles.items() if r == "synapse"}
        neurons = {n for n, r in roles.items() if r == "neuron"}
        assert set(rep["layers"]) == synapses, fusion
        assert set(rep["firing_rates"]) == neurons, fusion

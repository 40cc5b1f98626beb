"""Config presets and validation (SPEC section 6)."""
import json

import numpy as np

import pytest

from refsnn.checks import check_choice
from refsnn.functional.attention import ATTENTION_BACKENDS, ATTENTION_V_THRESHOLD
from refsnn.functional.lif import LIF_DEFAULTS, SPIKE_FNS, SURROGATES
from refsnn.functional.norm import BN_EPS, BN_MOMENTUM
from refsnn.fusion import MASK_FROM, RESIDUALS, factorized, fusion_modes, mbt
from refsnn.nn.layers import BatchNorm
from refsnn.models import CHOICES, Config, config
from refsnn.nn.attention import QK_MODES


@pytest.mark.parametrize("name, dims, tokens", [
    ("paper", (48, 96, 192), (1024, 256, 64)),
    ("cpu", (16, 32, 64), (256, 64, 16)),
    ("tiny", (8, 16, 32), (64, 16, 4)),
])
def test_presets_match_spec_table(name, dims, tokens):
    c = config(name)
    assert c.stage_dims == dims
    assert c.stage_tokens == tokens
    assert c.fusion == "cmqka" and c.modality == "av" and c.attention_backend == "packed"


def test_preset_values():
    p = config("paper")
    assert (p.image_size, p.heads, p.depths, p.mlp_ratio, p.T, p.classes) == (128, (2, 4, 6), (2, 4, 8), 2, 4, 28)
    t = config("tiny")
    assert (t.image_size, t.heads, t.depths, t.T, t.classes) == (32, (1, 1, 2), (1, 1, 1), 2, 10)


def test_json_round_trip_and_overrides():
    c = config("cpu", fusion="mbt", v_reset=None, heads=(2, 2, 4), classes=28)
    d = json.loads(c.to_json())
    assert d["heads"] == [2, 2, 4] and d["v_reset"] is None
    assert Config.from_json(c.to_json()) == c
    assert config("tiny", T="3", detach_reset="false", heads="1,2,2").T == 3
    assert config("tiny", v_reset="none").v_reset is None


def test_unknown_field_and_value_are_named():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['fusionn'\]"):
        config("cpu", fusionn="cmqka")
    with pytest.raises(ValueError, match=r"config field 'fusion': expected one of \['cmqka', 'concat', "
                                         r"'ssa-cross', 'mbt', 'factorized'\], got 'late'"):
        config("cpu", fusion="late")
    with pytest.raises(ValueError, match=r"config preset: expected one of \['paper', 'cpu', 'tiny'\], got 'huge'"):
        config("huge")
    with pytest.raises(ValueError, match=r"config field 'mbt_from_stage': expected one of \[1, 2, 3\], got 4"):
        config("cpu", mbt_from_stage=4)
    with pytest.raises(ValueError, match="heads.*stage 1 width 16 is not divisible by 3"):
        config("cpu", heads=(3, 2, 4))
    with pytest.raises(ValueError, match="'T' must be a positive integer"):
        config("cpu", T=0)
    with pytest.raises(ValueError, match="tau"):
        config("cpu", tau=1.0)
    with pytest.raises(ValueError, match="unknown config field"):
        Config.from_dict({"name": "x", "bogus": 1})


def test_choices_are_the_owners_lists():
    """Config repeats no option list: each is the very tuple its module defines."""
    assert CHOICES["cmqka_mask"] is QK_MODES and CHOICES["cmqka_mask_from"] is MASK_FROM
    assert CHOICES["cmqka_residual"] is RESIDUALS and CHOICES["attention_backend"] is ATTENTION_BACKENDS
    assert CHOICES["surrogate"] is SURROGATES and CHOICES["spike_fn"] is SPIKE_FNS
    assert CHOICES["fusion"] == fusion_modes()
    assert Config().attention_v_threshold == ATTENTION_V_THRESHOLD == 0.5


def test_defaults_are_the_owners():
    """Config restates no default: the neuron's, BatchNorm's and the fusion modes' are theirs."""
    c = Config()
    neuron = c.neuron_kwargs()
    assert {k: neuron[k] for k in LIF_DEFAULTS if k in neuron} == \
        {k: v for k, v in LIF_DEFAULTS.items() if k in neuron}
    assert (c.bn_momentum, c.bn_eps) == (BN_MOMENTUM, BN_EPS) == (0.1, 1e-5)
    bn = BatchNorm(4)
    assert (bn.momentum, bn.eps) == (c.bn_momentum, c.bn_eps)
    assert (c.mbt_bottlenecks, c.mbt_from_stage) == (mbt.BOTTLENECKS, mbt.FROM_STAGE) == (4, 1)
    assert (c.factorized_fusion_tokens, c.factorized_agg_tokens) == \
        (factorized.FUSION_TOKENS, factorized.AGG_TOKENS) == (16, 8)
    f = factorized.FactorizedFusion(8, 1, rng=np.random.default_rng(0))
    assert (f.n_fusion, f.n_agg) == (c.factorized_fusion_tokens, c.factorized_agg_tokens)
    assert set(CHOICES) == {"fusion", "modality", "stage3_attention", "cmqka_mask", "cmqka_mask_from",
                            "cmqka_residual", "attention_backend", "surrogate", "spike_fn"}


def test_check_choice():
    assert check_choice("mode", "token", ("token", "channel")) == "token"
    with pytest.raises(ValueError, match=r"^mode: expected one of \['token', 'channel'\], got 'tokens'$"):
        check_choice("mode", "tokens", ("token", "channel"))
    with pytest.raises(ValueError, match="got True"):
        check_choice("stage", True, (1, 2, 3))           # a bool is not the integer 1
    with pytest.raises(ValueError, match="expected one of"):
        check_choice("stage", np.array([1, 2]), (1, 2, 3))
    assert check_choice("stage", np.int64(2), (1, 2, 3)) == 2


def test_every_choice_is_accepted():
    for field, values in CHOICES.items():
        for v in values:
            assert getattr(config("tiny", **{field: v}), field) == v


def test_printable():
    text = str(config("tiny"))
    assert text.startswith("Config(tiny)") and "fusion" in text and "'cmqka'" in text

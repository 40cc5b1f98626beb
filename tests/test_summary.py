"""refsnn.summary: the per-layer table and its totals (issue 4)."""
import json

import numpy as np
import pytest

from refsnn.energy import report
from refsnn.models import config
from refsnn.models.snnergy import SNNergy
from refsnn.summary import format_summary, main, summarize


def test_shapes_params_and_flops_without_data():
    model = SNNergy(config("tiny"))
    s = summarize(model)
    rows = s["layers"]
    assert s["totals"]["params"] == model.num_parameters() == 68_576
    assert s["firing_rates"] is None and "snn_mJ" not in s["totals"]
    stem = rows["audio.stage1.embed.proj0_conv"]
    # 1 -> 4 channels, 3x3, on 32x32, run once per sample (the spectrogram repeats over T)
    assert stem["flops"] == 4 * 1 * 9 * 32 * 32 and stem["output_shape"][1] == "B"
    assert stem["params"] == 4 * 1 * 9
    assert rows["head"]["output_shape"] == ["B", 10] and rows["head"]["params"] == 10 * 64 + 10
    assert rows["visual.stage1.blocks.0.attn.qk"]["type"] == "QKCore"
    assert s["totals"]["flops"] == pytest.approx(sum(r["flops"] for r in rows.values()))
    text = format_summary(s)
    assert "parameters 68,576" in text and "in-rate" not in text


def test_with_batches_rows_agree_with_the_energy_report():
    model = SNNergy(config("tiny"))
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(2, 1, 32, 32)).astype(np.float32),
             rng.random((2, 2, 3, 32, 32)).astype(np.float32))
    s = summarize(model, [batch])
    rep = report(model, [batch])
    assert s["totals"]["snn_mJ"] == pytest.approx(rep["totals"]["snn_mJ"])
    for name, layer in rep["layers"].items():
        assert s["layers"][name]["energy_mJ"] == pytest.approx(layer["energy_mJ"]), name
        assert s["layers"][name]["acs"] == pytest.approx(layer["acs"]), name
    assert "per sample over 2 samples" in format_summary(s)


def test_cli_json_and_data(capsys):
    assert main(["--config", "tiny", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["totals"]["params"] == 68_576
    assert main(["--config", "tiny", "--data", "synthetic", "--batches", "1", "--batch-size", "4",
                 "--set", "T=2"]) == 0
    out = capsys.readouterr().out
    assert "per sample over 4 samples" in out
    assert "Bx8" in out                     # the head is built for synthetic's 8 classes


@pytest.mark.parametrize("args, message", [
    (["--config", "tiny", "--set", "fusion=late"], "fusion"),
    (["--config", "tiny", "--data", "imagenet"], "imagenet"),
    (["--checkpoint", "/nonexistent/best.npz"], "/nonexistent/best.npz"),
])
def test_cli_bad_input_is_a_message(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err

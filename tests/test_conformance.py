"""Conformance vectors (SPEC section 10): the format, the generator, the verifier.

The committed vectors (conformance/) must pass with refsnn's own adapter and be current (a
regeneration gives the same numbers); every deliberately broken adapter of issue 7 must be
caught; tampered files are refused by name.
"""
import copy
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from refsnn.conformance import format as fmt
from refsnn.conformance.adapters import refsnn_adapter
from refsnn.conformance.generate import SUITES, generate
from refsnn.conformance.verify import compare_tensor, select_cases, verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "conformance")
VECTORS = os.path.join(COMMITTED, "vectors")
PER_OP = ["lif", "layers", "qk", "cmqka", "bitpack"]


def _verify(adapter, *, vectors=VECTORS, **kw):
    out = io.StringIO()
    result = verify(adapter, vectors, out=out, **kw)
    return result, out.getvalue()


def _failed(result):
    return {(c["suite"], c["case"]) for c in result.cases if c["status"] != "passed"}


# -- the format --------------------------------------------------------------------------------------

def test_npz_writer_is_deterministic_and_round_trips(tmp_path):
    arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.asarray(1.5), "w": np.array([2**63 + 5], np.uint64),
              "g.x.y": np.zeros((0, 3), np.float32)}
    fmt.write_npz(str(tmp_path / "1.npz"), arrays)
    fmt.write_npz(str(tmp_path / "2.npz"), dict(reversed(list(arrays.items()))))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    back = fmt.read_npz(str(tmp_path / "1.npz"))
    assert list(back) == sorted(arrays)
    for k, a in arrays.items():
        assert back[k].shape == a.shape and back[k].dtype == a.dtype
        np.testing.assert_array_equal(back[k], a)


def test_npz_writer_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="pickles"):
        fmt.write_npz(str(tmp_path / "x.npz"), {"x": np.array([{}], dtype=object)})


def test_output_spec_tolerances_follow_spec():
    v, g = fmt.output_spec("value"), fmt.output_spec("gradient")
    assert v["tolerance"]["float64"] == {"rtol": 1e-10, "atol": 1e-12}
    assert v["tolerance"]["float32"] == {"rtol": 1e-5, "atol": 1e-6}
    assert g["tolerance"]["float32"] == {"rtol": 1e-4, "atol": 1e-5}
    assert fmt.output_spec("spikes")["compare"] == "exact"
    z = fmt.output_spec("gradient", atol_only=True)
    assert z["compare"] == "atol_only" and z["tolerance"]["float64"]["rtol"] == 0.0
    assert fmt.output_spec("value", float32=False)["tolerance"]["float32"] is None


# -- compare_tensor ------------------------------------------------------------------------------------

def test_compare_reports_flips_with_distance_to_threshold():
    spec = fmt.output_spec("spikes", margin="margin.s")
    expected = np.array([0.0, 1.0, 1.0, 0.0])
    margin = np.array([-0.3, 0.002, 0.5, -0.0015])
    rec = compare_tensor(spec, expected, np.array([0.0, 0.0, 1.0, 1.0]), "float64", margin)
    assert not rec["ok"] and rec["mismatches"] == 2
    assert [f["index"] for f in rec["flips"]] == [[1], [3]]
    assert rec["flips"][0]["h_minus_v_th"] == 0.002
    assert rec["min_flip_distance"] == 0.0015


def test_compare_value_tolerances_and_nan():
    spec = fmt.output_spec("value")
    e = np.array([1.0, -2.0, 0.0])
    assert compare_tensor(spec, e, e * (1 + 5e-11), "float64")["ok"]
    assert not compare_tensor(spec, e, e * (1 + 5e-10), "float64")["ok"]
    assert compare_tensor(spec, e, e.astype(np.float32) * np.float32(1 + 5e-6), "float32")["ok"]
    rec = compare_tensor(spec, e, np.array([1.0, np.nan, 0.0]), "float64")
    assert not rec["ok"] and rec["mismatches"] == 1
    assert not compare_tensor(spec, e, e[:2], "float64")["ok"]
    # a float32 run must compute in float32
    rec = compare_tensor(spec, e, e, "float32")
    assert not rec["ok"] and "dtype float64" in rec["problem"]
    assert not compare_tensor(spec, e, None, "float64")["ok"]


def test_float32_dtype_check_covers_0d_outputs():
    # a float64 loss (0-d) in a float32 run was computed in float64: refused like any tensor
    spec = fmt.output_spec("value")
    loss = np.asarray(0.75)
    rec = compare_tensor(spec, loss, np.asarray(0.75, dtype=np.float64), "float32")
    assert not rec["ok"] and "dtype float64" in rec["problem"]
    assert not compare_tensor(spec, loss, 0.75, "float32")["ok"]         # a Python float is float64
    assert compare_tensor(spec, loss, np.float32(0.75), "float32")["ok"]
    assert compare_tensor(spec, loss, np.asarray(0.75, dtype=np.float32), "float32")["ok"]


def test_compare_atol_only_ignores_relative_error():
    spec = fmt.output_spec("gradient", atol_only=True)
    e = np.array([1e-17, -3e-16])
    assert compare_tensor(spec, e, np.array([4e-13, 2e-14]), "float64")["ok"]
    assert not compare_tensor(spec, e, np.array([2e-12, 0.0]), "float64")["ok"]


def test_compare_uint64_words_exactly_even_as_int64_patterns():
    spec = fmt.output_spec("integer")
    words = np.array([2**63 + 1, 3, 2**64 - 1], dtype=np.uint64)
    assert compare_tensor(spec, words, words.view(np.int64), "float64")["ok"]
    off = words.copy()
    off[0] ^= np.uint64(1)     # differs only in bit 0 of a number float64 cannot hold exactly
    rec = compare_tensor(spec, words, off, "float64")
    assert not rec["ok"] and rec["mismatches"] == 1


# -- the generated suites, against SPEC directly ----------------------------------------------------------

def _case(suite, name):
    folder = os.path.join(VECTORS, suite, name)
    with open(os.path.join(folder, "case.json")) as f:
        case = json.load(f)
    return case, fmt.read_npz(os.path.join(folder, "inputs.npz")), fmt.read_npz(os.path.join(folder, "expected.npz"))


def test_lif_worked_examples_are_spec_numbers():
    case, inputs, expected = _case("lif", "worked-example-defaults")
    np.testing.assert_array_equal(inputs["x"].ravel(), [0.9, 0.9, 1.6, 0.2, 2.5, -0.4])
    np.testing.assert_array_equal(expected["spikes"].ravel(), [0, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(expected["dx"].ravel(), [0.12159875, -0.11600382, -0.23200764, 0.0962528,
                                                        0.08894722, 0.01619189], atol=5e-9)
    case, _, expected = _case("lif", "worked-example-soft-reset-not-detached")
    assert case["params"]["v_reset"] is None and case["params"]["detach_reset"] is False
    np.testing.assert_allclose(expected["dx"].ravel(), [0.16765185, -0.03729349, -0.22822973, 0.10498667,
                                                        0.08765439, 0.03111787], atol=5e-9)


def test_qk_worked_example_is_spec_numbers():
    _, inputs, expected = _case("qk", "qkta-worked-example")
    z = expected["z"][:, 0]
    assert ["".join(str(int(v)) for v in row) for row in z[0]] == ["100", "001", "001", "011"]
    assert ["".join(str(int(v)) for v in row) for row in z[1]] == ["001", "010", "010", "100"]
    _, _, expected = _case("qk", "qkca-worked-example")
    assert ["".join(str(int(v)) for v in row) for row in expected["z"][1, 0]] == ["101", "110", "011", "000"]


def test_suites_cover_every_option_and_keep_margins():
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    combos = set()
    for name in manifest["suites"]["lif"]:
        case, _, _ = _case("lif", name)
        p = case["params"]
        assert "surrogate_formula" in p and isinstance(p["alpha"], float)
        combos.add((p["v_reset"] is None, p["detach_reset"], p["decay_input"], p["surrogate"], p["spike_fn"]))
        m = case["spike_margin"]
        if p["spike_fn"] == "heaviside" and m["required"] is not None:
            assert m["reached"] >= 1e-3
    heaviside = {c for c in combos if c[4] == "heaviside"}
    assert len(heaviside) == 24                 # reset x detach x decay x surrogate
    assert len({c[3] for c in combos if c[4] == "smooth"}) == 3
    cm = set()
    for name in manifest["suites"]["cmqka"]:
        case, inputs, _ = _case("cmqka", name)
        p = case["params"]
        cm.add((p["mask"], p["mask_from"], p["residual"]))
        assert case["spike_margin"]["reached"] >= 1e-3
        if p["residual"] != "fixed":          # alpha != beta, so swapping them is visible
            assert not np.allclose(inputs["alpha"], inputs["beta"])
        marked = {k for k, s in case["outputs"].items() if s["compare"] == "atol_only"}
        if p["training"]:
            assert marked == {"grad.audio_from_visual.proj_conv.bias", "grad.visual_from_audio.proj_conv.bias"}
        else:
            assert marked == set()
    assert len(cm) == 12


@pytest.mark.parametrize("suite", ["snnergy-tiny", "snnergy-small"])
def test_model_suite_names_every_parameter_and_marks_bn_fed_biases(suite):
    from refsnn.models import Config
    from refsnn.models.snnergy import SNNergy
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    assert {"train", "eval"} <= set(manifest["suites"]["snnergy-tiny"])
    for name in manifest["suites"][suite]:
        case, inputs, expected = _case(suite, name)
        assert case["float32"] is False and case["spike_margin"]["reached"] >= 1e-6
        model = SNNergy(Config.from_dict(case["params"]["config"]), dtype=np.float64)
        assert case["params"]["parameters"] == list(model.parameters())
        assert set(inputs) - {"audio", "visual", "labels"} == set(model.state_dict())
        assert {k[len("grad."):] for k in expected if k.startswith("grad.")} == set(model.parameters())
        marked = {k for k, s in case["outputs"].items() if s["compare"] == "atol_only"}
        if case["params"]["training"]:
            # every token conv bias that feeds a BN (all but mbt's carry_conv)
            biases = {f"grad.{k}" for k in model.parameters() if k.endswith("_conv.bias")
                      and f"{k[:-len('_conv.bias')]}_bn.weight" in model.parameters()}
            assert marked == biases and biases
        else:
            assert not marked


def test_committed_vectors_within_size_budget():
    # the whole conformance/ folder (vectors, MANIFEST.json, SPEC.md), in bytes and in the
    # 4 KiB blocks a file system allocates
    files = [os.path.join(d, f) for d, _, fs in os.walk(COMMITTED) for f in fs]
    assert sum(os.path.getsize(f) for f in files) < 20e6
    assert sum(-(-os.path.getsize(f) // 4096) * 4096 for f in files) < 20 * 2**20


def test_issue15_cases_cover_batch_heads_resets_scales_and_models():
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    cm = []
    for name in manifest["suites"]["cmqka"]:
        case, inputs, _ = _case("cmqka", name)
        cm.append((inputs["x_audio"].shape[1], case["params"]["heads"], case["params"]["training"],
                   case["params"]["mask"], case["params"]["neuron"], case["params"]["attention_neuron"]))
    assert {h for b, h, *_ in cm if b >= 2} >= {1, 3}
    assert any(b >= 2 and not training for b, _, training, *_ in cm)
    # neuron options beyond token-query-scalar: another mask or mask_from, several surrogates
    assert {n["surrogate"] for *_, n, _ in cm} >= {"sigmoid", "atan", "fast_sigmoid"}
    assert any(mask == "channel" and n["surrogate"] != "sigmoid" for *_, mask, n, _ in cm)
    # attention neurons with a hard reset to a nonzero value and a custom-alpha sigmoid
    def custom_reset(a):
        return a["v_reset"] not in (None, 0.0) and a["surrogate"] == "sigmoid" and a["alpha"] != 4.0
    assert sum(custom_reset(a) for *_, a in cm) >= 2
    qk = [_case("qk", n)[0] for n in manifest["suites"]["qk"]]
    assert {c["op"] for c in qk if custom_reset(c["params"]["neuron"])} == {"qk_token", "qk_channel", "ssa"}
    ssa = [c["params"] for c in qk if c["op"] == "ssa"]
    assert {p["scale"] for p in ssa} - {0.125} and any(p["neuron"]["surrogate"] != "sigmoid" for p in ssa)
    # the whole-model suite beyond tiny
    cfgs = [_case("snnergy-small", n)[0]["params"]["config"] for n in manifest["suites"]["snnergy-small"]]
    assert any(2 in c["depths"] for c in cfgs) and any(c["T"] == 3 for c in cfgs)
    assert any(c["modality"] == "audio" for c in cfgs)
    assert {c["fusion"] for c in cfgs} >= {"ssa-cross", "mbt", "factorized"}
    assert any(not c["decay_input"] for c in cfgs) and any(c["surrogate"] == "fast_sigmoid" for c in cfgs)
    assert all(c["image_size"] < 32 and c["dim"] < 32 for c in cfgs)      # smaller than tiny


LOADER = """
import json, os, sys
import numpy as np
root = sys.argv[1]
with open(os.path.join(root, "MANIFEST.json"), encoding="utf-8") as f:
    manifest = json.load(f)
n = 0
for suite, names in manifest["suites"].items():
    for name in names:
        folder = "vectors/%s/%s" % (suite, name)
        for file in ("case.json", "inputs.npz", "expected.npz"):
            assert folder + "/" + file in manifest["files"], (folder, file)
        with open(os.path.join(root, folder, "case.json"), encoding="utf-8") as f:
            case = json.load(f)
        assert (case["suite"], case["case"]) == (suite, name)
        arrays = {}
        for file in ("inputs", "expected"):
            with np.load(os.path.join(root, folder, file + ".npz"), allow_pickle=False) as z:
                arrays[file] = {k: z[k] for k in z.files}
        for key, where in (("inputs", "inputs"), ("outputs", "expected"), ("reference", "expected")):
            for t, d in case[key].items():
                a = arrays[where][t]
                assert list(a.shape) == d["shape"] and a.dtype.name == d["dtype"], (suite, name, t)
        n += 1
assert not [m for m in sys.modules if m.split(".")[0] in ("refsnn", "torch", "numba")]
print(n)
"""


def test_every_case_loads_with_numpy_and_json_only():
    # what conformance/SPEC.md section "MANIFEST.json" promises an outsider writing a loader
    p = subprocess.run([sys.executable, "-c", LOADER, COMMITTED], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    assert int(p.stdout) == sum(len(v) for v in manifest["suites"].values())


# -- the committed vectors pass with refsnn and are current -------------------------------------------------

def test_refsnn_adapter_passes_every_committed_case():
    result, text = _verify(refsnn_adapter.run)
    assert result.ok, text
    n = result.counts()
    assert n["failed"] == n["error"] == n["skipped"] == 0


def test_refsnn_adapter_passes_per_op_suites_in_float32():
    result, text = _verify(refsnn_adapter.run, suites=PER_OP, dtype="float32")
    assert result.ok, text


def test_generate_twice_is_byte_identical(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    generate(one, ["lif", "bitpack", "qk"], log=lambda *a: None)
    generate(two, ["lif", "bitpack", "qk"], log=lambda *a: None)
    names = sorted(os.path.relpath(os.path.join(d, f), one) for d, _, fs in os.walk(one) for f in fs)
    assert names == sorted(os.path.relpath(os.path.join(d, f), two) for d, _, fs in os.walk(two) for f in fs)
    for rel in names:
        with open(os.path.join(one, rel), "rb") as a, open(os.path.join(two, rel), "rb") as b:
            assert a.read() == b.read(), rel


def _close_json(a, b, path=""):
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close_json(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close_json(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_committed_vectors_are_current(tmp_path):
    """A regeneration with the current refsnn gives the committed cases (to rounding: BLAS
    kernels may differ between machines). If this fails, refsnn's numbers changed: regenerate
    with ``python -m refsnn.conformance generate --out conformance`` and review the diff."""
    regenerated = str(tmp_path / "regen")
    generate(regenerated, log=lambda *a: None)
    new = fmt.load_manifest(os.path.join(regenerated, "MANIFEST.json"))
    old = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    assert new["suites"] == old["suites"]
    for suite, names in new["suites"].items():
        for name in names:
            rel = fmt.case_dir(suite, name)
            with open(os.path.join(regenerated, rel, "case.json")) as f:
                a = json.load(f)
            with open(os.path.join(COMMITTED, rel, "case.json")) as f:
                b = json.load(f)
            _close_json(a, b, f"{suite}/{name}")
            for file in ("inputs.npz", "expected.npz"):
                x = fmt.read_npz(os.path.join(regenerated, rel, file))
                y = fmt.read_npz(os.path.join(COMMITTED, rel, file))
                assert list(x) == list(y)
                for k in x:
                    assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, (rel, k)
                    if np.issubdtype(x[k].dtype, np.floating):
                        np.testing.assert_allclose(x[k], y[k], rtol=1e-9, atol=1e-12, err_msg=f"{rel} {k}")
                    else:
                        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel} {k}")


# -- deliberately broken adapters (issue 7) --------------------------------------------------------------

def _patched(case, **changes):
    case = copy.deepcopy(case)
    case["params"].update(changes)
    return case


def _patch_neurons(case, fn):
    """Apply ``fn(neuron_params) -> changes`` to every neuron of the case."""
    case = copy.deepcopy(case)
    p = case["params"]
    if case["op"] == "lif":
        p.update(fn(p))
    for key in ("neuron", "attention_neuron"):
        if key in p:
            p[key].update(fn(p[key]))
    return case


def broken_tau(case, inputs):
    return refsnn_adapter.run(_patch_neurons(case, lambda p: {"tau": p["tau"] * 1.01}), inputs)


def broken_soft_reset(case, inputs):
    return refsnn_adapter.run(_patch_neurons(case, lambda p: {"v_reset": None}), inputs)


def broken_input_not_scaled(case, inputs):
    # H = V + X - (V - r) / tau: exactly the decay_input=False charge
    return refsnn_adapter.run(_patch_neurons(case, lambda p: {"decay_input": False}), inputs)


def broken_reset_not_detached(case, inputs):
    return refsnn_adapter.run(_patch_neurons(case, lambda p: {"detach_reset": False}), inputs)


def broken_strict_threshold(case, inputs):
    # H >= nextafter(v_th, inf) is exactly H > v_th
    return refsnn_adapter.run(_patch_neurons(
        case, lambda p: {"v_threshold": float(np.nextafter(p["v_threshold"], np.inf))}), inputs)


def broken_one_gradient_entry(case, inputs):
    out = refsnn_adapter.run(case, inputs)
    for name, spec in case["outputs"].items():
        if spec["kind"] == "gradient":
            g = np.array(out[name], copy=True)
            g.flat[g.size // 2] += 1e-6 * (1 + abs(g.flat[g.size // 2]))
            out[name] = g
            break
    return out


def _reverse_bits(words):
    w = words.astype(np.uint64)
    out = np.zeros_like(w)
    for i in range(64):
        out |= ((w >> np.uint64(i)) & np.uint64(1)) << np.uint64(63 - i)
    return out


def broken_bit_order(case, inputs):
    if case["op"] == "pack_bits":      # element 64w + i in bit 63 - i
        return {"words": _reverse_bits(refsnn_adapter.run(case, inputs)["words"])}
    if case["op"] == "unpack_bits":
        rev = dict(inputs, words=_reverse_bits(inputs["words"]))
        return {"spikes": refsnn_adapter.run(case, rev)["spikes"]}
    return refsnn_adapter.run(case, inputs)


def broken_swap_alpha_beta(case, inputs):
    if case["op"] == "cmqka" and "alpha" in inputs:
        inputs = dict(inputs, alpha=inputs["beta"], beta=inputs["alpha"])
    return refsnn_adapter.run(case, inputs)


def _expect_tie_cases_fail(result):
    failed = _failed(result)
    for case in (("lif", "exact-ties"), ("lif", "exact-ties-attention"), ("qk", "qkta-worked-example"),
                 ("qk", "qkca-worked-example")):
        assert case in failed, case


def _expect_all_fail(result):
    # (unpacking bit-reversed words trips refsnn's padding-bit check: an error, not a pass)
    assert all(c["status"] in ("failed", "error") for c in result.cases)


def _expect_swap_fails_unless_fixed(result):
    for c in result.cases:
        assert (c["status"] == "failed") == ("fixed" not in c["case"]), c["case"]


def _expect_detached_cases_fail_in_gradient_only(result):
    for c in result.cases:
        case, inputs, _ = _case("lif", c["case"])
        if case["params"]["detach_reset"] and inputs["x"].shape[0] > 1:   # T = 1 never resets
            assert c["status"] == "failed", c["case"]
            assert c["tensors"]["spikes"]["ok"]      # the forward is unchanged: only dx differs


def _expect_some_fail(result):
    assert _failed(result)


BROKEN = [
    (broken_tau, ["lif"], _expect_some_fail),
    (broken_soft_reset, ["lif"], _expect_some_fail),
    (broken_input_not_scaled, ["lif"], _expect_some_fail),
    (broken_reset_not_detached, ["lif"], _expect_detached_cases_fail_in_gradient_only),
    (broken_strict_threshold, ["lif", "qk"], _expect_tie_cases_fail),
    (broken_one_gradient_entry, ["lif", "layers", "qk"], _expect_all_fail),
    (broken_bit_order, ["bitpack"], _expect_all_fail),
    (broken_swap_alpha_beta, ["cmqka"], _expect_swap_fails_unless_fixed),
]


# issue 15: mistakes the cases before it could not see. Each passes every earlier case of its
# suites and fails the new ones (tests/test_conformance_torch.py does the same with the torch
# port, and covers the whole-model cases).

def _is_issue15_case(suite, name):
    return ((suite == "cmqka" and name.startswith(("batch2-", "batch3-", "attention-vreset")))
            or (suite == "qk" and ("hard-reset-vreset" in name or name.startswith("ssa-scale"))))


def broken_attention_v_reset_ignored(case, inputs):
    case = copy.deepcopy(case)
    p = case["params"]
    key = "attention_neuron" if case["op"] == "cmqka" else "neuron"
    if key in p and p[key]["v_reset"] is not None:
        p[key]["v_reset"] = 0.0
    return refsnn_adapter.run(case, inputs)


def broken_heads_hard_coded(case, inputs):
    return refsnn_adapter.run(_patched(case, heads=2) if case["op"] == "cmqka" else case, inputs)


def broken_batch_axis_mixed(case, inputs):
    # the visual map read as [B, T, ...] memory: a no-op at B = 1
    if case["op"] == "cmqka":
        x = inputs["x_visual"]
        inputs = dict(inputs, x_visual=np.ascontiguousarray(x.swapaxes(0, 1)).reshape(x.shape))
    return refsnn_adapter.run(case, inputs)


def _attention_reset_nonzero(case):
    a = case["params"]["attention_neuron" if case["op"] == "cmqka" else "neuron"]
    return a["v_reset"] not in (None, 0.0)


# (mutation, suites, which cases must fail: a predicate on case.json)
ISSUE15_BROKEN = [
    (broken_attention_v_reset_ignored, ["qk", "cmqka"], _attention_reset_nonzero),
    (broken_heads_hard_coded, ["cmqka"], lambda c: c["params"]["mask"] == "token" and c["params"]["heads"] != 2),
    (broken_batch_axis_mixed, ["cmqka"], lambda c: c["inputs"]["x_visual"]["shape"][1] > 1),
]


@pytest.mark.parametrize("adapter,suites,caught", ISSUE15_BROKEN, ids=[b[0].__name__ for b in ISSUE15_BROKEN])
def test_issue15_cases_catch_what_the_earlier_cases_missed(adapter, suites, caught):
    result, text = _verify(adapter, suites=suites, quiet=True)
    expected_fail = {(c["suite"], c["case"]) for c in result.cases if caught(_case(c["suite"], c["case"])[0])}
    assert expected_fail and all(_is_issue15_case(*k) for k in expected_fail)
    assert _failed(result) == expected_fail, text


@pytest.mark.parametrize("adapter,suites,expect", BROKEN, ids=[b[0].__name__ for b in BROKEN])
def test_verifier_catches_broken_adapter(adapter, suites, expect):
    result, text = _verify(adapter, suites=suites)
    assert not result.ok
    assert "FAIL" in text or "ERROR" in text
    expect(result)


def test_flipped_spikes_are_reported_with_their_distance():
    r, text = _verify(broken_tau, suites=["lif"])
    flips = [t for c in r.cases for t in c.get("tensors", {}).values() if t.get("flips")]
    assert flips
    assert all("h_minus_v_th" in f for t in flips for f in t["flips"])
    assert "|H - v_th| =" in text


def test_adapter_errors_and_missing_outputs_fail():
    def raising(case, inputs):
        raise NotImplementedError("no such op here")

    def missing(case, inputs):
        out = refsnn_adapter.run(case, inputs)
        out.pop(next(iter(case["outputs"])))
        return out

    r, text = _verify(raising, suites=["bitpack"])
    assert not r.ok and r.counts()["error"] == len(r.cases) and "NotImplementedError" in text
    r, text = _verify(missing, suites=["bitpack"])
    assert not r.ok and "missing" in text


@pytest.mark.parametrize("exc", [SystemExit(0), SystemExit(None), KeyboardInterrupt(), GeneratorExit()])
def test_anything_the_adapter_raises_is_reported_against_the_case(exc):
    calls = []

    def adapter(case, inputs):
        calls.append(case["case"])
        if len(calls) == 2:
            raise exc
        return refsnn_adapter.run(case, inputs)

    r, text = _verify(adapter, suites=["bitpack"])
    assert not r.ok
    errors = [c for c in r.cases if c["status"] == "error"]
    assert [c["case"] for c in errors] == [calls[1]]
    assert type(exc).__name__ in errors[0]["error"]
    if isinstance(exc, KeyboardInterrupt):
        # the run stops; the cases after it are recorded as not run, never as passed
        assert r.interrupted and r.counts()["not-run"] == len(r.cases) - 2 > 0
        assert "did not run" in text
    else:
        assert r.counts()["passed"] == len(r.cases) - 1 and r.complete


def test_outputs_whose_conversion_raises_system_exit_are_an_error():
    class Hostile:
        def __array__(self, *a, **k):
            raise SystemExit(0)

    def adapter(case, inputs):
        return {name: Hostile() for name in case["outputs"]}

    r, _ = _verify(adapter, suites=["bitpack"])
    assert not r.ok and r.counts()["error"] == len(r.cases)


# -- the command line: selection, report, tampering ----------------------------------------------------------

HOSTILE_ADAPTERS = {
    # exits "successfully" on the second case
    "exit_zero": "n = []\ndef run(case, inputs):\n    n.append(1)\n    if len(n) == 2:\n"
                 "        raise SystemExit(0)\n    return REF(case, inputs)\n",
    "interrupt": "n = []\ndef run(case, inputs):\n    n.append(1)\n    if len(n) == 2:\n"
                 "        raise KeyboardInterrupt\n    return REF(case, inputs)\n",
    "exit_at_import": "raise SystemExit(0)\ndef run(case, inputs):\n    return REF(case, inputs)\n",
    # leaves the process on the second case, bypassing every handler (exit status 0)
    "os_exit": "import os\nn = []\ndef run(case, inputs):\n    n.append(1)\n    if len(n) == 2:\n"
               "        os._exit(0)\n    return REF(case, inputs)\n",
}


@pytest.mark.parametrize("kind,code", [("exit_zero", 1), ("interrupt", 130), ("exit_at_import", 2),
                                       ("os_exit", 0)])
def test_cli_hostile_adapter_never_passes_and_always_leaves_a_report(tmp_path, kind, code):
    (tmp_path / f"hostile_{kind}.py").write_text(
        "from refsnn.conformance.adapters.refsnn_adapter import run as REF\n" + HOSTILE_ADAPTERS[kind])
    report = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "refsnn.conformance", "verify", "--adapter",
                        f"hostile_{kind}:run", "--suite", "bitpack", "--report", str(report)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == code, p.stdout + p.stderr
    rep = json.loads(report.read_text())
    assert rep["ok"] is False
    if kind == "os_exit":
        # os._exit cannot be intercepted in-process: the exit status is the adapter's, but the
        # report written before the first case says the run never finished
        assert rep["complete"] is False and rep["exit_code"] is None
        return
    assert rep["exit_code"] == code
    if kind == "exit_zero":
        assert rep["complete"] and rep["summary"]["error"] == 1
        assert "SystemExit(0)" in p.stdout
        assert [c["status"] for c in rep["cases"]].count("passed") == len(rep["cases"]) - 1
    elif kind == "interrupt":
        assert rep["interrupted"] and not rep["complete"] and rep["summary"]["not-run"] > 0
    else:
        assert "SystemExit(0)" in p.stderr and "hostile_exit_at_import" in p.stderr
        assert rep["cases"] == []


def test_cli_report_written_when_the_vectors_are_refused(vector_copy, tmp_path):
    _tamper(vector_copy, "modify")
    report = tmp_path / "r.json"
    p = _cli("verify", "--adapter", "refsnn.conformance.adapters.refsnn_adapter:run",
             "--vectors", str(vector_copy / "vectors"), "--suite", "bitpack", "--report", str(report))
    assert p.returncode == 2
    rep = json.loads(report.read_text())
    assert rep["ok"] is False and rep["exit_code"] == 2 and "refused" in rep["error"]


def _cli(*args, cwd=ROOT):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "refsnn.conformance", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_cli_verify_selection_report_and_exit_code(tmp_path):
    report = tmp_path / "r.json"
    p = _cli("verify", "--adapter", "refsnn.conformance.adapters.refsnn_adapter:run",
             "--suite", "qk", "--case", "qkta-*", "--report", str(report))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "max_abs" in p.stdout and "mismatches" in p.stdout
    rep = json.loads(report.read_text())
    assert rep["ok"] and rep["summary"]["passed"] == len(rep["cases"]) > 0
    assert all(c["suite"] == "qk" and c["case"].startswith("qkta-") for c in rep["cases"])
    assert "max_rel" in rep["cases"][0]["tensors"]["dq"]
    p = _cli("verify", "--adapter", "refsnn.conformance.adapters.refsnn_adapter:run", "--suite", "nope")
    assert p.returncode == 2 and "unknown suite" in p.stderr
    p = _cli("verify", "--adapter", "no_such_module_xyz:run")
    assert p.returncode == 2 and "cannot import" in p.stderr


@pytest.fixture()
def vector_copy(tmp_path):
    root = tmp_path / "conformance"
    shutil.copytree(COMMITTED, root, ignore=shutil.ignore_patterns("SPEC.md"))
    return root


def _tamper(root, how):
    folder = root / "vectors" / "bitpack" / "pack-last-64"
    if how == "modify":
        target = folder / "expected.npz"
        data = bytearray(target.read_bytes())
        data[-40] ^= 0x01
        target.write_bytes(bytes(data))
    elif how == "delete":
        target = folder / "inputs.npz"
        target.unlink()
    elif how == "extra":
        target = folder / "notes.txt"
        target.write_text("hello")
    else:
        target = folder / "case.json"
        case = json.loads(target.read_text())
        case["params"]["axis"] = 0
        target.write_text(json.dumps(case))
    return f"vectors/bitpack/pack-last-64/{target.name}"


@pytest.mark.parametrize("how", ["modify", "delete", "extra", "case_json"])
def test_tampered_files_are_refused_by_name(vector_copy, how):
    name = _tamper(vector_copy, how)
    with pytest.raises(fmt.IntegrityError) as info:
        _verify(refsnn_adapter.run, vectors=str(vector_copy / "vectors"), suites=["bitpack"])
    assert [f for f, _ in info.value.problems] == [name]
    # the untouched suites still verify
    result, _ = _verify(refsnn_adapter.run, vectors=str(vector_copy / "vectors"), suites=["layers"])
    assert result.ok


def test_cli_refuses_tampered_vectors(vector_copy):
    name = _tamper(vector_copy, "modify")
    p = _cli("verify", "--adapter", "refsnn.conformance.adapters.refsnn_adapter:run",
             "--vectors", str(vector_copy / "vectors"), "--suite", "bitpack")
    assert p.returncode == 2
    assert "refused" in p.stderr and name in p.stderr


def test_select_cases_glob():
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    sel = select_cases(manifest, None, "lif/worked-*")
    assert sel == [("lif", "worked-example-defaults"), ("lif", "worked-example-soft-reset-not-detached")]
    assert select_cases(manifest, ["bitpack"], "unpack-*") == [
        ("bitpack", "unpack-qkca-tokens"), ("bitpack", "unpack-qkta-heads")]


def test_manifest_records_versions_and_every_file():
    manifest = fmt.load_manifest(os.path.join(COMMITTED, "MANIFEST.json"))
    assert manifest["spec_version"] == fmt.SPEC_VERSION
    assert {"numpy", "numba", "refsnn"} <= set(manifest["versions"])
    assert set(manifest["suites"]) == set(SUITES)
    on_disk = {os.path.relpath(os.path.join(d, f), COMMITTED).replace(os.sep, "/")
               for d, _, fs in os.walk(VECTORS) for f in fs}
    assert on_disk == set(manifest["files"])


def test_refsnn_adapter_names_an_unknown_op():
    with pytest.raises(ValueError, match="'conv3d'"):
        refsnn_adapter.run({"op": "conv3d"}, {})

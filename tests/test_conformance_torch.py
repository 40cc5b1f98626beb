"""The PyTorch port (examples/torch_port) passes the committed conformance vectors: every suite
in float64, the per-op suites at the float32 tolerances in float32 (issue 7). Skipped without
torch; CI installs torch==2.13.0 and runs the same check through the command line."""
import io
import os

import pytest

torch = pytest.importorskip("torch")
# the tensors here are tiny: one intra-op thread avoids OpenMP spin-waiting, which on a shared
# 2-core machine made these tests 20x slower
torch.set_num_threads(1)

from examples.torch_port import adapter  # noqa: E402
from refsnn.conformance.verify import verify  # noqa: E402

VECTORS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conformance", "vectors")
PER_OP = ["lif", "layers", "qk", "cmqka", "bitpack"]


def _run(**kw):
    out = io.StringIO()
    kw.setdefault("quiet", True)
    result = verify(adapter.run, VECTORS, out=out, **kw)
    return result, out.getvalue()


def test_torch_port_passes_every_suite_in_float64():
    result, text = _run()
    assert result.ok, text
    n = result.counts()
    assert n["failed"] == n["error"] == n["skipped"] == 0


def test_torch_port_passes_per_op_suites_in_float32():
    result, text = _run(suites=PER_OP, dtype="float32")
    assert result.ok, text
    assert result.counts()["skipped"] == 0


def test_float32_run_skips_the_float64_only_suites():
    result, _ = _run(suites=["snnergy-tiny", "snnergy-small", "energy"], dtype="float32")
    assert result.counts()["skipped"] == len(result.cases) and not result.ok


# -- issue 15: every new case family fails a deliberately wrong port --------------------------------------
#
# Each mutation below is a plausible port bug, applied to the torch port by monkeypatching one
# function. For the per-op families the mutated port still passes every case that existed
# before issue 15 (the gap those cases left open) and fails the new ones; for the model
# families (new geometry, baseline fusions) the new cases fail. docs/conformance.md lists them.

from examples.torch_port import fusion as port_fusion  # noqa: E402
from examples.torch_port import model as port_model  # noqa: E402
from examples.torch_port import ops as port_ops  # noqa: E402
from examples.torch_port.config import PortConfig  # noqa: E402
from examples.torch_port.lif import lif as port_lif  # noqa: E402
from refsnn.conformance import format as fmt  # noqa: E402

MANIFEST = fmt.load_manifest(os.path.join(os.path.dirname(VECTORS), "MANIFEST.json"))

# the cases of issue 15, by family (suite, case-name predicate)
NEW_BATCH_HEADS = [c for c in MANIFEST["suites"]["cmqka"] if c.startswith(("batch2-", "batch3-"))]
NEW_ATTENTION_RESET = ([("cmqka", c) for c in MANIFEST["suites"]["cmqka"] if c.startswith("attention-vreset")]
                       + [("qk", c) for c in MANIFEST["suites"]["qk"] if "hard-reset-vreset" in c])
NEW_SSA = [c for c in MANIFEST["suites"]["qk"] if c.startswith("ssa-scale")]
OLD_CMQKA = [c for c in MANIFEST["suites"]["cmqka"] if c not in NEW_BATCH_HEADS
             and not c.startswith("attention-vreset")]
OLD_QK = [c for c in MANIFEST["suites"]["qk"] if "hard-reset-vreset" not in c and not c.startswith("ssa-scale")]


def _statuses(suite, names):
    out = {}
    for name in names:
        result, _ = _run(suites=[suite], pattern=name)
        (rec,) = result.cases
        out[name] = rec["status"]
    return out


def _assert_old_pass_new_fail(suite, old, new):
    got_old, got_new = _statuses(suite, old), _statuses(suite, new)
    assert all(s == "passed" for s in got_old.values()), got_old     # the gap before issue 15
    assert new and all(s in ("failed", "error") for s in got_new.values()), got_new


def test_issue15_case_lists_are_what_the_docs_name():
    assert len(NEW_BATCH_HEADS) == 5 and len(NEW_SSA) == 2 and len(NEW_ATTENTION_RESET) == 6
    assert OLD_CMQKA and OLD_QK


def _neuron_wrapper(change):
    def mutated(x, options=None, **kw):
        o = options if options is not None else port_ops.LIFOptions(**kw)
        return port_lif(x, change(o))
    return mutated


def test_attention_neuron_ignoring_v_reset_fails_the_new_reset_cases(monkeypatch):
    # ops.lif is the attention LIF (QKTA, QKCA, SSA cores); the hard reset goes to 0
    monkeypatch.setattr(port_ops, "lif", _neuron_wrapper(
        lambda o: o.replace(v_reset=0.0) if o.v_reset is not None else o))
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, [c for s, c in NEW_ATTENTION_RESET if s == "cmqka"])
    _assert_old_pass_new_fail("qk", OLD_QK, [c for s, c in NEW_ATTENTION_RESET if s == "qk"])


def test_attention_neuron_ignoring_alpha_fails_the_new_reset_cases(monkeypatch):
    monkeypatch.setattr(port_ops, "lif", _neuron_wrapper(lambda o: o.replace(alpha=None)))
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, [c for s, c in NEW_ATTENTION_RESET if s == "cmqka"])
    _assert_old_pass_new_fail("qk", [c for c in OLD_QK if not c.startswith("ssa")],
                              [c for s, c in NEW_ATTENTION_RESET if s == "qk" and not c.startswith("ssa")])


def test_attention_neuron_copied_from_the_projection_neuron_fails(monkeypatch):
    original = port_model._CMQKADirection.__init__

    def init(self, dim, heads, mask, neuron, attention_neuron, momentum, eps):
        original(self, dim, heads, mask, neuron, neuron.replace(v_threshold=0.5), momentum, eps)

    monkeypatch.setattr(port_model._CMQKADirection, "__init__", init)
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, [c for s, c in NEW_ATTENTION_RESET if s == "cmqka"])


def test_heads_hard_coded_to_two_fails_the_new_head_cases(monkeypatch):
    real = port_model.qk_token
    monkeypatch.setattr(port_model, "qk_token", lambda q, k, heads, neuron: real(q, k, 2, neuron))
    new = [c for c in NEW_BATCH_HEADS if "heads" in c and "token" in c]
    assert len(new) == 3
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, new)


def test_batch_axis_mixed_fails_the_new_batch_cases(monkeypatch):
    # the key map read as [B, T, ...] memory ([T, B] swapped): a no-op at B = 1
    original = port_model._CMQKADirection.forward

    def forward(self, x_q, x_k):
        return original(self, x_q, x_k.transpose(0, 1).reshape(x_k.shape))

    monkeypatch.setattr(port_model._CMQKADirection, "forward", forward)
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, NEW_BATCH_HEADS)


def test_qkca_summing_over_the_batch_fails_the_new_batch_cases(monkeypatch):
    def qk_channel(q, k, neuron):
        p = q.sum((1, 2), keepdim=True).expand(q.shape[0], q.shape[1], 1, q.shape[3])[:, :, 0]
        a = port_lif(p.contiguous(), neuron)
        return a.unsqueeze(2) * k, a

    monkeypatch.setattr(port_model, "qk_channel", qk_channel)
    _assert_old_pass_new_fail("cmqka", OLD_CMQKA, [c for c in NEW_BATCH_HEADS if "channel-" in c])


def test_ssa_scale_or_neuron_hard_coded_fails_the_new_ssa_cases(monkeypatch):
    from examples.torch_port import adapter as port_adapter
    real = port_adapter.ssa
    old_ssa = [c for c in OLD_QK if c.startswith("ssa")]
    monkeypatch.setattr(port_adapter, "ssa", lambda q, k, v, heads, scale, neuron: real(q, k, v, heads, 0.125, neuron))
    _assert_old_pass_new_fail("qk", old_ssa, NEW_SSA)
    monkeypatch.setattr(port_adapter, "ssa", lambda q, k, v, heads, scale, neuron: real(
        q, k, v, heads, scale, port_ops.ATTENTION_LIF))
    _assert_old_pass_new_fail("qk", old_ssa, NEW_SSA)


# -- the whole-model families ------------------------------------------------------------------------------

OLD_MODEL = list(MANIFEST["suites"]["snnergy-tiny"])


def _model_statuses(names):
    return _statuses("snnergy-small", names)


def test_blocks_run_in_reverse_order_fails_depth2(monkeypatch):
    def run_blocks(self, tokens):
        for block in reversed(self.blocks):
            tokens = block(tokens)
        return tokens

    monkeypatch.setattr(port_model.Stage, "run_blocks", run_blocks)
    assert set(_statuses("snnergy-tiny", OLD_MODEL).values()) == {"passed"}
    assert _model_statuses(["depth2-t3"]) == {"depth2-t3": "failed"}


def test_T_hard_coded_to_two_fails_the_t3_cases(monkeypatch):
    from_dict = PortConfig.from_dict.__func__
    monkeypatch.setattr(PortConfig, "from_dict", classmethod(lambda cls, d: from_dict(cls, {**d, "T": 2})))
    assert set(_statuses("snnergy-tiny", OLD_MODEL).values()) == {"passed"}
    got = _model_statuses(["depth2-t3", "audio-only-t3-nodecay-fast-sigmoid"])
    assert set(got.values()) <= {"failed", "error"}, got


@pytest.mark.parametrize("change", [dict(decay_input=True), dict(surrogate="sigmoid")],
                         ids=["decay_input-ignored", "fast_sigmoid-as-sigmoid"])
def test_model_neuron_option_ignored_fails_the_nodecay_fast_sigmoid_case(monkeypatch, change):
    neuron = PortConfig.neuron

    def mutated(self):
        o = neuron(self)
        return o.replace(**change) if o.surrogate == "fast_sigmoid" or not o.decay_input else o

    monkeypatch.setattr(PortConfig, "neuron", mutated)
    assert set(_statuses("snnergy-tiny", OLD_MODEL).values()) == {"passed"}
    got = _model_statuses(["audio-only-t3-nodecay-fast-sigmoid"])
    assert set(got.values()) == {"failed"}, got


def test_ssa_cross_as_self_attention_fails(monkeypatch):
    def forward(self, x_a, x_v):          # each direction reads its own modality only
        alpha, beta = self.weights()
        return x_a + alpha * self.audio_from_visual(x_a, x_a), x_v + beta * self.visual_from_audio(x_v, x_v)

    monkeypatch.setattr(port_fusion.SSACrossFusion, "forward", forward)
    assert _model_statuses(["ssa-cross"]) == {"ssa-cross": "failed"}


def test_mbt_bottlenecks_from_one_modality_fail(monkeypatch):
    original = port_fusion.MBTFusion.forward

    def forward(self, x_a, x_v):
        y_a, y_v = original(self, x_a, x_v)
        N = x_a.shape[2]
        z = self._bottlenecks_in(x_a.shape[0], x_a.shape[1])
        u = torch.cat([x_a, z], dim=2)
        self.bottleneck_out = z + self.audio_attn(u)[:, :, N:]     # Z_a instead of (Z_a + Z_v) / 2
        return y_a, y_v

    monkeypatch.setattr(port_fusion.MBTFusion, "forward", forward)
    assert _model_statuses(["mbt-from-stage-2"]) == {"mbt-from-stage-2": "failed"}


def test_factorized_pair_halves_swapped_fail(monkeypatch):
    # [g_v[j] ; g_a[i]] instead of [g_a[i] ; g_v[j]]. (The order of the pairs along the token
    # axis is not observable: the fuse attention and BatchNorm are invariant to a permutation
    # of the pair tokens; SPEC fixes it for definiteness only.)
    real = port_fusion.pair_tokens

    def swapped(g_a, g_v):
        p = real(g_a, g_v)
        D = g_a.shape[3]
        return torch.cat([p[..., D:], p[..., :D]], dim=3)

    monkeypatch.setattr(port_fusion, "pair_tokens", swapped)
    assert _model_statuses(["factorized"]) == {"factorized": "failed"}

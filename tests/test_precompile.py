"""The helper process that compiles a training step's kernels on a cold cache (issue 13,
refsnn.precompile): its ops cover the model's step, the claims let two processes split the
compilation, and a run with the helper leaves nothing behind, even when the helper fails."""
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from refsnn import precompile
from refsnn.data import load_dataset
from refsnn.models import config
from refsnn.train import fit

SMALL = dict(n_train=16, n_val=8, n_test=8)


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_claims_one_holder_the_other_waits_until_done_or_death(tmp_path):
    a, b = precompile._Claims(), precompile._Claims()
    a.folder = b.folder = str(tmp_path)
    assert a.claim("k") and not b.claim("k")
    a.release("k")
    b.wait("k")                                   # returns: done
    # a holder that died without finishing, not yet reaped (a zombie), then reaped: the
    # waiter stops waiting (and compiles itself)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    (tmp_path / "j.claim").write_text(str(dead.pid))
    while precompile._alive(dead.pid):
        time.sleep(0.01)
    b.wait("j")
    dead.wait()
    b.wait("j")
    # no helper: everything is compiled here
    c = precompile._Claims()
    assert c.claim("k") and c.claim("k")


def test_the_helpers_ops_compile_every_kernel_of_the_default_step():
    """After the helper's ops, a training step of the default (cpu) model at batch 16 finds
    every kernel it calls already compiled (in memory here; on disk in the helper)."""
    script = textwrap.dedent("""
        import numpy as np
        from numba.core.dispatcher import Dispatcher
        import sys
        from refsnn.models import config
        from refsnn.models.snnergy import SNNergy
        from refsnn.precompile import step_ops, run_ops

        def signatures():
            return {(name, k, str(s)) for name, m in list(sys.modules.items()) if name.startswith("refsnn")
                    for k, v in vars(m).items() if isinstance(v, Dispatcher) for s in v.signatures}

        c = config("cpu", classes=8)
        model = SNNergy(c, seed=0)
        assert run_ops(step_ops(model)) == []
        before = signatures()
        rng = np.random.default_rng(0)
        B, S = 16, c.image_size
        logits = model.forward(rng.normal(size=(B, 1, S, S)).astype(np.float32),
                               rng.random((B, c.T, 3, S, S)).astype(np.float32))
        model.backward(rng.normal(size=logits.shape).astype(np.float32))
        missing = sorted(signatures() - before)
        print("\\n".join(map(str, missing)))
        sys.exit(1 if missing else 0)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, "kernels the step compiled that the helper did not:\n" + r.stdout + r.stderr[-3000:]


def test_the_helper_compiles_the_winograd_kernels_first_where_the_model_takes_that_path():
    """The `paper` stage convolutions take the Winograd path (F(4x4, 3x3)) at batch 8: the
    helper compiles its kernels before anything else; the `cpu` ones do not."""
    from refsnn.models.snnergy import SNNergy
    from refsnn.nn.layers import Conv2d
    paper = SNNergy(config("paper"), seed=0)
    ops = precompile.step_ops(paper, batch_size=8)
    assert ops[0][0] == "('winograd', 4)" and sum("winograd" in name for name, _ in ops) == 1
    sides = paper.conv_sides()
    convs = [m for _, m in paper.named_modules() if isinstance(m, Conv2d)]
    assert set(sides) == set(convs)
    assert {precompile._winograd_tiles(m, sides[m], 32) for m in convs} == {None, 4}   # stems: None
    cpu = SNNergy(config("cpu"), seed=0)
    assert not any("winograd" in name for name, _ in precompile.step_ops(cpu, batch_size=8))


@pytest.mark.parametrize("side", [32, 30])
def test_declared_conv_sides_are_those_of_a_forward(side):
    """``SNNergy.conv_sides`` (what the helper judges the Winograd path by) against the input
    each convolution receives in a forward, odd halvings included."""
    import numpy as np
    from refsnn.models.snnergy import SNNergy
    from refsnn.nn.layers import Conv2d
    model = SNNergy(config("tiny", image_size=side), seed=0)
    rng = np.random.default_rng(0)
    model.forward(rng.normal(size=(2, 1, side, side)).astype(np.float32),
                  rng.random((2, model.config.T, 3, side, side)).astype(np.float32))
    sides = model.conv_sides()
    for _, m in model.named_modules():
        if isinstance(m, Conv2d):
            assert m._cache.x.shape[2:] == (sides[m], sides[m])


@pytest.mark.parametrize("helper", ["refsnn.precompile", "refsnn.no_such_helper"])
def test_a_run_with_the_helper_trains_and_leaves_nothing(tmp_path, monkeypatch, helper):
    """REFSNN_PRECOMPILE=1 starts the helper even on a warm cache; a helper that fails at
    once (a module that does not exist) changes nothing but the time."""
    monkeypatch.setenv("REFSNN_PRECOMPILE", "1")
    monkeypatch.setattr(precompile.Precompiler, "module", helper)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    started = []
    original = precompile.Precompiler.start

    def start(self):
        out = original(self)
        started.append(self.process is not None)
        return out

    monkeypatch.setattr(precompile.Precompiler, "start", start)
    data = {s: load_dataset("synthetic", s, image_size=32, seed=0, **SMALL) for s in ("train", "val", "test")}
    rep = fit(config("tiny"), data, out=tmp_path / "run", epochs=1, batch_size=8, threads=2,
              progress=False, verbose=False, stop_after_steps=1)
    assert rep["status"] == "interrupted"
    assert started == [True]
    assert list(temp.iterdir()) == []             # the claims folder is removed
    assert _children(os.getpid()) == []           # the helper has ended (and was reaped)
    assert precompile._CLAIMS is None or precompile._CLAIMS.folder is None

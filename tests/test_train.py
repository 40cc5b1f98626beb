"""Training, checkpoints, exact resume, the command lines, and their bad input (issue 6)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refsnn.checkpoint import load_checkpoint, load_model
from refsnn.data import load_dataset
from refsnn.data.base import Dataset
from refsnn.models import config
from refsnn.train import TrainingError, fit

TINY = config("tiny")
SMALL = dict(n_train=48, n_val=16, n_test=16)
OPTS = dict(batch_size=8, lr=2e-3, warmup_epochs=0.5, threads=1, energy_batches=1)
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def splits(seed=0, **sizes):
    sizes = {**SMALL, **sizes}
    return {s: load_dataset("synthetic", s, image_size=32, seed=seed, **sizes) for s in ("train", "val", "test")}


def weights(path):
    return load_checkpoint(path).model_state


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    oa, ob = load_checkpoint(a).optim_state, load_checkpoint(b).optim_state
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)


def test_fit_writes_the_run_directory(tmp_path):
    rep = fit(TINY, splits(), out=tmp_path, epochs=2, progress=False, **OPTS)
    assert rep["status"] == "finished"
    assert sorted(os.listdir(tmp_path)) == ["best.npz", "last.npz", "metrics.jsonl", "report.json"]
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["epoch"] for x in lines] == [1, 2]
    for line in lines:
        assert set(line) == {"epoch", "epochs", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                             "epoch_time_s", "samples_per_s"}
    saved = json.load(open(tmp_path / "report.json"))
    assert set(saved["test"]) >= {"accuracy", "per_class_accuracy", "confusion"}
    assert len(saved["test"]["confusion"]) == 8 and len(saved["test"]["per_class_accuracy"]) == 8
    assert sum(map(sum, saved["test"]["confusion"])) == 16
    for key in ("energy", "firing_rates", "wall_time_s", "config", "versions"):
        assert key in saved
    assert saved["config"]["classes"] == 8                  # from the data set
    ck = load_checkpoint(tmp_path / "last.npz")
    assert ck.meta["class_names"][0] == "tone+disc" and ck.meta["state"]["epoch"] == 2
    assert ck.optim_state and ck.sched_state
    model = load_model(tmp_path / "best.npz")
    assert not model.training and model.config.classes == 8


def test_resume_after_an_epoch_is_bit_identical(tmp_path):
    data = splits()
    fit(TINY, data, out=tmp_path / "straight", epochs=2, progress=False, **OPTS)
    fit(TINY, data, out=tmp_path / "split", epochs=2, progress=False, stop_after_steps=6, **OPTS)  # = 1 epoch
    assert load_checkpoint(tmp_path / "split" / "last.npz").meta["state"]["epoch"] == 1
    fit(TINY, data, out=tmp_path / "split", epochs=2, progress=False, resume=True, **OPTS)
    assert_same_run(tmp_path / "straight" / "last.npz", tmp_path / "split" / "last.npz")
    a = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "split" / "metrics.jsonl")]
    for x, y in zip(a, b):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert x[k] == y[k], k


def test_resume_mid_epoch_with_augmentation_is_bit_identical(tmp_path):
    data = splits()
    opts = dict(OPTS, crop=True, flip=True, specaugment=True, mixup=0.2)
    fit(TINY, data, out=tmp_path / "straight", epochs=2, progress=False, **opts)
    rep = fit(TINY, data, out=tmp_path / "split", epochs=2, progress=False, stop_after_steps=4, **opts)
    assert rep["status"] == "interrupted"
    state = load_checkpoint(tmp_path / "split" / "last.npz").meta["state"]
    assert (state["epoch"], state["batch"]) == (0, 4)       # inside the first epoch
    rep = fit(TINY, data, out=tmp_path / "split", epochs=2, progress=False, resume=True, stop_after_steps=5, **opts)
    assert rep["status"] == "interrupted"                   # interrupted again, in epoch 2
    fit(TINY, data, out=tmp_path / "split", epochs=2, progress=False, resume=True, **opts)
    assert_same_run(tmp_path / "straight" / "last.npz", tmp_path / "split" / "last.npz")


def test_bad_training_input(tmp_path):
    data = splits()
    with pytest.raises(ValueError, match="--batch-size: 64 is larger than the training set"):
        fit(TINY, data, out=tmp_path / "a", **dict(OPTS, batch_size=64), progress=False)
    with pytest.raises(ValueError, match="nothing to resume"):
        fit(TINY, data, out=tmp_path / "b", resume=True, progress=False, **OPTS)
    fit(TINY, data, out=tmp_path / "c", epochs=1, progress=False, **OPTS)
    with pytest.raises(ValueError, match="already holds a run"):
        fit(TINY, data, out=tmp_path / "c", epochs=1, progress=False, **OPTS)
    with pytest.raises(ValueError, match=r"made by another run: --fusion \(fusion: 'cmqka' != 'concat'\)"):
        fit(TINY.replace(fusion="concat"), data, out=tmp_path / "c", epochs=2, resume=True, progress=False, **OPTS)
    with pytest.raises(ValueError, match="made by another run: .*lr"):
        fit(TINY, data, out=tmp_path / "c", epochs=1, resume=True, progress=False, **dict(OPTS, lr=1e-2))
    corrupt = tmp_path / "c" / "last.npz"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    with pytest.raises(ValueError, match="last.npz: not a readable .npz"):
        fit(TINY, data, out=tmp_path / "c", epochs=2, resume=True, progress=False, **OPTS)
    with pytest.raises(ValueError, match="unknown training option"):
        fit(TINY, data, out=tmp_path / "d", epochs=1, progress=False, learning_rate=1.0)


class PoisonAfter(Dataset):
    """A data set whose clips turn to NaN after ``calls`` batches (a corrupt file mid-run)."""

    def __init__(self, base, calls):
        super().__init__(base.name, base.split, base.class_names, base._audio, base._frames,
                         base._all_labels, base._all_clip_ids, base._rows)
        self.calls = calls

    def arrays(self, indices):
        audio, frames, labels = super().arrays(indices)
        self.calls -= 1
        if self.calls < 0:
            audio[:] = np.nan
        return audio, frames, labels


def test_non_finite_values_stop_and_keep_the_last_good_checkpoint(tmp_path):
    data = splits()
    data["train"] = PoisonAfter(data["train"], calls=6)          # epoch 1 is fine, epoch 2 breaks
    with pytest.raises(TrainingError, match=r"non-finite values appeared .*audio.* at step 7 .*"
                                            r"last finite loss was \d") as e:
        fit(TINY, data, out=tmp_path, epochs=3, progress=False, **OPTS)
    assert "last.npz" in str(e.value)
    ck = load_checkpoint(tmp_path / "last.npz")
    assert ck.meta["state"]["epoch"] == 1
    assert all(np.isfinite(v).all() for v in ck.model_state.values())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the divergence itself
def test_divergence_stops_with_the_step_and_last_finite_loss(tmp_path):
    # an absurd learning rate sends the weights to ~1e37 after one step: the next forward
    # overflows, a LIF neuron sees inf or NaN, and training stops
    with pytest.raises(TrainingError, match=r"at step 2 .*last finite loss was \d.*none was written yet"):
        fit(TINY, splits(), out=tmp_path, epochs=1, progress=False,
            **dict(OPTS, lr=1e37, warmup_epochs=0.0, weight_decay=0.0))


# ------------------------------------------------------------------------ command lines

def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


def test_cli_short_tiny_training_and_the_other_commands(tmp_path):
    out = tmp_path / "run"
    r = run_cli("refsnn.train", "--recipe", "synthetic-tiny", "--epochs", "3", "--batch-size", "16",
                "--data-option", "n_train=192", "--data-option", "n_val=32", "--data-option", "n_test=32",
                "--out", str(out), "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]           # the loss falls
    assert json.loads(r.stdout.strip().splitlines()[-1])["run"] == str(out)
    assert {"best.npz", "last.npz", "metrics.jsonl", "report.json"} <= set(os.listdir(out))
    r = run_cli("refsnn.evaluate", str(out / "best.npz"), "--no-progress", "--json", "--energy-batches", "1")
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["accuracy"] <= 1
    pytest.importorskip("matplotlib")
    r = run_cli("refsnn.plot", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "curves.png").stat().st_size > 1000 and (out / "firing_rates.png").exists()
    assert (out / "energy.png").stat().st_size > 1000


def test_cli_sigint_saves_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "refsnn.train", "--config", "tiny", "--epochs", "50",
                             "--batch-size", "8", "--out", str(out), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    buf = ""
    while time.time() < deadline:           # wait until training steps are running
        ch = proc.stderr.read(1)
        if not ch:
            break
        buf += ch
        if "batch/s" in buf or "s/batch" in buf:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, buf + stderr
    assert "resume with: python -m refsnn.train" in stderr and "--resume" in stderr
    state = load_checkpoint(out / "last.npz").meta["state"]
    assert state["step"] >= 1


@pytest.mark.parametrize("args, message", [
    (["--data", "imagenet"], "--data: expected one of ['synthetic', 'ave', 'cremad', 'urbansound8k-av'], got 'imagenet'"),
    (["--fusion", "late"], "--fusion: expected one of ['cmqka', 'concat', 'ssa-cross', 'mbt', 'factorized'], got 'late'"),
    (["--set", "T=0"], "'T' must be a positive integer"),
    (["--data", "ave", "--root", "/nonexistent/AVE"], "/nonexistent/AVE"),
    (["--data", "ave", "--cache", "/nonexistent/cache"], "prepare"),
])
def test_cli_bad_input_is_a_message_not_a_traceback(tmp_path, args, message):
    r = run_cli("refsnn.train", "--out", str(tmp_path / "x"), "--no-progress", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_evaluate_bad_checkpoint(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"garbage")
    r = run_cli("refsnn.evaluate", str(bad))
    assert r.returncode == 2 and "not a readable .npz" in r.stderr and "Traceback" not in r.stderr
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    r = run_cli("refsnn.evaluate", str(tmp_path / "plain.npz"))
    assert r.returncode == 2 and "not a refsnn checkpoint" in r.stderr


# ------------------------------------------------------------------------ the loop's structure (issue 12)

def test_on_epoch_end_hook_sees_every_epoch(tmp_path):
    seen = []
    fit(TINY, splits(), out=tmp_path, epochs=2, progress=False, verbose=False,
        on_epoch_end=lambda epoch, metrics: seen.append((epoch, metrics["epochs"], metrics["val_accuracy"])), **OPTS)
    assert [e for e, _, _ in seen] == [1, 2] and all(n == 2 for _, n, _ in seen)
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [v for _, _, v in seen] == [x["val_accuracy"] for x in lines]


def test_training_functions_are_short():
    import ast
    import inspect

    import refsnn.evaluation
    import refsnn.train
    import refsnn.training
    for module in (refsnn.training, refsnn.train, refsnn.evaluation):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 50, (module.__name__, node.name)


# ------------------------------------------------------------------------ extending a finished run (issue 15)

def test_resume_with_more_epochs_extends_a_finished_run(tmp_path):
    data = splits()
    fit(TINY, data, out=tmp_path, epochs=1, progress=False, verbose=False, **OPTS)
    ck1 = load_checkpoint(tmp_path / "last.npz")
    assert int(ck1.sched_state["total_steps"]) == 6
    rep = fit(TINY, data, out=tmp_path, epochs=3, resume=True, progress=False, verbose=False, **OPTS)
    assert rep["status"] == "finished"
    ck = load_checkpoint(tmp_path / "last.npz")
    assert ck.meta["state"]["epoch"] == 3 and ck.meta["options"]["epochs"] == 3
    assert int(ck.sched_state["total_steps"]) == 18 and int(ck.sched_state["warmup_steps"]) == 3
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and [x["epochs"] for x in lines] == [1, 3, 3]
    assert lines[1]["schedule"] == {"extended_at_step": 6, "epochs_before": 1, "epochs": 3, "total_steps": 18,
                                    "warmup_steps": 3}
    assert "schedule" not in lines[0] and "schedule" not in lines[2]
    # the learning rate follows the cosine of the new total from step 6 on
    from refsnn.optim import AdamW, CosineSchedule
    from refsnn.nn.module import Parameter
    sched = CosineSchedule(AdamW({"w": Parameter(np.zeros((2, 2), np.float32))}, lr=OPTS["lr"]), total_steps=18,
                           warmup_steps=3, min_lr=1e-5)
    assert lines[1]["lr"] == pytest.approx(sched.lr_at(12)) and lines[2]["lr"] == pytest.approx(sched.lr_at(18))
    with pytest.raises(ValueError, match=r"--epochs 2: the run in .* is already in epoch 3"):
        fit(TINY, data, out=tmp_path, epochs=2, resume=True, progress=False, **OPTS)


def test_cli_resume_alone_restores_the_options_and_extends(tmp_path):
    out = tmp_path / "r"
    common = ["--no-progress", "--out", str(out)]
    r = run_cli("refsnn.train", "--config", "tiny", "--epochs", "1", "--batch-size", "8", "--lr", "0.003",
                "--data-option", "n_train=32", "--data-option", "n_val=8", "--data-option", "n_test=8",
                "--set", "T=3", "--threads", "1", "--energy-batches", "1", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("refsnn.train", "--resume", "--lr", "0.01", "--set", "T=2", *common)     # other options: refused
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--lr (the run has 0.003, given 0.01)" in r.stderr and "--set T (T: 3 != 2)" in r.stderr
    assert "only --epochs may change" in r.stderr
    r = run_cli("refsnn.train", "--resume", "--epochs", "2", "--batch-size", "8", *common)  # the README's form
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(out / "last.npz")
    assert ck.meta["state"]["epoch"] == 2 and ck.config.T == 3
    assert ck.meta["options"]["lr"] == 0.003 and ck.meta["options"]["data_options"]["n_train"] == 32
    assert [json.loads(x)["epoch"] for x in open(out / "metrics.jsonl")] == [1, 2]

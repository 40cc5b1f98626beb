"""Bad input and interrupted runs around training (issue 15, sections 2 and 3): the run
directory's lock, a log that agrees with its checkpoint, Ctrl-C in the final test, checkpoints
that were edited or broken, options that cannot work, and the step-memory estimate."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from refsnn.checkpoint import load_checkpoint
from refsnn.data import load_dataset
from refsnn.data.base import Dataset
from refsnn.memory import cached_bytes, check_step_memory, estimate_step
from refsnn.models import config
from refsnn.models.snnergy import SNNergy
from refsnn.rundir import RunDirBusy
from refsnn.training import fit

TINY = config("tiny")
OPTS = dict(batch_size=8, lr=2e-3, warmup_epochs=0.5, threads=1, energy_batches=1)
QUIET = dict(progress=False, verbose=False)


def splits(**sizes):
    sizes = {**dict(n_train=24, n_val=8, n_test=8), **sizes}
    return {s: load_dataset("synthetic", s, image_size=32, seed=0, **sizes) for s in ("train", "val", "test")}


def lines(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    fit(TINY, splits(), out=out, epochs=1, **QUIET, **OPTS)
    return out


def edited_checkpoint(src, dst, *, meta=None, arrays=None):
    """A copy of checkpoint ``src`` with its meta changed by ``meta(dict)`` and arrays replaced."""
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if meta is not None:
        m = json.loads(str(data["meta"]))
        meta(m)
        data["meta"] = np.array(json.dumps(m))
    data.update(arrays or {})
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    np.savez(dst, **data)
    return dst


# ------------------------------------------------------------------------ the run directory

def test_a_second_run_in_a_locked_folder_stops_and_a_dead_holders_lock_is_no_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom refsnn.rundir import RunDir\n"
         f"with RunDir({str(out)!r}).locked():\n    print('locked', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=rf"another run \(pid {holder.pid}\) is training in this folder"):
            fit(TINY, splits(), out=out, epochs=1, **QUIET, **OPTS)
        assert not os.path.exists(out / "metrics.jsonl")
    finally:
        holder.send_signal(signal.SIGKILL)          # killed: its .lock file stays behind
        holder.wait()
    assert (out / ".lock").exists()
    rep = fit(TINY, splits(), out=out, epochs=1, **QUIET, **OPTS)
    assert rep["status"] == "finished" and not (out / ".lock").exists()


def test_a_fresh_run_starts_its_own_log_and_removes_stale_temporary_files(tmp_path):
    # a run killed while writing epoch 1's checkpoint: a log line, no last.npz, a .tmp file
    tmp_path.joinpath("metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 9.0}) + "\n")
    tmp_path.joinpath(".last.npz.4242.tmp").write_bytes(b"half a checkpoint")
    fit(TINY, splits(), out=tmp_path, epochs=1, **QUIET, **OPTS)
    assert [x["epoch"] for x in lines(tmp_path)] == [1] and lines(tmp_path)[0]["train_loss"] != 9.0
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_rewrites_the_log_from_the_checkpoint(tmp_path):
    data = splits()
    fit(TINY, data, out=tmp_path / "straight", epochs=2, **QUIET, **OPTS)
    out = tmp_path / "run"
    fit(TINY, data, out=out, epochs=2, stop_after_steps=3, **QUIET, **OPTS)     # = epoch 1 of 2
    first = lines(out)
    # a kill after a later epoch's line was appended, before its checkpoint: a line too many
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": 123.0}) + "\n")
    fit(TINY, data, out=out, epochs=2, resume=True, stop_after_steps=1, **QUIET, **OPTS)
    assert lines(out) == first
    # a kill after the checkpoint, before its line: the checkpoint's history restores it
    fit(TINY, data, out=out, epochs=2, resume=True, **QUIET, **OPTS)
    (out / "metrics.jsonl").write_text("")
    fit(TINY, data, out=out, epochs=2, resume=True, **QUIET, **OPTS)            # finished: tests again
    got, want = lines(out), lines(tmp_path / "straight")
    assert [x["epoch"] for x in got] == [1, 2]
    for x, y in zip(got, want):
        for k in ("train_loss", "train_accuracy", "val_accuracy", "lr"):
            assert x[k] == y[k]


def test_force_deletes_the_old_run_and_starts_a_fresh_log(tmp_path):
    data = splits()
    fit(TINY, data, out=tmp_path, epochs=2, **QUIET, **OPTS)
    (tmp_path / "notes.txt").write_text("mine")
    rep = fit(TINY, data, out=tmp_path, epochs=1, force=True, **QUIET, **dict(OPTS, seed=3))
    assert [x["epoch"] for x in lines(tmp_path)] == [1]
    assert rep["options"]["seed"] == 3 and load_checkpoint(tmp_path / "last.npz").meta["options"]["seed"] == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"                    # not a run file: kept


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("a file"), "is a file, not a folder"),
    (lambda p: None, "cannot create the folder"),
])
def test_out_that_cannot_hold_a_run_is_a_sentence(tmp_path, make, message, capsys):
    from refsnn.train import main
    target = tmp_path / "x" if message.startswith("is a file") else "/proc/refsnn-run"
    make(tmp_path / "x")
    assert main(["--config", "tiny", "--out", str(target), "--no-progress", "--data-option", "n_train=16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {target}: {message}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_a_sentence(tmp_path):
    tmp_path.joinpath("ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    with pytest.raises(ValueError, match="not writable"):
        fit(TINY, splits(), out=tmp_path / "ro", epochs=1, **QUIET, **OPTS)


# ------------------------------------------------------------------------ Ctrl-C in the final test

class InterruptedWhileRead(Dataset):
    """A test split that receives a Ctrl-C while its first batch is read."""

    def __init__(self, base):
        super().__init__(base.name, base.split, base.class_names, base._audio, base._frames,
                         base._all_labels, base._all_clip_ids, base._rows)
        self.sent = False

    def arrays(self, indices):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return super().arrays(indices)


def test_ctrl_c_during_the_final_test_writes_the_report_without_it(tmp_path, capsys):
    data = splits(n_test=80)
    data["test"] = InterruptedWhileRead(data["test"])
    rep = fit(TINY, data, out=tmp_path, epochs=1, resume_command="RESUME", **QUIET, **OPTS)
    assert rep["status"] == "interrupted" and rep["stage"] == "test" and rep["test"] is None
    saved = json.load(open(tmp_path / "report.json"))
    assert saved["status"] == "interrupted" and saved["resume"] == "RESUME" and saved["config"]["T"] == 2
    assert "the final test was stopped" in capsys.readouterr().err
    data["test"] = splits(n_test=80)["test"]
    rep = fit(TINY, data, out=tmp_path, epochs=1, resume=True, **QUIET, **OPTS)    # tests the finished run
    assert rep["status"] == "finished" and rep["test"]["samples"] == 80


# ------------------------------------------------------------------------ checkpoints

def test_edited_meta_is_named(finished_run, tmp_path):
    src = finished_run / "last.npz"
    cases = [
        (lambda m: m.pop("state"), "its meta has no 'state'"),
        (lambda m: m["state"].pop("step"), r"meta 'state' is missing \['step'\]"),
        (lambda m: m["state"].update(step=-100), r"meta state.step: expected an integer >= 0, got -100"),
        (lambda m: m["state"].update(epoch="one"), r"meta state.epoch: expected an integer >= 0, got 'one'"),
        (lambda m: m["state"].update(step=2), r"meta state.step 2 does not agree with epoch 1 and batch 0"),
        (lambda m: m.pop("options"), "its meta has no 'options'"),
        (lambda m: m["options"].update(lr="fast"), r"--lr: expected a finite number >= 0, got 'fast'"),
    ]
    for i, (edit, message) in enumerate(cases):
        out = tmp_path / str(i)
        edited_checkpoint(src, str(out / "last.npz"), meta=edit)
        with pytest.raises(ValueError, match=message) as e:
            fit(None, None, out=out, resume=True, **QUIET)
        assert str(out / "last.npz") in str(e.value)


def test_non_finite_or_lossy_weights_are_named(finished_run, tmp_path, capsys):
    from refsnn.evaluate import main
    state = load_checkpoint(finished_run / "last.npz").model_state
    name = "head.weight"
    nan = state[name].copy()
    nan[0, 0] = np.nan
    path = edited_checkpoint(finished_run / "last.npz", str(tmp_path / "nan.npz"), arrays={f"model.{name}": nan})
    assert main([path, "--no-progress"]) == 2
    assert f"{path}: parameter {name} contains NaN or inf" in capsys.readouterr().err
    path = edited_checkpoint(finished_run / "last.npz", str(tmp_path / "int.npz"),
                             arrays={f"model.{name}": state[name].astype(np.int64)})
    assert main([path, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert path in err and f"{name}: expected a floating array, got dtype int64" in err


def test_summary_of_a_checkpoint_refuses_config_and_set(finished_run, capsys):
    from refsnn.summary import main
    assert main(["--checkpoint", str(finished_run / "best.npz"), "--config", "tiny", "--set", "T=2"]) == 2
    assert "--checkpoint carries its own config; --config and --set cannot change it" in capsys.readouterr().err
    assert main(["--checkpoint", str(finished_run / "best.npz")]) == 0


# ------------------------------------------------------------------------ options

@pytest.mark.parametrize("args, message", [
    (["--warmup", "0", "--min-lr", "1"], "--min-lr 1.0 is above --lr 0.002"),
    (["--lr", "inf"], "--lr: expected a finite number >= 0, got inf"),
    (["--lr", "nan"], "--lr: expected a finite number >= 0, got nan"),
    (["--threads", "0"], "--threads: expected a positive integer, got 0"),
    (["--grad-clip", "-1"], "--grad-clip: expected a finite number > 0, got -1.0"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--data-option", "n_trian=3"], "--data-option: synthetic: unknown option(s) ['n_trian']"),
    (["--data-option", "n_train"], "--data-option: expected KEY=VALUE, got 'n_train'"),
    (["--set", "T=zero"], "--set: "),
    (["--resume", "--force"], "--resume and --force"),
])
def test_training_options_that_cannot_work_are_refused_up_front(tmp_path, args, message, capsys):
    from refsnn.train import main
    assert main(["--config", "tiny", "--out", str(tmp_path / "r"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r").exists()                    # nothing written


@pytest.mark.parametrize("args, message", [
    (["--top", "0"], "--top: expected a positive integer, got 0"),
    (["--top", "-1"], "--top: expected a positive integer, got -1"),
    (["--fps", "0"], "--fps: expected a frame rate > 0, got 0.0"),
    (["--frames", "0"], "--frames: expected a positive integer, got 0"),
])
def test_predict_options_that_cannot_work_are_refused(finished_run, args, message, capsys):
    from refsnn.predict import main
    assert main([str(finished_run / "best.npz"), "--video", "clip.mp4", *args]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------ step memory

def test_step_memory_estimate_agrees_with_the_caches():
    # image_size 16: stage 3's map is 1x1, where a probe of batch 1 left BatchNorm one value
    for c, batch in ((config("tiny", fusion="ssa-cross"), 4), (config("tiny", image_size=96, T=3), 2),
                     (config("tiny", image_size=16), 2)):
        model = SNNergy(c)
        rng = np.random.default_rng(0)
        s = c.image_size
        model.forward(rng.normal(size=(batch, 1, s, s)).astype(np.float32),
                      rng.random((batch, c.T, 3, s, s)).astype(np.float32))
        assert estimate_step(c).activations(batch) == pytest.approx(cached_bytes(model), rel=0.1)


def test_a_step_that_cannot_fit_is_refused_with_the_estimate(tmp_path, capsys):
    from refsnn.train import main
    assert main(["--config", "tiny", "--set", "T=1000000", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a training step of this run needs about" in err and "GiB" in err and "T=1000000" in err
    assert "Lower --batch-size, or T or image_size with --set" in err
    with pytest.raises(ValueError, match=r"needs about .* this machine has 1.0 MiB available"):
        check_step_memory(TINY, 8, available=2.0 ** 20)
    warning = check_step_memory(config("tiny", image_size=1024), 32, available=1e15)
    assert warning.startswith("warning: a training step of this run holds about") and "very slow" in warning
    assert "x the paper preset at batch 16" in warning
    assert check_step_memory(TINY, 8, available=1e15) is None

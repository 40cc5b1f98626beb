"""Data-parallel training over MPI (issue 14): the communicator, sharding, the reproducible
reduction, gradient accumulation, and, under ``mpiexec -n 2`` (skipped when mpi4py or mpiexec is
missing; .ci/run installs the ``mpi`` extra), training, faults, resume and prepare on 2 ranks."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refsnn import distributed as dist
from refsnn.data import BatchIterator, Dataset
from refsnn.distributed import (Communicator, GradientAccumulator, RankFailure, SingleProcess, check_divisible,
                                micro_batches)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")
# one thread per rank: 2 ranks on the 2-core CI machine, and bit-equal results need equal threads
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
for _var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
    ENV.pop(_var, None)
TIMEOUT = 420          # every 2-rank run; a hang fails the test instead of stalling CI


def mpirun(args, n=2, timeout=TIMEOUT, env=None):
    cmd = ["mpiexec", "-n", str(n), sys.executable] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)


class FakeRank(Communicator):
    """Rank ``rank`` of ``size`` for the collective-free parts (sharding, sizes)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def _toy(n=24, frames=2, size=8) -> Dataset:
    """Clip i: audio filled with i, label i % 3."""
    audio = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, size, size)).copy()
    fr = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None, None],
                         (n, frames, 3, size, size)).copy()
    return Dataset("toy", "train", ["a", "b", "c"], audio, fr, np.arange(n) % 3, [f"c{i}" for i in range(n)])


def _noise(batch, rng):
    """A transform whose draws show in the data: adds rng noise to the audio."""
    return batch.replace(audio=batch.audio + rng.random(batch.audio.shape, dtype=np.float32))


# ------------------------------------------------------------------------------- one process

def test_without_a_launcher_the_world_is_one_process(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist, "_WORLD", None)
    comm = dist.world()
    assert isinstance(comm, SingleProcess) and (comm.rank, comm.size) == (0, 1) and comm.is_root
    assert dist.rank_threads(comm, None) is None and dist.rank_threads(comm, 3) == 3
    assert comm.agree(None, stop=True) is True and comm.agree(None) is False
    with pytest.raises(ZeroDivisionError, match="boom"):        # one process: the error itself
        comm.agree(ZeroDivisionError("boom"))


def test_a_launcher_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setattr(dist, "_WORLD", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)             # import fails
    with pytest.raises(ValueError, match=r"MPI launcher with 2 ranks.*pip install -e \"\.\[mpi\]\""):
        dist.world()
    monkeypatch.setenv("REFSNN_DISTRIBUTED", "0")
    assert isinstance(dist.world(), SingleProcess)


def test_threads_per_rank_divide_the_cores():
    comm = FakeRank(0, 4)
    comm.local_size = 2
    cores = os.cpu_count()
    if len(os.sched_getaffinity(0)) == cores:
        assert dist.rank_threads(comm, None) == max(1, cores // 2)
    assert dist.rank_threads(comm, 5) == 5


def test_batch_size_must_divide_into_micro_batches():
    check_divisible(16, 2, 4)
    with pytest.raises(ValueError, match=r"--batch-size 12 .* 2 ranks x --accumulate 4 = 8 .* use --batch-size 8 or 16"):
        check_divisible(12, 2, 4)
    with pytest.raises(ValueError, match=r"--batch-size 5 .*--accumulate 2 = 2 .*4 or 6"):
        check_divisible(5, 1, 2)
    with pytest.raises(ValueError, match="accumulate: expected a positive integer"):
        check_divisible(8, 1, 0)


@pytest.mark.parametrize("size,accumulate", [(2, 1), (1, 2), (2, 2), (3, 1), (4, 2)])
def test_shards_are_disjoint_and_cover_each_global_batch(size, accumulate):
    ds, B, seed, epoch = _toy(24), 8 if size != 3 else 6, 5, 2
    steps = len(ds) // B
    plain = [list(b.clip_ids) for b in BatchIterator(ds, B, seed=seed, epoch=epoch, drop_last=True)]
    per_rank = []
    for r in range(size):
        it = micro_batches(ds, B, comm=FakeRank(r, size), accumulate=accumulate, seed=seed, epoch=epoch)
        assert len(it) == steps
        per_rank.append(list(it))
    for b in range(steps):
        groups = [per_rank[r][b] for r in range(size)]
        assert all(len(g) == accumulate and all(m.index == b for m in g) for g in groups)
        ids = [cid for g in groups for m in g for cid in m.clip_ids]
        assert ids == plain[b]                      # rank order x micro order = the batch's order


def test_k_ranks_see_the_clips_and_draws_of_accumulate_k():
    ds, B = _toy(24), 8
    single = list(micro_batches(ds, B, comm=SingleProcess(), accumulate=2, seed=1, epoch=3, transform=_noise))
    for r in range(2):
        shard = list(micro_batches(ds, B, comm=FakeRank(r, 2), seed=1, epoch=3, transform=_noise))
        for step_single, step_rank in zip(single, shard):
            np.testing.assert_array_equal(step_rank[0].audio, step_single[r].audio)
            assert step_rank[0].clip_ids == step_single[r].clip_ids


def test_one_micro_batch_is_the_plain_iterator():
    ds = _toy(24)
    a = [g[0] for g in micro_batches(ds, 8, comm=SingleProcess(), seed=4, epoch=1, start_batch=1, transform=_noise)]
    b = list(BatchIterator(ds, 8, seed=4, epoch=1, drop_last=True, start_batch=1, transform=_noise))
    assert [x.clip_ids for x in a] == [x.clip_ids for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.audio, y.audio)


def test_resumed_shards_continue_the_epoch():
    ds = _toy(24)
    full = list(micro_batches(ds, 8, comm=FakeRank(1, 2), accumulate=2, seed=0, epoch=0, transform=_noise))
    rest = list(micro_batches(ds, 8, comm=FakeRank(1, 2), accumulate=2, seed=0, epoch=0, start_batch=2,
                              transform=_noise))
    assert len(rest) == 1
    for x, y in zip(full[2], rest[0]):
        np.testing.assert_array_equal(x.audio, y.audio)
    assert list(micro_batches(ds, 8, comm=FakeRank(1, 2), seed=0, epoch=0, start_batch=3)) == []


def test_ordered_mean_is_a_float64_chain_in_rank_order():
    rng = np.random.default_rng(0)
    rows = [(rng.normal(size=50) * 10.0 ** rng.integers(-8, 8)).astype(np.float32) for _ in range(3)]
    expect = ((rows[0].astype(np.float64) + rows[1]) + rows[2]) / 3
    got = dist._ordered_mean(rows, 3, np.float32)
    np.testing.assert_array_equal(got, expect.astype(np.float32))
    np.testing.assert_array_equal(SingleProcess().ordered_mean(rows[0], 1, np.float32), rows[0])


def _tiny_model():
    from refsnn.models import SNNergy, config
    return SNNergy(config("tiny", classes=3), seed=0)


def _micro_inputs(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 1, 32, 32)).astype(np.float32), rng.random((n, 4, 3, 32, 32)).astype(np.float32),
            np.arange(n) % 3)


def _grads_and_buffers(model, inputs):
    from refsnn.functional import cross_entropy_backward, cross_entropy_forward
    model.zero_grad()
    audio, frames, labels = inputs
    _, cache = cross_entropy_forward(model.forward(audio, frames[:, :model.config.T]), labels)
    model.backward(cross_entropy_backward(cache))
    return ([p.grad.copy() for p in model.parameters().values()],
            {k: v.copy() for k, v in model.buffers().items()})


def test_accumulation_averages_gradients_and_statistics_of_the_micro_batches():
    micro = [_micro_inputs(2, s) for s in (1, 2)]
    separate = []
    for inputs in micro:                  # each micro-batch from the same start, in its own model
        separate.append(_grads_and_buffers(_tiny_model(), inputs))
    model = _tiny_model()
    acc = GradientAccumulator(model, SingleProcess(), accumulate=2)
    acc.begin()
    for inputs in micro:
        _grads_and_buffers(model, inputs)
        acc.add()
    acc.finish()
    for i, p in enumerate(model.parameters().values()):
        expect = ((separate[0][0][i].astype(np.float64) + separate[1][0][i]) / 2).astype(np.float32)
        np.testing.assert_array_equal(p.grad, expect)
    for k, v in model.buffers().items():
        expect = ((separate[0][1][k].astype(np.float64) + separate[1][1][k]) / 2).astype(np.float32)
        np.testing.assert_array_equal(v, expect, err_msg=k)
    assert any(not np.array_equal(v, _tiny_model().buffers()[k]) for k, v in model.buffers().items())
    assert acc.bytes_per_step == 0


def test_one_micro_batch_in_one_process_leaves_the_step_alone():
    model = _tiny_model()
    acc = GradientAccumulator(model, SingleProcess())
    acc.begin()
    grads, buffers = _grads_and_buffers(model, _micro_inputs(2, 1))
    acc.add()
    acc.finish()
    for g, p in zip(grads, model.parameters().values()):
        assert np.array_equal(g, p.grad)


def test_finish_checks_the_micro_batch_count():
    acc = GradientAccumulator(_tiny_model(), SingleProcess(), accumulate=2)
    acc.begin()
    acc.add()
    with pytest.raises(RuntimeError, match="1 micro-batches added, expected 2"):
        acc.finish()


def test_rank_failure_names_the_rank_and_keeps_the_exit_code():
    exc = RankFailure(1, 2, "TrainingError", "the loss became nan")
    assert str(exc) == "rank 1 of 2: the loss became nan" and exc.exit_code == 1
    assert RankFailure(0, 2, "ValueError", "x").exit_code == 2


# ------------------------------------------------------------------------------- 2 ranks: prepare

@pytest.fixture(scope="module")
def factory():
    sys.path.insert(0, os.path.join(HERE, "data"))
    import datafactory
    return datafactory


def _cache_files(report_dir):
    out = {}
    for name in ("audio.npy", "frames.npy"):
        out[name] = np.load(os.path.join(report_dir, name))
    with open(os.path.join(report_dir, "index.json")) as f:
        out["index"] = json.load(f)
    return out


@needs_mpi
def test_two_ranks_prepare_the_cache_of_one_process(factory, tmp_path):
    splits = {"train": [("Dog", f"d{i}") for i in range(5)] + [("Truck", "bad")],
              "val": [("Dog", "v1")], "test": [("Truck", "t1"), ("Dog", "t2")]}
    root = factory.make_ave(tmp_path / "ave", splits)
    factory.write_garbage(os.path.join(root, "AVE", "bad.mp4"))
    args = ["-m", "refsnn.data.prepare", "--data", "ave", "--root", root, "--image-size", "16",
            "--num-frames", "2", "--no-progress", "--workers", "1"]
    one = subprocess.run([sys.executable] + args + ["--cache", str(tmp_path / "one")], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=TIMEOUT)
    two = mpirun(args + ["--cache", str(tmp_path / "two")])
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("prepare ave:") == 1                  # rank 0 alone reports
    assert "9 clips listed, 8 decoded now" in two.stdout and "bad: corrupt video" in two.stdout
    d1 = [line.split(": ", 1)[1] for line in one.stdout.splitlines() if line.startswith("cache: ")][0]
    d2 = [line.split(": ", 1)[1] for line in two.stdout.splitlines() if line.startswith("cache: ")][0]
    a, b = _cache_files(d1), _cache_files(d2)
    assert a["index"] == b["index"]
    np.testing.assert_array_equal(a["audio.npy"], b["audio.npy"])
    np.testing.assert_array_equal(a["frames.npy"], b["frames.npy"])
    leftovers = [f for _, _, files in os.walk(d2) for f in files if f.endswith(".tmp")]
    assert leftovers == []


@needs_mpi
def test_a_bad_clip_under_strict_on_one_rank_stops_both(factory, tmp_path):
    splits = {"train": [("Dog", "d0"), ("Dog", "bad")] + [("Dog", f"d{i}") for i in range(1, 5)],
              "val": [("Dog", "v1")], "test": [("Dog", "t1")]}
    root = factory.make_ave(tmp_path / "ave", splits)
    factory.write_garbage(os.path.join(root, "AVE", "bad.mp4"))      # second clip: rank 1's share
    t0 = time.monotonic()
    proc = mpirun(["-m", "refsnn.data.prepare", "--data", "ave", "--root", root, "--image-size", "16",
                   "--num-frames", "2", "--no-progress", "--workers", "1", "--strict",
                   "--cache", str(tmp_path / "c")])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("error: rank 1 of 2: ave: clip bad (train): corrupt video") == 1, proc.stderr
    assert time.monotonic() - t0 < TIMEOUT


# ------------------------------------------------------------------------------- 2 ranks: training

FIT = dict(epochs=1, batch_size=8, lr=2e-3, warmup_epochs=0.5, energy_batches=1)
FIT_SCRIPT = os.path.join(HERE, "mpi_fit.py")


def fit_ranks(n=2, timeout=TIMEOUT, **spec):
    """``tests/mpi_fit.py`` on n ranks (n=1: one process without mpiexec, 1 thread)."""
    args = [FIT_SCRIPT, json.dumps({**FIT, **spec})]
    if n == 1:
        return subprocess.run([sys.executable] + args, cwd=REPO, env=ENV, capture_output=True, text=True,
                              timeout=timeout)
    return mpirun(args, n=n, timeout=timeout)


def _state(path):
    from refsnn.checkpoint import load_checkpoint
    return load_checkpoint(path)


def assert_same_weights(a, b):
    """Weights, BatchNorm statistics and optimizer state of two checkpoints, bit for bit."""
    ca, cb = _state(a), _state(b)
    for part in ("model_state", "optim_state", "sched_state"):
        x, y = getattr(ca, part), getattr(cb, part)
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{part} {k}")


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@needs_mpi
def test_two_ranks_equal_one_process_with_accumulate_two_bit_for_bit(tmp_path):
    """Acceptance: 2 ranks with --batch-size 8 == 1 process with --batch-size 8 --accumulate 2,
    after 3 steps at tiny, exactly: both sum the same two float32 gradients (and BatchNorm
    statistics) in float64 in the same order, with the same micro-batches and draws."""
    _ok(fit_ranks(2, out=str(tmp_path / "ranks"), stop_after_steps=3, crop=True, flip=True))
    _ok(fit_ranks(1, out=str(tmp_path / "acc"), stop_after_steps=3, crop=True, flip=True, accumulate=2, threads=1))
    _ok(fit_ranks(1, out=str(tmp_path / "plain"), stop_after_steps=3, crop=True, flip=True, threads=1))
    assert_same_weights(tmp_path / "ranks" / "last.npz", tmp_path / "acc" / "last.npz")
    ranks, plain = _state(tmp_path / "ranks" / "last.npz"), _state(tmp_path / "plain" / "last.npz")
    assert ranks.meta["world_size"] == 2 and ranks.meta["accumulate"] == 1 and ranks.meta["state"]["step"] == 3
    assert _state(tmp_path / "acc" / "last.npz").meta["state"]["loss_sum"] == ranks.meta["state"]["loss_sum"]
    # one batch of 8 is another computation (BatchNorm over 8 clips): the comparison can fail
    assert any(not np.array_equal(v, plain.model_state[k]) for k, v in ranks.model_state.items())
    assert sorted(os.listdir(tmp_path / "ranks")) == ["last.npz"]          # rank 0 alone wrote


@needs_mpi
def test_the_same_ranks_give_the_same_bits_run_after_run(tmp_path):
    for name in ("a", "b"):
        _ok(fit_ranks(2, out=str(tmp_path / name), stop_after_steps=2, batch_size=16, accumulate=2))
    assert_same_weights(tmp_path / "a" / "last.npz", tmp_path / "b" / "last.npz")


@needs_mpi
def test_a_nan_on_one_rank_stops_both_with_its_message(tmp_path):
    """Acceptance: rank 1's loss becomes NaN at its second batch; both ranks stop at that step,
    rank 0 prints rank 1's message once, the exit code is 1, nothing hangs (TIMEOUT)."""
    t0 = time.monotonic()
    proc = fit_ranks(2, out=str(tmp_path / "run"), nan_on=[1, 2])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("error: rank 1 of 2: ") == 1, proc.stderr
    assert "at step 2 (epoch 1, batch 2)" in proc.stderr and ("the loss became nan" in proc.stderr
                                                              or "non-finite values" in proc.stderr)
    assert not (tmp_path / "run" / "last.npz").exists()        # no checkpoint of a diverged step
    assert time.monotonic() - t0 < TIMEOUT


@needs_mpi
def test_an_unexpected_error_on_one_rank_aborts_every_rank(tmp_path):
    """An exception outside the status checks (here rank 1's data fails between steps) ends
    every rank through MPI_Abort, with that rank's message and a non-zero exit."""
    proc = fit_ranks(2, out=str(tmp_path / "run"), crash_on=[1, 3], epochs=2)
    assert proc.returncode != 0
    assert "error: rank 1 of 2: injected: the disk holding the data went away; stopping every rank" in proc.stderr


@needs_mpi
def test_resume_with_the_same_ranks_continues_exactly(tmp_path):
    """Acceptance: 2 ranks stopped after 2 steps and resumed on 2 ranks give the weights of an
    uninterrupted 2-rank epoch; resumed on one process with --accumulate 2 (the same 2
    micro-batches per step) too."""
    _ok(fit_ranks(2, out=str(tmp_path / "straight"), stop_after_steps=5))
    _ok(fit_ranks(2, out=str(tmp_path / "resumed"), stop_after_steps=2))
    shutil.copytree(tmp_path / "resumed", tmp_path / "one")
    _ok(fit_ranks(2, out=str(tmp_path / "resumed"), resume=True, stop_after_steps=3))
    assert_same_weights(tmp_path / "straight" / "last.npz", tmp_path / "resumed" / "last.npz")
    proc = _ok(fit_ranks(1, out=str(tmp_path / "one"), resume=True, stop_after_steps=3, accumulate=2, threads=1))
    assert "the same micro-batches per step, so it continues exactly" in proc.stderr
    assert_same_weights(tmp_path / "straight" / "last.npz", tmp_path / "one" / "last.npz")


@needs_mpi
def test_resume_with_other_ranks_reshards_or_names_the_fix(tmp_path):
    """A 2-rank run resumed by one process (one micro-batch per step) continues the same
    global batches and finishes; a global batch the new ranks cannot split is a clear error."""
    _ok(fit_ranks(2, out=str(tmp_path / "run"), stop_after_steps=2, batch_size=6))
    bad = fit_ranks(2, out=str(tmp_path / "run"), resume=True, accumulate=2, batch_size=6)
    assert bad.returncode == 2 and bad.stderr.count("--batch-size 6 is the global batch") == 1, bad.stderr
    assert "2 ranks x --accumulate 2 = 4 equal micro-batches; use --batch-size 4 or 8" in bad.stderr
    proc = _ok(fit_ranks(1, out=str(tmp_path / "run"), resume=True, threads=1, batch_size=6))
    assert "now in 1 micro-batches instead of 2" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "finished"
    ck = _state(tmp_path / "run" / "last.npz")
    assert ck.meta["world_size"] == 1 and ck.meta["state"]["epoch"] == 1


@needs_mpi
@pytest.mark.slow
def test_a_finished_two_rank_run_validates_and_tests_like_one_process(tmp_path):
    """Sharded validation and test (batch i on rank i mod 2, losses summed in batch order)
    report what one process reports on the same weights: 2 ranks against --accumulate 2."""
    sizes = {"n_train": 32, "n_val": 40, "n_test": 40}        # 40 clips: batches of 32 and 8
    _ok(fit_ranks(2, out=str(tmp_path / "ranks"), sizes=sizes))
    _ok(fit_ranks(1, out=str(tmp_path / "one"), sizes=sizes, accumulate=2, threads=1))
    assert_same_weights(tmp_path / "ranks" / "best.npz", tmp_path / "one" / "best.npz")
    a, b = (json.load(open(tmp_path / d / "report.json")) for d in ("ranks", "one"))
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert a["test"] == b["test"] and a["test"]["samples"] == 40
    assert a["energy"]["totals"] == b["energy"]["totals"]
    ma, mb = (json.loads(open(tmp_path / d / "metrics.jsonl").read()) for d in ("ranks", "one"))
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert ma[key] == mb[key], key
    assert sorted(os.listdir(tmp_path / "ranks")) == ["best.npz", "last.npz", "metrics.jsonl", "report.json"]


@needs_mpi
@pytest.mark.slow
def test_ctrl_c_on_mpiexec_saves_last_once_and_resumes(tmp_path):
    """Ctrl-C on mpiexec reaches every rank; they agree to stop after the same step, rank 0
    saves last.npz once, every rank exits 0, and --resume continues."""
    out = tmp_path / "run"
    # 30 epochs of 150 steps: minutes of training on an idle machine, so the interrupt below
    # always lands mid-run (one epoch finished within the 8 s on an idle machine)
    args = [FIT_SCRIPT, json.dumps({**FIT, "out": str(out), "sizes": {"n_train": 1200, "n_val": 8, "n_test": 8},
                                    "epochs": 30, "verbose": True})]
    proc = subprocess.Popen(["mpiexec", "-n", "2", sys.executable] + args, cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        line = ""
        while "threads per rank" not in line:            # rank 0 prints it before the first step
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "mpiexec ended before training started"
            assert time.monotonic() < deadline
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    step = re.findall(r'"step": (\d+)', stdout)[0]
    assert stderr.count("stopped after step") == 1 and stderr.count("interrupt: finishing the current step") == 1
    # both ranks stopped after the same step (their lines may interleave in mpiexec's output)
    assert sorted(re.findall(r'"status": "(\w+)", "step": (\d+)', stdout)) == [("interrupted", step)] * 2
    ck = _state(out / "last.npz")
    assert str(ck.meta["state"]["step"]) == step and ck.meta["world_size"] == 2
    resumed = _ok(fit_ranks(2, out=str(out), resume=True, stop_after_steps=1, epochs=30))
    assert _state(out / "last.npz").meta["state"]["step"] == ck.meta["state"]["step"] + 1, resumed.stderr

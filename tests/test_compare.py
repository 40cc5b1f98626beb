"""``python -m refsnn.compare`` and the paired statistics it prints (issue 16)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import refsnn.training
from refsnn import compare as cmp
from refsnn.models import config
from refsnn.stats import mean_sd, paired_bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the acceptance command, on a small synthetic set so that the suite stays fast
COMMAND = ["--config", "tiny", "--modes", "cmqka", "concat", "--seeds", "0", "1", "--epochs", "1"]
SMALL = ["--data-option", "n_train=64", "--data-option", "n_val=32", "--data-option", "n_test=64",
         "--repeat", "1", "--resamples", "2000", "--no-progress"]
DATA_OPTIONS = {"n_train": 64, "n_val": 32, "n_test": 64}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------ statistics

def test_bootstrap_of_identical_models_is_zero_and_not_separated():
    rng = np.random.default_rng(0)
    c = rng.random((3, 50)) < 0.7
    b = paired_bootstrap(c, c, resamples=500)
    assert b["difference"] == 0 and b["low"] == 0 and b["high"] == 0 and not b["separated"]
    assert b["per_seed"] == [0.0, 0.0, 0.0]


def test_bootstrap_separates_a_clear_difference_and_orders_its_bounds():
    rng = np.random.default_rng(1)
    a = rng.random((2, 400)) < 0.9
    b = rng.random((2, 400)) < 0.5
    r = paired_bootstrap(a, b, resamples=2000, seed=3)
    assert r["separated"] and r["low"] > 0 and r["low"] <= r["difference"] <= r["high"]
    assert r["difference"] == pytest.approx(a.mean() - b.mean())
    assert r["per_seed"] == pytest.approx(list(a.mean(1) - b.mean(1)))


def test_bootstrap_is_seeded_and_matches_a_plain_loop():
    rng = np.random.default_rng(2)
    a = (rng.random((3, 40)) < 0.6).astype(np.int64)
    b = (rng.random((3, 40)) < 0.55).astype(np.int64)
    r1 = paired_bootstrap(a, b, resamples=300, seed=7)
    assert r1 == paired_bootstrap(a, b, resamples=300, seed=7)
    assert r1 != paired_bootstrap(a, b, resamples=300, seed=8)
    # twin: resample the clips (same indices for every seed), mean over seeds of the accuracy gap
    idx = np.random.Generator(np.random.PCG64(7)).integers(0, 40, size=(300, 40))
    stats = []
    for row in idx:
        gaps = [sum(a[s, i] for i in row) / 40 - sum(b[s, i] for i in row) / 40 for s in range(3)]
        stats.append(sum(gaps) / 3)
    lo, hi = np.quantile(stats, [0.025, 0.975])
    assert r1["low"] == pytest.approx(lo, abs=1e-12) and r1["high"] == pytest.approx(hi, abs=1e-12)


def test_bootstrap_width_agrees_with_the_normal_approximation():
    rng = np.random.default_rng(4)
    a = rng.random((1, 2000)) < 0.8
    b = rng.random((1, 2000)) < 0.75
    r = paired_bootstrap(a, b, resamples=4000, seed=0)
    d = (a.astype(float) - b)[0]
    half = 1.96 * d.std() / np.sqrt(d.size)
    assert (r["high"] - r["low"]) / 2 == pytest.approx(half, rel=0.1)


@pytest.mark.parametrize("a, b, match", [
    (np.ones((2, 5)), np.ones((2, 6)), "same seeds and the same test clips"),
    (np.full((2, 5), 0.5), np.ones((2, 5)), "0/1"),
    (np.ones((2, 0)), np.ones((2, 0)), "expected"),
])
def test_bootstrap_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b)


def test_mean_sd():
    assert mean_sd([0.5]) == (0.5, 0.0)
    m, s = mean_sd([1.0, 0.0])
    assert m == 0.5 and s == pytest.approx(np.sqrt(0.5))


# ------------------------------------------------------------------------------ the command

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The acceptance command run once, as a user runs it."""
    out = str(tmp_path_factory.mktemp("compare") / "cmp")
    proc = subprocess.run([sys.executable, "-m", "refsnn.compare", *COMMAND, *SMALL, "--out", out],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_command_writes_json_table_and_plot(finished):
    out, proc = finished
    with open(os.path.join(out, "comparison.json")) as f:
        result = json.load(f)
    rows = result["summary"]["rows"]
    assert list(rows) == ["cmqka", "concat"] and result["seeds"] == [0, 1]
    for mode, row in rows.items():
        assert row["seeds"] == [0, 1] and len(row["accuracies"]) == 2
        assert row["accuracy_mean"] == pytest.approx(np.mean(row["accuracies"]))
        assert row["parameters"] > 0 and row["energy_mJ"] > 0 and row["step_time_s"] > 0
        for seed, acc in zip((0, 1), row["accuracies"]):
            run = os.path.join(out, "runs", mode, f"seed{seed}")
            for name in ("report.json", "metrics.jsonl", "last.npz", "best.npz", cmp.PREDICTIONS):
                assert os.path.isfile(os.path.join(run, name)), (run, name)
            with open(os.path.join(run, "report.json")) as f:
                assert json.load(f)["test"]["accuracy"] == acc       # an ordinary run directory
    assert rows["cmqka"]["growth"]["tokens"] == [16, 64]       # tiny: stage 2 has 4 x 4 tokens
    assert rows["concat"]["growth"] is None and "vs_reference" not in rows["cmqka"]
    v = rows["concat"]["vs_reference"]
    assert v["low"] <= v["difference"] <= v["high"] and v["clips"] == 64 and len(v["per_seed"]) == 2
    assert v["per_seed"] == pytest.approx([a - b for a, b in zip(rows["concat"]["accuracies"],
                                                                   rows["cmqka"]["accuracies"])])
    assert (v["verdict"] == "not separated") == (v["low"] <= 0 <= v["high"])
    with open(os.path.join(out, "comparison.md")) as f:
        text = f.read()
    assert text in proc.stdout
    assert "| `concat` |" in text and f"| {v['verdict']}" in text and "paired bootstrap" in text
    assert "Command: `python -m refsnn.compare --config tiny --modes cmqka concat --seeds 0 1 --epochs 1" in text
    pytest.importorskip("matplotlib")
    with open(os.path.join(out, "accuracy_energy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_every_run_and_needs_no_matplotlib(finished, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(finished[0], out)
    os.remove(os.path.join(out, "accuracy_energy.png"))

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(refsnn.training, "fit", no_training)
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    assert cmp.main([*COMMAND, *SMALL, "--out", out]) == 0
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "4 finished, 0 to resume, 0 to train" in err
    assert os.path.isfile(os.path.join(out, "comparison.json")) and os.path.isfile(os.path.join(out, "comparison.md"))
    assert not os.path.exists(os.path.join(out, "accuracy_energy.png"))
    with open(os.path.join(out, "comparison.json")) as f, open(os.path.join(finished[0], "comparison.json")) as g:
        new, old = json.load(f)["summary"]["rows"], json.load(g)["summary"]["rows"]
    for mode in new:
        assert new[mode]["accuracies"] == old[mode]["accuracies"]
        assert new[mode].get("vs_reference") == old[mode].get("vs_reference")     # a seeded bootstrap


def _mtimes(folder):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def test_interrupted_comparison_continues_and_trains_nothing_twice(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "cmp")
    real_fit = refsnn.training.fit
    calls = []

    def counting_fit(c, data, **kw):
        calls.append((kw["out"], kw["resume"]))
        if interrupt_call == len(calls):
            kw["stop_after_steps"] = 1          # as Ctrl-C after one step: fit saves and returns
        return real_fit(c, data, **kw)

    monkeypatch.setattr(refsnn.training, "fit", counting_fit)
    kwargs = dict(modes=["cmqka", "concat"], seeds=[0, 1], out=out, data_options=DATA_OPTIONS, epochs=1,
                  repeat=1, resamples=500, progress=False)
    base = config("tiny")
    run_dir = {(m, s): os.path.join(out, "runs", m, f"seed{s}") for m in ("cmqka", "concat") for s in (0, 1)}

    interrupt_call = 3                          # the third run: cmqka seed 1 (seed-major order)
    assert cmp.compare(base, "synthetic", **kwargs) is None
    assert calls == [(run_dir["cmqka", 0], False), (run_dir["concat", 0], False), (run_dir["cmqka", 1], False)]
    assert "comparison interrupted" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "comparison.json"))
    assert os.path.isfile(os.path.join(run_dir["cmqka", 1], "last.npz"))
    assert not os.path.exists(os.path.join(run_dir["cmqka", 1], "report.json"))
    before = {k: _mtimes(run_dir[k]) for k in (("cmqka", 0), ("concat", 0))}

    calls.clear()
    interrupt_call = 0
    result = cmp.compare(base, "synthetic", **dict(kwargs, progress=True))
    assert calls == [(run_dir["cmqka", 1], True), (run_dir["concat", 1], False)]
    err = capsys.readouterr().err
    assert "2 finished, 1 to resume, 1 to train" in err and "comparison: " in err and "run" in err
    for k, mt in before.items():                # the finished runs were not touched
        assert {p: t for p, t in _mtimes(run_dir[k]).items() if not p.endswith(cmp.PREDICTIONS)} == \
            {p: t for p, t in mt.items() if not p.endswith(cmp.PREDICTIONS)}
    with open(os.path.join(run_dir["cmqka", 1], "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1]      # the epoch ran once
    with open(os.path.join(run_dir["cmqka", 1], "report.json")) as f:
        assert json.load(f)["status"] == "finished"
    assert result["summary"]["rows"]["concat"]["seeds"] == [0, 1]

    calls.clear()                               # a third time: nothing at all to train
    assert cmp.compare(base, "synthetic", **kwargs) is not None and calls == []


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("args, match", [
    (["--modes", "cmqka", "bogus"], "unknown mode(s) ['bogus']"),
    (["--data", "nope"], "unknown data set 'nope'"),
    (["--config", "huge"], "config preset: expected one of ['paper', 'cpu', 'tiny'], got 'huge'"),
    (["--recipe", "nope"], "recipe: expected one of"),
    (["--set", "fusion=concat"], "use --modes"),
    (["--set", "colour=red"], "colour"),
    (["--reference", "bogus"], "--reference: unknown mode 'bogus'"),
    (["--seeds", "0", "0"], "--seeds: each at most once"),
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--optimizer", "adam"], "--optimizer"),
    (["--data-option", "n_trian=5"], "--data-option"),
])
def test_unknown_names_stop_before_anything_trains(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.setattr(refsnn.training, "fit", lambda *a, **k: pytest.fail("trained"))
    out = str(tmp_path / "cmp")
    assert cmp.main(["--config", "tiny", *args, "--out", out, "--no-progress"]) == 2   # the last --config wins
    assert match in capsys.readouterr().err
    assert not os.path.exists(out)


def test_unknown_option_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cmp.main(["--config", "tiny", "--learning-rate", "0.1"])
    assert exc.value.code == 2 and "--learning-rate" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['colour'\]"):
        cmp.compare(config("tiny"), modes=["concat"], seeds=[0], out="unused", colour=1)


def test_a_run_made_with_other_settings_stops_before_training(finished, monkeypatch, capsys):
    out = finished[0]
    monkeypatch.setattr(refsnn.training, "fit", lambda *a, **k: pytest.fail("trained"))
    before = _mtimes(out)
    assert cmp.main([*COMMAND[:-1], "2", *SMALL, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "holds a run made with other settings" in err and "epochs: 1 != 2" in err
    assert _mtimes(out) == before


def test_a_run_from_before_an_option_existed_is_compatible():
    run = cmp.Run("concat", 0, "unused", cmp.mode_config(config("tiny"), "concat"))
    wanted = cmp._wanted_options(dict(epochs=1, lr=0.002, accumulate=1), 0, "synthetic", {})
    saved = dict(wanted)
    assert cmp._differences(run.config.to_dict(), saved, run, wanted) == []
    saved.pop("lr")                               # the default's value: what the run did
    saved.pop("accumulate")                       # an option added after the run was made
    assert cmp._differences(run.config.to_dict(), saved, run, wanted) == []
    saved["epochs"] = 3
    assert cmp._differences(run.config.to_dict(), saved, run, wanted) == ["epochs: 3 != 1"]


def test_help_mentions_mpi():
    proc = subprocess.run([sys.executable, "-m", "refsnn.compare", "--help"], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "mpiexec -n" in proc.stdout and "--modes" in proc.stdout


@pytest.mark.slow
def test_the_acceptance_command_as_written(tmp_path):
    """The issue's command verbatim (the full synthetic set: 1,600 training clips per run)."""
    out = str(tmp_path / "cmp")
    proc = subprocess.run([sys.executable, "-m", "refsnn.compare", *COMMAND, "--no-progress", "--out", out],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "comparison.json")) as f:
        rows = json.load(f)["summary"]["rows"]
    assert list(rows) == ["cmqka", "concat"] and all(len(r["accuracies"]) == 2 for r in rows.values())
    assert rows["concat"]["vs_reference"]["clips"] == 400
    with open(os.path.join(out, "comparison.md")) as f:
        assert "| `concat` |" in f.read()
    assert os.path.isfile(os.path.join(out, "accuracy_energy.png")) or "matplotlib is not installed" in proc.stderr


def test_under_mpiexec_each_run_is_data_parallel_and_rank_0_alone_writes(tmp_path):
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec")
    out = str(tmp_path / "cmp")
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "refsnn.compare", "--config", "tiny",
                           "--modes", "cmqka", "concat", "--seeds", "0", "--epochs", "1", *SMALL, "--out", out],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| mode | test accuracy") == 1            # one rank printed the table
    for mode in ("cmqka", "concat"):
        with open(os.path.join(out, "runs", mode, "seed0", "report.json")) as f:
            assert json.load(f)["world_size"] == 2
    assert os.path.isfile(os.path.join(out, "comparison.json"))

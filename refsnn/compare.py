"""Compare the fusion modes on any data set: ``python -m refsnn.compare``.

    python -m refsnn.compare                                       # synthetic, cpu preset, 3 seeds
    python -m refsnn.compare --data ave --root /data/AVE --recipe cpu-ave --seeds 0 1 2
    python -m refsnn.compare --config tiny --modes cmqka concat --seeds 0 1 --epochs 1
    mpiexec -n 2 python -m refsnn.compare ...                       # every run data-parallel

Every mode (default: each fusion mode and the two single-modality runs ``audio`` and
``visual``) is trained with every seed by ``refsnn.train.fit`` into an ordinary run directory,
``<out>/runs/<mode>/seed<k>``, which can be inspected, evaluated or resumed on its own. A run
that finished with the same settings is reused, an unfinished one resumed, so an interrupted
comparison (Ctrl-C, a crash, a reboot) continues where it stopped and nothing trains twice. A
run directory made with other settings stops the command before anything trains.

Then, in this process: each run's checkpoint is evaluated clip by clip on the test split
(``test_predictions.npz`` in the run directory), energy per sample is measured (SPEC section 7),
the training step of every mode is timed round-robin (so all modes see the same machine load),
and one fusion module's attention-core operations are counted at N and 4N tokens. Against the
reference mode (CMQKA), each mode gets its per-seed accuracy differences and a paired bootstrap
interval over the test clips (``refsnn.stats.paired_bootstrap``); the table says "not
separated" when the interval contains 0. The single-modality runs are the ceilings a fusion
mode must beat.

Writes ``comparison.json`` (every number), ``comparison.md`` (the tables, how they were made
and the command) and ``accuracy_energy.png`` (needs the ``plot`` extra, matplotlib; without it
the command says so and writes the other two) to ``--out``.

Under MPI (``mpiexec -n K``, the ``mpi`` extra) every rank runs this same command: each run is
trained data-parallel over the K ranks, and only rank 0 shows progress, evaluates, measures and
writes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import training
from .atomic import atomic_write, atomic_write_text
from .checkpoint import load_checkpoint, load_model, parse_overrides, versions
from .runtime import limit_threads
from .distributed import run_main, world
from .evaluation import check_data_options, energy_batches, model_inputs, parse_data_options
from .fusion.registry import fusion_modes
from .models.configs import PRESETS, Config, config
from .recipes import DEFAULTS, RECIPES, recipe
from .stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, mean_sd, paired_bootstrap

__all__ = ["SINGLE_MODALITY", "REFERENCE", "Plan", "Run", "all_modes", "compare", "make_plan", "measure",
           "mode_config", "run_state", "train_runs", "write_outputs", "main"]

SINGLE_MODALITY = ("audio", "visual")      # one stream, no fusion: the ceilings
REFERENCE = "cmqka"
PREDICTIONS = "test_predictions.npz"
GROWTH_STAGE = 2                           # the fusion module whose growth with N is measured
GROWTH_FACTOR = 4
GROWTH_BATCH = 8
TIMING_ROUNDS = 3                          # round-robin rounds of the step-time measurement


class Run(NamedTuple):
    """One training run of the comparison."""
    mode: str
    seed: int
    dir: str
    config: Config


@dataclass(frozen=True)
class Plan:
    """A comparison as asked for, every part checked (``make_plan``)."""
    base: Config                 # the model config every mode starts from
    data: str
    modes: tuple
    seeds: tuple
    out: str
    options: dict                # training options of fit (checked), without seed and data_options
    data_options: dict
    root: str | None = None
    cache: str | None = None
    reference: str = REFERENCE
    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL
    bootstrap_seed: int = 0
    repeat: int = 3
    command: str = "refsnn.compare.compare(...)"

    @property
    def runs(self) -> list:
        """Seed-major, so that a comparison stopped early has whole seeds of every mode."""
        return [Run(m, s, os.path.join(self.out, "runs", m, f"seed{s}"), mode_config(self.base, m))
                for s in self.seeds for m in self.modes]

    def wanted_options(self, seed: int) -> dict:
        return _wanted_options(self.options, seed, self.data, self.data_options)


def all_modes() -> tuple[str, ...]:
    """Every mode a comparison can run: the registered fusion modes, then the single-modality
    runs (the default of ``--modes``)."""
    return tuple(fusion_modes()) + SINGLE_MODALITY


def mode_config(base: Config, mode: str) -> Config:
    """The model a mode trains: a fusion mode on both streams, or one stream alone."""
    if mode in SINGLE_MODALITY:
        return base.replace(modality=mode)
    if mode not in fusion_modes():
        raise ValueError(f"unknown mode {mode!r}; available: {', '.join(all_modes())}")
    return base.replace(fusion=mode, modality="av")


# ------------------------------------------------------------------------------ the runs

def _json_normal(obj):
    """As the object reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj, default=float))


def _wanted_options(options: dict, seed: int, data: str, data_options: dict) -> dict:
    """The options a reusable run must have been trained with (threads do not matter)."""
    wanted = {k: v for k, v in options.items() if k != "threads"}
    wanted.update(seed=seed, data=data, data_options=dict(data_options))
    return _json_normal(wanted)


def _differences(saved_config: dict, saved_options: dict, run: Run, wanted: dict) -> list[str]:
    want_config = _json_normal(run.config.to_dict())
    diffs = [f"config {k}: {saved_config.get(k)!r} != {v!r}" for k, v in want_config.items()
             if k != "classes" and saved_config.get(k) != v]      # fit sets classes from the data
    saved = _json_normal(saved_options)
    # an option newer than the run was, when the run was made, its default's behaviour
    defaults = _json_normal(training.check_options({}))
    diffs += [f"{k}: {saved.get(k, defaults.get(k))!r} != {v!r}" for k, v in wanted.items()
              if saved.get(k, defaults.get(k)) != v]
    return diffs


def run_state(run: Run, wanted: dict) -> str:
    """``"finished"`` (report.json of a finished run with these settings), ``"resume"``
    (last.npz of an unfinished one) or ``"new"``; a ValueError when the folder holds a run made
    with other settings (nothing is deleted)."""
    report_path = os.path.join(run.dir, "report.json")
    last_path = os.path.join(run.dir, "last.npz")
    if os.path.isfile(report_path):
        try:
            with open(report_path) as f:
                rep = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{report_path}: cannot be read ({exc}); move it aside to train this run again") from None
        if rep.get("status") == "finished":
            diffs = _differences(rep.get("config", {}), rep.get("options", {}), run, wanted)
            if diffs:
                raise ValueError(f"{run.dir} holds a run made with other settings ({'; '.join(diffs)}); "
                                 f"use another --out, or delete that folder to train it again")
            return "finished"
    if os.path.isfile(last_path):
        ck = load_checkpoint(last_path)
        diffs = _differences(ck.config.to_dict(), ck.meta.get("options", {}), run, wanted)
        if diffs:
            raise ValueError(f"{last_path} belongs to a run made with other settings ({'; '.join(diffs)}); "
                             f"use another --out, or delete that folder to train it again")
        return "resume"
    return "new"


def _progress_bar(enabled: bool, **kwargs):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(dynamic_ncols=True, **kwargs)


def train_runs(plan: Plan, states: dict, *, progress: bool, log=print) -> bool:
    """Train every run of ``plan`` that is not finished, in order. Returns False when a run was
    interrupted (Ctrl-C: fit saved it; the same command continues)."""
    runs, options = plan.runs, plan.options
    finished = sum(states[r] == "finished" for r in runs)
    bar = _progress_bar(progress, total=len(runs), initial=finished, desc="comparison", unit="run", position=0)
    try:
        for run in runs:
            if states[run] == "finished":
                continue
            what = f"{run.mode} seed {run.seed}" + (" (resumed)" if states[run] == "resume" else "")

            def show_epoch(epoch, metrics, what=what):
                bar.set_postfix_str(f"training {what}: epoch {epoch}/{metrics.get('epochs', options['epochs'])} "
                                    f"done, val accuracy {metrics.get('val_accuracy') or float('nan'):.3f}")

            if bar is not None:
                bar.set_postfix_str(f"training {what}")
            t0 = time.perf_counter()
            rep = training.fit(run.config, plan.data, out=run.dir, resume=states[run] == "resume",
                               progress=progress, verbose=False, root=plan.root, cache=plan.cache,
                               data_options=plan.data_options, seed=run.seed, resume_command=plan.command,
                               on_epoch_end=show_epoch if bar is not None else None, **options)
            if rep.get("status") != "finished":
                return False
            states[run] = "finished"
            log(f"{what}: test accuracy {rep['test']['accuracy']:.4f} "
                f"({time.perf_counter() - t0:.0f} s; {run.dir})")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return True


# ------------------------------------------------------------------------------ evaluation

def _fusion_modules(model) -> list:
    return [m for m in (getattr(model, f"fusion{s}", None) for s in (1, 2, 3)) if m is not None]


def _core_ops(module) -> float:
    """The attention cores' counted operations of the last forward: SSA multiply-accumulates,
    Q-K accumulates (additions + kept); 0 for a module without attention (concat)."""
    counts = getattr(module, "attention_counts", None) or {}
    return float(counts.get("macs", 0) + counts.get("additions", 0) + counts.get("kept", 0))


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _batches(dataset, batch_size: int, dtype):
    from .data import BatchIterator
    it = BatchIterator(dataset, min(batch_size, len(dataset)), shuffle=False, drop_last=False)
    try:
        for b in it:
            yield b, model_inputs(b, dtype)
    finally:
        it.close()


def predict_test(run: Run, checkpoint: str, test) -> dict:
    """Per-clip predictions of ``checkpoint`` on the test split, and the fusion attention-core
    operations per sample; cached in ``<run>/test_predictions.npz`` for this checkpoint file."""
    path = os.path.join(run.dir, PREDICTIONS)
    stamp = _stamp(checkpoint)
    if os.path.isfile(path):
        with np.load(path, allow_pickle=False) as z:
            if str(z["checkpoint_stamp"]) == stamp and list(z["clip_ids"]) == list(test.clip_ids):
                return {k: z[k] for k in ("labels", "predicted", "clip_ids")} | \
                    {"core_ops_per_sample": float(z["core_ops_per_sample"])}
    model = load_model(checkpoint)
    model.eval()
    predicted, labels, core_ops = [], [], 0.0
    for batch, inputs in _batches(test, 32, model.dtype):
        predicted.append(model.forward(*inputs).argmax(axis=1))
        labels.append(batch.labels)
        core_ops += sum(_core_ops(m) for m in _fusion_modules(model))
    model.clear_cache()
    out = {"labels": np.concatenate(labels).astype(np.int64), "predicted": np.concatenate(predicted).astype(np.int64),
           "clip_ids": np.array([str(c) for c in test.clip_ids]),
           "core_ops_per_sample": core_ops / len(test)}
    atomic_write(path, lambda f: np.savez(f, checkpoint_stamp=np.array(stamp), **out))
    return out


def evaluate_run(run: Run, test, options: dict) -> dict:
    """The numbers of one finished run: test accuracy (from its clip predictions, checked
    against report.json), energy per sample (SPEC section 7, measured now on the test batches
    fit measures, so every run is read with the same accounting), parameters."""
    from .energy import report as energy_report
    with open(os.path.join(run.dir, "report.json")) as f:
        rep = json.load(f)
    checkpoint = os.path.join(run.dir, rep["checkpoint"])
    pred = predict_test(run, checkpoint, test)
    correct = pred["predicted"] == pred["labels"]
    accuracy = float(correct.mean())
    if abs(accuracy - rep["test"]["accuracy"]) > 1e-9:
        raise ValueError(f"{checkpoint}: accuracy {accuracy} on the test split, but report.json says "
                         f"{rep['test']['accuracy']}; was the data set or its cache changed after training?")
    model = load_model(checkpoint)
    batches = energy_batches(test, model.dtype, batch_size=options["batch_size"], count=options["energy_batches"])
    totals = energy_report(model, batches)["totals"]
    return {"seed": run.seed, "run": run.dir, "accuracy": accuracy, "correct": correct,
            "clip_ids": pred["clip_ids"], "energy_mJ": totals["snn_mJ"], "macs": totals["macs"],
            "acs": totals["acs"], "parameters": int(model.num_parameters()),
            "core_ops_per_sample": pred["core_ops_per_sample"], "best_epoch": rep.get("best_epoch"),
            "wall_time_s": rep.get("wall_time_s")}


# ------------------------------------------------------------------------------ costs



def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _training_step(c: Config, batch, options: dict):
    """``step()``: forward, cross-entropy, backward and the run's optimizer on one batch."""
    from .functional.loss import cross_entropy_backward, cross_entropy_forward
    from .models.snnergy import SNNergy
    from .optim import SGD, AdamW
    model = SNNergy(c)
    if options["optimizer"] == "sgd":
        opt = SGD(model.parameters(), lr=options["lr"], momentum=options["momentum"])
    else:
        opt = AdamW(model.parameters(), lr=options["lr"], weight_decay=options["weight_decay"])
    inputs = model_inputs(batch, model.dtype)

    def step():
        model.zero_grad()
        _, cache = cross_entropy_forward(model.forward(*inputs), batch.labels)
        model.backward(cross_entropy_backward(cache))
        opt.step()

    return step


def step_times(configs: dict, train, options: dict, *, repeat: int, rounds: int = 3) -> dict:
    """Median training-step time per mode on the first training batch, measured round-robin
    over the modes (``rounds`` of ``repeat`` steps each) so that every mode sees the same
    machine load; the epochs' own timings do not (runs minutes or hours apart)."""
    from .data import BatchIterator
    it = BatchIterator(train, options["batch_size"], shuffle=False, drop_last=True)
    try:
        batch = next(iter(it))
    finally:
        it.close()
    steps = {}
    for mode, c in configs.items():
        steps[mode] = _training_step(c, batch, options)
        steps[mode]()                          # compile and allocate outside the timing
    times = {mode: [] for mode in configs}
    for _ in range(rounds):
        for mode, step in steps.items():
            times[mode].append(_median_time(step, repeat))
    return {mode: float(np.median(t)) for mode, t in times.items()}


def fusion_growth(c: Config, *, repeat: int) -> dict | None:
    """One fusion module at stage ``GROWTH_STAGE`` of config ``c`` (its width and heads, T,
    batch ``GROWTH_BATCH``) on N and ``GROWTH_FACTOR`` x N tokens of random spike sums (N the
    stage's tokens): attention-core operations and forward + backward time, and their ratios.
    None for a mode without fusion attention (concat, one stream)."""
    if c.modality != "av":
        return None
    from .fusion import build_fusion
    s = GROWTH_STAGE
    dim, heads = c.stage_dims[s - 1], c.heads[s - 1]
    module = build_fusion(c, s, dim, heads, rng=np.random.Generator(np.random.PCG64(1)), dtype=np.float32)
    rng = np.random.Generator(np.random.PCG64(0))
    n0 = c.stage_tokens[s - 1]
    out = {}
    for n in (n0, GROWTH_FACTOR * n0):
        shape = (c.T, GROWTH_BATCH, dim, n)
        # a stage output: the sum of two spike maps
        x_a, x_v = (((rng.random(shape) < 0.2).astype(np.float32) + (rng.random(shape) < 0.1))
                    .astype(np.float32) for _ in range(2))
        module.train()
        y_a, _ = module.forward(x_a, x_v)
        ops = _core_ops(module) / GROWTH_BATCH
        module.clear_cache()
        if ops == 0:
            return None

        def step():
            y_a, y_v = module.forward(x_a, x_v)
            module.backward(np.ones_like(y_a), np.ones_like(y_v))

        step()
        out[n] = {"core_ops_per_sample": ops, "time_s": _median_time(step, repeat)}
        module.clear_cache()
    lo, hi = out[n0], out[GROWTH_FACTOR * n0]
    return {"stage": s, "tokens": [n0, GROWTH_FACTOR * n0], "batch": GROWTH_BATCH, "at_N": lo, "at_4N": hi,
            "ops_ratio": hi["core_ops_per_sample"] / lo["core_ops_per_sample"],
            "time_ratio": hi["time_s"] / lo["time_s"]}


# ------------------------------------------------------------------------------ summary

def _verdict(b: dict, mode: str, other: str) -> str:
    if not b["separated"]:
        return "not separated"
    ahead = mode if b["difference"] > 0 else other
    signs = {np.sign(d) for d in b["per_seed"]}
    return f"{ahead} ahead" + (" (seeds disagree)" if len(signs - {0}) > 1 else "")


def summarise(evaluated: dict, reference: str, *, resamples: int, level: float, bootstrap_seed: int) -> dict:
    """Per mode: accuracies, cost and the paired comparisons against ``reference`` and against
    the better single-modality ceiling."""
    rows = {}
    for mode, runs in evaluated.items():
        acc = [r["accuracy"] for r in runs]
        mean, sd = mean_sd(acc)
        rows[mode] = {"mode": mode, "kind": "single modality" if mode in SINGLE_MODALITY else "fusion",
                      "seeds": [r["seed"] for r in runs], "accuracies": acc, "accuracy_mean": mean,
                      "accuracy_sd": sd, "energy_mJ": float(np.mean([r["energy_mJ"] for r in runs])),
                      "macs": float(np.mean([r["macs"] for r in runs])),
                      "acs": float(np.mean([r["acs"] for r in runs])), "parameters": runs[0]["parameters"],
                      "core_ops_per_sample": float(np.mean([r["core_ops_per_sample"] for r in runs])),
                      "runs": [r["run"] for r in runs]}

    def paired(mode, other):
        a, b = evaluated[mode], evaluated[other]
        for ra, rb in zip(a, b):
            if list(ra["clip_ids"]) != list(rb["clip_ids"]):
                raise ValueError(f"{mode} and {other} seed {ra['seed']} were tested on different clips")
        return paired_bootstrap(np.stack([r["correct"] for r in a]), np.stack([r["correct"] for r in b]),
                                resamples=resamples, level=level, seed=bootstrap_seed)

    ceilings = [m for m in SINGLE_MODALITY if m in rows]
    ceiling = max(ceilings, key=lambda m: rows[m]["accuracy_mean"]) if ceilings else None
    for mode, row in rows.items():
        if reference in rows and mode != reference:
            b = paired(mode, reference)
            row["vs_reference"] = dict(b, reference=reference, verdict=_verdict(b, mode, reference))
        if ceiling is not None and row["kind"] == "fusion":
            b = paired(mode, ceiling)
            row["vs_ceiling"] = dict(b, ceiling=ceiling, verdict=_verdict(b, mode, ceiling))
    return {"rows": rows, "reference": reference if reference in rows else None, "ceiling": ceiling}


def _pm(x: float) -> str:
    return f"{x:+.4f}"


def _accuracy_table(result: dict) -> list[str]:
    s = result["summary"]
    ref, level = s["reference"], int(round(100 * result["bootstrap"]["level"]))
    head = ["mode", "test accuracy (mean ± sd)", "per seed"]
    if ref:
        head += [f"Δ vs `{ref}` per seed", f"Δ mean [{level}% paired bootstrap]", f"vs `{ref}`"]
    if s["ceiling"]:
        head += ["vs best single modality"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, r in s["rows"].items():
        cells = [f"`{mode}`" + (" (ceiling)" if r["kind"] == "single modality" else ""),
                 f"{r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f}", " / ".join(f"{a:.4f}" for a in r["accuracies"])]
        if ref:
            v = r.get("vs_reference")
            cells += (["—", "—", "reference"] if mode == ref else
                      [" / ".join(_pm(d) for d in v["per_seed"]),
                       f"{_pm(v['difference'])} [{_pm(v['low'])}, {_pm(v['high'])}]", v["verdict"]])
        if s["ceiling"]:
            v = r.get("vs_ceiling")
            cells += ["—" if v is None else
                      f"{_pm(v['difference'])} [{_pm(v['low'])}, {_pm(v['high'])}]: {v['verdict']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cost_table(result: dict) -> list[str]:
    rows = result["summary"]["rows"]
    g = next((r["growth"] for r in rows.values() if r.get("growth")), None)
    tokens = f"{g['tokens'][0]} → {g['tokens'][1]} tokens" if g else "N → 4N tokens"
    lines = ["| mode | energy / sample (mJ) | MACs / sample | ACs / sample | parameters | train step (s) | "
             f"fusion core ops / sample | core ops, {tokens} | fusion time, {tokens} |", "|" + "---|" * 9]
    for mode, r in rows.items():
        gr = r.get("growth")
        lines.append(f"| `{mode}` | {r['energy_mJ']:.5f} | {r['macs'] / 1e6:.2f} M | {r['acs'] / 1e6:.2f} M | "
                     f"{r['parameters']:,} | {r['step_time_s']:.3f} | "
                     + (f"{r['core_ops_per_sample'] / 1e6:.3f} M" if r["core_ops_per_sample"] else "—") + " | "
                     + (f"{gr['ops_ratio']:.1f}x | {gr['time_ratio']:.1f}x" if gr else "— | —") + " |")
    return lines


def markdown(result: dict) -> str:
    """comparison.md: what was compared, the accuracy table with the paired statistics, the
    cost table, how each number was measured, the command."""
    ref = result["summary"]["reference"]
    o, b = result["options"], result["bootstrap"]
    lines = [f"Fusion modes on `{result['data']}`"
             + (f" (data options {result['data_options']})" if result["data_options"] else "")
             + f", `{result['config']['name']}` preset, seeds {result['seeds']}, {o['epochs']} epochs, "
             f"batch {o['batch_size']}, {o['optimizer']} lr {o['lr']}; {result['test_clips']} test clips per seed.",
             "", *_accuracy_table(result), "", *_cost_table(result), "",
             f"Δ: test accuracy minus `{ref}`'s, seed by seed (same seed, same test clips); the interval is a "
             f"paired bootstrap over the test clips ({b['resamples']:,} resamples, seed {b['seed']}), "
             f"\"not separated\" when it contains 0. It covers the choice of test clips for these trained "
             f"models, not the spread between training seeds (see the per-seed differences)."
             if ref else "No paired comparison: the reference mode is not among the modes.",
             f"Energy: SPEC section 7 (E_MAC 4.6 pJ, E_AC 0.9 pJ) on {o['energy_batches']} test batches of the "
             f"best checkpoint, mean over seeds. Train step: forward, loss, backward and {o['optimizer']} on one "
             f"training batch of {o['batch_size']}, median of {result['timing']['rounds']} rounds over all modes "
             f"in turn, in one process. Fusion core ops: the attention cores' counted operations (SSA "
             f"multiply-accumulates, Q-K additions + kept) per test sample in the three fusion modules; growth: one "
             f"stage-{GROWTH_STAGE} fusion module at N and {GROWTH_FACTOR}N tokens (batch {GROWTH_BATCH}, random "
             f"spike sums), operations and forward + backward time.",
             "", f"Command: `{result['command']}`", f"Machine: {result['machine']}; BLAS: {result['blas']}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """Test accuracy (mean ± sd over seeds) against energy per sample, one point per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(result["summary"]["rows"].values(), key=lambda r: r["energy_mJ"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for i, r in enumerate(rows):
        single = r["kind"] == "single modality"
        ax.errorbar(r["energy_mJ"], r["accuracy_mean"], yerr=r["accuracy_sd"], fmt="s" if single else "o",
                    capsize=3, color="grey" if single else None)
        # labels alternately above and below, in order of energy, so neighbours do not overlap
        ax.annotate(r["mode"] + (" (ceiling)" if single else ""), (r["energy_mJ"], r["accuracy_mean"]),
                    textcoords="offset points", xytext=(6, 5 if i % 2 == 0 else -13), fontsize=8)
    ax.set_xlabel("energy per test sample (mJ, SPEC section 7)")
    n = len(result["seeds"])
    ax.set_ylabel(f"test accuracy (mean ± sd over {n} seed{'s' if n > 1 else ''})")
    ax.set_title(f"Fusion modes on {result['data']}, {result['config']['name']} preset")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def _blas() -> str:
    from threadpoolctl import threadpool_info
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
                     f"threads={i.get('num_threads')}" for i in threadpool_info() if i.get("user_api") == "blas")


# ------------------------------------------------------------------------------ the API

_SETTINGS = ("root", "cache", "reference", "resamples", "level", "bootstrap_seed", "repeat", "command")


def make_plan(base: Config, data: str, *, modes, seeds, out, data_options: dict, options: dict,
              **settings) -> Plan:
    """Check everything a comparison needs before anything trains: modes, seeds, data set and
    its options, training options (``refsnn.training.check_options``), reference mode and the
    statistics' settings."""
    from .data import dataset_names
    if not isinstance(base, Config):
        raise ValueError(f"config: expected a refsnn.models.Config, got {type(base).__name__}")
    if data not in dataset_names():
        raise ValueError(f"unknown data set {data!r}; available: {', '.join(dataset_names())}")
    known_modes = all_modes()
    modes, seeds = list(modes or known_modes), [int(s) for s in seeds]
    unknown = [m for m in modes if m not in known_modes]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; available: {', '.join(known_modes)}")
    reference = settings.get("reference", REFERENCE)
    if reference not in known_modes:
        raise ValueError(f"--reference: unknown mode {reference!r}; available: {', '.join(known_modes)}")
    for name, values in (("modes", modes), ("seeds", seeds)):
        if not values:
            raise ValueError(f"--{name}: expected at least one")
        if len(set(values)) != len(values):
            raise ValueError(f"--{name}: each at most once, got {values}")
    for name, ok in (("resamples", settings.get("resamples", 1) >= 1), ("level", 0 < settings.get("level", 0.5) < 1),
                     ("repeat", settings.get("repeat", 1) >= 1)):
        if not ok:
            raise ValueError(f"--{name}: {settings[name]} is out of range")
    if "seed" in options or "data_options" in options:
        raise ValueError("seed, data_options: give them as seeds=... and data_options=... of compare")
    opts = training.check_options(options)          # every option checked, errors name the flag
    opts.pop("seed", None)
    opts.pop("data_options", None)
    check_data_options(data, base.image_size, data_options)
    return Plan(base=base, data=data, modes=tuple(modes), seeds=tuple(seeds), out=os.fspath(out), options=opts,
                data_options=dict(data_options), **settings)


def compare(base: Config, data: str = "synthetic", *, modes=None, seeds=(0, 1, 2), out="runs/compare",
            data_options: dict | None = None, progress: bool = True, log=None, **kwargs) -> dict | None:
    """Train (or reuse, or resume) every mode x seed and compare them; writes ``comparison.json``,
    ``comparison.md`` and ``accuracy_energy.png`` to ``out`` and returns the result.

    ``kwargs``: training options of ``refsnn.train.fit`` (``refsnn.recipes.DEFAULTS`` keys and
    ``threads``) and the settings ``root``, ``cache``, ``reference``, ``resamples``, ``level``,
    ``bootstrap_seed``, ``repeat``, ``command`` (``Plan``). Returns None when the comparison
    was interrupted (run it again to continue) and on MPI ranks other than 0 (they only
    train). Every check happens before anything trains."""
    comm = world()
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if not comm.is_root:
        progress = False
        log = lambda text: None  # noqa: E731
    settings = {k: kwargs.pop(k) for k in _SETTINGS if k in kwargs}
    # rank 0 reads the run folders; every rank follows its plan (the same runs, in order)
    planned = None
    if comm.is_root:
        try:
            plan = make_plan(base, data, modes=modes, seeds=seeds, out=out, data_options=data_options or {},
                             options=kwargs, **settings)
            planned = (plan, {r: run_state(r, plan.wanted_options(r.seed)) for r in plan.runs})
        except ValueError as exc:
            planned = exc
    planned = comm.bcast(planned)
    if isinstance(planned, ValueError):
        raise planned
    plan, states = planned
    counts = {k: sum(s == k for s in states.values()) for k in ("finished", "resume", "new")}
    log(f"{len(states)} runs ({len(plan.modes)} modes x {len(plan.seeds)} seeds) in {plan.out}/runs: "
        f"{counts['finished']} finished, {counts['resume']} to resume, {counts['new']} to train")
    if not train_runs(plan, states, progress=progress, log=log):
        log(f"comparison interrupted; run the same command again to continue: {plan.command}")
        return None
    if not comm.is_root:
        return None
    result = measure(plan, log)
    write_outputs(result, plan.out, log)
    return result


def measure(plan: Plan, log) -> dict:
    """Every number of a comparison whose runs have finished (module docstring)."""
    from .data import load_dataset
    evaluated = {m: [] for m in plan.modes}
    tests = {}
    source = dict(root=plan.root, cache=plan.cache, image_size=plan.base.image_size, **plan.data_options)
    with limit_threads(plan.options.get("threads")):
        log("evaluating the runs clip by clip")
        for run in plan.runs:
            if run.seed not in tests:
                tests[run.seed] = load_dataset(plan.data, "test", seed=run.seed, **source)
            evaluated[run.mode].append(evaluate_run(run, tests[run.seed], plan.options))
        test = tests[plan.seeds[0]]
        configs = {m: mode_config(plan.base, m).replace(classes=test.num_classes) for m in plan.modes}
        log("timing the training steps (round-robin over the modes) and the fusion growth")
        train = load_dataset(plan.data, "train", seed=plan.seeds[0], **source)
        steps = step_times(configs, train, plan.options, repeat=plan.repeat, rounds=TIMING_ROUNDS)
        growth = {m: fusion_growth(configs[m], repeat=plan.repeat) for m in plan.modes}
        blas = _blas()                             # the threads the measurements ran with
    summary = summarise(evaluated, plan.reference, resamples=plan.resamples, level=plan.level,
                        bootstrap_seed=plan.bootstrap_seed)
    for m, row in summary["rows"].items():
        row.update(step_time_s=steps[m], growth=growth[m])
    return {"data": plan.data, "data_options": plan.data_options, "config": plan.base.to_dict(),
            "modes": list(plan.modes), "seeds": list(plan.seeds), "options": plan.options, "test_clips": len(test),
            "bootstrap": {"resamples": plan.resamples, "level": plan.level, "seed": plan.bootstrap_seed},
            "timing": {"rounds": TIMING_ROUNDS, "repeat": plan.repeat}, "summary": summary,
            "command": plan.command, "machine": _machine(), "blas": blas, "versions": versions(),
            "per_run": {m: [{k: v for k, v in r.items() if k not in ("correct", "clip_ids")} for r in runs]
                        for m, runs in evaluated.items()}}


def write_outputs(result: dict, out: str, log) -> None:
    """comparison.json, comparison.md and (with matplotlib) accuracy_energy.png in ``out``;
    adds ``markdown`` and ``written`` to ``result``."""
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "comparison.json"), json.dumps(result, indent=1, default=float) + "\n")
    text = markdown(result)
    atomic_write_text(os.path.join(out, "comparison.md"), text)
    written = ["comparison.json", "comparison.md"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed, so no plot was drawn (pip install -e \".[plot]\"); "
            "comparison.json and comparison.md are written")
    else:
        plot(result, os.path.join(out, "accuracy_energy.png"))
        written.append("accuracy_energy.png")
    result["written"] = [os.path.join(out, w) for w in written]
    log("wrote " + ", ".join(result["written"]))
    result["markdown"] = text


# ------------------------------------------------------------------------------ command line

# training options passed through to fit: (flag, option key, type); defaults live in
# refsnn.recipes.DEFAULTS and the chosen recipe
_TRAIN_FLAGS = (("--epochs", "epochs", int), ("--batch-size", "batch_size", int), ("--optimizer", "optimizer", str),
                ("--lr", "lr", float), ("--weight-decay", "weight_decay", float), ("--momentum", "momentum", float),
                ("--warmup", "warmup_epochs", float), ("--min-lr", "min_lr", float),
                ("--label-smoothing", "label_smoothing", float), ("--grad-clip", "grad_clip", float),
                ("--mixup", "mixup", float), ("--eval-every", "eval_every", int),
                ("--energy-batches", "energy_batches", int), ("--accumulate", "accumulate", int))
_TRAIN_SWITCHES = (("--crop", "crop"), ("--flip", "flip"), ("--specaugment", "specaugment"))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m refsnn.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="synthetic (default), ave, cremad, urbansound8k-av")
    ap.add_argument("--root", help="the data set's folder (real data sets; prepared on first use)")
    ap.add_argument("--cache", help="where prepared clips are cached (default ~/.cache/refsnn)")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the data set, e.g. n_train=400 (repeatable)")
    ap.add_argument("--config", help=f"model preset: {', '.join(sorted(PRESETS))} (default cpu, or the recipe's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field of every run, e.g. --set cmqka_mask=channel (repeatable)")
    ap.add_argument("--recipe", help=f"named training recipe: {', '.join(sorted(RECIPES))} (explicit options override it)")
    ap.add_argument("--modes", nargs="+", metavar="MODE", help=f"default: all of {' '.join(all_modes())}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED")
    for flag, key, kind in _TRAIN_FLAGS:
        ap.add_argument(flag, dest=key, type=kind, help=f"training option {key} (default: the recipe's)")
    for flag, key in _TRAIN_SWITCHES:
        ap.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores; under MPI each rank's)")
    ap.add_argument("--reference", default=REFERENCE, help="the mode every other is compared with (default cmqka)")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    ap.add_argument("--level", type=float, default=DEFAULT_LEVEL, help="bootstrap interval level (default 0.95)")
    ap.add_argument("--bootstrap-seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions per round of the step-time and growth "
                                                          "measurements")
    ap.add_argument("--out", help="the comparison's folder (default runs/compare_<data>_<config>)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        base_opts = recipe(args.recipe) if args.recipe else dict(DEFAULTS)
        keys = [k for _, k, _ in _TRAIN_FLAGS] + [k for _, k in _TRAIN_SWITCHES]
        base_opts.update({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
        data = args.data or base_opts["data"]
        preset = args.config or base_opts["config"]
        overrides = parse_overrides(args.set)
        for field in ("fusion", "modality"):
            if field in overrides:
                raise ValueError(f"--set {field}=...: the modes choose it; use --modes")
        base = config(preset, **overrides)
        options = {k: v for k, v in base_opts.items() if k not in ("data", "config")}
        if args.threads is not None:
            options["threads"] = args.threads
        out = args.out or os.path.join("runs", f"compare_{data}_{preset}")
        command = "python -m refsnn.compare " + " ".join(shlex.quote(a) for a in argv)
        result = compare(base, data, modes=args.modes, seeds=args.seeds, out=out, root=args.root,
                         cache=args.cache, data_options=parse_data_options(args.data_option), reference=args.reference,
                         resamples=args.resamples, level=args.level, bootstrap_seed=args.bootstrap_seed,
                         repeat=args.repeat, progress=not args.no_progress, command=command.strip(), **options)
    except training.TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the runs trained so far are kept: run the same command again to continue",
              file=sys.stderr)
        return 130
    if result is not None:
        print(result["markdown"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

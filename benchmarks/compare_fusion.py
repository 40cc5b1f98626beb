"""Compare the fusion modes (SPEC section 8) in one engine: every mode trained on the embedded
``synthetic`` task with the ``cpu`` preset, the same seeds and epochs (the ``synthetic``
recipe), then per mode

* test accuracy, mean and spread (sample standard deviation) over the seeds;
* parameters; MACs, ACs and energy per test sample (``refsnn.energy.report``, SPEC section 7,
  on the best checkpoint and the test batches ``refsnn.train.fit`` measures, computed again
  here so that ``--reuse`` applies the current accounting), averaged over the seeds;
* training step time (forward, loss, backward, AdamW on a batch of 16), measured after the
  training runs, round-robin over the modes so that all see the same machine load;
* the measured growth of one fusion module's cost from N to 4N tokens (the ``cpu`` preset's
  stage-2 geometry, D = 32, 2 heads, N = 64 -> 256, T = 4, batch 16, random sums of spike
  maps): the attention cores' counted operations (SSA ``macs``; Q-K ``additions + kept``),
  the module's energy from the same walker (eval mode, after 30 train-mode forwards have
  set the BatchNorm running statistics), and its forward + backward time.

Writes ``fusion_table.md`` (the markdown table and how it was made), ``fusion_results.json``
(every number) and ``fusion_accuracy_energy.png`` (test accuracy against energy per sample)
to ``--out``; each training run keeps its folder (``<out>/runs/<mode>/seed<k>``) and
``--reuse`` takes a finished run's report.json instead of training again.

    OMP_WAIT_POLICY=passive python benchmarks/compare_fusion.py                    # full run
    OMP_WAIT_POLICY=passive python benchmarks/compare_fusion.py --epochs 1 --seeds 0 \\
        --data-option n_train=160 --data-option n_test=80 --out runs/compare_fusion_smoke

``OMP_WAIT_POLICY=passive`` keeps Numba's parallel regions from spinning on a shared machine
(docs/attention.md, Performance).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from benchmarks.common import blas_report, machine, set_threads, timeit, training_step  # noqa: E402

GROWTH_GEOMETRY = dict(stage=2, T=4, batch=16, tokens=64, factor=4)
BN_WARMUP = 30      # train-mode forwards before the energy walk (BN momentum 0.1: 96% settled)


# ------------------------------------------------------------------------------ training

def _run_dir(out: str, mode: str, seed: int) -> str:
    return os.path.join(out, "runs", mode, f"seed{seed}")


def train_one(mode: str, seed: int, out: str, options: dict, data_options: dict, reuse: bool) -> dict:
    """One ``fit`` run (or its saved report with ``reuse``); returns the numbers the table
    needs."""
    from refsnn.models import config
    from refsnn.train import fit
    run = _run_dir(out, mode, seed)
    path = os.path.join(run, "report.json")
    rep = None
    if reuse and os.path.exists(path):
        with open(path) as f:
            rep = json.load(f)
        wanted = dict(options, seed=seed)
        saved = rep.get("options", {})
        if rep.get("status") != "finished" or any(saved.get(k) != v for k, v in wanted.items()) \
                or saved.get("data_options") != data_options or rep["config"].get("fusion") != mode:
            print(f"  {run}: saved run has other options; training again", file=sys.stderr)
            rep = None
    if rep is None:
        t0 = time.perf_counter()
        rep = fit(config("cpu", fusion=mode), "synthetic", out=run, force=True, progress=False,
                  verbose=False, data_options=data_options, seed=seed, **options)
        print(f"  {mode} seed {seed}: test accuracy {rep['test']['accuracy']:.4f}, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    step_times = []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            step_times.append(options["batch_size"] / m["samples_per_s"])
    energy = measure_energy(run, rep, options, data_options)
    return {"seed": seed, "accuracy": rep["test"]["accuracy"], **energy,
            "step_times_s": step_times, "wall_time_s": rep["wall_time_s"], "config": rep["config"]}


def measure_energy(run: str, rep: dict, options: dict, data_options: dict) -> dict:
    """MACs, ACs and mJ per test sample from ``refsnn.energy.report`` on the best checkpoint and
    the test batches ``fit`` measured, computed now so that ``--reuse`` applies the current
    accounting to runs trained before it changed."""
    from refsnn.checkpoint import load_model
    from refsnn.data import BatchIterator
    from refsnn.energy import report as energy_report
    from refsnn.evaluation import load_splits, model_inputs
    model = load_model(os.path.join(run, rep["checkpoint"]))
    test = load_splits("synthetic", image_size=model.config.image_size, seed=rep["options"]["seed"],
                       progress=False, **data_options)["test"]
    with BatchIterator(test, min(options["batch_size"], len(test)), shuffle=False) as it:
        batches = [model_inputs(b, model.dtype) for _, b in zip(range(options["energy_batches"]), it)]
    t = energy_report(model, batches)["totals"]
    return {"macs": t["macs"], "acs": t["acs"], "energy_mJ": t["snn_mJ"]}


# ------------------------------------------------------------------------------ growth

def _fusion_module(mode: str, rng):
    from refsnn.models import config
    from refsnn.fusion import build_fusion
    c = config("cpu", fusion=mode)
    s = GROWTH_GEOMETRY["stage"]
    return build_fusion(c, s, c.stage_dims[s - 1], c.heads[s - 1], rng=rng, dtype=np.float32)


def _core_ops(module) -> float:
    """The attention cores' counted operations: SSA multiply-accumulates, Q-K accumulates."""
    counts = getattr(module, "attention_counts", {})
    return float(counts.get("macs", 0) + counts.get("additions", 0) + counts.get("kept", 0))


def fusion_growth(mode: str, repeat: int) -> dict:
    """Cost of one fusion module at N and at factor x N tokens (module docstring)."""
    from refsnn.energy import report as energy_report
    g = GROWTH_GEOMETRY
    rng = np.random.Generator(np.random.PCG64(0))
    module = _fusion_module(mode, np.random.Generator(np.random.PCG64(1)))
    dim = module.dim if hasattr(module, "dim") else None
    out = {}
    for n in (g["tokens"], g["factor"] * g["tokens"]):
        if dim is None:                              # concat: nothing to measure
            out[n] = {"core_ops": 0.0, "energy_mJ": 0.0, "time_s": 0.0}
            continue
        shape = (g["T"], g["batch"], dim, n)
        # a stage output: the sum of two spike maps
        x_a, x_v = (((rng.random(shape) < 0.2) + (rng.random(shape) < 0.1)).astype(np.float32)
                    for _ in range(2))
        module.train()
        for _ in range(BN_WARMUP):          # running statistics for the eval-mode energy walk
            module.forward(x_a, x_v)

        def step():
            y_a, y_v = module.forward(x_a, x_v)
            module.backward(np.ones_like(y_a), np.ones_like(y_v))

        t = timeit(step, repeat=repeat)
        ops = _core_ops(module)
        # the walker counts per first-axis entry of its inputs (T here): totals for the batch
        rep = energy_report(module, [(x_a, x_v)])
        out[n] = {"core_ops": ops, "energy_mJ": rep["totals"]["snn_mJ"] * rep["samples"], "time_s": t}
        module.clear_cache()
    lo, hi = out[g["tokens"]], out[g["factor"] * g["tokens"]]

    def ratio(key):
        return hi[key] / lo[key] if lo[key] else None

    return {"at_N": lo, "at_4N": hi, "ops_ratio": ratio("core_ops"), "energy_ratio": ratio("energy_mJ"),
            "time_ratio": ratio("time_s")}


# ------------------------------------------------------------------------------ step time

def step_times(modes, repeat: int, rounds: int = 3) -> dict:
    """Median training-step time per mode (forward, cross-entropy, backward, AdamW; cpu preset,
    batch 16 of random inputs), measured round-robin over the modes so that every mode sees
    the same machine load (the epochs' own timings do not: runs hours apart on a shared
    machine)."""
    from refsnn.models import config
    steps = {}
    for mode in modes:
        _, steps[mode] = training_step(config("cpu", fusion=mode, classes=8), 16, seed=2)
        steps[mode]()                            # compile and allocate outside the timing
    times = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            times[mode].append(timeit(steps[mode], repeat=repeat, warmup=0))
    return {mode: float(np.median(t)) for mode, t in times.items()}


# ------------------------------------------------------------------------------ output

def _fmt_ratio(r) -> str:
    return "-" if r is None else f"{r:.1f}x"


def summarise(mode: str, runs: list, growth: dict, step_time: float) -> dict:
    from refsnn.models import Config
    from refsnn.models.snnergy import SNNergy
    acc = np.array([r["accuracy"] for r in runs])
    params = SNNergy(Config.from_dict(runs[0]["config"])).num_parameters()
    steps = [t for r in runs for t in r["step_times_s"]]
    return {"mode": mode, "seeds": [r["seed"] for r in runs], "accuracies": acc.tolist(),
            "accuracy_mean": float(acc.mean()), "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "parameters": int(params), "macs": float(np.mean([r["macs"] for r in runs])),
            "acs": float(np.mean([r["acs"] for r in runs])),
            "energy_mJ": float(np.mean([r["energy_mJ"] for r in runs])),
            "step_time_s": step_time, "epoch_step_time_s": float(np.median(steps)), "growth": growth,
            "wall_time_s": float(sum(r["wall_time_s"] for r in runs))}


def table(rows: list) -> str:
    g = GROWTH_GEOMETRY
    head = ("| mode | test accuracy (mean ± sd) | parameters | MACs / sample | ACs / sample | "
            f"energy / sample (mJ) | train step (s) | fusion ops "
            f"{g['tokens']}→{g['factor'] * g['tokens']} tokens | fusion energy | fusion time |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        gr = r["growth"]
        lines.append(f"| `{r['mode']}` | {r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f} | "
                     f"{r['parameters']:,} | {r['macs'] / 1e6:.1f} M | {r['acs'] / 1e6:.1f} M | "
                     f"{r['energy_mJ']:.4f} | {r['step_time_s']:.2f} | "
                     f"{_fmt_ratio(gr['ops_ratio'])} | "
                     f"{_fmt_ratio(gr['energy_ratio'])} | {_fmt_ratio(gr['time_ratio'])} |")
    return "\n".join(lines)


def plot(rows: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    # labels alternately above and below, in order of energy, so neighbours do not overlap
    for i, r in enumerate(sorted(rows, key=lambda r: r["energy_mJ"])):
        ax.errorbar(r["energy_mJ"], r["accuracy_mean"], yerr=r["accuracy_sd"], fmt="o", capsize=3)
        ax.annotate(r["mode"], (r["energy_mJ"], r["accuracy_mean"]), textcoords="offset points",
                    xytext=(6, 5 if i % 2 == 0 else -13))
    ax.set_xlabel("energy per test sample (mJ, SPEC section 7)")
    ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.set_title("Fusion modes on synthetic, cpu preset")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from refsnn.fusion import fusion_modes
    from refsnn.recipes import recipe
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(fusion_modes()), choices=fusion_modes())
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="default: the synthetic recipe's")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a synthetic data-set option, e.g. n_train=160 (repeatable)")
    ap.add_argument("--threads", type=int, help="numba and BLAS threads (default: all cores)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of the growth measurement")
    ap.add_argument("--out", default=os.path.join("runs", "compare_fusion"))
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs with the same options")
    args = ap.parse_args(argv)

    options = {k: v for k, v in recipe("synthetic").items() if k not in ("data", "config")}
    if args.epochs is not None:
        options["epochs"] = args.epochs
    options["threads"] = args.threads
    data_options = {}
    for item in args.data_option:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--data-option: expected KEY=VALUE, got {item!r}")
        data_options[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    set_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    trained = {}
    for mode in args.modes:
        print(f"{mode}:", file=sys.stderr, flush=True)
        trained[mode] = [train_one(mode, s, args.out, options, data_options, args.reuse) for s in args.seeds]
    print("timing training steps and fusion modules", file=sys.stderr, flush=True)
    step = step_times(args.modes, args.repeat)
    rows = [summarise(mode, trained[mode], fusion_growth(mode, args.repeat), step[mode])
            for mode in args.modes]
    wall = time.perf_counter() - t0
    command = "python benchmarks/compare_fusion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    g = GROWTH_GEOMETRY
    text = "\n".join([
        f"Fusion modes on `synthetic` (cpu preset), seeds {args.seeds}, {options['epochs']} epochs, "
        f"batch {options['batch_size']}, AdamW lr {options['lr']} (the `synthetic` recipe)"
        + (f", data options {data_options}" if data_options else "") + ".",
        "",
        table(rows),
        "",
        f"Energy: SPEC section 7 (E_MAC 4.6 pJ, E_AC 0.9 pJ) on the test batches of the best "
        f"checkpoint, mean over seeds, from `refsnn.energy.report` with the current accounting "
        f"(mbt's analog bottleneck MACs included). Train step: forward, loss, backward and AdamW on a batch of "
        f"{options['batch_size']}, median of 3 rounds over all modes in turn. Fusion growth: one "
        f"module at the cpu preset's stage-{g['stage']} width, T = {g['T']}, batch {g['batch']}, "
        f"{g['tokens']} -> {g['factor'] * g['tokens']} tokens: attention-core operations (SSA macs, "
        f"Q-K additions + kept), energy, forward + backward time.",
        "",
        f"Command: `{command.strip()}`; total {wall / 60:.1f} min.",
        f"Machine: {machine()}; BLAS: {blas_report()}.",
    ])
    with open(os.path.join(args.out, "fusion_table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "fusion_results.json"), "w") as f:
        json.dump({"rows": rows, "options": options, "data_options": data_options, "seeds": args.seeds,
                   "command": command, "wall_time_s": wall, "machine": machine(), "blas": blas_report()},
                  f, indent=1, default=float)
    plot(rows, os.path.join(args.out, "fusion_accuracy_energy.png"))
    print(text)
    print(f"wrote {args.out}/fusion_table.md, fusion_results.json, fusion_accuracy_energy.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

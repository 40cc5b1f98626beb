"""Figures of a run: ``python -m refsnn.plot RUN_DIR [--out DIR]``.

Writes ``curves.png`` (training and validation loss and accuracy per epoch, from
metrics.jsonl) and, when report.json exists, ``firing_rates.png`` (the output spike rate of
every LIF layer of the tested model) and ``energy.png`` (energy per layer, MAC and AC parts).
Needs matplotlib: ``pip install -e ".[plot]"``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["plot_run", "main"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("matplotlib is not installed; install the plot extra: pip install -e \".[plot]\"") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_run(run_dir, out=None) -> list[str]:
    run_dir = os.fspath(run_dir)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        raise ValueError(f"{run_dir}: no metrics.jsonl (not a run directory of refsnn.train?)")
    rows = []
    with open(metrics_path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{metrics_path}: line {n} is not JSON") from None
    if not rows:
        raise ValueError(f"{metrics_path}: no epoch finished yet")
    plt = _pyplot()
    out = os.fspath(out or run_dir)
    os.makedirs(out, exist_ok=True)
    written = []
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, ax in (("train_loss", "train", ax1), ("val_loss", "validation", ax1),
                           ("train_accuracy", "train", ax2), ("val_accuracy", "validation", ax2)):
        pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    report_path = os.path.join(run_dir, "report.json")
    if os.path.isfile(report_path):
        with open(report_path) as f:
            rep = json.load(f)
        rates = rep.get("firing_rates") or {}
        if rates:
            names = list(rates)
            fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(names))))
            ax.barh(range(len(names)), [rates[n] for n in names], color="tab:orange")
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.invert_yaxis()
            ax.set(xlabel="spikes per neuron and time step", title="firing rate per LIF layer")
            ax.grid(axis="x", alpha=0.3)
            fig.tight_layout()
            path = os.path.join(out, "firing_rates.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        layers = (rep.get("energy") or {}).get("layers") or {}
        if layers:
            names = list(layers)
            c = rep["energy"]["constants"]
            mac = [layers[n]["macs"] * c["E_MAC_pJ"] * 1e-6 for n in names]       # pJ -> uJ
            ac = [layers[n]["acs"] * c["E_AC_pJ"] * 1e-6 for n in names]
            fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(names))))
            ax.barh(range(len(names)), mac, label="MAC", color="tab:red")
            ax.barh(range(len(names)), ac, left=mac, label="AC", color="tab:blue")
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.invert_yaxis()
            t = rep["energy"]["totals"]
            ax.set(xlabel="energy per sample (uJ)",
                   title=f"energy per layer: SNN {t['snn_mJ']:.4f} mJ, ANN reference {t['ann_mJ']:.4f} mJ")
            ax.legend()
            ax.grid(axis="x", alpha=0.3)
            fig.tight_layout()
            path = os.path.join(out, "energy.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refsnn.plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="folder for the PNGs (default: the run directory)")
    args = ap.parse_args(argv)
    try:
        for path in plot_run(args.run_dir, args.out):
            print(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

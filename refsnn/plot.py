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


def _read_metrics(run_dir: str) -> list[dict]:
    """The rows of ``run_dir``/metrics.jsonl, one per finished epoch."""
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
    return rows


def _save(plt, fig, out: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_curves(plt, rows: list[dict], title: str):
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
    fig.suptitle(title)
    return fig


def _layer_bars(plt, names: list[str]):
    """A horizontal bar chart with one row per layer name, the first at the top."""
    fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(names))))
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return fig, ax


def _plot_firing_rates(plt, rates: dict):
    names = list(rates)
    fig, ax = _layer_bars(plt, names)
    ax.barh(range(len(names)), [rates[n] for n in names], color="tab:orange")
    ax.set(xlabel="spikes per neuron and time step", title="firing rate per LIF layer")
    return fig


def _plot_energy(plt, energy: dict):
    layers, c, t = energy["layers"], energy["constants"], energy["totals"]
    names = list(layers)
    mac = [layers[n]["macs"] * c["E_MAC_pJ"] * 1e-6 for n in names]       # pJ -> uJ
    ac = [layers[n]["acs"] * c["E_AC_pJ"] * 1e-6 for n in names]
    fig, ax = _layer_bars(plt, names)
    ax.barh(range(len(names)), mac, label="MAC", color="tab:red")
    ax.barh(range(len(names)), ac, left=mac, label="AC", color="tab:blue")
    ax.set(xlabel="energy per sample (uJ)",
           title=f"energy per layer: SNN {t['snn_mJ']:.4f} mJ, ANN reference {t['ann_mJ']:.4f} mJ")
    ax.legend()
    return fig


def plot_run(run_dir, out=None) -> list[str]:
    """Writes the figures of the module docstring into ``out`` (default: the run directory);
    returns their paths."""
    run_dir = os.fspath(run_dir)
    rows = _read_metrics(run_dir)
    plt = _pyplot()
    out = os.fspath(out or run_dir)
    os.makedirs(out, exist_ok=True)
    title = os.path.basename(os.path.abspath(run_dir))
    written = [_save(plt, _plot_curves(plt, rows, title), out, "curves.png")]
    report_path = os.path.join(run_dir, "report.json")
    if os.path.isfile(report_path):
        with open(report_path) as f:
            rep = json.load(f)
        if rep.get("firing_rates"):
            written.append(_save(plt, _plot_firing_rates(plt, rep["firing_rates"]), out,
                                 "firing_rates.png"))
        if (rep.get("energy") or {}).get("layers"):
            written.append(_save(plt, _plot_energy(plt, rep["energy"]), out, "energy.png"))
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

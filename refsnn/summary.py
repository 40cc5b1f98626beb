"""Model summary: per-layer output shape, parameters and FLOPs; with data, also input firing
rate, MACs, ACs and energy (SPEC section 7), and the totals.

    python -m refsnn.summary --config cpu
    python -m refsnn.summary --config cpu --data synthetic --batches 4 [--json]
    python -m refsnn.summary --checkpoint runs/cpu/best.npz --data synthetic

FLOPs are the dense multiply-accumulates of a layer per sample over all time steps (what the
layer would cost with real-valued inputs); MACs and ACs are what the spiking network executes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

import numpy as np

from .energy import report
from .models.configs import PRESETS, config
from .nn.counting import SYNAPSE

__all__ = ["summarize", "format_summary", "main"]


def _probe_batch(model, batch_size=1, seed=0):
    c = model.config
    rng = np.random.default_rng(seed)
    S = c.image_size
    audio = rng.normal(size=(batch_size, c.audio_channels, S, S)).astype(model.dtype)
    visual = rng.random((batch_size, c.T, c.visual_channels, S, S)).astype(model.dtype)
    return audio, visual


def summarize(model, batches=None) -> dict:
    """Per-layer rows and totals. Without ``batches`` one random probe sample gives the shapes
    and FLOPs (its firing rates mean nothing and are not reported)."""
    measured = batches is not None
    rep = report(model, batches if measured else [_probe_batch(model)])
    rows = OrderedDict()
    for name, m in model.named_modules():
        if m.energy_role != SYNAPSE:                    # convs, linear maps, attention cores
            continue
        e = rep["layers"].get(name)
        read = getattr(m, "last_read", None)            # what a conv or linear layer read
        shape = None if read is None else list(read.output_shape)
        if shape is not None:
            shape[0 if len(shape) == 2 else 1] = "B"    # [B, out] or [T, B, ...]
        params = sum(p.value.size for p in m._params.values())
        steps = model.config.T if read is None else read.steps   # attention cores run every step
        row = {"type": type(m).__name__, "output_shape": shape, "params": int(params),
               "flops": e["ann_macs"] * steps if e else None}
        if measured and e:
            row.update(kind=e["kind"], input_firing_rate=e["input_firing_rate"], macs=e["macs"],
                       acs=e["acs"], energy_mJ=e["energy_mJ"])
        rows[name] = row
    totals = {"params": model.num_parameters(), "flops": float(sum(r["flops"] or 0 for r in rows.values()))}
    if measured:
        totals.update(rep["totals"])
        totals["samples"] = rep["samples"]
    return {"config": model.config.to_dict(), "layers": rows, "totals": totals,
            "firing_rates": rep["firing_rates"] if measured else None,
            "machine_ops": rep["machine_ops"] if measured else None}


def format_summary(s: dict) -> str:
    rows = s["layers"]
    measured = s["totals"].get("snn_mJ") is not None
    width = max(len(n) for n in rows) if rows else 10
    head = f"{'layer':<{width}}  {'type':<8} {'output':<22} {'params':>9} {'FLOPs':>10}"
    if measured:
        head += f"  {'in-rate':>7} {'MACs':>9} {'ACs':>9} {'energy uJ':>10}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        shape = "x".join(str(d) for d in r["output_shape"]) if r["output_shape"] else "-"
        flops = f"{r['flops']:10.3g}" if r["flops"] is not None else f"{'-':>10}"
        line = f"{name:<{width}}  {r['type']:<8} {shape:<22} {r['params']:9,d} {flops}"
        if measured and "kind" in r:
            rate = "-" if r["input_firing_rate"] is None else f"{r['input_firing_rate']:.3f}"
            line += f"  {rate:>7} {r['macs']:9.3g} {r['acs']:9.3g} {r['energy_mJ'] * 1e3:10.4f}"
        lines.append(line)
    t = s["totals"]
    lines.append("-" * len(head))
    lines.append(f"parameters {t['params']:,}; dense FLOPs per sample {t['flops']:.4g}")
    if measured:
        lines.append(f"per sample over {t['samples']} samples: SNN {t['snn_mJ']:.4f} mJ "
                     f"({t['macs']:.3g} MACs + {t['acs']:.3g} ACs), ANN reference {t['ann_mJ']:.4f} mJ "
                     f"({t['ann_macs']:.3g} MACs), ANN/SNN {t['ann_over_snn']:.2f}x")
        m = s["machine_ops"]
        lines.append(f"packed kernels: {m['popcount_words']:.0f} popcount and {m['and_words']:.0f} AND "
                     f"words per sample (machine operations, not in the energy)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refsnn.summary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(PRESETS), help="model preset (default cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (repeatable)")
    ap.add_argument("--checkpoint", help="a checkpoint (.npz) written by refsnn.train: its config and weights")
    ap.add_argument("--data", help="measure firing rates and energy on this data set (e.g. synthetic)")
    ap.add_argument("--root", help="the data set's folder (real data sets)")
    ap.add_argument("--cache", help="the prepared cache folder")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    from .checkpoint import load_model, parse_overrides
    try:
        overrides = parse_overrides(args.set)
        if args.checkpoint and (args.config or overrides):
            raise ValueError("--checkpoint carries its own config; --config and --set cannot change it "
                             "(summarise the checkpoint alone, or a preset without --checkpoint)")
        model = load_model(args.checkpoint) if args.checkpoint else None
        try:
            c = model.config if model is not None else config(args.config or "cpu", **overrides)
        except ValueError as exc:
            raise ValueError(f"--set: {exc}" if overrides else str(exc)) from None
        ds = None
        if args.data:
            from .data import BatchIterator, load_dataset
            ds = load_dataset(args.data, args.split, root=args.root, cache=args.cache,
                              image_size=c.image_size)
        if model is None:
            from .models.snnergy import SNNergy
            if ds is not None and "classes" not in overrides:
                # the head as the data set needs it, as refsnn.train builds it
                c = c.replace(classes=len(ds.class_names))
            model = SNNergy(c)
        batches = None
        if ds is not None:
            it = BatchIterator(ds, min(args.batch_size, len(ds)), shuffle=False, drop_last=False)
            batches = []
            for i, b in enumerate(it):
                if i >= args.batches:
                    break
                batches.append((b.audio.astype(model.dtype, copy=False), b.frames.astype(model.dtype, copy=False)))
            it.close()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = summarize(model, batches)
    print(json.dumps(s, indent=1, default=_jsonable) if args.json else format_summary(s))
    return 0


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())

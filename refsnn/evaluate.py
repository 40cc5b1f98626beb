"""Evaluate a checkpoint: ``python -m refsnn.evaluate CHECKPOINT --data NAME [--split test]``.

Prints accuracy, per-class accuracy, the confusion matrix and the energy report (SPEC
section 7) measured on the same split; ``--json`` prints everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .checkpoint import load_model
from .energy import format_report, report
from .evaluation import energy_batches as first_batches
from .evaluation import evaluate, load_splits, parse_data_options

__all__ = ["main", "run"]


def run(checkpoint, data=None, *, split="test", root=None, cache=None, batch_size=32, energy_batches=4,
        seed=None, data_options=None, progress=True) -> dict:
    """Evaluate ``checkpoint`` on a split. The data set, its options, root, cache and the seed
    default to those the checkpoint was trained with."""
    model = load_model(checkpoint)
    meta = model.checkpoint_meta
    trained = meta.get("options", {})
    data = data or meta.get("data") or "synthetic"
    options = dict(trained.get("data_options", {})) if data == meta.get("data") else {}
    options.update(data_options or {})
    seed = trained.get("seed", 0) if seed is None else seed
    source = meta.get("source") if isinstance(meta.get("source"), dict) and data == meta.get("data") else {}
    root = source.get("root") if root is None else root          # where the run found its data
    cache = source.get("cache") if cache is None else cache
    splits = load_splits(data, image_size=model.config.image_size, seed=seed, root=root, cache=cache,
                         progress=progress, **options)
    dataset = splits[split]
    if dataset.num_classes != model.config.classes:
        raise ValueError(f"{checkpoint}: the model has {model.config.classes} classes, data set {data!r} has "
                         f"{dataset.num_classes}")
    result = evaluate(model, dataset, batch_size=batch_size, progress=progress, desc=split)
    result["class_names"] = [str(n) for n in dataset.class_names]
    result["energy"] = report(model, first_batches(dataset, model.dtype, batch_size=batch_size,
                                                    count=energy_batches))
    result.update(checkpoint=str(checkpoint), split=split, data=data)
    return result


def format_result(r: dict) -> str:
    names = r["class_names"]
    lines = [f"{r['data']} {r['split']}: accuracy {r['accuracy']:.4f} over {r['samples']} clips "
             f"(loss {r['loss']:.4f}; checkpoint {r['checkpoint']})", "", "per-class accuracy:"]
    for name, acc in zip(names, r["per_class_accuracy"]):
        lines.append(f"  {name:<24} {'-' if acc is None else f'{acc:.3f}'}")
    conf = np.array(r["confusion"])
    lines += ["", "confusion (rows: true class, columns: predicted):"]
    width = max(4, len(str(conf.max())) + 1)
    lines.append(" " * 6 + "".join(f"{j:>{width}d}" for j in range(len(names))))
    for i, row in enumerate(conf):
        lines.append(f"{i:>4d}  " + "".join(f"{v:>{width}d}" for v in row))
    lines += ["", format_report(r["energy"], top=10)]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refsnn.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="best.npz or last.npz of a run")
    ap.add_argument("--data", help="data set (default: the one the checkpoint was trained on)")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the data set (default: the checkpoint's)")
    ap.add_argument("--root")
    ap.add_argument("--cache")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--energy-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, help="seed of the validation hold-out / synthetic set (default: the run's)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        r = run(args.checkpoint, args.data, split=args.split, root=args.root, cache=args.cache,
                batch_size=args.batch_size, energy_batches=args.energy_batches, seed=args.seed,
                data_options=parse_data_options(args.data_option), progress=not args.no_progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=1, default=float) if args.json else format_result(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

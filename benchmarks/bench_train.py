"""One full training epoch of the ``cpu`` preset on ``synthetic``: samples/s and where the time goes.

    python benchmarks/bench_train.py [--threads 2] [--augment] [--no-fit]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py

The epoch runs the pieces ``refsnn.train.fit`` runs, in its order (the prefetching
``BatchIterator``, forward and loss, backward, gradient norm + AdamW + schedule), with a clock
around each, and prints each piece's share of the epoch. "data" is the time the training loop
waits for its next batch; the batch assembly itself runs in the iterator's background thread, and
its cost on its own (every batch of the epoch assembled with nothing else running) is printed
beside it. Then, unless ``--no-fit``, ``fit`` itself trains one epoch in a temporary folder and
its own samples/s (from metrics.jsonl) is printed, so the harness can be checked against the
real loop. Target (issue 6): data < 10% of the epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import blas_report, machine, set_threads  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--augment", action="store_true",
                    help="crop, flip and SpecAugment in the loader (the real-data recipes' switches)")
    ap.add_argument("--no-fit", action="store_true", help="skip the check against fit() itself")
    args = ap.parse_args(argv)

    from refsnn.data import BatchIterator
    from refsnn.functional import cross_entropy_backward, cross_entropy_forward
    from refsnn.models import SNNergy, config
    from refsnn.optim import AdamW, CosineSchedule, default_decay_filter, grad_norm
    from refsnn.recipes import DEFAULTS
    from refsnn.evaluation import load_splits, model_inputs
    from refsnn.training import build_transform, check_options, fit

    set_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}")
    import numba
    print(f"numba threads: {numba.get_num_threads()}")

    c = config(args.config)
    t0 = time.perf_counter()
    splits = load_splits("synthetic", image_size=c.image_size, seed=0, progress=False)
    t_load = time.perf_counter() - t0
    train = splits["train"]
    c = c.replace(classes=len(train.class_names))
    opts = check_options(dict(batch_size=args.batch_size, crop=args.augment, flip=args.augment,
                         specaugment=args.augment))
    transform = build_transform(opts)
    print(f"data: synthetic train {len(train)} clips (generated in {t_load:.1f} s), batch {args.batch_size}, "
          f"augmentation {'crop+flip+SpecAugment' if args.augment else 'none'}")

    # the loader alone: every batch of one epoch, nothing else running
    t0 = time.perf_counter()
    n = 0
    with BatchIterator(train, args.batch_size, shuffle=True, seed=0, epoch=0, drop_last=True,
                       prefetch=0, transform=transform) as it:
        for batch in it:
            n += len(batch)
    t_loader = time.perf_counter() - t0

    model = SNNergy(c, seed=0)
    params = model.parameters()
    optimizer = AdamW(params, lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"],
                      decay_filter=default_decay_filter)
    steps = len(train) // args.batch_size
    schedule = CosineSchedule(optimizer, total_steps=steps, warmup_steps=steps // 4)
    # compile every kernel outside the measured epoch (fit pays this once per process too)
    with BatchIterator(train, args.batch_size, shuffle=False, drop_last=True) as it:
        warm = next(iter(it))
    logits = model.forward(*model_inputs(warm, model.dtype))
    loss, cache = cross_entropy_forward(logits, warm.targets(c.classes, 0.1))
    model.backward(cross_entropy_backward(cache))
    model.zero_grad()

    parts = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0)
    model.train()
    t_epoch0 = time.perf_counter()
    with BatchIterator(train, args.batch_size, shuffle=True, seed=0, epoch=1, drop_last=True,
                       transform=transform) as it:
        batches = iter(it)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                parts["data"] += time.perf_counter() - t0
                break
            t1 = time.perf_counter()
            model.zero_grad()
            logits = model.forward(*model_inputs(batch, model.dtype))
            loss, cache = cross_entropy_forward(logits, batch.targets(c.classes, 0.1))
            t2 = time.perf_counter()
            model.backward(cross_entropy_backward(cache))
            t3 = time.perf_counter()
            grad_norm(params)
            optimizer.step()
            schedule.step()
            t4 = time.perf_counter()
            parts["data"] += t1 - t0
            parts["forward"] += t2 - t1
            parts["backward"] += t3 - t2
            parts["optimizer"] += t4 - t3
    epoch = time.perf_counter() - t_epoch0
    samples = steps * args.batch_size
    print(f"\n{args.config} epoch: {steps} steps, {samples} samples in {epoch:.1f} s = "
          f"{samples / epoch:.1f} samples/s ({epoch / steps:.3f} s per step)")
    for k, v in parts.items():
        print(f"  {k:<10} {v:7.2f} s  {100 * v / epoch:5.1f}%")
    other = epoch - sum(parts.values())
    print(f"  {'other':<10} {other:7.2f} s  {100 * other / epoch:5.1f}%")
    share = parts["data"] / epoch
    print(f"loader alone (no prefetch, nothing else running): {n} samples in {t_loader:.2f} s = "
          f"{n / t_loader:.0f} samples/s, {100 * t_loader / epoch:.1f}% of the epoch's time")
    print(f"data share of the epoch: {100 * share:.1f}% (target < 10%: {'met' if share < 0.10 else 'NOT met'})")

    if not args.no_fit:
        with tempfile.TemporaryDirectory() as out:
            fit(config(args.config), "synthetic", out=out, epochs=1, batch_size=args.batch_size,
                threads=args.threads, progress=False, verbose=False, energy_batches=1,
                crop=args.augment, flip=args.augment, specaugment=args.augment)
            with open(os.path.join(out, "metrics.jsonl")) as f:
                line = json.loads(f.readline())
        print(f"fit() itself, one epoch: {line['samples_per_s']:.1f} samples/s "
              f"(epoch {line['epoch_time_s']:.1f} s; ratio harness/fit "
              f"{(samples / epoch) / line['samples_per_s']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

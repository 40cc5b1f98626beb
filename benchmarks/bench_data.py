"""Data pipeline benchmark: is the loader ever the bottleneck of a ``cpu`` training step?

    python benchmarks/bench_data.py [--clips 12] [--seconds 10] [--image-size 64]

Prints, measured in one run:
1. prepare throughput (clips/s) on generated AVE-like mp4s (h264 320x240 25 fps + aac 44.1 kHz
   stereo, ``--seconds`` long, written by the imageio-ffmpeg binary), with 1 and 2 workers;
2. synthetic generation time of the default splits (1600/200/400 clips) at ``--image-size``;
3. BatchIterator throughput at batch 8 (samples/s, ms per batch) from the prepared cache and from
   the synthetic set, without and with the training augmentations (crop, flip, SpecAugment, mixup);
4. a ``cpu``-config forward+backward at batch 8 and
   the ratio step time / batch time (how many batches the loader makes per training step).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import blas_report, machine, timeit  # noqa: E402
from refsnn.data import BatchIterator, load_dataset  # noqa: E402
from refsnn.data import augment as aug  # noqa: E402
from refsnn.data.prepare import prepare  # noqa: E402
from refsnn.data.video import ffmpeg_exe  # noqa: E402

BATCH = 8


def write_ave_like(root: str, clips: int, seconds: float) -> None:
    os.makedirs(os.path.join(root, "AVE"), exist_ok=True)
    cats = ["Church bell", "Dog", "Truck"]
    rows = [f"{cats[i % 3]}&clip{i:03d}&good&0&10" for i in range(clips)]
    for i in range(clips):
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
                        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                        "-f", "lavfi", "-i", f"sine=frequency={300 + 150 * i}:sample_rate=44100",
                        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-ac", "2", os.path.join(root, "AVE", f"clip{i:03d}.mp4")], check=True)
    third = max(1, clips // 3)
    with open(os.path.join(root, "Annotations.txt"), "w") as f:
        f.write("Category&VideoID&Quality&StartTime&EndTime\n" + "\n".join(rows) + "\n")
    for name, part in (("trainSet.txt", rows[:clips - 2 * third]), ("valSet.txt", rows[clips - 2 * third:clips - third]),
                       ("testSet.txt", rows[clips - third:])):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(part) + "\n")


def iterate(dataset, transform, epochs: int) -> tuple[float, int]:
    """Seconds and samples for ``epochs`` passes of a prefetching BatchIterator at batch 8."""
    t0 = time.perf_counter()
    samples = 0
    for e in range(epochs):
        for batch in BatchIterator(dataset, BATCH, seed=0, epoch=e, transform=transform):
            samples += len(batch)
    return time.perf_counter() - t0, samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}")
    size = args.image_size
    transform = aug.Compose([aug.RandomResizedCrop(), aug.HorizontalFlip(), aug.SpecAugment(), aug.Mixup(0.2)])
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "ave")
        t0 = time.perf_counter()
        write_ave_like(root, args.clips, args.seconds)
        print(f"\nwrote {args.clips} mp4s of {args.seconds:g} s (320x240 25 fps h264 + aac) in "
              f"{time.perf_counter() - t0:.1f} s")
        print("1. prepare (decode, spectrogram, resize, atomic per-clip writes, consolidation)")
        for workers in (1, 2):
            cache = os.path.join(tmp, f"cache{workers}")
            report = prepare("ave", root, cache, image_size=size, progress=False, workers=workers)
            assert report.decoded == args.clips and not report.skipped, report
            print(f"   workers={workers}: {args.clips / report.seconds:6.2f} clips/s "
                  f"({1000 * report.seconds / args.clips:.0f} ms per clip)")
            t0 = time.perf_counter()
            again = prepare("ave", root, cache, image_size=size, progress=False)
            print(f"   rerun on the finished cache (nothing to decode): {time.perf_counter() - t0:.2f} s, "
                  f"reused {again.reused}")
        ave_train = load_dataset("ave", "train", cache=os.path.join(tmp, "cache1"), image_size=size)

        print(f"2. synthetic generation of the default splits at image size {size}")
        from refsnn.data import synthetic
        t0 = time.perf_counter()
        splits = {sp: load_dataset("synthetic", sp, image_size=size, seed=12345) for sp in ("train", "val", "test")}
        print(f"   {sum(len(d) for d in splits.values())} clips in {time.perf_counter() - t0:.1f} s")
        synthetic._generate_cached.cache_clear()

        print(f"3. BatchIterator at batch {BATCH} (prefetch thread, 2 batches ahead)")
        results = {}
        for label, ds, epochs in (("AVE cache, F=10", ave_train, max(1, 400 // len(ave_train))),
                                  ("synthetic, F=4", splits["train"], 1)):
            for aug_label, tr in (("no augmentation", None), ("crop+flip+specaug+mixup", transform)):
                seconds, samples = iterate(ds, tr, epochs)
                per_batch = seconds / (samples / BATCH)
                results[(label, aug_label)] = per_batch
                print(f"   {label:<16} {aug_label:<24} {samples / seconds:8.0f} samples/s "
                      f"({1000 * per_batch:.2f} ms per batch)")

    print("4. against a cpu-config training step (forward + backward, batch 8)")
    from refsnn.models import SNNergy, config
    model = SNNergy(config("cpu", classes=8))
    batch = next(iter(BatchIterator(splits["train"], BATCH, prefetch=0)))
    dlogits = np.full((BATCH, 8), 1.0 / BATCH, dtype=np.float32)

    def step():
        model.forward(batch.audio, batch.frames)
        model.backward(dlogits)

    step_s = timeit(step, repeat=5)
    print(f"   training step {1000 * step_s:.0f} ms")
    for (label, aug_label), per_batch in results.items():
        print(f"   {label:<16} {aug_label:<24} loader makes {step_s / per_batch:6.1f} batches per step "
              f"(loader share {100 * per_batch / step_s:.1f}% of a step)")


if __name__ == "__main__":
    main()

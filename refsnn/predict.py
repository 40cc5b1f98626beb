"""Classify one clip: ``python -m refsnn.predict CHECKPOINT --video clip.mp4 [--audio clip.wav]``.

The clip goes through the preprocessing of the checkpoint's data set (frames at its fps, the
audio track or the given wav mixed to mono, resampled to 22,050 Hz, log spectrogram, resized
to the model's image size) and the top-5 classes are printed with their probabilities. A still
image (``--video photo.jpg``) is accepted as a single frame, as UrbanSound8K-AV uses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .checkpoint import load_model
from .functional.loss import softmax

__all__ = ["predict", "main"]

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def _check_sampling(top, fps, num_frames) -> None:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"--top: expected a positive integer, got {top!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps: expected a frame rate > 0, got {fps!r}")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer))
                                   or num_frames < 1):
        raise ValueError(f"--frames: expected a positive integer, got {num_frames!r}")


def predict(checkpoint, video, audio=None, *, top=5, fps=None, num_frames=None) -> list[tuple[str, float]]:
    """Top classes ``[(name, probability), ...]`` for one clip. ``fps`` and ``num_frames``
    (None: the data set's) change how the clip is sampled."""
    _check_sampling(top, fps, num_frames)
    from .data.base import ClipSource
    from .data import PreparedDataset, dataset_names
    from .data.cache import cache_params
    from .data.prepare import decode_clip
    model = load_model(checkpoint)
    meta = getattr(model, "checkpoint_meta", {})
    names = meta.get("class_names") or [str(k) for k in range(model.config.classes)]
    data = meta.get("data")
    for path, what in ((video, "--video"), (audio, "--audio")):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{what} {path}: no such file")
    # a real data set's own preprocessing; for synthetic (no files) AVE's video conventions
    prepared = dataset_names(PreparedDataset)
    base = data if data in prepared else "ave"
    options = {}
    if num_frames is not None or data not in prepared:
        options["num_frames"] = int(model.config.T if num_frames is None else num_frames)
    if fps is not None:
        options["fps"] = float(fps)
    params = cache_params(base, model.config.image_size, **options)
    params.setdefault("fps", 1.0 if fps is None else float(fps))
    still = video.lower().endswith(_IMAGE_EXT)
    src = ClipSource(clip_id=os.path.basename(video), split="test", label=-1,
                     audio_path=audio or video, audio_kind="file" if audio else "video",
                     visual_path=video, visual_kind="image" if still else "video")
    if still and audio is None:
        raise ValueError("--audio: a still image has no audio track; give the clip's sound file")
    spec, frames = decode_clip(src, params)
    a = spec[None].astype(model.dtype)
    v = (frames.astype(np.float32) / np.float32(255.0))[None].astype(model.dtype)
    probs = softmax(model.forward(a, v).astype(np.float64))[0]
    order = np.argsort(-probs)[:top]
    return [(str(names[k]), float(probs[k])) for k in order]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refsnn.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--video", required=True, help="the clip (mp4, flv, ...) or a still image")
    ap.add_argument("--audio", help="a sound file to use instead of the video's audio track")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--fps", type=float, help="frame rate to sample (default: the data set's)")
    ap.add_argument("--frames", type=int, help="frames kept per clip (default: the data set's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        ranked = predict(args.checkpoint, args.video, args.audio, top=args.top, fps=args.fps,
                         num_frames=args.frames)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"class": n, "probability": p} for n, p in ranked]))
    else:
        for rank, (name, p) in enumerate(ranked, 1):
            print(f"{rank}. {name:<28} {p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

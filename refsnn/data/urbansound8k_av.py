"""UrbanSound8K-AV (the SMMT audio-visual pairing of UrbanSound8K), SPEC section 9.

``Dataset_v3_sound/<class>/<stem>.wav`` paired with ``Dataset_v3_vision/<class>/<stem>.jpg``.
Classes: the class folders of ``Dataset_v3_sound``, sorted alphabetically (the vision folder must
have the same ones). Split per class on the sorted stems: the first ``(7 * n) // 10`` are train,
the rest test; validation is a seeded 10% of train. One still image per clip (F = 1; the model
repeats it over T). A wav without its image is skipped at decode time; images without a wav are
reported.
"""
from __future__ import annotations

import os

from .base import ClipSource, Manifest
from .layout import LayoutError, require_dir
from .video import IMAGE_SUFFIXES

__all__ = ["LAYOUT", "DEFAULTS", "VAL_FROM", "scan"]

LAYOUT = """\
<root>/
  Dataset_v3_sound/<class>/<stem>.wav
  Dataset_v3_vision/<class>/<stem>.jpg     same class folders and stems"""
DEFAULTS = dict(num_frames=1)
VAL_FROM = "train"


def _stems(folder: str, suffixes: tuple) -> dict:
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in suffixes and stem not in out:
            out[stem] = os.path.join(folder, name)
    return out


def scan(root: str, params: dict) -> Manifest:
    require_dir(root, "UrbanSound8K-AV root", LAYOUT)
    sound = require_dir(os.path.join(root, "Dataset_v3_sound"), "UrbanSound8K-AV sound folder", LAYOUT)
    vision = require_dir(os.path.join(root, "Dataset_v3_vision"), "UrbanSound8K-AV vision folder", LAYOUT)
    classes = sorted(d for d in os.listdir(sound) if os.path.isdir(os.path.join(sound, d)))
    vision_classes = sorted(d for d in os.listdir(vision) if os.path.isdir(os.path.join(vision, d)))
    if not classes:
        raise LayoutError(f"{sound}: no class folders\nexpected layout:\n{LAYOUT}")
    if classes != vision_classes:
        only_sound = sorted(set(classes) - set(vision_classes))
        only_vision = sorted(set(vision_classes) - set(classes))
        raise ValueError(f"unknown class names: class folders differ between {sound} and {vision}: "
                         f"only in sound {only_sound}, only in vision {only_vision}")
    clips, notes = [], []
    for label, cls in enumerate(classes):
        wavs = _stems(os.path.join(sound, cls), (".wav",))
        images = _stems(os.path.join(vision, cls), IMAGE_SUFFIXES)
        stems = sorted(wavs)
        n_train = (7 * len(stems)) // 10
        for i, stem in enumerate(stems):
            image = images.get(stem, os.path.join(vision, cls, f"{stem}.jpg"))
            clips.append(ClipSource(f"{cls}/{stem}", "train" if i < n_train else "test", label,
                                    wavs[stem], "file", image, "image"))
        for stem in sorted(set(images) - set(wavs)):
            notes.append((f"{cls}/{stem}", "image without a wav: ignored"))
    if not clips:
        raise LayoutError(f"{sound}: no .wav files in the class folders\nexpected layout:\n{LAYOUT}")
    return Manifest("urbansound8k-av", classes, clips, notes)

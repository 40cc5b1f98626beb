"""Seeded training augmentations, each drawing only from the ``numpy.random.Generator`` it is given.

Functions work on arrays; the classes wrap them as composable ``transform(batch, rng) -> batch``
objects for ``BatchIterator(transform=...)``. Inputs are never modified; new arrays are returned.

- ``random_resized_crop``: per clip, one crop box (area fraction ``scale``, aspect ``ratio``,
  torchvision's sampling with 10 tries then a centre crop) applied to all of its frames, resized
  back to H x W by the pipeline's antialiased bilinear resize (``refsnn.data.resize``).
- ``horizontal_flip``: per clip with probability ``p``, all frames mirrored.
- ``spec_augment``: per clip, ``time_masks`` bands of at most ``max_time`` x W columns and
  ``freq_masks`` bands of at most ``max_freq`` x H rows set to that spectrogram's mean
  (SpecAugment, Park et al. 2019, on the log-spectrogram).
- ``mixup``: one ``lam ~ Beta(alpha, alpha)`` per batch and a random pairing ``perm``; inputs
  ``lam * x + (1 - lam) * x[perm]``; returns both label vectors and ``lam``.
"""
from __future__ import annotations

import math

import numpy as np

from .batching import Batch
from .resize import resize_weights

__all__ = [
    "random_resized_crop", "horizontal_flip", "spec_augment", "mixup",
    "Compose", "RandomResizedCrop", "HorizontalFlip", "SpecAugment", "Mixup",
]


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames: expected an array [B, F, 3, H, W], got "
                         f"{getattr(frames, 'shape', type(frames).__name__)}")


def _check_audio(audio: np.ndarray) -> None:
    if not isinstance(audio, np.ndarray) or audio.ndim != 4 or audio.shape[1] != 1:
        raise ValueError(f"audio: expected an array [B, 1, H, W], got {getattr(audio, 'shape', type(audio).__name__)}")


def _check_range(name: str, pair, low: float, high: float) -> tuple[float, float]:
    a, b = (float(v) for v in pair)
    if not (low <= a <= b <= high):
        raise ValueError(f"{name}: expected (min, max) with {low} <= min <= max <= {high}, got {pair!r}")
    return a, b


def _crop_box(rng, h: int, w: int, scale, ratio) -> tuple[float, float, float, float]:
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if 0 < cw <= w and 0 < ch <= h:
            return rng.uniform(0, h - ch), rng.uniform(0, w - cw), ch, cw
    # fall back to the largest centred box within the ratio range
    aspect = min(max(w / h, ratio[0]), ratio[1])
    cw, ch = (w, w / aspect) if w / h < aspect else (h * aspect, h)
    return (h - ch) / 2, (w - cw) / 2, ch, cw


def random_resized_crop(frames: np.ndarray, rng: np.random.Generator, *, scale=(0.35, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """``[B, F, 3, H, W]`` -> same shape; one crop box per clip (module docstring)."""
    _check_frames(frames)
    _check_rng(rng)
    scale = _check_range("scale", scale, 1e-6, 1.0)
    ratio = _check_range("ratio", ratio, 1e-3, 1e3)
    b, _, _, h, w = frames.shape
    out = np.empty(frames.shape, dtype=np.float32)
    for i in range(b):
        y0, x0, ch, cw = _crop_box(rng, h, w, scale, ratio)
        wr = resize_weights(h, h, start=y0, length=ch).astype(np.float32)
        wc = resize_weights(w, w, start=x0, length=cw).astype(np.float32)
        out[i] = np.matmul(np.matmul(wr, frames[i].astype(np.float32, copy=False)), wc.T)
    return out


def horizontal_flip(frames: np.ndarray, rng: np.random.Generator, *, p: float = 0.5) -> np.ndarray:
    """Mirror all frames of each clip with probability ``p`` -> ``[B, F, 3, H, W]``."""
    _check_frames(frames)
    _check_rng(rng)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p}")
    flip = rng.random(frames.shape[0]) < p
    out = frames.copy()
    out[flip] = frames[flip][..., ::-1]
    return out


def _check_masks(time_masks, max_time, freq_masks, max_freq) -> None:
    for name, v in (("time_masks", time_masks), ("freq_masks", freq_masks)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
    for name, v in (("max_time", max_time), ("max_freq", max_freq)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1], got {v}")


def spec_augment(audio: np.ndarray, rng: np.random.Generator, *, time_masks: int = 2, max_time: float = 0.15,
                 freq_masks: int = 2, max_freq: float = 0.15) -> np.ndarray:
    """Time and frequency masks on ``[B, 1, H, W]`` log-spectrograms (rows = frequency)."""
    _check_audio(audio)
    _check_rng(rng)
    _check_masks(time_masks, max_time, freq_masks, max_freq)
    out = audio.copy()
    b, _, h, w = audio.shape
    for i in range(b):
        fill = audio[i].mean()
        for count, size, axis_len, axis in ((freq_masks, max_freq, h, 1), (time_masks, max_time, w, 2)):
            for _ in range(count):
                width = int(rng.integers(0, int(size * axis_len) + 1))
                start = int(rng.integers(0, axis_len - width + 1))
                if axis == 1:
                    out[i, :, start:start + width, :] = fill
                else:
                    out[i, :, :, start:start + width] = fill
    return out


def mixup(audio: np.ndarray, frames: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
          alpha: float = 0.2):
    """-> ``(audio_mixed, frames_mixed, labels_a, labels_b, lam)`` (module docstring)."""
    _check_audio(audio)
    _check_frames(frames)
    _check_rng(rng)
    if not alpha > 0:
        raise ValueError(f"alpha: expected > 0, got {alpha}")
    if audio.shape[0] != frames.shape[0] or labels.shape != (audio.shape[0],):
        raise ValueError(f"labels: expected one label per clip ({audio.shape[0]}), got shape {labels.shape}")
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(audio.shape[0])
    lam32 = np.float32(lam)
    mix = lambda x: lam32 * x + (np.float32(1.0) - lam32) * x[perm]   # noqa: E731
    return mix(audio), mix(frames), labels.copy(), labels[perm].copy(), lam


class Compose:
    """Apply transforms in order, each with the same generator (so the whole chain is seeded)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ValueError(f"transforms: expected callables transform(batch, rng), got {type(t).__name__}")

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        for t in self.transforms:
            batch = t(batch, rng)
        return batch

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomResizedCrop:
    def __init__(self, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
        self.scale = _check_range("scale", scale, 1e-6, 1.0)
        self.ratio = _check_range("ratio", ratio, 1e-3, 1e3)

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        return batch.replace(frames=random_resized_crop(batch.frames, rng, scale=self.scale, ratio=self.ratio))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(scale={self.scale}, ratio={self.ratio})"


class HorizontalFlip:
    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        return batch.replace(frames=horizontal_flip(batch.frames, rng, p=self.p))

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"


class SpecAugment:
    def __init__(self, time_masks: int = 2, max_time: float = 0.15, freq_masks: int = 2, max_freq: float = 0.15):
        self.kwargs = dict(time_masks=time_masks, max_time=max_time, freq_masks=freq_masks, max_freq=max_freq)
        _check_masks(time_masks, max_time, freq_masks, max_freq)

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        return batch.replace(audio=spec_augment(batch.audio, rng, **self.kwargs))

    def __repr__(self) -> str:
        return f"SpecAugment({', '.join(f'{k}={v}' for k, v in self.kwargs.items())})"


class Mixup:
    """Sets ``Batch.labels_b`` and ``Batch.lam``; place it last (after the per-clip transforms)."""

    def __init__(self, alpha: float = 0.2):
        if not alpha > 0:
            raise ValueError(f"alpha: expected > 0, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        if batch.labels_b is not None:
            raise ValueError("batch: already mixed (Mixup applied twice)")
        audio, frames, labels_a, labels_b, lam = mixup(batch.audio, batch.frames, batch.labels, rng, alpha=self.alpha)
        return batch.replace(audio=audio, frames=frames, labels=labels_a, labels_b=labels_b, lam=lam)

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha})"

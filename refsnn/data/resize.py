"""The one image resize of the data pipeline: separable antialiased bilinear (triangle filter).

Used for spectrograms, video frames, still images and the random-resized-crop augmentation, so
that every input the model sees went through the same interpolation.

Method (the same as PIL's ``Image.resize(..., BILINEAR)`` and ``torch.nn.functional.interpolate(
mode="bilinear", antialias=True, align_corners=False)``): output pixel ``i`` of an axis covering
the source interval ``[start, start + length)`` has its centre at ``c = start + (i + 0.5) * s``
with ``s = length / out_len``; its value is the weighted mean of the source pixels ``j`` with
weights ``max(0, 1 - |j + 0.5 - c| / r)``, ``r = max(s, 1)``. When shrinking (``s > 1``) the
triangle widens with the scale, so every source pixel contributes (no aliasing); when enlarging
it is ordinary bilinear interpolation. Source pixels outside the image get no weight and the
weights are renormalised (edge pixels are never mixed with zeros).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["resize_weights", "resize2d", "RESIZE_METHOD"]

RESIZE_METHOD = "bilinear-antialias"


def resize_weights(in_len: int, out_len: int, start: float = 0.0, length: float | None = None) -> np.ndarray:
    """Interpolation matrix ``[out_len, in_len]`` (float64, rows sum to 1).

    ``start`` and ``length`` select a (possibly fractional) source interval, which is how the
    random-resized-crop augmentation crops and resizes in one step.
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize_weights: expected positive sizes, got in_len={in_len}, out_len={out_len}")
    length = float(in_len) if length is None else float(length)
    if not length > 0:
        raise ValueError(f"resize_weights: length must be > 0, got {length}")
    scale = length / out_len
    radius = max(scale, 1.0)
    centres = start + (np.arange(out_len) + 0.5) * scale            # [out]
    src = np.arange(in_len) + 0.5                                   # [in]
    w = np.maximum(0.0, 1.0 - np.abs(src[None, :] - centres[:, None]) / radius)
    total = w.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    if empty.any():
        # a centre so far outside the image that no pixel is within the radius: take the nearest
        nearest = np.clip(np.floor(centres[empty]).astype(np.int64), 0, in_len - 1)
        w[empty] = 0.0
        w[np.nonzero(empty)[0], nearest] = 1.0
        total = w.sum(axis=1, keepdims=True)
    return w / total


@lru_cache(maxsize=64)
def _cached_weights(in_len: int, out_len: int, dtype_str: str) -> np.ndarray:
    w = resize_weights(in_len, out_len).astype(dtype_str)
    w.setflags(write=False)
    return w


def resize2d(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize the last two axes of ``x`` (``[..., H, W]``) to ``[..., out_h, out_w]``.

    Float inputs keep their dtype; integer inputs (uint8 frames) are computed in float32.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"resize2d: expected an array [..., H, W], got shape {x.shape}")
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    h, w = x.shape[-2:]
    xf = x.astype(dtype, copy=False)
    if (h, w) == (out_h, out_w):
        return xf.copy() if xf is x else xf
    wr = _cached_weights(h, out_h, dtype.str)
    wc = _cached_weights(w, out_w, dtype.str)
    return np.matmul(np.matmul(wr, xf), wc.T)

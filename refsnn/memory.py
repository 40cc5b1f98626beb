"""How much memory a training step needs, estimated before training starts.

The backward pass needs what the forward keeps in the layers' caches (spikes, bit-packed
operands, BatchNorm inputs, ...). That is measured exactly on small probe steps of batch 2,
by walking every module's cache after the forward, and extrapolated: the caches grow linearly
with the batch, with T (a part is computed once per sample, outside the time loop) and with the
number of pixels, plus a term in pixels squared for attention cores that keep a token x token
map (SSA). Three probes fix the three coefficients:

    cache(B, T, S) = B * [(a + b T) S^2 + c T S^4]      S = image side

With the cpu preset (batch 4, sides 64 and 128), the peak of NumPy allocations during forward
and backward was measured with tracemalloc at 1.6 to 1.8 times the cached bytes, so a step is
estimated at twice its cache, plus the parameters, their gradients and two optimizer moments.
The estimates agree with the caches of real steps within 5% (tests/test_run_hardening.py).
The probes' convolutions are too small for the Winograd path, whose forward also keeps its input
transforms (``refsnn.kernels.winograd.Prepared``): at the `paper` preset, batch 8, about 145 MiB
the probes do not see, within the factor's margin (estimated 2.6 GiB, measured peak 2.21-2.23
GiB over the process's size before the step).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["StepEstimate", "estimate_step", "available_memory", "cached_bytes", "format_bytes",
           "check_step_memory", "paper_reference"]

PEAK_OVER_CACHE = 2.0      # peak of forward + backward over the cached activations (measured 1.6-1.8)
_PROBE_SIDES = (32, 64)    # the smallest sides at which every stage has more than one value per channel
_SLOW_FROM = 2 ** 30       # activations below this are never called slow (skips the reference probes)


@dataclass
class StepEstimate:
    """Estimated memory of a step of one config (bytes)."""
    activations_per_sample: float   # what the forward keeps for the backward, per sample
    parameters: float               # values, gradients and two optimizer moments

    def activations(self, batch_size: int) -> float:
        return self.activations_per_sample * batch_size

    def peak(self, batch_size: int) -> float:
        """Forward and backward of a batch of ``batch_size``."""
        return PEAK_OVER_CACHE * self.activations(batch_size) + self.parameters


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def cached_bytes(model) -> int:
    """Bytes held by every module's forward cache (each buffer once, parameters excluded)."""
    from .nn.module import Module
    skip = {id(p.value) for p in model.parameters().values()}
    seen: set[int] = set()
    total = 0

    def walk(obj):
        nonlocal total
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in seen and id(base) not in skip:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(obj, (tuple, list)):
            for x in obj:
                walk(x)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x)
        elif not isinstance(obj, (Module, type)):
            for x in getattr(obj, "__dict__", {}).values():
                walk(x)
            for name in getattr(type(obj), "__slots__", ()):   # e.g. winograd.Prepared
                walk(getattr(obj, name, None))

    for _, m in model.named_modules():
        walk(m.__dict__.get("_cache"))
    return total


def _probe(c, T: int, side: int, dtype) -> int:
    """Cached bytes per sample after one forward at batch 2 (batch 1 would leave BatchNorm one
    value per channel where a stage's map is 1x1 at T = 1, which train mode refuses)."""
    from .models.snnergy import SNNergy
    model = SNNergy(c.replace(T=T, image_size=side), dtype=dtype)
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(2, c.audio_channels, side, side)).astype(dtype)
    visual = rng.random((2, T, c.visual_channels, side, side)).astype(dtype)
    model.forward(audio, visual)
    return cached_bytes(model) // 2


def estimate_step(c, dtype=np.float32, num_parameters: int | None = None) -> StepEstimate:
    """Estimate a training step of config ``c`` from probes of batch 2 (two when the image
    side is at most 64, three above)."""
    dtype = np.dtype(dtype)
    S, T = c.image_size, c.T
    s1, s2 = (S, S) if S <= _PROBE_SIDES[1] else _PROBE_SIDES
    p11, p21 = _probe(c, 1, s1, dtype), _probe(c, 2, s1, dtype)
    u, u2 = float(s1 * s1), float(s1 * s1) ** 2
    quartic = 0.0
    if s2 != s1:
        r = (s2 / s1) ** 2
        quartic = max(0.0, (_probe(c, 1, s2, dtype) - r * p11) / (r * r - r) / u2)   # token x token maps
    per_step = max(0.0, (p21 - p11 - quartic * u2) / u)           # grows with T
    once = max(0.0, (p11 - quartic * u2) / u - per_step)          # computed once per sample
    pixels = float(S) * S
    per_sample = (once + per_step * T) * pixels + quartic * T * pixels * pixels
    if num_parameters is None:
        from .models.snnergy import SNNergy
        num_parameters = SNNergy(c, dtype=dtype).num_parameters()
    return StepEstimate(activations_per_sample=per_sample, parameters=4.0 * num_parameters * dtype.itemsize)


def available_memory() -> float | None:
    """Bytes the system can still give (MemAvailable), or None where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=None)
def paper_reference(dtype=np.float32) -> float:
    """Activations of the paper preset's step at batch 16: the paper's own run, itself more
    than a day for 100 AVE epochs on 2 cores. A run holding more is called very slow."""
    from .models.configs import config
    return estimate_step(config("paper"), dtype).activations(16)


def check_step_memory(c, batch_size: int, *, eval_batch_size: int | None = None, dtype=np.float32,
                      available: float | None = None) -> str | None:
    """Refuse (ValueError, with the estimate and the options that lower it) a run whose step
    cannot fit in the memory available; return a warning for one larger than the paper's own
    step (very slow), else None. ``eval_batch_size``: the validation and test batch (no
    backward)."""
    e = estimate_step(c, dtype)
    eval_batch_size = eval_batch_size or batch_size
    need = max(e.peak(batch_size), e.activations(eval_batch_size) + e.parameters)
    available = available_memory() if available is None else available
    what = f"--batch-size {batch_size}, T={c.T}, image_size={c.image_size}"
    if available is not None and need > available:
        raise ValueError(
            f"a training step of this run needs about {format_bytes(need)} ({what}: "
            f"{format_bytes(e.activations(batch_size))} of activations kept for the backward, about twice that at "
            f"the peak, and {format_bytes(e.parameters)} of parameters and optimizer state; validation at batch "
            f"{eval_batch_size}); this machine has {format_bytes(available)} available. Lower --batch-size, or T or "
            f"image_size with --set")
    held = e.activations(batch_size)
    if held > _SLOW_FROM and held > paper_reference(np.dtype(dtype)):
        return (f"warning: a training step of this run holds about {format_bytes(held)} of activations ({what}), "
                f"{held / paper_reference(np.dtype(dtype)):.0f}x the paper preset at batch 16; expect it to be "
                f"very slow")
    return None

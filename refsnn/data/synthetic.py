"""``synthetic``: the embedded default data set (SPEC section 9), generated from a seed, no files.

Each clip pairs one of four audio events with one of two visual events; the class is the pair,
``label = 2 * audio_type + visual_type`` (8 classes). The two types are drawn independently and
every class appears equally often (up to rounding), so audio alone identifies the class among 2
(at most 50% accuracy), the frames alone among 4 (at most 25%), and both together exactly
(100%). Because each modality carries its own half of the answer, late fusion (concatenation)
solves it too: the task does not favour one fusion mode by construction.

Audio (``duration`` s at 22,050 Hz, then the same spectrogram code as real files):
  ``tone``         a steady sine, 400-6000 Hz, 0.4-0.8 s
  ``chirp``        a rising sweep, start 400-4000 Hz, rising by 2500-5000 Hz, 0.4-0.8 s
  ``pulses``       4-6 gated sine pulses (period 0.10-0.16 s, 50% duty), 400-6000 Hz
  ``noise-burst``  white noise, 0.15-0.35 s
  at a random onset and a level of 0.3-1.0 (peak); distractors: white background noise
  (std 0.01 x noise) and 0-3 clicks (2 ms, amplitude 0.1-0.4 x noise).
Frames (``num_frames`` at ``image_size``, rendered directly, antialiased):
  ``disc``  radius 0.13-0.22 S;  ``bar``  length 0.5-0.75 S, thickness 0.08-0.12 S, any angle
  in a saturated random colour, moving in a straight line (0.03-0.08 S per frame); distractors:
  a grey background with a random gradient (up to 0.15 x noise), 2-5 small grey specks per frame
  (side 0.04 S) and Gaussian pixel noise (std 0.04 x noise).
Every clip is rendered from its own generator ``PCG64([seed, split, index])``, so a clip does
not depend on the size of its split; labels come from ``PCG64([seed, split])``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from threadpoolctl import threadpool_limits

from .audio import SAMPLE_RATE, log_spectrogram
from .base import Dataset, check_split

__all__ = [
    "AUDIO_EVENTS", "VISUAL_EVENTS", "CLASS_NAMES", "DEFAULTS", "render_audio", "render_frames",
    "generate", "load", "check_options",
]

AUDIO_EVENTS = ("tone", "chirp", "pulses", "noise-burst")
VISUAL_EVENTS = ("disc", "bar")
CLASS_NAMES = [f"{a}+{v}" for a in AUDIO_EVENTS for v in VISUAL_EVENTS]
DEFAULTS = dict(n_train=1600, n_val=200, n_test=400, num_frames=4, noise=1.0, duration=1.0)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def _envelope(n: int, sample_rate: int, onset: float, dur: float, ramp: float = 0.01) -> tuple[slice, np.ndarray]:
    """Support and values of a gate from ``onset`` lasting ``dur`` s with raised-cosine edges.

    The 10 ms (or ``ramp``) edges keep the event boundaries from sounding like broadband clicks.
    """
    i0 = min(n, max(0, int(np.ceil(onset * sample_rate))))
    i1 = min(n, max(i0, int(np.floor((onset + dur) * sample_rate)) + 1))
    rel = np.arange(i0, i1) / sample_rate - onset
    up = np.clip(rel / ramp, 0.0, 1.0)
    down = np.clip((dur - rel) / ramp, 0.0, 1.0)
    return slice(i0, i1), (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 - 0.5 * np.cos(np.pi * down))


def render_audio(kind: int, rng: np.random.Generator, *, duration: float = 1.0, noise: float = 1.0,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One synthetic waveform ``[n]`` float64 with audio event ``AUDIO_EVENTS[kind]``."""
    n = int(round(duration * sample_rate))
    wave = np.zeros(n)
    level = rng.uniform(0.3, 1.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:                                    # steady tone
        f0, dur = rng.uniform(400, 6000), rng.uniform(0.4, 0.8) * duration
        sl, env = _envelope(n, sample_rate, rng.uniform(0, duration - dur), dur)
        wave[sl] = np.sin(2 * np.pi * f0 * np.arange(sl.start, sl.stop) / sample_rate + phase) * env
    elif kind == 1:                                  # rising chirp
        f_start, rise = rng.uniform(400, 4000), rng.uniform(2500, 5000)
        dur = rng.uniform(0.4, 0.8) * duration
        onset = rng.uniform(0, duration - dur)
        sl, env = _envelope(n, sample_rate, onset, dur)
        tau = np.arange(sl.start, sl.stop) / sample_rate - onset
        wave[sl] = np.sin(2 * np.pi * (f_start * tau + 0.5 * (rise / dur) * tau ** 2) + phase) * env
    elif kind == 2:                                  # pulsed tone
        f0, period = rng.uniform(400, 6000), rng.uniform(0.10, 0.16) * duration
        pulses = int(rng.integers(4, 7))
        onset = rng.uniform(0, max(duration - pulses * period, 0.0))
        for p in range(pulses):
            sl, env = _envelope(n, sample_rate, onset + p * period, 0.5 * period, ramp=0.005)
            wave[sl] = np.sin(2 * np.pi * f0 * np.arange(sl.start, sl.stop) / sample_rate + phase) * env
    elif kind == 3:                                  # noise burst
        dur = rng.uniform(0.15, 0.35) * duration
        sl, env = _envelope(n, sample_rate, rng.uniform(0, duration - dur), dur)
        wave[sl] = 0.5 * rng.standard_normal(sl.stop - sl.start) * env
    else:
        raise ValueError(f"kind: expected 0..{len(AUDIO_EVENTS) - 1}, got {kind}")
    wave *= level
    # distractors: background noise and short clicks (far shorter than a noise burst)
    wave += 0.01 * noise * rng.standard_normal(n)
    click_len = max(1, int(0.002 * sample_rate))
    for _ in range(int(rng.integers(0, 4)) if noise > 0 else 0):
        start = int(rng.integers(0, n - click_len))
        wave[start:start + click_len] += noise * rng.uniform(0.1, 0.4) * rng.choice([-1.0, 1.0])
    return wave


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_frames(kind: int, rng: np.random.Generator, *, image_size: int, num_frames: int,
                  noise: float = 1.0) -> np.ndarray:
    """``num_frames`` frames with visual event ``VISUAL_EVENTS[kind]`` -> float32 ``[F, 3, S, S]`` in [0, 1]."""
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s] + 0.5                                       # pixel centres
    # background: grey level, a linear gradient and a faint tint
    grey = rng.uniform(0.15, 0.45)
    gdir = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 0.15) * noise * ((np.cos(gdir) * xx + np.sin(gdir) * yy) / s - 0.5)
    tint = rng.uniform(-0.03, 0.03, size=3)
    background = grey + gradient[None] + tint[:, None, None]                # [3, S, S]
    colour = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
    if kind == 0:
        radius = rng.uniform(0.13, 0.22) * s
    elif kind == 1:
        half_len, half_thick = rng.uniform(0.25, 0.375) * s, rng.uniform(0.04, 0.06) * s
        angle = rng.uniform(0, np.pi)
        ux, uy = np.cos(angle), np.sin(angle)
    else:
        raise ValueError(f"kind: expected 0..{len(VISUAL_EVENTS) - 1}, got {kind}")
    speed, heading = rng.uniform(0.03, 0.08) * s, rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    travel_x, travel_y = vx * (num_frames - 1), vy * (num_frames - 1)
    # start so that the whole path keeps the centre within [0.25 S, 0.75 S]
    lo, hi = 0.25 * s, 0.75 * s
    cx0 = rng.uniform(lo - min(travel_x, 0), hi - max(travel_x, 0))
    cy0 = rng.uniform(lo - min(travel_y, 0), hi - max(travel_y, 0))
    f = np.arange(num_frames)[:, None, None]
    dx, dy = xx - (cx0 + vx * f), yy - (cy0 + vy * f)                      # [F, S, S]
    if kind == 0:
        cover = np.clip(radius - np.hypot(dx, dy) + 0.5, 0.0, 1.0)
    else:
        along, across = dx * ux + dy * uy, dy * ux - dx * uy
        cover = (np.clip(half_len - np.abs(along) + 0.5, 0.0, 1.0)
                 * np.clip(half_thick - np.abs(across) + 0.5, 0.0, 1.0))
    cover = cover[:, None].astype(np.float32)                               # [F, 1, S, S]
    out = background.astype(np.float32) * (1.0 - cover) + colour.astype(np.float32)[:, None, None] * cover
    if noise > 0:
        speck = max(1, int(round(0.04 * s)))
        for t in range(num_frames):
            for _ in range(int(rng.integers(2, 6))):
                y0, x0 = rng.integers(0, s - speck + 1, size=2)
                out[t, :, y0:y0 + speck, x0:x0 + speck] = rng.uniform(0.0, 1.0)
        out += np.float32(0.04 * noise) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def check_options(options: dict) -> dict:
    """``options`` validated, with ``DEFAULTS`` filled in; errors name the option."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"synthetic: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    for key in ("n_train", "n_val", "n_test", "num_frames"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (1 if key == "num_frames" else 0):
            raise ValueError(f"synthetic option {key}: expected a {'positive' if key == 'num_frames' else 'non-negative'} integer, got {v!r}")
    if not (isinstance(opts["noise"], (int, float)) and opts["noise"] >= 0):
        raise ValueError(f"synthetic option noise: expected a number >= 0, got {opts['noise']!r}")
    if not (isinstance(opts["duration"], (int, float)) and 0.25 <= opts["duration"] <= 30):
        raise ValueError(f"synthetic option duration: expected seconds in [0.25, 30], got {opts['duration']!r}")
    return opts


@lru_cache(maxsize=6)
def _generate_cached(split: str, seed: int, image_size: int, n: int, num_frames: int,
                     noise: float, duration: float):
    with threadpool_limits(limits=1, user_api="blas"):   # tiny matmuls: BLAS threads only cost here
        return _generate(split, seed, image_size, n, num_frames, noise, duration)


def _generate(split: str, seed: int, image_size: int, n: int, num_frames: int, noise: float, duration: float):
    code = _SPLIT_CODE[split]
    label_rng = np.random.Generator(np.random.PCG64([seed, code]))
    labels = label_rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    audio = np.empty((n, 1, image_size, image_size), dtype=np.float32)
    frames = np.empty((n, num_frames, 3, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        rng = np.random.Generator(np.random.PCG64([seed, code, i]))
        a_type, v_type = divmod(int(labels[i]), len(VISUAL_EVENTS))
        wave = render_audio(a_type, rng, duration=duration, noise=noise)
        audio[i] = log_spectrogram(wave, SAMPLE_RATE, image_size)
        # frames are stored as uint8, like a real cache: the same conversion on access
        frames[i] = np.rint(render_frames(v_type, rng, image_size=image_size, num_frames=num_frames,
                                          noise=noise) * 255.0)
    for arr in (audio, frames, labels):
        arr.setflags(write=False)
    clip_ids = tuple(f"synthetic-{split}-{i:05d}" for i in range(n))
    return audio, frames, labels, clip_ids


def generate(split: str, *, seed: int = 0, image_size: int = 64, **options):
    """Arrays of one split: (audio ``[n,1,S,S]`` float32, frames ``[n,F,3,S,S]`` uint8, labels, clip ids).

    Read-only and memoised per arguments (the same call returns the same arrays).
    """
    check_split(split)
    opts = check_options(options)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size: expected an integer >= 8, got {image_size!r}")
    n = int(opts[f"n_{split}"])
    return _generate_cached(split, int(seed), int(image_size), n, int(opts["num_frames"]),
                            float(opts["noise"]), float(opts["duration"]))


def load(split: str, *, seed: int = 0, image_size: int = 64, **options) -> Dataset:
    audio, frames, labels, clip_ids = generate(split, seed=seed, image_size=image_size, **options)
    if len(labels) == 0:
        raise ValueError(f"synthetic: split {split!r} is empty (n_{split}=0)")
    return Dataset("synthetic", split, CLASS_NAMES, audio, frames, labels, list(clip_ids))

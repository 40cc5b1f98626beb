"""Paired statistics for comparing trained models on the same test clips.

``paired_bootstrap`` answers: on these test clips, with these trained models, is model A's
accuracy different from model B's by more than the choice of test clips explains? Both models
must have been evaluated on the same clips (and, for several seeds, seed k of A paired with
seed k of B). The interval covers test-set sampling only: it does not cover the spread between
training seeds, which the per-seed differences show (README, "Fusion modes compared").
"""
from __future__ import annotations

import numpy as np

__all__ = ["paired_bootstrap", "mean_sd", "DEFAULT_RESAMPLES", "DEFAULT_LEVEL"]

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000          # resampled indices held at once (32 MB of int64)


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("values: expected at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _correct_matrix(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected [seeds, clips] of 0/1, got shape {a.shape}")
    if a.dtype != np.bool_:
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name}: expected 0/1 (clip correct or not), got values other than 0 and 1")
    return a.astype(np.float64)


def paired_bootstrap(correct_a, correct_b, *, resamples: int = DEFAULT_RESAMPLES,
                     level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Paired bootstrap interval of ``accuracy(A) - accuracy(B)`` over test clips.

    ``correct_a``, ``correct_b``: ``[S, n]`` (or ``[n]`` for one seed), 1 where the model of
    seed s classified clip i correctly; row s of A and row s of B come from the same seed and
    column i is the same clip in both. The statistic is the mean over seeds of the accuracy
    difference, which equals the mean over clips of ``D_i = mean_s (A[s, i] - B[s, i])``;
    resampling the clips (columns) with replacement keeps every pairing (same clip, same seed)
    and, when the seeds share a test set, each clip's difficulty across seeds. Percentile
    interval at ``level``, from ``resamples`` draws of ``numpy.random.Generator(PCG64(seed))``.

    Returns ``difference`` (observed), ``low``, ``high``, ``per_seed`` (observed difference of
    each seed), ``separated`` (the interval excludes 0), ``level``, ``resamples``, ``seed``,
    ``clips``.
    """
    a, b = _correct_matrix(correct_a, "correct_a"), _correct_matrix(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a {a.shape} and correct_b {b.shape}: a paired comparison needs the same "
                         f"seeds and the same test clips on both sides")
    if not (isinstance(resamples, (int, np.integer)) and resamples >= 1):
        raise ValueError(f"resamples: expected a positive integer, got {resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a value in (0, 1), got {level!r}")
    per_clip = (a - b).mean(axis=0)                                  # D_i  [n]
    n = per_clip.size
    rng = np.random.Generator(np.random.PCG64(seed))
    stats = np.empty(resamples)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        stats[start:start + rows] = per_clip[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return {"difference": float(per_clip.mean()), "low": float(low), "high": float(high),
            "per_seed": (a.mean(axis=1) - b.mean(axis=1)).tolist(),
            "separated": bool(low > 0 or high < 0), "level": float(level), "resamples": int(resamples),
            "seed": int(seed), "clips": int(n)}

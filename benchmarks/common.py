"""Shared helpers for the benchmark scripts: timing, BLAS report, thread control."""
from __future__ import annotations

import os
import platform
import time

import numpy as np

import refsnn  # noqa: F401  (first: sets OMP_WAIT_POLICY before Numba starts its threads)


def blas_report() -> str:
    """Which BLAS library and kernel (``architecture``) run numpy's matmul, and its threads."""
    from threadpoolctl import threadpool_info
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            parts.append(f"{info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} "
                         f"threads={info.get('num_threads')}")
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return "; ".join(parts) + f" (env {env})"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def timed(fn, repeat: int = 7, warmup: int = 1) -> tuple[float, float]:
    """(fastest, median) wall time of ``repeat`` runs of ``fn()`` in seconds, after ``warmup``
    runs. Other processes only ever add time, so the fastest run estimates the code's cost on
    a shared machine; the median is the usual figure."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(min(times)), float(np.median(times))


def timeit(fn, repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    return timed(fn, repeat, warmup)[1]


def training_step(c, batch: int, seed: int = 0):
    """``(model, step)``: an SNNergy of config ``c``, AdamW, and one random batch of ``batch``
    clips; ``step()`` runs forward, cross-entropy, backward and AdamW on it."""
    from refsnn.functional import cross_entropy_backward, cross_entropy_forward
    from refsnn.models import SNNergy
    from refsnn.optim import AdamW
    model = SNNergy(c)
    opt = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    S = c.image_size
    audio = rng.normal(size=(batch, 1, S, S)).astype(np.float32)
    visual = rng.random((batch, c.T, 3, S, S)).astype(np.float32)
    labels = np.arange(batch) % c.classes

    def step():
        model.zero_grad()
        _, cache = cross_entropy_forward(model.forward(audio, visual), labels)
        model.backward(cross_entropy_backward(cache))
        opt.step()

    return model, step


def set_threads(n: int | None) -> None:
    """Limit numba and BLAS threads (torch's too, when imported by the caller)."""
    if not n:
        return
    import numba
    from threadpoolctl import threadpool_limits
    numba.set_num_threads(n)
    threadpool_limits(n)


def matmul_peak(n: int = 2048, dtype=np.float32, repeat: int = 5) -> float:
    """numpy matmul GFLOP/s at n x n x n, measured now."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=dtype)
    b = rng.random((n, n), dtype=dtype)
    out = np.empty((n, n), dtype=dtype)
    t = timeit(lambda: np.matmul(a, b, out=out), repeat=repeat)
    return 2 * n ** 3 / t / 1e9

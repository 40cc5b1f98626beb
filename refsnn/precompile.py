"""Time to first step (issue 13): compile the training step's Numba kernels in a second
process while the first one starts.

On a fresh clone Numba's cache is empty, and the first training step compiles every kernel
it calls (about 37 CPU seconds for the ``cpu`` preset), one after another in one process. No
cache is shipped: Numba (0.68) would find one (it stamps its index with the SHA-256 of the
source file, not its modification time), but its machine code is for one CPU model, Numba
version and Python version, and it would have to be rebuilt at every kernel change.

What this module does instead, when ``fit`` starts on a cold cache with two or more cores:

- ``Precompiler.start`` launches ``python -m refsnn.precompile``, a helper process that
  builds the same model (cheap: no data, no forward) and runs each kind of op the model
  contains once, forward and backward, on tiny inputs of the model's dtype and options:
  the kernels compiled are those of the real step (the same functional ops pick them), and
  Numba writes them to its cache. It takes the ops from the model's end, since the main
  process meets them from the start; first of all the Winograd kernels, where the model's
  convolutions take that path at the run's batch size (judged by ``SNNergy.conv_sides``,
  the `paper` preset: 11 CPU s for F(4x4, 3x3)).
- Both processes claim each kernel before compiling it (a file created with ``O_EXCL`` in a
  folder of the run, keyed by the kernel and its argument types). A process that finds a
  kernel claimed by the other waits until it is saved, then loads it from the cache instead
  of compiling it again. So the two processes split the compilation between them; the main
  process meanwhile also imports, loads the data and builds the model.
- Nothing else changes: the kernels are the ones Numba would compile anyway, loaded from its
  ordinary cache. If the helper fails or dies, the main process compiles what is missing, as
  without it. The helper exits when its ops are done, or with the main process (Linux
  parent-death signal; ``close`` also ends it), and its folder of claims is removed.

``REFSNN_PRECOMPILE=0`` turns it off, ``=1`` starts the helper even on a warm cache (for
measurements); ``REFSNN_PRECOMPILE_LOG=path`` appends a line per op and per kernel the helper
compiled, and per kernel the main process waited for, to path. The claim hook replaces each cached kernel's ``_cache`` attribute (a private
Numba attribute, present since Numba 0.49); where it is missing nothing is hooked.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = ["Precompiler", "install_claims", "step_ops", "run_ops"]

_ENV = "REFSNN_PRECOMPILE"
_POLL = 0.02                    # s between looks at a claim held by the other process
_WAIT_LIMIT = 600.0             # s: a holder that takes longer is presumed stuck; compile here


# ------------------------------------------------------------------------------- claims

class _Claims:
    """Who compiles which kernel: ``<key>.claim`` (created with O_EXCL, holds the pid) and
    ``<key>.done`` (written after the cache file is saved, or when the compilation failed),
    in ``folder``; with ``folder`` None (no helper running) nothing is claimed."""

    def __init__(self):
        self.folder: str | None = None
        self.held: set[str] = set()
        self.depth = 0          # compilations under way in this process (nested ones inside)
        self.waits: list[tuple[str, float]] = []     # (kernel, seconds) this process waited

    def _path(self, key: str, kind: str) -> str:
        return os.path.join(self.folder, f"{key}.{kind}")

    def claim(self, key: str) -> bool:
        """True: compile here (claimed, or no helper); False: the other process has it."""
        if self.folder is None:
            return True
        try:
            fd = os.open(self._path(key, "claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        except OSError:         # the folder is gone (the run ended): compile here
            return True
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        self.held.add(key)
        return True

    def release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            try:
                with open(self._path(key, "done"), "w"):
                    pass
            except (OSError, TypeError):
                pass

    def wait(self, key: str) -> None:
        """Until the holder saved the kernel, failed, or died, or the folder is removed."""
        try:
            with open(self._path(key, "claim")) as f:
                pid = int(f.read() or 0)
        except (OSError, TypeError, ValueError):
            pid = 0
        t0 = time.monotonic()
        try:
            while self.folder is not None and not os.path.exists(self._path(key, "done")):
                if not os.path.isdir(self.folder) or not _alive(pid) or time.monotonic() > t0 + _WAIT_LIMIT:
                    return
                time.sleep(_POLL)
        finally:
            self.waits.append((key, time.monotonic() - t0))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended process not yet reaped, a zombie, does not)."""
    if pid <= 0:
        return True             # the holder has not written its pid yet
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass                    # no /proc: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _key(dispatcher, sig) -> str:
    name = f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}"
    return name + "-" + hashlib.sha1(repr(tuple(sig)).encode()).hexdigest()[:16]


class _ClaimingCache:
    """Stands in for a dispatcher's Numba cache: on a miss at the top level, claim the kernel
    (then Numba compiles it here) or wait for the process that claimed it and load its result."""

    def __init__(self, dispatcher, cache, claims: _Claims):
        self._dispatcher, self._cache, self._claims = dispatcher, cache, claims

    def load_overload(self, sig, target_context):
        data = self._cache.load_overload(sig, target_context)
        if data is not None or self._claims.depth:
            # found, or needed inside another compilation: never wait while holding a claim
            return data
        key = _key(self._dispatcher, sig)
        if self._claims.claim(key):
            return None
        self._claims.wait(key)
        return self._cache.load_overload(sig, target_context)

    def save_overload(self, sig, data):
        try:
            self._cache.save_overload(sig, data)
        finally:
            self._claims.release(_key(self._dispatcher, sig))

    def __getattr__(self, name):
        return getattr(self._cache, name)


_CLAIMS: _Claims | None = None


def _listener(claims: _Claims):
    from numba.core import event

    class Depth(event.Listener):
        def on_start(self, ev):
            claims.depth += 1

        def on_end(self, ev):
            claims.depth -= 1
            if ev.is_failed:
                # failed: let the other process try (it meets the same error, as without us)
                claims.release(_key(ev.data["dispatcher"], ev.data["args"]))

    return Depth()


def install_claims(folder: str | None) -> int:
    """Claim kernels in ``folder`` from now on (None: stop claiming). Hooks every disk-cached
    Numba kernel of the refsnn modules imported so far (once); returns how many are hooked."""
    global _CLAIMS
    from numba.core import event
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher

    if _CLAIMS is None:
        _CLAIMS = _Claims()
        event.register("numba:compile", _listener(_CLAIMS))
    _CLAIMS.folder = folder
    hooked = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("refsnn.") or module is None:
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, Dispatcher):
                continue
            cache = getattr(obj, "_cache", None)
            if isinstance(cache, FunctionCache):
                obj._cache = _ClaimingCache(obj, cache, _CLAIMS)
            hooked += isinstance(obj._cache, _ClaimingCache)
    return hooked


# ------------------------------------------------------------------------------- the ops

def _numba_backward(cache):
    """A cache of a forward run by the NumPy twin, changed so that the backward runs the Numba
    kernel (the arrays are of the same types); None where the cache says no backend."""
    if "backend" in cache._fields:
        return cache._replace(backend="numba")
    for field in ("options", "lif"):
        if field in cache._fields and isinstance(getattr(cache, field), dict):
            return cache._replace(**{field: {**getattr(cache, field), "backend": "numba"}})
    return None


class _SmallOps:
    """Each op of a model, forward then backward, on small inputs of one dtype. A ``backend``
    of "numpy" runs the forward by the op's NumPy twin and the backward by its kernel."""

    T, B, C = 2, 2, 3

    def __init__(self, dtype):
        self.dt = np.dtype(dtype)
        self.rng = np.random.default_rng(0)

    def rand(self, *shape):
        return self.rng.standard_normal(shape).astype(self.dt)

    def spikes(self, *shape):
        return (self.rng.random(shape) < 0.3).astype(self.dt)

    def bn_args(self):
        C = self.C
        return np.ones(C, self.dt), np.zeros(C, self.dt), np.zeros(C, self.dt), np.ones(C, self.dt)

    @staticmethod
    def _for_backward(cache, backend):
        return cache if backend == "numba" else _numba_backward(cache)

    def lif(self, neuron, backend="numba"):
        from .functional import lif
        s, c = lif.lif_forward(self.rand(self.T, self.B, self.C, 5), **{**neuron, "backend": backend})
        lif.lif_backward(self.rand(*s.shape), self._for_backward(c, backend))

    def bnlif(self, neuron, backend="numba"):
        from .functional import bnlif
        s, c, _, _ = bnlif.bn_lif_forward(self.rand(self.T, self.B, self.C, 5), *self.bn_args(),
                                          **{**neuron, "backend": backend})
        bnlif.bn_lif_backward(self.rand(*s.shape), self._for_backward(c, backend))

    def bn(self, backend="numba"):
        from .functional import norm
        y, c, _, _ = norm.batchnorm_forward(self.rand(4, self.C, 5), *self.bn_args(), backend=backend)
        norm.batchnorm_backward(self.rand(*y.shape), self._for_backward(c, backend))

    def maxpool(self, m, backend="numba"):
        from .functional import pool
        y, c = pool.maxpool2d_forward(self.rand(self.B, self.C, 6, 6), kernel_size=m.kernel_size,
                                      stride=m.stride, padding=m.padding, backend=backend)
        pool.maxpool2d_backward(self.rand(*y.shape), self._for_backward(c, backend))

    def qk(self, m, D):
        from .functional import attention as A
        from .kernels.bitpack import PARALLEL_MIN_WORK
        N = -(-PARALLEL_MIN_WORK // (self.T * self.B * D))    # the parallel kernels, as at the presets' sizes
        q, k = self.spikes(self.T, self.B, D, N), self.spikes(self.T, self.B, D, N)
        if m.mode == "token":
            z, c = A.qk_token_forward(q, k, m.heads, neuron=m.neuron, backend=m.backend)
            A.qk_token_backward(self.rand(*z.shape), c)
        else:
            z, c = A.qk_channel_forward(q, k, neuron=m.neuron, backend=m.backend)
            A.qk_channel_backward(self.rand(*z.shape), c)

    def conv2d(self, m):
        from .functional import conv
        # 8 samples of 8x8: the paths taken at the model's sizes
        y, c = conv.conv2d_forward(self.rand(8, self.C, 8, 8), self.rand(4, self.C, m.kernel_size, m.kernel_size),
                                   None if m.bias is None else self.rand(4), stride=m.stride, padding=m.padding)
        conv.conv2d_backward(self.rand(*y.shape), c)

    def winograd(self, m):
        """The Winograd kernels of tile size m (``refsnn.kernels.winograd``): forward, then the
        backward from the kept input transforms."""
        from .kernels import winograd as WG
        x, w = self.rand(2, 8, 8, 8), self.rand(8, 8, 3, 3)
        prepared = WG.Prepared(WG.weight_transform(w, m))
        here = lambda count, task: [task(i) for i in range(count)]      # noqa: E731
        y = WG.winograd_forward(x, w, self.rand(8), here, prepared, m=m)
        WG.winograd_backward(self.rand(*y.shape), x, w, True, here, prepared, m=m)

    def conv1x1(self, m):
        from .functional import conv
        y, c = conv.conv1x1_forward(self.rand(self.B, self.C, 7), self.rand(4, self.C),
                                    None if m.bias is None else self.rand(4))
        conv.conv1x1_backward(self.rand(*y.shape), c)


def step_ops(model, batch_size: int = 8) -> list:
    """The calls that compile the kernels of the model's training step at ``batch_size``: one
    per kind of op the model contains (``_SmallOps``), each ``(name, fn)``.

    Order: the main process compiles the forward kernels first (its memory check runs a
    forward) and the backward ones last, so the helper begins with the Winograd kernels (met
    first after the stem, and the slowest to compile: 11 CPU s for F(4x4)) and the Q-K ops
    (the costliest of the rest, met last in the forward), then the backward kernels alone (the
    forward run by the op's NumPy twin), then every op from the model's end."""
    from .functional.bnlif import bn_lif_fusable
    from .nn.attention import QKCore
    from .nn.layers import LIF, BatchNorm, Conv1x1, Conv2d, MaxPool2d

    small = _SmallOps(model.dtype)
    modules = dict(model.named_modules())
    sides = model.conv_sides()
    first, twins, ops, seen = [], [], [], set()

    def add(key, fn, backward=None, costly=False):
        """fn: forward and backward; backward(): the backward after the twin's forward."""
        if key not in seen:
            seen.add(key)
            (first if costly else ops).append((repr(key), fn))
            if backward is not None:
                twins.append((repr(key) + " backward", backward))

    for name, m in reversed(list(modules.items())):
        if isinstance(m, QKCore):
            D = getattr(modules.get(name.rpartition(".")[0]), "dim", m.heads * 16)
            add(("qk", m.mode, m.backend, D // m.heads, _options_key(m.neuron)),
                lambda m=m, D=D: small.qk(m, D), costly=True)
        elif isinstance(m, LIF):
            n = m.neuron
            add(("lif", _options_key(n)), lambda n=n: small.lif(n), lambda n=n: small.lif(n, "numpy"))
            if bn_lif_fusable(**n):
                add(("bnlif", _options_key(n)), lambda n=n: small.bnlif(n), lambda n=n: small.bnlif(n, "numpy"))
        elif isinstance(m, BatchNorm):
            add(("bn",), small.bn, lambda: small.bn("numpy"))
        elif isinstance(m, MaxPool2d):
            add(("maxpool", m.kernel_size, m.stride, m.padding), lambda m=m: small.maxpool(m),
                lambda m=m: small.maxpool(m, "numpy"))
        elif isinstance(m, Conv2d):
            add(("conv2d", m.bias is None), lambda m=m: small.conv2d(m))
            tiles = _winograd_tiles(m, sides.get(m), batch_size * model.config.T)
            if tiles is not None:
                add(("winograd", tiles), lambda t=tiles: small.winograd(t), costly=True)
        elif isinstance(m, Conv1x1):
            add(("conv1x1", m.bias is None), lambda m=m: small.conv1x1(m))
    winograd = [op for op in first if op[0].startswith("('winograd'")]
    return winograd + [op for op in first if op not in winograd] + twins + ops


def _winograd_tiles(conv, side: int | None, samples: int):
    """The tile size m of the Winograd kernels a convolution module takes on ``samples`` maps
    of ``side`` x ``side`` (``refsnn.kernels.winograd.winograd_applies``), or None (not that
    path, or the side unknown)."""
    from .kernels import winograd as WG
    if side is None:
        return None
    x_shape = (samples, conv.in_channels, side, side)
    w_shape = (conv.out_channels, conv.in_channels, conv.kernel_size, conv.kernel_size)
    if not WG.winograd_applies(x_shape, w_shape, conv.stride, conv.padding):
        return None
    return WG.tile_size(x_shape)


def _options_key(options: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def run_ops(ops, log=None) -> list[str]:
    """Run each op; one that fails is skipped (the main process meets it as without the
    helper). Returns the names of the failed ones. ``log``: a text file for a line per op
    (CPU seconds, name)."""
    failed = []
    for name, fn in ops:
        t0 = time.process_time()
        try:
            fn()
        except Exception as exc:    # noqa: BLE001 - the main process compiles what is missing
            failed.append(name)
            name += f" failed: {exc!r}"
        if log is not None:
            print(f"{time.process_time() - t0:7.2f} CPU s  op {name}", file=log, flush=True)
    return failed


# ------------------------------------------------------------------------------- the helper

def _cache_is_cold() -> bool:
    """Whether Numba's cache lacks the LIF forward kernel (every model's step runs it): a
    fresh clone, a new cache folder, or kernels edited since."""
    from .kernels.lif import lif_forward_kernel
    try:
        return not lif_forward_kernel._cache._cache_file._load_index()
    except Exception:           # noqa: BLE001 - an unknown Numba: do not guess
        return False


class Precompiler:
    """``with Precompiler(config, dtype, threads):`` around a run's start and training: the
    helper process as described in the module docstring, when it can help."""

    module = "refsnn.precompile"            # the helper: python -m <module>

    def __init__(self, config, dtype=np.float32, threads: int | None = None, distributed: bool = False,
                 batch_size: int = 8):
        self.process = None
        self.folder = None
        self.config, self.dtype = config, np.dtype(dtype)
        self.threads, self.distributed = threads, distributed
        self.batch_size = int(batch_size)

    def wanted(self) -> bool:
        setting = os.environ.get(_ENV, "")
        if setting == "0":
            return False
        if setting == "1":
            return True
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        return cores >= 2 and self.threads != 1 and not self.distributed and _cache_is_cold()

    def start(self) -> "Precompiler":
        if not self.wanted():
            return self
        try:
            self.folder = tempfile.mkdtemp(prefix="refsnn-precompile-")
            install_claims(self.folder)
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "--claims", self.folder,
                 "--config", self.config.to_json(), "--dtype", self.dtype.name,
                 "--batch-size", str(self.batch_size)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        except Exception:       # noqa: BLE001 - no helper: compile here, as without it
            self.close()
        return self

    def close(self) -> None:
        path = os.environ.get("REFSNN_PRECOMPILE_LOG")
        if path and self.folder is not None and _CLAIMS is not None:
            with open(path, "a") as log:
                for key, secs in _CLAIMS.waits:
                    print(f"{secs:7.2f} s wall  the main process waited for {key}", file=log)
                print(f"{sum(w for _, w in _CLAIMS.waits):7.2f} s wall  the main process waited in all "
                      f"({len(_CLAIMS.waits)} kernels)", file=log)
            _CLAIMS.waits.clear()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.folder is not None:
            install_claims(None)
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the parent ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _log_compilations(log) -> None:
    """A line per kernel compiled at the top level (CPU seconds, name)."""
    from numba.core import event

    class Log(event.Listener):
        def __init__(self):
            self.started = []

        def on_start(self, ev):
            self.started.append(time.process_time())

        def on_end(self, ev):
            t0 = self.started.pop()
            if not self.started:
                f = ev.data["dispatcher"].py_func
                print(f"{time.process_time() - t0:7.2f} CPU s  compiled {f.__module__}.{f.__qualname__}",
                      file=log, flush=True)

    event.register("numba:compile", Log())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m refsnn.precompile",
                                 description="the helper process of refsnn.precompile (started by fit)")
    ap.add_argument("--claims", required=True)
    ap.add_argument("--config", required=True, help="Config.to_json()")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    ppid = os.getppid()
    # a Ctrl-C in the terminal reaches the whole process group: the main process finishes its
    # step and saves (and then ends this one); this one keeps its claims honest meanwhile
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != ppid:    # the parent ended before the signal was armed
        return 0
    from .models.configs import Config
    from .models.snnergy import SNNergy
    model = SNNergy(Config.from_json(args.config), dtype=np.dtype(args.dtype))
    ops = step_ops(model, args.batch_size)
    install_claims(args.claims)
    path = os.environ.get("REFSNN_PRECOMPILE_LOG")
    log = open(path, "a") if path else None
    if log is not None:
        print(f"{time.process_time():7.2f} CPU s  started, {len(ops)} ops", file=log, flush=True)
        _log_compilations(log)
    failed = run_ops(ops, log)
    if log is not None:
        print(f"{time.process_time():7.2f} CPU s  in all", file=log, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

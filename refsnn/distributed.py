"""Data-parallel training over MPI: ``mpiexec -n K python -m refsnn.train ...``.

Launched by ``mpiexec``/``srun`` with mpi4py installed (``pip install -e ".[mpi]"``), ``world()``
is an ``MPICommunicator`` over ``COMM_WORLD``; otherwise it is ``SingleProcess`` (size 1, every
collective a no-op) and training is exactly the single-process loop. A launcher with more than
one rank but no mpi4py is an error: K copies of one run would otherwise write the same files.

The pieces training uses:

- ``micro_batches(...)``: each optimizer step's global batch of B clips (the seeded epoch order
  of ``refsnn.data.batching``) split into P = K x M micro-batches of B / P clips; rank r takes
  micro-batches ``r*M .. r*M + M - 1``, so the K shards are disjoint and cover the batch. The
  augmentation of micro-batch u of batch b draws from ``PCG64([seed, epoch, b, 1, u])``, a
  function of the data alone: K ranks with M micro-batches each see exactly the clips and
  draws of one process with ``--accumulate K*M``. (With P = 1 the plain ``BatchIterator`` and
  its ``PCG64([seed, epoch, b, 1])`` are used, as before.)
- ``GradientAccumulator``: after each micro-batch's backward it takes the gradients and the
  BatchNorm running statistics that micro-batch produced (each micro-batch starts from the
  statistics at the start of the step); ``finish()`` replaces both by their mean over all P
  micro-batches of all ranks, on every rank (``Communicator.ordered_mean``).
- ``Communicator.ordered_mean``: a reproducible allreduce. The flat vector is cut into K
  chunks; an ``Alltoall`` hands chunk c of every rank to rank c, which sums the K rows in
  float64 in rank order 0, 1, ..., K-1, divides by P and casts to the parameter dtype; an
  ``Allgather`` returns every chunk to every rank. The result does not depend on MPI's
  reduction algorithm or the network, so the same K gives the same bits run after run, and it
  moves the same 2 (K-1)/K x size bytes per rank as a ring allreduce.
- ``Communicator.agree(error, stop)``: the per-step status check. Every rank reports whether
  its step failed (and why) and whether Ctrl-C was pressed; if any rank failed, every rank
  raises ``RankFailure`` with the first failing rank's message, so all stop together at the
  same step; a stop request on any rank stops all ranks after that step.
- ``run_main(main)``: an exception that escaped without ``agree`` (e.g. rank 0 cannot write a
  checkpoint while the others wait in the next step) is printed with its rank and ends every
  rank by ``MPI_Abort``: no rank is left waiting in a collective.
- ``rank_threads``: threads per rank, cores / ranks on the node unless ``--threads`` is given.

What is exact and what is not is summarised in README.md ("Training on a cluster").
"""
from __future__ import annotations

import os
import socket
import sys
import traceback

import numpy as np

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "RankFailure", "world", "launcher_size",
           "GradientAccumulator", "micro_batches", "rank_threads", "thread_summary", "run_main",
           "exit_code_of", "EXIT_CODES"]

# environment variables by which a launcher announces the number of ranks
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")
_FAILURE_TAG = 7301

# exit codes by exception kind, shared by every command line that runs under MPI
EXIT_CODES = {"TrainingError": 1, "PrepareError": 1, "KeyboardInterrupt": 130}


def exit_code_of(kind: str) -> int:
    """The exit code of an exception class name: 1 for a failed run, 2 for bad input, else 1."""
    if kind in EXIT_CODES:
        return EXIT_CODES[kind]
    return 2 if kind == "ValueError" else 1


class RankFailure(RuntimeError):
    """Some rank's step failed; raised on every rank by ``Communicator.agree``.

    ``rank``: the first failing rank, or None when every rank failed with the same message (a
    diverged step: the gradients are the same everywhere); ``kind``: its exception's class
    name; ``message``: its text.
    """

    def __init__(self, rank: int | None, size: int, kind: str, message: str):
        self.rank, self.size, self.kind, self.message = rank, size, kind, message
        super().__init__(f"rank {rank} of {size}: {message}" if size > 1 and rank is not None else message)

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.kind)


def _describe(error: BaseException) -> tuple[str, str]:
    if isinstance(error, RankFailure):
        return error.kind, error.message
    if isinstance(error, KeyboardInterrupt):
        return "KeyboardInterrupt", "interrupted"
    return type(error).__name__, str(error) or type(error).__name__


# ------------------------------------------------------------------------------- communicators

class Communicator:
    """The collectives training needs. This base class is one process (``SingleProcess``)."""

    rank = 0
    size = 1
    local_size = 1             # ranks on this node
    hostname = socket.gethostname()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        pass

    def allgather(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small picklable objects)."""
        return [obj]

    def bcast(self, obj, root: int = 0):
        return obj

    def agree(self, error: BaseException | None = None, stop: bool = False) -> bool:
        """The collective status check. Raises ``RankFailure`` on every rank if ``error`` is not
        None on any rank (the lowest such rank's message); otherwise returns whether any rank
        asked to ``stop``. Every rank must call it at the same point. In one process ``error``
        itself is raised."""
        return self.exchange(error, stop)[0]

    def exchange(self, error: BaseException | None = None, stop: bool = False, payload=None) -> tuple[bool, list]:
        """``agree``, also handing every rank the list of all ranks' ``payload`` (rank order)."""
        if self.size == 1:
            if error is not None:
                raise error
            return bool(stop), [payload]
        statuses = self.allgather((None if error is None else _describe(error), bool(stop),
                                   error is not None and self._announced, payload))
        self._collect_announcements(statuses)
        failures = [(rank, s[0]) for rank, s in enumerate(statuses) if s[0] is not None]
        if failures:
            cause = error if error is not None else None
            if len(failures) == self.size and len({f for _, f in failures}) == 1:
                raise RankFailure(None, self.size, *failures[0][1]) from cause     # the same on all ranks
            rank, failure = failures[0]
            raise RankFailure(rank, self.size, *failure) from (cause if rank == self.rank else None)
        return any(s[1] for s in statuses), [s[3] for s in statuses]

    # a rank that fails in the middle of long independent work (prepare's decoding) tells the
    # others at once, so they stop early and meet it in ``agree``
    _announced = False

    def announce_failure(self) -> None:
        self._announced = True

    def peer_failed(self) -> bool:
        return False

    def _collect_announcements(self, statuses) -> None:
        pass

    def ordered_mean(self, partial: np.ndarray, count: int, dtype) -> np.ndarray:
        """Sum of ``partial`` (a flat vector) over ranks in rank order, in float64, divided by
        ``count`` and cast to ``dtype``; the same bits on every rank."""
        return _ordered_mean([partial], count, dtype)

    def reduction_bytes(self, length: int, partial_dtype, dtype) -> int:
        """Bytes one rank sends (and receives) in ``ordered_mean`` of a vector of ``length``."""
        return 0

    def abort(self, code: int) -> None:
        sys.exit(code)


class SingleProcess(Communicator):
    """One process: no MPI, training exactly as without this module."""


def _ordered_mean(rows, count: int, dtype) -> np.ndarray:
    # one chain of float64 additions in row order, shared by the single-process accumulation and
    # the owner of each chunk under MPI: K ranks with one micro-batch each and one process with
    # --accumulate K add the same numbers in the same order
    acc = np.array(rows[0], dtype=np.float64, copy=True)
    for row in rows[1:]:
        acc += row
    if count != 1:
        acc /= count
    return acc.astype(dtype, copy=False)


class MPICommunicator(Communicator):
    """``COMM_WORLD`` through mpi4py (a duplicate, so refsnn's messages meet no one else's)."""

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_size = node.Get_size()
        node.Free()
        self.hostname = MPI.Get_processor_name()
        self._announced_to_me = 0

    def barrier(self) -> None:
        self.comm.Barrier()

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def announce_failure(self) -> None:
        if self._announced:
            return
        self._announced = True
        for r in range(self.size):
            if r != self.rank:
                self.comm.send(self.rank, dest=r, tag=_FAILURE_TAG)

    def peer_failed(self) -> bool:
        return bool(self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=_FAILURE_TAG))

    def _collect_announcements(self, statuses) -> None:
        # receive exactly the announcements that were sent, so none is left pending at exit
        for r, (_, _, announced, _) in enumerate(statuses):
            if announced and r != self.rank:
                self.comm.recv(source=r, tag=_FAILURE_TAG)

    def ordered_mean(self, partial: np.ndarray, count: int, dtype) -> np.ndarray:
        partial = np.ascontiguousarray(partial).reshape(-1)
        K, L = self.size, partial.size
        chunk = -(-L // K)
        send = np.zeros((K, chunk), dtype=partial.dtype)
        send.reshape(-1)[:L] = partial
        recv = np.empty_like(send)
        self.comm.Alltoall(send, recv)              # row r of recv: my chunk as rank r holds it
        mine = _ordered_mean(recv, count, dtype)
        full = np.empty((K, chunk), dtype=mine.dtype)
        self.comm.Allgather(mine, full)
        return full.reshape(-1)[:L]

    def reduction_bytes(self, length: int, partial_dtype, dtype) -> int:
        K = self.size
        chunk = -(-length // K)
        return (K - 1) * chunk * (np.dtype(partial_dtype).itemsize + np.dtype(dtype).itemsize)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.MPI.COMM_WORLD.Abort(code)


def launcher_size() -> int:
    """The number of ranks a launcher (mpiexec, srun) announced in the environment; 1 if none.
    ``REFSNN_DISTRIBUTED=0`` ignores the launcher (every process trains alone)."""
    if os.environ.get("REFSNN_DISTRIBUTED") == "0":
        return 1
    for var in _SIZE_VARIABLES:
        value = os.environ.get(var)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return 1


_WORLD: Communicator | None = None


def world() -> Communicator:
    """This process's communicator (created once): MPI when a launcher started more than one
    rank, else ``SingleProcess``. mpi4py is imported only in the first case."""
    global _WORLD
    if _WORLD is None:
        n = launcher_size()
        if n <= 1:
            _WORLD = SingleProcess()
        else:
            try:
                import mpi4py  # noqa: F401
            except ImportError:
                raise ValueError(
                    f"this process was started by an MPI launcher with {n} ranks, but mpi4py is not "
                    f"installed: install it with  pip install -e \".[mpi]\"  (or start one process "
                    f"without mpiexec; REFSNN_DISTRIBUTED=0 makes every rank train alone)") from None
            _WORLD = MPICommunicator()
    return _WORLD


# ------------------------------------------------------------------------------- threads

def rank_threads(comm: Communicator, requested: int | None) -> int | None:
    """Threads for this rank's Numba and BLAS: ``requested`` if given; in one process None
    (the libraries' default, all cores); under MPI the cores this rank may use divided by the
    ranks on its node (the cores bound to it, if the launcher bound it to fewer than all), at
    most ``NUMBA_NUM_THREADS``."""
    if requested:
        return int(requested)
    if comm.size == 1:
        return None
    cores = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:
        allowed = cores
    if allowed < cores:                 # bound by the launcher: these cores are this rank's own
        share = allowed
    else:
        share = cores // max(1, comm.local_size)
    import numba                        # no more than Numba's pool (NUMBA_NUM_THREADS) holds
    return max(1, min(share, numba.config.NUMBA_NUM_THREADS))


def thread_summary(comm: Communicator, threads: int | None) -> str:
    """One line for rank 0 to print: ranks, nodes and threads per rank (a collective call)."""
    import numba
    mine = (comm.hostname, int(threads or numba.config.NUMBA_NUM_THREADS))
    everyone = comm.allgather(mine)
    hosts = sorted({h for h, _ in everyone})
    counts = sorted({t for _, t in everyone})
    per_rank = ", ".join(str(t) for t in counts)
    return (f"{comm.size} rank{'s' if comm.size > 1 else ''} on {len(hosts)} node{'s' if len(hosts) > 1 else ''}"
            f" ({comm.local_size} on this node, {os.cpu_count()} cores); threads per rank: {per_rank}")


# ------------------------------------------------------------------------------- sharded batches

def micro_batches(dataset, batch_size: int, *, comm: Communicator, accumulate: int = 1, seed: int = 0,
                  epoch: int = 0, start_batch: int = 0, transform=None, prefetch: int = 2):
    """This rank's micro-batches of one training epoch, grouped per optimizer step.

    Yields, for each global batch ``b = start_batch, ...`` of the epoch (``len(dataset) //
    batch_size`` of them, the last partial batch dropped as in single-process training), the
    list of this rank's ``accumulate`` micro-batches (``Batch`` objects of ``batch_size / (K *
    accumulate)`` clips, ``index == b``). The returned object has ``close()`` and ``__len__``
    (steps); closing it stops the prefetch thread.
    """
    from .data.batching import BatchIterator, epoch_order
    parts = comm.size * accumulate
    check_divisible(batch_size, comm.size, accumulate)
    if parts == 1:
        return _Grouped(BatchIterator(dataset, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True,
                                      start_batch=start_batch, transform=transform, prefetch=prefetch), 1)
    n = batch_size // parts
    steps = len(dataset) // batch_size
    if steps < 1:
        raise ValueError(f"batch_size: {batch_size} is larger than the data set ({len(dataset)} clips)")
    order = epoch_order(len(dataset), seed, epoch, True)
    first = comm.rank * accumulate
    mine = [order[b * batch_size + u * n:b * batch_size + (u + 1) * n]
            for b in range(start_batch, steps) for u in range(first, first + accumulate)]
    if not mine:                        # resumed at the end of an epoch
        return _Grouped([], accumulate)
    view = dataset.subset(np.concatenate(mine))

    def relabel(batch, _rng):
        # the k-th micro-batch of this rank's view is micro-batch u of global batch b
        k = batch.index
        b, u = start_batch + k // accumulate, first + k % accumulate
        batch = batch.replace(index=b)
        if transform is None:
            return batch
        return transform(batch, np.random.Generator(np.random.PCG64([seed, epoch, b, 1, u])))

    it = BatchIterator(view, n, shuffle=False, drop_last=True, transform=relabel, prefetch=prefetch)
    return _Grouped(it, accumulate)


def check_divisible(batch_size: int, ranks: int, accumulate: int) -> None:
    """``--batch-size`` is the global batch: it must split into ranks x accumulate equal parts."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, (int, np.integer)) or accumulate < 1:
        raise ValueError(f"accumulate: expected a positive integer, got {accumulate!r}")
    parts = ranks * accumulate
    if batch_size % parts:
        what = f"{ranks} ranks x --accumulate {accumulate}" if ranks > 1 else f"--accumulate {accumulate}"
        near = sorted({max(parts, batch_size // parts * parts), (batch_size // parts + 1) * parts})
        raise ValueError(f"--batch-size {batch_size} is the global batch of one optimizer step and must "
                         f"divide into {what} = {parts} equal micro-batches; use --batch-size "
                         f"{' or '.join(map(str, near))}, or change the number of ranks or --accumulate")


class _Grouped:
    """Groups an iterator's micro-batches ``group`` at a time (a list per optimizer step)."""

    def __init__(self, it, group: int):
        self._it, self._group = it, group
        self._src = iter(it)

    def __len__(self) -> int:
        return len(self._it) // self._group

    def __iter__(self):
        return self

    def __next__(self) -> list:
        out = [next(self._src)]
        for _ in range(self._group - 1):
            out.append(next(self._src))
        return out

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------- gradient reduction

class GradientAccumulator:
    """Sums the gradients and BatchNorm running statistics of this rank's micro-batches and
    averages them over all micro-batches of all ranks.

    Per optimizer step: ``begin()``; for each micro-batch: ``model.zero_grad()``, forward,
    backward, ``add()``; then ``finish()``, which leaves in every parameter's ``grad`` the mean
    gradient of the global batch and in every float buffer the mean of the statistics the
    micro-batches produced, identical on every rank. With one micro-batch in one process
    (``parts == 1``) all three calls do nothing: the gradients are the backward's own.

    The loss of each micro-batch is its own mean, so the mean over equal micro-batches is the
    gradient of the global batch's mean loss. Partial sums of a rank's micro-batches are
    float64; with one micro-batch per rank the rank sends its float32 gradient as it is.
    """

    def __init__(self, model, comm: Communicator, accumulate: int = 1):
        self.model, self.comm, self.accumulate = model, comm, int(accumulate)
        self.parts = comm.size * self.accumulate
        self.params = list(model.parameters().values())
        self.buffers = [(module, name) for _, module in model.named_modules()
                        for name, b in module._buffers.items() if np.issubdtype(b.dtype, np.floating)]
        dtypes = {p.value.dtype for p in self.params} | {m._buffers[n].dtype for m, n in self.buffers}
        if len(dtypes) != 1:
            raise ValueError(f"model: parameters and buffers of one float dtype expected, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        sizes = [p.value.size for p in self.params] + [m._buffers[n].size for m, n in self.buffers]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.length = int(self.offsets[-1])
        self._partial = None
        self._snapshot = None
        self._count = 0

    @property
    def partial_dtype(self):
        return self.dtype if self.accumulate == 1 else np.dtype(np.float64)

    @property
    def bytes_per_step(self) -> int:
        """What ``finish()`` sends per rank (and receives): the ``ordered_mean`` of one step."""
        return self.comm.reduction_bytes(self.length, self.partial_dtype, self.dtype)

    def begin(self) -> None:
        if self.parts == 1:
            return
        self._snapshot = [m._buffers[n].copy() for m, n in self.buffers]
        self._partial, self._count = None, 0

    def _flat(self) -> np.ndarray:
        out = np.empty(self.length, dtype=self.dtype)
        arrays = [p.grad for p in self.params] + [m._buffers[n] for m, n in self.buffers]
        for a, lo, hi in zip(arrays, self.offsets[:-1], self.offsets[1:]):
            out[lo:hi] = a.reshape(-1)
        return out

    def add(self) -> None:
        """Take the gradients and statistics of the micro-batch just run (then restore the
        statistics of the step's start for the next micro-batch)."""
        if self.parts == 1:
            return
        flat = self._flat()
        if self.accumulate == 1:
            self._partial = flat
        elif self._partial is None:
            self._partial = flat.astype(np.float64)
        else:
            self._partial += flat
        self._count += 1
        for (m, n), snap in zip(self.buffers, self._snapshot):
            m.set_buffer(n, snap.copy())

    def finish(self) -> None:
        """Average over every micro-batch of every rank; write into grads and buffers."""
        if self.parts == 1:
            return
        if self._count != self.accumulate:
            raise RuntimeError(f"GradientAccumulator: {self._count} micro-batches added, expected {self.accumulate}")
        mean = self.comm.ordered_mean(self._partial, self.parts, self.dtype)
        for i, p in enumerate(self.params):
            p.grad[...] = mean[self.offsets[i]:self.offsets[i + 1]].reshape(p.grad.shape)
        base = len(self.params)
        for j, (m, n) in enumerate(self.buffers):
            lo, hi = self.offsets[base + j], self.offsets[base + j + 1]
            m.set_buffer(n, mean[lo:hi].reshape(m._buffers[n].shape).copy())
        self._partial, self._snapshot, self._count = None, None, 0


# ------------------------------------------------------------------------------- entry points

def run_main(main, argv=None) -> int:
    """Run a command line's ``main(argv) -> exit code`` so that no rank can hang.

    ``RankFailure`` (raised on every rank by ``agree``) is printed once, by rank 0, with the
    failing rank's message, and every rank exits with its code. Any other exception escaping on
    one rank under MPI is printed with that rank's number, then ``MPI_Abort`` ends all ranks.
    """
    try:
        return main(argv)
    except RankFailure as exc:
        if _WORLD is None or _WORLD.is_root:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except SystemExit:
        raise
    except BaseException as exc:                         # noqa: BLE001 - every rank must stop
        comm = _WORLD
        if comm is None or not comm.distributed:
            raise
        kind, message = _describe(exc)
        if not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc(file=sys.stderr)
        print(f"error: rank {comm.rank} of {comm.size}: {message}; stopping every rank (MPI_Abort)",
              file=sys.stderr, flush=True)
        comm.abort(exit_code_of(kind))
        return exit_code_of(kind)

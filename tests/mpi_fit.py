"""``fit`` of the tiny preset on a small synthetic set, for tests/test_distributed.py, run as
``mpiexec -n K python tests/mpi_fit.py '<json>'`` (or without mpiexec).

The JSON holds ``fit``'s keyword arguments, plus optionally
    ``"nan_on": [rank, call]``    that rank's ``call``-th batch (1-based) gets a NaN clip, so its
                                  loss is NaN: a real divergence on one rank only;
    ``"crash_on": [rank, step]``  that rank's batch iterator raises at that step, outside any
                                  status check: the MPI_Abort path.
Prints one JSON line per rank: rank, size, status, step.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refsnn.distributed import run_main, world  # noqa: E402


def _inject(spec: dict) -> None:
    from refsnn import training
    rank = world().rank
    nan_on, crash_on = spec.pop("nan_on", None), spec.pop("crash_on", None)
    if nan_on and nan_on[0] == rank:
        original, calls = training.model_inputs, [0]

        def poisoned(batch, dtype):
            calls[0] += 1
            audio, frames = original(batch, dtype)
            if calls[0] == nan_on[1]:
                audio = audio.copy()
                audio[0] = float("nan")
            return audio, frames
        training.model_inputs = poisoned
    if crash_on and crash_on[0] == rank:
        original_batches = training.micro_batches

        def crashing(*args, **kwargs):
            it = original_batches(*args, **kwargs)
            src = iter(it)

            class Crash:
                def __init__(self):
                    self.n = 0

                def __iter__(self):
                    return self

                def __len__(self):
                    return len(it)

                def __next__(self):
                    self.n += 1
                    if self.n == crash_on[1]:
                        raise OSError("injected: the disk holding the data went away")
                    return next(src)

                def close(self):
                    it.close()
            return Crash()
        training.micro_batches = crashing


def main(argv):
    spec = json.loads(argv[0])
    _inject(spec)
    from refsnn.models import config
    from refsnn.training import fit
    sizes = spec.pop("sizes", {"n_train": 48, "n_val": 16, "n_test": 16})
    resume = spec.get("resume", False)
    rep = fit(None if resume else config("tiny"), None if resume else "synthetic",
              data_options=None if resume else sizes, progress=False, **spec)
    comm = world()
    print(json.dumps({"rank": comm.rank, "size": comm.size, "status": rep["status"], "step": rep.get("step")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))

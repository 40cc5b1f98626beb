"""Time to first step (issue 13): how long a fresh clone's ``python -m refsnn.train`` takes to
show its first progress update, and which Numba kernels it compiles on the way.

    python benchmarks/bench_first_step.py                  # empty Numba cache (a fresh clone)
    python benchmarks/bench_first_step.py --warm           # second run: the cache filled
    python benchmarks/bench_first_step.py -- --config tiny # options after -- go to refsnn.train

Runs the command in a child process with ``NUMBA_CACHE_DIR`` set to a new empty folder (the
cache a fresh clone has), reads its progress bar, and stops it (Ctrl-C: it saves and exits)
after the first batch is counted. The child records every Numba compilation (the
``numba:compile`` event, inclusive of what it compiles inside) and prints them at exit.
The figure depends on the machine's load: compare runs made side by side.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import atexit, sys, time
from numba.core import event
done = []
class Timer(event.Listener):
    def __init__(self):
        self.started = {}
    def on_start(self, ev):
        self.started[id(ev.data["dispatcher"]), str(ev.data["args"])] = time.process_time()
    def on_end(self, ev):
        d = ev.data["dispatcher"]
        key = (id(d), str(ev.data["args"]))
        # only refsnn's kernels (inclusive of the helpers they compile); CPU seconds, which
        # the machine's load does not inflate as it does wall time
        if d.py_func.__module__.startswith("refsnn") and "<locals>" not in d.py_func.__qualname__:
            done.append((time.process_time() - self.started.pop(key), d.py_func.__module__ + "."
                         + d.py_func.__qualname__, str(ev.data["args"])))
event.register("numba:compile", Timer())
def report():
    top = [r for r in done]
    print(f"#compiled {len(top)} refsnn kernels in {sum(r[0] for r in top):.1f} CPU s", file=sys.stderr)
    for secs, name, args in sorted(top, reverse=True):
        print(f"#kernel {secs:6.2f} CPU s {name} {args[:100]}", file=sys.stderr)
    sys.stderr.flush()
atexit.register(report)
from refsnn.train import main
sys.exit(main(sys.argv[1:]))
"""


def _stat(pid) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time (Linux /proc, all threads) of a running process, and of its
    child processes (running, ended, or ended and reaped: refsnn.precompile's helper)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = _stat(pid)
    if fields is None:
        return float("nan"), float("nan")
    own = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick          # reaped children
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(entry)
            if f is not None and int(f[1]) == pid:
                children += (int(f[11]) + int(f[12])) / tick
    return own, children


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", action="store_true", help="run twice on one cache; report the second")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-precompile", action="store_true",
                    help="REFSNN_PRECOMPILE=0: no helper process (as before issue 13's helper)")
    ap.add_argument("train_args", nargs="*", help="options for refsnn.train (after --)")
    args = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = tempfile.mkdtemp(prefix="refsnn-numba-cache-")
    out = tempfile.mkdtemp(prefix="refsnn-first-step-")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, **({"REFSNN_PRECOMPILE": "0"} if args.no_precompile else {}),
               PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"NUMBA_CACHE_DIR={cache} (empty at the start)")
    for run in range(2 if args.warm else 1):
        cmd = [sys.executable, "-u", "-c", _CHILD, "--out", os.path.join(out, f"run{run}"),
               "--epochs", "1", *args.train_args]
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        first = None
        cpu = helper = float("nan")
        tail = []
        buf = b""
        while True:
            chunk = child.stderr.read1(4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines:
                text = line.decode(errors="replace")
                if first is None and re.search(r"\|\s*1/\d+", text):
                    first = time.perf_counter() - t0
                    cpu, helper = _cpu_seconds(child.pid)
                    child.send_signal(signal.SIGINT)     # finishes the step, saves, exits
                if text.startswith("#"):
                    tail.append(text)
            if time.perf_counter() - t0 > args.timeout:
                child.kill()
                break
        child.wait()
        label = "warm cache" if run else "empty cache"
        if first is None:
            print(f"{label}: no progress update within {args.timeout:.0f} s (exit {child.returncode})")
        else:
            print(f"{label}: first progress update after {first:.1f} s wall, {cpu:.1f} s of CPU "
                  f"+ {helper:.1f} s in child processes (refsnn.precompile's helper) (user + "
                  f"system time: on a loaded machine the wall time is longer, the CPU time not)")
        print("\n".join(tail))


if __name__ == "__main__":
    main()

"""refsnn against the PyTorch port (examples/torch_port): one training step and one forward pass
of SNNergy on the same weights and inputs, CPU, same thread count, as ratios measured in one run.

    python benchmarks/bench_vs_torch.py                          # cpu and paper, batch 8, 2 threads
    python benchmarks/bench_vs_torch.py --configs cpu --repeat 9
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_vs_torch.py

A training step is forward, softmax cross-entropy (label smoothing 0.1), backward and AdamW,
in float32. Both models hold the same weights (refsnn's seeded initialisation, copied into the
port by name) and see the same batch (audio [B, 1, S, S], visual clips of T frames). Steps of
the two frameworks alternate, so both see the same machine load; each figure is the median of
``--repeat`` steps after a warm-up step. The train step is split into forward (train mode),
backward and optimizer, to show where the time goes. Peak memory is the peak resident set
size of a separate process per framework and config running two training steps (minus the
process's size before the first step: interpreter, libraries, model, batch).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import blas_report, machine, set_threads  # noqa: E402

LABEL_SMOOTHING = 0.1
LR = 1e-3


def _status_mib(key: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process, from /proc/self/status. (getrusage's
    ru_maxrss survives exec on Linux: a child would report its parent's size at the fork.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {key}")


def make_batch(cfg, batch: int, seed: int = 0):
    rng = np.random.Generator(np.random.PCG64(seed))
    S = cfg.image_size
    audio = rng.normal(0, 1, (batch, 1, S, S)).astype(np.float32)
    visual = rng.uniform(0, 1, (batch, cfg.T, 3, S, S)).astype(np.float32)
    labels = rng.integers(0, cfg.classes, batch).astype(np.int64)
    return audio, visual, labels


def build_refsnn(name: str, seed: int = 0):
    from refsnn.models import config
    from refsnn.models.snnergy import SNNergy
    cfg = config(name)
    return cfg, SNNergy(cfg, seed=seed, dtype=np.float32)


def build_port(cfg_dict: dict, state: dict | None = None):
    """The port's model; with ``state`` (refsnn's state_dict) it holds the same weights."""
    import torch

    from examples.torch_port import PortConfig, SNNergy as PortSNNergy
    port = PortSNNergy(PortConfig.from_dict(cfg_dict))
    if state is not None:
        port.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()})
    return port


class RefsnnRunner:
    def __init__(self, model, batch):
        from refsnn.optim import AdamW
        self.model, (self.audio, self.visual, self.labels) = model, batch
        self.opt = AdamW(model.parameters(), lr=LR)

    def forward_train(self):
        self.model.train()
        self.model.zero_grad()
        return self.model.forward(self.audio, self.visual)

    def backward(self, logits):
        from refsnn.functional import cross_entropy_backward, cross_entropy_forward
        _, cache = cross_entropy_forward(logits, self.labels, label_smoothing=LABEL_SMOOTHING)
        self.model.backward(cross_entropy_backward(cache))

    def optimizer(self):
        self.opt.step()

    def forward_eval(self):
        self.model.eval()
        out = self.model.forward(self.audio, self.visual)
        self.model.clear_cache()
        return out


class TorchRunner:
    def __init__(self, model, batch):
        import torch
        self.torch = torch
        self.model = model
        self.audio, self.visual, self.labels = (torch.from_numpy(a) for a in batch)
        # fused: torch's one-kernel CPU AdamW (the per-tensor loop costs ~100 small ops a step)
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)

    def forward_train(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        return self.model(self.audio, self.visual)

    def backward(self, logits):
        loss = self.torch.nn.functional.cross_entropy(logits, self.labels, label_smoothing=LABEL_SMOOTHING)
        loss.backward()

    def optimizer(self):
        self.opt.step()

    def forward_eval(self):
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.audio, self.visual)


def timed_step(runner) -> dict:
    t0 = time.perf_counter()
    logits = runner.forward_train()
    t1 = time.perf_counter()
    runner.backward(logits)
    t2 = time.perf_counter()
    runner.optimizer()
    t3 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "step": t3 - t0}


def timed_eval(runner) -> float:
    t0 = time.perf_counter()
    runner.forward_eval()
    return time.perf_counter() - t0


def compare(name: str, batch: int, repeat: int) -> dict:
    cfg, ref = build_refsnn(name)
    port = build_port(cfg.to_dict(), ref.state_dict())
    data = make_batch(cfg, batch)
    r, t = RefsnnRunner(ref, data), TorchRunner(port, data)
    # same weights and inputs: the first train-mode logits (batch statistics: an active network;
    # eval mode with fresh running statistics is nearly silent) agree up to float32 rounding
    # and the spikes it flips
    logits_r = r.forward_train()
    logits_t = t.forward_train().detach().numpy()
    agree = float(np.abs(logits_r - logits_t).max())
    for runner in (r, t):                      # warm-up (allocations, JIT caches, oneDNN plans)
        timed_step(runner)
        timed_eval(runner)
    steps = {"refsnn": [], "torch": []}
    evals = {"refsnn": [], "torch": []}
    for _ in range(repeat):
        for key, runner in (("refsnn", r), ("torch", t)):
            steps[key].append(timed_step(runner))
            evals[key].append(timed_eval(runner))
    out = {"config": name, "batch": batch, "params": ref.num_parameters(), "logits_max_abs_diff": agree}
    for key in ("refsnn", "torch"):
        out[key] = {part: float(np.median([s[part] for s in steps[key]]))
                    for part in ("forward", "backward", "optimizer", "step")}
        out[key]["eval_forward"] = float(np.median(evals[key]))
    out["step_ratio"] = out["refsnn"]["step"] / out["torch"]["step"]
    out["forward_ratio"] = out["refsnn"]["eval_forward"] / out["torch"]["eval_forward"]
    return out


def child_memory(framework: str, name: str, batch: int, threads: int) -> None:
    """Runs in its own process, which imports and builds only ``framework``'s model (the port
    keeps its own initialisation: memory does not depend on the values): two training steps,
    then prints peak RSS as JSON."""
    set_threads(threads)
    if framework == "refsnn":
        cfg, model = build_refsnn(name)
        runner = RefsnnRunner(model, make_batch(cfg, batch))
    else:
        import torch
        torch.set_num_threads(threads)
        from examples.torch_port import config as port_config
        cfg = port_config(name)
        runner = TorchRunner(build_port(cfg.to_dict()), make_batch(cfg, batch))
    base = _status_mib("VmRSS")
    for _ in range(2):
        timed_step(runner)
    print(json.dumps({"peak_mib": _status_mib("VmHWM"), "before_mib": base}))


def measure_memory(framework, name, batch, threads) -> dict:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", framework, "--configs", name,
                        "--batch", str(batch), "--threads", str(threads)],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"memory child {framework}/{name} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="timed steps per framework (median)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--child", choices=["refsnn", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_memory(args.child, args.configs[0], args.batch, args.threads)
        return 0
    set_threads(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"BLAS: {blas_report()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numba/BLAS threads {args.threads}")
    for name in args.configs:
        res = compare(name, args.batch, args.repeat)
        r, t = res["refsnn"], res["torch"]
        print(f"\n== {name}: batch {args.batch}, {res['params']:,} parameters, float32 "
              f"(first train-mode logits differ by {res['logits_max_abs_diff']:.2g}) ==")
        print(f"{'':24}{'refsnn':>12}{'torch port':>12}{'ratio':>8}")
        for part in ("forward", "backward", "optimizer", "step"):
            label = {"step": "train step (median)", "forward": "  forward (train mode)",
                     "backward": "  loss + backward", "optimizer": "  AdamW"}[part]
            print(f"{label:<24}{r[part] * 1e3:10.1f}ms{t[part] * 1e3:10.1f}ms{r[part] / t[part]:8.2f}")
        print(f"{'forward only (eval)':<24}{r['eval_forward'] * 1e3:10.1f}ms{t['eval_forward'] * 1e3:10.1f}ms"
              f"{res['forward_ratio']:8.2f}")
        print(f"train step ratio refsnn / torch port: {res['step_ratio']:.2f}x")
        if not args.no_memory:
            mem = {fw: measure_memory(fw, name, args.batch, args.threads) for fw in ("refsnn", "torch")}
            for fw in ("refsnn", "torch"):
                m = mem[fw]
                print(f"peak RSS {fw:<7} {m['peak_mib']:8.0f} MiB  (+{m['peak_mib'] - m['before_mib']:.0f} MiB "
                      f"over the {m['before_mib']:.0f} MiB before the first step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

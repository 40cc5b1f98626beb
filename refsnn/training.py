"""The training loop behind ``python -m refsnn.train``: ``fit`` and the pieces it is made of.

    fit -> build_run -> [restore] -> per epoch: run_epoch (train_step per batch) -> end_of_epoch
        -> final_report

A training step is four calls, as in llm.c: ``forward`` (logits and loss), ``zero_grad``,
``backward``, ``update`` (gradient norm, clipping, optimizer and schedule step). Where the run is
lives in a ``RunState`` (epoch, batch, step, the epoch's running sums, best validation accuracy,
the metrics history), which every checkpoint stores in its meta.

With ``--accumulate M`` or several MPI ranks (``mpiexec -n K``, ``refsnn.distributed``) a step
is ``micro_step``: forward and backward of each of this rank's micro-batches, a status check
across ranks, the reproducible mean of gradients and BatchNorm statistics, then ``update``.
Rank 0 alone writes the run directory; validation and test are shared among the ranks.

Exact resume: the batch order and the augmentation draws are pure functions of (seed, epoch,
batch), and the checkpoint holds weights, BatchNorm statistics, optimizer and schedule state,
the epoch's running sums and the RNG descriptions. With the same thread count, a run stopped and
resumed continues bit for bit as if it had not stopped. ``resume`` with a larger ``epochs``
extends a run: the cosine schedule is recomputed for the new total from the current step (said
in metrics.jsonl), so it is not the run a larger ``epochs`` from the start would have been.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_write_text
from .checkpoint import Checkpoint, config_differences, load_checkpoint, save_checkpoint, versions
from .checks import NonFiniteError, check_choice
from .runtime import limit_threads
from .distributed import (Communicator, GradientAccumulator, SingleProcess, check_divisible, micro_batches,
                          rank_threads, thread_summary, world)
from .evaluation import Interrupted, energy_batches, evaluate, load_splits, model_inputs, progress_bar
from .functional.loss import cross_entropy_backward, cross_entropy_forward
from .memory import check_step_memory
from .models.configs import Config
from .models.snnergy import SNNergy
from .precompile import Precompiler
from .optim import OPTIMIZERS, CosineSchedule, build_optimizer, clip_grad_norm, grad_norm
from .recipes import DEFAULTS
from .rundir import RunDir

__all__ = ["fit", "TrainingError", "RunState", "Run", "check_options", "build_run", "restore", "train_step",
           "forward", "backward", "update", "run_epoch", "end_of_epoch", "final_report", "build_transform",
           "RUN_OPTIONS", "option_flag"]

# options that must be equal for a resumed run to continue the same run (``epochs`` may grow)
RUN_OPTIONS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum",
               "warmup_epochs", "min_lr", "label_smoothing", "grad_clip", "crop", "flip",
               "specaugment", "mixup", "seed", "data", "data_options")
# options of ``fit`` beyond the recipes' DEFAULTS (``data`` and ``config`` are fit's arguments)
_EXTRA_OPTIONS = {"seed": 0, "threads": None, "accumulate": 1}
_FLAGS = {"warmup_epochs": "--warmup", "data_options": "--data-option"}


def option_flag(key: str) -> str:
    """The command-line flag of a training option (``min_lr`` -> ``--min-lr``)."""
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss is no longer finite)."""


# ------------------------------------------------------------------------------- options

def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_options(options: dict) -> dict:
    """The training options with DEFAULTS filled in, each checked; errors name the flag."""
    known = (set(DEFAULTS) - {"data", "config"}) | set(_EXTRA_OPTIONS) | {"data_options"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
    opts = {k: v for k, v in DEFAULTS.items() if k not in ("data", "config")}
    opts.update(_EXTRA_OPTIONS)
    opts.update(options)
    for key in ("epochs", "batch_size", "eval_every", "energy_batches"):
        if not (_is_int(opts[key]) and opts[key] >= 1):
            raise ValueError(f"{option_flag(key)}: expected a positive integer, got {opts[key]!r}")
    if not (_is_int(opts["seed"]) and opts["seed"] >= 0):
        raise ValueError(f"--seed: expected an integer >= 0, got {opts['seed']!r}")
    if not (_is_int(opts["accumulate"]) and opts["accumulate"] >= 1):
        raise ValueError(f"--accumulate: expected a positive integer, got {opts['accumulate']!r}")
    if opts["threads"] is not None and not (_is_int(opts["threads"]) and opts["threads"] >= 1):
        raise ValueError(f"--threads: expected a positive integer, got {opts['threads']!r}")
    check_choice("--optimizer", opts["optimizer"], OPTIMIZERS)
    for key in ("lr", "weight_decay", "warmup_epochs", "min_lr", "mixup"):
        if not (_is_number(opts[key]) and opts[key] >= 0):
            raise ValueError(f"{option_flag(key)}: expected a finite number >= 0, got {opts[key]!r}")
    if not (_is_number(opts["momentum"]) and 0 <= opts["momentum"] < 1):
        raise ValueError(f"--momentum: expected a value in [0, 1), got {opts['momentum']!r}")
    if opts["min_lr"] > opts["lr"]:
        raise ValueError(f"--min-lr {opts['min_lr']} is above --lr {opts['lr']}: the schedule would raise "
                         f"the learning rate instead of lowering it")
    if not (_is_number(opts["label_smoothing"]) and 0 <= opts["label_smoothing"] < 1):
        raise ValueError(f"--label-smoothing: expected a value in [0, 1), got {opts['label_smoothing']!r}")
    if opts["grad_clip"] is not None and not (_is_number(opts["grad_clip"]) and opts["grad_clip"] > 0):
        raise ValueError(f"--grad-clip: expected a finite number > 0, got {opts['grad_clip']!r}")
    for key in ("crop", "flip", "specaugment"):
        if not isinstance(opts[key], (bool, np.bool_)):
            raise ValueError(f"{option_flag(key)}: expected true or false, got {opts[key]!r}")
    if not isinstance(opts.get("data_options", {}), dict):
        raise ValueError(f"--data-option: expected a dict, got {opts['data_options']!r}")
    return opts


def build_transform(opts: dict):
    """The training augmentations the options switch on, in a fixed order (or None)."""
    from .data.augment import Compose, HorizontalFlip, Mixup, RandomResizedCrop, SpecAugment
    chain = []
    if opts["crop"]:
        chain.append(RandomResizedCrop())
    if opts["flip"]:
        chain.append(HorizontalFlip())
    if opts["specaugment"]:
        chain.append(SpecAugment())
    if opts["mixup"]:
        chain.append(Mixup(alpha=float(opts["mixup"])))
    return Compose(chain) if chain else None


# ------------------------------------------------------------------------------- run state

@dataclass
class RunState:
    """Where a run is. Saved in every checkpoint's meta (``state``) and restored on resume."""
    epoch: int = 0                  # epochs finished
    batch: int = 0                  # batches finished in the current epoch
    step: int = 0                   # optimizer steps so far (= epoch x steps per epoch + batch)
    loss_sum: float = 0.0           # the current epoch's sum of (batch loss x batch size)
    correct: int = 0                # ... of correctly classified training clips
    seen: int = 0                   # ... of training clips
    epoch_time: float = 0.0         # seconds spent in the current epoch
    best_val: float | None = None   # best validation accuracy so far, and its epoch
    best_epoch: int | None = None
    last_finite_loss: float | None = None
    history: list = field(default_factory=list)     # the metrics.jsonl lines of finished epochs
    schedule_change: dict | None = None             # an extension not yet logged in metrics.jsonl

    def record(self, loss: float, correct: int, n: int) -> None:
        """Account one finished training step of ``n`` clips."""
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n
        self.batch += 1
        self.step += 1
        self.last_finite_loss = float(loss)

    def finish_epoch(self, line: dict, improved: bool) -> None:
        if improved:
            self.best_val, self.best_epoch = line["val_accuracy"], line["epoch"]
        self.history.append(line)
        self.epoch += 1
        self.batch, self.loss_sum, self.correct, self.seen, self.epoch_time = 0, 0.0, 0, 0, 0.0
        self.schedule_change = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, ck: Checkpoint, steps_per_epoch: int) -> "RunState":
        """The state in ``ck``'s meta, checked: a hand-edited or foreign meta is a ValueError
        naming the file and the field."""
        d = ck.meta.get("state")
        if not isinstance(d, dict):
            raise ValueError(f"{ck.path}: its meta has no 'state' (not written by refsnn.train, or edited)")
        d = dict(d)
        if "sums" in d:                                     # checkpoints written before RunState
            d["loss_sum"], d["correct"], d["seen"] = d.pop("sums")
        if d.get("best_val") is not None and d["best_val"] < 0:
            d["best_val"] = None
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted({"epoch", "batch", "step", "loss_sum", "correct", "seen"} - set(d))
        if missing or set(d) - names:
            raise ValueError(f"{ck.path}: meta 'state' is missing {missing} or has unknown fields "
                             f"{sorted(set(d) - names)}")
        state = cls(**d)
        state._check(ck.path, steps_per_epoch)
        return state

    def _check(self, path, steps_per_epoch: int) -> None:
        def bad(name, expected):
            raise ValueError(f"{path}: meta state.{name}: expected {expected}, got {getattr(self, name)!r}")
        for name in ("epoch", "batch", "step", "correct", "seen"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "an integer >= 0")
        for name in ("loss_sum", "epoch_time"):
            if not (_is_number(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "a finite number >= 0")
        for name in ("best_val", "last_finite_loss"):
            if getattr(self, name) is not None and not _is_number(getattr(self, name)):
                bad(name, "a number or null")
        if self.best_epoch is not None and not _is_int(self.best_epoch):
            bad("best_epoch", "an integer or null")
        if not isinstance(self.history, list) or not all(isinstance(x, dict) for x in self.history):
            bad("history", "a list of metrics lines")
        if self.batch >= steps_per_epoch:
            bad("batch", f"less than the {steps_per_epoch} batches of an epoch")
        if self.step != self.epoch * steps_per_epoch + self.batch:
            raise ValueError(f"{path}: meta state.step {self.step} does not agree with epoch {self.epoch} and "
                             f"batch {self.batch} ({steps_per_epoch} batches per epoch)")


@dataclass
class Run:
    """Everything a run works with: built by ``build_run``, changed by the loop."""
    config: Config
    opts: dict
    data_name: str
    splits: dict                    # "train", and "val" / "test" when there are
    class_names: list
    model: SNNergy
    optimizer: object
    schedule: CosineSchedule
    transform: object
    steps_per_epoch: int
    dir: RunDir
    source: dict                    # root and cache of a real data set (for --resume alone)
    state: RunState = field(default_factory=RunState)
    comm: Communicator = field(default_factory=SingleProcess)      # the ranks (refsnn.distributed)
    accumulator: GradientAccumulator | None = None                  # when a step has micro-batches

    @property
    def params(self) -> dict:
        return self.optimizer.params

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimizer step over all ranks (ranks x --accumulate)."""
        return self.comm.size * self.opts["accumulate"]

    def meta(self) -> dict:
        seed = self.opts["seed"]
        draws = (f"PCG64([seed={seed}, epoch, batch, 1])" if self.micro_batches == 1
                 else f"PCG64([seed={seed}, epoch, batch, 1, micro-batch])")
        return {"state": self.state.to_dict(), "options": self.opts, "data": self.data_name,
                "source": self.source, "class_names": [str(n) for n in self.class_names],
                "versions": versions(), "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.comm.size, "accumulate": self.opts["accumulate"],
                "rng": {"batch_order": f"PCG64([seed={seed}, epoch])",
                        "augmentation": draws, "init": f"PCG64({seed})"}}

    def save(self, path=None) -> None:
        """``last.npz`` with optimizer and schedule (or, given a path, the weights alone).
        Every rank holds the same state; rank 0 alone writes."""
        if not self.comm.is_root:
            return
        if path is None:
            save_checkpoint(self.dir.last, self.model, optimizer=self.optimizer, schedule=self.schedule,
                            meta=self.meta())
        else:
            save_checkpoint(path, self.model, meta=self.meta())


def build_schedule(optimizer, opts: dict, steps_per_epoch: int) -> CosineSchedule:
    total = steps_per_epoch * opts["epochs"]
    warmup = min(total, int(round(opts["warmup_epochs"] * steps_per_epoch)))
    return CosineSchedule(optimizer, total_steps=max(1, total), warmup_steps=warmup, min_lr=opts["min_lr"])


def build_run(config_: Config, data_name: str, splits: dict, opts: dict, rundir: RunDir,
              source: dict | None = None, comm: Communicator | None = None) -> Run:
    """Model, optimizer and schedule for ``opts`` on ``splits``; the head has the data set's
    classes. ``comm``: the ranks training together (default this process alone); every rank
    builds the same model from the seed."""
    train_set = splits["train"]
    class_names = list(getattr(train_set, "class_names", range(config_.classes)))
    c = config_.replace(classes=len(class_names))
    if opts["batch_size"] > len(train_set):
        raise ValueError(f"--batch-size: {opts['batch_size']} is larger than the training set "
                         f"({len(train_set)} clips)")
    model = SNNergy(c, seed=opts["seed"])
    optimizer = build_optimizer(model.parameters(), opts["optimizer"], lr=opts["lr"],
                                weight_decay=opts["weight_decay"], momentum=opts["momentum"])
    steps_per_epoch = len(train_set) // opts["batch_size"]
    comm = comm or SingleProcess()
    check_divisible(opts["batch_size"], comm.size, opts["accumulate"])
    run = Run(config=c, opts=opts, data_name=data_name, splits=splits, class_names=class_names, model=model,
              optimizer=optimizer, schedule=build_schedule(optimizer, opts, steps_per_epoch),
              transform=build_transform(opts), steps_per_epoch=steps_per_epoch, dir=rundir,
              source=dict(source or {}), comm=comm)
    if run.micro_batches > 1:
        run.accumulator = GradientAccumulator(model, comm, opts["accumulate"])
    return run


def restore(run: Run, ck: Checkpoint) -> None:
    """Continue from checkpoint ``ck``: weights, optimizer, schedule, state; metrics.jsonl
    rewritten to the checkpoint's history; the schedule stretched when ``epochs`` grew."""
    state = RunState.from_checkpoint(ck, run.steps_per_epoch)
    if run.opts["epochs"] < state.epoch + (state.batch > 0):
        raise ValueError(f"--epochs {run.opts['epochs']}: the run in {run.dir.path} is already in epoch "
                         f"{state.epoch + (state.batch > 0)}; give at least that many")
    try:
        run.model.load_state_dict(ck.model_state)
        run.optimizer.load_state_dict(ck.optim_state)
        run.schedule.load_state_dict(ck.sched_state)
    except ValueError as exc:
        raise ValueError(f"{ck.path}: {exc}") from None
    if not run.optimizer.step_count == run.schedule.step_count == state.step:
        raise ValueError(f"{ck.path}: optimizer step {run.optimizer.step_count}, schedule step "
                         f"{run.schedule.step_count} and meta state.step {state.step} disagree")
    fresh = build_schedule(run.optimizer, run.opts, run.steps_per_epoch)   # sets optimizer.lr; reset below
    if (fresh.total_steps, fresh.warmup_steps) != (run.schedule.total_steps, run.schedule.warmup_steps):
        state.schedule_change = {
            "extended_at_step": state.step, "epochs_before": ck.meta.get("options", {}).get("epochs"),
            "epochs": run.opts["epochs"], "total_steps": fresh.total_steps, "warmup_steps": fresh.warmup_steps}
    run.schedule.retarget(fresh.total_steps, fresh.warmup_steps)
    run.state = state
    history = state.history or [x for x in run.dir.read_metrics() if x.get("epoch", 0) <= state.epoch]
    if run.comm.is_root:
        run.dir.write_metrics(history)
    _note_reshard(run, ck)


def _note_reshard(run: Run, ck: Checkpoint) -> None:
    """Say how a run saved with another number of ranks or --accumulate continues."""
    size, acc = ck.meta.get("world_size", 1), ck.meta.get("accumulate", 1)
    if (size, acc) == (run.comm.size, run.opts["accumulate"]) or not run.comm.is_root:
        return
    before, now = size * acc, run.micro_batches
    how = ("the same micro-batches per step, so it continues exactly as it would have" if before == now else
           f"the same global batches, now in {now} micro-batches instead of {before}: BatchNorm statistics and "
           f"augmentation draws are per micro-batch, so from here it is not bit for bit the run it would have been")
    print(f"resuming a run of {size} rank(s) x --accumulate {acc} with {run.comm.size} rank(s) x --accumulate "
          f"{run.opts['accumulate']}: {how}", file=sys.stderr)


# ------------------------------------------------------------------------------- the step

def _diverged(run: Run, what: str) -> TrainingError:
    s = run.state
    where = f" at {run.dir.last}" if os.path.exists(run.dir.last) else " (none was written yet)"
    return TrainingError(f"{what} at step {s.step + 1} (epoch {s.epoch + 1}, batch {s.batch + 1}); the last "
                         f"finite loss was {s.last_finite_loss}. Training stopped; the last good checkpoint is "
                         f"kept{where}. Try a lower --lr or --grad-clip.")


def forward(run: Run, batch) -> tuple[np.ndarray, float, object]:
    """Logits ``[B, K]``, the (smoothed) cross-entropy loss and its cache."""
    try:
        logits = run.model.forward(*model_inputs(batch, run.model.dtype))
    except NonFiniteError as exc:
        raise _diverged(run, f"non-finite values appeared ({exc})") from None
    targets = batch.targets(run.config.classes, run.opts["label_smoothing"])
    loss, loss_cache = cross_entropy_forward(logits, targets)
    if not math.isfinite(loss):
        raise _diverged(run, f"the loss became {loss}")
    return logits, loss, loss_cache


def backward(run: Run, loss_cache) -> None:
    """Every Parameter's ``grad`` from the loss."""
    try:
        run.model.backward(cross_entropy_backward(loss_cache))
    except NonFiniteError as exc:
        raise _diverged(run, f"non-finite values appeared ({exc})") from None


def update(run: Run) -> None:
    """Check and clip the gradient norm, then one optimizer and schedule step."""
    norm = grad_norm(run.params)        # the backward does not scan its arrays; one norm does
    if not math.isfinite(norm):
        raise _diverged(run, f"the gradient norm became {norm}")
    clip = run.opts["grad_clip"]
    if clip and norm > clip:
        clip_grad_norm(run.params, float(clip))
    run.optimizer.step()
    run.schedule.step()


def train_step(run: Run, batch) -> tuple[np.ndarray, float]:
    """One optimizer step on ``batch``; returns its logits and loss."""
    logits, loss, loss_cache = forward(run, batch)
    run.model.zero_grad()
    backward(run, loss_cache)
    update(run)
    return logits, loss


def micro_step(run: Run, micro: list, stop: "StopControl") -> tuple[float, int, int]:
    """One optimizer step on this rank's micro-batches of the global batch (``--accumulate``
    and/or several ranks): forward and backward of each, the mean of the gradients and
    BatchNorm statistics over every micro-batch of every rank, then ``update`` (the same on
    every rank). Returns the global batch's (mean loss, correct, clips).

    A failure on any rank, and a Ctrl-C on any rank, reach every rank in the status check
    before the reduction, so all ranks stop at the same step."""
    acc, comm = run.accumulator, run.comm
    error, local = None, []
    acc.begin()
    try:
        for batch in micro:
            logits, loss, loss_cache = forward(run, batch)
            run.model.zero_grad()
            backward(run, loss_cache)
            acc.add()
            local.append((loss * len(batch), int((logits.argmax(axis=1) == batch.labels).sum()), len(batch)))
    except Exception as exc:            # noqa: BLE001 - every rank learns of it in the status check
        error = exc
    stopping, parts = comm.exchange(error, stop.requested, local)
    stop.requested = stop.requested or stopping
    acc.finish()
    error = None
    try:
        update(run)                     # the same gradients everywhere: all ranks fail alike
    except TrainingError as exc:
        error = exc
    comm.agree(error)
    loss_sum, correct, n = 0.0, 0, 0
    for part in parts:                  # micro-batch order: the same sums for any ranks x accumulate
        for part_loss, part_correct, part_n in part:
            loss_sum, correct, n = loss_sum + part_loss, correct + part_correct, n + part_n
    return loss_sum / n, correct, n


# ------------------------------------------------------------------------------- the epoch

class StopControl:
    """Set by Ctrl-C (SIGINT) or after ``after_steps`` steps: finish the step, save, stop.
    During the final test a Ctrl-C stops the test; a second Ctrl-C aborts at once."""

    def __init__(self, after_steps: int | None = None, quiet: bool = False):
        self.requested = False
        self.quiet = quiet                      # ranks other than 0 under MPI: rank 0 speaks
        self.after_steps = after_steps
        self.steps = 0
        self.stage = "train"
        self._previous = None

    @property
    def due(self) -> bool:
        return self.requested or (self.after_steps is not None and self.steps >= self.after_steps)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:                      # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True
        what = ("stopping the final test; report.json is written without it" if self.stage == "test"
                else "finishing the current step, then saving")
        if not self.quiet:
            print(f"\ninterrupt: {what} (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def run_epoch(run: Run, stop: StopControl, progress: bool) -> bool:
    """Train the rest of the current epoch; False (after saving last.npz) when stopped inside it.
    With several ranks or ``--accumulate``, each step is this rank's micro-batches of the
    global batch (``refsnn.distributed.micro_batches``)."""
    s, o = run.state, run.opts
    it = micro_batches(run.splits["train"], o["batch_size"], comm=run.comm, accumulate=o["accumulate"],
                       seed=o["seed"], epoch=s.epoch, start_batch=s.batch, transform=run.transform)
    progress = progress and run.comm.is_root
    bar = progress_bar(it, progress, desc=f"epoch {s.epoch + 1}/{o['epochs']}", total=run.steps_per_epoch,
                       initial=s.batch, unit="batch")
    t_epoch = time.perf_counter()
    run.model.train()
    try:
        for micro in bar:
            t0 = time.perf_counter()
            if run.accumulator is None:
                logits, loss = train_step(run, micro[0])
                s.record(loss, int((logits.argmax(axis=1) == micro[0].labels).sum()), len(micro[0]))
            else:
                s.record(*micro_step(run, micro, stop))
            stop.steps += 1
            if progress:
                bar.set_postfix(loss=f"{s.loss_sum / s.seen:.3f}", acc=f"{s.correct / s.seen:.3f}",
                                sps=f"{o['batch_size'] / (time.perf_counter() - t0):.1f}", refresh=False)
            if stop.due and s.batch < run.steps_per_epoch:
                break
    finally:
        it.close()
        if progress:
            bar.close()
        s.epoch_time += time.perf_counter() - t_epoch
    if s.batch < run.steps_per_epoch:
        on_root(run.comm, run.save)
        return False
    return True


def on_root(comm: Communicator, fn, *args):
    """``fn(*args)`` on rank 0 alone (files); every rank learns whether it failed."""
    error = None
    if comm.is_root:
        try:
            fn(*args)
        except Exception as exc:        # noqa: BLE001 - every rank stops with rank 0's message
            error = exc
    comm.agree(error)


def end_of_epoch(run: Run, progress: bool, verbose: bool, on_epoch_end=None) -> dict:
    """Validate, checkpoint (last.npz, and best.npz when better), log the metrics line."""
    s, o = run.state, run.opts
    epoch = s.epoch + 1
    line = {"epoch": epoch, "epochs": o["epochs"], "train_loss": s.loss_sum / s.seen,
            "train_accuracy": s.correct / s.seen, "val_loss": None, "val_accuracy": None,
            "lr": run.optimizer.lr, "epoch_time_s": s.epoch_time, "samples_per_s": s.seen / max(s.epoch_time, 1e-9)}
    if s.schedule_change:
        line["schedule"] = s.schedule_change
    val = run.splits.get("val")
    if val is not None and (epoch % o["eval_every"] == 0 or epoch == o["epochs"]):
        v = evaluate(run.model, val, batch_size=max(o["batch_size"], 32), progress=progress and run.comm.is_root,
                     desc="validate", comm=run.comm)
        line.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
    improved = line["val_accuracy"] is not None and (s.best_val is None or line["val_accuracy"] > s.best_val)
    s.finish_epoch(line, improved)

    def write():
        run.save()                              # the checkpoint first: it holds the line too
        if improved or (val is None and epoch == o["epochs"]):
            run.save(run.dir.best)
        run.dir.append_metrics(line)
    on_root(run.comm, write)
    if verbose and run.comm.is_root:
        print(f"epoch {epoch}/{o['epochs']}: train loss {line['train_loss']:.4f} acc {line['train_accuracy']:.3f}"
              + (f" | val loss {line['val_loss']:.4f} acc {line['val_accuracy']:.3f}"
                 if line["val_accuracy"] is not None else "")
              + f" | {line['samples_per_s']:.1f} samples/s", file=sys.stderr)
    if on_epoch_end is not None:
        on_root(run.comm, on_epoch_end, epoch, dict(line))
    return line


def train_epochs(run: Run, stop: StopControl, progress: bool, verbose: bool, on_epoch_end=None) -> None:
    """Epochs until ``epochs`` or a stop (the checkpoint then holds where it stopped)."""
    while run.state.epoch < run.opts["epochs"]:
        if not run_epoch(run, stop, progress):
            return
        end_of_epoch(run, progress, verbose, on_epoch_end)
        if stop.due:
            return


# ------------------------------------------------------------------------------- the end

def _resume_hint(run: Run, resume_command: str | None) -> str:
    return resume_command or f"fit(..., out={run.dir.path!r}, resume=True)"


def interrupted_report(run: Run, resume_command: str | None) -> dict:
    cmd = _resume_hint(run, resume_command)
    s = run.state
    if run.comm.is_root:
        print(f"stopped after step {s.step} (epoch {s.epoch + 1}, batch {s.batch}); saved {run.dir.last}\n"
              f"resume with: {cmd}", file=sys.stderr)
    return {"status": "interrupted", "checkpoint": run.dir.last, "step": s.step, "resume": cmd}


def _test(run: Run, test_set, stop: StopControl, progress: bool) -> dict:
    """Accuracy, per class, confusion, energy and firing rates on the test split."""
    from .energy import report as energy_report
    o = run.opts
    result = evaluate(run.model, test_set, batch_size=max(o["batch_size"], 32), progress=progress and run.comm.is_root,
                      desc="test", stop=lambda: stop.requested, comm=run.comm)
    result["class_names"] = [str(n) for n in run.class_names]
    if not run.comm.is_root:                    # rank 0 measures the energy and writes the report
        return {"test": result}
    batches = energy_batches(test_set, run.model.dtype, batch_size=o["batch_size"], count=o["energy_batches"])
    e = energy_report(run.model, batches)
    run.model.clear_cache()
    return {"test": result, "energy": {k: e[k] for k in ("totals", "constants", "samples", "machine_ops", "layers")},
            "firing_rates": e["firing_rates"]}


def final_report(run: Run, stop: StopControl, t_start: float, progress: bool, verbose: bool,
                 resume_command: str | None = None) -> dict:
    """Test the best checkpoint (the last without validation), write and return report.json.
    A Ctrl-C during the test writes the report without it (``status`` "interrupted")."""
    s = run.state
    chosen = run.dir.best if os.path.exists(run.dir.best) else run.dir.last
    run.model.load_state_dict(load_checkpoint(chosen).model_state)
    rep = {"status": "finished", "checkpoint": os.path.basename(chosen), "best_val_accuracy": s.best_val,
           "best_epoch": s.best_epoch}
    test_set = run.splits.get("test") if run.splits.get("test") is not None else run.splits.get("val")
    if test_set is not None:
        stop.stage = "test"
        try:
            rep.update(_test(run, test_set, stop, progress))
        except Interrupted:
            rep.update(status="interrupted", stage="test", test=None, resume=_resume_hint(run, resume_command))
    rep.update(wall_time_s=time.perf_counter() - t_start, config=run.model.config.to_dict(), options=run.opts,
               data=run.data_name, versions=versions(), world_size=run.comm.size)
    on_root(run.comm, atomic_write_text, run.dir.report, _json(rep))
    if run.comm.distributed:                    # every rank returns rank 0's report
        rep = run.comm.bcast(rep)
    if not run.comm.is_root:
        return rep
    if rep["status"] == "interrupted":
        print(f"the final test was stopped; {run.dir.report} written without it. The training is complete; "
              f"to test, run: {rep['resume']}", file=sys.stderr)
    elif verbose and "test" in rep:
        t = rep["energy"]["totals"]
        print(f"test accuracy {rep['test']['accuracy']:.4f} ({rep['checkpoint']}); energy per sample "
              f"{t['snn_mJ']:.4f} mJ (ANN reference {t['ann_mJ']:.4f} mJ); report: {run.dir.report}",
              file=sys.stderr)
    return rep


def _json(obj) -> str:
    import json

    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return json.dumps(obj, indent=1, default=default) + "\n"


# ------------------------------------------------------------------------------- fit



@dataclass
class _Plan:
    """What a call to ``fit`` will train: config, data and options settled."""
    config: Config
    data_name: str
    splits: dict | None             # given by the caller, or None: load data_name
    opts: dict
    source: dict                    # root and cache


def _data_of(dataset) -> tuple[str | None, dict | None]:
    if dataset is None or isinstance(dataset, str):
        return dataset, None
    if isinstance(dataset, dict) and "train" in dataset:
        return getattr(dataset["train"], "name", "custom"), dataset
    raise ValueError("dataset: expected a data-set name or a dict with 'train' (and 'val', 'test')")


def _fresh_plan(config_, dataset, options, data_options, root, cache) -> _Plan:
    if not isinstance(config_, Config):
        raise ValueError(f"config: expected a refsnn.models.Config, got {type(config_).__name__}")
    name, splits = _data_of(dataset)
    if name is None:
        raise ValueError("dataset: expected a data-set name or a dict of splits (None only with resume)")
    opts = check_options({**{k: v for k, v in options.items() if k not in ("data", "config")},
                          "data_options": dict(data_options or {}) if splits is None else {}})
    opts["data"] = name
    return _Plan(config_, name, splits, opts, _source(root, cache))


def _source(root, cache) -> dict:
    return {"root": None if root is None else os.path.abspath(os.fspath(root)),
            "cache": None if cache is None else os.path.abspath(os.fspath(cache))}


def _config_flag(difference: str) -> str:
    name = difference.split(":", 1)[0]
    flag = {"name": "--config", "fusion": "--fusion", "modality": "--modality"}.get(name, f"--set {name}")
    return f"{flag} ({difference})"


def _resumed_plan(ck: Checkpoint, config_, dataset, options, data_options, root, cache) -> _Plan:
    """The checkpoint's config, data and options; the ones given must agree (``epochs`` may grow)."""
    saved = ck.meta.get("options")
    if not isinstance(saved, dict) or not isinstance(ck.meta.get("data"), str):
        raise ValueError(f"{ck.path}: its meta has no 'options' or 'data' (not written by refsnn.train, or edited)")
    given = {k: v for k, v in options.items() if k not in ("data", "config")}
    name, splits = _data_of(dataset)
    if name is not None:
        given["data"] = name
    if data_options is not None:
        given["data_options"] = dict(data_options)
    diffs = [f"{option_flag(k)} (the run has {saved.get(k)!r}, given {v!r})" for k, v in given.items()
             if k in RUN_OPTIONS and k != "epochs" and k in saved and saved[k] != v]
    c = ck.config if config_ is None else config_
    diffs += [_config_flag(d) for d in config_differences(ck.config, c, ignore=("classes",))]
    if diffs:
        raise ValueError(f"{ck.path} was made by another run: " + "; ".join(diffs) + ". To continue it, give "
                         "--resume without these options (they are restored from the checkpoint; only --epochs "
                         "may change, to extend the run); to start another run, use another --out or --force")
    kept = {k: v for k, v in saved.items() if k not in ("data", "config")}
    try:
        opts = check_options({**kept, **{k: v for k, v in given.items() if k != "data"}})
    except ValueError as exc:
        raise ValueError(f"{ck.path}: {exc}") from None
    opts["data"] = ck.meta["data"]
    src = ck.meta.get("source") if isinstance(ck.meta.get("source"), dict) else {}
    source = _source(root if root is not None else src.get("root"), cache if cache is not None else src.get("cache"))
    return _Plan(ck.config, ck.meta["data"], splits, opts, source)


def _run_folder(out, config_, dataset, options) -> RunDir:
    if out is not None:
        return RunDir(out)
    name, _ = _data_of(dataset)
    if not isinstance(config_, Config) or name is None:
        raise ValueError("out: give the run directory (resuming without a config and data set)")
    c = config_
    return RunDir(os.path.join("runs", f"{name}_{c.name}_{c.fusion}_{c.modality}_seed{options.get('seed', 0)}"))


def _check_fresh(rundir: RunDir, force: bool) -> None:
    if os.path.exists(rundir.path) and not os.path.isdir(rundir.path):
        raise ValueError(f"--out {rundir.path}: is a file, not a folder")
    if rundir.holds_run() and not force:
        raise ValueError(f"{rundir.path} already holds a run (last.npz); use --resume to continue it, "
                         f"--out for another folder, or --force to delete it and start over")


def fit(config_: Config | None, dataset, *, out=None, resume: bool = False, progress: bool = True,
        verbose: bool = True, root=None, cache=None, data_options: dict | None = None,
        stop_after_steps: int | None = None, resume_command: str | None = None, force: bool = False,
        on_epoch_end=None, **options) -> dict:
    """Train ``config_`` on ``dataset`` and return the report (also written to out/report.json).

    ``dataset``: a data-set name (``"synthetic"``, ``"ave"``, ...; real ones read the cache,
    prepared from ``root`` when missing; ``data_options`` go to ``load_dataset``, e.g.
    ``{"n_train": 400}``) or a dict ``{"train": Dataset, "val": ..., "test": ...}``.
    ``options``: the keys of ``refsnn.recipes.DEFAULTS`` (but ``data`` and ``config``) plus
    ``seed``, ``threads`` and ``accumulate`` (micro-batches per step, their gradients averaged).
    Under ``mpiexec -n K`` (``refsnn.distributed.world()``) the K ranks train one run
    data-parallel: ``batch_size`` is the global batch, each rank takes its share of every
    batch, rank 0 alone writes files, and every rank returns the report.
    ``out``: the run directory (locked while fit works in it). ``force`` deletes a run already
    there and starts over. ``resume`` continues the run in ``out`` from last.npz: ``config_``,
    ``dataset`` (may be None) and every option default to the checkpoint's; those given must
    agree with it, except ``epochs``, which may grow to extend a finished run (the schedule is
    recomputed for the new total, recorded in metrics.jsonl under ``schedule``).
    ``progress`` shows progress bars, ``verbose`` prints a line per epoch and the result.
    ``on_epoch_end(epoch, metrics)``: called after each finished epoch (1-based epoch, the dict
    appended to metrics.jsonl, whose ``epochs`` is the planned total), after the checkpoint is
    written; an exception it raises stops the run there (the checkpoint is kept).
    ``stop_after_steps`` stops like Ctrl-C after that many steps of this call (for tests).
    Returns the report, with ``"status"``: ``"finished"`` or ``"interrupted"``.
    """
    t_start = time.perf_counter()
    comm = world()
    rundir, ck, plan = _collective(comm, _plan, out, config_, dataset, options, data_options, root, cache,
                                   resume, force)
    # a cold Numba cache: a second process compiles the step's kernels meanwhile (issue 13)
    with Precompiler(plan.config, threads=plan.opts["threads"], batch_size=plan.opts["batch_size"], distributed=comm.distributed):
        warning = _collective(comm, _memory_check, plan, comm)
        if warning and comm.is_root:
            print(warning, file=sys.stderr)
        splits = plan.splits or _collective(comm, lambda: load_splits(
            plan.data_name, image_size=plan.config.image_size, seed=plan.opts["seed"], progress=progress and comm.is_root,
            **plan.source, **plan.opts["data_options"]))
        with _locked_on_root(rundir, comm):
            run = _collective(comm, _start, rundir, ck, force, plan, splits, comm)
            threads = rank_threads(comm, run.opts["threads"])
            if comm.distributed:
                line = thread_summary(comm, threads)
                if verbose and comm.is_root:
                    print(line, file=sys.stderr)
            with limit_threads(threads), StopControl(stop_after_steps, quiet=not comm.is_root) as stop:
                train_epochs(run, stop, progress, verbose, on_epoch_end)
                if run.state.epoch < run.opts["epochs"]:
                    return interrupted_report(run, resume_command)
                return final_report(run, stop, t_start, progress, verbose, resume_command)


def _collective(comm: Communicator, fn, *args):
    """``fn(*args)`` on every rank; an error on any rank stops all of them (in one process the
    error itself is raised)."""
    result, error = None, None
    try:
        result = fn(*args)
    except Exception as exc:            # noqa: BLE001 - every rank learns of it
        error = exc
    comm.agree(error)
    return result


@contextlib.contextmanager
def _locked_on_root(rundir: RunDir, comm: Communicator):
    """The run directory's lock, held by rank 0 (the only writer) for the ``with`` block."""
    with contextlib.ExitStack() as stack:
        error = None
        if comm.is_root:
            try:
                stack.enter_context(rundir.locked())
            except Exception as exc:    # noqa: BLE001 - every rank learns of it
                error = exc
        comm.agree(error)
        yield


def _memory_check(plan: "_Plan", comm: Communicator) -> str | None:
    """``check_step_memory`` of one micro-batch, with the node's memory shared by its ranks."""
    batch = plan.opts["batch_size"]
    micro = batch // (comm.size * plan.opts["accumulate"]) or batch
    available = None
    if comm.local_size > 1:
        from .memory import available_memory
        total = available_memory()
        available = None if total is None else total / comm.local_size
    return check_step_memory(plan.config, micro, eval_batch_size=max(batch, 32), available=available)


def _plan(out, config_, dataset, options, data_options, root, cache, resume, force):
    rundir = _run_folder(out, config_, dataset, options)
    if resume:
        if not rundir.holds_run():
            raise ValueError(f"--resume: nothing to resume in {rundir.path} (no last.npz)")
        ck = load_checkpoint(rundir.last)
        return rundir, ck, _resumed_plan(ck, config_, dataset, options, data_options, root, cache)
    _check_fresh(rundir, force)
    return rundir, None, _fresh_plan(config_, dataset, options, data_options, root, cache)


def _start(rundir, ck, force, plan, splits, comm) -> Run:
    """Under the lock: the run built (and restored) on every rank, the same everywhere."""
    if comm.is_root:
        _begin(rundir, ck, force)
    run = build_run(plan.config, plan.data_name, splits, plan.opts, rundir, plan.source, comm)
    if ck is not None:
        restore(run, ck)
    if comm.distributed:
        mine = (_json({"options": run.opts, "config": run.config.to_dict(), "train": len(splits["train"]),
                       "step": run.state.step}), float(sum(float(np.sum(p.value, dtype=np.float64))
                                                           for p in run.params.values())))
        everyone = comm.allgather(mine)
        if any(x != everyone[0] for x in everyone):
            bad = [r for r, x in enumerate(everyone) if x != everyone[0]]
            raise ValueError(f"ranks {bad} start from other options, data or weights than rank 0 (different "
                             f"command lines, files or refsnn versions on the nodes?); every rank must run the "
                             f"same command on the same files")
    return run


def _begin(rundir: RunDir, ck: Checkpoint | None, force: bool) -> None:
    """Under the lock: the folder is as the plan saw it. A fresh run starts an empty log (a
    run killed before its first checkpoint leaves a line no checkpoint has); ``force`` deletes
    the old run's files."""
    if ck is None:
        _check_fresh(rundir, force)
        if force:
            rundir.clear()
        elif os.path.exists(rundir.metrics):
            os.remove(rundir.metrics)
        return
    st = os.stat(rundir.last)
    if ck.stat is not None and (st.st_mtime_ns, st.st_size) != ck.stat:
        raise ValueError(f"{rundir.last} changed while this run was starting (another run?); start again")

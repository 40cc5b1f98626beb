"""Training: ``python -m refsnn.train`` and the ``fit`` API it is built on.

    python -m refsnn.train                                   # cpu preset, embedded synthetic set
    python -m refsnn.train --data ave --root /data/AVE       # prepares the cache on first use
    python -m refsnn.train --recipe ave --root /data/AVE --threads 2
    python -m refsnn.train --out runs/x --resume             # continue exactly where it stopped

One loop serves every data set and fusion mode. Each epoch shows a progress bar (loss,
accuracy, samples/s), validates (SPEC section 9 says which split), appends a line to
``metrics.jsonl`` and writes ``last.npz`` (and ``best.npz`` on a better validation accuracy)
atomically. At the end the best checkpoint is tested and ``report.json`` written (accuracy,
per-class accuracy, confusion matrix, energy, firing rates, wall time, config, versions).

Exact resume: the batch order and the augmentation draws are pure functions of (seed, epoch,
batch), and the checkpoint holds weights, BatchNorm statistics, optimizer and schedule state,
the epoch's running sums and the RNG states. With the same thread count, an interrupted run
resumed continues bit for bit as if it had not stopped. Ctrl-C finishes the current step,
saves, prints the command that resumes, and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time

import numpy as np

from .atomic import atomic_write_text
from .checkpoint import config_differences, load_checkpoint, parse_overrides, save_checkpoint, versions
from .checks import NonFiniteError
from .functional.loss import cross_entropy_backward, cross_entropy_forward
from .models.configs import FUSION_MODES, PRESETS, Config, config
from .models.snnergy import SNNergy
from .optim import SGD, AdamW, CosineSchedule, clip_grad_norm, default_decay_filter, grad_norm
from .recipes import DEFAULTS, RECIPES, recipe

__all__ = ["fit", "evaluate", "load_splits", "TrainingError", "main"]

# options that must be equal for a resumed run to continue the same run
_RUN_OPTIONS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum",
                "warmup_epochs", "min_lr", "label_smoothing", "grad_clip", "crop", "flip",
                "specaugment", "mixup", "seed", "data", "data_options")


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss is no longer finite)."""


# ------------------------------------------------------------------------------- data

def load_splits(name: str, *, image_size: int, seed: int = 0, root=None, cache=None,
                prepare_if_missing: bool = True, progress: bool = True, **options) -> dict:
    """train / val / test of a data set. For a real data set whose cache is missing and a
    ``root`` given, runs ``refsnn.data.prepare`` first (with its progress bar)."""
    from .data import DATASETS, load_dataset
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {list(DATASETS)}")
    if name != "synthetic" and root is not None and prepare_if_missing:
        try:
            load_dataset(name, "train", root=root, cache=cache, image_size=image_size, seed=seed, **options)
        except ValueError as exc:
            if not os.path.isdir(os.fspath(root)):
                raise ValueError(f"--root {root}: no such folder") from None
            if "prepare" not in str(exc):
                raise
            from .data.prepare import prepare
            print(f"no prepared cache for {name} at this image size; preparing it from {root}", file=sys.stderr)
            rep = prepare(name, root, cache, image_size=image_size, progress=progress, **options)
            print(rep.summary() if hasattr(rep, "summary") else rep, file=sys.stderr)
    return {split: load_dataset(name, split, root=root, cache=cache, image_size=image_size, seed=seed,
                                **options) for split in ("train", "val", "test")}


def _transform(opts: dict):
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


def _as_model_inputs(batch, dtype):
    return batch.audio.astype(dtype, copy=False), batch.frames.astype(dtype, copy=False)


# ------------------------------------------------------------------------------- evaluation

def evaluate(model, dataset, *, batch_size: int = 32, progress: bool = False, desc: str = "eval") -> dict:
    """Loss (no smoothing), accuracy, per-class accuracy and confusion matrix (rows: true
    class, columns: predicted) of ``model`` in eval mode on ``dataset``."""
    from .data import BatchIterator
    K = model.config.classes
    was_training = model.training
    model.eval()
    confusion = np.zeros((K, K), dtype=np.int64)
    loss_sum, n = 0.0, 0
    it = BatchIterator(dataset, min(batch_size, len(dataset)), shuffle=False, drop_last=False)
    try:
        for batch in _progress(it, progress, desc=desc, total=len(it)):
            logits = model.forward(*_as_model_inputs(batch, model.dtype))
            loss, _ = cross_entropy_forward(logits, batch.labels)
            loss_sum += loss * len(batch)
            n += len(batch)
            np.add.at(confusion, (batch.labels, logits.argmax(axis=1)), 1)
    finally:
        it.close()
        model.clear_cache()
        model.train(was_training)
    per_class = [float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None for k in range(K)]
    return {"loss": loss_sum / n, "accuracy": float(np.trace(confusion) / n),
            "per_class_accuracy": per_class, "confusion": confusion.tolist(), "samples": n}


def _progress(iterable, enabled, **kwargs):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)


# ------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _threads(n):
    if not n:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits
    before = numba.get_num_threads()
    numba.set_num_threads(int(n))
    try:
        with threadpool_limits(int(n)):
            yield
    finally:
        numba.set_num_threads(before)


class _StopFlag:
    """Set by SIGINT (or by ``stop_after_steps``): finish the step, save, stop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:                      # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing the current step, then saving (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _options(options: dict) -> dict:
    unknown = sorted(set(options) - set(DEFAULTS) - {"seed", "threads"})
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(set(DEFAULTS) | {'seed', 'threads'})}")
    opts = dict(DEFAULTS)
    opts.update(seed=0, threads=None)
    opts.update(options)
    for key in ("epochs", "batch_size", "eval_every"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], (int, np.integer)) or opts[key] < 1:
            raise ValueError(f"{key}: expected a positive integer, got {opts[key]!r}")
    if opts["optimizer"] not in ("adamw", "sgd"):
        raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {opts['optimizer']!r}")
    for key in ("lr", "weight_decay", "warmup_epochs", "min_lr", "mixup"):
        if not (isinstance(opts[key], (int, float)) and opts[key] >= 0):
            raise ValueError(f"{key}: expected a number >= 0, got {opts[key]!r}")
    if not 0 <= opts["label_smoothing"] < 1:
        raise ValueError(f"label_smoothing: expected a value in [0, 1), got {opts['label_smoothing']}")
    return opts


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_json_atomic(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _default_out(data, c: Config, seed) -> str:
    return os.path.join("runs", f"{data}_{c.name}_{c.fusion}_{c.modality}_seed{seed}")


# ------------------------------------------------------------------------------- fit

def fit(config_: Config, dataset, *, out=None, resume: bool = False, progress: bool = True,
        verbose: bool = True, root=None, cache=None, data_options: dict | None = None,
        stop_after_steps: int | None = None, resume_command: str | None = None, force: bool = False,
        **options) -> dict:
    """Train ``config_`` on ``dataset`` and return the report (also written to out/report.json).

    ``dataset``: a data-set name (``"synthetic"``, ``"ave"``, ...; real ones read the cache,
    prepared from ``root`` when missing; ``data_options`` go to ``load_dataset``, e.g.
    ``{"n_train": 400}``) or a dict ``{"train": Dataset, "val": ..., "test": ...}``.
    ``options``: the keys of ``refsnn.recipes.DEFAULTS`` plus ``seed`` and ``threads``.
    ``progress`` shows progress bars, ``verbose`` prints a line per epoch and the result.
    ``stop_after_steps`` stops like Ctrl-C after that many steps of this call (for tests).
    Returns the report, with ``"status"``: ``"finished"`` or ``"interrupted"``.
    """
    t_start = time.perf_counter()
    opts = _options(options)
    if not isinstance(config_, Config):
        raise ValueError(f"config: expected a refsnn.models.Config, got {type(config_).__name__}")
    if isinstance(dataset, str):
        data_name = dataset
        splits = load_splits(dataset, image_size=config_.image_size, seed=opts["seed"], root=root,
                             cache=cache, progress=progress, **(data_options or {}))
        opts["data_options"] = dict(data_options or {})
    elif isinstance(dataset, dict) and "train" in dataset:
        data_name = getattr(dataset["train"], "name", "custom")
        splits = dataset
    else:
        raise ValueError("dataset: expected a data-set name or a dict with 'train' (and 'val', 'test')")
    opts["data"] = data_name
    train_set, val_set, test_set = splits["train"], splits.get("val"), splits.get("test")
    class_names = list(getattr(train_set, "class_names", range(config_.classes)))
    c = config_.replace(classes=len(class_names))
    if opts["batch_size"] > len(train_set):
        raise ValueError(f"batch_size: {opts['batch_size']} is larger than the training set "
                         f"({len(train_set)} clips)")
    out = os.fspath(out or _default_out(data_name, c, opts["seed"]))
    last_path, best_path = os.path.join(out, "last.npz"), os.path.join(out, "best.npz")
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume and not os.path.exists(last_path):
        raise ValueError(f"--resume: nothing to resume in {out} (no last.npz)")
    if not resume and os.path.exists(last_path) and not force:
        raise ValueError(f"{out} already holds a run (last.npz); use --resume to continue it, "
                         f"--out for another folder, or --force to start over")
    os.makedirs(out, exist_ok=True)

    steps_per_epoch = len(train_set) // opts["batch_size"]
    total_steps = steps_per_epoch * opts["epochs"]
    model = SNNergy(c, seed=opts["seed"])
    params = model.parameters()
    if opts["optimizer"] == "adamw":
        optimizer = AdamW(params, lr=opts["lr"], weight_decay=opts["weight_decay"], decay_filter=default_decay_filter)
    else:
        optimizer = SGD(params, lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"],
                        decay_filter=default_decay_filter)
    schedule = CosineSchedule(optimizer, total_steps=max(1, total_steps),
                              warmup_steps=min(total_steps, int(round(opts["warmup_epochs"] * steps_per_epoch))),
                              min_lr=opts["min_lr"])
    state = dict(epoch=0, batch=0, step=0, sums=[0.0, 0, 0], best_val=-1.0, best_epoch=None,
                 last_finite_loss=None, epoch_time=0.0)
    if resume:
        ck = load_checkpoint(last_path)
        diffs = config_differences(ck.config, c, ignore=())
        saved_opts = ck.meta.get("options", {})
        diffs += [f"{k}: {saved_opts.get(k)!r} != {opts[k]!r}" for k in _RUN_OPTIONS
                  if k in saved_opts and saved_opts.get(k) != opts[k]]
        if diffs:
            raise ValueError(f"{last_path} was made by another run: " + "; ".join(diffs))
        model.load_state_dict(ck.model_state)
        optimizer.load_state_dict(ck.optim_state)
        schedule.load_state_dict(ck.sched_state)
        state.update(ck.meta["state"])
    transform = _transform(opts)
    K = c.classes

    def meta():
        return {"state": state, "options": opts, "class_names": [str(n) for n in class_names],
                "data": data_name, "versions": versions(), "steps_per_epoch": steps_per_epoch,
                "rng": {"batch_order": f"PCG64([seed={opts['seed']}, epoch])",
                        "augmentation": f"PCG64([seed={opts['seed']}, epoch, batch, 1])",
                        "init": f"PCG64({opts['seed']})"}}

    from .data import BatchIterator
    status = "finished"
    steps_this_call = 0
    with _threads(opts["threads"]), _StopFlag() as stop:
        while state["epoch"] < opts["epochs"] and status == "finished":
            epoch = state["epoch"]
            stop_at_epoch_end = False
            it = BatchIterator(train_set, opts["batch_size"], shuffle=True, seed=opts["seed"], epoch=epoch,
                               drop_last=True, start_batch=state["batch"], transform=transform)
            t_epoch = time.perf_counter()
            bar = _progress(it, progress, desc=f"epoch {epoch + 1}/{opts['epochs']}", total=steps_per_epoch,
                            initial=state["batch"], unit="batch")
            model.train()
            try:
                for batch in bar:
                    t0 = time.perf_counter()
                    model.zero_grad()

                    def diverged(what):
                        return TrainingError(
                            f"{what} at step {state['step'] + 1} (epoch {epoch + 1}, batch "
                            f"{state['batch'] + 1}); the last finite loss was {state['last_finite_loss']}. "
                            f"Training stopped; the last good checkpoint is kept"
                            + (f" at {last_path}" if os.path.exists(last_path) else " (none was written yet)")
                            + ". Try a lower --lr or --grad-clip.")

                    try:
                        logits = model.forward(*_as_model_inputs(batch, model.dtype))
                        loss, cache_ = cross_entropy_forward(logits, batch.targets(K, opts["label_smoothing"]))
                        if not math.isfinite(loss):
                            raise diverged(f"the loss became {loss}")
                        model.backward(cross_entropy_backward(cache_))
                    except NonFiniteError as exc:
                        raise diverged(f"non-finite values appeared ({exc})") from None
                    # the backward does not scan its arrays; one norm over the gradients does
                    norm = grad_norm(params)
                    if not math.isfinite(norm):
                        raise diverged(f"the gradient norm became {norm}")
                    if opts["grad_clip"] and norm > opts["grad_clip"]:
                        clip_grad_norm(params, float(opts["grad_clip"]))
                    optimizer.step()
                    schedule.step()
                    state["last_finite_loss"] = loss
                    correct = int((logits.argmax(axis=1) == batch.labels).sum())
                    state["sums"] = [state["sums"][0] + loss * len(batch), state["sums"][1] + correct,
                                     state["sums"][2] + len(batch)]
                    state["batch"] += 1
                    state["step"] += 1
                    steps_this_call += 1
                    if progress:
                        s = state["sums"]
                        bar.set_postfix(loss=f"{s[0] / s[2]:.3f}", acc=f"{s[1] / s[2]:.3f}",
                                        sps=f"{len(batch) / (time.perf_counter() - t0):.1f}", refresh=False)
                    if stop.requested or (stop_after_steps is not None and steps_this_call >= stop_after_steps):
                        if state["batch"] < steps_per_epoch:
                            status = "interrupted"
                            break
                        stop_at_epoch_end = True          # finish this epoch's bookkeeping first
            finally:
                it.close()
                if progress:
                    bar.close()
            state["epoch_time"] += time.perf_counter() - t_epoch
            if status == "interrupted":
                save_checkpoint(last_path, model, optimizer=optimizer, schedule=schedule, meta=meta())
                break
            # the epoch is complete: validate, log, checkpoint
            s = state["sums"]
            line = {"epoch": epoch + 1, "train_loss": s[0] / s[2], "train_accuracy": s[1] / s[2],
                    "val_loss": None, "val_accuracy": None, "lr": optimizer.lr,
                    "epoch_time_s": state["epoch_time"], "samples_per_s": s[2] / max(state["epoch_time"], 1e-9)}
            is_last = epoch + 1 == opts["epochs"]
            if val_set is not None and ((epoch + 1) % opts["eval_every"] == 0 or is_last):
                v = evaluate(model, val_set, batch_size=max(opts["batch_size"], 32), progress=progress,
                             desc="validate")
                line.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
            with open(metrics_path, "a") as f:
                f.write(json.dumps(line, default=_json_default) + "\n")
            if verbose:
                print(f"epoch {epoch + 1}/{opts['epochs']}: train loss {line['train_loss']:.4f} acc "
                      f"{line['train_accuracy']:.3f}" + (f" | val loss {line['val_loss']:.4f} acc "
                      f"{line['val_accuracy']:.3f}" if line["val_accuracy"] is not None else "")
                      + f" | {line['samples_per_s']:.1f} samples/s", file=sys.stderr)
            improved = line["val_accuracy"] is not None and line["val_accuracy"] > state["best_val"]
            if improved:
                state["best_val"], state["best_epoch"] = line["val_accuracy"], epoch + 1
            state.update(epoch=epoch + 1, batch=0, sums=[0.0, 0, 0], epoch_time=0.0)
            save_checkpoint(last_path, model, optimizer=optimizer, schedule=schedule, meta=meta())
            if improved or (val_set is None and is_last):
                save_checkpoint(best_path, model, meta=meta())
            if stop_at_epoch_end and not is_last:
                status = "interrupted"

    if status == "interrupted":
        cmd = resume_command or f"fit(..., out={out!r}, resume=True)"
        print(f"stopped after step {state['step']} (epoch {state['epoch'] + 1}, batch {state['batch']}); "
              f"saved {last_path}\nresume with: {cmd}", file=sys.stderr)
        return {"status": "interrupted", "checkpoint": last_path, "step": state["step"], "resume": cmd}
    return _final_report(model, out, best_path, last_path, test_set, val_set, opts, state, class_names,
                         data_name, progress, verbose, t_start)


def _final_report(model, out, best_path, last_path, test_set, val_set, opts, state, class_names, data_name,
                  progress, verbose, t_start):
    from .data import BatchIterator
    from .energy import report as energy_report
    chosen = best_path if os.path.exists(best_path) else last_path
    model.load_state_dict(load_checkpoint(chosen).model_state)
    rep = {"status": "finished", "checkpoint": os.path.basename(chosen),
           "best_val_accuracy": state["best_val"] if state["best_val"] >= 0 else None,
           "best_epoch": state["best_epoch"]}
    eval_set = test_set if test_set is not None else val_set
    if eval_set is not None:
        rep["test"] = evaluate(model, eval_set, batch_size=max(opts["batch_size"], 32), progress=progress,
                               desc="test")
        rep["test"]["class_names"] = [str(n) for n in class_names]
        it = BatchIterator(eval_set, min(opts["batch_size"], len(eval_set)), shuffle=False)
        batches = []
        for b in it:
            batches.append(_as_model_inputs(b, model.dtype))
            if len(batches) >= opts["energy_batches"]:
                break
        it.close()
        e = energy_report(model, batches)
        rep["energy"] = {"totals": e["totals"], "constants": e["constants"], "samples": e["samples"],
                         "machine_ops": e["machine_ops"], "layers": e["layers"]}
        rep["firing_rates"] = e["firing_rates"]
        model.clear_cache()
    rep.update(wall_time_s=time.perf_counter() - t_start, config=model.config.to_dict(), options=opts,
               data=data_name, versions=versions())
    _write_json_atomic(os.path.join(out, "report.json"), rep)
    if verbose and "test" in rep:
        t = rep["energy"]["totals"]
        print(f"test accuracy {rep['test']['accuracy']:.4f} ({rep['checkpoint']}); energy per sample "
              f"{t['snn_mJ']:.4f} mJ (ANN reference {t['ann_mJ']:.4f} mJ); report: "
              f"{os.path.join(out, 'report.json')}", file=sys.stderr)
    return rep


# ------------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m refsnn.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(RECIPES), help="named preset of the options below "
                    "(explicit options override it; see refsnn/recipes.py)")
    ap.add_argument("--data", help="synthetic (default), ave, cremad, urbansound8k-av")
    ap.add_argument("--root", help="the data set's folder (real data sets)")
    ap.add_argument("--cache", help="where prepared clips are cached (default ~/.cache/refsnn)")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the data set, e.g. n_train=400 (synthetic) or num_frames=8 (repeatable)")
    ap.add_argument("--config", choices=sorted(PRESETS), help="model preset (default cpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config field, e.g. --set cmqka_mask=channel (repeatable)")
    ap.add_argument("--fusion", help=f"fusion mode: {', '.join(FUSION_MODES)}")
    ap.add_argument("--modality", choices=["av", "audio", "visual"])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--optimizer", choices=["adamw", "sgd"])
    ap.add_argument("--lr", type=float)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--warmup", type=float, dest="warmup_epochs", help="warm-up epochs (fractions allowed)")
    ap.add_argument("--min-lr", type=float)
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    ap.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                    help="random-resized-crop of the frames")
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                    help="horizontal flip of the frames")
    ap.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=None,
                    help="SpecAugment time and frequency masks on the spectrogram")
    ap.add_argument("--mixup", type=float, help="mixup Beta(alpha, alpha); 0 turns it off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="run directory (default runs/<data>_<config>_<fusion>_<modality>_seed<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from last.npz")
    ap.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    ap.add_argument("--eval-every", type=int, help="validate every N epochs (and after the last)")
    ap.add_argument("--energy-batches", type=int, help="test batches measured for the energy report")
    ap.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _data_options(items) -> dict:
    """``--data-option KEY=VALUE`` -> dict with numbers parsed (``n_train=400`` -> 400)."""
    out = {}
    for key, value in parse_overrides(items).items():
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        opts = recipe(args.recipe) if args.recipe else dict(DEFAULTS)
        explicit = {k: getattr(args, k) for k in ("data", "config", "epochs", "batch_size", "optimizer", "lr",
                                                   "weight_decay", "warmup_epochs", "min_lr", "label_smoothing",
                                                   "grad_clip", "crop", "flip", "specaugment", "mixup",
                                                   "eval_every", "energy_batches")
                    if getattr(args, k) is not None}
        opts.update(explicit)
        from .data import DATASETS
        if opts["data"] not in DATASETS:
            raise ValueError(f"unknown data set {opts['data']!r}; available: {', '.join(DATASETS)}")
        overrides = parse_overrides(args.set)
        if args.fusion is not None:
            if args.fusion not in FUSION_MODES:
                raise ValueError(f"unknown fusion mode {args.fusion!r}; available: {', '.join(FUSION_MODES)}")
            overrides["fusion"] = args.fusion
        if args.modality is not None:
            overrides["modality"] = args.modality
        cfg = config(opts.pop("config"), **overrides)
        data = opts.pop("data")
        resume_argv = [a for a in argv if a not in ("--resume", "--force")]
        out = args.out or _default_out(data, cfg, args.seed)
        if "--out" not in resume_argv:
            resume_argv += ["--out", out]
        resume_cmd = "python -m refsnn.train " + " ".join(shlex.quote(a) for a in resume_argv) + " --resume"
        rep = fit(cfg, data, out=out, resume=args.resume, force=args.force, progress=not args.no_progress,
                  root=args.root, cache=args.cache, data_options=_data_options(args.data_option),
                  seed=args.seed, threads=args.threads, resume_command=resume_cmd, **opts)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rep["status"] == "finished" and "test" in rep:
        print(json.dumps({"test_accuracy": rep["test"]["accuracy"], "run": out,
                          "energy_mJ_per_sample": rep["energy"]["totals"]["snn_mJ"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

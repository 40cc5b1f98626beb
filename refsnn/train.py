"""Training: ``python -m refsnn.train`` (the command line over ``refsnn.training.fit``).

    python -m refsnn.train                                   # cpu preset, embedded synthetic set
    python -m refsnn.train --data ave --root /data/AVE       # prepares the cache on first use
    python -m refsnn.train --recipe ave --root /data/AVE --threads 2
    python -m refsnn.train --out runs/x --resume             # continue exactly where it stopped
    python -m refsnn.train --out runs/x --resume --epochs 8  # extend a finished run to 8 epochs

One loop serves every data set and fusion mode. Each epoch shows a progress bar (loss,
accuracy, samples/s), validates (SPEC section 9 says which split), writes ``last.npz`` (and
``best.npz`` on a better validation accuracy) atomically and appends a line to
``metrics.jsonl``. At the end the best checkpoint is tested and ``report.json`` written
(accuracy, per-class accuracy, confusion matrix, energy, firing rates, wall time, config,
versions). The run directory is locked while a run works in it.

Data-parallel on K processes or machines: ``mpiexec -n K python -m refsnn.train ...`` (or
``srun``); ``--batch-size`` stays the global batch, ``--accumulate M`` splits each rank's share
into M micro-batches (README: "Training on a cluster").

``--resume`` restores every option from the checkpoint; options given with it must agree, except
``--epochs``, which may grow (the cosine schedule is then recomputed for the new total). With
the same thread count, a run stopped and resumed continues bit for bit. Ctrl-C finishes the
current step, saves, prints the command that resumes, and exits 0; during the final test it
stops the test and writes report.json without it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from .checkpoint import load_checkpoint, parse_overrides
from .data import dataset_names
from .evaluation import evaluate, load_splits, parse_data_options
from .checks import check_choice
from .fusion.registry import fusion_modes
from .models.configs import CHOICES, PRESETS, config
from .optim import OPTIMIZERS
from .recipes import DEFAULTS, RECIPES, recipe
from .rundir import RunDir
from .training import TrainingError, fit

__all__ = ["fit", "evaluate", "load_splits", "TrainingError", "main"]

# the training options of the command line (dest names = fit's option names)
_OPTION_ARGS = ("data", "config", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "warmup_epochs",
                "min_lr", "label_smoothing", "grad_clip", "crop", "flip", "specaugment", "mixup", "eval_every",
                "energy_batches", "seed", "threads", "accumulate")


# ------------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m refsnn.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(RECIPES), help="named preset of the options below "
                    "(explicit options override it; see refsnn/recipes.py)")
    ap.add_argument("--data", help=f"data set: {', '.join(dataset_names())} (default {DEFAULTS['data']})")
    ap.add_argument("--root", help="the data set's folder (real data sets)")
    ap.add_argument("--cache", help="where prepared clips are cached (default ~/.cache/refsnn)")
    ap.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the data set, e.g. n_train=400 (synthetic) or num_frames=8 (repeatable)")
    ap.add_argument("--config", choices=sorted(PRESETS), help=f"model preset (default {DEFAULTS['config']})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config field, e.g. --set cmqka_mask=channel (repeatable)")
    ap.add_argument("--fusion", help=f"fusion mode: {', '.join(fusion_modes())}")
    ap.add_argument("--modality", choices=CHOICES["modality"])
    ap.add_argument("--epochs", type=int, help="epochs in all; with --resume, more than the run had extends it")
    ap.add_argument("--batch-size", type=int, help="clips per optimizer step, over all ranks (the global batch)")
    ap.add_argument("--accumulate", type=int, metavar="M",
                    help="split each rank's share of a batch into M micro-batches and average their gradients "
                         "(less memory; BatchNorm statistics per micro-batch; default 1)")
    ap.add_argument("--optimizer", choices=OPTIMIZERS)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--warmup", type=float, dest="warmup_epochs", help="warm-up epochs (fractions allowed)")
    ap.add_argument("--min-lr", type=float, help="the learning rate at the end of the cosine (at most --lr)")
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    ap.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                    help="random-resized-crop of the frames")
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                    help="horizontal flip of the frames")
    ap.add_argument("--specaugment", action=argparse.BooleanOptionalAction, default=None,
                    help="SpecAugment time and frequency masks on the spectrogram")
    ap.add_argument("--mixup", type=float, help="mixup Beta(alpha, alpha); 0 turns it off")
    ap.add_argument("--seed", type=int, help="seed of the initialisation, batch order and augmentation (default 0)")
    ap.add_argument("--out", help="run directory (default runs/<data>_<config>_<fusion>_<modality>_seed<seed>)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from last.npz, with the options it was started with")
    ap.add_argument("--force", action="store_true",
                    help="delete the run in --out (checkpoints, metrics, report, plots) and start over")
    ap.add_argument("--eval-every", type=int, help="validate every N epochs (and after the last)")
    ap.add_argument("--energy-batches", type=int, help="test batches measured for the energy report")
    ap.add_argument("--threads", type=int, help="threads for Numba and BLAS (default: all cores; under MPI the "
                    "cores divided by the ranks on the node)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _model_config(preset, overrides: dict, resume_from: RunDir | None):
    """The Config the options name. Resuming, None when none is named (fit takes the
    checkpoint's), and ``--set`` alone changes the checkpoint's config."""
    try:
        if preset is not None or resume_from is None:
            return config(preset or DEFAULTS["config"], **overrides)
        if not overrides:
            return None
        base = load_checkpoint(resume_from.last).config if resume_from.holds_run() else config(DEFAULTS["config"])
        return base.replace(**overrides)
    except ValueError as exc:
        raise ValueError(f"--set: {exc}" if overrides else str(exc)) from None


def _default_out(data, cfg, seed) -> str:
    cfg = cfg or config(DEFAULTS["config"])
    return os.path.join("runs", f"{data or DEFAULTS['data']}_{cfg.name}_{cfg.fusion}_{cfg.modality}_seed{seed or 0}")


def _train(args) -> tuple[dict, str]:
    given = {k: getattr(args, k) for k in _OPTION_ARGS if getattr(args, k) is not None}
    opts = {**(recipe(args.recipe) if args.recipe else ({} if args.resume else DEFAULTS)), **given}
    overrides = parse_overrides(args.set)
    if args.fusion is not None:
        overrides["fusion"] = check_choice("--fusion", args.fusion, fusion_modes())
    if args.modality is not None:
        overrides["modality"] = args.modality
    data, preset = opts.pop("data", None), opts.pop("config", None)
    out = args.out
    if out is None:
        out = _default_out(data, config(preset or DEFAULTS["config"], **overrides), opts.get("seed"))
    cfg = _model_config(preset, overrides, RunDir(out) if args.resume else None)
    data_options = parse_data_options(args.data_option) if args.data_option or not args.resume else None
    from .distributed import world
    size = world().size
    launcher = f"mpiexec -n {size} " if size > 1 else ""
    resume_cmd = f"{launcher}python -m refsnn.train --out {shlex.quote(out)} --resume"
    rep = fit(cfg, data, out=out, resume=args.resume, force=args.force, progress=not args.no_progress,
              root=args.root, cache=args.cache, data_options=data_options, resume_command=resume_cmd, **opts)
    return rep, out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.resume and args.force:
        print("error: --resume and --force: continue the run, or delete it and start over, not both",
              file=sys.stderr)
        return 2
    try:
        rep, out = _train(args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .distributed import world
    if rep["status"] == "finished" and "test" in rep and world().is_root:
        print(json.dumps({"test_accuracy": rep["test"]["accuracy"], "run": out,
                          "energy_mJ_per_sample": rep["energy"]["totals"]["snn_mJ"]}))
    return 0


if __name__ == "__main__":
    from .distributed import run_main
    sys.exit(run_main(main))

"""The ``picnn-ext`` command: ``train``, ``report``, ``compare`` and ``digits-demo``.

    picnn-ext train --method picnn --dataset digits --epochs 30
    picnn-ext train --resume runs/picnn-digits-seed0
    torchrun --nproc-per-node 2 -m picnn_ext.cli train --method picnn --dataset shapes
    picnn-ext report runs/picnn-digits-seed0
    picnn-ext compare runs/std-digits-seed0 runs/picnn-digits-seed0
    picnn-ext digits-demo
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

from .data import DATASET_SPEC_HELP, load_dataset
from .report import compare_table, seed_table, write_report
from .train import NonFiniteLossError, TrainConfig, load_config, load_summary, train
from .train.checkpoint import atomic_write_text
from .train.methods import METHOD_NAMES

# Errors that bad input causes (a wrong option, a missing or foreign file, a diverging run): the command
# prints their message alone. Any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError, NonFiniteLossError)

# The digits demo's budget: 6 runs of about 10 s each on an idle 2-core CPU. theta moves by about lr per
# Adam step, and it must move by several units for P to leave its near-uniform start and make the filters
# class-specific: batches of 16 give 68 steps per epoch, 2,720 in 40 epochs, where batches of 64 would give
# a quarter of that and an interpretation pathway (ACC2) still close to chance.
DEMO_EPOCHS = 40
DEMO_SEEDS = 3
DEMO_BATCH_SIZE = 16
DEMO_WIDTH = 16
DEMO_NUM_FILTERS = 32


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig options. Their parser default is SUPPRESS, so that the namespace holds only what
    was typed: with --resume, those are checked against the run, and the rest come from the run."""
    defaults = TrainConfig()

    def option(flag: str, field: str, help_text: str, **kwargs) -> None:
        default = getattr(defaults, field)
        if default is not None:
            help_text = f"{help_text} (default: {default})"
        parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=help_text, **kwargs)

    option("--method", "method", "std (CE on the discrimination pathway), picnn (plus the PICNN loss) or nnd "
           "(every conv layer gated per input)", choices=list(METHOD_NAMES))
    option("--dataset", "dataset", f"data set: {DATASET_SPEC_HELP}", metavar="SPEC")
    option("--epochs", "epochs", "training epochs", type=int)
    option("--batch-size", "batch_size", "batch size per process", type=int)
    option("--lr", "lr", "Adam learning rate", type=float)
    option("--weight-decay", "weight_decay", "Adam weight decay", type=float)
    option("--schedule", "schedule", "learning-rate schedule", choices=["cosine", "none"])
    option("--seed", "seed", "seed of the weights, the data order and the sampled masks", type=int)
    option("--width", "width", "channels of the backbone's first stage", type=int)
    option("--stages", "stages", "stages of the backbone (default: from the image size)", type=int)
    option("--num-filters", "num_filters", "K, filters of the interpreted layer", type=int)
    option("--lam", "lam", "lambda, weight of the interpretation loss (picnn)", type=float)
    option("--lambda-s", "lambda_s", "NND: weight of the gates' sparsity", type=float)
    option("--tau", "tau", "NND: the sparsity's target share of open gates per layer", type=float)
    option("--lambda-m", "lambda_m", "NND: weight of the gates' information about the label", type=float)
    option("--lambda-k", "lambda_k", "NND: weight of the alignment of gates and responses", type=float)
    option("--out-dir", "out_dir", "folder of the run folders", metavar="DIR")
    option("--run-name", "run_name", "the run's folder name (default: METHOD-DATASET-seedSEED)")
    option("--device", "device", "auto, cpu, cuda or cuda:N")
    option("--workers", "workers", "data-loading worker processes", type=int)
    parser.add_argument("--quiet", dest="quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar and no per-epoch lines")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint; options given must match it")
    parser.add_argument("--stop-after-epoch", type=int, metavar="N",
                        help="stop after epoch N, leaving a checkpoint to --resume from (for time-limited jobs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picnn-ext", description="Train and inspect CNNs with class-specific filters (PICNN)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train_parser = commands.add_parser("train", help="train one STD or PICNN run",
                                       description="Train one run; it is written to OUT_DIR/RUN_NAME.")
    _add_train_options(train_parser)

    report_parser = commands.add_parser("report", help="figures and report.md of a finished run")
    report_parser.add_argument("run_dir", metavar="RUN_DIR")
    report_parser.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/report)")
    report_parser.add_argument("--num-images", type=int, default=8,
                               help="test images in the activation-map figure (default: 8)")

    compare_parser = commands.add_parser("compare", help="side-by-side test metrics of finished runs")
    compare_parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")

    demo_parser = commands.add_parser(
        "digits-demo", help="STD vs PICNN on the digits, several seeds, on the CPU in a few minutes",
        description="Train STD and PICNN on scikit-learn's digits with the same backbone, budget and seeds, "
                    "and print the mean ± std over seeds of ACC1, ACC2, ACC3 and MIS.",
    )
    demo_parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"(default: {DEMO_EPOCHS})")
    demo_parser.add_argument("--seeds", type=int, default=DEMO_SEEDS,
                             help=f"number of seeds, 0 to N-1 (default: {DEMO_SEEDS})")
    demo_parser.add_argument("--out-dir", metavar="DIR",
                             help="folder of the demo's runs and results.md (default: runs/digits-demo-TIME)")
    demo_parser.add_argument("--device", default="cpu", help="(default: cpu)")
    demo_parser.add_argument("--quiet", action="store_true", help="print only the final table")
    return parser


# --------------------------------------------------------------------------------------------------------
# The commands


def _train_command(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
             if hasattr(args, field.name)}
    if args.resume:
        run_dir = os.path.normpath(args.resume)
        stored = load_config(run_dir)
        # The run is where it is: its folder decides out_dir and run_name, whatever the stored ones say.
        given.update(out_dir=os.path.dirname(run_dir) or ".", run_name=os.path.basename(run_dir))
        config = dataclasses.replace(stored, **given)
    else:
        config = TrainConfig(**given)
    run_dir = train(config, resume=bool(args.resume), stop_after_epoch=args.stop_after_epoch)
    # Under torchrun every rank runs this; rank 0 alone answers.
    if not config.quiet and os.environ.get("RANK", "0") == "0":
        print(run_dir)
    return 0


def _report_command(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    print(write_report(args.run_dir, args.out, num_images=args.num_images))
    return 0


def _compare_command(args: argparse.Namespace) -> int:
    print(compare_table(args.run_dirs))
    return 0


def _digits_demo_command(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be at least 1, got --seeds {args.seeds} --epochs {args.epochs}")
    out_dir = args.out_dir or os.path.join("runs", time.strftime("digits-demo-%Y%m%d-%H%M%S"))
    splits = load_dataset("digits")  # Once, for all the runs.
    summaries = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        for method in ("std", "picnn"):
            config = TrainConfig(
                method=method, dataset="digits", epochs=args.epochs, batch_size=DEMO_BATCH_SIZE,
                width=DEMO_WIDTH, num_filters=DEMO_NUM_FILTERS, seed=seed, out_dir=out_dir,
                device=args.device, quiet=True,
            )
            summary = load_summary(train(config, splits=splits))
            summaries.append(summary)
            if not args.quiet:
                test = summary["test"]
                print(f"{method:>5} seed {seed}: acc1 {test['acc1']:.4f} acc2 {test['acc2']:.4f} "
                      f"acc3 {test['acc3']:.4f} mis {test['mis']:.4f} ({summary['train_time_s']:.1f} s)",
                      file=sys.stderr, flush=True)
    wall_time = time.perf_counter() - start
    table = seed_table(summaries)
    header = (f"STD vs PICNN on digits: {args.seeds} seed(s), {args.epochs} epochs, batch {DEMO_BATCH_SIZE}, "
              f"backbone width {DEMO_WIDTH}, K = {DEMO_NUM_FILTERS}; test split, mean ± std over seeds; "
              f"{wall_time:.0f} s in all")
    atomic_write_text(f"# digits demo\n\n{header}\n\n{table}\n", os.path.join(out_dir, "results.md"))
    print(header)
    print(table)
    print(f"runs and results.md in {out_dir}")
    return 0


COMMANDS = {
    "train": _train_command,
    "report": _report_command,
    "compare": _compare_command,
    "digits-demo": _digits_demo_command,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as error:
        print(f"picnn-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"picnn-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``picnn-ext`` command: ``train``, ``report``, ``compare``, ``car``, ``digits-demo``, ``compare-methods``,
``localize`` and ``detect``.

    picnn-ext train --method picnn --dataset digits --epochs 30
    picnn-ext train --resume runs/picnn-digits-seed0
    torchrun --nproc-per-node 2 -m picnn_ext.cli train --method picnn --dataset shapes
    picnn-ext report runs/picnn-digits-seed0
    picnn-ext compare runs/std-digits-seed0 runs/picnn-digits-seed0
    picnn-ext car runs/picnn-digits-seed0 --keep 16
    picnn-ext digits-demo
    picnn-ext compare-methods --datasets digits shapes --methods std picnn csg --seeds 3
    picnn-ext localize runs/picnn-shapes-seed0
    picnn-ext detect runs/picnn-shapes-seed0 --epsilon 8/255 --pgd-steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

from .applications import DEFAULT_EPSILON, DEFAULT_PGD_STEPS, KEEP_FRACTION
from .data import DATASET_SPEC_HELP
from .report import compare_table, write_report
from .report.applications import ApplicationMetrics, write_detection, write_localisation
from .report.car_report import car_agreement
from .report.comparison import BUDGETS, run_comparison
from .run_folder import DamagedRunError, Run
from .train import NonFiniteLossError, TrainConfig, train
from .train.methods import METHOD_HELP, METHOD_NAMES

# Errors that bad input causes (a wrong option, a missing or foreign file, a diverging run): the command
# prints their message alone. Any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError, NonFiniteLossError)

# A run folder with a missing or damaged file (picnn_ext.run_folder.DamagedRunError).
DAMAGED_RUN_STATUS = 2

# The digits demo: STD and PICNN on digits with the comparison's digits budget (report/comparison.py).
DEMO_EPOCHS = BUDGETS["digits"].epochs
DEMO_SEEDS = 3


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig options. Their parser default is SUPPRESS, so that the namespace holds only what
    was typed: with --resume, those are checked against the run, and the rest come from the run."""
    defaults = TrainConfig()

    def option(flag: str, field: str, help_text: str, **kwargs) -> None:
        default = getattr(defaults, field)
        if default is not None:
            help_text = f"{help_text} (default: {default})"
        parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=help_text, **kwargs)

    def flag(name: str, field: str, help_text: str) -> None:
        parser.add_argument(name, dest=field, action="store_true", default=argparse.SUPPRESS, help=help_text)

    option("--method", "method", f"training method: {METHOD_HELP}", choices=list(METHOD_NAMES))
    option("--dataset", "dataset", f"data set: {DATASET_SPEC_HELP}", metavar="SPEC")
    option("--epochs", "epochs", "training epochs", type=int)
    option("--batch-size", "batch_size", "batch size per process", type=int)
    option("--lr", "lr", "Adam learning rate", type=float)
    option("--weight-decay", "weight_decay", "Adam weight decay", type=float)
    option("--schedule", "schedule", "learning-rate schedule", choices=["cosine", "none"])
    option("--seed", "seed", "seed of the weights, the data order and the sampled masks", type=int)
    option("--model", "backbone", "the network: small_cnn, a torchvision classifier (resnet18, "
           "torchvision:vit_b_16, ...) or a timm model (timm:convnext_atto, ...), random weights", metavar="NAME")
    option("--weights", "weights", "a local state-dict file of the torchvision/timm model to start from "
           "(nothing is downloaded; its classifier is not used)", metavar="PATH")
    option("--image-size", "image_size", "resize the images to N x N pixels (default: the data's size)",
           type=int, metavar="N")
    flag("--augment", "augment", "random crop (padding N/8), horizontal flip and colour jitter of the "
         "training images")
    option("--amp", "amp", "bf16: run the forward (network, ops, head) under autocast in bfloat16",
           choices=["none", "bf16"])
    flag("--channels-last", "channels_last", "the model and the batches in the channels_last memory format")
    option("--width", "width", "channels of the small_cnn's first stage", type=int)
    option("--stages", "stages", "stages of the small_cnn (default: from the image size)", type=int)
    option("--num-filters", "num_filters", "K, filters of the interpreted layer", type=int)
    option("--interpreted-activation", "interpreted_activation",
           "what follows the interpreted 3x3 conv: none (the authors' layer) or relu", choices=["none", "relu"])
    option("--lam", "lam", "lambda, weight of the interpretation loss (picnn)", type=float)
    option("--csg-warmup", "csg_warmup", "csg: STD epochs before the first CSG epoch", type=int, metavar="N")
    option("--csg-period", "csg_period", "csg: after the warm-up, every N-th epoch is a CSG epoch", type=int,
           metavar="N")
    option("--csg-init", "csg_init", "csg: initial value of every gate of G", type=float)
    option("--csg-density", "csg_density", "csg: L1 budget of G as a share of C*K", type=float)
    option("--csg-lam-reg", "csg_lam_reg", "csg: weight of the L1 hinge on G", type=float)
    option("--gate-lr", "gate_lr", "csg: learning rate of G", type=float)
    option("--lambda-s", "lambda_s", "NND: weight of the gates' sparsity", type=float)
    option("--tau", "tau", "NND: the sparsity's target share of open gates per layer", type=float)
    option("--lambda-m", "lambda_m", "NND: weight of the gates' information about the label", type=float)
    option("--lambda-k", "lambda_k", "NND: weight of the alignment of gates and responses", type=float)
    option("--nnd-warmup", "nnd_warmup", "NND: first epochs with the sparsity term off", type=int, metavar="N")
    option("--nnd-ramp", "nnd_ramp", "NND: after the warm-up, epochs over which lambda_s rises linearly to its "
           "value", type=int, metavar="N")
    option("--nnd-finetune", "nnd_finetune", "NND: last epochs trained with the inference gates (z > 0) fixed",
           type=int, metavar="N")
    option("--nnd-controller-lr", "nnd_controller_lr", "NND: learning rate of the controllers (default: --lr)",
           type=float)
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


def _pixel_value(text: str) -> float:
    """A number, or a fraction such as 8/255 (epsilons are quoted in grey levels)."""
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 8/255, got {text!r}") from None


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """RUN_DIR and the options of the commands that measure a finished run on its test split."""
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR)")
    parser.add_argument("--max-images", type=int, help="only the first N test images")
    parser.add_argument("--device", default="cpu", help="(default: cpu)")


def _add_attack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epsilon", type=_pixel_value, default=DEFAULT_EPSILON,
                        help="L-infinity radius in raw pixel units of [0, 1] images, a number or a fraction "
                             "(default: 8/255)")
    parser.add_argument("--pgd-steps", type=int, default=DEFAULT_PGD_STEPS,
                        help=f"PGD steps (default: {DEFAULT_PGD_STEPS})")
    parser.add_argument("--pgd-step-size", type=_pixel_value,
                        help="PGD step size (default: 2.5 * epsilon / steps)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picnn-ext", description="Train and inspect CNNs with class-specific filters (PICNN)."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"picnn-ext {__version__}")
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

    car_parser = commands.add_parser(
        "car", help="CAR filter importance and greedy CAR pruning of a finished run",
        description="Class-wise CAR (accuracy lost without each filter) on the validation and test splits, and "
                    "greedy pruning of the lowest-CAR filters decided on the validation split; writes car.json, "
                    "car_curve.png and class_car.png.")
    car_parser.add_argument("run_dir", metavar="RUN_DIR")
    car_parser.add_argument("--layer", metavar="NAME",
                            help="module name of the layer (default: the interpreted layer, in closed form)")
    stop = car_parser.add_mutually_exclusive_group()
    stop.add_argument("--keep", type=int, metavar="N", help="prune down to N filters (default: 1, the whole curve)")
    stop.add_argument("--min-accuracy", type=float, metavar="A",
                      help="prune while the validation accuracy stays at least A")
    car_parser.add_argument("--per-round", type=int, default=1, metavar="N",
                            help="filters removed per round before CAR is recomputed (default: 1)")
    car_parser.add_argument("--out", metavar="DIR", help="where to write (default: RUN_DIR/car)")

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

    methods_parser = commands.add_parser(
        "compare-methods", help="every method on the built-in data sets, several seeds, one table",
        description="Train each method on each data set with the same backbone, budget and seeds (the budgets "
                    "of picnn_ext.report.comparison.BUDGETS) and write a table of the mean ± std over seeds.",
    )
    methods_parser.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS),
                                help=f"(default: {' '.join(BUDGETS)})")
    methods_parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES),
                                help=f"(default: {' '.join(METHOD_NAMES)})")
    methods_parser.add_argument("--seeds", type=int, default=DEMO_SEEDS, help=f"(default: {DEMO_SEEDS})")
    methods_parser.add_argument("--epochs", type=int, help="override every data set's epochs (a quick look)")
    methods_parser.add_argument("--out-dir", metavar="DIR", help="(default: runs/compare-methods-TIME)")
    methods_parser.add_argument("--device", default="cpu", help="(default: cpu)")
    methods_parser.add_argument("--quiet", action="store_true", help="print only the final tables")
    methods_parser.add_argument("--no-applications", dest="applications", action="store_false",
                                help="skip the localisation and adversarial-detection columns")
    _add_attack_options(methods_parser)

    localize_parser = commands.add_parser(
        "localize", help="object localisation from the predicted class's filters (data sets with masks)",
        description="For each test image and its predicted class: the activation map of the class's filters, "
                    "the gradient map of their mean activation and Grad-CAM, top pixels kept, IoU with the "
                    "object mask. Writes localisation.json and localisation.png.",
    )
    _add_run_options(localize_parser)
    localize_parser.add_argument("--keep", type=float, default=KEEP_FRACTION,
                                 help=f"share of each map's pixels kept (default: {KEEP_FRACTION})")
    localize_parser.add_argument("--num-examples", type=int, default=8, help="images in the figure (default: 8)")

    detect_parser = commands.add_parser(
        "detect", help="FGSM and PGD against a run and the AUROC of the filter-agreement detector",
        description="Attack the test split (FGSM, PGD) and score how well the agreement of the active filters "
                    "with the predicted class separates clean from adversarial images. Writes detection.json "
                    "and detection.png.",
    )
    _add_run_options(detect_parser)
    _add_attack_options(detect_parser)

    atlas_parser = commands.add_parser(
        "atlas", help="filter atlas: each class's filters and their top images, in an offline HTML page",
        description="For every class, the filters assigned to it and each filter's top-k images of a split by "
                    "pooled response with its map over them; writes atlas/index.html, its images and atlas.json.")
    atlas_parser.add_argument("run_dir", metavar="RUN_DIR")
    atlas_parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default: test)")
    atlas_parser.add_argument("--top", type=int, default=8, help="images per filter (default: 8)")
    atlas_parser.add_argument("--out-dir", metavar="DIR", help="where to write (default: RUN_DIR/atlas)")
    return parser


# --------------------------------------------------------------------------------------------------------
# The commands


def _train_command(args: argparse.Namespace) -> int:
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)
             if hasattr(args, field.name)}
    if args.resume:
        run_dir = os.path.normpath(args.resume)
        stored = Run(run_dir).config()
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


def _car_command(args: argparse.Namespace) -> int:
    from .report.car_report import write_car_report  # matplotlib, only for this command

    print(write_car_report(args.run_dir, args.out, layer=args.layer, keep=args.keep,
                           min_accuracy=args.min_accuracy, per_round=args.per_round))
    return 0


def _digits_demo_command(args: argparse.Namespace) -> int:
    if args.seeds < 1 or args.epochs < 1:
        raise ValueError(f"--seeds and --epochs must be at least 1, got --seeds {args.seeds} --epochs {args.epochs}")
    out_dir = args.out_dir or os.path.join("runs", time.strftime("digits-demo-%Y%m%d-%H%M%S"))
    text = run_comparison(out_dir, datasets=["digits"], methods=["std", "picnn"], seeds=args.seeds,
                          epochs=args.epochs, device=args.device, quiet=args.quiet, title="digits demo: STD vs PICNN")
    print(text)
    print(f"runs and results.md in {out_dir}")
    return 0


def _compare_methods_command(args: argparse.Namespace) -> int:
    # Class-wise CAR against each run's P or G (issue 8's agreement column), then the applications.
    from .report.atlas import atlas_purity  # matplotlib and pillow, as the applications need

    # ... and the filter atlas's mean top-k purity (issue 22).
    extra_metrics = [car_agreement, atlas_purity]
    if args.applications:
        # Checks the attack options before any training starts.
        extra_metrics.append(ApplicationMetrics(epsilon=args.epsilon, steps=args.pgd_steps,
                                                step_size=args.pgd_step_size, device=args.device))
    out_dir = args.out_dir or os.path.join("runs", time.strftime("compare-methods-%Y%m%d-%H%M%S"))
    text = run_comparison(out_dir, datasets=args.datasets, methods=args.methods, seeds=args.seeds,
                          epochs=args.epochs, device=args.device, quiet=args.quiet, extra_metrics=extra_metrics)
    print(text)
    print(f"runs and results.md in {out_dir}")
    return 0


def _localize_command(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    print(write_localisation(args.run_dir, args.out, keep=args.keep, num_examples=args.num_examples,
                             limit=args.max_images, device=args.device))
    return 0


def _detect_command(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {args.max_images}")
    print(write_detection(args.run_dir, args.out, epsilon=args.epsilon, steps=args.pgd_steps,
                          step_size=args.pgd_step_size, limit=args.max_images, device=args.device))
    return 0


def _atlas_command(args: argparse.Namespace) -> int:
    from .report.atlas import write_atlas  # matplotlib and pillow, only for this command

    path, figures = write_atlas(args.run_dir, args.out_dir, split=args.split, top=args.top)
    print(f"{path} (mean top-{figures['k']} purity {figures['mean']:.3f}, chance {figures['chance']:.3f})")
    return 0


COMMANDS = {
    "train": _train_command,
    "report": _report_command,
    "compare": _compare_command,
    "car": _car_command,
    "digits-demo": _digits_demo_command,
    "compare-methods": _compare_methods_command,
    "localize": _localize_command,
    "detect": _detect_command,
    "atlas": _atlas_command,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DamagedRunError as error:
        # A missing or damaged file of a run: its own status, so that scripts can tell it from bad options.
        print(f"picnn-ext {args.command}: error: {error}", file=sys.stderr)
        return DAMAGED_RUN_STATUS
    except USER_ERRORS as error:
        print(f"picnn-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"picnn-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

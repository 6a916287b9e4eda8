"""NND's accuracy against the conv multiply-adds it skips, per training recipe (issue 21, point 3).

Trains STD and NND recipes (the config's ``tau``, ``lambda_s`` and ``nnd_*`` options) on the same network
and budget per data set, then measures, on the test split, in eval mode:
- ACC1 of the skipping path (``forward_skip``, which equals the dense gated network's logits);
- the share of conv multiply-adds skipped at batch 1: ``1 - sum computed / sum dense`` over the test images,
  each run alone through ``forward_skip(image[None], count_macs=True)`` (as ``check_and_measure`` in
  nnd_cases.py does; done here so that this script does not depend on that benchmark's workloads);
- the share of gates open (eval rule ``z > 0``), over all gates and images.

    OMP_NUM_THREADS=1 python benchmarks/nnd_recipes.py --datasets digits shapes --out-dir runs/nnd-recipes
    python benchmarks/nnd_recipes.py --list
    python benchmarks/nnd_recipes.py --measure runs/nnd-shapes-seed0     # a run trained with picnn-ext train

A finished run (its ``summary.json`` exists) is measured again, not retrained, so the script can be
stopped and started again; ``--recipes`` picks some. Writes ``recipes.md`` (the table) and ``recipes.json``
(one row per run: the accuracy-against-multiply-adds curve) in ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pathlib import Path

import torch

# Run from a checkout (picnn_ext built in place) as well as with the package installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from picnn_ext.train import TrainConfig, train
from picnn_ext.train.trainer import load_trained_model

# The network and budget of each data set: the same for STD and every NND recipe ("the same budget"). shapes
# is the BENCHMARKS.md "NND" network (the small CNN, 3 stages, width 16, K = 32: 7 gated layers, 256 gates);
# digits the 2-stage one (5 gated layers, 8x8 images). One NND run takes about 15 s (digits) and 60-70 s
# (shapes) on one thread. ``phases``: the epochs of each recipe phase (warm-up, ramp, fine-tuning) on that
# budget; the fine-tuning takes 1/3 to 2/5 of the epochs because the cosine schedule leaves its last epochs
# too small a learning rate for the network to adapt to the fixed gates.
BUDGETS = {
    "digits": dict(epochs=60, batch_size=32, width=16, num_filters=32),
    "shapes": dict(epochs=20, batch_size=64, width=16, num_filters=32),
}
PHASES = {
    "digits": dict(nnd_warmup=8, nnd_ramp=8, nnd_finetune=20),
    "shapes": dict(nnd_warmup=4, nnd_ramp=4, nnd_finetune=8),
}

# name -> (TrainConfig overrides, the phases of PHASES it uses). "nnd-authors" is the authors' weights
# (lambda_s 1.5e-4, tau 0); "nnd-tau0.5" the earlier benchmarked run; the others ask for a share tau of each
# layer's gates open with a sparsity weight strong enough to get there (the |L1 - tau K| term pushes every
# open gate with the same force lambda_s until the target is met: 0.01 leaves 95% of them open after a
# warm-up). A layer's multiply-adds scale with the open share of its filters times that of its input's
# channels, so an open share t keeps about t^2 of them: 40% skipped needs t of about 0.77, not 0.5. tau is
# the target of the training draws (mean p); inference opens every gate with p > 1/2, so the open share
# measured in eval mode comes out above tau (0.61-0.69 for tau 0.6).
NND = dict(method="nnd", lambda_s=0.1)
RECIPES = {
    "std": (dict(method="std"), ()),
    "nnd-authors": (dict(method="nnd"), ()),
    "nnd-tau0.5": (dict(method="nnd", lambda_s=0.01, tau=0.5), ()),
    "nnd-tau0.6": (dict(NND, tau=0.6), ()),
    "nnd-tau0.7-ft": (dict(NND, tau=0.7), ("nnd_finetune",)),
    "nnd-tau0.6-ft": (dict(NND, tau=0.6), ("nnd_finetune",)),
    "nnd-tau0.6-warm-ft": (dict(NND, tau=0.6), ("nnd_warmup", "nnd_finetune")),
    "nnd-tau0.6-warm-ramp-ft": (dict(NND, tau=0.6), ("nnd_warmup", "nnd_ramp", "nnd_finetune")),
    "nnd-tau0.65-ft": (dict(NND, tau=0.65), ("nnd_finetune",)),
    "nnd-tau0.65-warm-ft": (dict(NND, tau=0.65), ("nnd_warmup", "nnd_finetune")),
    "nnd-tau0.5-ft": (dict(NND, tau=0.5), ("nnd_finetune",)),
    "nnd-tau0.4-ft": (dict(NND, tau=0.4), ("nnd_finetune",)),
}


def recipe_settings(dataset: str, recipe: str) -> dict:
    overrides, phases = RECIPES[recipe]
    return {**overrides, **{phase: PHASES[dataset][phase] for phase in phases}}


@torch.no_grad()
def measure(run_dir: str) -> dict:
    """ACC1, skipped multiply-adds at batch 1 and the open share, on the run's test split."""
    model, splits = load_trained_model(run_dir)
    correct = computed = dense = 0
    opened = gates = 0
    for image, label in splits.test:
        image = torch.as_tensor(image)[None]
        if hasattr(model, "forward_skip"):
            logits, path, (done, total) = model.forward_skip(image, count_macs=True)
            computed, dense = computed + done, dense + total
            opened += sum(int(gate.sum()) for gate in path)
            gates += sum(gate.numel() for gate in path)
        else:
            logits = model(image)
            logits = logits.logits if hasattr(logits, "logits") else logits
        correct += int(logits.argmax(1).item() == int(label))
    n = len(splits.test)
    return {"acc1": correct / n, "macs_skipped_batch1": 1 - computed / dense if dense else 0.0,
            "open": opened / gates if gates else 1.0, "test_images": n}


def run_one(dataset: str, recipe: str, seed: int, out_dir: str, epochs: int | None,
            only_finished: bool = False) -> dict | None:
    budget = dict(BUDGETS[dataset])
    if epochs is not None:
        budget["epochs"] = epochs
    config = TrainConfig(dataset=dataset, seed=seed, out_dir=out_dir, device="cpu", quiet=True,
                         run_name=f"{dataset}-{recipe}-e{budget['epochs']}-seed{seed}",
                         **budget, **recipe_settings(dataset, recipe))
    run_dir = config.run_dir()
    start = time.perf_counter()
    if not os.path.exists(os.path.join(run_dir, "summary.json")):
        if only_finished:
            return None
        train(config)
    trained_s = time.perf_counter() - start
    row = {"dataset": dataset, "recipe": recipe, "seed": seed, "epochs": config.epochs,
           "settings": recipe_settings(dataset, recipe), "run_dir": run_dir, **measure(run_dir)}
    with open(os.path.join(run_dir, "summary.json")) as file:
        summary = json.load(file)
    row["summary_acc1"] = summary["test"]["acc1"]
    row["best_epoch"] = summary["best_epoch"]
    row["train_s"] = round(summary["train_time_s"], 1)
    print(f"{dataset} {recipe} seed {seed}: acc1 {row['acc1']:.4f} skipped {row['macs_skipped_batch1']:.3f} "
          f"open {row['open']:.3f} (best epoch {row['best_epoch']}, trained {row['train_s']} s"
          f"{', reused' if trained_s < 1 else ''})", file=sys.stderr, flush=True)
    return row


def table(rows) -> str:
    """Mean over seeds per (dataset, recipe); the STD row of the data set is the reference."""
    lines = ["| data set | recipe | epochs | seeds | ACC1 | ACC1 - STD | MACs skipped (batch 1) | open gates |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["recipe"]), []).append(row)

    def mean(items, key):
        return sum(item[key] for item in items) / len(items)

    for (dataset, recipe), items in groups.items():
        std = groups.get((dataset, "std"))
        delta = f"{100 * (mean(items, 'acc1') - mean(std, 'acc1')):+.1f} pt" if std else "-"
        lines.append(f"| {dataset} | {recipe} | {items[0]['epochs']} | {len(items)} | {mean(items, 'acc1'):.4f} | "
                     f"{delta} | {100 * mean(items, 'macs_skipped_batch1'):.1f}% | {mean(items, 'open'):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="override every data set's epochs (a quick look)")
    parser.add_argument("--out-dir", default="runs/nnd-recipes")
    parser.add_argument("--list", action="store_true", help="print the recipes and budgets, train nothing")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: measure and tabulate the finished runs among those asked for")
    parser.add_argument("--measure", nargs="+", metavar="RUN_DIR",
                        help="only measure these finished runs (e.g. trained with picnn-ext train), print JSON")
    args = parser.parse_args(argv)
    if args.measure:
        for run_dir in args.measure:
            print(json.dumps({"run_dir": run_dir, **measure(run_dir)}))
        return 0
    if args.list:
        for dataset, budget in BUDGETS.items():
            print(f"{dataset}: {budget}")
            for recipe in RECIPES:
                print(f"  {recipe}: {recipe_settings(dataset, recipe)}")
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    rows = [run_one(dataset, recipe, seed, args.out_dir, args.epochs, args.only_finished)
            for dataset in args.datasets for recipe in args.recipes for seed in args.seeds]
    rows = [row for row in rows if row is not None]
    with open(os.path.join(args.out_dir, "recipes.json"), "w") as file:
        json.dump(rows, file, indent=1)
    text = table(rows)
    with open(os.path.join(args.out_dir, "recipes.md"), "w") as file:
        file.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

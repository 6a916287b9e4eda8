"""PICNN with the authors' interpreted layer (a bare 3x3 conv) against the same layer followed by a ReLU.

    .venv/bin/python scripts/compare_interpreted_layer.py --out-dir runs/interpreted-layer

Trains PICNN on digits and on shapes, 3 seeds each, once per interpreted layer, with the digits demo's
network and batch (small CNN of width 16, K = 32, batch 16), and prints ACC1/ACC2/ACC3/MIS as mean ± std
over the seeds (test split; model selection on the validation split). The README quotes its output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from picnn_ext.cli import DEMO_BATCH_SIZE, DEMO_NUM_FILTERS, DEMO_WIDTH
from picnn_ext.data import load_dataset
from picnn_ext.report import seed_table
from picnn_ext.train import TrainConfig, load_summary, train

# Epochs per data set: the digits demo's 40 (68 steps an epoch), and for shapes (188 steps an epoch) about
# as many steps in all, which keeps the 12 runs within about a quarter of an hour on a shared 2-core CPU.
EPOCHS = {"digits": 40, "shapes": 12}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join("runs", "interpreted-layer"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(EPOCHS), choices=list(EPOCHS))
    args = parser.parse_args()
    start = time.perf_counter()
    lines = []
    for dataset in args.datasets:
        splits = load_dataset(dataset)
        for activation in ("none", "relu"):
            summaries = []
            for seed in range(args.seeds):
                config = TrainConfig(
                    method="picnn", dataset=dataset, epochs=EPOCHS[dataset], batch_size=DEMO_BATCH_SIZE,
                    width=DEMO_WIDTH, num_filters=DEMO_NUM_FILTERS, seed=seed, interpreted_activation=activation,
                    out_dir=args.out_dir, run_name=f"{dataset}-{activation}-seed{seed}", device="cpu", quiet=True,
                )
                summaries.append(load_summary(train(config, splits=splits)))
                print(f"{dataset} {activation} seed {seed}: {summaries[-1]['test']}", file=sys.stderr, flush=True)
            title = f"{dataset}, {EPOCHS[dataset]} epochs, interpreted layer: conv" + (" + ReLU" if activation == "relu" else "")
            lines.append(f"{title}\n\n{seed_table(summaries)}\n")
    print("\n".join(lines))
    print(f"{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

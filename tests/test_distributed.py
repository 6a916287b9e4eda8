"""The trainer under DistributedDataParallel: two CPU processes (gloo), spawned by the test.

Each rank runs the real Trainer for one short epoch and saves its parameters and the masks it drew; the test
then checks that DDP kept the parameters identical, that the ranks drew different masks (their sampling
generators are seeded per rank), that they saw different samples, and that only rank 0 wrote the run.
"""

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Subset

from picnn_ext.data import load_dataset
from picnn_ext.train import TrainConfig, distributed
from picnn_ext.train.trainer import Trainer

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def tiny_digits():
    splits = load_dataset("digits")
    return dataclasses.replace(
        splits, train=Subset(splits.train, range(96)), val=Subset(splits.val, range(40)),
        test=Subset(splits.test, range(40)),
    )


def _worker(rank: int, init_file: str, run_root: str, result_dir: str) -> None:
    # gloo connects over the loopback device: the host name of a sandbox may not resolve.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        config = TrainConfig(method="picnn", epochs=1, batch_size=16, width=4, num_filters=8, seed=3,
                             out_dir=run_root, device="cpu", quiet=True)
        trainer = Trainer(config, distributed.setup(config.device), tiny_digits(), resume=False)
        masks, targets = [], []

        def record(module, inputs, output):
            if module.training:
                masks.append(output.mask.clone())
                targets.append(inputs[1].clone())

        trainer.model.head.register_forward_hook(record)
        trainer.run(stop_after_epoch=None)
        torch.save(
            {"params": [p.detach().clone() for p in trainer.model.parameters()], "masks": masks,
             "targets": targets, "run_dir": trainer.run_dir},
            os.path.join(result_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_cpu_processes(tmp_path):
    run_root, result_dir = tmp_path / "runs", tmp_path / "results"
    result_dir.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(run_root), str(result_dir)), nprocs=WORLD_SIZE,
             join=True)
    ranks = [torch.load(result_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]

    # DDP averaged the gradients, so every step left the same weights on both ranks.
    for p0, p1 in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p0, p1)
    # 96 samples / 2 ranks / 16 per batch = 3 steps each; each rank drew its own masks on its own samples.
    assert len(ranks[0]["masks"]) == len(ranks[1]["masks"]) == 3
    assert any(not torch.equal(m0, m1) for m0, m1 in zip(ranks[0]["masks"], ranks[1]["masks"]))
    assert any(not torch.equal(t0, t1) for t0, t1 in zip(ranks[0]["targets"], ranks[1]["targets"]))

    # Only rank 0 wrote, and it wrote a complete run: no leftover temporary files.
    run_dir = ranks[0]["run_dir"]
    assert sorted(os.listdir(run_dir)) == sorted(
        ["config.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "summary.json", "test_mi.npy", "digests.json"]
    )
    saved = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)  # tensors and plain data only
    # The checkpoint holds the random states of both ranks, so a 2-process run resumes exactly.
    assert len(saved["rng_states"]) == WORLD_SIZE
    assert not torch.equal(saved["rng_states"][0]["sampling"], saved["rng_states"][1]["sampling"])

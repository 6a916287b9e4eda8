"""The training loop: ``train(config) -> run_dir``.

Every method trains the same backbone with the same data order, budget and seed; what differs (the
network's head, the loss, a projection after the step, what evaluation reads) is the method's, chosen by
``config.method`` in :mod:`.methods`.

Reproducibility: the weights are initialised from ``seed`` on every rank; the sampled classes and masks
come from a generator of their own per rank, seeded from ``(seed, rank)`` so that the ranks draw
different masks; the data order is the DistributedSampler's permutation of ``(seed, epoch)``. A checkpoint
holds every one of these states, so on the CPU a resumed run continues bit for bit.

The loop reads nothing back from the device during an epoch: the losses are summed on the device, a
non-finite loss is remembered by its step in a device tensor, and both are read once, at the end of the
epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .. import __version__, ops
from ..data import DatasetSplits, load_dataset
from ..data.transforms import augment_batch, resize_splits
from ..run_folder import Run
from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .evaluate import evaluate
from .methods import create_method

# Evaluation holds no activations for a backward pass, so it can take larger batches than training.
EVAL_BATCH_SIZE = 256


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped."""


def build_model(config: TrainConfig, in_channels: int, num_classes: int, image_size) -> torch.nn.Module:
    """The network of a run, as its method builds it; the weights come from torch's global generator
    (seed it first)."""
    return create_method(config).build_model(in_channels, num_classes, image_size)


def load_trained_model(run_dir: str, splits: Optional[DatasetSplits] = None, *, which: str = Run.BEST,
                       device: str = "cpu"):
    """The model of a run in eval mode and its data: :meth:`picnn_ext.run_folder.Run.load_model`."""
    return Run(run_dir).load_model(splits, which=which, device=device)


def sampling_seed(seed: int, rank: int, *more: int) -> int:
    """Seed of a rank's sampling generator: distinct per (seed, rank, *more), unrelated to the init seed."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1, dtype=np.uint64)[0]) >> 1


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    splits: Optional[DatasetSplits] = None,
    stop_after_epoch: Optional[int] = None,
) -> str:
    """Train one run and return its directory, ``config.run_dir()``.

    Args:
        config: the run's settings; checked before anything is written.
        resume: continue the run in ``config.run_dir()`` from its last checkpoint. The checkpoint must
            have been made with the same settings (all but the runtime keys of :mod:`.config`).
        splits: the data, already loaded (a caller training several runs on one data set loads it once);
            default ``load_dataset(config.dataset)``.
        stop_after_epoch: stop after this epoch, leaving the checkpoint to resume from (for jobs with a
            time limit); the test-set evaluation is then not run.

    Under ``torchrun`` every rank calls this; rank 0 alone writes files.
    """
    config.validate()
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be at least 1, got {stop_after_epoch}")
    context = distributed.setup(config.device)
    try:
        return Trainer(config, context, splits, resume).run(stop_after_epoch)
    finally:
        distributed.teardown(context)


class Trainer:
    """The state of one run on one rank. ``train()`` is the entry point; the class is public so that a
    caller (a test, a notebook) can hold the model and step through the epochs itself:
    ``Trainer(config, distributed.setup(config.device), splits, resume=False).run(None)``.

    Creating it checks the input and the run directory and builds everything, but writes nothing.
    """

    def __init__(self, config: TrainConfig, context: distributed.DistContext, splits, resume: bool):
        self.config = config.validate()
        self.context = context
        self.device = context.device
        # Everything that can fail on bad input happens before the first file is written.
        self.splits = resize_splits(
            splits if splits is not None else load_dataset(config.dataset, seed=config.seed), config.image_size
        )
        for split in ("train", "val", "test"):
            if len(getattr(self.splits, split)) == 0:
                raise ValueError(f"data set {config.dataset!r}: the {split} split is empty")
        self.run_dir = config.run_dir()
        self.run_folder = Run(self.run_dir)
        state = None
        if resume:
            state = self._load_resume_state()
        else:
            self._check_run_dir_is_new()
        # No rank writes before every rank has checked the run directory as it was.
        distributed.barrier(context)

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        # A resumed run has its weights in the checkpoint: a --weights file is read by a new run alone.
        self.method = create_method(config if state is None else dataclasses.replace(config, weights=None))
        self.model = self.method.build_model(
            self.splits.in_channels, self.splits.num_classes, self.splits.image_size
        ).to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.method.prepare(self.model)
        self.net = self.model
        if context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(
                self.model, device_ids=device_ids,
                find_unused_parameters=self.method.ddp_find_unused_parameters,
            )

        self.generator = torch.Generator(self.device).manual_seed(sampling_seed(config.seed, context.rank))
        self.sampler = DistributedSampler(
            self.splits.train, num_replicas=context.world_size, rank=context.rank, shuffle=True,
            seed=config.seed,
        )
        # A last batch of one sample would break batch norm in training mode: drop it, and only then.
        drop_last = len(self.sampler) % config.batch_size == 1
        self.loader = DataLoader(
            self.splits.train, batch_size=config.batch_size, sampler=self.sampler, drop_last=drop_last,
            num_workers=config.workers, pin_memory=self.device.type == "cuda",
            # The loader's own draws (worker seeds) come from here, not from the global generator.
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.optimizer = torch.optim.Adam(self.method.parameter_groups(self.model), lr=config.lr,
                                          weight_decay=config.weight_decay)
        if config.schedule == "cosine":
            # Stepped once per batch, from lr down to 0 at the end of the last epoch.
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, config.epochs * len(self.loader))
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)

        self.start_epoch = 1
        self.best: Dict[str, Any] = {"epoch": 0, "val_acc1": -1.0}
        self.train_time_s = 0.0
        if state is not None:
            self._restore(state)
        self.show_progress = context.is_main and not config.quiet and sys.stderr.isatty()

    # ----------------------------------------------------------------------------------------------------
    # The run directory

    def _check_run_dir_is_new(self) -> None:
        if self.run_folder.holds_a_run():
            raise FileExistsError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir}, "
                                  "or choose another --run-name or --out-dir")

    def _load_resume_state(self) -> Dict[str, Any]:
        if not self.run_folder.has(Run.CHECKPOINT) and not self.run_folder.recorded(Run.CHECKPOINT):
            raise FileNotFoundError(f"nothing to resume in {self.run_dir}: it has no {Run.CHECKPOINT}")
        # Every file the run reads or rewrites is checked before anything is written.
        self.run_folder.check_for_resume()
        return self.run_folder.checkpoint(Run.CHECKPOINT, expected=self.config)

    def _restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.best = dict(state["best"])
        self.train_time_s = state["train_time_s"]
        rng_states = state["rng_states"]
        if len(rng_states) == self.context.world_size:
            rank_state = rng_states[self.context.rank]
            ckpt.restore_rng_state(rank_state["global"])
            self.generator.set_state(rank_state["sampling"])
        else:
            # Another number of processes: the ranks' streams cannot be carried over one to one. Each rank
            # starts a fresh stream (distinct per epoch), so the run goes on, but not bit for bit.
            warnings.warn(
                f"resuming {self.run_dir} on {self.context.world_size} processes, saved on {len(rng_states)}: "
                "the random streams restart, so the run will not repeat an uninterrupted one exactly",
                RuntimeWarning,
            )
            self.generator.manual_seed(sampling_seed(self.config.seed, self.context.rank, state["epoch"]))

    def _start_run_dir(self) -> None:
        if not self.run_folder.has(Run.CONFIG):  # A resumed run keeps the config it was started with.
            self.run_folder.write_config(self.config)
        # Lines of epochs after the checkpoint are from a run killed before it could save them.
        self.run_folder.truncate_metrics(self.start_epoch - 1)

    # ----------------------------------------------------------------------------------------------------
    # The loop

    def run(self, stop_after_epoch: Optional[int]) -> str:
        if self.context.is_main:
            self._start_run_dir()
        last_epoch = self.config.epochs
        if stop_after_epoch is not None:
            last_epoch = min(last_epoch, stop_after_epoch)
        for epoch in range(self.start_epoch, last_epoch + 1):
            train_loss, seconds = self._train_epoch(epoch)
            self.train_time_s += seconds
            self._end_epoch(epoch, train_loss, seconds)
        if last_epoch == self.config.epochs:
            self._finish()
        return self.run_dir

    def _train_epoch(self, epoch: int):
        config, device = self.config, self.device
        self.sampler.set_epoch(epoch)
        self.net.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        # The first step whose loss is not finite, -1 while there is none; kept on the device.
        first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        steps = 0
        batches = tqdm(self.loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                       disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True)
        for step, (images, targets) in enumerate(batches):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if config.augment:
                images = augment_batch(images, self.generator, mean=self.splits.pixel_mean,
                                       std=self.splits.pixel_std, clamp=self.splits.pixel_range is not None)
            try:
                loss = self._step(images, targets, epoch)
            except ValueError as error:
                # The ops refuse NaN logits (sample_class) before any loss exists; say where, and why.
                self._raise_if_non_finite(error, epoch, step, images, first_bad_step)
                raise
            loss_sum += loss
            first_bad_step = torch.where(
                (first_bad_step < 0) & ~torch.isfinite(loss), torch.full_like(first_bad_step, step), first_bad_step
            )
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start

        totals = distributed.all_reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64, device=device)]), self.context
        )
        total_loss, total_steps = totals.tolist()  # The one read of the epoch.
        mean_loss = total_loss / max(total_steps, 1.0)
        if not math.isfinite(mean_loss):
            bad_steps = distributed.gather_objects(int(first_bad_step), self.context)
            where = ", ".join(
                f"rank {rank} step {step}" if self.context.distributed else f"step {step}"
                for rank, step in enumerate(bad_steps) if step >= 0
            )
            raise NonFiniteLossError(
                f"training stopped: the loss became {mean_loss} in epoch {epoch} (first at {where}, counting "
                f"steps from 0). {self._what_is_kept(epoch)}. Try a smaller --lr, or check the data for NaN "
                "or infinite values."
            )
        return mean_loss, seconds

    def _step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int) -> torch.Tensor:
        """One optimisation step; returns the loss, detached, still on the device."""
        if self.config.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():  # the network, the ops, the head and the loss; backward runs outside, as autocast asks
            loss = self.method.training_loss(self.net, images, targets, epoch=epoch, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_step(self.model, epoch=epoch)
        self.scheduler.step()
        return loss.detach()

    def _autocast(self):
        if self.config.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _what_is_kept(self, epoch: int) -> str:
        """The sentence that tells a stopped run what is left of it."""
        if epoch > 1:
            return f"The checkpoint of epoch {epoch - 1} is kept in {self.run_dir}"
        return "No checkpoint was written"

    def _raise_if_non_finite(self, error: Exception, epoch: int, step: int, images: torch.Tensor,
                             first_bad_step: torch.Tensor) -> None:
        """After a step failed: raise NonFiniteLossError if the batch or the weights hold NaN or infinite
        values (these reads happen only on this failure path)."""
        if not torch.isfinite(images).all():
            cause = "the batch's images hold NaN or infinite values"
        elif not all(torch.isfinite(parameter).all() for parameter in self.model.parameters()):
            cause = "the weights hold NaN or infinite values"
            if int(first_bad_step) >= 0:
                cause += f" (the loss first became non-finite at step {int(first_bad_step)})"
        else:
            return
        raise NonFiniteLossError(
            f"training stopped in epoch {epoch}, step {step} (counting from 0): {cause} ({error}). "
            f"{self._what_is_kept(epoch)}."
        ) from error

    def _end_epoch(self, epoch: int, train_loss: float, seconds: float) -> None:
        """Validate, log, save (rank 0); every rank hands over its random states for the checkpoint."""
        rng_states = distributed.gather_objects(
            {"global": ckpt.capture_rng_state(), "sampling": self.generator.get_state()}, self.context
        )
        if self.context.is_main:
            start = time.perf_counter()
            val = evaluate(self.model, self.splits.val, device=self.device, method=self.method,
                           batch_size=EVAL_BATCH_SIZE)
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **{f"val_{name}": value for name, value in val.metrics().items()},
                **val.measured,
                **self.method.model_metrics(self.model),
                "lr": self.optimizer.param_groups[0]["lr"],
                "time_s": seconds,
                "val_time_s": time.perf_counter() - start,
            }
            self.run_folder.append_metrics(record)
            # Model selection on the validation split: the best ACC1; on a tie the later epoch, which has
            # trained longer (and, under the cosine schedule, at a lower learning rate).
            if val.acc1 >= self.best["val_acc1"]:
                self.best = {"epoch": epoch, "val_acc1": val.acc1}
                self.run_folder.save_best(config=self.config, epoch=epoch, model=self.model, val=val.metrics())
            self.run_folder.save_checkpoint(
                config=self.config, epoch=epoch, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, rng_states=rng_states, best=self.best,
                train_time_s=self.train_time_s,
            )
            if not self.config.quiet:
                scores = " ".join(f"{name} {value:.4f}" for name, value in val.metrics().items())
                measured = {**val.measured, **self.method.model_metrics(self.model)}
                extras = "".join(f"  {name} {value:.4f}" for name, value in measured.items())
                note = self.method.epoch_note(epoch)
                tqdm.write(
                    f"epoch {epoch}/{self.config.epochs}{f' ({note})' if note else ''}  loss {train_loss:.4f}  "
                    f"val {scores}{extras}  lr {record['lr']:.2e}  {seconds:.1f}s",
                    file=sys.stderr,
                )
        distributed.barrier(self.context)

    def _finish(self) -> None:
        """Score the best epoch's weights on the test split, once, and write the summary (rank 0)."""
        if self.context.is_main:
            best = self.run_folder.checkpoint(Run.BEST)
            self.model.load_state_dict(best["model"])
            test = evaluate(self.model, self.splits.test, device=self.device, method=self.method,
                            batch_size=EVAL_BATCH_SIZE, with_mis=True, num_classes=self.splits.num_classes)
            if test.mi is not None:
                self.run_folder.write_test_mi(test.mi.numpy())
            summary = {
                "method": self.config.method,
                "dataset": self.config.dataset,
                "seed": self.config.seed,
                "test": {**test.metrics(), **test.measured, **self.method.model_metrics(self.model)},
                "best_epoch": best["epoch"],
                "val": best["val"],
                "epochs": self.config.epochs,
                "train_time_s": self.train_time_s,
                "num_parameters": sum(parameter.numel() for parameter in self.model.parameters()),
                "world_size": self.context.world_size,
                "device": str(self.device),
                "ops_backend": ops.backend_for(self.device),
                "picnn_ext_version": __version__,
                "class_names": list(self.splits.class_names),
                "config": self.config.to_dict(),
            }
            self.run_folder.write_summary(summary)
            if not self.config.quiet:
                scores = " ".join(f"{name} {value:.4f}" for name, value in summary["test"].items())
                tqdm.write(f"test (epoch {best['epoch']}): {scores}; wrote {self.run_dir}", file=sys.stderr)
        distributed.barrier(self.context)

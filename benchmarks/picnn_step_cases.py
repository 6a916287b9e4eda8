"""The workloads of the PICNN-step benchmarks: one training step of the PICNN head, three ways.

A step is the forward of the three pathways (DESIGN.md section 3), the loss, and the backward into the
head's parameters and the features `A` (B, K, H, W) (a real step continues into the backbone).

- `picnn_ext`: `picnn_ext.nn.PICNNHead`, the package.
- `authors`: the authors' algorithm as they wrote it: the masks gate copies of the whole map `A`, the
  interpretation loss selects the positive samples by boolean indexing behind an `.item()` test (the step
  waits on the host at both), draws by `torch.multinomial` and `torch.bernoulli`.
- `composition`: the best pure-PyTorch version without the package: the masks gate the pooled (B, K)
  features (pooling is linear, so no masked copy of `A`), pooling as a sum and a division (whose gradient
  is a broadcast view, as picnn_ext's is), the positive samples are weighted instead of selected (no host
  synchronisation), straight-through by `p + (m - p).detach()`.
- `compile`: `torch.compile` of `composition` (default inductor backend), what a user would try next; it
  compiles in the warm-up step, timed apart by the benchmark.

All three share the same parameters (copied from one PICNNHead), so their discrimination logits agree and
their losses agree in expectation over the random draws; `check_losses` tests that.

    python benchmarks/picnn_step_cases.py        # the loss check on the CPU cases
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from picnn_ext.nn import PICNNHead

LAMBDA = 2.0  # DESIGN.md section 3


@dataclass(frozen=True)
class StepCase:
    device: str
    batch: int
    filters: int  # K
    classes: int  # C
    size: int = 7  # H = W of the interpreted layer's map
    bf16_autocast: bool = False  # features in bfloat16 and the step under torch.autocast(bfloat16)

    @property
    def id(self) -> str:
        precision = "bf16autocast" if self.bf16_autocast else "float32"
        return (f"{self.device}-{precision}-B{self.batch}-K{self.filters}-C{self.classes}-"
                f"{self.size}x{self.size}")

    def autocast(self):
        if self.bf16_autocast:
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, seed: int = 0):
        """Post-ReLU features A (requiring grad, as a backbone's output does) and targets, on the device."""
        generator = torch.Generator().manual_seed(seed)
        A = torch.randn(self.batch, self.filters, self.size, self.size, generator=generator).relu()
        targets = torch.randint(0, self.classes, (self.batch,), generator=generator)
        dtype = torch.bfloat16 if self.bf16_autocast else torch.float32
        return A.to(self.device, dtype).requires_grad_(True), targets.to(self.device)


class _PlainHead(nn.Module):
    """theta (C, K) and a GAP + Linear classifier, the parameters every implementation has."""

    def __init__(self, source: PICNNHead):
        super().__init__()
        self.num_classes = source.num_classes
        self.lam = source.lam
        self.theta = nn.Parameter(source.theta.detach().clone())
        self.classifier = nn.Linear(source.num_filters, source.num_classes)
        self.classifier.load_state_dict(source.classifier.state_dict())


class AuthorsHead(_PlainHead):
    """The authors' algorithm, written as they wrote it (see the module docstring)."""

    def classify(self, A):
        return self.classifier(A.mean((2, 3)))

    def forward(self, A, targets):
        logits = self.classify(A)
        pi = torch.softmax(logits, dim=1)
        sampled = torch.multinomial(pi.detach(), 1).squeeze(1)
        onehot = F.one_hot(sampled, self.num_classes).to(pi.dtype)
        s = pi + (onehot - pi).detach()
        P = torch.softmax(self.theta, dim=0)
        p = s @ P
        # rounding of s @ P can leave p a hair outside [0, 1], which torch.bernoulli rejects
        m = torch.bernoulli(p.detach().clamp(0, 1))
        m = p + (m - p).detach()
        interp_logits = self.classify(A * m[:, :, None, None])  # a masked copy of the whole map

        loss = F.cross_entropy(logits, targets)
        positive = sampled == targets
        if positive.sum().item() > 0:  # host synchronisation
            # boolean indexing: a data-dependent shape, so the host waits again (nonzero)
            loss = loss + self.lam * F.cross_entropy(interp_logits[positive], targets[positive])

        with torch.no_grad():  # complement pathway, a diagnostic: another masked copy
            kept = 1 - torch.bernoulli(P[targets])
            self.classify(A * kept[:, :, None, None].to(A.dtype))
        return logits, loss


class CompositionHead(_PlainHead):
    """The same algorithm in plain PyTorch, as fast as it goes without the package (module docstring)."""

    def forward(self, A, targets):
        # sum then divide: the same value as A.mean((2, 3)), but the gradient of a sum is a broadcast view
        # (ATen's mean backward writes a dense map, 4x slower than a copy on the CPU)
        pooled = A.sum((2, 3)).div_(A.shape[2] * A.shape[3])
        logits = self.classifier(pooled)
        pi = torch.softmax(logits, dim=1)
        sampled = torch.multinomial(pi.detach(), 1).squeeze(1)
        s = pi + (F.one_hot(sampled, self.num_classes).to(pi.dtype) - pi).detach()
        P = torch.softmax(self.theta, dim=0)
        p = s @ P
        # a uniform threshold instead of torch.bernoulli: the same draw, and no range check on p
        m = (torch.rand_like(p) < p.detach()).to(p.dtype)
        m = p + (m - p).detach()
        interp_logits = self.classifier(pooled * m.to(pooled.dtype))

        positive = sampled == targets
        interp_ce = F.cross_entropy(interp_logits, targets, reduction="none")
        interp_ce = torch.where(positive, interp_ce, torch.zeros_like(interp_ce))
        mean_positive = interp_ce.sum() / positive.sum().clamp_min(1)
        loss = F.cross_entropy(logits, targets) + self.lam * mean_positive

        with torch.no_grad():
            P_target = P[targets]
            kept = (torch.rand_like(P_target) >= P_target).to(pooled.dtype)
            self.classifier(pooled * kept)
        return logits, loss


class PackageHead(nn.Module):
    """picnn_ext.nn.PICNNHead, returning (logits, loss) like the other two."""

    def __init__(self, head: PICNNHead):
        super().__init__()
        self.head = head

    def forward(self, A, targets):
        out = self.head(A, targets, pathways=True)
        return out.logits, out.loss


IMPLEMENTATIONS = ("picnn_ext", "authors", "composition")  # the eager ones, which check_losses compares
BENCHMARKED = IMPLEMENTATIONS + ("compile",)


def make_heads(case: StepCase, seed: int = 0) -> dict[str, nn.Module]:
    """The three implementations with the same parameters, on the case's device."""
    torch.manual_seed(seed)
    head = PICNNHead(case.filters, case.classes, lam=LAMBDA)
    heads = {"picnn_ext": PackageHead(head), "authors": AuthorsHead(head), "composition": CompositionHead(head)}
    return {name: module.to(case.device).train() for name, module in heads.items()}


def make_step(case: StepCase, impl: str, sync: bool = True):
    """A function running one training step of `impl` (forward, loss, backward).

    With `sync` (for timing), it ends with torch.cuda.synchronize() on CUDA so that wall time is device time.
    The gradients are returned by torch.autograd.grad rather than accumulated, so a step leaves no state;
    the gradient of `A` is made dense, as the backbone's next backward reads it (a pooling backward may return
    a broadcast view, which costs nothing until it is read: the step counts that read for every implementation).
    """
    if impl == "compile":
        torch._dynamo.reset()  # every case compiles afresh: its compile time is its own
        module = torch.compile(make_heads(case)["composition"])
    else:
        module = make_heads(case)[impl]
    A, targets = case.inputs()
    differentiated = [A, *module.parameters()]
    synchronize = torch.cuda.synchronize if (sync and case.device == "cuda") else (lambda: None)

    def step():
        with case.autocast():
            _, loss = module(A, targets)
        # allow_unused: the authors' loss does not reach theta when no sample is positive
        grads = torch.autograd.grad(loss, differentiated, allow_unused=True)
        grads[0].contiguous()
        synchronize()
    return step


def cuda_memory_of_step(case: StepCase, impl: str) -> dict[str, int]:
    """Peak CUDA memory of one step: absolute, and above what was allocated before it (inputs, parameters)."""
    step = make_step(case, impl)
    step()  # warm-up, so that lazily created state (cuBLAS workspace) counts in `before`, not in the step
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_bytes": peak, "step_mem_bytes": peak - before}


def cuda_step_synchronises(case: StepCase, impl: str) -> bool:
    """Whether a step waits on the host (.item(), boolean indexing...), read with CUDA's sync debug mode."""
    step = make_step(case, impl, sync=False)
    step()  # warm-up: first calls may synchronise while loading kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return False
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def check_losses(case: StepCase, draws: int = 50) -> dict[str, float]:
    """Mean loss of each implementation over `draws` forwards; raises if they disagree.

    Same parameters and inputs: the discrimination logits must agree to rounding, and the losses, which
    differ by the random draws only, must have the same mean (within 5 standard errors of the difference)
    and lie in the range the initial logits allow. A sanity check, not an equality test.
    """
    heads = make_heads(case)
    A, targets = case.inputs()
    stats, logits = {}, {}
    with torch.no_grad(), case.autocast():
        for name, module in heads.items():
            losses = []
            for _ in range(draws):
                logits[name], loss = module(A, targets)
                losses.append(float(loss))
            mean = sum(losses) / draws
            variance = sum((x - mean) ** 2 for x in losses) / (draws - 1)
            stats[name] = (mean, math.sqrt(variance / draws))
    tolerance = 2e-2 if case.bf16_autocast else 1e-5
    for name in IMPLEMENTATIONS[1:]:
        torch.testing.assert_close(logits[name].float(), logits["picnn_ext"].float(), rtol=tolerance,
                                   atol=tolerance, msg=f"{case.id}: discrimination logits of {name}")
        (mean, error), (ref_mean, ref_error) = stats[name], stats["picnn_ext"]
        # the floor covers batches where no draw ever has a positive sample (zero variance)
        allowed = 5 * math.hypot(error, ref_error) + 1e-3 * abs(ref_mean)
        if not abs(mean - ref_mean) <= allowed:
            raise AssertionError(f"{case.id}: mean loss of {name} {mean:.4f} +- {error:.4f} differs from "
                                 f"picnn_ext's {ref_mean:.4f} +- {ref_error:.4f}")
    # Small initial logits make every CE about ln C, so a loss lies in about [ln C, (1 + lambda) ln C].
    low, high = 0.5 * math.log(case.classes), 1.5 * (1 + LAMBDA) * math.log(case.classes)
    means = {name: mean for name, (mean, _) in stats.items()}
    if not all(low <= mean <= high for mean in means.values()):
        raise AssertionError(f"{case.id}: mean losses {means} outside [{low:.2f}, {high:.2f}]")
    return means


def default_cases() -> list[StepCase]:
    """CPU cases that run in seconds, and the GPU cases where a GPU is present."""
    cases = [StepCase("cpu", 64, 512, classes) for classes in (10, 1000)]
    if torch.cuda.is_available():
        for bf16 in (False, True):
            for filters in (512, 2048):
                for classes in (10, 1000):
                    cases.append(StepCase("cuda", 256, filters, classes, bf16_autocast=bf16))
    return cases


if __name__ == "__main__":
    for case in default_cases():
        means = check_losses(case)
        print(f"{case.id}: mean loss " + ", ".join(f"{name} {value:.4f}" for name, value in means.items()))

"""pytest-benchmark suite of NND (nnd_cases.py says what each implementation is):

- inference of a trained NND at batch 1 and 64: the skipping path against the dense gated network and the
  same network without gates, side by side; the accuracies, the largest logit difference and the share of
  conv multiply-adds the skipping path computes go into extra_info (and test_skip_equals_dense checks them);
- one training step of a decoupled small CNN and ResNet-18 at 32 px: fused gate, pure-PyTorch gate, and
  torch.compile.

    NND_BENCH_RUN=runs/nnd-shapes-seed0 pytest benchmarks/bench_nnd.py --benchmark-json=nnd.json
    python benchmarks/report.py nnd.json
"""
import pytest
import torch

from nnd_cases import STEP_CASES, check_and_measure, inference_call, make_step, plain_copy, trained_model

INFERENCE_IMPLS = ("skip", "dense", "plain")


@pytest.fixture(scope="module")
def trained():
    model, test, source = trained_model()
    return model, plain_copy(model), test, source, check_and_measure(model, test)


def test_skip_equals_dense(trained):
    model, _, _, _, measured = trained
    assert measured["max_abs_logit_diff"] < 1e-5
    assert measured["acc_dense"] == measured["acc_skip"]


@pytest.mark.parametrize("impl", INFERENCE_IMPLS + ("skip_per_sample",))
@pytest.mark.parametrize("batch", [1, 64])
def test_nnd_inference(benchmark, trained, batch, impl):
    if impl == "skip_per_sample" and batch == 1:
        pytest.skip("at batch 1, skip is already per sample")
    model, plain, test, source, measured = trained
    images = torch.stack([test[i][0] for i in range(batch)])
    benchmark.group = f"nnd_inference:B{batch}"
    benchmark.extra_info.update(impl=impl, run=source, **measured)
    call = inference_call(model, plain, impl, images)
    call()
    benchmark.pedantic(call, rounds=100 if batch == 1 else 30, warmup_rounds=5)


@pytest.mark.parametrize("case", STEP_CASES, ids=[case.id for case in STEP_CASES])
@pytest.mark.parametrize("impl", ["fused", "python", "compile"])
def test_nnd_training_step(benchmark, case, impl):
    step, source = make_step(case, impl)
    benchmark.group = f"nnd_step:{case.id}"
    benchmark.extra_info.update(impl=impl, network=source)
    for _ in range(2):  # warm-up; for compile, the compilation
        step()
    benchmark.pedantic(step, rounds=10 if case.network == "resnet18" else 30, warmup_rounds=1)

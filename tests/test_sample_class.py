"""sample_class on every backend: the draw against a float64 inverse-CDF reference, the exact one-hot, and
the straight-through softmax gradient against a pure-PyTorch version."""
import pytest
import torch

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def reference_draw(logits, u):
    """First class whose float64 cumulative probability exceeds u."""
    cdf = torch.softmax(logits.double(), -1).cumsum(-1)
    return (cdf <= u.double()[:, None]).sum(-1).clamp(max=logits.shape[1] - 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 10), (1, 1), (3, 1000), (5, 3000), (0, 4), (33, 37)])
def test_draw_and_onehot_match_reference(backend, dtype, shape):
    torch.manual_seed(0)
    logits = (3 * torch.randn(shape, dtype=torch.float64)).to(dtype).to(backend.device)
    # Keep u away from the reference's CDF steps so that float rounding cannot flip a draw.
    u = torch.rand(shape[0], dtype=torch.float64)
    if shape[0]:
        cdf = torch.softmax(logits.cpu().double(), -1).cumsum(-1)
        gaps = (cdf - u[:, None]).abs().min(-1).values
        u = torch.where(gaps < 1e-3, (u + 0.37) % 1, u)
    onehot, index = backend.sample(logits, u.to(backend.device).float())
    assert onehot.dtype == dtype and index.dtype == torch.int64 and onehot.shape == logits.shape
    expected = reference_draw(logits.cpu(), u.float())
    assert torch.equal(index.cpu(), expected)
    assert torch.equal(onehot.cpu(), torch.nn.functional.one_hot(expected, shape[1]).to(dtype))


def test_never_draws_a_class_of_zero_probability(backend):
    logits = torch.tensor([[0.0, -float("inf"), 0.0, -float("inf")]] * 64, device=backend.device)
    u = torch.linspace(0, 1 - 2**-24, 64, device=backend.device)
    _, index = backend.sample(logits, u)
    assert set(index.tolist()) == {0, 2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_gradient_is_the_softmax_straight_through(backend, dtype):
    torch.manual_seed(1)
    logits = torch.randn(6, 9, dtype=torch.float64).to(dtype).to(backend.device).requires_grad_(True)
    upstream = torch.randn(6, 9, dtype=torch.float64).to(dtype).to(backend.device)
    onehot, index = backend.sample(logits, torch.rand(6, device=backend.device))
    (grad,) = torch.autograd.grad(onehot, logits, upstream)

    # The pure-PyTorch straight-through estimator in float64: pi + sg(onehot - pi).
    reference_logits = logits.detach().double().requires_grad_(True)
    pi = torch.softmax(reference_logits, -1)
    straight_through = pi + (torch.nn.functional.one_hot(index, 9).double() - pi).detach()
    (expected,) = torch.autograd.grad(straight_through, reference_logits, upstream.double())
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(grad.double(), expected, rtol=tol, atol=tol)


def test_index_has_no_gradient(backend):
    logits = torch.randn(3, 4, device=backend.device, requires_grad=True)
    onehot, index = backend.sample(logits)
    assert onehot.requires_grad and not index.requires_grad


def test_draw_frequencies_follow_softmax(backend):
    # 40,000 draws from one row: every class count within 5 binomial standard deviations of N * pi.
    torch.manual_seed(2)
    row = torch.tensor([2.0, 0.5, -1.0, 1.0, 0.0])
    logits = row.repeat(40_000, 1).to(backend.device)
    _, index = backend.sample(logits)
    counts = torch.bincount(index.cpu(), minlength=5).double()
    n, pi = 40_000, torch.softmax(row.double(), 0)
    assert ((counts - n * pi).abs() <= 5 * (n * pi * (1 - pi)).sqrt()).all(), counts

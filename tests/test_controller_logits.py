"""controller_logits, NND's controller fused for inference: every backend against a float64 reference of
W2 relu(W1 mean(x) + b1) + b2, in both memory formats; the public op's gradient (the composition) by gradcheck;
bad input named by argument, alike on every backend."""
import pytest
import torch

from picnn_ext import ops


def reference(x, w1, b1, w2, b2):
    u = x.double().mean(dim=tuple(range(2, x.dim())))
    return (u @ w1.double().T + b1.double()).relu() @ w2.double().T + b2.double()


def make(shape, hidden, filters, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    channels = shape[1]
    params = [torch.randn(hidden, channels, generator=generator, dtype=torch.float64) / channels ** 0.5,
              torch.randn(hidden, generator=generator, dtype=torch.float64),
              torch.randn(filters, hidden, generator=generator, dtype=torch.float64) / max(hidden, 1) ** 0.5,
              torch.randn(filters, generator=generator, dtype=torch.float64)]
    return [t.to(dtype=dtype, device=device) for t in (x, *params)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("shape, hidden, filters", [((1, 3, 224, 224), 16, 64), ((2, 64, 7, 7), 16, 64),
                                                    ((5, 37, 3, 5), 9, 41), ((3, 8, 1, 1), 2, 8),
                                                    ((0, 4, 2, 2), 1, 4), ((2, 6, 4, 4), 1, 1),
                                                    ((2, 64, 48, 48), 16, 64)])  # >= 2^18: means in parallel
def test_matches_the_float64_reference(backend, dtype, channels_last, shape, hidden, filters):
    x, *params = make(shape, hidden, filters, dtype, backend.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    z = backend.ops.controller_logits(x, *params)
    assert z.shape == (shape[0], filters) and z.dtype == dtype and z.device == x.device
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(z.double().cpu(), reference(x.cpu(), *[p.cpu() for p in params]), atol=tol,
                               rtol=tol)


def test_other_layouts_and_ranks(backend):
    x, *params = make((3, 5, 6, 7), 4, 6, torch.float32, backend.device, seed=1)
    expected = reference(x.cpu(), *[p.cpu() for p in params])
    strided = x.transpose(2, 3)  # neither contiguous nor channels_last: the mean is the same
    torch.testing.assert_close(backend.ops.controller_logits(strided, *params).double().cpu(), expected, atol=2e-5,
                               rtol=2e-5)
    tokens = x.flatten(2)  # (B, C, N): one spatial dim
    torch.testing.assert_close(backend.ops.controller_logits(tokens, *params).double().cpu(), expected, atol=2e-5,
                               rtol=2e-5)
    pooled = x.mean(dim=(2, 3))  # (B, C): the pooled input itself, as relu_mean_ returns it
    torch.testing.assert_close(backend.ops.controller_logits(pooled, *params).double().cpu(), expected, atol=2e-5,
                               rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_public_op_takes_half_precision_through_the_composition(dtype):
    x, *params = make((2, 8, 5, 5), 4, 6, dtype, "cpu")
    z = ops.controller_logits(x, *params)
    assert z.dtype == dtype
    torch.testing.assert_close(z.double(), reference(x, *params), atol=0.1, rtol=0.05)


def test_public_op_is_differentiable_through_the_composition():
    x, *params = make((2, 4, 3, 3), 3, 5, torch.float64, "cpu", seed=2)
    inputs = [t.requires_grad_() for t in (x, *params)]
    assert torch.autograd.gradcheck(ops.controller_logits, inputs)
    with torch.no_grad():  # and without a gradient it is the compiled kernel's value
        torch.testing.assert_close(ops.controller_logits(*inputs), reference(*inputs), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("change, error, message", [
    (lambda a: {**a, "x": a["x"][:, 0, 0, 0]}, ValueError, "x must be \\(B, C, \\*spatial\\)"),
    (lambda a: {**a, "weight1": a["weight1"][:, :3]}, ValueError,
     "weight1 must be \\(hidden, C\\) with C = x.size\\(1\\) = 4"),
    (lambda a: {**a, "bias1": a["bias1"][:1]}, ValueError, "bias1 must be \\(hidden,\\) = \\(3,\\)"),
    (lambda a: {**a, "weight2": a["weight2"][:, :2]}, ValueError, "weight2 must be \\(K, hidden\\)"),
    (lambda a: {**a, "bias2": a["bias2"][:2]}, ValueError, "bias2 must be \\(K,\\) = \\(5,\\)"),
    (lambda a: {**a, "bias2": a["bias2"].double()}, TypeError, "bias2 must have x's dtype"),
    (lambda a: {**a, "x": a["x"].long(), **{k: a[k].long() for k in ("weight1", "bias1", "weight2", "bias2")}},
     TypeError, "x must be"),
])
def test_bad_input_names_the_argument(backend, change, error, message):
    x, w1, b1, w2, b2 = make((2, 4, 3, 3), 3, 5, torch.float32, backend.device)
    args = change(dict(x=x, weight1=w1, bias1=b1, weight2=w2, bias2=b2))
    with pytest.raises(error, match=message):
        backend.ops.controller_logits(**args)


# ---- controller_gates: the same z, and the pattern the skipping path reads ----

def expected_pattern(z):
    gate = z.cpu() > 0
    some, every = gate.any(dim=0), gate.all(dim=0)
    return some.to(torch.uint8), bool((some & ~every).any())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape, hidden, filters", [((1, 3, 224, 224), 16, 64), ((7, 64, 7, 7), 16, 64),
                                                    ((5, 37, 3, 5), 9, 41), ((0, 4, 2, 2), 1, 4), ((4, 300), 8, 96)])
def test_gates_are_the_logits_and_their_pattern(backend, dtype, shape, hidden, filters):
    x, *params = make(shape, hidden, filters, dtype, backend.device, seed=3)
    z, is_open, mixed = backend.ops.controller_gates(x, *params)
    torch.testing.assert_close(z, backend.ops.controller_logits(x, *params), atol=0, rtol=0)
    assert is_open.shape == (filters,) and is_open.dtype == torch.uint8 and is_open.device == x.device
    assert mixed.shape == () and mixed.dtype == torch.bool
    expected_open, expected_mixed = expected_pattern(z)
    assert torch.equal(is_open.cpu(), expected_open)
    assert bool(mixed) == expected_mixed
    if shape[0] > 1:  # random inputs: some filter is open for some samples only
        assert expected_mixed


@pytest.mark.parametrize("batch", [1, 4])
def test_gates_of_inputs_that_agree_are_not_mixed(backend, batch):
    """W1 = 0: every sample has the same z = W2 relu(b1) + b2, so no filter is open for some samples only,
    and the pattern is that of the biases'."""
    x, w1, b1, w2, b2 = make((batch, 6, 3, 3), 4, 10, torch.float64, backend.device, seed=4)
    w1 = torch.zeros_like(w1)
    z, is_open, mixed = backend.ops.controller_gates(x, w1, b1, w2, b2)
    expected = ((w2 @ b1.relu() + b2) > 0).to(torch.uint8)
    assert torch.equal(is_open, expected) and 0 < int(expected.sum()) < 10
    assert not bool(mixed)


def test_gates_bad_input_names_the_op_and_the_argument(backend):
    x, w1, b1, w2, b2 = make((2, 4, 3, 3), 3, 5, torch.float32, backend.device)
    with pytest.raises(ValueError, match="controller_gates: weight1 must be \\(hidden, C\\)"):
        backend.ops.controller_gates(x, w1[:, :3], b1, w2, b2)

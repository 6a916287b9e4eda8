"""relu_mean_, the skipping path's activation with the next controller's pooling: every backend against a
float64 reference of x <- relu(x + residual), mean over the positions, in both memory formats and with the
map split over the threads; written in place and nowhere else; the public op's gradient (the composition)
by gradcheck; bad input named by argument, alike on every backend (opcheck: tests/test_registration.py)."""
import pytest
import torch

from picnn_ext import ops


def reference(x, residual):
    y = x.double() if residual is None else x.double() + residual.double()
    y = y.relu()
    return y, y.mean(dim=tuple(range(2, y.dim())))


def make(shape, dtype, device, seed=0, channels_last=False, residual=True):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    r = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, (r if residual else None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["relu", "add_relu"])
@pytest.mark.parametrize("shape", [(1, 256, 56, 56),  # 800K elements: split over the threads
                                   (2, 64, 7, 7), (5, 37, 3, 5), (3, 8, 1, 1), (0, 4, 2, 2), (2, 0, 3, 3),
                                   (1, 2048, 7, 7)])
def test_matches_the_float64_reference(backend, dtype, channels_last, with_residual, shape):
    x, r = make(shape, dtype, backend.device, channels_last=channels_last, residual=with_residual)
    expected_y, expected_means = reference(x.cpu(), None if r is None else r.cpu())
    r_before = None if r is None else r.clone()
    pointer = x.data_ptr()
    means = backend.ops.relu_mean_(x, r)
    assert means.shape == shape[:2] and means.dtype == dtype and means.device == x.device
    assert x.data_ptr() == pointer and x.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(x.double().cpu(), expected_y, atol=tol, rtol=tol)
    torch.testing.assert_close(means.double().cpu(), expected_means, atol=tol, rtol=tol)
    if r is not None:  # the residual is read, not written
        assert torch.equal(r, r_before)


def test_residual_in_another_layout_and_other_ranks(backend):
    x, r = make((3, 5, 6, 7), torch.float32, backend.device, seed=1, channels_last=True)
    expected_y, expected_means = reference(x.cpu(), r.cpu())
    means = backend.ops.relu_mean_(x, r)  # x channels_last, r contiguous
    torch.testing.assert_close(x.double().cpu(), expected_y, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(means.double().cpu(), expected_means, atol=2e-6, rtol=2e-6)
    x, r = make((3, 5, 6, 7), torch.float32, backend.device, seed=2)
    strided, r_strided = x.transpose(2, 3), r.transpose(2, 3)  # neither contiguous nor channels_last
    expected_y, expected_means = reference(strided.cpu(), r_strided.cpu())
    means = backend.ops.relu_mean_(strided, r_strided)
    torch.testing.assert_close(strided.double().cpu(), expected_y, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(means.double().cpu(), expected_means, atol=2e-6, rtol=2e-6)
    tokens, r_tokens = make((2, 4, 9), torch.float32, backend.device, seed=3)  # (B, C, N): one spatial dim
    expected_y, expected_means = reference(tokens.cpu(), r_tokens.cpu())
    torch.testing.assert_close(backend.ops.relu_mean_(tokens, r_tokens).double().cpu(), expected_means, atol=2e-6,
                               rtol=2e-6)
    torch.testing.assert_close(tokens.double().cpu(), expected_y, atol=2e-6, rtol=2e-6)


def test_split_over_the_threads_gives_the_one_thread_result():
    """The channels_last kernel sums per thread and then over the threads: 1 and 2 threads agree."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x, r = make((2, 96, 40, 40), torch.float64, "cpu", seed=4, channels_last=True)
            results.append((ops.relu_mean_(x, r), x))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=1e-12)
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_public_op_takes_half_precision_through_the_composition(dtype):
    x, r = make((2, 8, 5, 5), dtype, "cpu")
    expected_y, expected_means = reference(x, r)
    means = ops.relu_mean_(x, r)
    assert means.dtype == dtype
    torch.testing.assert_close(x.double(), expected_y, atol=0.02, rtol=0.01)
    torch.testing.assert_close(means.double(), expected_means, atol=0.02, rtol=0.01)


def test_public_op_is_differentiable_through_the_composition():
    x, r = make((2, 4, 3, 3), torch.float64, "cpu", seed=5)
    x = x + 0.1 * torch.sign(x)  # away from the ReLU's kink, where the numerical gradient is not the analytic
    leaves = [x.requires_grad_(), r.requires_grad_()]
    # The op works in place: a clone of x is the input the gradient flows back through.
    assert torch.autograd.gradcheck(lambda a, b: ops.relu_mean_(a.clone(), b), leaves)
    with torch.no_grad():  # and without a gradient it is the compiled kernel's value
        y = x.clone()
        torch.testing.assert_close(ops.relu_mean_(y, r), reference(x, r)[1], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("change, error, message", [
    (lambda a: {**a, "x": a["x"][:, :, 0, 0]}, ValueError, "x must be \\(B, C, \\*spatial\\)"),
    (lambda a: {**a, "residual": a["residual"][:, :3]}, ValueError, "residual must have x's shape"),
    (lambda a: {**a, "residual": a["residual"].double()}, TypeError, "residual must have x's dtype"),
    (lambda a: {**a, "x": a["x"].long(), "residual": None}, TypeError, "x must be"),
])
def test_bad_input_names_the_argument(backend, change, error, message):
    x, r = make((2, 4, 3, 3), torch.float32, backend.device)
    args = change(dict(x=x, residual=r))
    before = args["x"].clone()
    with pytest.raises(error, match=message):
        backend.ops.relu_mean_(**args)
    assert torch.equal(args["x"], before)  # nothing half-written

"""global_pool: the mean over positions of the heads, with a broadcast-view gradient (nn/pooling.py)."""
import pytest
import torch

from picnn_ext.nn import global_pool

LAYOUTS = [((3, 5, 4, 2), 1), ((3, 6, 5), -1), ((2, 4, 3, 3, 2), 1), ((3, 5, 4, 2), -1)]


def positions(x, channel_dim):
    return [d for d in range(1, x.dim()) if d != channel_dim % x.dim()]


@pytest.mark.parametrize("shape,channel_dim", LAYOUTS)
def test_value_is_the_mean_and_gradient_passes_gradcheck(shape, channel_dim):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.equal(global_pool(x, channel_dim), x.mean(positions(x, channel_dim)))
    assert torch.autograd.gradcheck(lambda t: global_pool(t, channel_dim), (x,))
    assert torch.autograd.gradgradcheck(lambda t: global_pool(t, channel_dim), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,channel_dim", LAYOUTS)
def test_gradient_equals_atens_and_is_a_broadcast_view(shape, channel_dim, dtype):
    x = torch.randn(shape).to(dtype).requires_grad_()
    y = global_pool(x, channel_dim)
    grad = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, grad)
    x_ref = x.detach().requires_grad_()
    (reference,) = torch.autograd.grad(x_ref.mean(positions(x, channel_dim)), x_ref, grad)
    assert ours.dtype == dtype and ours.shape == x.shape
    assert torch.equal(ours, reference)
    assert all(ours.stride(d) == 0 for d in positions(x, channel_dim))  # no dense map written


def test_pooled_features_and_channels_last_maps():
    features = torch.randn(4, 6)
    assert global_pool(features, 1) is features
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = global_pool(x, 1)
    assert torch.equal(y, x.mean((2, 3)))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.full_like(x, 1 / 20))


def test_empty_input():
    x = torch.randn(0, 3, 2, 2, requires_grad=True)
    y = global_pool(x, 1)
    assert y.shape == (0, 3)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.shape == x.shape


def test_compiles_in_one_graph():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    compiled = torch.compile(lambda t: global_pool(t, 1), fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(x).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 1 / 16))

"""Shapes and storage that vectorised kernels get wrong first (issue 7's list), on every backend: a storage
offset that breaks 16-byte alignment, rows of one and two elements, K = 0, and a class draw over 21,841 classes
(the ImageNet-21k head); on a GPU, inputs of more than 2^31 elements. Each against a float64 computation."""
import pytest
import torch


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in a tensor whose storage starts one element into a buffer (not 16-byte aligned)."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buffer[1:].view(t.shape)
    out.copy_(t)
    assert out.storage_offset() == 1
    return out


def expected_gate(x, mask, grad_y, channel_dim):
    """y, grad_x and grad_p of the gate in float64."""
    shape = [1] * x.dim()
    shape[0], shape[channel_dim] = mask.shape
    m = mask.double().reshape(shape)
    positions = [d for d in range(1, x.dim()) if d != channel_dim % x.dim()]
    product = grad_y.double() * x.double()
    grad_p = product.sum(positions) if positions else product
    return x.double() * m, grad_y.double() * m, grad_p.reshape(mask.shape)


@pytest.mark.parametrize("shape,channel_dim", [
    ((3, 5, 1, 1), 1), ((3, 5, 1, 2), 1), ((3, 5, 2, 1), 1), ((4, 1, 3, 3), 1), ((4, 2, 3, 3), 1),
    ((3, 7, 1), -1), ((3, 7, 2), -1), ((2, 9, 5), 1), ((5, 1), 1), ((5, 2), 1), ((1, 1, 1, 1), 1),
    ((3, 0, 4, 4), 1), ((3, 4, 0), -1), ((2, 6, 9, 9), 1),
])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "offset1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_small_rows_and_misaligned_storage(backend, shape, channel_dim, aligned, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype).to(backend.device)
    grad_y = torch.randn(shape, generator=generator).to(dtype).to(backend.device)
    B, K = shape[0], shape[channel_dim]
    p = torch.rand(B, K, generator=generator).to(backend.device)
    noise = torch.rand(B, K, generator=generator).to(backend.device)
    if not aligned:
        x, grad_y, p, noise = misaligned(x), misaligned(grad_y), misaligned(p), misaligned(noise)
    y, mask = backend.gate(x, p, True, noise, None, channel_dim)
    assert torch.equal(mask.cpu(), (noise < p).float().cpu())
    grad_x, grad_p = backend.ops.bernoulli_gate_backward(grad_y, x, mask, channel_dim)
    y_ref, grad_x_ref, grad_p_ref = expected_gate(x.cpu(), mask.cpu(), grad_y.cpu(), channel_dim)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.equal(y.cpu().double(), y_ref.to(dtype).double())  # one product by 0 or 1: exact
    assert torch.equal(grad_x.cpu().double(), grad_x_ref.to(dtype).double())
    torch.testing.assert_close(grad_p.cpu().double(), grad_p_ref, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_class_draw_over_21841_classes(backend, dtype):
    """Each drawn class's float64 CDF interval holds its uniform (within float32 rounding of the running sum)."""
    generator = torch.Generator().manual_seed(1)
    logits = (2 * torch.randn(6, 21841, generator=generator, dtype=torch.float64)).to(dtype)
    u = torch.rand(6, generator=generator)
    onehot, index = backend.sample(logits.to(backend.device), u.to(backend.device))
    index = index.cpu()
    cdf = torch.softmax(logits.double(), -1).cumsum(-1)
    below = torch.where(index > 0, cdf.gather(1, (index - 1).clamp(min=0)[:, None])[:, 0], torch.zeros(6).double())
    upto = cdf.gather(1, index[:, None])[:, 0]
    assert bool(((below - 1e-5 <= u.double()) & (u.double() < upto + 1e-5)).all())
    assert torch.equal(onehot.cpu(), torch.nn.functional.one_hot(index, 21841).to(dtype))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs a CUDA device with 40 GiB")
@pytest.mark.parametrize("shape,channel_dim", [((1, 2, 2**30 + 5), 1), ((1, 2**28 + 1, 8), -1)])
def test_more_than_2_to_the_31_elements_on_cuda(shape, channel_dim):
    # float16 x of 2^31 + 10 and 2^31 + 8 elements; x is 0 but for its last 12 elements, so grad_p is an exact count.
    x = torch.zeros(shape, dtype=torch.float16, device="cuda")
    x.view(-1)[-12:] = 1
    B, K = shape[0], shape[channel_dim]
    p = torch.ones(B, K, device="cuda")  # every mask value 1: y is x
    y, mask = torch.ops.picnn.bernoulli_gate(x, p, True, None, None, channel_dim)
    assert x.numel() > 2**31 and bool((mask == 1).all())
    assert torch.equal(y.view(-1)[-16:], x.view(-1)[-16:]) and int(y.view(-1)[: 2**31 - 4].count_nonzero()) == 0
    del y
    grad_x, grad_p = torch.ops.picnn.bernoulli_gate_backward(torch.ones_like(x), x, mask, channel_dim)
    expected = torch.zeros(B * K, dtype=torch.float64)
    last = torch.arange(x.numel() - 12, x.numel())
    rows = last // shape[2] if channel_dim == 1 else last % K  # the (b, k) index of each nonzero element
    expected.index_add_(0, rows, torch.ones(12, dtype=torch.float64))
    assert torch.equal(grad_p.double().cpu().view(-1), expected)
    assert bool((grad_x.view(-1)[-16:] == 1).all())

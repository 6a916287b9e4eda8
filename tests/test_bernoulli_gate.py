"""bernoulli_gate on every backend against a float64 reference: shapes, layouts, dtypes, gradients."""
import pytest
import torch

from picnn_ext import ops

# (shape, channel_dim): (B, K), maps with 1x1, 7x7, 14x14 and odd positions, tokens; K=37 is neither a multiple
# of 32 nor of a vector width, K=64 and K=40 take the vectorised paths, B=1 and an empty batch.
CASES = [
    ((5, 37), 1),
    ((3, 37, 1, 1), 1),
    ((2, 37, 7, 7), 1),
    ((2, 64, 14, 14), 1),
    ((1, 40, 5, 3), 1),
    ((0, 37, 7, 7), 1),
    ((2, 13, 37), -1),
    ((2, 9, 64), -1),
    ((2, 3, 4, 40), -1),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def make_input(shape, layout, dtype, device, channel_dim):
    """A tensor of `shape` in the requested memory layout (values drawn in float64 then rounded)."""
    if layout == "channels_last":
        return torch.randn(shape, dtype=torch.float64).to(dtype).to(device).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other element of a tensor twice as wide on the channel dim
        wide = list(shape)
        wide[channel_dim] *= 2
        return torch.randn(wide, dtype=torch.float64).to(dtype).to(device).narrow(channel_dim, 0, 2 * shape[channel_dim])[
            (slice(None),) * (channel_dim % len(shape)) + (slice(None, None, 2),)]
    return torch.randn(shape, dtype=torch.float64).to(dtype).to(device)


def broadcast(per_channel, x, channel_dim):
    ones = [1] * (x.dim() - 2)
    if channel_dim == 1:
        return per_channel.view(per_channel.shape[0], per_channel.shape[1], *ones)
    return per_channel.view(per_channel.shape[0], *ones, per_channel.shape[1])


def positions(x, channel_dim):
    dim = channel_dim % x.dim()
    return [d for d in range(1, x.dim()) if d != dim]


def max_error(value, reference):
    return (value.double() - reference).abs().max().item() if reference.numel() else 0.0


# channels_last applies to 4-D maps only.
SHAPE_LAYOUTS = [(shape, dim, layout) for shape, dim in CASES for layout in LAYOUTS
                 if layout != "channels_last" or len(shape) == 4]


@pytest.mark.parametrize("shape,channel_dim,layout", SHAPE_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_forward_and_backward_match_float64_reference(backend, shape, channel_dim, layout, dtype, hard):
    torch.manual_seed(0)
    x = make_input(shape, layout, dtype, backend.device, channel_dim)
    B, K = shape[0], shape[channel_dim]
    p_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    p = torch.rand(B, K, device=backend.device, dtype=p_dtype)
    noise = torch.rand(B, K, device=backend.device, dtype=p_dtype)
    x.requires_grad_(True)
    p.requires_grad_(True)
    y, mask = backend.gate(x, p, hard, noise, None, channel_dim)

    # The float64 reference of DESIGN.md section 2.
    x64, p64 = x.detach().double(), p.detach().double()
    mask64 = (noise.double() < p64).double() if hard else p64
    y64 = x64 * broadcast(mask64, x64, channel_dim)
    assert y.dtype == x.dtype and y.shape == x.shape and mask.dtype == p.dtype
    assert not mask.requires_grad
    torch.testing.assert_close(mask.double(), mask64, rtol=0, atol=0)

    grad_y = torch.randn(shape, dtype=torch.float64).to(dtype).to(backend.device)
    y.backward(grad_y)
    g64 = grad_y.double()
    grad_x64 = g64 * broadcast(mask64, x64, channel_dim)
    grad_p64 = (g64 * x64).sum(positions(x, channel_dim)) if x.dim() > 2 else g64 * x64

    if dtype in (torch.float64, torch.float32):
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y.double(), y64, **tol)
        torch.testing.assert_close(x.grad.double(), grad_x64, **tol)
        torch.testing.assert_close(p.grad.double(), grad_p64, **tol)
    else:
        # Half types: at most twice the error of the same computation in pure PyTorch at that dtype.
        x_d, g_d, m_d = x.detach(), grad_y, mask64.to(dtype)
        torch_y = x_d * broadcast(m_d, x_d, channel_dim)
        torch_gx = g_d * broadcast(m_d, x_d, channel_dim)
        torch_gp = (g_d * x_d).sum(positions(x, channel_dim)) if x.dim() > 2 else g_d * x_d
        for ours, theirs, ref in [(y, torch_y, y64), (x.grad, torch_gx, grad_x64), (p.grad, torch_gp, grad_p64)]:
            assert max_error(ours, ref) <= 2 * max_error(theirs, ref) + 1e-12


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_keeps_the_memory_format_of_the_input(backend, layout):
    x = make_input((2, 16, 5, 5), layout, torch.float32, backend.device, 1)
    y, _ = backend.gate(x, torch.rand(2, 16, device=backend.device), True, None, None, 1)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
@pytest.mark.parametrize("shape,channel_dim", [((2, 5, 3, 3), 1), ((2, 4, 5), -1), ((3, 6), 1)])
def test_gradcheck_x(backend, hard, shape, channel_dim):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, device=backend.device, requires_grad=True)
    B, K = shape[0], shape[channel_dim]
    p = torch.rand(B, K, dtype=torch.float64, device=backend.device)
    noise = torch.rand(B, K, dtype=torch.float64, device=backend.device)
    assert torch.autograd.gradcheck(lambda t: backend.gate(t, p, hard, noise, None, channel_dim)[0], (x,))


def test_gradcheck_p_soft(backend):
    torch.manual_seed(2)
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64, device=backend.device)
    p = (0.1 + 0.8 * torch.rand(3, 4, dtype=torch.float64, device=backend.device)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: backend.gate(x, q, False, None, None, 1)[0], (p,))


def test_hard_grad_p_is_the_straight_through_formula(backend):
    # A numerical gradient of a step is zero, so gradcheck cannot judge the hard gate's grad_p: compare it
    # with the straight-through formula sum over positions of grad_y * x instead.
    torch.manual_seed(3)
    x = torch.randn(4, 6, 3, 3, dtype=torch.float64, device=backend.device)
    p = torch.rand(4, 6, dtype=torch.float64, device=backend.device, requires_grad=True)
    grad_y = torch.randn_like(x)
    y, mask = backend.gate(x, p, True, None, None, 1)
    (grad_p,) = torch.autograd.grad(y, p, grad_y)
    torch.testing.assert_close(grad_p, (grad_y * x).sum((2, 3)), rtol=1e-12, atol=1e-12)
    assert 0 < mask.sum() < mask.numel()  # the formula does not depend on the draw


def test_soft_mask_is_p(backend):
    p = torch.rand(3, 7, device=backend.device)
    _, mask = backend.gate(torch.randn(3, 7, 2, device=backend.device), p, False, None, None, 1)
    assert torch.equal(mask, p) and mask.data_ptr() != p.data_ptr()


def test_mixed_dtypes_as_under_autocast(backend):
    # Under autocast a bfloat16 feature map meets float32 probabilities: y keeps x's dtype, mask p's.
    x = torch.randn(2, 8, 4, 4, device=backend.device).to(torch.bfloat16)
    p = torch.rand(2, 8, device=backend.device)
    y, mask = backend.gate(x, p, True, None, None, 1)
    assert y.dtype == torch.bfloat16 and mask.dtype == torch.float32
    torch.testing.assert_close(y, x * mask.to(torch.bfloat16)[:, :, None, None], rtol=0, atol=0)


def test_public_function_under_autocast():
    layer = torch.nn.Conv2d(3, 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = layer(torch.randn(2, 3, 6, 6))
        y, mask = ops.bernoulli_gate(a, torch.rand(2, 8))
    assert y.dtype == a.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.weight.grad is not None


def test_public_function_keywords_and_defaults():
    x, p = torch.randn(2, 3, 4, 4), torch.rand(2, 3)
    noise = torch.rand(2, 3)
    y, mask = ops.bernoulli_gate(x, p, noise=noise)
    assert torch.equal(mask, (noise < p).float())
    tokens = torch.randn(2, 5, 3)
    y_tokens, _ = ops.bernoulli_gate(tokens, p, hard=False, channel_dim=-1)
    torch.testing.assert_close(y_tokens, tokens * p[:, None, :])

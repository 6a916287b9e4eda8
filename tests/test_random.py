"""Random draws: Philox known answers, identical draws on every backend for the same key, repeatability under
torch.manual_seed, fresh draws on each call, and mask frequencies within binomial bounds."""
import pytest
import torch

from picnn_ext import _ext, reference

needs_native_cpu = pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.missing_reason("cpu"))
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_python_philox_matches_known_answers(counter, key, expected):
    assert tuple(int(w) for w in reference.philox4x32_10(counter, key)) == expected


@pytest.mark.parametrize("seed,offset", [(0, 0), (123, 8), (2**40 + 7, 2**35 + 4), (2**63 - 1, 2**32)])
def test_every_backend_draws_the_same_uniforms_for_the_same_key(backend, seed, offset):
    like = torch.empty(7, 300, device=backend.device)
    u = backend.ops.philox_uniform(like, seed, offset)
    expected = reference.philox_uniform(like.cpu(), seed, offset)
    assert u.dtype == torch.float32 and torch.equal(u.cpu(), expected)
    if seed == 0 and offset == 0:  # element 0 is the first Philox word of counter 0, key 0
        assert u.flatten()[0].item() == (0x6627E8D5 >> 8) / 2**24


@pytest.mark.parametrize("offset", [2**63, 2**63 + 12, 2**64 - 4])
def test_offsets_of_2_to_the_63_and_more_give_the_unsigned_counter(backend, offset):
    """The ops carry the offset as int64 bits and shift it as an unsigned number (csrc/common/philox.h)."""
    seed, like = 2**40 + 3, torch.empty(3, 10, device=backend.device)
    step = offset >> 2  # Python ints: the unsigned shift
    expected = []
    for i in range(like.numel()):
        words = reference.philox4x32_10((step & 0xFFFFFFFF, step >> 32, i // 4, 0), (seed & 0xFFFFFFFF, seed >> 32))
        expected.append((int(words[i % 4]) >> 8) / 2**24)
    expected = torch.tensor(expected, dtype=torch.float32).reshape(like.shape)
    as_int64 = offset - 2**64
    assert torch.equal(backend.ops.philox_uniform(like, seed, as_int64).cpu(), expected)
    assert torch.equal(reference.philox_uniform(like.cpu(), seed, offset), expected)


def test_uniforms_are_uniform():
    u = reference.philox_uniform(torch.empty(1000, 1000), 42, 0).double()
    assert abs(u.mean().item() - 0.5) < 5 * (1 / 12 / u.numel()) ** 0.5
    assert abs(u.var().item() - 1 / 12) < 1e-3
    assert u.min() >= 0 and u.max() < 1
    histogram = torch.histc(u, bins=20, min=0, max=1)  # each bin within 5 sigma of its expectation
    expected = u.numel() / 20
    assert ((histogram - expected).abs() <= 5 * (expected * (1 - 1 / 20)) ** 0.5).all()


def test_manual_seed_repeats_and_successive_calls_differ(backend):
    p = torch.full((64, 128), 0.5, device=backend.device)
    x = torch.ones(64, 128, device=backend.device)
    torch.manual_seed(7)
    first, second = backend.gate(x, p)[1], backend.gate(x, p)[1]
    torch.manual_seed(7)
    again = backend.gate(x, p)[1]
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_explicit_generator_repeats_and_leaves_the_default_alone(backend):
    p = torch.full((32, 64), 0.3, device=backend.device)
    x = torch.ones(32, 64, device=backend.device)
    state = torch.random.get_rng_state() if backend.device.type == "cpu" else torch.cuda.get_rng_state()
    masks = []
    for _ in range(2):
        generator = torch.Generator(device=backend.device).manual_seed(11)
        masks.append(backend.gate(x, p, True, None, generator)[1])
    assert torch.equal(masks[0], masks[1])
    after = torch.random.get_rng_state() if backend.device.type == "cpu" else torch.cuda.get_rng_state()
    assert torch.equal(state, after)


@needs_native_cpu
@pytest.mark.parametrize("shape", [(50, 70), (301, 257)])  # a partial tail of lanes; several parallel blocks
def test_compiled_and_python_cpu_backends_draw_identical_masks(shape):
    p = torch.rand(*shape)
    x = torch.randn(*shape, 3)
    torch.manual_seed(5)
    native = torch.ops.picnn.bernoulli_gate(x, p, True, None, None, 1)[1]
    logits_native = torch.ops.picnn.sample_class(torch.randn(40, 9, generator=torch.Generator().manual_seed(0)),
                                                 None, None)[1]
    torch.manual_seed(5)
    python = torch.ops.picnn_py.bernoulli_gate(x, p, True, None, None, 1)[1]
    logits_python = torch.ops.picnn_py.sample_class(torch.randn(40, 9, generator=torch.Generator().manual_seed(0)),
                                                    None, None)[1]
    assert torch.equal(native, python)
    assert torch.equal(logits_native, logits_python)


# Each CUDA kernel that draws, in float32: (B, K) and channels last take the channels-last forward (its draw in
# shared memory, above 48 KiB for K = 14000) or, above 16K channels or without elements, the mask kernel; maps
# (B, K, S) the row groups of 32, 16, 8, 4, 2 and 1 lanes (S of 3136, 49, 20, 10, 6 and 2).
CUDA_DRAW_CASES = [((64, 96), 1, False), ((2, 2, 60000), -1, False), ((2, 3, 14000), -1, False),
                   ((64, 96, 7, 7), 1, False), ((33, 37, 2, 5), 1, False),
                   ((5, 21, 1, 2), 1, False), ((4, 8, 56, 56), 1, False), ((64, 96, 7, 7), 1, True),
                   ((4, 8, 5, 4), 1, False), ((4, 8, 1, 6), 1, False),
                   ((3, 197, 77), -1, False), ((2, 3, 16385), -1, False), ((3, 37, 0, 4), 1, False)]


@needs_cuda
@pytest.mark.parametrize("shape,channel_dim,channels_last", CUDA_DRAW_CASES)
def test_cuda_masks_equal_cpu_draws_for_the_same_seed_and_offset(shape, channel_dim, channels_last):
    seed, offset = 1234, 40
    B, K = shape[0], shape[channel_dim]
    p = torch.rand(B, K)
    x = torch.ones(shape, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    generator = torch.Generator(device="cuda")
    generator.manual_seed(seed)
    generator.set_offset(offset)
    y, mask = torch.ops.picnn.bernoulli_gate(x, p.cuda(), True, None, generator, channel_dim)
    u = torch.ops.picnn.philox_uniform(p, seed, offset)  # the compiled CPU kernel
    assert torch.equal(mask.cpu(), (u < p).float())
    view = (B, K) + (1,) * (len(shape) - 2) if channel_dim == 1 else (B,) + (1,) * (len(shape) - 2) + (K,)
    assert torch.equal(y.cpu(), mask.cpu().view(view).expand(shape))


@pytest.mark.parametrize("probability", [0.0, 0.02, 0.3, 0.5, 0.97, 1.0])
def test_mask_frequency_matches_p(backend, probability):
    torch.manual_seed(3)
    p = torch.full((200, 500), probability, device=backend.device)
    _, mask = backend.gate(torch.ones(200, 500, device=backend.device), p)
    n = mask.numel()
    ones = mask.sum().item()
    assert abs(ones - n * probability) <= 5 * (n * probability * (1 - probability)) ** 0.5 + 1e-9


def test_mask_frequency_follows_varying_p(backend):
    torch.manual_seed(4)
    p = torch.rand(300, 400, device=backend.device)
    _, mask = backend.gate(torch.ones(300, 400, device=backend.device), p)
    expected, variance = p.sum().item(), (p * (1 - p)).sum().item()
    assert abs(mask.sum().item() - expected) <= 5 * variance**0.5
    # And the draw follows p element by element: high-p entries are on far more often than low-p ones.
    assert mask[p > 0.9].mean() > 0.85 and mask[p < 0.1].mean() < 0.15


@needs_cuda
def test_gate_captured_in_a_cuda_graph_draws_fresh_masks_on_each_replay():
    # The Philox state is unpacked inside the kernel, so each replay advances the generator's offset.
    x = torch.ones(64, 96, device="cuda")
    p = torch.full((64, 96), 0.5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.picnn.bernoulli_gate(x, p, True, None, None, 1)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, mask = torch.ops.picnn.bernoulli_gate(x, p, True, None, None, 1)
    masks = []
    for _ in range(3):
        graph.replay()
        masks.append(mask.clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for m in masks:
        assert abs(m.mean().item() - 0.5) < 5 * (0.25 / m.numel()) ** 0.5


@needs_cuda
@pytest.mark.parametrize("shape,channel_dim,channels_last", [((64, 96, 7, 7), 1, False), ((64, 96, 7, 7), 1, True),
                                                             ((8, 197, 96), -1, False)])
def test_gate_replayed_from_a_cuda_graph_equals_eager(shape, channel_dim, channels_last):
    # A replay draws with the generator's (seed, offset) at replay time: its mask, output and gradients are those
    # of an eager call with that key.
    B, K = shape[0], shape[channel_dim]
    x = torch.randn(shape, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p, grad_y = torch.rand(B, K, device="cuda"), torch.randn_like(x)
    gate, backward = torch.ops.picnn.bernoulli_gate, torch.ops.picnn.bernoulli_gate_backward
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _, warm = gate(x, p, True, None, None, channel_dim)
        backward(grad_y, x, warm, channel_dim)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, mask = gate(x, p, True, None, None, channel_dim)
        grad_x, grad_p = backward(grad_y, x, mask, channel_dim)
    cuda_generator = torch.cuda.default_generators[torch.cuda.current_device()]
    for _ in range(2):
        seed, offset = cuda_generator.initial_seed(), cuda_generator.get_offset()
        graph.replay()
        torch.cuda.synchronize()
        eager_generator = torch.Generator(device="cuda")
        eager_generator.manual_seed(seed)
        eager_generator.set_offset(offset)
        y_eager, mask_eager = gate(x, p, True, None, eager_generator, channel_dim)
        grad_x_eager, grad_p_eager = backward(grad_y, x, mask_eager, channel_dim)
        assert torch.equal(mask, mask_eager) and torch.equal(y, y_eager)
        assert torch.equal(grad_x, grad_x_eager) and torch.equal(grad_p, grad_p_eager)  # deterministic sums
        assert torch.equal(mask.cpu(), (torch.ops.picnn.philox_uniform(p.cpu(), seed, offset) < p.cpu()).float())

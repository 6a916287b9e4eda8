"""Tests of PICNNHead: its pathways against a plain implementation of the authors' algorithm, the exact
probabilities of step 3, the loss, when the pathways run, torch.compile and CUDA graphs."""

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from picnn_ext import ops
from picnn_ext.nn import PICNNHead, PICNNNoise, picnn_loss, select_rows_st

CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------------
# The authors' algorithm, written plainly: masked copies of A, boolean selection of the positive samples,
# thresholded uniforms for the Bernoulli draws and an inverse CDF for the categorical one, with given noise.

def reference_picnn(head, A, targets, noise):
    """l1, l2, l3, sampled class, mask, loss of one PICNN step, with `head`'s parameters."""
    class_noise, filter_noise, complement_noise = noise
    C = head.num_classes
    channel_dim = head.channel_dim % A.dim()

    def classify(features):
        if head.pools:
            positions = [d for d in range(1, features.dim()) if d != channel_dim]
            features = features.mean(positions) if positions else features
        return head.classifier(features)

    def per_filter(mask):  # (B, K) viewed to broadcast against A
        shape = [1] * A.dim()
        shape[0], shape[channel_dim] = mask.shape
        return mask.view(shape)

    l1 = classify(A)
    pi = torch.softmax(l1, dim=1)
    c = (pi.cumsum(1) <= class_noise[:, None]).sum(1).clamp_max(C - 1)
    s = pi + (F.one_hot(c, C).to(pi.dtype) - pi).detach()
    P = torch.softmax(head.theta, dim=0)
    p = s @ P
    m = p + ((filter_noise < p).to(p.dtype) - p).detach()
    l2 = classify(A * per_filter(m))
    positive = c == targets
    loss = F.cross_entropy(l1, targets)
    if positive.any():
        loss = loss + head.lam * F.cross_entropy(l2[positive], targets[positive])
    with torch.no_grad():
        complement_mask = (complement_noise < P[targets]).to(A.dtype)
        l3 = classify(A * per_filter(1 - complement_mask))
    return dict(logits=l1, interp_logits=l2, complement_logits=l3, sampled_class=c, positive=positive,
                mask=(filter_noise < p).to(p.dtype), loss=loss)


class TokenMean(nn.Module):
    def forward(self, tokens):
        return tokens.mean(1)


def make_head(kind, K, C):
    """A head and its input shape, for each way of reading the features."""
    if kind == "map":  # default GAP + Linear on (B, K, H, W)
        return PICNNHead(K, C), (K, 3, 5)
    if kind == "pooled":  # default head on already pooled (B, K) features
        return PICNNHead(K, C), (K,)
    if kind == "tokens":  # default head on ViT-like tokens (B, N, K)
        return PICNNHead(K, C, channel_dim=-1), (7, K)
    if kind == "custom_map":  # a non-linear classifier of the whole map: the mask must gate the map
        classifier = nn.Sequential(nn.Conv2d(K, 6, 1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(6, C))
        return PICNNHead(K, C, classifier=classifier, lam=0.7), (K, 4, 3)
    if kind == "custom_tokens":
        classifier = nn.Sequential(nn.Linear(K, 6), nn.Tanh(), TokenMean(), nn.Linear(6, C))
        return PICNNHead(K, C, classifier=classifier, channel_dim=-1), (5, K)
    raise ValueError(kind)


def make_noise(B, K, generator, dtype=torch.float64):
    return PICNNNoise(torch.rand(B, generator=generator, dtype=dtype),
                      torch.rand(B, K, generator=generator, dtype=dtype),
                      torch.rand(B, K, generator=generator, dtype=dtype))


def mixed_targets(sampled_class, C, positive_every=2):
    """Targets that make every `positive_every`-th sample positive and the others negative."""
    index = torch.arange(sampled_class.shape[0])
    return torch.where(index % positive_every == 0, sampled_class, (sampled_class + 1) % C)


@pytest.mark.parametrize("kind", ["map", "pooled", "tokens", "custom_map", "custom_tokens"])
@pytest.mark.parametrize("positives", ["mixed", "none", "all"])
def test_gradients_equal_reference(kind, positives):
    B, K, C = 12, 10, 4
    generator = torch.Generator().manual_seed(7)
    head, shape = make_head(kind, K, C)
    head = head.double()
    with torch.no_grad():  # a theta far from uniform, so that the masks and P's rows differ across classes
        head.theta.copy_(2 * torch.randn(C, K, generator=generator, dtype=torch.float64))
    A = torch.randn(B, *shape, generator=generator, dtype=torch.float64).relu().requires_grad_()
    noise = make_noise(B, K, generator)
    sampled_class = head(A, pathways=True, noise=noise).sampled_class
    targets = {"mixed": mixed_targets(sampled_class, C), "none": (sampled_class + 1) % C,
               "all": sampled_class}[positives]

    out = head(A, targets, pathways=True, noise=noise)
    out.logits.retain_grad()
    ref = reference_picnn(head, A, targets, noise)
    ref["logits"].retain_grad()

    for name in ("sampled_class", "positive", "mask"):
        torch.testing.assert_close(getattr(out, name), ref[name], rtol=0, atol=0, msg=name)
    for name in ("logits", "interp_logits", "complement_logits", "loss"):
        torch.testing.assert_close(getattr(out, name), ref[name], rtol=1e-12, atol=1e-12, msg=name)
    assert out.complement_logits.grad_fn is None

    params = [head.theta, *head.classifier.parameters()]
    inputs = params + [A]
    grads = torch.autograd.grad(out.loss, inputs + [out.logits], allow_unused=True)
    ref_grads = torch.autograd.grad(ref["loss"], inputs + [ref["logits"]], allow_unused=True)
    names = ["theta"] + [f"classifier.{n}" for n, _ in head.classifier.named_parameters()] + ["features", "logits"]
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        if ref_grad is None:  # theta gets no gradient when no sample is positive
            assert positives == "none" and name == "theta"
            assert grad is None or torch.count_nonzero(grad) == 0
            continue
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12, msg=name)
    if positives != "none":
        assert torch.count_nonzero(grads[0]) > 0, "theta must learn from the positive samples"


def test_default_head_gates_pooled_features_only(monkeypatch):
    """With GAP + Linear no masked copy of the map is made; a custom classifier gets the gated map."""
    shapes = []
    real_gate = ops.bernoulli_gate

    def spy(x, p, **kwargs):
        shapes.append(tuple(x.shape))
        return real_gate(x, p, **kwargs)

    monkeypatch.setattr(ops, "bernoulli_gate", spy)
    A, targets = torch.randn(4, 6, 5, 5), torch.tensor([0, 1, 2, 0])
    PICNNHead(6, 3)(A, targets, pathways=True)
    assert shapes and all(shape == (4, 6) for shape in shapes)
    shapes.clear()
    head, _ = make_head("custom_map", 6, 3)
    head(A, targets, pathways=True)
    assert (4, 6, 5, 5) in shapes


# ----------------------------------------------------------------------------------------------------------
# Step 3: p = s @ P with the forward value P[c] exactly

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_select_rows_is_exact_and_has_the_gradient_of_the_product(dtype):
    generator = torch.Generator().manual_seed(0)
    B, C, K = 64, 100, 32
    theta = (8 * torch.randn(C, K, generator=generator, dtype=dtype)).requires_grad_()
    logits = torch.randn(B, C, generator=generator, dtype=dtype).requires_grad_()
    onehot, index = ops.sample_class(logits)
    P = torch.softmax(theta, dim=0)

    p = select_rows_st(onehot, P, index)
    assert p.dtype == dtype
    assert torch.equal(p, P.detach()[index])
    assert p.min() >= 0 and p.max() <= 1

    grad_p = torch.randn(B, K, generator=generator, dtype=dtype)
    got = torch.autograd.grad(p, [theta, logits], grad_p, retain_graph=True)
    expected = torch.autograd.grad(onehot @ P, [theta, logits], grad_p)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# Parameters, loss, and when the pathways run

def test_theta_initialisation():
    head = PICNNHead(16, 5)
    assert isinstance(head.theta, nn.Parameter) and head.theta.shape == (5, 16)
    # softmax over classes of uniform noise: positive, each filter's column sums to 1, not all equal
    assert (head.theta > 0).all()
    torch.testing.assert_close(head.theta.sum(0), torch.ones(16))
    assert head.theta.std() > 0
    torch.testing.assert_close(head.P, torch.softmax(head.theta, 0))
    torch.testing.assert_close(head.P.sum(0), torch.ones(16))


def test_loss_is_weighted_mean_over_positives():
    generator = torch.Generator().manual_seed(3)
    logits, interp_logits = torch.randn(6, 3, generator=generator), torch.randn(6, 3, generator=generator)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    positive = torch.tensor([True, False, True, False, False, True])
    expected = F.cross_entropy(logits, targets) + 2.0 * F.cross_entropy(interp_logits[positive], targets[positive])
    torch.testing.assert_close(picnn_loss(logits, interp_logits, targets, positive, 2.0), expected)
    none = torch.zeros(6, dtype=torch.bool)
    torch.testing.assert_close(picnn_loss(logits, interp_logits, targets, none, 2.0),
                               F.cross_entropy(logits, targets))
    # a non-finite interpretation loss of a negative sample must not reach the loss
    interp_logits[1] = float("nan")
    assert picnn_loss(logits, interp_logits, targets, positive, 2.0).isfinite()


def test_pathways_follow_the_mode(monkeypatch):
    head = PICNNHead(8, 3)
    A, targets = torch.randn(5, 8, 2, 2), torch.tensor([0, 1, 2, 0, 1])

    out = head.train()(A, targets)
    assert all(t is not None for t in (out.interp_logits, out.complement_logits, out.positive, out.mask, out.loss))
    assert out.mask.shape == (5, 8) and out.positive.dtype == torch.bool

    out = head.train()(A)  # no targets: no complement, no positive flag, no loss
    assert out.interp_logits is not None and out.mask is not None
    assert out.complement_logits is None and out.positive is None and out.loss is None

    out = head.eval()(A, pathways=True)
    assert out.interp_logits is not None and out.complement_logits is None
    out = head.eval()(A, targets, pathways=True)
    assert out.complement_logits is not None and out.loss is not None

    out = head.train()(A, targets, pathways=False)
    assert out.interp_logits is None and out.mask is None
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, targets))

    # In eval mode a plain call is the plain network: no sampling at all.
    def fail(*args, **kwargs):
        raise AssertionError("an eval call without pathways must not sample")

    monkeypatch.setattr(ops, "sample_class", fail)
    monkeypatch.setattr(ops, "bernoulli_gate", fail)
    out = head.eval()(A)
    torch.testing.assert_close(out.logits, head.classifier(A.mean((2, 3))))
    assert out.interp_logits is None and out.loss is None


def test_generator_makes_draws_repeatable():
    head = PICNNHead(32, 10)
    A, targets = torch.randn(16, 32, 3, 3), torch.randint(0, 10, (16,))
    first = head(A, targets, generator=torch.Generator().manual_seed(5))
    again = head(A, targets, generator=torch.Generator().manual_seed(5))
    other = head(A, targets, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first.mask, again.mask) and torch.equal(first.interp_logits, again.interp_logits)
    assert torch.equal(first.complement_logits, again.complement_logits)
    assert not torch.equal(first.mask, other.mask)


def test_autocast_bfloat16():
    head = PICNNHead(8, 4)
    A = torch.randn(6, 8, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(A, torch.tensor([0, 1, 2, 3, 0, 1]), pathways=True)
    assert out.logits.dtype == torch.bfloat16 and out.loss.isfinite()
    out.loss.backward()
    assert head.theta.grad is not None and head.theta.grad.isfinite().all() and A.grad.isfinite().all()


# ----------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): no graph break, hence no host synchronisation (.item(), boolean indexing)

def compiled_step_matches_eager(head, compiled, A, targets, noise):
    grads = []
    for module in (head, compiled):
        features = A.clone().requires_grad_()
        out = module(features, targets, noise=noise)
        out.loss.backward()
        grads.append((out, features.grad, head.theta.grad.clone(), head.classifier.weight.grad.clone()))
        head.zero_grad()
    (eager, *eager_grads), (comp, *comp_grads) = grads
    for name in ("logits", "interp_logits", "complement_logits", "mask", "positive", "loss"):
        torch.testing.assert_close(getattr(comp, name), getattr(eager, name), msg=name)
    for grad, ref in zip(comp_grads, eager_grads):
        torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(1)
    head = PICNNHead(16, 5).train()
    A, targets = torch.randn(8, 16, 4, 4, generator=generator), torch.randint(0, 5, (8,), generator=generator)
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    compiled_step_matches_eager(head, compiled, A, targets, make_noise(8, 16, generator, torch.float32))
    # the draws from the default generator compile too
    out = compiled(A, targets)
    out.loss.backward()


def test_step_graph_has_no_host_sync():
    """The traced forward and backward read no value back to the host and have no data-dependent shape.

    (fullgraph=True alone does not show it: dynamo traces .item() and boolean indexing without a break.)
    """
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    head = PICNNHead(16, 5).train()
    compiled = torch.compile(head, fullgraph=True, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    compiled(torch.randn(8, 16, 4, 4, requires_grad=True), torch.randint(0, 5, (8,))).loss.backward()
    assert len(graphs) == 2  # forward and backward
    nodes = [node for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]
    reads_back = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
                  "aten._assert_scalar.default"}
    assert not [node for node in nodes if str(node.target) in reads_back]
    assert not [node for node in nodes if free_unbacked_symbols(node.meta.get("val"))]


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(2)
    head = PICNNHead(16, 5).train()
    A, targets = torch.randn(8, 16, 4, 4, generator=generator), torch.randint(0, 5, (8,), generator=generator)
    compiled = torch.compile(head, fullgraph=True)
    compiled_step_matches_eager(head, compiled, A, targets, make_noise(8, 16, generator, torch.float32))


# ----------------------------------------------------------------------------------------------------------
# CUDA: no synchronisation, and a training step captured in a CUDA graph

@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_no_host_sync_on_cuda():
    head = PICNNHead(16, 5).cuda()
    A = torch.randn(8, 16, 4, 4, device="cuda", requires_grad=True)
    targets = torch.randint(0, 5, (8,), device="cuda")
    head(A, targets).loss.backward()  # warm up: first calls may synchronise while loading kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        head(A, targets).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_training_step_equals_eager():
    torch.manual_seed(0)
    B, K, C = 16, 32, 6
    head = PICNNHead(K, C).cuda()
    static_A = torch.randn(B, K, 4, 4, device="cuda", requires_grad=True)
    static_targets = torch.randint(0, C, (B,), device="cuda")
    static_noise = [torch.rand(B, device="cuda"), torch.rand(B, K, device="cuda"), torch.rand(B, K, device="cuda")]

    def step():
        out = head(static_A, static_targets, noise=static_noise)
        out.loss.backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            head.zero_grad(set_to_none=True)
            static_A.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    head.zero_grad(set_to_none=True)
    static_A.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    for trial in range(2):
        A = torch.randn(B, K, 4, 4, device="cuda")
        targets = torch.randint(0, C, (B,), device="cuda")
        noise = [torch.rand_like(n) for n in static_noise]
        with torch.no_grad():
            static_A.copy_(A)
            static_targets.copy_(targets)
            for static, new in zip(static_noise, noise):
                static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        replayed = [static_out.loss.clone(), static_out.interp_logits.clone(), static_out.mask.clone(),
                    head.theta.grad.clone(), head.classifier.weight.grad.clone(), static_A.grad.clone()]

        # eager, on copies of the parameters so that the graph's gradient buffers stay untouched
        eager_head = PICNNHead(K, C).cuda()
        eager_head.load_state_dict(head.state_dict())
        features = A.clone().requires_grad_()
        out = eager_head(features, targets, noise=noise)
        out.loss.backward()
        expected = [out.loss, out.interp_logits, out.mask, eager_head.theta.grad, eager_head.classifier.weight.grad,
                    features.grad]
        for got, want in zip(replayed, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_filters=0, num_classes=3), "num_filters must be an integer >= 1"),
    (dict(num_filters=4, num_classes=0), "num_classes must be an integer >= 1"),
    (dict(num_filters=4, num_classes=3, lam=-1.0), "lam must be >= 0"),
    (dict(num_filters=4, num_classes=3, channel_dim=2), "channel_dim must be 1"),
])
def test_head_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PICNNHead(**kwargs)

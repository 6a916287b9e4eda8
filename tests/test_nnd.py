"""NND (DESIGN.md section 5): the controller and its gates against a float64 pure-PyTorch reference, each loss
term against its formula, decouple() on conv stacks, ResNets (basic and bottleneck blocks) and VGG, the
skipping inference path against the dense one, and bad input (paths and training: test_nnd_training.py).

Networks built like torchvision's run everywhere; torchvision's own run where torchvision imports."""
import math

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from picnn_ext.models import SmallConvNet, decouple
from picnn_ext.nn import ArchitectureController, NNDLoss
from picnn_ext.nn.nnd_loss import alignment_loss, information_loss, sparsity_loss


def reference_logits(controller, x):
    """z = W2 relu(W1 GAP(x) + b1) + b2, in float64."""
    u = x.double().mean(dim=(2, 3))
    W1, b1 = controller.fc1.weight.double(), controller.fc1.bias.double()
    W2, b2 = controller.fc2.weight.double(), controller.fc2.bias.double()
    return (u @ W1.T + b1).relu() @ W2.T + b2


def perturbed(controller, seed=0, scale=0.5):
    """Move the controller off its input-independent start, so the gates depend on the input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controller.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return controller


# --------------------------------------------------------------------------------------------------------
# The controller


def test_controller_starts_as_the_authors_do():
    torch.manual_seed(0)
    controller = ArchitectureController(6, 20, reduction=4)
    assert controller.fc1.weight.shape == (5, 6) and controller.fc2.weight.shape == (20, 5)
    assert torch.equal(controller.fc1.weight, torch.zeros(5, 6))
    assert torch.equal(controller.fc1.bias, torch.ones(5)) and torch.equal(controller.fc2.bias, torch.ones(20))
    # Kaiming normal, fan_in = 5: std sqrt(2 / 5) (a loose check over 100 weights)
    assert 0.3 < controller.fc2.weight.std().item() < 1.0
    # At the start the gate does not depend on the input.
    x = torch.randn(3, 6, 4, 4)
    z = controller.logits(x)
    assert torch.allclose(z, z[:1].expand(3, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_controller_logits_match_the_reference(dtype):
    controller = perturbed(ArchitectureController(5, 12, reduction=3)).to(dtype)
    x = torch.randn(4, 5, 6, 7, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(controller.logits(x).double(), reference_logits(controller, x), atol=tol, rtol=tol)


def test_training_gate_and_its_gradients_match_the_reference():
    controller = perturbed(ArchitectureController(5, 8)).double().train()
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    out = torch.randn(4, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    noise = torch.rand(4, 8, dtype=torch.float64)
    weights = torch.randn(4, 8, dtype=torch.float64)
    grad_map = torch.randn(4, 8, 6, 6, dtype=torch.float64)

    gated, gate = controller.gate_output(x, out, noise=noise)
    ((gated * grad_map).sum() + (gate * weights).sum()).backward()
    got = [out.grad.clone()] + [parameter.grad.clone() for parameter in controller.parameters()]

    # Reference: mask = noise < p, gate = p + sg(mask - p), the map multiplied by the gate.
    controller.zero_grad()
    out.grad = None
    p = torch.sigmoid(reference_logits(controller, x))
    mask = (noise < p).double()
    gate_ref = p + (mask - p).detach()
    torch.testing.assert_close(gate.detach(), mask)
    torch.testing.assert_close(gated.detach(), out.detach() * mask[:, :, None, None])
    ((out * gate_ref[:, :, None, None] * grad_map).sum() + (gate_ref * weights).sum()).backward()
    expected = [out.grad] + [parameter.grad for parameter in controller.parameters()]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert controller.fc1.weight.grad.abs().sum() > 0  # W1 = 0 at the start still learns


def test_training_gates_repeat_by_seed_and_have_mean_p():
    controller = perturbed(ArchitectureController(3, 16), scale=0.3).train()
    x = torch.randn(2, 3, 4, 4).repeat(2000, 1, 1, 1)
    first = controller(x, generator=torch.Generator().manual_seed(5))
    again = controller(x, generator=torch.Generator().manual_seed(5))
    other = controller(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(controller.logits(x[:2])).detach()
    freq = first.detach().view(2000, 2, 16).mean(dim=0)
    # 2000 draws: the standard error is at most 0.011
    assert (freq - p).abs().max() < 0.05


def test_inference_gates_are_deterministic_thresholds():
    controller = perturbed(ArchitectureController(4, 32), scale=1.0).eval()
    x = torch.randn(8, 4, 5, 5)
    state = torch.get_rng_state()
    gate = controller(x)
    gated, gate2 = controller.gate_output(x, torch.ones(8, 32, 2, 2))
    assert torch.equal(torch.get_rng_state(), state)  # no draw
    expected = (reference_logits(controller, x) > 0).float()
    assert torch.equal(gate, expected) and torch.equal(gate2, expected)
    assert 0 < expected.mean() < 1  # both open and closed gates are exercised
    assert torch.equal(gated, expected[:, :, None, None].expand(8, 32, 2, 2))


# --------------------------------------------------------------------------------------------------------
# The losses


def test_sparsity_loss_is_the_distance_of_the_mean_l1_to_tau_k():
    gates = [torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 0]]), torch.tensor([[1.0, 1], [1, 1]])]
    # layer 1: mean L1 = 2, tau K = 0.5 * 4; layer 2: mean L1 = 2, tau K = 1
    assert sparsity_loss(gates, 0.5).item() == pytest.approx(abs(2 - 2) + abs(2 - 1))
    assert sparsity_loss(gates, 0.0).item() == pytest.approx(4.0)
    soft = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: sparsity_loss([g], 0.3), (soft,))


def test_information_loss_is_the_ce_of_a_bias_free_classifier_per_layer():
    torch.manual_seed(0)
    gates = [torch.randint(0, 2, (6, 4)).double(), torch.randint(0, 2, (6, 3)).double()]
    targets = torch.randint(0, 5, (6,))
    classifiers = [nn.Linear(4, 5, bias=False).double(), nn.Linear(3, 5, bias=False).double()]
    expected = 0.0
    for gate, classifier in zip(gates, classifiers):
        log_q = torch.log_softmax(gate @ classifier.weight.T, dim=1)
        expected += -log_q[torch.arange(6), targets].mean()
    torch.testing.assert_close(information_loss(gates, targets, classifiers), expected)


def test_alignment_loss_is_the_kl_of_the_softmaxes():
    a = [torch.randn(4, 6, dtype=torch.float64, requires_grad=True)]
    g = [torch.rand(4, 6, dtype=torch.float64, requires_grad=True)]
    P, Q = torch.softmax(a[0], 1), torch.softmax(g[0], 1)
    expected = (P * (P.log() - Q.log())).sum(dim=1).mean()
    torch.testing.assert_close(alignment_loss(a, g), expected)
    assert torch.autograd.gradcheck(lambda x, y: alignment_loss([x], [y]), (a[0], g[0]))
    assert alignment_loss([a[0]], [a[0]]).item() == pytest.approx(0.0, abs=1e-12)


def test_nnd_loss_weighs_its_terms():
    torch.manual_seed(0)
    criterion = NNDLoss([4, 3], 5, lambda_s=0.1, tau=0.25, lambda_m=0.2, lambda_k=0.3)
    gates = [torch.randint(0, 2, (6, 4)).float(), torch.randint(0, 2, (6, 3)).float()]
    pooled = [torch.randn(6, 4), torch.randn(6, 3)]
    logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
    parts = criterion(logits, gates, pooled, targets)
    torch.testing.assert_close(parts.task, F.cross_entropy(logits, targets))
    torch.testing.assert_close(parts.sparsity, sparsity_loss(gates, 0.25))
    torch.testing.assert_close(parts.information, information_loss(gates, targets, criterion.info_classifiers))
    torch.testing.assert_close(parts.alignment, alignment_loss(pooled, gates))
    torch.testing.assert_close(parts.total, parts.task + 0.1 * parts.sparsity + 0.2 * parts.information
                               + 0.3 * parts.alignment)
    with pytest.raises(ValueError, match=r"gates\[1\] must be \(B, 3\)"):
        criterion(logits, [gates[0], torch.zeros(6, 4)], pooled, targets)


# --------------------------------------------------------------------------------------------------------
# Networks built like torchvision's


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)


class Bottleneck(BasicBlock):
    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, stride)
        width = cout // 2
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)


class TinyResNet(nn.Module):
    """torchvision.models.ResNet's attribute names, a few channels wide (the forward is decouple's own)."""

    def __init__(self, block, num_classes=7):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        widths = [8, 16, 16, 24]
        cin = 8
        for i, width in enumerate(widths, start=1):
            setattr(self, f"layer{i}", nn.Sequential(block(cin, width, 1 if i == 1 else 2), block(width, width)))
            cin = width
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)


class TinyVGG(nn.Module):
    def __init__(self, num_classes=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(48, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, num_classes))


def randomise(net, seed=0):
    """Running statistics and controllers away from their start, so that some gates close."""
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
        if isinstance(module, ArchitectureController):
            perturbed(module, seed=int(torch.randint(1 << 30, (1,), generator=generator)), scale=1.0)
    return net.eval()


NETWORKS = {
    "small_cnn": (lambda: decouple(SmallConvNet(3, width=8, stages=3), 5), 6, 5),
    "resnet_basic": (lambda: decouple(TinyResNet(BasicBlock)), 1 + 8, 7),
    "resnet_bottleneck": (lambda: decouple(TinyResNet(Bottleneck)), 1 + 16, 7),
    "vgg": (lambda: decouple(TinyVGG()), 2, 6),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_decoupled_networks_gate_every_conv_and_train(name):
    build, layers, classes = NETWORKS[name]
    torch.manual_seed(0)
    net = build()
    assert len(net.gated_layers) == layers == len(net.widths)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, classes, (4,))
    out = net(images, targets, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (4, classes)
    assert [gate.shape for gate in out.gates] == [(4, width) for width in net.widths]
    assert [a.shape for a in out.pooled] == [(4, width) for width in net.widths]
    assert out.features.shape[:2] == (4, net.widths[-1])
    out.loss.backward()
    for unit, info in zip(net.gated_layers, net.criterion.info_classifiers):
        assert unit.controller.fc2.weight.grad.abs().sum() > 0
        assert info.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", NETWORKS)
def test_skipping_path_equals_the_dense_gated_network(name, batch):
    torch.manual_seed(1)
    net = randomise(NETWORKS[name][0]())
    images = torch.randn(batch, 3, 32, 32)
    dense = net(images)
    logits, gates, (computed, total) = net.forward_skip(images, count_macs=True)
    torch.testing.assert_close(logits, dense.logits, atol=1e-5, rtol=1e-5)
    for gate, dense_gate in zip(gates, dense.gates):
        assert torch.equal(gate, dense_gate)
    share_open = torch.cat(gates, dim=1).mean()
    assert 0.1 < share_open < 0.9  # not vacuous: filters are skipped, and computed
    assert computed < total


def test_skipping_path_counts_all_macs_when_every_gate_is_open():
    torch.manual_seed(0)
    net = decouple(SmallConvNet(1, width=4, stages=2), 3).eval()  # the start: z = W2 1 + 1
    for unit in net.gated_layers:
        nn.init.constant_(unit.controller.fc2.bias, 10.0)
    _, _, (computed, total) = net.forward_skip(torch.randn(2, 1, 8, 8), count_macs=True)
    # 8x8 maps then 4x4: 1*4, 4*4 at 64 positions; 4*8, 8*8 at 16 positions; 3x3 kernels; batch 2
    assert computed == total == 2 * 9 * (64 * (4 + 16) + 16 * (32 + 64))


def test_decouple_leaves_the_model_unchanged_and_forward_skip_needs_eval():
    backbone = SmallConvNet(1, width=4, stages=1)
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    net = decouple(backbone, 3)
    assert all(torch.equal(before[key], value) for key, value in backbone.state_dict().items())
    assert not any(isinstance(module, ArchitectureController) for module in backbone.modules())
    with pytest.raises(RuntimeError, match="eval"):
        net.train().forward_skip(torch.randn(1, 1, 8, 8))


# --------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call, error, message", [
    (lambda: ArchitectureController(0, 4), ValueError, "in_channels"),
    (lambda: ArchitectureController(3, 4.0), ValueError, "out_channels"),
    (lambda: ArchitectureController(3, 4, reduction=0), ValueError, "reduction"),
    (lambda: ArchitectureController(3, 4)(torch.randn(2, 5, 4, 4)), ValueError, "layer_input has 5 channels"),
    (lambda: ArchitectureController(3, 4).gate_output(torch.randn(2, 3, 4, 4), torch.randn(2, 6, 4, 4)),
     ValueError, "layer_output"),
    (lambda: decouple(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 2), ValueError, "no conv layer to gate"),
    (lambda: decouple(nn.Linear(4, 2)), TypeError, "cannot find the conv layers of Linear"),
    (lambda: decouple(SmallConvNet(1, 4, 1)), ValueError, "num_classes is required"),
    (lambda: decouple(SmallConvNet(1, 4, 1), 0), ValueError, "num_classes must be a positive int"),
    (lambda: decouple(TinyResNet(BasicBlock, num_classes=7), 5), ValueError, "num_classes = 5"),
    (lambda: NNDLoss([], 3), ValueError, "widths"),
    (lambda: NNDLoss([4], 3, tau=-1), ValueError, "tau"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_wrong_image_channels_are_refused_with_the_counts():
    net = decouple(SmallConvNet(3, width=4, stages=1), 2).eval()
    with pytest.raises(RuntimeError, match="3 channels"):  # the conv refuses first, with torch's message
        net(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="layer_input has 1 channels on dim 1, expected in_channels = 3"):
        net.forward_skip(torch.randn(2, 1, 8, 8))


# --------------------------------------------------------------------------------------------------------
# torchvision's own networks, where torchvision imports


def import_torchvision():
    try:
        import torchvision.models
    except Exception as error:  # noqa: BLE001 - an ImportError, or torchvision's ops failing to load
        reason = f"torchvision does not import here ({type(error).__name__}: {str(error)[:120]})"
        if os.environ.get("PICNN_EXT_REQUIRE_TORCHVISION") == "1":  # CI's torch 2.14.1 environment
            pytest.fail(f"PICNN_EXT_REQUIRE_TORCHVISION=1 but {reason}")
        pytest.skip(reason)
    return torchvision.models


@pytest.mark.parametrize("name, layers", [("resnet18", 1 + 8), ("resnet50", 1 + 32), ("vgg11_bn", 8)])
def test_torchvision_networks_decouple_and_skip(name, layers):
    models = import_torchvision()
    torch.manual_seed(0)
    net = randomise(decouple(getattr(models, name)(num_classes=10)))
    assert len(net.gated_layers) == layers
    images = torch.randn(2, 3, 64, 64)
    dense = net(images)
    logits, gates, (computed, total) = net.forward_skip(images, count_macs=True)
    torch.testing.assert_close(logits, dense.logits, atol=1e-5, rtol=1e-5)
    assert computed < total
    out = net.train()(images, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    assert math.isfinite(out.loss.item())

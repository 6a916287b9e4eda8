"""NND's skipping inference path (picnn_ext/models/skip.py): the kept weights follow the parameters, the plain
network it is measured against is the network without gates, and channels_last gives the same logits.
(The skipping path against the dense gated network: test_nnd.py.)"""
import copy

import pytest
import torch
from torch import nn

from picnn_ext.models.decouple import skip_layout
from picnn_ext.models.gated import GatedConv
from picnn_ext.models.skip import Compact, PatternCache
from test_nnd import NETWORKS, randomise


def fixed_gates(net, share=0.5, seed=0):
    """Every gated layer opens the same filters for every input (W1 = 0, b1 = 1, W2 = 0, b2 = +-1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for unit in net.gated_layers:
            controller = unit.controller
            opened = torch.randperm(unit.out_channels, generator=generator)[:max(1, round(share * unit.out_channels))]
            controller.fc1.weight.zero_()
            controller.fc1.bias.fill_(1.0)
            controller.fc2.weight.zero_()
            controller.fc2.bias.fill_(-1.0)
            controller.fc2.bias[opened] = 1.0
    return net


def without_gates(net):
    """The reference of forward_plain: every GatedConv back to conv -> bn -> act, run by the modules' own
    forward (batch norm not folded)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GatedConv):
                setattr(module, name, nn.Sequential(child.conv, child.bn, child.act))
    return lambda images: net.classifier(net.body(images))


@pytest.mark.parametrize("name", NETWORKS)
def test_skip_follows_a_change_of_the_parameters_and_statistics(name):
    torch.manual_seed(2)
    net = randomise(NETWORKS[name][0]())
    images = torch.randn(3, 3, 32, 32)
    net.forward_skip(images)  # the caches fill
    with torch.no_grad():  # as an optimizer step and a BN update would: in place
        for tensor in [*net.parameters(), *(b for b in net.buffers() if b.is_floating_point())]:
            tensor.mul_(1.25).add_(0.05)
    torch.testing.assert_close(net.forward_skip(images), net(images).logits, atol=1e-5, rtol=1e-5)


def test_skip_follows_a_change_of_dtype():
    torch.manual_seed(3)
    net = randomise(NETWORKS["resnet_bottleneck"][0]())
    images = torch.randn(2, 3, 32, 32)
    net.forward_skip(images)
    net = net.double()
    logits = net.forward_skip(images.double())
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, net(images.double()).logits, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", NETWORKS)
def test_plain_is_the_network_without_its_gates(name):
    torch.manual_seed(4)
    net = randomise(NETWORKS[name][0]())
    images = torch.randn(2, 3, 32, 32)
    plain, plain_macs = net.forward_plain(images, count_macs=True)
    _, gates, (computed, dense) = net.forward_skip(images, count_macs=True)
    assert plain_macs == dense > computed
    reference = without_gates(copy.deepcopy(net))(images)
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-5)
    # and it is the skipping path with every gate open
    fixed_gates(net, share=1.0)
    torch.testing.assert_close(net.forward_skip(images), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="eval"):
        net.train().forward_plain(images)


@pytest.mark.parametrize("name", NETWORKS)
def test_every_layout_gives_the_same_logits(name):
    """The images as given in either layout, and the paths told to run in either (the default: channels_last
    on the CPU), give the dense gated network's logits, skipping and plain alike."""
    torch.manual_seed(5)
    net = fixed_gates(randomise(NETWORKS[name][0]()), share=0.5)
    images = torch.randn(4, 3, 32, 32)
    expected = net(images).logits
    for given in (images, images.contiguous(memory_format=torch.channels_last)):
        for memory_format in (None, torch.contiguous_format, torch.channels_last, torch.preserve_format):
            torch.testing.assert_close(net.forward_skip(given, memory_format=memory_format), expected, atol=1e-5,
                                       rtol=1e-5)
    plain = net.forward_plain(images, memory_format=torch.contiguous_format)
    torch.testing.assert_close(net.forward_plain(images), plain, atol=1e-5, rtol=1e-5)


def test_the_default_layout_is_channels_last_on_the_cpu_and_a_bad_one_is_named():
    images = torch.randn(2, 3, 8, 8)
    assert skip_layout(images, None, "op").is_contiguous(memory_format=torch.channels_last)
    assert skip_layout(images, torch.contiguous_format, "op").is_contiguous()
    tokens = torch.randn(2, 3, 8)  # not an image: left as it is
    assert skip_layout(tokens, None, "op") is tokens
    net = randomise(NETWORKS["resnet_basic"][0]())
    with pytest.raises(ValueError, match="forward_skip: memory_format must be None, torch.contiguous_format"):
        net.forward_skip(images, memory_format=torch.channels_last_3d)
    with pytest.raises(ValueError, match="forward_plain: memory_format must be"):
        net.forward_plain(images, memory_format="channels_last")


def test_compact_dense_keeps_channels_last():
    values = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    dense = Compact(values, torch.tensor([0, 4, 2]), 6).dense()
    assert dense.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(dense[:, [0, 4, 2]], values) and not dense[:, [1, 3, 5]].any()


def test_a_pattern_is_gathered_once_and_a_new_one_added():
    torch.manual_seed(6)
    net = fixed_gates(randomise(NETWORKS["resnet_bottleneck"][0]()), share=0.5)
    images = torch.randn(2, 3, 32, 32)
    net.forward_skip(images)
    kept = [dict(unit.folded.cache._entries) for unit in net.gated_layers]
    net.forward_skip(torch.randn(2, 3, 32, 32))  # another input, the same (fixed) gates
    for unit, before in zip(net.gated_layers, kept):
        after = unit.folded.cache._entries
        assert after.keys() == before.keys() and all(after[key] is before[key] for key in before)
    fixed_gates(net, share=0.5, seed=1)  # other filters open: one more pattern, the folded weight kept
    expected = net(images).logits
    torch.testing.assert_close(net.forward_skip(images), expected, atol=1e-5, rtol=1e-5)
    unit = net.gated_layers[0]
    assert len(unit.folded.cache) == len(kept[0]) + 1


def test_pattern_cache_is_bounded_and_drops_everything_when_a_source_changes():
    source = torch.ones(3)
    builds = []
    cache = PatternCache(size=2)

    def build(key):
        builds.append(key)
        return source * key

    for key in (1, 2, 1, 3, 2):  # 1 and 2 kept; 3 drops the least recently used (2), which comes back
        cache.get((source,), key, lambda: build(key))
    assert builds == [1, 2, 3, 2] and len(cache) == 2
    source.add_(1)  # an in-place change of the source
    assert torch.equal(cache.get((source,), 2, lambda: build(2)), torch.full((3,), 4.0))
    assert builds[-1] == 2 and len(cache) == 1


def test_the_speed_benchmark_runs_and_checks_its_paths(tmp_path):
    """benchmarks/nnd_speed.py on torchvision's ResNet-18 at a small size: it checks skip against the dense
    gated network and plain before timing, and writes one row per case (the timings themselves are not
    asserted: speed is shown by the benchmark, not by a test)."""
    import json
    import os
    import sys

    from test_nnd import import_torchvision

    import_torchvision()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
    import nnd_speed

    out = tmp_path / "speed.json"
    nnd_speed.main(["--models", "resnet18", "--batches", "1", "2", "--threads", "1", "--shares", "1", "0.5",
                    "--size", "64", "--rounds", "1", "--profile", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["batch"], r["share"]) for r in rows] == [(1, 1.0), (1, 0.5), (2, 1.0), (2, 0.5)]
    assert all(r["plain_ms"] > 0 and r["skip_ms"] > 0 for r in rows)
    assert rows[0]["mac_ratio"] == 1.0 and rows[1]["mac_ratio"] > 1.5
    # the per-layer profile: every gated layer and block of the skipping path and of plain, convs within totals
    profile = result["profiles"]["resnet18"]
    names = [layer["name"] for layer in profile["layers"]]
    assert names[0] == "conv1" and "layer4.1.unit1" in names and len(names) == 17
    assert [layer["name"] for layer in profile["plain"]["layers"]] == names
    for layers in (profile["layers"], profile["plain"]["layers"]):
        assert all(0 < layer["conv_ms"] <= layer["total_ms"] for layer in layers)


def test_pattern_cache_is_bounded_in_bytes_and_keeps_the_newest():
    source = torch.ones(1)
    cache = PatternCache(size=64, max_bytes=3 * 400)
    for key in range(5):  # 400 bytes each: three fit
        cache.get((source,), key, lambda: torch.zeros(100))
    assert list(cache._entries) == [2, 3, 4] and cache._bytes == 1200
    big = cache.get((source,), "big", lambda: (torch.zeros(1000), torch.zeros(10)))  # over the budget alone
    assert list(cache._entries) == ["big"] and cache._bytes == 4040 and big[0].numel() == 1000

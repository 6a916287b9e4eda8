"""The filter atlas (picnn-ext atlas) and top-k purity.

The page test renders a small real run's atlas in headless Chromium, as a person would open it: every image
must load (non-zero natural size) and the page must have one section per class. Chromium is Debian's
``chromium`` package; where it is missing the test is skipped with the reason, and CI (which installs it)
sets PICNN_EXT_REQUIRE_CHROMIUM=1 to turn that skip into a failure.
"""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from picnn_ext.metrics.purity import UNASSIGNED, StreamingTopK, purity_summary, topk_purity


def _class_filter_responses(num_images, num_classes, num_filters, seed):
    """A constructed network's pooled responses: filter k answers (strongly) to class k mod C only."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (num_images,), generator=generator)
    classes = torch.arange(num_filters) % num_classes
    responses = (labels[:, None] == classes[None, :]).double() + 0.3 * torch.rand(num_images, num_filters,
                                                                                   generator=generator, dtype=torch.float64)
    return responses, labels, classes


def _stream(responses, k, batch):
    top = StreamingTopK(responses.shape[1], k)
    for start in range(0, len(responses), batch):
        chunk = responses[start:start + batch]
        top.update(chunk, torch.arange(start, start + len(chunk)))
    return top


def test_streaming_topk_matches_topk_over_the_whole_split():
    responses, _, _ = _class_filter_responses(500, 5, 12, seed=0)
    top = _stream(responses, k=7, batch=33)
    expected = torch.topk(responses.T, 7, dim=1)
    assert torch.equal(top.indices, expected.indices)
    assert torch.equal(top.scores, expected.values)


def test_purity_is_one_for_class_filters_and_near_chance_when_shuffled():
    num_classes, num_filters, k = 5, 500, 8
    responses, labels, classes = _class_filter_responses(2000, num_classes, num_filters, seed=1)
    top_labels = labels.numpy()[_stream(responses, k, batch=128).indices.numpy()]
    purity = topk_purity(top_labels, classes.numpy())
    assert np.all(purity == 1.0)
    shuffled = np.random.default_rng(0).permutation(classes.numpy())
    mean = purity_summary(topk_purity(top_labels, shuffled), num_classes, k)["mean"]
    # 500 filters: the mean of share-of-a-match per filter has a spread of about 0.02 around 1/C = 0.2.
    assert abs(mean - 1.0 / num_classes) < 0.06, mean


def test_unassigned_filters_are_left_out_of_the_mean():
    purity = topk_purity(np.array([[0, 0], [1, 0], [2, 2]]), np.array([0, 1, UNASSIGNED]))
    assert purity[0] == 1.0 and purity[1] == 0.5 and np.isnan(purity[2])
    figures = purity_summary(purity, 3, 2)
    assert figures["mean"] == 0.75 and figures["unassigned"] == 1 and sum(figures["histogram"]["counts"]) == 2


def test_bad_k_is_refused_by_name():
    with pytest.raises(ValueError, match="k must be"):
        StreamingTopK(3, 0)


# --------------------------------------------------------------------------------------------------------
# The page, in a browser

PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter(function (i) { return !i.complete || i.naturalWidth === 0 || i.naturalHeight === 0; })
                  .map(function (i) { return i.getAttribute('src'); }),
    classes: document.querySelectorAll('section.class[id^="class-"]').length,
    scripts: document.querySelectorAll('script[src], link[rel="stylesheet"]').length
  });
  document.body.appendChild(out);
});
</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--virtual-time-budget=5000", "--run-all-compositor-stages-before-draw"]


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "headless Chromium not installed (apt-get install -y chromium)"
        if os.environ.get("PICNN_EXT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"PICNN_EXT_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return path


def test_atlas_page_of_a_real_run_loads_every_image_in_chromium(tmp_path):
    chromium = _chromium()
    from PIL import Image

    from picnn_ext.report.atlas import write_atlas
    from picnn_ext.train import TrainConfig, train

    run_dir = train(TrainConfig(method="csg", dataset="digits", epochs=2, batch_size=64, width=8, num_filters=12,
                                csg_warmup=1, csg_period=1, out_dir=str(tmp_path), quiet=True))
    index, figures = write_atlas(run_dir, top=4, quiet=True)
    atlas_dir = os.path.dirname(index)
    with open(index, encoding="utf-8") as handle:
        page = handle.read()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline, no JS needed
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(atlas_dir) for name in names)
    assert size < 3_000_000, size
    # A test-only wrapper next to the page (same relative paths) reads the images' natural sizes into the DOM.
    probe = os.path.join(atlas_dir, "probe.html")
    with open(probe, "w", encoding="utf-8") as handle:
        handle.write(page.replace("</body>", PROBE + "</body>"))
    profile = str(tmp_path / "profile")
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                          f"file://{probe}"], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == 12 * 4 and result["broken"] == [], result
    assert result["classes"] == 10 and result["scripts"] == 0, result
    screenshot = tmp_path / "atlas.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600",
                    f"--screenshot={screenshot}", f"file://{index}"], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 10  # drawn, not a blank page
    if os.environ.get("PICNN_EXT_ATLAS_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["PICNN_EXT_ATLAS_SCREENSHOT"])
    assert 0.0 <= figures["mean"] <= 1.0 and figures["chance"] == 0.1


def test_atlas_of_a_torchvision_model_on_an_image_folder(tmp_path):
    """A torchvision backbone on an image folder: the atlas shows the images in their colours (ImageNet
    normalisation undone), so a red class's tiles stay red where the filter's map is weak."""
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # torchvision does not import with the CPU torch 2.13 of .venv
        if os.environ.get("PICNN_EXT_REQUIRE_TORCHVISION") == "1":
            pytest.fail(f"PICNN_EXT_REQUIRE_TORCHVISION=1 but torchvision does not import: {error}")
        pytest.skip(f"torchvision does not import: {error}")
    from PIL import Image

    from picnn_ext.report.atlas import write_atlas
    from picnn_ext.train import TrainConfig, train

    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
    for label, colour in enumerate(colours):
        os.makedirs(tmp_path / "images" / f"c{label}")
        for index in range(12):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "images" / f"c{label}" / f"{index}.png")
    run_dir = train(TrainConfig(method="picnn", dataset=f"folder:{tmp_path / 'images'}", backbone="resnet18",
                                epochs=1, batch_size=8, num_filters=6, out_dir=str(tmp_path / "runs"), quiet=True))
    index, figures = write_atlas(run_dir, top=2, quiet=True)
    atlas = json.load(open(os.path.join(os.path.dirname(index), "atlas.json")))
    assert len(atlas["filter_purity"]) == 6 and figures["chance"] == pytest.approx(1 / 3)
    # The tiles start from the images in their own colours, not from ImageNet-normalised values.
    from picnn_ext.data import load_dataset
    from picnn_ext.report.atlas import display_pixels

    splits = load_dataset(f"folder:{tmp_path / 'images'}")
    images, labels = zip(*(splits.test[i] for i in range(len(splits.test))))
    shown = display_pixels(torch.stack(images), splits) * 255
    expected = torch.tensor([colours[int(label)] for label in labels], dtype=torch.float32)[:, :, None, None]
    assert torch.allclose(shown, expected.expand_as(shown), atol=1.0)


def test_report_writes_the_atlas_stores_purity_and_the_pages_link_each_other(tmp_path):
    from picnn_ext.report import write_report
    from picnn_ext.train import TrainConfig, load_summary, train

    run_dir = train(TrainConfig(method="picnn", dataset="digits", epochs=1, batch_size=64, width=8, num_filters=10,
                                out_dir=str(tmp_path), quiet=True))
    report = write_report(run_dir, num_images=2)
    atlas = json.load(open(os.path.join(run_dir, "atlas", "atlas.json")))
    summary = load_summary(run_dir)
    assert summary["test"]["topk_purity"] == atlas["purity"]["mean"] == summary["topk_purity"]["mean"]
    assert "](../atlas/index.html)" in open(report, encoding="utf-8").read()
    page = open(os.path.join(run_dir, "atlas", "index.html"), encoding="utf-8").read()
    back = re.search(r'<a href="([^"]+)">Back to the report', page).group(1)
    assert os.path.normpath(os.path.join(run_dir, "atlas", back)) == os.path.normpath(report)

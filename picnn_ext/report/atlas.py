"""The filter atlas: per class, its filters and each filter's strongest images of a split, in one offline page.

    picnn-ext atlas RUN_DIR [--split test] [--top 8] [--out-dir RUN_DIR/atlas]

A filter is assigned to the class with the largest P in its column (PICNN), the largest G (CSG; a filter
whose column of G is all closed serves no class) or, for STD and NND's interpreted layer, which have no such
matrix, the largest mutual information with a class. Its top-k images are those with the largest pooled
response (the sum of its map over positions, the X of the MIS), found in one streaming pass over the split.
The page is plain HTML with relative image paths: no script, no stylesheet from the network.
"""
from __future__ import annotations

import html
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..metrics.mutual_information import mutual_information_matrix
from ..metrics.purity import UNASSIGNED, StreamingTopK, purity_summary, topk_purity
from ..run_folder import Run, atomic_write_json, atomic_write_text
from ..train.config import TrainConfig
from ..train.methods import create_method

__all__ = ["load_run", "assign_filters", "write_atlas", "atlas_purity"]

SPLITS = ("train", "val", "test")
TILE = 96  # pixels of a shown image, whatever its size in the data


def load_run(run_dir: str, split: str, splits=None):
    """The one place the atlas reads a run: (model, method, summary, dataset split, DatasetSplits)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    run = Run(run_dir)
    summary = run.summary()
    model, splits = run.load_model(splits)
    method = create_method(TrainConfig.from_dict(summary["config"]))
    return model, method, summary, getattr(splits, split), splits


def assign_filters(method_name: str, matrix: Optional[Tuple[str, torch.Tensor]], mi: np.ndarray):
    """(assigned (K,), value (K,) or None, source): each filter's class and its P or G there.

    STD's P is its untrained random start, so STD (like NND, which has no matrix) is assigned by MI."""
    if matrix is None or method_name == "std":
        return mi.argmax(axis=0), None, "MI", "the class with the largest mutual information"
    symbol, values = matrix[0], matrix[1].float().numpy()
    assigned = values.argmax(axis=0)
    if symbol == "G":
        # A filter whose gates are closed for every class serves none.
        assigned = np.where(values.max(axis=0) > 0, assigned, UNASSIGNED)
    return assigned, values, symbol, f"the class with the largest {symbol} in the filter's column"


@torch.no_grad()
def _stream(model, method, dataset, k: int, batch_size: int, quiet: bool):
    """One pass: the running top-k of each filter's pooled response, and the pooled responses (N, K) for
    the MI (K numbers per image; the maps themselves are never kept)."""
    from tqdm import tqdm

    top, pooled, labels, start = None, [], [], 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for images, targets in tqdm(loader, desc="atlas: top-k", disable=quiet, unit="batch"):
        A = method.features(model, images)
        if A.dim() != 4:
            raise ValueError(f"the atlas needs (B, K, H, W) maps of the interpreted layer, got {tuple(A.shape)}")
        X = A.float().sum(dim=(2, 3))
        if top is None:
            top = StreamingTopK(X.shape[1], k)
        top.update(X, torch.arange(start, start + len(X)))
        start += len(X)
        pooled.append(X)
        labels.append(torch.as_tensor(targets))
    if top is None:
        raise ValueError("the split is empty")
    return top, torch.cat(pooled), torch.cat(labels)


def _tiles(model, method, dataset, splits, top: StreamingTopK, out_dir: str) -> Dict[Tuple[int, int], str]:
    """Draw each filter's top images with its map over them; returns {(filter, rank): relative path}."""
    from matplotlib import colormaps
    from PIL import Image

    colormap = colormaps["jet"]
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    paths = {}
    for filter_index in range(top.indices.shape[0]):
        chosen = top.indices[filter_index].tolist()
        images = torch.stack([torch.as_tensor(dataset[i][0]) for i in chosen])
        with torch.no_grad():
            maps = method.features(model, images)[:, filter_index:filter_index + 1].float()
        maps = F.interpolate(maps, size=(TILE, TILE), mode="bilinear", align_corners=False)[:, 0].numpy()
        # One scale per filter, so that its images compare; negative responses shown as none.
        maps = np.clip(maps, 0, None) / max(float(maps.max()), 1e-12)
        raw = display_pixels(images, splits)
        raw = F.interpolate(raw, size=(TILE, TILE), mode="nearest" if raw.shape[-1] < TILE else "area")
        for rank in range(len(chosen)):
            pixels = raw[rank].permute(1, 2, 0).numpy()
            if pixels.shape[2] == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            heat = colormap(maps[rank])[..., :3]
            alpha = 0.55 * maps[rank][..., None]
            blended = (1 - alpha) * pixels + alpha * heat
            name = f"images/f{filter_index:04d}_{rank}.png"
            Image.fromarray((blended * 255).round().astype(np.uint8)).save(os.path.join(out_dir, name),
                                                                           optimize=True)
            paths[filter_index, rank] = name
    return paths


def display_pixels(images: torch.Tensor, splits) -> torch.Tensor:
    """The images as shown, in their original colours: the data's normalisation undone, in [0, 1]."""
    return splits.to_raw(images).clamp(0, 1)


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:80em}h2{border-bottom:1px solid #999}
.filter{margin:0.8em 0}.filter p{margin:0.2em 0}.tiles{display:flex;flex-wrap:wrap;gap:4px}
figure{margin:0;text-align:center;font-size:80%}figure img{display:block;image-rendering:pixelated}
.hit{color:#070}.miss{color:#b00}"""


def _filter_block(f, assigned, values, symbol, mi, purity, top, labels, tiles, names) -> str:
    c = int(assigned[f])
    facts = []
    if values is not None:
        facts.append(f"{symbol} = {values[c, f]:.3f}" if c != UNASSIGNED else f"largest {symbol} = {values[:, f].max():.3f}")
    best = c if c != UNASSIGNED else int(mi[:, f].argmax())
    facts.append(f"MI with {html.escape(names[best])} = {mi[best, f]:.4f} nats")
    if c != UNASSIGNED:
        facts.append(f"top-{top.indices.shape[1]} purity {purity[f]:.2f}")
    figures = []
    for rank, index in enumerate(top.indices[f].tolist()):
        label = int(labels[index])
        mark = "hit" if label == c else "miss"
        figures.append(f'<figure><img src="{tiles[f, rank]}" width="{TILE}" height="{TILE}" alt="filter {f}, '
                       f'image {index}"><figcaption class="{mark}">{html.escape(names[label])}</figcaption></figure>')
    return (f'<div class="filter" id="filter-{f}"><p><b>filter {f}</b>: {"; ".join(facts)}</p>'
            f'<div class="tiles">{"".join(figures)}</div></div>')


def write_atlas(run_dir: str, out_dir: Optional[str] = None, *, split: str = "test", top: int = 8,
                batch_size: int = 256, report_dir: Optional[str] = None, quiet: bool = False, splits=None):
    """Write ``index.html`` and its images into ``out_dir`` (default ``RUN_DIR/atlas``); returns
    (path of index.html, purity summary)."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    model, method, summary, dataset, splits = load_run(run_dir, split, splits)
    out_dir = out_dir or os.path.join(run_dir, "atlas")
    os.makedirs(out_dir, exist_ok=True)
    names = list(summary.get("class_names") or splits.class_names)
    streamed, pooled, labels = _stream(model, method, dataset, min(top, len(dataset)), batch_size, quiet)
    mi = mutual_information_matrix(pooled, labels, num_classes=len(names)).numpy()
    assigned, values, symbol, rule = assign_filters(summary["method"], method.filter_class_matrix(model), mi)
    top_labels = labels.numpy()[streamed.indices.numpy()]
    purity = topk_purity(top_labels, assigned)
    figures = purity_summary(purity, len(names), streamed.k)
    tiles = _tiles(model, method, dataset, splits, streamed, out_dir)

    # Order within a class: by the filter's score, P or G where the method has it, MI otherwise.
    score = values if values is not None else mi
    sections = []
    for c in [*range(len(names)), UNASSIGNED]:
        members = np.flatnonzero(assigned == c)
        if c == UNASSIGNED and not len(members):
            continue
        key = (lambda f: -score[:, f].max()) if c == UNASSIGNED else (lambda f: -score[c, f])
        blocks = "".join(_filter_block(f, assigned, values, symbol, mi, purity, streamed, labels, tiles, names)
                         for f in sorted(members, key=key))
        title = "filters serving no class" if c == UNASSIGNED else f"class {html.escape(names[c])}"
        mean = np.nanmean(purity[members]) if len(members) and c != UNASSIGNED else None
        head = f"{len(members)} filter(s)" + (f", mean purity {mean:.2f}" if mean is not None else "")
        section_id = "unassigned" if c == UNASSIGNED else f"class-{c}"
        sections.append(f'<section class="class" id="{section_id}"><h2>{title}</h2><p>{head}</p>'
                        f'{blocks or "<p>no filter assigned</p>"}</section>')
    report_dir = report_dir or os.path.join(run_dir, "report")
    back = os.path.relpath(os.path.join(report_dir, "report.md"), out_dir)
    counts = ", ".join(str(n) for n in figures["histogram"]["counts"])
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Filter atlas: {html.escape(os.path.basename(os.path.normpath(run_dir)))}</title>
<style>{STYLE}</style></head><body>
<h1>Filter atlas: {html.escape(os.path.basename(os.path.normpath(run_dir)))}</h1>
<p>Method <b>{summary['method'].upper()}</b>, data set <code>{html.escape(summary['dataset'])}</code>, the
{split} split ({len(dataset)} images). <a href="{html.escape(back)}">Back to the report</a>.</p>
<p>Each filter is assigned to {rule}. Its top {streamed.k} images are those with the largest pooled response
(the sum of its map over positions); over each image, the filter's map (one colour scale per filter). Captions:
the true label, green when it is the filter's class.</p>
<p>Top-{streamed.k} purity (share of a filter's top images of its class): mean <b>{figures['mean']:.3f}</b>
over {figures['filters']} assigned filters; by chance about 1/C = {figures['chance']:.3f}. Histogram over
[0, 1] in tenths: {counts}.</p>
{"".join(sections)}
</body></html>
"""
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(text, path)
    atomic_write_json({"split": split, "assigned_by": symbol, "purity": figures,
                            "filter_purity": [None if np.isnan(p) else float(p) for p in purity]},
                           os.path.join(out_dir, "atlas.json"))
    return path, figures


def atlas_purity(run_dir: str) -> Dict[str, float]:
    """compare-methods' column: the run's atlas written, its mean top-k purity on the test split."""
    _, figures = write_atlas(run_dir, quiet=True)
    return {"topk_purity": figures["mean"]}


def add_atlas_to_run(run_dir: str, report_dir: str, splits=None) -> str:
    """For ``picnn-ext report``: the atlas of the test split written to RUN_DIR/atlas, its purity stored in
    ``summary.json`` (``test.topk_purity`` the mean, ``topk_purity`` the distribution); returns the markdown
    line that links the report to the page."""
    path, figures = write_atlas(run_dir, report_dir=report_dir, quiet=True, splits=splits)
    run = Run(run_dir)
    summary = run.summary()
    summary["test"]["topk_purity"] = figures["mean"]
    summary["topk_purity"] = figures
    run.write_summary(summary)
    link = os.path.relpath(path, report_dir)
    return (f"## Filter atlas\n\nEach class's filters and their top-{figures['k']} test images: [{link}]({link}). "
            f"Mean top-{figures['k']} purity {figures['mean']:.3f} over {figures['filters']} filters (chance about "
            f"1/C = {figures['chance']:.3f}); quartiles {_quartiles(figures)}.\n")


def _quartiles(figures) -> str:
    return ", ".join(f"{q:.2f}" for q in figures["quartiles"]) if figures["quartiles"] else "none"

"""The chosen classifier as one ONNX graph (uint8 images in, class probabilities out), checked against torch on
the test split, and its model card."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import torch
from torch import nn

from transferlab.core.atomic import atomic_path
from transferlab.inference import backends
from transferlab.inference.batches import ImageList, outputs
from transferlab.inference.transforms import evaluation
from transferlab.models import backbones
from transferlab.models.backbones import Backbone
from transferlab.models.preprocessing import Preprocessing

# Largest difference allowed between the graph's and torch's probability of any class on any test image.
TOLERANCE = 1e-4


def probabilities_module(net: nn.Module, plain: Preprocessing) -> nn.Module:
    """uint8 images (N, 3, H, W) → class probabilities: normalisation, the network, softmax in one module."""
    return nn.Sequential(backbones.Normalized(net, plain.mean, plain.std, scale=255), nn.Softmax(dim=1)).eval()


def check(module: nn.Module, graph: backends.Forward, images: ImageList, classes: int,
          batch_size: int) -> dict[str, Any]:
    """Run torch and the graph on the same batches; raise ValueError unless every top-1 agrees and every
    probability is within TOLERANCE. Returns the figures and the graph's test predictions."""
    reference = backends.torch_forward(module, torch.device("cpu"))
    n = len(images.labels)
    both = outputs(lambda x: np.hstack([reference(x), graph(x)]), images, 2 * classes, "check export", batch_size)
    ours, theirs = both[:, :classes], both[:, classes:]
    differ = int((ours.argmax(1) != theirs.argmax(1)).sum())
    largest = float(np.abs(ours - theirs).max())
    if differ or not largest <= TOLERANCE:
        raise ValueError(f"export: the ONNX graph disagrees with torch on the test split ({differ} of {n} top-1 "
                         f"differ, largest probability difference {largest:.2e} > {TOLERANCE:g}); nothing written")
    return {"images": n, "top1_differences": differ, "max_probability_difference": largest, "tolerance": TOLERANCE,
            "predicted": theirs.argmax(1)}


def export(net: nn.Module, plain: Preprocessing, labels: list[str], root: Path, test: pd.DataFrame, path: Path,
           batch_size: int = 32) -> dict[str, Any]:
    """The classifier `net` (its preprocessing `plain`, its class names `labels`) as one ONNX graph at `path`,
    written only once it agrees with torch on the test images (`check`); returns the check's figures, its
    provider and test accuracy, and the graph's size."""
    module = probabilities_module(net, plain)
    images = ImageList(root, test, labels, evaluation(plain, normalize=False), plain.resize)
    with atomic_path(path) as tmp:
        backends.export_onnx(module, plain.crop, tmp, output_name="probabilities")
        graph, provider = backends.onnx_forward(tmp)
        checked = check(module, graph, images, len(labels), batch_size)
    predicted = checked.pop("predicted")
    return {**checked, "provider": provider,
            "test_accuracy": round(float((predicted == np.asarray(images.labels)).mean()), 6),
            "onnx_bytes": path.stat().st_size}


def _markdown_text(value: Any) -> Any:
    """A value as Markdown text: HTML's &, < and > escaped (class names and paths are data, never markup)."""
    if isinstance(value, str):
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value


def model_card(template: Path, summary: dict[str, Any], metrics: dict[str, dict[str, Any]], dataset: dict[str, Any],
               splits: dict[str, Any], backbone: Backbone, record: dict[str, Any]) -> str:
    """The model card (Markdown) from the run's own records."""
    train = splits["train"]["per_class"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template.parent), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, finalize=_markdown_text)
    return env.get_template(template.name).render(
        summary=summary, metrics=metrics, chosen=metrics[summary["method"]], dataset=dataset, splits=splits,
        backbone=backbone, plain=record,
        fewest=sorted(train.items(), key=lambda kv: (kv[1], kv[0]))[:5], names={"probe": "frozen features + linear head",
                                                                              "finetune": "fine-tuned network"})

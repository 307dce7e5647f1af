"""Pretrained backbones, whatever their family (families.py): weights from a download or a local checkpoint, the
preprocessing record, the classifier split off so the penultimate features remain, and the unfreeze groups."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferlab.core.errors import ParamsError, check_classes
from transferlab.core.fetch import file_digest
from transferlab.core.project import resolve
from transferlab.models import families
from transferlab.models.preprocessing import Preprocessing


def _family(model_params: dict[str, Any]) -> tuple[Any, str]:
    families.check_backbone("model.backbone", model_params["backbone"])
    prefix, name = families.owner(model_params["backbone"])
    return families.load(prefix), name


def preprocessing(model_params: dict[str, Any]) -> Preprocessing:
    """The weights' own eval preprocessing, at model.image_size where set (same resize ratio)."""
    family, name = _family(model_params)
    return family.preprocessing(name, model_params["weights"]).at(model_params["image_size"])


def class_names(model_params: dict[str, Any]) -> list[str] | None:
    """The pretraining classifier's class names (ImageNet's, mostly); None for a backbone trained without one."""
    family, name = _family(model_params)
    return family.class_names(name, model_params["weights"])


def check_visualized_classes(params: dict[str, Any]) -> None:
    """Without the fine-tune, visualize addresses the pretrained classifier: the classes its params name are
    checked against that classifier's at the inputs stage, before any work (with it: `split.check_class_names`)."""
    visualize = params["visualize"]
    names = class_names(params["model"])
    if names is None:
        raise ParamsError(f"params: visualize.enabled: {params['model']['backbone']} was pretrained without a "
                          f"classifier, so without the fine-tune there is no class to visualise; set "
                          f"finetune.enabled: true, or visualize.enabled: false")
    check_classes(visualize, ["target_class", "adversarial_to"], names, "the ImageNet classifier (finetune.enabled: false)")


def load_classifier(model_params: dict[str, Any], seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The full pretrained model in eval mode, and where its weights came from."""
    family, name = _family(model_params)
    checkpoint = model_params["checkpoint"]
    info: dict[str, Any] = {"backbone": model_params["backbone"], "weights": model_params["weights"],
                            "checkpoint": checkpoint, "checkpoint_sha256": None}
    torch.manual_seed(seed)
    model = family.build(name, model_params["weights"], resolve(checkpoint) if checkpoint else None,
                         model_params["image_size"])
    if checkpoint:
        info["checkpoint_sha256"] = file_digest(resolve(checkpoint))
    return model, info


def load_feature_extractor(model_params: dict[str, Any]) -> tuple[nn.Module, int, dict[str, Any]]:
    """Frozen backbone without its classifier, its feature size, and provenance."""
    model, info = load_classifier(model_params)
    model, dim = _family(model_params)[0].split(model)
    model.requires_grad_(False)
    info["feature_dim"] = dim
    return model, dim, info


def architecture(model_params: dict[str, Any]) -> tuple[nn.Module, int]:
    """The backbone's architecture without its classifier, random weights (to load a saved fine-tune into)."""
    model, _ = load_classifier({**model_params, "weights": "none", "checkpoint": None})
    return _family(model_params)[0].split(model)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The unfreeze groups of a backbone without its classifier, from input to output (its family says which)."""
    return families.of_model(model).groups(model)


def check_unfreeze(model: nn.Module, unfreeze: int | str, backbone: str) -> None:
    """Refuse (before any work) a `finetune.unfreeze` larger than the backbone's number of blocks."""
    n = len(blocks(model))
    if unfreeze != "all" and unfreeze > n:
        raise ParamsError(f"params: finetune.unfreeze: {unfreeze} is more than the {n} blocks of {backbone}; "
                          f"give 0 to {n}, or all")


class Normalized(nn.Module):
    """A network taking pixels (in [0, 1], or uint8 with scale=255): normalises with the weights' mean/std first.

    Extraction feeds uint8 batches, so the cast and normalisation run inside the engine (one fused pass per batch)
    rather than per image while decoding.
    """

    def __init__(self, model: nn.Module, mean: list[float], std: list[float], scale: float = 1.0):
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels.float() - self.mean) / self.std)

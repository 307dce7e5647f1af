"""Pretrained backbones, whatever their family (families.py): weights from a download or a local checkpoint, the
preprocessing record, the classifier split off so the penultimate features remain, and the unfreeze groups."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from transferlab.core.errors import ParamsError, check_classes
from transferlab.core.fetch import file_digest
from transferlab.core.project import resolve
from transferlab.models import families
from transferlab.models.preprocessing import Preprocessing
from transferlab.settings.sections import Model, Params


@dataclass(frozen=True)
class Backbone:
    """A backbone resolved once from model.*: its name (as model.backbone gives it), weights, checkpoint (as given,
    relative to the project; None = the weights' download), crop size, and the weights' preprocessing at that
    size. Made by `resolved`, passed on to every function that builds or feeds the network."""

    name: str
    weights: str
    checkpoint: str | None
    image_size: int | None
    preprocessing: Preprocessing

    @property
    def family(self) -> ModuleType:
        """The family module that builds it (families.py)."""
        return families.load(families.owner(self.name)[0])

    @property
    def own_name(self) -> str:
        """The name within its family (timm/convnext_atto → convnext_atto)."""
        return families.owner(self.name)[1]

    def record(self) -> dict[str, Any]:
        """The model.* keys it was resolved from (what records of its outputs name)."""
        return {"backbone": self.name, "weights": self.weights, "checkpoint": self.checkpoint,
                "image_size": self.image_size}

    def untrained(self) -> Backbone:
        """The same architecture with random weights (to load a saved fine-tune into)."""
        return dataclasses.replace(self, weights="none", checkpoint=None)


def resolved(model: Model) -> Backbone:
    """The backbone model.* names, checked against its family, with its preprocessing."""
    families.check_backbone("model.backbone", model.backbone)
    prefix, name = families.owner(model.backbone)
    plain = families.load(prefix).preprocessing(name, model.weights).at(model.image_size)
    return Backbone(model.backbone, model.weights, model.checkpoint, model.image_size, plain)


def class_names(backbone: Backbone) -> list[str] | None:
    """The pretraining classifier's class names (ImageNet's, mostly); None for a backbone trained without one."""
    return backbone.family.class_names(backbone.own_name, backbone.weights)


def check_visualized_classes(params: Params) -> None:
    """Without the fine-tune, visualize addresses the pretrained classifier: the classes its params name are
    checked against that classifier's at the inputs stage, before any work (with it: `split.check_class_names`)."""
    names = class_names(resolved(params.model))
    if names is None:
        raise ParamsError(f"params: visualize.enabled: {params.model.backbone} was pretrained without a "
                          f"classifier, so without the fine-tune there is no class to visualise; set "
                          f"finetune.enabled: true, or visualize.enabled: false")
    visualize = params.visualize
    check_classes({"target_class": visualize.target_class, "adversarial_to": visualize.adversarial_to}, names,
                  "the ImageNet classifier (finetune.enabled: false)")


def load_classifier(backbone: Backbone, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The full pretrained model in eval mode, and where its weights came from."""
    checkpoint = backbone.checkpoint
    info: dict[str, Any] = {"backbone": backbone.name, "weights": backbone.weights,
                            "checkpoint": checkpoint, "checkpoint_sha256": None}
    torch.manual_seed(seed)
    model = backbone.family.build(backbone.own_name, backbone.weights, resolve(checkpoint) if checkpoint else None,
                                  backbone.image_size)
    if checkpoint:
        info["checkpoint_sha256"] = file_digest(resolve(checkpoint))
    return model, info


def load_feature_extractor(backbone: Backbone) -> tuple[nn.Module, int, dict[str, Any]]:
    """Frozen backbone without its classifier, its feature size, and provenance."""
    model, info = load_classifier(backbone)
    model, dim = backbone.family.split(model)
    model.requires_grad_(False)
    info["feature_dim"] = dim
    return model, dim, info


def architecture(backbone: Backbone) -> tuple[nn.Module, int]:
    """The backbone's architecture without its classifier, random weights (to load a saved fine-tune into)."""
    model, _ = load_classifier(backbone.untrained())
    return backbone.family.split(model)


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

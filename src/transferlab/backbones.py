"""Pretrained torchvision backbones: loading weights (download or local checkpoint), preprocessing, and
splitting the ImageNet classifier off so the penultimate features remain."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.transforms._presets import ImageClassification

from .errors import UserError
from .fetch import file_digest
from .layout import resolve
from .params import ParamsError


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached, downloadable nor given as a checkpoint."""


def weights_enum(backbone: str, weights: str) -> models.WeightsEnum | None:
    """The torchvision weights member named in params, or None for random init ('none')."""
    if weights.lower() == "none":
        return None
    enum = models.get_model_weights(backbone)
    return enum.DEFAULT if weights == "DEFAULT" else enum[weights]


def _reference_weights(backbone: str, weights: str) -> models.WeightsEnum:
    """The member whose preprocessing and class names apply (the default one for random init)."""
    return weights_enum(backbone, weights) or models.get_model_weights(backbone).DEFAULT


def preprocessing(model_params: dict[str, Any]) -> ImageClassification:
    """The weights' own eval preprocessing, optionally at another crop size (same resize ratio)."""
    member = _reference_weights(model_params["backbone"], model_params["weights"])
    kwargs = dict(member.transforms.keywords)
    own = ImageClassification(**kwargs)  # resize_size is often left at ImageClassification's default (256)
    size = model_params["image_size"]
    if size:
        kwargs.update(crop_size=size, resize_size=round(size * own.resize_size[0] / own.crop_size[0]))
        return ImageClassification(**kwargs)
    return own


def class_names(model_params: dict[str, Any]) -> list[str]:
    """ImageNet (or whatever the weights were trained on) class names."""
    return list(_reference_weights(model_params["backbone"], model_params["weights"]).meta["categories"])


def _cache_hint(member: models.WeightsEnum) -> str:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return (f"place {Path(member.url).name} (from {member.url}) in {hub}/, or set model.checkpoint to a local "
            f"state_dict for this architecture")


def load_classifier(model_params: dict[str, Any], seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The full pretrained classifier in eval mode, and where its weights came from."""
    name, weights, checkpoint = model_params["backbone"], model_params["weights"], model_params["checkpoint"]
    member = weights_enum(name, weights)
    info: dict[str, Any] = {"backbone": name, "weights": weights, "checkpoint": checkpoint, "checkpoint_sha256": None}
    torch.manual_seed(seed)
    if checkpoint:
        model = models.get_model(name, weights=None)
        load_state(model, resolve(checkpoint), f"model.checkpoint: {checkpoint}",
                   "save one with torch.save(model.state_dict(), path)")
        info["checkpoint_sha256"] = file_digest(resolve(checkpoint))
    elif member is None:
        model = models.get_model(name, weights=None)
    else:
        try:
            model = models.get_model(name, weights=member)
        except (OSError, RuntimeError) as exc:
            raise WeightsUnavailable(f"model.weights: cannot load {name} {member}: {exc}. {_cache_hint(member)}") from None
    return model.eval(), info


def load_state(model: nn.Module, path: Path, what: str, fix: str) -> nn.Module:
    """Load a state_dict file into `model` (weights_only: no code runs); a file that is no state_dict, holds
    non-finite numbers or does not fit the architecture is a UserError: one line starting with `what`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, UnicodeDecodeError... for a damaged file
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise UserError(f"{what}: not a readable torch file ({type(exc).__name__}: {reason}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: holds a {type(state).__name__}, not a state_dict; {fix}")
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(f"{what}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]}); {fix}")
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise UserError(f"{what}: does not fit {type(model).__name__} ({len(missing)} weights missing, "
                        f"{len(unexpected)} unexpected, {len(shapes)} of another shape; first: "
                        f"{(missing + unexpected + shapes)[0]}); {fix}")
    model.load_state_dict(state)
    return model


def last_linear(model: nn.Module) -> str:
    """Dotted name of the final nn.Linear: the ImageNet classification layer in every torchvision family."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(f"{type(model).__name__} has no linear classifier to remove (unsupported architecture)")
    return names[-1]


def split_classifier(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """Replace the classification layer by Identity (in place); return (feature extractor, removed layer)."""
    name = last_linear(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linear = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return model, linear


def load_feature_extractor(model_params: dict[str, Any]) -> tuple[nn.Module, int, dict[str, Any]]:
    """Frozen backbone without its classifier, its feature size, and provenance."""
    model, info = load_classifier(model_params)
    model, linear = split_classifier(model)
    for p in model.parameters():
        p.requires_grad_(False)
    info["feature_dim"] = linear.in_features
    return model, linear.in_features, info


def blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output, the unit of `finetune.unfreeze`.

    ResNet/ResNeXt/Wide-ResNet/RegNet: stem, then each stage (layer1..layer4 / trunk_output stages).
    Models with a `features` Sequential (VGG, AlexNet, MobileNet, EfficientNet, MNASNet, DenseNet, ConvNeXt):
    its children, VGG/AlexNet conv layers grouped up to each max-pool. Hidden layers left in the classifier
    after removing the last Linear (VGG's 4096-d layers, MobileNetV3's 1280-d layer) form the last block.
    Anything else: the model's top-level children.
    """
    if hasattr(model, "layer4"):
        stem = [m for n, m in model.named_children() if n in ("conv1", "bn1", "relu", "maxpool")]
        found: list[nn.Module] = [nn.ModuleList(stem)] + [getattr(model, f"layer{i}") for i in range(1, 5)]
    elif hasattr(model, "trunk_output"):
        found = [model.stem, *model.trunk_output.children()]
    elif isinstance(getattr(model, "features", None), nn.Sequential):
        children = list(model.features.children())
        if any(isinstance(c, nn.MaxPool2d) for c in children):
            found, group = [], []
            for child in children:
                group.append(child)
                if isinstance(child, nn.MaxPool2d):
                    found.append(nn.ModuleList(group))
                    group = []
            if group:
                found.append(nn.ModuleList(group))
        else:
            found = children
    else:
        return [m for m in model.children() if _has_parameters(m)]
    rest = [m for n, m in model.named_children()
            if n not in ("features", "conv1", "bn1", "relu", "maxpool", "stem", "trunk_output")
            and not n.startswith("layer") and _has_parameters(m)]
    return found + rest


def check_unfreeze(model: nn.Module, unfreeze: int | str, backbone: str) -> None:
    """Refuse (before any work) a `finetune.unfreeze` larger than the backbone's number of blocks."""
    n = len(blocks(model))
    if unfreeze != "all" and unfreeze > n:
        raise ParamsError(f"params: finetune.unfreeze: {unfreeze} is more than the {n} blocks of {backbone}; "
                          f"give 0 to {n}, or all")


def _has_parameters(module: nn.Module) -> bool:
    return any(p.numel() for p in module.parameters())


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

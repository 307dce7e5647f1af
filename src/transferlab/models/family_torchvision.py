"""The torchvision family: `model.backbone: <torchvision classification model>` (resnet50, mobilenet_v2, vit_b_16…)
with `model.weights` a member of its weights enum (DEFAULT, or none for random init).

The weights' own eval transform gives the preprocessing, their `meta["categories"]` the class names; the final
Linear is the classifier; LAYOUTS below says, per architecture class, how its modules form the unfreeze groups.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn
from torchvision import models

from transferlab.models.preprocessing import Preprocessing

STEM = ("conv1", "bn1", "relu", "maxpool")


def _stem_and_layers(model: nn.Module) -> list[nn.Module]:
    """ResNet, ResNeXt, Wide ResNet: the stem, then layer1..layer4."""
    return [nn.ModuleList(getattr(model, n) for n in STEM), *(getattr(model, f"layer{i}") for i in range(1, 5))]


def _stem_and_trunk(model: nn.Module) -> list[nn.Module]:
    """RegNet: the stem, then each stage of trunk_output."""
    return [model.stem, *model.trunk_output.children()]


def _features(model: nn.Module) -> list[nn.Module]:
    """The children of `features` (MobileNet, EfficientNet, DenseNet, ConvNeXt, Swin)."""
    return list(model.features.children())


def _features_by_pool(model: nn.Module) -> list[nn.Module]:
    """VGG, AlexNet: `features` cut after each max-pool."""
    found, group = [], []
    for child in model.features.children():
        group.append(child)
        if isinstance(child, nn.MaxPool2d):
            found.append(nn.ModuleList(group))
            group = []
    return found + ([nn.ModuleList(group)] if group else [])


def _transformer(model: nn.Module) -> list[nn.Module]:
    """ViT: the patch projection (the class token and position embedding train only with unfreeze: all), each
    encoder layer, the final LayerNorm with the last."""
    layers = list(model.encoder.layers.children())
    return [model.conv_proj, *layers[:-1], nn.ModuleList([layers[-1], model.encoder.ln])]


def _children(model: nn.Module) -> list[nn.Module]:
    """The model's top-level children with weights (GoogLeNet, Inception, MNASNet, ShuffleNet, MaxViT)."""
    return [m for m in model.children() if _has_parameters(m)]


# Architecture class → its unfreeze groups from input to output. For the `features` layouts, what else holds
# weights after the final Linear is removed (VGG's 4096-d layers, MobileNetV3's 1280-d layer, ConvNeXt's and
# Swin's last norm) forms one more group, the last.
LAYOUTS = {"ResNet": _stem_and_layers, "RegNet": _stem_and_trunk, "VisionTransformer": _transformer,
           "MobileNetV2": _features, "MobileNetV3": _features, "EfficientNet": _features, "DenseNet": _features,
           "ConvNeXt": _features, "SwinTransformer": _features, "VGG": _features_by_pool, "AlexNet": _features_by_pool,
           "GoogLeNet": _children, "Inception3": _children, "MNASNet": _children, "ShuffleNetV2": _children,
           "SqueezeNet": _features_by_pool, "MaxVit": _children}


def names() -> dict[str, list[str]]:
    """Every torchvision classification model with the members of its weights enum."""
    return {name: list(models.get_model_weights(name).__members__) for name in models.list_models(module=models)}


def _member(name: str, weights: str) -> models.WeightsEnum | None:
    if weights.lower() == "none":
        return None
    enum = models.get_model_weights(name)
    return enum.DEFAULT if weights == "DEFAULT" else enum[weights]


def _reference(name: str, weights: str) -> models.WeightsEnum:
    """The member whose preprocessing and class names apply (the default one for random init)."""
    return _member(name, weights) or models.get_model_weights(name).DEFAULT


def _download_hint(member: models.WeightsEnum) -> str:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return (f"place {Path(member.url).name} (from {member.url}) in {hub}/, or set model.checkpoint to a local "
            f"state_dict for this architecture")


def build(name: str, weights: str, checkpoint: Path | None, image_size: int | None) -> nn.Module:
    """The full classifier in eval mode: random init ('none'), a local state_dict, or the enum's weights."""
    from transferlab.models.weights import WeightsUnavailable, load_state

    member = None if checkpoint else _member(name, weights)
    if member is None:
        model = models.get_model(name, weights=None)
        if checkpoint:
            load_state(model, checkpoint, f"model.checkpoint: {checkpoint}",
                       "save one with torch.save(model.state_dict(), path)")
        return model.eval()
    try:
        return models.get_model(name, weights=member).eval()
    except (OSError, RuntimeError) as exc:
        raise WeightsUnavailable(f"model.weights: cannot load {name} {member}: {exc}. {_download_hint(member)}") from None


def preprocessing(name: str, weights: str) -> Preprocessing:
    """The weights' eval transform (resize, crop, interpolation, mean, std), read off its public attributes."""
    plain = _reference(name, weights).transforms()
    return Preprocessing(plain.resize_size[0], plain.crop_size[0], plain.interpolation.value, tuple(plain.mean),
                         tuple(plain.std))


def class_names(name: str, weights: str) -> list[str] | None:
    return list(_reference(name, weights).meta["categories"])


def split(model: nn.Module) -> tuple[nn.Module, int]:
    """The final nn.Linear (the classification layer in every torchvision family) replaced by Identity, in place."""
    from transferlab.core.errors import UserError

    found = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UserError(f"{type(model).__name__} has no linear classifier to remove (unsupported architecture)")
    parent_name, _, child = found[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    linear = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return model, linear.in_features


def groups(model: nn.Module) -> list[nn.Module]:
    """The unfreeze groups of LAYOUTS for the model's class, then any hidden classifier layers."""
    layout = LAYOUTS.get(type(model).__name__, _children)
    found = layout(model)
    if layout in (_features, _features_by_pool):
        found += [m for n, m in model.named_children() if n != "features" and _has_parameters(m)]
    return found


def _has_parameters(module: nn.Module) -> bool:
    return any(p.numel() for p in module.parameters())

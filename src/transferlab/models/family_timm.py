"""The timm family: `model.backbone: timm/<model name>` (an architecture, or architecture.tag for one of its
pretrained checkpoints: timm/vit_small_patch14_dinov2.lvd142m, timm/convnext_tiny, timm/resnet50.a1_in1k).

The checkpoint's `pretrained_cfg` decides the preprocessing (input size, crop_pct, interpolation, mean, std);
`reset_classifier(0)` leaves the pooled pre-logits features; `group_matcher(coarse=True)` gives the unfreeze
groups (stem with its tokens, then each stage or transformer block, the final norm with the last); a model with a
fixed input size (ViTs) is resized to model.image_size with `set_input_size` (position embeddings resampled).
"""
from __future__ import annotations

from pathlib import Path

import timm
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import get_pretrained_cfg, group_parameters
from torch import nn

from transferlab.models.preprocessing import Preprocessing

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)  # timm's LayerNorm2d is an nn.LayerNorm
DOWNLOAD_HINT = ("model.weights: DEFAULT downloads {name} from the Hugging Face Hub (huggingface.co/timm); "
                 "offline, set model.checkpoint to its model.safetensors (or a state_dict saved from the same model)")


def names() -> dict[str, list[str]]:
    """Every timm architecture and pretrained architecture.tag; timm's weights come with the name (no members)."""
    return {name: [] for name in sorted(set(timm.list_models()) | set(timm.list_pretrained()))}


def _config(name: str) -> dict:
    """The pretrained_cfg of architecture[.tag] (an architecture alone: its default checkpoint's)."""
    return get_pretrained_cfg(name).to_dict()


def build(name: str, weights: str, checkpoint: Path | None, image_size: int | None) -> nn.Module:
    """The full model in eval mode: random init ('none'), a local checkpoint, or the Hub's pretrained weights."""
    from transferlab.models.weights import WeightsUnavailable, load_state

    pretrained = weights.lower() != "none" and checkpoint is None
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as exc:  # no network, no cached file, or a refused download
        raise WeightsUnavailable(f"model.weights: cannot load timm/{name} ({type(exc).__name__}: "
                                 f"{(str(exc).splitlines() or [''])[0][:160]}). "
                                 + DOWNLOAD_HINT.format(name=name)) from None
    if checkpoint is not None:
        load_state(model, checkpoint, f"model.checkpoint: {checkpoint}",
                   f"give timm/{name}'s model.safetensors or torch.save(model.state_dict(), path) of the same model")
    native = model.pretrained_cfg["input_size"][-1]
    if image_size and image_size != native and model.pretrained_cfg.get("fixed_input_size"):
        model.set_input_size(img_size=image_size)  # position embeddings resampled to the new grid
    return model.eval()


def preprocessing(name: str, weights: str) -> Preprocessing:
    """pretrained_cfg's eval transform: resize to crop / crop_pct, centre crop, its interpolation, mean and std."""
    cfg = _config(name)
    crop = cfg["input_size"][-1]
    return Preprocessing(int(crop / cfg.get("crop_pct", 0.875)), crop, cfg.get("interpolation", "bicubic"),
                         tuple(cfg["mean"]), tuple(cfg["std"]))


def class_names(name: str, weights: str) -> list[str] | None:
    """ImageNet class names where the checkpoint classifies an ImageNet subset, else None (DINOv2, CLIP)."""
    subset = infer_imagenet_subset(_config(name))
    if not subset:
        return None
    return [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]


def split(model: nn.Module) -> tuple[nn.Module, int]:
    """The classifier removed (reset_classifier(0)): the pooled pre-logits features, of head_hidden_size where the
    model has a pre-logits layer (MobileNetV3's 1280), else num_features."""
    model.reset_classifier(0)
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


def groups(model: nn.Module) -> list[nn.Module]:
    """timm's coarse layer groups, in order; a final group of norm layers only (ConvNeXt's head norm) joins the
    block before it, as timm's own ViT matcher puts the final norm with the last block."""
    named = group_parameters(model, model.group_matcher(coarse=True))
    found = [_modules_holding(model, set(names)) for _, names in sorted(named.items())]
    found = [g for g in found if g]
    if len(found) > 1 and all(isinstance(m, NORMS) for g in found[-1] for m in g.modules()
                              if any(True for _ in m.parameters(recurse=False))):
        norms = found.pop()
        found[-1] += norms
    return [g[0] if len(g) == 1 else nn.ModuleList(g) for g in found]


def _modules_holding(model: nn.Module, names: set[str]) -> list[nn.Module]:
    """The outermost submodules whose parameters all belong to `names`, in order. Parameters of the model itself
    (a ViT's class token and position embedding) are in no submodule: they train only with unfreeze: all."""
    chosen: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(t + ".") for t in taken):
            continue
        own = {f"{name}.{p}" for p, _ in module.named_parameters()}
        if own and own <= names:
            chosen.append(module)
            taken.append(name)
    return chosen

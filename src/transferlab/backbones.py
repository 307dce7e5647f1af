"""Pretrained backbones, whatever their family (families.py): weights from a download or a local checkpoint, the
preprocessing record, the classifier split off so the penultimate features remain, and the unfreeze groups."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import families
from .errors import UserError
from .fetch import file_digest
from .layout import resolve
from .params import ParamsError
from .preprocessing import Preprocessing


class WeightsUnavailable(UserError):
    """Pretrained weights are neither cached, downloadable nor given as a checkpoint."""


def _family(model_params: dict[str, Any]) -> tuple[Any, str]:
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


def check_crc(path: Path, what: str, fix: str) -> None:
    """A torch file is a zip whose members carry CRC-32s: bits flipped inside a tensor's data (which unpickling
    alone would load as other weights) make one fail. The damaged member, named, is a UserError."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{what}: not a readable torch file ({type(exc).__name__}: {exc}); {fix}") from None
    if damaged:
        raise UserError(f"{what}: damaged: its member {damaged} fails the CRC-32 check of the zip container "
                        f"(bits changed since it was written); {fix}")


def read_state(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A state_dict file (torch's, weights_only: no code runs; or safetensors), checked: a file that is none, whose
    zip members fail their CRC-32 (`check_crc`) or that holds non-finite numbers is a UserError, one line starting
    with `what`."""
    if path.suffix != ".safetensors":
        check_crc(path, what, fix)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, UnicodeDecodeError... for a damaged file
        reason = (str(exc).splitlines() or [""])[0][:160]
        raise UserError(f"{what}: not a readable torch file ({type(exc).__name__}: {reason}); {fix}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: holds a {type(state).__name__}, not a state_dict; {fix}")
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(f"{what}: {len(bad)} tensors hold NaN or infinity (first: {bad[0]}); {fix}")
    return state


def load_state(model: nn.Module, path: Path, what: str, fix: str) -> nn.Module:
    """Load a state_dict file into `model` (read_state); one that does not fit the architecture is a UserError."""
    state = read_state(path, what, fix)
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    shapes = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise UserError(f"{what}: does not fit {type(model).__name__} ({len(missing)} weights missing, "
                        f"{len(unexpected)} unexpected, {len(shapes)} of another shape; first: "
                        f"{(missing + unexpected + shapes)[0]}); {fix}")
    model.load_state_dict(state)
    return model


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

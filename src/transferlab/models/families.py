"""The backbone families. Each family_<name>.py module describes one family of models, with the same functions:

- names() → {model name: members of its weights enum}: every name the family accepts (params validation);
- build(name, weights, checkpoint, image_size) → the full pretrained model in eval mode;
- preprocessing(name, weights) → its eval Preprocessing at the native size;
- class_names(name, weights) → the pretraining classifier's class names, or None (no classifier);
- split(model) → (the model with its classifier removed, in place; the feature size);
- groups(model) → the ordered unfreeze groups of a split model (a module each, or a ModuleList).

FAMILIES says which module owns a `model.backbone` name, by prefix. Adding a family is one module and one row
below (docs/backbones.md). This module loads no torch: params validation uses it; a family's module is loaded
when a name of it is first used.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from transferlab.core.errors import ParamsError
from transferlab.settings.sections import Params


class Family(NamedTuple):
    module: str  # family_<name>, beside this one
    distribution: str  # whose version keys the remembered list of names, and whose classes the models are
    what: str  # what a name of the family is, for messages
    choose: str  # where its names are listed, for messages


# name prefix → family; the first prefix a name starts with wins, so the empty one (torchvision's bare names) is last
FAMILIES = {
    "timm/": Family("family_timm", "timm", "timm model",
                    "timm.list_models() or timm.list_pretrained(), after timm/: e.g. timm/convnext_tiny, "
                    "timm/vit_small_patch14_dinov2.lvd142m"),
    "": Family("family_torchvision", "torchvision", "torchvision classification model",
               "torchvision.models.list_models(), e.g. resnet18, resnet50, mobilenet_v2, vgg16; or timm/<name>"),
}


def owner(name: str) -> tuple[str, str]:
    """(family prefix, the family's own model name) of a `model.backbone` value."""
    prefix = next(p for p in FAMILIES if name.startswith(p))
    return prefix, name[len(prefix):]


def load(prefix: str) -> ModuleType:
    return importlib.import_module(f".{FAMILIES[prefix].module}", __package__)


def of_model(model: Any) -> ModuleType:
    """The family that built a model, by the distribution its class comes from."""
    top = type(model).__module__.split(".")[0]
    for prefix, family in FAMILIES.items():
        if family.distribution == top:
            return load(prefix)
    raise ValueError(f"{type(model).__module__}.{type(model).__name__} belongs to no backbone family "
                     f"({', '.join(f.distribution for f in FAMILIES.values())})")


@functools.cache
def names(prefix: str) -> dict[str, list[str]]:
    """The family's names, remembered per version of its distribution in the user's cache: validating params (the
    Snakefile does it at every parse) then imports no torch."""
    distribution = FAMILIES[prefix].distribution
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "transferlab"
             / f"{distribution}-{metadata.version(distribution)}-names.json")
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    found = load(prefix).names()
    try:
        from transferlab.core.atomic import write_json

        write_json(cache, found)
    except OSError:
        pass  # a read-only home: the names are computed again next time
    return found


def check_backbone(key: str, name: str, weights: str | None = None) -> None:
    """A backbone name, and its weights where given, against its family's own list (ParamsError naming `key`)."""
    prefix, own = owner(name)
    known = names(prefix)
    if own not in known:
        raise ParamsError(f"params: {key}: unknown {FAMILIES[prefix].what} {own!r} (choose from {FAMILIES[prefix].choose})")
    if weights is not None and weights.lower() != "none" and weights != "DEFAULT" and weights not in known[own]:
        raise ParamsError(f"params: model.weights: {weights!r} is not one of {name}'s weights "
                          f"({', '.join([*known[own], 'DEFAULT', 'none'])})")


def check_names(params: Params) -> None:
    """model.backbone, model.weights and sweep.backbones against the families' lists: what the Snakefile and the
    inputs stage (DVC's first) check before any work, apart from validating params, so that a stage depends on a
    family's code only where it builds a network."""
    check_backbone("model.backbone", params.model.backbone, params.model.weights)
    for name in params.sweep.backbones:
        check_backbone("sweep.backbones", name)

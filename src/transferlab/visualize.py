"""What the network knows: an input optimised towards a class (with and without a total-variation prior),
targeted adversarial examples within an L-infinity ball, and feature maps of early, middle and late blocks.

All optimisation happens on pixel values in [0, 1]; the model's own normalisation is applied inside, so the
valid pixel range is respected exactly by clamping.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from . import backbones, head
from . import finetune as finetune_mod
from .atomic import atomic_path, read_json, write_json
from .backbones import Normalized, blocks
from .errors import UserError
from .images import load_rgb, read_checked
from .layout import adversarial_png, data_root
from .progress import Progress
from .stages import StageIO, made_from

log = logging.getLogger("transferlab")


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV)."""
    return ((pixels[..., 1:, :] - pixels[..., :-1, :]).abs().mean()
            + (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().mean())


def ideal_image(model: Normalized, target: int, size: int, steps: int, step_size: float, tv_weight: float,
                jitter: int, seed: int, desc: str = "ideal image") -> tuple[torch.Tensor, float]:
    """Gradient ascent on log p(target | x) − tv_weight · TV(x) from seeded noise; returns (pixels, p(target)).
    A progress bar (`desc`) counts the steps."""
    generator = torch.Generator().manual_seed(seed)
    pixels = (0.5 + 0.1 * torch.randn(1, 3, size, size, generator=generator)).clamp(0, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=step_size)
    for _ in Progress(range(steps), desc=desc, unit="step"):
        shifted = pixels
        if jitter:
            dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            shifted = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
        loss = -torch.log_softmax(model(shifted), 1)[0, target] + tv_weight * total_variation(pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
    with torch.no_grad():
        prob = torch.softmax(model(pixels), 1)[0, target].item()
    return pixels.detach(), prob


def adversarial(model: Normalized, pixels: torch.Tensor, target: int, epsilon: float, steps: int,
                step_size: float) -> dict[str, Any]:
    """Targeted projected-gradient attack: |δ|∞ ≤ epsilon (pixel units / 255), x + δ kept in [0, 1].

    Stops at the first step where the model predicts `target`.
    """
    eps, alpha = epsilon / 255, step_size / 255
    with torch.no_grad():
        before = torch.softmax(model(pixels), 1)[0]
    delta = torch.zeros_like(pixels, requires_grad=True)
    used = 0
    for used in range(1, steps + 1):  # noqa: B007 (the steps taken are returned)
        loss = nn.functional.cross_entropy(model(pixels + delta), torch.tensor([target]))
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= alpha * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((pixels + delta).clamp(0, 1) - pixels)
            if model(pixels + delta).argmax(1).item() == target:
                break
    adv, delta = (pixels + delta).detach(), delta.detach()
    with torch.no_grad():
        after = torch.softmax(model(adv), 1)[0]
    return {"adversarial": adv, "perturbation": delta, "steps": used,
            "success": int(after.argmax()) == target, "linf_pixels": float(delta.abs().max() * 255),
            "before": before, "after": after}


def feature_maps(backbone: nn.Module, model: Normalized, pixels: torch.Tensor,
                 channels: int = 4) -> dict[str, np.ndarray]:
    """Activations of the first `channels` channels after an early, a middle and a late block of `backbone`
    (a part of `model`) while `model` classifies `pixels`."""
    convs = [b for b in blocks(backbone) if any(isinstance(m, nn.Conv2d) for m in b.modules())]
    chosen = {"early": convs[0], "middle": convs[len(convs) // 2], "late": convs[-1]}
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, block in chosen.items():
        last = [m for m in block.modules() if not list(m.children())][-1]
        hooks.append(last.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: out[0, :channels].numpy() for name, out in captured.items()}


def save_png(pixels: torch.Tensor, path: Path) -> None:
    array = (pixels[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, "PNG")


def amplified(delta: torch.Tensor) -> torch.Tensor:
    """A perturbation scaled to fill [0, 1] around mid-grey, so it is visible."""
    scale = delta.abs().max().clamp_min(1e-12)
    return 0.5 + 0.5 * delta / scale


def _pixels_transform(model_params: dict[str, Any]):
    """The weights' resize + centre crop, without normalisation (pixels in [0, 1])."""
    from torchvision.transforms import v2

    plain = backbones.preprocessing(model_params)
    return v2.Compose([v2.ToImage(), v2.Resize(plain.resize_size, interpolation=plain.interpolation, antialias=True),
                       v2.CenterCrop(plain.crop_size), v2.ToDtype(torch.float32, scale=True)]), plain


def _class_index(names: list[str], wanted: str | None, key: str, default: int = 0) -> int:
    if wanted is None:
        return default
    if wanted not in names:
        raise UserError(f"visualize.{key}: {wanted!r} is not a class of the model "
                         f"(e.g. {', '.join(names[:5])}, ... {len(names)} classes)")
    return names.index(wanted)


def _feature_figure(maps: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), 4, figsize=(8, 2.1 * len(maps)), squeeze=False)
    for row, (name, channels) in zip(axes, maps.items()):
        for c, ax in enumerate(row):
            ax.imshow(channels[c], cmap="viridis")
            ax.set_axis_off()
            ax.set_title(f"{name} block, channel {c}", fontsize=7)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def run(params: dict[str, Any], io: StageIO) -> dict[str, Any]:
    """The visualize stage: the ideal class images, adversarial examples and feature maps as PNGs, and a summary."""
    vis, out = params["visualize"], io.output
    torch.manual_seed(vis["seed"])
    dataset = read_json(io.input.dataset)
    ft_weights = io.input.finetune
    to_pixels, plain = _pixels_transform(params["model"])
    if params["finetune"]["enabled"] and ft_weights.exists():
        net = finetune_mod.load(params["model"], ft_weights, len(dataset["classes"]))
        names, source, backbone = dataset["classes"], "fine-tuned model", net.backbone
    else:
        net, _ = backbones.load_classifier(params["model"])
        names, source, backbone = backbones.class_names(params["model"]), "ImageNet classifier", net
    model = Normalized(net, plain.mean, plain.std)
    model.requires_grad_(False)

    target = _class_index(names, vis["target_class"], "target_class")
    ideal = {}
    for name, weight, path in (("with_tv", vis["tv_weight"], out.ideal), ("without_tv", 0.0, out.ideal_no_tv)):
        pixels, prob = ideal_image(model, target, vis["image_size"], vis["steps"], vis["step_size"], weight,
                                   vis["jitter"], vis["seed"], f"ideal {names[target]} ({name})")
        save_png(pixels, path)
        ideal[name] = {"tv_weight": weight, "probability": round(prob, 6),
                       "total_variation": round(float(total_variation(pixels)), 6), "image": path.name}

    test = pd.read_csv(io.input.splits.test)
    if vis["adversarial_from"] is not None:
        test = test[test["label"] == vis["adversarial_from"]]
        if test.empty:
            raise UserError(f"visualize.adversarial_from: no test image of class {vis['adversarial_from']!r}")
    probe_check = None
    if source == "fine-tuned model":
        probe, _ = head.load(io.input.probe)
        extractor, _, _ = backbones.load_feature_extractor(params["model"])
        probe_check = (Normalized(extractor, plain.mean, plain.std), probe)
    attacks = []
    root = data_root(dataset)
    digests = list(test["sha256"]) if "sha256" in test else [None] * len(test)
    for path, label, digest in zip(test["path"], test["label"], digests):
        if len(attacks) >= vis["adversarial_images"]:
            break
        pixels = to_pixels(load_rgb(read_checked(root / path, digest)))[None]
        with torch.no_grad():
            ranked = model(pixels)[0].argsort(descending=True).tolist()
        predicted = ranked[0]
        if source == "fine-tuned model" and names[predicted] != label:
            continue  # attack only images the model gets right
        goal = _class_index(names, vis["adversarial_to"], "adversarial_to", ranked[1])
        if goal == predicted:
            continue
        result = adversarial(model, pixels, goal, vis["epsilon"], vis["adversarial_steps"],
                             vis["adversarial_step_size"])
        i = len(attacks)
        log.info("attack %d of %d: %s (%s → %s) %s in %d steps", i + 1, vis["adversarial_images"], path, label,
                 names[goal], "succeeded" if result["success"] else "failed", result["steps"])
        for kind, image in (("original", pixels), ("perturbation", amplified(result["perturbation"])),
                            ("adversarial", result["adversarial"])):
            save_png(image, adversarial_png(out.summary.parent, i, kind))
        entry = {"image": path, "true": label, "predicted_before": names[predicted], "target": names[goal],
                 "p_target_before": round(float(result["before"][goal]), 6),
                 "p_target_after": round(float(result["after"][goal]), 6),
                 "p_predicted_before": round(float(result["before"][predicted]), 6),
                 "predicted_after": names[int(result["after"].argmax())], "success": result["success"],
                 "steps": result["steps"], "linf_pixels": round(result["linf_pixels"], 4),
                 "epsilon_pixels": vis["epsilon"]}
        if probe_check is not None:
            frozen, probe = probe_check
            with torch.no_grad():
                feats = frozen(result["adversarial"]).numpy()
            entry["transfer_model"] = "frozen features + linear head"
            entry["transfer_predicted"] = names[int(head.predict_proba(probe, feats, len(names)).argmax())]
            entry["transfer_fooled"] = entry["transfer_predicted"] == names[goal]
        attacks.append(entry)

    first = to_pixels(load_rgb(read_checked(root / test["path"].iloc[0], digests[0])))[None]
    _feature_figure(feature_maps(backbone, model, first), out.maps)
    summary = {"enabled": True, "skipped": False, "made_from": made_from(params, "visualize", dataset),
               "model": source, "target_class": names[target],
               "ideal": ideal, "adversarial": attacks, "feature_maps": {"image": test["path"].iloc[0],
                                                                         "figure": out.maps.name}}
    write_json(out.summary, summary)
    log.info("visualize: %s", {k: v for k, v in summary.items() if k != "adversarial"})
    return summary

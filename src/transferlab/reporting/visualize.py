"""What the network knows: an input optimised towards a class (with and without a total-variation prior),
targeted adversarial examples within an L-infinity ball, and feature maps of early, middle and late blocks.

Images are pixel values in [0, 1] with the model's own normalisation applied inside: the ideal image reaches
them through a sigmoid, the adversarial perturbation by clamping.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from transferlab.core.atomic import atomic_path
from transferlab.core.errors import UserError
from transferlab.core.progress import Progress
from transferlab.core.project import data_root
from transferlab.data.images import load_rgb, read_checked
from transferlab.finetuning import network
from transferlab.models import backbones
from transferlab.models.backbones import Backbone, Normalized, blocks
from transferlab.probe import head
from transferlab.settings.sections import Params

log = logging.getLogger("transferlab")


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV)."""
    return ((pixels[..., 1:, :] - pixels[..., :-1, :]).abs().mean()
            + (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().mean())


ROBUST_VIEWS = 32  # random crops, flips and rescales an ideal image is scored over
CROP_SIDE = (0.6, 1.0)  # a view's side, as a fraction of the image's


def views(pixels: torch.Tensor, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`n` random views of a (1, 3, H, W) image, each a square crop of CROP_SIDE of its side at a random place,
    rescaled to `size` and mirrored at random: (n, 3, size, size), differentiable."""
    side = pixels.shape[-1]
    out = []
    for _ in range(n):
        low, high = CROP_SIDE
        crop = max(2, round(side * (low + (high - low) * torch.rand((), generator=generator).item())))
        y, x = torch.randint(0, side - crop + 1, (2,), generator=generator).tolist()
        view = nn.functional.interpolate(pixels[..., y:y + crop, x:x + crop], size=(size, size), mode="bilinear",
                                         align_corners=False)
        out.append(view.flip(-1) if torch.rand((), generator=generator).item() < 0.5 else view)
    return torch.cat(out)


def view_probabilities(model: Normalized, pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """The model's class probabilities averaged over ROBUST_VIEWS random crops, flips and rescales of the image
    (drawn from `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.softmax(model(views(pixels, ROBUST_VIEWS, pixels.shape[-1], generator)), 1).mean(0)


def robust_probability(model: Normalized, pixels: torch.Tensor, target: int, seed: int) -> float:
    """p(target) averaged over ROBUST_VIEWS random crops, flips and rescales of the image: what a person looking at
    it from another distance or side would still be shown (a pixel trick that fools only the exact frame scores
    low). The views differ from the optimisation's (seed + 1)."""
    return float(view_probabilities(model, pixels, seed + 1)[target])


# Square root of the colour correlation of natural images (Lucid, Olah et al. 2017): the image is optimised in
# decorrelated colours, so a step changes brightness and hue as photos vary, not each channel on its own.
_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=0).max()


def _image(spectrum: torch.Tensor, scale: torch.Tensor, side: int) -> torch.Tensor:
    """Pixels in [0, 1] from the optimised Fourier coefficients: 1/f-scaled (natural images' spectrum, so coarse
    structure is as cheap to change as fine detail), decorrelated colours, a sigmoid."""
    decorrelated = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(side, side), norm="ortho")
    coloured = torch.einsum("bchw,dc->bdhw", decorrelated, _COLOUR)
    return torch.sigmoid(coloured)


def _spectrum_scale(side: int) -> torch.Tensor:
    fy, fx = torch.fft.fftfreq(side)[:, None], torch.fft.rfftfreq(side)[None, :]
    return (1.0 / torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / side)) / 4


def ideal_image(model: Normalized, target: int, size: int, steps: int, step_size: float, tv_weight: float,
                jitter: int, seed: int, n_views: int = 4, seconds: float | None = None,
                desc: str = "ideal image") -> tuple[torch.Tensor, dict[str, Any]]:
    """Gradient ascent on the target's logit averaged over `n_views` random views (crops, rescales, mirrors, and a
    shift of up to `jitter` pixels) minus tv_weight · TV(x), the image parametrised by 1/f-scaled Fourier
    coefficients in decorrelated colours from seeded noise (the way of Lucid's feature visualisation); stops
    early after `seconds`. Returns the pixels and a record: p(target) of the image, over ROBUST_VIEWS views, the
    steps taken, the seconds. A progress bar (`desc`) counts the steps."""
    generator = torch.Generator().manual_seed(seed)
    scale = _spectrum_scale(size)
    spectrum = (0.01 * torch.randn(1, 3, size, size // 2 + 1, 2, generator=generator)).requires_grad_(True)
    optimizer = torch.optim.Adam([spectrum], lr=step_size)
    taken, start = 0, time.perf_counter()
    for _ in Progress(range(steps), desc=desc, unit="step"):
        if seconds is not None and time.perf_counter() - start > seconds:
            break
        pixels = _image(spectrum, scale, size)
        shifted = pixels
        if jitter:
            dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            shifted = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
        logits = model(views(shifted, n_views, size, generator))
        loss = -logits[:, target].mean() + tv_weight * total_variation(pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        taken += 1
    with torch.no_grad():
        pixels = _image(spectrum, scale, size)
        prob = torch.softmax(model(pixels), 1)[0, target].item()
    return pixels, {"probability": round(prob, 6), "robust_probability": round(robust_probability(
        model, pixels, target, seed), 6), "steps": taken, "seconds": round(time.perf_counter() - start, 2)}


def imagenet_top5(classifier: Normalized | None, names: list[str], pixels: torch.Tensor) -> list[dict[str, Any]]:
    """The ImageNet classifier's five most probable classes for an image, averaged over ROBUST_VIEWS random views
    (seed 0): whether a network that never saw the dataset sees the class in it too."""
    if classifier is None:
        return []
    proba = view_probabilities(classifier, pixels, 0)
    top = proba.argsort(descending=True)[:5].tolist()
    return [{"class": names[i], "probability": round(float(proba[i]), 6)} for i in top]


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
    """The first `channels` channels of what an early, a middle and a late block of `backbone` (a part of `model`)
    output while `model` classifies `pixels`: a ConvNet block's feature maps, or a transformer block's patch
    tokens laid out on the patch grid (the class token left out). Blocks with no spatial output are skipped."""
    groups = blocks(backbone)
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(groups):
        last = [m for m in block.modules() if not list(m.children())][-1]
        hooks.append(last.register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out)))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    maps = {i: spatial(out) for i, out in captured.items()}
    found = sorted(i for i, m in maps.items() if m is not None)
    chosen = {"early": found[0], "middle": found[len(found) // 2], "late": found[-1]}
    return {name: maps[i][:channels].numpy() for name, i in chosen.items()}


def spatial(output: torch.Tensor) -> torch.Tensor | None:
    """The first image's (channels, height, width) map of a block's output: a feature map as it is, a token
    sequence (tokens, features) as its patch tokens on their square grid; None for anything else."""
    if output.dim() == 4:
        return output[0]
    if output.dim() == 3:
        side = math.isqrt(output.shape[1])
        patches = output[0, output.shape[1] - side * side:]  # the class (and register) tokens come first
        return patches.T.reshape(-1, side, side) if side > 1 else None
    return None


def save_png(pixels: torch.Tensor, path: Path) -> None:
    array = (pixels[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, "PNG")


def amplified(delta: torch.Tensor) -> torch.Tensor:
    """A perturbation scaled to fill [0, 1] around mid-grey, so it is visible."""
    scale = delta.abs().max().clamp_min(1e-12)
    return 0.5 + 0.5 * delta / scale


def _pixels_transform(backbone: Backbone):
    """The weights' resize + centre crop, without normalisation (pixels in [0, 1])."""
    from torchvision.transforms import v2

    plain = backbone.preprocessing
    return v2.Compose([v2.ToImage(), v2.Resize(plain.resize, interpolation=v2.InterpolationMode(plain.interpolation),
                                               antialias=True),
                       v2.CenterCrop(plain.crop), v2.ToDtype(torch.float32, scale=True)]), plain


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


def _imagenet_classifier(backbone: Backbone, source: str, model: Normalized,
                         plain: Any) -> tuple[Normalized | None, list[str], str | None]:
    """The pretrained ImageNet classifier (the model itself when no fine-tune ran) with its class names, or None
    and why: random weights (model.weights: none) know no ImageNet class."""
    if backbone.weights.lower() == "none":
        return None, [], "none: model.weights is none (no pretrained ImageNet classifier)"
    names = backbones.class_names(backbone)
    if names is None:
        return None, [], f"none: {backbone.name} was pretrained without a classifier"
    if source == "ImageNet classifier":
        return model, names, None
    net, _ = backbones.load_classifier(backbone)
    classifier = Normalized(net, plain.mean, plain.std)
    classifier.requires_grad_(False)
    return classifier, names, None


def visualize(params: Params, dataset: dict[str, Any], test: pd.DataFrame, finetune_weights: Path,
              probe_weights: Path, out: SimpleNamespace) -> dict[str, Any]:
    """The ideal class images, adversarial examples (of `test` images) and feature maps as PNGs in `out`'s
    folder; returns their summary. The fine-tuned network where it ran (`finetune_weights`, with the probe at
    `probe_weights` as the transfer check), else the pretrained classifier."""
    vis = params.visualize
    torch.manual_seed(vis.seed)
    pretrained = backbones.resolved(params.model)
    to_pixels, plain = _pixels_transform(pretrained)
    if params.finetune.enabled and finetune_weights.exists():
        net = network.load(pretrained, finetune_weights, len(dataset["classes"]))
        names, source, backbone = dataset["classes"], "fine-tuned model", net.backbone
    else:
        names = backbones.class_names(pretrained)
        if names is None:
            raise UserError(f"visualize: {params.model.backbone} was pretrained without a classifier, so "
                            f"without the fine-tune there is no class to visualise; set finetune.enabled: true")
        net, _ = backbones.load_classifier(pretrained)
        source, backbone = "ImageNet classifier", net
    model = Normalized(net, plain.mean, plain.std)
    model.requires_grad_(False)

    target = _class_index(names, vis.target_class, "target_class")
    imagenet, imagenet_names, no_imagenet = _imagenet_classifier(pretrained, source, model, plain)
    ideal = {}
    for name, weight, path in (("with_tv", vis.tv_weight, out.ideal), ("without_tv", 0.0, out.ideal_no_tv)):
        pixels, record = ideal_image(model, target, vis.image_size, vis.steps, vis.step_size, weight,
                                     vis.jitter, vis.seed, vis.views, vis.seconds,
                                     f"ideal {names[target]} ({name})")
        save_png(pixels, path)
        ideal[name] = {"tv_weight": weight, **record, "total_variation": round(float(total_variation(pixels)), 6),
                       "image": path.name, "imagenet_top5": imagenet_top5(imagenet, imagenet_names, pixels)}
        log.info("ideal %s (%s): p %.4f, over %d views %.4f, %d steps in %.1f s; ImageNet top-5: %s", names[target],
                 name, record["probability"], ROBUST_VIEWS, record["robust_probability"], record["steps"],
                 record["seconds"], ", ".join(c["class"] for c in ideal[name]["imagenet_top5"]) or no_imagenet)

    if vis.adversarial_from is not None:
        test = test[test["label"] == vis.adversarial_from]
        if test.empty:
            raise UserError(f"visualize.adversarial_from: no test image of class {vis.adversarial_from!r}")
    probe_check = None
    if source == "fine-tuned model":
        probe = head.linear(probe_weights)
        extractor, _, _ = backbones.load_feature_extractor(pretrained)
        probe_check = (Normalized(extractor, plain.mean, plain.std), probe)
    attacks = []
    root = data_root(dataset)
    digests = list(test["sha256"]) if "sha256" in test else [None] * len(test)
    for path, label, digest in zip(test["path"], test["label"], digests):
        if len(attacks) >= vis.adversarial_images:
            break
        pixels = to_pixels(load_rgb(read_checked(root / path, digest)))[None]
        with torch.no_grad():
            ranked = model(pixels)[0].argsort(descending=True).tolist()
        predicted = ranked[0]
        if source == "fine-tuned model" and names[predicted] != label:
            continue  # attack only images the model gets right
        goal = _class_index(names, vis.adversarial_to, "adversarial_to", ranked[1])
        if goal == predicted:
            continue
        result = adversarial(model, pixels, goal, vis.epsilon, vis.adversarial_steps,
                             vis.adversarial_step_size)
        i = len(attacks)
        log.info("attack %d of %d: %s (%s → %s) %s in %d steps", i + 1, vis.adversarial_images, path, label,
                 names[goal], "succeeded" if result["success"] else "failed", result["steps"])
        images = {}
        for kind, image in (("original", pixels), ("perturbation", amplified(result["perturbation"])),
                            ("adversarial", result["adversarial"])):
            images[kind] = f"adversarial_{i}_{kind}.png"
            save_png(image, out.summary.parent / images[kind])
        entry = {"image": path, "images": images, "true": label, "predicted_before": names[predicted], "target": names[goal],
                 "p_target_before": round(float(result["before"][goal]), 6),
                 "p_target_after": round(float(result["after"][goal]), 6),
                 "p_predicted_before": round(float(result["before"][predicted]), 6),
                 "predicted_after": names[int(result["after"].argmax())], "success": result["success"],
                 "steps": result["steps"], "linf_pixels": round(result["linf_pixels"], 4),
                 "epsilon_pixels": vis.epsilon}
        if probe_check is not None:
            frozen, (weight, bias) = probe_check
            with torch.no_grad():
                feats = frozen(result["adversarial"]).numpy()
            entry["transfer_model"] = "frozen features + linear head"
            entry["transfer_predicted"] = names[int((feats @ weight.T + bias).argmax())]
            entry["transfer_fooled"] = entry["transfer_predicted"] == names[goal]
        attacks.append(entry)

    first = to_pixels(load_rgb(read_checked(root / test["path"].iloc[0], digests[0])))[None]
    _feature_figure(feature_maps(backbone, model, first), out.maps)
    return {"enabled": True, "skipped": False, "model": source, "target_class": names[target],
            "robust_views": ROBUST_VIEWS, "imagenet": no_imagenet or "the pretrained ImageNet classifier",
            "ideal": ideal, "adversarial": attacks,
            "feature_maps": {"image": test["path"].iloc[0], "figure": out.maps.name}}

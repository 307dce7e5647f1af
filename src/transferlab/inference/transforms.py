"""Image pipelines: the weights' eval preprocessing, seeded training augmentation around it, and test-time views."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from transferlab.models.preprocessing import Preprocessing


def augmentation(plain: Preprocessing, scale: tuple[float, float] = (0.6, 1.0), flip: bool = True,
                 degrees: float = 10.0, jitter: float = 0.0, normalize: bool = True) -> v2.Compose:
    """Random resized crop, flip, rotation and colour jitter, then the same normalisation as evaluation.

    With scale (1, 1), no flip, 0 degrees and 0 jitter it reduces to resize + centre crop. Without `normalize`
    the result stays uint8 (the model normalises: see backbones.Normalized).
    """
    size, interpolation = plain.crop, v2.InterpolationMode(plain.interpolation)
    steps: list = [v2.ToImage()]
    if tuple(scale) == (1.0, 1.0):
        steps += [v2.Resize(plain.resize, interpolation=interpolation, antialias=True),
                  v2.CenterCrop(size)]
    else:
        steps.append(v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=interpolation,
                                          antialias=True))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if degrees:
        steps.append(v2.RandomRotation(degrees))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(plain.mean), std=list(plain.std))]
    return v2.Compose(steps)


def augmented(plain: Preprocessing, augment: dict, normalize: bool = True) -> v2.Compose:
    """`augmentation` as one of `finetune.augment`'s settings sets it."""
    return augmentation(plain, tuple(augment["scale"]), augment["flip"], augment["rotation"],
                        augment["jitter"], normalize)


def evaluation(plain: Preprocessing, normalize: bool = True) -> v2.Compose:
    """The weights' eval preprocessing as a v2 pipeline: resize, centre crop, normalise (unless not `normalize`).

    The weights' own eval steps; on uint8 tensors it resizes with torchvision's fast uint8 kernels.
    """
    return augmentation(plain, scale=(1.0, 1.0), flip=False, degrees=0.0, jitter=0.0, normalize=normalize)


# Test-time augmentation: the views `tta` stacks, in order (the first is the plain evaluation view).
TTA_VIEWS = ("centre", "mirrored centre", "top-left", "top-right", "bottom-left", "bottom-right")


def test_time_views(plain: Preprocessing) -> Callable[[torch.Tensor], torch.Tensor]:
    """Test-time views of one uint8 image, stacked (V, 3, H, W) as TTA_VIEWS names them.

    The image is resized as for evaluation; the views are its centre crop (exactly the evaluation view), that
    crop mirrored, and the four corner crops. The model's probabilities are averaged over them (see `for_prediction`).
    """
    resize = v2.Resize(plain.resize, interpolation=v2.InterpolationMode(plain.interpolation), antialias=True)
    size = plain.crop

    def views(image: torch.Tensor) -> torch.Tensor:
        top_left, top_right, bottom_left, bottom_right, centre = F.five_crop(resize(F.to_image(image)), size)
        return torch.stack([centre, F.horizontal_flip(centre), top_left, top_right, bottom_left, bottom_right])

    return views


def averaged(forward: Callable[[torch.Tensor], np.ndarray]) -> Callable[[torch.Tensor], np.ndarray]:
    """A forward over batches of stacked views (N, V, 3, H, W): its outputs (probabilities) averaged over V."""

    def run(images: torch.Tensor) -> np.ndarray:
        n, v = images.shape[:2]
        return forward(images.flatten(0, 1)).reshape(n, v, -1).mean(1)

    return run


def for_prediction(plain: Preprocessing, forward: Callable[[torch.Tensor], np.ndarray], batch_size: int,
                   tta: bool) -> tuple[Callable, Callable[[torch.Tensor], np.ndarray], int]:
    """(transform, forward, images per batch) for plain prediction, or for TTA: every view of an image in the
    same batch, the probabilities averaged, and as many views per batch as plain prediction has images."""
    if not tta:
        return evaluation(plain, normalize=False), forward, batch_size
    return test_time_views(plain), averaged(forward), max(1, batch_size // len(TTA_VIEWS))

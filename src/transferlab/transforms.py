"""Image pipelines: the weights' eval preprocessing, and seeded training augmentation around it."""
from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms._presets import ImageClassification


def augmentation(eval_transform: ImageClassification, scale: tuple[float, float] = (0.6, 1.0), flip: bool = True,
                 degrees: float = 10.0, jitter: float = 0.0, normalize: bool = True) -> v2.Compose:
    """Random resized crop, flip, rotation and colour jitter, then the same normalisation as evaluation.

    With scale (1, 1), no flip, 0 degrees and 0 jitter it reduces to resize + centre crop. Without `normalize`
    the result stays uint8 (the model normalises: see backbones.Normalized).
    """
    size = eval_transform.crop_size
    steps: list = [v2.ToImage()]
    if tuple(scale) == (1.0, 1.0):
        steps += [v2.Resize(eval_transform.resize_size, interpolation=eval_transform.interpolation, antialias=True),
                  v2.CenterCrop(size)]
    else:
        steps.append(v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=eval_transform.interpolation,
                                          antialias=True))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if degrees:
        steps.append(v2.RandomRotation(degrees))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=eval_transform.mean, std=eval_transform.std)]
    return v2.Compose(steps)


def evaluation(eval_transform: ImageClassification, normalize: bool = True) -> v2.Compose:
    """The weights' eval preprocessing as a v2 pipeline: resize, centre crop, normalise (unless not `normalize`).

    Same steps as `eval_transform`, but on uint8 tensors it resizes with torchvision's fast uint8 kernels.
    """
    return augmentation(eval_transform, scale=(1.0, 1.0), flip=False, degrees=0.0, jitter=0.0, normalize=normalize)

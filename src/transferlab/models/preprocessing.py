"""How a backbone wants its pixels: resize the shorter side, centre crop, normalise. Each family reads it off its
weights (torchvision's weights transforms, timm's pretrained_cfg); extraction, the fine-tune, export and predict
build their pipelines from it. Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize` px (`interpolation`, antialiased), centre crop `crop` px, then
    (pixels in [0, 1] - mean) / std per RGB channel."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop {self.crop} px must be positive and at most the resize {self.resize} px")

    def at(self, size: int | None) -> Preprocessing:
        """The same preprocessing at another crop size (the resize keeps its ratio to the crop); None = as is."""
        if not size:
            return self
        return Preprocessing(round(size * self.resize / self.crop), size, self.interpolation, self.mean,
                             self.std)

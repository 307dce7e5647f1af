"""A dataset far from ImageNet, built offline for the docs' second record: scikit-learn's handwritten digits
(1,797 grey 8 × 8 scans, 16 grey levels, shipped with the package) written as an image folder.

    python -m transferlab.data.examples digits ../digits    # then data.dataset: folder, data.source: ../digits, data.label: null

The class folders are the digits' names ("zero" … "nine"); each image is upscaled to 64 × 64 px (bilinear), so the
network sees blurred white strokes on black, nothing like a photo.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE = 64


def digits(dest: Path | str) -> Path:
    """Write the digits as <dest>/<name>/<index>.png (a folder that is already complete is left as it is)."""
    from sklearn.datasets import load_digits

    dest = Path(dest)
    data = load_digits()
    for i, (pixels, target) in enumerate(zip(data.images, data.target)):
        path = dest / NAMES[target] / f"{i:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray(np.round(pixels / 16 * 255).astype(np.uint8), mode="L")
        grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(path)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "digits":
        raise SystemExit("usage: python -m transferlab.data.examples digits DEST")
    print(f"wrote {digits(sys.argv[2])}")

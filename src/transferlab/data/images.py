"""Reading images: decode checks for the index, and RGB loading for the models.

torch and torchvision load only where a tensor is made (the index, split and report stages never import them).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferlab.core.errors import DamagedFile

if TYPE_CHECKING:
    import torch

JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchvision 0.29 points its decoders to TorchCodec; they remain the fastest path here, so no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class BadImage(ValueError):
    """A file that is not a decodable image; the message is the reason it was left out."""


def inspect(path: Path | str) -> tuple[int, int, int, str]:
    """Fully decode a file: return (width, height, bytes, sha256) or raise BadImage with the reason."""
    data = Path(path).read_bytes()
    if not data:
        raise BadImage("empty file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
                width, height = image.size
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError) as exc:
        message = str(exc)
        if any(word in message.lower() for word in ("truncated", "broken data stream", "incomplete")):
            raise BadImage("truncated") from None
        raise BadImage(f"unreadable: {message}") from None
    except Exception as exc:  # PIL raises many kinds for corrupt data (ValueError, DecompressionBombError, ...)
        raise BadImage(f"unreadable: {type(exc).__name__}: {exc}") from None
    return width, height, len(data), digest


# Modes holding more than 8 bits per pixel, and the value that is full scale in each (Pillow reads 16-bit
# grayscale PNG/TIFF as I;16 or I); converting them to RGB directly would clip everything above 255.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def read_checked(path: Path | str, sha256: str | None = None) -> bytes:
    """A file's bytes; with `sha256` (the index's), a file changed since it was indexed is a DamagedFile."""
    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DamagedFile(f"{path}: changed since the download stage indexed it (its sha256 is not the one in "
                          f"data/index.csv); re-run the download stage that indexes it (snakemake or dvc repro do)")
    return data


def load_rgb(source: Path | str | bytes, min_size: int | None = None) -> Image.Image:
    """Open an image (a path, or its bytes) as RGB as a person sees it: the first frame, turned by its EXIF
    orientation, grayscale, palette, RGBA and CMYK converted, high bit depths scaled (not clipped) to 8 bits.

    With `min_size`, large JPEGs are decoded at a reduced scale (PIL draft) that keeps both sides ≥ min_size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        if min_size and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
        image = ImageOps.exif_transpose(image)
        if image.mode in _WIDE_MODES:
            pixels = np.asarray(image, dtype=np.float64) * (255.0 / _WIDE_MODES[image.mode])
            image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
        if image.mode == "P":
            image = image.convert("RGBA")
        return image.convert("RGB")


def load_tensor(path: Path | str, min_size: int | None = None, sha256: str | None = None) -> torch.Tensor:
    """Decode an image to a uint8 RGB (3, H, W) tensor, the fast way for its kind (checked against the index's
    `sha256` when given).

    torchvision.io (libjpeg-turbo/libpng) decodes most files; a JPEG at least twice `min_size` on both sides is
    decoded by PIL at a reduced scale (draft), which is several times faster for large photos. Anything
    torchvision cannot decode to RGB (CMYK, TIFF, BMP ...) goes through PIL (`load_rgb`). Either way: the first
    frame, EXIF orientation applied, 16 bits scaled to 8.
    """
    return _decode(read_checked(path, sha256), min_size)


def _decode(data: bytes, min_size: int | None) -> torch.Tensor:
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(io.BytesIO(data)) as image:  # reads the header only
        large_jpeg = bool(min_size) and image.format == "JPEG" and min(image.size) >= 2 * min_size
    if not large_jpeg:
        try:
            with _quiet():
                decoded = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                       apply_exif_orientation=True)
            if decoded.ndim == 4:  # an animated GIF: its first frame
                decoded = decoded[0]
            if decoded.dtype == torch.uint16:  # 16-bit PNG: full scale 65535 → 255
                decoded = (decoded.to(torch.float32) / 257).round().to(torch.uint8)
            if decoded.dtype == torch.uint8:
                return decoded
        except RuntimeError:
            pass
    return pil_to_tensor(load_rgb(data, min_size))


def load_encoded(path: Path | str, min_size: int | None = None, sha256: str | None = None) -> torch.Tensor:
    """A JPEG's bytes as a 1-D uint8 tensor (to decode on the GPU); other files, and JPEGs an EXIF orientation
    turns (nvJPEG ignores it), decoded here as by load_tensor."""
    import torch

    data = read_checked(path, sha256)
    if data.startswith(JPEG_MAGIC):
        with Image.open(io.BytesIO(data)) as image:
            upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
        if upright:
            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return _decode(data, min_size)


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG byte tensors to uint8 RGB on `device` (one batched nvJPEG call on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    with _quiet():
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)

"""Reading images: decode checks for the index, and RGB loading for the models."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError


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


def load_rgb(path: Path | str, min_size: int | None = None) -> Image.Image:
    """Open an image as RGB (grayscale, palette, RGBA and CMYK converted).

    With `min_size`, large JPEGs are decoded at a reduced scale (PIL draft) that keeps both sides ≥ min_size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image.open(path)
        if min_size and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
        if image.mode == "P":
            image = image.convert("RGBA")
        return image.convert("RGB")

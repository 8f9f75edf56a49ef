"""Image loading with errors that name the file."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` fully decoded as RGB; ImageError if missing or unreadable."""
    if not os.path.isfile(path):
        raise ImageError(f"{path}: missing image file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: unreadable image ({e})") from None


__all__ = ["ImageError", "load_image"]

"""Image loading with errors that name the file."""

from __future__ import annotations

import os
from typing import Tuple

from PIL import Image, UnidentifiedImageError

from .errors import FileProblem

_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


class ImageError(FileProblem):
    """An image file that cannot be used; the message names the file and the problem."""


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise ImageError(path, "missing image file")
    if os.path.getsize(path) == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _reason(e: Exception, path: str | os.PathLike) -> str:
    # PIL repeats the path in some messages; the caller already names the file.
    return f"unreadable image ({str(e).replace(' ' + repr(str(path)), '').strip() or type(e).__name__})"


def image_info(path: str | os.PathLike) -> Tuple[int, int]:
    """``(width, height)`` from the header plus PIL's integrity check, without decoding pixels.

    Cheap enough to run over a whole corpus; a file truncated inside its
    pixel data may pass (``load_image`` decodes fully and catches that).
    """
    _check_file(path)
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except _PIL_ERRORS as e:
        raise ImageError(path, _reason(e, path)) from None
    return size


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` fully decoded as RGB; ImageError if missing or unreadable."""
    _check_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except _PIL_ERRORS as e:
        raise ImageError(path, _reason(e, path)) from None


__all__ = ["ImageError", "image_info", "load_image"]

"""The one image opener: every image the package reads goes through here.

Errors name the file (:class:`ImageError`). Two checks beyond "PIL can open
it", because both would otherwise pass the validator and fail hours later:

- size: more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's decompression
  bomb limit, about 89 M) is an error before any pixel is decoded, in the
  header check and in the full load alike;
- truncation: ``image_info`` (the validator's cheap check) reads the header,
  runs PIL's ``verify`` (which reads every PNG chunk and checks its CRC) and,
  for JPEG, checks that the end-of-image marker follows the last scan;
  ``load_image`` decodes every pixel and refuses truncated data.
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

from PIL import Image

from .errors import FileProblem

# We refuse such images ourselves, with the file named; PIL's own warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

JPEG_TAIL = 1 << 16  # bytes read from the end of a JPEG to find its end-of-image marker


class ImageError(FileProblem):
    """An image file that cannot be used; the message names the file and the problem."""


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise ImageError(path, "missing image file")
    if os.path.getsize(path) == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _reason(e: Exception, path: str | os.PathLike) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels, a possible decompression bomb (limit {Image.MAX_IMAGE_PIXELS} pixels)"
    # PIL repeats the path in some messages; the caller already names the file.
    text = " ".join(str(e).replace(" " + repr(str(path)), "").split())
    return f"unreadable image ({text[:200] or type(e).__name__})"


def _check_size(im: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size {w}x{h}")
    if limit and w * h > limit:
        raise Image.DecompressionBombError(f"{w}x{h}")


def _jpeg_complete(path: str | os.PathLike) -> bool:
    """True if the end-of-image marker FFD9 comes after the last start-of-scan FFDA.

    Entropy-coded JPEG data never holds FF D9 (an FF there is followed by 00
    or a restart marker), so a file cut inside its pixel data has no EOI after
    its last scan; trailing padding after the EOI is allowed.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - JPEG_TAIL))
        tail = f.read()
    eoi = tail.rfind(b"\xff\xd9")
    return eoi >= 0 and tail.rfind(b"\xff\xda") < eoi


def image_info(path: str | os.PathLike) -> Tuple[int, int]:
    """``(width, height)`` from the header, PIL's integrity check and the truncation check, without decoding pixels.

    Cheap enough to run over a whole corpus (see the module docstring for what it catches).
    """
    _check_file(path)
    try:
        with Image.open(path) as im:
            _check_size(im)
            size, fmt = im.size, im.format
            im.verify()
        if fmt == "JPEG" and not _jpeg_complete(path):
            raise ImageError(path, "truncated JPEG (no end-of-image marker after the last scan)")
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 -- PIL raises many types on bad files (OSError, SyntaxError, struct.error ...)
        raise ImageError(path, _reason(e, path)) from None
    return size


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` fully decoded as RGB; ImageError if missing, too large, truncated or unreadable."""
    _check_file(path)
    try:
        with Image.open(path) as im:
            _check_size(im)
            im.load()
            return im.convert("RGB")
    except Exception as e:  # noqa: BLE001 -- see image_info
        raise ImageError(path, _reason(e, path)) from None


__all__ = ["ImageError", "image_info", "load_image"]

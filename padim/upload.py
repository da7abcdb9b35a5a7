"""Decoding an uploaded image from bytes, the way :func:`padim.io.read_pixels` reads a file.

The server never writes an upload to disk nor opens a path the client names: the bytes are
decoded in memory by the same Pillow (and, for 16-bit colour and the TIFFs of :mod:`padim.tiff`,
OpenCV) steps as a file, so a
score over HTTP equals ``padim score`` of the same file. The header is checked before any
pixel is decoded: a small file claiming 60000×60000 px is refused without allocating it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import first_line
from . import tiff
from .io import ImageReadError, decode_opened, decode_tiff

# The formats padim lists in folders (padim.io.IMAGE_EXTENSIONS); no other Pillow decoder runs.
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 64_000_000  # 8000×8000; industrial frames of 3872×3200 are 12.4 MP


class ImageTooLargeError(ImageReadError):
    """An upload whose header claims more pixels than the server decodes."""


def upload_name(filename: str | None) -> str:
    """The client's file name reduced to its last part, for messages and titles only."""
    if not filename:
        return "upload"
    name = PureWindowsPath(PurePosixPath(filename).name).name
    return name or "upload"


def read_upload(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Stored pixel values of an uploaded image (as :func:`padim.io.read_pixels` returns them).

    Raises :class:`ImageReadError` (empty, not an image, truncated, unsupported format) or
    :class:`ImageTooLargeError` (more than ``max_pixels`` in the header), one line naming ``name``.
    """
    where = f"'{name}'"
    if not data:
        raise ImageReadError(f"{where}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{where}: image dimensions exceed the decoder's safety limit") from None
    except UnidentifiedImageError:
        return _read_tiff_beyond_pillow(data, where, max_pixels)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for unreadable data
        raise ImageReadError(f"{where}: cannot read image ({first_line(exc)})") from None
    with image:
        _check_pixels(*image.size, where, max_pixels)
        try:
            return decode_opened(image, lambda: np.frombuffer(data, dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f"{where}: cannot read image ({first_line(exc)})") from None


def _check_pixels(width: int, height: int, where: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{where}: {width}×{height} px is more than the server's limit of {max_pixels:,} px")


def _read_tiff_beyond_pillow(data: bytes, where: str, max_pixels: int) -> np.ndarray:
    """A TIFF upload Pillow cannot open (float or signed colour, 64-bit samples), its header
    checked before OpenCV decodes it; anything else is not an image padim reads."""
    header = tiff.read_header(io.BytesIO(data))
    if header is None:
        raise ImageReadError(f"{where}: not an image in a format padim reads ({', '.join(UPLOAD_FORMATS)})")
    _check_pixels(header.width, header.height, where, max_pixels)
    return decode_tiff(lambda: np.frombuffer(data, dtype=np.uint8), header, where)

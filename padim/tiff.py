"""TIFF files that Pillow cannot open, read by OpenCV: float or signed colour, 64-bit samples.

Pillow decodes one float mode (32-bit gray) and unsigned colour; scientific, 3-D and processed
camera output is also stored as RGB float32, float64 or signed 16/32-bit colour TIFFs. Their
first directory is read by Pillow's own TIFF tag parser (size, sample type, orientation) before
any pixel is decoded, so a header that claims too many pixels is refused without allocating them,
as for every other format; then OpenCV's libtiff decodes the pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .opencv_decode import quiet_imdecode

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
SAMPLE_KINDS = {1: "u", 2: "i", 3: "f"}  # SampleFormat tag 339: unsigned, signed, IEEE float
WIDTH, HEIGHT, BITS, SAMPLES, ORIENTATION, SAMPLE_FORMAT = 256, 257, 258, 277, 274, 339


@dataclass(frozen=True)
class TiffHeader:
    """What a TIFF's first directory says of its image."""

    width: int
    height: int
    dtype: np.dtype  # of one sample
    channels: int
    orientation: int  # the TIFF/EXIF orientation tag, 1 = as stored

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) after rotation by the orientation tag."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)


def _first(value, default: int) -> int:
    """A tag's value, or the first of a per-sample tuple of them."""
    if value is None:
        return default
    return int(value[0]) if isinstance(value, tuple) else int(value)


def read_header(fp: BinaryIO) -> TiffHeader | None:
    """The first directory of the TIFF that ``fp`` (a binary file object at its start) holds; None if
    it is no TIFF, names no size or a sample type numpy has no dtype for. Reads no pixel data."""
    from PIL import TiffImagePlugin

    head = fp.read(8)
    if head[:4] not in TIFF_MAGIC:
        return None
    if head[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: a 16-byte header
        head += fp.read(8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of tags it skips; only the size and type matter
            directory = TiffImagePlugin.ImageFileDirectory_v2(head)
            fp.seek(directory.next)
            directory.load(fp)
        width, height = int(directory[WIDTH]), int(directory[HEIGHT])
        bits = _first(directory.get(BITS), 1)
        kind = SAMPLE_KINDS.get(_first(directory.get(SAMPLE_FORMAT), 1))
        channels = int(directory.get(SAMPLES, 1))
        orientation = _first(directory.get(ORIENTATION), 1)
    except Exception:  # noqa: BLE001 - a damaged directory is "not a TIFF this can read"
        return None
    if width <= 0 or height <= 0 or channels <= 0 or kind is None or bits not in (8, 16, 32, 64) or (kind, bits) == ("f", 8):
        return None
    return TiffHeader(width, height, np.dtype(f"{kind}{bits // 8}"), channels, orientation)


def decode(encoded: np.ndarray, header: TiffHeader) -> np.ndarray:
    """The samples of a TIFF file's bytes (a uint8 array) as OpenCV decodes them: RGB(A) order, their
    own dtype, turned by the orientation tag (OpenCV's TIFF decoder applies it, as Pillow's
    exif_transpose does). Raises ValueError if OpenCV cannot decode them or gets another image
    than the header names, or the header names other than 1, 3 or 4 channels."""
    if header.channels not in (1, 3, 4):
        raise ValueError(f"{header.channels} samples per pixel: padim reads 1 (gray), 3 (RGB) or 4 (RGBA)")
    data = quiet_imdecode(encoded)
    if data is None:
        raise ValueError("OpenCV cannot decode this TIFF either")
    if data.shape[:2] != header.size:
        raise ValueError(f"OpenCV decoded {data.shape[1]}×{data.shape[0]} px where the header names "
                         f"{header.size[1]}×{header.size[0]}")
    if data.ndim == 3 and data.shape[2] in (3, 4):
        data = data[:, :, [2, 1, 0, 3][: data.shape[2]]]  # BGR(A) → RGB(A)
    return data

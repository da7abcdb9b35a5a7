"""Reading images of any mode and bit depth, finding them in folders, writing files atomically."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Image.MAX_IMAGE_PIXELS = 200_000_000  # 3872×3200 and larger industrial frames are legitimate


class ImageReadError(ValueError):
    """An input image could not be read or converted."""


def _to_rgb_float(array: np.ndarray, where: str, keep_uint8: bool = False) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 array of any integer or float dtype → HxWx3 float32 in [0, 1]
    (or, with ``keep_uint8``, plain 8-bit RGB stays uint8: four times less memory to resize)."""
    if keep_uint8 and array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        if array.shape[0] < 8 or array.shape[1] < 8:
            raise ImageReadError(f"{where}: image of {array.shape[1]}×{array.shape[0]} px is too small")
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageReadError(f"{where}: expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")
    alpha = None
    if array.shape[2] == 4:
        array, alpha = array[:, :, :3], array[:, :, 3]
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise ImageReadError(f"{where}: negative pixel values in a {array.dtype} image")
        out = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise ImageReadError(f"{where}: float image contains NaN or infinite values")
        if out.size and (out.min() < 0 or out.max() > 1):
            raise ImageReadError(f"{where}: float images must lie in [0, 1]")
    elif array.dtype == bool:
        out = array.astype(np.float32)
    else:
        raise ImageReadError(f"{where}: unsupported pixel type {array.dtype}")
    if alpha is not None:  # composite onto black so transparent areas look alike in every image
        scale = np.float32(255.0 if alpha.dtype == np.uint8 else 65535.0 if alpha.dtype == np.uint16 else 1.0)
        out = out * (alpha.astype(np.float32) / scale)[:, :, None]
    if out.shape[0] < 8 or out.shape[1] < 8:
        raise ImageReadError(f"{where}: image of {out.shape[1]}×{out.shape[0]} px is too small")
    return np.ascontiguousarray(out)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image → numpy array that keeps 16-bit precision."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if mode == "I":  # 32-bit int containers usually hold 16-bit data
        data = np.asarray(image, dtype=np.int64)
        return data.clip(0, 65535).astype(np.uint16)
    if mode == "F":
        data = np.asarray(image, dtype=np.float32)
        peak = float(data.max()) if data.size else 1.0
        return data / peak if peak > 1 else data
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if mode == "LA":
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB"))


def _has_16bit_colour(image: Image.Image) -> bool:
    """True for 48/64-bit RGB(A) files, which Pillow decodes to 8 bits per channel."""
    if image.mode not in ("RGB", "RGBA") or not getattr(image, "tile", None):
        return False
    args = image.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode


# EXIF orientation → the numpy equivalent of ImageOps.exif_transpose.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _read_16bit_colour(path: Path, orientation: int, fallback: np.ndarray) -> np.ndarray:
    """Re-read a 16-bit-per-channel colour file with OpenCV to keep its precision."""
    import cv2

    data = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (3, 4):
        return fallback
    data = data[:, :, [2, 1, 0, 3][: data.shape[2]]]  # BGR(A) → RGB(A)
    data = _ORIENT.get(orientation, lambda a: a)(data)
    return data if data.shape[:2] == fallback.shape[:2] else fallback


def load_image(source, keep_uint8: bool = False) -> np.ndarray:
    """Any supported image source → RGB float32 array ``[H, W, 3]`` in [0, 1].

    Accepts a path, a PIL image or a numpy array. Grayscale is repeated to three channels,
    alpha is composited onto black, 16-bit data keeps its precision and EXIF rotation is applied.
    With ``keep_uint8`` an 8-bit RGB image is returned as uint8 (0–255) instead.
    Raises :class:`ImageReadError` with a one-line message naming the file.
    """
    if isinstance(source, np.ndarray):
        return _to_rgb_float(source, "array input", keep_uint8)
    if isinstance(source, Image.Image):
        return _to_rgb_float(_pil_to_array(source), "PIL image input", keep_uint8)
    path = Path(source)
    where = f"'{path}'"
    if not path.is_file():
        raise ImageReadError(f"{where}: no such file")
    try:
        with Image.open(path) as image:
            deep_colour = _has_16bit_colour(image)
            orientation = image.getexif().get(0x0112, 1) if deep_colour else 1
            image.load()
            array = _pil_to_array(image)
        if deep_colour:
            array = _read_16bit_colour(path, orientation, fallback=array)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{where}: cannot read image ({reason})") from None
    return _to_rgb_float(array, where, keep_uint8)


def image_size(source) -> tuple[int, int]:
    """(height, width) after EXIF rotation, read from the header when ``source`` is a file."""
    if isinstance(source, np.ndarray):
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)
        return image.height, image.width
    try:
        with Image.open(source) as image:
            orientation = image.getexif().get(0x0112, 1)
            w, h = image.size
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"'{source}': cannot read image ({exc})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` in sorted order (hidden and non-image files are skipped)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}': no such file or folder")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(
            f"'{root}': no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{', recursively' if recursive else ''})"
        )
    return files


@contextmanager
def atomic_output(path: str | Path, mode: str = "w"):
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_output(path, "w") as handle:
        handle.write(text)

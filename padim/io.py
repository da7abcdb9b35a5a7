"""Reading images of any mode and bit depth, finding them in folders, writing files atomically."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import tiff
from .errors import first_line
from .opencv_decode import quiet_imdecode
from .value_range import (EIGHT_BIT, ValueRange, as_value_range, natural_range, pixel_kind_of_dtype,
                          pixel_kind_of_mode, range_for)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Image.MAX_IMAGE_PIXELS = 200_000_000  # 3872×3200 and larger industrial frames are legitimate


class ImageReadError(ValueError):
    """An input image could not be read or converted."""


def _split_channels(array: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """HxW, HxWx1, HxWx3 or HxWx4 array → (HxWx3 colour values at their own dtype, alpha or None)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        hint = ("; channels first? give HxWxC, e.g. array.transpose(1, 2, 0)"
                if array.ndim == 3 and array.shape[0] in (1, 3, 4) else "")
        raise ImageReadError(f"{where}: expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}{hint}")
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise ImageReadError(f"{where}: image of {array.shape[1]}×{array.shape[0]} px is too small")
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ImageReadError(f"{where}: unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageReadError(f"{where}: float image contains NaN or infinite values")
    if array.shape[2] == 4:
        return array[:, :, :3], array[:, :, 3]
    return array, None


def _alpha_scale(alpha: np.ndarray) -> float:
    return 255.0 if alpha.dtype == np.uint8 else 65535.0 if alpha.dtype == np.uint16 else 1.0


def _alpha_fraction(alpha: np.ndarray) -> np.ndarray:
    return np.clip(alpha.astype(np.float32) / np.float32(_alpha_scale(alpha)), 0.0, 1.0)


def to_unit_rgb(array: np.ndarray, where: str, value_range: ValueRange | None = None,
                keep_uint8: bool = False, value_kind: str | None = None) -> np.ndarray:
    """Raw pixel values (any layout of :func:`read_pixels`) → HxWx3 float32 in [0, 1] by
    ``value_range`` (default: the pixel type's full scale, :func:`natural_range`; with
    ``value_kind`` only images of that pixel kind use it, see :func:`range_for`); alpha is
    composited onto black so transparent areas look alike in every image.

    With ``keep_uint8``, 8-bit gray or RGB mapped by (0, 255) stays uint8 (0–255): four times
    less memory to resize, and dividing by 255 afterwards gives the same values."""
    colour, alpha = _split_channels(array, where)
    if alpha is not None and alpha.size and alpha.min() >= _alpha_scale(alpha):
        alpha = None  # opaque everywhere (many tools save RGBA): the same pixels, the same path as RGB
    value_range = range_for(colour, value_range, value_kind, where)
    if np.issubdtype(colour.dtype, np.signedinteger) and colour.size and colour.min() < 0 \
            and value_range == natural_range(colour):  # a model's range clips instead
        raise ImageReadError(f"{where}: negative pixel values in a {colour.dtype} image")
    if keep_uint8 and alpha is None and colour.dtype == np.uint8 and value_range == EIGHT_BIT:
        return np.ascontiguousarray(colour)
    out = value_range.to_unit(colour)
    if alpha is not None:
        out *= _alpha_fraction(alpha)[:, :, None]
    return np.ascontiguousarray(out)


def _sixteen_bit_if_it_fits(data: np.ndarray) -> np.ndarray:
    """A 32-bit integer image whose values lie in 0..65535 as uint16: such containers usually hold
    16-bit data, which the int32 full scale would map to black."""
    fits = data.size and data.min() >= 0 and data.max() <= 65535
    return data.astype(np.uint16) if fits else data


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image → numpy array of its stored values (16-bit and float kept), EXIF-rotated."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16)
    if mode == "I":
        return _sixteen_bit_if_it_fits(np.asarray(image, dtype=np.int32))
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if mode == "La":  # premultiplied alpha, which Pillow converts to RGBA only through LA
        image = image.convert("LA")
    alpha = image.mode in ("LA", "PA", "RGBa") or "transparency" in image.info  # RGBa: premultiplied
    return np.asarray(image.convert("RGBA" if alpha else "RGB"))


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


def _read_16bit_colour(encoded: np.ndarray, orientation: int, fallback: np.ndarray) -> np.ndarray:
    """Decode a 16-bit-per-channel colour file's bytes (uint8 array) again with OpenCV, which keeps
    the precision Pillow drops; ``fallback`` (Pillow's decoding) if OpenCV disagrees on the image."""
    data = quiet_imdecode(encoded)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (3, 4):
        return fallback
    data = data[:, :, [2, 1, 0, 3][: data.shape[2]]]  # BGR(A) → RGB(A)
    data = _ORIENT.get(orientation, lambda a: a)(data)
    return data if data.shape[:2] == fallback.shape[:2] else fallback


def decode_opened(image: Image.Image, encoded: Callable[[], np.ndarray]) -> np.ndarray:
    """The stored values of an opened image file, as :func:`read_pixels` returns them; ``encoded()``
    gives the file's bytes (a uint8 array), read only for 16-bit colour, which OpenCV decodes again."""
    deep_colour = _has_16bit_colour(image)
    orientation = image.getexif().get(0x0112, 1) if deep_colour else 1
    image.load()
    array = _pil_to_array(image)
    return _read_16bit_colour(encoded(), orientation, fallback=array) if deep_colour else array


def decode_tiff(encoded: Callable[[], np.ndarray], header: tiff.TiffHeader, where: str) -> np.ndarray:
    """A TIFF that Pillow cannot open (:mod:`padim.tiff`), its header checked by the caller, as
    :func:`read_pixels` returns images: turned by its orientation tag, 32-bit integers that hold
    16-bit data as uint16. ``encoded()`` gives the file's bytes (a uint8 array). Raises
    :class:`ImageReadError` naming ``where`` if they cannot be read or OpenCV cannot decode them."""
    try:
        array = tiff.decode(encoded(), header)
    except Exception as exc:  # noqa: BLE001 - OpenCV and the header checks raise several types
        raise ImageReadError(f"{where}: cannot read image ({first_line(exc)})") from None
    return _sixteen_bit_if_it_fits(array) if array.dtype == np.int32 else array


def _tiff_header(path: Path, where: str, pillow_error: Exception) -> tiff.TiffHeader:
    """The header of a file Pillow could not identify, if it is a TIFF that OpenCV may decode;
    else Pillow's error, as one line."""
    try:
        with open(path, "rb") as fp:
            header = tiff.read_header(fp)
    except OSError:
        header = None
    if header is None:
        raise ImageReadError(f"{where}: cannot read image ({first_line(pillow_error)})") from None
    return header


def _read_tiff_beyond_pillow(path: Path, where: str, pillow_error: Exception) -> np.ndarray:
    header = _tiff_header(path, where, pillow_error)
    if header.pixels > 2 * Image.MAX_IMAGE_PIXELS:  # where Pillow's own decompression-bomb check refuses
        raise ImageReadError(f"{where}: {header.width}×{header.height} px exceeds the decoder's safety limit")
    return decode_tiff(lambda: np.fromfile(str(path), dtype=np.uint8), header, where)


def _check_source(source) -> None:
    """A path, a PIL image or a numpy array; anything else (a torch tensor, bytes, None) is a
    one-line error rather than pathlib's TypeError."""
    if not isinstance(source, (str, os.PathLike, np.ndarray, Image.Image)):
        hint = ("; a CxHxW tensor: tensor.permute(1, 2, 0).cpu().numpy()"
                if type(source).__name__ == "Tensor" else "")
        raise ImageReadError(f"unsupported image source of type {type(source).__name__} "
                             f"(expected a file path, a PIL image or a numpy array{hint})")


def read_pixels(source) -> np.ndarray:
    """The stored values of an image, at their own dtype (uint8, uint16, int32, float32, …), with
    EXIF rotation applied and other colour modes (palette, CMYK, LA, …) converted by Pillow to RGB(A).

    Shape HxW, HxWx1, HxWx3 or HxWx4 (alpha last). No scaling: see :func:`load_image`.
    Raises :class:`ImageReadError` with a one-line message naming the file.
    """
    _check_source(source)
    if isinstance(source, np.ndarray):
        return eight_bit_if_it_fits(np.asarray(source))  # a NamedArray's values as a plain array
    if isinstance(source, Image.Image):
        try:
            return _pil_to_array(source)
        except Exception as exc:  # noqa: BLE001 - Pillow raises ValueError, OSError, … for odd modes
            raise ImageReadError(f"PIL image input: cannot convert mode {source.mode!r} ({first_line(exc)})") from None
    path = Path(source)
    where = f"'{path}'"
    if not path.is_file():
        raise ImageReadError(f"{where}: no such file")
    try:
        with Image.open(path) as image:
            array = decode_opened(image, lambda: np.fromfile(str(path), dtype=np.uint8))
    except UnidentifiedImageError as exc:
        return _read_tiff_beyond_pillow(path, where, exc)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise ImageReadError(f"{where}: cannot read image ({first_line(exc)})") from None
    return array


def eight_bit_if_it_fits(array: np.ndarray) -> np.ndarray:
    """A wide integer array (int16/32/64, uint32/64: what numpy arithmetic and ``np.array`` of
    Python ints give) whose values all lie in 0..255, as uint8: an 8-bit image, not 16-bit data
    that would be all but black at its type's full scale. uint16 stays the 16-bit type."""
    if (array.dtype.kind in "iu" and array.dtype.itemsize > 1 and array.dtype != np.uint16 and array.size
            and array.min() >= 0 and array.max() <= 255):
        return array.astype(np.uint8)
    return array


class NamedArray(np.ndarray):
    """An image array that padim's messages name by ``where`` (e.g. ``"'scan.png'"``, an upload the
    server decoded) instead of "array input"; otherwise a plain array (:func:`read_pixels` reads
    its values as a base ``np.ndarray``)."""

    where = "array input"

    def __array_finalize__(self, obj) -> None:
        self.where = getattr(obj, "where", NamedArray.where)

    def __reduce__(self):  # the name travels to decoding worker processes too
        rebuild, args, state = super().__reduce__()
        return rebuild, args, (state, self.where)

    def __setstate__(self, state) -> None:
        array_state, self.where = state
        super().__setstate__(array_state)


def named_array(array: np.ndarray, where: str) -> NamedArray:
    """``array`` (not copied) as a :class:`NamedArray` named ``where``."""
    named = np.asarray(array).view(NamedArray)
    named.where = where
    return named


def _where(source) -> str:
    if isinstance(source, np.ndarray):
        return getattr(source, "where", "array input")
    return "PIL image input" if isinstance(source, Image.Image) else f"'{Path(source)}'"


def load_image(source, keep_uint8: bool = False, value_range=None, value_kind: str | None = None) -> np.ndarray:
    """Any supported image source → RGB float32 array ``[H, W, 3]`` in [0, 1].

    Accepts a path, a PIL image or a numpy array. Grayscale is repeated to three channels,
    alpha is composited onto black, 16-bit data keeps its precision and EXIF rotation is applied.
    ``value_range`` ``(lo, hi)`` maps lo → 0 and hi → 1 (clipped), the same for every image; a
    fitted model passes its ``value_range_`` and ``value_kind_`` (images of another pixel kind use
    their own type's full scale). Without a range each image uses its pixel type's full scale
    (:func:`padim.value_range.natural_range`).
    With ``keep_uint8`` an 8-bit RGB image mapped by (0, 255) is returned as uint8 (0–255) instead.
    Raises :class:`ImageReadError` with a one-line message naming the file.
    """
    if value_range is not None and not isinstance(value_range, ValueRange):
        value_range = as_value_range(value_range)
    return to_unit_rgb(read_pixels(source), _where(source), value_range, keep_uint8, value_kind)


def colour_values(source) -> np.ndarray:
    """The raw colour values of an image (alpha dropped), for deciding a model's value range."""
    colour, _ = _split_channels(read_pixels(source), _where(source))
    return colour


def pixel_kind(source) -> str:
    """``"uint8"``, ``"bool"``, ``"int"`` or ``"float"``: how deep the image's stored values are.
    For files this reads the header only (Pillow's mode), never the pixels."""
    _check_source(source)
    if isinstance(source, np.ndarray):
        return pixel_kind_of_dtype(eight_bit_if_it_fits(source).dtype)
    if isinstance(source, Image.Image):
        return pixel_kind_of_mode(source.mode)
    try:
        with Image.open(source) as image:
            return pixel_kind_of_mode(image.mode, _has_16bit_colour(image))
    except UnidentifiedImageError as exc:
        return pixel_kind_of_dtype(_tiff_header(Path(source), f"'{source}'", exc).dtype)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"'{source}': cannot read image ({first_line(exc)})") from None


def image_size(source) -> tuple[int, int]:
    """(height, width) after EXIF rotation, read from the header when ``source`` is a file."""
    _check_source(source)
    if isinstance(source, np.ndarray):
        if source.ndim < 2:
            raise ImageReadError(f"{_where(source)}: expected an HxW, HxWx3 or HxWx4 image, got shape {source.shape}")
        return int(source.shape[0]), int(source.shape[1])
    if isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)
        return image.height, image.width
    try:
        with Image.open(source) as image:
            orientation = image.getexif().get(0x0112, 1)
            w, h = image.size
    except UnidentifiedImageError as exc:
        return _tiff_header(Path(source), f"'{source}'", exc).size
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"'{source}': cannot read image ({first_line(exc)})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` in sorted order (hidden and non-image files are skipped). A
    broken link named like an image is listed, so that reading it reports it instead of a
    silently shorter folder."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"'{root}': no such file or folder")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if (p.is_file() or (p.is_symlink() and not p.exists())) and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(
            f"'{root}': no images found (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{', recursively' if recursive else ''})"
        )
    return files


def _mode_for(path: Path) -> int:
    """Permission bits for a file written to ``path``: its current ones, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)  # the only way to read it; set straight back
        os.umask(umask)
        return 0o666 & ~umask


class WriteError(OSError):
    """A write that failed, named: "'PATH': cannot write (No space left on device)"."""

    def __init__(self, path: str | Path, reason: str, errno_: int | None):
        super().__init__(f"'{path}': cannot write ({reason})")
        self.errno, self.reason = errno_, reason


@contextmanager
def naming_path(path: str | Path):
    """Re-raise an OSError that names no file (a full disk, a quota, an I/O error: raised by a
    write, which knows only its descriptor) as a :class:`WriteError` naming ``path``, instead of
    a bare "[Errno 28] No space left on device". The outermost name wins: the file the user
    asked for, not a temporary one it is staged in."""
    try:
        yield
    except WriteError as exc:
        raise WriteError(path, exc.reason, exc.errno) from exc.__cause__
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise WriteError(path, exc.strerror or first_line(exc), exc.errno) from exc


@contextmanager
def atomic_output(path: str | Path, mode: str = "w"):
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds.

    The result gets the permissions a plain ``open`` would give it (those of the file it replaces,
    else 0666 less the umask), not the temporary file's 0600, which left models and TSVs
    unreadable to the other accounts of a line (a service scoring them, a colleague)."""
    path = Path(path)
    if path.is_dir():  # else os.replace's error names the temporary file, after all the work
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with naming_path(path), os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(path))
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

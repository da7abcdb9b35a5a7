"""TIFFs that Pillow cannot open (float, 64-bit and signed colour), read through padim.tiff.

The files are written byte by byte here from the TIFF 6.0 layout (one uncompressed strip), so the
expected pixels are the arrays written, not another decoder's output; OpenCV's writer is the second
source for the sample types it writes."""

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from padim.io import ImageReadError, image_size, load_image, pixel_kind, read_pixels
from padim.upload import ImageTooLargeError, read_upload

SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def tiff_bytes(array: np.ndarray, order: str = "<", orientation: int | None = None,
               claimed: tuple[int, int] | None = None, pixels: bool = True) -> bytes:
    """An uncompressed one-strip TIFF of ``array`` (HxW or HxWxC), byte order ``order`` ("<" II,
    ">" MM), optionally with an orientation tag, another size in its header (``claimed`` w, h),
    or no pixel data at all."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    bits = array.dtype.itemsize * 8
    data = array.astype(array.dtype.newbyteorder(order)).tobytes() if pixels else b""
    width, height = claimed or (width, height)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (259, 3, 1, 1),  # width, height, no compression
               (262, 3, 1, 2 if channels >= 3 else 1), (273, 4, 1, 0),  # RGB or gray; strip offset (set below)
               (277, 3, 1, channels), (278, 4, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    if orientation is not None:
        entries.append((274, 3, 1, orientation))
    if channels == 4:
        entries.append((338, 3, 1, 2))  # the fourth sample is unassociated alpha
    extra = b""
    per_sample = [(258, bits), (339, SAMPLE_FORMAT[array.dtype.kind])]
    ifd_size = 2 + 12 * (len(entries) + len(per_sample)) + 4
    for tag, value in per_sample:  # BitsPerSample and SampleFormat: one value per sample
        if channels <= 2:  # values of at most 4 bytes are stored in the entry itself
            entries.append((tag, 3, channels, value))
        else:
            entries.append((tag, 3, channels, 8 + ifd_size + len(extra)))
            extra += struct.pack(f"{order}{channels}H", *([value] * channels))
    strip = 8 + ifd_size + len(extra)
    entries = [(t, k, n, strip if t == 273 else v) for t, k, n, v in entries]
    ifd = struct.pack(f"{order}H", len(entries))
    for tag, kind, count, value in sorted(entries):
        if kind == 3 and count <= 2:
            ifd += struct.pack(f"{order}HHIHH", tag, kind, count, value, value if count == 2 else 0)
        else:
            ifd += struct.pack(f"{order}HHII", tag, kind, count, value)
    ifd += struct.pack(f"{order}I", 0)
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    return magic + struct.pack(f"{order}I", 8) + ifd + extra + data


def _pillow_cannot_open(path):
    with pytest.raises(Exception):
        Image.open(path)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("dtype,channels", [(np.float32, 3), (np.float64, 3), (np.float64, 1), (np.int16, 3),
                                            (np.float32, 4)])
def test_tiffs_pillow_cannot_open_read_exactly(tmp_path, order, dtype, channels):
    rng = np.random.default_rng(5)
    shape = (21, 34) if channels == 1 else (21, 34, channels)
    array = (rng.random(shape) * 1000 - (300 if np.dtype(dtype).kind == "i" else 0)).astype(dtype)
    path = tmp_path / "odd.tif"
    path.write_bytes(tiff_bytes(array, order))
    _pillow_cannot_open(path)
    pixels = read_pixels(path)
    assert pixels.dtype == dtype and np.array_equal(pixels, array)
    assert image_size(path) == (21, 34)
    assert pixel_kind(path) == ("float" if np.dtype(dtype).kind == "f" else "int")
    upload = read_upload(path.read_bytes(), "odd.tif")
    assert upload.dtype == dtype and np.array_equal(upload, array)


def test_a_float_rgb_tiff_loads_as_the_same_array_does(tmp_path):
    array = np.random.default_rng(1).random((24, 30, 3)).astype(np.float32) * 0.9
    path = tmp_path / "rgb.tif"
    path.write_bytes(tiff_bytes(array))
    assert np.array_equal(load_image(path), load_image(array))
    assert np.allclose(load_image(path), array)


# Where the stored pixel (r, c) of an h×w image is shown, by TIFF/EXIF orientation (TIFF 6.0, tag 274).
SHOWN_AT = {1: lambda r, c, h, w: (r, c), 2: lambda r, c, h, w: (r, w - 1 - c),
            3: lambda r, c, h, w: (h - 1 - r, w - 1 - c), 4: lambda r, c, h, w: (h - 1 - r, c),
            5: lambda r, c, h, w: (c, r), 6: lambda r, c, h, w: (c, h - 1 - r),
            7: lambda r, c, h, w: (w - 1 - c, h - 1 - r), 8: lambda r, c, h, w: (w - 1 - c, r)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_orientation_tag_turns_the_image_as_exif_does(tmp_path, orientation):
    stored = np.random.default_rng(2).random((10, 16, 3)).astype(np.float32)
    path = tmp_path / "turned.tif"
    path.write_bytes(tiff_bytes(stored, orientation=orientation))
    h, w = stored.shape[:2]
    expected = np.empty((w, h, 3) if orientation >= 5 else (h, w, 3), np.float32)
    for r in range(h):
        for c in range(w):
            expected[SHOWN_AT[orientation](r, c, h, w)] = stored[r, c]
    assert np.array_equal(read_pixels(path), expected)
    assert image_size(path) == expected.shape[:2]
    assert np.array_equal(read_upload(path.read_bytes(), "turned.tif"), expected)


def test_int32_colour_holding_16bit_values_is_16bit_as_pillow_gray_is(tmp_path):
    array = np.random.default_rng(3).integers(0, 65536, (12, 14, 3)).astype(np.int32)
    path = tmp_path / "int32.tif"
    assert cv2.imwrite(str(path), array[:, :, ::-1])  # OpenCV's writer: RGB stored, BGR given
    pixels = read_pixels(path)
    assert pixels.dtype == np.uint16 and np.array_equal(pixels, array)


def test_an_upload_claiming_too_many_pixels_is_refused_from_its_header():
    claimed = tiff_bytes(np.zeros((2, 2, 3), np.float32), claimed=(9000, 9000), pixels=False)
    assert len(claimed) < 200
    with pytest.raises(ImageTooLargeError, match=r"'huge.tif': 9000×9000 px is more than"):
        read_upload(claimed, "huge.tif")


def test_a_file_claiming_more_than_the_safety_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(tiff_bytes(np.zeros((2, 2, 3), np.float32), claimed=(30000, 30000), pixels=False))
    with pytest.raises(ImageReadError, match="30000×30000 px exceeds the decoder's safety limit") as info:
        read_pixels(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_and_two_channel_tiffs_are_one_line_errors_naming_the_file(tmp_path):
    full = tiff_bytes(np.random.default_rng(4).random((40, 40, 3)).astype(np.float32))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(full[: len(full) // 2])
    two = tmp_path / "two.tif"
    two.write_bytes(tiff_bytes(np.zeros((16, 16, 2), np.float32)))
    for path in (truncated, two):
        with pytest.raises(ImageReadError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        with pytest.raises(ImageReadError) as info:
            read_upload(path.read_bytes(), path.name)
        assert f"'{path.name}'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match=r"2 samples per pixel: padim reads 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\)"):
        read_upload(two.read_bytes(), two.name)


def test_text_named_tif_keeps_pillows_message(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a picture")
    with pytest.raises(ImageReadError, match="cannot identify image file"):
        read_pixels(path)
    with pytest.raises(ImageReadError, match="not an image in a format padim reads"):
        read_upload(path.read_bytes(), "notes.tif")

"""padim.io: reading images of every mode and bit depth, listing folders, atomic writes."""

import errno
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from padim.io import (ImageReadError, WriteError, atomic_output, atomic_write_bytes, atomic_write_text, image_size,
                      list_images, load_image, naming_path, pixel_kind, read_pixels)


def check_rgb(array, shape):
    assert array.shape == (*shape, 3)
    assert array.dtype == np.float32
    assert array.min() >= 0 and array.max() <= 1


def ramp(h=16, w=24):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


# ------------------------------------------------------------------ load_image: files

def test_grayscale_png(tmp_path):
    gray = ramp()
    path = tmp_path / "g.png"
    Image.fromarray(gray, "L").save(path)
    out = load_image(path)
    check_rgb(out, gray.shape)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray.astype(np.float32) / 255)


def test_rgb_png_exact(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    Image.fromarray(rgb).save(path)
    out = load_image(str(path))  # str accepted as well as Path
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255)


def test_rgba_is_composited_onto_black(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    rgba[:5, :, 3] = 255
    rgba[:, :2, 3] = 0
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    check_rgb(out, (10, 10))
    np.testing.assert_allclose(out[7, 5], np.array([200, 100, 50]) / 255 * 128 / 255, rtol=1e-6)
    np.testing.assert_allclose(out[2, 5], np.array([200, 100, 50]) / 255, rtol=1e-6)
    np.testing.assert_array_equal(out[:, :2], 0)


def test_gray_16bit_png_keeps_precision(tmp_path):
    data = np.full((12, 12), 1000, np.uint16)
    data[0, 0], data[0, 1], data[0, 2] = 1001, 65535, 0
    path = tmp_path / "g16.png"
    Image.fromarray(data).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    check_rgb(out, data.shape)
    np.testing.assert_allclose(out[..., 0], data / 65535.0, rtol=1e-6, atol=0)
    assert out[5, 5, 0] == pytest.approx(1000 / 65535, rel=1e-6)
    assert out[0, 0, 0] != out[5, 5, 0]  # 1001 and 1000 are told apart: no 8-bit truncation
    assert out[0, 1, 1] == 1.0 and out[0, 2, 2] == 0.0


def test_gray_16bit_tiff_keeps_precision(tmp_path):
    data = np.arange(144, dtype=np.uint16).reshape(12, 12) * 400 + 7
    path = tmp_path / "g16.tif"
    Image.fromarray(data).save(path)
    np.testing.assert_allclose(load_image(path)[..., 1], data / 65535.0, rtol=1e-6)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_colour_16bit_keeps_precision(tmp_path, ext):
    # 48-bit RGB files (industrial cameras, scanners). Pillow opens them as 8-bit RGB.
    rgb = np.zeros((12, 12, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1000, 30000, 65535
    rgb[0, 0, 0] = 1001
    path = tmp_path / f"c16{ext}"
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())  # cv2 writes BGR
    out = load_image(path)
    check_rgb(out, (12, 12))
    np.testing.assert_allclose(out, rgb / 65535.0, rtol=1e-6, atol=1e-7)


def test_colour_16bit_with_alpha(tmp_path):
    rgba = np.zeros((12, 12, 4), np.uint16)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 1000, 30000, 65535, 65535
    rgba[:6, :, 3] = 0
    path = tmp_path / "c16a.png"
    assert cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]].copy())
    out = load_image(path)
    np.testing.assert_array_equal(out[:6], 0)
    np.testing.assert_allclose(out[6:], np.broadcast_to(rgba[6:, :, :3] / 65535.0, (6, 12, 3)), rtol=1e-6)


def png_16bit(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (big-endian samples, filter 0 on every row), independent of
    the readers under test. ``samples`` is uint16 [H, W, C]."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = samples.shape[:2]
    rows = samples.astype(">u2").reshape(h, -1)  # astype keeps the big-endian order (np.stack would not)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_gray_16bit_with_alpha_png_keeps_precision(tmp_path):
    """PNG colour type 4 at 16 bits (gray + alpha): Pillow decodes it to 8 bits per channel."""
    rng = np.random.default_rng(11)
    gray = rng.integers(0, 65536, (9, 14)).astype(np.uint16)
    alpha = np.full((9, 14), 65535, np.uint16)
    alpha[:3] = 0
    alpha[3:5] = 32768
    path = tmp_path / "la16.png"
    path.write_bytes(png_16bit(np.stack([gray, alpha], axis=-1), colour_type=4))
    pixels = read_pixels(path)
    assert pixels.dtype == np.uint16 and pixels.shape == (9, 14, 4)
    np.testing.assert_array_equal(pixels[..., :3], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(pixels[..., 3], alpha)
    out = load_image(path)  # composited onto black
    expected = gray / 65535.0 * (alpha / 65535.0)
    np.testing.assert_allclose(out, np.repeat(expected[..., None], 3, axis=2), atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_of_16bit_colour_follow_pillow(tmp_path, orientation):
    # The 16-bit colour path re-reads pixels with OpenCV and applies EXIF orientation itself;
    # it must agree with Pillow's exif_transpose, checked on an 8-bit image of the same layout.
    from PIL import ImageOps

    from padim.io import _ORIENT

    img = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(_ORIENT.get(orientation, lambda a: a)(img), expected)


def test_exif_rotated_jpeg(tmp_path):
    h, w = 24, 40
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 255  # left half white, right half black
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(img).save(path, exif=exif, quality=95)
    out = load_image(path)
    check_rgb(out, (w, h))  # height and width swapped
    assert image_size(path) == (w, h) == out.shape[:2]
    expected = np.rot90(img, k=-1).astype(np.float32) / 255  # clockwise: the left half goes on top
    assert np.abs(out - expected).mean() < 0.02
    assert out[: w // 2 - 3].mean() > 0.95 and out[w // 2 + 3:].mean() < 0.05
    # the same image given as a PIL image is rotated too
    pil_out = load_image(Image.open(path))
    assert pil_out.shape == out.shape and image_size(Image.open(path)) == (w, h)


def test_image_size_without_exif(tmp_path):
    path = tmp_path / "plain.png"
    Image.fromarray(np.zeros((13, 29), np.uint8)).save(path)
    assert image_size(path) == (13, 29)
    assert image_size(np.zeros((13, 29, 3))) == (13, 29)


def test_palette_image(tmp_path):
    idx = np.zeros((10, 10), np.uint8)
    idx[5:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 250, 128, 0] + [0] * 762)
    path = tmp_path / "p.png"
    img.save(path)
    out = load_image(path)
    check_rgb(out, (10, 10))
    np.testing.assert_allclose(out[0, 0], np.array([10, 20, 30]) / 255, rtol=1e-6)
    np.testing.assert_allclose(out[9, 9], np.array([250, 128, 0]) / 255, rtol=1e-6)


def test_palette_with_transparency(tmp_path):
    idx = np.zeros((10, 10), np.uint8)
    idx[5:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 250, 128, 0] + [0] * 762)
    path = tmp_path / "pt.png"
    img.save(path, transparency=0)  # index 0 transparent
    out = load_image(path)
    np.testing.assert_array_equal(out[0, 0], 0)  # transparent → black
    np.testing.assert_allclose(out[9, 9], np.array([250, 128, 0]) / 255, rtol=1e-6)


def test_bmp_and_webp_lossless(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for name, kwargs in (("x.bmp", {}), ("x.webp", {"lossless": True})):
        Image.fromarray(rgb).save(tmp_path / name, **kwargs)
        np.testing.assert_array_equal(load_image(tmp_path / name), rgb / np.float32(255))


# ------------------------------------------------------------------ value ranges and modes

@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_12bit_data_in_16bit_file_with_a_range(tmp_path, ext):
    data = (np.arange(20 * 16).reshape(20, 16) * 13 % 4096).astype(np.uint16)
    data[0, 0] = 4095
    path = tmp_path / f"twelve{ext}"
    Image.fromarray(data).save(path)
    assert pixel_kind(path) == "int"
    out = load_image(path, value_range=(0, 4095))
    check_rgb(out, data.shape)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], data.astype(np.float64) / 4095, rtol=1e-6, atol=1e-7)
    assert out.max() == 1.0
    np.testing.assert_array_equal(read_pixels(path), data)  # raw values at their own dtype


def test_mode_f_tiff(tmp_path):
    data = np.linspace(0, 5000, 12 * 14, dtype=np.float32).reshape(12, 14)
    data[3, 4] = 1e6  # a hot pixel
    path = tmp_path / "f.tif"
    Image.fromarray(data, "F").save(path)
    assert Image.open(path).mode == "F" and pixel_kind(path) == "float"
    np.testing.assert_array_equal(read_pixels(path), data)
    out = load_image(path, value_range=(0, 5000))
    expected = np.clip(data.astype(np.float64) / 5000, 0, 1)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], expected, rtol=1e-6, atol=1e-7)
    # without a range: the image's own extremes (the per-image behaviour a model no longer uses)
    np.testing.assert_allclose(load_image(path)[..., 0], data / 1e6, rtol=1e-6)


def test_16bit_rgb_png_exact(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 65536, (10, 13, 3)).astype(np.uint16)
    path = tmp_path / "rgb48.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())
    assert pixel_kind(path) == "int"
    expected = rgb.astype(np.float32) / np.float32(65535)
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path, value_range=(0, 65535)), expected)


def test_cmyk_jpeg_follows_pillow(tmp_path):
    cmyk = np.random.default_rng(6).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK" and pixel_kind(path) == "uint8"
    expected = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path, keep_uint8=True, value_range=(0, 255)),
                                  np.asarray(Image.open(path).convert("RGB")))


def test_palette_with_transparency_under_a_model_range(tmp_path):
    idx = np.zeros((10, 10), np.uint8)
    idx[5:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([10, 20, 30, 250, 128, 0] + [0] * 762)
    path = tmp_path / "pt.png"
    img.save(path, transparency=0)
    out = load_image(path, keep_uint8=True, value_range=(0, 255))
    assert out.dtype == np.float32  # alpha present: composited, not the uint8 fast path
    np.testing.assert_array_equal(out[:5], 0)
    np.testing.assert_allclose(out[9, 9], np.array([250, 128, 0]) / 255, rtol=1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_an_opaque_alpha_channel_changes_nothing(tmp_path, bits):
    """RGBA saved with alpha at full scale everywhere reads as its RGB: the same values, and at
    8 bits the same uint8 fast path (it had been composited in float)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    top = 255 if bits == 8 else 65535
    colour = rgb if bits == 8 else rgb.astype(np.uint16) * 257
    rgba = np.dstack([colour, np.full(rgb.shape[:2], top, colour.dtype)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    cv2.imwrite(str(tmp_path / "rgb.png"), colour[..., ::-1])
    for kwargs in ({}, {"keep_uint8": True, "value_range": (0, 255)} if bits == 8 else {}):
        with_alpha, plain = load_image(tmp_path / "rgba.png", **kwargs), load_image(tmp_path / "rgb.png", **kwargs)
        assert with_alpha.dtype == plain.dtype
        np.testing.assert_array_equal(with_alpha, plain)
    if bits == 8:
        assert load_image(tmp_path / "rgba.png", keep_uint8=True, value_range=(0, 255)).dtype == np.uint8



def test_premultiplied_pil_inputs_composite_onto_black():
    # La / RGBa store colour already multiplied by alpha, which is exactly the colour composited
    # onto black: the loaded image is the stored colour (to Pillow's un- and re-multiplying rounding).
    rng = np.random.default_rng(7)
    alpha = rng.integers(1, 256, (16, 16), dtype=np.uint8)
    colour = (rng.integers(0, 256, (16, 16, 3)) * (alpha[..., None] / 255)).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([colour, alpha]), "RGBA")
    gray = Image.fromarray(np.dstack([colour[..., 0], alpha]), "LA")
    # Image.frombytes labels the same bytes premultiplied (no conversion happens)
    cases = [(Image.frombytes("RGBa", (16, 16), rgba.tobytes()), colour),
             (Image.frombytes("La", (16, 16), gray.tobytes()), np.repeat(colour[..., :1], 3, axis=2))]
    for image, expected in cases:
        np.testing.assert_allclose(load_image(image) * 255, expected, atol=1.01, err_msg=image.mode)


def test_a_pil_input_that_cannot_be_converted_is_one_line(monkeypatch):
    monkeypatch.setattr(Image.Image, "convert", lambda self, mode=None: (_ for _ in ()).throw(ValueError("no\nway")))
    image = Image.new("CMYK", (40, 40))
    with pytest.raises(ImageReadError, match=r"^PIL image input: cannot convert mode 'CMYK' \(no\)$"):
        load_image(image)

def _displayed(stored, orientation):
    """How an image with EXIF ``orientation`` is displayed, from the EXIF definition, by index."""
    h, w = stored.shape[:2]
    if orientation <= 4:
        i, j = np.mgrid[0:h, 0:w]
        rows = {1: i, 2: i, 3: h - 1 - i, 4: h - 1 - i}[orientation]
        cols = {1: j, 2: w - 1 - j, 3: w - 1 - j, 4: j}[orientation]
    else:  # displayed image is w × h
        i, j = np.mgrid[0:w, 0:h]
        rows = {5: j, 6: h - 1 - j, 7: h - 1 - j, 8: j}[orientation]
        cols = {5: i, 6: i, 7: w - 1 - i, 8: w - 1 - i}[orientation]
    return stored[rows, cols]


def _with_png_exif(path, orientation):
    """Insert an eXIf chunk (orientation only) after the IHDR of a PNG written by another tool."""
    import struct
    import zlib

    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
    blob = path.read_bytes()
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + payload) & 0xFFFFFFFF)
    path.write_bytes(blob[:end_of_ihdr] + chunk + blob[end_of_ihdr:])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_all_exif_orientations(tmp_path, orientation, ext):
    stored = np.random.default_rng(orientation).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{ext}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 95} if ext == ".jpg" else {}))
    decoded = np.asarray(Image.open(path))  # Pillow does not rotate by itself: the stored pixels
    if ext == ".png":
        np.testing.assert_array_equal(decoded, stored)
    expected = _displayed(decoded, orientation)
    out = load_image(path)
    np.testing.assert_array_equal(out, expected.astype(np.float32) / 255)
    assert image_size(path) == out.shape[:2] == expected.shape[:2]
    np.testing.assert_array_equal(load_image(Image.open(path)), out)
    assert image_size(Image.open(path)) == out.shape[:2]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_all_exif_orientations_of_16bit_colour(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 65536, (10, 14, 3)).astype(np.uint16)
    path = tmp_path / "o16.png"
    assert cv2.imwrite(str(path), stored[..., ::-1].copy())
    _with_png_exif(path, orientation)
    assert Image.open(path).getexif().get(0x0112) == orientation
    expected = _displayed(stored, orientation)
    out = load_image(path, value_range=(0, 65535))
    np.testing.assert_array_equal(out, expected.astype(np.float32) / np.float32(65535))
    assert image_size(path) == out.shape[:2]


def test_pixel_kind_reads_headers_and_dtypes(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(tmp_path / "c.tif")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").convert("P").save(tmp_path / "d.png")
    assert [pixel_kind(tmp_path / n) for n in ("a.png", "b.png", "c.tif", "d.png")] == ["uint8", "int", "float", "uint8"]
    assert [pixel_kind(np.zeros(3, t)) for t in (np.uint8, bool, np.uint16, np.float64)] == \
        ["uint8", "bool", "int", "float"]
    # wide integers by their values: 0..255 is 8-bit (test_wide_integer_arrays_of_8bit_values_are_8bit_images)
    assert [pixel_kind(np.full(3, v, np.int32)) for v in (0, 255, 256, -1)] == ["uint8", "uint8", "int", "int"]


# ------------------------------------------------------------------ load_image: arrays

@pytest.mark.parametrize("dtype, peak", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0),
                                          (np.float64, 1.0)])
@pytest.mark.parametrize("layout", ["hw", "hw1", "hw3"])
def test_numpy_arrays(dtype, peak, layout):
    base = np.linspace(0, 1, 10 * 12).reshape(10, 12)
    data = (base * peak).astype(dtype) if peak != 1.0 else base.astype(dtype)
    expected = data.astype(np.float64) / peak
    arr = {"hw": data, "hw1": data[:, :, None], "hw3": np.stack([data] * 3, axis=2)}[layout]
    out = load_image(arr)
    check_rgb(out, (10, 12))
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], expected, rtol=1e-6, atol=1e-7)


def test_bool_array():
    arr = np.zeros((8, 8), bool)
    arr[2:4] = True
    out = load_image(arr)
    np.testing.assert_array_equal(out[..., 0], arr.astype(np.float32))


def test_rgba_array_uint16():
    arr = np.full((8, 8, 4), 65535, np.uint16)
    arr[..., 3] = 32768
    np.testing.assert_allclose(load_image(arr), 32768 / 65535, rtol=1e-6)


def test_float_outside_unit_range():
    # Changed intentionally: without a range such arrays used to be refused; they now stretch to
    # their own extremes (for display), and a given range maps and clips them.
    data = np.linspace(0, 300, 10 * 12, dtype=np.float32).reshape(10, 12)
    np.testing.assert_allclose(load_image(data)[..., 0], data / 300, rtol=1e-6)
    signed = data - 100
    np.testing.assert_allclose(load_image(signed)[..., 1], (signed + 100) / 300, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(load_image(data, value_range=(0, 100))[..., 2], np.minimum(data / 100, 1), rtol=1e-6)
    np.testing.assert_allclose(load_image(data, value_range=(50, 250))[..., 0],
                               np.clip((data - 50) / 200, 0, 1), rtol=1e-5, atol=1e-6)


def test_float_nan_is_refused():
    arr = np.full((8, 8, 3), 0.5, np.float32)
    arr[3, 3, 1] = np.nan
    with pytest.raises(ImageReadError):
        load_image(arr)


def test_signed_integer_array_is_not_turned_negative():
    arr = np.full((8, 8), -5, np.int16)
    try:
        out = load_image(arr)
    except ImageReadError:
        return  # refusing is fine
    assert out.min() >= 0


@pytest.mark.parametrize("shape", [(8, 8, 2), (8, 8, 5), (8,), (2, 8, 8, 3)])
def test_bad_array_shapes(shape):
    with pytest.raises(ImageReadError, match="shape"):
        load_image(np.zeros(shape, np.uint8))


def test_too_small():
    with pytest.raises(ImageReadError, match="too small"):
        load_image(np.zeros((4, 30), np.uint8))


# ------------------------------------------------------------------ load_image: broken files

def _assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    _assert_one_line_naming(info, path)


def test_not_an_image(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not a PNG\nsecond line\n")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    _assert_one_line_naming(info, path)
    with pytest.raises(ImageReadError) as info:
        image_size(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file(tmp_path, ext):
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full{ext}"
    Image.fromarray(rgb).save(full)
    path = tmp_path / f"truncated{ext}"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    _assert_one_line_naming(info, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    _assert_one_line_naming(info, path)


def test_image_read_error_is_a_value_error():
    assert issubclass(ImageReadError, ValueError)


# ------------------------------------------------------------------ list_images

def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")


def test_list_images_recursive_sorted_and_filtered(tmp_path):
    names = ["b.png", "a.jpg", "sub/c.PNG", "sub/deeper/d.tif", "z.bmp", "sub/a.jpeg"]
    for name in names:
        _touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "mask.npy").write_bytes(b"x")
    _touch_image(tmp_path / ".hidden.png")
    _touch_image(tmp_path / ".cache" / "e.png")
    _touch_image(tmp_path / "sub" / ".thumbs" / "f.png")
    found = list_images(tmp_path)
    assert found == sorted(tmp_path / n for n in names)
    flat = list_images(tmp_path, recursive=False)
    assert flat == sorted(tmp_path / n for n in ("a.jpg", "b.png", "z.bmp"))
    assert list_images(str(tmp_path / "b.png")) == [tmp_path / "b.png"]  # a single file


def test_list_images_in_hidden_root_still_works(tmp_path):
    # Only hidden parts *below* the root are skipped: a root like ~/.data/good must work.
    root = tmp_path / ".data" / "good"
    _touch_image(root / "a.png")
    assert list_images(root) == [root / "a.png"]


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as info:
        list_images(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "no images" in message and ".png" in message


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        list_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


# ------------------------------------------------------------------ atomic writes

def test_atomic_write_text_and_bytes(tmp_path):
    path = tmp_path / "deep" / "out.tsv"
    atomic_write_text(path, "a\tb\n")
    assert path.read_text() == "a\tb\n"
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]


def test_failed_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text("old contents\n")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_output(path) as handle:
            handle.write("half of the new ")
            handle.flush()
            raise RuntimeError("disk on fire")
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["scores.tsv"]  # no temporary file left behind


def test_failed_atomic_write_text_leaves_old_file_intact(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text("old contents\n")
    with pytest.raises(TypeError):
        atomic_write_text(path, 12345)  # write() fails inside the helper
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["scores.tsv"]


def test_failed_first_write_creates_nothing(tmp_path):
    path = tmp_path / "new.tsv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path) as handle:
            handle.write("partial")
            raise KeyboardInterrupt
    assert not path.exists() and os.listdir(tmp_path) == []


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk: no file name


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model.padim"
    path.write_bytes(b"old model")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(WriteError) as caught:
        atomic_write_bytes(path, b"new model")
    assert str(caught.value) == f"'{path}': cannot write ({os.strerror(errno.ENOSPC)})"
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert path.read_bytes() == b"old model" and os.listdir(tmp_path) == ["model.padim"]


def test_naming_path_keeps_named_errors_and_the_outermost_name(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:  # already names its file: unchanged
        with naming_path(tmp_path / "out.onnx"):
            open(tmp_path / "missing" / "x", "rb")
    assert caught.value.filename == str(tmp_path / "missing" / "x")
    with pytest.raises(WriteError, match=r"^'out\.xml': cannot write \(No space"):  # the user's file, not the staged one
        with naming_path("out.xml"), naming_path("tmp/staged.onnx"):
            _disk_full()


def test_a_failing_16bit_colour_decoder_gives_one_line_naming_the_file_or_upload(tmp_path, monkeypatch):
    """The second decoding of 48-bit colour (OpenCV) raising — a hostile upload, a broken codec —
    is a one-line ImageReadError for a file and for an upload alike, not an exception of its own."""
    from padim.upload import read_upload

    path = tmp_path / "rgb48.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 40000, np.uint16))

    def broken(*args, **kwargs):
        raise cv2.error("\n  codec failed\nmore detail")

    monkeypatch.setattr(cv2, "imdecode", broken)
    with pytest.raises(ImageReadError, match=r"^'.*rgb48\.png': cannot read image \(codec failed\)$"):
        read_pixels(path)
    with pytest.raises(ImageReadError, match=r"^'upload\.png': cannot read image \(codec failed\)$"):
        read_upload(path.read_bytes(), "upload.png")


@pytest.mark.parametrize("exc, line", [(RuntimeError(), "RuntimeError"), (ValueError("\n \nsecond\nthird"), "second"),
                                       (OSError("  padded  "), "padded"), (KeyError("k"), "'k'")])
def test_an_exception_reads_as_its_first_nonblank_line_or_its_type(exc, line):
    from padim.errors import first_line

    assert first_line(exc) == line


@pytest.mark.parametrize("source", [None, 5, b"\x89PNG", [1, 2, 3]], ids=["None", "int", "bytes", "list"])
def test_an_unsupported_source_is_a_one_line_read_error(source):
    # a torch tensor or raw bytes used to reach pathlib and raise its TypeError
    for read in (load_image, read_pixels, image_size, pixel_kind):
        with pytest.raises(ImageReadError, match=r"^unsupported image source of type \w+ \(expected a file path"):
            read(source)


def test_channels_first_inputs_say_how_to_give_them():
    torch = pytest.importorskip("torch")
    chw = np.zeros((3, 20, 30), np.uint8)
    with pytest.raises(ImageReadError, match=r"got shape \(3, 20, 30\); channels first\? .*transpose\(1, 2, 0\)"):
        load_image(chw)
    with pytest.raises(ImageReadError, match=r"type Tensor .*tensor\.permute\(1, 2, 0\)\.cpu\(\)\.numpy\(\)"):
        load_image(torch.zeros(3, 20, 30))
    np.testing.assert_array_equal(load_image(chw.transpose(1, 2, 0)), 0)  # as the hint says


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_wide_integer_arrays_of_8bit_values_are_8bit_images(dtype):
    """np.array of Python ints, or arithmetic on uint8, gives int64: with values in 0..255 it is an
    8-bit image (its type's full scale made it black); 16-bit data, or uint16 at all, stays deep."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    wide = rgb.astype(dtype)
    assert pixel_kind(wide) == "uint8" and read_pixels(wide).dtype == np.uint8
    np.testing.assert_array_equal(load_image(wide, keep_uint8=True, value_range=(0, 255)), rgb)
    np.testing.assert_array_equal(load_image(wide), load_image(rgb))
    deep = wide.copy()
    deep[0, 0, 0] = 300 if np.iinfo(dtype).max >= 300 else deep[0, 0, 0]
    assert pixel_kind(deep) == "int"
    assert pixel_kind(rgb.astype(np.uint16)) == "int"


def test_a_zero_dimensional_array_has_no_size():
    with pytest.raises(ImageReadError, match=r"array input: expected an HxW.*got shape \(\)"):
        image_size(np.array(5))


def test_a_named_array_is_named_in_messages_and_read_as_a_plain_array():
    """The server names the arrays it decodes by their upload: errors and warnings say "'cam.png'",
    in this process and after pickling (decoding workers), and the values read are the array's."""
    import pickle
    import warnings

    from padim.io import named_array

    deep = (ramp()[:, :, None].repeat(3, axis=2).astype(np.uint16) * 257)
    named = pickle.loads(pickle.dumps(named_array(deep, "'cam.png'")))
    pixels = read_pixels(named)
    assert type(pixels) is np.ndarray and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, deep)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_image(named, value_range=(0, 255), value_kind="uint8")
    assert [str(w.message).split(":")[0] for w in seen] == ["'cam.png'"]
    with pytest.raises(ImageReadError, match=r"^'cam.png': image of 4×4 px is too small$"):
        load_image(named_array(np.zeros((4, 4), np.uint8), "'cam.png'"))
    with pytest.raises(ImageReadError, match=r"^'cam.png': expected an HxW"):
        image_size(named_array(np.array(5), "'cam.png'"))


def test_a_broken_link_named_like_an_image_is_listed_and_reported_when_read(tmp_path):
    # it was skipped, so a folder scored one image fewer without a word
    Image.fromarray(ramp(), "L").save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "c.png").mkdir()  # a folder named like an image is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]
    with pytest.raises(ImageReadError, match=r"b\.png': no such file$"):
        load_image(tmp_path / "b.png")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_writes_get_the_permissions_a_plain_open_gives(tmp_path):
    # the temporary file's 0600 made models and TSVs unreadable to the line's other accounts
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.tsv", "x\n")
        with open(tmp_path / "plain.tsv", "w") as handle:  # the reference: what open() creates
            handle.write("x\n")
        kept = tmp_path / "kept.padim"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        atomic_write_bytes(kept, b"new")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "new.tsv") == mode(tmp_path / "plain.tsv") == 0o640
    assert mode(kept) == 0o604 and kept.read_bytes() == b"new"


def test_an_atomic_write_onto_a_folder_names_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"a folder, not a file to write: '.*out'$"):
        atomic_write_text(tmp_path / "out", "x")
    assert list((tmp_path / "out").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

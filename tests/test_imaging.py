"""Decoding: every accepted format, the awkward modes, and clear refusals."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from scripts.synthetic import encode, jpeg, photo
from shared.imaging import ImageError, load_image, probe, to_model_input


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("JPEG", {"quality": 90}), ("PNG", {}), ("BMP", {}), ("GIF", {}), ("WEBP", {"quality": 90}),
     ("TIFF", {}), ("AVIF", {"quality": 80}), ("HEIF", {"quality": 80})],
)
def test_accepted_formats_decode_to_rgb(fmt, params):
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    data = encode(photo(1), fmt, **params)
    loaded = load_image(data)
    assert loaded.format == fmt
    assert (loaded.width, loaded.height) == (320, 240)
    assert loaded.image.mode == "RGB"
    reference = np.asarray(photo(1), dtype=np.float32)
    decoded = np.asarray(loaded.image.resize((320, 240)), dtype=np.float32)
    tolerance = 40 if fmt == "GIF" else 12  # GIF is palette-quantised
    assert np.abs(decoded - reference).mean() < tolerance


def test_jpeg_uses_draft_for_large_photos():
    loaded = load_image(jpeg(1, size=(4000, 3000), quality=80), min_side=224)
    assert (loaded.width, loaded.height) == (4000, 3000)  # the original size is reported
    assert min(loaded.image.size) >= 224
    assert max(loaded.image.size) <= 4000 // 4  # decoded at 1/8 scale: 500x375


def test_exif_orientation_is_applied():
    img = photo(3, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated_file = encode(img.rotate(90, expand=True), "JPEG", quality=95, exif=exif.tobytes())
    loaded = load_image(rotated_file)
    assert loaded.image.size == (300, 200)
    diff = np.abs(np.asarray(loaded.image, np.float32) - np.asarray(img, np.float32)).mean()
    assert diff < 10


def test_cmyk_jpeg_becomes_rgb():
    loaded = load_image(encode(photo(4).convert("CMYK"), "JPEG", quality=95))
    assert loaded.image.mode == "RGB"
    assert np.abs(np.asarray(loaded.image, np.float32) - np.asarray(photo(4), np.float32)).mean() < 15


def test_sixteen_bit_grayscale_png_keeps_its_range():
    ramp = (np.linspace(0, 65535, 256, dtype=np.uint16)[None, :].repeat(64, 0))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")  # mode I;16
    arr = np.asarray(load_image(buf.getvalue()).image)
    assert arr[0, 0, 0] == 0 and arr[0, -1, 0] == 255 and 120 < arr[0, 128, 0] < 136


def test_palette_with_transparency_is_flattened_on_white():
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 16, 32))
    data = encode(img, "PNG", transparency=0)
    arr = np.asarray(load_image(data).image)
    assert tuple(arr[0, 0]) == (255, 0, 0)  # opaque red stays red
    assert tuple(arr[0, 31]) == (255, 255, 255)  # transparent becomes white


def test_alpha_and_grayscale_become_rgb():
    rgba = photo(5).convert("RGBA")
    rgba.putalpha(0)
    assert np.asarray(load_image(encode(rgba, "PNG")).image).min() == 255
    assert load_image(encode(photo(5).convert("L"), "PNG")).image.mode == "RGB"
    assert load_image(encode(photo(5).convert("1"), "PNG")).image.mode == "RGB"


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    arr = np.asarray(load_image(buf.getvalue()).image)
    assert tuple(arr[20, 20]) == (255, 0, 0)


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png_declaring(50_000, 50_000)
    with pytest.raises(ImageError, match="decompression bomb"):
        probe(bomb)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb)
    with pytest.raises(ImageError, match="limit of 1,000"):
        load_image(jpeg(1), max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text\n", "plain text"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b"\x7fELF\x02\x01\x01" + b"\0" * 60, "executable"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a supported image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        load_image(data)


def test_truncated_files_are_refused():
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(jpeg(1)[:2000])
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_image(encode(photo(1), "PNG")[:3000])


def test_model_input_matches_resize_and_centre_crop():
    img = photo(1, (400, 200))
    arr = to_model_input(img, 64)
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    expected = np.asarray(img.resize((128, 64), Image.Resampling.BICUBIC).crop((32, 0, 96, 64)), np.float32)
    assert np.abs(arr.astype(np.float32) - expected).mean() < 2
    assert to_model_input(Image.new("RGB", (1, 1), (9, 9, 9)), 64).shape == (64, 64, 3)
    assert to_model_input(photo(2, (20000, 200)), 64).shape == (64, 64, 3)

"""Decode any supported image into RGB and prepare the uint8 array the model takes.

One function, `load_image`, turns bytes or a file into an upright RGB picture or raises `ImageError`
with a message a person can act on. `to_model_input` resizes and centre-crops it exactly as
open_clip's own preprocessing does (shortest side to the model size, bicubic, centre crop), but
returns uint8 so normalisation can happen on the model's device.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shared.types import ImageError

try:  # HEIC/HEIF support; optional at import so a broken wheel doesn't take the service down.
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover
    pass

ImageFile.LOAD_TRUNCATED_IMAGES = False

# Formats we decode. Everything else (EPS, PSD, ICO, SVG, ...) is refused before any decoder runs.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "AVIF", "HEIF")
MIME_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
    "HEIF": "image/heic",
}


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by JPEG draft mode
    format: str  # one of ACCEPTED_FORMATS
    width: int  # original size, as stored in the file
    height: int


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str  # Pillow's mode: RGB, L, CMYK, P, ...
    orientation: int  # EXIF orientation 1-8 (1: upright)


def probe(data: bytes | Path, *, max_pixels: int = 100_000_000) -> tuple[str, int, int]:
    """(format, width, height) from the header only: cheap. Raises ImageError if not accepted."""
    h = header(data, max_pixels=max_pixels)
    return h.format, h.width, h.height


def header(data: bytes | Path, *, max_pixels: int = 100_000_000) -> Header:
    """What the header says, without decoding pixels. Raises ImageError if not accepted."""
    with _open(data) as img:
        fmt = img.format or "unknown"
        _check_size(fmt, *img.size, max_pixels)
        try:
            orientation = int(img.getexif().get(0x0112, 1)) if fmt in ("JPEG", "TIFF", "WEBP", "PNG") else 1
        except Exception:  # a broken EXIF block: decoding will ignore it too
            orientation = 1
        return Header(fmt, img.width, img.height, img.mode, orientation if 1 <= orientation <= 8 else 1)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shortest side scaled to `size`: the geometry of every decoder here."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def load_image(data: bytes | Path, *, min_side: int = 224, max_pixels: int = 100_000_000) -> LoadedImage:
    """Decode `data` (bytes or a path) into an upright RGB image.

    JPEGs are decoded through `draft()` at the smallest scale that keeps the short side at least
    `min_side` pixels, so a 12 MP photo costs a fraction of a full decode. Images declaring more than
    `max_pixels` pixels are refused before their pixels are decoded (decompression bombs).
    """
    with _open(data) as img:
        fmt = img.format or "unknown"
        width, height = img.size
        _check_size(fmt, width, height, max_pixels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size checked above
                if fmt == "JPEG":
                    _draft(img, min_side)
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"corrupt or truncated {fmt} data: {exc}") from exc
        except Exception as exc:  # decoders raise a zoo of types on hostile input
            raise ImageError(f"cannot decode {fmt} data: {exc}") from exc
    return LoadedImage(image=rgb, format=fmt, width=width, height=height)


def thumbnail_webp(data: bytes | Path, side: int) -> bytes:
    """A WebP no larger than side×side (aspect kept) of an image, upright, for result galleries."""
    img = load_image(data, min_side=side, max_pixels=2**62).image  # stored images passed the size check
    img.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    img.save(out, format="WEBP", quality=80, method=4)
    return out.getvalue()


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shortest side to `size` (bicubic), centre-crop to size×size; uint8 HWC array."""
    width, height = image.size
    new_w, new_h = resized_size(width, height, size)
    if (new_w, new_h) != (width, height):
        # reducing_gap: a cheap box reduction first, then bicubic; visually identical, several times faster
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _check_size(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{fmt} image has an empty size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{fmt} image declares {width}x{height} pixels, more than the limit of {max_pixels:,} "
            "(possible decompression bomb)"
        )


def _open(data: bytes | Path) -> Image.Image:
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) == 0:
            raise ImageError("empty file (0 bytes)")
        source: io.BytesIO | Path = io.BytesIO(data)
    else:
        source = Path(data)
    try:
        with warnings.catch_warnings():
            # the caller checks the declared size against its own limit (_check_size)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"not a supported image (accepted: {', '.join(ACCEPTED_FORMATS)}); {_describe(data)}"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large, possible decompression bomb: {exc}") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot read image header: {exc}") from exc


_ISOBMFF_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


def sniff(head: bytes) -> str | None:
    """The image format suggested by a file's first 32 bytes, or None: cheap, for walking folders.

    Only a hint (a match can still fail to decode); use `describe_non_image` for why it is not one.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in _ISOBMFF_BRANDS:
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    return None


def describe_non_image(head: bytes) -> str:
    """Why bytes starting with `head` are not an image we take, in a few words."""
    return _describe(head)


def _describe(data: bytes | Path) -> str:
    if isinstance(data, Path):
        with data.open("rb") as fh:
            head = fh.read(64)
    else:
        head = bytes(data[:64])
    if not head:
        return "the file is empty"
    text = head.lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")):
        return "SVG/XML vector images are not supported"
    if text.startswith((b"<!doctype", b"<html")):
        return "the file is an HTML document"
    if head.startswith(b"\x7fELF") or head.startswith(b"MZ"):
        return "the file is an executable"
    if all(32 <= b < 127 or b in b"\r\n\t" for b in head):
        return "the file looks like plain text"
    return f"unrecognised header bytes {head[:8].hex()}"


def _draft(img: Image.Image, min_side: int) -> None:
    width, height = img.size
    short = min(width, height)
    if short <= min_side:
        return
    # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps at least the requested size.
    scale = min_side / short
    img.draft("RGB", (max(1, int(width * scale) + 1), max(1, int(height * scale) + 1)))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size else 0
        if peak > 255:  # 16-bit (or wider) samples: scale into 8 bits
            arr = arr * (255.0 / (65535.0 if peak <= 65535 else peak))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK, L, 1, YCbCr, LAB, HSV, ...

"""Photo metadata read once at ingest, from the header only (no pixel decode).

`read_metadata(bytes | Path) -> PhotoMetadata` reads:

- capture time, the first of these that parses and is sane:
  EXIF `DateTimeOriginal` (0x9003), `DateTimeDigitized` (0x9004), both in the Exif IFD (0x8769), then
  `DateTime` (0x0132, IFD0); each with its own `OffsetTime*` (0x9011 / 0x9012 / 0x9010) and optional
  `SubSecTime*` (0x9291 / 0x9292 / 0x9290). Then, where EXIF has none, the container: XMP
  `exif:DateTimeOriginal`, `photoshop:DateCreated`, `xmp:CreateDate` (a regex over the raw packet, no XML
  parser), then a PNG `Creation Time` text chunk. Returned aware, in UTC. A time without an offset is
  wall-clock time in an unknown zone: it is taken as UTC (so it may be off by the photographer's offset).
  PNG `tIME` is not read: it is the last-modification time, rewritten by every editor.
- camera make (0x010F) and model (0x0110): NULs, control characters and runs of blanks collapsed, at most
  64 characters. Pillow hands ASCII tags over as latin-1; they are re-read as UTF-8 and bytes that are not
  UTF-8 are dropped (never turned into mojibake). The model is kept as written, even if it repeats the make.
- GPS (GPS IFD 0x8825, Ref + deg/min/sec rationals) as signed decimal degrees rounded to 6 places, both or
  neither.
- orientation (0x0112): 1-8, else 1; as Pillow's opener reports it, i.e. the rotation `load_image` applies
  (pillow_heif rotates HEIF pixels itself and reports 1; Pillow reports AVIF's irot/imir as EXIF orientation).

Dropping rules, field by field (each drop is a `log.debug` naming the field and why; the image never fails):
dates that do not parse, all-zero dates, dates before 1826 or after now + 1 day (years 0 and 9999 included);
offsets beyond ±14:00 (the date is kept, taken as UTC); strings of the wrong type, empty once cleaned or
longer than 256 characters; GPS with a missing or unknown Ref, zero denominators, NaN/inf, negative parts,
|lat| > 90 or |lon| > 180, and exactly (0, 0), which phones write when they have no fix (as most photo
managers do, we treat it as "no location"). Any exception from Pillow on hostile EXIF is caught per part;
a file that cannot be opened at all gives an empty `PhotoMetadata`.

PNG: only EXIF/XMP/text chunks before the image data are seen; Pillow would decode the pixels to reach
chunks after IDAT, which this module never does.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from shared.imaging import _open

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TEXT = 64  # characters kept of make / model
_MAX_RAW_TEXT = 256  # longer than this is not a camera name: dropped
_MAX_XMP = 1 << 20  # bytes of an XMP packet searched for dates
_MIN_YEAR = 1826  # the oldest surviving photograph
_MAX_OFFSET = timedelta(hours=14)

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
# (field name, date tag, offset tag, sub-second tag, IFD the date lives in: None is IFD0)
_DATE_TAGS = (
    ("DateTimeOriginal", 0x9003, 0x9011, 0x9291, _EXIF_IFD),
    ("DateTimeDigitized", 0x9004, 0x9012, 0x9292, _EXIF_IFD),
    ("DateTime", _DATETIME, 0x9010, 0x9290, None),
)
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4

# EXIF "YYYY:MM:DD HH:MM:SS" and ISO 8601 "YYYY-MM-DDTHH:MM[:SS][.fff][Z|±HH:MM]"; the time is optional (XMP).
_DATE_RE = re.compile(
    r"(\d{4})[:\-/](\d{2})[:\-/](\d{2})"
    r"(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?\s*(Z|[+-]\d{2}:?\d{2})?)?"
)
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})")
_XMP_DATE_RE = {
    name: re.compile(
        rb"(?:exif|photoshop|xmp|xap):" + name + rb"""\s*(?:=\s*["']([^"'<>]{4,64})["']|>\s*([^<]{4,64})<)"""
    )
    for name in (b"DateTimeOriginal", b"DateCreated", b"CreateDate")
}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BLANKS_RE = re.compile(r"\s+")


@dataclass(frozen=True)
class PhotoMetadata:
    captured_at: datetime | None = None  # aware, UTC
    camera_make: str = ""
    camera_model: str = ""
    latitude: float | None = None  # signed decimal degrees, 6 decimals; both or neither
    longitude: float | None = None
    orientation: int = 1  # EXIF orientation 1-8 (1: upright)


def read_metadata(source: bytes | Path) -> PhotoMetadata:
    """Capture time, camera, GPS and orientation of an image (see the module docstring for the rules).

    Header only (no pixel decode): cheap enough to run for every ingested image. Never raises: a file that
    cannot be opened gives an empty `PhotoMetadata`, and each unreadable field is left at its default.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we log per field instead
            with _open(source) as img:
                return _read(img)
    except Exception as exc:  # ImageError, OSError, and whatever a hostile file provokes
        log.debug("metadata: cannot open image: %s", exc)
        return PhotoMetadata()


def _read(img: Image.Image) -> PhotoMetadata:
    exif = _exif(img)
    ifd0: dict[int, Any] = {}
    exif_ifd: dict[int, Any] = {}
    gps_ifd: dict[int, Any] = {}
    if exif is not None:
        ifd0 = _ifd0(exif)
        exif_ifd = _safe("Exif IFD", lambda: exif.get_ifd(_EXIF_IFD), {})
        gps_ifd = _safe("GPS IFD", lambda: exif.get_ifd(_GPS_IFD), {})

    captured_at = _safe("captured_at", lambda: _exif_date(ifd0, exif_ifd) or _container_date(img), None)
    make = _safe("camera_make", lambda: _text("camera_make", ifd0.get(_MAKE)), "")
    model = _safe("camera_model", lambda: _text("camera_model", ifd0.get(_MODEL)), "")
    no_gps: tuple[float | None, float | None] = (None, None)
    latitude, longitude = _safe("gps", lambda: _gps(gps_ifd), no_gps)
    orientation = _safe("orientation", lambda: _orientation(ifd0.get(_ORIENTATION)), 1)
    return PhotoMetadata(captured_at, make, model, latitude, longitude, orientation)


def _safe(field: str, read: Callable[[], T], default: T) -> T:
    try:
        return read()
    except Exception as exc:  # Pillow's IFD parsing raises struct.error, ValueError, KeyError, ...
        log.debug("metadata: %s dropped: %s: %s", field, type(exc).__name__, exc)
        return default


def _ifd0(exif: Image.Exif) -> dict[int, Any]:
    """Our IFD0 tags, converted one by one (Pillow converts on access): a broken one costs one field."""
    tags: dict[int, Any] = {}
    for tag in (_MAKE, _MODEL, _ORIENTATION, _DATETIME):
        try:
            tags[tag] = exif.get(tag)
        except Exception as exc:
            log.debug("metadata: IFD0 tag 0x%04x dropped: %s: %s", tag, type(exc).__name__, exc)
    return tags


def _exif(img: Image.Image) -> Image.Exif | None:
    if img.format == "PNG" and "exif" not in img.info and "Raw profile type exif" not in img.info:
        return None  # PngImageFile.getexif() would decode the pixels to look for an eXIf chunk after IDAT
    return _safe("EXIF", img.getexif, None)


# ---------------------------------------------------------------- dates


def _exif_date(ifd0: dict[int, Any], exif_ifd: dict[int, Any]) -> datetime | None:
    for name, tag, offset_tag, subsec_tag, where in _DATE_TAGS:
        ifd = exif_ifd if where == _EXIF_IFD else ifd0
        raw = ifd.get(tag)
        if raw is None:
            continue
        offset, subsec = exif_ifd.get(offset_tag), exif_ifd.get(subsec_tag)
        value = _parse_date(f"captured_at ({name})", raw, offset=offset, subsec=subsec)
        if value is not None:
            return value
    return None


def _container_date(img: Image.Image) -> datetime | None:
    xmp = img.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "ignore")
    if isinstance(xmp, bytes | bytearray):
        packet = bytes(xmp[:_MAX_XMP])
        for name, pattern in _XMP_DATE_RE.items():
            match = pattern.search(packet)
            if match:
                raw = (match[1] or match[2]).decode("utf-8", "ignore")
                value = _parse_date(f"captured_at (XMP {name.decode()})", raw)
                if value is not None:
                    return value
    if img.format == "PNG" and (text := img.info.get("Creation Time")) is not None:
        return _parse_date("captured_at (PNG Creation Time)", text, rfc2822=True)
    return None


def _parse_date(
    field: str, raw: Any, *, offset: Any = None, subsec: Any = None, rfc2822: bool = False
) -> datetime | None:
    text = _as_str(raw)
    if text is None:
        log.debug("metadata: %s dropped: a %s, not a string", field, type(raw).__name__)
        return None
    text = text.strip("\x00 \t\r\n")
    match = _DATE_RE.fullmatch(text)
    if match is None:
        if rfc2822:
            return _parse_rfc2822(field, text)
        log.debug("metadata: %s dropped: unparseable %r", field, text[:40])
        return None
    year, month, day, hour, minute, second, fraction, inline_offset = match.groups()
    if year == "0000":
        log.debug("metadata: %s dropped: all-zero date %r", field, text[:40])
        return None
    try:
        value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError as exc:
        log.debug("metadata: %s dropped: %r is not a date (%s)", field, text[:40], exc)
        return None
    fraction = fraction or _subsec(field, subsec)
    if fraction:
        value = value.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    tz = _offset(field, inline_offset if inline_offset is not None else offset)
    return _sane(field, value.replace(tzinfo=tz or UTC).astimezone(UTC))


def _parse_rfc2822(field: str, text: str) -> datetime | None:
    try:
        value = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError) as exc:
        log.debug("metadata: %s dropped: unparseable %r (%s)", field, text[:40], exc)
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return _sane(field, value.astimezone(UTC))


def _sane(field: str, value: datetime) -> datetime | None:
    latest = datetime.now(UTC) + timedelta(days=1)
    if value.year < _MIN_YEAR or value > latest:
        log.debug("metadata: %s dropped: %s is before %d or in the future", field, value.isoformat(), _MIN_YEAR)
        return None
    return value


def _subsec(field: str, raw: Any) -> str | None:
    text = _as_str(raw)
    if text is None:
        return None
    text = text.strip("\x00 ")
    if not text:
        return None
    if not text.isascii() or not text.isdigit():
        log.debug("metadata: %s sub-seconds ignored: %r", field, text[:20])
        return None
    return text


def _offset(field: str, raw: Any) -> timezone | None:
    if raw is None:
        return None
    text = _as_str(raw)
    text = text.strip("\x00 ") if text is not None else None
    if text in ("Z", "z"):
        return UTC
    match = _OFFSET_RE.fullmatch(text) if text else None
    if text is None or match is None:
        log.debug("metadata: %s offset ignored (time taken as UTC): %r", field, raw if text is None else text[:20])
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > _MAX_OFFSET or int(minutes) >= 60:
        log.debug("metadata: %s offset ignored (time taken as UTC): %r out of range", field, text)
        return None
    return timezone(-delta if sign == "-" else delta)


# ---------------------------------------------------------------- text


def _as_str(raw: Any) -> str | None:
    """A tag's text: Pillow gives ASCII tags as latin-1 str, UNDEFINED/BYTE ones as bytes."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).decode("latin-1")
    return raw if isinstance(raw, str) else None


def _text(field: str, raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        try:
            data = raw.encode("latin-1")  # undo Pillow's latin-1 decoding of the tag's bytes
        except UnicodeEncodeError:
            data = raw.encode("utf-8")  # already real text
    elif isinstance(raw, bytes | bytearray):
        data = bytes(raw)
    else:
        log.debug("metadata: %s dropped: a %s, not a string", field, type(raw).__name__)
        return ""
    data = data.split(b"\x00", 1)[0]  # EXIF strings end at their first NUL; what follows is padding
    text = data.decode("utf-8", "ignore")
    if len(text.encode("utf-8")) != len(data):
        log.debug("metadata: %s: bytes that are not UTF-8 dropped from %r", field, data[:40])
    text = _BLANKS_RE.sub(" ", _CONTROL_RE.sub(" ", text)).strip()
    if len(text) > _MAX_RAW_TEXT:
        log.debug("metadata: %s dropped: %d characters long", field, len(text))
        return ""
    return text[:MAX_TEXT].rstrip()


# ---------------------------------------------------------------- GPS and orientation


def _gps(gps: dict[int, Any]) -> tuple[float | None, float | None]:
    if not gps:
        return None, None
    latitude = _coordinate("latitude", gps.get(_GPS_LAT_REF), gps.get(_GPS_LAT), "N", "S", 90.0)
    longitude = _coordinate("longitude", gps.get(_GPS_LON_REF), gps.get(_GPS_LON), "E", "W", 180.0)
    if latitude is None or longitude is None:
        if (latitude, longitude) != (None, None):
            log.debug("metadata: gps dropped: only one of latitude/longitude is readable")
        return None, None
    if latitude == 0.0 and longitude == 0.0:
        log.debug("metadata: gps dropped: (0, 0) is what phones write without a fix")
        return None, None
    return latitude, longitude


def _coordinate(field: str, ref: Any, value: Any, positive: str, negative: str, limit: float) -> float | None:
    if ref is None and value is None:
        return None
    ref_text = _as_str(ref)
    ref_text = ref_text.strip("\x00 ").upper() if ref_text is not None else None
    if ref_text not in (positive, negative):
        log.debug("metadata: gps %s dropped: reference %r is not %s or %s", field, ref, positive, negative)
        return None
    parts = value if isinstance(value, tuple | list) else (value,)
    if not 1 <= len(parts) <= 3:
        log.debug("metadata: gps %s dropped: %d components", field, len(parts))
        return None
    numbers = [_number(part) for part in parts]
    if any(n is None or not math.isfinite(n) or n < 0 for n in numbers):
        log.debug("metadata: gps %s dropped: unreadable, zero-denominator or negative parts %r", field, value)
        return None
    degrees = sum(n / 60**i for i, n in enumerate(numbers) if n is not None)
    if any(n is not None and n > 60 for n in numbers[1:]) or degrees > limit:
        log.debug("metadata: gps %s dropped: %r is out of range", field, value)
        return None
    result = round(degrees, 6)
    return -result if ref_text == negative and result else result  # never -0.0


def _number(part: Any) -> float | None:
    """A rational (Pillow's IFDRational, or a (num, den) pair) or a plain number; None if unreadable."""
    if isinstance(part, bool):
        return None
    if isinstance(part, int | float):
        return float(part)
    if isinstance(part, tuple) and len(part) == 2:
        numerator, denominator = part
    else:
        numerator, denominator = getattr(part, "numerator", None), getattr(part, "denominator", None)
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float) or denominator == 0:
        return None
    return numerator / denominator


def _orientation(raw: Any) -> int:
    if raw is None:
        return 1
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 8:
        return raw
    log.debug("metadata: orientation ignored: %r is not 1-8", raw)
    return 1
